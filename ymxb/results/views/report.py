"""A single run's report: its trial's record (results.py) with what each host did, as a table
or one JSON document."""

import dataclasses
import json
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from ymxb.spec import data, registry
from ymxb.protocol import HostRun, ProgramRun, Restart
from ymxb.results.record import TrialRecord, jsonable

MEMBER_ROWS = 16  # members listed in the table; --json has them all
HOST_ROWS = 16  # hosts listed in the table beyond the ones that differ; --json has them all
HOSTS_IN_FULL = 64  # up to this many hosts --json gives each one's loss history; beyond, the exceptions


def build(record: TrialRecord, run: ProgramRun, wall_s: float, phases: Optional[Dict[str, float]] = None,
          restarts: Sequence[Restart] = ()) -> Dict:
    """The report of a one-trial run `run` judged as `record`; `phases`: where its wall time
    went, in seconds (default: the slice's own, `run.phases`); the restarts it took."""
    cfg, task = record.config, registry.of_config(record.config)
    show = registry.get(run.program.trial.task).shown_of(run.program.trial.of_task)
    report = {
        "config": cfg,
        "trial_id": record.trial_id,
        "platform": run.platform,
        "coordinator": run.coordinator,
        "hosts": _host_summaries(cfg, run, show),
        task.reference_name: {**record.solution, "points": _points(cfg)} if record.solution else None,
        "optimal_loss": record.optimal_loss,
        "max_error": record.max_error,
        "metrics": record.metrics,  # the task's, at the end (of an ensemble: the mean over its members)
        "tol": cfg["tol"],
        "checks": record.checks,
        "verified": record.verified,
        "phases_s": run.phases if phases is None else phases,
        "restarts": [dataclasses.asdict(r) for r in restarts],
        "wall_s": wall_s,
    }
    cut = data.left_out(run.program.trial, run.program.slice.processes)
    if cut:  # a fixed dataset, cut by ymxb: what was left out is said
        report["dataset"] = {"points": cut[0], "trained_on": cut[0] - cut[1], "left_out": cut[1]}
    if len(run.hosts) > HOSTS_IN_FULL and not cfg["ensemble"]:
        report["loss_history_of"] = ("host 0 and each host whose history differs from it; every other host's is "
                                     "host 0's")
    if cfg["ensemble"]:
        rows = _member_rows(run, show)
        report["members"] = rows
        names = list(show(run.hosts[0].result.params[0]))
        values = {k: np.array([r[k] for r in rows]) for k in names}
        report["ensemble"] = {"members": len(rows), **{f"mean_{k}": float(v.mean()) for k, v in values.items()},
                              **{f"std_{k}": float(v.std()) for k, v in values.items()}}
    return report


def to_json(report: Dict) -> str:
    """The report as standard JSON: NaN and infinities (a diverged run) become null."""
    return json.dumps(jsonable(report), indent=1, allow_nan=False)


def _optimizer(cfg: Dict) -> str:
    """The optimiser as a run's first line says it: "sgd lr=0.1 momentum=0.9 (cosine)"."""
    options = "".join(f" {k}={cfg[k]:g}" for k in ("momentum", "weight_decay") if cfg.get(k))
    schedule = cfg.get("schedule", "constant")
    return f"{cfg['optimizer']} lr={cfg['lr']:g}{options}" + (f" ({schedule})" if schedule != "constant" else "")


