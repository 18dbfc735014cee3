"""Run a sweep: every trial not yet in the results store, as programs on warm slices, each
program's records stored as soon as it finishes. A single run is a sweep of one trial.

Order of work: settle each trial's slice and check every trial (nothing launches while any
is wrong); skip the recorded ones; group the rest into programs; then per slice shape, one warm
slice (placed and initialised once) runs its programs one after another.
"""

import collections
import dataclasses
import functools
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

from ymxb.driver import budget, checkpoint
from ymxb.results.record import trial_id
from ymxb.results.judge import judge, reference_of
from ymxb.spec import stopping, sweep as sweeps, tasks
from ymxb.spec.settings import Program, Recovery, SliceSpec, TrialSpec
from ymxb.errors import UsageError
from ymxb.names import said
from ymxb.protocol import ProgramRun, Restart
from ymxb.results.record import TrialRecord
from ymxb.results.store import Store

# Plain progress lines (stderr not a terminal): at most one per this many seconds.
PLAIN_PROGRESS_S = 10.0


@dataclasses.dataclass
class Plan:
    """A sweep's trials (slice settled as far as known before launching), their ids, and the
    records its store already has. A trial whose slice the cluster shapes (TPU, GPU, or a
    platform to detect) has no id until then: it counts as pending until the slice is up."""

    trials: List[Tuple[SliceSpec, TrialSpec]]
    ids: List[Optional[str]]
    done: Dict[str, TrialRecord]

    @property
    def pending(self) -> List[Tuple[SliceSpec, TrialSpec]]:
        return [t for t, tid in zip(self.trials, self.ids) if tid is None or tid not in self.done]


@dataclasses.dataclass(frozen=True)
class Options:
    """How a plan runs, past what its trials are: checkpoints and restart budgets
    (`recovery`), where checkpoints are kept (`checkpoints`: a folder; None: in memory only),
    whether each program must go on from a checkpoint there (`resume`), the version of the
    sweep file the records say they ran from (`sweep_file`), and when trials stop early (`stop`)."""

    recovery: Recovery = Recovery()
    checkpoints: Optional[str] = None
    resume: bool = False
    sweep_file: Optional[str] = None
    stop: Optional[stopping.Rules] = None  # early stopping (a sweep file's `stop:`)


@dataclasses.dataclass
class Outcome:
    records: List[TrialRecord]  # every trial of the sweep, in its order (recorded or run now)
    last_run: Optional[ProgramRun] = None  # the last program's
    phases: Dict[str, float] = dataclasses.field(default_factory=dict)  # the last slice's, as it ended
    restarts: List[Restart] = dataclasses.field(default_factory=list)  # in order


@functools.lru_cache(maxsize=None)  # a sweep's 10^5 trials have a few slices
def settle(spec: SliceSpec) -> SliceSpec:
    """The slice as far as it is known before launching: the CPU simulation's shape follows
    from the settings alone, and an embedded cluster can only simulate. A TPU or GPU slice
    (or a platform left to detect on a cluster) is shaped once the cluster is joined."""
    if spec.platform == "cpu-sim" or (spec.address is None and spec.platform is None):
        from ymxb.driver.platforms import CpuSim

        return CpuSim().shape(spec)
    return spec


def prepare(sweep: sweeps.Sweep) -> List[Tuple[SliceSpec, TrialSpec]]:
    """Every trial with its settled slice, checked: UsageError names the trial that cannot run."""
    trials = []
    for i, (spec, trial) in enumerate(sweep.trials):
        spec = settle(spec)
        if spec.shaped:
            try:
                trial.check_fits(spec)
            except UsageError as err:
                where = f"trial {i + 1} ({_changed(trial)})" if len(sweep.trials) > 1 else None
                raise UsageError(f"{where}: {err}" if where else str(err)) from None
        trials.append((spec, trial))
    tried = set()
    for _, trial in trials:  # a user's task: what can go wrong is found here, not on the hosts
        if trial.task not in tasks.BUILT_IN and trial.structure() not in tried:
            tried.add(trial.structure())
            tasks.try_out(trial)
    for spec, group in sweeps.programs(trials):
        if spec.address is None and spec.shaped:  # every host a process on this machine
            for part in budget.split(spec, group, budget.fits_here):  # one trial alone may not fit
                what = "this run" if len(trials) == 1 else f"a trial ({_changed(part[0])})"
                budget.check_fits(Program.of(spec, part), what=what)
    return trials


