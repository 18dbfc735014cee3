"""A multi-node Ray cluster on one machine: each Ray node in its own network namespace, with its
own interface and address, on a bridge that leads nowhere else.

    python -m ymxb.ops.testbed run --tpu v4-32 -- python launch.py --platform tpu --json
    python -m ymxb.ops.testbed up --gpu 2:2          # prints the bed's id and head address
    python -m ymxb.ops.testbed down --id ID

Node 0 (the head, CPU only) and one node per pretend TPU host, GPU node or CPU node get
addresses 198.18.0.1, .2, ... from the block reserved for network testing (198.18.0.0/15).
The bridge has no address in the main namespace and no namespace has a default route, so
nothing leaves the bed. Pretend TPU hosts register the resources, `ray.io/tpu-*` labels and
environment a TPU VM does; their JAX uses CPU devices (`YMXB_CPU_DEVICES`, set by `run`).
Every name carries the prefix and the bed's id, so beds never collide; `down` kills exactly the
processes inside the bed's namespaces and removes every namespace and link it made.
Needs root and iproute2.
"""

import argparse
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from typing import Dict, List, Optional

from ymxb.names import (ACCELERATOR_LABEL, AUTH_MODE_ENV, EXIT_FAILED, CPU_DEVICES_ENV, TPU_POD_TYPE_LABEL,
                        TPU_SLICE_LABEL, TPU_TOPOLOGY_LABEL, TPU_WORKER_LABEL)
from ymxb.ops.reaper import wait_gone

PREFIX = "ybed"
NETWORK = ipaddress.ip_network("198.18.0.0/15")
RAY_PORT = 6379
STATE_DIR = "/tmp"  # the bed's state file and its nodes' Ray folders
CPU_DEVICES = 4  # CPU devices a pretend TPU host or GPU node's JAX gets

# Pretend TPU slices: pod type -> (topology, hosts, chips per host, accelerator type).
TPU_KINDS = {
    "v4-8": ("2x2x1", 1, 4, "TPU-V4"),
    "v4-16": ("2x2x2", 2, 4, "TPU-V4"),
    "v4-32": ("2x2x4", 4, 4, "TPU-V4"),
    "v6e-16": ("4x4", 4, 4, "TPU-V6E"),
}


class BedError(RuntimeError):
    """The bed cannot be built here; the message says why (one line)."""


@dataclasses.dataclass
class Node:
    index: int
    ip: str
    resources: Dict[str, float]
    labels: Dict[str, str]
    env: Dict[str, str]
    num_cpus: int = 1
    num_gpus: int = 0


