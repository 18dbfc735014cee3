"""What crosses between the driver and its hosts, as small frozen types, and how the driver
decides who is to blame when a call on the hosts fails. No Ray and no JAX here: the hosts make
these records (host.py, train.py), the driver reads them (launcher, supervisor, results,
report, verify), and the decisions are pure functions of what the driver observed, so a unit
test covers each case in milliseconds.

One host's way through a slice, in order:
    Host(index, HostSetup)              what to do to its process before JAX starts
    Host.identity() -> HostIdentity     who and where (node, pid)
    Host.initialize() -> Joined         what JAX sees from it once jax.distributed is up
      the driver joins the two -> SliceHost, one host of the warm slice
    Host.train() yields CheckpointPiece*, then HostResult (once per program)
      the driver joins them -> HostRun, in ProgramRun.hosts by process index
or, for a user's own program (`launch.py run`):
    Host.call(UserCall) yields Output* and Report*, then UserEnd
"""

import dataclasses
import math
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from ymxb.spec.settings import Program
from ymxb.errors import Cause, HostFailure

# How long a live host may take to answer a progress query (it answers from a second thread in
# milliseconds; a stopped process never does).
ANSWER_S = 5.0


@dataclasses.dataclass(frozen=True)
class HostSetup:
    """What a host does to its process, as its platform asks (platforms.py): `env` before JAX is
    imported (CPU devices, test settings); before it joins, `free_tpu`: make sure no other
    process holds the chips and no stale libtpu lock is left; `cpu_collectives`: have gloo,
    JAX's CPU collectives, listen on the node's address; `faults`: what a test makes the host
    suffer (ymxb/testing/faults.py), None in a run."""

    env: Dict[str, str]
    free_tpu: bool = False
    cpu_collectives: bool = False
    faults: Optional[object] = None


@dataclasses.dataclass
class Checkpoint:
    """A program's whole training state at a call boundary, as the driver assembles it from
    every host's pieces (driver/checkpoint.py writes and reads it), and a host resumes from."""

    step: int  # steps done
    leaves: List[np.ndarray]  # TrainState leaves, (padded entries, ...) each
    losses: np.ndarray  # (padded entries, step)
    config: Dict  # what wrote it: the program's slice, shared trial settings, lrs and seeds
    taken_at: float = 0.0  # time.time() when the driver had every piece


@dataclasses.dataclass(frozen=True)
class HostIdentity:
    """Where a host's process runs, as it says itself before JAX starts."""

    host_index: int
    hostname: str
    node_ip: str
    pid: int
    node_id: str

    def describe(self) -> str:
        """How messages name the host: "host 1 (10.0.0.12 pid 4242)"."""
        return f"host {self.host_index} ({self.node_ip} pid {self.pid})"


@dataclasses.dataclass(frozen=True)
class Joined:
    """What a host's JAX sees once jax.distributed is initialised."""

    process_index: int
    process_count: int
    local_devices: int
    global_devices: int
    platform: str
    device_kind: str
    megascale: Dict[str, str]  # the multislice environment it joined with (none for one slice)
    memory_available: Optional[int]  # bytes free on its node
    device_memory: Optional[int]  # bytes the emptiest-handed local device holds; None on CPU


@dataclasses.dataclass(frozen=True)
class SliceHost(HostIdentity, Joined):
    """One host of a warm slice: who it is, what it joined, and which slice it is in."""

    slice: int

    @classmethod
    def of(cls, identity: HostIdentity, joined: Joined, slice_index: int) -> "SliceHost":
        return cls(**vars(identity), **vars(joined), slice=slice_index)

    def line(self) -> str:
        """Its identity line, printed as the slice comes up."""
        where = f"slice {self.slice}, " if self.megascale else ""
        return (f"host {self.process_index}/{self.process_count}: {where}{self.local_devices} local / "
                f"{self.global_devices} global {self.platform} devices on {self.hostname} "
                f"({self.node_ip}) pid {self.pid}")


@dataclasses.dataclass(frozen=True)
class CheckpointPiece:
    """One host's share of a program's training state after `step` steps: each entry of the
    program's axis it holds, once, with its TrainState leaves and its losses since the last."""

    step: int
    entries: np.ndarray
    leaves: List[np.ndarray]
    losses: np.ndarray  # (entries, steps since the last piece)


