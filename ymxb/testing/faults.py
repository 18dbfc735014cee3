"""Faults a test makes real hosts suffer: a host that really dies (its process exits), really
hangs (it sleeps past any timeout) or is slow by a known amount (each compiled call starts late,
so a run takes as long as a test needs, on any machine).

A `Faults` travels to each host in its setup (protocol.HostSetup.faults); the host asks it at
each phase. Written as `kind:host:phase[:seconds]`, several joined by commas: `die:1:train`,
`hang:all:initialize`, `slow:all:train:0.05`. With `once` (a path), a die or hang strikes only
the first process to create that file.
"""

import dataclasses
import os
import sys
import time
from typing import Optional, Tuple

KINDS = ("die", "hang", "slow")
PHASES = ("initialize", "train")
DIED = 17  # the exit status of a host that dies of a fault


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    host: str  # a host index, or "all"
    phase: str
    seconds: float = 0.0  # slow: how late each compiled call starts

    def strikes(self, host_index: int, phase: str) -> bool:
        return self.phase == phase and self.host in (str(host_index), "all")


@dataclasses.dataclass(frozen=True)
class Faults:
    faults: Tuple[Fault, ...]
    once: Optional[str] = None

    @classmethod
    def parse(cls, text: str, once: Optional[str] = None) -> "Faults":
        faults = []
        for item in filter(None, text.split(",")):
            kind, host, phase, *seconds = item.split(":")
            if kind not in KINDS or phase not in PHASES:
                raise ValueError(f"test fault {item!r}: kind:host:phase[:seconds], kind one of {KINDS}")
            faults.append(Fault(kind, host, phase, float(seconds[0]) if seconds else 0.0))
        return cls(tuple(faults), once)

    def slow_s(self, host_index: int, phase: str) -> float:
        """Seconds each compiled call of this host starts late in `phase`."""
        return sum(f.seconds for f in self.faults if f.kind == "slow" and f.strikes(host_index, phase))

    def strike(self, host_index: int, phase: str) -> None:
        """Die or hang here, if a fault says so for this host and phase."""
        kind = next((f.kind for f in self.faults if f.kind in ("die", "hang") and f.strikes(host_index, phase)), None)
        if kind is None or not self._first():
            return
        print(f"ymxb test fault: host {host_index} {kind}s in {phase}", file=sys.stderr, flush=True)
        if kind == "die":
            os._exit(DIED)
        time.sleep(3600)

    def _first(self) -> bool:
        """Whether this process is the one a `once` fault strikes (always, without `once`)."""
        if not self.once:
            return True
        try:
            os.close(os.open(self.once, os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False
