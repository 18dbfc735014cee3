"""Read a `ray up` cluster YAML as Ray 2.60's provider will, and check what ymxb needs of it.

    python -m ymxb.ops.clusterconfig cluster/*.yaml     # one line per violation; exit 2 if any
    python -m ymxb.ops.clusterconfig --script head cluster/local-fake-tpu.yaml   # what a head runs

Ray's schema passes configs that would never come up, so each rule below reads the config after
Ray's own `prepare_config` (its defaults merged in, setup commands merged per node kind) and
checks one thing a real cluster needs, with the reason in the message:

- schema: Ray's cluster schema.
- head-idle: the head registers no CPU, so no host actor lands on it.
- tpu-node-config: TPU node_config keys the TPU API knows, a real pod type, every chip of a host
  (4, or 8 on a one-host v5e/v6e slice), a runtime made for the pod type's generation.
- gpu-node-config: a GPU machine type registers its GPUs (launch.py finds GPU nodes by them).
- image: an explicit image; never AWS `latest_dlami` (Ray swaps in a deprecated Ubuntu 18.04 /
  CUDA 11.2 Deep Learning AMI, and aborts outside its 15 regions); an AMI this checker knows is
  used in its own region, logged in to as its own user.
- fill-in: the placeholders filled in (GCP project, AWS security group and AMI).
- python: every node installs the Python it makes the venv ~/venv from (one jax supports),
  installs into the venv only, and puts it first on PATH for `ray exec`.
- packages: every node's Ray pinned to the version that runs `ray up` here; jax[tpu] on TPU
  hosts, jax[cuda12] on GPU nodes, the provider's client library on the head.
- ray-start: explicit start commands (Ray's defaults run the system `ray`), Ray run from ~/venv;
  the head's with --head and --autoscaling-config, a worker's with --address.
- autoscaler: the head runs autoscaler v1 (RAY_enable_autoscaler_v2=0 before its `ray start`):
  `ray up` turns v2 on, and v2 keeps Ray on one host of a multi-host TPU slice (README).
- auth: the token shipped to ~/.ray/auth_token on every node, RAY_AUTH_MODE=token on every
  `ray start` (Ray 2.60 turns token auth on for a worker only when told) and in ~/.bashrc.
- checkout: the checkout shipped to ~/ymxb by name (file_mounts are relative to where `ray up`
  runs: `.` run from $HOME ships all of it, ~/.ssh included), with rsync_filter [.gitignore].
- billing: `ray down` deletes, not stops (AWS cache_stopped_nodes defaults to true), and every
  disk goes with its VM.
- exposure: the dashboard on loopback; on AWS, security groups of your own (Ray's default group
  opens SSH to 0.0.0.0/0) and no rule open to the world.

The fake multi-node provider runs no setup or start commands on its workers: they are processes
of the head's autoscaler and inherit its environment, so only the head's commands are checked;
it runs in this checkout with this machine's Python, so nothing is shipped or downloaded.
"""

import contextlib
import copy
import io
import re
import sys
from dataclasses import dataclass
from importlib.metadata import metadata, version
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from packaging.specifiers import SpecifierSet

from ymxb.ops import ray_internals
from ymxb.errors import first_line
from ymxb.names import AUTH_MODE_ENV, EXIT_FAILED, TPU_POD_TYPE_LABEL, TPU_SLICE_LABEL

VENV = "~/venv"
TOKEN_FILE = "~/.ray/auth_token"  # where Ray 2.60 reads the token (authentication_token_setup.py)
AUTH_MODE = f"{AUTH_MODE_ENV}=token"
FAKE = "fake_multinode"
LOOPBACK = {"127.0.0.1", "localhost"}
WORLD = {"0.0.0.0/0", "::/0"}
# What Ray's AWS provider does with `ImageId: latest_dlami` (aws/config.py DEFAULT_AMI_NAME).
RAY_DLAMI = "AWS Deep Learning AMI (Ubuntu 18.04) V71.0 (CUDA 11.2)"
# The TPU API Node fields Ray passes on; Ray's schema does not look inside node_config.
TPU_NODE_CONFIG_KEYS = {"acceleratorType", "acceleratorConfig", "runtimeVersion", "networkConfig",
                        "serviceAccount", "schedulingConfig", "metadata", "labels", "tags",
                        "dataDisks", "shieldedInstanceConfig", "description"}
