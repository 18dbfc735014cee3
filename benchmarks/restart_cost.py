#!/usr/bin/env python3
"""What a restart costs against the number of hosts, with and without JAX's persistent
compilation cache for the restarted slice.

    python benchmarks/restart_cost.py                         # 2, 4, 8, 16 hosts, 3 rounds
    python benchmarks/restart_cost.py --hosts 2,4 --rounds 5

Each run is the default job on one device a host (`launch.py --hosts N --devices-per-host 1
--steps 1000`) in which host 1 dies once as training starts (a test fault), so the slice
restarts from step 0. From its --json it takes the restart's `lost_s` (from the failure to
training going on again), and the restarted slice's own phases: place, actors (new processes:
Ray's workers, JAX's import), initialize (jax.distributed), first_call (compiling: what the
cache can save). With `cache`, every process is given a compilation cache folder of the run's
own (JAX_COMPILATION_CACHE_DIR; the embedded cluster's processes inherit it), so the restarted
hosts find what the first ones compiled. Rounds alternate between the two; medians.
"""

import argparse
import os
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ymxb.testing import FAULT_ENV, FAULT_ONCE_ENV  # noqa: E402

PARTS = ("lost_s", "place", "actors", "initialize", "first_call")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", default="2,4,8,16")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"# a restart of N hosts (one device each), median of {args.rounds} rounds: seconds")
    print(f"{'hosts':>5} {'cache':>6} " + " ".join(f"{p:>11}" for p in PARTS) + f" {'clean run':>10}")
    for hosts in (int(n) for n in args.hosts.split(",")):
        runs = {False: [], True: []}
        clean = [run(hosts, cache=False, fault=False)["wall_s"] for _ in range(args.rounds)]
        for i in range(args.rounds):
            for cache in ((False, True) if i % 2 == 0 else (True, False)):
                runs[cache].append(run(hosts, cache, fault=True))
        for cache, done in runs.items():
            parts = [statistics.median(r[p] for r in done) for p in PARTS]
            print(f"{hosts:>5} {'yes' if cache else 'no':>6} " + " ".join(f"{v:>11.2f}" for v in parts)
                  + f" {statistics.median(clean):>10.2f}", flush=True)


def run(hosts: int, cache: bool, fault: bool) -> dict:
    """One run; the restart's parts (seconds), and the run's wall time."""
    folder = tempfile.mkdtemp(prefix="ymxb-restart-")
    env = {FAULT_ENV: "die:1:train", FAULT_ONCE_ENV: f"{folder}/struck"} if fault else {}
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=f"{folder}/jax-cache", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    try:
        done = subprocess.run([sys.executable, "-m", "ymxb.testing.launch", "--hosts", str(hosts), "--devices-per-host",
                               "1", "--steps", "1000", "--json"], cwd=ROOT, capture_output=True, text=True,
                              timeout=900, env={**os.environ, **env})
        if done.returncode != 0:
            sys.exit(f"{hosts} hosts: exit {done.returncode}: {done.stderr[-2000:]}")
        report = json.loads(done.stdout)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    restart = report["restarts"][0] if report["restarts"] else {"lost_s": 0.0}
    return {"lost_s": restart["lost_s"], **report["phases_s"], "wall_s": report["wall_s"]}


if __name__ == "__main__":
    main()
