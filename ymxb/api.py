"""Run a plan (plan.py): per slice, one warm slice (placed and initialised once) runs its
programs one after another, each program's records stored as soon as it finishes. A single
run is a sweep of one trial. Or run a user's own program on every host (`run_user`).
"""

import dataclasses
import os
import sys
import time
from typing import Callable, Dict, List, Optional

from ymxb.driver import budget, checkpoint
from ymxb.driver.stopping import EarlyStopping
from ymxb.errors import UsageError
from ymxb.names import launch_line
from ymxb.plan import Group, Part, Plan, changed
from ymxb.protocol import ProgramRun, Restart, SliceHost, UserCall, UserEnd
from ymxb.results import params
from ymxb.results.judge import judge
from ymxb.results.record import TrialRecord
from ymxb.results.store import Store
from ymxb.spec import stopping
from ymxb.spec.settings import Program, Recovery, SliceSpec

# Plain progress lines (stderr not a terminal): at most one per this many seconds.
PLAIN_PROGRESS_S = 10.0


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


def run(plan: Plan, store: Optional[Store], log: Callable[[str], None],
        progress: Optional["Progress"] = None, options: Options = Options()) -> Outcome:
    """Run the plan's pending programs on the connected cluster, each program's records added
    to `store` as it finishes. Each program is checkpointed (options.checkpoints) until its
    records are in, and continues from its checkpoint there if it has one."""
    from ymxb.driver.supervisor import Supervisor

    done = dict(plan.done)
    progress = progress or Progress(0, quiet=True)
    outcome = Outcome([])
    began, verify_s = time.time(), 0.0
    for spec, groups in plan.by_slice():
        with Supervisor(spec, options.recovery, log, began) as supervisor:
            for group in groups:
                parts = group.shaped(supervisor.up(), supervisor.hosts, done)
                progress.skip(len(group.trials) - sum(part.program.count for part in parts))
                if len(parts) > 1:
                    _say_split(group, parts, log)
                for part in parts:
                    what = "this run" if len(plan.trials) == 1 else f"a program of {part.program.count} trials"
                    outcome.last_run, records, judged_s = _run_program(part, supervisor, store, progress, options,
                                                                       log, what)
                    done.update((r.trial_id, r) for r in records)
                    verify_s += judged_s
        outcome.restarts += supervisor.restarts
        outcome.phases = _in_order({**supervisor.phases, "verify": verify_s})
    outcome.records = [done[tid] for tid in plan.all_ids()]
    return outcome


@dataclasses.dataclass
class UserOutcome:
    """How a user's program ended on every host of the slice that ran it to the end."""

    ends: List[UserEnd]  # by process index
    hosts: List[SliceHost]
    restarts: List[Restart]
    phases: Dict[str, float]


def run_user(spec: SliceSpec, recovery: Recovery, call: UserCall, echo, log: Callable[[str], None]) -> UserOutcome:
    """Run a user's own program on every host of a slice (driver/echo.Echo `echo` hears its
    output and reports), run again on a new slice after a host loss, within the budgets."""
    from ymxb.driver.supervisor import Supervisor

    with Supervisor(spec, recovery, log) as supervisor:
        ends = supervisor.call(call, echo.item, echo.failed)
        hosts = list(supervisor.hosts)
    return UserOutcome(ends, hosts, supervisor.restarts, _in_order(supervisor.phases))


def _say_split(group: Group, parts: List[Part], log: Callable[[str], None]) -> None:
    where = "here" if group.slice.address is None else "on the slice"
    log(launch_line(f"a program of {len(group.trials)} trials ({changed(group.trials[0])}, ...) would not fit in memory "
             f"{where}: running it as {len(parts)} programs of up to {max(p.program.count for p in parts)} trials"))


def _run_program(part: Part, supervisor, store: Optional[Store], progress: "Progress", options: Options,
                 log: Callable[[str], None], what: str):
    """Run one program on the supervisor's slice (checkpointed, and continued from its
    checkpoint where there is one), its records judged and stored: (the run, its records, the
    seconds judging took)."""
    program = part.program
    if program.slice.address is not None:  # an embedded run was checked before it started
        budget.check_slice(program, supervisor.hosts, what)
    folder = options.checkpoints
    path = os.path.join(folder, checkpoint.name_of(program)) if folder else None
    start = resume_point(folder, program, options.resume) if folder else None
    if start:
        log(launch_line(f"going on from the checkpoint at step {start.step} in {path}"))
    progress.start(program)
    if options.stop:
        stopper = EarlyStopping(program, part.ids, options.stop, supervisor, store, progress, options, log, start)
        run, records, judged_s = stopper.run()
    else:
        run = supervisor.run(program, path, start, on_steps=progress.steps)
        judging = time.perf_counter()
        records = judge(run, part.ids, options.sweep_file)
        judged_s = time.perf_counter() - judging
        if store:
            store.append(records)
            params.save_all(store.directory, run, [r.trial_id for r in records])
        if path:
            checkpoint.remove(path)  # its records are in: nothing to resume
    progress.finish(program)
    return run, records, judged_s


PHASES = ("place", "actors", "initialize", "first_call", "train", "gather", "program", "verify", "shutdown", "stop")


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


def _left_out(program: Program) -> str:
    """What of a task's fixed dataset the program leaves out, as its line says it ('' for none)."""
    from ymxb.spec import data

    cut = data.left_out(program.trial, program.slice.processes)
    return f"; of its dataset's {cut[0]} points, the last {cut[1]} left out" if cut and cut[1] else ""


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
                  f"{program.entries} models) on {program.slice.label()}" + _left_out(program))

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
