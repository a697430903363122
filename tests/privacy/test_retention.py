"""Retention (edge/privacy/retention.py) with a controllable clock: match records deleted after retention_days,
rejected alerts after the shorter period, the watchlist within 24 h of the deployment ending or at
expiry, audit entries trimmed; secure_delete leaves no byte of a purged crop in the database files;
a purge killed (SIGKILL) at any step is finished by the next run."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge.alerts import message as A
from edge.alerts.adjudication import AdjudicationRecords
from edge.privacy.audit import AuditLog, read_entries, verify
from edge.config import validate
from edge.errors import ConfigError
from edge.watchlist.keys import save_device, save_trust
from edge.alerts.outbox import Outbox
from edge.privacy.retention import INTENT_FILE, Retention, deployment_ended_at
from edge.types import Match
from edge.watchlist.unit import UnitWatchlist
from tests.support.watchlists import HOUR, MODEL, Clock, build, make_keys

ROOT = Path(__file__).resolve().parents[2]
DAY = 86400
T0 = 1_750_000_000.0


def crop(seed: int) -> np.ndarray:
    """A distinctive 'face crop': its JPEG bytes can be searched for in the database files."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)


def make_alert(seed: int, created: float, category: str = "wanted") -> dict:
    m = Match(subject_id=f"S{seed:05d}", category=category, score=0.97, threshold=0.95, margin=0.1, index=seed)
    ctx = A.AlertContext("van-07", "OP-1", "b" * 32, 10, "ab" * 32)
    return A.build_alert(m, ctx, track_id=seed, first_seen=created - 1, probe_crop=crop(seed),
                         reference=crop(10_000 + seed), context_image=crop(20_000 + seed), max_image_bytes=32768,
                         alerted_at=created)


def marker(alert: dict) -> bytes:
    """128 characters from the middle of the probe crop's base64: present iff the crop's bytes are."""
    b = alert["probe_jpeg"]
    mid = len(b) // 2
    return b[mid:mid + 128].encode()


def db_bytes(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(state.glob("outbox.sqlite*")))


def adj(event_id: str, outcome: str) -> dict:
    return A.parse_adjudication(json.dumps({"schema_version": 2, "event_id": event_id, "outcome": outcome,
                                            "officer_id": "off-01", "decided_at": "2025-06-15T15:00:00.000Z"}
                                           ).encode(), 4096)


class World:
    """A unit's state folder: outbox + adjudication records + audit log + (optional) watchlist,
    all on one controllable clock."""

    def __init__(self, tmp: Path, **cfg):
        self.tmp = tmp
        self.state = tmp / "state"
        self.clock = Clock(T0)
        self.keys = make_keys()
        save_trust(self.keys.trust(), tmp / "trust.yaml")
        self.cfg = validate({"unit": {"id": "van-07", "state_dir": str(self.state),
                                      "trust_file": str(tmp / "trust.yaml")},
                             "watchlist": {"max_subjects": 50, "max_bundle_bytes": 2_000_000}, **cfg})
        self.outbox = Outbox.from_config(self.cfg, clock=self.clock.now)
        self.records = AdjudicationRecords(self.outbox, clock=self.clock.now)
        self.audit = AuditLog.from_config(self.cfg, device_key=self.keys.dev7, clock=self.clock.now)
        self.unit = UnitWatchlist(self.cfg, model_sha256=MODEL, device_key=self.keys.dev7, now=self.clock.now,
                                  monotonic=self.clock.mono, boot_id=lambda: "boot-1")
        self.alerts: dict[str, dict] = {}

    def alert(self, seed: int, delivered: bool = True) -> dict:
        a = make_alert(seed, self.clock.now())
        seq = self.outbox.enqueue(a["event_id"], A.encode(a))
        if delivered:
            self.outbox.mark_delivered([seq])
        self.alerts[a["event_id"]] = a
        return a

    def retention(self, **kw) -> Retention:
        return Retention(self.cfg, audit=self.audit, unit=self.unit, clock=self.clock.now, **kw)

    def event_ids(self) -> set[str]:
        with sqlite3.connect(self.state / "outbox.sqlite") as db:
            return {r[0] for r in db.execute("SELECT event_id FROM outbox")}

    def record_ids(self) -> set[str]:
        with sqlite3.connect(self.state / "outbox.sqlite") as db:
            return {r[0] for r in db.execute("SELECT event_id FROM adjudications")}

    def close(self):
        self.records.close()
        self.outbox.close()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.close()


# ---------------------------------------------------------------------------------------------


