"""The driver's side of a slice: one actor per host, placed and initialised once (a warm
slice), then any number of programs run on it, one after another; then every host stopped.

Every wait is bounded by the slice's timeout; a host that dies or hangs ends the slice with a
`HostFailure` naming it, and every actor is hard-killed on the way out (after
`jax.distributed.initialize` a host ignores SIGTERM).
"""

import contextlib
import dataclasses
import math
import os
import signal
import socket
import time
from typing import Callable, Dict, List, Optional

import ray

from ymxb import checkpoint, platforms
from ymxb.checkpoint import Checkpoint
from ymxb.config import Program, SliceSpec
from ymxb.errors import HostFailure
from ymxb.host import FAULT_ENV, FAULT_ONCE_ENV, PLATFORM_ENV, Host
from ymxb.reaper import wait_gone

# After the first host fails, how long to wait for the others to report before naming names
# (not at all once a host's process or node is known gone, before its peers would give up on
# their own: that host is the one to name; JAX aborts the processes that give up).
SETTLE_S = 3.0
# How long host processes get to go after ray.kill, before the driver SIGKILLs the ones on its
# own machine itself; and how long killed processes may take to disappear.
RAY_KILL_S, KILL_WAIT_S = 3.0, 15.0
# While training: how often each host is asked how far it got, and how long a live host may take
# to answer (it answers from a second thread in milliseconds; a stopped process never does).
POLL_S, ANSWER_S = 2.0, 5.0
# How long a node's raylet may take to accept a connection before the node counts as gone.
RAYLET_ANSWER_S = 2.0
# What JAX's runtime raises when a collective or the distributed service fails (a peer went).
RUNTIME_ERRORS = ("JaxRuntimeError", "XlaRuntimeError")


@dataclasses.dataclass
class ProgramRun:
    """What the hosts returned for one program: `hosts` holds, by process index, each host's
    identity, what initialize saw, and its train_host result (arrays, see train.py)."""

    program: Program
    platform: str
    coordinator: str
    hosts: List[dict]
    train_s: float
    phases: Dict[str, float]  # the slice's: place, actors, initialize, train (all programs), shutdown, stop


