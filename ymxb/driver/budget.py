"""Whether a program fits where it runs, refused with the memory it would need and what is
there, instead of swapping, running out of device memory or being killed half-way:

- an embedded simulation, before anything starts: every host is a process on this machine
  (`check_fits`);
- a slice on a cluster, once its hosts are up and have said what they hold (`check_slice`):
  per device where JAX reports the devices' memory (TPU, GPU), else per node (CPU devices
  live in the node's memory, which the hosts on it share).

The estimate is deliberately rough and on the high side: bytes per array, times the copies
the run makes of it (generation in float64, float32, the devices' copies, Ray's transfer).

A sweep's program (trials batched on one model axis) too large to fit is not refused but run
as several smaller ones (`split`); only a single trial too large is refused.
"""

import functools
import math
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ymxb.spec import registry
from ymxb.spec.settings import Program, TrialSpec
from ymxb.errors import UsageError
from ymxb.host.setup import available
from ymxb.protocol import SliceHost

HOST_BASE = 350 << 20  # one idle host process: Python, JAX, XLA's CPU client, Ray's worker, with room
RAY_BASE = 700 << 20  # the embedded Ray: GCS, raylet, agents, and the driver itself
MEMBER_RECORD = 2 << 10  # the driver's per-model record (a dict of a dozen floats)
F32, F64 = 4, 8


def needed(program: Program) -> Dict[str, int]:
    """Bytes a program needs on this machine, by what drives them (a flag, or the group size)."""
    cfg, n, k = program.trial, program.slice.processes, program.slice.devices_per_host
    s, g, e = cfg.samples_per_host, cfg.global_samples(n), program.padded_entries
    w = width(cfg)
    # Each host generates its shard in float64 and keeps it in float32; the driver rebuilds all.
    data = n * s * w * (2 * F64 + 2 * F32) + g * w * (F32 + 2 * F64)
    if cfg.ensemble:
        # Each device holds the whole global batch, and each member's step works on all of it.
        data += n * k * g * w * 2 * F32
        losses = e * cfg.steps * F32 * 5  # on the hosts (device, NumPy, transfer), then the driver
    else:
        losses = n * e * cfg.steps * F32 * 5  # every host sends one copy
    # Every model's step makes a few float32 temporaries the size of the data it sees.
    models = e * g * 3 * F32 + e * MEMBER_RECORD
    key = "--ensemble" if program.count == 1 else "the group's trials x members"
    return {"--hosts": n * HOST_BASE + RAY_BASE, "--samples-per-host": data, key: models,
            "--steps": losses}


def width(trial: TrialSpec) -> int:
    """Numbers per data point (x's and y's: y = m*x + b's are 2), asked of its task."""
    return _width(trial.task, trial.settings, trial.data_seed)


@functools.lru_cache(maxsize=64)
def _width(task: str, settings: tuple, data_seed: int) -> int:
    made = registry.get(task)
    if made.has_dataset:  # its first point
        x, y = (np.asarray(a)[:1] for a in made.dataset(dict(settings), data_seed))
    else:
        x, y = made.shard(dict(settings), data_seed, 0, 1)
    return int(np.size(x) + np.size(y))


def per_device(program: Program) -> Dict[str, int]:
    """Bytes one device holds for a program: the data it sees, and each model's temporaries."""
    cfg, k = program.trial, program.slice.devices_per_host
    if cfg.ensemble:  # the whole global batch on every device, its share of the members
        seen, models = cfg.global_samples(program.slice.processes), program.entries_per_device
    else:  # its slice of the host's shard, every trial's replica
        seen, models = cfg.samples_per_host // k, program.count
    key = "--ensemble" if program.count == 1 else "the group's trials x members"
    return {"--samples-per-host": seen * width(cfg) * F32, key: models * seen * 3 * F32,
            "--steps-per-call": models * cfg.steps_per_call * F32}


