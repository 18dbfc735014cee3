"""The one user program benchmarks/peers.py runs under every launcher: a 256-wide two-layer net,
one jax.jit over a global Mesh (data-parallel over every device of every process), plain SGD on
a fixed minibatch per process, a fixed number of steps. Process 0 prints the params' digest and the
device count, the same under every launcher for the same steps.

    python launch.py run benchmarks/peers_program.py --hosts 4 -- --steps 400   # joined by ymxb
    python benchmarks/peers_program.py --join 127.0.0.1:PORT 4 I --steps 400    # a bare process

Under Ray Train's JaxTrainer, peers.py calls `join` and `train` from its loop.
"""

import argparse
import hashlib
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

WIDTH, POINTS = 256, 512  # points per process per step
SYNC_EVERY = 25  # gloo on CPU hangs with a few hundred collective steps queued (TRAPS.md)


def join(address: str, processes: int, index: int):
    """What a bare process (or a JaxTrainer worker on CPU) does before anything else."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, processes, index)


def train(steps: int, mark: str | None = None) -> str:
    """Train; after the first step write this process's pid to `mark`/<process index> (the kill
    harness waits for it). Returns the params' digest."""
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(jax.process_index())
    x = rng.normal(size=(POINTS, WIDTH)).astype(np.float32)
    y = np.tanh(x[:, :1] - x[:, 1:2]).astype(np.float32)
    xb = jax.make_array_from_process_local_data(split, x)
    yb = jax.make_array_from_process_local_data(split, y)
    init = np.random.default_rng(0)
    params = jax.device_put({"w1": init.normal(size=(WIDTH, WIDTH)).astype(np.float32) / WIDTH ** 0.5,
                             "w2": init.normal(size=(WIDTH, 1)).astype(np.float32) / WIDTH ** 0.5},
                            replicated)

    @jax.jit
    def step(params, x, y):
        loss = lambda p: jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)
        grads = jax.grad(loss)(params)
        return jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)

    for i in range(steps):
        params = step(params, xb, yb)
        if i == 0 and mark:
            jax.block_until_ready(params)
            Path(mark, str(jax.process_index())).write_text(str(os.getpid()))
        if (i + 1) % SYNC_EVERY == 0:
            jax.block_until_ready(params)
    leaves = [np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves(params)]
    return hashlib.sha256(b"".join(leaf.tobytes() for leaf in leaves)).hexdigest()[:16]


def said(digest: str) -> str:
    """What process 0 prints: the same line under every launcher."""
    return f"params {digest} on {jax.device_count()} devices"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--mark", help="a folder: each process writes its pid there after its first step")
    p.add_argument("--join", nargs=3, metavar=("ADDRESS", "PROCESSES", "INDEX"),
                   help="a bare process: join jax.distributed here first")
    args = p.parse_args()
    if args.join:
        join(args.join[0], int(args.join[1]), int(args.join[2]))
    digest = train(args.steps, args.mark)
    if jax.process_index() == 0:
        print(said(digest), flush=True)


if __name__ == "__main__":
    main()
