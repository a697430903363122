"""The durable outbox: commit before publish, order, cap policy, retention, integrity (no broker)."""
from __future__ import annotations

import sqlite3
import stat
import uuid

import pytest

from edge.config import validate
from edge.alerts.expiry import purge_match_records
from edge.alerts.outbox import Outbox, OutboxCorrupt, OutboxError, OutboxFull

DAY = 86400.0


class Clock:
    def __init__(self, t: float = 1_750_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _eid() -> str:
    return str(uuid.uuid4())


def test_rows_are_durable_ordered_and_marked_only_when_told(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite"
    ids = [_eid() for _ in range(5)]
    with Outbox(path) as ob:
        seqs = [ob.enqueue(e, f"payload {i}".encode()) for i, e in enumerate(ids)]
        assert seqs == sorted(seqs)
        assert [r.event_id for r in ob.pending_after(0, 10)] == ids
        assert [r.event_id for r in ob.pending_after(seqs[1], 2)] == ids[2:4]
        assert ob.mark_delivered(seqs[:2]) == 2
        assert ob.mark_delivered(seqs[:2]) == 0             # idempotent
    with Outbox(path) as ob:                                # reopened: same state
        assert [r.event_id for r in ob.pending_after(0, 10)] == ids[2:]
        assert ob.pending_after(0, 1)[0].payload == b"payload 2"
        assert ob.knows(ids[0]) and ob.knows(ids[4]) and not ob.knows(_eid())
        s = ob.stats()
        assert (s["pending"], s["delivered"], s["refused"]) == (3, 2, 0)
        with pytest.raises(OutboxError, match="already in the outbox"):
            ob.enqueue(ids[0], b"again")


def test_sqlite_settings(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as ob:
        db = ob._db
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2          # FULL
        assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1
        ob.enqueue(_eid(), b"x")
    assert stat.S_IMODE((tmp_path / "o.sqlite").stat().st_mode) == 0o600


def test_full_outbox_refuses_the_new_alert_and_keeps_the_oldest(tmp_path):
    path = tmp_path / "o.sqlite"
    ids = [_eid() for _ in range(10)]
    with Outbox(path, max_pending=10) as ob:
        for e in ids:
            ob.enqueue(e, b"a")
        newcomer = _eid()
        for _ in range(3):
            with pytest.raises(OutboxFull, match="refused, none dropped"):
                ob.enqueue(newcomer, b"b")
        assert [r.event_id for r in ob.pending_after(0, 100)] == ids    # the oldest is still first
        assert ob.stats()["refused"] == 3
        ob.mark_delivered([ob.pending_after(0, 1)[0].seq])             # one delivered: room for one
        ob.enqueue(newcomer, b"b")
    with Outbox(path, max_pending=10) as ob:
        assert ob.stats()["refused"] == 3                               # the counter survives restarts
        assert ob.pending_count() == 10


def test_one_expiry_rule_by_age_delivered_or_not_and_seqs_are_never_reused(tmp_path):
    """Every alert goes retention_days after it was made, delivered or not (the outbox used to
    keep undelivered rows for ever and to date delivered ones from their delivery)."""
    clock = Clock()
    path = tmp_path / "o.sqlite"
    with Outbox(path, clock=clock) as ob:
        old, kept, pending = _eid(), _eid(), _eid()
        s_old = ob.enqueue(old, b"face crop")
        clock.t += 10 * DAY
        ob.mark_delivered([s_old])                # delivered 10 days after it was made
        s_kept = ob.enqueue(kept, b"k")
        ob.mark_delivered([s_kept])
        ob.enqueue(pending, b"p")
        clock.t += 25 * DAY                       # old: made 35 days ago, delivered 25; kept, pending: made 25 days ago
        got = purge_match_records(path, clock.t, 30 * DAY, 24 * 3600.0)
        assert got["alerts_expired"] == 1 and got["alerts_expired_undelivered"] == 0
        assert not ob.knows(old) and ob.knows(kept) and ob.knows(pending)
        clock.t += 6 * DAY                        # undelivered for 31 days: gone as well
        got = purge_match_records(path, clock.t, 30 * DAY, 24 * 3600.0)
        assert got["alerts_expired"] == 1 and got["alerts_expired_undelivered"] == 1
        assert not ob.knows(pending) and ob.pending_count() == 0
        s_new = ob.enqueue(_eid(), b"n")
        assert s_new > s_kept                     # AUTOINCREMENT: order survives purges
    raw = (tmp_path / "o.sqlite").read_bytes() + (tmp_path / "o.sqlite-wal").read_bytes() \
        if (tmp_path / "o.sqlite-wal").exists() else (tmp_path / "o.sqlite").read_bytes()
    assert b"face crop" not in raw                # secure_delete + checkpoint: the bytes are gone


def test_from_config_uses_the_state_dir_and_outbox_settings(tmp_path):
    cfg = validate({"unit": {"id": "van-01", "state_dir": str(tmp_path / "st")},
                    "outbox": {"max_pending": 10, "retention_days": 7}})
    with Outbox.from_config(cfg) as ob:
        assert ob.path == tmp_path / "st" / "outbox.sqlite"
        assert ob.max_pending == 10
    assert stat.S_IMODE((tmp_path / "st").stat().st_mode) == 0o700


def test_damaged_or_foreign_files_are_reported_clearly(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(OutboxCorrupt, match="junk.sqlite.*not a usable outbox"):
        Outbox(junk)
    assert junk.read_bytes().startswith(b"this is not")      # left untouched for recovery

    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t(x)")
    db.commit()
    db.close()
    with pytest.raises(OutboxCorrupt, match="not an edge-lfr outbox"):
        Outbox(other)

    path = tmp_path / "o.sqlite"
    with Outbox(path) as ob:
        for _ in range(300):
            ob.enqueue(_eid(), b"z" * 2000)
        ob._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    for p in range(2, len(data) // page):                     # scribble over the b-tree pages
        data[p * page + 8:p * page + 40] = b"\xa5" * 32
    path.write_bytes(bytes(data))
    with pytest.raises(OutboxCorrupt, match="o.sqlite"):
        Outbox(path)


def test_closed_outbox_says_so(tmp_path):
    ob = Outbox(tmp_path / "o.sqlite")
    ob.close()
    with pytest.raises(OutboxError, match="closed"):
        ob.pending_count()
