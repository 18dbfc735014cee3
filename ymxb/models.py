"""The two ways to write y = m*x + b: plain JAX params, or a dm-haiku Linear(1).

Each model offers `init(key) -> params` and `apply(params, x) -> y` (JAX, used on the hosts)
and `to_mb(params) -> (m, b)` (NumPy only, used by the driver; works with a leading member axis).
"""

from typing import Callable, NamedTuple, Tuple

import numpy as np


class Model(NamedTuple):
    init: Callable  # PRNG key -> params
    apply: Callable  # (params, x of shape (n,)) -> y of shape (n,)


def build(name: str) -> Model:
    """The JAX functions of model `name` ("pure" or "haiku")."""
    return {"pure": _pure, "haiku": _haiku}[name]()


def to_mb(name: str, params) -> Tuple[np.ndarray, np.ndarray]:
    """(m, b) from a model's params (NumPy pytree); a leading member axis is kept."""
    if name == "haiku":
        # hk.Linear(1) on x[:, None]: w has shape (..., 1, 1), b has shape (..., 1).
        return np.asarray(params["linear"]["w"])[..., 0, 0], np.asarray(params["linear"]["b"])[..., 0]
    return np.asarray(params["m"]), np.asarray(params["b"])


def _pure() -> Model:
    import jax

    def init(key):
        m_key, b_key = jax.random.split(key)
        return {"m": jax.random.normal(m_key, ()), "b": jax.random.normal(b_key, ())}

    def apply(params, x):
        return params["m"] * x + params["b"]

    return Model(init, apply)


def _haiku() -> Model:
    import haiku as hk
    import jax.numpy as jnp

    def forward(x):
        return hk.Linear(1, b_init=hk.initializers.RandomNormal())(x[:, None])[:, 0]

    # No randomness at apply time, so drop the rng argument.
    net = hk.without_apply_rng(hk.transform(forward))
    return Model(lambda key: net.init(key, jnp.zeros((1,), jnp.float32)), net.apply)