class WarmSlice:
    """`with WarmSlice(spec) as s:` reserves the slice, starts one actor per host and
    initialises jax.distributed once; `s.run(program)` trains a program on it (as often as
    wanted); leaving the block shuts JAX down and stops every host, whatever happened."""

    def __init__(self, spec: SliceSpec, log: Callable[[str], None] = lambda line: None,
                 wait_whole_s: float = 0.0):
        self.spec, self.log, self.wait_whole_s = spec, log, wait_whole_s
        self.hosts, self.identities, self.phases = [], [], {}
        self.platform = self.coordinator = None
        self.reached = 0  # the most steps any host completed of the program running now

    def __enter__(self) -> "WarmSlice":
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, kind, error, trace):
        try:
            if kind is None:
                started = time.perf_counter()
                try:
                    _gather(self.hosts, [h.shutdown.remote() for h in self.hosts],
                            "jax.distributed.shutdown", self.spec.timeout, self.identities)
                except HostFailure as failure:  # the results are in: every host is killed anyway
                    self.log(f"launch.py: note: {failure}")
                self.phases["shutdown"] = time.perf_counter() - started
        finally:
            self._stop()

    def run(self, program: Program, on_steps: Callable[[int], None] = lambda steps: None,
            resume: Optional[Checkpoint] = None, on_checkpoint: Callable[[Checkpoint], None] = lambda c: None,
            checkpoint_every: int = 0) -> ProgramRun:
        """Train `program` on every host, from `resume` if given; `on_steps(steps)` hears the
        slowest host's progress, `on_checkpoint` each whole checkpoint (every
        `checkpoint_every` compiled calls; 0: none)."""
        started = time.perf_counter()
        pieces = checkpoint.Assembler(program, len(self.hosts), resume)
        self.reached = resume.step if resume else 0

        def on_piece(host: int, piece: dict) -> None:
            self.reached = max(self.reached, piece["step"])
            whole = pieces.add(host, piece)
            if whole:
                on_checkpoint(whole)

        def heard(steps: int) -> None:
            self.reached = max(self.reached, steps)
            on_steps(steps)

        state = ray.put(resume.to_host()) if resume else None
        streams = [h.train.options(num_returns="streaming").remote(program, state, checkpoint_every)
                   for h in self.hosts]
        # Training may take as long as it keeps progressing: judged by calls completed.
        results = _gather(self.hosts, streams, "training", self.spec.timeout, self.identities,
                          progress=_Progress(self.hosts, self.spec.timeout,
                                             program.trial.steps_per_call, heard),
                          on_piece=on_piece)
        train_s = time.perf_counter() - started
        self.phases["train"] = self.phases.get("train", 0.0) + train_s
        hosts = [{**ident, **result} for ident, result in zip(self.identities, results)]
        return ProgramRun(program, self.platform.name, self.coordinator, hosts, train_s, self.phases)

    def _start(self) -> None:
        start = time.perf_counter()
        spec = self.spec = self._reserve()
        if self.platform.note:
            self.log(self.platform.note)
        self.phases["place"] = time.perf_counter() - start

        start = time.perf_counter()
        self.hosts = _start_hosts(self.platform, spec)
        self.identities = _gather(self.hosts, [h.identity.remote() for h in self.hosts], "start",
                                  spec.timeout)
        self.phases["actors"] = time.perf_counter() - start

        start = time.perf_counter()
        [self.coordinator] = _gather(self.hosts[:1], [self.hosts[0].coordinator_address.remote()],
                                     "coordinator address", spec.timeout, self.identities)
        ip = self.coordinator.rsplit(":", 1)[0]
        # initialize blocks until every process has joined: all hosts call it at once.
        joined = _gather(self.hosts, [h.initialize.remote(self.coordinator, spec.processes, spec.timeout,
                                                          platforms.multislice_env(spec, ip, i))
                                      for i, h in enumerate(self.hosts)], "jax.distributed.initialize",
                         spec.timeout + 10, self.identities, peers_give_up_s=spec.timeout)
        self.phases["initialize"] = time.perf_counter() - start
        for i, (ident, info) in enumerate(zip(self.identities, joined)):
            ident.update(info, slice=i // spec.hosts)
            self.log(_identity_line(ident))

    def _reserve(self) -> SliceSpec:
        """Shape and reserve the slice; where it is not whole (or not free), try again for up
        to `wait_whole_s`, or a joined cluster's --wait where longer (its autoscaler may still
        be making the slice), saying what it waits for. The shaped spec."""
        wait = _SliceWait(self.spec, self.wait_whole_s, self.log)
        while True:
            self.platform = platforms.resolve(self.spec, ray.cluster_resources())
            try:
                spec = self.platform.shape()
                self.platform.reserve(spec.timeout)
                return spec
            except HostFailure as failure:
                self.platform.release()
                wait.went_on(failure, self.platform)  # raises once the wait is over
            time.sleep(1.0)

    def _stop(self) -> None:
        if self.platform is not None:
            start = time.perf_counter()
            _stop(self.hosts, self.platform, self.identities)
            self.phases["stop"] = time.perf_counter() - start


class _SliceWait:
    """Waiting for a slice to be whole: a joined cluster's --wait (its autoscaler makes nodes
    in minutes, or never), or a restart's wait (`wait_whole_s`). While it waits for --wait it
    says, on a change and every SAY_EVERY_S, what it waits for, what the cluster has of it and
    what Ray's autoscaler reports; when --wait is over it fails naming the autoscaler's last
    error, where it reported one. It does not wait where none of the slice is up and the
    cluster's autoscaler is read-only (started by hand): nothing would come."""

    SAY_EVERY_S = 30.0

    def __init__(self, spec: SliceSpec, wait_whole_s: float, log: Callable[[str], None]):
        joined = spec.wait if spec.address else 0.0
        self.announced = joined >= wait_whole_s and joined > 0  # else a restart's wait, as before
        self.wait_s, self.log = max(joined, wait_whole_s), log
        self.deadline = time.monotonic() + self.wait_s
        self.restart_deadline = time.monotonic() + wait_whole_s  # a restart waits this long anyway
        self.said, self.said_at = None, -math.inf

    def went_on(self, failure: HostFailure, platform: platforms.Platform) -> None:
        """After a try that failed: return to try again, or raise once the wait is over."""
        now = time.monotonic()
        if not self.announced:
            if now >= self.deadline:
                raise failure
            return
        autoscaler = _autoscaler_state()
        nothing_comes = getattr(autoscaler, "makes_nodes", True) is False and not platform.some_up()
        if nothing_comes and now >= self.restart_deadline:
            raise failure  # none of it up, and nothing on this cluster makes nodes: no use waiting
        if now >= self.deadline:
            last = autoscaler.last_error if not isinstance(autoscaler, str) and autoscaler else None
            said = f"; the autoscaler's last error: {last}" if last else ""
            raise HostFailure(f"{failure} (waited {self.wait_s:g} s for it: --wait){said}",
                              failure.host, failure.cause, failure.phase) from None
        reported = autoscaler if isinstance(autoscaler, str) else (
            autoscaler.describe() if autoscaler else "no report yet")
        line = f"{platform.waiting_for()}; the autoscaler: {reported}"
        if line != self.said or now - self.said_at >= self.SAY_EVERY_S:
            self.log(f"launch.py: waiting for {line} ({self.deadline - now:.0f} s left of --wait {self.wait_s:g})")
            self.said, self.said_at = line, now


def _autoscaler_state():
    """The connected cluster's autoscaler state (autoscaler_state.AutoscalerState, or None
    where none reports), or what went wrong reading it (a str: the wait goes on)."""
    from ymxb import autoscaler_state

    try:
        return autoscaler_state.read(ray.get_runtime_context().gcs_address)
    except (ray.exceptions.RayError, ConnectionError, ValueError) as err:  # ValueError: a report that is not JSON
        return f"its report could not be read ({type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]})"


def _start_hosts(platform: platforms.Platform, spec: SliceSpec) -> List:
    env = platform.host_env()
    for name in (FAULT_ENV, FAULT_ONCE_ENV):
        if os.environ.get(name):
            env[name] = os.environ[name]
    env[PLATFORM_ENV] = platform.name
    # Two threads per actor: `progress` must answer while `train` runs.
    actor = ray.remote(max_concurrency=2, max_restarts=0)(Host)
    # The environment goes as an argument, not as a runtime_env: an actor with an environment
    # of its own cannot take one of the workers Ray has already started.
    return [actor.options(**platform.host_options(i)).remote(i, env) for i in range(spec.processes)]


def _gather(hosts: List, refs: List, phase: str, timeout: float,
            identities: Optional[List[dict]] = None, peers_give_up_s: float = math.inf,
            progress: Optional["_Progress"] = None,
            on_piece: Callable[[int, dict], None] = lambda host, piece: None) -> List:
    """Results of one call per host, in host order; HostFailure if any host fails or hangs.

    `refs` may be streams (a generator call's ObjectRefGenerator): each item is then
    `{"checkpoint": piece}`, handed to `on_piece(host, piece)`, until `{"result": ...}`.
    `peers_give_up_s`: after this long, waiting hosts abort on their own (as JAX's initialize
    does), so failures from then on are a symptom of a host that never arrived, not the cause.
    `progress`: the call may take as long as the hosts keep progressing (no `timeout` on the
    whole); it fails when they stall, naming the host to blame.
    """
    index = {ref: i for i, ref in enumerate(refs)}
    results, failures = {}, []
    started = time.monotonic()
    deadline = math.inf if progress else started + timeout
    pending = list(refs)
    while pending:
        wait_s = max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1,
                                  timeout=min(wait_s, POLL_S) if progress else wait_s)
        if not ready and progress and not failures:
            stall = progress.stall([index[r] for r in pending], lambda i: _host_name(i, identities))
            if stall:
                message, host, cause = stall
                raise HostFailure(f"{phase} stalled: {message}", host, cause, phase)
            continue
        if not ready:
            if time.monotonic() < deadline:
                continue
            break
        [ref] = ready
        stream = isinstance(ref, ray.ObjectRefGenerator)
        try:
            item = ray.get(next(ref) if stream else ref)
        except ray.exceptions.RayError as err:
            if not failures:  # the others' fate follows within moments: let them report
                first_failure_s = time.monotonic() - started
                deadline = min(deadline, time.monotonic() + SETTLE_S)
            failures.append((index[ref], _reason(err), _cause(err)))
            if failures[-1][2] in ("died", "preempted") and first_failure_s < peers_give_up_s:
                break  # a host that went is the cause: what its peers report later are symptoms
            continue
        if stream and "checkpoint" in item:
            on_piece(index[ref], item["checkpoint"])
            pending.append(ref)
            continue
        results[index[ref]] = item["result"] if stream else item
    if failures or pending:
        stuck = sorted(index[r] for r in pending)
        blame_stuck = bool(failures) and first_failure_s >= peers_give_up_s
        # A host whose node left the cluster, else one that died, is the cause; what its peers
        # then report (a collective's connection reset, JAX aborting when the coordinator goes)
        # are symptoms. Where none is known to have died, a host that cannot answer is.
        lost = _on_lost_nodes(identities)
        failures = [(i, "its node is gone (its raylet does not answer)", "preempted") if i in lost
                    else (i, reason, cause) for i, reason, cause in failures]
        failures.sort(key=lambda f: (f[2] != "preempted", f[2] != "died"))
        gone = failures and failures[0][2] in ("preempted", "died")
        silent = _silent(hosts, stuck) if failures and not gone and not blame_stuck else []
        message, host, cause = _failure(phase, timeout, failures, stuck, blame_stuck, silent, identities)
        raise HostFailure(message, host, "preempted" if host in lost else cause, phase)
    return [results[i] for i in range(len(refs))]


