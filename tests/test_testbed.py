"""Runs on a real multi-node cluster on this machine (ymxb.testbed): each Ray node in its own
network namespace with its own address, real jax.distributed over the bridge, and the
failures only a network can make: a host cut off, a node lost for good, a host that joins late."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, Background, gone, wait_until
from ymxb.driver import checkpoint
from ymxb.ops import testbed
from ymxb.testing import FAULT_ENV

pytestmark = pytest.mark.slow

try:
    testbed.check_can_run()
except testbed.BedError as err:
    pytest.skip(str(err), allow_module_level=True)


@pytest.fixture
def make_bed():
    """Beds built by the test; after it, each must be gone without a trace."""
    beds = []

    def make(**spec):
        beds.append(testbed.up(testbed.plan(**spec)))
        return beds[-1]

    yield make
    for bed in beds:
        pids = [p for i in range(len(bed.nodes)) for p in bed.pids(i)]
        testbed.down(bed)
        assert testbed.leftovers(bed) == []
        assert [p for p in pids if not gone(p)] == []


@pytest.fixture(scope="module")
def big_bed():
    """A CPU head, a pretend v4-32 slice (4 hosts) and two GPU nodes with 2 GPUs each."""
    bed = testbed.up(testbed.plan(tpu=["v4-32"], gpu=["2:2"]))
    yield bed
    pids = [p for i in range(len(bed.nodes)) for p in bed.pids(i)]
    testbed.down(bed)
    assert testbed.leftovers(bed) == [] and [p for p in pids if not gone(p)] == []


def _launch(bed, *args, timeout=180):
    """`launch.py ARGS` from the head's namespace, as `testbed run` does."""
    return bed.exec(0, [sys.executable, str(ROOT / "launch.py"), *map(str, args)], cwd=ROOT,
                    capture_output=True, text=True, timeout=timeout)


def _hosts(result):
    assert result.returncode == 0, result.stderr[-3000:]
    rep = json.loads(result.stdout)
    assert rep["verified"], rep["checks"]
    return rep, [h["node_ip"] for h in rep["hosts"]]


def test_a_pretend_tpu_slice_trains_across_four_addresses(big_bed):
    rep, ips = _hosts(_launch(big_bed, "--platform", "tpu", "--steps", 200, "--json"))
    slice_hosts = [n.ip for n in big_bed.nodes if n.labels.get("ray.io/tpu-worker-id")]
    assert ips == slice_hosts  # one host per TPU VM, in tpu-worker-id order
    assert rep["coordinator"].rsplit(":", 1)[0] == ips[0]  # on host 0's node, not loopback
    assert {h["global_devices"] for h in rep["hosts"]} == {16}


def test_gpu_nodes_get_one_host_each(big_bed):
    _, ips = _hosts(_launch(big_bed, "--platform", "gpu", "--steps", 200, "--json"))
    gpu_nodes = {n.ip for n in big_bed.nodes if n.num_gpus}
    assert len(ips) == 2 and set(ips) == gpu_nodes


def test_cpu_sim_spreads_one_host_per_node(big_bed):
    rep, ips = _hosts(_launch(big_bed, "--platform", "cpu-sim", "--hosts", 3, "--devices-per-host", 1, "--steps", 200,
                              "--json"))
    assert len(set(ips)) == 3 and rep["coordinator"].rsplit(":", 1)[0] == ips[0]


