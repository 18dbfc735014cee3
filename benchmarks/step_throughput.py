#!/usr/bin/env python3
"""Training-step throughput of each mode on one host, against a hand-written fused reference.

    python benchmarks/step_throughput.py                     # 1 CPU device, E = 0, 1, 8, 64, 512
    python benchmarks/step_throughput.py --devices 2 --rounds 7
    python benchmarks/step_throughput.py --ensembles 0,1,8,64,512,4096   # on a GPU

For every (parallel mode, model, ensemble size E) it times ymxb's compiled call of
--steps-per-call fused steps (ymxb.steps, as the hosts run it) and a hand-written `lax.scan`
of the same math (MSE gradient by hand, plain SGD) on the same data, alternating the two
round by round, and prints steps/s, member-steps/s and the ratio ymxb / reference (1.00 =
as fast as the hand-written loop). E = 0 is one data-parallel model. Medians of --rounds.
"""

import argparse
import os

from alternate import calls_per_s


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1, help="CPU devices of the one host")
    p.add_argument("--samples", type=int, default=1024, help="points on the host")
    p.add_argument("--steps-per-call", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ensembles", default="0,1,8,64,512")
    args = p.parse_args()
    # Simulated CPU devices; on a GPU/TPU machine JAX uses the accelerator (use --devices 1).
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import jax

    print(f"# one host, {args.devices} {jax.devices()[0].platform} device(s), {args.samples} points, "
          f"{args.steps_per_call} steps per call, median of {args.rounds} rounds")
    print(f"{'parallel':<9} {'model':<6} {'E':>4} {'steps/s':>10} {'member-steps/s':>15} "
          f"{'ref steps/s':>12} {'ymxb/ref':>9}")
    for ensemble in (int(e) for e in args.ensembles.split(",")):
        if ensemble % args.devices:
            continue
        for parallel in ("pmap", "sharding"):
            for model in ("pure", "haiku"):
                ours, ref = _measure(args, parallel, model, ensemble)
                members = max(ensemble, 1)
                print(f"{parallel:<9} {model:<6} {ensemble:>4} {ours:>10.0f} {ours * members:>15.0f} "
                      f"{ref:>12.0f} {ours / ref:>9.2f}", flush=True)


def _measure(args, parallel, model, ensemble):
    import jax

    from ymxb.spec import builtin, data
    from ymxb.spec.settings import Program, SliceSpec, TrialSpec
    from ymxb.host.steps import TRAINERS

    cfg = TrialSpec.resolve(samples_per_host=args.samples, parallel=parallel, model=model, ensemble=ensemble,
                    steps_per_call=args.steps_per_call)
    program = Program.of(SliceSpec(hosts=1, devices_per_host=args.devices), [cfg])
    trainer = TRAINERS[parallel](builtin.line(model), program)
    state = trainer.init()
    x, y = data.host_shard(cfg, 0)
    batch = trainer.put_data(x, y)
    ours = trainer.compiled(args.steps_per_call)
    reference = hand_written(cfg.lr, args.steps_per_call)
    m0 = jax.numpy.zeros((ensemble,) if ensemble else ())
    data_args = (jax.numpy.asarray(x), jax.numpy.asarray(y))

    ours_per_s, reference_per_s = calls_per_s(lambda: ours(state, *batch), lambda: reference(m0, m0, *data_args), args.rounds)
    return args.steps_per_call * ours_per_s, args.steps_per_call * reference_per_s


def hand_written(lr: float, n_steps: int):
    """The same math written by hand: MSE gradient of m*x + b, SGD, `n_steps` in one lax.scan.
    (m, b, x, y) -> ((m, b), losses); m and b may have a leading member axis. The data is an
    argument, as it is to ymxb's call."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    @jax.jit
    def run(m, b, x, y):
        def step(carry, _):
            m, b = carry
            r = m[..., None] * x + b[..., None] - y
            grad_m, grad_b = 2 * jnp.mean(r * x, -1), 2 * jnp.mean(r, -1)
            return (m - lr * grad_m, b - lr * grad_b), jnp.mean(r * r, -1)
        return lax.scan(step, (m, b), None, length=n_steps)

    return run


if __name__ == "__main__":
    main()