def plan(trials: List[Tuple[SliceSpec, TrialSpec]], store: Optional[Store]) -> Plan:
    """What is to run: the trials (from `prepare`) whose records the store lacks."""
    ids = [trial_id(spec, trial) if spec.settled else None for spec, trial in trials]
    return Plan(trials, ids, store.load() if store else {})


def run(todo: Plan, store: Optional[Store], log: Callable[[str], None],
        progress: Optional["Progress"] = None, options: Options = Options()) -> Outcome:
    """Run the plan's pending trials on the connected cluster, each program's records added
    to `store` as it finishes. Each program is checkpointed (options.checkpoints) until its
    records are in, and continues from its checkpoint there if it has one."""
    from ymxb.driver.supervisor import Supervisor

    done = dict(todo.done)
    ids = dict(zip(todo.trials, todo.ids))  # the unsettled ones' ids, once their slice is up
    progress = progress or Progress(0, quiet=True)
    outcome = Outcome([])
    began, verify_s = time.time(), 0.0
    for spec, groups in _by_slice(sweeps.programs(todo.pending)):
        with Supervisor(spec, options.recovery, log, began) as supervisor:
            for group in groups:
                shaped = supervisor.up()
                for trial in group:  # a slice the platform shaped: its id, first known now
                    ids[spec, trial] = trial_id(shaped, trial)
                recorded = [t for t in group if ids[spec, t] in done]
                progress.skip(len(recorded))
                group = [t for t in group if ids[spec, t] not in done]
                if not group:
                    continue
                for trial in group:
                    trial.check_fits(shaped)
                for part in _parts(shaped, group, supervisor.hosts, log):
                    what = "this run" if len(todo.trials) == 1 else f"a program of {len(part)} trials"
                    outcome.last_run, records, judged_s = _run_program(Program.of(shaped, part), supervisor, store,
                                                                       progress, options, log, what)
                    done.update((r.trial_id, r) for r in records)
                    verify_s += judged_s
        outcome.restarts += supervisor.restarts
        outcome.phases = _in_order({**supervisor.phases, "verify": verify_s})
    outcome.records = [done[ids[trial]] for trial in todo.trials]
    return outcome


def _parts(spec: SliceSpec, group: List[TrialSpec], hosts, log: Callable[[str], None]) -> List[List[TrialSpec]]:
    """A program's trials as the programs that fit where they run: one, unless it is too large
    for this machine (embedded) or the slice's memory as its hosts reported it."""
    fits = budget.fits_here if spec.address is None else (lambda p: budget.fits_slice(p, hosts))
    parts = budget.split(spec, group, fits)
    if len(parts) > 1:
        log(said(f"a program of {len(group)} trials ({_changed(group[0])}, ...) would not fit in memory "
                 f"{'here' if spec.address is None else 'on the slice'}: running it as {len(parts)} programs "
                 f"of up to {max(map(len, parts))} trials"))
    return parts


def _run_program(program: Program, supervisor, store: Optional[Store], progress: "Progress", options: Options,
                 log: Callable[[str], None], what: str):
    """Run one program on the supervisor's slice (checkpointed, and continued from its
    checkpoint where there is one), its records judged and stored: (the run, its records, the
    seconds judging took)."""
    if program.slice.address is not None:  # an embedded run was checked before it started
        budget.check_slice(program, supervisor.hosts, what)
    folder = options.checkpoints
    path = os.path.join(folder, checkpoint.name_of(program)) if folder else None
    start = resume_point(folder, program, options.resume) if folder else None
    if start:
        log(said(f"going on from the checkpoint at step {start.step} in {path}"))
    progress.start(program)
    if options.stop:
        run, records, judged_s = _run_stopping(program, start, supervisor, store, progress, options, log)
    else:
        run = supervisor.run(program, path, start, on_steps=progress.steps)
        judging = time.perf_counter()
        records = judge(run, options.sweep_file)
        judged_s = time.perf_counter() - judging
        if store:
            store.append(records)
        if path:
            checkpoint.remove(path)  # its records are in: nothing to resume
    progress.finish(program)
    return run, records, judged_s