def test_testbed_run_passes_on_the_exit_code_and_leaves_nothing():
    bed_id = f"r{os.getpid() % 1000}"
    # --tol no float32 run can meet: launch.py trains, reports, and exits 1 (not verified).
    run = subprocess.run([sys.executable, "-m", "ymxb.ops.testbed", "run", "--cpu", "1", "--id", bed_id, "--",
                          sys.executable, "launch.py", "--platform", "cpu-sim", "--hosts", "3",
                          "--devices-per-host", "1", "--steps", "200", "--tol", "1e-12", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "cpu-sim: 3 hosts on 2 nodes, so some nodes run several hosts" in run.stderr
    assert len({h["node_ip"] for h in json.loads(run.stdout)["hosts"]}) == 2
    assert testbed.leftovers(testbed.plan(cpu=1, bed_id=bed_id)) == []


def _start_training(bed, hosts, checkpoints):
    """A long run on the bed (each compiled call 0.05 s late: a test fault), once training is
    under way (its first checkpoint written)."""
    run = Background("--platform", "cpu-sim", "--hosts", hosts, "--devices-per-host", 1, "--steps", 100000,
                     "--timeout", 6, "--max-restarts", 0,
                     "--max-preemptions", 0,  # the failure itself is what is judged
                     "--checkpoint-dir", checkpoints, prefix=("ip", "netns", "exec", bed.netns(0)),
                     env={**bed.env(), FAULT_ENV: "slow:all:train:0.05"})
    run.hosts()
    wait_until(lambda: checkpoint.files(str(checkpoints)), 60)  # the first checkpoint: training under way
    return run


def _host_on(run, ip: str) -> int:
    """The process index of the run's host on the node at `ip`."""
    [host] = [h["process_index"] for h in run.hosts() if h["node_ip"] == ip]
    return host


def test_a_partitioned_host_is_named_within_the_timeout(make_bed, tmp_path):
    bed = make_bed(cpu=1)
    run = _start_training(bed, 2, tmp_path)
    cut = bed.nodes[1]
    subprocess.run(["ip", "link", "set", bed.link(cut.index), "down"], check=True)
    code, _, err = run.finish(timeout=180)  # bounded: --timeout, the poll, the kill
    assert code == 2, err
    error = next(line for line in err.splitlines() if line.startswith("launch.py: error:"))
    print(error)
    host = _host_on(run, cut.ip)
    assert re.search(rf": host {host} \({re.escape(cut.ip)} pid \d+\) (failed first|stopped answering)", error), error


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except OSError:
        return ""


def test_a_lost_node_is_named_with_its_host(make_bed, tmp_path):
    bed = make_bed(cpu=1)
    run = _start_training(bed, 2, tmp_path)
    lost = bed.nodes[1]
    raylets = [p for p in bed.pids(lost.index) if "raylet" in _cmdline(p)]
    assert raylets
    for pid in raylets:
        os.kill(pid, signal.SIGKILL)
    code, _, err = run.finish(timeout=180)
    assert code == 2, err
    error = next(line for line in err.splitlines() if line.startswith("launch.py: error:"))
    print(error)
    host = _host_on(run, lost.ip)
    # Named as the cause, not among the peers whose collectives then failed.
    assert re.search(rf"failed: host {host} \({re.escape(lost.ip)} pid \d+\) failed first: its node is "
                     rf"gone|failed: host {host} \({re.escape(lost.ip)} pid \d+\) stopped answering", error), error


ALIVE_TPU_HOSTS = """
import sys, time, ray
ray.init(log_to_driver=False)
deadline = time.monotonic() + 90
while sum(n["Alive"] and "ray.io/tpu-worker-id" in n["Labels"] for n in ray.nodes()) != int(sys.argv[1]):
    if time.monotonic() > deadline:
        sys.exit("the TPU hosts alive never became " + sys.argv[1])
    time.sleep(0.5)
"""


def test_a_run_waits_for_a_host_that_joins_late_and_names_one_that_never_does(make_bed):
    """A pretend v4-16 slice with host 1's node down, as while it is still being set up: a run
    waits for it (--wait), saying what the slice has; one whose wait runs out fails naming the
    slice; one that waits long enough trains once the node joins, at its own address."""
    bed = make_bed(tpu=["v4-16"])
    late = bed.nodes[2]  # tpu-worker-id 1
    testbed._kill(bed.pids(late.index))
    waited = bed.exec(0, [sys.executable, "-c", ALIVE_TPU_HOSTS, "1"], capture_output=True, text=True, timeout=150)
    assert waited.returncode == 0, waited.stderr[-2000:]
    waiting = re.compile(r"launch.py: waiting for a whole TPU slice: \S+ has 1 of 2 hosts up; the autoscaler: none that "
                         r"makes nodes \(the cluster was started by hand\) \(\d+ s left of --wait (\d+)\)")

    never = _launch(bed, "--platform", "tpu", "--wait", 5, timeout=120)
    assert never.returncode == 2, never.stderr[-3000:]
    lines = never.stderr.strip().splitlines()
    assert any(waiting.fullmatch(line) for line in lines), lines
    assert re.fullmatch(r"launch.py: error: no whole TPU slice matches --platform tpu: \S+ \(v4-16, 2x2x2, 2 hosts, "
                        r"only 1 up\); wait for the missing hosts \(ray status\) or replace the slice \(waited 5 s for "
                        r"it: --wait\)", lines[-1]), lines[-1]

    run = Background("--platform", "tpu", "--wait", 300, "--steps", 200, "--json",
                     prefix=("ip", "netns", "exec", bed.netns(0)), env=bed.env())
    waits = lambda: any(waiting.fullmatch(line) for line in run.stderr.splitlines())
    assert wait_until(lambda: waits() or run.proc.poll() is not None, 120) and waits(), run.stderr
    rejoined = testbed._start_node(bed, late, testbed._ray_cli(), [f"--address={bed.address}"])
    testbed._wait(rejoined, 120, f"node {late.index} ({late.ip}) again")
    code, out, err = run.finish(timeout=300)
    rep, ips = _hosts(subprocess.CompletedProcess(run.proc.args, code, out, err))
    assert ips == [n.ip for n in bed.nodes[1:]]  # host 1 on the node that joined late, at its address


def test_launch_py_run_puts_a_program_on_a_pretend_tpu_slice_across_four_addresses(big_bed):
    result = _launch(big_bed, "run", "examples/loops/train.py", "--platform", "tpu", "--json", "--", "--steps", 20)
    assert result.returncode == 0, result.stderr[-3000:]
    ips = [h["node_ip"] for h in json.loads(result.stdout)["hosts"]]
    assert ips == [n.ip for n in big_bed.nodes if n.labels.get("ray.io/tpu-worker-id")]
    assert "[host 0] final loss" in result.stderr  # with --json, host 0's stdout goes to stderr
