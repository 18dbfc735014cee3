"""`launch.py results DIR --tensorboard OUT`: read back with TensorBoard's own reader."""

import math

import pytest

from conftest import launch, trial_record
from ymxb.results.record import trial_id
from ymxb.spec.settings import TrialSpec
from ymxb.results.store import Store


def _store(folder):
    """Two programs (sgd, adam) of two lr each; one adam trial diverged at step 2."""
    records = []
    for optimizer in ("sgd", "adam"):
        trials = [TrialSpec.resolve(optimizer=optimizer, lr=lr) for lr in (0.1, 0.3)]
        group = trial_id(_spec(), trials[0])
        for k, trial in enumerate(trials):
            curve = {"step": [0, 1, 2], "loss": [1.0, 0.5 / (k + 1), 0.25 / (k + 1)]}
            if optimizer == "adam" and k == 1:
                curve["loss"][2] = math.nan
            records.append(trial_record(_spec(), trial, group=group, loss_curve=curve, stopped_at=2 if k else None,
                                        stopped_by="rung 1" if k else None))
    folder.mkdir()
    Store(str(folder)).append(records)
    return records


def _spec():
    from ymxb.spec.settings import SliceSpec

    return SliceSpec(hosts=1, devices_per_host=1, platform="cpu-sim")


def test_each_trial_is_a_run_with_its_curve_settings_and_metrics_and_each_program_its_table(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    records = _store(tmp_path / "store")
    out = tmp_path / "tb"
    done = launch("results", tmp_path / "store", "--tensorboard", out, "--where", "lr<0.2 or optimizer==adam")
    assert done.returncode == 0, done.stderr
    assert f"3 trials written for TensorBoard: tensorboard --logdir {out}" in done.stderr
    shown = [r for r in records if r.config["lr"] < 0.2 or r.config["optimizer"] == "adam"]
    for r in shown:
        [run] = (out / r.group).glob(f"*{r.trial_id}")
        events = EventAccumulator(str(run))
        events.Reload()
        # The curve as stored, its non-finite point left out.
        want = [(s, v) for s, v in zip(r.loss_curve["step"], r.loss_curve["loss"]) if math.isfinite(v)]
        got = events.Scalars("loss")
        assert [e.step for e in got] == [s for s, _ in want]
        assert [e.value for e in got] == pytest.approx([v for _, v in want])
        metrics = {tag: events.Scalars(tag)[0].value for tag in events.Tags()["scalars"] if tag != "loss"}
        assert metrics["hparam/max_error"] == pytest.approx(r.max_error, rel=1e-6)  # float32, as every scalar
        assert metrics["hparam/verified"] == 1.0
        assert ("hparam/stopped_at" in metrics) == (r.stopped_at is not None)
        start = plugin_data_pb2.HParamsPluginData.FromString(
            events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
        if r.config["optimizer"] == "adam":  # two trials: lr varies (sgd shows one: nothing varies)
            assert dict(start.hparams)["lr"].number_value == r.config["lr"] and run.name.startswith("lr=")
    table = EventAccumulator(str(out / shown[-1].group))
    table.Reload()
    [text] = table.Tensors("trials/text_summary")
    assert "2 of 2 trials verified" in text.tensor_proto.string_val[0].decode()

    again = launch("results", tmp_path / "store", "--tensorboard", out)
    assert again.returncode == 2 and "the folder is not empty" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_without_tensorboardx_the_export_says_what_to_install(tmp_path):
    _store(tmp_path / "store")
    missing = tmp_path / "missing" / "tensorboardX"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text("raise ImportError('No module named tensorboardX')\n")
    done = launch("results", tmp_path / "store", "--tensorboard", tmp_path / "tb",
                  env={"PYTHONPATH": str(missing.parent)})
    assert done.returncode == 2 and "pip install 'ymxb[tensorboard]'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "tb").exists()
