"""What a run is made of, as plain frozen data:

- `SliceSpec`: where it runs (the cluster, the platform, the slice's shape, the timeout);
- `TrialSpec`: what one trial trains (its task and the task's settings, data, model, optimiser,
  lr, seed, steps, ...);
- `Recovery`: checkpoints and the restart budgets (how a run survives host loss);
- `Program`: trials that differ only in the values it batches (lr, seed, momentum, weight
  decay), trained together as one compiled program on one shaped slice (a single run is a
  program of one trial).

Made directly, a spec holds what it is given, unchecked (tests and benchmarks write valid values).
User values come in through `resolve`, the one boundary: every value coerced by its rule (one
Rule per field, below), the task imported, its settings checked; UsageError in one line naming
the flag. Field names are the flags' names with underscores, and sweep files use them too.
"""

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

from ymxb.errors import UsageError
from ymxb.spec import registry
from ymxb.spec.coerce import INT32, SECONDS, Rule, coerce, flag

PLATFORMS = ("tpu", "gpu", "cpu-sim")  # the platforms of driver/platforms.py
PARALLEL_MODES = ("pmap", "sharding")
# optax optimisers offered by --optimizer, each built as optax.<name>(learning_rate=lr, ...).
OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "rmsprop")
# Which optimisers take each option (optax's own argument names): sgd's and rmsprop's momentum,
# adamw's decoupled weight decay.
OPTIONS = {"momentum": ("sgd", "rmsprop"), "weight_decay": ("adamw",)}
# How the learning rate changes over the run's steps: a factor on every trial's own lr (optax
# schedules from 1 to 0 over --steps; warmup_cosine warms up over the first 5%).
SCHEDULES = ("constant", "cosine", "linear", "warmup_cosine")
MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits: 2**32 would silently be seed 0
MAX_HOSTS = 100_000
MAX_DEVICES = 4096  # per host


def _count(high: int = INT32, none: bool = False) -> Rule:
    return Rule(int, low=1, high=high, none=none, wants="a positive integer")


_POSITIVE = Rule(float, above=0, wants="a positive finite number")


