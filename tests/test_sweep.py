"""Sweeps: the file, trials grouped into programs, the results store, and `launch.py sweep` /
`results` end to end on real Ray with real processes (interrupted and resumed)."""

import json
import os
import signal

import numpy as np
import pytest
import yaml

from conftest import ROOT, Background, launch, trial_record, wait_until
from ymxb import plan
from ymxb.results.record import SCHEMA, trial_id
from ymxb.results.store import DB
from ymxb.spec import sweep
from ymxb.testing import FAULT_ENV
from ymxb.spec.settings import SliceSpec, TrialSpec
from ymxb.results.store import Store

# Two programs (sgd, adam) of 2 lr x 2 seeds each, on one warm slice of 2 hosts.
SMALL_SWEEP = {
    "name": "small",
    "slice": {"hosts": 2, "devices_per_host": 1},
    "base": {"samples_per_host": 256, "steps": 200},
    "grid": {"optimizer": ["sgd", "adam"], "lr": [0.1, 0.3], "seed": [0, 1]},
}


def _write(tmp_path, doc, name="sweep.yaml") -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_the_example_sweep_is_three_programs_of_41_trials():
    loaded = sweep.load(str(ROOT / "examples/sweeps/optimizers.yaml"))
    assert loaded.name == "optimizers" and len(loaded.trials) == 41
    groups = plan.make(loaded).groups
    assert [(g.trials[0].optimizer, len(g.trials)) for g in groups] == [("sgd", 20), ("adam", 20), ("adagrad", 1)]
    assert {spec for spec, _ in loaded.trials} == {SliceSpec(hosts=4, devices_per_host=2)}


def test_every_example_sweep_loads():
    for path in sorted((ROOT / "examples/sweeps").glob("*.yaml")):
        assert sweep.load(str(path)).trials, path


def test_shapes_in_the_grid_are_slices_and_1e_numbers_are_numbers(tmp_path):
    loaded = sweep.load(_write(tmp_path, {"grid": {"hosts": [1, 2], "lr": ["1e-2", 0.1]}}))
    assert [(s.hosts, t.lr) for s, t in loaded.trials] == [(1, 0.01), (1, 0.1), (2, 0.01), (2, 0.1)]
    assert len(plan.make(loaded).groups) == 2  # one per slice shape
    loaded = sweep.load(_write(tmp_path, {"slice": {"hosts": 2}, "grid": {"slices": [1, 2]}}))
    assert [(s.slices, s.hosts) for s, _ in loaded.trials] == [(1, 2), (2, 2)]
    assert len(plan.make(loaded).groups) == 2


def test_a_trial_id_covers_what_it_computes_and_nothing_else():
    spec, trial = SliceSpec(hosts=2, devices_per_host=2, platform="cpu-sim"), TrialSpec()
    same = trial_id(spec.replace(timeout=5, address="10.0.0.1:6379"), trial)
    assert trial_id(spec, trial) == same
    assert trial_id(spec, trial.replace(lr=0.2)) != same
    assert trial_id(spec.replace(hosts=4), trial) != same
    assert trial_id(spec.replace(slices=2), trial) != same
    # One slice leaves `slices` out: a trial's id is the one it had before --slices existed.
    assert trial_id(spec, trial) == "fd07fad9aef9"  # made before --slices
    # The optimiser's options, the schedule and the batch size: in the id where set, and out
    # of it at their defaults (a trial that sets none keeps the id it had before they existed).
    assert trial_id(spec, trial) == trial_id(spec, trial, layout=1)
    changed = [trial.replace(momentum=0.9), trial.replace(optimizer="adamw", weight_decay=0.01),
               trial.replace(schedule="cosine"), trial.replace(batch_size=64)]
    assert len({trial_id(spec, t) for t in changed} | {same}) == 5


