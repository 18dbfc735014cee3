"""Where the hosts run. Each platform is a small class with no state: how to detect it on a Ray
cluster, the slice shape it gives (`shape`), how to reserve its hosts (`reserve`: a placement
group, one bundle per host, ready before any host starts) and what each host's process needs
(protocol.HostSetup). A `Reservation` holds the reserved slice until it is released.

Subclasses register themselves; the order of registration is the order of detection
(TPU, then GPU, then the CPU simulation, which any cluster can run).
"""

import dataclasses
import os
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Tuple

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ymxb.spec.settings import SliceSpec
from ymxb.errors import HostFailure, UsageError
from ymxb.names import (ACCELERATOR_LABEL, CPU_DEVICES_ENV, TPU_POD_TYPE_LABEL, TPU_SLICE_LABEL,
                        TPU_TOPOLOGY_LABEL, TPU_WORKER_LABEL)
from ymxb.protocol import HostSetup

# A simulated host asks for almost no CPU, so any number of them fits on a 2-core machine;
# a host left pending would make the others' jax.distributed.initialize time out and abort.
SIM_HOST_CPUS = 0.01
SIM_HOSTS, SIM_DEVICES = 4, 2  # the default simulated slice


def cpu_device_env(devices: int) -> Dict[str, str]:
    """Environment giving a host's JAX `devices` CPU devices (must be set before JAX starts)."""
    return {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def multislice_env(spec: SliceSpec, coordinator_ip: str, host_index: int) -> Dict[str, str]:
    """The multislice environment of process `host_index` (none for one slice), made as Ray
    Train makes it: the slices meet at slice 0's worker 0 (process 0, JAX's coordinator too).
    Made for each start from that start's coordinator, never inherited: a stale address or
    slice count makes libtpu wait for slices that are gone."""
    if spec.slices == 1:
        return {}
    from ray.util.tpu import get_tpu_coordinator_env_vars

    return get_tpu_coordinator_env_vars(coordinator_ip, spec.slices, host_index // spec.hosts)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """What the platforms read of the Ray cluster, at one moment."""

    nodes: Tuple[dict, ...]  # ray.nodes()
    resources: Dict[str, float]  # ray.cluster_resources()

    @classmethod
    def now(cls) -> "Cluster":
        return cls(tuple(ray.nodes()), ray.cluster_resources())

    def alive(self, resource: str) -> List[dict]:
        """The nodes alive that have some of `resource`."""
        return [n for n in self.nodes if n["Alive"] and n["Resources"].get(resource, 0) > 0]


@dataclasses.dataclass(frozen=True)
class Reservation:
    """A slice reserved for its hosts: the placement group, the bundle of each host in process
    order, what every host actor asks for beyond its bundle, and the setup of each host's
    process. `release()` gives it back."""

    spec: SliceSpec  # as shaped
    platform: str
    group: PlacementGroup
    bundles: Tuple[int, ...]  # bundle of process i
    asks: Dict[str, object]  # Ray actor options beyond the placement: num_cpus, num_gpus, resources
    setup: HostSetup
    note: Optional[str] = None  # what the user should know about the placement
    slice_group: Optional[object] = None  # TPU: Ray's SlicePlacementGroup, its head reservations too

    def options(self, host_index: int) -> dict:
        """Ray actor options placing host `host_index` (JAX process index) on its bundle."""
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=self.bundles[host_index]), **self.asks}

    def release(self) -> None:
        if self.slice_group is not None:
            self.slice_group.shutdown()
        else:
            ray.util.remove_placement_group(self.group)


class Platform:
    """Base class: one subclass per kind of host."""

    name: str
    registry: List[type] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Platform.registry.append(cls)

    @classmethod
    def is_present(cls, resources: Dict[str, float]) -> bool:
        """Whether a cluster with these total resources offers this platform."""
        raise NotImplementedError

    def shape(self, spec: SliceSpec, cluster: Cluster) -> SliceSpec:
        """`spec` with the slice shape (hosts, devices per host) and the platform filled in and
        checked against the cluster; HostFailure where the cluster cannot hold it (yet)."""
        raise NotImplementedError

    def reserve(self, spec: SliceSpec, cluster: Cluster) -> Reservation:
        """Reserve every host of the shaped `spec` (one bundle each) and wait for it, up to its
        timeout; HostFailure, with nothing left reserved, if it can't."""
        raise NotImplementedError

    def setup(self, spec: SliceSpec) -> HostSetup:
        """What each host's process needs: as on the platform, or CPU devices under test."""
        test = _pretend_cpu_devices()
        return HostSetup(cpu_device_env(test) if test else {}, cpu_collectives=bool(test))

    def waiting_for(self, spec: SliceSpec, cluster: Cluster) -> str:
        """What a run waiting for the slice waits for, and what the cluster has of it now."""
        raise NotImplementedError

    def some_up(self, spec: SliceSpec, cluster: Cluster) -> bool:
        """Whether some of what the slice needs is up (the rest may be joining)."""
        return False


