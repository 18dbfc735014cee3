"""What a sweep runs, worked out in one pass before any host starts, each part once:

1. every trial's slice settled as far as the settings tell (the CPU simulation's shape);
2. every trial checked against its slice, and a user's task tried out on this machine's CPU;
3. every trial's id, where its slice is settled;
4. the trials grouped into programs (same slice, same settings but for lr and seed), each
   slice's programs together;
5. each program split where it would not fit in memory (an embedded run: this machine's).

Then `Plan.skip_recorded` leaves out the trials a store holds. A slice the cluster shapes (TPU,
GPU, a platform to detect, or memory only its hosts can tell) leaves steps 3 and 5 of its
trials, and the skipping, to `Group.shaped`, done once when the slice is up.
"""

import dataclasses
import functools
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ymxb.driver import budget
from ymxb.errors import UsageError, raised_in
from ymxb.results.record import TrialRecord, trial_id
from ymxb.spec import registry
from ymxb.spec.tasks import Metric
from ymxb.spec.settings import Program, SliceSpec, TrialSpec
from ymxb.spec.sweep import Sweep

Trial = Tuple[SliceSpec, TrialSpec]


@dataclasses.dataclass(frozen=True)
class Part:
    """One program to run, with its trials' ids in its order."""

    program: Program
    ids: Tuple[str, ...]

    def without(self, done: Dict[str, TrialRecord]) -> "Part":
        keep = [k for k, tid in enumerate(self.ids) if tid not in done]
        if len(keep) == len(self.ids):
            return self
        return Part(self.program.only(keep), tuple(self.ids[k] for k in keep)) if keep else Part(self.program, ())


@dataclasses.dataclass
class Group:
    """Pending trials that train as one program on one slice, or as several (`parts`) where
    one would not fit in memory. Until its slice is shaped, `parts` is None."""

    slice: SliceSpec
    trials: List[TrialSpec]
    ids: Optional[List[str]] = None  # the trials' (None: the slice is not shaped yet)
    parts: Optional[List[Part]] = None

    def recorded(self, done: Dict[str, TrialRecord]) -> None:
        """Leave out the trials `done` holds, from the group and from each of its programs."""
        keep = [k for k, tid in enumerate(self.ids) if tid not in done]
        self.trials, self.ids = [self.trials[k] for k in keep], [self.ids[k] for k in keep]
        if self.parts is not None:
            self.parts = [p for p in (part.without(done) for part in self.parts) if p.ids]

    def shaped(self, spec: SliceSpec, hosts: Sequence, done: Dict[str, TrialRecord]) -> List[Part]:
        """The programs of this group on `spec`, as its slice came up (its `hosts` said what
        memory they hold): the trials already recorded left out, split to fit."""
        if self.parts is not None:
            return self.parts
        if self.ids is None:  # first known now
            for trial in self.trials:
                trial.check_fits(spec)
            self.ids = [trial_id(spec, t) for t in self.trials]
        pending = [(t, i) for t, i in zip(self.trials, self.ids) if i not in done]
        fits = budget.fits_here if spec.address is None else (lambda p: budget.fits_slice(p, hosts))
        self.parts = _split(spec, pending, fits) if pending else []
        return self.parts


@dataclasses.dataclass
class Plan:
    """A sweep's trials (slices settled as far as known), their ids (None: the slice's shape is
    known only once it is up), the records its store holds, and the pending trials' groups."""

    trials: List[Trial]
    ids: List[Optional[str]]
    done: Dict[str, TrialRecord]
    groups: List[Group]

    @property
    def pending(self) -> int:
        """Trials not recorded (those of unshaped slices count until their slice is up)."""
        return sum(1 for tid in self.ids if tid is None or tid not in self.done)

    def skip_recorded(self, done: Dict[str, TrialRecord]) -> None:
        """Leave out the trials `done` holds (a store's records) from the programs to run."""
        self.done = done
        for group in self.groups:
            if group.ids is not None:
                group.recorded(done)
        self.groups = [g for g in self.groups if g.trials]

    def by_slice(self) -> List[Tuple[SliceSpec, List[Group]]]:
        by: Dict[SliceSpec, List[Group]] = {}
        for group in self.groups:
            by.setdefault(group.slice, []).append(group)
        return list(by.items())

    def all_ids(self) -> List[str]:
        """Every trial's id, those of slices shaped since the plan was made included."""
        found = {(g.slice, t): tid for g in self.groups if g.ids for t, tid in zip(g.trials, g.ids)}
        return [tid or found[trial] for tid, trial in zip(self.ids, self.trials)]

    def known_programs(self) -> List[Program]:
        """The programs known before launching (those of shaped slices)."""
        return [part.program for group in self.groups for part in (group.parts or [])]


