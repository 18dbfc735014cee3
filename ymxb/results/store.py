"""A trial's outcome as a small typed record, judged on the driver from what the hosts returned;
the results store (`DIR/trials.jsonl`, one record per line); and the comparison table.

The store is append-only: each finished program's records are written in one `write`, then
flushed and fsynced, so a crash, a dead host or Ctrl-C loses at most the program in flight.
A torn last line (the machine died mid-write) is ignored on reading and cut off on the next
append; every complete line is a record. One writer at a time: a sweep holds the store's lock
while it runs (`Store.locked`).

Each trial's loss curve (most of a record's bytes) goes to `DIR/curves.jsonl` beside it,
written and fsynced before the records that need it, and read only to draw: asking the store
(`launch.py results`) reads the small rows alone. Records of layout 2 and before still hold
their curve in their own line.
"""

import contextlib
import dataclasses
import fcntl
import gc
import hashlib
import json
import math
import os
import socket
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ymxb import __version__
from ymxb.spec import data, registry, tasks
from ymxb.results import checks as verify
from ymxb.spec.settings import BATCHED, Program, SliceSpec, TrialSpec
from ymxb.errors import UsageError, first_line
from ymxb.protocol import ProgramRun

STORE = "trials.jsonl"
CURVES = "curves.jsonl"  # {"trial_id": ..., "step": [...], "loss": [...]} a line, for the plots
ID_HEAD = '{"trial_id":"'  # how each line of STORE and CURVES begins: its id is read without parsing the rest
SWEEP_FILE = "sweep.yaml"  # the sweep file as run; later versions sweep.1.yaml, sweep.2.yaml, ...
LOCK = ".lock"  # held (flock) by the sweep writing the store; names it for a second one
# The layout of a record: 1 before records said (ids as first made, the platform as asked),
# 2 with the ymxb version, the sweep file it came from and the steps where members diverged,
# 3 with its loss curve apart, in CURVES, 4 with where and why it was stopped early.
SCHEMA = 4
# A member has converged at the first step whose loss is within this of the optimal loss (the
# float64 loss of the normal-equation solution on the same data): relatively, or absolutely
# where the optimum is (nearly) zero.
CONVERGED_RTOL, CONVERGED_ATOL = 1e-3, 1e-10
CURVE_POINTS = 200  # at most this many points of each loss curve are kept
# Settings that never change what a trial computes: left out of its id.
NOT_IN_ID = ("address", "timeout", "wait")


@dataclasses.dataclass
class Member:
    shown: Dict[str, Optional[float]]  # its task's named scalars (y = m*x + b: m, b); None: non-finite
    error: Optional[float]  # its largest |param - reference solution| (None: no reference)
    final_loss: Optional[float]
    converged_step: Optional[int]
    diverged_step: Optional[int] = None  # the first step whose loss was non-finite

    def asdict(self) -> dict:
        """As a record holds it: its named scalars, then the rest."""
        return {**self.shown, **{k: getattr(self, k) for k in MEMBER_KEYS}}

    @classmethod
    def from_dict(cls, d: dict) -> "Member":
        return cls({k: v for k, v in d.items() if k not in MEMBER_KEYS}, d["error"], d["final_loss"],
                   d["converged_step"], d.get("diverged_step"))


MEMBER_KEYS = ("error", "final_loss", "converged_step", "diverged_step")


