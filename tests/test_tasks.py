"""Tasks (ymxb/spec/): the default one unchanged, linreg's reference and training, a user's
task, and each way a user's task is broken refused in one line (in this process: 4 CPU devices)."""

import json
import os

import numpy as np
import pytest

from conftest import ROOT, trained
from ymxb import plan
from ymxb import cli
from ymxb.results.judge import judge
from ymxb.spec import registry
from ymxb.spec.settings import TrialSpec
from ymxb.errors import UsageError

SMALL = dict(samples_per_host=256, steps=300)


def test_the_default_task_keeps_every_setting_where_it_was():
    # A record's config, as records were written before there were tasks: no "task" key, y =
    # m*x + b's settings first, in this order (trial ids hash it: tests/test_results.py pins them).
    # The settings that came later (the optimiser's options, schedule, batch size) are out of
    # the config ids are made from while at their defaults.
    first = ["true_m", "true_b", "noise", "data_seed", "samples_per_host", "model", "optimizer", "lr", "seed", "steps",
             "steps_per_call", "parallel", "ensemble", "tol"]
    assert list(TrialSpec().as_first_named()) == first
    assert [k for k in TrialSpec().asdict() if k in first] == first
    assert TrialSpec.resolve(true_m=3).asdict()["true_m"] == 3.0 and TrialSpec.resolve(true_m=3) == TrialSpec.resolve(true_m=3.0)
    assert TrialSpec.resolve(task="linreg").asdict()["task"] == "linreg"
    with pytest.raises(UsageError, match=r"'features' is not a setting of task ymxb \(its settings: true_m, true_b, noise\)"):
        TrialSpec.resolve(features=8)


def test_a_default_trials_record_has_the_fields_it_had():
    [record] = judge(trained(TrialSpec.resolve(**SMALL)))
    written = json.loads(record.to_json())
    assert list(written) == ["trial_id", "config", "verified", "max_error", "solution", "optimal_loss", "members",
                             "loss_curve", "checks", "group", "slice", "group_trials", "wall_s", "sweep_file",
                             "ymxb_version", "schema", "stopped_at", "stopped_by",  # these two: layout 4
                             "metrics", "higher_is_better"]  # layout 5: none of its task's
    assert written["metrics"] == {} and written["higher_is_better"] == []
    assert written["stopped_at"] is None and written["stopped_by"] is None
    assert list(written["members"][0]) == ["m", "b", "error", "final_loss", "converged_step", "diverged_step"]
    assert list(written["solution"]) == ["m", "b"] and written["verified"]
    assert [c["name"] for c in written["checks"]] == ["all hosts and devices took part", "loss finite",
                                                     "replicas agree", "matches normal equation"]


