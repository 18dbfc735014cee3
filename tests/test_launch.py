"""`python launch.py` end to end, as a user runs it: embedded Ray, simulated slice, exit codes."""

import json
import os
import shutil
import signal
import subprocess
import tempfile

import numpy as np
import pytest

from conftest import Background, gone, launch
from ymxb.testing import FAULT_ENV


def _pids_using(folder: str):
    """Processes whose command line names `folder` (the run's Ray folder: its GCS, raylet and
    agents are started with it), judged among this run's processes only."""
    out = subprocess.run(["pgrep", "-f", folder], capture_output=True, text=True).stdout
    return set(out.split())


def test_json_run_is_verified_and_independently_checkable(tmp_path):
    dump = tmp_path / "d.npz"
    ray_tmp = tempfile.mkdtemp(prefix="t-", dir="/tmp")  # short: Ray's socket paths live under it
    # A stale multislice variable in the environment (hosts inherit it) is not passed on.
    result = launch("--hosts", 3, "--devices-per-host", 2, "--json", "--dump-data", dump,
                    env={"TMPDIR": ray_tmp, "MEGASCALE_NUM_SLICES": "4"})
    assert os.listdir(ray_tmp) == []  # a clean run removes its Ray folder
    os.rmdir(ray_tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    rep = json.loads(result.stdout)
    assert rep["verified"] is True and len(rep["hosts"]) == 3
    assert {h["global_devices"] for h in rep["hosts"]} == {6}
    assert [h["megascale"] for h in rep["hosts"]] == [{}] * 3 and rep["config"]["slices"] == 1
    assert {(h["params"]["m"], h["params"]["b"]) for h in rep["hosts"]} == {
        (rep["hosts"][0]["params"]["m"], rep["hosts"][0]["params"]["b"])}
    assert all(len(h["loss_history"]) == rep["config"]["steps"] for h in rep["hosts"])

    d = np.load(dump)
    assert d["x"].shape == d["y"].shape == (3 * rep["config"]["samples_per_host"],)
    design = np.stack([d["x"], np.ones_like(d["x"])], axis=1).astype(np.float64)
    m, b = np.linalg.lstsq(design, d["y"].astype(np.float64), rcond=None)[0]
    got = rep["hosts"][0]["params"]
    assert abs(got["m"] - m) <= rep["tol"] and abs(got["b"] - b) <= rep["tol"]

    assert all(gone(h["pid"]) for h in rep["hosts"])
    assert _pids_using(ray_tmp) == set()  # the embedded Ray is stopped
    assert "host 2/3: 2 local / 6 global cpu devices" in result.stderr  # identity lines


def test_diverging_run_exits_1_and_its_json_is_standard_json():
    result = launch("--hosts", 2, "--devices-per-host", 1, "--lr", 50, "--steps", 200, "--json")
    assert result.returncode == 1, result.stderr[-3000:]
    rep = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert rep["verified"] is False and rep["max_error"] is None and rep["hosts"][0]["params"]["m"] is None


def test_ctrl_c_stops_every_host_and_the_embedded_ray():
    ray_tmp = tempfile.mkdtemp(prefix="t-", dir="/tmp")
    # Each compiled call starts 0.05 s late (a test fault): a minute of training at least, on any machine.
    run = Background("--steps", 100000, env={"TMPDIR": ray_tmp, FAULT_ENV: "slow:all:train:0.05"})
    pids = run.pids()  # all four hosts have joined: training begins
    run.send_signal(signal.SIGINT)
    code, _, err = run.finish(timeout=60)
    assert code == 130 and "interrupted; all hosts stopped" in err
    assert len(pids) == 4 and all(gone(p) for p in pids)
    assert _pids_using(ray_tmp) == set()
    shutil.rmtree(ray_tmp)  # the checkpoint an interrupted run keeps
