"""The two built-in tasks, and their models written two ways (plain JAX params, or a small
dm-haiku module):

- `ymxb`: y = m*x + b, the tutorial's line (the default task);
- `linreg`: y = X w + b with D features, a real matrix product per step.

Both are checked against the normal equation of exactly the data trained on, made from
sufficient statistics shard by shard, so the driver holds one shard at a time.
"""

import math
from typing import Iterable, Optional, Tuple

import numpy as np

from ymxb.spec.coerce import Rule
from ymxb.spec.tasks import Model, Reference, Setting, Task, float32_floor

# Largest |y| whose square (the loss) stays within float32.
MAX_DATA_SCALE = 1e18
# The most features linreg takes: its reference solves a (D + 1)-square normal equation in float64.
MAX_FEATURES = 4096


def _non_negative(value) -> Optional[str]:
    return "must be >= 0" if value < 0 else None


def _too_big(scale: float) -> Optional[str]:
    if scale > MAX_DATA_SCALE:
        return (f"y would reach that size, and the loss (its square) would overflow float32 (max "
                f"3.4e38); keep it below {MAX_DATA_SCALE:.0e}")
    return None


class Ymxb(Task):
    """y = m*x + b + noise, x ~ U(-1, 1): the tutorial's line, two params, checked against the
    normal equation of exactly the data trained on."""

    name = "ymxb"
    summary = "y = m*x + b"
    settings = (Setting("true_m", 2.0, "slope of the generating line", metavar="M"),
                Setting("true_b", -1.0, "intercept of the generating line", metavar="B"),
                Setting("noise", 0.1, "std of the Gaussian noise on y", _non_negative, "STD"))
    models = ("pure", "haiku")
    about = "data: y = m*x + b + noise, x ~ U(-1, 1)"
    reference_name = "normal_equation"

    def check(self, s):
        scale = abs(s["true_m"]) + abs(s["true_b"]) + 6 * s["noise"]
        problem = _too_big(scale)
        if problem:
            return f"|--true-m| + |--true-b| + 6 x --noise is {scale:.3g}: {problem}"
        return None

    def shard(self, s, data_seed, host_index, samples):
        rng = np.random.default_rng([data_seed, host_index])
        x = rng.uniform(-1.0, 1.0, samples)
        y = s["true_m"] * x + s["true_b"] + s["noise"] * rng.standard_normal(samples)
        return x.astype(np.float32), y.astype(np.float32)

    def model(self, s, name):
        return line(name)

    def flat(self, s, params):
        return np.stack(line_mb(params), axis=-1)

    def shown(self, s, flat):
        return {"m": flat[..., 0], "b": flat[..., 1]}

    def reference(self, s, shards):
        # The normal equation from sufficient statistics summed shard by shard, so the driver
        # holds one shard at a time (task linreg's, with D = 1).
        return _least_squares(shards, 1)

    def draw_fit(self, s, ax, x, y, fitted, solution):
        line = np.array([-1.0, 1.0])
        for i, member in enumerate(fitted):
            ax.plot(line, member["m"] * line + member["b"], lw=1, alpha=0.6, color="tab:blue",
                    label=f"fitted ({len(fitted)} member{'s' if len(fitted) > 1 else ''})" if i == 0 else None)
        ax.plot(line, solution["m"] * line + solution["b"], "k--", lw=1.5,
                label=f"normal equation m={solution['m']:.4g} b={solution['b']:.4g}")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        return True


def normal_equation(x: np.ndarray, y: np.ndarray) -> Tuple[float, float]:
    """Closed-form least squares for y ~ m*x + b, in float64: solve (X^T X) w = X^T y."""
    design = np.stack([np.asarray(x, np.float64), np.ones(len(x))], axis=1)
    m, b = np.linalg.solve(design.T @ design, design.T @ np.asarray(y, np.float64))
    return float(m), float(b)


