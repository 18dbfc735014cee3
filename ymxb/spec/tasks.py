"""The task protocol: what a model brings to the machinery.

Everything else (one actor per host, jax.distributed, pmap or sharding, ensembles and sweeps on
a shared model axis, checkpoints and restarts, verification of every host and device, the
store, table and plots) is the same for every task. A task is a small class:

    class MyTask(Task):
        name = "mine"
        settings = (Setting("features", 4, "inputs per point"),)   # flags, sweep keys, trial ids
        def shard(self, s, data_seed, host_index, samples): ...    # NumPy (x, y), this host's (or
                                                                   # dataset(s, data_seed): all of it)
        def model(self, s, name): return Model(init, apply)        # JAX: key -> params; (params, x) -> y
    TASK = MyTask()                                                # launch.py --task my.module:TASK

and may add a loss (`loss(predictions, y)` in JAX, a number per point as optax's losses give,
e.g. `optax.softmax_cross_entropy_with_integer_labels` on (n, classes) logits and int labels;
default: squared error, predictions shaped like y), a penalty on the params added to the mean
loss (`penalty(s, params)`: weight decay as an L2 term, say), names for a few of its params
(`shown`), a reference solution (`reference`, made from the data shard by shard, with the
least tolerance float32 can be held to), metrics (`metrics`: accuracy, say, measured at the
end on the training shard and on a held-out shard the task gives, `held_out`) and a figure of
its fit (`draw_fit`).
`s` is the task's settings, by name. The built-in tasks are in builtin.py; registry.py finds a
task by its name.
"""

import dataclasses
from typing import Callable, Dict, Iterable, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ymxb.errors import UsageError
from ymxb.spec.coerce import INT32, Rule, coerce, flag

# How close float32 training gets to a float64 solution, in units of float32's epsilon relative
# to the params' size (a well-conditioned problem): rounding in the loss and gradient leaves a few.
FLOAT32_ULPS = 16
F32_EPS = float(np.finfo(np.float32).eps)


class Model(NamedTuple):
    """A model's JAX functions."""

    init: Callable  # PRNG key -> params (a pytree)
    apply: Callable  # (params, x) -> predictions, a leading axis of points (shaped like y for squared error)


class Metric(NamedTuple):
    """A task's measure of a model: `fn(predictions, y)` in JAX gives a number per point, and
    the metric is its mean over the points (accuracy: `(logits.argmax(-1) == labels)`).
    `higher_is_better` says which way ranks trials (--best-by)."""

    fn: Callable
    higher_is_better: bool = False


@dataclasses.dataclass(frozen=True)
class Setting:
    """One of a task's settings: a flag (`--name-with-dashes`), a sweep key and part of a
    trial's id, like every other setting. Its type is its default's (float, int or str), and
    an int is at most 2**31 - 1 in size unless `rule` says otherwise; `check(value)` says what
    is wrong with a value of that type, or None."""

    name: str
    default: object
    help: str = ""
    check: Optional[Callable[[object], Optional[str]]] = None
    metavar: Optional[str] = None  # in --help: --true-m M
    rule: Optional[Rule] = None  # default: made from the default's type

    @property
    def flag(self) -> str:
        return flag(self.name)

    def canonical(self, value):
        """`value` as this setting's type (numbers as numbers: `1` and `1.0` are one float);
        UsageError saying what is wrong."""
        value = coerce(self.flag, value, self.rule or _rule_of(self.default))
        problem = self.check(value) if self.check else None
        if problem:
            raise UsageError(f"{self.flag} {problem}, got {value!r}")
        return value


def _rule_of(default) -> Rule:
    kind = type(default)
    if kind is int:
        return Rule(int, low=-INT32, high=INT32, wants=f"an integer (of size at most {INT32:,})")
    return Rule(kind)


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
    # (predictions, y) -> the loss per point, (n,), or per element of each point's prediction
    # (summed per point), in JAX; training minimises its mean over points. None: squared error.
    loss: Optional[Callable] = None
    # name -> Metric. Each trial records, per member and as their mean, `train_<name>` on the
    # training shard and, where the task gives a held-out shard, `eval_<name>` and `eval_loss`.
    metrics: Mapping[str, Metric] = {}

    def check(self, s: Mapping) -> Optional[str]:
        """What is wrong with these settings together, or None."""
        return None

    def shard(self, s: Mapping, data_seed: int, host_index: int, samples: int) -> Tuple[np.ndarray, np.ndarray]:
        """Host `host_index`'s data, `samples` points (NumPy; the same whenever it is asked):
        x and y each with a leading axis of points, in floats (as float32) or integers (as int32:
        labels, say)."""
        raise NotImplementedError

    def dataset(self, s: Mapping, data_seed: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """A fixed dataset, whole (NumPy x, y as `shard` gives them), for a task that has one
        instead of a `shard`: ymxb cuts it in order, host i's shard the points [i * samples,
        (i + 1) * samples) (--samples-per-host), and leaves out the points past the last host's,
        as the report says. None (the default): `shard` makes each host's."""
        return None

    @property
    def has_dataset(self) -> bool:
        """Whether the task gives a fixed dataset (it defines `dataset`)."""
        return type(self).dataset is not Task.dataset

    def held_out(self, s: Mapping, data_seed: int, host_index: int,
                 samples: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Host `host_index`'s held-out data, never trained on (NumPy x, y as `shard` gives
        them; `samples`: the training shard's size, for scale), or None: none. Every host's
        has the same number of points, a multiple of its devices."""
        return None

    def model(self, s: Mapping, name: str) -> Model:
        """The JAX functions of model `name` (one of `models`)."""
        raise NotImplementedError

    def penalty(self, s: Mapping, params):
        """A term on one model's params added to its mean loss (an L2 penalty, say), a number,
        in JAX; None: none. Training minimises, and the records' losses are, the sum."""
        return None

    def penalty_of(self, s: Mapping) -> Callable:
        """params -> this task's penalty at settings `s` (None where it has none)."""
        return lambda params: self.penalty(s, params)

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

    @property
    def draws_fit(self) -> bool:
        """Whether the task can draw its fit (it defines draw_fit)."""
        return type(self).draw_fit is not Task.draw_fit

    def resolve(self, values: Mapping) -> Tuple[Tuple[str, object], ...]:
        """Every setting of this task, in its order: `values` where given (as its type), else
        its default; UsageError for an unknown name, a bad value, or settings that do not go
        together."""
        known = {s.name: s for s in self.settings}
        unknown = [k for k in values if k not in known]
        if unknown:
            names = ", ".join(known) or "none"
            raise UsageError(f"{unknown[0]!r} is not a setting of task {self.name} (its settings: {names})")
        settled = tuple((name, s.canonical(values.get(name, s.default))) for name, s in known.items())
        problem = self.check(dict(settled))
        if problem:
            raise UsageError(problem)
        return settled

    def shown_of(self, s: Mapping) -> Callable[[np.ndarray], Dict[str, float]]:
        """A flat params vector -> its few named scalars, as floats (tables, reports)."""
        return lambda params: {k: float(v) for k, v in self.shown(s, np.asarray(params)).items()}


def float32_floor(solution: np.ndarray, conditioning: float = 1.0) -> float:
    """The least |error| float32 training can be held to around `solution`: FLOAT32_ULPS ulps
    of its scale, magnified by the problem's conditioning (1: a well-conditioned one)."""
    return float(FLOAT32_ULPS * F32_EPS * conditioning * max(1.0, float(np.abs(solution).max())))
