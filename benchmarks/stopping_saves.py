"""What early stopping saves: each sweep run with its `stop:` block and without it, in the same
session, and what the survivors' params are (this machine is noisy: compare ratios).

    python benchmarks/stopping_saves.py

For each sweep: the wall time of `launch.py sweep` (Ray, the slice, judging, plots: all of it),
the program's own training time (the largest wall_s of its records), the model-steps the hosts
computed (said by the run; without stopping, trials x steps), how many trials stopped and why,
and whether every trial that ran to the end has the same params, bit for bit, as without
stopping (and every stopped one the same loss at its step, to float32 round-off).
"""

import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = yaml.safe_load((ROOT / "examples/sweeps/stopping.yaml").read_text())
# The same search on linreg, where each trial costs a real matrix product per step (of 16,384
# points x 1,024 features): the trials' work, not the calls', is most of the program's time.
LINREG = {**EXAMPLE, "name": "stopping_linreg",
          "base": {"steps": 300, "steps_per_call": 25, "task": "linreg", "features": 1024,
                   "samples_per_host": 8192}}


def sweep(doc: dict, folder: Path):
    """(wall seconds, records, curves by id, stderr) of `launch.py sweep` on `doc`."""
    path = folder / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = folder / doc["name"]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), "sweep", str(path), "--out", str(out), "--json"],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):
        sys.exit(f"sweep {doc['name']} failed:\n{done.stderr[-3000:]}")
    curves = {}
    for line in (out / "curves.jsonl").read_text().splitlines():
        c = json.loads(line)
        curves[c["trial_id"]] = dict(zip(c["step"], c["loss"]))
    return wall, json.loads(done.stdout)["trials"], curves, done.stderr


def compare(doc: dict, folder: Path) -> None:
    plain = {k: v for k, v in doc.items() if k != "stop"}
    plain["name"] += "_plain"
    wall0, trials0, curves0, _ = sweep(plain, folder)
    wall1, trials1, _, err = sweep(doc, folder)
    steps = doc["base"]["steps"]
    said = re.search(r"computed ([\d,]+) of ([\d,]+) model-steps", err)
    computed, whole = (int(g.replace(",", "")) for g in said.groups()) if said else (len(trials1) * steps,) * 2
    train0 = max(t["wall_s"] for t in trials0)
    train1 = max(t["wall_s"] for t in trials1)
    by_id = {t["trial_id"]: t for t in trials0}
    survivors = [t for t in trials1 if t["stopped_at"] is None]
    params = lambda t: [{k: v for k, v in m.items() if k not in ("final_loss", "converged_step")} for m in t["members"]]
    params_same = sum(params(t) == params(by_id[t["trial_id"]]) for t in survivors)
    stopped = [t for t in trials1 if t["stopped_at"] is not None and t["stopped_by"] != "diverged"]
    stopped = [t for t in stopped if t["stopped_at"] - 1 in curves0[t["trial_id"]]]  # kept of its curve
    close = sum(abs(t["members"][0]["final_loss"] - curves0[t["trial_id"]][t["stopped_at"] - 1])
                <= 1e-6 * abs(curves0[t["trial_id"]][t["stopped_at"] - 1]) for t in stopped)
    why = Counter((t["stopped_by"] or "ran to the end").split()[0] for t in trials1)
    print(f"## {doc['name']}: {len(trials1)} trials, {steps} steps ({', '.join(f'{n} {w}' for w, n in why.items())})")
    print(f"  model-steps computed: {computed:,} of {whole:,} = {computed / whole:.2f}x")
    print(f"  the program's training: {train0:.1f} s without stopping, {train1:.1f} s with = {train1 / train0:.2f}x")
    print(f"  the whole sweep (launch.py): {wall0:.1f} s without, {wall1:.1f} s with = {wall1 / wall0:.2f}x")
    differ = max((abs(a - b) / max(abs(b), 1e-30) for t in survivors
                  for m, m0 in zip(params(t), params(by_id[t["trial_id"]])) for k in m
                  for a, b in [(m[k], m0[k])] if k != "error" and a is not None), default=0.0)
    print(f"  ran to the end: {len(survivors)}; every param the same bit for bit: {params_same} of {len(survivors)}"
          f" (largest relative difference {differ:.1e}); stopped ones whose loss at their step matches "
          f"(1e-6): {close} of {len(stopped)}", flush=True)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for doc in (EXAMPLE, LINREG):
            compare(doc, Path(tmp))


if __name__ == "__main__":
    main()
