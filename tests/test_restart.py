"""Surviving host loss with real processes, really killed: the run restarts the slice, goes on
from the driver's last checkpoint, verifies, and ends with params bit-identical to a clean run
of the same flags."""

import glob
import json
import os
import re
import signal
import time

import numpy as np
import pytest

from conftest import Background, gone, launch, run_one, hooks
from ymxb.driver import checkpoint
from ymxb.errors import Cause, HostFailure, UsageError
from ymxb.testing import FAULT_ENV, FAULT_ONCE_ENV

# 20 compiled calls of 100 steps at 2 x 2, a checkpoint after each. The runs below are
# interrupted after a checkpoint (found by polling every 0.1 s): each of their calls starts
# 0.3 s late (a test fault), so 5 s of training or more are still to go then, on any machine.
FLAGS = ("--hosts", 2, "--devices-per-host", 2, "--steps", 2000, "--json")
SLOW = "slow:all:train:0.3"


@pytest.fixture(scope="module")
def clean():
    """The uninterrupted run every interrupted one must match, bit for bit (once per module):
    `clean.start()` sets it going in the background, `clean.report()` waits for its report
    (starting it first if need be)."""
    run = Clean()
    yield run
    if run.run is not None and run.run.proc.poll() is None:  # a test failed before reading it
        run.run.send_signal(signal.SIGKILL)
        run.run.finish()


class Clean:
    def __init__(self):
        self.run, self.rep = None, None

    def start(self) -> None:
        if self.run is None:
            self.run = Background(*FLAGS)

    def report(self) -> dict:
        if self.rep is None:
            self.start()
            code, out, err = self.run.finish()
            assert code == 0, err[-3000:]
            self.rep = json.loads(out)
        return self.rep


