"""The driver's side of a slice: one actor per host, placed and initialised once (a warm
slice), then any number of programs run on it, one after another; then every host stopped.

    warm = WarmSlice(spec, log)
    warm.start()                  # place, start the hosts, jax.distributed.initialize
    run = warm.run(program)       # as often as wanted: a protocol.ProgramRun
    ends = warm.call(user_call)   # or a user's own program (launch.py run): a UserEnd per host
    phases = warm.stop()          # JAX shut down (after a clean run), every host killed

Every wait is bounded by the slice's timeout; a host that dies or hangs ends the slice with a
`HostFailure` naming it (protocol.blame decides whom), and every actor is hard-killed on the
way out (after `jax.distributed.initialize` a host ignores SIGTERM).
"""

import contextlib
import dataclasses
import math
import os
import signal
import socket
import time
from typing import Callable, Dict, List, Optional, Sequence

import ray

from ymxb.driver import checkpoint, placing, platforms
from ymxb.driver.checkpoint import Checkpoint
from ymxb.spec.settings import Program, SliceSpec
from ymxb.errors import Cause, HostFailure, first_line, where_raised_text
from ymxb.host.actor import Host
from ymxb.names import RUNTIME_ERRORS, launch_line
from ymxb.protocol import (ANSWER_S, CallEnd, CheckpointPiece, Failed, HostIdentity, HostRun, Output, ProgramRaised,
                           ProgramRun, Report, SliceHost, Stall, UserCall, UserEnd, blame, blame_stall, describe,
                           settled_by)
from ymxb.ops.reaper import wait_gone

# After the first host fails, how long to wait for the others to report before naming names
# (not at all once a host's process or node is known gone, before its peers would give up on
# their own: that host is the one to name; JAX aborts the processes that give up).
SETTLE_S = 3.0
# How long host processes get to go after ray.kill, before the driver SIGKILLs the ones on its
# own machine itself; and how long killed processes may take to disappear.
RAY_KILL_S, KILL_WAIT_S = 3.0, 15.0
# While training: how often each host is asked how far it got.
POLL_S = 2.0
# How long a node's raylet may take to accept a connection before the node counts as gone.
RAYLET_ANSWER_S = 2.0
# What a host's call yields before its result: handed to the caller as it comes.
STREAMED = (CheckpointPiece, Output, Report)


