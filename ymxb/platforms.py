"""Where the hosts run. Each platform is a small class: how to detect it on a Ray cluster, the
slice shape it gives, how to reserve its hosts (a placement group, one bundle per host) and
each host actor's options.

Subclasses register themselves; the order of registration is the order of detection
(TPU, then GPU, then the CPU simulation, which any cluster can run).
"""

import os
from collections import Counter
from typing import Dict, List, NamedTuple, Optional

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ymxb.config import SliceSpec
from ymxb.errors import HostFailure, UsageError

# A simulated host asks for almost no CPU, so any number of them fits on a 2-core machine;
# a host left pending would make the others' jax.distributed.initialize time out and abort.
SIM_HOST_CPUS = 0.01
SIM_HOSTS, SIM_DEVICES = 4, 2  # the default simulated slice

# Test-only: "K" makes the hosts of any platform use K CPU devices instead of their chips, so
# placement on a pretend TPU/GPU cluster can be tested end to end on a machine without them.
TEST_CPU_DEVICES_ENV = "YMXB_TEST_CPU_DEVICES"

# Node labels a TPU VM registers (Ray's ray._raylet.RAY_NODE_TPU_*_KEY; a test checks them).
TPU_SLICE_LABEL = "ray.io/tpu-slice-name"
TPU_WORKER_LABEL = "ray.io/tpu-worker-id"
TPU_POD_TYPE_LABEL = "ray.io/tpu-pod-type"
TPU_TOPOLOGY_LABEL = "ray.io/tpu-topology"
ACCELERATOR_LABEL = "ray.io/accelerator-type"
# What multislice JAX on TPU reads (libtpu's megascale runtime): where the slices meet, how many
# there are, which one this host is in. Ray's own helper names them (get_tpu_coordinator_env_vars).
MEGASCALE_PREFIX = "MEGASCALE_"


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


