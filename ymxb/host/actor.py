"""The per-host worker: one Ray actor (one process) on each host of the slice.

The driver calls, in order: identity, coordinator_address (host 0 only), initialize, train
(once per program run on the warm slice) or call (a user's own program), shutdown; each returns a record of protocol.py. JAX
is imported only here, inside the actor, after the actor has set up its process as its
platform asked (the XLA device-count flag must be in place before JAX starts).
"""

import importlib
import os
import socket
import threading
import time
from typing import Dict, Iterator, Optional, Tuple, Union

from ymxb.host import setup as hostsetup
from ymxb.names import MEGASCALE_PREFIX
from ymxb.protocol import (Checkpoint, CheckpointPiece, HostIdentity, HostResult, HostSetup, Joined, Output, Report,
                           UserCall, UserEnd)
from ymxb.spec.settings import Program


class Host:
    """Joins the JAX distributed runtime as process `host_index` and trains on its devices."""

    def __init__(self, host_index: int, setup: HostSetup):
        os.environ.update(setup.env)  # before anything imports JAX
        self.host_index, self.setup = host_index, setup
        self._steps_started = None  # None until training starts
        self._beats = 0  # pieces of work reported: progress, though the steps stand still
        self._resident = None  # a program stopped at a call boundary, on the devices (train.Resident)
        self._lock = threading.Lock()
        # Importing JAX takes seconds: begin now, while the other hosts start, not at initialize.
        # (Importing it touches no device: initialize still comes first.)
        self._jax_imported = threading.Thread(target=importlib.import_module, args=("jax",), daemon=True)
        self._jax_imported.start()

    def identity(self) -> HostIdentity:
        """Where this host runs: node address, hostname, pid."""
        import ray

        return HostIdentity(self.host_index, socket.gethostname(), ray.util.get_node_ip_address(),
                            os.getpid(), ray.get_runtime_context().get_node_id())

    def coordinator_address(self) -> str:
        """A free port on this node's address for the JAX coordinator (run by process 0)."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        return f"{ip}:{port}"

    def initialize(self, coordinator: str, num_processes: int, timeout_s: float,
                   multislice: Dict[str, str]) -> Joined:
        """Join the distributed runtime, with this start's multislice environment
        (platforms.multislice_env); return what JAX now sees from this process."""
        self._maybe_fault("initialize")
        hostsetup.use_multislice_env(multislice)
        if self.setup.free_tpu:
            hostsetup.free_tpu()
        self._jax_imported.join()
        import jax
        import ray

        if self.setup.cpu_collectives:
            hostsetup.gloo_listens_on(ray.util.get_node_ip_address())
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
        return Joined(
            process_index=jax.process_index(), process_count=jax.process_count(),
            local_devices=len(devices), global_devices=jax.device_count(),
            platform=devices[0].platform, device_kind=devices[0].device_kind,
            megascale={n: v for n, v in os.environ.items() if n.startswith(MEGASCALE_PREFIX)},
            # What a program may use here (budget.check_slice): the node's free memory, and
            # the least any local device holds where JAX says (TPU, GPU; not CPU devices).
            memory_available=hostsetup.available(), device_memory=_device_memory(devices))

    def train(self, program: Program, resume: Optional[Checkpoint] = None, checkpoint_every: int = 0,
              until: Optional[int] = None) -> Iterator[Union[CheckpointPiece, HostResult]]:
        """train.train_stream's items: this host's checkpoint pieces, then its result (called
        as a stream: the driver keeps each piece as it comes). A program stopped at `until` is
        kept on the devices for the call that goes on from there (early stopping's)."""
        from ymxb.host.train import train_stream

        resident, self._resident = self._resident, None  # whatever comes, the old state is let go

        self._set_progress(None)
        self._maybe_fault("train")
        slow = self.setup.faults.slow_s(self.host_index, "train") if self.setup.faults else 0.0

        def late(steps: int) -> None:  # a test's fault: each compiled call starts `slow` seconds late
            self._set_progress(steps)
            time.sleep(slow)

        yield from train_stream(program, late if slow else self._set_progress, resume, checkpoint_every, until,
                                resident, keep=lambda r: setattr(self, "_resident", r))

    def call(self, call: UserCall) -> Iterator[Union[Output, Report, UserEnd]]:
        """A user's own program, run here (host/program.py): its output and reports as they
        come, then how it ended (called as a stream). Progress is its last reported step."""
        from ymxb.host import program

        self._set_progress(None)
        self._maybe_fault("train")
        yield from program.run(call, self._set_progress)

    def progress(self) -> Tuple[Optional[int], int]:
        """(steps done by the compiled calls completed so far, None before training starts;
        how many pieces of work this host has reported: placing and compiling count too).

        Answered while `train` runs (the actor has two threads): the driver judges training by
        it. A host whose count stops is stuck; one that does not answer at all is stopped."""
        with self._lock:
            return self._steps_started, self._beats

    def shutdown(self) -> None:
        import jax

        jax.distributed.shutdown()

    def _set_progress(self, steps: Optional[int]) -> None:
        with self._lock:
            self._steps_started, self._beats = steps, self._beats + 1

    def _maybe_fault(self, phase: str) -> None:
        if self.setup.faults:
            self.setup.faults.strike(self.host_index, phase)


def _device_memory(devices) -> Optional[int]:
    """Bytes the emptiest-handed local device can hold (JAX's bytes_limit); None where JAX does
    not report it (CPU devices: their arrays are in the node's memory)."""
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    return min(limits) if limits and None not in limits else None