class _Spec:
    """What every spec shares: replace, its fields as a dict, `resolve` from user values."""

    RULES: Dict[str, Rule] = {}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def asdict(self) -> dict:
        return dict(vars(self))  # flat: every field is a plain value

    @classmethod
    def fields(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def resolve(cls, values: Optional[Mapping] = None, /, **more):
        """The spec of user values (a mapping, keywords, or both): each coerced by its rule,
        the rest defaults; UsageError naming the flag where one is wrong or unknown."""
        values = {**(values or {}), **more}
        unknown = [k for k in values if k not in cls.RULES]
        if unknown:
            raise UsageError(f"{flag(unknown[0])} is not a setting of {cls.__name__}")
        return cls(**{k: coerce(flag(k), v, cls.RULES[k]) for k, v in values.items()})

    @classmethod
    def of(cls, source):
        """The spec of `source`'s attributes of the same names (parsed flags), resolved."""
        return cls.resolve({f: getattr(source, f) for f in cls.fields()})


@dataclasses.dataclass(frozen=True)
class SliceSpec(_Spec):
    # Slice shape: one Ray actor (one JAX process) per host. None: the platform decides
    # (cpu-sim: 4 x 2; tpu: the slice's hosts x chips; gpu: every GPU node x its GPUs).
    hosts: Optional[int] = None
    devices_per_host: Optional[int] = None
    # Multislice: this many slices of one kind, `hosts` each, joined into one JAX program
    # (TPU: over the data-centre network; cpu-sim: simulated). Process order is slice-major.
    slices: int = 1
    platform: Optional[str] = None  # None: detect from the cluster (see driver/platforms.py)
    tpu_type: Optional[str] = None  # which slice: pod type ("v4-32") or generation ("v4")
    tpu_topology: Optional[str] = None  # which slice: chip topology ("2x2x4")
    address: Optional[str] = None  # the Ray cluster; None: $RAY_ADDRESS, else an embedded one
    timeout: float = 120.0  # seconds placement or initialize may take; training between calls
    # Seconds a run joined to a cluster waits for its slice to be whole: after `ray up` the
    # autoscaler makes the TPU slice or GPU nodes in minutes (0: fail at once, as an embedded run).
    wait: float = 900.0

    RULES = {
        "hosts": _count(MAX_HOSTS, none=True),
        "devices_per_host": _count(MAX_DEVICES, none=True),
        "slices": _count(1024),
        "platform": Rule(str, choices=PLATFORMS, none=True),
        "tpu_type": Rule(str, none=True),
        "tpu_topology": Rule(str, none=True),
        "address": Rule(str, none=True),
        "timeout": Rule(float, above=0, high=SECONDS, wants="a positive finite number"),
        "wait": Rule(float, low=0, high=SECONDS, wants="0 (fail at once) or more seconds"),
    }

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


_SEED = Rule(int, low=0, high=MAX_SEED,
             wants=f"an integer from 0 to {MAX_SEED} (2**32 - 1: JAX keys take 32 bits)")


@dataclasses.dataclass(frozen=True)
class TrialSpec(_Spec):
    """What one trial trains: its task (spec/tasks.py) with every one of the task's settings,
    and the settings every task shares. `TrialSpec.resolve(lr=0.3, true_m=3.0)`: a name that is
    not a field here is one of the task's settings; the task fills in the rest and checks them."""

    task: str = registry.DEFAULT  # a built-in task's name, or package.module:NAME
    settings: Tuple[Tuple[str, object], ...] = registry.BUILT_IN[registry.DEFAULT].resolve({})
    data_seed: int = 0  # with the host index, what each host's shard is made from
    samples_per_host: int = 1024
    # Training: gradient descent on the mean of the task's loss (default: squared error).
    model: str = "pure"  # one of the task's models (its first by default)
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0  # sgd, rmsprop (0: none)
    weight_decay: float = 0.0  # adamw's decoupled weight decay (0: none, adamw is adam)
    schedule: str = "constant"  # the lr's factor over the steps (SCHEDULES)
    batch_size: int = 0  # points per step over the whole slice, drawn afresh each step; 0: full batch
    seed: int = 0  # the initial params
    steps: int = 500
    steps_per_call: int = 100  # steps fused into one compiled call; the host blocks between calls
    parallel: str = "pmap"
    ensemble: int = 0  # 0: one model, data-parallel; E > 0: E members split over all devices
    tol: float = 1e-4  # max |param - reference solution| to pass

    RULES = {
        "data_seed": _SEED,
        # The memory budget refuses the large ones, saying why; 0: all of a task's fixed dataset.
        "samples_per_host": Rule(int, low=0, high=2**40, wants="a positive integer (or 0: all of a task's fixed dataset)"),
        "model": Rule(str),  # the task's models: checked in resolve
        "optimizer": Rule(str, choices=OPTIMIZERS),
        "lr": _POSITIVE,
        "momentum": Rule(float, low=0, high=1, wants="a number from 0 (none) to 1"),
        "weight_decay": Rule(float, low=0, high=1e6, wants="a finite number >= 0 (0: none)"),
        "schedule": Rule(str, choices=SCHEDULES),
        "batch_size": Rule(int, low=0, high=2**40, wants="0 (full batch) or a positive number of points"),
        "seed": _SEED,
        "steps": _count(),
        "steps_per_call": _count(),
        "parallel": Rule(str, choices=PARALLEL_MODES),
        "ensemble": Rule(int, low=0, high=2**40, wants="0 (off) or a positive member count"),
        "tol": _POSITIVE,
    }

    @classmethod
    def resolve(cls, values: Optional[Mapping] = None, /, **more) -> "TrialSpec":
        values = {**(values or {}), **more}
        name = values.pop("task", None) or registry.DEFAULT
        task = registry.get(name)
        given = dict(values.pop("settings", ()))
        shared = {k: coerce(flag(k), values.pop(k), rule) for k, rule in cls.RULES.items() if k in values}
        shared.setdefault("model", task.models[0])
        coerce("--model", shared["model"], Rule(str, choices=task.models))
        optimizer = shared.get("optimizer", cls.optimizer)
        for option, takers in OPTIONS.items():
            if shared.get(option) and optimizer not in takers:
                raise UsageError(f"{flag(option)} is an option of {' and '.join(takers)}, not of "
                                 f"{optimizer}: pick one of those with --optimizer, or leave it at 0")
        return cls(task=name, settings=task.resolve({**given, **values}), **shared)

    @classmethod
    def keys(cls, task: str = registry.DEFAULT) -> Tuple[str, ...]:
        """The settings a trial of `task` has, by name, as flags and sweep files name them:
        the task's own, then the shared ones."""
        return tuple(s.name for s in registry.get(task).settings) + tuple(cls.RULES)

    @classmethod
    def of(cls, source) -> "TrialSpec":
        """The trial of `source`'s attributes of the same names (parsed flags), resolved."""
        task = getattr(source, "task", registry.DEFAULT)
        return cls.resolve({k: getattr(source, k) for k in cls.keys(task)}, task=task)

    @classmethod
    def of_config(cls, config: Mapping) -> "TrialSpec":
        """The trial a record's flat config describes (asdict's inverse; other keys ignored)."""
        task = config.get("task", registry.DEFAULT)
        return cls.resolve({k: config[k] for k in cls.keys(task) if k in config}, task=task)

    def asdict(self) -> dict:
        """Every setting, flat, named as the flags: the task (left out for the default task, as
        records were before there were others), its settings, then the shared ones."""
        named = {} if self.task == registry.DEFAULT else {"task": self.task}
        named.update(self.settings)
        named.update((k, getattr(self, k)) for k in self.RULES)
        return named

    def as_first_named(self) -> dict:
        """asdict without the LATER settings that are at their defaults: how ids and checkpoint
        names were made before those settings were."""
        return {k: v for k, v in self.asdict().items() if not (k in LATER and v == getattr(TrialSpec, k))}

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
        if not self.batch_size:
            return
        points, devices = self.global_samples(slice_spec.processes), slice_spec.global_devices
        if self.batch_size > points:
            raise UsageError(f"--batch-size ({self.batch_size}) is more than the slice's "
                             f"{points} points ({slice_spec.processes} hosts x --samples-per-host "
                             f"{self.samples_per_host}): make it smaller, or 0 for full batch")
        if not self.ensemble and self.batch_size % devices:
            raise UsageError(f"--batch-size ({self.batch_size}) must be divisible by the slice's "
                             f"{devices} devices: each device draws its equal share from its own points")

    def global_samples(self, hosts: int) -> int:
        return hosts * self.samples_per_host

    def shared(self) -> "TrialSpec":
        """This trial with the settings a program batches (BATCHED) at their defaults: trials
        with the same `shared()` train together in one program."""
        return dataclasses.replace(self, **_BATCHED_DEFAULTS)


@dataclasses.dataclass(frozen=True)
class Recovery(_Spec):
    """How a run survives host loss (driver/supervisor.py): none of it changes a result."""

    checkpoint_every: int = 1  # compiled calls between the driver's checkpoints
    max_restarts: int = 2  # restarts after failures: a host died, crashed or hung
    max_preemptions: int = 10  # restarts after a host or its node was taken away

    RULES = {
        "checkpoint_every": _count(),
        "max_restarts": Rule(int, low=0, high=INT32, wants="an integer >= 0"),
        "max_preemptions": Rule(int, low=0, high=INT32, wants="an integer >= 0"),
    }


# The settings trials of one program may differ in: each trial is one entry on the program's
# model axis, with its own values of these (optax's inject_hyperparams makes the optimiser's
# an input of the compiled program, not a constant of it).
BATCHED = ("lr", "seed", "momentum", "weight_decay")
# Settings that came after the first trial ids and checkpoint names: left out of both where at
# their defaults, so that what was written before them names the same trials and programs.
LATER = ("momentum", "weight_decay", "schedule", "batch_size")
_BATCHED_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrialSpec) if f.name in BATCHED}