class WarmSlice:
    """A slice of hosts, placed and initialised once, that runs programs one after another.

    `start()` places the slice (waiting up to `wait_whole_s` for it to be whole), starts one
    actor per host and initialises jax.distributed; `run(program)` trains a program on it;
    `stop()` shuts JAX down (after a clean run) and kills every host, whatever happened. A
    `start()` that fails stops what it started before it raises.
    """

    def __init__(self, spec: SliceSpec, log: Callable[[str], None] = lambda line: None,
                 wait_whole_s: float = 0.0):
        self.spec, self.log, self.wait_whole_s = spec, log, wait_whole_s  # spec: as asked, then as shaped
        self.reservation: Optional[platforms.Reservation] = None
        self.actors: List = []
        self.identities: List[HostIdentity] = []
        self.hosts: List[SliceHost] = []  # once initialised, by process index
        self.coordinator: Optional[str] = None
        self.reached = 0  # the most steps any host completed of the program running now
        self._phases: Dict[str, float] = {}

    def start(self) -> SliceSpec:
        """Place the slice, start its hosts and initialise them; the spec as shaped."""
        try:
            self._start()
        except BaseException:
            self.stop(clean=False)
            raise
        return self.spec

    def run(self, program: Program, on_steps: Callable[[int], None] = lambda steps: None,
            resume: Optional[Checkpoint] = None, on_checkpoint: Callable[[Checkpoint], None] = lambda c: None,
            checkpoint_every: int = 0, until: Optional[int] = None) -> ProgramRun:
        """Train `program` on every host, from `resume` if given; `on_steps(steps)` hears the
        slowest host's progress, `on_checkpoint` each whole checkpoint (every
        `checkpoint_every` compiled calls; 0: none). `until`: stop after that many steps, a
        call boundary (its checkpoint is taken), as if the program ended there."""
        started = time.perf_counter()
        pieces = checkpoint.Assembler(program, len(self.actors), resume)
        self.reached = resume.step if resume else 0

        def on_piece(host: int, piece: CheckpointPiece) -> None:
            self.reached = max(self.reached, piece.step)
            whole = pieces.add(host, piece)
            if whole:
                on_checkpoint(whole)

        def heard(steps: int) -> None:
            self.reached = max(self.reached, steps)
            on_steps(steps)

        state = ray.put(resume) if resume else None
        streams = [a.train.options(num_returns="streaming").remote(program, state, checkpoint_every, until)
                   for a in self.actors]
        # Training may take as long as it keeps progressing: judged by calls completed.
        progress = _Progress(self.actors, self.spec.timeout, program.trial.steps_per_call, heard)
        results = self._gather(streams, "training", self.spec.timeout, progress=progress, on_piece=on_piece)
        train_s = time.perf_counter() - started
        # Where that time went: the hosts' first compiled calls (compiling), their training after
        # it, and the driver's gathering of the results after the slowest host was done.
        first_call = max(r.first_call_s for r in results)
        trained = max(r.train_s for r in results)
        for phase, seconds in (("first_call", first_call), ("train", max(0.0, trained - first_call)),
                               ("gather", max(0.0, train_s - trained))):
            self._phases[phase] = self._phases.get(phase, 0.0) + seconds
        hosts = tuple(HostRun(h, r) for h, r in zip(self.hosts, results))
        return ProgramRun(program, self.reservation.platform, self.coordinator, hosts, train_s, self.phases)

    def call(self, call: UserCall, on_item: Callable[[int, object], None] = lambda host, item: None) -> List[UserEnd]:
        """Run a user's own program on every host; `on_item(host, item)` hears each Output and
        Report as it comes. A host that reported a step and then reports none for the timeout
        is hung; one that never reports is judged by its process and by answering."""
        started = time.perf_counter()
        streams = [a.call.options(num_returns="streaming").remote(call) for a in self.actors]
        progress = _Progress(self.actors, self.spec.timeout, 0, reports_optional=True)
        ends = self._gather(streams, "the program", self.spec.timeout, progress=progress, on_piece=on_item)
        self._phases["program"] = self._phases.get("program", 0.0) + time.perf_counter() - started
        return ends

    def stop(self, clean: bool = True) -> Dict[str, float]:
        """Shut JAX down on every host (`clean`: after a run that ended well), then kill every
        host, free the reservation, and see the processes on this machine gone. The slice's
        phases, in seconds, as they ended."""
        if clean and self.hosts:
            started = time.perf_counter()
            try:
                self._gather([a.shutdown.remote() for a in self.actors], "jax.distributed.shutdown",
                             self.spec.timeout)
            except HostFailure as failure:  # the results are in: every host is killed anyway
                self.log(launch_line(f"note: {failure}"))
            self._phases["shutdown"] = time.perf_counter() - started
        if self.reservation is not None:
            started = time.perf_counter()
            _stop(self.actors, self.reservation, self.identities)
            self.reservation = None
            self._phases["stop"] = time.perf_counter() - started
        return self.phases

    @property
    def phases(self) -> Dict[str, float]:
        """Seconds each phase of the slice took so far (a copy): place, actors, initialize, and
        over all its programs first_call (the hosts' first compiled calls), train (the rest of
        their training), gather (the driver's after the slowest host); then shutdown, stop."""
        return dict(self._phases)

    def describe(self, host: int) -> str:
        """Host `host` as messages name it: "host 1 (10.0.0.12 pid 4242)" where it is known."""
        return describe(host, self.identities)

    def _start(self) -> None:
        start = time.perf_counter()
        self.reservation = placing.place(self.spec, self.log, self.wait_whole_s)
        spec = self.spec = self.reservation.spec
        if self.reservation.note:
            self.log(self.reservation.note)
        self._phases["place"] = time.perf_counter() - start

        start = time.perf_counter()
        self.actors = _start_hosts(self.reservation)
        self.identities = self._gather([a.identity.remote() for a in self.actors], "start", spec.timeout)
        self._phases["actors"] = time.perf_counter() - start

        start = time.perf_counter()
        [self.coordinator] = self._gather([self.actors[0].coordinator_address.remote()], "coordinator address",
                                          spec.timeout)
        ip = self.coordinator.rsplit(":", 1)[0]
        # initialize blocks until every process has joined: all hosts call it at once.
        joined = self._gather([a.initialize.remote(self.coordinator, spec.processes, spec.timeout,
                                                   platforms.multislice_env(spec, ip, i))
                               for i, a in enumerate(self.actors)], "jax.distributed.initialize",
                              spec.timeout + 10, peers_give_up_s=spec.timeout)
        self._phases["initialize"] = time.perf_counter() - start
        self.hosts = [SliceHost.of(ident, info, i // spec.hosts)
                      for i, (ident, info) in enumerate(zip(self.identities, joined))]
        for host in self.hosts:
            self.log(host.line())
        for listener in HOOKS.slice_up:
            listener(self.hosts)

    def _gather(self, refs: List, phase: str, timeout: float, **options) -> List:
        return _gather(self.actors[:len(refs)], refs, phase, timeout, self.identities, **options)


def _start_hosts(reservation: platforms.Reservation) -> List:
    """One actor per host of the reservation, in process order, each on its bundle."""
    setup = reservation.setup
    if HOOKS.faults:
        setup = dataclasses.replace(setup, faults=HOOKS.faults)
    # Two threads per actor: `progress` must answer while `train` runs.
    actor = ray.remote(max_concurrency=2, max_restarts=0)(Host)
    # The environment goes as an argument, not as a runtime_env: an actor with an environment
    # of its own cannot take one of the workers Ray has already started.
    return [actor.options(**reservation.options(i)).remote(i, setup) for i in range(reservation.spec.processes)]


@dataclasses.dataclass
class Hooks:
    """Where tests reach in (ymxb/testing/): faults every host's setup carries, and listeners
    told of each slice's hosts as it comes up. Empty in a run."""

    faults: Optional[object] = None
    slice_up: List[Callable[[Sequence[SliceHost]], None]] = dataclasses.field(default_factory=list)


HOOKS = Hooks()


def _gather(actors: List, refs: List, phase: str, timeout: float,
            identities: Sequence[HostIdentity] = (), peers_give_up_s: float = math.inf,
            progress: Optional["_Progress"] = None,
            on_piece: Callable[[int, object], None] = lambda host, item: None) -> List:
    """Results of one call per host, in host order; HostFailure if any host fails or hangs.

    `refs` may be streams (a generator call's ObjectRefGenerator): each item of STREAMED they
    yield is handed to `on_piece(host, item)`, until their result comes.
    `peers_give_up_s`: after this long, waiting hosts abort on their own (as JAX's initialize
    does), so failures from then on are a symptom of a host that never arrived, not the cause.
    `progress`: the call may take as long as the hosts keep progressing (no `timeout` on the
    whole); it fails when they stall, naming the host to blame.
    """
    name = lambda i: describe(i, identities)
    index = {ref: i for i, ref in enumerate(refs)}
    results, failures, first_s = {}, [], 0.0
    started = time.monotonic()
    deadline = math.inf if progress else started + timeout
    pending, settled = list(refs), False
    while pending and not settled:
        wait_s = max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=min(wait_s, POLL_S) if progress else wait_s)
        if ready and pending:
            # Every other one in already, at once: a wait costs O(pending), so one wait per
            # result would cost O(hosts^2) per call (docs/benchmarks.md: thousands of hosts).
            more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
            ready += more
        if not ready:
            if progress and not failures:
                stall = progress.check([index[r] for r in pending])
                if stall:
                    raise blame_stall(stall, name, phase)
                continue
            if time.monotonic() < deadline:
                continue
            break
        for k, ref in enumerate(ready):
            stream = isinstance(ref, ray.ObjectRefGenerator)
            try:
                item = ray.get(next(ref) if stream else ref)
            except ray.exceptions.RayError as err:
                failed = Failed(index[ref], _reason(err), _cause(err))
                if not failures:  # the others' fate follows within moments: let them report
                    first_s = time.monotonic() - started
                    deadline = min(deadline, time.monotonic() + SETTLE_S)
                failures.append(failed)
                if settled_by(failed, first_s, peers_give_up_s):
                    pending += ready[k + 1:]  # not heard yet: as if still waited for
                    settled = True
                    break
                continue
            if isinstance(item, STREAMED):
                on_piece(index[ref], item)
                pending.append(ref)
                continue
            results[index[ref]] = item
    if failures or pending:
        end = CallEnd(phase, timeout, tuple(failures), tuple(sorted(index[r] for r in pending)),
                      first_s, peers_give_up_s, frozenset(_on_lost_nodes(identities)))
        if end.asks_silence:
            end = dataclasses.replace(end, silent=tuple(_silent(actors, end.stuck)))
        raise blame(end, name)
    return [results[i] for i in range(len(refs))]


