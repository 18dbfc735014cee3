#!/usr/bin/env python3
"""Wall time of `launch.py` against a bare baseline: N plain processes with jax.distributed.

    python benchmarks/bare_baseline.py                  # 4 hosts x 2 devices, 3 rounds
    python benchmarks/bare_baseline.py --hosts 3 --devices-per-host 2 --rounds 5

The baseline runs the same training (ymxb.train.train_host) in N subprocesses that call
jax.distributed.initialize themselves: no Ray, no actors, no verification. Rounds alternate
between the two so both see the same machine noise; prints medians and their ratio.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import sys, jax
from ymxb.config import Program, SliceSpec, TrialSpec
from ymxb.train import train_host
pid, n, k, addr = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
jax.distributed.initialize(addr, n, pid, initialization_timeout=60)
train_host(Program.of(SliceSpec(hosts=n, devices_per_host=k), [TrialSpec()]))
jax.distributed.shutdown()
"""


def bare(hosts: int, devices: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(hosts), str(devices), addr],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(hosts)]
    codes = [p.wait(timeout=300) for p in procs]
    if any(codes):
        sys.exit(f"bare baseline failed: exit codes {codes}")
    return time.perf_counter() - started


def launched(hosts: int, devices: int) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "launch.py"), "--hosts", str(hosts),
                    "--devices-per-host", str(devices)], check=True, capture_output=True)
    return time.perf_counter() - started


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--devices-per-host", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    times = {"bare jax.distributed": [], "launch.py (embedded Ray)": []}
    for _ in range(args.rounds):
        times["bare jax.distributed"].append(bare(args.hosts, args.devices_per_host))
        times["launch.py (embedded Ray)"].append(launched(args.hosts, args.devices_per_host))
    base = statistics.median(times["bare jax.distributed"])
    print(f"{args.hosts} hosts x {args.devices_per_host} devices, default training, {args.rounds} rounds")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<26} median {med:6.2f} s  ({med / base:.2f}x bare)  runs: "
              + " ".join(f"{t:.2f}" for t in ts))


if __name__ == "__main__":
    main()
