#!/usr/bin/env python3
"""Each phase of a run against the number of hosts: measured, then fitted.

    python benchmarks/scale_curve.py                           # 2..64 hosts packed, 2..16 on the bed
    python benchmarks/scale_curve.py --packed 2,4,8 --bed ""   # quicker
    python benchmarks/scale_curve.py --plot docs/scale.png --data scale.json
    python benchmarks/scale_curve.py --load scale.json          # the tables of a saved run again

Runs the default job (one device a host, 200 steps) at each host count: packed, every host a
process of one embedded Ray node (`launch.py --hosts N`), and on the network-namespace test bed,
one Ray node per host (`python -m ymxb.ops.testbed run --cpu N-1 -- launch.py --hosts N`: needs root
and iproute2). From each run's --json `phases_s` it prints every phase's seconds per host count,
with the run's CPU seconds (every process this script started, sampled from /proc), then a
least-squares fit of each phase against hosts, seconds = a + b N, and c N^2 beside it where a
quadratic term shows (it halves the residual and is over a tenth of the phase at the largest N).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bare_baseline import TreeCpu, adopt_orphans

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("ray_start", "place", "actors", "initialize", "first_call", "train", "gather", "verify", "shutdown",
          "stop", "ray_stop")
FLAGS = ("--devices-per-host", "1", "--steps", "200", "--json")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packed", default="2,4,8,16,32,64", help="host counts on one embedded Ray node")
    p.add_argument("--bed", default="2,4,8,16", help="host counts on the test bed, a Ray node each ('' for none)")
    p.add_argument("--plot", help="draw the curves to this PNG")
    p.add_argument("--data", help="write the measurements to this JSON file")
    p.add_argument("--load", help="run nothing: show (and --plot) the measurements a --data file holds")
    args = p.parse_args()
    curves = json.loads(Path(args.load).read_text()) if args.load else measure(args)
    for where, runs in curves.items():
        show(where, runs)
    if args.data:
        Path(args.data).write_text(json.dumps(curves, indent=1))
    if args.plot:
        plot(curves, args.plot)


def measure(args) -> dict:
    adopt_orphans()  # Ray's processes, re-parented as they start, stay in this script's tree
    curves = {}
    for where, counts in (("packed", args.packed), ("bed", args.bed)):
        runs = [run(where, int(n)) for n in counts.split(",") if n]
        if runs:
            curves[where] = runs
    return curves


def run(where: str, hosts: int) -> dict:
    """One run of `hosts` hosts: its phases (seconds), wall and CPU seconds."""
    command = [sys.executable, str(ROOT / "launch.py"), "--hosts", str(hosts), *FLAGS]
    if where == "bed":
        command = [sys.executable, "-m", "ymxb.ops.testbed", "run", "--cpu", str(hosts - 1), "--",
                   *command, "--platform", "cpu-sim"]
    started = time.perf_counter()
    with TreeCpu() as cpu:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(f"# {where} {hosts} hosts: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return {"hosts": hosts, "phases": {}, "wall": wall, "cpu": cpu.seconds}
    phases = json.loads(done.stdout)["phases_s"]
    return {"hosts": hosts, "phases": phases, "wall": wall, "cpu": cpu.seconds}


def show(where: str, runs: list) -> None:
    done = [r for r in runs if r["phases"]]
    print(f"\n## {where}: seconds per phase (wall and CPU of the whole run)")
    print(f"{'hosts':>5} " + " ".join(f"{p:>10}" for p in PHASES) + f" {'wall':>7} {'CPU':>7}")
    for r in done:
        print(f"{r['hosts']:>5} " + " ".join(f"{r['phases'].get(p, 0.0):>10.2f}" for p in PHASES)
              + f" {r['wall']:>7.1f} {r['cpu']:>7.1f}")
    if len(done) < 3:
        return
    print(f"\n## {where}: seconds = a + b hosts (+ c hosts^2 where it shows)")
    n = np.array([r["hosts"] for r in done], float)
    for phase in PHASES + ("wall", "cpu"):
        t = np.array([r["phases"].get(phase, 0.0) if phase in PHASES else r[phase] for r in done])
        (a, b), line = fit(n, t, 1)
        (qa, qb, qc), quad = fit(n, t, 2)
        shows = quad < line / 2 and qc > 0 and qc * n.max() ** 2 > 0.1 * max(t.max(), 1e-9)
        print(f"{phase:>10}: a {a:8.3f}  b {b * 1e3:9.2f} ms/host" + (f"   (c {qc * 1e3:8.4f} ms/host^2)" if shows else ""))


def fit(n: np.ndarray, t: np.ndarray, degree: int):
    """Least-squares coefficients (constant first) of t against n, and the residual sum of squares."""
    design = np.stack([n ** k for k in range(degree + 1)], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, t, rcond=None)
    return coefficients, float(np.sum((design @ coefficients - t) ** 2))


def plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6.4 * len(curves), 4.4), squeeze=False)
    for ax, (where, runs) in zip(axes.flat, curves.items()):
        done = [r for r in runs if r["phases"]]
        n = [r["hosts"] for r in done]
        for phase, color in zip(PHASES, plt.cm.tab20(np.linspace(0, 1, len(PHASES)))):
            values = [r["phases"].get(phase, 0.0) for r in done]
            if min(values, default=0) > 0:
                ax.plot(n, values, marker="o", color=color, label=phase)
        ax.plot(n, [r["wall"] for r in done], "k--", label="wall (whole run)")
        ax.set_xscale("log", base=2)  # log-log: the small serial phases show beside the big per-host ones,
        ax.set_yscale("log")  # and a slope of 1 is linear growth
        ax.set_xlabel("hosts")
        ax.set_ylabel("seconds")
        ax.set_title(f"{where}: {'one embedded Ray node' if where == 'packed' else 'a Ray node per host'}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