def summary(report: Dict) -> str:
    """A short human summary: one row per host (and per member), the solution, the verdict."""
    cfg, task = report["config"], registry.of_config(report["config"])
    slices = f"{cfg['slices']} slices x " if cfg["slices"] > 1 else ""
    own = ", ".join(f"{s.name} {cfg[s.name]:g}" if isinstance(cfg[s.name], float) else f"{s.name} {cfg[s.name]}"
                    for s in task.settings)
    lines = [f"{slices}{cfg['hosts']} hosts x {cfg['devices_per_host']} devices ({report['platform']}), "
             + (f"task {cfg['task']} ({own}), " if "task" in cfg else "")
             + f"{cfg['model']} model, {cfg['parallel']}, {_optimizer(cfg)}, "
             f"{cfg['steps']} steps on {_points(cfg)} points"
             + (f" in minibatches of {cfg['batch_size']}" if cfg.get("batch_size") else "")
             + (f", ensemble of {cfg['ensemble']}" if cfg["ensemble"] else ""), ""]
    if "dataset" in report:
        d, hosts = report["dataset"], cfg["slices"] * cfg["hosts"]
        left = f"the last {d['left_out']} left out" if d["left_out"] else "none left out"
        lines.insert(1, f"dataset: {d['points']} points, {d['trained_on']} trained on ({hosts} hosts x "
                        f"{cfg['samples_per_host']}), {left}")
    names = list(report["hosts"][0].get("params", {})) or [k[5:] for k in report.get("ensemble", {}) if k.startswith("mean_")]
    lines.append(f"{'host':>4}  {'node':<16} {'pid':>7}  {'devices':>7}  "
                 + ("members" if cfg["ensemble"] else "  ".join(f"{k:>12}" for k in names)))
    rows = []  # (what it held, and its line)
    for h in report["hosts"]:
        held = (_ranges(h["members"]) if cfg["ensemble"]
                else "  ".join(f"{_float(v):>12.7g}" for v in h["params"].values()))
        devices = f"{h['local_devices']}/{h['global_devices']}"
        like = (devices, "" if cfg["ensemble"] else held)  # members differ by host: not an exception
        rows.append((like, f"{h['process_index']:>4}  {h['node_ip']:<16} {h['pid']:>7}  {devices:>7}  {held}"))
    lines += _some_rows(rows)
    if "ensemble" in report:
        members = report["members"]
        lines += ["", f"{'member':>6}  {'host':>4}  " + "  ".join(f"{'init ' + k:>10}" for k in names) + "  "
                  + "  ".join(f"{k:>12}" for k in names)]
        shown = members if len(members) <= MEMBER_ROWS else members[:MEMBER_ROWS // 2] + members[-MEMBER_ROWS // 2:]
        for i, r in enumerate(shown):
            if len(shown) < len(members) and i == MEMBER_ROWS // 2:
                lines.append(f"{'...':>6}  ({len(members) - len(shown)} more in --json)")
            lines.append(f"{r['index']:>6}  {r['host']:>4}  " + "  ".join(f"{_float(r['init_' + k]):>10.4g}" for k in names)
                         + "  " + "  ".join(f"{_float(r[k]):>12.7g}" for k in names))
        e = report["ensemble"]
        lines.append(f"ensemble: {e['members']} members, mean "
                     + " ".join(f"{k}={e['mean_' + k]:.7g}" for k in names) + ", spread (std) "
                     + " ".join(f"{k}={e['std_' + k]:.3g}" for k in names))
    sol = report[task.reference_name]
    if sol:
        lines += [f"{task.reference_name.replace('_', ' ')} (float64): "
                  + " ".join(f"{k}={v:.7g}" for k, v in sol.items() if k != "points"), ""]
    else:
        lines += [f"no reference solution: task {task.name} gives none, so the run is judged on every host "
                  f"and device taking part, the replicas (or members), and a finite loss that went down", ""]
    if report.get("metrics"):
        over = f" (the mean over its {cfg['ensemble']} members)" if cfg["ensemble"] else ""
        lines += ["metrics at the end" + over + ": "
                  + ", ".join(f"{k} {_float(v):.4g}" for k, v in report["metrics"].items()), ""]
    for c in report["checks"]:
        lines.append(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}")
    for r in report["restarts"]:
        who = "the slice" if r["host"] is None else f"host {r['host']} ({r['node_ip']} pid {r['pid']})"
        lines.append(f"  restart at {r['at_s']:.1f} s: {who} {r['cause']} in {r['phase']}; from step "
                     f"{r['resumed_step']}, {r['steps_redone']} steps redone, {r['lost_s']:.1f} s lost")
    verdict = "VERIFIED" if report["verified"] else "NOT VERIFIED"
    error = report["max_error"]
    judged = (f"max |error| {error if error is None or math.isinf(error) else f'{error:.3g}'}, tol {report['tol']:g}"
              if sol else "no reference solution")
    lines.append(f"{verdict} ({judged}) in {report['wall_s']:.1f} s")
    return "\n".join(lines)


def _some_rows(rows: List[tuple]) -> List[str]:
    """The host table's lines: every host's up to HOST_ROWS; beyond, the first and last few and
    every host that held something other than the first did, the rest counted."""
    if len(rows) <= HOST_ROWS:
        return [line for _, line in rows]
    ends = set(range(HOST_ROWS // 2)) | set(range(len(rows) - HOST_ROWS // 2, len(rows)))
    lines, skipped = [], 0
    for i, (like, line) in enumerate(rows):
        if i in ends or like != rows[0][0]:
            if skipped:
                lines.append(f"{'...':>4}  ({skipped:,} more hosts, each holding what host 0 does; all in --json)")
                skipped = 0
            lines.append(line)
        else:
            skipped += 1
    return lines


def _points(cfg: Dict) -> int:
    return cfg["slices"] * cfg["hosts"] * cfg["samples_per_host"]


def _float(value) -> float:
    """A value of the report as a number to format (null, from a non-finite one: NaN)."""
    return math.nan if value is None else value


def _ranges(indices: List[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    spans = []
    for i in sorted(indices):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _member_rows(run: ProgramRun, show) -> List[Dict]:
    """Every ensemble member once, in order: where it ran, where it started and ended (its
    task's metrics too)."""
    rows = []
    for h in run.hosts:
        r = h.result
        final = dict(zip(r.loss_entry.tolist(), r.losses[:, -1].tolist()))
        at = {entry: k for k, entry in enumerate(r.loss_entry.tolist())}
        for i, entry in enumerate(r.entry.tolist()):
            ended, began = show(r.params[i]), show(r.init[i])
            rows.append({"index": entry, "host": h.host.process_index, "device": int(r.device[i]),
                         **ended, **{f"init_{k}": v for k, v in began.items()}, "final_loss": final[entry],
                         **{name: float(values[at[entry]]) for name, values in r.metrics.items()}})
    return sorted(rows, key=lambda row: row["index"])


def _host_summaries(cfg: Dict, run: ProgramRun, show) -> List[Dict]:
    """Every host in the report. Beyond HOSTS_IN_FULL hosts, a replica's loss history only
    where it differs from host 0's (identical replicas are the rule; exceptions in full)."""
    first = run.hosts[0].result.losses
    full = len(run.hosts) <= HOSTS_IN_FULL
    return [_host_summary(cfg, host, show, full or i == 0 or not np.array_equal(host.result.losses, first))
            for i, host in enumerate(run.hosts)]


def _host_summary(cfg: Dict, run: HostRun, show, history: bool = True) -> Dict:
    """One host in the report: who it was, what it saw, and what it ended with (`history`:
    with its loss history)."""
    h, r = run.host, run.result
    out = {"process_index": h.process_index, "process_count": h.process_count, "hostname": h.hostname,
           "node_ip": h.node_ip, "node_id": h.node_id, "pid": h.pid, "platform": h.platform,
           "device_kind": h.device_kind, "slice": h.slice, "megascale": h.megascale,
           "local_devices": h.local_devices, "global_devices": h.global_devices,
           "collective_devices": r.collective_devices, "collective_axes": list(r.collective_axes),
           "train_s": r.train_s, "first_call_s": r.first_call_s}
    if cfg["ensemble"]:
        out["members"] = sorted(r.entry.tolist())
    else:
        out["params"] = show(r.params[0])
        if history:
            out["loss_history"] = r.losses[0].astype(float).tolist()
    return out
