"""Placement on pretend clusters built with ray.cluster_utils.Cluster: real Ray scheduler,
nodes with the resources, labels and environment real TPU VMs and GPU nodes register.

Layout: a CPU-only head; TPU slice "slice-a" (v4-32, 4 hosts); TPU slice "slice-b" (v4-16,
2 hosts); "slice-c" (v5litepod-16, 4 hosts) of which only worker 0 is up; three v5p-16 slices
"ms-0", "ms-1", "ms-2" (2 hosts each) for multislice runs; two GPU nodes with 2 GPUs each. Hosts
train on CPU devices (test-only override).
"""

import json
import re
import threading
import types

import pytest
import ray
from ray.cluster_utils import Cluster

from conftest import launch, run_one, wait_until
from ymxb import names
from ymxb.driver import platforms
from ymxb.errors import HostFailure, UsageError

# name: (pod type, topology, hosts up, accelerator type)
SLICES = {"slice-a": ("v4-32", "2x2x4", 4, "TPU-V4"), "slice-b": ("v4-16", "2x2x2", 2, "TPU-V4"),
          "slice-c": ("v5litepod-16", "4x4", 1, "TPU-V5LITEPOD"),
          **{f"ms-{i}": ("v5p-16", "2x2x2", 2, "TPU-V5P") for i in range(3)}}
EXISTS = ("ms-0 (v5p-16, 2x2x2, 2 hosts); ms-1 (v5p-16, 2x2x2, 2 hosts); ms-2 (v5p-16, 2x2x2, 2 hosts); "
          "slice-a (v4-32, 2x2x4, 4 hosts); slice-b (v4-16, 2x2x2, 2 hosts); "
          "slice-c (v5litepod-16, 4x4, 4 hosts, only 1 up)")
SMALL = dict(samples_per_host=256, steps=200, timeout=60)


