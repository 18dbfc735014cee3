"""What a run is made of, each part a frozen dataclass validated once when it is made:

- `SliceSpec`: where it runs (the cluster, the platform, the slice's shape, the timeout);
- `TrialSpec`: what one trial trains (data, model, optimiser, lr, seed, steps, ...);
- `Program`: trials that differ only in lr and seed, trained together as one compiled program
  on one slice shape (a single run is a program of one trial);
- `Recovery`: checkpoints and the restart budgets (how a run survives host loss).

Field names are the flags' names with underscores; errors name the flag (`--data-seed`), and
sweep files use the same names.
"""

import dataclasses
import functools
import math
from typing import Dict, Optional, Tuple

from ymxb.spec import tasks
from ymxb.errors import UsageError

PLATFORMS = ("tpu", "gpu", "cpu-sim")  # the names of the classes in platforms.py
PARALLEL_MODES = ("pmap", "sharding")
# optax optimisers offered by --optimizer, each built as optax.<name>(learning_rate=lr). No
# weight decay (adamw) here: it moves the optimum away from the normal-equation solution.
OPTIMIZERS = ("sgd", "adam", "adagrad", "rmsprop")
MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits: 2**32 would silently be seed 0


@functools.lru_cache(maxsize=None)
def _fields(cls) -> tuple:
    """dataclasses.fields, asked once per class (10^5 trials asked it ~5 times each)."""
    return dataclasses.fields(cls)


class _Spec:
    """What every spec shares: replace, its fields (as names and as a dict), made from flags."""

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def asdict(self) -> dict:
        return dict(vars(self))  # flat: every field is a plain value

    @classmethod
    def fields(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in _fields(cls))

    @classmethod
    def of(cls, source):
        """The spec made of `source`'s attributes of the same names (parsed flags)."""
        return cls(**{f: getattr(source, f) for f in cls.fields()})


