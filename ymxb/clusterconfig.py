"""Read a `ray up` cluster YAML as Ray 2.60's provider will, and check what ymxb needs of it.

    python -m ymxb.clusterconfig cluster/*.yaml     # one line per violation; exit 2 if any
    python -m ymxb.clusterconfig --script head cluster/local-fake-tpu.yaml   # what a head runs

Ray's schema passes configs that would never come up, so each rule below reads the config after
Ray's own `prepare_config` (its defaults merged in, setup commands merged per node kind) and
checks one thing a real cluster needs, with the reason in the message:

- schema: Ray's cluster schema.
- head-idle: the head registers no CPU, so no host actor lands on it.
- tpu-node-config: TPU node_config keys the TPU API knows, a real pod type, all 4 chips per host.
- image: an explicit image; never AWS `latest_dlami` (Ray swaps in a deprecated Ubuntu 18.04 /
  CUDA 11.2 Deep Learning AMI, and aborts outside its 15 regions).
- python: every node makes a venv at ~/venv from a Python jax supports, installs into it only,
  and puts it first on PATH for `ray exec`.
- ray-start: explicit start commands (Ray's defaults run the system `ray`), Ray run from ~/venv.
- auth: the local token file shipped to every node, RAY_AUTH_MODE=token on every `ray start`
  (Ray 2.60 turns token auth on for a worker only when told) and in ~/.bashrc for clients.
- billing: `ray down` deletes, not stops (AWS cache_stopped_nodes defaults to true), and every
  disk goes with its VM.
- exposure: the dashboard on loopback; on AWS, security groups of your own (Ray's default group
  opens SSH to 0.0.0.0/0) and no rule open to the world.

The fake multi-node provider runs no setup or start commands on its workers: they are processes
of the head's autoscaler and inherit its environment, so only the head's commands are checked.
"""

import copy
import re
import sys
from dataclasses import dataclass
from importlib.metadata import metadata
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from packaging.specifiers import SpecifierSet

VENV = "~/venv"
TOKEN_FILE = "~/.ray/auth_token"  # where Ray 2.60 reads the token (authentication_token_setup.py)
AUTH_MODE = "RAY_AUTH_MODE=token"  # Ray's AUTH_MODE_ENV_VAR, set to token
FAKE = "fake_multinode"
LOOPBACK = {"127.0.0.1", "localhost"}
WORLD = {"0.0.0.0/0", "::/0"}
# What Ray's AWS provider does with `ImageId: latest_dlami` (aws/config.py DEFAULT_AMI_NAME).
RAY_DLAMI = "AWS Deep Learning AMI (Ubuntu 18.04) V71.0 (CUDA 11.2)"
# The TPU API Node fields Ray passes on; Ray's schema does not look inside node_config.
TPU_NODE_CONFIG_KEYS = {"acceleratorType", "acceleratorConfig", "runtimeVersion", "networkConfig",
                        "serviceAccount", "schedulingConfig", "metadata", "labels", "tags",
                        "dataDisks", "shieldedInstanceConfig", "description"}
TPU_CHIPS_PER_HOST = 4

_VENV_BIN = r"(?:~|\$HOME|\$\{HOME\})/venv/bin/"
_MAKES_VENV = re.compile(r"python3\.(\d+)\S*\s+-m\s+venv\b[^;&|]*?(?:~|\$HOME)/venv\b")
_RAY_CLI = re.compile(r"(?<![\w/.~$-])([^\s;&|()'\"]*?\bray)\s+([a-z][a-z-]*)"
                      r"|(\S*python[\d.]*)\s+-m\s+ray\.scripts\.scripts\s+([a-z][a-z-]*)")
_PIP_INSTALL = re.compile(r"([^\s;&|()'\"]*\bpip3?)\s+install\b|(\S*python[\d.]*)\s+-m\s+pip\s+install\b")
_BASHRC = re.compile(r">>\s*(?:~|\$HOME)/\.bashrc")


@dataclass(frozen=True)
class Violation:
    """One broken rule: which, and what is wrong (with the fix where there is one)."""
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


RULES: List[Callable[[dict], Iterator[str]]] = []  # schema first: check() relies on it


def rule(name: str):
    """Register a check; rules run in the order they are defined."""
    def register(fn):
        fn.rule_name = name
        RULES.append(fn)
        return fn
    return register


