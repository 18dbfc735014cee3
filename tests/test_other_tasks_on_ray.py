"""Tasks other than the default through the whole machinery, with real Ray and real processes:
linreg on both parallel modes, as an ensemble, in a sweep and across a restart; a user's task
from its module, alone and in its example sweep file; and a user's task failing on one host."""

import json
import os
import re

import numpy as np
import pytest

from conftest import ROOT, launch, run_one, hooks
from ymxb import api as experiment, plan
from ymxb.results.store import Store
from ymxb.spec import sweep as sweeps
from ymxb.spec.settings import SliceSpec
from ymxb.errors import Cause, HostFailure
from ymxb.testing import FAULT_ENV, FAULT_ONCE_ENV

LINREG = dict(task="linreg", features=32, lr=0.3, samples_per_host=256, steps=300)


@pytest.mark.parametrize("parallel,model,ensemble", [("pmap", "pure", 0), ("sharding", "haiku", 4)])
def test_linreg_verifies_across_hosts(local_ray, parallel, model, ensemble):
    run, rep = run_one(hosts=2, devices_per_host=2, parallel=parallel, model=model, ensemble=ensemble, **LINREG)
    assert rep["verified"], rep["checks"]
    assert rep["config"]["task"] == "linreg" and rep["normal_equation"]["points"] == 2 * 256
    assert [len(h.result.params[0]) for h in run.hosts] == [33, 33]  # every param, flat: w (32) and b


def test_linreg_goes_on_bit_identical_after_a_host_dies(local_ray, monkeypatch, tmp_path):
    clean, _ = run_one(hosts=2, devices_per_host=1, **LINREG)
    hooks(monkeypatch, {FAULT_ENV: "die:1:train", FAULT_ONCE_ENV: str(tmp_path / "struck")})
    run, rep = run_one(hosts=2, devices_per_host=1, checkpoints=str(tmp_path), **LINREG)
    assert rep["verified"] and [(r["host"], r["cause"]) for r in rep["restarts"]] == [(1, "died")]
    for a, b in zip(run.hosts, clean.hosts):
        np.testing.assert_array_equal(a.result.params, b.result.params)
        np.testing.assert_array_equal(a.result.losses, b.result.losses)


def test_a_linreg_sweep_batches_lrs_and_keeps_what_it_computed(local_ray, tmp_path):
    doc = {"slice": {"hosts": 2, "devices_per_host": 1},
           "base": {**LINREG, "features": 8}, "grid": {"features": [8, 16], "lr": [0.1, 0.3]}}
    todo = plan.make(sweeps.parse(doc, "linreg.yaml", SliceSpec(address=None)))
    store = Store(str(tmp_path))
    todo.skip_recorded(store.load())
    outcome = experiment.run(todo, store, log=lambda line: None)
    records = list(store.load().values())
    assert len(records) == 4 and all(r.verified for r in records)
    assert {r.group_trials for r in records} == {2}  # one program per D, its lrs batched
    assert {r.config["features"] for r in records} == {8, 16} and all(r.config["task"] == "linreg" for r in records)
    assert outcome.records[0].solution.keys() == {"w[0]", "w[7]", "b"}


def test_a_users_task_runs_from_its_module_on_every_host(local_ray):
    run, rep = run_one(hosts=2, devices_per_host=2, task="examples.tasks.mlp:TASK", hidden=4, optimizer="adam",
                       lr=0.03, samples_per_host=256, steps=300)
    assert rep["verified"], rep["checks"]
    assert rep["reference"] is None and rep["max_error"] is None
    assert [c["name"] for c in rep["checks"]][-1] == "loss went down"


def test_a_users_task_failing_on_one_host_is_named_with_that_host_and_its_line(local_ray):
    with pytest.raises(HostFailure) as failure:
        run_one(hosts=2, devices_per_host=1, task="tests.broken_tasks:HOST_1_ONLY_THERE", timeout=30, steps=100)
    lines = (ROOT / "tests" / "broken_tasks.py").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "no data for host {host_index} there" in text)
    assert re.match(rf"training failed: host 1 \([\d.]+ pid \d+\) failed first: raised ValueError: no data for "
                    rf"host 1 there \(at tests/broken_tasks.py:{line} in shard\)", str(failure.value)), str(failure.value)
    assert failure.value.cause is Cause.FINAL  # a bug of the task's: no restart mends it


def test_the_example_users_task_sweeps_from_its_file(tmp_path):
    result = launch("sweep", ROOT / "examples" / "sweeps" / "mlp.yaml", "--out", tmp_path, "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert len(doc["trials"]) == 6 and all(t["verified"] and t["solution"] == {} for t in doc["trials"])
    assert sorted(os.path.basename(p) for p in doc["plots"]) == ["error_vs_lr.png", "loss.png"]  # no fit to draw
    table = launch("results", tmp_path).stdout
    assert "6 of 6 trials verified; * best of its group (smallest max |error|; without a reference solution, " \
           "smallest final loss)" in table