class _Progress:
    """A training call's progress: a host is hung when it completes no piece of work (placing
    its data, compiling, a compiled call) within the timeout, however long the run as a whole
    takes. `reports_optional` (a user's program): a host that has not reported a step yet is
    hung only when it stops answering."""

    def __init__(self, actors: List, timeout: float, steps_per_call: int,
                 on_steps: Callable[[int], None] = lambda steps: None, reports_optional: bool = False):
        self.actors, self.timeout, self.steps_per_call = actors, timeout, steps_per_call
        self.on_steps, self.reports_optional = on_steps, reports_optional
        now = time.monotonic()
        self.steps = {i: None for i in range(len(actors))}  # steps done; None: not started
        self.beats = {}  # pieces of work each host reported (actor.progress)
        self.since = {i: now for i in range(len(actors))}  # when a host last reported one
        self.asked = {}  # host -> (progress query, when asked), until it answers

    def check(self, pending: List[int]) -> Optional[Stall]:
        """None while every pending host progressed within the timeout; else what the hosts
        did (protocol.Stall), who of them still answers included."""
        now = time.monotonic()
        for i in pending:
            if i not in self.asked:
                self.asked[i] = (self.actors[i].progress.remote(), now)
        refs = [self.asked[i][0] for i in pending]
        answered, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for i in pending:
            if self.asked[i][0] in answered:
                ref, _ = self.asked.pop(i)
                with contextlib.suppress(ray.exceptions.RayError):  # a dead host: train says so
                    steps, beats = ray.get(ref)
                    if beats != self.beats.get(i):
                        self.steps[i], self.beats[i], self.since[i] = steps, beats, now
        done = [steps for steps in self.steps.values() if steps is not None]
        if done:
            self.on_steps(min(done))
        stall = Stall({i: self.steps[i] for i in pending}, {i: self._idle_s(i, now) for i in pending}, (),
                      self.timeout, self.steps_per_call)
        return dataclasses.replace(stall, silent=tuple(_silent(self.actors, pending))) if stall.stalled else None

    def _idle_s(self, host: int, now: float) -> float:
        """How long `host` has gone without progress, as this call judges it."""
        if self.steps[host] is None and self.reports_optional:  # judged by answering alone
            return now - self.asked[host][1] if host in self.asked else 0.0
        return now - self.since[host]


