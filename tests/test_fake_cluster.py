"""cluster/local-fake-tpu.yaml brought up through the set-up a real node does: the token shipped
as its file_mounts say into a folder that stands in for the node's home, then its setup and
start commands run as Ray's SSH command runner runs them (`clusterconfig.script`), the head's
start command with the prefix `ray up` puts before it (autoscaler v2 on). Then: the head runs
autoscaler v1 all the same, every node runs with token auth from the venv, refuses calls
without the token, and `launch.py`, run as `ray exec` runs it, trains on the slice, waits for
a host the autoscaler brings back, and gives up on a slice that never comes.

The fake provider runs no commands on its workers: they are processes of the head's autoscaler
and inherit its environment, which is what the per-node checks below look at.
"""

import copy
import json
import os
import re
import shutil
import site
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import yaml
from ray._private.authentication.authentication_constants import (
    AUTHORIZATION_BEARER_PREFIX, AUTHORIZATION_HEADER_NAME)
from ray.autoscaler._private.command_runner import _with_interactive
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID
from ray.autoscaler._private.util import with_envs
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc, node_manager_pb2, node_manager_pb2_grpc

from conftest import ROOT, pids_of, stop_processes_of, wait_until
from ymxb.ops.clusterconfig import load, script
from ymxb.names import CPU_DEVICES_ENV

pytestmark = pytest.mark.slow

HOSTS = 2
WAIT_FOR_HOSTS = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if sum("ray.io/tpu-worker-id" in n["Labels"] for n in nodes) == int(sys.argv[2]):
        print(json.dumps([{"id": n["NodeID"], "worker": n["Labels"].get("ray.io/tpu-worker-id"),
                           "raylet": f"{n['NodeManagerAddress']}:{n['NodeManagerPort']}"} for n in nodes]))
        sys.exit(0)
    time.sleep(1)
