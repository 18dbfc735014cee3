"""`launch.py` as a Ray job: `ray job submit --working-dir REPO -- python launch.py ...` against a
running head with its job server, as a user submits to a cluster.

The job's driver finds the cluster through RAY_ADDRESS (the job supervisor sets it to the GCS);
`ray job logs` show the run's lines and summary; `ray job submit` exits 0 for a job that
succeeded (or was stopped) and 1 for one that failed, and the driver's own exit code is the
job's `driver_exit_code`. `ray job stop` sends SIGTERM to the driver's process tree (which the
hosts are not part of: they are the raylet's workers) and our driver stops every host; a driver
still running RAY_JOB_STOP_WAIT_TIME_S (3) seconds later is SIGKILLed, and Ray then kills the
hosts itself, as actors of a driver that died.

The head is a real `ray start --head` on free ports, loopback only, with its own temp dir;
only its own processes are stopped afterwards (never `ray stop`: it kills every Ray here).
"""

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray._private.authentication.authentication_constants import (
    AUTHORIZATION_BEARER_PREFIX, AUTHORIZATION_HEADER_NAME)

from conftest import ROOT, _hooked, gone, stop_processes_of, wait_until
from ymxb.testing import HOSTS_FILE_ENV

MARKER = "YMXB_JOBS_TEST"  # in the environment of the head's processes: which ones are ours
SMALL_RUN = ("--hosts", 2, "--devices-per-host", 2, "--steps", 200, "--samples-per-host", 256)
UPLOAD_MAX_MIB = 5  # the repository as uploaded (.git, .venv and what .gitignore lists left out)


@pytest.fixture(scope="module")
def head():
    """A Ray head with its job server (dashboard on 127.0.0.1), 2 CPUs, on free ports and its own
    temp dir; at the end, only its own processes are killed, and seen gone."""
    temp = tempfile.mkdtemp(prefix="ymxb-jobs-", dir="/tmp")  # short: Ray's socket paths are long
    gcs, dashboard, client_server, agent = _free_ports(4)
    bin_dir = os.path.dirname(sys.executable)
    ray_cli = shutil.which("ray", path=bin_dir) or "ray"
    # None of this machine's Ray settings; `python` in a job is this interpreter (the job's shell
    # finds it on the head's PATH); token auth, as on a real cluster.
    client_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    client_env.update(PATH=bin_dir + os.pathsep + client_env.get("PATH", ""), RAY_AUTH_MODE="token")
    os.makedirs(f"{temp}/tmp")
    head_env = {**client_env, MARKER: temp,
                # What the head's processes leave in $TMPDIR (multiprocessing's pymp-* folders
                # when killed, a stopped run's checkpoint) goes with the head.
                "TMPDIR": f"{temp}/tmp",
                # Loopback only: Ray keeps the node address 127.0.0.1 (and binds its servers
                # there) only with multi-node clusters off (see ymxb/ray_cluster.py).
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    try:
        # The clients' token (and so the head's); on a machine that never ran Ray there is none
        # yet, and `ray start` does not make one.
        token = subprocess.run([ray_cli, "get-auth-token", "--generate"], env=client_env, capture_output=True,
                               text=True, timeout=60)
        assert token.returncode == 0, token.stderr[-2000:]
        started = subprocess.run(
            [ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
             # Ports that are otherwise fixed (10001, 52365): another Ray here may hold them.
             f"--ray-client-server-port={client_server}", f"--dashboard-agent-listen-port={agent}",
             "--num-cpus=2", f"--temp-dir={temp}/ray", "--disable-usage-stats",
             "--include-log-monitor=false"],  # it streams workers' output to drivers: ours take none
            env=head_env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        cluster = SimpleNamespace(url=f"http://127.0.0.1:{dashboard}", gcs=f"127.0.0.1:{gcs}", temp=temp,
                                  ray=ray_cli, env=client_env, token=token.stdout.strip())
        _wait_for_job_server(cluster, timeout=60)
        yield cluster
    finally:
        stop_processes_of(temp, MARKER)
        shutil.rmtree(temp, ignore_errors=True)


def ray_job(cluster, *args, timeout=60):
    """`ray job ARGS` against the head, as a user runs it; the CompletedProcess (output merged)."""
    return subprocess.run(_job_command(cluster, *args), cwd=ROOT, env=cluster.env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def _job_command(cluster, *args):
    """`ray job ARGS --address URL`: options before the entrypoint (after `--`), if any."""
    args = [str(a) for a in args]
    cut = args.index("--") if "--" in args else len(args)
    return [cluster.ray, "job", *args[:cut], "--address", cluster.url, *args[cut:]]


def submit_args(job_id, *flags, env=None):
    """`ray job submit`'s arguments for `python launch.py FLAGS` from this repository (`env`: the
    job's environment variables, its supervisor's too; with test hooks among them, launch.py
    with them installed: ymxb.testing.launch)."""
    runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env})] if env else []
    command = ["python", "-m", "ymxb.testing.launch"] if _hooked(env) else ["python", "launch.py"]
    return ["submit", "--submission-id", job_id, "--working-dir", ROOT, *runtime_env, "--", *command, *flags]