@dataclasses.dataclass(frozen=True)
class SliceSpec(_Spec):
    # Slice shape: one Ray actor (one JAX process) per host. None: the platform decides
    # (cpu-sim: 4 x 2; tpu: the slice's hosts x chips; gpu: every GPU node x its GPUs).
    hosts: Optional[int] = None
    devices_per_host: Optional[int] = None
    # Multislice: this many slices of one kind, `hosts` each, joined into one JAX program
    # (TPU: over the data-centre network; cpu-sim: simulated). Process order is slice-major.
    slices: int = 1
    platform: Optional[str] = None  # None: detect from the cluster (see platforms.py)
    tpu_type: Optional[str] = None  # which slice: pod type ("v4-32") or generation ("v4")
    tpu_topology: Optional[str] = None  # which slice: chip topology ("2x2x4")
    address: Optional[str] = None  # the Ray cluster; None: $RAY_ADDRESS, else an embedded one
    timeout: float = 120.0  # seconds placement or initialize may take; training between calls
    # Seconds a run joined to a cluster waits for its slice to be whole: after `ray up` the
    # autoscaler makes the TPU slice or GPU nodes in minutes (0: fail at once, as an embedded run).
    wait: float = 900.0

    def __post_init__(self):
        for name in ("hosts", "devices_per_host"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        _check_positive_int("slices", self.slices)
        _check_positive_float("timeout", self.timeout)
        if isinstance(self.wait, bool) or not isinstance(self.wait, (int, float)) or not 0 <= self.wait < math.inf:
            raise UsageError(f"--wait must be 0 (fail at once) or more seconds, got {self.wait!r}")
        if self.platform is not None:
            _check_choice("platform", self.platform, PLATFORMS)
        _as_floats(self, ("timeout", "wait"))

    @property
    def shaped(self) -> bool:
        """Whether the slice shape is known (the platform fills it in otherwise)."""
        return self.hosts is not None and self.devices_per_host is not None

    @property
    def settled(self) -> bool:
        """Whether the slice is known as it will run: shaped, on a known platform."""
        return self.shaped and self.platform is not None

    @property
    def processes(self) -> int:
        """JAX processes (Ray actors): every host of every slice."""
        return self.slices * self.hosts

    @property
    def global_devices(self) -> int:
        return self.processes * self.devices_per_host

    @property
    def mesh_shape(self) -> Tuple[int, int]:
        """The devices as the mesh's two axes hold them, (slices, devices of a slice), in
        process order. On GPU the outer axis is the nodes (one host each): a node is to its
        GPUs what a slice is to its chips, a group joined by a faster network than the rest."""
        if self.platform == "gpu":
            return self.processes, self.devices_per_host
        return self.slices, self.hosts * self.devices_per_host

    def label(self) -> str:
        """The shape in short: "4x2" (hosts x devices), "2x4x2" with slices."""
        return f"{self.slices}x" * (self.slices > 1) + f"{self.hosts}x{self.devices_per_host}"


@dataclasses.dataclass(frozen=True, init=False)
class TrialSpec(_Spec):
    """What one trial trains: its task (tasks.py) with the task's own settings, and the
    settings every task shares. Made as `TrialSpec(lr=0.3, true_m=3.0)`: a name that is not a
    field here is one of the task's settings; the task fills in the rest and checks them."""

    task: str = tasks.DEFAULT  # a built-in task's name, or package.module:NAME
    settings: Tuple[Tuple[str, object], ...] = ()  # the task's, every one, in its order
    data_seed: int = 0  # with the host index, what each host's shard is made from
    samples_per_host: int = 1024
    # Training: full-batch gradient descent on the task's loss (default: mean squared error).
    model: str = "pure"  # one of the task's models (its first by default)
    optimizer: str = "sgd"
    lr: float = 0.1
    seed: int = 0  # the initial params
    steps: int = 500
    steps_per_call: int = 100  # steps fused into one compiled call; the host blocks between calls
    parallel: str = "pmap"
    ensemble: int = 0  # 0: one model, data-parallel; E > 0: E members split over all devices
    tol: float = 1e-4  # max |param - reference solution| to pass

    def __init__(self, task: str = tasks.DEFAULT, settings=(), **values):
        the_task = tasks.get(task)
        shared = {f.name: values.pop(f.name) for f in _fields(type(self)) if f.name in values}
        shared.setdefault("model", the_task.models[0])
        for f in _fields(type(self)):
            object.__setattr__(self, f.name, shared.get(f.name, f.default))
        object.__setattr__(self, "task", task)
        self.__post_init__()
        object.__setattr__(self, "settings", tasks.settle(the_task, {**dict(settings), **values}))

    def __post_init__(self):
        for name in ("samples_per_host", "steps", "steps_per_call"):
            _check_positive_int(name, getattr(self, name))
        for name in ("lr", "tol"):
            _check_positive_float(name, getattr(self, name))
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
                raise UsageError(f"{_flag(name)} must be an integer from 0 to {MAX_SEED} (2**32 - 1: "
                                 f"JAX keys take 32 bits), got {value!r}")
        if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, int) or self.ensemble < 0:
            raise UsageError(f"--ensemble must be 0 (off) or a positive member count, got {self.ensemble!r}")
        _check_choice("model", self.model, tasks.get(self.task).models)
        _check_choice("parallel", self.parallel, PARALLEL_MODES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _as_floats(self, ("lr", "tol"))

    @classmethod
    def keys(cls, task: str = tasks.DEFAULT) -> Tuple[str, ...]:
        """The settings a trial of `task` has, by name, as flags and sweep files name them:
        the task's own, then the shared ones."""
        shared = tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("task", "settings"))
        return tuple(s.name for s in tasks.get(task).settings) + shared

    @classmethod
    def of(cls, source) -> "TrialSpec":
        """The trial made of `source`'s attributes of the same names (parsed flags)."""
        task = getattr(source, "task", tasks.DEFAULT)
        return cls(task, **{k: getattr(source, k) for k in cls.keys(task)})

    @classmethod
    def of_config(cls, config: dict) -> "TrialSpec":
        """The trial a record's flat config describes (asdict's inverse; other keys ignored)."""
        task = config.get("task", tasks.DEFAULT)
        return cls(task, **{k: config[k] for k in cls.keys(task) if k in config})

    def asdict(self) -> dict:
        """Every setting, flat, named as the flags: the task (left out for the default task, as
        records were before there were others), its settings, then the shared ones."""
        named = {} if self.task == tasks.DEFAULT else {"task": self.task}
        named.update(self.settings)
        named.update((f.name, getattr(self, f.name)) for f in _fields(type(self))
                     if f.name not in ("task", "settings"))
        return named

    @property
    def of_task(self) -> Dict[str, object]:
        """The task's settings, by name (what the task's functions are given)."""
        return dict(self.settings)

    @property
    def members(self) -> int:
        """Models this trial trains: its ensemble's members, or the one data-parallel model."""
        return self.ensemble or 1

    def check_fits(self, slice_spec: SliceSpec) -> None:
        """What only a shaped slice can tell: UsageError when this trial cannot run on it."""
        if self.samples_per_host % slice_spec.devices_per_host:
            raise UsageError(f"--samples-per-host ({self.samples_per_host}) must be divisible by "
                             f"--devices-per-host ({slice_spec.devices_per_host})")

    def global_samples(self, hosts: int) -> int:
        return hosts * self.samples_per_host

    def structure(self) -> "TrialSpec":
        """This trial but for the settings a program batches (BATCHED, set to their defaults):
        trials with the same structure train together in one program. Made once per trial
        (a sweep of 10^5 trials asks ~3 times each; making it checks every setting again)."""
        made = self.__dict__.get("_structure")
        if made is None:  # this valid trial with valid defaults: no need to check it all again
            made = object.__new__(TrialSpec)
            made.__dict__.update({**self.__dict__, **{name: _TRIAL_DEFAULTS[name] for name in BATCHED}})
            object.__setattr__(self, "_structure", made)  # not a field: equality and hash ignore it
        return made


