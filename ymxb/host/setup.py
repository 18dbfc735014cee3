"""What a host does to its own process before it joins the slice, as its platform asks
(protocol.HostSetup): JAX's CPU collectives listening on the node's address, and the TPU's
chips free for this process; and the memory it has available. Runs inside the host's actor
(and, for `available`, in the driver)."""

import contextlib
import functools
import glob
import os
from typing import Dict, Iterable, List, Optional

from ymxb.names import MEGASCALE_PREFIX

# libtpu's lock: left behind by a process that died holding the chips, it blocks the next run.
TPU_LOCKFILE = "/tmp/libtpu_lockfile"
TPU_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*")


def use_multislice_env(env: Dict[str, str]) -> None:
    """Join with this start's multislice environment (none for one slice), set before
    jax.distributed.initialize as Ray Train sets it: libtpu reads it when the TPU backend
    starts, which is after. Any inherited from the node is stale: gone."""
    for name in [n for n in os.environ if n.startswith(MEGASCALE_PREFIX)]:
        del os.environ[name]
    os.environ.update(env)


def gloo_listens_on(host: str) -> None:
    """Make the CPU collectives (gloo) listen on `host`, this node's address. By default gloo
    binds to whatever the hostname resolves to, often 127.0.0.1 (/etc/hosts), which peers on
    other nodes cannot reach; JAX offers no setting for it (jax 0.10)."""
    from jax._src.lib import _jax

    _jax.make_gloo_tcp_collectives = functools.partial(_jax.make_gloo_tcp_collectives, hostname=host)


def free_tpu(lockfile: str = TPU_LOCKFILE, devices: Iterable[str] = None) -> None:
    """Before JAX opens the TPU: fail, naming it, if another process holds a chip; else remove
    a stale libtpu lockfile (one left by a process that died holding the chips)."""
    if devices is None:
        devices = [path for pattern in TPU_DEVICES for path in glob.glob(pattern)]
    holders = _holders({os.path.realpath(d) for d in devices})
    if holders:
        pid, (cmd, device) = next(iter(holders.items()))
        raise RuntimeError(f"the TPU is busy: pid {pid} ({cmd}) holds {device}"
                           f"{f' and {len(holders) - 1} more processes hold chips' if len(holders) > 1 else ''}; "
                           f"stop it (sudo kill {pid}) and run again")
    with contextlib.suppress(FileNotFoundError):
        os.remove(lockfile)


def _holders(devices: set) -> Dict[int, tuple]:
    """{pid: (command, device)} for other processes with one of `devices` open."""
    found = {}
    for proc in glob.glob("/proc/[0-9]*"):
        pid = int(proc.rsplit("/", 1)[1])
        if pid == os.getpid():
            continue
        for fd in _fds(proc):
            if fd in devices:
                found[pid] = (_cmdline(proc), fd)
                break
    return found


def _fds(proc: str) -> List[str]:
    try:
        return [os.readlink(fd) for fd in glob.glob(f"{proc}/fd/*")]
    except OSError:  # gone, or not ours to read
        return []


def _cmdline(proc: str) -> str:
    try:
        with open(f"{proc}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
    except OSError:
        return "?"


@functools.lru_cache(maxsize=1)
def available() -> Optional[int]:
    """Bytes of memory this machine can give (MemAvailable), or None where it cannot tell: as
    first measured in this process (a driver measures before its embedded Ray and hosts take
    their share, which `needed` counts, and decides alike before and after they start)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return None