def _on_lost_nodes(identities: Sequence[HostIdentity]) -> set:
    """Indices of the hosts whose Ray node is gone: dead to the GCS, or its raylet not answering
    (the GCS takes ~15 s of missed health checks to notice a node die; this takes at most 2 s)."""
    import grpc

    if not identities:
        return set()
    try:
        nodes = {n["NodeID"]: n for n in ray.nodes()}
    except ray.exceptions.RayError:  # the GCS itself is gone: no node to single out
        return set()
    checks = {}
    for node_id in {ident.node_id for ident in identities} & set(nodes):
        node = nodes[node_id]
        if node["Alive"]:
            channel = grpc.insecure_channel(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}")
            checks[node_id] = (channel, grpc.channel_ready_future(channel))  # all dial at once
        else:
            checks[node_id] = None
    gone = set()
    deadline = time.monotonic() + RAYLET_ANSWER_S
    for node_id, check in checks.items():
        if check is None:
            gone.add(node_id)
            continue
        channel, ready = check
        try:
            ready.result(timeout=max(0.0, deadline - time.monotonic()))
        except grpc.FutureTimeoutError:
            gone.add(node_id)
        finally:
            channel.close()
    return {i for i, ident in enumerate(identities) if ident.node_id in gone}


def _silent(actors: List, indices: Sequence[int]) -> List[int]:
    """Those of the hosts that do not answer a progress query within ANSWER_S."""
    refs = {actors[i].progress.remote(): i for i in indices}
    answered, _ = ray.wait(list(refs), num_returns=len(refs), timeout=ANSWER_S)
    alive = set()
    for ref in answered:
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(ref)
            alive.add(refs[ref])
    return [i for i in indices if i not in alive]