@dataclasses.dataclass(frozen=True)
class Recovery(_Spec):
    """How a run survives host loss (supervisor.py): none of it changes a result."""

    checkpoint_every: int = 1  # compiled calls between the driver's checkpoints
    max_restarts: int = 2  # restarts after failures: a host died, crashed or hung
    max_preemptions: int = 10  # restarts after a host or its node was taken away

    def __post_init__(self):
        _check_positive_int("checkpoint_every", self.checkpoint_every)
        for name in ("max_restarts", "max_preemptions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"{_flag(name)} must be an integer >= 0, got {value!r}")


# The settings trials of one program may differ in: each is one entry on the program's model axis.
BATCHED = ("lr", "seed")
_TRIAL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrialSpec)}


@dataclasses.dataclass(frozen=True)
class Program:
    """Trials trained together in one compiled program on one (shaped) slice: the same
    `trial` settings but for lr and seed, which are one per trial.

    The program's model axis has one entry per trial (one-model trials: replicated on every
    device, the batch split over devices) or one per (trial, member) (ensembles: split over
    every device, padded to a multiple of the device count; padding is never reported).
    """

    slice: SliceSpec
    trial: TrialSpec  # the shared settings (its own lr and seed are those of trials[0])
    lrs: Tuple[float, ...]
    seeds: Tuple[int, ...]

    @classmethod
    def of(cls, slice_spec: SliceSpec, trials) -> "Program":
        """The program of `trials` (TrialSpecs equal but for lr and seed) on a shaped slice."""
        trials = list(trials)
        if len({t.structure() for t in trials}) > 1:
            raise ValueError("a program's trials may differ only in " + " and ".join(BATCHED))
        return cls(slice_spec, trials[0], tuple(t.lr for t in trials), tuple(t.seed for t in trials))

    def trials(self) -> Tuple[TrialSpec, ...]:
        return tuple(self.trial.replace(lr=lr, seed=seed) for lr, seed in zip(self.lrs, self.seeds))

    @property
    def count(self) -> int:
        """Trials in the program."""
        return len(self.lrs)

    @property
    def entries(self) -> int:
        """Models on the program's axis, padding left out: trials x members."""
        return self.count * self.trial.members

    @property
    def padded_entries(self) -> int:
        """Ensembles: entries rounded up to a multiple of the global device count."""
        if not self.trial.ensemble:
            return self.count
        d = self.slice.global_devices
        return -(-self.entries // d) * d

    @property
    def entries_per_device(self) -> int:
        return self.padded_entries // self.slice.global_devices if self.trial.ensemble else self.count


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _as_floats(spec, names) -> None:
    """Numbers as floats, however they were written (`lr: 1` in YAML is an int): equal
    settings are equal values, and a trial's id (results.trial_id) does not depend on the
    spelling."""
    for name in names:
        object.__setattr__(spec, name, float(getattr(spec, name)))


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"{_flag(name)} must be a positive integer, got {value!r}")


def _check_positive_float(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{_flag(name)} must be a positive finite number, got {value!r}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"{_flag(name)} must be one of {', '.join(choices)}; got {value!r}")