# TPU runtimes (runtimeVersion) and the generations they are made for (cloud.google.com/tpu/docs/
# runtimes): a slice booted with another generation's runtime has no working libtpu.
TPU_RUNTIMES = {"tpu-ubuntu2204-base": ("v2", "v3", "v4"), "tpu-vm-base": ("v2", "v3"),
                "tpu-vm-v4-base": ("v4",), "v2-alpha-tpuv5-lite": ("v5litepod",),
                "v2-alpha-tpuv5": ("v5p",), "v2-alpha-tpuv6e": ("v6e",)}
# AMIs this checker knows: id -> (its region, the user its image logs in as). An AMI id exists in
# one region only; any other AMI is the user's to match (README: `aws ssm get-parameter`).
KNOWN_AMIS = {
    # Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) of 2026-09-07 (README).
    "ami-0eb7d782cce2fe526": ("us-east-1", "ubuntu"),
}
PLACEHOLDER = "REPLACE-ME"  # in a value the user must fill in (sg-REPLACE-ME, ami-REPLACE-ME)
# What the head's autoscaler needs to reach each provider's API (Ray's provider imports it).
PROVIDER_CLIENTS = {"gcp": "google-api-python-client", "aws": "boto3"}
CHECKOUT = "~/ymxb"  # where the nodes keep the checkout (pip install -e, ray exec 'cd ~/ymxb ...')
# What `pip install -e ~/ymxb` and launch.py need of the checkout, each shipped by its own name.
CHECKOUT_NEEDS = ("README.md", "launch.py", "pyproject.toml", "ymxb")
AUTOSCALER_V1 = "RAY_enable_autoscaler_v2=0"

_VENV_BIN = r"(?:~|\$HOME|\$\{HOME\})/venv/bin/"
_MAKES_VENV = re.compile(r"python3\.(\d+)\S*\s+-m\s+venv\b[^;&|]*?(?:~|\$HOME)/venv\b")
_RAY_CLI = re.compile(r"(?<![\w/.~$-])([^\s;&|()'\"]*?\bray)\s+([a-z][a-z-]*)"
                      r"|(\S*python[\d.]*)\s+-m\s+ray\.scripts\.scripts\s+([a-z][a-z-]*)")
_PIP_INSTALL = re.compile(r"([^\s;&|()'\"]*\bpip3?)\s+install\b|(\S*python[\d.]*)\s+-m\s+pip\s+install\b")
_BASHRC = re.compile(r">>\s*(?:~|\$HOME)/\.bashrc")
_AUTOSCALER_V2 = re.compile(r"\bRAY_enable_autoscaler_v2=(\S*?)(?=[\s;]|$)")
_GPU_MACHINE = re.compile(r"(?:g\d|p\d)[a-z0-9-]*\.|(?:a2|a3|g2)-")  # AWS g5.12xlarge, p4d.24xlarge; GCP a2-, a3-, g2-


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
    cfg = copy.deepcopy(cfg)
    if cfg.get("provider", {}).get("type") == FAKE:
        return ray_internals.merge_setup_commands(cfg)
    # Ray's CLI logger prints its warnings on stdout, which is for the violations: they go to
    # stderr, less its advice for Docker clusters (no Docker here) on each file mount of a file.
    with contextlib.redirect_stdout(io.StringIO()) as said:
        ready = ray_internals.prepare_config(cfg)
    sys.stderr.writelines(line for line in said.getvalue().splitlines(keepends=True)
                          if not re.search(r"refers to a file|To ensure this mount updates properly", line))
    return ready


def check(cfg: dict) -> List[Violation]:
    """Every violation of every rule; empty if the config is fine."""
    try:
        ready = prepared(cfg)
    except Exception as e:  # a config Ray cannot even prepare: report it, check nothing else
        return [Violation("schema", f"Ray cannot prepare this config: {first_line(e)}")]
    found = [Violation("schema", message) for message in _schema(ready)]
    if found:  # the other rules read keys the schema vouches for
        return found
    found = [Violation(fn.rule_name, message) for fn in RULES[1:] for message in fn(ready)]
    return _merged(found, {"head", *ready["available_node_types"]})


