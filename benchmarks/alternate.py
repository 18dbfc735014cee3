"""Timing two compiled calls fairly on a noisy machine: in turn, round by round."""

import statistics
import time
from typing import Callable, Tuple


def calls_per_s(ours: Callable, reference: Callable, rounds: int) -> Tuple[float, float]:
    """Calls per second of `ours()` and `reference()` (each returns what to block on), the
    median of `rounds` rounds, the two timed in turn in each; one call of each first compiles."""
    import jax

    def timed(call: Callable) -> float:
        started = time.perf_counter()
        jax.block_until_ready(call())
        return time.perf_counter() - started

    timed(ours), timed(reference)  # compile
    times = [(timed(ours), timed(reference)) for _ in range(rounds)]
    return 1 / statistics.median(t[0] for t in times), 1 / statistics.median(t[1] for t in times)