def per_host(program: Program) -> Dict[str, int]:
    """Bytes one host process needs for a program beyond an idle one, its devices' arrays in
    its own memory (CPU devices): `needed` of one host, less the driver's share."""
    cfg, n, k = program.trial, program.slice.processes, program.slice.devices_per_host
    s, g, e = cfg.samples_per_host, cfg.global_samples(n), program.padded_entries
    w = width(cfg)
    data = s * w * (2 * F64 + 2 * F32) + (k * g * w * 2 * F32 if cfg.ensemble else 0)
    models = e * g * 3 * F32 // n
    losses = (e // n if cfg.ensemble else e) * cfg.steps * F32 * 5
    key = "--ensemble" if program.count == 1 else "the group's trials x members"
    return {"--samples-per-host": data, key: models, "--steps": losses}


def split(whole: Program, fits: Callable[[Program], bool]) -> List[int]:
    """The sizes of the programs `whole` runs as so that each `fits`: all of it where it does,
    else the fewest of even size that do (the need grows with the trials: a binary search for
    the most that fit). A trial that does not fit alone stays alone, for the check to refuse."""
    n = whole.count
    if n < 2 or fits(whole):
        return [n]
    most, too_many = 1, n
    while too_many - most > 1:
        middle = (most + too_many) // 2
        most, too_many = (middle, too_many) if fits(whole.only(range(middle))) else (most, middle)
    count = math.ceil(n / most)
    bounds = [n * i // count for i in range(count + 1)]  # sizes differ by one at most
    return [end - start for start, end in zip(bounds, bounds[1:])]


def fits_here(program: Program) -> bool:
    """Whether an embedded run of `program` fits in this machine's available memory."""
    free = available()
    return free is None or sum(needed(program).values()) <= free


def fits_slice(program: Program, hosts: Sequence[SliceHost]) -> bool:
    """Whether `program` fits on the slice as its hosts reported it (see check_slice)."""
    need, have, _ = _on_slice(program, hosts)
    return have is None or sum(need.values()) <= have


def check_slice(program: Program, hosts: Sequence[SliceHost], what: str = "this run") -> None:
    """UsageError, with the numbers and a way out, when `program` cannot fit on the slice as
    its hosts reported it at initialize (their node's free memory; the least any of their
    devices holds, where JAX says)."""
    need, have, where = _on_slice(program, hosts)
    if have is not None and sum(need.values()) > have:
        parts = ", ".join(f"{flag}: {_gib(b)}" for flag, b in sorted(need.items(), key=lambda kv: -kv[1])
                          if b >= 2**30 / 20)
        raise UsageError(f"{what} would need about {_gib(sum(need.values()))} ({parts}) {where}: "
                         f"lower {max(need, key=need.get)}")


def _on_slice(program: Program, hosts: Sequence[SliceHost]) -> Tuple[Dict[str, int], Optional[int], str]:
    """What `program` needs where it is tightest on the slice, what is there (None: unknown),
    and where that is, in words."""
    devices = [h.device_memory for h in hosts if h.device_memory]
    if devices:
        have = min(devices)
        return per_device(program), have, f"per device, but the slice's devices hold {_gib(have)} each"
    # CPU devices: the hosts on a node share its memory
    on_node = Counter(h.node_id for h in hosts)
    free = {h.node_id: h.memory_available for h in hosts}
    node = max(on_node, key=lambda n: on_node[n] / (free[n] or float("inf")))
    need = {k: v * on_node[node] for k, v in per_host(program).items()}
    return need, free[node], f"on the node of {on_node[node]} of its hosts, which has {_gib(free[node] or 0)} available"


def check_fits(program: Program, free: Optional[int] = None, what: str = "this run") -> None:
    """UsageError, with the numbers and a way out, when an embedded run cannot fit in memory."""
    free = available() if free is None else free
    need = needed(program)
    total = sum(need.values())
    if free is None or total <= free:
        return
    parts = ", ".join(f"{flag}: {_gib(b)}" for flag, b in sorted(need.items(), key=lambda kv: -kv[1]) if b >= 2**30 / 20)
    raise UsageError(
        f"{what} would need about {_gib(total)} of memory ({parts}) but this machine has "
        f"{_gib(free)} available: lower {max(need, key=need.get)}, or run on a cluster (--address)")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