def make(sweep: Sweep) -> Plan:
    """The plan of every trial of `sweep`; UsageError names a trial that cannot run (on its
    slice, in this machine's memory, or as its task is written). Nothing is recorded yet: see
    `Plan.skip_recorded`."""
    trials = [(known_shape(spec), trial) for spec, trial in sweep.trials]
    for i, (spec, trial) in enumerate(trials):
        try:
            trials[i] = spec, bound(spec, trial)
            if spec.shaped:
                trials[i][1].check_fits(spec)
        except UsageError as err:
            where = f"trial {i + 1} ({changed(trial)})" if len(trials) > 1 else None
            raise UsageError(f"{where}: {err}" if where else str(err)) from None
    _try_out_tasks(trials)
    ids = [trial_id(spec, trial) if spec.settled else None for spec, trial in trials]
    groups = [_group(spec, members, len(trials) == 1) for spec, members in _programs(zip(trials, ids))]
    return Plan(trials, ids, {}, groups)


@functools.lru_cache(maxsize=None)  # a sweep's 10^5 trials have a few slices
def known_shape(spec: SliceSpec) -> SliceSpec:
    """The slice as far as it is known before launching: the CPU simulation's shape follows
    from the settings alone, and an embedded cluster can only simulate. A TPU or GPU slice
    (or a platform left to detect on a cluster) is shaped once the cluster is joined."""
    if spec.platform == "cpu-sim" or (spec.address is None and spec.platform is None):
        from ymxb.driver.platforms import CpuSim

        return CpuSim().shape(spec)
    return spec


def changed(trial: TrialSpec) -> str:
    """The settings of a trial that differ from its task's defaults, as `key: value`."""
    default = TrialSpec.resolve(task=trial.task).asdict()
    return ", ".join(f"{k}: {v}" for k, v in trial.asdict().items() if default.get(k) != v) or "defaults"


def _programs(pending) -> List[Tuple[SliceSpec, List[Tuple[TrialSpec, Optional[str]]]]]:
    """Trials grouped into programs: same slice, same settings but for lr and seed;
    each slice's programs together, in the order their first trial appears."""
    groups: Dict[tuple, list] = {}
    for (spec, trial), tid in pending:
        groups.setdefault((spec, trial.shared()), []).append((trial, tid))
    by_slice: Dict[SliceSpec, list] = {}
    for (spec, _), members in groups.items():
        by_slice.setdefault(spec, []).append(members)
    return [(spec, members) for spec, programs in by_slice.items() for members in programs]


def _group(spec: SliceSpec, members: List[Tuple[TrialSpec, Optional[str]]], single: bool) -> Group:
    """A group; split to fit this machine where every host is a process here (embedded)."""
    group = Group(spec, [t for t, _ in members])
    if spec.settled:
        group.ids = [tid for _, tid in members]
    if spec.settled and spec.address is None:
        group.parts = _split(spec, members, budget.fits_here)
        for part in group.parts:
            what = "this run" if single else f"a trial ({changed(part.program.trial)})"
            budget.check_fits(part.program, what=what)
    return group


def _split(spec: SliceSpec, members: List[Tuple[TrialSpec, str]], fits) -> List[Part]:
    """The trials as the fewest programs that fit (`budget.split`)."""
    whole = Program.of(spec, [t for t, _ in members])
    parts, start = [], 0
    for size in budget.split(whole, fits):
        positions = range(start, start + size)
        parts.append(Part(whole.only(positions), tuple(members[i][1] for i in positions)))
        start += size
    return parts


