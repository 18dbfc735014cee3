"""Multislice in the CPU simulation: `--slices N` groups of hosts in one JAX program, as
`launch.py` runs it. (Placement on pretend TPU slices: test_cluster.py.)"""

import json
import re

from conftest import gone, launch
from ymxb.testing import FAULT_ENV, FAULT_ONCE_ENV

# What a node's environment might still hold from an earlier multislice job.
STALE = {"MEGASCALE_COORDINATOR_ADDRESS": "10.9.9.9", "MEGASCALE_NUM_SLICES": "5",
         "MEGASCALE_SLICE_ID": "3"}


def test_two_simulated_slices_verify_with_a_fresh_multislice_env_on_every_start(tmp_path):
    # Slice 1's first host dies in initialize once: the restarted slice must get its
    # environment anew, and none of the stale values the hosts inherit.
    result = launch("--slices", 2, "--hosts", 2, "--devices-per-host", 2, "--steps", 300,
                    "--samples-per-host", 256, "--json",
                    env={**STALE, FAULT_ENV: "die:2:initialize", FAULT_ONCE_ENV: str(tmp_path / "once")})
    assert result.returncode == 0, result.stderr[-3000:]
    rep = json.loads(result.stdout)
    assert rep["verified"], rep["checks"]
    assert [(r["host"], r["cause"], r["phase"]) for r in rep["restarts"]] == [(2, "died", "jax.distributed.initialize")]
    assert rep["config"]["slices"] == 2 and rep["normal_equation"]["points"] == 4 * 256
    coordinator = rep["hosts"][0]["node_ip"]
    for i, h in enumerate(rep["hosts"]):
        assert (h["process_index"], h["slice"], h["global_devices"]) == (i, i // 2, 8)
        assert h["megascale"] == {"MEGASCALE_COORDINATOR_ADDRESS": coordinator, "MEGASCALE_PORT": "8081",
                                  "MEGASCALE_NUM_SLICES": "2", "MEGASCALE_SLICE_ID": str(i // 2)}
        # Sums over each mesh axis: 2 slices, 4 devices in each, 8 in all.
        assert h["collective_axes"] == [2, 4] and h["collective_devices"] == 8
    participation = next(c for c in rep["checks"] if c["name"] == "all hosts and devices took part")
    assert participation["detail"].startswith("2 slices x 2 hosts, 8 devices")
    assert "host 3/4: slice 1, 2 local / 8 global cpu devices" in result.stderr
    assert all(gone(int(pid)) for pid in re.findall(r"pid (\d+)", result.stderr))
