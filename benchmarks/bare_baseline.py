#!/usr/bin/env python3
"""Wall time of `launch.py` against a bare baseline: N plain processes with jax.distributed.

    python benchmarks/bare_baseline.py                     # 4 hosts x 2 devices, cold and attached, 5 rounds
    python benchmarks/bare_baseline.py --shapes 2x2,4x2,8x2,16x1 --modes cold    # scale on one machine

The baseline runs the same training (ymxb.train.train_host) in N subprocesses that call
jax.distributed.initialize themselves: no Ray, no actors, no verification. launch.py runs
`cold` (an embedded Ray, as a new user runs it) or `attached` (`--address` to a Ray cluster that
this script starts with ray.init's defaults, on loopback, before the attached rounds and stops
after them). Rounds alternate between the baseline and launch.py so both see the same machine
noise; prints medians, their ratio, and the median of each phase: launch.py's (its --json
`phases_s`) and the baseline's (process 0's). And the CPU seconds (user + system) this
script's descendants took during each run, sampled from /proc every SAMPLE_S (each process's
last moments before it exits are missed), with the cores they kept busy on average (CPU /
wall): a run that takes more CPU is working, not waiting. Attached runs count the cluster's
processes too (the hosts are its workers), idle ones included.
"""

import argparse
import contextlib
import ctypes
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ymxb.ops.reaper import descendants  # noqa: E402

# Process 0 prints where its time went, as launch.py's phases do.
WORKER = """
import json, sys, time
started = time.perf_counter()
import jax
from ymxb.spec.settings import Program, SliceSpec, TrialSpec
from ymxb.host.train import train_host
pid, n, k, addr = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
imported = time.perf_counter()
jax.distributed.initialize(addr, n, pid, initialization_timeout=60)
joined = time.perf_counter()
train_host(Program.of(SliceSpec(hosts=n, devices_per_host=k), [TrialSpec()]))
trained = time.perf_counter()
jax.distributed.shutdown()
if pid == 0:
    print(json.dumps({"import": imported - started, "initialize": joined - imported,
                      "train": trained - joined, "shutdown": time.perf_counter() - trained}))
"""

Run = Tuple[float, Dict[str, float], float]  # wall seconds, phases, CPU seconds
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
SAMPLE_S = 0.05


def bare(hosts: int, devices: int) -> Run:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    with TreeCpu() as cpu:
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(hosts), str(devices), addr],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for i in range(hosts)]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        wall = time.perf_counter() - started
    codes = [p.returncode for p in procs]
    if any(codes):
        sys.exit(f"bare baseline failed: exit codes {codes}")
    return wall, json.loads(outs[0].splitlines()[-1]), cpu.seconds  # its last line: gloo prints first


def launched(hosts: int, devices: int, address: str = None) -> Run:
    args = ["--hosts", str(hosts), "--devices-per-host", str(devices), "--json"]
    with TreeCpu() as cpu:
        started = time.perf_counter()
        run = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args,
                              *(["--address", address] if address else [])],
                             capture_output=True, text=True)
        wall = time.perf_counter() - started
    if run.returncode:
        sys.exit(f"launch.py {' '.join(args)} failed ({run.returncode}): {run.stderr[-2000:]}")
    return wall, json.loads(run.stdout)["phases_s"], cpu.seconds


class TreeCpu:
    """CPU seconds this script's descendants take while the block runs, sampled from /proc."""

    def __enter__(self):
        self.before = _cpu_of(descendants(os.getpid()))
        self.last = dict(self.before)
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self):
        while not self._done.wait(SAMPLE_S):
            self.last.update(_cpu_of(descendants(os.getpid())))

    def __exit__(self, *exc):
        self._done.set()
        self._sampler.join()
        self.seconds = sum(cpu - self.before.get(proc, 0.0) for proc, cpu in self.last.items())
        with contextlib.suppress(ChildProcessError):  # orphans adopted (below) that ended
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def _cpu_of(procs) -> Dict[tuple, float]:
    cpu = {}
    for pid, start in procs:
        with contextlib.suppress(OSError, IndexError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[19] == start:  # still the process noted (utime, stime: fields 14, 15)
                cpu[(pid, start)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cpu


def adopt_orphans() -> None:
    """Become the parent of this script's orphaned descendants (Ray's agents and workers may
    outlive their raylet by moments), so that they are still found among its descendants."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


@contextlib.contextmanager
def running_cluster():
    """A Ray cluster for attached runs: ray.init's defaults, on loopback only; its address."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before ray is imported: loopback
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ymxb-bench-")
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        context = ray.init(address="local", include_dashboard=False, log_to_driver=False,
                           logging_level=logging.WARNING, _temp_dir=temp_dir)
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def compare(hosts: int, devices: int, rounds: int, address: str = None) -> Tuple[List[Run], List[Run]]:
    """`rounds` of the baseline and launch.py, alternating which goes first."""
    base, ours = [], []
    for i in range(rounds):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            if which == 0:
                base.append(bare(hosts, devices))
            else:
                ours.append(launched(hosts, devices, address))
    return base, ours


def _phases(runs: List[Run]) -> str:
    keys = list(dict.fromkeys(k for _, phases, _ in runs for k in phases))
    return " ".join(f"{k} {statistics.median(p.get(k, 0.0) for _, p, _ in runs):.2f}" for k in keys)


def _cpu(runs: List[Run]) -> str:
    cpu = statistics.median(c for _, _, c in runs)
    return f"{cpu:5.1f} CPU s ({statistics.median(c / w for w, _, c in runs):.2f} cores busy)"


def report(shape: str, mode: str, base: List[Run], ours: List[Run]) -> str:
    b, o = statistics.median(w for w, _, _ in base), statistics.median(w for w, _, _ in ours)
    return "\n".join([
        f"{shape:<5} {mode:<8}  bare {b:6.2f} s  launch.py {o:6.2f} s  {o / b:.2f}x bare",
        "      bare:      " + " ".join(f"{w:.2f}" for w, _, _ in base) + "   " + _cpu(base),
        "      launch.py: " + " ".join(f"{w:.2f}" for w, _, _ in ours) + "   " + _cpu(ours),
        f"      phases (median s), bare: {_phases(base)}",
        f"      phases (median s), launch.py: {_phases(ours)}"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="4x2", help="HOSTSxDEVICES, comma-separated")
    p.add_argument("--modes", default="cold,attached", help="cold and/or attached, comma-separated")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    modes = args.modes.split(",")
    adopt_orphans()
    print(f"default training, {args.rounds} alternating rounds per line, medians", flush=True)
    if "cold" in modes:  # first: an attached run's cluster would share the machine with them
        for hosts, devices in shapes:
            print(report(f"{hosts}x{devices}", "cold", *compare(hosts, devices, args.rounds)), flush=True)
    if "attached" in modes:
        with running_cluster() as address:
            for hosts, devices in shapes:
                print(report(f"{hosts}x{devices}", "attached",
                             *compare(hosts, devices, args.rounds, address)), flush=True)


if __name__ == "__main__":
    main()
