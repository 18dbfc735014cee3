"""A trial's final params, as a file that loads without ymxb: NumPy's `.npz`, one array per
param, `np.load(path)["w1"]`. Named by their place in the model's params pytree
(`linear/w`), or by the task's `shown` names where those name every param (y = m*x + b's `m`,
`b`), else one array `flat` in the task's `flat` order. An ensemble's arrays have a leading
member axis."""

import os
from typing import Dict, Sequence

import numpy as np

from ymxb.protocol import ProgramRun
from ymxb.spec import registry, tasks


def of_trial(run: ProgramRun, position: int) -> Dict[str, np.ndarray]:
    """The final params of the trial at `position` on the program's axis, by name."""
    program = run.program
    cfg, members = program.trial, program.trial.members
    entry = np.concatenate([h.result.entry for h in run.hosts])
    rows = np.concatenate([h.result.params for h in run.hosts])
    first = {int(e): i for i, e in reversed(list(enumerate(entry)))}  # every copy agrees: verified
    flat = np.stack([rows[first[position * members + m]] for m in range(members)])  # (members, P)
    named = _by_name(cfg, flat)
    return named if cfg.ensemble else {k: v[0] for k, v in named.items()}


def _by_name(cfg, flat: np.ndarray) -> Dict[str, np.ndarray]:
    task = registry.get(cfg.task)
    shown = task.shown(cfg.of_task, flat)
    if len(shown) == flat.shape[1]:
        return {k: np.asarray(v) for k, v in shown.items()}
    if type(task).flat is not tasks.Task.flat:
        return {"flat": flat}
    import jax

    shapes = jax.eval_shape(task.model(cfg.of_task, cfg.model).init, jax.random.key(0))
    named, start = {}, 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        size = int(np.prod(leaf.shape))
        named[_name(path)] = flat[:, start:start + size].reshape(len(flat), *leaf.shape)
        start += size
    return named


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def write(path: str, params: Dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, **params)


FOLDER = "params"  # a sweep's results folder keeps each trial's params here, as <trial id>.npz


def save_all(results: str, run: ProgramRun, ids: Sequence[str]) -> None:
    """Every trial of `run`'s program (its ids in order) into the results folder's FOLDER."""
    folder = os.path.join(results, FOLDER)
    os.makedirs(folder, exist_ok=True)
    for position, tid in enumerate(ids):
        write(os.path.join(folder, f"{tid}.npz"), of_trial(run, position))