def load(path: str) -> dict:
    """The YAML file at path, as a dict."""
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def prepared(cfg: dict) -> dict:
    """The config as Ray's provider sees it: defaults merged, setup commands merged per node kind.

    The 2.60 wheel lacks the fake provider's defaults file, so a fake config (which spells out
    every key) only gets its setup commands merged.
    """
    from ray.autoscaler._private.util import merge_setup_commands, prepare_config

    cfg = copy.deepcopy(cfg)
    if cfg.get("provider", {}).get("type") == FAKE:
        return merge_setup_commands(cfg)
    return prepare_config(cfg)


def check(cfg: dict) -> List[Violation]:
    """Every violation of every rule; empty if the config is fine."""
    try:
        ready = prepared(cfg)
    except Exception as e:  # a config Ray cannot even prepare: report it, check nothing else
        return [Violation("schema", f"Ray cannot prepare this config: {_first_line(e)}")]
    found = [Violation("schema", message) for message in _schema(ready)]
    if found:  # the other rules read keys the schema vouches for
        return found
    return [Violation(fn.rule_name, message) for fn in RULES[1:] for message in fn(ready)]


def node_commands(cfg: dict) -> Dict[str, List[str]]:
    """What each kind of node runs, in Ray's order: initialization, setup, start commands.

    Keys: "head" and each worker node type (none for the fake provider, whose workers run no
    commands). cfg must be `prepared`.
    """
    head_type = cfg["head_node_type"]
    kinds = {"head": (cfg.get("initialization_commands", []) + cfg.get("head_setup_commands", [])
                      + cfg.get("head_start_ray_commands", []))}
    if cfg["provider"]["type"] == FAKE:
        return kinds
    for name, node_type in cfg["available_node_types"].items():
        if name == head_type:
            continue
        # Ray's _get_node_type_specific_fields: a node type's own list replaces the global one.
        kinds[name] = (node_type.get("initialization_commands", cfg.get("initialization_commands", []))
                       + node_type.get("worker_setup_commands", cfg.get("worker_setup_commands", []))
                       + cfg.get("worker_start_ray_commands", []))
    return kinds


def start_commands(cfg: dict) -> Dict[str, List[str]]:
    """The start commands of each node kind (as in node_commands)."""
    starts = {"head": cfg.get("head_start_ray_commands", [])}
    for kind in node_commands(cfg):
        if kind != "head":
            starts[kind] = cfg.get("worker_start_ray_commands", [])
    return starts


@rule("schema")
def _schema(cfg: dict) -> Iterator[str]:
    from ray.autoscaler._private.util import validate_config

    try:
        validate_config(cfg)
    except Exception as e:
        yield f"Ray's schema rejects it: {_first_line(e)}"


@rule("head-idle")
def _head_idle(cfg: dict) -> Iterator[str]:
    head = cfg["available_node_types"][cfg["head_node_type"]]
    cpus = head.get("resources", {}).get("CPU")
    if cpus != 0:
        yield (f"the head node type {cfg['head_node_type']!r} registers CPU {cpus}: set resources "
               '{"CPU": 0} so no host actor lands on the head')


@rule("tpu-node-config")
def _tpu_node_config(cfg: dict) -> Iterator[str]:
    from ray._private.accelerators.tpu import TPUAcceleratorManager

    for name, node_type in cfg["available_node_types"].items():
        node_config = node_type.get("node_config", {})
        labels = node_type.get("labels", {})
        if "acceleratorType" in node_config or "ray.io/tpu-slice-name" in labels:
            unknown = sorted(set(node_config) - TPU_NODE_CONFIG_KEYS)
            if unknown:
                yield f"{name}: node_config keys the TPU API does not know: {unknown}"
            pod_type = node_config.get("acceleratorType") or labels.get("ray.io/tpu-pod-type", "")
            if not TPUAcceleratorManager.is_valid_tpu_accelerator_type(pod_type):
                yield f"{name}: {pod_type!r} is not a TPU pod type (like v4-16)"
            chips = node_type.get("resources", {}).get("TPU")
            if chips != TPU_CHIPS_PER_HOST:
                yield (f"{name}: resources TPU is {chips}, not {TPU_CHIPS_PER_HOST}: a host must offer "
                       "all its chips (a partial request narrows the chips JAX sees)")
        elif any(key.lower().startswith("accel") for key in node_config):
            yield f"{name}: misspelt accelerator key in node_config {sorted(node_config)}"


