"""One host's part of a program, in the order it happens: data, model, step, loop.

Runs inside each host's process after `jax.distributed.initialize` (or alone, as one process).
"""

import dataclasses
import time
from typing import Any, Callable, Dict, Iterator, Optional, Union

import jax
import numpy as np

from ymxb.spec import data, registry, tasks
from ymxb.host import steps
from ymxb.protocol import Checkpoint
from ymxb.spec.settings import Program
from ymxb.protocol import CheckpointPiece, HostResult


def train_host(program: Program, on_progress: Callable[[int], None] = lambda steps: None) -> HostResult:
    """Train this process's share of `program` on its local devices, start to end; returns
    `train_stream`'s result."""
    for item in train_stream(program, on_progress):
        pass
    return item


@dataclasses.dataclass
class Resident:
    """A program resident on this host's devices: its task, compiled step, state, data and
    initial params. Kept between calls where the program stops at a call boundary (early
    stopping's `until`), so the call that goes on from there needs no restore, data or compile."""

    program: Program
    step: int
    task: tasks.Task
    trainer: steps.Trainer
    state: Any
    batch: tuple
    init_params: list
    collective: tuple
    held_out: Optional[tuple] = None  # the task's held-out data, placed as `batch` (None: none)

    @classmethod
    def begin(cls, program: Program, resume: Optional[Checkpoint], before: Optional["Resident"]) -> "Resident":
        """The program set up on this host's devices: its data, model and compiled step, its
        state from the start or from `resume`. After `before`, a program of the same kind on
        this slice (early stopping's survivors), its data placed and its count of the devices
        taking part are `before`'s; and of one-model trials, its state is placed from `resume`
        alone (no initial state made and compiled: theirs are `before`'s)."""
        cfg = program.trial
        task = registry.get(cfg.task)
        trainer = steps.TRAINERS[cfg.parallel](task.model(cfg.of_task, cfg.model), program, task.loss,
                                               task.penalty_of(cfg.of_task), [m.fn for m in task.metrics.values()])
        step = resume.step if resume else 0
        if resume and before and before.holds(program):
            state = trainer.adopt(before.trainer, jax.tree.structure(before.state), resume.leaves)
            return cls(program, step, task, trainer, state, before.batch, before.init_of(program), before.collective,
                       before.held_out)
        state = trainer.init()
        init_params = trainer.local(state.params)
        if resume:
            state = trainer.restore(state, resume.leaves)
        if before and before.kind == _kind(program):  # the same data on the same slice
            return cls(program, step, task, trainer, state, before.batch, init_params, before.collective,
                       before.held_out)
        batch = trainer.put_data(*data.host_shard(cfg, jax.process_index()))
        held = data.host_held_out(cfg, jax.process_index(), program.slice.devices_per_host)
        return cls(program, step, task, trainer, state, batch, init_params, trainer.collective_counts(),
                   None if held is None else trainer.put_data(*held))

    @property
    def kind(self) -> tuple:
        return _kind(self.program)

    def goes_on_as(self, program: Program, resume: Optional[Checkpoint]) -> bool:
        """Whether `program` from `resume` is this program from where it stopped."""
        return resume is not None and self.program == program and self.step == resume.step

    def holds(self, program: Program) -> bool:
        """Whether `program`'s trials are some of this one's one-model trials, on its slice."""
        if self.kind != _kind(program) or program.trial.ensemble:
            return False
        return set(program.values) <= set(self.program.values)

    def init_of(self, program: Program) -> list:
        """The initial params of the trials of `program` (one-model trials: each device holds
        every trial), numbered as `program` numbers them."""
        where = {values: k for k, values in enumerate(self.program.values)}
        picked = np.array([where[values] for values in program.values])
        return [(device, np.arange(len(picked)), jax.tree.map(lambda leaf: leaf[picked], tree))
                for device, _, tree in self.init_params]


def _kind(program: Program) -> tuple:
    """What programs share that train on the same data on the same slice."""
    return program.slice, program.trial.shared()