class _Progress:
    """A training call's progress: a host is hung when it completes no compiled call within
    the timeout, however long the run as a whole takes."""

    def __init__(self, hosts: List, timeout: float, steps_per_call: int,
                 on_steps: Callable[[int], None] = lambda steps: None):
        self.hosts, self.timeout, self.steps_per_call = hosts, timeout, steps_per_call
        self.on_steps = on_steps
        now = time.monotonic()
        self.steps = {i: None for i in range(len(hosts))}  # steps done; None: not started
        self.since = {i: now for i in range(len(hosts))}  # when `steps` last changed
        self.asked = {}  # host -> progress query, until it answers

    def stall(self, pending: List[int], name) -> Optional[tuple]:
        """None while every pending host progressed within the timeout; else (why not, the
        host to blame, HostFailure's cause), naming hosts with `name(host index)`."""
        now = time.monotonic()
        for i in pending:
            if i not in self.asked:
                self.asked[i] = self.hosts[i].progress.remote()
        refs = [self.asked[i] for i in pending]
        answered, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for i in pending:
            if self.asked[i] in answered:
                ref = self.asked.pop(i)
                with contextlib.suppress(ray.exceptions.RayError):  # a dead host: train says so
                    steps = ray.get(ref)
                    if steps != self.steps[i]:
                        self.steps[i], self.since[i] = steps, now
        done = [steps for steps in self.steps.values() if steps is not None]
        if done:
            self.on_steps(min(done))
        if all(now - self.since[i] <= self.timeout for i in pending):
            return None
        return self._blame(pending, name, _silent(self.hosts, pending))

    def _blame(self, pending: List[int], name, silent: List[int]) -> tuple:
        names = lambda indices: ", ".join(name(i) for i in indices)
        if silent:
            return (f"{names(silent)} stopped answering: no compiled call completed in "
                    f"{self.timeout:g} s and no reply to a progress query in {ANSWER_S:g} s (the "
                    f"process is stopped, or stuck outside Python); the other hosts wait for it",
                    silent[0], "hung")
        rank = {i: -1 if self.steps[i] is None else self.steps[i] for i in pending}
        low = min(rank.values())
        behind = [i for i in pending if rank[i] == low]
        at = "before its first step" if low < 0 else f"at step {low}"
        if len(behind) < len(pending):
            return (f"{names(behind)} fell behind ({at}, others at step {max(rank.values())}) and "
                    f"completed no compiled call in {self.timeout:g} s (the likely culprit)",
                    behind[0], "hung")
        return (f"no host completed a compiled call in {self.timeout:g} s (all {at}, all "
                f"answering): the run is slow, not hung; raise --timeout or lower "
                f"--steps-per-call (now {self.steps_per_call})", None, None)


