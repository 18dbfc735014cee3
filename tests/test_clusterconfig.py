"""The cluster YAMLs read as Ray 2.60's providers read them (ymxb.clusterconfig), each rule with
a config that breaks it, and what Ray's own provider and `ray up` code does with them, offline."""

import copy
import re
import tomllib
from importlib.metadata import metadata
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from ymxb.ops import clusterconfig
from ymxb.ops.clusterconfig import check, load, node_commands, prepared, script

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted((ROOT / "cluster").glob("*.yaml"))
TPU, V6E, GPU, FAKE = (str(ROOT / "cluster" / name) for name in
                       ("tpu-v4-16.yaml", "tpu-v6e-16.yaml", "gpu-aws.yaml", "local-fake-tpu.yaml"))
AMI = "ami-0eb7d782cce2fe526"  # us-east-1's, as the README's `aws ssm get-parameter` gave it
# What a user fills in before `ray up` (the fill-in rule refuses the file until then).
FILLED = {"project_id": "my-project", "SecurityGroupIds": ["sg-0123456789abcdef0"], "ImageId": AMI}


def filled(path) -> dict:
    """The config at path with its placeholders filled in, as the README says."""
    cfg = load(path)
    if cfg["provider"].get("project_id", "") is None:
        cfg["provider"]["project_id"] = FILLED["project_id"]
    for node_type in cfg["available_node_types"].values():
        for key in ("SecurityGroupIds", "ImageId"):
            if clusterconfig.PLACEHOLDER in str(node_type["node_config"].get(key, "")):
                node_type["node_config"][key] = FILLED[key]
    return cfg


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_every_cluster_config_passes_every_rule(path):
    assert check(filled(path)) == []
    text = path.read_text()
    assert text.startswith("# ") and ("ray up " in text or "ray.scripts.scripts start" in text)


@pytest.mark.parametrize("path,lines", [
    (TPU, ["provider.project_id is not filled in"]),
    (V6E, ["provider.project_id is not filled in"]),
    (GPU, ["head, gpu_node: SecurityGroupIds holds the placeholder ['sg-REPLACE-ME']: make your group",
           "head, gpu_node: ImageId is the placeholder ami-REPLACE-ME: put in the current AMI of us-east-1"]),
    (FAKE, []),
], ids=["tpu-v4-16", "tpu-v6e-16", "gpu-aws", "local-fake-tpu"])
def test_shipped_configs_are_refused_until_their_placeholders_are_filled_in(path, lines):
    found = check(load(path))
    assert {v.rule for v in found} <= {"fill-in"} and len(found) == len(lines), found
    for violation, line in zip(found, lines):
        assert violation.message.startswith(line), found


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


def _mounts(**mounts):
    """file_mounts replaced: the token's and the given ones."""
    def edit(cfg):
        cfg["file_mounts"] = {"~/.ray/auth_token": "~/.ray/auth_token", **mounts}
    return edit


