"""Early stopping at call boundaries: a sweep file's `stop:` block, and what it decides from the
losses of each compiled call. Pure NumPy: the driver runs it (experiment.py), tests run it alone.

    stop:
      diverged: true           # a loss non-finite, or above 10^4 x its first: stop it (a number: that factor)
      converged: 1.0e-3        # a loss within this (relative) of the task's optimal loss: stop it
      rungs: {every: 2, keep: 0.34, by: loss}   # every 2 calls keep the best 34% of those running
      repack: 0.5              # once at most this share of the program's axis runs, make it smaller

A trial's loss is the mean over its members' (ensembles). Decisions are made after every call,
so a trial's `stopped_at` is the step its last call ended at. A stopped trial's entries stay on
the program's axis (computing, unread) until at most `repack` of it is still running; then the
runners go on as a smaller program, from their state at that step.
"""

import dataclasses
import math
from typing import List, Optional, Sequence

import numpy as np


KEYS = ("diverged", "converged", "rungs", "repack")
RUNG_KEYS = ("every", "keep", "by")
EXPLODED = 1e4  # `diverged: true`: a loss above this times its first has exploded
CONVERGED = 1e-3  # `converged: true`: within this of the optimal loss, relatively


@dataclasses.dataclass(frozen=True)
class Rules:
    diverged: Optional[float] = None  # the factor over its first loss that counts as exploded
    converged: Optional[float] = None  # relative tolerance of the optimal loss
    every: int = 0  # rungs: calls between them (0: none)
    keep: float = 1.0  # the share of running trials each rung keeps (at least one)
    repack: float = 0.5


@dataclasses.dataclass(frozen=True)
class Stop:
    trial: int  # its position in the list reviewed
    step: int  # steps it trained
    why: str  # diverged, converged, or rung N


def parse(block, fail) -> Optional[Rules]:
    """The `stop:` block as Rules (None: no block); `fail(what)` makes the UsageError."""
    if block is None:
        return None
    if not isinstance(block, dict) or not block:
        raise fail(f"stop must be a mapping with some of {', '.join(KEYS)}, e.g. {{diverged: true}}")
    _known(block, KEYS, "stop", fail)
    rules = Rules(diverged=_switch(block, "diverged", EXPLODED, fail),
                  converged=_switch(block, "converged", CONVERGED, fail),
                  repack=_fraction(block.get("repack", 0.5), "stop: repack", fail))
    if rules.diverged is not None and rules.diverged <= 1:
        raise fail(f"stop: diverged must be true or a factor > 1 over a trial's first loss, got {block['diverged']!r}")
    rungs = block.get("rungs")
    if rungs is None:
        return rules
    if not isinstance(rungs, dict):
        raise fail("stop: rungs must be a mapping, e.g. {every: 2, keep: 0.34, by: loss}")
    _known(rungs, RUNG_KEYS, "stop: rungs", fail)
    every, by = rungs.get("every"), rungs.get("by", "loss")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise fail(f"stop: rungs: every must be a whole number of compiled calls >= 1, got {every!r}")
    if by != "loss":
        raise fail(f"stop: rungs: by must be loss (the only measure every call has), got {by!r}")
    keep = _fraction(rungs.get("keep"), "stop: rungs: keep", fail)
    return dataclasses.replace(rules, every=every, keep=keep)


def review(rules: Rules, losses: np.ndarray, calls: int, optimal: Optional[float]) -> List[Stop]:
    """The trials to stop after `calls` compiled calls, given each running trial's losses so far
    (trials x steps; a row per trial reviewed, in order). Every rule sees the same trials; a
    rung ranks those no other rule stopped, by their last loss, and keeps ceil(keep x them)."""
    step = losses.shape[1]
    first, last = losses[:, 0].astype(np.float64), losses[:, -1].astype(np.float64)
    why = {}
    if rules.diverged is not None:
        with np.errstate(invalid="ignore"):
            exploded = ~np.isfinite(losses).all(axis=1) | (losses > rules.diverged * np.abs(first)[:, None]).any(axis=1)
        why.update((int(t), "diverged") for t in np.flatnonzero(exploded))
    if rules.converged is not None and optimal is not None:
        close = np.isfinite(last) & (last <= optimal * (1 + rules.converged) + 1e-10)
        why.update((int(t), "converged") for t in np.flatnonzero(close) if t not in why)
    if rules.every and calls % rules.every == 0:
        left = [t for t in range(len(losses)) if t not in why]
        kept = max(1, math.ceil(rules.keep * len(left) - 1e-9))
        ranked = sorted(left, key=lambda t: (not math.isfinite(last[t]), last[t], t))
        why.update((t, f"rung {calls // rules.every}") for t in ranked[kept:])
    return [Stop(t, step, why[t]) for t in sorted(why)]


def trial_losses(entry_losses: np.ndarray, trials: int, members: int) -> np.ndarray:
    """Each trial's loss curve from its entries' (padded entries x steps): the mean over members."""
    return entry_losses[:trials * members].reshape(trials, members, -1).mean(axis=1)


def should_repack(rules: Rules, running: int, packed: int) -> bool:
    """Whether the running trials are few enough on a program of `packed` to go on as their own."""
    return 0 < running < packed and running <= rules.repack * packed


def _switch(block: dict, key: str, default: float, fail) -> Optional[float]:
    """true: the default; false or absent: off; a number: itself."""
    value = block.get(key)
    if value is None or value is False:
        return None
    if value is True:
        return default
    if isinstance(value, str):
        try:
            value = float(value)  # YAML reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    raise fail(f"stop: {key} must be true, false or a positive number, got {value!r}")


def _fraction(value, what: str, fail) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise fail(f"{what} must be a share of the trials, 0 < x <= 1 (e.g. 0.34 keeps a third), got {value!r}")
    return float(value)


def _known(mapping: dict, allowed: Sequence[str], where: str, fail) -> None:
    for key in mapping:
        if key not in allowed:
            raise fail(f"unknown key {key!r} in {where}; valid: {', '.join(allowed)}")
