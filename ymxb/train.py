"""One host's part of a program, in the order it happens: data, model, step, loop.

Runs inside each host's process after `jax.distributed.initialize` (or alone, as one process).
"""

import time
from typing import Callable, Iterator, Optional, Union

import jax
import numpy as np

from ymxb import data, steps, tasks
from ymxb.checkpoint import Checkpoint
from ymxb.config import Program
from ymxb.protocol import CheckpointPiece, HostResult


def train_host(program: Program, on_progress: Callable[[int], None] = lambda steps: None) -> HostResult:
    """Train this process's share of `program` on its local devices, start to end; returns
    `train_stream`'s result."""
    for item in train_stream(program, on_progress):
        pass
    return item


def train_stream(program: Program, on_progress: Callable[[int], None] = lambda steps: None,
                 resume: Optional[Checkpoint] = None,
                 checkpoint_every: int = 0) -> Iterator[Union[CheckpointPiece, HostResult]]:
    """Train this process's share of `program`, yielding its CheckpointPiece after every
    `checkpoint_every` compiled calls (0: never; none after the last), and finally its
    HostResult. `resume` (the driver's whole checkpoint) continues from its step.
    `on_progress(steps)` is called before each compiled call (so a hung call shows where).
    """
    started = time.perf_counter()
    cfg, shape = program.trial, program.slice
    if jax.local_device_count() != shape.devices_per_host:
        raise ValueError(f"host {jax.process_index()} has {jax.local_device_count()} local devices, "
                         f"but --devices-per-host is {shape.devices_per_host}")
    done = resume.step if resume else 0
    on_progress(done)
    task = tasks.get(cfg.task)
    x, y = data.host_shard(cfg, jax.process_index())
    trainer = steps.TRAINERS[cfg.parallel](task.model(cfg.of_task, cfg.model), program, task.loss)
    state = trainer.init()
    init_params = trainer.local(state.params)
    if resume:
        state = trainer.restore(state, resume.leaves)
    batch = trainer.put_data(x, y)
    collective = trainer.collective_counts()

    chunks, first_call_s, calls, unsent = [], 0.0, 0, 0
    while done < cfg.steps:
        n = min(cfg.steps_per_call, cfg.steps - done)
        on_progress(done)
        call_start = time.perf_counter()
        state, losses = trainer.run(state, batch, n)
        # Fetching the losses blocks on the call: never queue collective calls unboundedly.
        chunks.append(_first_copy(trainer.local(losses)))
        calls, unsent, done = calls + 1, unsent + 1, done + n
        if calls == 1:
            first_call_s = time.perf_counter() - call_start  # compile + run
        if checkpoint_every and calls % checkpoint_every == 0 and done < cfg.steps:
            yield _piece(trainer, state, done, chunks[-unsent:])
            unsent = 0
    on_progress(done)

    rows = _rows(program, task, trainer.local(state.params), init_params)
    loss_entry = chunks[0][0]
    history = [resume.losses[loss_entry]] if resume else []
    keep = loss_entry < program.entries
    yield HostResult(
        **rows, loss_entry=loss_entry[keep],
        losses=np.concatenate(history + [losses for _, losses in chunks], axis=1)[keep],
        collective_axes=tuple(collective[:2]),  # over slices, over devices (within a slice)
        collective_devices=collective[2], train_s=time.perf_counter() - started, first_call_s=first_call_s)


def _piece(trainer: steps.Trainer, state, step: int, chunks) -> CheckpointPiece:
    """This host's share of the state after `step` steps, each entry once."""
    entries, state = _first_copy(trainer.local(state))
    return CheckpointPiece(step, entries, jax.tree.leaves(state),
                           np.concatenate([losses for _, losses in chunks], axis=1))


def _rows(program: Program, task: tasks.Task, final, init) -> dict:
    """One row per (device, entry) this host holds, padding dropped: every param, flat (as the
    task orders them), after and before."""
    settings = program.trial.of_task
    columns = {k: [] for k in ("entry", "device", "params", "init")}
    for (device, entries, params), (_, _, params0) in zip(final, init):
        keep = entries < program.entries
        for key, values in (("entry", entries), ("device", np.full(len(entries), device)),
                            ("params", task.flat(settings, params)), ("init", task.flat(settings, params0))):
            columns[key].append(np.asarray(values)[keep])
    return {k: np.concatenate(v) for k, v in columns.items()}


def _first_copy(local) -> tuple:
    """(entries, tree) from Trainer.local's per-device trees, each entry once, in entry order:
    one-model trials have a copy on every device."""
    entries = np.concatenate([e for _, e, _ in local])
    entries, first = np.unique(entries, return_index=True)
    tree = jax.tree.map(lambda *parts: np.concatenate([np.asarray(p) for p in parts])[first],
                        *(t for _, _, t in local))
    return entries, tree