@dataclasses.dataclass(frozen=True)
class Program:
    """Trials trained together in one compiled program on one (shaped) slice: the same
    `trial` settings but for those in BATCHED, which are one per trial (`values`, in BATCHED's
    order).

    The program's model axis has one entry per trial (one-model trials: replicated on every
    device, the batch split over devices) or one per (trial, member) (ensembles: split over
    every device, padded to a multiple of the device count; padding is never reported).
    """

    slice: SliceSpec
    trial: TrialSpec  # the settings the trials share (its own batched ones: the first trial's)
    values: Tuple[Tuple, ...]  # per trial: its value of each setting in BATCHED

    @classmethod
    def of(cls, slice_spec: SliceSpec, trials) -> "Program":
        """The program of `trials` (TrialSpecs equal but for BATCHED) on a shaped slice."""
        trials = tuple(trials)
        if len({t.shared() for t in trials}) != 1:
            raise ValueError("a program holds one or more trials that differ only in " + ", ".join(BATCHED))
        return cls(slice_spec, trials[0], tuple(tuple(getattr(t, k) for k in BATCHED) for t in trials))

    def trials(self) -> Tuple[TrialSpec, ...]:
        return tuple(self.trial.replace(**dict(zip(BATCHED, v))) for v in self.values)

    def column(self, name: str) -> Tuple:
        """Each trial's value of the batched setting `name`."""
        k = BATCHED.index(name)
        return tuple(v[k] for v in self.values)

    @property
    def lrs(self) -> Tuple[float, ...]:
        return self.column("lr")

    @property
    def seeds(self) -> Tuple[int, ...]:
        return self.column("seed")

    def uses(self, option: str) -> bool:
        """Whether any trial sets the optimiser option `option` (OPTIONS): only then is it an
        input of the compiled program (at 0 everywhere, the program is as without it)."""
        return any(self.column(option))

    @property
    def count(self) -> int:
        """Trials in the program."""
        return len(self.values)

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

    def only(self, positions) -> "Program":
        """The program of the trials at `positions` (early stopping keeps some, drops the rest)."""
        return Program(self.slice, self.trial, tuple(self.values[i] for i in positions))
