"""How long match records live: one rule, applied in one place.

A match record is an alert in the outbox (probe crop, reference thumbnail, scores) and the
officers' adjudication record of it. The rule (docs/privacy.md, "Retention"):

* every alert is deleted ``retention_days`` after it was **made**, delivered or not (an alert
  the broker never acknowledged in 30 days is no longer of use to anyone, and keeping it would
  keep a face), together with its adjudication record;
* an alert an officer marked **not a match** (``rejected``) goes ``rejected_hours`` after that
  decision, with its record.

Deleted means gone: the connection that deletes has ``secure_delete=ON``, so the freed pages (the
JPEGs' overflow pages included) are overwritten with zeros, all deletions are one transaction,
and the WAL is then checkpointed and truncated so no older copy of a page stays in it. The
outbox and the adjudication records share the file, which is why their expiry lives here,
beside both, and not in either; :class:`edge.privacy.retention.Retention` runs it hourly.
"""
from __future__ import annotations

import os
import sqlite3
from typing import Callable

from edge.errors import EdgeError


class ExpiryError(EdgeError):
    """The records could not be expired (the message says why); the next run tries again."""

    exit_code = 74


def purge_match_records(path: str | os.PathLike, now: float, retention_s: float, rejected_s: float,
                        step: Callable[[str], None] = lambda name: None) -> dict[str, int]:
    """Apply the rule to the outbox file at ``path`` at time ``now`` (Unix seconds). Returns how
    many rows went, by kind. ``step(name)`` is called at ``records_before_commit`` and
    ``records_committed`` (tests kill the process there)."""
    out = {"alerts_expired": 0, "alerts_expired_undelivered": 0, "alerts_rejected": 0,
           "records_expired": 0, "records_rejected": 0}
    if not os.path.exists(path):
        return out
    cutoff = now - retention_s
    rejected_cutoff = now - min(rejected_s, retention_s)
    db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA secure_delete=ON")
        db.execute("PRAGMA synchronous=FULL")
        if str(db.execute("PRAGMA secure_delete").fetchone()[0]) != "1":
            raise ExpiryError(f"{path}: SQLite refused secure_delete")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        db.execute("BEGIN IMMEDIATE")
        try:
            if "adjudications" in tables and "outbox" in tables:
                out["alerts_rejected"] = db.execute(
                    "DELETE FROM outbox WHERE event_id IN (SELECT event_id FROM adjudications WHERE "
                    "outcome = 'rejected' AND recorded_at < ?)", (rejected_cutoff,)).rowcount
            if "adjudications" in tables:
                out["records_rejected"] = db.execute(
                    "DELETE FROM adjudications WHERE outcome = 'rejected' AND recorded_at < ?",
                    (rejected_cutoff,)).rowcount
                out["records_expired"] = db.execute(
                    "DELETE FROM adjudications WHERE alert_created_at < ?", (cutoff,)).rowcount
            if "outbox" in tables:
                out["alerts_expired"] = db.execute(
                    "DELETE FROM outbox WHERE created_at < ? AND delivered_at IS NOT NULL", (cutoff,)).rowcount
                out["alerts_expired_undelivered"] = db.execute(
                    "DELETE FROM outbox WHERE created_at < ? AND delivered_at IS NULL", (cutoff,)).rowcount
            step("records_before_commit")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        step("records_committed")
        busy, _frames, _done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise ExpiryError(f"{path}: the WAL could not be checkpointed (a reader holds it); the freed pages "
                              "are zeroed in the WAL, the checkpoint is retried at the next run")
    finally:
        db.close()
    return out
