"""Alerts over MQTT against a real mosquitto (Debian's) with the deploy/ configuration.

Each broker listens on 127.0.0.1 and a free port, with TLS and certificates made by
deploy/make-certs.sh. Figures of the outage and SIGKILL cases are printed (run with -s).
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from edge.alerts.schema import ALERT_SCHEMA, HEALTH_SCHEMA, check
from edge.alerts.localbroker import Mosquitto, make_certs
from edge.alerts.publisher import AlertPublisher
from edge.alerts.outbox import Outbox
from tests.support.brokers import (HANDHELD, OBSERVER, OTHER_UNIT, UNIT, Collector, broker, cert_dir,  # noqa: F401
                                   connect, mqtt_client, publish_wait, wait_for,
                         config_dict, make_alert, unit_config)

ROOT = Path(__file__).resolve().parents[2]


def test_only_alert_status_health_leave_the_unit_and_alerts_match_the_schema(cert_dir, broker, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    obs = Collector(cert_dir, broker.port, OBSERVER, ["#"]).start()
    cfg = unit_config(cert_dir, broker.port, tmp_path / "state", health_interval_seconds=1.0)
    pub = AlertPublisher(cfg, health_source=lambda: {"fps": 12.5, "queue_depth": 3, "bundle_id": "bundle-7",
                                                     "bundle_expires_at": time.time() + 86400}).start()
    try:
        assert pub.wait_connected(10)
        sent = [make_alert(n=i) for i in range(5)]
        for a in sent:
            pub.submit(a)
        assert pub.wait_idle(10)
        assert obs.wait_for(lambda o: len(o.on("/alert")) == 5 and o.on("/health"), 10)
    finally:
        pub.stop()
    assert obs.wait_for(lambda o: o.on("/status")[-1:] == [b"offline"], 5)
    obs.stop()
    topics = {t for t, _ in obs.messages}
    assert topics == {f"lfr/{UNIT}/alert", f"lfr/{UNIT}/status", f"lfr/{UNIT}/health"}, topics
    assert obs.on("/status")[0] == b"online"
    validator = jsonschema.Draft202012Validator(ALERT_SCHEMA, format_checker=jsonschema.FormatChecker())
    received = [json.loads(p) for p in obs.on("/alert")]
    assert [a["event_id"] for a in received] == [a["event_id"] for a in sent]
    for a in received:
        validator.validate(a)
        assert set(a) == set(ALERT_SCHEMA["properties"])      # no fields beyond the schema
        assert not check(a, ALERT_SCHEMA)
    health = json.loads(obs.on("/health")[0])
    jsonschema.Draft202012Validator(HEALTH_SCHEMA, format_checker=jsonschema.FormatChecker()).validate(health)
    assert health["fps"] == 12.5 and health["queue_depth"] == 3 and health["bundle_id"] == "bundle-7"
    assert health["outbox_pending"] >= 0 and health["unit_id"] == UNIT


def test_alert_published_while_disconnected_waits_in_the_outbox(cert_dir, tmp_path):
    """No broker at all when the alert is made: it is on disk, and goes out once one appears."""
    b = Mosquitto(tmp_path / "b", cert_dir)
    cfg = unit_config(cert_dir, b.port, tmp_path / "state")
    pub = AlertPublisher(cfg).start()
    try:
        a = make_alert()
        pub.submit(a)
        time.sleep(0.5)
        with Outbox(tmp_path / "state" / "outbox.sqlite", check="none") as ob:
            assert ob.pending_count() == 1 and ob.knows(a["event_id"])
        b.start()
        obs = Collector(cert_dir, b.port, OBSERVER, [f"lfr/{UNIT}/alert"]).start()
        assert pub.wait_idle(15)
        assert obs.wait_for(lambda o: o.event_ids() == [a["event_id"]], 5)
        obs.stop()
    finally:
        pub.stop()
        b.stop()


# --- ACL and authentication --------------------------------------------------------------

def test_handheld_cannot_publish_an_alert(cert_dir, broker):
    obs = Collector(cert_dir, broker.port, OBSERVER, ["#"]).start()
    hh = mqtt_client(cert_dir, HANDHELD, broker.port)
    assert connect(hh, broker.port)
    fake = json.dumps(make_alert()).encode()
    assert publish_wait(hh, f"lfr/{UNIT}/alert", fake) == 0x87          # not authorized
    assert publish_wait(hh, f"lfr/{HANDHELD}/alert", fake) == 0x87      # not even under its own name
    assert publish_wait(hh, f"lfr/{UNIT}/status", b"offline") == 0x87
    time.sleep(0.3)
    hh.disconnect()
    hh.loop_stop()
    obs.stop()
    assert obs.messages == []


def test_unit_cannot_publish_or_read_under_another_unit(cert_dir, broker):
    van1 = mqtt_client(cert_dir, UNIT, broker.port)
    van2 = mqtt_client(cert_dir, OTHER_UNIT, broker.port)
    hh = mqtt_client(cert_dir, HANDHELD, broker.port)
    obs = Collector(cert_dir, broker.port, OBSERVER, ["#"]).start()
    for c in (van1, van2, hh):
        assert connect(c, broker.port)
    # van-01 tries every way of reading another unit's traffic (and its own alerts)
    for t in (f"lfr/{OTHER_UNIT}/#", f"lfr/{OTHER_UNIT}/adjudication", "lfr/+/alert", "lfr/+/status", "#"):
        van1.subscribe(t, qos=1)
    assert wait_for(lambda: len(van1.subacks) == 5, 5)
    # van-01 cannot publish under van-02, nor anything but its three topics
    forged = json.dumps(make_alert(OTHER_UNIT, 999)).encode()
    assert publish_wait(van1, f"lfr/{OTHER_UNIT}/alert", forged) == 0x87
    assert publish_wait(van1, f"lfr/{OTHER_UNIT}/status", b"offline") == 0x87
    assert publish_wait(van1, f"lfr/{UNIT}/adjudication", b"{}") == 0x87
    assert publish_wait(van1, f"lfr/{UNIT}/frames", b"x") == 0x87
    assert publish_wait(van1, "elsewhere", b"x") == 0x87
    # van-02's own traffic (a retained status, an alert) and an adjudication for it: van-01 gets none
    info = van2.publish(f"lfr/{OTHER_UNIT}/status", b"online", qos=1, retain=True)
    assert wait_for(lambda: info.mid in van2.acks, 5) and van2.acks[info.mid] in (0, 0x10)
    assert publish_wait(van2, f"lfr/{OTHER_UNIT}/alert", json.dumps(make_alert(OTHER_UNIT, 1)).encode()) in (0, 0x10)
    assert publish_wait(hh, f"lfr/{OTHER_UNIT}/adjudication", b"{}") in (0, 0x10)
    assert publish_wait(van1, f"lfr/{UNIT}/alert", json.dumps(make_alert(UNIT)).encode()) in (0, 0x10)
    assert obs.wait_for(lambda o: len(o.messages) >= 4, 5)
    time.sleep(0.3)
    for c in (van1, van2, hh):
        c.disconnect()
        c.loop_stop()
    obs.stop()
    assert van1.got == [], van1.got   # mosquitto grants the SUBACK, but its read ACL delivers nothing
    assert sorted(t for t, _ in obs.messages) == sorted([
        f"lfr/{OTHER_UNIT}/status", f"lfr/{OTHER_UNIT}/alert", f"lfr/{OTHER_UNIT}/adjudication", f"lfr/{UNIT}/alert"])
    assert forged not in [p for _, p in obs.messages]


def test_handheld_reads_alerts_and_status_but_not_health(cert_dir, broker):
    hh = mqtt_client(cert_dir, HANDHELD, broker.port)
    van = mqtt_client(cert_dir, UNIT, broker.port)
    for c in (hh, van):
        assert connect(c, broker.port)
    for t in ("lfr/+/alert", "lfr/+/status", "lfr/+/health"):
        hh.subscribe(t, qos=1)
    assert wait_for(lambda: len(hh.subacks) == 3, 5)
    for kind in ("alert", "status", "health"):
        assert publish_wait(van, f"lfr/{UNIT}/{kind}", b"{}" if kind != "status" else b"online") in (0, 0x10)
    assert wait_for(lambda: len(hh.got) >= 2, 5)
    time.sleep(0.3)
    for c in (hh, van):
        c.disconnect()
        c.loop_stop()
    assert sorted(t for t, _ in hh.got) == [f"lfr/{UNIT}/alert", f"lfr/{UNIT}/status"]


def test_client_without_certificate_or_with_a_foreign_one_is_refused(cert_dir, broker, tmp_path):
    anon = mqtt_client(cert_dir, None, broker.port)
    assert not connect(anon, broker.port, timeout=3)
    foreign = make_certs(tmp_path / "foreign", units=[UNIT])          # same CN, another CA
    rogue = mqtt_client(foreign, UNIT, broker.port, ca=cert_dir / "ca.crt")
    assert not connect(rogue, broker.port, timeout=3)
    # and the unit refuses a broker whose certificate another CA signed
    cfg = unit_config(cert_dir, broker.port, tmp_path / "state", ca_file=str(foreign / "ca.crt"))
    pub = AlertPublisher(cfg).start()
    try:
        assert not pub.wait_connected(2)
    finally:
        pub.stop(timeout=0.5)


def test_broker_refusal_keeps_the_alert_pending(cert_dir, broker, tmp_path, caplog):
    """A unit whose certificate does not match its unit id: every PUBACK is 0x87 (not
    authorized). The alert is not marked delivered, not skipped, and the refusals are counted."""
    obs = Collector(cert_dir, broker.port, OBSERVER, ["#"]).start()
    cfg = unit_config(cert_dir, broker.port, tmp_path / "state", cert_file=str(cert_dir / f"{OTHER_UNIT}.crt"),
                      key_file=str(cert_dir / f"{OTHER_UNIT}.key"))
    pub = AlertPublisher(cfg).start()
    try:
        with caplog.at_level(logging.ERROR, logger="edge.alerts.publisher"):
            pub.submit(make_alert())
            assert wait_for(lambda: pub.stats()["publish_rejections"] >= 2, 10)
        assert pub.outbox.pending_count() == 1
    finally:
        pub.stop(timeout=0.5)
    obs.stop()
    assert "refused alert" in caplog.text and "Not authorized" in caplog.text
    assert not [t for t, _ in obs.messages if t.endswith("/alert")]


# --- adjudications -----------------------------------------------------------------------

def test_adjudications_are_checked_strictly_and_bad_ones_never_crash(cert_dir, broker, tmp_path, caplog):
    got: list[dict] = []
    cfg = unit_config(cert_dir, broker.port, tmp_path / "state", max_adjudication_bytes=1024)
    pub = AlertPublisher(cfg, on_adjudication=got.append).start()
    hh = mqtt_client(cert_dir, HANDHELD, broker.port)
    assert pub.wait_connected(10) and connect(hh, broker.port)
    a = make_alert()
    pub.submit(a)
    assert pub.wait_idle(10)
    topic = f"lfr/{UNIT}/adjudication"

    def adj(**kw):
        d = {"schema_version": 1, "event_id": a["event_id"], "decision": "confirmed",
             "handheld_id": HANDHELD, "decided_at": "2025-05-01T10:00:00.000Z"}
        d.update(kw)
        return json.dumps(d).encode()

    bad = {
        "not JSON": b"{this is not json",
        "not UTF-8": b"\xff\xfe\x00\x01",
        "a JSON list": b"[1, 2, 3]",
        "wrong types": adj(schema_version="1", decision=True),
        "unknown decision": adj(decision="maybe"),
        "extra field": json.dumps({**json.loads(adj()), "face": "AAAA"}).encode(),
        "missing field": json.dumps({k: v for k, v in json.loads(adj()).items() if k != "decision"}).encode(),
        "NaN": adj().replace(b'"schema_version": 1', b'"schema_version": NaN'),
        "huge": adj(handheld_id="h" * 1200),   # over the cap; 2 KiB more and the broker keeps it (MaximumPacketSize)
        "deep nesting": b"[" * 500 + b"]" * 500,
        "unknown event id": adj(event_id=str(uuid.uuid4())),
        "empty": b"",
    }
    with caplog.at_level(logging.WARNING, logger="edge.alerts.publisher"):
        for payload in bad.values():
            assert publish_wait(hh, topic, payload) in (0, 0x10)
        assert wait_for(lambda: pub.stats()["adjudications_rejected"] == len(bad), 10), pub.stats()
        assert publish_wait(hh, topic, adj(decision="rejected")) in (0, 0x10)
        assert wait_for(lambda: len(got) == 1, 10)
    hh.disconnect()
    hh.loop_stop()
    try:
        assert got[0]["decision"] == "rejected" and got[0]["event_id"] == a["event_id"]
        assert pub.stats()["adjudications_accepted"] == 1
        rejected_lines = [r for r in caplog.records if "adjudication rejected" in r.getMessage()]
        assert len(rejected_lines) == len(bad)
        text = caplog.text
        for words in ("not JSON", "not UTF-8", "not an object", "exceeds the cap", "unknown event id",
                      "field(s) not in the schema", "missing required field"):
            assert words in text, words
        # the publisher still works after all that
        b2 = make_alert(n=1)
        pub.submit(b2)
        assert pub.wait_idle(10)
    finally:
        pub.stop()


def test_adjudication_sent_while_the_unit_is_away_arrives_when_it_returns(cert_dir, broker, tmp_path):
    got: list[dict] = []
    cfg = unit_config(cert_dir, broker.port, tmp_path / "state")
    pub = AlertPublisher(cfg).start()
    a = make_alert()
    assert pub.wait_connected(10)
    pub.submit(a)
    assert pub.wait_idle(10)
    pub.stop()                                       # session kept by the broker (session expiry)
    hh = mqtt_client(cert_dir, HANDHELD, broker.port)
    assert connect(hh, broker.port)
    payload = json.dumps({"schema_version": 1, "event_id": a["event_id"], "decision": "confirmed",
                          "handheld_id": HANDHELD, "decided_at": "2025-05-01T10:00:00.000Z"}).encode()
    assert publish_wait(hh, f"lfr/{UNIT}/adjudication", payload) == 0      # queued for the unit
    hh.disconnect()
    hh.loop_stop()
    pub = AlertPublisher(cfg, on_adjudication=got.append).start()
    try:
        assert wait_for(lambda: len(got) == 1, 10)
    finally:
        pub.stop()


# --- the outage and SIGKILL cases --------------------------------------------------------

def test_broker_down_30_s_while_200_alerts_are_made(cert_dir, tmp_path):
    """Stop the broker for 30 s, make 200 alerts meanwhile, restart it: all 200 arrive, in
    order, none twice by event id."""
    b = Mosquitto(tmp_path / "b", cert_dir).start()
    obs = Collector(cert_dir, b.port, OBSERVER, [f"lfr/{UNIT}/alert"], persistent=True).start()
    cfg = unit_config(cert_dir, b.port, tmp_path / "state")
    pub = AlertPublisher(cfg).start()
    try:
        assert pub.wait_connected(10)
        b.stop()
        t_stop = time.monotonic()
        assert wait_for(lambda: not pub.connected, 5)
        sent = []
        for i in range(200):                          # 200 alerts over the first ~20 s of the outage
            a = make_alert(n=i)
            pub.submit(a)
            sent.append(a["event_id"])
            time.sleep(0.1)
        assert pub.outbox.pending_count() == 200
        time.sleep(max(0.0, 30.0 - (time.monotonic() - t_stop)))
        outage = time.monotonic() - t_stop
        b.start()
        assert obs.wait_for(lambda o: len(set(o.event_ids())) >= 200, 60), len(obs.event_ids())
        assert pub.wait_idle(10)
        raw = obs.event_ids()
    finally:
        pub.stop()
        obs.stop()
        b.stop()
    deduped = list(dict.fromkeys(raw))
    print(f"\nOUTAGE: broker down {outage:.1f} s; sent {len(sent)}, received {len(deduped)} distinct "
          f"({len(raw)} raw, {len(raw) - len(deduped)} redelivered), lost {len(set(sent) - set(deduped))}")
    assert outage >= 30.0
    assert deduped == sent                   # all 200, in order, nothing extra
    assert len(raw) == len(deduped)          # and in this case not even a redelivery


def _integrity(path: Path) -> str:
    db = sqlite3.connect(str(path), timeout=30)
    try:
        return ";".join(r[0] for r in db.execute("PRAGMA integrity_check"))
    finally:
        db.close()


def test_publisher_killed_20_times_while_alerts_flow(cert_dir, tmp_path):
    """SIGKILL the publishing process 20 times at random moments while it makes and publishes
    alerts: nothing committed is lost, the outbox file is never corrupt, and after
    de-duplication by event id the consumer holds exactly the produced set, in order."""
    rnd = random.Random(int(os.environ.get("EDGE_LFR_KILL_SEED", "20")))
    b = Mosquitto(tmp_path / "b", cert_dir).start()
    obs = Collector(cert_dir, b.port, OBSERVER, [f"lfr/{UNIT}/alert"], persistent=True).start()
    state = tmp_path / "state"
    conf = tmp_path / "unit.json"
    conf.write_text(json.dumps(config_dict(unit_config(cert_dir, b.port, state))))
    db_path = state / "outbox.sqlite"
    printed: list[str] = []
    integrity: list[str] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(mode: str):
        p = subprocess.Popen([sys.executable, str(ROOT / "tests" / "support" / "alert_producer.py"), str(conf), mode],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        first = threading.Event()
        lines: list[str] = []

        def read():
            for line in p.stdout:
                lines.append(line.strip())
                first.set()
        t = threading.Thread(target=read, daemon=True)
        t.start()
        return p, first, lines, t

    kills = 0
    try:
        for _ in range(20):
            p, first, lines, t = run("produce")
            assert first.wait(30), "producer printed nothing"
            time.sleep(rnd.uniform(0.0, 0.8))
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            t.join(5)
            kills += 1
            printed += [ln.split()[1] for ln in lines if ln.startswith("ENQ ")]
            integrity.append(_integrity(db_path))
        p, first, lines, t = run("drain")
        assert p.wait(90) == 0
        t.join(5)
        assert "DRAINED" in lines, lines
        integrity.append(_integrity(db_path))
        db = sqlite3.connect(str(db_path))
        rows = db.execute("SELECT event_id, delivered_at FROM outbox ORDER BY seq").fetchall()
        db.close()
        committed = [e for e, _ in rows]
        assert obs.wait_for(lambda o: set(o.event_ids()) >= set(committed), 30)
        time.sleep(0.5)
        raw = obs.event_ids()
    finally:
        obs.stop()
        b.stop()
    deduped = list(dict.fromkeys(raw))
    lost = set(committed) - set(deduped)
    print(f"\nKILL: {kills} SIGKILLs; {len(committed)} alerts committed ({len(printed)} acknowledged to the "
          f"producer before a kill), received {len(deduped)} distinct, lost {len(lost)}, raw redeliveries "
          f"{len(raw) - len(deduped)}; integrity_check after every kill: {set(integrity)}")
    assert kills == 20
    assert set(integrity) == {"ok"}
    assert set(printed) <= set(committed)                # every alert the producer saw committed is kept
    assert all(d is not None for _, d in rows)           # and was acknowledged by the broker
    assert not lost
    assert deduped == committed                          # exactly the produced set, in outbox order