@dataclasses.dataclass
class TrialRecord:
    trial_id: str
    config: dict  # every setting of the trial and its slice, named as the flags
    verified: bool
    max_error: float
    solution: dict  # the reference solution's named scalars ({m, b}: the normal equation); {}: none
    optimal_loss: Optional[float]  # the loss there (float64); None: no reference
    members: List[Member]
    loss_curve: Optional[dict]  # {step: [...], loss: [...]}: the mean over members; None: not read (Store.curves)
    checks: List[dict]
    group: str  # the program it ran in (the id of its first trial)
    slice: str  # "4x2 cpu-sim": the slice that ran it
    group_trials: int
    wall_s: float  # the program's training time, shared by its trials
    sweep_file: Optional[str] = None  # the version of the sweep file it ran from (sweep.yaml, sweep.1.yaml, ...)
    ymxb_version: Optional[str] = None
    schema: int = 1  # SCHEMA when written; records without one are of the first layout
    stopped_at: Optional[int] = None  # steps trained, where a `stop:` rule ended it early
    stopped_by: Optional[str] = None  # ... the rule: diverged, converged, rung N

    def asdict(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**fields, "members": [m.asdict() for m in self.members]}

    def to_json(self) -> str:
        return _json_line(self.asdict())

    @classmethod
    def from_dict(cls, d: dict) -> "TrialRecord":
        d = {k: v for k, v in d.items() if k in RECORD_FIELDS}
        d["members"] = [Member.from_dict(m) for m in d["members"]]
        return cls(**d)

    def converged_step(self) -> Optional[float]:
        """The median of the members' converged steps (None if most never converged)."""
        steps = [m.converged_step if m.converged_step is not None else math.inf for m in self.members]
        median = float(np.median(steps))
        return None if math.isinf(median) else median

    def diverged_step(self) -> Optional[int]:
        """The first step at which a member's loss was non-finite; None if none diverged."""
        steps = [m.diverged_step for m in self.members if m.diverged_step is not None]
        if steps:
            return min(steps)
        # A first-layout record does not say where: -1, a step before any.
        return -1 if self.schema < 2 and any(m.final_loss is None for m in self.members) else None

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
        losses = [m.final_loss for m in self.members]
        return math.nan if None in losses else float(np.mean(losses))


RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(TrialRecord))


def trial_config(spec: SliceSpec, trial: TrialSpec) -> dict:
    return {**spec.asdict(), **trial.asdict()}


def trial_id(spec: SliceSpec, trial: TrialSpec) -> str:
    """A hash of what a trial computes: its settings (numbers as numbers: config.py makes
    them floats), and the slice it runs on, shaped and with its platform (`spec.settled`)."""
    if not spec.settled:
        raise ValueError(f"a trial's id needs the slice it runs on, shaped, with its platform; got {spec}")
    settings = {k: v for k, v in trial_config(spec, trial).items() if k not in NOT_IN_ID}
    # Laid out as ids were first made, so that stores written then stay valid: the simulation's
    # platform null (it was left to detect), one slice left out (it came before --slices),
    # and no TPU selector (how a slice was found, not what ran on it).
    settings.update(tpu_type=None, tpu_topology=None)
    if settings["platform"] == "cpu-sim":
        settings["platform"] = None
    if settings["slices"] == 1:
        del settings["slices"]
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def reference_of(program: Program) -> Optional[tasks.Reference]:
    """The task's reference solution of the program's data (None: the task has none)."""
    cfg = program.trial
    return registry.get(cfg.task).reference(cfg.of_task, data.shards(cfg, program.slice.processes))


def judge(run: ProgramRun, sweep_file: Optional[str] = None,
          reference: Optional[tasks.Reference] = None) -> List[TrialRecord]:
    """The records of every trial of a finished program, their ids made from the slice the
    program ran on; `sweep_file`: the version of the sweep file it ran from; `reference`: the
    program's (reference_of), if it was made already."""
    program = run.program
    spec, cfg = program.slice, program.trial
    task = registry.get(cfg.task)
    reference = reference or reference_of(program)
    show = registry.get(cfg.task).shown_of(cfg.of_task)
    participation = verify.check_participation(run.hosts, spec)
    results = [h.result for h in run.hosts]
    rows = {k: np.concatenate([getattr(r, k) for r in results]) for k in ("entry", "device", "params", "init")}
    rows["host"] = np.concatenate([np.full(len(h.result.entry), h.host.process_index) for h in run.hosts])
    losses = {}  # entry -> its loss histories: one per host holding it (one-model: every host)
    for r in results:
        for entry, history in zip(r.loss_entry, r.losses):
            losses.setdefault(int(entry), []).append(history)
    judged = _Judged(reference, show, f"matches {task.reference_name.replace('_', ' ')}", participation,
                     f"{spec.label()} {run.platform}", run.train_s)
    trials = program.trials()
    group = trial_id(spec, trials[0])
    # The rows of each trial, found once (a program may hold thousands of trials).
    of_trial = rows["entry"] // cfg.members
    order = np.argsort(of_trial, kind="stable")
    mine = np.split(order, np.cumsum(np.bincount(of_trial, minlength=len(trials)))[:-1])
    records = [_record(program, t, trial, {k: v[mine[t]] for k, v in rows.items()}, losses, judged,
                       trial_id(spec, trial), group) for t, trial in enumerate(trials)]
    for r in records:
        r.sweep_file = sweep_file
    return records


