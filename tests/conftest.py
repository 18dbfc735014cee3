import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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
# Ctrl-C reaches the processes the tests start (launch.py runs interrupted by SIGINT) even when
# this one was started with SIGINT ignored (a background job of a non-interactive shell): a
# handled signal is reset to its default across exec, an ignored one stays ignored. So no
# child needs a preexec_fn (which forks a process whose threads JAX may hold locks in).
signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
import ray  # noqa: E402

from ymxb import testing  # noqa: E402
from ymxb.testing import HOSTS_FILE_ENV  # noqa: E402
from ymxb.ops.reaper import alive  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray for this module's runs (2 CPUs, like this machine); stopped after. A Ray
    of its own: with no address, ray.init joins the cluster /tmp/ray/ray_current_cluster names
    (the last one `ray start` or cluster_utils started on this machine) and fails on num_cpus.
    Ray forks to start its processes: modules that use it run (by name) before the ones that
    import JAX into this process (test_restart, test_steps, test_tasks), which warns of a fork."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _hooked(env) -> bool:
    """Whether `env` asks for test hooks (ymxb/testing/): then launch.py runs with them installed."""
    return any(name.startswith("YMXB_TEST_") for name in (env or {}))


def _command(env) -> list:
    return [sys.executable, "-m", "ymxb.testing.launch"] if _hooked(env) else [sys.executable, str(ROOT / "launch.py")]


def hooks(monkeypatch, env) -> None:
    """The test hooks of `env` (YMXB_TEST_* names) installed in this process, for this test."""
    from ymxb.driver import budget, slice as slices

    monkeypatch.setattr(slices, "HOOKS", slices.Hooks())
    monkeypatch.setattr(budget, "available", budget.available)
    testing.install(env)


def launch(*args, timeout=300, env=None):
    """Run `python launch.py ARGS` as a user would (with test hooks, where `env` names them);
    return the CompletedProcess."""
    return subprocess.run([*_command(env), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def gone(pid: int) -> bool:
    """The process is gone (or a zombie: gone in all but name)."""
    return not alive(pid)


def wait_until(condition, within_s: float) -> bool:
    """Poll `condition` every 0.1 s until it holds or `within_s` pass; whether it held."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


class Background:
    """`launch.py ARGS` started in the background as a user starts it (after `prefix`, e.g.
    `ip netns exec NS`): both pipes read by threads as they fill (a full pipe blocks the run),
    and the hosts of each slice it brings up read from the file the driver writes them to
    (names.HOSTS_FILE_ENV), not from its human lines."""

    def __init__(self, *args, env=None, prefix=()):
        self.hosts_file = Path(tempfile.mkdtemp(prefix="ymxb-hosts-")) / "hosts.jsonl"
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "ymxb.testing.launch", *map(str, args)], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, HOSTS_FILE_ENV: str(self.hosts_file), **(env or {})})
        self.lines, self.out, self._slices = [], [], []
        self.readers = [threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True),
                        threading.Thread(target=lambda: self.out.append(self.proc.stdout.read()), daemon=True)]
        for reader in self.readers:
            reader.start()

    @property
    def stderr(self) -> str:
        """What it wrote to stderr so far."""
        return "".join(list(self.lines))

    def slices(self) -> list:
        """The hosts of each slice it brought up so far (dataclasses.asdict of a SliceHost each)."""
        if self.hosts_file.exists():  # gone once finished: what it said is kept
            self._slices = [json.loads(line) for line in self.hosts_file.read_text().splitlines()]
        return self._slices

    def hosts(self, attempt: int = 1, within_s: float = 120) -> list:
        """The hosts of the `attempt`-th slice it brought up (1: the first), in process order,
        once they are all up (jax.distributed initialised: training begins)."""
        wait_until(lambda: len(self.slices()) >= attempt or self.proc.poll() is not None, within_s)
        slices = self.slices()
        assert len(slices) >= attempt, f"slice {attempt} did not come up: {self.stderr[-3000:]}"
        return slices[attempt - 1]

    def pids(self, attempt: int = 1) -> list:
        """The host processes of the `attempt`-th slice, by process index."""
        return [h["pid"] for h in self.hosts(attempt)]

    def send_signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 240):
        """Wait for it to end (killed after `timeout`); (exit code, stdout, stderr)."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.proc.kill()
            for reader in self.readers:
                reader.join(timeout=30)
            self.slices()
            shutil.rmtree(self.hosts_file.parent, ignore_errors=True)
        return self.proc.returncode, "".join(self.out), self.stderr


def run_one(log=lambda line: None, checkpoints=None, **settings):
    """One trial on a slice of its own, on the connected Ray, as `launch.py` runs it (settings
    named as the flags; checkpoints in memory, or written to the folder `checkpoints`; the run's
    lines to `log`). Returns (protocol.ProgramRun, the report a single run prints)."""
    from ymxb import api as experiment, plan
    from ymxb.results.views import report
    from ymxb.spec.settings import Recovery, SliceSpec, TrialSpec
    from ymxb.spec.sweep import single

    spec = SliceSpec.resolve({k: settings.pop(k) for k in SliceSpec.fields() if k in settings})
    recovery = Recovery.resolve({k: settings.pop(k) for k in Recovery.fields() if k in settings})
    outcome = experiment.run(plan.make(single(spec, TrialSpec.resolve(settings))), None, log,
                             options=experiment.Options(recovery, checkpoints))
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



def trained(*trials, devices: int = LOCAL_DEVICES):
    """A program of `trials` trained in this process (one host, `devices` CPU devices), as a
    slice would return it: a protocol.ProgramRun."""
    from ymxb.spec.settings import Program, SliceSpec
    from ymxb.protocol import HostRun, ProgramRun, SliceHost
    from ymxb.host.train import train_host

    program = Program.of(SliceSpec(hosts=1, devices_per_host=devices, platform="cpu-sim"), trials)
    host = SliceHost(host_index=0, hostname="vm", node_ip="127.0.0.1", pid=os.getpid(), node_id="n0",
                     process_index=0, process_count=1, local_devices=devices, global_devices=devices,
                     platform="cpu", device_kind="cpu", megascale={}, memory_available=None,
                     device_memory=None, slice=0)
    result = train_host(program)
    return ProgramRun(program, "cpu-sim", "127.0.0.1:1", (HostRun(host, result),), result.train_s, {})


def trial_record(spec=None, trial=None, **changes):
    """A trial's record as `judge` writes one, made by hand (for tests of what reads
    records); `changes` replace its fields."""
    from ymxb.results.record import Member, SCHEMA, TrialRecord, trial_config, trial_id
    from ymxb.spec.settings import SliceSpec, TrialSpec

    spec = spec or SliceSpec(hosts=1, devices_per_host=1, platform="cpu-sim")
    trial = trial or TrialSpec()
    tid = trial_id(spec, trial)
    record = TrialRecord(
        trial_id=tid, config=trial_config(spec, trial), verified=True, max_error=1e-6,
        solution={"m": 2.0, "b": -1.0}, optimal_loss=0.01,
        members=[Member({"m": 2.0, "b": -1.0}, 1e-6, 0.01, 40)],
        loss_curve={"step": [0, 1], "loss": [1.0, 0.5]}, checks=[], group=tid,
        slice=f"{spec.label()} {spec.platform}", group_trials=1, wall_s=1.0,
        ymxb_version="0.1.0", schema=SCHEMA)
    return TrialRecord(**{**record.__dict__, **changes})
