"""A task's metrics (#32 item 4): measured in JAX on the training shard and on the held-out
points the task gives, for one-model trials, ensembles and sweeps alike; kept in the records
and the store, and asked of by --where, --sort, --best-by, the table, csv, the plots and the
single run's report (in this process: 4 CPU devices; the last test on a slice of 2 hosts)."""

import json
import sqlite3

import numpy as np
import pytest

from conftest import ROOT, launch, trained, trial_record
from ymxb.results import params, tables
from ymxb.results.judge import judge
from ymxb.results.record import Member
from ymxb.results.store import Store
from ymxb.results.views import query
from ymxb.results.views.table import table
from ymxb.spec import data
from ymxb.spec.settings import TrialSpec

CLASSIFIER = "examples.tasks.classifier:TASK"
# Overlapping blobs: accuracy short of 1, and different from trial to trial.
TRIAL = dict(task=CLASSIFIER, spread=1.2, optimizer="adam", samples_per_host=256, steps=200)


def _by_hand(weights: dict, x: np.ndarray, y: np.ndarray):
    """Accuracy and mean cross-entropy of one softmax regression, in NumPy (float64)."""
    logits = x.astype(np.float64) @ weights["w"] + weights["b"]
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(np.mean(logits.argmax(1) == y)), float(-np.mean(log_p[np.arange(len(y)), y]))


@pytest.mark.parametrize("parallel,ensemble", [("pmap", 0), ("sharding", 0), ("pmap", 3), ("sharding", 3)])
def test_metrics_are_the_tasks_own_on_its_training_and_held_out_points(parallel, ensemble):
    trials = [TrialSpec.resolve(parallel=parallel, ensemble=ensemble, lr=lr, **TRIAL) for lr in (0.01, 0.1)]
    run = trained(*trials)
    records = judge(run)
    for trial, record, weights in zip(trials, records, params.by_trial(run)):
        x, y = data.host_shard(trial, 0)
        held_x, held_y = data.host_held_out(trial, 0, 4)
        members = [{k: v[j] for k, v in weights.items()} for j in range(ensemble)] if ensemble else [weights]
        assert len(record.members) == len(members)
        for member, w in zip(record.members, members):
            assert list(member.metrics) == ["train_accuracy", "eval_loss", "eval_accuracy"]
            train_accuracy, _ = _by_hand(w, x, y)
            eval_accuracy, eval_loss = _by_hand(w, held_x, held_y)
            assert member.metrics["train_accuracy"] == pytest.approx(train_accuracy, abs=1e-6)
            assert member.metrics["eval_accuracy"] == pytest.approx(eval_accuracy, abs=1e-6)
            assert member.metrics["eval_loss"] == pytest.approx(eval_loss, rel=1e-4)
        assert 0.5 < record.metrics["eval_accuracy"] < 1.0  # learnt, and the blobs overlap
        for name, mean in record.metrics.items():
            assert mean == pytest.approx(np.mean([m.metrics[name] for m in record.members]), rel=1e-6)
        assert record.higher_is_better == ["train_accuracy", "eval_accuracy"]
    assert records[0].metrics != records[1].metrics  # each trial its own


def test_pmap_and_sharding_measure_alike():
    got = [judge(trained(TrialSpec.resolve(parallel=parallel, lr=0.1, **TRIAL)))[0].metrics
           for parallel in ("pmap", "sharding")]
    assert got[0].keys() == got[1].keys()
    for name in got[0]:
        assert got[0][name] == pytest.approx(got[1][name], abs=1e-5)


def test_a_task_without_metrics_records_none():
    [record] = judge(trained(TrialSpec.resolve(samples_per_host=256, steps=100)))
    assert record.metrics == {} and record.higher_is_better == [] and record.members[0].metrics == {}
    assert "metrics" not in record.members[0].asdict()  # its members' JSON as before


def _records(accuracies, losses):
    """Records of one program, each with its task's metrics as judge writes them."""
    out = []
    for k, (accuracy, loss) in enumerate(zip(accuracies, losses)):
        trial = TrialSpec.resolve(task=CLASSIFIER, lr=0.01 * (k + 1))
        metrics = {"train_accuracy": accuracy, "eval_loss": loss, "eval_accuracy": accuracy}
        out.append(trial_record(trial=trial, solution={}, max_error=None, group="g", metrics=metrics,
                                higher_is_better=["train_accuracy", "eval_accuracy"],
                                members=[Member({}, None, loss, None, None, metrics)]))
    return out


def test_questions_name_a_tasks_metrics_and_rank_accuracy_largest_first():
    records = _records([0.80, 0.95, 0.90, None], [0.5, 0.2, 0.3, 0.1])
    assert {"train_accuracy", "eval_loss", "eval_accuracy"} <= set(query.keys(records))
    chosen = query.select(records, "eval_accuracy>0.85", None, None)
    assert [r.config["lr"] for r in chosen] == [0.02, 0.03]
    assert query.best_by(["eval_accuracy"], records)(records) == {records[1].trial_id}  # the largest
    assert query.best_by(["eval_loss"], records)(records) == {records[3].trial_id}  # the smallest
    # A Pareto front of accuracy (larger) and loss (smaller): 0.95/0.2 beats 0.90/0.3 and 0.80/0.5.
    assert query.best_by(["eval_accuracy", "eval_loss"], records)(records) == {records[1].trial_id}
    assert query.best_first("eval_accuracy", records) == "-eval_accuracy"
    assert query.best_first("eval_loss", records) == "eval_loss"
    assert [r.config["lr"] for r in query.sort(records, "-eval_accuracy")] == [0.02, 0.03, 0.01, 0.04]  # none last
    csv = query.to_csv(records, set()).splitlines()
    header = csv[0].split(",")
    assert header.index("final_loss") < header.index("eval_accuracy") < header.index("best")
    assert csv[2].split(",")[header.index("eval_accuracy")] == "0.95"
    shown = table(records)
    assert "eval_accuracy" in shown.splitlines()[0] and "0.95" in shown