class _Judged(NamedTuple):
    """What the trials of a program are judged by, alike: the task's reference (None: it has
    none), how its params are shown, its check's name, and the program's own facts."""

    reference: Optional[tasks.Reference]
    show: verify.Show
    check_name: str
    participation: verify.Check
    shape: str
    wall_s: float


def _record(program: Program, t: int, trial: TrialSpec, rows, losses, judged: _Judged, tid: str,
            group: str) -> TrialRecord:
    """One trial's record from its own rows (one per model copy: replicas or members)."""
    reference, show = judged.reference, judged.show
    members = trial.members
    member = rows["entry"] % members
    labels = [f"member {j} (host {h})" if trial.ensemble else f"host {h} device {d}"
              for j, h, d in zip(member, rows["host"], rows["device"])]
    copies = list(zip(labels, rows["params"]))
    histories = {j: losses[t * members + j] for j in range(members) if t * members + j in losses}
    checks = [judged.participation,
              verify.check_finite([(f"member {j}" if trial.ensemble else "the model", _first_nonfinite(h))
                                   for j, copies_of in histories.items() for h in copies_of],
                                  trial.steps_per_call)]
    if trial.ensemble:
        checks.append(verify.check_members(member.tolist(), members))
        checks.append(verify.check_distinct_init(list(zip(labels, rows["init"])), show))
    else:
        checks.append(verify.check_replicas(copies, show))
    if reference is None:  # what can be judged without one
        checks.append(verify.check_loss_went_down(
            [(f"member {j}" if trial.ensemble else "the model", histories[j][0]) for j in sorted(histories)]))
        max_error = None
    else:
        solution_check, max_error = verify.check_solution(copies, reference.params, trial.tol, show,
                                                          reference.floor, judged.check_name)
        checks.append(solution_check)

    first = {}  # member -> its first row
    for row, j in enumerate(member):
        first.setdefault(int(j), row)
    kept = []
    for j in sorted(first):
        params, history = rows["params"][first[j]], histories[j][0]
        kept.append(Member(show(params), verify.param_error(params, reference.params) if reference else None,
                           float(history[-1]), _converged_step(history, reference.loss) if reference else None,
                           _first_nonfinite(history)))
    curve = np.mean([histories[j][0] for j in sorted(histories)], axis=0)
    steps = np.unique(np.linspace(0, len(curve) - 1, min(CURVE_POINTS, len(curve))).round().astype(int))
    return TrialRecord(
        trial_id=tid, config=trial_config(program.slice, trial),
        verified=all(c.ok for c in checks), max_error=max_error,
        solution=show(reference.params) if reference else {},
        optimal_loss=reference.loss if reference else None, members=kept,
        loss_curve={"step": steps.tolist(), "loss": curve[steps].astype(float).tolist()},
        checks=[c._asdict() for c in checks], group=group, slice=judged.shape,
        group_trials=program.count, wall_s=judged.wall_s, ymxb_version=__version__, schema=SCHEMA)


def _first_nonfinite(losses: np.ndarray) -> Optional[int]:
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None


def _converged_step(losses: np.ndarray, optimal: float) -> Optional[int]:
    close = np.flatnonzero(losses.astype(np.float64) <= optimal * (1 + CONVERGED_RTOL) + CONVERGED_ATOL)
    return int(close[0]) if close.size else None


