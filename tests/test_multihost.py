"""Real Ray, real jax.distributed across real processes, real cross-process collectives."""

import json
import os
import re

import numpy as np
import pytest
import ray

from conftest import gone, launch, run_one, hooks
from ymxb.spec.sweep import Sweep
from ymxb.spec import builtin, data
from ymxb import api as experiment, plan
from ymxb.driver import slice as launcher
from ymxb.results.views import report
from ymxb.spec.settings import SliceSpec, TrialSpec
from ymxb.results.store import Store
from ymxb.testing import FAULT_ENV, MEMORY_ENV
from ymxb.errors import HostFailure

SMALL = dict(samples_per_host=256, steps=300)


@pytest.mark.parametrize("hosts,devices", [(2, 2), (3, 1)])
def test_slice_trains_to_the_normal_equation(local_ray, hosts, devices):
    run, rep = run_one(hosts=hosts, devices_per_host=devices, **SMALL)
    got = run.hosts
    assert [h.host.process_index for h in got] == list(range(hosts))
    assert len({h.host.pid for h in got}) == hosts  # one process per host
    for h in got:
        assert (h.host.process_count, h.host.local_devices, h.host.global_devices) == (hosts, devices, hosts * devices)
        # A psum of ones over the pmap axis counts every device of every host.
        assert h.result.collective_devices == hosts * devices
        assert len(h.result.params) == devices
    params = {tuple(p) for h in got for p in h.result.params.tolist()}
    assert len(params) == 1  # all replicas on all hosts identical
    m, b = params.pop()
    ref = builtin.normal_equation(*data.global_dataset(TrialSpec.resolve(**SMALL), hosts))
    assert abs(m - ref[0]) < 1e-4 and abs(b - ref[1]) < 1e-4
    assert rep["verified"], rep["checks"]
    assert all(gone(h.host.pid) for h in got)  # no host process outlives the run


def test_gradient_really_spans_hosts(local_ray):
    """Hosts with different data end with the same params: the mean is global, not per host."""
    run, rep = run_one(hosts=2, devices_per_host=1, **SMALL)
    per_host = [builtin.normal_equation(*data.host_shard(TrialSpec.resolve(**SMALL), i)) for i in range(2)]
    m = float(run.hosts[0].result.params[0, 0])
    assert abs(per_host[0][0] - per_host[1][0]) > 1e-3  # the shards disagree...
    assert min(abs(m - p[0]) for p in per_host) > 1e-4  # ...and neither host's own fit won
    assert rep["verified"]


def test_divergence_is_reported_not_verified(local_ray):
    _, rep = run_one(hosts=2, devices_per_host=1, lr=50.0, **SMALL)
    assert not rep["verified"]
    finite = next(c for c in rep["checks"] if c["name"] == "loss finite")
    assert not finite["ok"] and "non-finite at step" in finite["detail"]
    text = report.summary(rep)  # what a user reads: the NaNs, and why
    assert "NOT VERIFIED" in text and "[FAIL] loss finite" in text


def test_a_diverged_trial_shows_as_diverged_sorts_last_and_breaks_nothing(local_ray, tmp_path):
    spec = SliceSpec(hosts=2, devices_per_host=1, platform="cpu-sim")
    trials = [(spec, TrialSpec.resolve(lr=lr, **SMALL)) for lr in (50.0, 0.1)]  # one diverges, one converges
    store = Store(str(tmp_path))
    todo = plan.make(Sweep("diverged", tuple(trials)))
    todo.skip_recorded(store.load())
    outcome = experiment.run(todo, store, log=lambda line: None)
    diverged = next(r for r in outcome.records if r.config["lr"] == 50.0)
    assert diverged.members[0].diverged_step is not None and not diverged.verified
    # What a user does next: the table, the plots and --json, from the store alone.
    shown = launch("results", tmp_path)
    assert shown.returncode == 1 and "Traceback" not in shown.stderr, shown.stderr
    rows = [line for line in shown.stdout.splitlines() if line.startswith(("* ", "  ")) and "lr" not in line]
    assert [row[2:].split()[0] for row in rows] == ["0.1", "50"]  # diverged last
    assert rows[-1].endswith(f"diverged@{diverged.members[0].diverged_step}")
    assert "1 of 2 trials verified, 1 diverged (loss non-finite)" in shown.stdout
    doc = json.loads(launch("results", tmp_path, "--json").stdout)
    assert [t["members"][0]["final_loss"] for t in doc["trials"]] == [None, pytest.approx(0.01, rel=0.5)]
    assert all(os.path.getsize(p) > 10_000 for p in doc["plots"])


