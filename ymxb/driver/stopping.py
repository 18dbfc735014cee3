"""Early stopping on the driver: one program trained one compiled call at a time (the hosts
keep it resident on their devices between calls), a sweep's `stop:` rules (spec/stopping.py)
deciding after each call which trials stop.

A stopped trial is judged and recorded at once, from its params and losses at that step. Its
entries stay on the hosts' axis (computed, unread) until few enough trials run; then the
runners go on as a program of their own, from their state at that step (a repack). The
checkpoint kept is the running trials' alone, named as their program: what a rerun, finding
the stopped ones recorded, looks for.
"""

import collections
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

from ymxb.driver import checkpoint
from ymxb.names import launch_line
from ymxb.protocol import ProgramRun
from ymxb.results import params
from ymxb.results.judge import judge, reference_of
from ymxb.results.record import TrialRecord
from ymxb.spec import stopping
from ymxb.spec.settings import Program


class EarlyStopping:
    """One program under `rules`, on `supervisor`'s slice, from `start` (a checkpoint, or None).
    `run()` trains it until every trial has stopped or ended; its records go to `store` (if
    any) as they are made, and checkpoints to the folder `checkpoints` (if any)."""

    def __init__(self, program: Program, ids, rules: stopping.Rules, supervisor, store, progress,
                 options, log: Callable[[str], None], start: Optional[checkpoint.Checkpoint] = None):
        self.program, self.ids, self.group, self.rules = program, ids, ids[0], rules
        self.supervisor, self.store, self.progress, self.options, self.log = supervisor, store, progress, options, log
        self.reference = reference_of(program)  # all judged by it; `converged` stops by it
        self.running = list(range(program.count))  # positions in `program` of those still training
        self.axis = {i: i for i in self.running}  # those on the hosts' axis -> their place there
        self.current, self.start = program, start
        self.first = self.step = start.step if start else 0
        self.records: Dict[int, TrialRecord] = {}
        self.judged_s = self.train_s = 0.0
        self.computed = 0  # model-steps the hosts computed
        folder = options.checkpoints
        self.path = os.path.join(folder, checkpoint.name_of(program)) if folder else None

    def run(self):
        """(the last run, every trial's record in the program's order, the seconds judging took)"""
        cfg = self.program.trial
        if self.rules.converged and self.reference is None:
            self.log(launch_line(f"stop: converged needs an optimal loss, and task {cfg.task} has no reference "
                          f"solution: its trials stop by the other rules only"))
        run = None
        while self.running:
            run = self._call()
            new, theirs = self._record(self._ended(run), run)
            self._go_on(bool(new))
            if self.store and new:  # after the checkpoint: a crash leaves one for the unrecorded
                self.store.append(new)
                params.save_all(self.store.directory, theirs, [r.trial_id for r in new])
            if self._old_path and self._old_path != self.path:
                checkpoint.remove(self._old_path)
        if self.path:
            checkpoint.remove(self.path)  # every record is in: nothing to resume
        self._say_saved()
        return run, [self.records[i] for i in sorted(self.records)], self.judged_s

    def _call(self) -> ProgramRun:
        """One compiled call of the program on the axis."""
        cfg = self.program.trial
        until = min(self.step + cfg.steps_per_call, cfg.steps)
        run = self.supervisor.run(self.current, None, self.start, on_steps=self.progress.steps, until=until)
        self.computed += self.current.padded_entries * (until - self.step)
        self.train_s, self.step = self.train_s + run.train_s, until
        return run

    def _ended(self, run: ProgramRun) -> Dict[int, Optional[stopping.Stop]]:
        """The trials whose training ends with this call: every one at the last step (no Stop),
        else those the rules stop."""
        cfg = self.program.trial
        if self.step == cfg.steps:
            return dict.fromkeys(self.running)
        losses = stopping.trial_losses(run.entry_losses(), run.program.count, cfg.members)
        optimal = self.reference and self.reference.loss
        stops = stopping.review(self.rules, losses[[self.axis[i] for i in self.running]],
                                self.step // cfg.steps_per_call, optimal)
        return {self.running[stop.trial]: stop for stop in stops}

    def _record(self, ended: Dict[int, Optional[stopping.Stop]],
                run: ProgramRun) -> Tuple[List[TrialRecord], Optional[ProgramRun]]:
        """The records of the trials that `ended`, judged as their own program, recorded as
        trials of the program they began in (its group and trial count), saying where a rule
        stopped them; and that program's run."""
        if not ended:
            return [], None
        judging = time.perf_counter()
        theirs = run.only([self.axis[i] for i in ended], self.program.only(list(ended)), self.train_s)
        made = judge(theirs, [self.ids[i] for i in ended], self.options.sweep_file, self.reference)
        for record, stop in zip(made, ended.values()):
            record.group, record.group_trials = self.group, self.program.count
            record.stopped_at, record.stopped_by = (stop.step, stop.why) if stop else (None, None)
        self.records.update(zip(ended, made))
        self.running = [i for i in self.running if i not in ended]
        self.judged_s += time.perf_counter() - judging
        return made, theirs

    def _go_on(self, stopped_some: bool) -> None:
        """The running trials' state for the next call: repacked where few enough run, and
        checkpointed as their own program when due (or when some stopped)."""
        self._old_path = self.path
        if not self.running:
            return
        start, alone = self.supervisor.latest, self.program.only(self.running)
        if stopping.should_repack(self.rules, len(self.running), len(self.axis)):
            start, self.current = self._of_running(start, alone), alone
            self.axis = {i: k for k, i in enumerate(self.running)}
        self.start = start
        calls = self.step // self.program.trial.steps_per_call
        if self.options.checkpoints and (stopped_some or calls % self.options.recovery.checkpoint_every == 0):
            self.path = os.path.join(self.options.checkpoints, checkpoint.name_of(alone))
            checkpoint.write(self.path, self._of_running(start, alone))

    def _of_running(self, ckpt: checkpoint.Checkpoint, alone: Program) -> checkpoint.Checkpoint:
        """The running trials' part of a checkpoint of the program on the axis, as their own
        program's (`alone`)."""
        if len(self.axis) == len(self.running):  # they are the axis
            return ckpt
        return checkpoint.of_trials(ckpt, [self.axis[i] for i in self.running], alone)

    def _say_saved(self) -> None:
        """How many trials stopped early, why, and the model-steps the hosts computed of those
        the program would have without stopping."""
        stopped = [r.stopped_by.split()[0] for r in self.records.values() if r.stopped_by]
        if stopped:
            whole = self.program.padded_entries * (self.program.trial.steps - self.first)
            why = ", ".join(f"{n} {rule}" for rule, n in collections.Counter(stopped).items())
            self.log(launch_line(f"{len(stopped)} of {len(self.records)} trials stopped early ({why}); the hosts "
                          f"computed {self.computed:,} of {whole:,} model-steps ({self.computed / whole:.0%})"))
