"""A warm slice that survives host loss: when a host dies, hangs or is preempted, every host
is hard-killed (and seen gone), the slice is reserved again (waiting up to --timeout for it to
be whole), new processes start and initialise (`jax.distributed` cannot initialise twice in
one process; a new coordinator port each time), and training continues from the driver's last
checkpoint. Two budgets, as Ray Train and Levanter keep them: restarts for failures (a crash,
an abort, a hang) and preemptions for hosts taken away (Ray's preempted signal, a node that
leaves the cluster). A failure no restart mends (Cause.FINAL: no room for the slice, a slow
run, a bad setting) ends the run at once.
"""

import dataclasses
import glob
import os
import socket
import time
from typing import Callable, Dict, List, Optional

from ymxb.driver import checkpoint
from ymxb.ops import ray_internals
from ymxb.driver.checkpoint import Checkpoint
from ymxb.spec.settings import Program, Recovery, SliceSpec
from ymxb.errors import Cause, HostFailure
from ymxb.driver.slice import WarmSlice
from ymxb.names import launch_line
from ymxb.protocol import HostIdentity, ProgramRun, Restart, SliceHost, UserCall, UserEnd

STDERR_LINES = 8  # of a failed host's stderr, shown with its failure


class Supervisor:
    """`with Supervisor(spec, recovery, log) as s: s.run(program, path)`, as often as wanted:
    a WarmSlice brought up on first use and brought up again after each host loss, within the
    budgets. `restarts` lists every restart of its life; `phases`, once it is left, the last
    slice's phases as they ended."""

    def __init__(self, spec: SliceSpec, recovery: Recovery, log: Callable[[str], None] = lambda line: None,
                 began: Optional[float] = None):
        self.spec, self.recovery, self.log = spec, recovery, log
        self.began = time.time() if began is None else began
        self.warm: Optional[WarmSlice] = None
        self.restarts: List[Restart] = []
        self.phases: Dict[str, float] = {}
        self.latest: Optional[Checkpoint] = None  # the running program's last whole checkpoint
        self._lost_since = 0.0  # when the work the last restart lost began (time.time())

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, kind, error, trace):
        warm, self.warm = self.warm, None
        if warm is not None:
            self.phases = warm.stop(clean=kind is None)

    @property
    def hosts(self) -> List[SliceHost]:
        """The hosts of the up slice, by process index."""
        return self.warm.hosts if self.warm else []

    def up(self) -> SliceSpec:
        """Bring the slice up, if it is not (restarting it on host loss); its spec as the
        platform shaped it."""
        self._attempt(lambda: None, None)
        self.spec = self.warm.spec  # a restart must find this very shape
        return self.spec

    def run(self, program: Program, path: Optional[str] = None, resume: Optional[Checkpoint] = None,
            on_steps: Callable[[int], None] = lambda steps: None, until: Optional[int] = None) -> ProgramRun:
        """Train `program` to the end (or to step `until`), from `resume` if given; each whole
        checkpoint is kept (and written atomically to `path`, if given) until the next."""
        self.latest = resume

        def keep(ckpt: Checkpoint) -> None:
            self.latest = ckpt
            if path:
                checkpoint.write(path, ckpt)

        return self._attempt(lambda: self.warm.run(program, on_steps, self.latest, keep,
                                                   self.recovery.checkpoint_every, until), program)

    def call(self, call: UserCall, on_item: Callable[[int, object], None] = lambda host, item: None,
             on_failure: Callable[[HostFailure], None] = lambda failure: None) -> List[UserEnd]:
        """Run a user's own program on every host to its end, run again from its start (told
        its attempt) on a new slice after each host loss; `on_failure` hears each failure
        first, the last one (raised) included."""
        work = lambda: self.warm.call(dataclasses.replace(call, attempt=len(self.restarts)), on_item)
        return self._attempt(work, None, again="running the program again", on_failure=on_failure)

    def _attempt(self, work: Callable, program: Optional[Program], again: Optional[str] = None,
                 on_failure: Callable[[HostFailure], None] = lambda failure: None):
        """`work()` on an up slice, bringing the slice up again after each host loss (`again`
        says what then happens, where it is not training from the last checkpoint)."""
        while True:
            began, warm = time.time(), self.warm
            try:
                if warm is None:
                    # A restart waits for the slice to be whole again (a preempted one comes back).
                    warm = WarmSlice(self.spec, self.log, wait_whole_s=self.spec.timeout if self.restarts else 0)
                    warm.start()  # on failure, it stops what it started
                    self.warm = warm
                self._resumed()
                return work()
            except HostFailure as failure:
                if self.warm is not None:
                    self.warm = None
                    warm.stop(clean=False)  # every host hard-killed, seen gone
                # Lost: the work since the checkpoint, or since this attempt began if later
                # (what came before is the previous restart's loss).
                taken = self.latest.taken_at if program and self.latest else began
                on_failure(failure)
                self._recover(failure, warm, max(began, taken), program, again)

    def _recover(self, failure: HostFailure, warm: Optional[WarmSlice], lost_since: float,
                 program: Optional[Program], again: Optional[str] = None) -> None:
        """After `failure` (its slice stopped): a Restart recorded, or the failure raised
        again when no restart mends it or its budget is spent."""
        self._resumed()  # a restart that got no further: its loss ends here
        who = warm.describe(failure.host) if warm and failure.host is not None else "the slice"
        ident = _identity(warm, failure.host)
        lines = stderr_tail(ident)
        if lines:
            self.log(launch_line(f"the last lines {who} wrote to stderr:"))
            for line in lines:
                self.log(f"  | {line}")
        if not failure.cause.restarts:
            raise failure
        preempted = failure.cause is Cause.PREEMPTED
        budget = self.recovery.max_preemptions if preempted else self.recovery.max_restarts
        used = sum((r.cause == Cause.PREEMPTED.value) == preempted for r in self.restarts)
        if used >= budget:
            if budget:
                flag = "--max-preemptions" if preempted else "--max-restarts"
                raise HostFailure(f"{failure} (the budget is spent: {flag} {budget})",
                                  failure.host, failure.cause, failure.phase)
            raise failure
        resumed = self.latest.step if program and self.latest else 0
        reached = warm.reached if warm and program else resumed
        self.restarts.append(Restart(
            at_s=time.time() - self.began, host=failure.host, node_ip=ident and ident.node_ip,
            node_id=ident and ident.node_id, pid=ident and ident.pid, cause=failure.cause.value,
            phase=failure.phase or "start", error=str(failure), resumed_step=resumed,
            steps_redone=max(0, reached - resumed)))
        self._lost_since = lost_since
        self.log(launch_line(str(failure)))
        self.log(launch_line(f"{who} {failure.cause.value}; restarting the slice "
                      f"({'preemption' if preempted else 'restart'} {used + 1} of {budget}), "
                      f"{again or f'training from step {resumed}'}"))

    def _resumed(self) -> None:
        """The last restart's loss ends now (training goes on, or the next failure came)."""
        if self.restarts and self.restarts[-1].lost_s is None:
            self.restarts[-1] = dataclasses.replace(self.restarts[-1], lost_s=time.time() - self._lost_since)


def _identity(warm: Optional[WarmSlice], host: Optional[int]) -> Optional[HostIdentity]:
    if warm is None or host is None or host >= len(warm.identities):
        return None
    return warm.identities[host]


def stderr_tail(ident: Optional[HostIdentity], lines: int = STDERR_LINES) -> List[str]:
    """The last lines a host's process wrote to stderr, from Ray's log of it (where that log
    is on this machine: an embedded cluster, or a cluster whose node this is)."""
    if ident is None or ident.hostname != socket.gethostname():
        return []
    logs = ray_internals.logs_dir()
    found = glob.glob(os.path.join(logs, f"worker-*-{ident.pid}.err")) if logs else []
    if not found:
        return []
    with open(found[0], "rb") as f:
        f.seek(max(0, os.path.getsize(found[0]) - 8192))
        text = f.read().decode(errors="replace")
    # Ray marks each task's start (":job_id:...", ":actor_name:..."): not the host's words.
    kept = [line.rstrip() for line in text.splitlines() if line.strip() and not line.startswith(":")]
    return [line[:300] for line in kept[-lines:]]