def _stop(actors: List, reservation: platforms.Reservation, identities: Sequence[HostIdentity]) -> None:
    """Hard-kill every host actor, free the reservation, and see the local processes gone."""
    for a in actors:
        ray.kill(a, no_restart=True)
    reservation.release()
    here = socket.gethostname()
    pids = wait_gone([i.pid for i in identities if i.hostname == here], RAY_KILL_S)
    for pid in pids:  # ours, and still there (its raylet unreachable?): kill it ourselves
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(pids, KILL_WAIT_S)


def _cause(err: Exception) -> Cause:
    """Why a host's call failed: its process (or node) went, JAX's runtime raised, or (FINAL)
    our code raised: a bad setting no restart mends."""
    if isinstance(err, ray.exceptions.ActorDiedError):
        return Cause.PREEMPTED if getattr(err, "preempted", False) else Cause.DIED
    if isinstance(err, ray.exceptions.ActorUnavailableError):
        return Cause.DIED
    if isinstance(err, ray.exceptions.RayTaskError) and type(err.cause).__name__ in RUNTIME_ERRORS:
        return Cause.CRASHED
    if isinstance(err, ray.exceptions.RayTaskError) and isinstance(err.cause, ProgramRaised):
        return Cause.RAISED
    return Cause.FINAL


def _reason(err: Exception) -> str:
    """Why a host's call failed, in one line."""
    if isinstance(err, ray.exceptions.RayTaskError) and isinstance(err.cause, ProgramRaised):
        return str(err.cause)  # the program's own words (its traceback came as its stderr)
    if isinstance(err, ray.exceptions.RayTaskError):
        cause = err.cause
        # Our code or a user's task raised: where, in the user's code, if it was there.
        where = where_raised_text(str(err)) if _cause(err) is Cause.FINAL else ""  # its text holds the traceback
        return f"raised {type(cause).__name__}: {first_line(cause, 300) if str(cause).strip() else ''}{where}"[:400]
    if isinstance(err, ray.exceptions.ActorDiedError):
        return "its process exited unexpectedly (crashed, killed, or aborted by JAX)"
    if isinstance(err, ray.exceptions.ActorUnavailableError):
        return "its process became unreachable (its node, or the node's raylet, is gone)"
    return first_line(err, 400)
