#!/usr/bin/env python3
"""Chaos: N runs of `launch.py`, each with a random host killed (SIGKILL) at a random moment
of its training; every run must restart, verify, and end bit-identical to a clean run.

    python benchmarks/chaos.py                 # 20 runs, 2 hosts x 2 devices, 2000 steps
    python benchmarks/chaos.py --runs 5 --hosts 4

Prints: runs verified, runs bit-identical to the clean run (params and loss history), restarts
(goal: one a run), processes leaked (any process a run started still alive after it ended, and
any Ray folder left behind), and what a restart costs: the median extra wall time of a chaos
run, and the median `lost_s` the runs report, each as a ratio of a clean run's wall time
(clean runs interleaved with the chaos runs, one every 5, so both see the same machine load).
"""

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ymxb.ops.reaper import _start_time, descendants  # noqa: E402


def run(flags, hosts, kill_within_s=None, rng=None) -> dict:
    """One `launch.py` run; with `kill_within_s`, SIGKILL a random host that many seconds (at
    most) after the hosts start. What happened, and which of its processes outlived it."""
    folder = tempfile.mkdtemp(prefix="chaos-", dir="/tmp")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *flags], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": folder})
    lines, seen, out = [], set(), []
    readers = [threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True),
               threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)]
    for reader in readers:
        reader.start()
    killed = None
    kill_at = None
    while proc.poll() is None:
        seen |= descendants(proc.pid)
        pids = [int(p) for p in re.findall(r"^host \d+/\d+: .* pid (\d+)$", "".join(lines), re.M)]
        if kill_within_s is not None and killed is None and pids:
            kill_at = kill_at or time.perf_counter() + rng.uniform(0, kill_within_s)
            if time.perf_counter() >= kill_at:
                killed = rng.choice(pids[-hosts:])  # the slice now up
                os.kill(killed, 9)
        time.sleep(0.05)
    for reader in readers:
        reader.join(timeout=30)
    wall = time.perf_counter() - started
    time.sleep(2)  # what is left now, stays
    leaked = [p for p, start in seen if _start_time(p) == start]
    leftovers = os.listdir(folder)
    shutil.rmtree(folder, ignore_errors=True)
    report = json.loads(out[0]) if proc.returncode in (0, 1) else None
    return {"code": proc.returncode, "wall_s": wall, "report": report, "killed": killed,
            "leaked": leaked, "leftovers": leftovers, "stderr": "".join(lines)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--devices-per-host", type=int, default=2)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="of the kills' hosts and moments")
    args = p.parse_args()
    flags = ["--hosts", str(args.hosts), "--devices-per-host", str(args.devices_per_host),
             "--steps", str(args.steps), "--json"]
    rng = random.Random(args.seed)

    clean_runs = [run(flags, args.hosts)]
    reference = clean_runs[0]["report"]
    assert clean_runs[0]["code"] == 0, clean_runs[0]["stderr"][-2000:]
    train_s = reference["phases_s"]["train"]
    chaos = []
    for i in range(args.runs):
        if i and i % 5 == 0:
            clean_runs.append(run(flags, args.hosts))
        # Within the first 80% of training (a clean run's), so that the kill lands before it ends.
        chaos.append(run(flags, args.hosts, kill_within_s=0.8 * train_s, rng=rng))
        r = chaos[-1]
        restarts = r["report"]["restarts"] if r["report"] else []
        print(f"run {i + 1:>2}: exit {r['code']}, killed pid {r['killed']}, "
              f"{len(restarts)} restart(s) {[x['cause'] for x in restarts]}, {r['wall_s']:.1f} s, "
              f"leaked {len(r['leaked'])}", flush=True)
        if r["code"] != 0:
            print(r["stderr"][-2000:], flush=True)

    same = lambda rep: rep and [h["params"] for h in rep["hosts"]] == [h["params"] for h in reference["hosts"]] \
        and [h["loss_history"] for h in rep["hosts"]] == [h["loss_history"] for h in reference["hosts"]]
    clean_wall = statistics.median(r["wall_s"] for r in clean_runs)
    restarts = [x for r in chaos if r["report"] for x in r["report"]["restarts"]]
    n = len(chaos)
    print(f"\n{n} chaos runs ({args.hosts} hosts x {args.devices_per_host} devices, {args.steps} steps; "
          f"clean run median {clean_wall:.1f} s of {len(clean_runs)})")
    print(f"  verified:          {sum(bool(r['report'] and r['report']['verified']) for r in chaos)}/{n}")
    print(f"  bit-identical:     {sum(bool(same(r['report'])) for r in chaos)}/{n}")
    print(f"  restarts:          {len(restarts)} (runs with exactly one: "
          f"{sum(bool(r['report']) and len(r['report']['restarts']) == 1 for r in chaos)}/{n})")
    print(f"  leaked processes:  {sum(len(r['leaked']) for r in chaos + clean_runs)}; "
          f"runs leaving files: {sum(bool(r['leftovers']) for r in chaos + clean_runs)}")
    extra = [(r["wall_s"] - clean_wall) / clean_wall for r in chaos if r["report"]]
    lost = [x["lost_s"] / clean_wall for x in restarts]
    if extra:
        print(f"  a restart costs:   median {statistics.median(extra):.2f}x a clean run's wall time "
              f"(extra wall time); median lost_s {statistics.median(lost) if lost else 0:.2f}x")


if __name__ == "__main__":
    main()
