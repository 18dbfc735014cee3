#!/usr/bin/env python3
"""Full-batch gradient descent on large batches against the device's memory bandwidth.

    python benchmarks/bandwidth.py                          # N = 2^20, 2^22, 2^24 points
    python benchmarks/bandwidth.py --log2-points 20,21,22,23,24 --rounds 7

One step of full-batch GD on N points reads x and y: 8N bytes in float32. For each N (on one
device: the CPU, or the accelerator where there is one) it times, alternating round by round:
- ymxb: the trainer's compiled call (ymxb.steps, as the hosts run it) of one model;
- ref: the hand-written lax.scan of step_throughput.py, on the same data;
- probe: a fused reduction reading the same two arrays once per iteration, sum(x * s + y),
  repeated in a fori_loop (each iteration depends on the last, so none is hoisted): the
  bandwidth a one-pass kernel reaches on this device.
It prints each one's GB/s (8N bytes x iterations/s), ymxb/ref and ymxb/probe. Medians of
--rounds; each call reads about --gib-per-call GiB.
"""

import argparse
import os
import statistics
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log2-points", default="20,22,24", help="log2 of N, points on the device")
    p.add_argument("--gib-per-call", type=float, default=1.0, help="x and y read per timed call")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    # One CPU device; on an accelerator host, make one visible (e.g. CUDA_VISIBLE_DEVICES=0).
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    import jax

    device = jax.devices()[0]
    print(f"# one {device.platform} device ({device.device_kind}), jax {jax.__version__}, "
          f"median of {args.rounds} rounds, ~{args.gib_per_call:g} GiB read per call")
    print(f"{'N':>6} {'steps/call':>10} {'parallel':<9} {'model':<6} {'ymxb GB/s':>10} "
          f"{'ref GB/s':>9} {'probe GB/s':>11} {'ymxb/ref':>9} {'ymxb/probe':>11}")
    for log2 in (int(v) for v in args.log2_points.split(",")):
        n = 2**log2
        steps = max(2, int(args.gib_per_call * 2**30 / (8 * n)))
        x, y = _data(n)
        for parallel in ("pmap", "sharding"):
            for model in ("pure", "haiku"):
                ours, ref, probe = (8 * n * steps / t for t in _measure(parallel, model, x, y, steps, args.rounds))
                print(f"  2^{log2:<2} {steps:>10} {parallel:<9} {model:<6} {ours / 1e9:>10.2f} "
                      f"{ref / 1e9:>9.2f} {probe / 1e9:>11.2f} {ours / ref:>9.2f} {ours / probe:>11.2f}",
                      flush=True)


def _data(n):
    from ymxb.spec import data
    from ymxb.spec.settings import TrialSpec

    return data.host_shard(TrialSpec.resolve(samples_per_host=n), 0)


def _measure(parallel, model, x, y, steps, rounds):
    """Median seconds of one call of each: ymxb, the hand-written loop, the probe."""
    import jax
    import jax.numpy as jnp

    from step_throughput import hand_written
    from ymxb.spec import builtin
    from ymxb.spec.settings import Program, SliceSpec, TrialSpec
    from ymxb.host.steps import TRAINERS

    cfg = TrialSpec.resolve(samples_per_host=len(x), parallel=parallel, model=model, steps_per_call=steps)
    trainer = TRAINERS[parallel](builtin.line(model), Program.of(SliceSpec(hosts=1, devices_per_host=1), [cfg]))
    state, batch = trainer.init(), trainer.put_data(x, y)
    ours, ref, probe = trainer.compiled(steps), hand_written(cfg.lr, steps), _probe(steps)
    data, zero = (jnp.asarray(x), jnp.asarray(y)), jnp.zeros(())
    calls = (lambda: ours(state, *batch), lambda: ref(zero, zero, *data), lambda: probe(*data))

    def timed(call):
        started = time.perf_counter()
        jax.block_until_ready(call())
        return time.perf_counter() - started

    for call in calls:
        timed(call)  # compile
    times = [[timed(call) for call in calls] for _ in range(rounds)]
    return [statistics.median(column) for column in zip(*times)]


def _probe(n_iterations):
    """(x, y) -> scalar: n_iterations fused passes over x and y, each a one-pass reduction."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    @jax.jit
    def run(x, y):
        return lax.fori_loop(0, n_iterations, lambda _, s: 0.5 * s + jnp.sum(x * s + y), jnp.float32(0))

    return run


if __name__ == "__main__":
    main()