# (config, how it is broken, the rule it breaks, what the message says). Each broken config,
# filled in, fails with exactly one line: the rule and what to do.
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
                       "tpu-node-config", "resources TPU is 1, but a v4-16 host has 4 chips"),
    "latest-dlami": (GPU, _set("available_node_types", "gpu_node", "node_config", "ImageId",
                               value="latest_dlami"), "image", "gpu_node: ImageId 'latest_dlami' .*18.04"),
    "no-tpu-runtime": (TPU, _drop("available_node_types", "tpu_slice", "node_config", "runtimeVersion"),
                       "image", "needs a runtimeVersion"),
    "python-3.10-venv": (TPU, _replace_in("setup_commands", "python3.11 -m venv", "python3.10 -m venv"),
                         "python", r"head, tpu_slice: the venv is made with Python 3.10, but jax needs Python >=3.11"),
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
                          "auth", "file_mounts does not ship the token to ~/.ray/auth_token"),
    "worker-without-auth": (TPU, _replace_in("worker_start_ray_commands", "export RAY_AUTH_MODE=token;", ""),
                            "auth", "tpu_slice: `ray start` without RAY_AUTH_MODE=token"),
    "auth-after-start": (FAKE, _start("RAY_enable_autoscaler_v2=0 ~/venv/bin/python -m ray.scripts.scripts start "
                                      "--head --autoscaling-config=x.yaml; export RAY_AUTH_MODE=token"),
                         "auth", "head: `ray start` without RAY_AUTH_MODE=token"),
    "client-without-auth": (GPU, _replace_in("setup_commands", "export RAY_AUTH_MODE=token ", "export "),
                            "auth", "head, gpu_node: no setup command exports RAY_AUTH_MODE=token in ~/.bashrc"),
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
    # What the second reading of Ray's GCP and AWS provider code found (issue 20).
    "no-checkout-mount": (TPU, _mounts(), "checkout",
                          r"file_mounts does not ship README.md, launch.py, pyproject.toml, ymxb of the checkout"),
    "checkout-as-dot": (GPU, _mounts(**{"~/ymxb": "."}), "checkout",
                        r"ships '.' to ~/ymxb: a path relative to where `ray up` runs \(from \$HOME, all of it"),
    "no-rsync-filter": (TPU, _drop("rsync_filter"), "checkout", "rsync_filter lacks .gitignore"),
    "v6e-with-the-v4-runtime": (V6E, _set("available_node_types", "tpu_slice", "node_config", "runtimeVersion",
                                          value="tpu-ubuntu2204-base"), "tpu-node-config",
                                r"tpu_slice: runtimeVersion tpu-ubuntu2204-base is made for TPU v2/v3/v4, not for "
                                r"v6e-16: use v2-alpha-tpuv6e"),
    "v4-with-the-v6e-runtime": (TPU, _set("available_node_types", "tpu_slice", "node_config", "runtimeVersion",
                                          value="v2-alpha-tpuv6e"), "tpu-node-config",
                                "made for TPU v6e, not for v4-16: use tpu-ubuntu2204-base, tpu-vm-v4-base"),
    "no-python-3.11-install": (TPU, _set("initialization_commands", value=[]), "python",
                               r"head, tpu_slice: nothing installs Python 3.11 before `python3.11 -m venv`"),
    "head-start-without-autoscaling-config": (
        TPU, _replace_in("head_start_ray_commands", "--autoscaling-config=~/ray_bootstrap_config.yaml", ""),
        "ray-start", "head: `ray start` without --autoscaling-config: the head then runs no autoscaler"),
    "worker-start-without-address": (TPU, _replace_in("worker_start_ray_commands", "--address=$RAY_HEAD_IP:6379", ""),
                                     "ray-start", "tpu_slice: `ray start` without --address"),
    "no-jax-tpu": (V6E, _replace_in("worker_setup_commands", "ymxb[tpu]", "ymxb"),
                   "packages", r"tpu_slice: no command installs jax\[tpu\] into ~/venv"),
    "no-jax-cuda": (GPU, _replace_in("worker_setup_commands", "ymxb[gpu]", "ymxb"),
                    "packages", r"gpu_node: no command installs jax\[cuda12\] into ~/venv"),
    "head-without-its-cloud-client": (TPU, _replace_in("head_setup_commands", " google-api-python-client", ""),
                                      "packages", "head: no command installs google-api-python-client"),
    "ray-not-the-local-version": (GPU, _replace_in("setup_commands", "'ray[default]==2.60.0'", "'ray[default]>=2.60'"),
                                  "packages", r"head, gpu_node: installs ray\[default\]>=2.60, but this machine runs "
                                              r"Ray 2.60.0: .* pin ray\[default\]==2.60.0"),
    "region-not-the-amis": (GPU, _set("provider", "region", value="us-west-2"), "image",
                            f"head, gpu_node: ImageId {AMI} is an AMI of us-east-1, not of provider.region us-west-2"),
    "ssh-user-not-the-images": (GPU, _set("auth", "ssh_user", value="ec2-user"), "image",
                                f"auth.ssh_user is 'ec2-user', but {AMI} logs in as 'ubuntu'"),
    "gpu-node-without-gpus": (GPU, _set("available_node_types", "gpu_node", "resources", value={"CPU": 48}),
                              "gpu-node-config", "gpu_node: g5.12xlarge has GPUs, but its resources register none"),
    "autoscaler-v2": (TPU, _replace_in("head_start_ray_commands", "RAY_enable_autoscaler_v2=0 ", ""),
                      "autoscaler", "head: `ray start` without RAY_enable_autoscaler_v2=0 before it"),
    "project-not-filled-in": (TPU, _set("provider", "project_id", value=None),
                              "fill-in", "provider.project_id is not filled in"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_each_rule_catches_its_broken_config(case):
    path, breaks, rule, message = BROKEN[case]
    cfg = filled(path)
    breaks(cfg)
    found = check(cfg)
    assert any(v.rule == rule and re.search(message, v.message) for v in found), (case, found)
    assert len(found) == 1 or case in SEVERAL, (case, found)


# Breaks that are several defects at once: the same Ray outside the venv stops and starts it;
# Ray's default start commands run the system `ray` without any of our flags.
SEVERAL = {"system-ray", "rays-default-start"}


@pytest.mark.parametrize("edit", [
    # A one-host slice: v6e-8 is one host with 8 chips, its host offers all 8.
    lambda cfg: cfg["available_node_types"]["tpu_slice"].update(resources={"TPU": 8}, node_config={
        **cfg["available_node_types"]["tpu_slice"]["node_config"], "acceleratorType": "v6e-8"}),
    # The token kept somewhere else on this machine, shipped to where Ray reads it on the nodes.
    lambda cfg: cfg["file_mounts"].update({"~/.ray/auth_token": "/secrets/ray-token"}),
], ids=["one-host-v6e-8", "token-from-another-path"])
def test_configs_that_are_right_pass(edit):
    cfg = filled(V6E)
    edit(cfg)
    assert check(cfg) == []


def test_every_rule_has_a_broken_config():
    assert {rule for _, _, rule, _ in BROKEN.values()} == {fn.rule_name for fn in clusterconfig.RULES}


def test_the_command_line_prints_one_line_per_violation_and_exits_2(tmp_path, capsys):
    good = [tmp_path / p.name for p in YAMLS]
    for path, copy_ in zip(YAMLS, good):
        copy_.write_text(yaml.safe_dump(filled(path)))
    cfg = filled(GPU)
    del cfg["provider"]["cache_stopped_nodes"]
    cfg["available_node_types"]["head"]["node_config"]["ImageId"] = "latest_dlami"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(cfg))
    assert clusterconfig.main([str(p) for p in good]) == 0
    assert capsys.readouterr().out == ""
    assert clusterconfig.main([str(good[0]), str(broken)]) == 2
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
    assert load(V6E)["provider"]["project_id"] is None
    for node_type in load(GPU)["available_node_types"].values():
        assert node_type["node_config"]["SecurityGroupIds"] == ["sg-REPLACE-ME"]
        assert node_type["node_config"]["ImageId"] == "ami-REPLACE-ME"