def _merged(found: List[Violation], kinds: set) -> List[Violation]:
    """One line per defect: a message said of several node kinds (`head: ...`, `tpu_slice: ...`,
    from a list they share) becomes one, naming them all."""
    said: Dict[Tuple[str, str], List[str]] = {}
    for v in found:
        kind, _, rest = v.message.partition(": ")
        key = (v.rule, rest) if kind in kinds and rest else (v.rule, v.message)
        said.setdefault(key, []).append(kind if key[1] == rest else "")
    return [Violation(rule, f"{', '.join(names)}: {message}" if any(names) else message)
            for (rule, message), names in said.items()]


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
    try:
        ray_internals.validate_config(cfg)
    except Exception as e:
        yield f"Ray's schema rejects it: {first_line(e)}"


@rule("head-idle")
def _head_idle(cfg: dict) -> Iterator[str]:
    head = cfg["available_node_types"][cfg["head_node_type"]]
    cpus = head.get("resources", {}).get("CPU")
    if cpus != 0:
        yield (f"the head node type {cfg['head_node_type']!r} registers CPU {cpus}: set resources "
               '{"CPU": 0} so no host actor lands on the head')


@rule("tpu-node-config")
def _tpu_node_config(cfg: dict) -> Iterator[str]:
    for name, node_type in cfg["available_node_types"].items():
        node_config = node_type.get("node_config", {})
        if not _is_tpu(node_type):
            if any(key.lower().startswith("accel") for key in node_config):
                yield f"{name}: misspelt accelerator key in node_config {sorted(node_config)}"
            continue
        unknown = sorted(set(node_config) - TPU_NODE_CONFIG_KEYS)
        if unknown:
            yield f"{name}: node_config keys the TPU API does not know: {unknown}"
        pod_type = node_config.get("acceleratorType") or node_type.get("labels", {}).get(TPU_POD_TYPE_LABEL, "")
        if not ray_internals.is_tpu_pod_type(pod_type):
            yield f"{name}: {pod_type!r} is not a TPU pod type (like v4-16)"
            continue
        chips, per_host = node_type.get("resources", {}).get("TPU"), tpu_chips_per_host(pod_type)
        if chips != per_host:
            yield (f"{name}: resources TPU is {chips}, but a {pod_type} host has {per_host} chips: a "
                   "host must offer all its chips (a partial request narrows the chips JAX sees)")
        runtime, generation = node_config.get("runtimeVersion"), pod_type.split("-")[0]
        made_for = TPU_RUNTIMES.get(runtime, (generation,))  # a runtime not listed: not judged
        if generation not in made_for:
            fits = ", ".join(r for r, gens in TPU_RUNTIMES.items() if generation in gens)
            yield (f"{name}: runtimeVersion {runtime} is made for TPU {'/'.join(made_for)}, not for "
                   f"{pod_type}: use {fits or 'a ' + generation + ' runtime'}")


def tpu_chips_per_host(pod_type: str) -> int:
    """The chips each host of a `pod_type` slice has: 4, or all of a one-host v5e or v6e
    slice's (v6e-8: 8), as Ray's TPU accelerator manager counts them."""
    return ray_internals.tpu_chips_per_host(pod_type)


@rule("gpu-node-config")
def _gpu_node_config(cfg: dict) -> Iterator[str]:
    for name, node_type in cfg["available_node_types"].items():
        machine = _gpu_machine(node_type)
        if machine and not node_type.get("resources", {}).get("GPU"):
            yield (f"{name}: {machine} has GPUs, but its resources register none: add \"GPU\": N "
                   "(its GPU count) to resources, as launch.py finds GPU nodes by it")


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
            elif PLACEHOLDER in image:
                continue  # the fill-in rule says what to do
            elif not re.fullmatch(r"ami-[0-9a-f]+", image):
                yield f"{name}: ImageId {image!r} is not an AMI id (ami-...)"
            elif image in KNOWN_AMIS and KNOWN_AMIS[image][0] != cfg["provider"]["region"]:
                yield (f"{name}: ImageId {image} is an AMI of {KNOWN_AMIS[image][0]}, not of provider.region "
                       f"{cfg['provider']['region']} (an AMI id exists in one region): take that region's id "
                       "from `aws ssm get-parameter` (README, \"Run on GPU nodes\")")
        elif provider == "gcp":
            if _is_tpu(node_type):
                if not node_config.get("runtimeVersion"):
                    yield f"{name}: a TPU node needs a runtimeVersion (its image)"
            elif not any(d.get("boot") and d.get("initializeParams", {}).get("sourceImage")
                         for d in node_config.get("disks", [])):
                yield f"{name}: no boot disk with an initializeParams.sourceImage"
    yield from _ssh_user(cfg)


