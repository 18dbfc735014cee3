"""Whether an embedded simulation fits this machine: every host is a process here, so a run
that cannot fit is refused before it starts, with the memory it would need and what is free,
instead of swapping or being killed half-way.

The estimate is deliberately rough and on the high side: bytes per array, times the copies
the run makes of it (generation in float64, float32, the devices' copies, Ray's transfer).
"""

from typing import Dict, Optional

from ymxb.config import Program
from ymxb.errors import UsageError

HOST_BASE = 350 << 20  # one idle host process: Python, JAX, XLA's CPU client, Ray's worker (~315 MiB seen)
RAY_BASE = 700 << 20  # the embedded Ray: GCS, raylet, agents, and the driver itself
MEMBER_RECORD = 2 << 10  # the driver's per-model record (a dict of a dozen floats)
F32, F64 = 4, 8


def needed(program: Program) -> Dict[str, int]:
    """Bytes a program needs on this machine, by what drives them (a flag, or the group size)."""
    cfg, n, k = program.trial, program.slice.processes, program.slice.devices_per_host
    s, g, e = cfg.samples_per_host, cfg.global_samples(n), program.padded_entries
    # Each host generates its shard in float64 and keeps it in float32; the driver rebuilds all.
    data = n * s * (4 * F64 + 4 * F32) + g * (2 * F32 + 4 * F64)
    if cfg.ensemble:
        # Each device holds the whole global batch, and each member's step works on all of it.
        data += n * 2 * k * g * 2 * F32
        losses = e * cfg.steps * F32 * 5  # on the hosts (device, NumPy, transfer), then the driver
    else:
        losses = n * e * cfg.steps * F32 * 5  # every host sends one copy
    # Every model's step makes a few float32 temporaries the size of the data it sees.
    models = e * g * 3 * F32 + e * MEMBER_RECORD
    key = "--ensemble" if program.count == 1 else "the group's trials x members"
    return {"--hosts": n * HOST_BASE + RAY_BASE, "--samples-per-host": data, key: models,
            "--steps": losses}


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