class TpuSlice(NamedTuple):
    name: str
    pod_type: str  # "v4-32"
    topology: str  # "2x2x4"
    version: str  # "v4"
    chips_per_host: int
    workers: Dict[int, str]  # tpu-worker-id -> node id, of the hosts alive in Ray
    hosts: int  # how many hosts a slice of this topology has

    @property
    def complete(self) -> bool:
        return sorted(self.workers) == list(range(self.hosts))

    def describe(self) -> str:
        up = "" if self.complete else f", only {len(self.workers)} up"
        return f"{self.name} ({self.pod_type}, {self.topology}, {self.hosts} hosts{up})"


def tpu_slices(nodes: List[dict]) -> List[TpuSlice]:
    """The TPU slices among Ray's nodes, from the labels each TPU VM registers."""
    from ray.util.tpu import get_tpu_version_from_type, get_tpu_worker_resources

    by_name: Dict[str, List[dict]] = {}
    for node in nodes:
        if node["Alive"] and TPU_SLICE_LABEL in node.get("Labels", {}):
            by_name.setdefault(node["Labels"][TPU_SLICE_LABEL], []).append(node)
    slices = []
    for name, members in sorted(by_name.items()):
        labels = members[0]["Labels"]
        topology = labels[TPU_TOPOLOGY_LABEL]
        version = get_tpu_version_from_type(labels[ACCELERATOR_LABEL])
        slices.append(TpuSlice(
            name, labels[TPU_POD_TYPE_LABEL], topology, version,
            int(members[0]["Resources"].get("TPU", 0)),
            {int(n["Labels"][TPU_WORKER_LABEL]): n["NodeID"] for n in members},
            get_tpu_worker_resources(topology, version)[0]))
    return slices


class Tpu(Platform):
    """Whole TPU pod slices of one kind (one, or --slices N): one host per TPU VM; process
    order is slice by slice, and tpu-worker-id order within a slice."""

    name = "tpu"

    @classmethod
    def is_present(cls, resources):
        return resources.get("TPU", 0) > 0

    def shape(self, spec, cluster):
        wanted, exists = _whole_slices(spec, cluster)
        kind = wanted[0]
        _check_explicit("--hosts", spec.hosts, kind.hosts, f"a {kind.pod_type} slice has hosts:")
        devices = _pretend_cpu_devices() or kind.chips_per_host
        _check_explicit("--devices-per-host", spec.devices_per_host, devices, f"each {kind.pod_type} host has chips:")
        if len(wanted) < spec.slices:  # all of one kind now
            raise HostFailure(f"--slices {spec.slices}, but the cluster has {len(wanted)} whole "
                              f"{kind.pod_type} slice{'s' * (len(wanted) > 1)}: {exists}; wait "
                              f"for more (ray status), or ask for fewer")
        return spec.replace(platform=self.name, hosts=kind.hosts, devices_per_host=devices)

    def reserve(self, spec, cluster):
        from ray.util.tpu import slice_placement_group

        s, count, timeout = _whole_slices(spec, cluster)[0][0], spec.slices, spec.timeout
        what = f"{count} {s.pod_type} slices" if count > 1 else f"a {s.pod_type} slice"
        try:
            # Ray's slice reservation: for each slice it takes the TPU-<pod type>-head resource
            # of a free slice of this kind, then asks for one bundle on each of that slice's
            # hosts (bundles slice by slice). Each bundle asks for every chip of its host: a
            # partial request makes Ray narrow the chips the process may see, and multi-host
            # JAX then fails.
            group = slice_placement_group(
                topology=s.topology, accelerator_version=s.version, num_slices=count,
                resources_per_bundle={"CPU": 0, "TPU": s.chips_per_host},
                strategy="STRICT_SPREAD", name="ymxb-tpu", head_reservation_timeout_s=timeout / count)
        except TimeoutError:
            raise HostFailure(f"could not reserve {what} ({s.topology}) within {timeout:g} s: "
                              f"every matching slice is busy") from None
        _wait_ready(group.placement_group, timeout, f"the {s.hosts * count} hosts of {what}", group.shutdown)
        try:
            bundles = _slice_major(group.placement_group, s.hosts, count)
        except HostFailure:
            group.shutdown()
            raise
        return Reservation(spec, self.name, group.placement_group, tuple(bundles),
                           {"num_cpus": 0, "resources": {"TPU": s.chips_per_host}}, self.setup(spec),
                           slice_group=group)

    def setup(self, spec):
        test = _pretend_cpu_devices()  # CPU devices under test: no chips to free
        return dataclasses.replace(super().setup(spec), free_tpu=not test)

    def waiting_for(self, spec, cluster):
        asked = _asked(spec)
        what = f"{spec.slices} whole TPU slices" if spec.slices > 1 else "a whole TPU slice"
        what += f" ({asked})" if asked else ""
        slices = _matching(spec, tpu_slices(cluster.nodes))
        if not slices:
            return f"{what}: no TPU host is up yet"
        return f"{what}: " + ", ".join(f"{s.name} has {len(s.workers)} of {s.hosts} hosts up" for s in slices)

    def some_up(self, spec, cluster):
        return bool(_matching(spec, tpu_slices(cluster.nodes)))


