"""The cluster YAMLs read as Ray 2.60's providers read them (ymxb.clusterconfig), each rule with
a config that breaks it, and what Ray's own AWS provider code does with them, run offline."""

import copy
import re
import tomllib
from importlib.metadata import metadata
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from ymxb import clusterconfig
from ymxb.clusterconfig import check, load, node_commands, prepared, script

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted((ROOT / "cluster").glob("*.yaml"))
TPU, GPU, FAKE = (str(ROOT / "cluster" / name) for name in ("tpu-v4-16.yaml", "gpu-aws.yaml", "local-fake-tpu.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_cluster_config_passes_every_rule(path):
    assert check(load(path)) == []
    text = path.read_text()
    assert text.startswith("# ") and ("ray up " in text or "ray.scripts.scripts start" in text)


def _start(command):
    """Replace the ray start command (the last start command) of the head."""
    def edit(cfg):
        cfg["head_start_ray_commands"][-1] = command
    return edit


def _set(*keys, value):
    def edit(cfg):
        node = cfg
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


def _drop(*keys):
    def edit(cfg):
        node = cfg
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]
    return edit


def _replace_in(key, old, new):
    def edit(cfg):
        cfg[key] = [c.replace(old, new) for c in cfg[key]]
    return edit


# (config, how it is broken, the rule it breaks, what the message says)
BROKEN = {
    "misspelt-key": (TPU, _set("available_node_types", "tpu_slice", "min_worker", value=1),
                     "schema", "Additional properties"),
    "head-takes-hosts": (TPU, _set("available_node_types", "head", "resources", value={"CPU": 4}),
                         "head-idle", "registers CPU 4"),
    "tpu-key-typo": (TPU, lambda c: c["available_node_types"]["tpu_slice"]["node_config"].update(
                         acceleratorTyp="v4-16"), "tpu-node-config", "does not know: .'acceleratorTyp'"),
    "not-a-pod-type": (TPU, _set("available_node_types", "tpu_slice", "node_config", "acceleratorType",
                                 value="v4_16"), "tpu-node-config", "'v4_16' is not a TPU pod type"),
    "part-of-a-host": (TPU, _set("available_node_types", "tpu_slice", "resources", value={"TPU": 1}),
                       "tpu-node-config", "resources TPU is 1, not 4"),
    "latest-dlami": (GPU, _set("available_node_types", "gpu_node", "node_config", "ImageId",
                               value="latest_dlami"), "image", "gpu_node: ImageId 'latest_dlami' .*18.04"),
    "no-tpu-runtime": (TPU, _drop("available_node_types", "tpu_slice", "node_config", "runtimeVersion"),
                       "image", "needs a runtimeVersion"),
    "python-3.10-venv": (TPU, _replace_in("setup_commands", "python3.11 -m venv", "python3.10 -m venv"),
                         "python", r"head: the venv is made with Python 3.10, but jax needs Python >=3.11"),
    "no-venv": (GPU, _replace_in("setup_commands", "python3.11 -m venv ~/venv", "true"),
                "python", "gpu_node: no command makes the venv ~/venv"),
    "system-pip": (GPU, _replace_in("worker_setup_commands", "~/venv/bin/pip", "pip"),
                   "python", "gpu_node: `pip install -e .*` installs into the system Python"),
    "venv-not-on-path": (TPU, _replace_in("setup_commands", 'PATH="$HOME/venv/bin:$PATH"', ""),
                         "python", "tpu_slice: no setup command puts ~/venv/bin first on PATH"),
    "system-ray": (TPU, _replace_in("worker_start_ray_commands", "~/venv/bin/ray", "ray"),
                   "ray-start", "tpu_slice: `ray stop` runs a Ray outside the venv"),
    "rays-default-start": (GPU, _drop("head_start_ray_commands"),
                           "ray-start", "head: `ray start` runs a Ray outside the venv"),
    "fake-head-never-starts": (FAKE, _set("head_start_ray_commands", value=[]),
                               "ray-start", "head: its start commands never run `ray start`"),
    "token-not-shipped": (GPU, _drop("file_mounts", "~/.ray/auth_token"),
                          "auth", "file_mounts does not ship ~/.ray/auth_token"),
    "worker-without-auth": (TPU, _replace_in("worker_start_ray_commands", "export RAY_AUTH_MODE=token;", ""),
                            "auth", "tpu_slice: `ray start` without RAY_AUTH_MODE=token"),
    "auth-after-start": (FAKE, _start("~/venv/bin/python -m ray.scripts.scripts start --head; "
                                      "export RAY_AUTH_MODE=token"),
                         "auth", "head: `ray start` without RAY_AUTH_MODE=token"),
    "client-without-auth": (GPU, _replace_in("setup_commands", "export RAY_AUTH_MODE=token ", "export "),
                            "auth", "head: no setup command exports RAY_AUTH_MODE=token in ~/.bashrc"),
    "aws-stops-not-terminates": (GPU, _drop("provider", "cache_stopped_nodes"),
                                 "billing", "cache_stopped_nodes is true"),
    "disk-outlives-vm": (TPU, _set("available_node_types", "head", "node_config", "disks", 0, "autoDelete",
                                   value=False), "billing", "head: a disk without autoDelete: true"),
    "volume-outlives-instance": (GPU, _drop("available_node_types", "gpu_node", "node_config",
                                            "BlockDeviceMappings", 0, "Ebs", "DeleteOnTermination"),
                                 "billing", "gpu_node: EBS volume /dev/sda1 without DeleteOnTermination"),
    "dashboard-on-all-interfaces": (TPU, _replace_in("head_start_ray_commands", "--dashboard-host=127.0.0.1",
                                                     "--dashboard-host=0.0.0.0"),
                                    "exposure", "the dashboard listens on 0.0.0.0"),
    "rays-own-security-group": (GPU, _drop("available_node_types", "head", "node_config", "SecurityGroupIds"),
                                "exposure", "head: no SecurityGroupIds, so Ray makes a group that opens SSH"),
    "ssh-open-to-the-world": (GPU, _set("provider", "security_group", value={"IpPermissions": [
                                  {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp",
                                   "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
                              "exposure", "opens port 22 to 0.0.0.0/0"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_each_rule_catches_its_broken_config(case):
    path, breaks, rule, message = BROKEN[case]
    cfg = load(path)
    breaks(cfg)
    found = [v for v in check(cfg) if v.rule == rule]
    assert any(re.search(message, v.message) for v in found), (case, check(cfg))


def test_every_rule_has_a_broken_config():
    assert {rule for _, _, rule, _ in BROKEN.values()} == {fn.rule_name for fn in clusterconfig.RULES}


def test_the_command_line_prints_one_line_per_violation_and_exits_2(tmp_path, capsys):
    cfg = load(GPU)
    del cfg["provider"]["cache_stopped_nodes"]
    cfg["available_node_types"]["head"]["node_config"]["ImageId"] = "latest_dlami"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(cfg))
    assert clusterconfig.main([str(p) for p in YAMLS]) == 0
    assert capsys.readouterr().out == ""
    assert clusterconfig.main([GPU, str(broken)]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[:2] for line in lines] == [[str(broken), "image"], [str(broken), "billing"]]
    assert clusterconfig.main([str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_node_commands_are_rays_merge_per_node_kind():
    cfg = prepared(load(TPU))
    commands = node_commands(cfg)
    assert list(commands) == ["head", "tpu_slice"]
    raw = load(TPU)
    for kind, setup in (("head", "head_setup_commands"), ("tpu_slice", "worker_setup_commands")):
        start = "head_start_ray_commands" if kind == "head" else "worker_start_ray_commands"
        assert commands[kind] == (raw["initialization_commands"] + raw["setup_commands"] + raw[setup]
                                  + raw[start])
    assert list(node_commands(prepared(load(FAKE)))) == ["head"]  # its workers run no commands


def test_script_runs_each_command_as_rays_ssh_runner_does():
    from ray.autoscaler._private.command_runner import _with_interactive

    lines = script(load(FAKE), "head").splitlines()
    commands = node_commands(prepared(load(FAKE)))["head"]
    assert lines[2] == "set -e" and lines[3:] == [" ".join(_with_interactive(c)) for c in commands]
    with pytest.raises(KeyError, match="no node kind 'gpu_node'"):
        script(load(FAKE), "gpu_node")


def test_requires_python_says_what_jax_needs():
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ours == ">=3.11"
    jax_needs = SpecifierSet(metadata("jax")["Requires-Python"])
    assert "3.10" not in jax_needs and "3.11" in jax_needs and "3.10" not in SpecifierSet(ours)


def test_placeholders_to_fill_in_before_ray_up():
    assert load(TPU)["provider"]["project_id"] is None
    assert load(str(ROOT / "cluster" / "tpu-v6e-16.yaml"))["provider"]["project_id"] is None
    for node_type in load(GPU)["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"] == ["sg-REPLACE-ME"]


# What Ray's AWS provider does with these configs: its own functions, run without an account.
aws_config = pytest.importorskip("ray.autoscaler._private.aws.config", reason="needs boto3")


def test_rays_aws_provider_turns_latest_dlami_into_an_ubuntu_18_04_ami():
    cfg = prepared(load(GPU))
    aws_config._check_ami(cfg)  # keeps an explicit ImageId
    assert {t["node_config"]["ImageId"] for t in cfg["available_node_types"].values()} == {
        load(GPU)["available_node_types"]["gpu_node"]["node_config"]["ImageId"]}
    cfg["available_node_types"]["gpu_node"]["node_config"]["ImageId"] = "latest_dlami"
    aws_config._check_ami(cfg)
    assert cfg["available_node_types"]["gpu_node"]["node_config"]["ImageId"] == aws_config.DEFAULT_AMI["us-east-1"]
    assert "Ubuntu 18.04" in aws_config.DEFAULT_AMI_NAME and len(aws_config.DEFAULT_AMI) == 15


def test_rays_aws_provider_uses_our_security_group_and_would_open_ssh_to_all_without_it():
    cfg = prepared(load(GPU))
    # Every node type names its group, so Ray returns before any AWS call (none could succeed here).
    assert aws_config._configure_security_group(copy.deepcopy(cfg)) == cfg
    assert aws_config._create_default_ssh_inbound_rules()[0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]


def test_rays_aws_provider_terminates_on_ray_down():
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    provider = prepared(load(GPU))["provider"]
    assert AWSNodeProvider(provider, "ymxb-test").cache_stopped_nodes is False
    default = {k: v for k, v in provider.items() if k != "cache_stopped_nodes"}
    assert AWSNodeProvider(default, "ymxb-test").cache_stopped_nodes is True
