"""Turn what the hosts returned into the run's report: checks, verdict, table, JSON."""

import dataclasses
import json
import math
from typing import Dict, List

import numpy as np

from ymxb import data, verify
from ymxb.config import Config
from ymxb.models import to_mb

MEMBER_ROWS = 16  # members listed in the table; --json has them all


def build(cfg: Config, run: Dict, wall_s: float) -> Dict:
    """The report of one run: config, per-host and per-member results, checks, verdict."""
    solution = verify.normal_equation(*data.global_dataset(cfg))
    pieces = [(host, piece) for host in run["hosts"] for piece in host["pieces"]]
    rows = [_piece_row(cfg, host, piece) for host, piece in pieces]
    params = [(r["label"], r["m"], r["b"]) for r in rows]

    checks = [verify.check_participation(run["hosts"], cfg.hosts, cfg.devices_per_host),
              verify.check_finite([(r["label"], r["first_nonfinite_step"]) for r in rows],
                                  cfg.steps_per_call)]
    if cfg.ensemble:
        checks.append(verify.check_members([r["index"] for r in rows], cfg.ensemble))
        checks.append(verify.check_distinct_init([(r["label"], r["init_m"], r["init_b"]) for r in rows]))
    else:
        checks.append(verify.check_replicas(params))
    solution_check, max_error = verify.check_solution(params, solution, cfg.tol)
    checks.append(solution_check)

    report = {
        "config": dataclasses.asdict(cfg),
        "platform": run["platform"],
        "coordinator": run["coordinator"],
        "hosts": [_host_summary(cfg, host, [r for r in rows if r["host"] == host["process_index"]])
                  for host in run["hosts"]],
        "normal_equation": {"m": solution[0], "b": solution[1], "points": cfg.global_samples},
        "max_error": max_error,
        "tol": cfg.tol,
        "checks": [c._asdict() for c in checks],
        "verified": all(c.ok for c in checks),
        "phases_s": run["phases"],
        "wall_s": wall_s,
    }
    if cfg.ensemble:
        rows.sort(key=lambda r: r["index"])
        report["members"] = [{k: v for k, v in r.items() if k != "label"} for r in rows]
        ms, bs = np.array([r["m"] for r in rows]), np.array([r["b"] for r in rows])
        report["ensemble"] = {"members": len(rows), "mean_m": float(ms.mean()), "mean_b": float(bs.mean()),
                              "std_m": float(ms.std()), "std_b": float(bs.std())}
    return report


def to_json(report: Dict) -> str:
    """The report as standard JSON: NaN and infinities (a diverged run) become null."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(report), indent=1, allow_nan=False)


def summary(report: Dict) -> str:
    """A short human summary: one row per host (and per member), the solution, the verdict."""
    cfg = report["config"]
    lines = [f"{cfg['hosts']} hosts x {cfg['devices_per_host']} devices ({report['platform']}), "
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
    verdict = "VERIFIED" if report["verified"] else "NOT VERIFIED"
    lines.append(f"{verdict} (max |error| {report['max_error']:.3g}, tol {report['tol']:g}) "
                 f"in {report['wall_s']:.1f} s")
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


def _piece_row(cfg: Config, host: Dict, piece: Dict) -> Dict:
    m, b = to_mb(cfg.model, piece["params"])
    init_m, init_b = to_mb(cfg.model, piece["init_params"])
    where = f"host {host['process_index']}"
    label = f"member {piece['index']} ({where})" if cfg.ensemble else f"{where} device {piece['index']}"
    return {"label": label, "index": piece["index"], "host": host["process_index"],
            "m": float(m), "b": float(b), "init_m": float(init_m), "init_b": float(init_b),
            "final_loss": float(piece["losses"][-1]),
            "first_nonfinite_step": piece["first_nonfinite_step"]}


def _host_summary(cfg: Config, host: Dict, rows: List[Dict]) -> Dict:
    """What one host reports; `rows` are its pieces as _piece_row made them."""
    keys = ("process_index", "process_count", "hostname", "node_ip", "node_id", "pid", "platform",
            "device_kind", "local_devices", "global_devices", "collective_devices", "train_s",
            "first_call_s")
    out = {k: host[k] for k in keys}
    if cfg.ensemble:
        out["members"] = [r["index"] for r in rows]
    else:
        out["params"] = {"m": rows[0]["m"], "b": rows[0]["b"]}
        out["loss_history"] = [float(v) for v in host["pieces"][0]["losses"]]
    return out