def _whole_slices(spec: SliceSpec, cluster: Cluster) -> Tuple[List[TpuSlice], str]:
    """The whole slices of the one kind `spec` asks for, and what the cluster has (described);
    HostFailure or UsageError, naming what exists, where there is no such kind, or several."""
    slices = tpu_slices(cluster.nodes)
    wanted, asked = _matching(spec, slices), _asked(spec) or "--platform tpu"
    exists = "; ".join(s.describe() for s in slices)
    if not slices:
        raise HostFailure("--platform tpu, but the cluster has no TPU slices (no node has "
                          f"the {TPU_SLICE_LABEL} label)")
    if not wanted:
        raise HostFailure(f"no TPU slice matches {asked}; the cluster has: {exists}")
    wanted = [s for s in wanted if s.complete]
    if not wanted:
        raise HostFailure(f"no whole TPU slice matches {asked}: {exists}; wait "
                          f"for the missing hosts (ray status) or replace the slice")
    if len(Counter((s.pod_type, s.topology) for s in wanted)) > 1:
        raise UsageError(f"several kinds of TPU slice match ({exists}): choose one with "
                         f"--tpu-type or --tpu-topology")
    return wanted, exists


def _matching(spec: SliceSpec, slices: List[TpuSlice]) -> List[TpuSlice]:
    """The slices of the kind asked for (--tpu-type, --tpu-topology)."""
    return [s for s in slices if spec.tpu_type in (None, s.pod_type, s.version)
            and spec.tpu_topology in (None, s.topology)]


def _asked(spec: SliceSpec) -> str:
    return " ".join(f"--{k} {v}" for k, v in (("tpu-type", spec.tpu_type), ("tpu-topology", spec.tpu_topology)) if v)


class Gpu(Platform):
    """GPU nodes: one host per node, with all of that node's GPUs."""

    name = "gpu"

    @classmethod
    def is_present(cls, resources):
        return resources.get("GPU", 0) > 0

    def shape(self, spec, cluster):
        gpus, count, exists = _gpu_nodes(spec, cluster)
        hosts = spec.hosts or count
        if not count or hosts > count:
            raise HostFailure(f"asked for {hosts or 'some'} GPU node(s) with {gpus} GPUs each, "
                              f"but the cluster has {exists}")
        return spec.replace(platform=self.name, hosts=hosts, devices_per_host=_pretend_cpu_devices() or gpus)

    def reserve(self, spec, cluster):
        gpus = _gpu_nodes(spec, cluster)[0]
        # STRICT_SPREAD: every bundle on a different node, so one host per node.
        group = placement_group([{"GPU": gpus}] * spec.hosts, strategy="STRICT_SPREAD", name="ymxb-gpu")
        _wait_ready(group, spec.timeout, f"{spec.hosts} GPU nodes with {gpus} GPUs each")
        return Reservation(spec, self.name, group, tuple(range(spec.hosts)), {"num_cpus": 0, "num_gpus": gpus},
                           self.setup(spec))

    def waiting_for(self, spec, cluster):
        return f"{spec.hosts or 'the'} GPU node{'s' * (spec.hosts != 1)}: {len(cluster.alive('GPU'))} up"

    def some_up(self, spec, cluster):
        return bool(cluster.alive("GPU"))


def _gpu_nodes(spec: SliceSpec, cluster: Cluster) -> Tuple[int, int, str]:
    """(GPUs per node, how many nodes have that many, what the cluster has) for `spec`."""
    if spec.slices > 1:
        raise UsageError(f"--slices {spec.slices} is for TPU slices (and their cpu-sim simulation); "
                         f"GPU nodes are grouped already, one host each (the mesh is nodes x GPUs)")
    sizes = Counter(int(n["Resources"]["GPU"]) for n in cluster.alive("GPU"))
    exists = ", ".join(f"{n} node(s) with {g} GPUs" for g, n in sorted(sizes.items()))
    if not sizes:
        raise HostFailure("--platform gpu, but the cluster has no GPU nodes")
    if spec.devices_per_host is None or _pretend_cpu_devices():
        if len(sizes) > 1:
            raise UsageError(f"GPU nodes differ ({exists}): choose a size with --devices-per-host")
        gpus = next(iter(sizes))
    else:
        gpus = spec.devices_per_host
    return gpus, sizes.get(gpus, 0), exists