class Linreg(Task):
    """y = X w + b + noise, X ~ U(-1, 1)^D, the true weights drawn from the data seed: D + 1
    params, checked against the normal equation in D + 1 unknowns, made from sufficient
    statistics shard by shard (X^T X, X^T y), so the driver holds one shard at a time. With D
    in the hundreds a step is a real matrix product (and an ensemble's, a matrix-matrix one)."""

    name = "linreg"
    summary = "y = X w + b, --features D"
    settings = (Setting("features", 8, "inputs per point (D)", metavar="D",
                        rule=Rule(int, low=1, high=MAX_FEATURES, wants=f"a positive integer, at most {MAX_FEATURES:,} "
                                  "(the reference solves a (D + 1)-square normal equation)")),
                Setting("noise", 0.1, "std of the Gaussian noise on y", _non_negative, "STD"))
    models = ("pure", "haiku")
    about = "data: y = X w + b + noise, X ~ U(-1, 1)^D, w and b drawn from --data-seed"
    reference_name = "normal_equation"

    def truth(self, s, data_seed: int) -> Tuple[np.ndarray, float]:
        """The generating weights and intercept: var(x . w) = 1, whatever D."""
        rng = np.random.default_rng([data_seed, 2**32])  # a stream no host index reaches
        d = s["features"]
        return rng.standard_normal(d) * math.sqrt(3.0 / d), float(rng.standard_normal())

    def check(self, s):
        return _too_big(4.0 + 6 * s["noise"])  # |x . w| within 6 std, |b| within 3

    def shard(self, s, data_seed, host_index, samples):
        w, b = self.truth(s, data_seed)
        rng = np.random.default_rng([data_seed, host_index])
        x = rng.uniform(-1.0, 1.0, (samples, s["features"]))
        y = x @ w + b + s["noise"] * rng.standard_normal(samples)
        return x.astype(np.float32), y.astype(np.float32)

    def model(self, s, name):
        return plane(name, s["features"])

    def flat(self, s, params):
        w, b = plane_wb(params)
        return np.concatenate([w, b[..., None]], axis=-1)

    def shown(self, s, flat):
        d = s["features"]
        return {"w[0]": flat[..., 0], f"w[{d - 1}]": flat[..., d - 1], "b": flat[..., d]}

    def reference(self, s, shards):
        # float32 gradient descent stops where its rounding of the gradient (a few ulps of the
        # params' scale) is all that is left, magnified by the conditioning of Z^T Z.
        return _least_squares(shards, s["features"], floor=True)


def _least_squares(shards: Iterable[Tuple[np.ndarray, np.ndarray]], features: int, floor: bool = False) -> Reference:
    """The least-squares solution of y ~ X w + b, float64, from the sufficient statistics of
    each shard (Z = [X, 1]: A = Z^T Z, c = Z^T y, y^T y), summed one shard at a time: the
    memory it takes does not grow with the data. The loss there, from the same sums; with
    `floor`, the least error float32 training can be held to (FLOAT32_ULPS ulps of the params'
    scale, magnified by the conditioning of A)."""
    a, c, yy, n = np.zeros((features + 1, features + 1)), np.zeros(features + 1), 0.0, 0
    for x, y in shards:
        z = np.concatenate([np.asarray(x, np.float64).reshape(len(x), features), np.ones((len(x), 1))], axis=1)
        y = np.asarray(y, np.float64)
        a += z.T @ z
        c += z.T @ y
        yy += float(y @ y)
        n += len(y)
    theta = np.linalg.solve(a, c)
    loss = max(0.0, float(yy - 2 * theta @ c + theta @ a @ theta) / n)  # >= 0: rounding apart
    return Reference(theta, loss, float32_floor(theta, np.linalg.cond(a)) if floor else None)


# The models: each gives init(key) -> params and apply(params, x) -> y (JAX, used on the
# hosts), and its params back as arrays (NumPy only; a leading member axis is kept).

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
