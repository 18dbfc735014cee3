"""Questions to a results store (no cluster): --where, --sort, --top, --best-by, --format."""

import csv
import io
import json

import numpy as np
import pytest

from conftest import launch, trial_record
from ymxb.results.views import query
from ymxb.results.views import table as trial_table
from ymxb.spec.settings import TrialSpec
from ymxb.errors import UsageError
from ymxb.results.record import Member
from ymxb.results.store import Store


def _trial(optimizer, lr, final_loss, wall_s=1.0, verified=True, diverged_at=None):
    member = Member({"m": 2.0, "b": -1.0}, 1e-6, final_loss, 40, diverged_at)
    return trial_record(trial=TrialSpec.resolve(optimizer=optimizer, lr=lr), members=[member], wall_s=wall_s,
                        verified=verified, max_error=final_loss or 1.0)


TRIALS = [
    _trial("sgd", 0.01, 0.5),
    _trial("sgd", 0.1, 0.02, wall_s=3.0),
    _trial("adam", 0.01, 0.04, wall_s=0.5),
    _trial("adam", 0.1, 0.01, wall_s=2.0),
    _trial("adam", 1.0, None, verified=False, diverged_at=7),
]


def _lr(records):
    return [(r.config["optimizer"], r.config["lr"]) for r in records]


@pytest.mark.parametrize("condition,expected", [
    ("optimizer==adam and lr<0.1", [("adam", 0.01)]),
    ("optimizer = adam and lr = 1", [("adam", 1.0)]),  # one =, and 1 is 1.0
    ("0.01 < lr <= 0.1", [("sgd", 0.1), ("adam", 0.1)]),
    ("optimizer in [sgd] or final_loss < 0.02", [("sgd", 0.01), ("sgd", 0.1), ("adam", 0.1)]),
    ("not verified", [("adam", 1.0)]),
    ("diverged == true", [("adam", 1.0)]),
    ("final_loss > 0", [("sgd", 0.01), ("sgd", 0.1), ("adam", 0.01), ("adam", 0.1)]),  # a diverged loss has no order
])
def test_where_picks_the_trials_its_condition_holds_for(condition, expected):
    assert _lr(query.select(TRIALS, condition, None, None)) == expected


@pytest.mark.parametrize("condition,says", [
    ("optimzer==adam", "'optimzer' is not a key of these trials; keys:"),
    ("__import__('os').system('true')", "is not a comparison"),
    ("lr < len(optimizer)", "is neither a key nor a value"),
    ("lr <", "is not a condition"),
    ("optimizer < 3", "cannot order 'sgd' against 3"),
])
def test_a_bad_condition_is_one_usage_error_saying_what_is_wrong(condition, says):
    with pytest.raises(UsageError) as err:
        query.select(TRIALS, condition, None, None)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_sort_and_top_order_every_trial_and_put_those_without_a_value_last():
    assert _lr(query.select(TRIALS, None, "final_loss", 2)) == [("adam", 0.1), ("sgd", 0.1)]
    assert _lr(query.select(TRIALS, None, None, 2)) == [("adam", 0.1), ("sgd", 0.1)]  # alone: by max |error|
    assert _lr(query.select(TRIALS, None, "-final_loss", None)) == [
        ("sgd", 0.01), ("adam", 0.01), ("sgd", 0.1), ("adam", 0.1), ("adam", 1.0)]
    with pytest.raises(UsageError, match="'speed' is not a key"):
        query.select(TRIALS, None, "speed", None)
    with pytest.raises(UsageError, match="--top 0"):
        query.select(TRIALS, None, None, 0)


def test_best_by_one_metric_is_its_smallest_and_by_several_the_pareto_front():
    ids = {(r.config["optimizer"], r.config["lr"]): r.trial_id for r in TRIALS}
    assert query.best_by(["wall_s"], TRIALS)(TRIALS) == {ids["adam", 0.01]}  # the diverged trial is no candidate
    front = query.best_by(["final_loss", "wall_s"], TRIALS)(TRIALS)
    # sgd 0.01 (0.5, 1 s) loses to adam 0.01 (0.04, 0.5 s); sgd 0.1 (0.02, 3 s) to adam 0.1 (0.01, 2 s)
    assert front == {ids["adam", 0.01], ids["adam", 0.1]}
    with pytest.raises(UsageError, match="--best-by 'optimizer'"):
        query.best_by(["optimizer"], TRIALS)


def test_the_table_marks_the_best_by_the_metric_asked_for():
    best = query.best_by(["wall_s"], TRIALS)
    text = trial_table.table(query.select(TRIALS, None, "wall_s", None), best=best, by="smallest wall_s", grouped=False)
    marked = [line for line in text.splitlines() if line.startswith("* ")]
    lines = text.splitlines()
    assert len(marked) == 1 and marked[0] == lines[1] and "0.04" in marked[0]  # 0.5 s, first by wall_s
    assert lines[-1].endswith("* best of these (smallest wall_s)") and "group" not in text
    assert lines[-2].split()[:2] == ["sgd", "0.1"]  # 3 s: the order given, not by error


def test_csv_has_every_setting_and_metric_and_the_best(tmp_path):
    rows = list(csv.DictReader(io.StringIO(query.to_csv(TRIALS, {TRIALS[3].trial_id}))))
    assert len(rows) == 5 and {"trial_id", "lr", "optimizer", "steps", "final_loss", "best"} <= set(rows[0])
    assert [r["best"] for r in rows] == ["0", "0", "0", "1", "0"]
    assert rows[4]["final_loss"] == "" and rows[4]["diverged_step"] == "7"


def test_results_answers_a_question_from_the_command_line(tmp_path):
    Store(str(tmp_path)).append(TRIALS)
    done = launch("results", str(tmp_path), "--where", "optimizer==adam", "--sort", "final_loss",
                  "--best-by", "final_loss,wall_s", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert done.returncode == 1, done.stderr  # the diverged trial is among those shown
    assert [(r["lr"], r["best"]) for r in rows] == [("0.1", "1"), ("0.01", "1"), ("1.0", "0")]
    done = launch("results", str(tmp_path), "--where", "lr<1", "--top", "2", "--sort", "final_loss", "--json")
    doc = json.loads(done.stdout)
    assert done.returncode == 0 and [t["config"]["lr"] for t in doc["trials"]] == [0.1, 0.1]
    assert doc["best"] == [TRIALS[3].trial_id]
    done = launch("results", str(tmp_path), "--where", "lr<<1")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--where 'lr<<1'" in done.stderr


def test_the_pareto_front_is_every_point_nothing_beats_ties_included():
    rng = np.random.default_rng(0)
    points = {str(i): tuple(int(v) for v in rng.integers(0, 12, 3)) for i in range(400)}
    beaten = lambda p: any(q != p and all(x <= y for x, y in zip(q, p)) for q in points.values())
    assert query._front(points) == {t for t, p in points.items() if not beaten(p)}
