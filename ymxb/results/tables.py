"""The tables of `trials.db` and how records go in and come out of them.

    configs(id, body)          a group's base config (JSON, its keys in the config's order)
    trials(seq, trial_id, ...) one row a trial: its config as the base's id and a JSON delta
                               from it, and every scalar the table and the questions read
    details(trial_id, members, checks)   JSON, read only when asked for
    curves(trial_id, step, loss)         the loss curve: int32 and float64 blobs
    sweep_files(name, version, text)     each version of the sweep file that ran

The database's own layout is its `user_version` (FORMAT); a record's layout is its `schema`.
"""

import contextlib
import functools
import gc
import json
import math
import sqlite3
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ymxb import __version__
from ymxb.errors import UsageError, first_line
from ymxb.results.record import SCHEMA, Member, StoredMembers, Summary, TrialRecord, json_line

SWEEP_FILE = "sweep.yaml"  # the sweep file as run; later versions sweep.1.yaml, sweep.2.yaml, ...
RESTORE = "restore the store from a copy, or remove it (its trials run again)"
FORMAT = 2  # the database's layout (PRAGMA user_version)
# The trials table's columns after seq: (name, type, may be null).
COLUMNS = (
    ("trial_id", "TEXT", False), ("base", "INTEGER", True), ("delta", "TEXT", False),
    ("verified", "INTEGER", False), ("max_error", "REAL", True), ("solution", "TEXT", False),
    ("optimal_loss", "REAL", True), ("members", "INTEGER", False), ("final_loss", "REAL", True),
    ("converged_step", "REAL", True), ("diverged_step", "INTEGER", True), ("grp", "TEXT", False),
    ("slice", "TEXT", False), ("group_trials", "INTEGER", False), ("wall_s", "REAL", True),
    ("sweep_file", "TEXT", True), ("ymxb_version", "TEXT", True), ("schema", "INTEGER", False),
    ("stopped_at", "INTEGER", True), ("stopped_by", "TEXT", True), ("metrics", "TEXT", False),
    ("higher_is_better", "TEXT", False),
)
# What each layout added to the one before it, as the statements that bring a store up to it.
UPGRADES = {2: ("ALTER TABLE trials ADD COLUMN metrics TEXT NOT NULL DEFAULT '{}'",
                "ALTER TABLE trials ADD COLUMN higher_is_better TEXT NOT NULL DEFAULT '[]'")}
NAMES = tuple(name for name, _, _ in COLUMNS)
TABLES = f"""
CREATE TABLE configs (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE) STRICT;
CREATE TABLE trials (seq INTEGER PRIMARY KEY, {', '.join(
    f"{n} {t}{'' if null else ' NOT NULL'}{' UNIQUE' if n == 'trial_id' else ''}" for n, t, null in COLUMNS)}) STRICT;
CREATE TABLE details (trial_id TEXT PRIMARY KEY, members TEXT NOT NULL, checks TEXT NOT NULL) STRICT, WITHOUT ROWID;
CREATE TABLE curves (trial_id TEXT PRIMARY KEY, step BLOB NOT NULL, loss BLOB NOT NULL) STRICT, WITHOUT ROWID;
CREATE TABLE sweep_files (name TEXT PRIMARY KEY, version INTEGER NOT NULL UNIQUE, text TEXT NOT NULL) STRICT;
"""
UPSERT = (f"INSERT INTO trials ({', '.join(NAMES)}) VALUES ({', '.join('?' * len(NAMES))}) "
          f"ON CONFLICT (trial_id) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in NAMES[1:])}")
# A row whose values are not of their column's type (the file damaged under SQLite's checks).
_SQL_TYPES = {"TEXT": "('text')", "INTEGER": "('integer')", "REAL": "('real', 'integer')"}
DAMAGED = ("SELECT seq FROM trials WHERE NOT (" + " AND ".join(
    f"typeof({n}) IN {_SQL_TYPES[t][:-1]}{', ' + repr('null') if null else ''})" for n, t, null in COLUMNS)
    + " AND members >= 0) LIMIT 1")


def sweep_version(n: int) -> str:
    """The name of the n-th version of a sweep's file kept beside its records."""
    return SWEEP_FILE if n == 0 else SWEEP_FILE.replace(".", f".{n}.", 1)


def create(db: sqlite3.Connection, path: str) -> None:
    """Make the tables in a new (empty) database; refuse one a newer ymxb laid out."""
    if _layout(db, path) == 0:
        with transaction(db):
            if _layout(db, path) == 0:  # no other process made them meanwhile
                for statement in TABLES.strip().split(";\n"):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {FORMAT}")


