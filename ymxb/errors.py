"""The two ways a run fails before a verdict (both end with exit code 2 and one line), what a
host failure's cause is, and how an error reads in one line."""

import enum
from typing import Optional


class UsageError(ValueError):
    """Bad input: the message says what was wrong and how to fix it."""


class Cause(enum.Enum):
    """Why a slice failed, as the supervisor's budgets switch on it."""

    DIED = "died"  # a host's process exited (crashed, killed, aborted by JAX)
    HUNG = "hung"  # alive but not progressing, or never arrived
    PREEMPTED = "preempted"  # its node was taken away, or left the cluster
    CRASHED = "crashed"  # JAX's runtime raised (a collective whose peer went)
    FINAL = "final"  # no host's loss (no room for the slice, a slow run, a bad setting)

    @property
    def restarts(self) -> bool:
        """Whether restarting the slice may mend it."""
        return self is not Cause.FINAL


class HostFailure(RuntimeError):
    """A host died or hung, or the cluster cannot hold the request; the message names which.

    `host`: its process index, where one is to blame; `cause`: what happened (FINAL: retrying
    would not help); `phase`: where (start, jax.distributed.initialize, training, ...).
    """

    def __init__(self, message: str, host: Optional[int] = None, cause: Cause = Cause.FINAL,
                 phase: Optional[str] = None):
        super().__init__(message)
        self.host, self.cause, self.phase = host, cause, phase


def first_line(err: BaseException, limit: int = 400) -> str:
    """An error's first line (its type's name if it says nothing), cut to `limit` characters."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:limit]