@dataclasses.dataclass(frozen=True)
class HostResult:
    """One host's end of a program, NumPy only, one row per model copy it holds (padding left
    out): `entry` (the model's index on the program's axis), `device` (the global device
    holding it; one-model trials have a copy on every device), its params after and before
    (every one, flat, as its task orders them: y = m*x + b's are (m, b)); and the whole loss
    history of each entry it holds, once (`loss_entry`, `losses`)."""

    entry: np.ndarray
    device: np.ndarray
    params: np.ndarray  # (rows, P)
    init: np.ndarray  # (rows, P)
    loss_entry: np.ndarray
    losses: np.ndarray  # (len(loss_entry), steps)
    collective_axes: Tuple[int, int]  # what sums of ones counted: over slices, over devices
    collective_devices: int  # ... and over both
    train_s: float
    first_call_s: float  # compile and run of the first compiled call
    # The task's metrics at the end (train_accuracy, eval_loss, ...), one value per loss_entry.
    metrics: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def only(self, trials: Sequence[int], members: int) -> "HostResult":
        """This result of just the given trials (positions on its program's axis), numbered as
        the program of those trials numbers its entries."""
        position = np.full(max(trials) + 1, -1)
        position[list(trials)] = np.arange(len(trials))

        def renumber(entries: np.ndarray):
            trial = entries // members
            mine = trial < len(position)
            mine[mine] = position[trial[mine]] >= 0
            return mine, position[trial[mine]] * members + entries[mine] % members

        rows, entry = renumber(self.entry)
        kept, loss_entry = renumber(self.loss_entry)
        return dataclasses.replace(self, entry=entry, device=self.device[rows], params=self.params[rows],
                                   init=self.init[rows], loss_entry=loss_entry, losses=self.losses[kept],
                                   metrics={name: values[kept] for name, values in self.metrics.items()})


@dataclasses.dataclass(frozen=True)
class UserCall:
    """A user's own program, as every host runs it (`launch.py run`): a script run as
    `__main__` with `argv` (its source travels too, for a host without the file), or
    `module:function` called with no arguments; run in `cwd` where the host has that folder.
    `attempt` counts the slice's restarts (0 first); `checkpoint_dir` is the user's."""

    target: str
    argv: Tuple[str, ...] = ()
    source: Optional[str] = None  # a script's text; None for module:function
    cwd: str = "."
    attempt: int = 0
    checkpoint_dir: Optional[str] = None

    @property
    def is_script(self) -> bool:
        return self.source is not None


@dataclasses.dataclass(frozen=True)
class Output:
    """Lines a host's program wrote to its stdout ("out") or stderr ("err"), in order."""

    stream: str
    lines: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Report:
    """What a program said with ymxb.report(step, **metrics), and when (time.time())."""

    step: int
    metrics: Dict[str, float]
    at: float


@dataclasses.dataclass(frozen=True)
class UserEnd:
    """How a host's program ended: its exit code (sys.exit's, 0 when it returned) and, for a
    function, what it returned."""

    exit_code: int
    value: object = None


class ProgramRaised(Exception):
    """A user's program raised: `text` is its traceback, its own frames only."""

    def __init__(self, message: str, text: str = ""):
        super().__init__(message)
        self.text = text

    def __reduce__(self):  # crosses from host to driver inside Ray's error
        return ProgramRaised, (str(self), self.text)


@dataclasses.dataclass(frozen=True)
class HostRun:
    """A host's part of a finished program: who ran it and what came back."""

    host: SliceHost
    result: HostResult


@dataclasses.dataclass(frozen=True)
class ProgramRun:
    """What a warm slice returned for one program."""

    program: Program
    platform: str
    coordinator: str
    hosts: Tuple[HostRun, ...]  # by process index
    train_s: float
    phases: Dict[str, float]  # the slice's so far, a copy (WarmSlice.phases)

    def only(self, trials: Sequence[int], program: Program, train_s: float) -> "ProgramRun":
        """This run of just the given trials (positions in its program), as `program` (theirs)."""
        hosts = tuple(dataclasses.replace(h, result=h.result.only(trials, program.trial.members))
                      for h in self.hosts)
        return dataclasses.replace(self, program=program, hosts=hosts, train_s=train_s)

    def entry_losses(self) -> np.ndarray:
        """Every entry's loss history (entries x steps), from the first host holding it."""
        losses = np.full((self.program.entries, self.hosts[0].result.losses.shape[1]), np.nan, np.float32)
        for h in reversed(self.hosts):
            losses[h.result.loss_entry] = h.result.losses
        return losses


