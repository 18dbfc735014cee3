"""Sampled search spaces in a sweep file (no cluster): what is drawn, how it combines with a
grid, and that the file as run keeps it."""

import numpy as np
import pytest
import yaml

from ymxb import plan
from ymxb.spec import sweep
from ymxb.errors import UsageError

SPACE = {"lr": {"log_uniform": [1.0e-3, 1.0]}, "seed": {"int_uniform": [0, 9]},
         "optimizer": {"choice": ["sgd", "adam"]}, "steps": {"choice": [100, 200]}}


def _sweep(sample, text="", **doc) -> sweep.Sweep:
    doc = {"name": "s", "slice": {"hosts": 1, "devices_per_host": 1}, "sample": sample, **doc}
    return sweep.parse(doc, "s.yaml", text=text or yaml.safe_dump(doc, sort_keys=False))


def _values(s: sweep.Sweep, key: str) -> list:
    return [getattr(t, key) for _, t in s.trials]


@pytest.mark.parametrize("method", ["random", "sobol", "halton"])
def test_every_distribution_draws_inside_its_bounds_the_same_each_time(method):
    s = _sweep({"count": 64, "method": method, "seed": 3, "space": SPACE})
    lrs = _values(s, "lr")
    assert len(s.trials) == 64 and all(1e-3 <= lr <= 1.0 for lr in lrs)
    assert all(float(f"{lr:.6g}") == lr for lr in lrs)  # 6 significant digits
    assert set(_values(s, "seed")) <= set(range(10)) and set(_values(s, "optimizer")) == {"sgd", "adam"}
    assert set(_values(s, "steps")) == {100, 200}
    assert _sweep({"count": 64, "method": method, "seed": 3, "space": SPACE}).trials == s.trials
    assert _sweep({"count": 64, "method": method, "seed": 4, "space": SPACE}).trials != s.trials


def test_quasi_random_covers_evenly_where_random_need_not():
    space = {"lr": {"uniform": [0.0, 1.0]}}
    for method in ("sobol", "halton"):
        lrs = _values(_sweep({"count": 64, "method": method, "space": space}), "lr")
        assert np.histogram(lrs, bins=8, range=(0, 1))[0].min() >= 7, method  # 8 a bin, give or take one
    log = _values(_sweep({"count": 64, "method": "sobol", "space": {"lr": {"log_uniform": [1e-4, 1.0]}}}), "lr")
    assert list(np.histogram(np.log10(log), bins=4, range=(-4, 0))[0]) == [16, 16, 16, 16]  # even per decade


def test_a_sample_with_a_grid_is_their_product_and_lr_and_seed_share_a_program():
    s = _sweep({"count": 5, "space": {"lr": {"log_uniform": ["1e-3", 1.0]}, "seed": {"int_uniform": [0, 999]}}},
               grid={"optimizer": ["sgd", "adam"]})
    assert len(s.trials) == 10 and _values(s, "optimizer") == ["sgd"] * 5 + ["adam"] * 5
    assert _values(s, "lr")[:5] == _values(s, "lr")[5:]  # every sample with every combination
    assert [len(g.trials) for g in plan.make(s).groups] == [5, 5]  # on the shared trial axis


def test_the_file_as_run_keeps_what_was_drawn_and_running_it_draws_nothing():
    s = _sweep({"count": 4, "method": "sobol", "space": {"lr": {"uniform": [0.1, 0.9]}}})
    assert "\ndrawn:\n" in s.as_run
    kept = yaml.safe_load(s.as_run)
    assert [d["lr"] for d in kept["drawn"]] == _values(s, "lr")
    again = sweep.parse(kept, "sweep.yaml", text=s.as_run)
    assert again.trials == s.trials and again.as_run == s.as_run  # nothing drawn, nothing appended
    # What drawn: holds is what runs, whatever the draw would give now (another scipy, say).
    kept["drawn"] = [{"lr": 0.5}, {"lr": 0.25}, {"lr": 0.125}, {"lr": 0.75}]
    assert _values(sweep.parse(kept, "sweep.yaml"), "lr") == [0.5, 0.25, 0.125, 0.75]


@pytest.mark.parametrize("change,message", [
    ({"sample": {"count": 0, "space": SPACE}}, "sample: count must be how many trials to draw, 1 or more"),
    ({"sample": {"count": 2, "space": [{"lr": {"uniform": [0, 1]}}]}}, "sample: space must map settings"),
    ({"sample": [1]}, "sample must be a mapping"),
    ({"sample": {"count": 2, "space": {"lr": {"normal": [0, 1]}}}}, "sample: space: lr must be one distribution"),
    ({"sample": {"count": 2, "space": {"lr": {"log_uniform": [0, 1]}}}}, "log_uniform takes [low, high] with 0 < low"),
    ({"sample": {"count": 2, "space": {"seed": {"int_uniform": [5, 1]}}}}, "two integers with low < high"),
    ({"sample": {"count": 2, "space": {"lrr": {"uniform": [0, 1]}}}}, "'lrr' is not a setting of these trials"),
    ({"sample": {"count": 2, "method": "lhs", "space": SPACE}}, "method 'lhs' is not one of random, sobol, halton"),
    ({"sample": {"count": 2, "space": SPACE}, "grid": {"lr": [0.1]}}, "lr in both grid and sample: space"),
    ({"sample": {"count": 2, "space": {"lr": {"uniform": [0.1, 0.2]}}}, "drawn": [{"lr": 0.15}]},
     "drawn: has 1 values, but sample: draws 2"),
    ({"sample": {"count": 1, "space": {"lr": {"uniform": [0.1, 0.2]}}}, "drawn": [{"lr": 0.5}]},
     "drawn[0]: lr 0.5 is outside sample: space: lr"),
    ({"sample": {"count": 1000, "space": SPACE}, "grid": {"data_seed": list(range(300))}},
     "grid and sample: 300 data_seed x 1,000 sampled is 300,000 trials"),
    ({"sample": {"count": 300_000, "space": SPACE}}, "sample: 300,000 sampled is 300,000 trials, more than the 200,000"),
])
def test_a_bad_sample_is_one_line_saying_what_to_fix(change, message):
    doc = {"name": "s", **change}
    with pytest.raises(UsageError) as err:
        sweep.parse(doc, "s.yaml")
    assert message in str(err.value) and str(err.value).startswith("s.yaml: ") and "\n" not in str(err.value)
