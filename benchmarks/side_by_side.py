"""Would programs that fit on part of a slice run faster side by side, each on its own part,
than one after another on the whole? Measured before building it (#23, item 5), with what
ymxb has: two programs (sgd, adam; 16 lr x seed trials each) run

- one after another on a slice of 4 hosts x 2 devices (one sweep, one warm slice), and
- side by side, each on its own slice of 2 hosts x 2 devices (two sweeps started at once, each
  with its own embedded Ray: the processes a split slice would have, and no more);

and, for scale, one after another on 2 hosts x 2 devices. Printed: each program's training
time (its records' wall_s), both programs' (one after another: the sum; side by side: the
longer), and the wall time of the whole, all in one session.

    python benchmarks/side_by_side.py [--steps 2000] [--samples 4096]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def sweep_doc(name: str, hosts: int, optimizers, steps: int, samples: int) -> dict:
    return {"name": name, "slice": {"hosts": hosts, "devices_per_host": 2},
            "base": {"steps": steps, "samples_per_host": samples * 4 // hosts},  # the same data in all
            "grid": {"optimizer": list(optimizers), "lr": [0.01, 0.03, 0.1, 0.3], "seed": [0, 1, 2, 3]}}


def start(doc: dict, folder: Path) -> subprocess.Popen:
    path = folder / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "sweep", str(path), "--out",
                             str(folder / doc["name"]), "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def trained(proc: subprocess.Popen) -> dict:
    """optimizer -> its program's training seconds."""
    out, err = proc.communicate()
    if proc.returncode not in (0, 1):
        sys.exit(f"a sweep failed:\n{err[-3000:]}")
    return {t["config"]["optimizer"]: t["wall_s"] for t in json.loads(out)["trials"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--samples", type=int, default=4096, help="points per host on the 4-host slice")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = []
        for label, docs in (
                ("one after another, 4x2", [sweep_doc("whole", 4, ("sgd", "adam"), args.steps, args.samples)]),
                ("side by side, 2x2 each", [sweep_doc(f"half_{o}", 2, (o,), args.steps, args.samples)
                                            for o in ("sgd", "adam")]),
                ("one after another, 2x2", [sweep_doc("half", 2, ("sgd", "adam"), args.steps, args.samples)])):
            started = time.perf_counter()
            procs = [start(doc, folder) for doc in docs]
            seconds = {}
            for proc in procs:
                seconds.update(trained(proc))
            rows.append((label, seconds, time.perf_counter() - started))
        both = lambda label, seconds: (max if "side" in label else sum)(seconds.values())
        base_training, base_wall = both(*rows[0][:2]), rows[0][2]
        for label, seconds, wall in rows:
            training = both(label, seconds)
            print(f"{label:>24}: training sgd {seconds['sgd']:.1f} s, adam {seconds['adam']:.1f} s, both "
                  f"{training:.1f} s = {training / base_training:.2f}x the first; the whole run {wall:.1f} s "
                  f"= {wall / base_wall:.2f}x", flush=True)


if __name__ == "__main__":
    main()