sys.exit("the fake TPU hosts did not come up in 90 s")
"""
# What `ray up` (2.60, autoscaler/_private/commands.py) puts before each of the head's start
# commands, unless RAY_UP_enable_autoscaler_v2=0 is set where it runs.
RAY_UP_PREFIX = {"RAY_enable_autoscaler_v2": "1", "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
                 "RAY_NODE_TYPE_NAME": "ray.head.default"}
MONITOR_V1, MONITOR_V2 = "autoscaler/_private/monitor.py", "autoscaler/v2/monitor.py"


@pytest.fixture(scope="module")
def fake_tpu_cluster():
    """The fake slice on a free port and its own temp dir; only its own processes are stopped."""
    from ray.util import get_node_ip_address

    temp = tempfile.mkdtemp(prefix="ymxb-fake-", dir="/tmp")  # short: Ray's socket paths are long
    home = Path(temp) / "home"  # the head node's home
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    address = f"{get_node_ip_address()}:{port}"
    config = Path(temp) / "fake.yaml"
    cfg = load(ROOT / "cluster" / "local-fake-tpu.yaml")
    cfg["provider"]["gcs_address"] = address  # the header's note for a port other than 6379
    # Test-only: a free port, this config and a private temp dir (click takes the last value given).
    cfg["head_start_ray_commands"][-1] += (f" --port={port} --autoscaling-config={config}"
                                           f" --temp-dir={temp}/ray --disable-usage-stats")
    config.write_text(yaml.safe_dump(cfg))
    # The node's environment: none of this machine's Ray settings; the config must supply them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), YMXB_BASE_PYTHON=sys.executable, YMXB_FAKE_CLUSTER=temp)
    if sys.prefix != sys.base_prefix:  # run from a venv: a venv made over its Python sees the base's
        env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())  # packages, not this one's
    try:
        # On a machine that never ran Ray there is no token yet: `ray get-auth-token --generate`.
        ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
        subprocess.run([ray_cli, "get-auth-token", "--generate"], check=True, capture_output=True)
        for remote, local in cfg["file_mounts"].items():  # what `ray up` rsyncs to the node
            target = home / remote.removeprefix("~/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.expanduser(local), target)
        up = Path(temp) / "up.sh"
        as_ray_up = copy.deepcopy(cfg)
        as_ray_up["head_start_ray_commands"] = with_envs(cfg["head_start_ray_commands"], RAY_UP_PREFIX)
        up.write_text(script(as_ray_up, "head"))
        started = subprocess.run(["bash", str(up)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr[-3000:]
        yield SimpleNamespace(address=address, home=home, temp=temp, env=env,
                              token=(home / ".ray" / "auth_token").read_text().strip())
    finally:
        stop_processes_of(temp, "YMXB_FAKE_CLUSTER")
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def nodes(fake_tpu_cluster):
    """The cluster's alive nodes, once both TPU hosts are up (a client with the user's token)."""
    return _wait_for_tpu_hosts(fake_tpu_cluster, HOSTS)


def ray_exec(cluster, command: str, env=None, timeout=300):
    """Run command on the head as `ray exec` does: a login shell of the node, ~/.bashrc sourced."""
    return subprocess.run(" ".join(_with_interactive(command)), shell=True, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**cluster.env, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def test_every_node_runs_with_token_auth_from_the_venv(fake_tpu_cluster, nodes):
    raylets = [p for p in pids_of(fake_tpu_cluster.temp, "YMXB_FAKE_CLUSTER") if _cmdline(p)[0].endswith("raylet")]
    assert len(raylets) == len(nodes) == HOSTS + 1  # the head and one per TPU host
    venv_python = str(fake_tpu_cluster.home / "venv" / "bin" / "python")
    for pid in raylets:
        env = _environ(pid)
        assert env.get("RAY_AUTH_MODE") == "token", f"raylet {pid} runs without token auth"
        assert env.get("HOME") == str(fake_tpu_cluster.home)  # so its token is the shipped file
        # What the node starts its workers (the host actors) with: the venv's Python.
        worker_command = next(a for a in _cmdline(pid) if a.startswith("--python_worker_command="))
        assert worker_command.split("=", 1)[1].split()[0] == venv_python


def test_every_node_refuses_calls_without_the_token(fake_tpu_cluster, nodes):
    good = ((AUTHORIZATION_HEADER_NAME, AUTHORIZATION_BEARER_PREFIX + fake_tpu_cluster.token),)
    wrong = ((AUTHORIZATION_HEADER_NAME, AUTHORIZATION_BEARER_PREFIX + "not-the-token"),)
    calls = {f"raylet of {n['worker'] or 'head'}": (
        node_manager_pb2_grpc.NodeManagerServiceStub(grpc.insecure_channel(n["raylet"])).GetNodeStats,
        node_manager_pb2.GetNodeStatsRequest()) for n in nodes}
    calls["GCS"] = (gcs_service_pb2_grpc.NodeInfoGcsServiceStub(grpc.insecure_channel(fake_tpu_cluster.address))
                    .GetAllNodeInfo, gcs_service_pb2.GetAllNodeInfoRequest())
    for name, (call, request) in calls.items():
        for metadata in ((), wrong):
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=10, metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        call(request, timeout=10, metadata=good)  # the token opens it


def test_ray_exec_shells_use_the_venv_and_token_auth(fake_tpu_cluster):
    shell = ray_exec(fake_tpu_cluster, "python -c 'import os, sys; print(sys.prefix, os.environ[\"RAY_AUTH_MODE\"])'")
    assert shell.returncode == 0, shell.stderr[-2000:]
    assert shell.stdout.split() == [str(fake_tpu_cluster.home / "venv"), "token"]


def test_the_head_runs_autoscaler_v1_though_ray_up_turns_v2_on(fake_tpu_cluster, nodes, tmp_path):
    """The config's inline RAY_enable_autoscaler_v2=0 reaches the monitor: it runs v1's code. The
    same prefix without it (a bare head, in a folder of its own) runs v2's: the check can fail."""
    assert "export RAY_enable_autoscaler_v2=1; " in (Path(fake_tpu_cluster.temp) / "up.sh").read_text()
    assert _monitors(fake_tpu_cluster.temp) == [MONITOR_V1]
    control = tempfile.mkdtemp(prefix="ymxb-v2-", dir="/tmp")
    try:
        head = (f"{sys.executable} -m ray.scripts.scripts start --head --port={_free_port()} --temp-dir={control}/ray "
                "--include-dashboard=false --disable-usage-stats")
        started = subprocess.run(["bash", "-c", with_envs([f"export RAY_AUTH_MODE=token; {head}"], RAY_UP_PREFIX)[0]],
                                 env={**fake_tpu_cluster.env, "YMXB_FAKE_CLUSTER": control}, stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr[-2000:]
        assert wait_until(lambda: _monitors(control), 30) and _monitors(control) == [MONITOR_V2]
    finally:
        stop_processes_of(control, "YMXB_FAKE_CLUSTER")
        shutil.rmtree(control, ignore_errors=True)


def _monitors(temp: str) -> list:
    """Which autoscaler monitor each monitor process of the cluster in temp runs (its script)."""
    scripts = [next((a for a in _cmdline(p) if a.endswith("monitor.py")), "") for p in pids_of(temp, "YMXB_FAKE_CLUSTER")]
    return [m for script in scripts for m in (MONITOR_V1, MONITOR_V2) if script.endswith(m)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def test_launch_on_the_fake_tpu_cluster(fake_tpu_cluster, nodes):
    result = ray_exec(fake_tpu_cluster, f"python launch.py --address {fake_tpu_cluster.address} --platform tpu --json",
                      env={CPU_DEVICES_ENV: "4"})
    assert result.returncode == 0, result.stderr[-3000:]
    rep = json.loads(result.stdout)
    assert rep["verified"] and rep["platform"] == "tpu"
    workers = {n["worker"]: n["id"] for n in nodes}
    assert [h["node_id"] for h in rep["hosts"]] == [workers["0"], workers["1"]]
    assert {h["global_devices"] for h in rep["hosts"]} == {8}


def test_a_slice_that_never_comes_is_waited_for_then_named(fake_tpu_cluster, nodes):
    result = ray_exec(fake_tpu_cluster, f"python launch.py --address {fake_tpu_cluster.address} --platform tpu "
                                        "--tpu-type v6e --wait 5")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    # The autoscaler of this cluster makes nodes (no read-only one): the run waits, and says what it has.
    assert any(re.fullmatch(r"launch.py: waiting for a whole TPU slice \(--tpu-type v6e\): no TPU host is up yet; "
                            r"the autoscaler: nothing launching, nothing failed \(\d+ s left of --wait 5\)", line)
               for line in lines), lines
    assert lines[-1] == ("launch.py: error: no TPU slice matches --tpu-type v6e; the cluster has: fake-v4-16 (v4-16, "
                         "2x2x2, 2 hosts) (waited 5 s for it: --wait)")


def test_a_run_waits_for_the_host_the_autoscaler_adds_late(fake_tpu_cluster, nodes):
    """Last in this module: it replaces host 1. The autoscaler (v1, which reads its config file
    again on every update) takes host 1 away when told it may have none, then makes it again
    when told it must have one: meanwhile launch.py waits for the whole slice, saying what the
    cluster has, and trains once the host is up."""
    config = Path(fake_tpu_cluster.temp) / "fake.yaml"
    whole = config.read_text()
    cfg = yaml.safe_load(whole)
    cfg["available_node_types"]["tpu_host_1"].update(min_workers=0, max_workers=0)
    config.write_text(yaml.safe_dump(cfg))
    try:
        _wait_for_tpu_hosts(fake_tpu_cluster, HOSTS - 1)
        command = (f"python launch.py --address {fake_tpu_cluster.address} --platform tpu --wait 240 --steps 200 "
                   "--samples-per-host 256 --json")
        run = subprocess.Popen(" ".join(_with_interactive(command)), shell=True, cwd=ROOT, stdin=subprocess.DEVNULL,
                               env={**fake_tpu_cluster.env, CPU_DEVICES_ENV: "4"}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = [], []  # each pipe read by a thread: neither fills up
        readers = [threading.Thread(target=lambda pipe=pipe, kept=kept: kept.extend(pipe), daemon=True)
                   for pipe, kept in ((run.stdout, out), (run.stderr, err))]
        for reader in readers:
            reader.start()
        waiting = "launch.py: waiting for a whole TPU slice: fake-v4-16 has 1 of 2 hosts up; the autoscaler: "
        wait_until(lambda: any(line.startswith(waiting) for line in err) or run.poll() is not None, 120)
        assert any(line.startswith(waiting) for line in err), "".join(err)[-3000:]
    finally:
        config.write_text(whole)  # host 1 again: the autoscaler launches it
    run.wait(timeout=400)
    for reader in readers:
        reader.join(timeout=10)
    assert run.returncode == 0, "".join(err)[-3000:]
    print("".join(line for line in err if line.startswith("launch.py: waiting")))
    rep = json.loads("".join(out))
    assert rep["verified"] and len(rep["hosts"]) == HOSTS
    [before] = [n["id"] for n in nodes if n["worker"] == "1"]
    assert rep["hosts"][1]["node_id"] != before  # host 1 on the node the autoscaler made anew


def _wait_for_tpu_hosts(cluster, count: int) -> list:
    """The cluster's alive nodes once exactly `count` TPU hosts are up."""
    waited = subprocess.run([sys.executable, "-c", WAIT_FOR_HOSTS, cluster.address, str(count)],
                            capture_output=True, text=True, timeout=150, env={**os.environ, "RAY_AUTH_MODE": "token"})
    assert waited.returncode == 0, waited.stderr[-2000:]
    return json.loads(waited.stdout.strip().splitlines()[-1])


def _environ(pid: int) -> dict:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def _cmdline(pid: int) -> list:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return [""]
