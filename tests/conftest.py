import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# In-process tests see this many CPU devices (set before anything imports JAX); the hosts of
# multi-process tests get theirs from the launcher.
LOCAL_DEVICES = 4
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
# Some tests open gRPC channels in this process (grpcio), and many start subprocesses. With
# gRPC's fork support on (grpcio's default), ~1 child in 10 started with a preexec_fn dies of
# SIGABRT before exec ("epoll_wait error: Bad file descriptor", grpc/grpc#43055).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import pytest  # noqa: E402
import ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray for this module's runs (2 CPUs, like this machine); stopped after. A Ray
    of its own: with no address, ray.init joins the cluster /tmp/ray/ray_current_cluster names
    (the last one `ray start` or cluster_utils started on this machine) and fails on num_cpus."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def launch(*args, timeout=300, env=None):
    """Run `python launch.py ARGS` as a user would; return the CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def gone(pid: int) -> bool:
    """The process is gone (or a zombie: gone in all but name)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until(condition, within_s: float) -> bool:
    """Poll `condition` every 0.1 s until it holds or `within_s` pass; whether it held."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def run_one(log=lambda line: None, checkpoints=None, **settings):
    """One trial on a slice of its own, on the connected Ray, as `launch.py` runs it (settings
    named as the flags; checkpoints in memory, or written to the folder `checkpoints`; the run's
    lines to `log`). Returns (launcher.ProgramRun, the report a single run prints)."""
    from ymxb import experiment, report
    from ymxb.config import Recovery, SliceSpec, TrialSpec

    spec = SliceSpec(**{k: settings.pop(k) for k in SliceSpec.fields() if k in settings})
    recovery = Recovery(**{k: settings.pop(k) for k in Recovery.fields() if k in settings})
    outcome = experiment.run(experiment.plan([(spec, TrialSpec(**settings))], None), None, log,
                             recovery=recovery, checkpoints=checkpoints)
    return outcome.last_run, report.build(outcome.records[0], outcome.last_run, 0.0, restarts=outcome.restarts)


def pids_of(temp: str, marker: str):
    """Processes with `marker`=`temp` in their environment or a file open under `temp`, the
    folder of a Ray cluster a test started (Ray's agents and workers rewrite their command line
    over their environment, but keep their logs open there)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"{marker}={temp}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
                continue
            if any(os.readlink(fd).startswith(temp + "/") for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def stop_processes_of(temp: str, marker: str) -> None:
    """Kill every process of the cluster a test started in `temp` (`pids_of`), and see them
    gone (never `ray stop`: it kills every Ray on the machine)."""
    deadline = time.monotonic() + 30
    while True:
        pids = [p for p in pids_of(temp, marker) if not gone(p)]
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    assert not pids, f"processes of the test's Ray cluster in {temp} left running: {pids}"