def _try_out_tasks(trials) -> None:
    """Each user task's programs tried once on this machine, and its data on each slice of
    known shape made once: what can go wrong is found here, not on the hosts."""
    tried, made = set(), set()
    for spec, trial in trials:
        if trial.task in registry.BUILT_IN:
            continue
        data_of = (trial.task, trial.settings, trial.data_seed, trial.samples_per_host)
        new_data = spec.shaped and (data_of, spec.processes) not in made
        if new_data and registry.get(trial.task).has_dataset:  # before try_out cuts host 0's shard
            _try_dataset(trial, spec.processes, spec.devices_per_host, f"--task {trial.task}")
        if trial.shared() not in tried:
            tried.add(trial.shared())
            try_out(trial)
        if new_data:
            made.add((data_of, spec.processes))
            try_data(trial, spec.processes, spec.devices_per_host)


def try_out(trial: TrialSpec) -> None:
    """Before any host starts, what the driver can check of a user's task, on this machine's
    CPU: host 0's shard (its size), the model's init and apply on a few of its points (a
    prediction per point, shaped like y for the default squared error) and the loss there (a
    finite number per point, or per element of a point). UsageError, in one line naming
    where in the task it went wrong, if any of it fails."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the driver's JAX: no accelerator needed
    import jax
    import jax.numpy as jnp

    from ymxb.spec import data

    task, s, where = registry.get(trial.task), trial.of_task, f"--task {trial.task}"
    try:
        x, y = data.host_shard(trial, 0)
        model = task.model(s, trial.model)
        params = model.init(jax.random.key(trial.seed))
        x8, y8 = x[:8], y[:8]
        predictions = model.apply(params, jnp.asarray(x8))
        shape = np.shape(predictions)
        if shape[:1] != (len(x8),) or (task.loss is None and shape != np.shape(y8)):
            wanted = ("y's shape: its loss is the default squared error (give the task a `loss` for "
                      "predictions of another shape)" if task.loss is None else "a leading axis of points")
            raise UsageError(f"{where}: model {trial.model} predicts shape {shape} for {len(x8)} points whose y "
                             f"has shape {np.shape(y8)} ({y8.dtype}): apply must give predictions with {wanted}")
        loss = task.loss(predictions, jnp.asarray(y8)) if task.loss else (predictions - y8) ** 2
        if np.shape(loss)[:1] != (len(x8),):
            raise UsageError(f"{where}: its loss on host 0's first {len(x8)} points has shape {np.shape(loss)}: "
                             f"it must give a number per point (shape ({len(x8)},), as optax's losses do), or "
                             f"per element of each point's prediction (summed per point)")
        if not np.all(np.isfinite(loss)):
            raise UsageError(f"{where}: its loss on host 0's first {len(x8)} points is {np.asarray(loss)!r}: "
                             f"it must be finite there")
        _try_metrics(task, where, predictions, jnp.asarray(y8))
        extra = task.penalty(s, params)
        if extra is not None and (np.shape(extra) != () or not np.isfinite(extra)):
            raise UsageError(f"{where}: its penalty at the initial params is {np.asarray(extra)!r}: it must be "
                             f"one finite number")
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
        raise raised_in(where, err) from None


def _try_metrics(task, where: str, predictions, y) -> None:
    """The task's metrics, each named as --where can name it, a number per point of `y`."""
    if not isinstance(task.metrics, Mapping):
        raise UsageError(f"{where}: its metrics are {type(task.metrics).__name__}: give a dict of names to "
                         f"Metric(fn, higher_is_better)")
    for name, metric in task.metrics.items():
        if not (isinstance(name, str) and name.isidentifier() and isinstance(metric, Metric)) or name == "loss":
            raise UsageError(f"{where}: its metrics must map names (letters, digits and _: accuracy; not loss, "
                             f"measured already) to Metric(fn, higher_is_better), not {name!r} to {metric!r}")
        shape = np.shape(metric.fn(predictions, y))
        if shape[:1] != (len(y),):
            raise UsageError(f"{where}: its metric {name} on host 0's first {len(y)} points has shape {shape}: "
                             f"it must give a number per point (shape ({len(y)},))")