class CpuSim(Platform):
    """N processes, each a "host" with K virtual CPU devices, on whatever nodes Ray has."""

    name = "cpu-sim"

    @classmethod
    def is_present(cls, resources):
        return True  # any cluster can simulate

    def shape(self, spec, cluster=None):
        # Known from the settings alone, on any cluster: plan.known_shape shapes it up front.
        return spec.replace(platform=self.name, hosts=spec.hosts or SIM_HOSTS,
                            devices_per_host=spec.devices_per_host or SIM_DEVICES)

    def reserve(self, spec, cluster):
        # One host per node where the cluster has enough nodes, as on a real slice; else spread
        # as evenly as Ray can (and say so). One node (the embedded simulation): all there.
        nodes, hosts, note = len(cluster.alive("CPU")), spec.processes, None
        strategy = "PACK" if nodes == 1 else "STRICT_SPREAD" if hosts <= nodes else "SPREAD"
        if strategy == "SPREAD":
            note = (f"cpu-sim: {hosts} hosts on {nodes} nodes, so some nodes run several hosts "
                    f"(one per node needs --hosts {nodes} or fewer)")
        group = placement_group([{"CPU": SIM_HOST_CPUS}] * hosts, strategy=strategy, name="ymxb-cpu-sim")
        _wait_ready(group, spec.timeout, f"{hosts} simulated hosts ({SIM_HOST_CPUS} CPU each)")
        return Reservation(spec, self.name, group, tuple(range(hosts)), {"num_cpus": SIM_HOST_CPUS},
                           self.setup(spec), note)

    def setup(self, spec):
        return HostSetup(cpu_device_env(spec.devices_per_host), cpu_collectives=True)

    def waiting_for(self, spec, cluster):
        return f"room for {spec.processes} simulated hosts ({SIM_HOST_CPUS} CPU each)"


def _slice_major(pg: PlacementGroup, hosts: int, slices: int) -> List[int]:
    """The bundles of a multislice reservation in process order: slice by slice (Ray's order of
    the slices), tpu-worker-id order within each. HostFailure unless each slice's bundles are
    one whole slice and no two are the same slice."""
    labels = {n["NodeID"]: n["Labels"] for n in ray.nodes()}
    nodes = ray.util.placement_group_table(pg)["bundles_to_node_id"]
    order, names = [], []
    for first in range(0, hosts * slices, hosts):
        bundles = range(first, first + hosts)
        worker = {b: int(labels[nodes[b]][TPU_WORKER_LABEL]) for b in bundles}
        names.append(sorted({labels[nodes[b]][TPU_SLICE_LABEL] for b in bundles}))
        if sorted(worker.values()) != list(range(hosts)) or len(names[-1]) != 1:
            raise HostFailure(f"the reserved bundles are not {slices} whole slices: slice "
                              f"{len(names) - 1} got slices {names[-1]}, worker ids {sorted(worker.values())}")
        order += sorted(bundles, key=worker.get)
    if len({n[0] for n in names}) < slices:
        raise HostFailure(f"the reserved bundles are not {slices} different slices: {[n[0] for n in names]}")
    return order


def resolve(spec: SliceSpec, resources: Dict[str, float]) -> Platform:
    """`spec.platform` if given, else the first registered platform the cluster offers."""
    if spec.platform is not None:
        return next(cls for cls in Platform.registry if cls.name == spec.platform)()
    return next(cls for cls in Platform.registry if cls.is_present(resources))()


def _wait_ready(group: PlacementGroup, timeout: float, asked: str, release=None) -> None:
    """Wait for every bundle of `group`; if they are not all placed within `timeout`, release
    it (`release()`, else remove the group) and raise HostFailure."""
    try:
        ray.get(group.ready(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        (release or (lambda: ray.util.remove_placement_group(group)))()
        raise HostFailure(f"could not reserve {asked} within {timeout:g} s; the cluster has "
                          f"{_resources_summary(ray.available_resources())} free") from None


def _check_explicit(flag: str, given: Optional[int], actual: int, why: str) -> None:
    if given is not None and given != actual:
        raise UsageError(f"{flag} is {given}, but {why} {actual}: omit {flag} to use that")


def _pretend_cpu_devices() -> Optional[int]:
    """A pretend slice's CPU devices per host (names.CPU_DEVICES_ENV), None for a real one."""
    return int(os.environ.get(CPU_DEVICES_ENV, 0)) or None


def _resources_summary(resources: Dict[str, float]) -> str:
    shown = {k: v for k, v in sorted(resources.items())
             if not k.startswith(("node:", "memory", "object_store_memory"))}
    return ", ".join(f"{k}={v:g}" for k, v in shown.items()) or "nothing"
