"""cluster/local-fake-tpu.yaml brought up as its header says (Ray's fake multi-node provider,
`ray start --autoscaling-config`), then `launch.py --platform tpu` run against it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, launch
from ymxb.platforms import TEST_CPU_DEVICES_ENV

pytestmark = pytest.mark.slow

WAIT_FOR_HOSTS = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    hosts = {n["Labels"]["ray.io/tpu-worker-id"]: n["NodeID"] for n in ray.nodes()
             if n["Alive"] and "ray.io/tpu-worker-id" in n["Labels"]}
    if len(hosts) == 2:
        print(json.dumps(hosts)); sys.exit(0)
    time.sleep(1)
sys.exit("the fake TPU hosts did not come up in 90 s")
"""


@pytest.fixture
def fake_tpu_cluster():
    """The fake slice on a free port and its own temp dir; only its own processes are stopped."""
    import socket

    from ray.util import get_node_ip_address

    temp = tempfile.mkdtemp(prefix="ymxb-fake-", dir="/tmp")  # short: Ray's socket paths are long
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    address = f"{get_node_ip_address()}:{port}"
    cfg = yaml.safe_load((ROOT / "cluster" / "local-fake-tpu.yaml").read_text())
    cfg["provider"]["gcs_address"] = address  # the header's note for a port other than 6379
    config = Path(temp) / "fake.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "TPU_NAME": "fake-v4-16", "RAY_AUTH_MODE": "token",
           "AUTOSCALER_UPDATE_INTERVAL_S": "1", "YMXB_FAKE_CLUSTER": temp}
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    try:
        # Token auth on both sides; on a machine that never ran Ray there is no token yet.
        subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        subprocess.run([ray_cli, "start", "--head", f"--port={port}", f"--autoscaling-config={config}",
                        "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=120)
        yield address
    finally:
        _stop_processes_of(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_processes_of(temp: str) -> None:
    """Kill every process started for this cluster (never `ray stop`: it kills all of them)."""
    deadline = time.monotonic() + 30
    while True:
        pids = _pids_of(temp)
        if not pids or time.monotonic() > deadline:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    assert not pids, f"processes of the fake cluster left running: {pids}"


def _pids_of(temp: str):
    """Processes with our marker in their environment or a file open under our temp dir."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if f"YMXB_FAKE_CLUSTER={temp}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
                continue
            if any(os.readlink(fd).startswith(temp + "/") for fd in (proc / "fd").iterdir()):
                found.append(int(proc.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def test_launch_on_the_fake_tpu_cluster(fake_tpu_cluster):
    env = {"RAY_AUTH_MODE": "token"}
    waited = subprocess.run([sys.executable, "-c", WAIT_FOR_HOSTS, fake_tpu_cluster], capture_output=True,
                            text=True, timeout=150, env={**os.environ, **env})
    assert waited.returncode == 0, waited.stderr[-2000:]
    workers = json.loads(waited.stdout.strip().splitlines()[-1])

    result = launch("--address", fake_tpu_cluster, "--platform", "tpu", "--json",
                    env={**env, TEST_CPU_DEVICES_ENV: "4"})
    assert result.returncode == 0, result.stderr[-3000:]
    rep = json.loads(result.stdout)
    assert rep["verified"] and rep["platform"] == "tpu"
    assert [h["node_id"] for h in rep["hosts"]] == [workers["0"], workers["1"]]
    assert {h["global_devices"] for h in rep["hosts"]} == {8}
