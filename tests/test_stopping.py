"""Early stopping: the `stop:` block, the decisions it makes from a call's losses (pure), the
pieces of a run and a checkpoint it keeps (pure), and a sweep stopping trials, repacking the
rest, interrupted and resumed, against the same sweep without stopping, on real Ray."""

import json
import signal

import numpy as np
import pytest
import yaml

from conftest import Background, launch, wait_until
from ymxb.driver import checkpoint
from ymxb.results.store import DB, Store
from ymxb.spec import stopping, sweep
from ymxb.spec.settings import Program, SliceSpec, TrialSpec
from ymxb.errors import UsageError
from ymxb.testing import FAULT_ENV
from ymxb.protocol import HostResult

RULES = {"diverged": True, "rungs": {"every": 2, "keep": 0.5}}
# 12 trials in one program: lr 3 diverges in its first call; the rungs keep 5, then 3, then 2.
SWEEP = {"name": "stopping", "slice": {"hosts": 2, "devices_per_host": 1},
         "base": {"samples_per_host": 256, "steps": 200, "steps_per_call": 25},
         "grid": {"lr": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0], "seed": [0, 1]}}


def _parse(block):
    return sweep.parse({"stop": block}, "s.yaml").stop


def test_a_stop_block_is_parsed_with_its_defaults():
    assert _parse({"diverged": True, "converged": "1e-4", "rungs": {"every": 3, "keep": 0.34}}) == stopping.Rules(
        diverged=stopping.EXPLODED, converged=1e-4, every=3, keep=0.34, repack=0.5)
    assert _parse({"diverged": 100, "repack": 0.25}) == stopping.Rules(diverged=100.0, repack=0.25)
    assert sweep.parse({}, "s.yaml").stop is None


@pytest.mark.parametrize("block, message", [
    (3, "stop must be a mapping"),
    ({"divergd": True}, "unknown key 'divergd' in stop; valid: diverged, converged, rungs, repack"),
    ({"diverged": 0.5}, "stop: diverged must be true or a factor > 1"),
    ({"converged": "soon"}, "stop: converged must be true, false or a positive number"),
    ({"rungs": {"every": 0, "keep": 0.5}}, "stop: rungs: every must be a whole number of compiled calls >= 1"),
    ({"rungs": {"every": 2, "keep": 1.5}}, "stop: rungs: keep must be a share of the trials, 0 < x <= 1"),
    ({"rungs": {"every": 2, "keep": 0.5, "by": "error"}}, "stop: rungs: by must be loss"),
    ({"repack": 0}, "stop: repack must be a share"),
])
def test_a_bad_stop_block_is_one_line_naming_the_file(block, message):
    with pytest.raises(UsageError) as err:
        _parse(block)
    assert str(err.value).startswith("s.yaml: ") and message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_stop_block_on_the_command_line_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, "stop": {"rungs": {"every": 2}}}))
    done = launch("sweep", path, "--out", tmp_path / "out")
    assert done.returncode == 2 and "stop: rungs: keep must be a share" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_diverged_stops_a_non_finite_or_exploded_loss_and_converged_one_near_the_optimum():
    losses = np.array([[1.0, 0.5, 0.4], [1.0, np.nan, np.nan], [1.0, 2e4, 3.0], [1.0, 0.2, 0.1001]])
    rules = stopping.Rules(diverged=stopping.EXPLODED, converged=1e-3)
    stops = stopping.review(rules, losses, calls=1, optimal=0.1)
    assert [(s.trial, s.step, s.why) for s in stops] == [(1, 3, "diverged"), (2, 3, "diverged"), (3, 3, "converged")]
    assert stopping.review(stopping.Rules(), losses, calls=1, optimal=0.1) == []


