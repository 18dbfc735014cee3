"""A classifier written as optax users write one (tests/test_tasks.py): integer labels, (n, classes)
logits, optax's own per-point cross-entropy. Three Gaussian blobs in the plane, one per class."""

import numpy as np

from ymxb import Model, Setting, Task

CLASSES = 3


class Blobs(Task):
    name = "blobs"
    settings = (Setting("spread", 0.5, "std of each blob"),)

    def shard(self, s, data_seed, host_index, samples):
        rng = np.random.default_rng([data_seed, host_index])
        labels = rng.integers(0, CLASSES, samples)
        centres = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
        return centres[labels] + s["spread"] * rng.standard_normal((samples, 2)), labels

    def model(self, s, name):
        import jax
        import jax.numpy as jnp

        return Model(lambda key: {"w": 0.1 * jax.random.normal(key, (2, CLASSES)), "b": jnp.zeros(CLASSES)},
                     lambda params, x: x @ params["w"] + params["b"])

    @staticmethod
    def loss(logits, labels):
        import optax

        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


TASK = Blobs()
