"""How much faster a sweep is than the launches it replaces: wall times of `launch.py` runs as a
user makes them, all in one session (this machine is noisy: compare ratios, not seconds).

    python benchmarks/sweep_speed.py [--rounds 3] [--separate 3]

- one default `python launch.py` (median of --rounds): the baseline;
- the 40-trial sweep (2 optimizers x 5 lr x 4 seeds on 4 hosts x 2 devices, 500 steps):
  goal at most 2x the baseline;
- the same 40 trials as separate `launch.py` runs: --separate of them timed, scaled to 40;
  goal at least 10x the sweep;
- the 4096-trial lr x seed sweep (examples/sweeps/lr_seed.yaml), one program: goal at most 3x.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GRID = {"name": "bench40", "slice": {"hosts": 4, "devices_per_host": 2},
        "base": {"steps": 500, "model": "pure"},
        "grid": {"optimizer": ["sgd", "adam"], "lr": [0.01, 0.03, 0.1, 0.3, 1.0], "seed": [0, 1, 2, 3]}}


def wall(*args) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1):  # 1: ran, some trials not verified (a result)
        sys.exit(f"launch.py {' '.join(map(str, args))} failed:\n{result.stderr[-3000:]}")
    return elapsed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="default runs timed (median)")
    p.add_argument("--separate", type=int, default=3, help="trials of the 40 timed as separate runs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep40 = Path(tmp) / "bench40.yaml"
        sweep40.write_text(yaml.safe_dump(GRID))
        base = statistics.median(wall() for _ in range(args.rounds))
        print(f"one default launch.py run: {base:.1f} s (median of {args.rounds})", flush=True)

        t40 = wall("sweep", sweep40, "--out", Path(tmp) / "out40")
        print(f"40-trial sweep: {t40:.1f} s = {t40 / base:.2f}x one run (goal <= 2x)", flush=True)

        picks = [("sgd", 0.1, 0), ("adam", 0.3, 1), ("sgd", 1.0, 2), ("adam", 0.01, 3)][:args.separate]
        each = statistics.median(wall("--optimizer", o, "--lr", lr, "--seed", s) for o, lr, s in picks)
        print(f"the 40 trials as separate runs: {len(picks)} timed, median {each:.1f} s, x 40 = "
              f"{40 * each:.0f} s = {40 * each / t40:.1f}x the sweep (goal >= 10x)", flush=True)

        t4096 = wall("sweep", ROOT / "examples/sweeps/lr_seed.yaml", "--out", Path(tmp) / "out4096")
        print(f"4096-trial sweep (one program): {t4096:.1f} s = {t4096 / base:.2f}x one run (goal <= 3x)",
              flush=True)


if __name__ == "__main__":
    main()
