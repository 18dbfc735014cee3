#!/usr/bin/env python3
"""Asking a results store of many trials: the store as it is written now (each curve apart, in
curves.jsonl) against the layout before (each curve inside its record), in the same run.

    python benchmarks/store_scale.py                    # 320 lr x 320 seed = 102,400 trials
    python benchmarks/store_scale.py --lrs 100 --seeds 100

Both stores hold the same synthetic records (as `judge` writes them: one member, the
four checks' texts, a 200-point loss curve). For each it times, in this process: loading every
record (the first load parses the store and keeps its rows, `.trials.cache`; the second reads
them back), the comparison table, a question (`--where 'lr<0.01 and seed<5' --sort final_loss
--top 10`); and, as a user runs them: the whole `launch.py results DIR` twice (the first call
draws the plots, the second finds them drawn from the same store and does not), the question,
and planning a rerun of the sweep that made the store (`launch.py sweep FILE`: every trial
recorded, nothing runs).
"""

import argparse
import dataclasses
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
        before, now = os.path.join(folder, "before"), os.path.join(folder, "now")
        os.makedirs(before)
        os.makedirs(now)
        with open(os.path.join(before, "trials.jsonl"), "w") as f:  # layout 2: the curve in the record
            f.writelines(dataclasses.replace(r, schema=2).to_json() + "\n" for r in records)
        started = time.perf_counter()
        Store(now).append(records)
        append_s = time.perf_counter() - started
        del records
        print(f"# {args.lrs * args.seeds:,} trials; appending them all: {append_s:.1f} s")
        sweep_file = os.path.join(folder, "sweep.yaml")
        with open(sweep_file, "w") as f:
            yaml.safe_dump({"name": "store", "slice": {"hosts": 2, "devices_per_host": 2}, "base": {"steps": 1000},
                            "grid": {"lr": [_lr(i) for i in range(args.lrs)], "seed": list(range(args.seeds))}}, f)
        columns = ("MB rows", "MB curves", "load 1st s", "load s", "table s", "question s", "results 1st s",
                   "results 2nd s", "asked s", "plan s")
        print(f"{'layout':>8} " + " ".join(columns))
        for name, path in (("before", before), ("now", now)):
            figures = measure(path, sweep_file)
            print(f"{name:>8} " + " ".join(f"{v:>{len(c)}}" for v, c in zip(figures, columns)), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def synthetic(lrs: int, seeds: int) -> list:
    """lrs x seeds records of one program a learning rate, as judge writes them."""
    from ymxb.results.record import Member, SCHEMA, TrialRecord, trial_config, trial_id
    from ymxb.results.judge import judge
    from ymxb.results.views import table as trial_table
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
            trial = TrialSpec(lr=lr, seed=seed, steps=1000)
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


def measure(folder: str, sweep_file: str) -> list:
    from ymxb.results.views import query
    from ymxb.results.record import Member, SCHEMA, TrialRecord, trial_config, trial_id
    from ymxb.results.judge import judge
    from ymxb.results.views import table as trial_table
    from ymxb.results.store import Store

    store = Store(folder)
    curves = os.path.join(folder, "curves.jsonl")
    sizes = [os.path.getsize(store.path) / 1e6, os.path.getsize(curves) / 1e6 if os.path.exists(curves) else 0.0]
    loads = []
    for _ in range(2):
        started = time.perf_counter()
        records = list(store.load().values())
        loads.append(time.perf_counter() - started)
    started = time.perf_counter()
    trial_table.table(records)
    table_s = time.perf_counter() - started
    started = time.perf_counter()
    query.select(records, "lr<0.01 and seed<5", "final_loss", 10)
    question_s = time.perf_counter() - started
    del records
    calls = [_launch("results", folder) for _ in range(2)]
    calls.append(_launch("results", folder, "--where", "lr<0.01 and seed<5", "--sort", "final_loss", "--top", "10"))
    calls.append(_launch("sweep", sweep_file, "--out", folder))
    return [f"{sizes[0]:.0f}", f"{sizes[1]:.0f}", *(f"{s:.2f}" for s in (*loads, table_s, question_s)),
            *(f"{s:.1f}" for s in calls)]


def _launch(*args) -> float:
    """Seconds `launch.py ARGS` took, as a user runs it."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], capture_output=True, text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"launch.py {' '.join(args)}: exit {done.returncode}: {done.stderr[-500:]}")
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