@rule("image")
def _image(cfg: dict) -> Iterator[str]:
    provider = cfg["provider"]["type"]
    for name, node_type in cfg["available_node_types"].items():
        node_config = node_type.get("node_config", {})
        if provider == "aws":
            image = str(node_config.get("ImageId", ""))
            if image.lower() in ("", "latest_dlami"):
                yield (f"{name}: ImageId {image or '(none)'!r} makes Ray pick {RAY_DLAMI}, deprecated "
                       "and too old for jax[cuda12] and Python 3.11 (and none outside Ray's 15 "
                       "regions): name an AMI id")
            elif not re.fullmatch(r"ami-[0-9a-f]+", image):
                yield f"{name}: ImageId {image!r} is not an AMI id (ami-...)"
        elif provider == "gcp":
            if "acceleratorType" in node_config or "acceleratorConfig" in node_config:
                if not node_config.get("runtimeVersion"):
                    yield f"{name}: a TPU node needs a runtimeVersion (its image)"
            elif not any(d.get("boot") and d.get("initializeParams", {}).get("sourceImage")
                         for d in node_config.get("disks", [])):
                yield f"{name}: no boot disk with an initializeParams.sourceImage"


@rule("python")
def _python(cfg: dict) -> Iterator[str]:
    supported = SpecifierSet(metadata("jax")["Requires-Python"])
    for kind, commands in node_commands(cfg).items():
        made = [int(m.group(1)) for c in commands for m in _MAKES_VENV.finditer(c)]
        if not made:
            yield (f"{kind}: no command makes the venv {VENV} (`python3.11 -m venv {VENV}`) that ray "
                   "and launch.py run in")
        for minor in made:
            if f"3.{minor}" not in supported:
                yield (f"{kind}: the venv is made with Python 3.{minor}, but jax needs Python "
                       f"{supported}")
        for command in commands:
            for m in _PIP_INSTALL.finditer(command):
                exe = m.group(1) or m.group(2)
                if not re.match(_VENV_BIN, exe):
                    yield (f"{kind}: `{_short(command)}` installs into the system Python; use "
                           f"{VENV}/bin/pip")
        if not any(_BASHRC.search(c) and "venv/bin" in c for c in commands):
            yield (f"{kind}: no setup command puts {VENV}/bin first on PATH in ~/.bashrc, where "
                   "`ray exec` and `ray attach` shells look")


@rule("ray-start")
def _ray_start(cfg: dict) -> Iterator[str]:
    for kind, commands in start_commands(cfg).items():
        if not any(_ray_calls(c, "start") for c in commands):
            yield f"{kind}: its start commands never run `ray start`"
    for kind, commands in node_commands(cfg).items():
        for command in commands:
            for exe, sub, _ in _ray_calls(command):
                if not re.match(_VENV_BIN, exe):
                    yield (f"{kind}: `{exe} {sub}` runs a Ray outside the venv (none on a fresh "
                           f"node, or another Python's): use {VENV}/bin/ray")


@rule("auth")
def _auth(cfg: dict) -> Iterator[str]:
    mounts = cfg.get("file_mounts", {}) or {}
    if not any(_is_token_path(remote) and _is_token_path(local) for remote, local in mounts.items()):
        yield (f"file_mounts does not ship {TOKEN_FILE} to {TOKEN_FILE} on the nodes: add "
               f"`{TOKEN_FILE}: {TOKEN_FILE}` (made by `ray get-auth-token --generate`)")
    for kind, commands in start_commands(cfg).items():
        for command in commands:
            if _ray_calls(command, "start") and not _auth_mode_before_start(command):
                yield (f"{kind}: `ray start` without {AUTH_MODE} before it in the same command: "
                       "Ray 2.60 starts that node without token authentication")
    for kind, commands in node_commands(cfg).items():
        if not any(_BASHRC.search(c) and AUTH_MODE in c for c in commands):
            yield (f"{kind}: no setup command exports {AUTH_MODE} in ~/.bashrc, so `ray exec` "
                   "clients (launch.py, ray status) do not use the token")