def test_config_limits():
    assert validate({}).outbox.retention_days == 30
    assert validate({}).outbox.rejected_retention_hours == 24
    assert validate({}).privacy.deployment_end_wipe_hours == 24.0
    for bad in ({"outbox": {"retention_days": 32}}, {"outbox": {"rejected_retention_hours": 169}},
                {"privacy": {"deployment_end_wipe_hours": 24.5}}, {"privacy": {"audit_retention_days": 32}}):
        with pytest.raises(ConfigError):
            validate(bad)


def test_match_records_deleted_after_retention_days(world):
    old = world.alert(1)                                  # T0
    undelivered = world.alert(2, delivered=False)         # T0, never acknowledged by the broker
    world.records.record(adj(old["event_id"], "confirmed"))
    world.clock.advance(10 * DAY)
    recent = world.alert(3)                               # T0 + 10 d
    world.records.record(adj(recent["event_id"], "not_located"))
    world.clock.advance(20 * DAY - 1)                     # T0 + 30 d - 1 s: nothing is old enough yet
    c = world.retention().run()
    assert c["alerts_expired"] == 0 and world.event_ids() == set(world.alerts)
    world.clock.advance(2)                                # T0 + 30 d + 1 s
    c = world.retention().run()
    assert (c["alerts_expired"], c["alerts_expired_undelivered"], c["records_expired"]) == (1, 1, 1)
    assert world.event_ids() == {recent["event_id"]} and world.record_ids() == {recent["event_id"]}
    blob = db_bytes(world.state)
    assert marker(old) not in blob and marker(undelivered) not in blob
    assert marker(recent) in blob                         # control: a kept crop is found by the same search
    world.clock.advance(10 * DAY)
    world.retention().run()
    assert world.event_ids() == set() and world.record_ids() == set()
    assert marker(recent) not in db_bytes(world.state)
    assert world.outbox.integrity_check() == ["ok"]


def test_rejected_alerts_deleted_after_the_shorter_period(world):
    rej = world.alert(1)
    conf = world.alert(2)
    pending = world.alert(3)
    world.clock.advance(HOUR)
    world.records.record(adj(rej["event_id"], "rejected"))      # decided at T0 + 1 h
    world.records.record(adj(conf["event_id"], "confirmed"))
    world.clock.advance(24 * HOUR - 1)
    world.retention().run()
    assert rej["event_id"] in world.event_ids()
    world.clock.advance(2)                                       # 24 h + 1 s after the decision
    c = world.retention().run()
    assert (c["alerts_rejected"], c["records_rejected"]) == (1, 1)
    assert world.event_ids() == {conf["event_id"], pending["event_id"]}
    assert world.record_ids() == {conf["event_id"]}
    assert marker(rej) not in db_bytes(world.state)
    assert marker(conf) in db_bytes(world.state)
    purge = [e for e in read_entries(world.audit.path) if e["type"] == "purge"][-1]
    assert purge["data"]["alerts_rejected"] == 1 and purge["data"]["resumed"] is False


def test_rejected_period_never_longer_than_retention(tmp_path):
    w = World(tmp_path, outbox={"retention_days": 2, "rejected_retention_hours": 168})
    try:
        a = w.alert(1)
        w.records.record(adj(a["event_id"], "rejected"))
        w.clock.advance(2 * DAY + 1)
        w.retention().run()
        assert w.event_ids() == set()
    finally:
        w.close()


def test_secure_delete_is_what_removes_the_bytes(world, tmp_path):
    """Control: the same DELETE without secure_delete leaves the crop's bytes in the file; the
    retention purge does not."""
    a = world.alert(1)
    world.alert(2)
    world.outbox.close()
    world.records.close()
    copy = tmp_path / "copy.sqlite"
    src = sqlite3.connect(world.state / "outbox.sqlite")
    src.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    src.close()
    copy.write_bytes((world.state / "outbox.sqlite").read_bytes())
    db = sqlite3.connect(copy, isolation_level=None)
    db.execute("PRAGMA secure_delete=OFF")
    db.execute("DELETE FROM outbox WHERE event_id = ?", (a["event_id"],))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    assert marker(a) in copy.read_bytes(), "plain DELETE left the bytes (this is what secure_delete is for)"
    world.outbox = Outbox.from_config(world.cfg, clock=world.clock.now)
    world.records = AdjudicationRecords(world.outbox, clock=world.clock.now)
    world.clock.advance(31 * DAY)
    world.retention().run()
    assert marker(a) not in db_bytes(world.state)


