"""Tasks: what a model brings to the machinery, and the two built in.

Everything else (one actor per host, jax.distributed, pmap or sharding, ensembles and sweeps on
a shared model axis, checkpoints and restarts, verification of every host and device, the
store, table and plots) is the same for every task. A task is a small class:

    class MyTask(Task):
        name = "mine"
        settings = (Setting("features", 4, "inputs per point"),)   # flags, sweep keys, trial ids
        def shard(self, s, data_seed, host_index, samples): ...    # NumPy (x, y), this host's
        def model(self, s, name): return Model(init, apply)        # JAX: key -> params; (params, x) -> y
    TASK = MyTask()                                                # launch.py --task my.module:TASK

and may add a loss (`loss(predictions, y)`, per point; default: squared error), names for a
few of its params (`shown`), a reference solution (`reference`, made from the data shard by
shard, with the least tolerance float32 can be held to) and a figure of its fit (`draw_fit`).
`s` is the task's settings, by name. Tasks are found by name: `ymxb` (y = m*x + b, the
default), `linreg` (y = X w + b), or `package.module:NAME` (importable here and on every host).
"""

import dataclasses
import importlib
import math
import os
import re
import sys
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from ymxb.spec import models
from ymxb.errors import UsageError, first_line
from ymxb.spec.models import Model  # noqa: F401 (a task's model: what a user's task returns)

DEFAULT = "ymxb"
# How close float32 training gets to a float64 solution, in units of float32's epsilon relative
# to the params' size (a well-conditioned problem): rounding in the loss and gradient leaves a few.
FLOAT32_ULPS = 16
F32_EPS = float(np.finfo(np.float32).eps)
# Largest |y| whose square (the loss) stays within float32.
MAX_DATA_SCALE = 1e18


@dataclasses.dataclass(frozen=True)
class Setting:
    """One of a task's settings: a flag (`--name-with-dashes`), a sweep key and part of a
    trial's id, like every other setting. Its type is its default's (float, int or str);
    `check(value)` says what is wrong with a value, or None."""

    name: str
    default: object
    help: str = ""
    check: Optional[Callable[[object], Optional[str]]] = None
    metavar: Optional[str] = None  # in --help: --true-m M

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def canonical(self, value):
        """`value` as this setting's type (numbers as numbers: `1` and `1.0` are one float);
        UsageError saying what is wrong."""
        kind = type(self.default)
        if kind is float and isinstance(value, str):  # YAML reads 1e-2 (no dot) as text
            try:
                value = float(value)
            except ValueError:
                pass
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"{self.flag} must be a finite number, got {value!r}")
            value = float(value)
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageError(f"{self.flag} must be an integer, got {value!r}")
        elif kind is str and not isinstance(value, str):
            raise UsageError(f"{self.flag} must be text, got {value!r}")
        problem = self.check(value) if self.check else None
        if problem:
            raise UsageError(f"{self.flag} {problem}, got {value!r}")
        return value


@dataclasses.dataclass(frozen=True)
class Reference:
    """What training should reach: every param, flat in `Task.flat`'s order (float64), the mean
    loss there, and `floor`: the least |error| float32 training can be held to at this
    problem's scale and conditioning (None: --tol alone decides)."""

    params: np.ndarray
    loss: float
    floor: Optional[float] = None


