"""One host's training run, in the order it happens: data, model, step, loop.

Runs inside each host's process after `jax.distributed.initialize` (or alone, as one process).
"""

import time
from typing import Callable, Optional

import jax
import numpy as np

from ymxb import data, models, steps
from ymxb.config import Config


def train_host(cfg: Config, on_progress: Callable[[int], None] = lambda steps: None) -> dict:
    """Train on this process's local devices; return its params, losses and timings.

    Returns NumPy values only, so the result travels through Ray as-is. `on_progress(steps)`
    is called before each compiled call (so a hung call shows where it stopped).
    """
    started = time.perf_counter()
    if jax.local_device_count() != cfg.devices_per_host:
        raise ValueError(f"host {jax.process_index()} has {jax.local_device_count()} local devices, "
                         f"but --devices-per-host is {cfg.devices_per_host}")
    on_progress(0)
    x, y = data.host_shard(cfg, jax.process_index())
    model = models.build(cfg.model)
    trainer = steps.TRAINERS[cfg.parallel](model, cfg)
    state = trainer.init()
    init_params = trainer.local(state.params)
    batch = trainer.put_data(x, y)
    collective_devices = trainer.collective_devices()

    losses, first_call_s, done = [], 0.0, 0
    while done < cfg.steps:
        n = min(cfg.steps_per_call, cfg.steps - done)
        on_progress(done)
        call_start = time.perf_counter()
        state, chunk = trainer.run(state, batch, n)
        # Fetching the losses blocks on the call: never queue collective calls unboundedly.
        losses.append(trainer.local(chunk))
        if done == 0:
            first_call_s = time.perf_counter() - call_start  # compile + run
        done += n
    on_progress(done)

    final = trainer.local(state.params)
    history = {i: np.concatenate([dict(chunk)[i] for chunk in losses]) for i, _ in losses[0]}
    pieces = [{"index": i, "params": params, "init_params": dict(init_params)[i],
               "losses": history[i], "first_nonfinite_step": _first_nonfinite(history[i])}
              for i, params in final]
    return {
        "collective_devices": collective_devices,
        "pieces": pieces,  # one per local device (one model) or per local member (ensemble)
        "train_s": time.perf_counter() - started,
        "first_call_s": first_call_s,
    }


def _first_nonfinite(losses: np.ndarray) -> Optional[int]:
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None