def test_linreg_reference_is_the_least_squares_solution_made_shard_by_shard():
    task, s = registry.get("linreg"), {"features": 5, "noise": 0.3}
    shards = [task.shard(s, 7, host, 300) for host in range(3)]
    reference = task.reference(s, iter(shards))  # a generator: each shard seen once
    x, y = (np.concatenate(part).astype(np.float64) for part in zip(*shards))
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    expected, *_ = np.linalg.lstsq(design, y, rcond=None)
    np.testing.assert_allclose(reference.params, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(reference.loss, np.mean((design @ expected - y) ** 2), rtol=1e-9)
    # float32's floor grows with the conditioning of X^T X.
    assert 0 < reference.floor < 1e-4


@pytest.mark.parametrize("parallel,model,ensemble", [("pmap", "pure", 0), ("sharding", "haiku", 0),
                                                     ("pmap", "haiku", 6), ("sharding", "pure", 6)])
def test_linreg_trains_to_its_reference_every_way(parallel, model, ensemble):
    trial = TrialSpec.resolve(task="linreg", features=16, parallel=parallel, model=model, ensemble=ensemble, lr=0.3, **SMALL)
    [record] = judge(trained(trial))
    assert record.verified, record.checks
    assert list(record.solution) == ["w[0]", "w[15]", "b"] and record.max_error < 1e-4
    assert len(record.members) == max(1, ensemble)


def test_a_users_task_without_a_reference_is_judged_on_what_holds_without_one():
    trial = TrialSpec.resolve(task="examples.tasks.mlp:TASK", hidden=4, optimizer="adam", lr=0.03, **SMALL)
    [record] = judge(trained(trial))
    assert record.verified and record.solution == {} and record.max_error is None
    assert [c["name"] for c in record.checks][-1] == "loss went down"
    assert list(json.loads(record.to_json())["members"][0])[:2] == ["b2", "w2[0]"]
    # Diverged, the loss did not go down: not verified.
    [record] = judge(trained(trial.replace(optimizer="sgd", lr=1e4)))
    assert not record.verified


CLASSIFIER = "examples.tasks.classifier:TASK"


@pytest.mark.parametrize("parallel,ensemble", [("pmap", 0), ("sharding", 4)])
def test_a_classifier_with_integer_labels_and_logits_trains_on_optaxs_own_loss(parallel, ensemble):
    trial = TrialSpec.resolve(task=CLASSIFIER, parallel=parallel, ensemble=ensemble, optimizer="adam", lr=0.1,
                              **SMALL)
    from ymxb.spec import data

    x, y = data.host_shard(trial, 0)
    assert (x.dtype, y.dtype, y.shape) == (np.float32, np.int32, (256,))  # labels stay labels
    plan.try_out(trial)  # (n, 3) logits for (n,) labels, a loss per point: accepted
    [record] = judge(trained(trial))
    assert record.verified, record.checks
    assert len(record.members) == max(1, ensemble)
    # From about log(3) = 1.10 near zero params to well-separated blobs' few hundredths.
    assert all(m.final_loss < 0.1 for m in record.members), record.members


def test_a_sweep_of_a_classifiers_learning_rates_trains_in_one_program():
    trials = [TrialSpec.resolve(task=CLASSIFIER, optimizer="adam", lr=lr, **SMALL) for lr in (0.03, 0.1)]
    records = judge(trained(*trials))
    assert [r.config["lr"] for r in records] == [0.03, 0.1] and all(r.verified for r in records)
    assert records[1].members[0].final_loss < records[0].members[0].final_loss  # the larger step went further


def test_a_classifiers_l2_penalty_keeps_its_weights_small():
    from ymxb.results import params

    def weights(l2):
        trial = TrialSpec.resolve(task=CLASSIFIER, l2=l2, optimizer="adam", lr=0.1, **SMALL)
        return np.linalg.norm(next(params.by_trial(trained(trial)))["w"])

    free, held = weights(0.0), weights(0.1)
    assert held < 0.5 * free, (held, free)


def test_a_classifier_runs_on_the_hosts_of_a_slice(capsys):
    from ymxb.ops.ray_cluster import EMBEDDED_ENV

    before = {name: os.environ.get(name) for name in EMBEDDED_ENV}
    assert cli.main(["--task", CLASSIFIER, "--hosts", "2", "--devices-per-host", "1", "--optimizer", "adam",
                     "--lr", "0.1", "--steps", "200", "--samples-per-host", "64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verified"] and [h["process_index"] for h in result["hosts"]] == [0, 1], result
    # The embedded Ray's environment is gone with it: a multi-node `ray start` after it must work.
    assert {name: os.environ.get(name) for name in EMBEDDED_ENV} == before


def _line_of(text: str) -> int:
    """The line of tests/broken_tasks.py that says `text`."""
    lines = (ROOT / "tests" / "broken_tasks.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


BROKEN = [
    ("tests.broken_task_import:TASK", "cannot import tests.broken_task_import (ZeroDivisionError: division by zero)"),
    ("tests.broken_tasks:NOTHING", "tests.broken_tasks has no NOTHING"),
    ("tests.broken_tasks:NOT_A_TASK", "NOT_A_TASK is not a task: make it a subclass of ymxb.Task"),
    ("tests.broken_tasks:NO_MODEL", "NO_MODEL does not say how to make its model"),
    ("tests.broken_tasks:COLUMN", "model pure predicts shape (8, 1) for 8 points whose y has shape (8,) (float32): "
                                  "apply must give predictions with y's shape: its loss is the default squared error"),
    ("tests.broken_tasks:SHORT", "its shard of host 0 has 1023 x and 1023 y, not --samples-per-host (1024) of each"),
    ("tests.broken_tasks:RAISING", "ValueError: the apply of this task is not written yet "
                                   f"(at tests/broken_tasks.py:{_line_of('not written yet')} in apply)"),
    ("tests.broken_tasks:NO_HOST_1", "its shard of host 1: ValueError: no data for host 1 "
                                     f"(at tests/broken_tasks.py:{_line_of('no data for host {')} in shard)"),
    ("tests.broken_tasks:HOST_1_INTS", "its shard of host 1 has x, y of float32[], int32[] per point, host 0's "
                                       "float32[], float32[]: every host's must be alike"),
    ("tests.broken_tasks:VECTOR_PENALTY", "its penalty at the initial params is array([0., 0.]"),
    ("tests.broken_tasks:BAD_REFERENCE", "its reference: LinAlgError: Singular matrix "
                                         f"(at tests/broken_tasks.py:{_line_of('# singular')} in reference)"),
    ("tests.broken_tasks:MEAN_METRIC", "its metric close on host 0's first 8 points has shape (): it must give "
                                       "a number per point (shape (8,))"),
    ("tests.broken_tasks:SPACED_METRIC", "its metrics must map names (letters, digits and _: accuracy; not loss, "
                                         "measured already) to Metric(fn, higher_is_better), not 'eval close'"),
    ("tests.broken_tasks:BARE_METRIC", "to Metric(fn, higher_is_better), not 'close' to <function"),
    ("tests.broken_tasks:HELD_OUT_SHORT_ON_HOST_1", "its held-out shard of host 1 has 7 points, host 0's 8: every "
                                                    "host's must have as many"),
    ("tests.dataset_task:TASK", "its dataset has 1000 points, fewer than 2 hosts x --samples-per-host 1024: give "
                                "--samples-per-host 500 or less, or 0 for that many"),
    ("tests.broken_tasks:DATASET_RAISING", "its dataset: FileNotFoundError: digits.npz is not there "
                                           f"(at tests/broken_tasks.py:{_line_of('is not there')} in dataset)"),
    ("tests.broken_tasks:HELD_OUT_RAISING", "its held-out shard of host 0: ValueError: no held-out data yet "
                                            f"(at tests/broken_tasks.py:{_line_of('no held-out data yet')} in held_out)"),
]


@pytest.mark.parametrize("task,message", BROKEN, ids=[t.split(":")[1] for t, _ in BROKEN])
def test_a_broken_users_task_is_refused_in_one_line_before_any_host_starts(capsys, task, message):
    assert cli.main(["--task", task, "--hosts", "2", "--devices-per-host", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"launch.py: error: --task {task}: "), err
    assert message in err, err
    assert "host 0/" not in err  # nothing started


def test_a_sweep_of_a_users_task_names_its_settings_as_keys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("base: {task: 'examples.tasks.mlp:TASK'}\ngrid: {hidden: [4, 8], lr: [0.1, 0.2]}\n")
    from ymxb.spec import sweep

    loaded = sweep.load(str(path))
    assert [(t.task, dict(t.settings)["hidden"], t.lr) for _, t in loaded.trials] == [
        ("examples.tasks.mlp:TASK", 4, 0.1), ("examples.tasks.mlp:TASK", 4, 0.2),
        ("examples.tasks.mlp:TASK", 8, 0.1), ("examples.tasks.mlp:TASK", 8, 0.2)]
    assert len(plan.make(loaded).groups) == 2  # a width each; lr batched
    path.write_text("grid: {hidden: [4, 8]}\n")  # the default task has no hidden layer
    with pytest.raises(UsageError, match=r"unknown key in grid 'hidden'; valid: task, true_m, true_b, noise"):
        sweep.load(str(path))
    path.write_text("base: {task: linreg}\ntrials: [{features: 4}, {task: ymxb, features: 4}]\n")
    with pytest.raises(UsageError, match=r"trials\[1\] \{task: ymxb, features: 4\}: 'features' is not a setting "
                                         r"of task ymxb"):
        sweep.load(str(path))


def test_a_reference_that_raises_after_training_is_one_line_too():
    # Where the slice's shape was not known before it started (a cluster's), the reference is
    # first made when the program is judged.
    from ymxb.results.judge import reference_of
    from ymxb.spec.settings import Program, SliceSpec

    program = Program.of(SliceSpec(hosts=2, devices_per_host=1, platform="cpu-sim"),
                         [TrialSpec.resolve(task="tests.broken_tasks:BAD_REFERENCE")])
    with pytest.raises(UsageError, match=r"^--task tests.broken_tasks:BAD_REFERENCE: its reference: LinAlgError: "
                                         r"Singular matrix \(at tests/broken_tasks.py:\d+ in reference\)$"):
        reference_of(program)


@pytest.mark.parametrize("parallel,ensemble", [("pmap", 0), ("sharding", 0), ("pmap", 4)])
def test_a_penalty_on_the_params_is_minimised_with_the_loss(parallel, ensemble):
    trial = TrialSpec.resolve(task="tests.ridge_task:TASK", parallel=parallel, ensemble=ensemble, lr=0.5, **SMALL)
    [record] = judge(trained(trial))
    assert record.verified, record.checks  # at the penalised minimiser, which is not the data's w = 3
    [(w, reference)] = [(m.shown["p[0]"], record.solution["p[0]"]) for m in record.members[:1]]
    assert abs(w - reference) < 1e-4 and reference < 2.5
    assert record.members[0].final_loss > 0.1  # the penalty counts: the data alone are fitted exactly at w = 3


@pytest.mark.parametrize("task,ensemble,names", [
    ("ymxb", 0, {"m": (), "b": ()}),  # the default task's shown names are all its params
    ("examples.tasks.mlp:TASK", 0, {"b1": (4,), "b2": (), "w1": (1, 4), "w2": (4,)}),  # by pytree path
    ("linreg", 2, {"flat": (2, 9)})])  # its own flat order, 8 features and b; a member axis
def test_save_params_writes_every_param_by_name_as_npz(tmp_path, capsys, task, ensemble, names):
    path = tmp_path / "params.npz"
    extra = ["--hidden", "4"] if "mlp" in task else []
    assert cli.main(["--task", task, *extra, "--ensemble", str(ensemble), "--hosts", "2", "--devices-per-host", "1",
                     "--steps", "300", "--samples-per-host", "64", "--save-params", str(path), "--json"]) in (0, 1)
    result = json.loads(capsys.readouterr().out)
    saved = np.load(path)
    assert {k: saved[k].shape for k in saved.files} == names
    if task == "ymxb":  # what the report shows is what was saved
        shown = result["hosts"][0]["params"]
        assert (float(saved["m"]), float(saved["b"])) == (shown["m"], shown["b"])


def test_save_params_to_a_folder_is_refused_before_the_run(tmp_path, capsys):
    assert cli.main(["--save-params", str(tmp_path), "--hosts", "2"]) == 2
    assert f"--save-params '{tmp_path}' is a folder" in capsys.readouterr().err


def test_a_fixed_dataset_is_cut_into_the_hosts_shards_and_what_is_left_out_is_said(capsys):
    from ymxb.spec import data
    from tests.dataset_task import TASK

    trial = TrialSpec.resolve(task="tests.dataset_task:TASK", samples_per_host=332, steps=400, lr=0.5)
    x, y = TASK.dataset({}, 0)
    for host in range(3):  # in order, each host's own points
        np.testing.assert_array_equal(data.host_shard(trial, host)[0], x[332 * host:332 * (host + 1)].astype(np.float32))
    assert cli.main(["--task", "tests.dataset_task:TASK", "--hosts", "3", "--devices-per-host", "1", "--samples-per-host",
                     "332", "--lr", "0.5", "--steps", "400", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == {"points": 1000, "trained_on": 996, "left_out": 4}
    assert report["verified"], report["checks"]  # against the line of the 996 points trained on
    from ymxb.results.views import report as views

    assert "dataset: 1000 points, 996 trained on (3 hosts x 332), the last 4 left out" in views.summary(report)


def test_samples_per_host_0_takes_all_of_a_fixed_dataset_cut_evenly(tmp_path):
    from ymxb.spec import sweep

    path = tmp_path / "s.yaml"
    path.write_text("slice: {hosts: 3, devices_per_host: 2}\n"
                    "base: {task: 'tests.dataset_task:TASK', samples_per_host: 0}\ngrid: {lr: [0.1, 0.2]}\n")
    made = plan.make(sweep.load(str(path)))
    assert [t.samples_per_host for _, t in made.trials] == [332, 332]  # 1000 // 3 hosts = 333, even over 2 devices
    explicit = TrialSpec.resolve(task="tests.dataset_task:TASK", samples_per_host=332, lr=0.1)
    spec = made.trials[0][0]
    from ymxb.results.record import trial_id

    assert made.ids[0] == trial_id(spec, explicit)  # the same trial as the number typed
