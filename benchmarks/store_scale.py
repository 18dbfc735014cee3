#!/usr/bin/env python3
"""Asking a results store of many trials (`trials.db`), and moving in one written before it
(trials.jsonl + curves.jsonl, as the ymxb before wrote them).

    python benchmarks/store_scale.py                    # 320 lr x 320 seed = 102,400 trials
    python benchmarks/store_scale.py --lrs 100 --seeds 100

The store holds synthetic records (as `results.judge` writes them: one member, the four
checks' texts, a 200-point loss curve). It times, in this process: writing them all, loading
every record (twice), the comparison table, a question (`--where 'lr<0.01 and seed<5' --sort
final_loss --top 10`); and, as a user runs them, with each one's peak memory: the whole
`launch.py results DIR` twice (the first call draws the plots, the second finds them drawn
from the same store and does not), the question, and planning a rerun of the sweep that made
the store (`launch.py sweep FILE`: every trial recorded, nothing runs). Last, the same records
written as the ymxb before wrote them, and the first `launch.py results` of that folder (which
moves them in).
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lrs", type=int, default=320)
    p.add_argument("--seeds", type=int, default=320)
    args = p.parse_args()
    from ymxb.results.store import Store

    records = synthetic(args.lrs, args.seeds)
    folder = tempfile.mkdtemp(prefix="ymxb-store-")
    try:
        now, before = os.path.join(folder, "now"), os.path.join(folder, "before")
        os.makedirs(now)
        os.makedirs(before)
        started = time.perf_counter()
        Store(now).append(records)
        append_s = time.perf_counter() - started
        _write_before(before, records)
        del records
        print(f"# {args.lrs * args.seeds:,} trials; writing them all: {append_s:.1f} s", flush=True)
        sweep_file = os.path.join(folder, "sweep.yaml")
        with open(sweep_file, "w") as f:
            yaml.safe_dump({"name": "store", "slice": {"hosts": 2, "devices_per_host": 2}, "base": {"steps": 1000},
                            "grid": {"lr": [_lr(i) for i in range(args.lrs)], "seed": list(range(args.seeds))}}, f)
        columns = ("MB db", "load 1st s", "load s", "table s", "question s", "results 1st s", "results 2nd s",
                   "asked s", "plan s")
        print(" ".join(columns))
        figures, peaks = measure(now, sweep_file)
        print(" ".join(f"{v:>{len(c)}}" for v, c in zip(figures, columns)))
        print("# peak memory, MB: " + ", ".join(f"{name} {mb:.0f}" for name, mb in peaks))
        moved_s, moved_mb = _launch("results", before, "--format", "csv")
        print(f"# moving in the store written before (first `results --format csv`): {moved_s:.1f} s, peak {moved_mb:.0f} MB")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_before(folder: str, records: list) -> None:
    """The records as the ymxb before trials.db wrote them: rows in trials.jsonl, curves apart."""
    with open(os.path.join(folder, "curves.jsonl"), "w") as f:
        f.writelines(json.dumps({"trial_id": r.trial_id, **r.loss_curve}, separators=(",", ":")) + "\n"
                     for r in records)
    with open(os.path.join(folder, "trials.jsonl"), "w") as f:
        f.writelines(dataclasses.replace(r, loss_curve=None, schema=3).to_json() + "\n" for r in records)


def synthetic(lrs: int, seeds: int) -> list:
    """lrs x seeds records of one program a learning rate, as judge writes them."""
    from ymxb.results.record import Member, SCHEMA, TrialRecord, trial_config, trial_id
    from ymxb.spec.settings import SliceSpec, TrialSpec

    spec = SliceSpec(hosts=2, devices_per_host=2, platform="cpu-sim")
    checks = [{"name": "all hosts and devices took part", "ok": True,
               "detail": "2 hosts, 4 devices; psums over the mesh's axes counted 2 x 2, over both 4"},
              {"name": "loss finite", "ok": True, "detail": "loss finite at every step"},
              {"name": "replicas agree", "ok": True, "detail": "2 replicas hold identical params"},
              {"name": "matches normal equation", "ok": True, "detail": "max |error| 9.68e-08 at host 0 device 0 "
               "(m=1.993175 b=-1.003926 vs m=1.993175 b=-1.003926), tol 0.0001"}]
    steps = list(range(0, 1000, 5))
    out = []
    for i in range(lrs):
        lr = _lr(i)
        group = None
        for seed in range(seeds):
            trial = TrialSpec.resolve(lr=lr, seed=seed, steps=1000)
            tid = trial_id(spec, trial)
            group = group or tid
            loss = [0.01 + 1.0 / (1 + lr * s * (1 + seed % 7)) for s in steps]
            member = Member({"m": 2.0 - loss[-1], "b": -1.0 + loss[-1]}, loss[-1], loss[-1], 400 + seed, None)
            out.append(TrialRecord(
                tid, trial_config(spec, trial), loss[-1] < 0.02, loss[-1], {"m": 2.0, "b": -1.0}, 0.01,
                [member], {"step": steps, "loss": loss}, checks, group, "2x2 cpu-sim", seeds, 12.5, "sweep.yaml",
                "0.1.0", SCHEMA))
    return out


def _lr(i: int) -> float:
    return round(1e-3 * 1.02 ** i, 6)


def measure(folder: str, sweep_file: str):
    from ymxb.results.views import query
    from ymxb.results.views.table import table
    from ymxb.results.store import Store

    store = Store(folder)
    size = os.path.getsize(store.path) / 1e6
    loads = []
    for _ in range(2):
        started = time.perf_counter()
        records = list(Store(folder).load().values())
        loads.append(time.perf_counter() - started)
    started = time.perf_counter()
    table(records)
    table_s = time.perf_counter() - started
    started = time.perf_counter()
    query.select(records, "lr<0.01 and seed<5", "final_loss", 10)
    question_s = time.perf_counter() - started
    del records
    calls = [("results 1st", ("results", folder)), ("results 2nd", ("results", folder)),
             ("asked", ("results", folder, "--where", "lr<0.01 and seed<5", "--sort", "final_loss", "--top", "10")),
             ("plan", ("sweep", sweep_file, "--out", folder))]
    timed = [(name, *_launch(*args)) for name, args in calls]
    figures = [f"{size:.0f}", *(f"{s:.2f}" for s in (*loads, table_s, question_s)), *(f"{s:.1f}" for _, s, _ in timed)]
    return figures, [(name, mb) for name, _, mb in timed]


def _launch(*args):
    """Seconds `launch.py ARGS` took, as a user runs it, and its peak memory (MB, from time(1))."""
    with tempfile.NamedTemporaryFile("r") as peak:
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", peak.name, sys.executable, str(ROOT / "launch.py"),
                               *map(str, args)], capture_output=True, text=True)
        took = time.perf_counter() - started
        if done.returncode not in (0, 1):
            sys.exit(f"launch.py {' '.join(map(str, args))}: exit {done.returncode}: {done.stderr[-500:]}")
        return took, int(peak.read().split()[-1]) / 1024


if __name__ == "__main__":
    main()