@pytest.fixture(scope="module")
def cluster_address(cluster):
    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def pretend():
    """The cluster (`.cluster`), and its nodes by (slice, worker) or ("gpu", i): their ids
    (`.ids`) and handles (`.nodes`)."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    found = types.SimpleNamespace(cluster=c, ids={}, nodes={})
    for name, (_, _, hosts, _) in SLICES.items():
        for worker in range(hosts):
            _add_tpu_host(found, name, worker)
    for i in range(2):
        node = c.add_node(num_cpus=1, num_gpus=2)
        found.ids[("gpu", i)], found.nodes[("gpu", i)] = node.node_id, node
    ray.init(address=c.address, log_to_driver=False)
    yield found
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def cluster(pretend):
    return pretend.ids


def _add_tpu_host(found, name: str, worker: int) -> None:
    pod_type, topology, _, accelerator = SLICES[name]
    resources = {"TPU": 4, f"accelerator_type:{accelerator}": 1, name: 1}
    if worker == 0:
        resources[f"TPU-{pod_type}-head"] = 1
    node = found.cluster.add_node(num_cpus=1, resources=resources, labels={
        names.TPU_SLICE_LABEL: name, names.TPU_WORKER_LABEL: str(worker),
        names.TPU_POD_TYPE_LABEL: pod_type, names.TPU_TOPOLOGY_LABEL: topology,
        names.ACCELERATOR_LABEL: accelerator},
        # What a TPU VM's environment says; Ray's slice reservation reads the name.
        env_vars={"TPU_NAME": name, "TPU_WORKER_ID": str(worker)})
    found.ids[(name, worker)], found.nodes[(name, worker)] = node.node_id, node


@pytest.fixture
def cpu_devices(monkeypatch):
    monkeypatch.setenv(names.CPU_DEVICES_ENV, "2")


@pytest.mark.parametrize("choice,slice_name", [(dict(tpu_type="v4-16"), "slice-b"),
                                               (dict(tpu_topology="2x2x4"), "slice-a")])  # only v4-32's
def test_tpu_run_places_one_host_per_tpu_vm_of_one_slice_in_worker_order(cluster, cpu_devices, choice, slice_name):
    run, rep = run_one(platform="tpu", **choice, **SMALL)
    hosts = SLICES[slice_name][2]
    assert run.platform == "tpu" and run.program.slice.hosts == hosts
    # Process i runs on tpu-worker-id i of the chosen slice; nothing on the head or elsewhere.
    assert [h.host.node_id for h in run.hosts] == [cluster[(slice_name, w)] for w in range(hosts)]
    assert rep["verified"], rep["checks"]


def test_tpu_with_two_kinds_of_slice_must_be_told_which(cluster):
    with pytest.raises(UsageError, match=re.escape(f"several kinds of TPU slice match ({EXISTS}): "
                                                   "choose one with --tpu-type")):
        run_one(platform="tpu", **SMALL)


def test_tpu_slice_that_is_not_there_names_what_exists(cluster):
    with pytest.raises(HostFailure, match=re.escape(f"no TPU slice matches --tpu-type v6e; the cluster has: {EXISTS}")):
        run_one(platform="tpu", tpu_type="v6e", **SMALL)


def test_tpu_host_count_must_match_the_slice(cluster):
    with pytest.raises(UsageError, match="--hosts is 3, but a v4-32 slice has hosts: 4"):
        run_one(platform="tpu", tpu_type="v4-32", hosts=3, **SMALL)


def test_busy_slice_fails_within_the_timeout(cluster, cpu_devices):
    from ray.util.tpu import slice_placement_group

    holder = slice_placement_group(topology="2x2x2", accelerator_version="v4",
                                   resources_per_bundle={"CPU": 0, "TPU": 4})
    ray.get(holder.placement_group.ready(), timeout=30)
    try:
        with pytest.raises(HostFailure, match=r"could not reserve a v4-16 slice \(2x2x2\) within 3 s"):
            run_one(platform="tpu", tpu_type="v4-16", **{**SMALL, "timeout": 3})
    finally:
        holder.shutdown()


def test_gpu_run_spreads_one_host_per_gpu_node(cluster, cpu_devices):
    run, rep = run_one(platform="gpu", parallel="sharding", **SMALL)
    assert run.platform == "gpu" and run.program.slice.hosts == 2
    assert sorted(h.host.node_id for h in run.hosts) == sorted([cluster[("gpu", 0)], cluster[("gpu", 1)]])
    assert rep["verified"]
    # The mesh is nodes x GPUs: sums over its axes count the 2 nodes, then a node's 2 devices.
    assert [list(h.result.collective_axes) for h in run.hosts] == [[2, 2], [2, 2]]


def test_more_gpu_hosts_than_nodes_fails_naming_what_exists(cluster):
    with pytest.raises(HostFailure, match=r"asked for 3 GPU node\(s\) with 2 GPUs each, but the cluster has 2 node\(s\) with 2 GPUs"):
        run_one(platform="gpu", hosts=3, **SMALL)


def test_launch_py_on_the_two_slice_cluster(cluster, cluster_address):
    result = launch("--address", cluster_address, "--platform", "tpu", "--tpu-type", "v4-16", "--json",
                    "--steps", 200, env={names.CPU_DEVICES_ENV: "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    rep = json.loads(result.stdout)
    assert rep["verified"] and [h["node_id"] for h in rep["hosts"]] == [cluster[("slice-b", w)] for w in range(2)]

    # None of a v6e slice up, on a cluster started by hand (nothing would make one): no waiting.
    result = launch("--address", cluster_address, "--platform", "tpu", "--tpu-type", "v6e", "--timeout", 10,
                    timeout=120)  # far short of --wait's 900 s
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"launch.py: error: no TPU slice matches --tpu-type v6e; the cluster has: {EXISTS}")


def test_a_slice_with_hosts_missing_is_named_not_used(cluster):
    with pytest.raises(HostFailure, match=re.escape(
            f"no whole TPU slice matches --tpu-type v5litepod-16: {EXISTS}; wait for the missing hosts")):
        run_one(platform="tpu", tpu_type="v5litepod-16", **SMALL)


@pytest.mark.parametrize("slices,parallel", [(2, "pmap"), (3, "sharding")])
def test_multislice_places_whole_slices_slice_major_and_each_host_gets_its_slice_env(cluster, cpu_devices, slices, parallel):
    run, rep = run_one(platform="tpu", tpu_type="v5p-16", slices=slices, parallel=parallel,
                       ensemble=2 * slices, **SMALL)
    assert rep["verified"], rep["checks"]
    assert rep["config"]["slices"] == slices and len(run.hosts) == 2 * slices
    # Host i is worker i % 2 of the (i // 2)-th slice Ray reserved: whole slices, each once.
    where = {node: key for key, node in cluster.items()}
    placed = [where[h.host.node_id] for h in run.hosts]
    names = [name for name, _ in placed[::2]]
    assert len(set(names)) == slices and {n[:3] for n in names} == {"ms-"}
    assert placed == [(name, worker) for name in names for worker in (0, 1)]
    # What each host's process saw (returned by the host itself, not made by the driver).
    coordinator = run.hosts[0].host.node_ip
    for i, h in enumerate(run.hosts):
        assert h.host.slice == i // 2
        assert h.host.megascale == {"MEGASCALE_COORDINATOR_ADDRESS": coordinator, "MEGASCALE_PORT": "8081",
                                  "MEGASCALE_NUM_SLICES": str(slices), "MEGASCALE_SLICE_ID": str(i // 2)}
        assert list(h.result.collective_axes) == [slices, 4] and h.result.collective_devices == 4 * slices
    # An ensemble of 2 per slice: every member once, split over the devices of every slice.
    assert sorted(m["index"] for m in rep["members"]) == list(range(2 * slices))


@pytest.mark.parametrize("settings,message", [
    (dict(tpu_type="v5p-16", slices=4), f"--slices 4, but the cluster has 3 whole v5p-16 slices: {EXISTS}"),
    (dict(tpu_type="v4-16", slices=2), f"--slices 2, but the cluster has 1 whole v4-16 slice: {EXISTS}"),
])
def test_fewer_whole_slices_than_asked_is_refused_naming_what_exists(cluster, settings, message):
    with pytest.raises(HostFailure, match=re.escape(message)):
        run_one(platform="tpu", **settings, **SMALL)


def test_gpu_nodes_take_no_slices(cluster):
    with pytest.raises(UsageError, match=r"--slices 2 is for TPU slices .*the mesh is nodes x GPUs"):
        run_one(platform="gpu", slices=2, **SMALL)


def test_a_joined_run_waits_for_hosts_that_join_late(pretend, cluster_address, cpu_devices):
    """A slice with a host missing (as while the autoscaler sets it up): the run says what it
    waits for and goes on once the host joins. This cluster was started by hand (its autoscaler
    read-only), so nothing but the test adds the host."""
    lines, outcome = [], {}
    pretend.cluster.remove_node(pretend.nodes[("slice-b", 1)])
    try:
        assert wait_until(lambda: _workers_up("slice-b") == [0], 60)

        def train():  # in a thread: nodes can only be added from the main one
            try:
                outcome["run"] = run_one(platform="tpu", tpu_type="v4-16", address=cluster_address, wait=120,
                                         log=lines.append, **SMALL)
            except BaseException as err:
                outcome["error"] = err

        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        waiting = ("launch.py: waiting for a whole TPU slice (--tpu-type v4-16): slice-b has 1 of 2 hosts up; "
                   "the autoscaler: none that makes nodes (the cluster was started by hand) (")
        wait_until(lambda: any(line.startswith(waiting) for line in lines) or not trainer.is_alive(), 60)
        assert any(line.startswith(waiting) for line in lines), (lines, outcome)
    finally:
        _add_tpu_host(pretend, "slice-b", 1)
    trainer.join(timeout=180)
    assert "error" not in outcome, (outcome.get("error"), lines)
    run, rep = outcome["run"]
    assert rep["verified"] and [h.host.node_id for h in run.hosts] == [pretend.ids[("slice-b", w)] for w in range(2)]


def test_a_joined_run_whose_slice_never_comes_fails_after_its_wait(cluster_address):
    result = launch("--address", cluster_address, "--platform", "tpu", "--tpu-type", "v5litepod-16", "--wait", 3)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert any(re.fullmatch(r"launch.py: waiting for a whole TPU slice \(--tpu-type v5litepod-16\): slice-c has 1 of 4 "
                            r"hosts up; the autoscaler: none that makes nodes \(the cluster was started by hand\) "
                            r"\(\d+ s left of --wait 3\)", line) for line in lines), lines
    assert lines[-1] == (f"launch.py: error: no whole TPU slice matches --tpu-type v5litepod-16: {EXISTS}; wait for "
                         f"the missing hosts (ray status) or replace the slice (waited 3 s for it: --wait)")


def _workers_up(name: str) -> list:
    return sorted(w for s in platforms.tpu_slices(ray.nodes()) if s.name == name for w in s.workers)


def test_a_preempted_host_waits_for_its_node_and_the_run_goes_on(pretend, cpu_devices, tmp_path):
    """Last in this module: it replaces a node of slice-b."""
    from ymxb.driver import checkpoint

    lines, outcome = [], {}

    def train():  # in a thread: nodes can only be added from the main one
        try:
            outcome["run"] = run_one(platform="tpu", tpu_type="v4-16", log=lines.append, checkpoints=str(tmp_path),
                                     **{**SMALL, "steps": 3000, "timeout": 30})
        except BaseException as err:
            outcome["error"] = err

    def wait_for(seen) -> None:
        wait_until(lambda: seen() or not trainer.is_alive(), 120)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    # Training under way: its first checkpoint (100 steps of 3000) is written.
    wait_for(lambda: checkpoint.files(str(tmp_path)))
    pretend.cluster.remove_node(pretend.nodes[("slice-b", 1)])
    wait_for(lambda: any("; restarting the slice" in line for line in lines))  # it waits for a whole slice
    _add_tpu_host(pretend, "slice-b", 1)  # then the autoscaler brings a VM back
    trainer.join(timeout=240)
    assert "error" not in outcome, (outcome.get("error"), lines)
    run, rep = outcome["run"]
    assert rep["verified"], rep["checks"]
    assert [(r["host"], r["cause"]) for r in rep["restarts"]] == [(1, "preempted")], lines
    assert [h.host.node_id for h in run.hosts] == [pretend.ids[("slice-b", w)] for w in range(2)]
