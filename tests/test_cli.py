"""The command line as a user meets it: --help, bad input, an unreachable cluster."""

import re
import socket
import subprocess
import sys

import pytest

from conftest import launch

BAD_INPUT = [
    (["--hosts", "0"], "--hosts must be a positive integer"),
    (["--hosts", "-2"], "--hosts must be a positive integer"),
    (["--hosts", "two"], "argument --hosts: invalid int value"),
    (["--devices-per-host", "0"], "--devices-per-host must be a positive integer"),
    (["--slices", "0"], "--slices must be a positive integer"),
    (["--address", "http://127.0.0.1:8265"], "is a dashboard's URL, not a cluster's GCS"),
    (["--samples-per-host", "-1"], "--samples-per-host must be a positive integer (or 0: all of a task's fixed dataset)"),
    (["--samples-per-host", "0"], "--samples-per-host 0 (all of a task's fixed dataset) is for a task that gives one"),
    (["--steps", "-1"], "--steps must be a positive integer"),
    (["--lr", "0"], "--lr must be a positive finite number"),
    (["--lr", "nan"], "--lr must be a positive finite number"),
    (["--lr", "inf"], "--lr must be a positive finite number"),
    (["--tol=-1e-3"], "--tol must be a positive finite number"),
    (["--timeout", "0"], "--timeout must be a positive finite number"),
    (["--noise", "nan"], "--noise must be a finite number"),
    (["--samples-per-host", "1000", "--devices-per-host", "3"],
     "--samples-per-host (1000) must be divisible by --devices-per-host (3)"),
    (["--model", "mlp"], "--model must be one of pure, haiku"),
    (["--optimizer", "adamx"], "--optimizer must be one of sgd, adam"),
    (["--parallel", "dp"], "--parallel must be one of pmap, sharding"),
    (["--ensemble=-8"], "--ensemble must be 0 (off) or a positive member count"),
    (["--platform", "quantum"], "--platform must be one of"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295"),
    (["--seed", "99999999999999999999"], "--seed must be an integer from 0 to 4294967295"),
    (["--data-seed", "-1"], "--data-seed must be an integer from 0 to 4294967295"),
    (["--noise", "1e30"], "the loss (its square) would overflow float32"),
    (["--true-m", "1e38"], "the loss (its square) would overflow float32"),
    (["--samples-per-host", str(10**11)], "lower --samples-per-host, or run on a cluster"),
    (["--ensemble", str(2**30)], "lower --ensemble, or run on a cluster"),
    (["--dump-data", "/proc/x.npz"], "cannot write --dump-data '/proc/x.npz'"),
    (["--dump-data", "/tmp"], "--dump-data '/tmp' is a folder; give a file path such as '/tmp/data.npz'"),
    (["--save-params", "/proc/p.npz"], "cannot write --save-params '/proc/p.npz'"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = launch(*args)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("launch.py: error: ") and message in lines[0]


def test_help_explains_every_flag():
    result = launch("--help")
    assert result.returncode == 0
    for flag in ("--hosts", "--slices", "--devices-per-host", "--samples-per-host", "--true-m", "--true-b",
                 "--noise", "--seed", "--lr", "--steps", "--tol", "--timeout", "--address",
                 "--json", "--dump-data", "Exit codes"):
        assert flag in result.stdout


def test_unreachable_address_fails_fast_in_one_line():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = launch("--address", f"127.0.0.1:{port}", timeout=60)  # seconds, not Ray's minutes of retries
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "cannot reach a Ray cluster" in result.stderr


def test_an_address_where_something_else_listens_fails_in_seconds():
    server = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = re.search(r"port (\d+)", server.stdout.readline()).group(1)
        result = launch("--address", f"127.0.0.1:{port}", timeout=60)  # seconds, not minutes
    finally:
        server.kill()
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"--address 127.0.0.1:{port}: something listens there, but it is not a Ray cluster" in result.stderr


def test_ray_address_from_the_environment_is_used(tmp_path):
    result = launch(env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert result.returncode == 2 and "127.0.0.1:1" in result.stderr


def test_unwritable_dump_path_is_a_usage_error(tmp_path):
    result = launch("--dump-data", tmp_path / "no" / "such" / "dir" / "d.npz")
    assert result.returncode == 2 and "cannot write --dump-data" in result.stderr


def test_inspect_pmap_shows_the_cross_device_mean():
    result = launch("inspect", "--devices-per-host", 2)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "## jaxpr of one training step" in out and "scan[" in out
    assert "psum over axes ('devices',)" in out  # pmean of (loss, grads)
    assert "all-reduce replica_groups={{0,1}}" in out
    assert "vmapped over the leading trial axis" in out and "1 trial here" in out
    flops = int(out.split("flops: ")[1].split()[0].replace(",", ""))
    assert flops > 1000  # 512 points a device, several flops each


def test_inspect_sharded_ensemble_shows_members_vmapped_and_no_collective():
    result = launch("inspect", "--devices-per-host", 2, "--model", "haiku", "--ensemble", 8,
                    "--parallel", "sharding")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "vmapped over the leading member axis" in out and "4 per device here (1 on the slice)" in out
    assert "['linear']['w']: (8,)" in out
    assert "none: no data moves between devices in a step" in out


def test_inspect_rejects_bad_input_like_a_run():
    result = launch("inspect", "--devices-per-host", 3, "--samples-per-host", 1000)
    assert result.returncode == 2 and result.stderr.startswith("launch.py: error: --samples-per-host (1000)")


def test_testbed_refuses_in_one_line_where_it_cannot_work():
    no_ip = subprocess.run([sys.executable, "-m", "ymxb.ops.testbed", "up", "--cpu", "1"], capture_output=True,
                           text=True, env={"PATH": "/nonexistent"}, timeout=60)
    assert no_ip.returncode == 2 and no_ip.stdout == ""
    assert no_ip.stderr.strip().count("\n") == 0 and no_ip.stderr.startswith("testbed: error: the test bed needs")
