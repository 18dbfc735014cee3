"""A single run's report: its trial's record (results.py) with what each host did, as a table
or one JSON document."""

import dataclasses
import json
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from ymxb.protocol import HostRun, ProgramRun, Restart
from ymxb.results import TrialRecord, jsonable

MEMBER_ROWS = 16  # members listed in the table; --json has them all


def build(record: TrialRecord, run: ProgramRun, wall_s: float, phases: Optional[Dict[str, float]] = None,
          restarts: Sequence[Restart] = ()) -> Dict:
    """The report of a one-trial run `run` judged as `record`; `phases`: where its wall time
    went, in seconds (default: the slice's own, `run.phases`); the restarts it took."""
    cfg = record.config
    report = {
        "config": cfg,
        "trial_id": record.trial_id,
        "platform": run.platform,
        "coordinator": run.coordinator,
        "hosts": [_host_summary(cfg, host) for host in run.hosts],
        "normal_equation": {**record.solution,
                            "points": cfg["slices"] * cfg["hosts"] * cfg["samples_per_host"]},
        "optimal_loss": record.optimal_loss,
        "max_error": record.max_error,
        "tol": cfg["tol"],
        "checks": record.checks,
        "verified": record.verified,
        "phases_s": run.phases if phases is None else phases,
        "restarts": [dataclasses.asdict(r) for r in restarts],
        "wall_s": wall_s,
    }
    if cfg["ensemble"]:
        rows = _member_rows(run)
        report["members"] = rows
        ms, bs = np.array([r["m"] for r in rows]), np.array([r["b"] for r in rows])
        report["ensemble"] = {"members": len(rows), "mean_m": float(ms.mean()), "mean_b": float(bs.mean()),
                              "std_m": float(ms.std()), "std_b": float(bs.std())}
    return report


def to_json(report: Dict) -> str:
    """The report as standard JSON: NaN and infinities (a diverged run) become null."""
    return json.dumps(jsonable(report), indent=1, allow_nan=False)


def summary(report: Dict) -> str:
    """A short human summary: one row per host (and per member), the solution, the verdict."""
    cfg = report["config"]
    slices = f"{cfg['slices']} slices x " if cfg["slices"] > 1 else ""
    lines = [f"{slices}{cfg['hosts']} hosts x {cfg['devices_per_host']} devices ({report['platform']}), "
             f"{cfg['model']} model, {cfg['parallel']}, {cfg['optimizer']} lr={cfg['lr']:g}, "
             f"{cfg['steps']} steps on {report['normal_equation']['points']} points"
             + (f", ensemble of {cfg['ensemble']}" if cfg["ensemble"] else ""), ""]
    lines.append(f"{'host':>4}  {'node':<16} {'pid':>7}  {'devices':>7}  "
                 + ("members" if cfg["ensemble"] else f"{'m':>12}  {'b':>12}"))
    for h in report["hosts"]:
        held = (_ranges(h["members"]) if cfg["ensemble"]
                else f"{h['params']['m']:>12.7g}  {h['params']['b']:>12.7g}")
        devices = f"{h['local_devices']}/{h['global_devices']}"
        lines.append(f"{h['process_index']:>4}  {h['node_ip']:<16} {h['pid']:>7}  {devices:>7}  {held}")
    if "ensemble" in report:
        members = report["members"]
        lines += ["", f"{'member':>6}  {'host':>4}  {'init m':>10}  {'init b':>10}  {'m':>12}  {'b':>12}"]
        shown = members if len(members) <= MEMBER_ROWS else members[:MEMBER_ROWS // 2] + members[-MEMBER_ROWS // 2:]
        for i, r in enumerate(shown):
            if len(shown) < len(members) and i == MEMBER_ROWS // 2:
                lines.append(f"{'...':>6}  ({len(members) - len(shown)} more in --json)")
            lines.append(f"{r['index']:>6}  {r['host']:>4}  {r['init_m']:>10.4g}  {r['init_b']:>10.4g}  "
                         f"{r['m']:>12.7g}  {r['b']:>12.7g}")
        e = report["ensemble"]
        lines.append(f"ensemble: {e['members']} members, mean m={e['mean_m']:.7g} b={e['mean_b']:.7g}, "
                     f"spread (std) m={e['std_m']:.3g} b={e['std_b']:.3g}")
    sol = report["normal_equation"]
    lines += [f"normal equation (float64): m={sol['m']:.7g} b={sol['b']:.7g}", ""]
    for c in report["checks"]:
        lines.append(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['name']}: {c['detail']}")
    for r in report["restarts"]:
        who = "the slice" if r["host"] is None else f"host {r['host']} ({r['node_ip']} pid {r['pid']})"
        lines.append(f"  restart at {r['at_s']:.1f} s: {who} {r['cause']} in {r['phase']}; from step "
                     f"{r['resumed_step']}, {r['steps_redone']} steps redone, {r['lost_s']:.1f} s lost")
    verdict = "VERIFIED" if report["verified"] else "NOT VERIFIED"
    error = report["max_error"]
    lines.append(f"{verdict} (max |error| {error if error is None or math.isinf(error) else f'{error:.3g}'}, "
                 f"tol {report['tol']:g}) in {report['wall_s']:.1f} s")
    return "\n".join(lines)


def _ranges(indices: List[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    spans = []
    for i in sorted(indices):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _member_rows(run: ProgramRun) -> List[Dict]:
    """Every ensemble member once, in order: where it ran, where it started and ended."""
    rows = []
    for h in run.hosts:
        r = h.result
        final = dict(zip(r.loss_entry.tolist(), r.losses[:, -1].tolist()))
        for i, entry in enumerate(r.entry.tolist()):
            rows.append({"index": entry, "host": h.host.process_index, "device": int(r.device[i]),
                         "m": float(r.m[i]), "b": float(r.b[i]),
                         "init_m": float(r.init_m[i]), "init_b": float(r.init_b[i]),
                         "final_loss": final[entry]})
    return sorted(rows, key=lambda row: row["index"])


def _host_summary(cfg: Dict, run: HostRun) -> Dict:
    """One host in the report: who it was, what it saw, and what it ended with."""
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
        out["params"] = {"m": float(r.m[0]), "b": float(r.b[0])}
        out["loss_history"] = r.losses[0].astype(float).tolist()
    return out
