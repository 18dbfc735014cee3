"""The per-host worker: one Ray actor (one process) on each host of the slice.

The driver calls, in order: identity, coordinator_address (host 0 only), initialize, train
(once per program run on the warm slice), shutdown. JAX is imported only here, inside the
actor, after the actor has set the environment it was given (the XLA device-count flag must be
in place before JAX starts).
"""

import contextlib
import functools
import glob
import importlib
import os
import socket
import sys
import threading
import time
from typing import Dict, Iterable, List, Optional

from ymxb import budget
from ymxb.config import Program
from ymxb.platforms import MEGASCALE_PREFIX

# Test-only fault injection, forwarded to the actors by the launcher: faults separated by
# commas, each "<kind>:<host index, or all>:<phase>[:<seconds>]". "die" and "hang" make a real
# host really die or hang; "slow:all:train:S" starts each compiled call S seconds late (a run
# as slow as a test needs, on any machine). Unset in normal runs.
FAULT_ENV = "YMXB_TEST_FAULT"
# With it, a path: the fault strikes once, in the first process to create that file.
FAULT_ONCE_ENV = "YMXB_TEST_FAULT_ONCE"
# The platform's name (platforms.py), set by the launcher in each actor's environment.
PLATFORM_ENV = "YMXB_PLATFORM"
# libtpu's lock: left behind by a process that died holding the chips, it blocks the next run.
TPU_LOCKFILE = "/tmp/libtpu_lockfile"
TPU_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*")


class Host:
    """Joins the JAX distributed runtime as process `host_index` and trains on its devices."""

    def __init__(self, host_index: int, env: Dict[str, str]):
        os.environ.update(env)  # before anything imports JAX
        self.host_index = host_index
        self._steps_started = None  # None until training starts
        self._lock = threading.Lock()
        # Importing JAX takes 1-2 s: begin now, while the other hosts start, not at initialize.
        # (Importing it touches no device: initialize still comes first.)
        self._jax_imported = threading.Thread(target=importlib.import_module, args=("jax",), daemon=True)
        self._jax_imported.start()

    def identity(self) -> dict:
        """Where this host runs: node address, hostname, pid."""
        import ray

        return {"host_index": self.host_index, "hostname": socket.gethostname(),
                "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def coordinator_address(self) -> str:
        """A free port on this node's address for the JAX coordinator (run by process 0)."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        return f"{ip}:{port}"

    def initialize(self, coordinator: str, num_processes: int, timeout_s: float,
                   multislice: Dict[str, str]) -> dict:
        """Join the distributed runtime; return what JAX now sees from this process, and the
        multislice environment it joined with (platforms.multislice_env)."""
        self._maybe_fault("initialize")
        # Set before jax.distributed.initialize, as Ray Train does: libtpu reads them when the
        # TPU backend starts, which is after. Any inherited from the node are stale: gone.
        for name in [n for n in os.environ if n.startswith(MEGASCALE_PREFIX)]:
            del os.environ[name]
        os.environ.update(multislice)
        if os.environ.get(PLATFORM_ENV) == "tpu" and os.environ.get("JAX_PLATFORMS") != "cpu":
            free_tpu()
        self._jax_imported.join()
        import jax
        import ray

        if os.environ.get("JAX_PLATFORMS") == "cpu":
            _gloo_listens_on(ray.util.get_node_ip_address())
        # All four arguments explicit, so JAX's cluster auto-detection never guesses. The
        # coordinator listens where the others are told to connect, not on every interface.
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=self.host_index,
            local_device_ids=None,
            initialization_timeout=max(1, int(timeout_s)),
            shutdown_timeout_seconds=max(1, int(timeout_s)),
            coordinator_bind_address=coordinator,
        )
        devices = jax.local_devices()
        return {"process_index": jax.process_index(), "process_count": jax.process_count(),
                "local_devices": len(devices), "global_devices": jax.device_count(),
                "platform": devices[0].platform, "device_kind": devices[0].device_kind,
                "megascale": {n: v for n, v in os.environ.items() if n.startswith(MEGASCALE_PREFIX)},
                # What a program may use here (budget.check_slice): the node's free memory, and
                # the least any local device holds where JAX says (TPU, GPU; not CPU devices).
                "memory_available": budget.available(), "device_memory": _device_memory(devices)}

    def train(self, program: Program, resume: Optional[dict] = None, checkpoint_every: int = 0):
        """train.train_stream's items: this host's checkpoint pieces, then its result (called
        as a stream: the driver keeps each piece as it comes)."""
        from ymxb.train import train_stream

        self._set_progress(None)
        self._maybe_fault("train")
        slow = self._slowness("train")

        def late(steps: int) -> None:  # test-only: each compiled call starts `slow` seconds late
            self._set_progress(steps)
            time.sleep(slow)

        yield from train_stream(program, late if slow else self._set_progress, resume, checkpoint_every)

    def progress(self):
        """Steps done (by the compiled calls completed so far), None before training starts.

        Answered while `train` runs (the actor has two threads): the driver judges training by
        it. A host whose count stops is stuck; one that does not answer at all is stopped."""
        with self._lock:
            return self._steps_started

    def shutdown(self) -> None:
        import jax

        jax.distributed.shutdown()

    def _set_progress(self, steps: int) -> None:
        with self._lock:
            self._steps_started = steps

    def _faults(self, phase: str) -> List[tuple]:
        """(kind, argument) of each test fault that strikes this host in `phase`."""
        found = []
        for fault in filter(None, os.environ.get(FAULT_ENV, "").split(",")):
            kind, host, where, *argument = fault.split(":")
            if where == phase and host in (str(self.host_index), "all"):
                found.append((kind, argument[0] if argument else None))
        return found

    def _slowness(self, phase: str) -> float:
        """Seconds each compiled call of `phase` is delayed by a "slow" fault on this host."""
        return sum(float(seconds) for kind, seconds in self._faults(phase) if kind == "slow")

    def _maybe_fault(self, phase: str) -> None:
        kind = next((kind for kind, _ in self._faults(phase) if kind in ("die", "hang")), None)
        if kind is None:
            return
        once = os.environ.get(FAULT_ONCE_ENV)
        if once:  # the first process to get here takes the fault; later ones run normally
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return
        print(f"ymxb test fault: host {self.host_index} {kind}s in {phase}", file=sys.stderr, flush=True)
        if kind == "die":
            os._exit(17)
        if kind == "hang":
            time.sleep(3600)


def _device_memory(devices) -> Optional[int]:
    """Bytes the emptiest-handed local device can hold (JAX's bytes_limit); None where JAX does
    not report it (CPU devices: their arrays are in the node's memory)."""
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    return min(limits) if limits and None not in limits else None


def _gloo_listens_on(host: str) -> None:
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
