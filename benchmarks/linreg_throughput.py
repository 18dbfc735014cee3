#!/usr/bin/env python3
"""Task linreg's training step (y = X w + b, D features) against a hand-written fused loop,
and its FLOP/s against what this machine's matrix product reaches.

    python benchmarks/linreg_throughput.py                         # D = 64, 256, 1024; E = 0, 8, 64
    python benchmarks/linreg_throughput.py --features 1024 --ensembles 0,64 --rounds 9
    CUDA_VISIBLE_DEVICES=0 python benchmarks/linreg_throughput.py  # the same on a GPU: one command

For each D and ensemble size E (0: one data-parallel model) it times ymxb's compiled call of
--steps-per-call fused steps (ymxb.steps, as the hosts run it, pmap on one device) and a
hand-written `lax.scan` of the same math (gradient by hand: 2/n Z^T r, plain SGD, all members
as one matrix) on the same data, alternating round by round; prints steps/s, the ratio
ymxb / hand-written, and the FLOP/s ymxb achieves against a plain `jnp.dot` loop's on this
device (an (n, D) x (D, D) product at the largest D asked for). A step costs about 4 n D (E
or 1) flops: X w, then X^T r. Medians of --rounds.
"""

import argparse
import statistics
import time

from alternate import calls_per_s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default="64,256,1024", help="values of D")
    p.add_argument("--ensembles", default="0,8,64", help="values of E (0: one model)")
    p.add_argument("--samples", type=int, default=4096, help="points on the host")
    p.add_argument("--steps-per-call", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    import jax

    device = jax.devices()[0]
    peak = matmul_flops(args.samples, max(int(d) for d in args.features.split(",")), args.rounds)
    print(f"# one {device.platform} device ({device.device_kind}), {args.samples} points, {args.steps_per_call} "
          f"steps per call, median of {args.rounds} rounds; a plain jnp.dot loop reaches {peak / 1e9:.1f} GFLOP/s")
    print(f"{'D':>5} {'E':>4} {'steps/s':>9} {'ref steps/s':>12} {'ymxb/ref':>9} {'GFLOP/s':>9} {'of dot':>7}")
    for d in (int(v) for v in args.features.split(",")):
        for ensemble in (int(v) for v in args.ensembles.split(",")):
            ours, ref = _measure(args, d, ensemble)
            flops = 4 * args.samples * d * max(ensemble, 1) * ours
            print(f"{d:>5} {ensemble:>4} {ours:>9.0f} {ref:>12.0f} {ours / ref:>9.2f} {flops / 1e9:>9.1f} "
                  f"{flops / peak:>7.0%}", flush=True)


def _measure(args, features: int, ensemble: int):
    import jax

    from ymxb.spec import data, registry
    from ymxb.spec.settings import Program, SliceSpec, TrialSpec
    from ymxb.host.steps import TRAINERS

    cfg = TrialSpec.resolve(task="linreg", features=features, samples_per_host=args.samples, ensemble=ensemble,
                    steps_per_call=args.steps_per_call)
    program = Program.of(SliceSpec(hosts=1, devices_per_host=1), [cfg])
    task = registry.get("linreg")
    trainer = TRAINERS["pmap"](task.model(cfg.of_task, "pure"), program)
    state = trainer.init()
    x, y = data.host_shard(cfg, 0)
    batch = trainer.put_data(x, y)
    ours = trainer.compiled(args.steps_per_call)
    reference = hand_written(cfg.lr, args.steps_per_call)
    w0 = jax.numpy.zeros((features, ensemble) if ensemble else (features,))
    b0 = jax.numpy.zeros((ensemble,) if ensemble else ())
    data_args = (jax.numpy.asarray(x), jax.numpy.asarray(y))

    ours_per_s, reference_per_s = calls_per_s(lambda: ours(state, *batch), lambda: reference(w0, b0, *data_args), args.rounds)
    return args.steps_per_call * ours_per_s, args.steps_per_call * reference_per_s


def hand_written(lr: float, n_steps: int):
    """The same math by hand, as one would write it: one model's w a vector (residuals
    r = X w + b - y, gradient 2/n r X); members' w the columns of one (D, E) matrix (R = X W + b
    - y, gradient 2/n X^T R). Plain SGD, `n_steps` in one lax.scan."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    @jax.jit
    def run(w, b, x, y):
        scale = 2.0 / x.shape[0]

        def step(carry, _):
            w, b = carry
            r = x @ w + b - (y if w.ndim == 1 else y[:, None])
            grad = r @ x if w.ndim == 1 else x.T @ r
            return (w - lr * scale * grad, b - lr * scale * r.sum(0)), jnp.mean(r * r, 0)

        return lax.scan(step, (w, b), None, length=n_steps)

    return run


def matmul_flops(n: int, d: int, rounds: int) -> float:
    """FLOP/s of a plain float32 (n, d) x (d, d) product on this device, 20 in one jit."""
    import jax
    import jax.numpy as jnp

    a, b = jnp.ones((n, d), jnp.float32), jnp.ones((d, d), jnp.float32) / d

    @jax.jit
    def twenty(a):
        return jax.lax.fori_loop(0, 20, lambda _, a: a @ b, a)

    jax.block_until_ready(twenty(a))
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        jax.block_until_ready(twenty(a))
        times.append(time.perf_counter() - started)
    return 20 * 2 * n * d * d / statistics.median(times)


if __name__ == "__main__":
    main()
