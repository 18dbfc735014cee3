"""The Ray cluster a run uses: one it joins (checked first to be a Ray GCS), or an embedded one
that starts with the run and leaves nothing behind.

An embedded cluster keeps Ray's token authentication on (the default since 2.50; Ray reads the
token from, or writes it to, ~/.ray/auth_token), keeps its files in a folder of its own
(removed after a clean run, kept and named after a failure: its logs say what happened), and
is watched by a reaper process (reaper.py) that kills whatever of it outlives the driver.

An embedded head is the one `ray.init(include_dashboard=False)` starts (GCS, raylet, dashboard
and runtime-env agents), less three processes a one-node simulation has no use for: the
autoscaler's monitor (nothing to scale; it also takes 1 s to stop), the log monitor (it streams
the workers' output to drivers, and ours asks for none) and the API server (without the
dashboard its one module reports usage stats, which are off). Each is a Python process that
takes 1-2 s of CPU to start, on the cores the hosts need; the node starts its raylet only once
the API server is up. Without an API server, the dashboard agent's event reporter, which looks
for one, logs "Get dashboard http address failed" once a second in its log: expected.
"""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, Optional

from ymxb.ops import ray_internals, reaper as reaper_script
from ymxb.errors import HostFailure, UsageError, first_line
from ymxb.names import AUTH_MODE_ENV, launch_line

# How long the address probe waits for an answer: a GCS answers in milliseconds.
PROBE_S = 5.0
# An embedded run's Ray folder, in $TMPDIR (else /tmp): keep that short, as Ray's socket paths
# under it must stay within 107 characters.
TEMP_PREFIX = "ymxb-"
# How long the reaper may take to tidy up after a clean run.
REAPER_WAIT_S = 15.0
# The environment of an embedded cluster's processes. Loopback only: Ray binds every server
# (GCS, raylet, workers, agents, metrics) to all interfaces unless its node address is
# 127.0.0.1, and it keeps that address only where the first variable turns multi-node clusters
# off (ray_constants.py). Usage stats off, as ray.init() turns them off for a cluster of its own.
EMBEDDED_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# The embedded head's settings that differ from ray.init()'s (see above). The dashboard
# agent's HTTP port is otherwise fixed (52365): while another Ray on this machine holds it, the
# agent retries for seconds, and the raylet waits for the agent before the node comes up.
HEAD_PARAMS = {"no_monitor": True, "include_log_monitor": False, "dashboard_agent_listen_port": 0}
# Ray starts its workers at nice 15, below every other process on the machine; the hosts are
# the work of a simulation, so they run at 0, as the processes of a bare run do. And it starts
# a worker per CPU for the first driver, whose ray.init() waits for them (docs/benchmarks.md): the
# hosts' actors start the workers they need anyway, while the driver reserves the slice.
HEAD_CONFIG = {"worker_niceness": 0, "prestart_worker_first_driver": False}


@contextlib.contextmanager
def ray_cluster(address: Optional[str], log=lambda line: None):
    """Join the Ray cluster at `address`, else start an embedded one that ends with us.

    Yields a dict that gets the seconds taken to bring Ray up and connect ("ray_start") and,
    once the block is left, to disconnect and bring it down ("ray_stop").
    A joined run tells `log` the GCS address it joined (so a Ray job's log shows it ran on
    the cluster, not on an embedded Ray). An embedded run that ends in an exception other
    than an interrupt (a host failed) keeps its Ray folder, and `log` gets where its logs are.
    """
    phases: Dict[str, float] = {}
    if address:
        with _joined(address, log, phases):
            yield phases
    else:
        with _environment(EMBEDDED_ENV), _embedded(log, phases):
            yield phases


