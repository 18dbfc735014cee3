"""The results store on its own (no cluster): trial ids, records old and new, the lock, the
kept sweep files, the table and the plots."""

import dataclasses
import json
import os

import pytest
import yaml

from conftest import launch, trial_record as _record
from ymxb import plan
from ymxb.results.views import plots
from ymxb.results.record import SCHEMA, trial_id
from ymxb.results.views import table as trial_table
from ymxb.spec import sweep
from ymxb.spec.settings import SliceSpec, TrialSpec
from ymxb.errors import UsageError
from ymxb.results.store import Store

SPEC = SliceSpec(hosts=1, devices_per_host=1, platform="cpu-sim")


def _sweep_file(tmp_path, doc, name="s.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def _ids(tmp_path, doc):
    return plan.make(sweep.load(_sweep_file(tmp_path, doc))).ids


# Ids made by the ymxb of main 64ac210 (before ids were canonical), for trials whose values it
# already wrote canonically: stores written then must stay valid.
PINNED = [
    (SliceSpec(), TrialSpec(), "7cb4e11126e7"),  # `python launch.py`
    (SliceSpec(hosts=2, devices_per_host=2), TrialSpec(), "fd07fad9aef9"),
    (SliceSpec(slices=2, hosts=2, devices_per_host=2), TrialSpec(), "c482eb27d70c"),
    (SliceSpec(hosts=2, devices_per_host=1),
     TrialSpec.resolve(samples_per_host=256, steps=200, optimizer="adam", lr=0.3, seed=1), "c2e56a1f4716"),
    (SliceSpec(), TrialSpec.resolve(lr=1.0), "fb7dbbad7911"),
]


@pytest.mark.parametrize("spec,trial,tid", PINNED, ids=[p[2] for p in PINNED])
def test_ids_of_stores_written_before_stay_valid(spec, trial, tid):
    assert plan.make(sweep.single(spec, trial)).ids == [tid]


def test_a_trial_id_does_not_depend_on_how_a_value_is_written(tmp_path):
    base = {"slice": {"hosts": 1, "devices_per_host": 1}}
    one = _ids(tmp_path, {**base, "base": {"lr": 1}})
    assert one == _ids(tmp_path, {**base, "base": {"lr": 1.0}}) == _ids(tmp_path, {**base, "base": {"lr": "1e0"}})
    assert one == [trial_id(SPEC, TrialSpec.resolve(lr=1.0))]  # as `--lr 1` (a float flag) makes it
    # Defaults written out, or left out: the same trial.
    assert _ids(tmp_path, {**base, "base": {"true_m": 2, "noise": 0.1}}) == _ids(tmp_path, base)
    # The embedded simulation named, or detected: the same trial.
    assert _ids(tmp_path, {"slice": {**base["slice"], "platform": "cpu-sim"}}) == _ids(tmp_path, base)
    # And the duplicate check agrees with the ids: `lr: 1` and `lr: 1.0` are one trial.
    assert len(sweep.load(_sweep_file(tmp_path, {**base, "grid": {"lr": [1, 1.0]}})).trials) == 1


def test_a_slice_the_cluster_shapes_has_no_id_until_it_is_up():
    # On TPU (or a platform to detect on a cluster) the shape comes from the cluster: an id made
    # before would skip trials that never ran on a slice of another size.
    todo = plan.make(sweep.Sweep("t", ((SliceSpec(address="auto", platform="tpu"), TrialSpec()),
                                       (SliceSpec(address="auto", platform="cpu-sim"), TrialSpec()))))
    assert todo.ids[0] is None and todo.ids[1] == "7cb4e11126e7"
    assert todo.pending == 2
    with pytest.raises(ValueError, match="needs the slice it runs on"):
        trial_id(SliceSpec(platform="tpu"), TrialSpec())


def test_records_of_the_first_layout_are_found_under_todays_ids(tmp_path):
    store = Store(str(tmp_path))
    new = _record(trial=TrialSpec.resolve(lr=0.5))
    # As the first layout wrote them: `lr: 1` hashed as an int; a TPU trial's id made from its
    # slice before the platform shaped it; no platform for the simulation; no version or schema.
    old_int = {**json.loads(_record(trial=TrialSpec.resolve(lr=1.0)).to_json()), "trial_id": "cffdb89e7a18"}
    old_int["config"] = {**old_int["config"], "lr": 1, "platform": None}
    tpu = SliceSpec(hosts=2, devices_per_host=4, platform="tpu", address="auto")
    old_tpu = {**json.loads(_record(tpu).to_json()), "trial_id": "bb6282aecea2", "slice": "2x4 tpu"}
    for old in (old_int, old_tpu):
        del old["schema"], old["ymxb_version"], old["sweep_file"]
        for m in old["members"]:
            del m["diverged_step"]
    with open(tmp_path / "trials.jsonl", "w") as f:  # a store of the ymxb before trials.db
        f.write("".join(json.dumps(r) + "\n" for r in (old_int, old_tpu)))
    store.append([new])
    loaded = store.load()
    assert set(loaded) == {trial_id(SPEC, TrialSpec.resolve(lr=1.0)), trial_id(tpu, TrialSpec()),
                           new.trial_id}
    assert {r.config["platform"] for r in loaded.values()} == {"cpu-sim", "tpu"}
    assert loaded[new.trial_id].ymxb_version == "0.1.0" and loaded[new.trial_id].schema == SCHEMA


def test_a_store_written_by_a_newer_ymxb_is_refused_in_one_line(tmp_path):
    store = Store(str(tmp_path))
    store.append([_record(schema=SCHEMA + 1)])
    with pytest.raises(UsageError, match=r"trials.db, trial \w+: written by a newer ymxb .*upgrade ymxb"):
        store.load()


def test_a_corrupt_line_of_a_store_written_before_is_named_with_its_file_and_line(tmp_path):
    path = tmp_path / "trials.jsonl"
    path.write_text(_record(trial=TrialSpec.resolve(lr=0.5)).to_json() + "\n"
                    + '{"trial_id": "cut short by another wri\n'  # a complete line, not a record
                    + _record(trial=TrialSpec.resolve(lr=0.25)).to_json() + "\n")
    result = launch("results", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"launch.py: error: {path}, line 2: not a trial record "
                                     f"(Unterminated string starting at: line 1 column 14 (char 13)); "
                                     f"remove that line (its trial runs again) or restore it")


def test_a_second_sweep_on_one_store_is_refused_naming_the_holder(tmp_path):
    path = _sweep_file(tmp_path, {"slice": {"hosts": 1, "devices_per_host": 1}})
    out = tmp_path / "out"
    with Store(str(out)).locked():  # this process writes the store, as a sweep would
        result = launch("sweep", path, "--out", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"launch.py: error: {out} is in use by another sweep (pid {os.getpid()} "
                                     f"on {os.uname().nodename}): wait for it to end, or give this one another --out")
    with Store(str(out)).locked():  # the holder gone, the next one takes it
        pass


def test_rerunning_the_kept_sweep_file_works_and_each_version_is_kept(tmp_path):
    doc = {"name": "kept", "slice": {"hosts": 1, "devices_per_host": 1}, "grid": {"lr": [0.1, 0.2]}}
    store = Store(str(tmp_path / "out"))
    os.makedirs(store.directory)
    path = _sweep_file(tmp_path, doc)
    assert store.keep_sweep_file(sweep.load(path).as_run) == "sweep.yaml"
    assert store.keep_sweep_file(sweep.load(path).as_run) == "sweep.yaml"  # the same text: nothing new
    kept = os.path.join(store.directory, "sweep.yaml")
    assert store.keep_sweep_file(sweep.load(kept).as_run) == "sweep.yaml"  # the copy itself
    store.append([_record(trial=TrialSpec.resolve(lr=lr), sweep_file="sweep.yaml") for lr in (0.1, 0.2)])
    # Rerun the kept copy, as one would: everything is recorded, nothing runs.
    again = launch("sweep", kept, "--out", store.directory)
    assert again.returncode == 0, again.stderr
    assert "nothing to run" in again.stderr and "2 of 2 trials verified" in again.stdout
    # An edited file is a new version; the one before stays as it was.
    edited = _sweep_file(tmp_path, {**doc, "grid": {"lr": [0.1, 0.2, 0.4]}})
    assert store.keep_sweep_file(sweep.load(edited).as_run) == "sweep.1.yaml"
    assert store.sweep_files() == ["sweep.yaml", "sweep.1.yaml"]
    assert yaml.safe_load(open(kept)) == doc


def test_the_table_says_which_sweep_file_a_group_came_from_where_they_differ():
    one = _record(trial=TrialSpec.resolve(lr=0.5), sweep_file="sweep.yaml")
    two = _record(trial=TrialSpec.resolve(lr=0.5, steps=100), sweep_file="sweep.1.yaml")
    text = trial_table.table([one, two])
    assert f"group {one.group} (1x1 cpu-sim, 1 trials, from sweep.yaml)" in text
    assert f"group {two.group} (1x1 cpu-sim, 1 trials, from sweep.1.yaml)" in text
    assert "from sweep" not in trial_table.table([one])


def test_fit_draws_the_data_of_every_slice():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = SliceSpec(slices=2, hosts=2, devices_per_host=1, platform="cpu-sim")
    record = _record(spec, TrialSpec.resolve(samples_per_host=1000))
    fig = plots._fit(plt, [record])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    assert "data (2000 of 4000 points)" in labels  # 2 slices x 2 hosts x 1000


def test_the_loss_panels_name_the_tasks_reference_and_what_sets_each_program_apart():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def titles(records):
        fig = plots._loss(plt, records)
        found = fig._suptitle.get_text(), [ax.get_title() for ax in fig.axes if ax.get_visible()]
        plt.close(fig)
        return found

    line = [_record(trial=TrialSpec.resolve(lr=lr)) for lr in (0.1, 0.2)]
    assert titles(line)[0].startswith("Loss above the normal-equation optimum, a line per trial; varying: lr")
    mlp = [_record(trial=TrialSpec.resolve(task="examples.tasks.mlp:TASK", hidden=h, lr=lr), solution={},
                   optimal_loss=None) for h in (4, 8) for lr in (0.1, 0.2)]
    for r in mlp:  # a program per width, as the plan groups them
        r.group = f"g{r.config['hidden']}"
    suptitle, panels = titles(mlp)
    assert suptitle.startswith("Loss, a line per trial") and "normal" not in suptitle
    assert ["hidden=4" in panels[0], "hidden=8" in panels[1]] == [True, True], panels


def test_the_figures_are_drawn_again_only_when_what_they_show_changed(tmp_path):
    store = Store(str(tmp_path))
    records = [_record(trial=TrialSpec.resolve(lr=lr)) for lr in (0.1, 0.2)]
    store.append(records)
    folder = str(tmp_path / "plots")
    loss = os.path.join(folder, "loss.png")
    drawn = lambda rs: plots.draw(rs, folder, source=store)

    def marked() -> bool:
        with open(loss, "rb") as f:
            return f.read() == b"kept"

    assert loss in drawn(records)
    open(loss, "wb").write(b"kept")
    assert loss in drawn(records) and marked()  # nothing changed: not drawn again
    drawn(records[:1])  # other trials of the same store
    assert not marked()
    open(loss, "wb").write(b"kept")
    store.append([_record(trial=TrialSpec.resolve(lr=0.3))])
    drawn(records[:1])  # the store changed
    assert not marked()


def test_the_curves_are_kept_apart_and_read_only_when_asked_for(tmp_path):
    store = Store(str(tmp_path))
    records = [_record(trial=TrialSpec.resolve(lr=lr), loss_curve={"step": [0, 5], "loss": [lr, lr / 2]}) for lr in (0.1, 0.2)]
    store.append(records[:1])
    store.append([dataclasses.replace(records[1], loss_curve={"step": [0], "loss": [9.0]})])
    store.append(records[1:])  # the same trial again: the last one wins, in its place
    loaded = list(store.load().values())
    assert [r.loss_curve for r in loaded] == [None, None] and [r.trial_id for r in loaded] == [r.trial_id for r in records]
    assert [r.loss_curve for r in store.curves(loaded)] == [r.loss_curve for r in records]
    # A record of layout 2 held its own curve in its line: moved in, it keeps it.
    old = _record(trial=TrialSpec.resolve(lr=0.4), schema=2)
    other = tmp_path / "old"
    other.mkdir()
    (other / "trials.jsonl").write_text(old.to_json() + "\n")
    moved = Store(str(other))
    assert moved.curves([moved.load()[old.trial_id]])[0].loss_curve == old.loss_curve


def _stored(tmp_path, lrs):
    store = Store(str(tmp_path))
    records = [_record(trial=TrialSpec.resolve(lr=lr), checks=[{"name": "loss finite", "ok": True, "detail": f"lr {lr}"}])
               for lr in lrs]
    store.append(records)
    return store, records


def test_a_load_reads_the_rows_alone_and_whole_reads_the_rest(tmp_path):
    store, records = _stored(tmp_path, (0.1, 0.2))
    kept = list(Store(str(tmp_path)).load().values())
    assert [r.checks for r in kept] == [None, None]  # left to `whole`
    assert [len(r.members) for r in kept] == [1, 1] and [r.final_loss for r in kept] == [0.01, 0.01]
    assert [dataclasses.replace(r, checks=None, loss_curve=None) for r in records] == kept  # members read when asked
    assert Store(str(tmp_path)).whole(kept) == records
    more = _record(trial=TrialSpec.resolve(lr=0.3))
    store.append([more])
    assert list(store.load()) == [r.trial_id for r in records] + [more.trial_id]
    store.clear()  # --fresh
    assert store.load() == {} and os.path.isfile(store.path)


def test_a_store_written_before_is_moved_in_once_saying_so(tmp_path):
    records = [_record(trial=TrialSpec(lr=lr), checks=[{"name": "loss finite", "ok": True, "detail": "x"}])
               for lr in (0.1, 0.2)]
    # As the ymxb before trials.db wrote it: rows without their curves, the curves apart.
    (tmp_path / "trials.jsonl").write_text("".join(dataclasses.replace(r, loss_curve=None).to_json() + "\n"
                                                   for r in records))
    (tmp_path / "curves.jsonl").write_text("".join(json.dumps({"trial_id": r.trial_id, **r.loss_curve}) + "\n"
                                                   for r in records))
    (tmp_path / "sweep.yaml").write_text("name: old\n")
    first = launch("results", tmp_path, "--json")
    assert first.returncode == 0, first.stderr
    note = [line for line in first.stderr.splitlines() if "moved into" in line]
    assert note == [f"launch.py: 2 trials of {tmp_path / 'trials.jsonl'} moved into {tmp_path / 'trials.db'} "
                    f"(the old files kept as trials.jsonl.migrated, curves.jsonl.migrated)"]
    assert [t["checks"] for t in json.loads(first.stdout)["trials"]] == [r.checks for r in records]
    assert [t["loss_curve"] for t in json.loads(first.stdout)["trials"]] == [r.loss_curve for r in records]
    assert not (tmp_path / "trials.jsonl").exists() and (tmp_path / "trials.jsonl.migrated").exists()
    assert Store(str(tmp_path)).sweep_files() == ["sweep.yaml"]
    again = launch("results", tmp_path, "--json")  # once: nothing said the second time
    assert again.returncode == 0 and "moved into" not in again.stderr and again.stdout == first.stdout


def test_json_after_a_load_holds_every_check(tmp_path):
    store, records = _stored(tmp_path, (0.1, 0.2))
    store.load()
    done = launch("results", tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    assert [t["checks"] for t in json.loads(done.stdout)["trials"]] == [r.checks for r in records]