def job_info(cluster, job_id) -> dict:
    """The job's record from the job server's REST API (what `ray job status` shows)."""
    request = urllib.request.Request(f"{cluster.url}/api/jobs/{job_id}",
                                     headers={AUTHORIZATION_HEADER_NAME: AUTHORIZATION_BEARER_PREFIX + cluster.token})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)


def test_a_submitted_run_verifies_on_the_cluster(head):
    submitted = ray_job(head, *submit_args("ymxb-verified", *SMALL_RUN), timeout=240)
    assert submitted.returncode == 0, submitted.stdout[-3000:]
    info = job_info(head, "ymxb-verified")
    assert (info["status"], info["driver_exit_code"]) == ("SUCCEEDED", 0)
    logs = ray_job(head, "logs", "ymxb-verified")
    assert logs.returncode == 0, logs.stdout[-3000:]
    # It joined the running cluster (RAY_ADDRESS, set by the job supervisor), not an embedded Ray.
    assert f"launch.py: joined the Ray cluster at {head.gcs}\n" in logs.stdout
    assert len(re.findall(r"^host [01]/2: 2 local / 4 global cpu devices on .* \(127\.0\.0\.1\) pid \d+$",
                          logs.stdout, re.M)) == 2
    assert re.search(r"^VERIFIED \(max \|error\| \S+, tol 0\.0001\) in [\d.]+ s$", logs.stdout, re.M), logs.stdout
    assert "Traceback" not in logs.stdout
    # The upload was the repository's sources, not what Ray and .gitignore leave out.
    packages = Path(head.temp) / "ray" / "session_latest" / "runtime_resources" / "working_dir_files"
    [package] = [p for p in packages.glob("_ray_pkg_*") if p.is_dir()]
    assert (package / "launch.py").is_file() and (package / "ymxb" / "cli.py").is_file()
    assert not any((package / d).exists() for d in (".git", ".venv", "venv", "ymxb.egg-info"))
    size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
    assert size < UPLOAD_MAX_MIB * 2**20, f"the working dir uploaded {size / 2**20:.1f} MiB"


def test_a_failed_run_fails_the_job_with_our_one_line_error(head):
    submitted = ray_job(head, *submit_args("ymxb-no-tpu", "--platform", "tpu"), timeout=180)
    assert submitted.returncode == 1, submitted.stdout[-3000:]  # Ray's code for a FAILED job
    info = job_info(head, "ymxb-no-tpu")
    assert (info["status"], info["driver_exit_code"]) == ("FAILED", 2)
    assert info["message"].startswith("Job entrypoint command failed with exit code 2")
    logs = ray_job(head, "logs", "ymxb-no-tpu").stdout
    errors = [line for line in logs.splitlines() if line.startswith("launch.py: error:")]
    assert errors == ["launch.py: error: --platform tpu, but the cluster has no TPU slices (no node has the "
                      "ray.io/tpu-slice-name label)"], logs
    assert "Traceback" not in logs