def test_the_nodes_ray_is_the_one_pyproject_pins_for_ray_up():
    """`ray up` needs the same Ray on this machine (the [cluster] extra) and on the nodes."""
    from importlib.metadata import version

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [pin] = [r for r in extras["cluster"] if r.startswith("ray")]
    assert pin == f"ray[default]=={version('ray')}"
    for path in (TPU, V6E, GPU):
        assert any(f"'{pin}'" in c for c in load(path)["setup_commands"]), path


def test_ray_up_ships_the_checkout_only_from_its_root(tmp_path, monkeypatch):
    """What `ray up` does with file_mounts before it syncs any (Ray's own hash_runtime_conf, which
    reads every local path, after making the head VM): from the checkout's root the named pieces;
    from $HOME (the checkout in ~/ymxb) it stops at the first one missing, where the old `.`
    would have gone on to ship the home folder, ~/.ssh included. And the filters Ray gives rsync."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner
    from ray.autoscaler._private.util import hash_runtime_conf

    cfg = prepared(filled(TPU))
    mounts = {remote: local for remote, local in cfg["file_mounts"].items() if "auth_token" not in remote}
    monkeypatch.chdir(ROOT)
    hash_runtime_conf(mounts, None, cfg, generate_file_mounts_contents_hash=True)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("private")
    (home / "ymxb").symlink_to(ROOT)
    monkeypatch.chdir(home)
    with pytest.raises(FileNotFoundError) as missing:
        hash_runtime_conf(mounts, None, cfg, generate_file_mounts_contents_hash=True)
    assert missing.value.filename == "README.md"
    hash_runtime_conf({"~/ymxb": "."}, None, cfg, generate_file_mounts_contents_hash=True)  # the old way: on it goes
    options = {"rsync_filter": cfg["rsync_filter"], "rsync_exclude": cfg["rsync_exclude"]}
    assert SSHCommandRunner._create_rsync_filter_args(None, options) == [
        "--exclude", "__pycache__", "--filter", "dir-merge,- .gitignore"]


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


def test_autoscaler_v2_keeps_ray_on_one_host_of_a_multi_host_slice(tmp_path, monkeypatch):
    """Why the configs run autoscaler v1 (the autoscaler rule), in v2's own classes: the four
    hosts of one v6e-16 TPU node all report its name as their cloud instance id. v2's reconciler
    keeps one instance record per Ray node (reconciler.py, _handle_extra_cloud_instances_from_
    ray_nodes), so one TPU node becomes four records of type tpu_slice; its scheduler then holds
    max_workers: 1 against them (scheduler.py, _enforce_max_workers_per_type) and asks to stop
    Ray on three hosts. If a Ray release changes this, revisit the rule and the README."""
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig
    from ray.autoscaler.v2.instance_manager.instance_manager import InstanceManager
    from ray.autoscaler.v2.instance_manager.instance_storage import InstanceStorage
    from ray.autoscaler.v2.instance_manager.reconciler import Reconciler
    from ray.autoscaler.v2.instance_manager.storage import InMemoryStorage
    from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
    from ray.autoscaler.v2.schema import AutoscalerInstance
    from ray.core.generated.autoscaler_pb2 import NodeState, NodeStatus
    from ray.core.generated.instance_manager_pb2 import Instance, TerminationRequest

    # The config's hash reads every file_mounts' local file, the token among them: a machine that
    # never ran a Ray with a token has none, so the test brings its own.
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("a-test-token\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    config = AutoscalingConfig(configs=prepared(filled(V6E)))
    manager = InstanceManager(InstanceStorage("ymxb", InMemoryStorage()), None)
    tpu_node = "ray-ymxb-tpu-v6e-16-worker-0c1d"  # the TPU node's name: RAY_CLOUD_INSTANCE_ID on every host
    hosts = [NodeState(node_id=bytes([i + 1]) * 28, instance_id=tpu_node, ray_node_type_name="tpu_slice",
                       status=NodeStatus.RUNNING, total_resources={"TPU": 4.0}, available_resources={"TPU": 4.0},
                       node_ip_address=f"10.0.0.{i + 2}") for i in range(4)]
    Reconciler._handle_extra_cloud_instances_from_ray_nodes(manager, hosts[:1])  # worker 0 joins first
    Reconciler._handle_extra_cloud_instances_from_ray_nodes(manager, hosts)  # then the other three
    Reconciler._handle_ray_status_transition(manager, hosts, config)
    records, _ = Reconciler._get_im_instances(manager)
    assert [(r.cloud_instance_id, r.instance_type, r.status) for r in records] == [
        (tpu_node, "tpu_slice", Instance.RAY_RUNNING)] * 4
    by_id = {h.node_id.hex(): h for h in hosts}
    reply = ResourceDemandScheduler(None).schedule(SchedulingRequest(
        node_type_configs=config.get_node_type_configs(), max_num_nodes=config.get_max_num_nodes(),
        current_instances=[AutoscalerInstance(im_instance=r, ray_node=by_id[r.node_id], cloud_instance_id=r.cloud_instance_id)
                           for r in records], disable_launch_config_check=True))
    assert [(t.instance_type, t.cause) for t in reply.to_terminate] == [
        ("tpu_slice", TerminationRequest.Cause.MAX_NUM_NODE_PER_TYPE)] * 3
