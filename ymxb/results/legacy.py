"""Stores written before `trials.db`: `trials.jsonl` (one record a line) and `curves.jsonl`
(one loss curve a line), with the sweep files beside them. Each is moved into the database
once, on first use, in one transaction; the old files are then renamed *.migrated (kept, so
nothing is lost, and never read again). A line that is not a record is named with its file
and number; a torn last line (a crash mid-write) was never a record and is left out.
"""

import dataclasses
import json
import os
import sqlite3
import sys
from typing import Callable, Dict, List, Tuple

from ymxb import __version__
from ymxb.errors import UsageError, first_line
from ymxb.names import launch_line
from ymxb.results import tables
from ymxb.results.tables import sweep_version
from ymxb.results.record import SCHEMA, TrialRecord, trial_config, trial_id

STORE, CURVES = "trials.jsonl", "curves.jsonl"
MIGRATED = ".migrated"


def present(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, STORE))


def migrate(directory: str, connect: Callable[[], sqlite3.Connection]) -> None:
    """Move the old store in `directory` into a new database (`connect()` makes it); say so on
    stderr, in one line."""
    path = os.path.join(directory, STORE)
    records = read(path)
    _with_curves(records, os.path.join(directory, CURVES))
    sweeps = []
    while os.path.isfile(os.path.join(directory, sweep_version(len(sweeps)))):
        with open(os.path.join(directory, sweep_version(len(sweeps)))) as f:
            sweeps.append((sweep_version(len(sweeps)), len(sweeps), f.read()))
    db = connect()
    db.execute("BEGIN IMMEDIATE")
    try:
        _insert(db, records, path)
        db.executemany("INSERT OR REPLACE INTO sweep_files VALUES (?, ?, ?)", sweeps)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    db.close()
    moved = [name for name in (STORE, CURVES) if os.path.isfile(os.path.join(directory, name))]
    for name in moved:
        os.replace(os.path.join(directory, name), os.path.join(directory, name + MIGRATED))
    print(launch_line(f"{len(records)} trials of {path} moved into {os.path.join(directory, 'trials.db')} "
          f"(the old files kept as {', '.join(n + MIGRATED for n in moved)})"), file=sys.stderr, flush=True)


def _insert(db: sqlite3.Connection, records: List[Tuple[int, TrialRecord]], path: str) -> None:
    """The records into the database a line at a time, to name the line of one it refuses."""
    for number, record in records:
        try:
            tables.insert(db, [record])
        except (sqlite3.Error, ValueError, TypeError, KeyError, AttributeError) as err:
            raise _not_a_record(path, number, err) from None


def read(path: str) -> List[Tuple[int, TrialRecord]]:
    """(line number, record) of every record of `path`, the last of an id winning."""
    found: Dict[str, Tuple[int, TrialRecord]] = {}
    for number, line in _lines(path):
        record = _parsed(path, number, line)
        if record.trial_id in found:
            found[record.trial_id] = (found[record.trial_id][0], record)
        else:
            found[record.trial_id] = (number, record)
    return list(found.values())


def _parsed(path: str, number: int, line: str) -> TrialRecord:
    try:
        record = TrialRecord.from_dict(json.loads(line))
        newer = record.schema > SCHEMA
        if not newer:
            record.summary()  # its members make sense
            if record.schema < 2:
                record = upgraded(record)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise _not_a_record(path, number, err) from None
    if newer:
        raise UsageError(f"{path}, line {number}: written by a newer ymxb (record layout "
                         f"{record.schema}; this one, {__version__}, reads up to {SCHEMA}): "
                         f"upgrade ymxb to read it")
    return record


def _not_a_record(path: str, number: int, err) -> UsageError:
    return UsageError(f"{path}, line {number}: not a trial record ({first_line(err, 200)}); "
                      f"remove that line (its trial runs again) or restore it")


def _with_curves(records: List[Tuple[int, TrialRecord]], path: str) -> None:
    """Give each record without its own curve the last one `path` has of it."""
    wanted = {r.trial_id for _, r in records if r.loss_curve is None}
    found = {}
    for number, line in _lines(path):
        try:
            curve = json.loads(line)
            if curve["trial_id"] in wanted:
                found[curve["trial_id"]] = {"step": list(curve["step"]), "loss": list(curve["loss"])}
                tables.blobs(found[curve["trial_id"]])  # numbers, as many steps as losses
        except (ValueError, TypeError, KeyError) as err:
            raise UsageError(f"{path}, line {number}: not a loss curve ({first_line(err, 200)}); "
                             f"remove that line (its trial is drawn without it) or restore it") from None
    for _, r in records:
        if r.loss_curve is None and r.trial_id in found:
            r.loss_curve = found[r.trial_id]


def _lines(path: str) -> List[Tuple[int, str]]:
    """(line number, text) of every complete, non-blank line of `path` (none if it is missing)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    # A last line without its newline was torn by a crash mid-write: not a record.
    lines = data[:data.rfind(b"\n") + 1].split(b"\n")[:-1]
    out = []
    for number, line in enumerate(lines, 1):
        try:
            text = line.decode()
        except UnicodeDecodeError as err:
            raise UsageError(f"{path}, line {number}: not text ({first_line(err, 200)}); remove that line "
                             f"or restore it") from None
        if text.strip():
            out.append((number, text))
    return out


def upgraded(record: TrialRecord) -> TrialRecord:
    """A first-layout record in today's terms: its platform the one it ran on (the last word
    of `slice`), its id made again from its settings. Ids then were made from numbers as
    written (`lr: 1` apart from `lr: 1.0`) and, on a slice the platform shaped, from the slice
    before it was shaped; made again, they are the ids today's ymxb gives the same trials."""
    from ymxb.spec.settings import SliceSpec, TrialSpec

    config = dict(record.config)
    if config.get("platform") is None:
        config["platform"] = record.slice.rsplit(" ", 1)[-1]
    spec = SliceSpec(**{k: config[k] for k in SliceSpec.fields() if k in config})
    trial = TrialSpec.of_config(config)
    return dataclasses.replace(record, config=trial_config(spec, trial), trial_id=trial_id(spec, trial))
