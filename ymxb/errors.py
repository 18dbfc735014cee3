"""The two ways a run fails before a verdict; both end with exit code 2 and one line."""

from typing import Optional


class UsageError(ValueError):
    """Bad input: the message says what was wrong and how to fix it."""


class HostFailure(RuntimeError):
    """A host died or hung, or the cluster cannot hold the request; the message names which.

    `host` (its process index) and `cause` say who and what, where a host is to blame:
    "died" (its process exited), "hung" (alive but not progressing, or never arrived),
    "preempted" (its node was taken away or left the cluster), or "crashed" (JAX's runtime
    raised, e.g. a collective whose peer went). A cause of None is no host's loss (the
    cluster cannot hold the slice, the run is slow, a bad setting): retrying would not help.
    """

    def __init__(self, message: str, host: Optional[int] = None, cause: Optional[str] = None,
                 phase: Optional[str] = None):
        super().__init__(message)
        self.host, self.cause, self.phase = host, cause, phase