def _on_lost_nodes(identities: Optional[List[dict]]) -> set:
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
    for node_id in {ident.get("node_id") for ident in identities} & set(nodes):
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
    return {i for i, ident in enumerate(identities) if ident.get("node_id") in gone}


def _silent(hosts: List, indices: List[int]) -> List[int]:
    """Those of the hosts that do not answer a progress query within ANSWER_S."""
    refs = {hosts[i].progress.remote(): i for i in indices}
    answered, _ = ray.wait(list(refs), num_returns=len(refs), timeout=ANSWER_S)
    alive = set()
    for ref in answered:
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(ref)
            alive.add(refs[ref])
    return [i for i in indices if i not in alive]


def _failure(phase, timeout, failures, stuck, blame_stuck, silent, identities) -> tuple:
    """(the one-line message, the host to blame, its cause) of a failed call."""
    names = lambda indices: ", ".join(_host_name(i, identities) for i in indices)
    if blame_stuck:
        return (f"{phase} failed: {names(stuck)} never finished (the likely culprit); "
                f"{names(i for i, *_ in failures)} gave up waiting: {failures[0][1]}", stuck[0], "hung")
    if silent:
        return (f"{phase} failed: {names(silent)} stopped answering (its process or its node is "
                f"gone: the likely culprit); {names(i for i, *_ in failures)} then failed: "
                f"{failures[0][1]}", silent[0], "hung")
    if failures:
        first, reason, cause = failures[0]
        msg = f"{phase} failed: {names([first])} failed first: {reason}"
        if failures[1:]:
            msg += f"; then {names(i for i, *_ in failures[1:])}"
        return msg + (f"; {names(stuck)} left waiting" if stuck else ""), first, cause
    return f"{phase} did not finish within {timeout:g} s on {names(stuck)}", stuck[0], "hung"


