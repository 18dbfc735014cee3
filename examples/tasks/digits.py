"""A classifier on a real, fixed dataset that a package ships: scikit-learn's handwritten digits
(1,797 images of 8x8 pixels, 10 classes, inside the scikit-learn wheel: no download). Needs
the examples' extra: pip install -e '.[examples]'.

Softmax regression with an L2 penalty on every param (so one optimum), checked against
scikit-learn's own LogisticRegression fitted to exactly the points the hosts trained on. The
first 1,500 images are the dataset ymxb cuts into the hosts' shards; the last 296 are held out
(every host measures all of them: eval_accuracy).

    python launch.py --task examples.tasks.digits:TASK --hosts 2 --samples-per-host 750 \
        --optimizer adam --lr 0.05 --schedule cosine --steps 1500
    python launch.py --task examples.tasks.digits:TASK --samples-per-host 0 ...   # all of it, on any slice
    python launch.py sweep examples/sweeps/digits.yaml
"""

import numpy as np

from ymxb import Metric, Model, Reference, Setting, Task

TRAIN, HELD_OUT = 1500, 296  # held out: a multiple of every device count up to 8
CLASSES, PIXELS = 10, 64


def _digits():
    from sklearn.datasets import load_digits

    images = load_digits()
    return images.data / 16.0, images.target  # pixels in [0, 1]


class Digits(Task):
    name = "digits"
    summary = "softmax regression on scikit-learn's digits"
    about = "data: scikit-learn's 8x8 handwritten digits, pixels / 16; model: logits = x @ w + b"
    reference_name = "sklearn_logistic_regression"  # "matches sklearn logistic regression"
    settings = (Setting("l2", 0.001, "weight of the L2 penalty on w and b", lambda v: None if v > 0 else "must be positive"),)
    metrics = {"accuracy": Metric(lambda logits, labels: logits.argmax(-1) == labels, higher_is_better=True)}

    def dataset(self, s, data_seed):
        x, y = _digits()
        return x[:TRAIN], y[:TRAIN]

    def held_out(self, s, data_seed, host_index, samples):
        x, y = _digits()
        return x[TRAIN:TRAIN + HELD_OUT], y[TRAIN:TRAIN + HELD_OUT]

    def model(self, s, name):
        import jax.numpy as jnp

        return Model(lambda key: {"b": jnp.zeros(CLASSES), "w": jnp.zeros((PIXELS, CLASSES))},
                     lambda params, x: x @ params["w"] + params["b"])

    @staticmethod
    def loss(logits, labels):
        import optax

        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    def penalty(self, s, params):
        import jax.numpy as jnp

        return s["l2"] * (jnp.sum(params["w"] ** 2) + jnp.sum(params["b"] ** 2))

    def shown(self, s, flat):
        return {"b[0]": flat[..., 0], "b[1]": flat[..., 1]}

    def reference(self, s, shards):
        """scikit-learn's multinomial LogisticRegression of the same objective: the mean
        cross-entropy plus l2 * |params|^2 is C * sum(cross-entropy) + |params|^2 / 2 with
        C = 1 / (2 n l2), the bias a feature of ones so that it is penalised alike."""
        from sklearn.linear_model import LogisticRegression

        x, y = (np.concatenate(part) for part in zip(*shards))
        ones = np.concatenate([x.astype(np.float64), np.ones((len(x), 1))], axis=1)
        fit = LogisticRegression(C=1 / (2 * len(x) * s["l2"]), fit_intercept=False, tol=1e-12, max_iter=10_000)
        fit.fit(ones, y)
        w, b = fit.coef_[:, :PIXELS].T, fit.coef_[:, PIXELS]  # as the params: b, then w row by row
        logits = ones[:, :PIXELS] @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        cross_entropy = np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(y)), y])
        return Reference(np.concatenate([b, w.ravel()]), float(cross_entropy + s["l2"] * (np.sum(w ** 2) + np.sum(b ** 2))))


TASK = Digits()
