"""The results store: `DIR/trials.db`, one SQLite database with every trial recorded so far.

Each finished program's records go in one transaction: after a crash, a dead host or Ctrl-C
they are all there or none is, and a reader never sees half of them. One writer at a time: a
sweep holds `DIR/.lock` (flock) while it runs (`Store.locked`), and a second one is refused
naming the first. A store written before (trials.jsonl, curves.jsonl) is moved in once, on
first use (`legacy.py`); its files are kept, renamed *.migrated.

Reading every trial reads the `trials` table alone: its scalar columns, each group's base
config and each trial's small delta from it. The members and checks (`details`) and the loss
curves (`curves`) are read only when asked for. Damage to the database ends in a UsageError
naming it, never a traceback.
"""

import contextlib
import fcntl
import os
import socket
import sqlite3
from typing import Dict, Iterable, List, Optional, Sequence

from ymxb.errors import UsageError, first_line
from ymxb.results import tables
from ymxb.results.tables import sweep_version
from ymxb.results.record import Member, StoredMembers, TrialRecord

DB = "trials.db"
LOCK = ".lock"  # held (flock) by the sweep writing the store; names it for a second one
CHUNK = 500  # ids asked for in one query


class Store:
    """`DIR/trials.db`: the records of the trials finished so far, by trial id."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, DB)
        self._db: Optional[sqlite3.Connection] = None
        self._holding = False  # this object holds the lock (`locked`)

    # Reading.

    def exists(self) -> bool:
        """Whether the folder holds a store: this one, or one written before to move in."""
        from ymxb.results import legacy

        return os.path.isfile(self.path) or legacy.present(self.directory)

    def load(self) -> Dict[str, TrialRecord]:
        """Every record, by its id, in the order first written: their members read when first
        asked for, their curves and checks None (`curves`, `whole`)."""
        db = self._open(create=False)
        if db is None:
            return {}
        with self._reading():
            return tables.records(db, self.path, self._members_of)

    def whole(self, records: Sequence[TrialRecord]) -> List[TrialRecord]:
        """`records` with everything they say: their curves, members and checks."""
        wanted = [r.trial_id for r in records if r.checks is None or isinstance(r.members, StoredMembers)]
        found = self._details(wanted)
        out = []
        for r in self.curves(records):
            members, checks = found.get(r.trial_id, (r.members, r.checks))
            out.append(_replaced(r, members=members, checks=[] if checks is None else checks))
        return out

    def curves(self, records: Sequence[TrialRecord]) -> List[TrialRecord]:
        """`records` with their loss curves, read where a record does not hold its own (a record
        whose curve is missing gets an empty one: drawn without it)."""
        wanted = [r.trial_id for r in records if r.loss_curve is None]
        found = {}
        for tid, step, loss in self._rows("SELECT trial_id, step, loss FROM curves", wanted):
            found[tid] = tables.curve(step, loss, self.path, tid)
        return [r if r.loss_curve is not None else _replaced(r, loss_curve=found.get(r.trial_id, _empty()))
                for r in records]

    def sweep_files(self) -> List[str]:
        """The versions of the sweep file kept, oldest first."""
        db = self._open(create=False)
        if db is None:
            return []
        with self._reading():
            return [name for (name,) in db.execute("SELECT name FROM sweep_files ORDER BY version")]

    # Writing.

    def append(self, records: Iterable[TrialRecord]) -> None:
        """Add records durably, all at once: after a crash they are all there or none is. A
        record of a trial already recorded replaces it, in its place."""
        records = list(records)
        db = self._open(create=True)
        with self._reading(), tables.transaction(db):
            tables.insert(db, records)

    def keep_sweep_file(self, as_run: str) -> str:
        """Keep the sweep file about to run (`as_run`: its text, with the values it drew),
        unless the store has this very text already: sweep.yaml first, then sweep.1.yaml,
        sweep.2.yaml, ... one per version that ran, in the database and as a file beside it
        (to run again). Returns the copy's name (records say which version they ran from)."""
        db = self._open(create=True)
        with self._reading(), tables.transaction(db):
            kept = db.execute("SELECT name, text FROM sweep_files ORDER BY version").fetchall()
            for name, text in kept:
                if text == as_run:
                    return name
            name = sweep_version(len(kept))
            db.execute("INSERT INTO sweep_files (name, version, text) VALUES (?, ?, ?)", (name, len(kept), as_run))
            _write_atomically(os.path.join(self.directory, name), as_run.encode())
        return name

    def clear(self) -> None:
        """Forget every trial (--fresh); the kept sweep files stay."""
        db = self._open(create=True)
        with self._reading(), tables.transaction(db):
            for table in ("trials", "details", "curves", "configs"):
                db.execute(f"DELETE FROM {table}")

    @contextlib.contextmanager
    def locked(self):
        """Hold the store for writing while the block runs. A second writer (another sweep on
        this folder) gets a UsageError naming the process that holds it; the lock goes with
        its process, however that ends."""
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(os.path.join(self.directory, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise UsageError(f"{self.directory} is in use by another sweep ({holder}): wait for it "
                                 f"to end, or give this one another --out") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            self._holding = True
            yield self
        finally:
            self._holding = False
            os.close(fd)  # and with it the lock

    # The database.

    def _open(self, create: bool) -> Optional[sqlite3.Connection]:
        """The database, checked (a store written before moved in first); None where there is
        none and `create` is false."""
        if self._db is not None:
            return self._db
        from ymxb.results import legacy

        if not os.path.isfile(self.path) and legacy.present(self.directory):
            with self._migrating():
                if not os.path.isfile(self.path):
                    legacy.migrate(self.directory, self._connect)
        if not os.path.isfile(self.path) and not create:
            return None
        db = self._connect()
        with self._reading():
            tables.check(db, self.path)
        self._db = db
        return db

    def _connect(self) -> sqlite3.Connection:
        """A connection to the database, its tables made where they are not there yet."""
        os.makedirs(self.directory, exist_ok=True)
        with self._reading():
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            tables.create(db, self.path)
        return db

    @contextlib.contextmanager
    def _migrating(self):
        """Hold the lock while a store written before moves in (unless this object holds it)."""
        if self._holding:
            yield
        else:
            with Store(self.directory).locked():
                yield

    @contextlib.contextmanager
    def _reading(self):
        """Any error of the database as one line naming it (a text in it no longer UTF-8 too)."""
        try:
            yield
        except (sqlite3.DatabaseError, UnicodeDecodeError) as err:
            raise UsageError(f"{self.path}: not a readable results store ({first_line(err, 200)}); restore "
                             f"it from a copy, or remove it (its trials run again)") from None

    def _rows(self, select: str, ids: Sequence[str]) -> Iterable[tuple]:
        """The rows of `select` (its first column a trial id) of the trials `ids`: a scan where
        they are many, else by the index, a chunk at a time."""
        db = self._open(create=False) if ids else None
        if db is None:
            return []
        with self._reading():
            if len(ids) > 20 * CHUNK:
                wanted = set(ids)
                return [row for row in db.execute(select) if row[0] in wanted]
            rows = []
            for start in range(0, len(ids), CHUNK):
                part = ids[start:start + CHUNK]
                rows += db.execute(f"{select} WHERE trial_id IN ({','.join('?' * len(part))})", part).fetchall()
            return rows

    def _details(self, ids: Sequence[str]) -> Dict[str, tuple]:
        """(members, checks) of the trials `ids`, parsed."""
        return {tid: (tables.members(m, self.path, tid), tables.checks(c, self.path, tid))
                for tid, m, c in self._rows("SELECT trial_id, members, checks FROM details", ids)}

    def _members_of(self, tid: str) -> List[Member]:
        """One trial's members (a record's StoredMembers asks when they are first needed)."""
        found = self._details([tid])
        if tid not in found:
            raise UsageError(f"{self.path}: trial {tid} has no members recorded; restore the store from a copy, "
                             f"or remove it (its trials run again)")
        return found[tid][0]





def _replaced(record: TrialRecord, **changes) -> TrialRecord:
    """A copy of `record` with `changes` (without running __init__: many records at once)."""
    made = TrialRecord.__new__(TrialRecord)
    made.__dict__ = {**record.__dict__, **changes}
    return made


def _empty() -> dict:
    return {"step": [], "loss": []}


def _write_atomically(path: str, data: bytes) -> None:
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(temporary, "wb") as f:
        f.write(data)
    os.replace(temporary, path)