def _ssh_user(cfg: dict) -> Iterator[str]:
    """auth.ssh_user against the user of each AMI this checker knows (one user logs in to all)."""
    images = {str(t.get("node_config", {}).get("ImageId")) for t in cfg["available_node_types"].values()}
    user = cfg["auth"].get("ssh_user")
    for image in sorted(images & set(KNOWN_AMIS)):
        if KNOWN_AMIS[image][1] != user:
            yield (f"auth.ssh_user is {user!r}, but {image} logs in as {KNOWN_AMIS[image][1]!r}: `ray up` "
                   f"would wait for SSH until it gives up; set ssh_user: {KNOWN_AMIS[image][1]}")


@rule("fill-in")
def _fill_in(cfg: dict) -> Iterator[str]:
    provider = cfg["provider"]
    if provider["type"] == "gcp" and not provider.get("project_id"):
        yield ("provider.project_id is not filled in: put in your GCP project's id (Ray tries to "
               "create a project it cannot see)")
    for name, node_type in cfg["available_node_types"].items():
        node_config = node_type.get("node_config", {})
        if any(PLACEHOLDER in str(group) for group in node_config.get("SecurityGroupIds", [])):
            yield (f"{name}: SecurityGroupIds holds the placeholder {node_config['SecurityGroupIds']}: "
                   "make your group and put its id here (README, \"Run on GPU nodes\")")
        if PLACEHOLDER in str(node_config.get("ImageId", "")):
            yield (f"{name}: ImageId is the placeholder {node_config['ImageId']}: put in the current AMI "
                   f"of {provider.get('region')} from `aws ssm get-parameter` (README, \"Run on GPU nodes\")")


@rule("python")
def _python(cfg: dict) -> Iterator[str]:
    supported = SpecifierSet(metadata("jax")["Requires-Python"])
    for kind, commands in node_commands(cfg).items():
        made = [(i, m) for i, c in enumerate(commands) for m in _MAKES_VENV.finditer(c)]
        if not made:
            yield (f"{kind}: no command makes the venv {VENV} (`python3.11 -m venv {VENV}`) that ray "
                   "and launch.py run in")
        for i, m in made:
            minor = int(m.group(1))
            if f"3.{minor}" not in supported:
                yield (f"{kind}: the venv is made with Python 3.{minor}, but jax needs Python "
                       f"{supported}")
            elif cfg["provider"]["type"] != FAKE and not _installed_before(commands, i, m.start(), minor):
                yield (f"{kind}: nothing installs Python 3.{minor} before `python3.{minor} -m venv` (the "
                       f"images ship 3.10): apt-get install python3.{minor} python3.{minor}-venv first "
                       "(initialization_commands, from the deadsnakes PPA)")
        for command in commands:
            for m in _PIP_INSTALL.finditer(command):
                exe = m.group(1) or m.group(2)
                if not re.match(_VENV_BIN, exe):
                    yield (f"{kind}: `{_short(command)}` installs into the system Python; use "
                           f"{VENV}/bin/pip")
        if not any(_BASHRC.search(c) and "venv/bin" in c for c in commands):
            yield (f"{kind}: no setup command puts {VENV}/bin first on PATH in ~/.bashrc, where "
                   "`ray exec` and `ray attach` shells look")


