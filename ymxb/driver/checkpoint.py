"""A program's training state, kept by the driver: the hosts send their pieces after every
`--checkpoint-every` compiled calls, and the driver writes the whole, once every host's piece
of a step is in, as one file replaced atomically (a crash leaves the previous one whole).

Why the driver: the state of y = m*x + b is a few numbers per model, so gathering it costs
less than a call, and the driver outlives any host. A model too large for one machine would
instead have each host write its own shards to shared storage (orbax), with the driver
writing only which step is complete.

The state is flat: the leaves of the hosts' TrainState (params and optimiser state), each
with the program's model axis first (every entry, padding included), plus the loss history
so far. The hosts keep the tree's structure; the driver never imports JAX.
"""

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import time
from typing import Dict, List, Optional

import numpy as np

from ymxb.protocol import Checkpoint, CheckpointPiece
from ymxb.spec.settings import OPTIONS

SUFFIX = ".ckpt.npz"


def program_config(program) -> Dict:
    """The settings that decide a program's training, as JSON-able values."""
    shape = program.slice
    config = {"slice": {"slices": shape.slices, "hosts": shape.hosts, "devices_per_host": shape.devices_per_host},
              "trial": program.trial.as_first_named(), "lrs": list(program.lrs), "seeds": list(program.seeds)}
    config.update((option, list(program.column(option))) for option in OPTIONS if program.uses(option))
    return config


def name_of(program) -> str:
    """A file name for the program's checkpoint, the same whenever the program is the same."""
    digest = hashlib.sha256(json.dumps(program_config(program), sort_keys=True).encode()).hexdigest()
    return digest[:16] + SUFFIX


def files(folder: str) -> List[str]:
    """The checkpoint files in `folder`, oldest first."""
    return sorted(glob.glob(os.path.join(folder, "*" + SUFFIX)), key=os.path.getmtime)


def write(path: str, ckpt: Checkpoint) -> None:
    """Replace the file at `path` with `ckpt`, atomically: a temporary file in the same folder,
    written and fsynced, then renamed over it (and the folder fsynced, so the rename lasts)."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = f"{path}.{os.getpid()}.tmp"
    meta = json.dumps({"step": ckpt.step, "config": ckpt.config, "taken_at": ckpt.taken_at})
    arrays = {f"leaf{i}": leaf for i, leaf in enumerate(ckpt.leaves)}
    with open(temporary, "wb") as f:
        np.savez(f, meta=np.frombuffer(meta.encode(), np.uint8), losses=ckpt.losses, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove(path: str) -> None:
    """Delete the checkpoint at `path`, and any temporary file a killed writer left beside it."""
    for leftover in [path, *glob.glob(glob.escape(path) + ".*.tmp")]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)


def read(path: str) -> Optional[Checkpoint]:
    """The checkpoint at `path`, None if there is none."""
    if not os.path.isfile(path):
        return None
    with np.load(path) as f:
        meta = json.loads(f["meta"].tobytes())
        leaves = [f[f"leaf{i}"] for i in range(sum(k.startswith("leaf") for k in f.files))]
        return Checkpoint(meta["step"], leaves, f["losses"], meta["config"], meta["taken_at"])


def of_trials(ckpt: Checkpoint, positions, program) -> Checkpoint:
    """The checkpoint of just the trials at `positions` on its program's axis, laid out as
    `program` (theirs) lays its axis out: their entries in order, padded with the last."""
    members = program.trial.members
    entries = (np.asarray(positions)[:, None] * members + np.arange(members)).ravel()
    entries = np.concatenate([entries, np.full(program.padded_entries - len(entries), entries[-1])])
    return dataclasses.replace(ckpt, leaves=[leaf[entries] for leaf in ckpt.leaves], losses=ckpt.losses[entries],
                               config=program_config(program))


def differences(wrote: Dict, wanted: Dict) -> List[str]:
    """The settings where two programs' configs differ, as 'name: X there, Y here'."""
    flat = lambda c: {**c["slice"], **c["trial"]}  # a single run's lr and seed are its trial's
    a, b = flat(wrote), flat(wanted)
    return [f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


class Assembler:
    """Puts the hosts' pieces of each step together: `add` returns the step's whole
    Checkpoint once every host's piece of that step is in."""

    def __init__(self, program, hosts: int, start: Optional[Checkpoint] = None):
        self.program, self.hosts = program, hosts
        self.config = program_config(program)
        self.losses = start.losses if start else np.zeros((program.padded_entries, 0), np.float32)
        self.pieces: Dict[int, Dict[int, CheckpointPiece]] = {}  # step -> host -> piece

    def add(self, host: int, piece: CheckpointPiece) -> Optional[Checkpoint]:
        step_pieces = self.pieces.setdefault(piece.step, {})
        step_pieces[host] = piece
        if len(step_pieces) < self.hosts:
            return None
        del self.pieces[piece.step]
        entries = self.program.padded_entries
        leaves = [np.empty((entries,) + leaf.shape[1:], leaf.dtype) for leaf in step_pieces[0].leaves]
        chunk = np.empty((entries, step_pieces[0].losses.shape[1]), np.float32)
        for p in step_pieces.values():
            for whole, part in zip(leaves, p.leaves):
                whole[p.entries] = part
            chunk[p.entries] = p.losses
        self.losses = np.concatenate([self.losses, chunk], axis=1)
        return Checkpoint(piece.step, leaves, self.losses, self.config, time.time())
