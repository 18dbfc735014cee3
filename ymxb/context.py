"""What a user's own program, run on every host by `launch.py run`, may ask ymxb, and tell it.

    import ymxb
    start = restore(ymxb.checkpoint_dir()) if ymxb.attempt() else 0
    for step in range(start, steps):
        ...
        ymxb.report(step, loss=loss)

Every call works the same outside ymxb (`python train.py`): report does nothing, attempt is 0,
checkpoint_dir is None. The attempt and the folder are environment variables too, so a process
the program starts sees them.
"""

import os
import time
from typing import Callable, Optional

ATTEMPT_ENV = "YMXB_ATTEMPT"  # 0 for the first run of the program, 1 after the first restart, ...
CHECKPOINT_DIR_ENV = "YMXB_CHECKPOINT_DIR"  # --checkpoint-dir, where given

# Set by the host while it runs a program (host/program.py): takes (step, metrics, time).
_reporter: Optional[Callable[[int, dict, float], None]] = None


def report(step: int, **metrics: float) -> None:
    """Say that the program got to `step`, with metrics (numbers) to keep: the driver shows
    the progress, writes them to --out's metrics.jsonl, and judges a host hung that reported
    once and then reports nothing for --timeout. Does nothing outside ymxb."""
    if _reporter is None:
        return
    if isinstance(step, bool) or not isinstance(step, int) and not hasattr(step, "__index__"):
        raise TypeError(f"ymxb.report: step must be an integer, got {step!r}")
    values = {}
    for name, value in metrics.items():
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"ymxb.report: metric {name} must be a number, got {value!r}") from None
    _reporter(int(step), values, time.time())


def attempt() -> int:
    """Which run of the program this is: 0 the first, 1 after the slice's first restart, ..."""
    return int(os.environ.get(ATTEMPT_ENV, "0"))


def checkpoint_dir() -> Optional[str]:
    """The folder given as --checkpoint-dir (on a cluster: storage every host sees), else None."""
    return os.environ.get(CHECKPOINT_DIR_ENV) or None
