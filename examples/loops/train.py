"""A training script written as for a pod slice: its own loop, a dm-haiku MLP, optax, one
jax.jit over a global Mesh (data-parallel over every device of every process), minibatches
each process draws from its own shard, and a checkpoint every N steps it resumes from.

    python train.py                                          # one machine
    python launch.py run examples/loops/train.py             # every host of the simulated slice
    python launch.py run examples/loops/train.py --max-restarts 1 --checkpoint-dir /tmp/ckpt -- --steps 400

On a pod without ymxb, call jax.distributed.initialize() before anything else; under
`launch.py run` the process has joined already (and that call, if made, returns at once).
Checkpoints are orbax-checkpoint's (`pip install orbax-checkpoint`): every process writes its own
shards of the state to one folder all of them see (a shared mount, or a gs:// bucket on a pod),
and a step counts only once every process has written it.
"""

import argparse
import hashlib
import os

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import ymxb  # report, attempt, checkpoint_dir: no-ops outside launch.py run


def flags():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32, help="points per process per step")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points", type=int, default=8192, help="the dataset's size, split over processes")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--checkpoint-dir", default=ymxb.checkpoint_dir(), help="default: launch.py run's")
    return p.parse_args()


def dataset(points, seed):
    """The whole dataset, the same in every process: y = tanh(x @ w) + noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(points, 8)).astype(np.float32)
    w = rng.normal(size=(8, 1)).astype(np.float32)
    return x, (np.tanh(x @ w) + 0.05 * rng.normal(size=(points, 1))).astype(np.float32)


def model(x):
    return hk.nets.MLP([32, 32, 1])(x)


def batch_of(shard, step, args):
    """This process's minibatch at `step`: drawn from (seed, step, process), so a resumed run
    draws what an uninterrupted one does."""
    rng = np.random.default_rng([args.seed, step, jax.process_index()])
    rows = rng.integers(0, len(shard[0]), size=args.batch)
    return shard[0][rows], shard[1][rows]


def main():
    args = flags()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    x, y = dataset(args.points, args.seed)
    per = args.points // jax.process_count()
    shard = x[jax.process_index() * per:][:per], y[jax.process_index() * per:][:per]

    net = hk.without_apply_rng(hk.transform(model))
    optimizer = optax.adam(args.lr)
    params = net.init(jax.random.key(args.seed), x[:1])
    state = jax.device_put((params, optimizer.init(params)), replicated)

    @jax.jit
    def step_fn(state, xb, yb):
        params, opt_state = state
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((net.apply(p, xb) - yb) ** 2))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    start, checkpoints = 0, None
    if args.checkpoint_dir:
        folder = args.checkpoint_dir if "://" in args.checkpoint_dir else os.path.abspath(args.checkpoint_dir)
        checkpoints = ocp.CheckpointManager(folder, options=ocp.CheckpointManagerOptions(max_to_keep=2))
        latest = checkpoints.latest_step()  # the latest step every process finished writing
        if latest is not None:
            start = latest
            like = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)  # shapes, dtypes, shardings
            state = checkpoints.restore(start, args=ocp.args.StandardRestore(like))
            print(f"attempt {ymxb.attempt()}: resuming from the checkpoint at step {start}", flush=True)
    for step in range(start, args.steps):
        xb, yb = batch_of(shard, step, args)
        state, loss = step_fn(state, jax.make_array_from_process_local_data(split, xb),
                              jax.make_array_from_process_local_data(split, yb))
        if (step + 1) % 10 == 0:
            ymxb.report(step + 1, loss=float(loss))
        if checkpoints and (step + 1) % args.checkpoint_every == 0:
            checkpoints.save(step + 1, args=ocp.args.StandardSave(state))
            print(f"saving a checkpoint at step {step + 1}", flush=True)  # written in the background
    if checkpoints:
        checkpoints.close()  # waits for the last write
    params = jax.tree.map(lambda leaf: np.asarray(leaf.addressable_data(0)), state[0])  # this process's copy
    digest = hashlib.sha256(b"".join(leaf.tobytes() for leaf in jax.tree.leaves(params))).hexdigest()[:16]
    if jax.process_index() == 0:
        loss = jnp.mean((net.apply(params, x) - y) ** 2)  # on the whole dataset, on this process alone
        print(f"final loss {float(loss):.6f} params {digest}")


if __name__ == "__main__":
    main()