def _checkpoint_past(folder: str, step: int, within_s: float = 120) -> int:
    """Wait until the checkpoint in `folder` is past `step`; its step."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for path in glob.glob(os.path.join(folder, "*" + checkpoint.SUFFIX)):
            ckpt = checkpoint.read(path)
            if ckpt and ckpt.step > step:
                return ckpt.step
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint past step {step} in {folder} within {within_s} s")


def _same_params(run: dict, clean: dict) -> None:
    assert run["verified"], run["checks"]
    assert [h["params"] for h in run["hosts"]] == [h["params"] for h in clean["hosts"]]
    assert [h["loss_history"] for h in run["hosts"]] == [h["loss_history"] for h in clean["hosts"]]


def test_the_coordinator_killed_then_a_host_stopped_the_run_restarts_twice_and_matches(clean, tmp_path):
    run = Background(*FLAGS, "--timeout", 8, "--checkpoint-dir", tmp_path, env={FAULT_ENV: SLOW})
    coordinator, _ = run.pids(1)
    first = _checkpoint_past(tmp_path, 0)
    os.kill(coordinator, signal.SIGKILL)  # host 0: the JAX coordinator
    _, stopped = run.pids(2)
    second = _checkpoint_past(tmp_path, first)
    os.kill(stopped, signal.SIGSTOP)  # alive but stuck: found by the progress check
    clean.start()  # meanwhile: finding the stopped host is ~13 s of waiting (--timeout, then a reply)
    code, out, err = run.finish()
    assert code == 0, err
    rep = json.loads(out)
    _same_params(rep, clean.report())
    restarts = rep["restarts"]
    assert [(r["host"], r["pid"], r["cause"], r["phase"]) for r in restarts] == [
        (0, coordinator, "died", "training"), (1, stopped, "hung", "training")]
    assert restarts[0]["resumed_step"] >= first and restarts[1]["resumed_step"] >= second
    assert all(r["lost_s"] > 0 and r["steps_redone"] >= 0 for r in restarts)
    assert gone(coordinator) and gone(stopped)  # the stopped one too: SIGKILL reaches it
    assert "restarting the slice (restart 2 of 2)" in err
    assert os.listdir(tmp_path) == []  # the run is done: nothing to resume


def test_a_host_dying_in_initialize_then_another_killed_the_run_matches(clean, tmp_path):
    once = tmp_path / "fault-struck"
    folder = tmp_path / "checkpoints"
    run = Background(*FLAGS, "--checkpoint-dir", folder, env={FAULT_ENV: f"die:1:initialize,{SLOW}",
                                                              FAULT_ONCE_ENV: once})
    victim, _ = run.pids(1)  # a slice is listed once initialised: the second one started
    assert os.path.exists(once)  # the first slice's host 1 died in initialize
    _checkpoint_past(folder, 0)
    os.kill(victim, signal.SIGKILL)
    code, out, err = run.finish()
    assert code == 0, err
    rep = json.loads(out)
    _same_params(rep, clean.report())
    assert [(r["host"], r["cause"], r["phase"]) for r in rep["restarts"]] == [
        (1, "died", "jax.distributed.initialize"), (0, "died", "training")]
    assert rep["restarts"][0]["resumed_step"] == 0


def test_a_driver_killed_mid_run_is_finished_by_resume(clean, tmp_path):
    run = Background(*FLAGS, "--checkpoint-dir", tmp_path, env={FAULT_ENV: SLOW})
    run.pids(1)
    step = _checkpoint_past(tmp_path, 0)
    run.send_signal(signal.SIGKILL)  # the driver: its reaper stops the rest
    run.finish()

    other = launch(*FLAGS, "--lr", 0.2, "--resume", tmp_path)
    assert other.returncode == 2 and other.stdout == ""
    assert other.stderr.strip().splitlines()[-1] == (
        f"launch.py: error: --resume {tmp_path}: its checkpoint is of another run; give the flags "
        f"that wrote it (lr: 0.1 there, 0.2 here)")
    other = launch(*FLAGS, "--steps", 5000, "--seed", 3, "--resume", tmp_path)
    assert other.returncode == 2 and "(seed: 0 there, 3 here; steps: 2000 there, 5000 here)" in other.stderr

    result = launch(*FLAGS, "--resume", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _same_params(json.loads(result.stdout), clean.report())
    resumed = int(re.search(r"going on from the checkpoint at step (\d+)", result.stderr).group(1))
    assert resumed >= step > 0
    assert os.listdir(tmp_path) == []

    again = launch(*FLAGS, "--resume", tmp_path)
    assert again.returncode == 2 and "it holds no checkpoint" in again.stderr


def test_faults_on_every_attempt_stop_after_exactly_the_budget(local_ray, monkeypatch):
    hooks(monkeypatch, {FAULT_ENV: "die:1:initialize"})
    with pytest.raises(HostFailure) as failure:
        run_one(hosts=2, devices_per_host=1, timeout=20, steps=100, max_restarts=1)
    message = str(failure.value)
    assert message.endswith("(the budget is spent: --max-restarts 1)"), message
    assert failure.value.host == 1 and failure.value.cause is Cause.DIED


def test_recovery_flags_are_checked_before_launch():
    for flag, value in (("--max-restarts", -1), ("--checkpoint-every", 0)):
        result = launch(flag, value)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().startswith(f"launch.py: error: {flag} must be")
    with pytest.raises(UsageError, match="--max-preemptions must be an integer >= 0"):
        from ymxb.spec.settings import Recovery
        Recovery.resolve(max_preemptions=1.5)


@pytest.mark.parametrize("parallel", ["pmap", "sharding"])
@pytest.mark.parametrize("ensemble,optimizer,model,options", [
    (0, "adam", "pure", {}), (6, "adam", "haiku", {}),
    (0, "sgd", "pure", {"batch_size": 64, "momentum": 0.5, "schedule": "cosine"}),
    (6, "adamw", "haiku", {"batch_size": 32, "weight_decay": 0.01})])
def test_training_resumed_from_a_written_checkpoint_is_bit_identical(tmp_path, parallel, ensemble, optimizer, model,
                                                                     options):
    """In one process: the hosts' pieces assembled, written, read back and restored give
    exactly the run that never stopped (padded ensemble members included; minibatches drawn
    after the restore as they were before: from the step the optimiser's state counts)."""
    from ymxb.spec.settings import Program, SliceSpec, TrialSpec
    from ymxb.protocol import CheckpointPiece
    from ymxb.host.train import train_host, train_stream

    trials = [TrialSpec.resolve(parallel=parallel, ensemble=ensemble, optimizer=optimizer, model=model, lr=lr,
                                steps=300, steps_per_call=50, **options) for lr in (0.05, 0.1)]
    program = Program.of(SliceSpec(hosts=1, devices_per_host=4), trials)
    whole = train_host(program)
    pieces = checkpoint.Assembler(program, hosts=1)
    taken = [pieces.add(0, item) for item in train_stream(program, checkpoint_every=2)
             if isinstance(item, CheckpointPiece)]
    assert [c.step for c in taken] == [100, 200]  # none after the last call
    path = str(tmp_path / checkpoint.name_of(program))
    checkpoint.write(path, taken[0])
    *_, last = train_stream(program, resume=checkpoint.read(path))
    for key in ("entry", "params", "init", "loss_entry", "losses"):
        np.testing.assert_array_equal(getattr(last, key), getattr(whole, key), err_msg=key)


def test_removing_a_checkpoint_takes_the_temporary_file_a_killed_writer_left(tmp_path):
    path = str(tmp_path / "p.ckpt.npz")
    checkpoint.write(path, checkpoint.Checkpoint(100, [np.zeros(2)], np.zeros((1, 100)), {}))
    (tmp_path / "p.ckpt.npz.4242.tmp").write_bytes(b"half a checkpoint")  # its writer was killed
    (tmp_path / "other.ckpt.npz").write_bytes(b"")  # another program's: kept
    checkpoint.remove(path)
    assert os.listdir(tmp_path) == ["other.ckpt.npz"]