@contextlib.contextmanager
def transaction(db: sqlite3.Connection):
    """One write transaction: committed whole, or (an exception, Ctrl-C too) rolled back whole."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def check(db: sqlite3.Connection, path: str) -> None:
    """Refuse a database that is not a results store of this layout; bring one of an older
    layout up to it (in one transaction: all of it, or none)."""
    layout = _layout(db, path)
    if 0 < layout < FORMAT:
        with transaction(db):
            layout = _layout(db, path)  # another process may have upgraded it meanwhile
            for version in range(layout + 1, FORMAT + 1):
                for statement in UPGRADES[version]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {FORMAT}")
        layout = FORMAT
    if layout != FORMAT:
        raise UsageError(f"{path}: not a results store of this ymxb (database layout {layout}; this one, "
                         f"{__version__}, reads {FORMAT})" + (": upgrade ymxb to read it" if layout > FORMAT else ""))


def _layout(db: sqlite3.Connection, path: str) -> int:
    (layout,) = db.execute("PRAGMA user_version").fetchone()
    if layout == 0 and db.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
        raise UsageError(f"{path}: a database, but not a results store (tables of its own): give the folder "
                         f"a sweep wrote")
    return layout


# Writing.

def insert(db: sqlite3.Connection, records: Sequence[TrialRecord]) -> None:
    """Add (or replace, in place) the records: rows, details and curves."""
    bases = {}  # group -> (its base's id, the base)
    for r in records:
        if r.group not in bases:
            body = json_line(r.config)
            db.execute("INSERT OR IGNORE INTO configs (body) VALUES (?)", (body,))
            (cid,) = db.execute("SELECT id FROM configs WHERE body = ?", (body,)).fetchone()
            bases[r.group] = (cid, r.config)
    db.executemany(UPSERT, [row(r, *bases[r.group]) for r in records])
    db.executemany("INSERT OR REPLACE INTO details VALUES (?, ?, ?)",
                   [(r.trial_id, json_line([m.asdict() for m in r.members]), json_line(r.checks or []))
                    for r in records])
    db.executemany("INSERT OR REPLACE INTO curves VALUES (?, ?, ?)",
                   [(r.trial_id, *blobs(r.loss_curve)) for r in records if r.loss_curve is not None])


def row(r: TrialRecord, base_id: int, base: dict) -> tuple:
    """The record's row of `trials` (its config as a delta from `base`, the group's)."""
    same_keys = list(r.config) == list(base)
    delta = {k: v for k, v in r.config.items() if type(v) is not type(base[k]) or v != base[k]} if same_keys \
        else r.config
    s = r.summary()
    return (r.trial_id, base_id if same_keys else None, json_line(delta), int(bool(r.verified)),
            _real(r.max_error), json_line(r.solution), _real(r.optimal_loss), len(r.members),
            _real(s.final_loss), _real(s.converged_step), _int(s.diverged_step), r.group, r.slice,
            int(r.group_trials), _real(r.wall_s), r.sweep_file, r.ymxb_version, int(r.schema),
            _int(r.stopped_at), r.stopped_by, json_line(r.metrics), json_line(r.higher_is_better))


def blobs(curve: dict) -> Tuple[bytes, bytes]:
    """A loss curve as its steps (int32) and losses (float64; NaN where not finite)."""
    return (np.asarray(curve["step"], np.int32).tobytes(),
            np.array(curve["loss"], dtype=np.float64).tobytes())


def _real(v) -> Optional[float]:
    return None if v is None or not math.isfinite(v) else float(v)


def _int(v) -> Optional[int]:
    return None if v is None else int(v)


# Reading.

def records(db: sqlite3.Connection, path: str, fetch: Callable[[str], List[Member]]) -> Dict[str, TrialRecord]:
    """Every record, by id, in the order first written; `fetch(id)` reads a trial's members."""
    damaged = db.execute(DAMAGED).fetchone()
    if damaged:
        raise UsageError(f"{path}: row {damaged[0]} of its trials is damaged (a value of the wrong type); "
                         f"{RESTORE}")
    newer = db.execute("SELECT trial_id, schema FROM trials WHERE schema > ? LIMIT 1", (SCHEMA,)).fetchone()
    if newer:
        raise UsageError(f"{path}, trial {newer[0]}: written by a newer ymxb (record layout {newer[1]}; this one, "
                         f"{__version__}, reads up to {SCHEMA}): upgrade ymxb to read it")
    bases = {cid: _object(body, path, "a config") for cid, body in db.execute("SELECT id, body FROM configs")}
    rows = db.execute(f"SELECT {', '.join(NAMES)} FROM trials ORDER BY seq").fetchall()
    deltas = _objects([r[2] for r in rows], path)
    metrics = _objects([r[20] for r in rows], path, "a trial's metrics")
    for r, m in zip(rows, metrics):
        if not all(v is None or (type(v) in (int, float)) for v in m.values()):
            raise _damaged(path, r[0], "metrics are", "a value that is not a number")
    texts = {}
    with _collection_paused():
        try:
            return {r[0]: _record(r, delta, m, bases, fetch, texts, path) for r, delta, m in zip(rows, deltas, metrics)}
        except KeyError as err:
            raise UsageError(f"{path}: a trial names config {err} that is not there; restore the store from "
                             f"a copy, or remove it (its trials run again)") from None