def test_a_rung_keeps_the_best_share_of_those_no_other_rule_stopped_at_its_calls_only():
    last = np.array([0.5, 0.1, np.nan, 0.3, 0.2, 0.4])
    losses = np.stack([np.ones(6), last], axis=1)
    rules = stopping.Rules(diverged=stopping.EXPLODED, every=2, keep=0.5)
    assert [(s.trial, s.why) for s in stopping.review(rules, losses, calls=1, optimal=None)] == [(2, "diverged")]
    stops = stopping.review(rules, losses, calls=4, optimal=None)
    # 5 ranked (the NaN is diverged): ceil(2.5) = 3 kept, the best by their last loss: 1, 4, 3.
    assert [(s.trial, s.why) for s in stops] == [(0, "rung 2"), (2, "diverged"), (5, "rung 2")]
    one = stopping.review(stopping.Rules(every=1, keep=0.01), losses[:1], calls=1, optimal=None)
    assert one == []  # at least one is kept


def test_a_trial_loss_is_its_members_mean_and_repacking_waits_for_the_share():
    entry = np.arange(12, dtype=np.float32).reshape(6, 2)  # 2 trials x 2 members, 2 padding rows
    assert stopping.trial_losses(entry[:4], 2, 2).tolist() == [[1, 2], [5, 6]]
    rules = stopping.Rules(repack=0.5)
    assert [stopping.should_repack(rules, n, 8) for n in (0, 3, 4, 5, 8)] == [False, True, True, False, False]


def _ensemble_program(trials: int) -> Program:
    spec = SliceSpec(hosts=2, devices_per_host=2, platform="cpu-sim")
    return Program.of(spec, [TrialSpec.resolve(ensemble=3, seed=s) for s in range(trials)])


def test_a_checkpoint_of_some_trials_is_their_entries_padded_as_their_program_lays_them_out():
    whole = _ensemble_program(3)  # 9 entries padded to 12
    leaf = np.arange(whole.padded_entries * 2, dtype=np.float32).reshape(-1, 2)
    ckpt = checkpoint.Checkpoint(50, [leaf], leaf[:, :1].copy(), checkpoint.program_config(whole))
    two = Program.of(whole.slice, [whole.trials()[0], whole.trials()[2]])  # 6 entries padded to 8
    part = checkpoint.of_trials(ckpt, [0, 2], two)
    entries = [0, 1, 2, 6, 7, 8, 8, 8]
    assert part.leaves[0].tolist() == leaf[entries].tolist() and part.losses.tolist() == ckpt.losses[entries].tolist()
    assert part.step == 50 and part.config == checkpoint.program_config(two)


def test_a_host_result_of_some_trials_is_renumbered_as_their_program():
    # Ensembles of 2: entries 0-5 are trials 0-2; this host holds entries 2..5 and a padding entry 6.
    entry = np.array([2, 3, 4, 5, 6])
    result = HostResult(entry=entry, device=entry // 2, params=entry[:, None] * 1.0, init=-entry[:, None] * 1.0,
                        loss_entry=entry[:4], losses=np.stack([entry[:4] * 1.0] * 3, axis=1),
                        collective_axes=(1, 4), collective_devices=4, train_s=1.0, first_call_s=0.5)
    part = result.only([2], members=2)
    assert part.entry.tolist() == [0, 1] and part.params[:, 0].tolist() == [4, 5] and part.device.tolist() == [2, 2]
    assert part.loss_entry.tolist() == [0, 1] and part.losses[:, 0].tolist() == [4, 5]
    assert result.only([0], members=2).entry.tolist() == []


def _load(path):
    """The records of the store `path` (its trials.db), as --json gives them, in their order."""
    if not path.exists():
        return []
    store = Store(str(path.parent))
    return [json.loads(r.to_json()) for r in store.whole(list(store.load().values()))]


