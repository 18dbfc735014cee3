"""What a run is made of, as plain frozen data:

- `SliceSpec`: where it runs (the cluster, the platform, the slice's shape, the timeout);
- `TrialSpec`: what one trial trains (its task and the task's settings, data, model, optimiser,
  lr, seed, steps, ...);
- `Recovery`: checkpoints and the restart budgets (how a run survives host loss);
- `Program`: trials that differ only in lr and seed, trained together as one compiled program
  on one shaped slice (a single run is a program of one trial).

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
# optax optimisers offered by --optimizer, each built as optax.<name>(learning_rate=lr). No
# weight decay (adamw) here: it moves the optimum away from the normal-equation solution.
OPTIMIZERS = ("sgd", "adam", "adagrad", "rmsprop")
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

    RULES = {
        "data_seed": _SEED,
        "samples_per_host": _count(2**40),  # the memory budget refuses the large ones, saying why
        "model": Rule(str),  # the task's models: checked in resolve
        "optimizer": Rule(str, choices=OPTIMIZERS),
        "lr": _POSITIVE,
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


# The settings trials of one program may differ in: each is one entry on the program's model axis.
BATCHED = ("lr", "seed")
_BATCHED_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrialSpec) if f.name in BATCHED}


@dataclasses.dataclass(frozen=True)
class Program:
    """Trials trained together in one compiled program on one (shaped) slice: the same
    `trial` settings but for lr and seed, which are one per trial.

    The program's model axis has one entry per trial (one-model trials: replicated on every
    device, the batch split over devices) or one per (trial, member) (ensembles: split over
    every device, padded to a multiple of the device count; padding is never reported).
    """

    slice: SliceSpec
    trial: TrialSpec  # the settings the trials share (its own lr and seed: the first trial's)
    lrs: Tuple[float, ...]
    seeds: Tuple[int, ...]

    @classmethod
    def of(cls, slice_spec: SliceSpec, trials) -> "Program":
        """The program of `trials` (TrialSpecs equal but for lr and seed) on a shaped slice."""
        trials = tuple(trials)
        if len({t.shared() for t in trials}) != 1:
            raise ValueError("a program holds one or more trials that differ only in " + " and ".join(BATCHED))
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

    def only(self, positions) -> "Program":
        """The program of the trials at `positions` (early stopping keeps some, drops the rest)."""
        return Program(self.slice, self.trial, tuple(self.lrs[i] for i in positions),
                       tuple(self.seeds[i] for i in positions))
