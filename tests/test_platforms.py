"""Platform detection, TPU chip hygiene, and the cluster YAMLs against Ray's own schema."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import ray._raylet
import yaml
from ray._private.accelerators.tpu import TPUAcceleratorManager
from ray.autoscaler._private.util import prepare_config, validate_config

from ymxb import config, platforms
from ymxb.host import free_tpu

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))
# GCP TPU node_config keys (the TPU VM API's Node fields that Ray passes on); Ray's schema does
# not look inside node_config, so a misspelt acceleratorType would otherwise pass.
TPU_NODE_CONFIG_KEYS = {"acceleratorType", "acceleratorConfig", "runtimeVersion", "networkConfig",
                        "serviceAccount", "schedulingConfig", "metadata", "labels", "tags",
                        "dataDisks", "shieldedInstanceConfig", "description"}


def test_label_names_are_rays():
    assert platforms.TPU_SLICE_LABEL == ray._raylet.RAY_NODE_TPU_SLICE_NAME_KEY
    assert platforms.TPU_WORKER_LABEL == ray._raylet.RAY_NODE_TPU_WORKER_ID_KEY
    assert platforms.TPU_POD_TYPE_LABEL == ray._raylet.RAY_NODE_TPU_POD_TYPE_KEY
    assert platforms.TPU_TOPOLOGY_LABEL == ray._raylet.RAY_NODE_TPU_TOPOLOGY_KEY
    assert platforms.ACCELERATOR_LABEL == ray._raylet.RAY_NODE_ACCELERATOR_TYPE_KEY


def test_detection_order_is_tpu_gpu_cpu_sim():
    assert tuple(cls.name for cls in platforms.Platform.registry) == config.PLATFORMS
    cfg = config.Config()
    detect = lambda resources: platforms.resolve(cfg, resources).name
    assert detect({"CPU": 8, "TPU": 16, "GPU": 2}) == "tpu"
    assert detect({"CPU": 8, "GPU": 2}) == "gpu"
    assert detect({"CPU": 8}) == "cpu-sim"
    assert platforms.resolve(config.Config(platform="cpu-sim"), {"TPU": 4}).name == "cpu-sim"


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


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_cluster_yaml_passes_rays_schema(path):
    cfg = yaml.safe_load(path.read_text())
    if cfg["provider"]["type"] == "fake_multinode":
        validate_config(cfg)  # prepare_config needs a file the 2.60 wheel lacks: all keys are spelt out
    else:
        validate_config(prepare_config(copy.deepcopy(cfg)))
    text = path.read_text()
    assert text.startswith("# ") and ("ray up " in text or "ray start " in text)  # opens with its commands
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # no host actor on the head
    for node_type in cfg["available_node_types"].values():
        _check_tpu_node_type(node_type)


def _check_tpu_node_type(node_type):
    node_config = node_type["node_config"]
    labels = node_type.get("labels", {})
    if "acceleratorType" in node_config or platforms.TPU_SLICE_LABEL in labels:
        unknown = set(node_config) - TPU_NODE_CONFIG_KEYS
        assert not unknown, f"unknown TPU node_config keys {unknown}"
        pod_type = node_config.get("acceleratorType") or labels[platforms.TPU_POD_TYPE_LABEL]
        assert TPUAcceleratorManager.is_valid_tpu_accelerator_type(pod_type), pod_type
        # Every chip of a host: a partial TPU request narrows the chips the process sees.
        assert node_type["resources"]["TPU"] == 4
    elif any(key.lower().startswith("accel") for key in node_config):
        raise AssertionError(f"misspelt accelerator key in {sorted(node_config)}")


def test_schema_and_node_config_checks_catch_typos():
    cfg = yaml.safe_load((CLUSTER / "tpu-v4-16.yaml").read_text())
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["tpu_slice"]["min_worker"] = 1
    with pytest.raises(Exception, match="Additional properties"):
        validate_config(prepare_config(bad))
    typo = copy.deepcopy(cfg)["available_node_types"]["tpu_slice"]
    typo["node_config"]["acceleratorTyp"] = typo["node_config"].pop("acceleratorType")
    with pytest.raises(AssertionError, match="misspelt accelerator key"):
        _check_tpu_node_type(typo)
    wrong = copy.deepcopy(cfg)["available_node_types"]["tpu_slice"]
    wrong["node_config"]["acceleratorType"] = "v4_16"
    with pytest.raises(AssertionError, match="v4_16"):
        _check_tpu_node_type(wrong)


def test_gcp_placeholders_are_null():
    for path in YAMLS:
        cfg = yaml.safe_load(path.read_text())
        if cfg["provider"]["type"] == "gcp":
            assert cfg["provider"]["project_id"] is None