def test_audit_entries_trimmed_and_still_verifiable(world):
    for i in range(40):
        world.audit.counts({"frames": 100, "faces": i})
        world.clock.advance(DAY)
    world.retention().run()                                  # at T0 + 40 d: older than 31 d go
    entries = list(read_entries(world.audit.path))
    from edge.utc import parse_utc_ms
    assert min(parse_utc_ms(e["t"]) for e in entries) >= world.clock.now() - 31 * DAY
    assert any(e["type"] == "audit_trim" for e in entries)
    assert verify(world.audit.path, world.keys.dev7).ok


def test_stale_temp_files_removed(world):
    wl = world.state / "watchlist"
    wl.mkdir(parents=True, exist_ok=True)
    stale = wl / ".current.edgewl.tmp-999999999"
    stale.write_bytes(b"half a bundle")
    mine = wl / f".state.json.tmp-{os.getpid()}"
    mine.write_bytes(b"in progress")
    c = world.retention().run()
    assert c["temp_files"] == 1 and not stale.exists() and mine.exists()


# ---------------------------------------------------------------------------------------------
# the watchlist
# ---------------------------------------------------------------------------------------------


def _load(world, hours: float = 72):
    data = build(world.keys, serial=10, n=4, valid_from=int(world.clock.now() - HOUR),
                 valid_until=int(world.clock.now() + hours * HOUR))
    return world.unit.load(data)


def test_watchlist_deleted_24h_after_a_clean_stop(world):
    world.audit.service_start(world.cfg)
    _load(world)
    world.clock.advance(2 * HOUR)
    world.audit.service_stop("SIGTERM")
    world.clock.advance(23 * HOUR)
    c = world.retention().run()                             # from a timer while stopped
    assert c["watchlist_deleted"] is None and world.unit.bundle_path.exists()
    world.clock.advance(HOUR)                               # 24 h after the stop
    c = world.retention().run()
    assert c["watchlist_deleted"] == "deployment ended"
    assert not world.unit.bundle_path.exists()
    st = world.unit.read_state()
    assert st["status"] == "wiped" and "deployment ended" in st["status_reason"]
    deleted = [e for e in read_entries(world.audit.path) if e["type"] == "watchlist_deleted"]
    assert deleted and deleted[-1]["data"]["reason"] == "deployment ended"
    assert verify(world.audit.path, world.keys.dev7).ok


def test_watchlist_deleted_24h_after_the_service_was_last_alive(world):
    """A crash or power cut: no service_stop; the last sign of life counts."""
    world.audit.service_start(world.cfg)
    _load(world)
    world.clock.advance(HOUR)
    world.audit.counts({"frames": 10})                     # last sign of life
    world.clock.advance(23 * HOUR + 59 * 60)
    assert world.retention().run()["watchlist_deleted"] is None
    assert deployment_ended_at(world.audit.path)[1] is False
    world.clock.advance(61)
    assert world.retention().run()["watchlist_deleted"] == "deployment ended"


def test_running_service_keeps_its_watchlist(world):
    world.audit.service_start(world.cfg)
    _load(world)
    world.clock.advance(30 * HOUR)                          # no entries for a day: still the running service
    assert world.retention(service_running=True).run()["watchlist_deleted"] is None
    assert world.unit.current() is not None


def test_restart_within_24h_continues_the_deployment(world):
    world.audit.service_start(world.cfg)
    _load(world)
    world.audit.service_stop("reboot")
    world.clock.advance(20 * HOUR)
    world.retention().run()                                 # at the start of the next run
    world.audit.service_start(world.cfg)
    world.clock.advance(5 * HOUR)
    world.audit.counts({"frames": 5})
    assert world.retention(service_running=True).run()["watchlist_deleted"] is None
    assert world.unit.bundle_path.exists()


def test_expired_watchlist_deleted(world):
    _load(world, hours=3)
    world.clock.advance(3 * HOUR)                           # valid_until
    c = world.retention(service_running=True).run()
    assert c["watchlist_deleted"] == "expired" and not world.unit.bundle_path.exists()
    assert world.unit.read_state()["status"] == "expired"


# ---------------------------------------------------------------------------------------------
# a purge killed half way
# ---------------------------------------------------------------------------------------------

_CHILD = r"""
import os, signal, sys
from edge.privacy.audit import AuditLog
from edge.config import load_config
from edge.watchlist.keys import load_device_key
from edge.watchlist.unit import UnitWatchlist
from edge.privacy.retention import Retention
cfg = load_config(sys.argv[1])
key = load_device_key(sys.argv[2], "van-07")
now = float(sys.argv[3])
crash_at = sys.argv[4]

def step_hook(step):  # the test's own hook: the shipped code has none that kills
    if step == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)

audit = AuditLog.from_config(cfg, device_key=key, clock=lambda: now)
unit = UnitWatchlist(cfg, model_sha256=None, device_key=key, now=lambda: now)
Retention(cfg, audit=audit, unit=unit, clock=lambda: now, step_hook=step_hook).run()
print("finished")
"""