def bound(spec: SliceSpec, trial: TrialSpec) -> TrialSpec:
    """`trial` as it runs on `spec`: --samples-per-host 0 (all of its task's fixed dataset) made
    the most points every host takes alike (a multiple of its devices); UsageError where that
    cannot be known, or the task has no fixed dataset."""
    if trial.samples_per_host:
        return trial
    if not registry.get(trial.task).has_dataset:
        raise UsageError(f"--samples-per-host 0 (all of a task's fixed dataset) is for a task that gives one "
                         f"(Task.dataset); task {trial.task} makes each host's shard: give the points per host")
    if not spec.shaped:
        raise UsageError("--samples-per-host 0 (all of a task's fixed dataset) needs the slice's hosts before "
                         "it starts, which this cluster says only once placed: give the points per host")
    size, devices = _dataset_size(trial), spec.devices_per_host
    most = _most_per_host(size, spec.processes, devices)
    if not most:
        raise UsageError(f"--task {trial.task}: its dataset has {size} points, fewer than the {spec.processes} "
                         f"hosts x {devices} devices: use fewer hosts")
    return trial.replace(samples_per_host=most)


def _most_per_host(size: int, hosts: int, devices: int) -> int:
    """The most points of a dataset of `size` every host takes alike, split evenly over its devices."""
    return size // hosts // devices * devices


def _dataset_size(trial: TrialSpec) -> int:
    """The points of the trial's task's fixed dataset, made here; UsageError in one line where
    the task's code raised."""
    from ymxb.spec import data

    try:
        return data.dataset_size(trial)
    except UsageError:
        raise
    except Exception as err:
        raise raised_in(f"--task {trial.task}: its dataset", err) from None


def _try_dataset(trial: TrialSpec, hosts: int, devices: int, where: str) -> None:
    """A fixed dataset made here: enough points for every host's --samples-per-host."""
    size = _dataset_size(trial)
    if hosts * trial.samples_per_host > size:
        most = _most_per_host(size, hosts, devices)
        raise UsageError(f"{where}: its dataset has {size} points, fewer than {hosts} hosts x --samples-per-host "
                         f"{trial.samples_per_host}: " + (f"give --samples-per-host {most} or less" if most else
                                                          "use fewer hosts")
                         + (f" (a multiple of a host's {devices} devices)" if most and devices > 1 else "")
                         + (", or 0 for that many" if most else ""))


def try_data(trial: TrialSpec, hosts: int, devices: int) -> None:
    """Every host's shard made here, as that host will make it (its size, and x and y alike
    in kind to host 0's), its held-out shard too (as many points as every other host's, of
    the same kind), and the task's reference from the shards. UsageError, in one line naming
    the host or the reference and where in the task it went wrong, if any of it fails."""
    from ymxb.spec import data

    where, kinds = f"--task {trial.task}", []

    def shards():
        for i in range(hosts):
            try:
                x, y = data.host_shard(trial, i)
            except UsageError:
                raise
            except Exception as err:
                raise raised_in(f"{where}: its shard of host {i}", err) from None
            kinds.append(tuple(f"{a.dtype}{list(a.shape[1:])}" for a in (x, y)))
            if kinds[-1] != kinds[0]:
                raise UsageError(f"{where}: its shard of host {i} has x, y of {', '.join(kinds[-1])} per point, "
                                 f"host 0's {', '.join(kinds[0])}: every host's must be alike")
            yield x, y

    made = shards()
    try:
        registry.get(trial.task).reference(trial.of_task, made)
    except UsageError:
        raise
    except Exception as err:
        raise raised_in(f"{where}: its reference", err) from None
    for _ in made:  # the shards a reference did not ask for
        pass
    held = None  # host 0's count of held-out points (None: it holds none out)
    for i in range(hosts):
        try:
            out = data.host_held_out(trial, i, devices)
        except UsageError:
            raise
        except Exception as err:
            raise raised_in(f"{where}: its held-out shard of host {i}", err) from None
        count = None if out is None else len(out[0])
        held = count if i == 0 else held
        if count != held:
            raise UsageError(f"{where}: its held-out shard of host {i} has {count or 'no'} points, host 0's "
                             f"{held or 'none'}: every host's must have as many")
        kind = None if out is None else tuple(f"{a.dtype}{list(a.shape[1:])}" for a in out)
        if kind not in (None, kinds[0]):
            raise UsageError(f"{where}: its held-out shard of host {i} has x, y of {', '.join(kind)} per point, "
                             f"the training shards {', '.join(kinds[0])}: they must be alike")