@rule("packages")
def _packages(cfg: dict) -> Iterator[str]:
    provider = cfg["provider"]["type"]
    if provider == FAKE:  # its nodes run this machine's Python, with what it has installed
        return
    ours = version("ray")
    types = cfg["available_node_types"]
    for kind, commands in node_commands(cfg).items():
        installs = [arg for c in commands for arg in _pip_installed(c)]
        rays = [arg for arg in installs if re.match(r"ray(\[|$|[=<>!~])", arg)]
        if not rays:
            yield f"{kind}: no command installs Ray into {VENV}: `{VENV}/bin/pip install 'ray[default]=={ours}'`"
        for arg in rays:
            if not arg.endswith(f"=={ours}"):
                yield (f"{kind}: installs {arg}, but this machine runs Ray {ours}: the Ray of `ray up` "
                       f"and the cluster's must be the same; pin ray[default]=={ours}")
        node_type = types.get(cfg["head_node_type"] if kind == "head" else kind, {})
        needs = []
        if _is_tpu(node_type):
            needs.append(("jax[tpu]", ("[tpu]",), "on each TPU host (ymxb[tpu])"))
        if _gpu_machine(node_type) or node_type.get("resources", {}).get("GPU"):
            needs.append(("jax[cuda12]", ("[gpu]", "jax[cuda12]"), "on each GPU node (ymxb[gpu])"))
        if kind == "head" and provider in PROVIDER_CLIENTS:
            client = PROVIDER_CLIENTS[provider]
            needs.append((client, (client,), "on the head, for the autoscaler's calls to the cloud"))
        for package, spelt, where in needs:
            if not any(s in arg for arg in installs for s in spelt):
                yield f"{kind}: no command installs {package} into {VENV}: it is needed {where}"


@rule("ray-start")
def _ray_start(cfg: dict) -> Iterator[str]:
    for kind, commands in start_commands(cfg).items():
        starts = [(c, offset) for c in commands for _, _, offset in _ray_calls(c, "start")]
        if not starts:
            yield f"{kind}: its start commands never run `ray start`"
        wanted = (("--head", "--autoscaling-config") if kind == "head" else ("--address",))
        for command, offset in starts:
            args = _call_args(command, offset)
            for flag in wanted:
                if not re.search(rf"(?<!\S){flag}(?:[= ]|$)", args):
                    yield f"{kind}: `ray start` without {flag}: {_START_FLAGS[flag]}"
    for kind, commands in node_commands(cfg).items():
        for command in commands:
            for exe, sub, _ in _ray_calls(command):
                if not re.match(_VENV_BIN, exe):
                    yield (f"{kind}: `{exe} {sub}` runs a Ray outside the venv (none on a fresh "
                           f"node, or another Python's): use {VENV}/bin/ray")


_START_FLAGS = {
    "--head": "the head node must start the cluster's head",
    "--autoscaling-config": ("the head then runs no autoscaler, and no worker is ever made; add "
                             "--autoscaling-config=~/ray_bootstrap_config.yaml"),
    "--address": "the worker joins no cluster; add --address=$RAY_HEAD_IP:6379",
}


@rule("autoscaler")
def _autoscaler(cfg: dict) -> Iterator[str]:
    for command in cfg.get("head_start_ray_commands", []):
        for _, _, offset in _ray_calls(command, "start"):
            said = _AUTOSCALER_V2.findall(command[:offset])
            if not said or said[-1] != "0":
                yield (f"head: `ray start` without {AUTOSCALER_V1} before it in the same command: `ray "
                       "up` turns autoscaler v2 on, which keeps Ray on only one host of a multi-host "
                       "TPU slice (README)")


