"""Placing a slice: shape it on the cluster as it is, reserve it, and where it is not whole yet
(a joined cluster's autoscaler may still be making it, a preempted slice coming back), try
again for as long as the run may wait, saying what it waits for."""

import math
import time
from typing import Callable

import ray

from ymxb.driver import platforms
from ymxb.spec.settings import SliceSpec
from ymxb.errors import HostFailure, first_line
from ymxb.names import launch_line
from ymxb.driver.platforms import Cluster, Reservation

# How often a slice is tried again while the run waits for it.
RETRY_S = 1.0


def place(spec: SliceSpec, log: Callable[[str], None], wait_whole_s: float = 0.0) -> Reservation:
    """Shape and reserve the slice `spec` asks for; where it is not whole (or not free), try
    again for up to `wait_whole_s` (a restart's wait), or a joined cluster's --wait where
    longer, saying what it waits for. The reservation, its spec shaped."""
    wait = _SliceWait(spec, wait_whole_s, log)
    while True:
        cluster = Cluster.now()
        platform = platforms.resolve(spec, cluster.resources)
        try:
            return platform.reserve(platform.shape(spec, cluster), cluster)
        except HostFailure as failure:
            wait.after_failed_try(failure, platform, Cluster.now())  # raises once the wait is over
        time.sleep(RETRY_S)


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
        self.spec = spec
        self.announced = joined >= wait_whole_s and joined > 0  # else a restart's wait, as before
        self.wait_s, self.log = max(joined, wait_whole_s), log
        self.deadline = time.monotonic() + self.wait_s
        self.restart_deadline = time.monotonic() + wait_whole_s  # a restart waits this long anyway
        self.last_line, self.last_at = None, -math.inf

    def after_failed_try(self, failure: HostFailure, platform: platforms.Platform, cluster: Cluster) -> None:
        """After a try that failed: return to try again, or raise once the wait is over."""
        now = time.monotonic()
        if not self.announced:
            if now >= self.deadline:
                raise failure
            return
        autoscaler = _autoscaler_state()
        nothing_comes = getattr(autoscaler, "makes_nodes", True) is False and not platform.some_up(self.spec, cluster)
        if nothing_comes and now >= self.restart_deadline:
            raise failure  # none of it up, and nothing on this cluster makes nodes: no use waiting
        if now >= self.deadline:
            last = autoscaler.last_error if not isinstance(autoscaler, str) and autoscaler else None
            also = f"; the autoscaler's last error: {last}" if last else ""
            raise HostFailure(f"{failure} (waited {self.wait_s:g} s for it: --wait){also}",
                              failure.host, failure.cause, failure.phase) from None
        reported = autoscaler if isinstance(autoscaler, str) else (
            autoscaler.describe() if autoscaler else "no report yet")
        line = f"{platform.waiting_for(self.spec, cluster)}; the autoscaler: {reported}"
        if line != self.last_line or now - self.last_at >= self.SAY_EVERY_S:
            self.log(launch_line(f"waiting for {line} ({self.deadline - now:.0f} s left of --wait {self.wait_s:g})"))
            self.last_line, self.last_at = line, now


def _autoscaler_state():
    """The connected cluster's autoscaler state (autoscaler_state.AutoscalerState, or None
    where none reports), or what went wrong reading it (a str: the wait goes on)."""
    from ymxb.ops import autoscaler_state

    try:
        return autoscaler_state.read(ray.get_runtime_context().gcs_address)
    except (ray.exceptions.RayError, ConnectionError, ValueError) as err:  # ValueError: a report that is not JSON
        return f"its report could not be read ({type(err).__name__}: {first_line(err, 200)})"
