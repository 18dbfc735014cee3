"""The two ways a run fails before a verdict (both end with exit code 2 and one line), what a
host failure's cause is, how an error reads in one line, and where in a user's code it was
raised."""

import enum
import os
import re
import traceback
from typing import Optional, Sequence, Tuple


class UsageError(ValueError):
    """Bad input: the message says what was wrong and how to fix it."""


class Cause(enum.Enum):
    """Why a slice failed, as the supervisor's budgets switch on it."""

    DIED = "died"  # a host's process exited (crashed, killed, aborted by JAX)
    HUNG = "hung"  # alive but not progressing, or never arrived
    PREEMPTED = "preempted"  # its node was taken away, or left the cluster
    CRASHED = "crashed"  # JAX's runtime raised (a collective whose peer went)
    FINAL = "final"  # no host's loss (no room for the slice, a slow run, a bad setting)
    RAISED = "raised"  # a user's own program raised (launch.py run): its bug, not the slice's

    @property
    def restarts(self) -> bool:
        """Whether restarting the slice may mend it."""
        return self not in (Cause.FINAL, Cause.RAISED)


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


def where_raised(err: BaseException) -> str:
    """Where in a user's code `err` was raised: " (at FILE:LINE in FUNCTION)", from the last
    frame outside ymxb, JAX, haiku and the other installed packages; "" if none is."""
    frames = traceback.extract_tb(err.__traceback__) if err.__traceback__ else []
    return _user_frame([(f.filename, f.lineno, f.name) for f in frames])


def raised_in(where: str, err: BaseException) -> UsageError:
    """A user's code (`where`: "--task m:T", or more) raised `err`: the one line that says so."""
    return UsageError(f"{where}: {type(err).__name__}: {first_line(err, 200)}{where_raised(err)}")


def where_raised_text(text: str) -> str:
    """where_raised, from a traceback as text (a host's, as Ray passes it on)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', text or "")
    return _user_frame([(path, int(line), name) for path, line, name in frames])


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_frame(frames: Sequence[Tuple[str, int, str]]) -> str:
    mine = [(path, line, name) for path, line, name in frames
            if not os.path.abspath(path).startswith(PACKAGE_DIR) and "-packages" not in path
            and not path.startswith("<") and f"{os.sep}lib{os.sep}python" not in path]
    if not mine:
        return ""
    path, line, name = mine[-1]
    return f" (at {os.path.relpath(path) if path.startswith(os.getcwd()) else path}:{line} in {name})"
