"""A task with a fixed dataset (tests/test_tasks.py): 1,000 points of y = 2x - 1 + noise, the
same whatever the seed, as a file would hold them; ymxb cuts it into the hosts' shards. Its
reference is the least-squares line of the points the hosts trained on."""

import numpy as np

from ymxb import Model, Reference, Task

POINTS = 1000


class Fixed(Task):
    name = "fixed"

    def dataset(self, s, data_seed):
        rng = np.random.default_rng(2024)
        x = rng.uniform(-1, 1, POINTS)
        return x, 2 * x - 1 + 0.1 * rng.standard_normal(POINTS)

    def model(self, s, name):
        import jax.numpy as jnp

        return Model(lambda key: {"b": jnp.zeros(()), "m": jnp.zeros(())}, lambda p, x: p["m"] * x + p["b"])

    def shown(self, s, flat):
        return {"b": flat[..., 0], "m": flat[..., 1]}

    def reference(self, s, shards):
        x, y = (np.concatenate(part).astype(np.float64) for part in zip(*shards))
        (m, b), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1), y, rcond=None)
        return Reference(np.array([b, m]), float(np.mean((m * x + b - y) ** 2)))


TASK = Fixed()
