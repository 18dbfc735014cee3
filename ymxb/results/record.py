"""A trial's outcome as a small typed record (TrialRecord, its Members), and the trial's id.

A record read from the store may hold its members unread (`StoredMembers`): the table and the
questions need only their count and a few figures over them (`Summary`), which the store keeps
as columns; the members themselves are read the first time they are asked for.
"""

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Callable, Dict, List, NamedTuple, Optional

import numpy as np

from ymxb.spec.settings import LATER

# The layout of a record: 1 before records said (ids as first made, the platform as asked),
# 2 with the ymxb version, the sweep file it came from and the steps where members diverged,
# 3 with its loss curve apart, 4 with where and why it was stopped early, 5 with its task's
# metrics (its members' too).
SCHEMA = 5


@dataclasses.dataclass
class Member:
    shown: Dict[str, Optional[float]]  # its task's named scalars (y = m*x + b: m, b); None: non-finite
    error: Optional[float]  # its largest |param - reference solution| (None: no reference)
    final_loss: Optional[float]
    converged_step: Optional[int]
    diverged_step: Optional[int] = None  # the first step whose loss was non-finite
    metrics: Dict[str, Optional[float]] = dataclasses.field(default_factory=dict)  # its task's, at the end

    def asdict(self) -> dict:
        """As a record holds it: its named scalars, then the rest (metrics where it has any)."""
        own = {"metrics": self.metrics} if self.metrics else {}
        return {**self.shown, **{k: getattr(self, k) for k in MEMBER_KEYS}, **own}

    @classmethod
    def from_dict(cls, d: dict) -> "Member":
        metrics = d.get("metrics", {})
        if not (isinstance(metrics, dict) and all(v is None or type(v) in (int, float) for v in metrics.values())):
            raise TypeError("its metrics are not an object of numbers")
        return cls({k: v for k, v in d.items() if k not in MEMBER_KEYS and k != "metrics"}, d["error"],
                   d["final_loss"], d["converged_step"], d.get("diverged_step"), metrics)


MEMBER_KEYS = ("error", "final_loss", "converged_step", "diverged_step")


class Summary(NamedTuple):
    """What a record says over its members, as the table and the questions ask it."""

    final_loss: float  # their mean final loss; NaN where one diverged
    converged_step: Optional[float]
    diverged_step: Optional[int]


class StoredMembers(Sequence):
    """A record's members as the store keeps them: their count and summary at hand, the
    members themselves read (`fetch()`) only when one is asked for."""

    __slots__ = ("count", "summary", "_fetch", "_list")

    def __init__(self, count: int, summary: Summary, fetch: Callable[[], List[Member]]):
        self.count, self.summary, self._fetch, self._list = count, summary, fetch, None

    def members(self) -> List[Member]:
        if self._list is None:
            self._list = self._fetch()
        return self._list

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        return self.members()[index]

    def __iter__(self):
        return iter(self.members())

    def __eq__(self, other) -> bool:
        return isinstance(other, (list, StoredMembers)) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(self.members())


@dataclasses.dataclass
class TrialRecord:
    trial_id: str
    config: dict  # every setting of the trial and its slice, named as the flags
    verified: bool
    max_error: float
    solution: dict  # the reference solution's named scalars ({m, b}: the normal equation); {}: none
    optimal_loss: Optional[float]  # the loss there (float64); None: no reference
    members: Sequence[Member]  # a list, or StoredMembers (read from the store, parsed when asked)
    loss_curve: Optional[dict]  # {step: [...], loss: [...]}: the mean over members; None: not read (Store.curves)
    checks: Optional[List[dict]]  # None: not read (Store.whole)
    group: str  # the program it ran in (the id of its first trial)
    slice: str  # "4x2 cpu-sim": the slice that ran it
    group_trials: int
    wall_s: float  # the program's training time, shared by its trials
    sweep_file: Optional[str] = None  # the version of the sweep file it ran from (sweep.yaml, sweep.1.yaml, ...)
    ymxb_version: Optional[str] = None
    schema: int = 1  # SCHEMA when written; records without one are of the first layout
    stopped_at: Optional[int] = None  # steps trained, where a `stop:` rule ended it early
    stopped_by: Optional[str] = None  # ... the rule: diverged, converged, rung N
    # Its task's metrics (train_accuracy, eval_loss, ...): the mean over its members; and those
    # of them that rank larger first (--best-by).
    metrics: Dict[str, Optional[float]] = dataclasses.field(default_factory=dict)
    higher_is_better: List[str] = dataclasses.field(default_factory=list)

    def asdict(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**fields, "members": [m.asdict() for m in self.members]}

    def to_json(self) -> str:
        return json_line(self.asdict())

    @classmethod
    def from_dict(cls, d: dict) -> "TrialRecord":
        d = {k: v for k, v in d.items() if k in RECORD_FIELDS}
        d["members"] = [Member.from_dict(m) for m in d["members"]]
        return cls(**d)

    def summary(self) -> Summary:
        """Its final loss, converged and diverged steps (kept by the store: read without its members)."""
        kept = getattr(self.members, "summary", None)
        if kept is not None:
            return kept
        return Summary(self._final_loss(), self._converged_step(), self._diverged_step())

    def converged_step(self) -> Optional[float]:
        """The median of the members' converged steps (None if most never converged)."""
        return self.summary().converged_step

    def diverged_step(self) -> Optional[int]:
        """The first step at which a member's loss was non-finite; None if none diverged."""
        return self.summary().diverged_step

    @property
    def pruned(self) -> bool:
        """Stopped by a rung: it ran only as long as the rung's share of its program did."""
        return (self.stopped_by or "").startswith("rung")

    @property
    def diverged(self) -> bool:
        return self.diverged_step() is not None

    @property
    def final_loss(self) -> float:
        """The members' mean final loss; NaN where one diverged."""
        return self.summary().final_loss

    def _converged_step(self) -> Optional[float]:
        steps = [m.converged_step if m.converged_step is not None else math.inf for m in self.members]
        median = float(np.median(steps))
        return None if math.isinf(median) else median

    def _diverged_step(self) -> Optional[int]:
        steps = [m.diverged_step for m in self.members if m.diverged_step is not None]
        if steps:
            return min(steps)
        # A first-layout record does not say where: -1, a step before any.
        return -1 if self.schema < 2 and any(m.final_loss is None for m in self.members) else None

    def _final_loss(self) -> float:
        losses = [m.final_loss for m in self.members]
        return math.nan if None in losses else float(np.mean(losses))


RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(TrialRecord))


def metric_names(records: Sequence[TrialRecord]) -> List[str]:
    """The names of the task metrics the records hold (train_accuracy, eval_loss, ...), in order.
    A program's trials hold the same ones: one trial of each is asked."""
    return list(dict.fromkeys(k for r in {r.group: r for r in records}.values() for k in r.metrics))


def larger_first(name: str, records: Sequence[TrialRecord]) -> bool:
    """Whether `name` is a task metric of the records that ranks larger first (accuracy)."""
    return any(name in r.higher_is_better for r in {r.group: r for r in records}.values())

# What a trial's id is made of, by the layout of ids. Layout 1: the slice's keys below, the
# trial's task and that task's own settings, and the settings every task shares below. The
# settings that never change what a trial computes are named too: a setting in none of these
# lists is refused, so that a new one is put in a new layout on purpose, never by accident.
# Layout 2 adds the optimiser's options, the schedule and the batch size, each left out at its
# default (settings.LATER): a trial that sets none of them has its layout-1 id.
ID_LAYOUT = 2
_FIRST = {"slice": ("hosts", "devices_per_host", "slices", "platform", "tpu_type", "tpu_topology"),
          "shared": ("data_seed", "samples_per_host", "model", "optimizer", "lr", "seed", "steps",
                     "steps_per_call", "parallel", "ensemble", "tol"),
          "not_in_id": ("address", "timeout", "wait")}
ID_KEYS = {1: _FIRST, 2: {**_FIRST, "later": LATER}}


def trial_config(spec, trial) -> dict:
    """Every setting of the trial and its slice, flat, named as the flags."""
    return {**spec.asdict(), **trial.asdict()}


def trial_id(spec, trial, layout: int = ID_LAYOUT) -> str:
    """A hash of what a trial computes: its settings (numbers as numbers: config.py makes
    them floats), and the slice it runs on, shaped and with its platform (`spec.settled`)."""
    if not spec.settled:
        raise ValueError(f"a trial's id needs the slice it runs on, shaped, with its platform; got {spec}")
    keys = ID_KEYS[layout]
    config = {**spec.asdict(), **trial.as_first_named()}
    own = set(trial.of_task) | {"task"}
    unnamed = [k for k in config if k not in own and not any(k in keys[part] for part in keys)]
    if unnamed:
        raise ValueError(f"settings {unnamed} are in no layout of trial ids: name them in a new one (ID_KEYS)")
    settings = {k: v for k, v in config.items() if k not in keys["not_in_id"]}
    # Laid out as ids were first made, so that stores written then stay valid: the simulation's
    # platform null (it was left to detect), one slice left out (it came before --slices),
    # and no TPU selector (how a slice was found, not what ran on it).
    settings.update(tpu_type=None, tpu_topology=None)
    if settings["platform"] == "cpu-sim":
        settings["platform"] = None
    if settings["slices"] == 1:
        del settings["slices"]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def jsonable(value):
    """NaN and infinities (a diverged trial) as null: the store stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def json_line(value) -> str:
    """`value` as one compact line of JSON (NaN refused: jsonable makes it null first)."""
    return json.dumps(jsonable(value), allow_nan=False, separators=(",", ":"))
