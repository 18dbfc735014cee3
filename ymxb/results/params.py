"""A trial's final params, as a file that loads without ymxb: NumPy's `.npz`, one array per
param, `np.load(path)["w1"]`. Named by their place in the model's params pytree
(`linear/w`), or by the task's `shown` names where those name every param (y = m*x + b's `m`,
`b`), else one array `flat` in the task's `flat` order. An ensemble's arrays have a leading
member axis."""

import os
from typing import Callable, Dict, Iterator, Optional, Sequence

import numpy as np

from ymxb.protocol import ProgramRun
from ymxb.spec import registry, tasks

FOLDER = "params"  # a sweep's results folder keeps each trial's params here, as <trial id>.npz


def by_trial(run: ProgramRun) -> Iterator[Optional[Dict[str, np.ndarray]]]:
    """Each trial's final params, by name, in the program's order (None for a trial whose
    models did not all come back)."""
    program = run.program
    cfg, members = program.trial, program.trial.members
    entry = np.concatenate([h.result.entry for h in run.hosts])
    rows = np.concatenate([h.result.params for h in run.hosts])
    found, first = np.unique(entry, return_index=True)  # every copy of a model agrees (verified)
    row_of = dict(zip(found.tolist(), first.tolist()))
    named = _names(cfg, rows.shape[1])
    for t in range(program.count):
        wanted = range(t * members, (t + 1) * members)
        if not all(e in row_of for e in wanted):
            yield None
            continue
        params = named(rows[[row_of[e] for e in wanted]])  # (members, ...) each
        yield params if cfg.ensemble else {k: v[0] for k, v in params.items()}


def _names(cfg, size: int) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
    """(models, P) flat params -> their arrays by name, as the task's params are laid out."""
    task = registry.get(cfg.task)
    if len(task.shown(cfg.of_task, np.zeros((1, size)))) == size:
        return lambda flat: {k: np.asarray(v) for k, v in task.shown(cfg.of_task, flat).items()}
    if type(task).flat is not tasks.Task.flat:
        return lambda flat: {"flat": flat}
    import jax

    shapes = jax.eval_shape(task.model(cfg.of_task, cfg.model).init, jax.random.key(0))
    layout, start = [], 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:  # the default flat's order
        layout.append((_name(path), start, leaf.shape))
        start += int(np.prod(leaf.shape))
    return lambda flat: {name: flat[:, at:at + int(np.prod(shape))].reshape(len(flat), *shape)
                         for name, at, shape in layout}


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def write(path: str, params: Dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, **params)


def save_all(results: str, run: ProgramRun, ids: Sequence[str]) -> None:
    """Every trial of `run`'s program (its ids in order) into the results folder's FOLDER."""
    folder = os.path.join(results, FOLDER)
    os.makedirs(folder, exist_ok=True)
    for tid, params in zip(ids, by_trial(run)):
        if params is not None:
            write(os.path.join(folder, f"{tid}.npz"), params)