STEPS = ("intent_written", "records_before_commit", "records_committed", "after_records", "after_watchlist",
         "after_audit", "after_temp")


@pytest.mark.parametrize("step", STEPS)
def test_purge_killed_at_each_step_is_finished_next_time(tmp_path, step):
    w = World(tmp_path)
    try:
        keydir = tmp_path / "keys"
        save_device(w.keys.dev7, keydir)
        cfg_file = tmp_path / "unit.yaml"
        cfg_file.write_text(json.dumps({"unit": {"id": "van-07", "state_dir": str(w.state),
                                                 "trust_file": str(tmp_path / "trust.yaml")}}))
        w.audit.service_start(w.cfg)
        _load(w, hours=100)
        w.audit.service_stop("end of deployment")
        old = [w.alert(i) for i in range(6)]
        for a in old[:3]:
            w.records.record(adj(a["event_id"], "confirmed"))
        w.clock.advance(31 * DAY)
        new = w.alert(99)
        w.outbox.close()
        w.records.close()
        # the child: same state folder, same clock; killed with SIGKILL at `step`
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        r = subprocess.run([sys.executable, "-c", _CHILD, str(cfg_file), str(keydir / "device.key"),
                            str(w.clock.now()), step], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == -signal.SIGKILL, r.stderr
        assert (w.state / INTENT_FILE).exists()
        # whatever the step, the database is consistent: all of the purge or none of it
        with sqlite3.connect(w.state / "outbox.sqlite") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            n = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        assert n in (1, 7)
        if step == "records_committed":
            # committed but not checkpointed: the zeroed pages are in the WAL, the old ones still in the
            # main file until the checkpoint - which is why the purge must be resumed
            assert n == 1
            assert any(marker(a) in db_bytes(w.state) for a in old)
        # the next run (the service's start, or the timer) finishes the job
        w.outbox = Outbox.from_config(w.cfg, clock=w.clock.now)
        w.records = AdjudicationRecords(w.outbox, clock=w.clock.now)
        w.audit = AuditLog.from_config(w.cfg, device_key=w.keys.dev7, clock=w.clock.now)
        c = w.retention().run()
        assert c["resumed"] is True
        assert not (w.state / INTENT_FILE).exists()
        assert w.event_ids() == {new["event_id"]} and w.record_ids() == set()
        blob = db_bytes(w.state)
        assert not any(marker(a) in blob for a in old)
        assert marker(new) in blob
        assert not w.unit.bundle_path.exists()
        assert w.outbox.integrity_check() == ["ok"]
        res = verify(w.audit.path, w.keys.dev7)
        assert res.ok, res.problems
        purges = [e for e in read_entries(w.audit.path) if e["type"] == "purge"]
        assert purges[-1]["data"]["resumed"] is True
    finally:
        w.close()


def test_the_timers_command_purges_while_the_service_is_stopped(tmp_path):
    """`edge-lfr audit purge --config FILE` - what systemd/edge-lfr-purge.timer runs every hour,
    service running or not - on a unit stopped after a deployment long ago (the test's clock is
    in 2025; this run uses the real one): old match records and the watchlist go, the purge is
    audited, the log still verifies."""
    w = World(tmp_path)
    keydir = tmp_path / "keys"
    save_device(w.keys.dev7, keydir)
    cfg_file = tmp_path / "unit.yaml"
    cfg_file.write_text(json.dumps({"unit": {"id": "van-07", "state_dir": str(w.state),
                                             "trust_file": str(tmp_path / "trust.yaml"),
                                             "device_key": str(keydir / "device.key")}}))
    w.audit.service_start(w.cfg)
    _load(w, hours=100)
    alerts = [w.alert(i) for i in range(3)]
    w.records.record(adj(alerts[0]["event_id"], "confirmed"))
    w.audit.service_stop("end of deployment")
    w.close()
    assert time.time() - T0 > 31 * DAY
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "edge.cli", "audit", "purge", "--config", str(cfg_file)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)
    assert counts["alerts_expired"] == 3 and counts["watchlist_deleted"] in ("expired", "deployment ended")
    assert w.event_ids() == set() and w.record_ids() == set()
    assert not w.unit.bundle_path.exists()
    purges = [e for e in read_entries(w.audit.path) if e["type"] == "purge"]
    assert purges and purges[-1]["data"]["alerts_expired"] == 3
    res = verify(w.audit.path, w.keys.dev7)
    assert res.ok, res.problems
