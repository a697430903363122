"""The unit's side of the adjudication loop: record officers' decisions, acknowledge them, count them.

An officer's handheld publishes an adjudication of an alert (``lfr/<unit>/adjudication``;
:data:`edge.alerts.message.ADJUDICATION_SCHEMA_V2` from the web page, version 1 from certificate
handhelds and tools). :class:`~edge.alerts.publisher.AlertPublisher` checks it and hands it to
:meth:`AdjudicationRecords.record`, which

* records it in the unit's match records: the table ``adjudications`` in the outbox's SQLite
  file (next to the alerts, by event id; ``synchronous=FULL``, so a recorded decision survives
  a power cut). **The first adjudication of an event wins**; a repeat (the page sending its
  decision again after a reconnection, a second officer, a second device) creates no second
  record: it is counted on the existing one (``repeats``, ``conflicting_repeats`` when its
  outcome differs) and answered with the recorded one;
* logs one line (event id, outcome, officer, duplicate; never an image);
* returns the acknowledgement (:data:`edge.alerts.message.ADJUDICATION_ACK_SCHEMA`), which the
  publisher sends on ``lfr/<unit>/adjudication/ack``.

A record copies what a report needs from the alert (subject, category, score, threshold, alert
time), so it outlives the outbox's retention of the alert itself (images included).
:meth:`AdjudicationRecords.counts` gives the counts by outcome (and category) for a time
window: the figures of the deployment report. The hash-chained audit log is a later issue.

Wiring on the unit::

    outbox = Outbox.from_config(cfg)
    records = AdjudicationRecords(outbox)
    pub = AlertPublisher(cfg, outbox=outbox, on_adjudication=records.record).start()
"""
from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from datetime import datetime
from typing import Any, Callable, Mapping

from edge.alerts.message import adjudication_fields, validate_ack
from edge.alerts.outbox import Outbox, OutboxError
from edge.alerts.schema import ACK_SCHEMA_VERSION, ADJUDICATION_OUTCOMES, AdjudicationError
from edge.dbhandle import DbHandle
from edge.types import CATEGORIES
from edge.utc import format_utc_ms

log = logging.getLogger(__name__)

_DDL = """
CREATE TABLE IF NOT EXISTS adjudications (
    event_id            TEXT PRIMARY KEY,
    outcome             TEXT NOT NULL CHECK (outcome IN ('confirmed', 'rejected', 'not_located')),
    officer_id          TEXT NOT NULL,
    decided_at          TEXT NOT NULL,
    recorded_at         REAL NOT NULL,
    adjudication_schema INTEGER NOT NULL,
    unit_id             TEXT NOT NULL,
    alert_created_at    REAL NOT NULL,
    alerted_at          TEXT NOT NULL,
    subject_id          TEXT NOT NULL,
    category            TEXT NOT NULL,
    score               REAL NOT NULL,
    threshold           REAL NOT NULL,
    repeats             INTEGER NOT NULL DEFAULT 0,
    conflicting_repeats INTEGER NOT NULL DEFAULT 0,
    last_repeat_at      REAL
);
CREATE INDEX IF NOT EXISTS adjudications_alert_time ON adjudications(alert_created_at);
CREATE INDEX IF NOT EXISTS adjudications_recorded ON adjudications(recorded_at);
"""

_COLUMNS = ("event_id", "outcome", "officer_id", "decided_at", "recorded_at", "adjudication_schema", "unit_id",
            "alert_created_at", "alerted_at", "subject_id", "category", "score", "threshold", "repeats",
            "conflicting_repeats", "last_repeat_at")

#: What :meth:`AdjudicationRecords.counts` can place in the window.
WINDOW_BY = ("alert", "recorded")


def _epoch(t: float | datetime, what: str) -> float:
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise ValueError(f"{what}: a datetime must be timezone-aware (UTC)")
        return t.timestamp()
    if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
        return float(t)
    raise ValueError(f"{what}: not a time: {t!r:.60}")


