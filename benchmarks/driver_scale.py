#!/usr/bin/env python3
"""The driver's own work for a slice of many hosts, in one process, from synthetic host records
(no Ray, no JAX): what grows with the host count, and how fast.

    python benchmarks/driver_scale.py                          # 1,500 and 6,000 hosts x 4 devices
    python benchmarks/driver_scale.py --hosts 100,1500,6000 --samples-per-host 1024

For each host count it builds what the hosts would return (identities, what each joined,
checkpoint pieces, results: the params of every device) and times, one at a time, each piece
of the driver's work on them: the slice's hosts put together and their identity lines; their
results gathered (from a local Ray's object store, as launcher._gather takes them); blame
over a failure on one host with every other host waiting; a checkpoint assembled from every
host's piece and written; the trial judged (every replica against the reference, made from
every host's shard); the report built, as JSON and as the table. It prints milliseconds per
host for each, and the peak memory (tracemalloc) of each. A piece whose ms per host grows with
the host count is a cost growing faster than linearly.
"""

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", default="1500,6000", help="host counts")
    p.add_argument("--devices-per-host", type=int, default=4)
    p.add_argument("--samples-per-host", type=int, default=1024)
    p.add_argument("--steps", type=int, default=500)
    args = p.parse_args()
    pieces = ("hosts", "gather", "blame", "checkpoint", "judge", "report")
    print(f"# driver-side work, {args.devices_per_host} devices a host, {args.samples_per_host} points a host, "
          f"{args.steps} steps; ms per host (peak MiB)")
    print(f"{'hosts':>6} " + " ".join(f"{p:>18}" for p in pieces) + f" {'total s':>8}")
    for hosts in (int(h) for h in args.hosts.split(",")):
        figures = measure(hosts, args.devices_per_host, args.samples_per_host, args.steps)
        cells = [f"{figures[p][0] * 1e3 / hosts:>9.3f} ({figures[p][1] / 2**20:>5.0f})" for p in pieces]
        print(f"{hosts:>6} " + " ".join(f"{c:>18}" for c in cells)
              + f" {sum(f[0] for f in figures.values()):>8.2f}", flush=True)


def measure(hosts: int, devices: int, samples: int, steps: int) -> dict:
    """{piece: (seconds, peak bytes)} of the driver's work for a slice of `hosts` hosts."""
    from ymxb.driver import checkpoint
    from ymxb import protocol
    from ymxb.results.views import report
    from ymxb.results.judge import judge
    from ymxb.spec.settings import Program, SliceSpec, TrialSpec
    from ymxb.errors import Cause

    spec = SliceSpec(hosts=hosts, devices_per_host=devices, platform="cpu-sim")
    program = Program.of(spec, [TrialSpec.resolve(samples_per_host=samples, steps=steps)])
    figures = {}

    def timed(name, work):
        tracemalloc.start()
        started = time.perf_counter()
        out = work()
        figures[name] = (time.perf_counter() - started, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        return out

    identities = [protocol.HostIdentity(i, f"vm-{i}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1000 + i,
                                        f"{i:056x}") for i in range(hosts)]
    joined = [protocol.Joined(i, hosts, devices, hosts * devices, "tpu", "TPU v5p", {}, 400 << 30, 95 << 30)
              for i in range(hosts)]

    def put_together():
        slice_hosts = [protocol.SliceHost.of(ident, info, 0) for ident, info in zip(identities, joined)]
        lines = [h.line() for h in slice_hosts]  # what the driver logs as the slice comes up
        return slice_hosts, lines

    slice_hosts, _ = timed("hosts", put_together)
    gather_all(timed, identities)
    name = lambda i: protocol.describe(i, identities)
    end = protocol.CallEnd("training", 60.0, (protocol.Failed(7, "its process exited", Cause.DIED),),
                           tuple(i for i in range(hosts) if i != 7), first_s=1.0)
    timed("blame", lambda: str(protocol.blame(end, name)))

    losses = np.linspace(1.0, 0.01, steps, dtype=np.float32)[None]
    params = np.tile(np.array([[2.0, -1.0]], np.float32), (devices, 1))
    pieces = [protocol.CheckpointPiece(100, np.array([0]), [np.array([2.0], np.float32)] * 4, losses[:, :100])
              for _ in range(hosts)]

    def assemble_and_write():
        assembler = checkpoint.Assembler(program, hosts)
        whole = [assembler.add(i, piece) for i, piece in enumerate(pieces)][-1]
        with tempfile.TemporaryDirectory() as folder:
            checkpoint.write(os.path.join(folder, "p" + checkpoint.SUFFIX), whole)

    timed("checkpoint", assemble_and_write)
    runs = tuple(protocol.HostRun(h, protocol.HostResult(
        entry=np.zeros(devices, np.int64), device=np.arange(i * devices, (i + 1) * devices), params=params,
        init=params, loss_entry=np.array([0]), losses=losses, collective_axes=(1, hosts * devices),
        collective_devices=hosts * devices, train_s=1.0, first_call_s=0.5)) for i, h in enumerate(slice_hosts))
    run = protocol.ProgramRun(program, "cpu-sim", "10.0.0.0:1234", runs, 1.0, {})
    [record] = timed("judge", lambda: judge(run))

    def report_both():
        built = report.build(record, run, 1.0)
        return report.to_json(built), report.summary(built)

    timed("report", report_both)
    return figures


def gather_all(timed, identities) -> None:
    """launcher._gather over one result per host, each already in Ray's object store (a local
    Ray, started for this): the driver's loop of waiting and taking results, Ray's wait in it."""
    import logging

    import ray

    from ymxb.driver import slice as launcher

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        refs = [ray.put(np.full(64, i, np.float32)) for i in range(len(identities))]
        timed("gather", lambda: launcher._gather([], refs, "training", 600.0, identities))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
