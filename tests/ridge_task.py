"""A task with a penalty on its params (tests/test_tasks.py): y = 3x fitted by w * x under an L2
penalty `l2 * w**2`, whose minimiser has a closed form, the task's reference:
w = 3 * mean(x**2) / (mean(x**2) + l2)."""

import numpy as np

from ymxb import Model, Reference, Setting, Task


class Ridge(Task):
    name = "ridge"
    settings = (Setting("l2", 0.5, "weight of the L2 penalty on w"),)

    def shard(self, s, data_seed, host_index, samples):
        x = np.random.default_rng([data_seed, host_index]).uniform(-1, 1, samples)
        return x.astype(np.float32), (3 * x).astype(np.float32)

    def model(self, s, name):
        import jax

        return Model(lambda key: {"w": jax.random.normal(key, ())}, lambda params, x: params["w"] * x)

    def penalty(self, s, params):
        return s["l2"] * params["w"] ** 2

    def reference(self, s, shards):
        x = np.concatenate([x for x, _ in shards]).astype(np.float64)
        second = np.mean(x ** 2)
        w = 3 * second / (second + s["l2"])
        return Reference(np.array([w]), float(np.mean((w * x - 3 * x) ** 2) + s["l2"] * w ** 2))


TASK = Ridge()