def _run_stopping(program: Program, start: Optional[checkpoint.Checkpoint], supervisor, store: Optional[Store],
                  progress: "Progress", options: Options, log: Callable[[str], None]):
    """`program` trained one compiled call at a time (the hosts keep it on their devices
    between calls), options.stop deciding after each which trials stop. A stopped trial is
    judged and recorded at once, from its params and losses at that step; once few enough run,
    they go on as a program of their own, from their state then. The checkpoint kept is the
    running trials' alone, named as their program: what a rerun, finding the stopped ones
    recorded, looks for. (the last run, the records, the seconds judging took)"""
    rules, cfg, spec = options.stop, program.trial, program.slice
    trials = program.trials()
    reference = reference_of(program)  # all judged by it, and `converged` stops by it
    if rules.converged and reference is None:
        log(said(f"stop: converged needs an optimal loss, and task {cfg.task} has no reference solution: "
                 f"its trials stop by the other rules only"))
    program_of = lambda positions: Program.of(spec, [trials[i] for i in positions])
    running = list(range(len(trials)))  # positions in `trials` of those still training
    # Those on the hosts' axis (the running, and stopped ones not let go yet): trial -> its place.
    axis = {i: i for i in running}
    current = program
    step = first = start.step if start else 0
    records, judged_s, train_s, computed = {}, 0.0, 0.0, 0
    path = os.path.join(options.checkpoints, checkpoint.name_of(program)) if options.checkpoints else None
    while running:
        until = min(step + cfg.steps_per_call, cfg.steps)
        run = supervisor.run(current, None, start, on_steps=progress.steps, until=until)
        computed += current.padded_entries * (until - step)
        train_s, step = train_s + run.train_s, until
        ended = _ended(rules, run, running, axis, reference and reference.loss)
        judging = time.perf_counter()
        new = _records_of(run, ended, axis, program_of(ended), trials[0], program.count, train_s,
                          options.sweep_file, reference) if ended else []
        records.update(zip(ended, new))
        judged_s += time.perf_counter() - judging
        running, old = [i for i in running if i not in ended], path
        if running:
            start, alone = supervisor.latest, program_of(running)
            if stopping.should_repack(rules, len(running), len(axis)):
                start, current = _of_trials(start, axis, running, alone), alone
                axis = {i: k for k, i in enumerate(running)}
            if options.checkpoints and (ended or (step // cfg.steps_per_call) % options.recovery.checkpoint_every == 0):
                path = os.path.join(options.checkpoints, checkpoint.name_of(alone))
                checkpoint.write(path, _of_trials(start, axis, running, alone))
        # In this order, a crash anywhere leaves a checkpoint named for the trials not recorded.
        if store and new:
            store.append(new)
        if old and old != path:
            checkpoint.remove(old)
    if path:
        checkpoint.remove(path)  # every record is in: nothing to resume
    _say_saved(records.values(), computed, program.padded_entries * (cfg.steps - first), log)
    return run, [records[i] for i in sorted(records)], judged_s


def _ended(rules: stopping.Rules, run: ProgramRun, running: List[int], axis: Dict[int, int],
           optimal: Optional[float]) -> Dict[int, Optional[stopping.Stop]]:
    """The trials (positions in the program; `axis`: their places on the run's axis) whose
    training ends with this run's last call: every one at the last step (no Stop), else those the
    rules stop."""
    cfg, step = run.program.trial, run.hosts[0].result.losses.shape[1]
    if step == cfg.steps:
        return dict.fromkeys(running)
    losses = stopping.trial_losses(run.entry_losses(), run.program.count, cfg.members)
    stops = stopping.review(rules, losses[[axis[i] for i in running]], step // cfg.steps_per_call, optimal)
    return {running[stop.trial]: stop for stop in stops}


def _records_of(run: ProgramRun, ended: Dict[int, Optional[stopping.Stop]], axis: Dict[int, int], theirs: Program,
                first: TrialSpec, count: int, train_s: float, sweep_file: Optional[str], reference) -> List[TrialRecord]:
    """The records of the trials that `ended` with this run (`axis`: their places on its axis),
    judged as `theirs` (their own program), recorded as trials of the program they began in (its
    group, the id of its `first` trial; its `count` trials), saying where a rule stopped them."""
    records = judge(run.only([axis[i] for i in ended], theirs, train_s), sweep_file, reference)
    for record, stop in zip(records, ended.values()):
        record.group, record.group_trials = trial_id(theirs.slice, first), count
        record.stopped_at, record.stopped_by = (stop.step, stop.why) if stop else (None, None)
    return records


def _of_trials(ckpt: checkpoint.Checkpoint, axis: Dict[int, int], running: List[int], alone: Program):
    """The running trials' part of a checkpoint of the program on `axis`, as their own program's
    (`alone`)."""
    if len(axis) == len(running):  # they are the axis
        return ckpt
    return checkpoint.of_trials(ckpt, [axis[i] for i in running], alone)


def _say_saved(records, computed: int, whole: int, log: Callable[[str], None]) -> None:
    """How many trials stopped early, why, and the model-steps the hosts computed of those the
    program would have without stopping."""
    stopped = [r.stopped_by.split()[0] for r in records if r.stopped_by]
    if stopped:
        why = ", ".join(f"{n} {rule}" for rule, n in collections.Counter(stopped).items())
        log(said(f"{len(stopped)} of {len(records)} trials stopped early ({why}); the hosts computed "
                 f"{computed:,} of {whole:,} model-steps ({computed / whole:.0%})"))


PHASES = ("place", "actors", "initialize", "first_call", "train", "gather", "verify", "shutdown", "stop")


def _in_order(phases: Dict[str, float]) -> Dict[str, float]:
    """A slice's phases in the order they pass (the driver's judging, `verify`, after the gather)."""
    return {k: phases[k] for k in PHASES if k in phases}


def resume_point(folder: str, program: Program, required: bool) -> Optional[checkpoint.Checkpoint]:
    """The program's checkpoint in `folder`, if any. `required`: UsageError if there is none,
    saying how the program differs from the one whose checkpoint is there."""
    ckpt = checkpoint.read(os.path.join(folder, checkpoint.name_of(program)))
    if ckpt or not required:
        return ckpt
    others = checkpoint.files(folder)
    if not others:
        raise UsageError(f"--resume {folder}: it holds no checkpoint (the run it was given to "
                         f"finished, or never got to its first checkpoint)")
    differs = checkpoint.differences(checkpoint.read(others[-1]).config, checkpoint.program_config(program))
    raise UsageError(f"--resume {folder}: its checkpoint is of another run; give the flags that "
                     f"wrote it ({'; '.join(differs) or 'a sweep: rerun the sweep instead'})")


def _by_slice(groups):
    """Programs by slice: each slice's programs together, in order of first appearance."""
    by: Dict[SliceSpec, List[List[TrialSpec]]] = {}
    for spec, trials in groups:
        by.setdefault(spec, []).append(trials)
    return list(by.items())


def _changed(trial: TrialSpec) -> str:
    """The settings of a trial that differ from its task's defaults, as `key: value`."""
    default = TrialSpec(trial.task).asdict()
    return ", ".join(f"{k}: {v}" for k, v in trial.asdict().items() if default.get(k) != v) or "defaults"


class Progress:
    """Trials done out of all, and the running program's steps: a tqdm bar on a terminal,
    plain lines now and then otherwise (a log file), nothing when quiet."""

    def __init__(self, total: int, done: int = 0, quiet: bool = False, stream=None):
        self.total, self.done, self.quiet = total, done, quiet
        self.stream = stream or sys.stderr
        self.bar, self.program, self.said = None, None, 0.0
        if not quiet and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="trial", file=self.stream, dynamic_ncols=True)

    def start(self, program: Program) -> None:
        self.program, self.said = program, time.monotonic()
        self._say(f"program of {program.count} trials ({program.trial.optimizer}, {program.trial.model}, "
                  f"{program.entries} models) on {program.slice.label()}")

    def steps(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"program at step {steps}/{self.program.trial.steps}")
        elif time.monotonic() - self.said >= PLAIN_PROGRESS_S:
            self.said = time.monotonic()
            self._say(f"program at step {steps}/{self.program.trial.steps}")

    def skip(self, trials: int) -> None:
        """Trials found recorded once their slice was up (its shape first known then)."""
        if trials:
            self.done += trials
            if self.bar is not None:
                self.bar.update(trials)

    def finish(self, program: Program) -> None:
        self.done += program.count
        if self.bar is not None:
            self.bar.update(program.count)
        self._say(f"{self.done}/{self.total} trials done")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def log(self, line: str) -> None:
        """A line of the run's own (a host's identity, an error), printed above the bar."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _say(self, what: str) -> None:
        if self.quiet or self.bar is not None:
            return
        print(f"sweep: {what}", file=self.stream, flush=True)