@dataclasses.dataclass(frozen=True)
class Restart:
    """One restart of the slice, as the run report lists it."""

    at_s: float  # when the failure was seen, in seconds since the run began
    host: Optional[int]  # the host to blame (its process index), its node and process
    node_ip: Optional[str]
    node_id: Optional[str]
    pid: Optional[int]
    cause: str  # a Cause's value: died, hung, preempted or crashed
    phase: str  # start, jax.distributed.initialize, training, ...
    error: str  # the failure's one line
    resumed_step: int  # the checkpoint training went on from (0: the start)
    steps_redone: int  # steps done past that checkpoint before the failure, trained again
    lost_s: Optional[float] = None  # from that checkpoint to training going on again


@dataclasses.dataclass(frozen=True)
class Failed:
    """A host's call that ended in an error: what it said, and what that means."""

    host: int
    reason: str
    cause: Cause


@dataclasses.dataclass(frozen=True)
class CallEnd:
    """How a call on every host ended without every result: what the driver saw.

    `failures` in the order they came; `stuck`: hosts whose call never returned; `first_s`:
    when the first failure came (seconds into the call); `peers_give_up_s`: from then on
    waiting hosts abort on their own (JAX's initialize does), so failures are symptoms of a
    host that never arrived; `lost`: hosts whose node is gone; `silent`: of the stuck, those
    that did not answer a progress query (asked only where `asks_silence` says it matters).
    """

    phase: str
    timeout: float
    failures: Tuple[Failed, ...] = ()
    stuck: Tuple[int, ...] = ()
    first_s: float = 0.0
    peers_give_up_s: float = math.inf
    lost: FrozenSet[int] = frozenset()
    silent: Tuple[int, ...] = ()

    @property
    def waiting_blamed(self) -> bool:
        """The others failed because they gave up waiting: the stuck host is the culprit."""
        return bool(self.failures) and self.first_s >= self.peers_give_up_s

    def ranked(self) -> List[Failed]:
        """The failures, a host whose node is gone first, then one that died: what its peers
        then report (a collective's connection reset, JAX aborting) are symptoms."""
        failures = [Failed(f.host, "its node is gone (its raylet does not answer)", Cause.PREEMPTED)
                    if f.host in self.lost else f for f in self.failures]
        return sorted(failures, key=lambda f: (f.cause is not Cause.PREEMPTED, f.cause is not Cause.DIED))

    @property
    def asks_silence(self) -> bool:
        """Whether who of the stuck still answers decides the blame: some failed, none of them
        known gone, and not merely for want of a host that never arrived."""
        ranked = self.ranked()
        return bool(ranked) and ranked[0].cause not in (Cause.PREEMPTED, Cause.DIED) and not self.waiting_blamed


def settled_by(failed: Failed, first_s: float, peers_give_up_s: float) -> bool:
    """Whether one failure settles the call at once: a host that went (its process or its
    node) before its peers would give up on their own is the cause, whatever they say later."""
    return failed.cause in (Cause.DIED, Cause.PREEMPTED) and first_s < peers_give_up_s


