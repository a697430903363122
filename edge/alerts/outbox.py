"""The durable outbox: every alert is committed to SQLite on disk before it is published.

An alert is a row from the moment :meth:`Outbox.enqueue` returns (the transaction is
committed with ``synchronous=FULL`` in WAL mode, so it survives a crash of the process and a
power cut) until the broker acknowledges it (PUBACK) and :meth:`Outbox.mark_delivered` records
that. Rows are published in ``seq`` order (``AUTOINCREMENT``: a seq is never reused, even after
old rows are purged), so after an outage or a crash everything still pending goes out again,
oldest first. A crash between PUBACK and the mark means the alert is sent again: consumers
de-duplicate by ``event_id`` (at-least-once delivery, exactly once per event id).

Bounded: at most ``max_pending`` undelivered rows. When full, :meth:`enqueue` refuses the *new*
alert with :class:`OutboxFull` and a persistent counter (``refused``) goes up; an older alert
is never dropped to make room. How long rows are kept is decided in one place,
:mod:`edge.alerts.expiry` (run by the unit's retention purge).

At open the file is checked (``PRAGMA quick_check``); a damaged file raises
:class:`OutboxCorrupt` naming the file and the first problems, and is left untouched for
recovery. The file holds face crops: it is created with mode 0600 in a 0700 folder.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from edge.dbhandle import DbHandle
from edge.errors import EdgeError

log = logging.getLogger(__name__)

FILENAME = "outbox.sqlite"
SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT    NOT NULL UNIQUE,
    payload      BLOB    NOT NULL,
    created_at   REAL    NOT NULL,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(seq) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_delivered ON outbox(delivered_at) WHERE delivered_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters(name, value) VALUES ('refused', 0);
"""


class OutboxError(EdgeError):
    """The outbox cannot do what was asked (the message says why)."""

    exit_code = 74  # EX_IOERR


#: space kept in a file beside the outbox, released when a full disk would stop the outbox opening
RESERVE_FILENAME = ".outbox-reserve"
RESERVE_BYTES = 4 << 20