def jsonable(value):
    """NaN and infinities (a diverged trial) as null: the store stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class Store:
    """`DIR/trials.jsonl`: the records of the trials finished so far, by trial id; their loss
    curves in `DIR/curves.jsonl`."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, STORE)
        self.curves_path = os.path.join(directory, CURVES)

    def load(self) -> Dict[str, TrialRecord]:
        """Every record, by its id (their checks None where they came from the cache: `whole`).
        UsageError naming the line where a line is not a record, or where a newer ymxb wrote it."""
        from ymxb.results import rowcache

        with _collection_paused():  # 10^5 records: a third of the time went to the collector
            cached, covered = rowcache.read(self.directory, self.path)
            records = {r.trial_id: r for r in cached}
            lines, end, following = _lines(self.path, covered.size, covered.lines + 1)
            for number, line in lines:
                record = self._parsed(number, line)
                records[record.trial_id] = record
            if end > covered.size:
                rowcache.write(self.directory, self.path, list(records.values()), rowcache.Covered(end, following - 1))
        return records

    def _parsed(self, number: int, line: str) -> TrialRecord:
        try:
            record = TrialRecord.from_dict(json.loads(line))
        except (ValueError, TypeError, KeyError) as err:
            raise UsageError(f"{self.path}, line {number}: not a trial record ({first_line(err, 200)}); "
                             f"remove that line (its trial runs again) or restore it") from None
        if record.schema > SCHEMA:
            raise UsageError(f"{self.path}, line {number}: written by a newer ymxb (record layout "
                             f"{record.schema}; this one, {__version__}, reads up to {SCHEMA}): "
                             f"upgrade ymxb to read it")
        return _upgraded(record) if record.schema < 2 else record

    def append(self, records: Iterable[TrialRecord]) -> None:
        """Add records durably, all at once: after a crash they are all there or none is. Their
        curves first: a crash between leaves curves no record names (ignored), never a record
        without its curve."""
        records = list(records)
        curves = [_json_line({"trial_id": r.trial_id, **r.loss_curve}) for r in records]  # ID_HEAD first
        rows = [dataclasses.replace(r, loss_curve=None).to_json() for r in records]
        for path, lines in ((self.curves_path, curves), (self.path, rows)):
            _cut_torn_line(path)
            with open(path, "a") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())

    def whole(self, records: Sequence[TrialRecord]) -> List[TrialRecord]:
        """`records` with everything they say: their curves (`curves`) and, where they came from
        the cache, their checks, read again from the store's rows."""
        found = {}
        for number, line in _lines_of(self.path, {r.trial_id for r in records if r.checks is None}):
            record = self._parsed(number, line)
            found[record.trial_id] = record.checks
        return [r if r.checks is not None else dataclasses.replace(r, checks=found.get(r.trial_id, []))
                for r in self.curves(records)]

    def curves(self, records: Sequence[TrialRecord]) -> List[TrialRecord]:
        """`records` with their loss curves, read from CURVES where a record does not hold its
        own (a record whose curve is missing gets an empty one: drawn without it)."""
        wanted = {r.trial_id for r in records if r.loss_curve is None}
        found = {}
        for _, line in _lines_of(self.curves_path, wanted):  # the last of an id wins
            curve = json.loads(line)
            if curve.get("trial_id") in wanted:
                found[curve["trial_id"]] = {"step": curve["step"], "loss": curve["loss"]}
        empty = {"step": [], "loss": []}
        return [r if r.loss_curve is not None else dataclasses.replace(r, loss_curve=found.get(r.trial_id, empty))
                for r in records]

    def clear(self) -> None:
        from ymxb.results import rowcache

        for path in (self.path, self.curves_path):
            if os.path.exists(path):
                os.remove(path)
        rowcache.remove(self.directory)

    def keep_sweep_file(self, as_run: str) -> str:
        """Keep the sweep file about to run (`as_run`: its text, with the values it drew),
        unless the store has this very text already: sweep.yaml first, then sweep.1.yaml,
        sweep.2.yaml, ... one per version that ran. Returns the copy's name (records say which
        version they ran from)."""
        text = as_run.encode()
        kept = self.sweep_files()
        for name in kept:
            with open(os.path.join(self.directory, name), "rb") as f:
                if f.read() == text:
                    return name
        name = _sweep_version(len(kept))
        temporary = os.path.join(self.directory, f".{name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as f:
            f.write(text)
        os.replace(temporary, os.path.join(self.directory, name))
        return name

    def sweep_files(self) -> List[str]:
        """The versions of the sweep file kept, oldest first."""
        kept = []
        while os.path.isfile(os.path.join(self.directory, _sweep_version(len(kept)))):
            kept.append(_sweep_version(len(kept)))
        return kept

    @contextlib.contextmanager
    def locked(self):
        """Hold the store for writing while the block runs. A second writer (another sweep on
        this folder) gets a UsageError naming the process that holds it; the lock goes with
        its process, however that ends."""
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(os.path.join(self.directory, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise UsageError(f"{self.directory} is in use by another sweep ({holder}): wait for it "
                                 f"to end, or give this one another --out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            yield self
        finally:
            os.close(fd)  # and with it the lock



def _json_line(value) -> str:
    """`value` as one compact line of JSON (NaN refused: jsonable makes it null first)."""
    return json.dumps(jsonable(value), allow_nan=False, separators=(",", ":"))


def _lines(path: str, offset: int = 0, first: int = 1) -> Tuple[List[tuple], int, int]:
    """(line number, text) of every complete, non-blank line of `path` from byte `offset` on
    (numbered from `first`); the offset after the last complete line, and the next number."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset, first
    # A last line without its newline was torn by a crash mid-write: not a record.
    whole = data.rfind(b"\n") + 1
    lines = data[:whole].decode().split("\n")[:-1]
    numbered = [(n, line) for n, line in enumerate(lines, first) if line.strip()]
    return numbered, offset + whole, first + len(lines)


def _lines_of(path: str, wanted: set) -> Iterable[tuple]:
    """(line number, text) of the lines of `path` that may be of a trial in `wanted`, unparsed:
    its id first (rows and curves are written so), or a line written otherwise (the first
    layout's rows: parsed to know)."""
    for number, line in _lines(path)[0] if wanted else []:
        tid = line[len(ID_HEAD):line.find('"', len(ID_HEAD))] if line.startswith(ID_HEAD) else None
        if tid is None or tid in wanted:
            yield number, line


@contextlib.contextmanager
def _collection_paused():
    """The cyclic garbage collector off while many objects are made at once, none of them garbage."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _cut_torn_line(path: str) -> None:
    """Drop a torn last line. Only its last byte is read when the file ends whole."""
    try:
        with open(path, "rb+") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def _sweep_version(n: int) -> str:
    return SWEEP_FILE if n == 0 else SWEEP_FILE.replace(".", f".{n}.", 1)


def _upgraded(record: TrialRecord) -> TrialRecord:
    """A first-layout record in today's terms: its platform the one it ran on (the last word
    of `slice`), its id made again from its settings. Ids then were made from numbers as
    written (`lr: 1` apart from `lr: 1.0`) and, on a slice the platform shaped, from the slice
    before it was shaped; made again, they are the ids today's ymxb gives the same trials."""
    config = dict(record.config)
    if config.get("platform") is None:
        config["platform"] = record.slice.rsplit(" ", 1)[-1]
    spec = SliceSpec(**{k: config[k] for k in SliceSpec.fields() if k in config})
    trial = TrialSpec.of_config(config)
    return dataclasses.replace(record, config=trial_config(spec, trial), trial_id=trial_id(spec, trial))


def table(records: Sequence[TrialRecord], limit: int = 100, best: Optional[Callable] = None,
          by: Optional[str] = None, grouped: bool = True) -> str:
    """One row per trial, showing only the settings that vary. `grouped`: by program (and the
    sweep file each came from, where they differ), diverged trials last, with the step they
    diverged at; else in the order given. `best(rows) -> their best trials' ids` marks them
    with * among each group's rows (default: the smallest max |error| of the verified); `by`
    says what it went by."""
    if not records:
        return "no trials recorded"
    best = best or default_best
    varying = varying_settings(records)
    stops = any(r.stopped_at is not None for r in records)
    head = ([f"{k:>12}" for k in varying] + [f"{'members':>7}", f"{'verified':>8}", f"{'max|error|':>10}",
                                               f"{'converged':>9}", f"{'final loss':>14}"]
            + [f"{'stopped':>16}"] * stops)
    lines = ["  " + " ".join(head)]
    groups: Dict[tuple, List[TrialRecord]] = {}
    for r in records:
        groups.setdefault((r.group, r.sweep_file) if grouped else (), []).append(r)
    files = {r.sweep_file for r in records}
    shown = 0
    for key, members in groups.items():
        if shown >= limit:  # the rest are counted below, not headed
            break
        marked = best(members)
        if grouped:
            origin = f", from {key[1] or 'an unrecorded sweep file'}" if len(files) > 1 else ""
            lines.append(f"group {key[0]} ({members[0].slice}, {len(members)} trials{origin})")
            members = sorted(members, key=rank)
        for r in members[:max(0, limit - shown)]:
            shown += 1
            step = r.converged_step()
            cells = [f"{_cell(r.config[k]):>12}" for k in varying] + [
                f"{len(r.members):>7}", f"{'yes' if r.verified else 'no':>8}",
                f"{_num(r.max_error) if r.solution else '-':>10}", f"{'-' if step is None else f'{step:g}':>9}",
                f"{_final(r):>14}"] + [f"{_stopped(r):>16}"] * stops
            lines.append(("* " if r.trial_id in marked else "  ") + " ".join(cells))
    if shown < len(records):
        lines.append(f"... {len(records) - shown} more trials in {STORE} (or --json)"
                     + (f"; {len(groups)} programs in all" if grouped and len(groups) > 1 else ""))
    passed = sum(r.verified for r in records)
    diverged = sum(r.diverged for r in records)
    pruned = sum(r.pruned for r in records)
    among = "of its group" if grouped else "of these"
    by = by or ("smallest max |error|" + ("; without a reference solution, smallest final loss"
                                          if not all(r.solution for r in records) else ""))
    lines.append(f"{passed} of {len(records)} trials verified"
                 + (f", {diverged} diverged (loss non-finite)" if diverged else "")
                 + (f", {pruned} stopped by rungs" if pruned else "")
                 + f"; * best {among} ({by})")
    return "\n".join(lines)


def default_best(shown: Sequence[TrialRecord]) -> set:
    """The ids of the best of `shown`: the smallest max |error| of the verified (the smallest
    final loss where a task gives no reference)."""
    verified = [r for r in shown if r.verified]
    return {min(verified, key=error_key).trial_id} if verified else set()


def varying_settings(records: Sequence[TrialRecord]) -> List[str]:
    """The settings (config keys) whose value differs between the records. A program's trials
    differ only in what it batches (lr, seed): the rest is compared between one trial of each
    program (10^5 trials, one program: 0.05 s, not 0.7 s)."""
    one = list({r.group: r.config for r in records}.values())
    configs = [r.config for r in records]

    def varies(key: str) -> bool:  # as written: 1 and 1.0 differ, as their JSON does
        values = [c.get(key) for c in (configs if key in BATCHED else one)]
        try:
            return len(set(values)) > 1 or len(set(map(type, values))) > 1
        except TypeError:  # a list
            return len({json.dumps(v) for v in values}) > 1

    return [k for k in configs[0] if varies(k)]


def error_key(record: TrialRecord) -> float:
    """Its max |error| for sorting (its final loss where its task gives no reference): a
    diverged trial's (NaN, stored as null) last."""
    error = record.max_error if record.solution else record.final_loss
    return error if error is not None and math.isfinite(error) else math.inf


def rank(record: TrialRecord) -> tuple:
    """The table's order: by max |error|, every diverged trial after every other."""
    return record.diverged, error_key(record)


def _final(record: TrialRecord) -> str:
    step = record.diverged_step()
    if step is None:
        return _num(record.final_loss)
    return "diverged" if step < 0 else f"diverged@{step}"


def _stopped(record: TrialRecord) -> str:
    return "-" if record.stopped_at is None else f"{record.stopped_by}@{record.stopped_at}"


def _cell(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _num(value) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.3g}"
