"""Sweep files -> trials.

A sweep file (YAML, read with yaml.safe_load) names settings exactly as the flags do, with
underscores:

    name: optimizers                         # results in runs/optimizers/ unless --out
    slice: {hosts: 4, devices_per_host: 2}   # optional: the slice settings
    base: {steps: 500, model: pure}          # every trial
    grid: {optimizer: [sgd, adam], lr: [0.01, 0.1, 1.0], seed: [0, 1]}   # every combination
    sample: {count: 16, method: sobol, space: {lr: {log_uniform: [1.0e-3, 1.0]}}}  # see sampling
    trials: [{optimizer: adagrad, lr: 0.5}]  # extra trials, each merged over base
    stop: {diverged: true, rungs: {every: 2, keep: 0.34}}   # early stopping: see stopping

With both a grid and a sample, every combination of the grid is run with every sample.

`slices`, `hosts` and `devices_per_host` may also be set in base, grid or trials: each shape is its
own warm slice. Trials that differ only in lr and seed become one program (plan.py).
"""

import dataclasses
import difflib
import functools
import itertools
import math
import os
import re
from typing import Optional, Tuple

import yaml

from ymxb.spec import registry, sampling, stopping
from ymxb.spec.settings import SliceSpec, TrialSpec
from ymxb.errors import UsageError

TOP_KEYS = ("name", "slice", "base", "grid", "sample", "trials", "stop", "drawn")
SLICE_KEYS = tuple(k for k in SliceSpec.fields() if k != "address")  # the cluster is --address
SHAPE_KEYS = ("slices", "hosts", "devices_per_host")  # a shape may vary per trial
# The most trials one sweep file may make (docs/benchmarks.md: what 10^5 cost to plan and store).
# A grid is counted before it is built: 10 axes of 10 values are refused at once.
MAX_TRIALS = 200_000

Trial = Tuple[SliceSpec, TrialSpec]


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    trials: Tuple[Trial, ...]  # in file order, duplicates dropped
    as_run: str = ""  # the file's text as it runs: with the values it drew, where it sampled
    stop: Optional[stopping.Rules] = None  # when to stop a trial early (None: never)


def single(spec: SliceSpec, trial: TrialSpec) -> Sweep:
    """A plain `launch.py [flags]` run: a sweep of one trial."""
    return Sweep("run", ((spec, trial),))