def _stop(hosts: List, platform: platforms.Platform, identities: List[dict]) -> None:
    """Hard-kill every host actor, free the reservation, and see the local processes gone."""
    for h in hosts:
        ray.kill(h, no_restart=True)
    platform.release()
    here = socket.gethostname()
    pids = wait_gone([i["pid"] for i in identities if i.get("hostname") == here], RAY_KILL_S)
    for pid in pids:  # ours, and still there (its raylet unreachable?): kill it ourselves
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(pids, KILL_WAIT_S)


def _identity_line(ident: dict) -> str:
    where = f"slice {ident['slice']}, " if ident["megascale"] else ""
    return (f"host {ident['process_index']}/{ident['process_count']}: {where}"
            f"{ident['local_devices']} local / {ident['global_devices']} global "
            f"{ident['platform']} devices on {ident['hostname']} ({ident['node_ip']}) "
            f"pid {ident['pid']}")


def _host_name(i: int, identities: Optional[List[dict]]) -> str:
    if identities and i < len(identities):
        ident = identities[i]
        return f"host {i} ({ident['node_ip']} pid {ident['pid']})"
    return f"host {i}"


def _cause(err: Exception) -> Optional[str]:
    """Why a host's call failed, as HostFailure's cause: its process (or node) went, JAX's
    runtime raised, or (None) our code raised: a bad setting no restart mends."""
    if isinstance(err, ray.exceptions.ActorDiedError):
        return "preempted" if getattr(err, "preempted", False) else "died"
    if isinstance(err, ray.exceptions.ActorUnavailableError):
        return "died"
    if isinstance(err, ray.exceptions.RayTaskError) and type(err.cause).__name__ in RUNTIME_ERRORS:
        return "crashed"
    return None


def _reason(err: Exception) -> str:
    """Why a host's call failed, in one line."""
    if isinstance(err, ray.exceptions.RayTaskError):
        cause = err.cause
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return f"raised {type(cause).__name__}: {first}"[:400]
    if isinstance(err, ray.exceptions.ActorDiedError):
        return "its process exited unexpectedly (crashed, killed, or aborted by JAX)"
    if isinstance(err, ray.exceptions.ActorUnavailableError):
        return "its process became unreachable (its node, or the node's raylet, is gone)"
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:400]