class Platform:
    """Base class: one subclass per kind of host."""

    name: str
    registry: List[type] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Platform.registry.append(cls)

    def __init__(self, cfg: SliceSpec):
        self.cfg = cfg
        self.pg: Optional[PlacementGroup] = None
        self.bundle_of_host: List[int] = []
        self.test_cpu_devices = int(os.environ.get(TEST_CPU_DEVICES_ENV, 0)) or None
        self.note: Optional[str] = None  # what the user should know about the placement

    @classmethod
    def is_present(cls, resources: Dict[str, float]) -> bool:
        """Whether a cluster with these total resources offers this platform."""
        raise NotImplementedError

    def shape(self) -> SliceSpec:
        """The config with the slice shape (hosts, devices per host; TPU and GPU: the platform
        too) filled in and checked; kept as self.cfg for the steps that follow."""
        raise NotImplementedError

    def reserve(self, timeout: float) -> None:
        """Reserve every host (one bundle each) and wait for it; HostFailure if it can't."""
        raise NotImplementedError

    def waiting_for(self) -> str:
        """What a run waiting for the slice waits for, and what the cluster has of it now."""
        raise NotImplementedError

    def some_up(self) -> bool:
        """Whether some of what the slice needs is up (the rest may be joining)."""
        return False

    def host_env(self) -> Dict[str, str]:
        """Environment each host's process needs before JAX is imported."""
        return cpu_device_env(self.test_cpu_devices) if self.test_cpu_devices else {}

    def host_options(self, host_index: int) -> dict:
        """Ray actor options placing host `host_index` (JAX process index) on its bundle."""
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            self.pg, placement_group_bundle_index=self.bundle_of_host[host_index])}

    def release(self) -> None:
        if self.pg is not None:
            ray.util.remove_placement_group(self.pg)
            self.pg = None

    def _wait_ready(self, timeout: float, asked: str) -> None:
        try:
            ray.get(self.pg.ready(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise HostFailure(f"could not reserve {asked} within {timeout:g} s; the cluster has "
                              f"{_resources_summary(ray.available_resources())} free") from None

    def _check_explicit(self, flag: str, given: Optional[int], actual: int, why: str) -> None:
        if given is not None and given != actual:
            raise UsageError(f"{flag} is {given}, but {why} {actual}: omit {flag} to use that")


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

    def shape(self):
        cfg, slices = self.cfg, tpu_slices(ray.nodes())
        wanted, asked = self._matching(slices), self._asked()
        exists = "; ".join(s.describe() for s in slices)
        if not slices:
            raise HostFailure("--platform tpu, but the cluster has no TPU slices (no node has "
                              f"the {TPU_SLICE_LABEL} label)")
        if not wanted:
            raise HostFailure(f"no TPU slice matches {asked or '--platform tpu'}; the cluster has: {exists}")
        if not any(s.complete for s in wanted):
            raise HostFailure(f"no whole TPU slice matches {asked or '--platform tpu'}: {exists}; wait "
                              f"for the missing hosts (ray status) or replace the slice")
        wanted = [s for s in wanted if s.complete]
        kinds = Counter((s.pod_type, s.topology) for s in wanted)
        if len(kinds) > 1:
            raise UsageError(f"several kinds of TPU slice match ({exists}): choose one with "
                             f"--tpu-type or --tpu-topology")
        self.slice = wanted[0]
        hosts = self.slice.hosts
        self._check_explicit("--hosts", cfg.hosts, hosts, f"a {self.slice.pod_type} slice has hosts:")
        devices = self.test_cpu_devices or self.slice.chips_per_host
        self._check_explicit("--devices-per-host", cfg.devices_per_host, devices,
                             f"each {self.slice.pod_type} host has chips:")
        if len(wanted) < cfg.slices:  # all of one kind now
            raise HostFailure(f"--slices {cfg.slices}, but the cluster has {len(wanted)} whole "
                              f"{self.slice.pod_type} slice{'s' * (len(wanted) > 1)}: {exists}; wait "
                              f"for more (ray status), or ask for fewer")
        self.cfg = cfg.replace(platform=self.name, hosts=hosts, devices_per_host=devices)
        return self.cfg

    def waiting_for(self):
        count = self.cfg.slices
        what = f"{count} whole TPU slices" if count > 1 else "a whole TPU slice"
        what += f" ({self._asked()})" if self._asked() else ""
        slices = self._matching(tpu_slices(ray.nodes()))
        if not slices:
            return f"{what}: no TPU host is up yet"
        return f"{what}: " + ", ".join(f"{s.name} has {len(s.workers)} of {s.hosts} hosts up" for s in slices)

    def some_up(self):
        return bool(self._matching(tpu_slices(ray.nodes())))

    def _matching(self, slices: List[TpuSlice]) -> List[TpuSlice]:
        """The slices of the kind asked for (--tpu-type, --tpu-topology)."""
        return [s for s in slices if self.cfg.tpu_type in (None, s.pod_type, s.version)
                and self.cfg.tpu_topology in (None, s.topology)]

    def _asked(self) -> str:
        return " ".join(f"--{k} {v}" for k, v in (("tpu-type", self.cfg.tpu_type),
                                                   ("tpu-topology", self.cfg.tpu_topology)) if v)

    def reserve(self, timeout):
        from ray.util.tpu import slice_placement_group

        s, count = self.slice, self.cfg.slices
        what = f"{count} {s.pod_type} slices" if count > 1 else f"a {s.pod_type} slice"
        try:
            # Ray's slice reservation: for each slice it takes the TPU-<pod type>-head resource
            # of a free slice of this kind, then asks for one bundle on each of that slice's
            # hosts (bundles slice by slice). Each bundle asks for every chip of its host: a
            # partial request makes Ray narrow the chips the process may see, and multi-host
            # JAX then fails.
            self.tpu_pg = slice_placement_group(
                topology=s.topology, accelerator_version=s.version, num_slices=count,
                resources_per_bundle={"CPU": 0, "TPU": s.chips_per_host},
                strategy="STRICT_SPREAD", name="ymxb-tpu", head_reservation_timeout_s=timeout / count)
        except TimeoutError:
            raise HostFailure(f"could not reserve {what} ({s.topology}) within {timeout:g} s: "
                              f"every matching slice is busy") from None
        self.pg = self.tpu_pg.placement_group
        self._wait_ready(timeout, f"the {s.hosts * count} hosts of {what}")
        self.bundle_of_host = _slice_major(self.pg, s.hosts, count)

    def host_options(self, host_index):
        return {**super().host_options(host_index), "num_cpus": 0,
                "resources": {"TPU": self.slice.chips_per_host}}

    def release(self):
        if getattr(self, "tpu_pg", None) is not None:
            self.tpu_pg.shutdown()  # the slice's head reservation too
            self.tpu_pg = self.pg = None


class Gpu(Platform):
    """GPU nodes: one host per node, with all of that node's GPUs."""

    name = "gpu"

    @classmethod
    def is_present(cls, resources):
        return resources.get("GPU", 0) > 0

    def shape(self):
        cfg = self.cfg
        if cfg.slices > 1:
            raise UsageError(f"--slices {cfg.slices} is for TPU slices (and their cpu-sim simulation); "
                             f"GPU nodes are grouped already, one host each (the mesh is nodes x GPUs)")
        sizes = Counter(int(n["Resources"]["GPU"]) for n in ray.nodes()
                        if n["Alive"] and n["Resources"].get("GPU", 0) > 0)
        exists = ", ".join(f"{n} node(s) with {g} GPUs" for g, n in sorted(sizes.items()))
        if not sizes:
            raise HostFailure("--platform gpu, but the cluster has no GPU nodes")
        if cfg.devices_per_host is None or self.test_cpu_devices:
            if len(sizes) > 1:
                raise UsageError(f"GPU nodes differ ({exists}): choose a size with --devices-per-host")
            self.gpus = next(iter(sizes))
        else:
            self.gpus = cfg.devices_per_host
        count = sizes.get(self.gpus, 0)
        hosts = cfg.hosts or count
        if not count or hosts > count:
            raise HostFailure(f"asked for {hosts or 'some'} GPU node(s) with {self.gpus} GPUs each, "
                              f"but the cluster has {exists}")
        self.cfg = cfg.replace(platform=self.name, hosts=hosts,
                               devices_per_host=self.test_cpu_devices or self.gpus)
        return self.cfg

    def waiting_for(self):
        up = sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)
        return f"{self.cfg.hosts or 'the'} GPU node{'s' * (self.cfg.hosts != 1)}: {up} up"

    def some_up(self):
        return any(n["Alive"] and n["Resources"].get("GPU", 0) > 0 for n in ray.nodes())

    def reserve(self, timeout):
        # STRICT_SPREAD: every bundle on a different node, so one host per node.
        self.pg = placement_group([{"GPU": self.gpus}] * self.cfg.hosts, strategy="STRICT_SPREAD",
                                  name="ymxb-gpu")
        self._wait_ready(timeout, f"{self.cfg.hosts} GPU nodes with {self.gpus} GPUs each")
        self.bundle_of_host = list(range(self.cfg.hosts))

    def host_options(self, host_index):
        return {**super().host_options(host_index), "num_cpus": 0, "num_gpus": self.gpus}


class CpuSim(Platform):
    """N processes, each a "host" with K virtual CPU devices, on whatever nodes Ray has."""

    name = "cpu-sim"

    @classmethod
    def is_present(cls, resources):
        return True  # any cluster can simulate

    def shape(self):
        # Known from the settings alone, on any cluster: experiment.settle shapes it up front.
        self.cfg = self.cfg.replace(platform=self.name, hosts=self.cfg.hosts or SIM_HOSTS,
                                    devices_per_host=self.cfg.devices_per_host or SIM_DEVICES)
        return self.cfg

    def reserve(self, timeout):
        # One host per node where the cluster has enough nodes, as on a real slice; else spread
        # as evenly as Ray can (and say so). One node (the embedded simulation): all there.
        nodes = sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)
        hosts = self.cfg.processes
        strategy = "PACK" if nodes == 1 else "STRICT_SPREAD" if hosts <= nodes else "SPREAD"
        if strategy == "SPREAD":
            self.note = (f"cpu-sim: {hosts} hosts on {nodes} nodes, so some nodes run several hosts "
                         f"(one per node needs --hosts {nodes} or fewer)")
        self.pg = placement_group([{"CPU": SIM_HOST_CPUS}] * hosts, strategy=strategy, name="ymxb-cpu-sim")
        self._wait_ready(timeout, f"{hosts} simulated hosts ({SIM_HOST_CPUS} CPU each)")
        self.bundle_of_host = list(range(hosts))

    def waiting_for(self):
        return f"room for {self.cfg.processes} simulated hosts ({SIM_HOST_CPUS} CPU each)"

    def host_env(self):
        return cpu_device_env(self.cfg.devices_per_host)

    def host_options(self, host_index):
        return {**super().host_options(host_index), "num_cpus": SIM_HOST_CPUS}


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


def resolve(cfg: SliceSpec, resources: Dict[str, float]) -> Platform:
    """`cfg.platform` if given, else the first registered platform the cluster offers."""
    if cfg.platform is not None:
        return next(cls for cls in Platform.registry if cls.name == cfg.platform)(cfg)
    return next(cls for cls in Platform.registry if cls.is_present(resources))(cfg)


def _resources_summary(resources: Dict[str, float]) -> str:
    shown = {k: v for k, v in sorted(resources.items())
             if not k.startswith(("node:", "memory", "object_store_memory"))}
    return ", ".join(f"{k}={v:g}" for k, v in shown.items()) or "nothing"