def blame(end: CallEnd, name: Callable[[int], str]) -> HostFailure:
    """The one failure to report for a call that ended as `end` saw it: the host to blame, why,
    and the cause the budgets count; `name(host index)` names a host in the message."""
    names = lambda hosts: named(list(hosts), name)
    phase, failures, stuck = end.phase, end.ranked(), list(end.stuck)
    if end.waiting_blamed:
        message = (f"{phase} failed: {names(stuck)} never finished (the likely culprit); "
                   f"{names(f.host for f in failures)} gave up waiting: {failures[0].reason}")
        host, cause = stuck[0], Cause.HUNG
    elif end.silent:
        message = (f"{phase} failed: {names(end.silent)} stopped answering (its process or its node is "
                   f"gone: the likely culprit); {names(f.host for f in failures)} then failed: "
                   f"{failures[0].reason}")
        host, cause = end.silent[0], Cause.HUNG
    elif failures:
        first = failures[0]
        message = f"{phase} failed: {names([first.host])} failed first: {first.reason}"
        if failures[1:]:
            message += f"; then {names(f.host for f in failures[1:])}"
        message += f"; {names(stuck)} left waiting" if stuck else ""
        host, cause = first.host, first.cause
    else:
        message = f"{phase} did not finish within {end.timeout:g} s on {names(stuck)}"
        host, cause = stuck[0], Cause.HUNG
    return HostFailure(message, host, Cause.PREEMPTED if host in end.lost else cause, phase)


@dataclasses.dataclass(frozen=True)
class Stall:
    """Training hosts judged by progress: `steps` each has done (None: not started), how long
    since that last changed, and which did not answer a progress query."""

    steps: Dict[int, Optional[int]]  # of the hosts still training
    idle_s: Dict[int, float]
    silent: Tuple[int, ...]
    timeout: float
    steps_per_call: int

    @property
    def stalled(self) -> bool:
        return any(s > self.timeout for s in self.idle_s.values())


def blame_stall(stall: Stall, name: Callable[[int], str], phase: str = "training") -> HostFailure:
    """The failure to report for hosts that completed no compiled call within the timeout: a
    host that does not answer, else the one behind the others, else none (the run is slow).
    A user's program (steps_per_call 0) is judged by the steps it reports instead."""
    names = lambda hosts: named(list(hosts), name)
    timeout = stall.timeout
    program = stall.steps_per_call == 0
    if stall.silent:
        return HostFailure(
            f"{phase} stalled: {names(stall.silent)} stopped answering: {'no step reported' if program else 'no compiled call completed'} in "
            f"{timeout:g} s and no reply to a progress query in {ANSWER_S:g} s (the process is "
            f"stopped, or stuck outside Python); the other hosts wait for it", stall.silent[0], Cause.HUNG, phase)
    rank = {i: -1 if s is None else s for i, s in stall.steps.items()}
    if program:  # alive and answering, but no report: stuck (in a collective?) or slower than that
        idle = [i for i, s in stall.idle_s.items() if s > timeout]
        last = ", ".join(f"step {rank[i]}" if rank[i] >= 0 else "none" for i in idle[:NAMED])
        return HostFailure(
            f"{phase} stalled: {names(idle)} reported no step (ymxb.report) in {timeout:g} s (last at {last}), "
            f"though answering: stuck, as in a collective that never completes, or slower than --timeout "
            f"between reports", idle[0], Cause.HUNG, phase)
    low = min(rank.values())
    behind = [i for i in rank if rank[i] == low]
    at = "before its first step" if low < 0 else f"at step {low}"
    if len(behind) < len(rank):
        return HostFailure(
            f"{phase} stalled: {names(behind)} fell behind ({at}, others at step {max(rank.values())}) and "
            f"completed no compiled call in {timeout:g} s (the likely culprit)", behind[0], Cause.HUNG, phase)
    return HostFailure(
        f"{phase} stalled: no host completed a compiled call in {timeout:g} s (all {at}, all answering): "
        f"the run is slow, not hung; raise --timeout or lower --steps-per-call (now {stall.steps_per_call})",
        None, Cause.FINAL, phase)


# A message names at most this many hosts, then says how many more (a slice may have 1,500).
NAMED = 8


def named(hosts: Sequence[int], name: Callable[[int], str]) -> str:
    """Hosts as a message lists them: "host 0 (...), host 2 (...)", or the first NAMED and
    "and 1,492 more"."""
    shown = ", ".join(name(i) for i in hosts[:NAMED])
    return shown + (f" and {len(hosts) - NAMED:,} more" if len(hosts) > NAMED else "")


def describe(i: int, identities: Sequence[HostIdentity]) -> str:
    """Host `i` as messages name it, with its node and pid where they are known."""
    return identities[i].describe() if i < len(identities) else f"host {i}"