def _record(r: tuple, delta: dict, metrics: dict, bases: dict, fetch, _texts: dict, path: str) -> TrialRecord:
    """A record from its row (without running __init__: 10^5 at once). Texts repeated from row
    to row (a group, a slice, a solution, the metrics ranked larger first) are made once."""
    (tid, base, _, verified, max_error, solution, optimal_loss, members, final_loss, converged, diverged, group,
     slice_, group_trials, wall_s, sweep_file, version, schema, stopped_at, stopped_by, _, higher) = r
    shown = _texts.get(solution)
    if shown is None:
        shown = _texts[solution] = _object(solution, path, "a solution")
    larger = _texts.get(higher)
    if larger is None:
        larger = _texts[higher] = _names(higher, path)
    made = TrialRecord.__new__(TrialRecord)
    made.__dict__ = {
        "trial_id": tid, "config": delta if base is None else {**bases[base], **delta}, "verified": bool(verified),
        "max_error": max_error, "solution": dict(shown), "optimal_loss": optimal_loss,
        "members": StoredMembers(members, Summary(math.nan if final_loss is None else final_loss, converged, diverged),
                                 functools.partial(fetch, tid)),
        "loss_curve": None, "checks": None, "group": _texts.setdefault(group, group),
        "slice": _texts.setdefault(slice_, slice_), "group_trials": group_trials, "wall_s": wall_s,
        "sweep_file": sweep_file, "ymxb_version": _texts.setdefault(version, version), "schema": schema,
        "stopped_at": stopped_at, "stopped_by": stopped_by, "metrics": metrics, "higher_is_better": list(larger)}
    return made


def _names(text: str, path: str) -> tuple:
    """A JSON list of names (the metrics ranked larger first); UsageError where it is damaged."""
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if not (isinstance(parsed, list) and all(isinstance(n, str) for n in parsed)):
        raise UsageError(f"{path}: a trial's metric names are damaged (not a list of names); {RESTORE}")
    return tuple(parsed)


def _objects(texts: List[str], path: str, what: str = "a trial's config") -> List[dict]:
    """Each text parsed as a JSON object: all in one parse (far faster than one at a time),
    one at a time only to name a damaged one."""
    try:
        parsed = json.loads("[" + ",".join(texts) + "]")
        if len(parsed) == len(texts) and all(type(p) is dict for p in parsed):
            return parsed
    except ValueError:
        pass
    return [_object(t, path, what) for t in texts]


def _object(text: str, path: str, what: str) -> dict:
    try:
        parsed = json.loads(text)
    except ValueError as err:
        parsed = err
    if type(parsed) is not dict:
        why = first_line(parsed, 100) if isinstance(parsed, Exception) else "not an object"
        raise UsageError(f"{path}: {what} is damaged ({why}); {RESTORE}")
    return parsed


def members(text: str, path: str, tid: str) -> List[Member]:
    """A trial's members from their JSON; UsageError naming the store where it is damaged."""
    try:
        return [Member.from_dict(m) for m in json.loads(text)]
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise _damaged(path, tid, "members are", err) from None


def checks(text: str, path: str, tid: str) -> List[dict]:
    try:
        parsed = json.loads(text)
    except ValueError as err:
        raise _damaged(path, tid, "checks are", err) from None
    if not isinstance(parsed, list):
        raise _damaged(path, tid, "checks are", "not a list")
    return parsed


def curve(step: bytes, loss: bytes, path: str, tid: str) -> dict:
    """A loss curve from its blobs (as `blobs` wrote them)."""
    if not (isinstance(step, bytes) and isinstance(loss, bytes)) or len(step) % 4 or len(loss) != 2 * len(step):
        raise _damaged(path, tid, "loss curve is", "its blobs are not of one length")
    return {"step": np.frombuffer(step, np.int32).tolist(), "loss": np.frombuffer(loss, np.float64).tolist()}


def _damaged(path: str, tid: str, what: str, err) -> UsageError:
    why = err if isinstance(err, str) else first_line(err, 100)
    return UsageError(f"{path}: trial {tid}: its {what} damaged ({why}); {RESTORE}")


@contextlib.contextmanager
def _collection_paused():
    """The cyclic garbage collector off while many objects are made at once, none of them garbage."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
