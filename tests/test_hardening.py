"""The failure paths of `python launch.py`, with real processes, real signals and real sockets:
every failure bounded and named, stdout clean, nothing left running or lying around."""

import contextlib
import glob
import ipaddress
import json
import os
import re
import shutil
import signal
import tempfile
import time
import types

import pytest

from conftest import Background, gone, launch, wait_until
from ymxb.testing import FAULT_ENV


# The runs the tests below stop or kill while they train: 1000 compiled calls, each starting
# 0.05 s late (a test fault), so they train for a minute or more on any machine.
LONG = {FAULT_ENV: "slow:all:train:0.05"}


@pytest.fixture
def tmpdir_env():
    """A short $TMPDIR of the test's own (Ray's socket paths under it must stay short): the
    embedded Ray's folder lands there, so the test sees exactly what its run left."""
    path = tempfile.mkdtemp(prefix="t-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _until_first_checkpoint(tmpdir: str, within_s: float = 60) -> None:
    """Wait until the run with $TMPDIR `tmpdir` has written its first checkpoint (a compiled
    call done on every host: training under way, gloo's sockets open)."""
    wait_until(lambda: glob.glob(f"{tmpdir}/ymxb-ckpt-*/*.ckpt.npz"), within_s)


def _descendants(root: int):
    """(pid, start time) of every living descendant of `root`: the processes this run started."""
    from ymxb.ops.reaper import descendants

    return descendants(root)


def _all_gone(procs, within_s: float) -> list:
    """Those of `procs` still running after `within_s` seconds (the same process: pid + start)."""
    from ymxb.ops.reaper import start_time

    deadline = time.monotonic() + within_s
    while True:
        left = [(p, s) for p, s in procs if start_time(p) == s]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _listening(pids) -> list:
    """(address, pid) of every TCP socket that one of `pids` listens on (from /proc)."""
    owner = {}
    for pid in pids:
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owner[link[8:-1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in owner:  # 0A: LISTEN
                    found.append((_address(fields[1].split(":")[0]), owner[fields[9]]))
    return found


def _address(hex_ip: str):
    """/proc/net/tcp's address: 32-bit words, each in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_ip)
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def _loopback(address) -> bool:
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


@pytest.fixture(scope="module")
def training():
    """One embedded run (2 x 2, far from done) with a $TMPDIR of its own, as seen once training
    is under way: its hosts, the run's processes and the sockets they listen on. The tests
    below look at it, and one stops it with SIGTERM."""
    tmpdir = tempfile.mkdtemp(prefix="t-", dir="/tmp")  # short: Ray's socket paths live under it
    run = Background("--hosts", 2, "--devices-per-host", 2, "--steps", 100000, env={"TMPDIR": tmpdir, **LONG})
    try:
        hosts = run.hosts()
        _until_first_checkpoint(tmpdir)
        started = _descendants(run.proc.pid)
        sockets = _listening([run.proc.pid] + [p for p, _ in started])
        yield types.SimpleNamespace(run=run, tmpdir=tmpdir, hosts=hosts, started=started, sockets=sockets)
    finally:
        if run.proc.poll() is None:  # not stopped by a test
            run.send_signal(signal.SIGTERM)
            run.finish(timeout=60)
        shutil.rmtree(tmpdir, ignore_errors=True)


def test_an_embedded_run_listens_on_loopback_only(training):
    sockets = training.sockets
    assert {pid for _, pid in sockets} >= {h["pid"] for h in training.hosts}  # the coordinator, gloo: each host listens
    assert len(sockets) >= 6  # and GCS, raylet, agents, workers
    assert [(str(a), pid) for a, pid in sockets if not _loopback(a)] == []
    assert {h["node_ip"] for h in training.hosts} == {"127.0.0.1"}  # Ray's node address: loopback


def test_sigterm_stops_every_host_like_ctrl_c(training):
    run = training.run
    run.send_signal(signal.SIGTERM)
    code, out, err = run.finish(timeout=60)
    assert code == 143, err
    assert err.strip().splitlines()[-2] == "launch.py: terminated; all hosts stopped", err
    assert "SIGTERM received" not in err  # no C++ stack dump from Ray
    assert out == ""
    pids = [h["pid"] for h in training.hosts]
    assert len(pids) == 2 and all(gone(p) for p in pids)
    assert _all_gone(training.started, within_s=10) == []
    # Interrupted, not failed: its Ray folder is removed; its checkpoint is kept, and named.
    [kept] = os.listdir(training.tmpdir)
    assert kept.startswith("ymxb-ckpt-") and f"--resume {os.path.join(training.tmpdir, kept)}" in err


def test_nothing_outlives_a_driver_killed_with_sigkill(tmpdir_env):
    run = Background("--hosts", 2, "--devices-per-host", 1, "--steps", 100000, env={"TMPDIR": tmpdir_env, **LONG})
    run.hosts()
    started = _descendants(run.proc.pid)
    names = {p: open(f"/proc/{p}/cmdline").read()[:60] for p, _ in started if os.path.exists(f"/proc/{p}")}
    assert any("DashboardAgent" in n for n in names.values()), names  # the ones that used to linger
    run.send_signal(signal.SIGKILL)
    run.finish(timeout=30)
    left = _all_gone(started, within_s=10)
    assert left == [], [names.get(p) for p, _ in left]


def test_a_stopped_host_is_named_as_the_one_not_answering(tmpdir_env):
    # --timeout bounds the start too: generous, so a busy machine's slow start is not the failure.
    run = Background("--hosts", 3, "--devices-per-host", 1, "--steps", 100000, "--timeout", 20, "--max-restarts", 0,
                     env={"TMPDIR": tmpdir_env, **LONG})  # a failure: its Ray folder is kept, in the test's own
    stopped = run.pids()[1]
    _until_first_checkpoint(tmpdir_env)  # training under way
    os.kill(stopped, signal.SIGSTOP)
    try:
        code, _, err = run.finish(timeout=120)  # bounded: --timeout, the poll, the kill
    finally:
        with pytest.raises(ProcessLookupError):  # the run killed it (SIGKILL works on stopped ones)
            os.kill(stopped, signal.SIGCONT)
    assert code == 2, err
    error = [line for line in err.splitlines() if line.startswith("launch.py: error:")]
    assert len(error) == 1, err
    assert re.search(rf"training stalled: host 1 \([\d.]+ pid {stopped}\) stopped answering", error[0]), error[0]
    assert "host 0" not in error[0] and "host 2" not in error[0]  # only the culprit is named


def test_a_run_longer_than_the_timeout_trains_on_while_it_progresses():
    # Each piece of a host's work (placing, compiling, every call) starts 0.6 s late (a test
    # fault): 50 calls take over 30 s, half as long again as the timeout, on any machine, while
    # each host completes a piece every second or so (setting up, under load, in a few).
    result = launch("--hosts", 2, "--devices-per-host", 1, "--steps", 2000, "--steps-per-call", 40,
                    "--timeout", 20, "--json", env={FAULT_ENV: "slow:all:train:0.6"})
    assert result.returncode == 0, result.stderr[-2000:]
    rep = json.loads(result.stdout)
    assert rep["verified"]
    assert rep["phases_s"]["train"] > rep["config"]["timeout"]  # longer than --timeout, as a whole


def test_a_call_slower_than_the_timeout_says_the_run_is_slow(tmpdir_env):
    # Every call starts 10 minutes late on every host (a test fault): none completes within the
    # 15 s timeout, while every host answers progress queries; the run is stopped then.
    result = launch("--hosts", 2, "--devices-per-host", 1, "--steps-per-call", 500, "--timeout", 15,
                    env={FAULT_ENV: "slow:all:train:600", "TMPDIR": tmpdir_env})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the run is slow, not hung; raise --timeout or lower --steps-per-call (now 500)" in result.stderr


def test_a_failed_run_keeps_rays_logs_and_says_where(tmpdir_env):
    result = launch("--hosts", 2, "--devices-per-host", 1, "--json", "--max-restarts", 0,
                    env={FAULT_ENV: "die:1:train", "TMPDIR": tmpdir_env})
    assert result.returncode == 2
    # Ray says "(raylet) A worker died ..." (it used to land on stdout): stderr only.
    assert result.stdout == "" and "(raylet)" in result.stderr
    # What the host said last, from Ray's log of it.
    assert "launch.py: the last lines host 1 (127.0.0.1 pid" in result.stderr
    assert "  | ymxb test fault: host 1 dies in train\n" in result.stderr
    kept = re.search(r"Ray's logs of this run are kept in (\S+)", result.stderr).group(1)
    assert kept.startswith(tmpdir_env) and os.path.isdir(kept) and os.listdir(kept)
