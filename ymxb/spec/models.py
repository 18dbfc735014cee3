"""The built-in tasks' models (tasks.py), each written two ways: plain JAX params, or a small
dm-haiku module. Each gives `init(key) -> params` and `apply(params, x) -> y` (JAX, used on
the hosts), and its params back as arrays (NumPy only; a leading member axis is kept).

- `line`: y = m*x + b (task ymxb), scalar params;
- `plane`: y = X w + b, D features (task linreg).
"""

from typing import Callable, NamedTuple, Tuple

import numpy as np


class Model(NamedTuple):
    """A model's JAX functions."""

    init: Callable  # PRNG key -> params (a pytree)
    apply: Callable  # (params, x) -> predictions, shaped like y


def line(name: str):
    """The JAX functions of y = m*x + b: "pure" or "haiku"."""
    return {"pure": _pure_line, "haiku": _haiku_line}[name]()


def line_mb(params) -> Tuple[np.ndarray, np.ndarray]:
    """(m, b) from a line's params (NumPy pytree, either way of writing it)."""
    if "linear" in params:
        return np.asarray(params["linear"]["w"]), np.asarray(params["linear"]["b"])
    return np.asarray(params["m"]), np.asarray(params["b"])


def plane(name: str, features: int):
    """The JAX functions of y = X w + b with `features` inputs: "pure" or "haiku"."""
    return {"pure": _pure_plane, "haiku": _haiku_plane}[name](features)


def plane_wb(params) -> Tuple[np.ndarray, np.ndarray]:
    """(w, b) from a plane's params (NumPy pytree): w (..., D), b (...)."""
    if "linear" in params:
        return np.asarray(params["linear"]["w"])[..., 0], np.asarray(params["linear"]["b"])[..., 0]
    return np.asarray(params["w"]), np.asarray(params["b"])


def _pure_line():
    import jax

    def init(key):
        m_key, b_key = jax.random.split(key)
        return {"m": jax.random.normal(m_key, ()), "b": jax.random.normal(b_key, ())}

    def apply(params, x):
        return params["m"] * x + params["b"]

    return Model(init, apply)


def _haiku_line():
    import haiku as hk
    import jax.numpy as jnp

    class Linear(hk.Module):
        """hk.Linear(1) on x[:, None], with scalar params: w * x + b stays elementwise under a
        vmap over members, where hk.Linear's dot becomes a batched (n, 1) x (1, 1) matmul
        (0.34-0.40x as fast on a GPU). hk.Linear(1)'s initialisers, drawn in the same order:
        a seed starts from the values it gave."""

        def __call__(self, x):
            w = hk.get_parameter("w", (), x.dtype, init=hk.initializers.TruncatedNormal(1.0))
            b = hk.get_parameter("b", (), x.dtype, init=hk.initializers.RandomNormal())
            return w * x + b

    def forward(x):
        return Linear(name="linear")(x)

    # No randomness at apply time, so drop the rng argument.
    net = hk.without_apply_rng(hk.transform(forward))
    return Model(lambda key: net.init(key, jnp.zeros((1,), jnp.float32)), net.apply)


def _pure_plane(features: int):
    import jax
    import jax.numpy as jnp

    def init(key):
        w_key, b_key = jax.random.split(key)
        return {"w": jax.random.normal(w_key, (features,)) / jnp.sqrt(features),
                "b": jax.random.normal(b_key, ())}

    def apply(params, x):
        return x @ params["w"] + params["b"]

    return Model(init, apply)


def _haiku_plane(features: int):
    import haiku as hk
    import jax.numpy as jnp

    def forward(x):
        # hk.Linear's own initialisers (w truncated normal, std 1/sqrt(D)), b drawn too.
        return hk.Linear(1, b_init=hk.initializers.RandomNormal(), name="linear")(x)[:, 0]

    net = hk.without_apply_rng(hk.transform(forward))
    return Model(lambda key: net.init(key, jnp.zeros((1, features), jnp.float32)), net.apply)
