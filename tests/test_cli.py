"""The command line as a user meets it: --help, bad input, an unreachable cluster."""

import socket
import time

import pytest

from conftest import launch

BAD_INPUT = [
    (["--hosts", "0"], "--hosts must be a positive integer"),
    (["--hosts", "-2"], "--hosts must be a positive integer"),
    (["--hosts", "two"], "argument --hosts: invalid int value"),
    (["--devices-per-host", "0"], "--devices-per-host must be a positive integer"),
    (["--samples-per-host", "0"], "--samples-per-host must be a positive integer"),
    (["--steps", "-1"], "--steps must be a positive integer"),
    (["--lr", "0"], "--lr must be a positive finite number"),
    (["--lr", "nan"], "--lr must be a positive finite number"),
    (["--lr", "inf"], "--lr must be a positive finite number"),
    (["--tol=-1e-3"], "--tol must be a positive finite number"),
    (["--timeout", "0"], "--timeout must be a positive finite number"),
    (["--noise", "nan"], "--noise must be finite"),
    (["--samples-per-host", "1000", "--devices-per-host", "3"],
     "--samples-per-host (1000) must be divisible by --devices-per-host (3)"),
    (["--model", "mlp"], "--model must be one of pure, haiku"),
    (["--optimizer", "adamx"], "--optimizer must be one of sgd, adam"),
    (["--parallel", "dp"], "--parallel must be one of pmap, sharding"),
    (["--ensemble", "6"], "--ensemble (6) must be divisible by the global device count (8 = 4 hosts x 2 devices): try --ensemble 8"),
    (["--ensemble=-8"], "--ensemble must be 0 (off) or a positive member count"),
    (["--platform", "quantum"], "--platform must be one of"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
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
    for flag in ("--hosts", "--devices-per-host", "--samples-per-host", "--true-m", "--true-b",
                 "--noise", "--seed", "--lr", "--steps", "--tol", "--timeout", "--address",
                 "--json", "--dump-data", "Exit codes"):
        assert flag in result.stdout


def test_unreachable_address_fails_fast_in_one_line():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = launch("--address", f"127.0.0.1:{port}")
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "cannot reach a Ray cluster" in result.stderr


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
    assert "nothing vmapped" in out
    flops = int(out.split("flops: ")[1].split()[0].replace(",", ""))
    assert flops > 1000  # 512 points a device, several flops each


def test_inspect_sharded_ensemble_shows_members_vmapped_and_no_collective():
    result = launch("inspect", "--devices-per-host", 2, "--model", "haiku", "--ensemble", 8,
                    "--parallel", "sharding")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "vmapped over the leading member axis" in out and "4 per device here (1 on the slice)" in out
    assert "['linear']['w']: (8, 1, 1)" in out
    assert "none: no data moves between devices in a step" in out


def test_inspect_rejects_bad_input_like_a_run():
    result = launch("inspect", "--ensemble", 3)
    assert result.returncode == 2 and result.stderr.startswith("launch.py: error: --ensemble (3)")