def test_a_program_too_big_for_a_clusters_slice_is_refused_once_its_hosts_report(local_ray):
    # On a cluster the hosts say what they hold (here: the node's free memory, as for CPU
    # devices), and the run stops before any host makes its data: 48 GiB a host here.
    result = launch("--address", ray.get_runtime_context().gcs_address, "--hosts", 2, "--devices-per-host", 1,
                    "--samples-per-host", 1 << 30, timeout=180)
    assert result.returncode == 2 and result.stdout == "", result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"launch.py: error: this run would need about 120.0 GiB \(--samples-per-host: 96.0 GiB, "
                        r"--ensemble: 24.0 GiB\) on the node of 2 of its hosts, which has [\d.]+ GiB available: "
                        r"lower --samples-per-host", error), error
    assert "host 1/2" in result.stderr  # the hosts came up, and said what they hold


def test_the_driver_takes_many_results_in_host_order(local_ray):
    # Results that are in already are taken together (one wait each burst, not each result).
    refs = [ray.put(i) for i in range(600)]
    assert launcher._gather([], list(reversed(refs)), "start", 60) == list(reversed(range(600)))


HOST = r"host {} \([\d.]+ pid \d+\)"


@pytest.mark.parametrize("fault,expected", [
    ("die:1:initialize", rf"^jax.distributed.initialize failed: {HOST.format(1)} failed first"),
    ("hang:2:initialize", rf"^jax.distributed.initialize failed: {HOST.format(2)} never finished"),
    ("die:1:train", rf"^training failed: {HOST.format(1)} failed first"),
    ("hang:0:train", rf"^training stalled: {HOST.format(0)} fell behind \(before its first step"),
])
def test_a_dying_or_hanging_host_is_named_within_the_timeout(local_ray, monkeypatch, fault, expected):
    hooks(monkeypatch, {FAULT_ENV: fault})
    with pytest.raises(HostFailure) as failure:
        run_one(hosts=3, devices_per_host=1, timeout=8, max_restarts=0, **SMALL)
    message = str(failure.value)
    assert re.search(expected, message), message
    pids = [int(pid) for pid in re.findall(r"pid (\d+)", message)]
    assert pids and all(gone(pid) for pid in pids)  # every host process named is gone


def test_impossible_placement_fails_within_the_timeout(local_ray, monkeypatch):
    hooks(monkeypatch, {MEMORY_ENV: str(2**50)})  # memory enough: placement is what fails
    with pytest.raises(HostFailure, match=r"could not reserve 500 simulated hosts .* within 3 s; the cluster has CPU=2 free"):
        run_one(hosts=500, devices_per_host=1, timeout=3, **SMALL)  # 500 x 0.01 CPU > 2 CPUs


@pytest.mark.parametrize("model,parallel", [("haiku", "pmap"), ("haiku", "sharding"), ("pure", "sharding")])
def test_models_and_parallel_modes_across_hosts(local_ray, model, parallel):
    run, rep = run_one(hosts=2, devices_per_host=2, model=model, parallel=parallel, **SMALL)
    assert rep["verified"], rep["checks"]
    assert {h.result.collective_devices for h in run.hosts} == {4}


def test_ensemble_members_are_split_over_hosts_and_reassembled(local_ray):
    members = {}
    for parallel in ("pmap", "sharding"):
        run, rep = run_one(hosts=2, devices_per_host=2, model="haiku", optimizer="adam", ensemble=6,
                           parallel=parallel, **{**SMALL, "steps": 600})
        assert rep["verified"], rep["checks"]
        # 6 members padded to 8 (2 a device); each host holds only its own, padding never reported.
        assert [sorted(h.result.entry.tolist()) for h in run.hosts] == [[0, 1, 2, 3], [4, 5]]
        assert [m["index"] for m in rep["members"]] == list(range(6))
        assert len({(m["init_m"], m["init_b"]) for m in rep["members"]}) == 6
        members[parallel] = np.array([(m["m"], m["b"]) for m in rep["members"]])
    np.testing.assert_allclose(members["pmap"], members["sharding"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("platform,message", [
    ("tpu", "--platform tpu, but the cluster has no TPU slices"),
    ("gpu", "--platform gpu, but the cluster has no GPU nodes"),
])
def test_asking_for_hardware_the_cluster_lacks_fails_at_once(local_ray, platform, message):
    with pytest.raises(HostFailure, match=re.escape(message)):
        run_one(platform=platform)