BAD_SWEEPS = [
    ("grid: {lr: [0.1, 0.2]\nbase: {steps: 10}\n", r"not valid YAML at line 2"),
    ({"grid": {"lrr": [0.1]}}, "unknown key in grid 'lrr'; did you mean lr?"),
    ({"bases": {}}, "unknown top-level key 'bases'; did you mean base?"),
    ({"base": {"steps": "many"}}, "base: steps must be a positive integer, got 'many'"),
    ({"grid": {"seed": []}}, "grid: seed is empty"),
    ({"grid": {"lr": 0.1}}, "grid: lr must be a list of values"),
    ({"trials": [{"lr": 0.1}, {"optimizer": "adamx"}]},
     "trials[1] {optimizer: adamx}: optimizer must be one of sgd, adam, adamw, adagrad, rmsprop"),
    ({"slice": {"address": "x:1"}}, "unknown key in slice 'address': give the cluster on the command line"),
    ({"sample": {"count": 2, "space": {"lr": {"normal": [0, 1]}}}}, "sample: space: lr must be one distribution"),
    ({"slice": {"hosts": 4, "devices_per_host": 3}}, "samples_per_host (1024) must be divisible by devices_per_host (3)"),
    ({"slice": {"hosts": 4, "devices_per_host": 2}, "base": {"ensemble": 1 << 22},  # one trial too large
      "grid": {"seed": [0, 1]}}, "a trial (ensemble: 4194304) would need about"),
    # Ten axes of ten values: counted, not built (building them would take hours).
    ({"grid": {k: list(range(1, 11)) for k in ("seed", "data_seed", "steps", "samples_per_host", "steps_per_call",
                                                "ensemble", "hosts", "devices_per_host", "slices", "lr")}},
     "grid: 10 seed x 10 data_seed x 10 steps x 10 samples_per_host x 10 steps_per_call x 10 ensemble x "
     "10 hosts x 10 devices_per_host x 10 slices x 10 lr is 10,000,000,000 trials, more than the 200,000"),
]


@pytest.mark.parametrize("doc,message", BAD_SWEEPS, ids=[m[:30] for _, m in BAD_SWEEPS])
def test_a_bad_sweep_is_one_line_naming_the_file_and_exit_2(tmp_path, doc, message):
    path = _write(tmp_path, doc)
    result = launch("sweep", path, "--out", tmp_path / "out")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("launch.py: error: ") and message in lines[0], lines[0]
    assert lines[0].startswith(f"launch.py: error: {path}: ")


def test_an_unwritable_out_is_refused_before_anything_runs(tmp_path):
    result = launch("sweep", _write(tmp_path, SMALL_SWEEP), "--out", "/proc/no")
    assert result.returncode == 2 and "cannot write results to '/proc/no'" in result.stderr


def test_a_store_written_before_survives_a_torn_last_line(tmp_path):
    store = Store(str(tmp_path))
    legacy = tmp_path / "trials.jsonl"
    record = trial_record(trial_id="abc", config={"lr": 0.1}, group="abc")
    with open(legacy, "w") as f:  # as the ymxb before trials.db wrote it
        f.write(record.to_json() + "\n")
        f.write('{"trial_id": "half-writ')  # the machine died mid-write
    assert list(store.load()) == ["abc"]
    store.append([trial_record(trial_id="def", config={"lr": 0.1}, max_error=float("nan"))])
    assert list(store.load()) == ["abc", "def"]
    assert store.load()["def"].max_error is None  # standard JSON: no NaN
    assert open(str(legacy) + ".migrated").read().endswith("half-writ")  # the old file kept as it was


def _records(path):
    """The records of the store `path` (its trials.db), as --json gives them, in their order."""
    if not path.exists():
        return []
    return [json.loads(r.to_json()) for r in Store(str(path.parent)).whole(list(Store(str(path.parent)).load().values()))]