def test_a_tasks_metrics_go_through_the_store(tmp_path):
    records = _records([0.80, 0.95], [0.5, 0.2])
    store = Store(str(tmp_path))
    store.append(records)
    loaded = list(Store(str(tmp_path)).load().values())
    assert [r.metrics for r in loaded] == [r.metrics for r in records]
    assert [r.higher_is_better for r in loaded] == [r.higher_is_better for r in records]
    assert [m.metrics for r in loaded for m in r.members] == [m.metrics for r in records for m in r.members]


def test_a_store_of_the_layout_before_metrics_is_brought_up_to_it(tmp_path):
    old = [trial_record()]
    Store(str(tmp_path)).append(old)
    with sqlite3.connect(tmp_path / "trials.db") as db:  # as a store was laid out before metrics
        db.execute("ALTER TABLE trials DROP COLUMN metrics")
        db.execute("ALTER TABLE trials DROP COLUMN higher_is_better")
        db.execute("PRAGMA user_version = 1")
    store = Store(str(tmp_path))
    [loaded] = store.load().values()
    assert loaded.metrics == {} and loaded.higher_is_better == [] and loaded.trial_id == old[0].trial_id
    store.append(_records([0.9], [0.3]))
    assert [r.metrics.get("eval_accuracy") for r in Store(str(tmp_path)).load().values()] == [None, 0.9]
    with sqlite3.connect(tmp_path / "trials.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == tables.FORMAT


@pytest.mark.slow
def test_a_classifier_sweep_is_asked_by_its_held_out_accuracy(tmp_path):
    import yaml

    sweep = yaml.safe_load((ROOT / "examples" / "sweeps" / "classifier.yaml").read_text())
    sweep["slice"] = {"hosts": 2, "devices_per_host": 1}  # the example's, on a smaller slice
    sweep["base"]["steps"] = 150
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(sweep))
    out = tmp_path / "cls"
    done = launch("sweep", tmp_path / "cls.yaml", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "plots" / "metrics_vs_lr.png").is_file()
    asked = launch("results", out, "--where", "eval_accuracy>0.8", "--best-by", "eval_accuracy", "--json")
    assert asked.returncode == 0, asked.stderr[-2000:]
    doc = json.loads(asked.stdout)
    trials = {t["trial_id"]: t for t in doc["trials"]}
    assert 0 < len(trials) <= 16 and all(t["metrics"]["eval_accuracy"] > 0.8 for t in trials.values())
    top = max(t["metrics"]["eval_accuracy"] for t in trials.values())
    assert doc["best"] and all(trials[b]["metrics"]["eval_accuracy"] == top for b in doc["best"])
    table_text = launch("results", out, "--best-by", "eval_accuracy", "--top", 1).stdout
    assert "(largest eval_accuracy)" in table_text and table_text.splitlines()[1].startswith("*")
    # A single run of it reports them, an ensemble's as the mean of its members.
    one = launch("--task", CLASSIFIER, "--hosts", 2, "--devices-per-host", 1, "--ensemble", 2, "--spread", 1.2,
                 "--optimizer", "adam", "--lr", 0.1, "--steps", 100, "--json")
    assert one.returncode == 0, one.stderr[-2000:]
    report = json.loads(one.stdout)
    assert set(report["metrics"]) == {"train_accuracy", "eval_loss", "eval_accuracy"}
    assert 0.5 < report["metrics"]["eval_accuracy"] < 1.0


def test_a_classifier_on_a_dataset_a_package_ships_matches_scikit_learns():
    # scikit-learn's digits, 1,500 images on one host: every param within --tol (1e-4) of
    # scikit-learn's LogisticRegression of the same penalty, and most of the 296 held-out right.
    trial = TrialSpec.resolve(task="examples.tasks.digits:TASK", samples_per_host=1500, optimizer="adam", lr=0.05,
                              schedule="cosine", steps=1500)
    [record] = judge(trained(trial))
    assert record.verified, record.checks
    assert record.checks[-1]["name"] == "matches sklearn logistic regression" and record.max_error < 1e-4
    assert record.metrics["eval_accuracy"] > 0.85


def test_a_haiku_classifier_with_weight_decay_and_minibatches_trains_as_an_ensemble_and_a_sweep():
    # The whole classifier: haiku, integer labels, optax's cross-entropy, adamw's decay,
    # minibatches, accuracy on held-out points; an ensemble in each of a sweep's trials.
    trials = [TrialSpec.resolve(**{**TRIAL, "optimizer": "adamw", "steps": 300}, model="haiku", ensemble=2,
                                weight_decay=wd, batch_size=64, lr=0.05) for wd in (0.0, 0.1)]
    records = judge(trained(*trials))
    assert all(r.verified for r in records), [r.checks for r in records]
    assert all(len(r.members) == 2 and 0.7 < r.metrics["eval_accuracy"] < 1.0 for r in records)
    best = query.best_by(["eval_accuracy"], records)(records)
    top = max(r.metrics["eval_accuracy"] for r in records)
    assert best and all(next(r for r in records if r.trial_id == b).metrics["eval_accuracy"] == top for b in best)
