"""Where the hosts run. Each platform is a small class: how to detect it on a Ray cluster,
how to reserve its hosts (one placement-group bundle per host), and each host actor's options.

Subclasses register themselves; the order of registration is the order of detection.
"""

from typing import Dict, List, Optional

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ymxb.config import Config

# A simulated host asks for almost no CPU, so any number of them fits on a 2-core machine;
# a host left pending would make the others' jax.distributed.initialize time out and abort.
SIM_HOST_CPUS = 0.01


class Platform:
    """Base class: one subclass per kind of host."""

    name: str
    registry: List[type] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Platform.registry.append(cls)

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.pg: Optional[PlacementGroup] = None

    @classmethod
    def is_present(cls, resources: Dict[str, float]) -> bool:
        """Whether a cluster with these total resources offers this platform."""
        raise NotImplementedError

    def reserve(self) -> PlacementGroup:
        """Ask Ray for the hosts: one bundle per host, bundle i for host (JAX process) i."""
        raise NotImplementedError

    def describe_request(self) -> str:
        """What was asked for, in words, for errors."""
        raise NotImplementedError

    def host_env(self) -> Dict[str, str]:
        """Environment each host's process needs before JAX is imported."""
        return {}

    def host_options(self, host_index: int) -> dict:
        """Ray actor options placing host `host_index` on its own bundle."""
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            self.pg, placement_group_bundle_index=host_index)}


class CpuSim(Platform):
    """N processes, each a "host" with K virtual CPU devices, on whatever nodes Ray has."""

    name = "cpu-sim"

    @classmethod
    def is_present(cls, resources):
        return True  # any cluster can simulate

    def reserve(self):
        self.pg = placement_group([{"CPU": SIM_HOST_CPUS}] * self.cfg.hosts, strategy="PACK",
                                  name="ymxb-cpu-sim")
        return self.pg

    def describe_request(self):
        return f"{self.cfg.hosts} simulated hosts ({SIM_HOST_CPUS} CPU each)"

    def host_env(self):
        return {"JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={self.cfg.devices_per_host}"}

    def host_options(self, host_index):
        return {**super().host_options(host_index), "num_cpus": SIM_HOST_CPUS}


def resolve(cfg: Config, resources: Dict[str, float]) -> Platform:
    """`cfg.platform` if given, else the first registered platform the cluster offers."""
    if cfg.platform is not None:
        return next(cls for cls in Platform.registry if cls.name == cfg.platform)(cfg)
    return next(cls for cls in Platform.registry if cls.is_present(resources))(cfg)