class Task:
    """A task: fill in `shard` and `model`; the rest has defaults (see the module's docstring)."""

    name = "task"
    summary = ""  # what it fits, in a few words: "y = m*x + b"
    settings: Tuple[Setting, ...] = ()
    models: Tuple[str, ...] = ("pure",)  # the first is the default --model
    about = "the task's data"  # what its data is, in a line: the title of its flags in --help
    reference_name = "reference"  # what its reference is called in the report
    loss: Optional[Callable] = None  # (predictions, y) -> per-point loss, in JAX; None: squared error

    def check(self, s: Mapping) -> Optional[str]:
        """What is wrong with these settings together, or None."""
        return None

    def shard(self, s: Mapping, data_seed: int, host_index: int, samples: int) -> Tuple[np.ndarray, np.ndarray]:
        """Host `host_index`'s data, `samples` points (NumPy; the same whenever it is asked)."""
        raise NotImplementedError

    def model(self, s: Mapping, name: str) -> Model:
        """The JAX functions of model `name` (one of `models`)."""
        raise NotImplementedError

    def flat(self, s: Mapping, params) -> np.ndarray:
        """Every param of each entry, flat: (entries, P) from params with a leading entry axis."""
        import jax

        leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(params)]
        return np.concatenate([leaf.reshape(len(leaf), -1) for leaf in leaves], axis=1)

    def shown(self, s: Mapping, flat: np.ndarray) -> Dict[str, np.ndarray]:
        """A few named scalars of the flat params, for tables and plots (a leading axis kept)."""
        return {f"p[{i}]": flat[..., i] for i in range(min(2, flat.shape[-1]))}

    def reference(self, s: Mapping, shards: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Optional[Reference]:
        """The solution training should reach on the data of `shards` (every host's, in host
        order, made one at a time), or None where the task has none."""
        return None

    def draw_fit(self, s: Mapping, ax, x: np.ndarray, y: np.ndarray, fitted: Sequence[Dict[str, float]],
                 solution: Dict[str, float]) -> bool:
        """Draw the data and the fitted models on a matplotlib `ax`; False where it cannot."""
        return False


def _non_negative(value) -> Optional[str]:
    return "must be >= 0" if value < 0 else None


def _positive(value) -> Optional[str]:
    return "must be a positive integer" if value <= 0 else None


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
        return models.line(name)

    def flat(self, s, params):
        return np.stack(models.line_mb(params), axis=-1)

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
    settings = (Setting("features", 8, "inputs per point (D)", _positive, "D"),
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
        return models.plane(name, s["features"])

    def flat(self, s, params):
        w, b = models.plane_wb(params)
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


def float32_floor(solution: np.ndarray, conditioning: float = 1.0) -> float:
    """The least |error| float32 training can be held to around `solution`: FLOAT32_ULPS ulps
    of its scale, magnified by the problem's conditioning (1: a well-conditioned one)."""
    return float(FLOAT32_ULPS * F32_EPS * conditioning * max(1.0, float(np.abs(solution).max())))


def shower(trial) -> Callable[[np.ndarray], Dict[str, float]]:
    """A trial's flat params vector -> its task's few named scalars, as floats (tables, reports)."""
    task, settings = get(trial.task), trial.of_task
    return lambda params: {k: float(v) for k, v in task.shown(settings, np.asarray(params)).items()}


def of_config(config: Mapping) -> Task:
    """The task of a record's flat config (the default task where it names none)."""
    return get(config.get("task", DEFAULT))


BUILT_IN = {t.name: t for t in (Ymxb(), Linreg())}
_LOADED: Dict[str, Task] = {}


def get(name: str) -> Task:
    """The task called `name`: a built-in one, or `package.module:NAME` (imported from where
    Python finds it, the current folder first; an instance, or a class made into one).
    UsageError, in one line, where there is no such task or it is not one."""
    if not isinstance(name, str):
        raise UsageError(f"--task must be a task's name, got {name!r}")
    if name in BUILT_IN:
        return BUILT_IN[name]
    if name in _LOADED:
        return _LOADED[name]
    module_name, colon, attribute = name.partition(":")
    if not colon or not module_name or not attribute:
        raise UsageError(f"--task {name!r}: not a built-in task ({', '.join(BUILT_IN)}) nor package.module:NAME")
    if os.getcwd() not in sys.path:  # as `python -m` would; Ray gives hosts the driver's folder too
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # whatever the user's module raises on import: say it, in one line
        raise UsageError(f"--task {name}: cannot import {module_name} ({type(err).__name__}: {first_line(err)})") from None
    found = getattr(module, attribute, None)
    if found is None:
        raise UsageError(f"--task {name}: {module_name} has no {attribute}")
    task = found() if isinstance(found, type) else found
    if not isinstance(task, Task):
        raise UsageError(f"--task {name}: {attribute} is not a task: make it a subclass of ymxb.tasks.Task")
    missing = [m for m in ("shard", "model") if getattr(type(task), m) is getattr(Task, m)]
    if missing:
        raise UsageError(f"--task {name}: {attribute} does not say how to make its {' or its '.join(missing)} "
                         f"(define {' and '.join(missing)}: see ymxb.tasks.Task)")
    _LOADED[name] = task
    return task


def try_out(trial) -> None:
    """Before any host starts, what the driver can check of a user's task, on this machine's
    CPU: host 0's shard (its size), the model's init and apply on a few of its points (the
    predictions shaped like y) and the loss there (finite). UsageError, in one line naming
    where in the task it went wrong, if any of it fails."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the driver's JAX: no accelerator needed
    import jax
    import jax.numpy as jnp

    from ymxb.spec import data

    task, s, where = get(trial.task), trial.of_task, f"--task {trial.task}"
    try:
        x, y = data.host_shard(trial, 0)
        model = task.model(s, trial.model)
        params = model.init(jax.random.key(trial.seed))
        predictions = model.apply(params, jnp.asarray(x[:8]))
        if np.shape(predictions) != np.shape(y[:8]):
            raise UsageError(f"{where}: model {trial.model} predicts shape {np.shape(predictions)} for 8 points "
                             f"whose y has shape {np.shape(y[:8])}: apply must give one prediction per point")
        loss = (task.loss(predictions, y[:8]) if task.loss else (predictions - y[:8]) ** 2)
        if np.shape(loss) != np.shape(y[:8]) or not np.all(np.isfinite(loss)):
            raise UsageError(f"{where}: its loss on host 0's first points is {np.asarray(loss)!r}: it must be a "
                             f"finite number per point")
        flat = task.flat(s, jax.tree.map(lambda leaf: np.asarray(leaf)[None], params))  # as the hosts call it
        if np.ndim(flat) != 2 or len(flat) != 1:
            raise UsageError(f"{where}: flat gives shape {np.shape(flat)} for one model's params: it must be "
                             f"(models, params)")
        shown = task.shown(s, np.asarray(flat)[0])
        if any(np.ndim(value) for value in shown.values()):
            raise UsageError(f"{where}: shown gives {shown!r} for one model: each must be one number")
    except UsageError:
        raise
    except Exception as err:  # the user's code raised: say what and where, in one line
        raise UsageError(f"{where}: {type(err).__name__}: {first_line(err, 200)}{traceback_line(err)}") from None


def traceback_line(err: BaseException) -> str:
    """Where in a user's code `err` was raised: " (at FILE:LINE in FUNCTION)", from the last
    frame outside ymxb, JAX, haiku and the other installed packages; "" if none is."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__) if err.__traceback__ else []
    return _user_frame([(f.filename, f.lineno, f.name) for f in frames])


def traceback_text_line(text: str) -> str:
    """traceback_line, from a traceback as text (a host's, as Ray passes it on)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text or "")
    return _user_frame([(path, int(line), name) for path, line, name in frames])


def _user_frame(frames: Sequence[Tuple[str, int, str]]) -> str:
    package = os.path.dirname(os.path.abspath(__file__))
    ours = {name for name in os.listdir(package) if name.endswith(".py")}
    is_ours = lambda path: os.path.basename(os.path.dirname(path)) == "ymxb" and os.path.basename(path) in ours
    mine = [(path, line, name) for path, line, name in frames
            if not is_ours(path) and "-packages" not in path and not path.startswith("<")
            and f"{os.sep}lib{os.sep}python" not in path]
    if not mine:
        return ""
    path, line, name = mine[-1]
    return f" (at {os.path.relpath(path) if path.startswith(os.getcwd()) else path}:{line} in {name})"


def draws_fit(task: Task) -> bool:
    """Whether the task can draw its fit (it defines draw_fit)."""
    return type(task).draw_fit is not Task.draw_fit


def settle(task: Task, values: Mapping) -> Tuple[Tuple[str, object], ...]:
    """Every setting of `task`, in its order: `values` where given (as its type), else its
    default; UsageError for an unknown name, a bad value, or settings that do not go together."""
    known = {s.name: s for s in task.settings}
    unknown = [k for k in values if k not in known]
    if unknown:
        names = ", ".join(known) or "none"
        raise UsageError(f"{unknown[0]!r} is not a setting of task {task.name} (its settings: {names})")
    settled = tuple((name, s.canonical(values.get(name, s.default))) for name, s in known.items())
    problem = task.check(dict(settled))
    if problem:
        raise UsageError(problem)
    return settled