def train_stream(program: Program, on_progress: Callable[[int], None] = lambda steps: None,
                 resume: Optional[Checkpoint] = None, checkpoint_every: int = 0, until: Optional[int] = None,
                 resident: Optional[Resident] = None,
                 keep: Callable[[Resident], None] = lambda r: None) -> Iterator[Union[CheckpointPiece, HostResult]]:
    """Train this process's share of `program`, yielding its CheckpointPiece after every
    `checkpoint_every` compiled calls (0: never; none after the last), and finally its
    HostResult. `resume` (the driver's whole checkpoint) continues from its step.
    `on_progress(steps)` is called after each piece of work: placing, compiling and before each
    compiled call (so a hung call shows where).
    `until`: stop after that many steps (a call boundary) as if the program ended there, its
    piece yielded and the program handed to `keep`, resident; `resident` (one kept so) is
    used instead of `resume`'s state when it is that program at that step.
    """
    started = time.perf_counter()
    cfg, shape = program.trial, program.slice
    if jax.local_device_count() != shape.devices_per_host:
        raise ValueError(f"host {jax.process_index()} has {jax.local_device_count()} local devices, "
                         f"but --devices-per-host is {shape.devices_per_host}")
    done = resume.step if resume else 0
    end = min(cfg.steps, until or cfg.steps)
    on_progress(done)
    if not (resident and resident.goes_on_as(program, resume)):
        resident = Resident.begin(program, resume, resident)
    task, trainer, state, batch = resident.task, resident.trainer, resident.state, resident.batch
    # Each piece of work is progress of its own (placing, compiling, each call): the driver
    # judges a host by the time between two, so a long compile is not taken for a stalled call.
    on_progress(done)

    chunks, first_call_s, calls, unsent = [], 0.0, 0, 0
    first_start = time.perf_counter()
    if done < end:
        trainer.compile(state, batch, min(cfg.steps_per_call, end - done))
    while done < end:
        n = min(cfg.steps_per_call, end - done)
        on_progress(done)
        state, losses = trainer.run(state, batch, n)
        # Fetching the losses blocks on the call: never queue collective calls unboundedly.
        chunks.append(_first_copy(trainer.local(losses)))
        calls, unsent, done = calls + 1, unsent + 1, done + n
        if calls == 1:
            first_call_s = time.perf_counter() - first_start  # compile + run
        if done < cfg.steps and ((checkpoint_every and calls % checkpoint_every == 0) or done == end):
            yield _piece(trainer, state, done, chunks[-unsent:])
            unsent = 0
    on_progress(done)
    if done < cfg.steps:
        keep(dataclasses.replace(resident, step=done, state=state))

    rows = _rows(program, task, trainer.local(state.params), resident.init_params)
    loss_entry = chunks[0][0]
    history = [resume.losses[loss_entry]] if resume else []
    real = loss_entry < program.entries
    metrics = _measures(resident, state)
    yield HostResult(
        **rows, loss_entry=loss_entry[real],
        losses=np.concatenate(history + [losses for _, losses in chunks], axis=1)[real],
        metrics={name: values[real] for name, values in metrics.items()},
        collective_axes=tuple(resident.collective[:2]),  # over slices, over devices (within a slice)
        collective_devices=resident.collective[2], train_s=time.perf_counter() - started, first_call_s=first_call_s)


def _measures(resident: Resident, state) -> Dict[str, np.ndarray]:
    """Each entry's metrics at `state` (tasks.Task.metrics), each entry once in entry order (as
    its losses): on the training shard, and with the loss on the held-out one if the task has one."""
    names = list(resident.task.metrics)
    measured = {}
    for part, placed in (("train", resident.batch), ("eval", resident.held_out)):
        if placed is None or (part == "train" and not names):
            continue
        _, values = _first_copy(resident.trainer.local(resident.trainer.measure(state, placed)))
        for k, name in enumerate(["loss", *names]):
            if part == "eval" or name != "loss":  # the training loss is in the losses already
                measured[f"{part}_{name}"] = values[:, k]
    return measured


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
