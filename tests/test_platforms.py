"""Platform detection and TPU chip hygiene (the cluster YAMLs: test_clusterconfig.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
import ray._raylet

from ymxb.spec import settings as config
from ymxb import names
from ymxb.driver import platforms
from ymxb.host.setup import free_tpu


def test_label_names_are_rays():
    assert names.TPU_SLICE_LABEL == ray._raylet.RAY_NODE_TPU_SLICE_NAME_KEY
    assert names.TPU_WORKER_LABEL == ray._raylet.RAY_NODE_TPU_WORKER_ID_KEY
    assert names.TPU_POD_TYPE_LABEL == ray._raylet.RAY_NODE_TPU_POD_TYPE_KEY
    assert names.TPU_TOPOLOGY_LABEL == ray._raylet.RAY_NODE_TPU_TOPOLOGY_KEY
    assert names.ACCELERATOR_LABEL == ray._raylet.RAY_NODE_ACCELERATOR_TYPE_KEY


def test_detection_order_is_tpu_gpu_cpu_sim():
    assert tuple(cls.name for cls in platforms.Platform.registry) == config.PLATFORMS
    cfg = config.SliceSpec()
    detect = lambda resources: platforms.resolve(cfg, resources).name
    assert detect({"CPU": 8, "TPU": 16, "GPU": 2}) == "tpu"
    assert detect({"CPU": 8, "GPU": 2}) == "gpu"
    assert detect({"CPU": 8}) == "cpu-sim"
    assert platforms.resolve(config.SliceSpec(platform="cpu-sim"), {"TPU": 4}).name == "cpu-sim"


def test_a_process_holding_the_tpu_is_named(tmp_path):
    chip, lock = tmp_path / "accel0", tmp_path / "libtpu_lockfile"
    chip.touch()
    lock.touch()
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(chip)!r}); import time; time.sleep(60)"])
    try:
        for _ in range(50):  # until it has the file open
            if _has_open(chip, holder.pid):
                break
            subprocess.run(["sleep", "0.1"])
        with pytest.raises(RuntimeError, match=rf"the TPU is busy: pid {holder.pid} .* holds {chip}; stop it"):
            free_tpu(lockfile=str(lock), devices=[str(chip)])
        assert lock.exists()  # not someone else's lock to take while they hold the chips
    finally:
        holder.kill()
        holder.wait()
    free_tpu(lockfile=str(lock), devices=[str(chip)])  # nobody holds it now: the lock is stale
    assert not lock.exists()
    free_tpu(lockfile=str(lock), devices=[str(chip)])  # and no lock is fine too


def _has_open(path, pid):
    """Whether process pid has path open."""
    fd_dir = Path(f"/proc/{pid}/fd")
    return any(str(p.resolve()) == str(path) for p in fd_dir.iterdir()) if fd_dir.exists() else False
