"""A classifier written as optax and haiku users write one: integer labels, (n, classes) logits,
optax's own per-point cross-entropy as the loss, an L2 penalty on the weights, accuracy as a
metric on points held out. Three Gaussian blobs in the plane, one per class; the model in
plain JAX (`--model pure`) or as a haiku module (`--model haiku`: hk.Linear).

    python launch.py --task examples.tasks.classifier:TASK --optimizer adam --lr 0.1 --steps 300
    python launch.py --task examples.tasks.classifier:TASK --l2 0.01 --ensemble 8 --save-params params.npz
    python launch.py --task examples.tasks.classifier:TASK --optimizer adamw --weight-decay 1e-3 \
        --schedule cosine --batch-size 128 --steps 400     # decay from the optimiser, minibatches
    python launch.py --task examples.tasks.classifier:TASK --model haiku --ensemble 4 --parallel sharding

It gives no reference solution (the softmax regression's optimum has no closed form), so a run
is verified on what holds without one, as examples/tasks/mlp.py's.
"""

import numpy as np

from ymxb import Metric, Model, Setting, Task

CLASSES = 3
CENTRES = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])


class Blobs(Task):
    name = "blobs"
    summary = "softmax regression on three Gaussian blobs"
    about = "data: a point of one of 3 Gaussian blobs, labelled by its blob; model: logits = x @ w + b"
    models = ("pure", "haiku")
    settings = (Setting("spread", 0.5, "std of each blob", lambda v: None if v > 0 else "must be positive"),
                Setting("l2", 0.0, "weight of the L2 penalty on w", lambda v: None if v >= 0 else "must be >= 0"))

    # A number per point, averaged: train_accuracy, eval_accuracy in the records, --best-by it.
    metrics = {"accuracy": Metric(lambda logits, labels: logits.argmax(-1) == labels, higher_is_better=True)}

    def shard(self, s, data_seed, host_index, samples):
        return _blobs(s, [data_seed, host_index], samples)  # this host's points, the same every time

    def held_out(self, s, data_seed, host_index, samples):
        return _blobs(s, [data_seed, host_index, HELD_OUT], HELD_OUT_POINTS)  # never trained on

    def model(self, s, name):
        import jax
        import jax.numpy as jnp

        if name == "haiku":
            import haiku as hk

            net = hk.without_apply_rng(hk.transform(lambda x: hk.Linear(CLASSES)(x)))
            return Model(lambda key: net.init(key, jnp.zeros((1, 2))), net.apply)
        return Model(lambda key: {"w": 0.1 * jax.random.normal(key, (2, CLASSES)), "b": jnp.zeros(CLASSES)},
                     lambda params, x: x @ params["w"] + params["b"])

    @staticmethod
    def loss(logits, labels):
        import optax

        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    def penalty(self, s, params):
        import jax.numpy as jnp

        w = params["linear"]["w"] if "linear" in params else params["w"]  # haiku's, or the plain model's
        return s["l2"] * jnp.sum(w ** 2) if s["l2"] else None


def _blobs(s, seed, samples):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, samples)
    return CENTRES[labels] + s["spread"] * rng.standard_normal((samples, 2)), labels


HELD_OUT, HELD_OUT_POINTS = 1, 256  # a key of their own; points per host (a multiple of its devices)
TASK = Blobs()
