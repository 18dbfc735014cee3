"""Judging a finished program on the driver: from what its hosts returned, each trial's record
(its checks, its members against the task's reference solution, its loss curve)."""

from typing import List, NamedTuple, Optional, Sequence

import numpy as np

from ymxb import __version__
from ymxb.errors import UsageError, raised_in
from ymxb.protocol import ProgramRun
from ymxb.results import checks as verify
from ymxb.results.record import SCHEMA, Member, TrialRecord, trial_config, trial_id
from ymxb.spec import data, registry, tasks
from ymxb.spec.settings import Program, TrialSpec

# A member has converged at the first step whose loss is within this of the optimal loss (the
# float64 loss of the normal-equation solution on the same data): relatively, or absolutely
# where the optimum is (nearly) zero.
CONVERGED_RTOL, CONVERGED_ATOL = 1e-3, 1e-10
CURVE_POINTS = 200  # at most this many points of each loss curve are kept


def reference_of(program: Program) -> Optional[tasks.Reference]:
    """The task's reference solution of the program's data (None: the task has none);
    UsageError, in one line, where the task's code raised (a slice whose shape was not known
    before it started, so plan.try_data could not try it)."""
    cfg = program.trial
    try:
        return registry.get(cfg.task).reference(cfg.of_task, data.shards(cfg, program.slice.processes))
    except UsageError:
        raise
    except Exception as err:
        raise raised_in(f"--task {cfg.task}: its reference", err) from None


def judge(run: ProgramRun, ids: Optional[Sequence[str]] = None, sweep_file: Optional[str] = None,
          reference: Optional[tasks.Reference] = None) -> List[TrialRecord]:
    """The records of every trial of a finished program: `ids`, the trials' ids in its order,
    as the plan made them (None: made here, from the slice the program ran on), the first the
    program's group; `sweep_file`: the version of the sweep file it ran from; `reference`: the
    program's (reference_of), if it was made already."""
    program = run.program
    spec, cfg = program.slice, program.trial
    task = registry.get(cfg.task)
    reference = reference or reference_of(program)
    show = task.shown_of(cfg.of_task)
    participation = verify.check_participation(run.hosts, spec)
    results = [h.result for h in run.hosts]
    rows = {k: np.concatenate([getattr(r, k) for r in results]) for k in ("entry", "device", "params", "init")}
    rows["host"] = np.concatenate([np.full(len(h.result.entry), h.host.process_index) for h in run.hosts])
    losses = {}  # entry -> its loss histories: one per host holding it (one-model: every host)
    metrics = {}  # entry -> its metrics, from the first host holding it
    for r in results:
        for k, (entry, history) in enumerate(zip(r.loss_entry, r.losses)):
            losses.setdefault(int(entry), []).append(history)
            metrics.setdefault(int(entry), {name: _finite(values[k]) for name, values in r.metrics.items()})
    higher = [f"{part}_{name}" for name, m in task.metrics.items() if m.higher_is_better for part in ("train", "eval")]
    judged = _Judged(reference, show, f"matches {task.reference_name.replace('_', ' ')}", participation,
                     f"{spec.label()} {run.platform}", run.train_s, metrics, higher)
    trials = program.trials()
    ids = list(ids) if ids is not None else [trial_id(spec, trial) for trial in trials]
    # The rows of each trial, found once (a program may hold thousands of trials).
    of_trial = rows["entry"] // cfg.members
    order = np.argsort(of_trial, kind="stable")
    mine = np.split(order, np.cumsum(np.bincount(of_trial, minlength=len(trials)))[:-1])
    records = [_record(program, t, trial, {k: v[mine[t]] for k, v in rows.items()}, losses, judged,
                       ids[t], ids[0]) for t, trial in enumerate(trials)]
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
    metrics: dict  # entry -> its metrics ({name: value or None})
    higher_is_better: list  # the metric names that rank larger first


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
                           _first_nonfinite(history), judged.metrics.get(t * members + j, {})))
    names = list(kept[0].metrics) if kept else []
    means = {n: None if any(m.metrics[n] is None for m in kept) else float(np.mean([m.metrics[n] for m in kept]))
             for n in names}
    curve = np.mean([histories[j][0] for j in sorted(histories)], axis=0)
    steps = np.unique(np.linspace(0, len(curve) - 1, min(CURVE_POINTS, len(curve))).round().astype(int))
    return TrialRecord(
        trial_id=tid, config=trial_config(program.slice, trial),
        verified=all(c.ok for c in checks), max_error=max_error,
        solution=show(reference.params) if reference else {},
        optimal_loss=reference.loss if reference else None, members=kept,
        loss_curve={"step": steps.tolist(), "loss": curve[steps].astype(float).tolist()},
        checks=[c._asdict() for c in checks], group=group, slice=judged.shape,
        group_trials=program.count, wall_s=judged.wall_s, ymxb_version=__version__, schema=SCHEMA,
        metrics=means, higher_is_better=[n for n in judged.higher_is_better if n in means])


def _finite(value) -> Optional[float]:
    """A metric's value as a record keeps it: None where it is not finite."""
    value = float(value)
    return value if np.isfinite(value) else None


def _first_nonfinite(losses: np.ndarray) -> Optional[int]:
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None


def _converged_step(losses: np.ndarray, optimal: float) -> Optional[int]:
    close = np.flatnonzero(losses.astype(np.float64) <= optimal * (1 + CONVERGED_RTOL) + CONVERGED_ATOL)
    return int(close[0]) if close.size else None