@contextlib.contextmanager
def _environment(values: Dict[str, str]):
    """`values` in this process's environment while the block runs (the processes Ray starts
    read them), then as they were: a later `ray start` in this process's children (a
    multi-node cluster) must not inherit them."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _joined(address: str, log, phases: Dict[str, float]):
    started = time.perf_counter()
    auth = probe(address)
    if auth == "token" and "ray" not in sys.modules:
        # A token cluster: the client must say so before Ray is imported (ray caches the mode).
        os.environ.setdefault(AUTH_MODE_ENV, "token")
    import ray

    try:
        with _signals_kept():
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as err:
        raise HostFailure(f"could not join the Ray cluster at {address}: {first_line(err)}") from None
    phases["ray_start"] = time.perf_counter() - started
    log(launch_line(f"joined the Ray cluster at {ray.get_runtime_context().gcs_address}"))
    try:
        yield
    finally:
        started = time.perf_counter()
        ray.shutdown()
        phases["ray_stop"] = time.perf_counter() - started


@contextlib.contextmanager
def _embedded(log, phases: Dict[str, float]):
    started = time.perf_counter()
    import ray

    ray_internals.keep_on_loopback()  # in case ray was imported before the variable was set

    temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX)
    reaper = subprocess.Popen([sys.executable, reaper_script.__file__, str(os.getpid()), temp_dir],
                              stdin=subprocess.PIPE)
    clean, head = False, None
    try:
        ray_internals.quiet_token_warning()  # we chose token auth (see above): no warning of it
        try:
            with _signals_kept():
                head = ray_internals.start_head(temp_dir, HEAD_PARAMS, HEAD_CONFIG)
                # The head's own address: never some other running cluster.
                ray.init(address=head.address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as err:
            raise HostFailure(f"could not start an embedded Ray: {first_line(err)}") from None
        phases["ray_start"] = time.perf_counter() - started
        try:
            yield
            clean = True
        except KeyboardInterrupt:  # stopped, not failed: nothing to look into
            clean = True
            raise
        finally:
            started = time.perf_counter()
            ray.shutdown()
    finally:
        if head is not None:
            head.kill_all_processes(check_alive=False, allow_graceful=True)
        _dismiss(reaper, clean)
        if "ray_start" in phases:
            phases["ray_stop"] = time.perf_counter() - started
        if not clean:
            log(launch_line(f"Ray's logs of this run are kept in {temp_dir}/session_latest/logs"))


@contextlib.contextmanager
def _signals_kept():
    """ray.init installs a C++ SIGTERM handler (it prints a stack dump and exits 1); put back
    the one the caller chose."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dismiss(reaper: subprocess.Popen, clean: bool) -> None:
    """Close the reaper's pipe (after a clean run, saying so) and wait for it to finish."""
    with contextlib.suppress(OSError):
        if clean:
            reaper.stdin.write(b"clean")
        reaper.stdin.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        reaper.wait(REAPER_WAIT_S)


def probe(address: str) -> Optional[str]:
    """Check that a Ray GCS answers at `address` ("host:port"), in seconds, not minutes.

    Returns "token" when it wants token authentication, None otherwise ("auto" and "ray://"
    addresses are left to Ray). Raises UsageError, naming the address, when nothing answers,
    or when what answers is not a Ray GCS (`ray.init` would retry against it for minutes).
    """
    if address in ("auto", "local") or address.startswith("ray://"):
        return None
    import grpc

    if address.startswith(("http://", "https://")):
        raise UsageError(f"the Ray address {address} (--address or $RAY_ADDRESS) is a dashboard's "
                         f"URL, not a cluster's GCS (host:port, e.g. 10.0.0.2:6379); for `ray job` "
                         f"commands put the URL in $RAY_API_SERVER_ADDRESS instead")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address!r} is not host:port (the GCS of a Ray cluster, e.g. "
                         f"10.0.0.2:6379), auto, or ray://host:port")
    fix = ("start one with `ray start --head`, fix the address (host:port of its GCS), or omit "
           "--address to run on an embedded local cluster")
    # Any GCS answers this call: with the cluster id, or "unauthenticated" for a token cluster.
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId",
                                   request_serializer=bytes, response_deserializer=bytes)
        try:
            call(b"", timeout=PROBE_S)
            return None
        except grpc.RpcError as err:
            code, detail = err.code(), first_line(Exception(err.details() or ""))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return "token"
    if code == grpc.StatusCode.UNAVAILABLE and "HTTP/2" in detail:
        raise UsageError(f"--address {address}: something listens there, but it is not a Ray "
                         f"cluster (it does not speak gRPC); {fix}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        raise UsageError(f"--address {address}: a gRPC server listens there, but not a Ray GCS; {fix}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        raise UsageError(f"--address {address}: no answer within {PROBE_S:g} s; {fix}")
    raise UsageError(f"cannot reach a Ray cluster at --address {address} ({detail}); {fix}")