def load(path: str, slice_defaults: SliceSpec = SliceSpec()) -> Sweep:
    """Read and check a sweep file; UsageError naming the file and what to fix."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise UsageError(f"cannot read sweep file {path}: {err.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse(doc, path, slice_defaults, text)


def parse(doc, path: str, slice_defaults: SliceSpec = SliceSpec(), text: str = "") -> Sweep:
    fail = lambda what: UsageError(f"{path}: {what}")
    if not isinstance(doc, dict):
        raise fail(f"expected a mapping with some of {', '.join(TOP_KEYS)}; got {_kind(doc)}")
    _check_keys(doc, TOP_KEYS, "top-level key", fail)
    name = doc.get("name", os.path.splitext(os.path.basename(path))[0])
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name:
        raise fail(f"name must be a non-empty string without '/', got {name!r}")
    slice_settings = _mapping(doc, "slice", SLICE_KEYS, fail)
    extra = doc.get("trials") or []
    if not isinstance(extra, list) or not all(isinstance(t, dict) for t in extra):
        raise fail("trials must be a list of mappings, e.g. [{optimizer: adagrad, lr: 0.5}]")
    trial_keys = _trial_keys(doc, fail)
    base = _mapping(doc, "base", trial_keys, fail)
    grid = _mapping(doc, "grid", trial_keys, fail)
    for key, values in grid.items():
        if not isinstance(values, list):
            raise fail(f"grid: {key} must be a list of values, got {_kind(values)} (for one value, put it in base)")
        if not values:
            raise fail(f"grid: {key} is empty: give it at least one value, or remove it")
    for i, t in enumerate(extra):
        _check_keys(t, trial_keys, f"key in trials[{i}]", fail)

    sampled = sampling.count(doc, fail)
    space = (doc.get("sample") or {}).get("space")
    both = sorted(set(grid) & set(space)) if isinstance(space, dict) else []
    if both:
        raise fail(f"{', '.join(both)} in both grid and sample: space: give each setting one of them")
    count = math.prod(len(values) for values in grid.values()) * max(sampled, 1) if grid or sampled else 0
    if count + len(extra) > MAX_TRIALS:  # counted before a single one is made
        axes = [f"{len(values)} {key}" for key, values in grid.items()] + [f"{sampled:,} sampled"] * bool(sampled)
        axes = " x ".join(axes)
        more = f" and {len(extra)} in trials" if extra else ""
        made = "grid and sample" if grid and sampled else "sample" if sampled else "grid"
        raise fail(f"{made}: {axes} is {count:,} trials{more}, more than the {MAX_TRIALS:,} one sweep may "
                   f"hold; split it into several sweeps, or give fewer values")
    drawn = sampling.values(doc, trial_keys, fail)
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid or drawn else []
    combos = [{**c, **d} for c in combos for d in drawn] if drawn else combos
    settings = [(f"{'sampled' if drawn else 'grid'} trial {_describe(c)}", {**base, **c}) for c in combos]
    settings += [(f"trials[{i}] {_describe(t)}", {**base, **t}) for i, t in enumerate(extra)]
    if not settings:
        settings = [("base", dict(base))]
    trials, seen = [], set()
    for label, values in settings:
        trial = _make(slice_defaults, slice_settings, values, fail, label)
        if trial not in seen:
            seen.add(trial)
            trials.append(trial)
    rules = stopping.parse(doc.get("stop"), fail)
    fresh = drawn and "drawn" not in doc
    return Sweep(name, tuple(trials), sampling.as_run(text, drawn) if fresh else text, rules)


def _trial_keys(doc: dict, fail) -> Tuple[str, ...]:
    """What a trial of this file may set: the task, the settings of every task the file
    names (each trial is then checked against its own task's), the shared ones, its shape."""
    named = [part.get("task") for part in (doc.get("base"), *(doc.get("trials") or [])) if isinstance(part, dict)]
    grid = doc.get("grid")
    named += list(grid.get("task") or []) if isinstance(grid, dict) and isinstance(grid.get("task"), list) else []
    keys = {"task": None}
    for task in [registry.DEFAULT] + [t for t in named if t is not None]:
        try:
            keys.update(dict.fromkeys(TrialSpec.keys(task)))
        except UsageError as err:
            raise fail(as_key(str(err))) from None
    return tuple(keys) + SHAPE_KEYS


def _make(defaults: SliceSpec, slice_settings: dict, values: dict, fail, label: str) -> Trial:
    slice_values = {**slice_settings, **{k: values.pop(k) for k in SHAPE_KEYS if k in values}}
    try:
        try:
            spec = _slice(defaults, tuple(slice_values.items()))
        except TypeError:  # a list where a number belongs: no key to cache by; refused here
            spec = SliceSpec.resolve({**defaults.asdict(), **slice_values})
        trial = TrialSpec.resolve(values)
    except UsageError as err:
        raise fail(f"{label}: {as_key(str(err))}") from None
    return spec, trial


@functools.lru_cache(maxsize=64)  # a sweep's many trials have a few slices
def _slice(defaults: SliceSpec, settings: tuple) -> SliceSpec:
    return SliceSpec.resolve({**defaults.asdict(), **dict(settings)})


def _mapping(doc: dict, key: str, allowed, fail) -> dict:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise fail(f"{key} must be a mapping of settings, got {_kind(value)}")
    _check_keys(value, allowed, f"key in {key}", fail)
    return value


def _check_keys(mapping: dict, allowed, what: str, fail) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; valid: {', '.join(allowed)}"
            if key == "address":
                hint = ": give the cluster on the command line (--address)"
            raise fail(f"unknown {what} {key!r}{hint}")


def as_key(message: str) -> str:
    """A flag's error, worded for a sweep file: --samples-per-host -> samples_per_host."""
    return re.sub(r"--([a-z]+(?:-[a-z]+)*)", lambda m: m.group(1).replace("-", "_"), message)


def _describe(settings: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in settings.items()) + "}"


def _kind(value) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