@dataclasses.dataclass
class Bed:
    id: str
    nodes: List[Node]

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{RAY_PORT}"

    def netns(self, i: int) -> str:
        return f"{PREFIX}{self.id}-n{i}"

    def link(self, i: int) -> str:
        """The bridge side of node i's veth pair: take it down to cut node i off."""
        return f"{PREFIX}{self.id}v{i}"

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.id}br"

    @property
    def folder(self) -> str:
        return os.path.join(STATE_DIR, f"{PREFIX}-{self.id}")

    def env(self) -> Dict[str, str]:
        """Environment for a Ray client in the head's namespace."""
        return {"RAY_ADDRESS": self.address, AUTH_MODE_ENV: "token", CPU_DEVICES_ENV: str(CPU_DEVICES)}

    def exec(self, i: int, cmd: List[str], **kwargs) -> subprocess.CompletedProcess:
        """Run `cmd` in node i's namespace (environment: ours plus the bed's)."""
        return subprocess.run(["ip", "netns", "exec", self.netns(i), *cmd],
                              env={**os.environ, **self.env(), **kwargs.pop("env", {})}, **kwargs)

    def pids(self, i: int) -> List[int]:
        """The processes running in node i's namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.netns(i)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


def plan(tpu: List[str] = (), gpu: List[str] = (), cpu: int = 0, bed_id: Optional[str] = None) -> Bed:
    """The nodes of a bed: a CPU head, then each pretend TPU slice's hosts, GPU nodes ("N:K",
    N nodes with K GPUs), and `cpu` plain CPU nodes."""
    bed_id = bed_id or uuid.uuid4().hex[:4]
    specs = [dict(resources={}, labels={}, env={})]
    for s, kind in enumerate(tpu):
        if kind not in TPU_KINDS:
            raise BedError(f"--tpu {kind!r}: one of {', '.join(TPU_KINDS)}")
        topology, hosts, chips, accelerator = TPU_KINDS[kind]
        name = f"{PREFIX}{bed_id}-slice{s}"
        for worker in range(hosts):
            resources = {"TPU": chips, f"accelerator_type:{accelerator}": 1, name: 1}
            if worker == 0:
                resources[f"TPU-{kind}-head"] = 1
            specs.append(dict(resources=resources, env={"TPU_NAME": name, "TPU_WORKER_ID": str(worker)},
                              labels={TPU_SLICE_LABEL: name, TPU_WORKER_LABEL: str(worker),
                                      TPU_POD_TYPE_LABEL: kind, TPU_TOPOLOGY_LABEL: topology,
                                      ACCELERATOR_LABEL: accelerator}))
    for group in gpu:
        count, _, gpus = group.partition(":")
        if not (count.isdigit() and gpus.isdigit() and int(count) > 0 and int(gpus) > 0):
            raise BedError(f"--gpu {group!r}: write N:K, N nodes with K GPUs each (e.g. 2:4)")
        specs += [dict(resources={}, labels={}, env={}, num_gpus=int(gpus)) for _ in range(int(count))]
    specs += [dict(resources={}, labels={}, env={}) for _ in range(cpu)]
    hosts = list(NETWORK.hosts())
    return Bed(bed_id, [Node(i, str(hosts[i]), **spec) for i, spec in enumerate(specs)])


def check_can_run() -> None:
    """BedError, in one line, where a bed cannot be built."""
    if os.geteuid() != 0:
        raise BedError("the test bed needs root (network namespaces, a bridge)")
    if not shutil.which("ip"):
        raise BedError("the test bed needs iproute2's `ip` command (apt-get install iproute2)")


def up(bed: Bed, ray_cli: Optional[str] = None, timeout: float = 120) -> Bed:
    """Build the network, then start a Ray node in every namespace; wait for all to join."""
    check_can_run()
    os.makedirs(bed.folder, exist_ok=True)
    _save(bed)
    try:
        _network(bed)
        _ray_nodes(bed, ray_cli or _ray_cli(), timeout)
    except BaseException:
        down(bed)
        raise
    return bed


def down(bed: Bed) -> None:
    """Kill every process inside the bed's namespaces, then remove namespaces, links, bridge."""
    for i in range(len(bed.nodes)):
        if os.path.exists(f"/run/netns/{bed.netns(i)}"):
            _kill(bed.pids(i))
            subprocess.run(["ip", "netns", "del", bed.netns(i)], capture_output=True)
    for name in [bed.link(i) for i in range(len(bed.nodes))] + [bed.bridge]:
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    shutil.rmtree(bed.folder, ignore_errors=True)
    with_state = _state_path(bed.id)
    if os.path.exists(with_state):
        os.remove(with_state)


def leftovers(bed: Bed) -> List[str]:
    """What of the bed still exists: namespaces, links, folders (empty after `down`)."""
    names = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found = [bed.netns(i) for i in range(len(bed.nodes)) if bed.netns(i) in names]
    found += [n for n in [bed.bridge] + [bed.link(i) for i in range(len(bed.nodes))] if f" {n}@" in links or f" {n}:" in links]
    return found + [p for p in (bed.folder, _state_path(bed.id)) if os.path.exists(p)]