def test_a_sweep_interrupted_resumes_with_only_the_rest_and_matches_single_runs(tmp_path):
    path, out = _write(tmp_path, SMALL_SWEEP), tmp_path / "out"
    store = out / DB
    run = Background("sweep", path, "--out", out, env={FAULT_ENV: "slow:all:train:0.5"})
    # Ctrl-C once the first program (sgd) is recorded (the next takes 2 s or more: calls start late).
    recorded = lambda: len(_records(store)) >= 4
    assert wait_until(lambda: recorded() or run.proc.poll() is not None, 240) and recorded(), run.stderr
    run.send_signal(signal.SIGINT)
    code, _, err = run.finish(timeout=60)
    assert code == 130, err
    first = _records(store)
    assert [r["config"]["optimizer"] for r in first] == ["sgd"] * 4

    code, out_text, err = Background("sweep", path, "--out", out, "--json").finish(timeout=300)
    assert code in (0, 1), err[-3000:]
    assert "program of 4 trials (sgd" not in err and "program of 4 trials (adam" in err  # only the rest
    assert _records(store)[:len(first)] == first  # nothing recorded is lost or rewritten
    doc = json.loads(out_text)  # --json: stdout is one document
    got = {t["trial_id"]: t for t in doc["trials"]}
    assert len(got) == 8 and {t["config"]["optimizer"] for t in got.values()} == {"sgd", "adam"}
    assert all(os.path.getsize(p) > 10_000 for p in doc["plots"])
    assert all(t["verified"] and t["members"][0]["converged_step"] for t in got.values())
    # Both runs ran the same file: one copy kept, and every record says it came from it.
    assert {t["sweep_file"] for t in got.values()} == {"sweep.yaml"} and not (out / "sweep.1.yaml").exists()
    assert all(t["schema"] == SCHEMA and t["ymxb_version"] for t in got.values())

    again = launch("sweep", path, "--out", out)  # nothing left: no cluster at all
    assert again.returncode == 0 and "nothing to run" in again.stderr and "host 0/" not in again.stderr
    assert "joined the Ray cluster" not in again.stderr and "Ray's logs" not in again.stderr
    assert "* " in again.stdout and "8 of 8 trials verified" in again.stdout
    shown = launch("results", out)
    assert shown.returncode == 0 and shown.stdout == again.stdout

    # The invariant: a trial's params from the sweep equal the same flags run alone.
    trial = next(t for t in got.values() if t["config"]["optimizer"] == "adam" and t["config"]["seed"] == 1)
    c = trial["config"]
    alone = launch("--hosts", 2, "--devices-per-host", 1, "--samples-per-host", 256, "--steps", 200,
                   "--optimizer", "adam", "--lr", c["lr"], "--seed", 1, "--json")
    assert alone.returncode == 0, alone.stderr[-2000:]
    rep = json.loads(alone.stdout)
    assert rep["trial_id"] == trial["trial_id"]
    member = trial["members"][0]
    params = rep["hosts"][0]["params"]
    assert abs(params["m"] - member["m"]) <= 1e-6 and abs(params["b"] - member["b"]) <= 1e-6


def test_results_of_a_folder_without_a_store_is_a_usage_error(tmp_path):
    result = launch("results", tmp_path)
    assert result.returncode == 2 and "holds no results" in result.stderr


def test_a_sampled_sweep_runs_its_draws_in_one_program_and_its_kept_copy_draws_nothing(tmp_path):
    doc = {"name": "sampled", "slice": {"hosts": 1, "devices_per_host": 1},
           "base": {"samples_per_host": 256, "steps": 300},
           "sample": {"count": 3, "method": "sobol", "space": {"lr": {"log_uniform": [0.1, 0.5]},
                                                              "seed": {"int_uniform": [0, 99]}}}}
    out = tmp_path / "out"
    done = launch("sweep", _write(tmp_path, doc, "sampled.yaml"), "--out", out, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    trials = json.loads(done.stdout)["trials"]
    kept = yaml.safe_load((out / "sweep.yaml").read_text())
    assert [(t["config"]["lr"], t["config"]["seed"]) for t in trials] == [(d["lr"], d["seed"]) for d in kept["drawn"]]
    assert len({t["group"] for t in trials}) == 1  # lr and seed drawn: one shared program
    for t in trials:  # each trial's params kept, as its record shows them
        saved = np.load(out / "params" / f"{t['trial_id']}.npz")
        assert (float(saved["m"]), float(saved["b"])) == (t["members"][0]["m"], t["members"][0]["b"])
    assert json.loads(launch("results", out, "--json").stdout)["params"] == str(out / "params")
    again = launch("sweep", out / "sweep.yaml", "--out", out)
    assert again.returncode == 0 and "nothing to run" in again.stderr, again.stderr
    assert Store(str(out)).sweep_files() == ["sweep.yaml"]


def test_a_program_too_large_for_the_machine_runs_as_several_that_fit(tmp_path):
    from ymxb.driver import budget
    from ymxb.spec.settings import Program
    from ymxb.testing import MEMORY_ENV

    doc = {"name": "split", "slice": {"hosts": 1, "devices_per_host": 1},
           "base": {"samples_per_host": 256, "steps": 200}, "grid": {"seed": [0, 1, 2, 3]}}
    path = _write(tmp_path, doc)
    [group] = plan.make(sweep.load(path)).groups
    two = sum(budget.needed(Program.of(group.slice, group.trials[:2])).values())  # a machine that holds 2 of the 4
    done = launch("sweep", path, "--out", tmp_path / "out", "--json", env={MEMORY_ENV: str(two)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "running it as 2 programs of up to 2 trials" in done.stderr
    trials = json.loads(done.stdout)["trials"]
    assert [t["group_trials"] for t in trials] == [2] * 4 and len({t["group"] for t in trials}) == 2
    assert all(t["verified"] for t in trials)