def _disk_full(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "disk is full" in text or "disk i/o error" in text or "no space" in text


class OutboxFull(OutboxError):
    """``max_pending`` undelivered alerts are waiting: the new alert is refused (and counted)."""

    exit_code = 75  # EX_TEMPFAIL


class OutboxCorrupt(OutboxError):
    """The outbox file failed its integrity check or is not an outbox at all."""


@dataclass(frozen=True)
class Row:
    seq: int
    event_id: str
    payload: bytes
    created_at: float


class Outbox(DbHandle):
    """SQLite (WAL) outbox of alerts. Thread-safe: one connection behind a lock."""

    def __init__(self, path: str | os.PathLike, *, max_pending: int = 10_000,
                 clock: Callable[[], float] = time.time, check: str = "quick"):
        if max_pending < 1:
            raise OutboxError(f"max_pending must be at least 1, got {max_pending}")
        self.path = Path(path)
        self.max_pending = int(max_pending)
        self.clock = clock
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        #: alerts refused because they could not be stored (full disk, I/O error) since this process
        #: opened the outbox: a full disk cannot commit the persistent counter, so it is kept here too
        self.refused_unstored = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise OutboxError(f"{self.path.parent}: cannot create the outbox folder: {exc}") from None
        try:
            try:
                self._open(check)
            except sqlite3.OperationalError as exc:
                # a full disk: SQLite cannot even create the WAL index to read. The space kept in
                # reserve is released so that the unit starts and publishes what it holds
                # (health reports disk_low); it is taken again once there is room.
                if not self._release_reserve(exc):
                    raise
                self._open(check)
        except sqlite3.DatabaseError as exc:
            self.close()
            if _disk_full(exc):
                raise OutboxError(f"{self.path}: the disk is full ({exc}); free space in "
                                  f"{self.path.parent}") from None
            raise OutboxCorrupt(f"{self.path}: not a usable outbox database ({exc}); move it aside "
                                "for recovery (it may hold undelivered alerts) and restart") from None
        except BaseException:
            self.close()
            raise
        self._restrict_permissions()
        self._take_reserve()

    # -- the disk reserve -----------------------------------------------------------------

    @property
    def reserve_path(self) -> Path:
        return self.path.with_name(RESERVE_FILENAME)

    def _open(self, check: str) -> None:
        self.close()
        self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._setup(check)

    def _release_reserve(self, exc: BaseException) -> bool:
        if not _disk_full(exc):
            return False
        try:
            self.reserve_path.unlink()
        except OSError:
            return False
        log.error("the disk holding %s is full (%s): released the %d MiB kept in reserve so that the outbox "
                  "opens; free space soon", self.path.parent, exc, RESERVE_BYTES >> 20)
        return True

    def _take_reserve(self) -> None:
        """Keep RESERVE_BYTES in a file beside the outbox while there is room (best effort)."""
        r = self.reserve_path
        if r.exists():
            return
        try:
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize < 4 * RESERVE_BYTES:
                return
            fd = os.open(r, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("no disk reserve kept: %s", exc)
            try:
                r.unlink()
            except OSError:
                pass

    @classmethod
    def from_config(cls, cfg, clock: Callable[[], float] = time.time) -> "Outbox":
        """The unit's outbox: ``<unit.state_dir>/outbox.sqlite`` with the ``outbox.*`` settings."""
        return cls(Path(cfg.unit.state_dir) / FILENAME, max_pending=cfg.outbox.max_pending, clock=clock)

    # -- setup ------------------------------------------------------------------------------

    def _setup(self, check: str) -> None:
        db = self._db
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"{self.path}: cannot switch to WAL journal mode (got {mode!r})")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA secure_delete=ON")
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA journal_size_limit=16777216")
        if check in ("quick", "full"):
            problems = self.integrity_check(full=check == "full")
            if problems != ["ok"]:
                raise OutboxCorrupt(f"{self.path}: integrity check failed: {'; '.join(problems[:5])}; "
                                    "move the file aside for recovery (it may hold undelivered alerts) and restart")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OutboxError(f"{self.path}: outbox schema version {version} is newer than this software "
                              f"({SCHEMA_VERSION}); upgrade edge-lfr")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version == 0 and tables - {"sqlite_sequence"}:
            raise OutboxCorrupt(f"{self.path}: is an SQLite file but not an edge-lfr outbox "
                                f"(tables: {', '.join(sorted(tables))})")
        if version == SCHEMA_VERSION and {"outbox", "counters"} <= tables:
            return                 # set up already: opening writes nothing (it works on a full disk)
        with self._tx():
            for stmt in filter(None, (s.strip() for s in _DDL.split(";"))):
                db.execute(stmt)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _restrict_permissions(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            try:
                if p.exists() and p.stat().st_mode & 0o077:
                    p.chmod(0o600)
            except OSError:
                pass

    class _Tx:
        def __init__(self, outbox: "Outbox"):
            self.o = outbox

        def __enter__(self):
            self.o._lock.acquire()
            try:
                self.o._conn().execute("BEGIN IMMEDIATE")
            except BaseException:
                self.o._lock.release()
                raise
            return self.o._db

        def __exit__(self, exc_type, exc, tb):
            try:
                self.o._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                self.o._lock.release()
            return False

    def _tx(self) -> "Outbox._Tx":
        return Outbox._Tx(self)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"{self.path}: outbox is closed")
        return self._db

    # -- the queue --------------------------------------------------------------------------

    def enqueue(self, event_id: str, payload: bytes) -> int:
        """Commit one alert (durably) and return its seq. Raises :class:`OutboxFull` (and counts
        the refusal) when ``max_pending`` alerts are undelivered; never drops an older one."""
        if not isinstance(payload, (bytes, bytearray)) or not payload:
            raise OutboxError("payload must be non-empty bytes")
        full = False
        try:
            with self._tx() as db:
                pending = db.execute("SELECT count(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0]
                if pending >= self.max_pending:
                    db.execute("UPDATE counters SET value = value + 1 WHERE name = 'refused'")
                    full = True
                else:
                    cur = db.execute("INSERT INTO outbox(event_id, payload, created_at) VALUES (?, ?, ?)",
                                     (event_id, bytes(payload), float(self.clock())))
                    seq = int(cur.lastrowid)
        except sqlite3.IntegrityError:
            raise OutboxError(f"event id {event_id} is already in the outbox") from None
        except sqlite3.Error as exc:
            with self._lock:
                self.refused_unstored += 1
            log.error("alert %s refused: it cannot be stored (%s); health reports it (outbox_refused)", event_id, exc)
            raise OutboxError(f"{self.path}: cannot store the alert: {exc}") from None
        if full:
            log.error("outbox full: %d alerts undelivered (outbox.max_pending); alert %s refused", pending, event_id)
            raise OutboxFull(f"outbox full: {pending} undelivered alerts (outbox.max_pending = "
                             f"{self.max_pending}); alert {event_id} refused, none dropped")
        return seq

    def pending_after(self, seq: int = 0, limit: int = 100) -> list[Row]:
        """Undelivered rows with a seq above ``seq``, oldest first, at most ``limit``."""
        with self._lock:
            rows = self._conn().execute(
                "SELECT seq, event_id, payload, created_at FROM outbox WHERE delivered_at IS NULL AND seq > ? "
                "ORDER BY seq LIMIT ?", (int(seq), int(limit))).fetchall()
        return [Row(int(s), e, bytes(p), float(c)) for s, e, p, c in rows]

    def mark_delivered(self, seqs: Iterable[int], at: float | None = None) -> int:
        """Record the broker's acknowledgement of these rows (one transaction); returns how many
        were pending until now."""
        seqs = [int(s) for s in seqs]
        if not seqs:
            return 0
        when = float(self.clock() if at is None else at)
        with self._tx() as db:
            n = 0
            for i in range(0, len(seqs), 500):
                chunk = seqs[i:i + 500]
                cur = db.execute(f"UPDATE outbox SET delivered_at = ? WHERE delivered_at IS NULL AND seq IN "
                                 f"({','.join('?' * len(chunk))})", (when, *chunk))
                n += cur.rowcount
        return n

    def knows(self, event_id: str) -> bool:
        """Whether an alert with this event id is in the outbox (pending or delivered)."""
        with self._lock:
            return self._conn().execute("SELECT 1 FROM outbox WHERE event_id = ?", (event_id,)).fetchone() is not None

    def pending_count(self) -> int:
        with self._lock:
            return int(self._conn().execute("SELECT count(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0])

    def stats(self) -> dict:
        """pending, delivered, refused (ever) and the age of the oldest pending row in seconds."""
        with self._lock:
            db = self._conn()
            pending, oldest = db.execute(
                "SELECT count(*), min(created_at) FROM outbox WHERE delivered_at IS NULL").fetchone()
            delivered = db.execute("SELECT count(*) FROM outbox WHERE delivered_at IS NOT NULL").fetchone()[0]
            refused = db.execute("SELECT value FROM counters WHERE name = 'refused'").fetchone()[0]
        age = None if oldest is None else max(0.0, float(self.clock()) - float(oldest))
        return {"pending": int(pending), "delivered": int(delivered),
                "refused": int(refused) + self.refused_unstored, "oldest_pending_s": age}

    def disk_free_mb(self) -> float | None:
        """Free space (for an unprivileged writer) in the outbox's file system, MiB."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return None
        return round(st.f_bavail * st.f_frsize / (1 << 20), 1)

    def integrity_check(self, full: bool = True) -> list[str]:
        """``PRAGMA integrity_check`` (or ``quick_check``) result lines; ``['ok']`` when sound."""
        with self._lock:
            pragma = "integrity_check" if full else "quick_check"
            return [str(r[0]) for r in self._conn().execute(f"PRAGMA {pragma}").fetchall()]
