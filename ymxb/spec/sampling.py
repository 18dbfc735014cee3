"""Sampled search spaces: a sweep file's `sample:` block, drawn once and kept.

    sample:
      count: 16              # trials drawn (beside a grid: for each of its combinations)
      method: sobol          # random (the default), sobol or halton: quasi-random, even cover
      seed: 0                # the draw's own seed (the trials' is the setting `seed`)
      space:
        lr: {log_uniform: [1.0e-3, 1.0]}
        seed: {int_uniform: [0, 999]}
        optimizer: {choice: [sgd, adam]}

Floats drawn keep 6 significant digits. The values drawn are written into the file as run (a
`drawn:` list appended to the copy kept in the results folder), and a file that has `drawn:`
takes those values and draws nothing: a rerun of the kept copy runs the very same trials, and
so does a newer scipy whose quasi-random sequences differ.
"""

import math
import warnings
from typing import Callable, List, Optional, Sequence

import numpy as np
import yaml

DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")
METHODS = ("random", "sobol", "halton")
KEYS = ("count", "method", "seed", "space")
DIGITS = 6  # significant digits a drawn float keeps


def count(doc: dict, fail: Callable) -> int:
    """How many trials the file's `sample:` block draws (0: it has none), checked."""
    sample = doc.get("sample")
    if sample is None:
        return 0
    if not isinstance(sample, dict):
        raise fail("sample must be a mapping: count, space, and optionally method and seed")
    for key in sample:
        if key not in KEYS:
            raise fail(f"unknown key in sample {key!r}; valid: {', '.join(KEYS)} (settings go in sample: space:)")
    n = sample.get("count")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise fail(f"sample: count must be how many trials to draw, 1 or more; got {n!r}")
    return n


def values(doc: dict, trial_keys: Sequence[str], fail: Callable) -> List[dict]:
    """The settings of each sampled trial: `drawn:` where the file has it (checked against
    `sample:`), else drawn now. [] without a `sample:` block."""
    n = count(doc, fail)
    if not n:
        if "drawn" in doc:
            raise fail("drawn: is what ymxb wrote for a sample: block, and this file has none: remove drawn:")
        return []
    sample = doc["sample"]
    space = _space(sample.get("space"), trial_keys, fail)
    if "drawn" in doc:
        return _kept(doc["drawn"], space, n, fail)
    method, seed = sample.get("method", "random"), sample.get("seed", 0)
    if method not in METHODS:
        raise fail(f"sample: method {method!r} is not one of {', '.join(METHODS)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise fail(f"sample: seed must be an integer, 0 to 2**32-1; got {seed!r}")
    unit = _unit(method, n, len(space), seed)
    return [{key: _value(dist, u) for (key, dist), u in zip(space.items(), row)} for row in unit]


def as_run(text: str, drawn: List[dict]) -> str:
    """The file's text with the values drawn appended as `drawn:`."""
    block = yaml.safe_dump(drawn, default_flow_style=None, sort_keys=False, width=1000)
    return (text.rstrip("\n") + "\n\n# Drawn by ymxb from sample: above. A file with drawn: runs these "
            "values and draws nothing;\n# remove drawn: to draw again.\ndrawn:\n" + block)


def _space(space, trial_keys: Sequence[str], fail: Callable) -> dict:
    """{setting: (distribution, argument)}, checked."""
    if not isinstance(space, dict) or not space:
        raise fail("sample: space must map settings to distributions, e.g. {lr: {log_uniform: [1.0e-3, 1.0]}}")
    out = {}
    for key, dist in space.items():
        if key not in trial_keys:
            raise fail(f"sample: space: {key!r} is not a setting of these trials")
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise fail(f"sample: space: {key} must be one distribution ({', '.join(DISTRIBUTIONS)}) and its "
                       f"argument, e.g. {{log_uniform: [1.0e-3, 1.0]}}; got {dist!r}")
        [(name, arg)] = dist.items()
        out[key] = (name, _argument(key, name, arg, fail))
    return out


def _argument(key: str, name: str, arg, fail: Callable):
    if name == "choice":
        if not isinstance(arg, list) or not arg:
            raise fail(f"sample: space: {key}: choice takes a non-empty list of values; got {arg!r}")
        return arg
    kind = int if name == "int_uniform" else (int, float)
    if name != "int_uniform" and isinstance(arg, list):
        arg = [_number(v) for v in arg]  # YAML reads 1e-3 (no dot) as a string
    if (not isinstance(arg, list) or len(arg) != 2 or not all(isinstance(v, kind) and not isinstance(v, bool)
                                                             for v in arg) or not arg[0] < arg[1]):
        what = "integers" if name == "int_uniform" else "numbers"
        raise fail(f"sample: space: {key}: {name} takes [low, high], two {what} with low < high; got {arg!r}")
    if name == "log_uniform" and arg[0] <= 0:
        raise fail(f"sample: space: {key}: log_uniform takes [low, high] with 0 < low; got {arg!r}")
    return arg


def _number(v):
    try:
        return float(v) if isinstance(v, str) else v
    except ValueError:
        return v


def _unit(method: str, n: int, d: int, seed: int) -> np.ndarray:
    """n points in [0, 1)^d: independent draws, or a scrambled quasi-random sequence."""
    if method == "random":
        return np.random.default_rng(seed).random((n, d))
    from scipy.stats import qmc

    engine = qmc.Sobol(d, scramble=True, seed=seed) if method == "sobol" else qmc.Halton(d, scramble=True, seed=seed)
    with warnings.catch_warnings():  # Sobol's balance wants n a power of 2; other n still cover well
        warnings.simplefilter("ignore", UserWarning)
        return engine.random(n)


def _value(dist: tuple, u: float):
    name, arg = dist
    if name == "choice":
        return arg[min(int(u * len(arg)), len(arg) - 1)]
    low, high = arg
    if name == "int_uniform":
        return min(low + int(u * (high - low + 1)), high)
    if name == "log_uniform":
        x = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        x = low + u * (high - low)
    return min(max(float(f"{x:.{DIGITS}g}"), low), high)


def _kept(drawn, space: dict, n: int, fail: Callable) -> List[dict]:
    """The `drawn:` list of a file as run, checked to be what its `sample:` block could draw."""
    if not isinstance(drawn, list) or len(drawn) != n:
        got = f"{len(drawn)} values" if isinstance(drawn, list) else repr(drawn)[:40]
        raise fail(f"drawn: has {got}, but sample: draws {n}: remove drawn: to draw again")
    for i, values in enumerate(drawn):
        if not isinstance(values, dict) or set(values) != set(space):
            raise fail(f"drawn[{i}] sets {_keys(values)}, but sample: space has {', '.join(space)}: remove drawn: "
                       f"to draw again")
        for key, v in values.items():
            if not _inside(space[key], v):
                raise fail(f"drawn[{i}]: {key} {v!r} is outside sample: space: {key}: remove drawn: to draw again")
    return [dict(v) for v in drawn]


def _inside(dist: tuple, v) -> bool:
    name, arg = dist
    if name == "choice":
        return v in arg
    return isinstance(v, (int, float)) and not isinstance(v, bool) and arg[0] <= v <= arg[1]


def _keys(values) -> Optional[str]:
    return ", ".join(map(str, values)) if isinstance(values, dict) else repr(values)[:40]
