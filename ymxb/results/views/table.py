"""The comparison table of a store's trials: one row per trial, the settings that vary, grouped
by program, the best of each group marked; and the order and the best it goes by."""

import json
import math
from typing import Callable, Dict, List, Optional, Sequence

from ymxb.results.record import TrialRecord, metric_names
from ymxb.results.store import DB
from ymxb.spec.settings import BATCHED


def table(records: Sequence[TrialRecord], limit: int = 100, best: Optional[Callable] = None,
          by: Optional[str] = None, grouped: bool = True) -> str:
    """One row per trial, showing only the settings that vary, and its task's metrics. `grouped`:
    by program (and the sweep file each came from, where they differ), diverged trials last, with
    the step they diverged at; else in the order given. `best(rows) -> their best trials' ids` marks them
    with * among each group's rows (default: the smallest max |error| of the verified); `by`
    says what it went by."""
    if not records:
        return "no trials recorded"
    best = best or default_best
    varying = varying_settings(records)
    own = metric_names(records)
    stops = any(r.stopped_at is not None for r in records)
    referenced = any(r.solution for r in records)  # else no error, nor a step it converged at, to show
    head = ([f"{k:>12}" for k in varying] + [f"{'members':>7}", f"{'verified':>8}"]
            + [f"{'max|error|':>10}", f"{'converged':>9}"] * referenced + [f"{'final loss':>14}"]
            + [f"{k:>{max(10, len(k))}}" for k in own] + [f"{'stopped':>16}"] * stops)
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
            cells = ([f"{_cell(r.config[k]):>12}" for k in varying] + [f"{len(r.members):>7}",
                                                                        f"{'yes' if r.verified else 'no':>8}"]
                     + [f"{_num(r.max_error) if r.solution else '-':>10}",
                        f"{'-' if step is None else f'{step:g}':>9}"] * referenced + [f"{_final(r):>14}"]
                     + [f"{_num(r.metrics.get(k)):>{max(10, len(k))}}" for k in own] + [f"{_stopped(r):>16}"] * stops)
            lines.append(("* " if r.trial_id in marked else "  ") + " ".join(cells))
    if shown < len(records):
        lines.append(f"... {len(records) - shown} more trials in {DB} (or --json)"
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
    program (one trial stands for its program)."""
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
