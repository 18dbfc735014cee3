#!/usr/bin/env python3
"""What a task's metrics cost: one measure (the task's metrics on the training shard, and its
loss and metrics on the held-out points) against one compiled call of training.

    python benchmarks/metrics_cost.py                      # 1 CPU device
    python benchmarks/metrics_cost.py --steps-per-call 100 --rounds 7

For the classifier of examples/tasks/classifier.py (accuracy; 256 held-out points a host),
one trial and a sweep of --sweep trials vmapped in one program (lr apart), minibatches of
--batch-size: it times ymxb's compiled call of --steps-per-call steps and its measure
(ymxb.host.steps, as a host runs them), alternating round by round, and prints the ratio
measure / call. A host measures once, at the end of training: the ratio is what the metrics
add to one call, and a run's share of it is that over its number of calls. Medians of --rounds.
"""

import argparse
import os
import sys

from alternate import calls_per_s

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # examples/

CLASSIFIER = "examples.tasks.classifier:TASK"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=4096, help="training points on the host")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--sweep", type=int, default=64, help="trials of the vmapped sweep")
    p.add_argument("--steps-per-call", type=int, default=100, help="steps of one call (the default --steps-per-call)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    import jax

    print(f"# one host, 1 {jax.devices()[0].platform} device, classifier, {args.samples} points, batch "
          f"{args.batch_size}, {args.steps_per_call} steps per call, median of {args.rounds} rounds")
    print(f"{'trials':>6} {'call ms':>9} {'measure ms':>11} {'measure/call':>13}")
    for trials in (1, args.sweep):
        call_per_s, measure_per_s = _measure(args, trials)
        print(f"{trials:>6} {1e3 / call_per_s:>9.2f} {1e3 / measure_per_s:>11.2f} "
              f"{call_per_s / measure_per_s:>13.3f}", flush=True)


def _measure(args, trials: int):
    from ymxb.host.steps import TRAINERS
    from ymxb.spec import data, registry
    from ymxb.spec.settings import Program, SliceSpec, TrialSpec

    cfgs = [TrialSpec.resolve(task=CLASSIFIER, optimizer="adam", samples_per_host=args.samples,
                              batch_size=args.batch_size, lr=0.01 + 0.1 * i / max(1, trials - 1), seed=i)
            for i in range(trials)]
    program = Program.of(SliceSpec(hosts=1, devices_per_host=1), cfgs)
    task = registry.get(CLASSIFIER)
    trainer = TRAINERS["pmap"](task.model(cfgs[0].of_task, "pure"), program, task.loss,
                               metrics=[m.fn for m in task.metrics.values()])
    state = trainer.init()
    train = trainer.put_data(*data.host_shard(cfgs[0], 0))
    held = trainer.put_data(*data.host_held_out(cfgs[0], 0, 1))
    return calls_per_s(lambda: trainer.run(state, train, args.steps_per_call),
                       lambda: (trainer.measure(state, train), trainer.measure(state, held)), args.rounds)


if __name__ == "__main__":
    main()
