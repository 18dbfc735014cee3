"""A task of your own, as a user would write it: a two-layer MLP fitting y = sin(freq * x).

    python launch.py --task examples.tasks.mlp:TASK --hidden 16 --optimizer adam --lr 0.01 --steps 2000
    python launch.py --task examples.tasks.mlp:TASK --ensemble 8 --parallel sharding
    python launch.py sweep examples/sweeps/mlp.yaml

Its settings are flags (`--hidden`, `--freq`, `--noise`) and sweep keys like every other. It
gives no reference solution (an MLP has no closed form), so a run is verified on what holds
without one: every host and device took part, the replicas (or members) agree as they must,
and the loss is finite and went down. Everything else (pmap or sharding, ensembles, sweeps,
restarts, the store, the table and plots) is ymxb's, as for the built-in tasks.
"""

import numpy as np

from ymxb import Model, Setting, Task


def _positive(value):
    return None if value > 0 else "must be positive"


class Mlp(Task):
    name = "mlp"
    summary = "y = sin(freq * x) by a two-layer MLP"
    about = "data: y = sin(freq * x) + noise, x ~ U(-1, 1); model: tanh MLP with one hidden layer"
    settings = (Setting("hidden", 16, "units in the hidden layer", _positive, "H"),
                Setting("freq", 3.0, "frequency of the sine", _positive, "F"),
                Setting("noise", 0.05, "std of the Gaussian noise on y", lambda v: None if v >= 0 else "must be >= 0"))

    def shard(self, s, data_seed, host_index, samples):
        rng = np.random.default_rng([data_seed, host_index])  # this host's points, the same every time
        x = rng.uniform(-1.0, 1.0, (samples, 1))
        y = np.sin(s["freq"] * x[:, 0]) + s["noise"] * rng.standard_normal(samples)
        return x.astype(np.float32), y.astype(np.float32)

    def model(self, s, name):
        import jax
        import jax.numpy as jnp

        hidden = s["hidden"]

        def init(key):
            k1, k2 = jax.random.split(key)
            return {"w1": jax.random.normal(k1, (1, hidden)), "b1": jnp.zeros(hidden),
                    "w2": jax.random.normal(k2, (hidden,)) / jnp.sqrt(hidden), "b2": jnp.zeros(())}

        def apply(params, x):
            return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]

        return Model(init, apply)

    def shown(self, s, flat):
        # Params flat in key order: b1 (hidden), b2, w1 (hidden), w2 (hidden). Show the output bias and a weight.
        hidden = s["hidden"]
        return {"b2": flat[..., hidden], "w2[0]": flat[..., 2 * hidden + 1]}


TASK = Mlp()