def test_a_sweep_stops_and_repacks_interrupted_and_resumed_with_the_params_of_one_without(tmp_path):
    plain, stopped = tmp_path / "plain.yaml", tmp_path / "stopped.yaml"
    plain.write_text(yaml.safe_dump(SWEEP))
    stopped.write_text(yaml.safe_dump({**SWEEP, "stop": RULES}))
    done = launch("sweep", plain, "--out", tmp_path / "plain")
    assert done.returncode in (0, 1), done.stderr[-3000:]
    without = {r["trial_id"]: r for r in _load(tmp_path / "plain" / DB)}
    curves = {r["trial_id"]: r["loss_curve"]["loss"] for r in without.values()}

    # Interrupted once a trial is stopped and recorded, and the running ones' checkpoint kept.
    out = tmp_path / "stopped"
    store, kept = out / DB, out / "checkpoints"
    run = Background("sweep", stopped, "--out", out, env={FAULT_ENV: "slow:all:train:0.3"})
    assert wait_until(lambda: (_load(store) and any(kept.glob("*.ckpt.npz")))
                      or run.proc.poll() is not None, 240), run.stderr
    run.send_signal(signal.SIGINT)
    code, _, err = run.finish(timeout=60)
    assert code == 130, err[-3000:]
    first = _load(store)

    code, _, err = Background("sweep", stopped, "--out", out).finish(timeout=300)
    assert code == 1, err[-3000:]  # lr 3 diverged; every other trial verified or stopped by a rung
    assert "going on from the checkpoint at step" in err and _load(store)[:len(first)] == first
    assert not any(kept.glob("*.ckpt.npz"))  # every record is in
    got = {r["trial_id"]: r for r in _load(store)}
    assert got.keys() == without.keys()
    why = {r["config"]["lr"]: (r["stopped_by"], r["stopped_at"]) for r in got.values() if r["config"]["seed"] == 0}
    assert why[3.0] == ("diverged", 25)
    rungs = [r for r in got.values() if (r["stopped_by"] or "").startswith("rung")]
    # 10 left after the first call; the rungs keep 5 (then a program of 5), 3, 2 (a program of 2).
    assert sorted(r["stopped_at"] for r in rungs) == [50] * 5 + [100] * 2 + [150]
    for tid, r in got.items():
        alone = without[tid]
        if r["stopped_at"] is None:  # ran to the end, repacked twice on the way: the same params
            assert [(m["m"], m["b"]) for m in r["members"]] == [(m["m"], m["b"]) for m in alone["members"]]
        elif r["stopped_by"] != "diverged":  # the losses of the same steps, to float32 round-off
            assert r["members"][0]["final_loss"] == pytest.approx(curves[tid][r["stopped_at"] - 1], rel=1e-6)
    for tid, r in got.items():  # every trial's params kept where it ended, stopped or not
        saved = np.load(out / "params" / f"{tid}.npz")
        assert (float(saved["m"]), float(saved["b"])) == (r["members"][0]["m"], r["members"][0]["b"]), tid
    shown = launch("results", out, "--where", "stopped_by==null", "--format", "csv")
    assert shown.returncode == 0 and len(shown.stdout.strip().splitlines()) == 1 + 2, shown.stderr
    table = launch("results", out)
    assert "rung 1@50" in table.stdout and "8 stopped by rungs" in table.stdout


def test_ensembles_in_sharding_mode_stop_and_repack_to_the_same_members(tmp_path):
    """Members spread over every device: a repack moves them between devices and hosts."""
    doc = {"name": "members", "slice": {"hosts": 2, "devices_per_host": 2},
           "base": {"samples_per_host": 256, "steps": 200, "steps_per_call": 25, "ensemble": 2,
                    "parallel": "sharding"},
           "grid": {"lr": [0.03, 0.1, 0.3, 3.0], "seed": [0, 1]}}
    got = {}
    for name, extra in (("plain", {}), ("stopped", {"stop": RULES})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**doc, **extra}))
        done = launch("sweep", path, "--out", tmp_path / name, "--json")
        assert done.returncode == 1, done.stderr[-3000:]  # lr 3 diverges
        got[name] = {t["trial_id"]: t for t in json.loads(done.stdout)["trials"]}
    assert "7 of 8 trials stopped early (2 diverged, 5 rung)" in done.stderr
    assert "the hosts computed 1,800 of 3,200 model-steps (56%)" in done.stderr  # 8 x 2 members x 200
    [survivor] = [t for t in got["stopped"].values() if t["stopped_at"] is None]
    assert survivor["members"] == got["plain"][survivor["trial_id"]]["members"]
    assert all(t["stopped_at"] == 25 for t in got["stopped"].values() if t["stopped_by"] == "diverged")