@rule("billing")
def _billing(cfg: dict) -> Iterator[str]:
    provider = cfg["provider"]
    # The providers' defaults: AWS NodeProvider True, GCP NodeProvider False (node_provider.py).
    cached = provider.get("cache_stopped_nodes", provider["type"] == "aws")
    if provider["type"] in ("aws", "gcp") and cached:
        yield ("cache_stopped_nodes is true (AWS's default): `ray down` only stops the VMs and "
               "their disks keep billing; set provider.cache_stopped_nodes: false")
    for name, node_type in cfg["available_node_types"].items():
        node_config = node_type.get("node_config", {})
        for disk in node_config.get("disks", []):
            if disk.get("autoDelete") is not True:
                yield f"{name}: a disk without autoDelete: true outlives `ray down` and keeps billing"
        for mapping in node_config.get("BlockDeviceMappings", []):
            if "Ebs" in mapping and mapping["Ebs"].get("DeleteOnTermination") is not True:
                yield (f"{name}: EBS volume {mapping.get('DeviceName')} without DeleteOnTermination: "
                       "true outlives `ray down` and keeps billing")


@rule("exposure")
def _exposure(cfg: dict) -> Iterator[str]:
    for command in cfg.get("head_start_ray_commands", []):
        for host in re.findall(r"--dashboard-host[= ]+(\S+)", command):
            if host not in LOOPBACK:
                yield (f"head: the dashboard listens on {host}: use --dashboard-host=127.0.0.1 "
                       "(`ray dashboard` forwards it over SSH)")
    if cfg["provider"]["type"] != "aws":
        return
    for name, node_type in cfg["available_node_types"].items():
        if not node_type.get("node_config", {}).get("SecurityGroupIds"):
            yield (f"{name}: no SecurityGroupIds, so Ray makes a group that opens SSH to 0.0.0.0/0: "
                   "name a group of yours (SSH from your address, all traffic within the group)")
    for permission in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        ranges = ([r.get("CidrIp") for r in permission.get("IpRanges", [])]
                  + [r.get("CidrIpv6") for r in permission.get("Ipv6Ranges", [])])
        for cidr in WORLD.intersection(ranges):
            yield (f"provider.security_group opens port {permission.get('FromPort')} to {cidr}: "
                   "narrow it to your address")


def _ray_calls(command: str, sub: Optional[str] = None) -> List[Tuple[str, str, int]]:
    """(executable, subcommand, offset) of each Ray CLI call in a shell command (`ray X`,
    `python -m ray.scripts.scripts X`); only those of subcommand sub if given."""
    calls = [(m.group(1) or m.group(3), m.group(2) or m.group(4), m.start())
             for m in _RAY_CLI.finditer(command)]
    return [c for c in calls if sub is None or c[1] == sub]


def _auth_mode_before_start(command: str) -> bool:
    first_start = min(offset for _, _, offset in _ray_calls(command, "start"))
    return AUTH_MODE in command[:first_start]


def _is_token_path(path: str) -> bool:
    return bool(re.fullmatch(r"(?:~|/home/[^/]+|/root)/\.ray/auth_token", str(path)))


def _short(command: str, width: int = 60) -> str:
    command = " ".join(command.split())
    return command if len(command) <= width else command[:width - 3] + "..."


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def script(cfg: dict, kind: str) -> str:
    """A bash script running what Ray runs on a `kind` node of cfg (see node_commands), each
    command wrapped as Ray's SSH command runner wraps it (login shell, ~/.bashrc sourced)."""
    from ray.autoscaler._private.command_runner import _with_interactive

    commands = node_commands(prepared(cfg))
    if kind not in commands:
        raise KeyError(f"no node kind {kind!r}: this config has {', '.join(commands)}")
    lines = ["#!/usr/bin/env bash", f"# What Ray runs on a {kind} node, in its order.", "set -e"]
    # ssh joins its arguments with spaces for the remote shell; so does this script.
    return "\n".join(lines + [" ".join(_with_interactive(c)) for c in commands[kind]]) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """Check each YAML file named; print `PATH: rule: message` per violation. With --script
    KIND, print instead what Ray would run on a KIND node of the one file named."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(prog="python -m ymxb.clusterconfig", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", metavar="CLUSTER.yaml")
    parser.add_argument("--script", metavar="KIND", help="print the commands a KIND node runs (head, ...)")
    args = parser.parse_args(argv)
    found = 0
    for path in args.paths:
        try:
            cfg = load(path)
        except (OSError, yaml.YAMLError) as e:
            print(f"{path}: cannot read: {_first_line(e)}", file=sys.stderr)
            return 2
        if args.script:
            try:
                print(script(cfg, args.script), end="")
            except KeyError as e:
                print(f"{path}: {e.args[0]}", file=sys.stderr)
                return 2
            continue
        for violation in check(cfg):
            print(f"{path}: {violation}")
            found += 1
    return 2 if found else 0


if __name__ == "__main__":
    sys.exit(main())
