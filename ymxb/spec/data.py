"""Each host's data shard, made by the trial's task (tasks.py) from the data settings
(`--data-seed`, not the params' `--seed`) and the host index alone, so the driver can make the
exact data of every host, one shard at a time, without asking the hosts for it.
"""

import functools
from typing import Iterator, Optional, Tuple

import numpy as np

from ymxb.spec import registry
from ymxb.spec.settings import TrialSpec
from ymxb.errors import UsageError


def host_shard(cfg: TrialSpec, host_index: int) -> Tuple[np.ndarray, np.ndarray]:
    """The (x, y) points of one host, `cfg.samples_per_host` of each, in float32 (or int32
    where the task made integers: labels, tokens); UsageError, naming the task, where what its
    `shard` made is not that."""
    if host_index < 0:
        raise ValueError(f"host index {host_index} is negative")
    n = cfg.samples_per_host
    if registry.get(cfg.task).has_dataset:
        x, y = (a[host_index * n:(host_index + 1) * n] for a in _dataset(cfg.task, cfg.settings, cfg.data_seed))
        if len(x) < n:
            raise UsageError(f"--task {cfg.task}: its dataset has {dataset_size(cfg)} points, too few for host "
                             f"{host_index}'s {n} (--samples-per-host): give at most the points / hosts")
        return x, y
    x, y = registry.get(cfg.task).shard(cfg.of_task, cfg.data_seed, host_index, n)
    x, y = _as_jax_kind(x), _as_jax_kind(y)
    if len(x) != n or len(y) != n:
        raise UsageError(f"--task {cfg.task}: its shard of host {host_index} has {len(x)} x and {len(y)} y, "
                         f"not --samples-per-host ({n}) of each")
    return x, y


def dataset_size(cfg: TrialSpec) -> int:
    """The points of the task's fixed dataset (tasks.Task.dataset)."""
    return len(_dataset(cfg.task, cfg.settings, cfg.data_seed)[0])


def left_out(cfg: TrialSpec, hosts: int) -> Optional[Tuple[int, int]]:
    """(its points, how many of them `hosts` leave out) of the task's fixed dataset; None for a
    task that makes its shards."""
    if not registry.get(cfg.task).has_dataset:
        return None
    size = dataset_size(cfg)
    return size, size - cfg.global_samples(hosts)


@functools.lru_cache(maxsize=2)  # every host's shard is cut from it, one after another
def _dataset(task: str, settings: tuple, data_seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """The task's fixed dataset, as JAX computes in; UsageError where x and y differ in length."""
    x, y = (_as_jax_kind(a) for a in registry.get(task).dataset(dict(settings), data_seed))
    if len(x) != len(y):
        raise UsageError(f"--task {task}: its dataset has {len(x)} x and {len(y)} y: give as many of each")
    return x, y


def host_held_out(cfg: TrialSpec, host_index: int, devices: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The held-out (x, y) of one host (as host_shard makes a shard), None where the task gives
    none; UsageError, naming the task, where its count does not split over the host's devices."""
    made = registry.get(cfg.task).held_out(cfg.of_task, cfg.data_seed, host_index, cfg.samples_per_host)
    if made is None:
        return None
    x, y = (_as_jax_kind(a) for a in made)
    if len(x) != len(y) or not len(x) or len(x) % devices:
        raise UsageError(f"--task {cfg.task}: its held-out shard of host {host_index} has {len(x)} x and "
                         f"{len(y)} y: give as many of each, a multiple of the host's {devices} devices")
    return x, y


def _as_jax_kind(a) -> np.ndarray:
    """Integers (and booleans) as int32, anything else as float32: what JAX computes in by default."""
    a = np.asarray(a)
    return a.astype(np.int32 if a.dtype.kind in "biu" else np.float32, copy=False)


def shards(cfg: TrialSpec, hosts: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Every host's shard, in host order, made one at a time."""
    return (host_shard(cfg, i) for i in range(hosts))


def global_dataset(cfg: TrialSpec, hosts: int) -> Tuple[np.ndarray, np.ndarray]:
    """All hosts' shards, concatenated in host order: exactly the data the slice trains on."""
    x, y = zip(*shards(cfg, hosts))
    return np.concatenate(x), np.concatenate(y)


def split_over_devices(a: np.ndarray, devices: int) -> np.ndarray:
    """Reshape a host's shard to (devices, n / devices, ...): one equal slice per local device."""
    if a.shape[0] % devices:
        raise ValueError(f"{a.shape[0]} points do not split evenly over {devices} devices")
    return a.reshape(devices, a.shape[0] // devices, *a.shape[1:])