# How long Ray's job supervisor waits, after `ray job stop`'s SIGTERM, before it SIGKILLs the driver
# (seconds; Ray's default 3). A job's own env_vars reach its supervisor.
STOP_WAIT = "RAY_JOB_STOP_WAIT_TIME_S"


def test_stopping_the_job_stops_every_host(head):
    # Time enough for our driver's SIGTERM path on this busy machine: that path is tested here.
    _, logs = _stop_while_training(head, "ymxb-stopped", {STOP_WAIT: "30"})
    assert "launch.py: terminated; all hosts stopped\n" in logs, logs[-3000:]


def test_a_driver_killed_at_once_by_the_stop_leaves_no_host(head):
    # A driver SIGKILLed right after the SIGTERM (as Ray does to one still running after 3 s):
    # Ray kills the actors of a driver that died, the hosts among them.
    _stop_while_training(head, "ymxb-killed", {STOP_WAIT: "0"}, devices_per_host=1)


def _stop_while_training(head, job_id, env, devices_per_host=2):
    """Submit a long run of 2 hosts, `ray job stop` it once they are up; check that the job is
    STOPPED and every host gone. Returns their pids and the job's log, as the submit tailed it."""
    hosts_file = Path(tempfile.mkdtemp(prefix="ymxb-hosts-")) / "hosts.jsonl"  # where the driver lists its hosts
    long_run = submit_args(job_id, "--hosts", 2, "--devices-per-host", devices_per_host, "--steps", 10**7,
                           env={**env, HOSTS_FILE_ENV: str(hosts_file)})
    submitted = subprocess.Popen(_job_command(head, *long_run), cwd=ROOT, env=head.env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = _lines_of(submitted)
    try:
        up = lambda: hosts_file.exists() and hosts_file.read_text().strip()
        assert wait_until(lambda: up() or submitted.poll() is not None, 180) and up(), "the hosts were not up"
        pids = [h["pid"] for h in json.loads(hosts_file.read_text().splitlines()[0])]
        assert not any(gone(pid) for pid in pids)
        stopped = ray_job(head, "stop", job_id, timeout=90)  # waits for the job to end
        assert stopped.returncode == 0, stopped.stdout[-3000:]
        assert wait_until(lambda: all(gone(pid) for pid in pids), 30), f"hosts {pids} still running after the job stopped"
        assert job_info(head, job_id)["status"] == "STOPPED"
        # Ray 2.60: `ray job submit` exits 1 only for a FAILED job; a stopped one gives 0.
        assert submitted.wait(timeout=60) == 0
    finally:
        if submitted.poll() is None:
            submitted.kill()
        shutil.rmtree(hosts_file.parent, ignore_errors=True)
    return pids, "".join(iter(lambda: lines.get(timeout=10), None))


def _lines_of(process) -> "queue.Queue":
    """The process's output lines, read by a thread (so every wait on them can be bounded);
    None once it ends."""
    lines = queue.Queue()

    def read():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _free_ports(n: int):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_for_job_server(cluster, timeout: float) -> None:
    """Until the job server answers (the dashboard may come up after `ray start` returns)."""
    def answers():
        try:
            request = urllib.request.Request(f"{cluster.url}/api/jobs/", headers={
                AUTHORIZATION_HEADER_NAME: AUTHORIZATION_BEARER_PREFIX + cluster.token})
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.status == 200
        except (OSError, urllib.error.URLError):
            return False

    assert wait_until(answers, timeout), f"the job server at {cluster.url} did not answer in {timeout:g} s"


def test_a_submitted_program_runs_on_every_host(head):
    submitted = ray_job(head, *submit_args("ymxb-program", "run", "examples/loops/train.py", "--hosts", 2,
                                           "--devices-per-host", 2, "--", "--steps", 20), timeout=240)
    assert submitted.returncode == 0, submitted.stdout[-3000:]
    logs = ray_job(head, "logs", "ymxb-program").stdout
    assert re.search(r"^final loss \S+ params [0-9a-f]{16}$", logs, re.M), logs[-3000:]
    assert "Traceback" not in logs
    assert job_info(head, "ymxb-program")["driver_exit_code"] == 0
