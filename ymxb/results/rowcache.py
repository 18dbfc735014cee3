"""A results store's records as parsed, kept beside it (`DIR/.trials.cache`, marshal), so that a
load parses only the lines appended since: parsing 102,400 JSON rows and building their records
took ~2.2 s here, reading them back ~0.5 s (benchmarks/store_scale.py). What a record's checks
say (a third of a row's bytes, shown only by --json) is left out: `checks` None, read again by
`Store.whole`. Anything amiss with the cache (another layout, another ymxb, a store that is not
the one it was made from: a line taken out or put in) and it is made again from the store: the
store is the truth.
"""

import contextlib
import dataclasses
import marshal
import os
from typing import List, Tuple

from ymxb import __version__
from ymxb.results.store import SCHEMA, Member, TrialRecord  # results imports this module when it loads

FILE = ".trials.cache"
FORMAT = 1  # this file's own layout
# How it knows the store is the one it was made from (appended to since, perhaps): 64 bytes
# before each sixteenth of what it covers, its end included. A line taken out or put in moves
# them; reading them costs nothing.
WINDOW, WINDOWS = 64, 16
FIELDS = tuple(f.name for f in dataclasses.fields(TrialRecord))
MEMBER_FIELDS = tuple(f.name for f in dataclasses.fields(Member))
HEAD = (FORMAT, __version__, SCHEMA, FIELDS, MEMBER_FIELDS)  # a cache of another layout is made again


@dataclasses.dataclass(frozen=True)
class Covered:
    """How much of the store a cache holds: its first `size` bytes, `lines` lines."""

    size: int = 0
    lines: int = 0


def read(directory: str, store: str) -> Tuple[List[TrialRecord], Covered]:
    """The records the cache holds and how much of `store` they cover (none, where it is missing
    or not of this store)."""
    try:
        with open(os.path.join(directory, FILE), "rb") as f:
            head, covered, fingerprint, rows = marshal.loads(f.read())  # marshal.load(f): ~10x slower
        if head != HEAD or _fingerprint(store, covered[0]) != fingerprint:
            return [], Covered()
        return [_record(row) for row in rows], Covered(*covered)
    except (OSError, EOFError, ValueError, TypeError, KeyError):
        return [], Covered()


def write(directory: str, store: str, records: List[TrialRecord], covered: Covered) -> None:
    """Keep `records`, the first `covered` of `store`, for the next load (atomically; a
    folder it cannot write to keeps none)."""
    path = os.path.join(directory, FILE)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        rows = [_row(r) for r in records]
        with open(temporary, "wb") as f:
            f.write(marshal.dumps((HEAD, (covered.size, covered.lines), _fingerprint(store, covered.size), rows)))
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(temporary)


def remove(directory: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(os.path.join(directory, FILE))


def _row(r: TrialRecord) -> dict:
    """A record as marshal takes it, a dict of its fields (built back by assignment, the
    fastest way: 10^5 in 0.5 s with marshal's part), its checks left out."""
    return {**{name: getattr(r, name) for name in FIELDS}, "checks": None,
            "members": [{k: getattr(m, k) for k in MEMBER_FIELDS} for m in r.members]}


def _record(row: dict) -> TrialRecord:
    row["members"] = [_made(Member, m) for m in row["members"]]
    return _made(TrialRecord, row)


def _made(cls, fields: dict):
    """An instance with these fields, without running its __init__."""
    made = cls.__new__(cls)
    made.__dict__ = fields
    return made


def _fingerprint(store: str, size: int) -> bytes:
    with open(store, "rb") as f:
        parts = []
        for k in range(1, WINDOWS + 1):
            end = size * k // WINDOWS
            f.seek(max(0, end - WINDOW))
            parts.append(f.read(min(end, WINDOW)))
        return b"".join(parts)