def _network(bed: Bed) -> None:
    _ip("link", "add", bed.bridge, "type", "bridge")
    _ip("link", "set", bed.bridge, "up")  # no address: the main namespace is not on the bed
    for node in bed.nodes:
        ns, outside, inside = bed.netns(node.index), bed.link(node.index), f"{PREFIX}{bed.id}i{node.index}"
        _ip("netns", "add", ns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", ns)
        _ip("link", "set", outside, "master", bed.bridge)
        _ip("link", "set", outside, "up")
        for args in (("link", "set", "lo", "up"), ("addr", "add", f"{node.ip}/{NETWORK.prefixlen}", "dev", inside),
                     ("link", "set", inside, "up")):
            _ip("-n", ns, *args)


def _ray_nodes(bed: Bed, ray_cli: str, timeout: float) -> None:
    subprocess.run([ray_cli, "get-auth-token", "--generate"], capture_output=True, check=True,
                   env={**os.environ, AUTH_MODE_ENV: "token"})
    head = _start_node(bed, bed.head, ray_cli, ["--head", f"--port={RAY_PORT}"])
    _wait(head, timeout, "the head node")
    workers = [(n, _start_node(bed, n, ray_cli, [f"--address={bed.address}"])) for n in bed.nodes[1:]]
    for node, proc in workers:
        _wait(proc, timeout, f"node {node.index} ({node.ip})")
    _wait_joined(bed, timeout)


def _start_node(bed: Bed, node: Node, ray_cli: str, role: List[str]) -> subprocess.Popen:
    cmd = [ray_cli, "start", *role, f"--node-ip-address={node.ip}", f"--num-cpus={node.num_cpus}",
           f"--temp-dir={bed.folder}/n{node.index}", "--disable-usage-stats"]
    if node.index == 0:
        cmd.append("--include-dashboard=false")
    if node.num_gpus:
        cmd.append(f"--num-gpus={node.num_gpus}")
    if node.resources:
        cmd.append(f"--resources={json.dumps(node.resources)}")
    if node.labels:
        cmd.append("--labels=" + ",".join(f"{k}={v}" for k, v in node.labels.items()))
    env = {**os.environ, AUTH_MODE_ENV: "token", **node.env}
    return subprocess.Popen(["ip", "netns", "exec", bed.netns(node.index), *cmd], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen, timeout: float, what: str) -> None:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise BedError(f"`ray start` for {what} did not finish in {timeout:g} s") from None
    if proc.returncode:
        tail = " | ".join(out.strip().splitlines()[-3:])
        raise BedError(f"`ray start` for {what} failed ({proc.returncode}): {tail}")


WAIT_FOR_NODES = """
import sys, time, ray
ray.init(log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[2])
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[1]):
    if time.monotonic() > deadline:
        sys.exit(f"only {sum(n['Alive'] for n in ray.nodes())} of {sys.argv[1]} nodes joined")
    time.sleep(0.5)
"""


def _wait_joined(bed: Bed, timeout: float) -> None:
    done = bed.exec(0, [sys.executable, "-c", WAIT_FOR_NODES, str(len(bed.nodes)), str(timeout)],
                    capture_output=True, text=True, timeout=timeout + 60)
    if done.returncode:
        raise BedError(f"the bed's nodes did not all join: {done.stderr.strip().splitlines()[-1:]}")


def _kill(pids: List[int], wait_s: float = 15.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_gone(pids, wait_s)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode:
        raise BedError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def _ray_cli() -> str:
    return shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray") or "ray"


def _state_path(bed_id: str) -> str:
    return os.path.join(STATE_DIR, f"{PREFIX}-{bed_id}.json")


def _save(bed: Bed) -> None:
    with open(_state_path(bed.id), "w") as f:
        json.dump(dataclasses.asdict(bed), f)


def load(bed_id: str) -> Bed:
    """The bed `up` made with this id (from its state file)."""
    try:
        with open(_state_path(bed_id)) as f:
            state = json.load(f)
    except FileNotFoundError:
        raise BedError(f"no test bed with id {bed_id!r} (no {_state_path(bed_id)})") from None
    return Bed(state["id"], [Node(**n) for n in state["nodes"]])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ymxb.ops.testbed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, what in (("up", "build a bed and leave it running; prints its id and head address"),
                       ("run", "build a bed, run CMD in the head's namespace, take the bed down; "
                               "exits with CMD's exit code")):
        s = sub.add_parser(name, help=what)
        s.add_argument("--tpu", action="append", default=[], metavar="POD_TYPE",
                       help=f"a pretend TPU slice ({', '.join(TPU_KINDS)}); repeat for several")
        s.add_argument("--gpu", action="append", default=[], metavar="N:K",
                       help="N nodes with K (pretend) GPUs each")
        s.add_argument("--cpu", type=int, default=0, metavar="N", help="N plain CPU nodes")
        s.add_argument("--id", help="the bed's id (default: random)")
        if name == "run":
            s.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ...")
    d = sub.add_parser("down", help="stop a bed's processes and remove its namespaces and links")
    d.add_argument("--id", required=True)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        check_can_run()
        if args.command == "down":
            down(load(args.id))
            return 0
        bed = plan(args.tpu, args.gpu, args.cpu, args.id)
        if args.command == "run":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                raise BedError("run needs a command after --")
        up(bed)
        if args.command == "up":
            print(json.dumps({"id": bed.id, "address": bed.address, "head_netns": bed.netns(0),
                              "nodes": [n.ip for n in bed.nodes]}))
            return 0
        try:
            return bed.exec(0, cmd).returncode
        finally:
            down(bed)
    except BedError as err:
        print(f"testbed: error: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
