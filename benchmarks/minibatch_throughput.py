#!/usr/bin/env python3
"""Minibatch steps against a hand-written fused minibatch loop, and full batch against both.

    python benchmarks/minibatch_throughput.py                       # 1 CPU device
    python benchmarks/minibatch_throughput.py --batch-size 64 --rounds 7

For one trial and for a sweep of --sweep trials vmapped in one program (lr apart), it times
ymxb's compiled call of --steps-per-call fused minibatch steps (ymxb.host.steps, as a host runs
it: sgd, the default task's pure model) and a hand-written `lax.scan` of the same math (each
trial's minibatch drawn with `jax.random.randint` from its own key and the step, the MSE
gradient by hand, plain SGD), alternating the two round by round, and prints steps/s and the
ratio ymxb / hand-written (1.00: as fast). A last row times ymxb's full-batch call on the same
data, for the cost of drawing. Medians of --rounds.
"""

import argparse
import os

from alternate import calls_per_s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=4096, help="points on the host")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--sweep", type=int, default=64, help="trials of the vmapped sweep")
    p.add_argument("--steps-per-call", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    import jax

    print(f"# one host, 1 {jax.devices()[0].platform} device, {args.samples} points, batch {args.batch_size}, "
          f"{args.steps_per_call} steps per call, median of {args.rounds} rounds")
    print(f"{'trials':>6} {'batch':>6} {'ymxb steps/s':>13} {'hand steps/s':>13} {'ymxb/hand':>10}")
    for trials in (1, args.sweep):
        for batch in (args.batch_size, 0):
            ours, ref = _measure(args, trials, batch)
            print(f"{trials:>6} {batch or 'full':>6} {ours:>13.0f} {ref:>13.0f} {ours / ref:>10.2f}", flush=True)


def _measure(args, trials: int, batch: int):
    import jax
    import jax.numpy as jnp

    from ymxb.host.steps import TRAINERS
    from ymxb.spec import builtin, data
    from ymxb.spec.settings import Program, SliceSpec, TrialSpec

    lrs = [0.01 + 0.2 * i / max(1, trials - 1) for i in range(trials)]
    cfgs = [TrialSpec.resolve(samples_per_host=args.samples, steps_per_call=args.steps_per_call, batch_size=batch,
                              lr=lr, seed=i) for i, lr in enumerate(lrs)]
    program = Program.of(SliceSpec(hosts=1, devices_per_host=1), cfgs)
    trainer = TRAINERS["pmap"](builtin.line("pure"), program)
    state = trainer.init()
    x, y = data.host_shard(cfgs[0], 0)
    put = trainer.put_data(x, y)
    reference = hand_written(args.steps_per_call, batch)
    zeros = jnp.zeros(trials)
    keys = jax.vmap(jax.random.key)(jnp.arange(trials, dtype=jnp.uint32))
    given = (zeros, zeros, jnp.asarray(lrs, jnp.float32), keys, jnp.asarray(x), jnp.asarray(y))
    ours_per_s, ref_per_s = calls_per_s(lambda: trainer.run(state, put, args.steps_per_call), lambda: reference(*given), args.rounds)
    return args.steps_per_call * ours_per_s, args.steps_per_call * ref_per_s


def hand_written(n_steps: int, batch: int):
    """(m, b, lr, keys, x, y) -> ((m, b), losses), every trial on the leading axis of m, b, lr
    and keys (vmapped; one trial: not): `n_steps` of SGD on the MSE of m*x + b in one lax.scan, each step's minibatch of
    `batch` points drawn per trial from its key and the step (0: the whole batch)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    def one(m, b, lr, key, x, y):
        def step(carry, i):
            m, b = carry
            xs, ys = x, y
            if batch:
                picked = jax.random.randint(jax.random.fold_in(key, i), (batch,), 0, x.shape[0])
                xs, ys = x[picked], y[picked]
            r = m * xs + b - ys
            return (m - lr * 2 * jnp.mean(r * xs), b - lr * 2 * jnp.mean(r)), jnp.mean(r * r)
        return lax.scan(step, (m, b), jnp.arange(n_steps))

    many = jax.vmap(one, in_axes=(0, 0, 0, 0, None, None))
    # One trial without the axis, as ymxb runs one: XLA:CPU is slower on (1, n) reductions.
    alone = lambda m, b, lr, key, x, y: jax.tree.map(lambda a: a[None], one(m[0], b[0], lr[0], key[0], x, y))
    return jax.jit(lambda *a: (alone if a[0].shape[0] == 1 else many)(*a))


if __name__ == "__main__":
    main()
