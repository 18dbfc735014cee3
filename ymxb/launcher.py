"""The driver: place one actor per host, run the phases on all of them, collect, clean up.

Every wait is bounded by `cfg.timeout`; a host that dies or hangs ends the run with a
`HostFailure` naming it, and every actor is hard-killed on the way out (after
`jax.distributed.initialize` a host ignores SIGTERM).
"""

import os
import signal
import socket
import time
from typing import Dict, List, Optional

import ray

from ymxb import platforms
from ymxb.config import Config
from ymxb.host import FAULT_ENV, Host

# After the first host fails, how long to wait for the others to report before naming names.
SETTLE_S = 3.0
# How long killed host processes may take to disappear.
KILL_WAIT_S = 15.0


class HostFailure(RuntimeError):
    """A host died, hung, or could not be placed; the message names it."""


def run_hosts(cfg: Config, log=lambda line: None) -> Dict:
    """Run the whole slice on the connected Ray cluster; return per-host results.

    Returns {"platform", "hosts": [identity + initialize info + train result, by process
    index], "phases": {name: seconds}}.
    """
    platform = platforms.resolve(cfg, ray.cluster_resources())
    hosts, identities, phases = [], [], {}
    try:
        start = time.perf_counter()
        _reserve(platform, cfg)
        hosts = _start_hosts(platform, cfg)
        identities = _gather(hosts, [h.identity.remote() for h in hosts], "start", cfg.timeout)
        phases["start"] = time.perf_counter() - start

        start = time.perf_counter()
        coordinator = ray.get(hosts[0].coordinator_address.remote(), timeout=cfg.timeout)
        # initialize blocks until every process has joined: all hosts call it at once.
        joined = _gather(hosts, [h.initialize.remote(coordinator, cfg.hosts, cfg.timeout)
                                 for h in hosts], "jax.distributed.initialize", cfg.timeout + 10,
                         identities)
        phases["initialize"] = time.perf_counter() - start
        for ident, info in zip(identities, joined):
            ident.update(info)
            log(_identity_line(ident))

        start = time.perf_counter()
        results = _gather(hosts, [h.train.remote(cfg) for h in hosts], "training", cfg.timeout,
                          identities)
        phases["train"] = time.perf_counter() - start

        start = time.perf_counter()
        _gather(hosts, [h.shutdown.remote() for h in hosts], "jax.distributed.shutdown",
                cfg.timeout, identities)
        phases["shutdown"] = time.perf_counter() - start
    finally:
        _stop(hosts, platform, identities)
    hosts_out = [{**ident, **result} for ident, result in zip(identities, results)]
    return {"platform": platform.name, "coordinator": coordinator, "hosts": hosts_out,
            "phases": phases}


def _reserve(platform: platforms.Platform, cfg: Config) -> None:
    pg = platform.reserve()
    try:
        ray.get(pg.ready(), timeout=cfg.timeout)
    except ray.exceptions.GetTimeoutError:
        raise HostFailure(
            f"could not reserve {platform.describe_request()} within {cfg.timeout:g} s; "
            f"the cluster has {_resources_summary(ray.available_resources())} free") from None


def _start_hosts(platform: platforms.Platform, cfg: Config) -> List:
    env = platform.host_env()
    if os.environ.get(FAULT_ENV):
        env[FAULT_ENV] = os.environ[FAULT_ENV]
    # Two threads per actor: `progress` must answer while `train` runs.
    actor = ray.remote(max_concurrency=2, max_restarts=0)(Host)
    return [actor.options(runtime_env={"env_vars": env}, **platform.host_options(i)).remote(i)
            for i in range(cfg.hosts)]


def _gather(hosts: List, refs: List, phase: str, timeout: float,
            identities: Optional[List[dict]] = None) -> List:
    """Results of one call per host, in host order; HostFailure if any host fails or hangs."""
    index = {ref: i for i, ref in enumerate(refs)}
    results, failures = {}, []
    deadline = time.monotonic() + timeout
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1,
                                  timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            results[index[ready[0]]] = ray.get(ready[0])
        except ray.exceptions.RayError as err:
            if not failures:  # the others' fate follows within moments: let them report
                deadline = min(deadline, time.monotonic() + SETTLE_S)
            failures.append((index[ready[0]], _one_line(err)))
    if failures or pending:
        stuck = sorted(index[r] for r in pending)
        raise HostFailure(_failure_message(phase, timeout, failures, stuck, hosts, identities))
    return [results[i] for i in range(len(refs))]


def _failure_message(phase, timeout, failures, stuck, hosts, identities) -> str:
    name = lambda i: _host_name(i, identities)
    if failures:
        first, reason = failures[0]
        msg = f"{phase} failed: {name(first)} died first: {reason}"
        if len(failures) > 1:
            msg += f"; then {_join(name(i) for i, _ in failures[1:])} failed"
        if stuck:
            msg += f"; {_join(name(i) for i in stuck)} still running"
        return msg
    behind = _behind(hosts, stuck) if phase == "training" else stuck
    msg = f"{phase} did not finish within {timeout:g} s on {_join(name(i) for i in stuck)}"
    if behind != stuck:
        msg += f"; {_join(name(i) for i in behind)} fell behind the others (the likely culprit)"
    return msg


def _behind(hosts: List, stuck: List[int]) -> List[int]:
    """Of the stuck hosts, those whose training progress is least (None: never started)."""
    try:
        progress = ray.get([hosts[i].progress.remote() for i in stuck], timeout=5)
    except ray.exceptions.RayError:
        return stuck
    rank = [-1 if p is None else p for p in progress]
    return [i for i, r in zip(stuck, rank) if r == min(rank)]


def _stop(hosts: List, platform: platforms.Platform, identities: List[dict]) -> None:
    """Hard-kill every host actor, free the reservation, and see the local processes gone."""
    for h in hosts:
        ray.kill(h, no_restart=True)
    if platform.pg is not None:
        ray.util.remove_placement_group(platform.pg)
    here = socket.gethostname()
    pids = [i["pid"] for i in identities if i.get("hostname") == here]
    deadline = time.monotonic() + KILL_WAIT_S
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.1)
    for pid in pids:  # ours, and still there: make sure
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone in all but name
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _identity_line(ident: dict) -> str:
    return (f"host {ident['process_index']}/{ident['process_count']}: "
            f"{ident['local_devices']} local / {ident['global_devices']} global "
            f"{ident['platform']} devices on {ident['hostname']} ({ident['node_ip']}) "
            f"pid {ident['pid']}")


def _host_name(i: int, identities: Optional[List[dict]]) -> str:
    if identities and i < len(identities):
        ident = identities[i]
        return f"host {i} ({ident['node_ip']} pid {ident['pid']})"
    return f"host {i}"


def _join(names) -> str:
    return ", ".join(names)


def _one_line(err: Exception) -> str:
    """The gist of a Ray error: the root exception's first line, or why the actor died."""
    cause = getattr(err, "cause", None)
    if cause is not None and not isinstance(cause, ray.exceptions.RayError):
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
    text = str(err).strip()
    for line in text.splitlines():
        if "exit" in line.lower() or "died" in line.lower() or "signal" in line.lower():
            return line.strip()[:300]
    return (text.splitlines() or [type(err).__name__])[0][:300]


def _resources_summary(resources: Dict[str, float]) -> str:
    shown = {k: v for k, v in sorted(resources.items())
             if not k.startswith(("node:", "memory", "object_store_memory"))}
    return ", ".join(f"{k}={v:g}" for k, v in shown.items()) or "nothing"
