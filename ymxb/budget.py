"""Whether an embedded simulation fits this machine: every host is a process here, so a run
that cannot fit is refused before it starts, with the memory it would need and what is free,
instead of swapping or being killed half-way.

The estimate is deliberately rough and on the high side: bytes per array, times the copies
the run makes of it (generation in float64, float32, the devices' copies, Ray's transfer).
"""

import os
from typing import Dict, Optional

from ymxb.config import Config
from ymxb.errors import UsageError

HOST_BASE = 350 << 20  # one idle host process: Python, JAX, XLA's CPU client, Ray's worker (~315 MiB seen)
RAY_BASE = 700 << 20  # the embedded Ray: GCS, raylet, agents, and the driver itself
MEMBER_RECORD = 2 << 10  # the driver's per-member report row (a dict of a dozen floats)
F32, F64 = 4, 8


def needed(cfg: Config) -> Dict[str, int]:
    """Bytes a run of a shaped `cfg` needs on this machine, by the flag that drives them."""
    n, s, e = cfg.hosts, cfg.samples_per_host, cfg.ensemble
    k, g = cfg.devices_per_host, cfg.global_samples
    # Each host generates its shard in float64 and keeps it in float32; the driver rebuilds all.
    data = n * s * (4 * F64 + 4 * F32) + g * (2 * F32 + 4 * F64)
    if e:
        # Each device holds the whole global batch, and each member's step works on all of it.
        data += n * 2 * k * g * 2 * F32
        members = e * g * 3 * F32 + e * MEMBER_RECORD
        losses = e * cfg.steps * F32 * 5  # on the hosts (device, NumPy, transfer), then the driver
    else:
        members = 0
        losses = n * k * cfg.steps * F32 * 5
    return {"--hosts": n * HOST_BASE + RAY_BASE, "--samples-per-host": data,
            "--ensemble": members, "--steps": losses}


def available() -> Optional[int]:
    """Bytes of memory this machine can give (MemAvailable), or None where it cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return None


def check_fits(cfg: Config, free: Optional[int] = None) -> None:
    """UsageError, with the numbers and a way out, when an embedded run cannot fit in memory."""
    free = available() if free is None else free
    need = needed(cfg)
    total = sum(need.values())
    if free is None or total <= free:
        return
    parts = ", ".join(f"{flag}: {_gib(b)}" for flag, b in sorted(need.items(), key=lambda kv: -kv[1]) if b >= 2**30 / 20)
    raise UsageError(
        f"this run would need about {_gib(total)} of memory ({parts}) but this machine has "
        f"{_gib(free)} available: lower {max(need, key=need.get)}, or run on a cluster (--address)")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
