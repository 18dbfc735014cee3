"""A training script written as for a pod slice: its own loop, a dm-haiku MLP, optax, one
jax.jit over a global Mesh (data-parallel over every device of every process), minibatches
each process draws from its own shard, and a checkpoint every N steps it resumes from.

    python train.py                                          # one machine
    python launch.py run examples/loops/train.py             # every host of the simulated slice
    python launch.py run examples/loops/train.py --max-restarts 1 --checkpoint-dir /tmp/ckpt -- --steps 400

On a pod without ymxb, call jax.distributed.initialize() before anything else; under
`launch.py run` the process has joined already (and that call, if made, returns at once).
Each process writes its own checkpoint file with NumPy; orbax-checkpoint is where to go for
sharded params too big for one process (its CheckpointManager takes over `save` and `restore`).
"""

import argparse
import glob
import hashlib
import os
import re

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def save(folder, step, state):
    """This process's copy of the (replicated) state at `step`, written atomically."""
    leaves = [np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves(state)]
    path = os.path.join(folder, f"step-{step:08d}.process-{jax.process_index()}.npz")
    with open(path + ".tmp", "wb") as f:
        np.savez(f, *leaves)
    os.replace(path + ".tmp", path)


def restore(folder, state, sharding):
    """(step, state) of the latest checkpoint every process wrote, else (0, state)."""
    counts = {}
    for path in glob.glob(os.path.join(folder, "step-*.process-*.npz")):
        step = int(re.search(r"step-(\d+)", path).group(1))
        counts[step] = counts.get(step, 0) + 1
    whole = [step for step, n in counts.items() if n == jax.process_count()]
    if not whole:
        return 0, state
    step = max(whole)
    with np.load(os.path.join(folder, f"step-{step:08d}.process-{jax.process_index()}.npz")) as f:
        leaves = [f[f"arr_{i}"] for i in range(len(f.files))]
    treedef = jax.tree.structure(state)
    return step, jax.tree.unflatten(treedef, [jax.device_put(leaf, sharding) for leaf in leaves])


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

    start = 0
    if args.checkpoint_dir:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        start, state = restore(args.checkpoint_dir, state, replicated)
        if start:
            print(f"attempt {ymxb.attempt()}: resuming from the checkpoint at step {start}", flush=True)
    for step in range(start, args.steps):
        xb, yb = batch_of(shard, step, args)
        state, loss = step_fn(state, jax.make_array_from_process_local_data(split, xb),
                              jax.make_array_from_process_local_data(split, yb))
        if (step + 1) % 10 == 0:
            ymxb.report(step + 1, loss=float(loss))
        if args.checkpoint_dir and (step + 1) % args.checkpoint_every == 0:
            save(args.checkpoint_dir, step + 1, state)
            print(f"checkpoint at step {step + 1}", flush=True)
    leaves = [np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves(state[0])]
    digest = hashlib.sha256(b"".join(leaf.tobytes() for leaf in leaves)).hexdigest()[:16]
    if jax.process_index() == 0:
        print(f"final loss {float(loss):.6f} params {digest}")


if __name__ == "__main__":
    main()
