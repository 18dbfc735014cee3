"""Synthetic data, y = m*x + b + noise: each host makes only its own shard, deterministically.

A shard depends only on the data settings (`--data-seed`, not the params' `--seed`) and the host
index, so the driver can rebuild the exact global
dataset, shard by shard, without asking the hosts for it.
"""

from typing import Tuple

import numpy as np

from ymxb.config import TrialSpec


def host_shard(cfg: TrialSpec, host_index: int) -> Tuple[np.ndarray, np.ndarray]:
    """The (x, y) points of one host, float32, `cfg.samples_per_host` of each."""
    if host_index < 0:
        raise ValueError(f"host index {host_index} is negative")
    rng = np.random.default_rng([cfg.data_seed, host_index])
    x = rng.uniform(-1.0, 1.0, cfg.samples_per_host)
    y = cfg.true_m * x + cfg.true_b + cfg.noise * rng.standard_normal(cfg.samples_per_host)
    return x.astype(np.float32), y.astype(np.float32)


def global_dataset(cfg: TrialSpec, hosts: int) -> Tuple[np.ndarray, np.ndarray]:
    """All hosts' shards, concatenated in host order: exactly the data the slice trains on."""
    shards = [host_shard(cfg, i) for i in range(hosts)]
    return np.concatenate([x for x, _ in shards]), np.concatenate([y for _, y in shards])


def split_over_devices(a: np.ndarray, devices: int) -> np.ndarray:
    """Reshape a host's shard to (devices, n / devices): one equal slice per local device."""
    if a.shape[0] % devices:
        raise ValueError(f"{a.shape[0]} points do not split evenly over {devices} devices")
    return a.reshape(devices, a.shape[0] // devices)