class AdjudicationRecords(DbHandle):
    """The unit's adjudication records, in the outbox's SQLite file (its own connection).

    ``outbox`` must be open (it owns the file's creation and integrity check); the table is
    created if missing. Thread-safe: :meth:`record` runs in the publisher's thread while a
    report may call :meth:`counts` from another.
    """

    def __init__(self, outbox: Outbox, *, clock: Callable[[], float] = time.time):
        self.path = outbox.path
        self.clock = clock
        self._lock = threading.Lock()
        try:
            self._db: sqlite3.Connection | None = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
            db = self._db
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA secure_delete=ON")
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in filter(None, (s.strip() for s in _DDL.split(";"))):
                    db.execute(stmt)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.close()
            raise OutboxError(f"{self.path}: cannot set up the adjudication records: {exc}") from None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"{self.path}: adjudication records are closed")
        return self._db

    # -- recording ------------------------------------------------------------------------

    def record(self, adj: Mapping[str, Any]) -> dict:
        """Record one checked adjudication (:func:`edge.alerts.message.parse_adjudication`, either
        version) and return the acknowledgement to publish.

        The first adjudication of an event is recorded; a later one leaves the record as it is
        (it is counted as a repeat) and is answered with the recorded values and
        ``duplicate: true``. Raises :class:`~edge.alerts.message.AdjudicationError` for an event id
        that is not in the outbox.
        """
        event_id, outcome, officer, decided_at = adjudication_fields(adj)
        now = float(self.clock())
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM adjudications WHERE event_id = ?",
                                 (event_id,)).fetchone()
                if row is not None:
                    rec = dict(zip(_COLUMNS, row))
                    db.execute("UPDATE adjudications SET repeats = repeats + 1, conflicting_repeats = "
                               "conflicting_repeats + ?, last_repeat_at = ? WHERE event_id = ?",
                               (int(outcome != rec["outcome"]), now, event_id))
                    duplicate = True
                else:
                    alert = db.execute("SELECT created_at, payload FROM outbox WHERE event_id = ?",
                                       (event_id,)).fetchone()
                    if alert is None:
                        raise AdjudicationError(f"unknown event id {event_id}")
                    a = json.loads(bytes(alert[1]))
                    rec = {"event_id": event_id, "outcome": outcome, "officer_id": officer,
                           "decided_at": decided_at, "recorded_at": now,
                           "adjudication_schema": int(adj["schema_version"]), "unit_id": a["unit_id"],
                           "alert_created_at": float(alert[0]), "alerted_at": a["alerted_at"],
                           "subject_id": a["subject_id"], "category": a["category"], "score": float(a["score"]),
                           "threshold": float(a["threshold"]), "repeats": 0, "conflicting_repeats": 0,
                           "last_repeat_at": None}
                    db.execute(f"INSERT INTO adjudications({', '.join(_COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(_COLUMNS))})", tuple(rec[c] for c in _COLUMNS))
                    duplicate = False
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if duplicate:
            log.info("adjudication of event %s by %s (%s) not recorded: already %s by %s at %s", event_id, officer,
                     outcome, rec["outcome"], rec["officer_id"], rec["decided_at"])
        else:
            log.info("adjudication recorded: event %s %s by %s at %s", event_id, outcome, officer, decided_at)
        return validate_ack({
            "schema_version": ACK_SCHEMA_VERSION, "unit_id": rec["unit_id"], "event_id": event_id,
            "outcome": rec["outcome"], "officer_id": rec["officer_id"], "decided_at": rec["decided_at"],
            "recorded_at": format_utc_ms(rec["recorded_at"]), "duplicate": duplicate})

    # -- reading --------------------------------------------------------------------------

    def get(self, event_id: str) -> dict | None:
        """The record of one event (column -> value), or None when it was not adjudicated."""
        with self._lock:
            row = self._conn().execute(f"SELECT {', '.join(_COLUMNS)} FROM adjudications WHERE event_id = ?",
                                       (event_id,)).fetchone()
        return None if row is None else dict(zip(_COLUMNS, row))

    def all(self) -> list[dict]:
        """Every record, oldest recorded first."""
        with self._lock:
            rows = self._conn().execute(
                f"SELECT {', '.join(_COLUMNS)} FROM adjudications ORDER BY recorded_at, event_id").fetchall()
        return [dict(zip(_COLUMNS, r)) for r in rows]

    def counts(self, start: float | datetime, end: float | datetime, *, by: str = "alert") -> dict:
        """Counts of adjudications by outcome for the window ``start <= t < end`` (epoch seconds or
        aware datetimes): the figures of the deployment report.

        ``by="alert"`` (default) places an adjudication at the time its alert was made (committed to
        the outbox, within milliseconds of ``alerted_at``), so a deployment's alerts are counted
        whenever they were decided; ``by="recorded"`` at the time the unit recorded the decision.

        Returns ``{"start", "end", "by", "confirmed", "rejected", "not_located", "adjudicated",
        "unadjudicated", "by_category": {category: {outcome: n}}}``. ``unadjudicated`` (only with
        ``by="alert"``, else None) counts the window's alerts still in the outbox without a
        decision: exact while the window lies within ``outbox.retention_days``, after which
        delivered alerts are purged (their records are kept).
        """
        if by not in WINDOW_BY:
            raise ValueError(f"by must be one of {WINDOW_BY}, got {by!r}")
        t0, t1 = _epoch(start, "start"), _epoch(end, "end")
        if t1 < t0:
            raise ValueError("end is before start")
        column = "alert_created_at" if by == "alert" else "recorded_at"
        with self._lock:
            db = self._conn()
            rows = db.execute(f"SELECT category, outcome, count(*) FROM adjudications WHERE {column} >= ? AND "
                              f"{column} < ? GROUP BY category, outcome", (t0, t1)).fetchall()
            pending = None
            if by == "alert":
                pending = int(db.execute(
                    "SELECT count(*) FROM outbox o WHERE o.created_at >= ? AND o.created_at < ? AND NOT EXISTS "
                    "(SELECT 1 FROM adjudications a WHERE a.event_id = o.event_id)", (t0, t1)).fetchone()[0])
        by_category = {c: {o: 0 for o in ADJUDICATION_OUTCOMES} for c in CATEGORIES}
        totals = {o: 0 for o in ADJUDICATION_OUTCOMES}
        for category, outcome, n in rows:
            by_category.setdefault(category, {o: 0 for o in ADJUDICATION_OUTCOMES})[outcome] = int(n)
            totals[outcome] += int(n)
        return {"start": format_utc_ms(t0), "end": format_utc_ms(t1), "by": by, **totals, "adjudicated": sum(totals.values()),
                "unadjudicated": pending, "by_category": by_category}