@rule("auth")
def _auth(cfg: dict) -> Iterator[str]:
    mounts = cfg.get("file_mounts", {}) or {}
    if not any(_is_token_path(remote) and local for remote, local in mounts.items()):
        yield (f"file_mounts does not ship the token to {TOKEN_FILE} on the nodes: add "
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


@rule("checkout")
def _checkout(cfg: dict) -> Iterator[str]:
    if cfg["provider"]["type"] == FAKE:  # its head runs in this checkout: nothing is shipped
        return
    mounts = {remote.rstrip("/"): str(local) for remote, local in (cfg.get("file_mounts") or {}).items()}
    ours = {remote: local for remote, local in mounts.items()
            if remote == CHECKOUT or remote.startswith(CHECKOUT + "/")}
    whole = [(remote, local) for remote, local in ours.items() if _whole_folder(local)]
    for remote, local in whole:
        yield (f"file_mounts ships {local!r} to {remote}: a path relative to where `ray up` runs "
               "(from $HOME, all of it, ~/.ssh included); ship the checkout by name instead: "
               f"{', '.join(f'{CHECKOUT}/{n}: {n}' for n in CHECKOUT_NEEDS)}")
    missing = [n for n in CHECKOUT_NEEDS
               if mounts.get(f"{CHECKOUT}/{n}", "").rstrip("/").removeprefix("./") != n]
    if missing and not whole:
        yield (f"file_mounts does not ship {', '.join(missing)} of the checkout to {CHECKOUT}/ "
               f"(`pip install -e {CHECKOUT}` and launch.py need them): add "
               f"{', '.join(f'{CHECKOUT}/{n}: {n}' for n in missing)}")
    if ".gitignore" not in (cfg.get("rsync_filter") or []):
        yield ("rsync_filter lacks .gitignore: what git ignores goes to every node; set "
               "rsync_filter: [.gitignore]")


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


def _call_args(command: str, offset: int) -> str:
    """The text of the shell call that starts at offset, up to the next ;, &&, || or |."""
    return re.split(r";|&&|\|\||\|", command[offset:], maxsplit=1)[0]


def _installed_before(commands: List[str], index: int, offset: int, minor: int) -> bool:
    """Whether an apt install of python3.<minor>-venv comes before commands[index][offset:]."""
    earlier = commands[:index] + [commands[index][:offset]]
    return any(re.search(rf"\binstall\b[^;&|]*\bpython3\.{minor}-venv\b", c) for c in earlier)


def _pip_installed(command: str) -> List[str]:
    """What each `pip install` call in a shell command installs (its arguments, unquoted)."""
    found = []
    for m in _PIP_INSTALL.finditer(command):
        args = _call_args(command, m.end()).replace("'", "").replace('"', "").split()
        found += [a for a in args if not a.startswith("-")]
    return found


def _is_tpu(node_type: dict) -> bool:
    node_config = node_type.get("node_config", {})
    return ("acceleratorType" in node_config or "acceleratorConfig" in node_config
            or TPU_SLICE_LABEL in node_type.get("labels", {}))


def _gpu_machine(node_type: dict) -> Optional[str]:
    """The node type's machine type where it is one with GPUs (AWS g*/p*, GCP a2/a3/g2 or with
    guestAccelerators), else None."""
    node_config = node_type.get("node_config", {})
    machine = str(node_config.get("InstanceType") or node_config.get("machineType") or "")
    if _GPU_MACHINE.match(machine) or node_config.get("guestAccelerators"):
        return machine or "a machine with guestAccelerators"
    return None


def _whole_folder(local: str) -> bool:
    """A local path that names a folder by where `ray up` runs or an absolute one (., .., ~, /...),
    not an item of the checkout by its name."""
    path = local.rstrip("/") or "/"
    return path in (".", "~") or path.startswith(("/", "~", "$")) or ".." in path.split("/")


def _is_token_path(path: str) -> bool:
    return bool(re.fullmatch(r"(?:~|/home/[^/]+|/root)/\.ray/auth_token", str(path)))


def _short(command: str, width: int = 60) -> str:
    command = " ".join(command.split())
    return command if len(command) <= width else command[:width - 3] + "..."


def script(cfg: dict, kind: str) -> str:
    """A bash script running what Ray runs on a `kind` node of cfg (see node_commands), each
    command wrapped as Ray's SSH command runner wraps it (login shell, ~/.bashrc sourced)."""
    commands = node_commands(prepared(cfg))
    if kind not in commands:
        raise KeyError(f"no node kind {kind!r}: this config has {', '.join(commands)}")
    lines = ["#!/usr/bin/env bash", f"# What Ray runs on a {kind} node, in its order.", "set -e"]
    # ssh joins its arguments with spaces for the remote shell; so does this script.
    return "\n".join(lines + [" ".join(ray_internals.as_ssh_runs(c)) for c in commands[kind]]) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    """Check each YAML file named; print `PATH: rule: message` per violation. With --script
    KIND, print instead what Ray would run on a KIND node of the one file named."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(prog="python -m ymxb.ops.clusterconfig", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", metavar="CLUSTER.yaml")
    parser.add_argument("--script", metavar="KIND", help="print the commands a KIND node runs (head, ...)")
    args = parser.parse_args(argv)
    found = 0
    for path in args.paths:
        try:
            cfg = load(path)
        except (OSError, yaml.YAMLError) as e:
            print(f"{path}: cannot read: {first_line(e)}", file=sys.stderr)
            return EXIT_FAILED
        if args.script:
            try:
                print(script(cfg, args.script), end="")
            except KeyError as e:
                print(f"{path}: {e.args[0]}", file=sys.stderr)
                return EXIT_FAILED
            continue
        for violation in check(cfg):
            print(f"{path}: {violation}")
            found += 1
    return EXIT_FAILED if found else 0


if __name__ == "__main__":
    sys.exit(main())
