"""Issue 14 (MQTT side), against the real mosquitto: an officer's adjudication flood never holds
back alerts (item 1), oversized messages on the officers' WebSockets listener never reach the unit
(item 3), retained adjudications are ignored (item 8), ids with a trailing newline are refused
(item 9), and health reports refusals and low disk space on a full disk (item 6)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from edge.alerts.adjudication import AdjudicationRecords
from edge.alerts.localbroker import Mosquitto, deploy_dir, make_certs, need
from tests.support.brokers import HandheldBroker
from edge.alerts.outbox import Outbox, OutboxError
from edge.alerts.publisher import AlertPublisher
from edge.alerts.schema import AdjudicationError
from edge.alerts import message as alerts
from edge.privacy.audit import AuditLog, read_entries
from edge.privacy.service_audit import ServiceAudit
from edge.watchlist.keys import generate_device
from tests.support.brokers import (HANDHELD, OBSERVER, UNIT, Collector, broker, cert_dir, connect, make_alert,  # noqa: F401
                                   mqtt_client, publish_wait, unit_config, wait_for)


def _adj(event_id: str, officer: str = HANDHELD, outcome: str = "confirmed") -> bytes:
    return json.dumps({"schema_version": 2, "event_id": event_id, "outcome": outcome, "officer_id": officer,
                       "decided_at": "2025-05-01T10:00:00.000Z"}).encode()


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_an_adjudication_flood_never_holds_back_alerts(cert_dir, broker, tmp_path):  # noqa: F811
    """1 decision + 1,500 duplicates (and 500 under made-up officer ids) in a burst: every alert
    committed meanwhile is acknowledged within 1 s; the repeats cost no record and no audit entry
    each; the officer's rate limit shows in health; the audit log grows by a bounded amount."""
    cfg = unit_config(cert_dir, broker.port, tmp_path / "state", adjudication_rate_per_officer=30)
    (tmp_path / "state").mkdir()
    outbox = Outbox(tmp_path / "state" / "outbox.sqlite")
    acked: dict[int, float] = {}
    pub = AlertPublisher(cfg, outbox=outbox, on_delivered=lambda d: acked.__setitem__(d.seq, d.acked_at))
    audit = AuditLog(tmp_path / "state" / "audit", signer=generate_device(UNIT), unit_id=UNIT)
    audit.append("service_start", {})
    sa = ServiceAudit(cfg, audit)
    pub.on_adjudication = sa.wrap_adjudication(AdjudicationRecords(outbox).record)
    sa.attach_publisher(pub)
    pub.start()
    hh = mqtt_client(cert_dir, HANDHELD, broker.port)
    hh.max_inflight_messages_set(100)
    try:
        assert pub.wait_connected(10) and connect(hh, broker.port)
        first = make_alert()
        seq = pub.submit(first)
        assert wait_for(lambda: seq in acked, 10)
        size_before = audit.path.stat().st_size
        for i in range(1501):
            hh.publish(f"lfr/{UNIT}/adjudication", _adj(first["event_id"]), qos=1)
        for i in range(500):
            hh.publish(f"lfr/{UNIT}/adjudication", _adj(first["event_id"], officer=f"fake-{i}"), qos=1)
        waits = []
        for n in range(1, 21):
            t = time.monotonic()
            s = pub.submit(make_alert(n=n))
            assert wait_for(lambda: s in acked, 5)
            waits.append(acked[s] - t)
        assert max(waits) < 1.0, waits
        st = pub.stats()
        assert wait_for(lambda: pub.stats()["adjudications_accepted"] + pub.stats()["adjudications_rejected"]
                        >= 2001, 30), pub.stats()
        st = pub.stats()
        assert st["adjudications_rate_limited"] > 1000, st
        health = pub.health()
        assert health["adjudications_rate_limited"] == st["adjudications_rate_limited"]
        sa.stop("test")                      # writes the aggregated adjudication_rejected entry
        entries = [e for e in read_entries(audit.path)]
        full = [e for e in entries if e["type"] == "adjudication"]
        assert len(full) == 1, "one decision recorded in full; repeats only counted"
        agg = [e for e in entries if e["type"] == "adjudication_rejected"]
        assert len(agg) == 1 and agg[0]["data"]["counts"]["rate_limited"] > 1000
        assert audit.path.stat().st_size - size_before < 8192, "audit growth from one sender is bounded"
        rec = AdjudicationRecords(outbox).get(first["event_id"])
        assert rec["officer_id"] == HANDHELD and rec["repeats"] < 600
    finally:
        hh.disconnect()
        hh.loop_stop()
        pub.stop(timeout=1.0)
        outbox.close()


def test_bench_alerts_flood_reports_the_figure(capsys):
    from edge.tools.bench_alerts import run_flood
    out = run_flood(300, say=print)
    assert out["during_flood"]["n"] >= 20 and out["during_flood"]["p95_ms"] < 1000
    assert "flood of 300 duplicate adjudications" in capsys.readouterr().out


def test_retained_adjudications_are_ignored(cert_dir, broker, tmp_path):  # noqa: F811
    got = []
    cfg = unit_config(cert_dir, broker.port, tmp_path / "state")
    pub = AlertPublisher(cfg, on_adjudication=lambda a: got.append(a) and None).start()
    hh = mqtt_client(cert_dir, HANDHELD, broker.port)
    try:
        assert pub.wait_connected(10) and connect(hh, broker.port)
        a = make_alert()
        pub.submit(a)
        assert pub.wait_idle(10)
        info = hh.publish(f"lfr/{UNIT}/adjudication", _adj(a["event_id"]), qos=1, retain=True)
        info.wait_for_publish(5)
        assert wait_for(lambda: len(got) == 1, 5)       # delivered live: handled once
        pub.stop(timeout=0.5)
        pub = AlertPublisher(cfg).start()                 # reconnects: the broker hands the retained copy
        pub.on_adjudication = lambda a: got.append(a) and None
        assert pub.wait_connected(10)
        assert wait_for(lambda: pub.rejection_counts()["by_reason"]["retained"] >= 1, 5)
        assert len(got) == 1, "a retained adjudication was processed again at reconnect"
    finally:
        hh.publish(f"lfr/{UNIT}/adjudication", b"", qos=1, retain=True)   # clear it
        hh.disconnect()
        hh.loop_stop()
        pub.stop(timeout=0.5)


@pytest.mark.parametrize("field", ["officer_id", "event_id"])
def test_ids_with_a_trailing_newline_are_refused(field):
    d = json.loads(_adj(str(uuid.uuid4())))
    d[field] = d[field] + "\n"
    with pytest.raises(AdjudicationError, match="pattern"):
        alerts.parse_adjudication(json.dumps(d).encode(), 4096)
    from edge.alerts.schema import ADJUDICATION_SCHEMA, check
    v1 = {"schema_version": 1, "event_id": str(uuid.uuid4()), "decision": "confirmed", "handheld_id": "hh-01\n",
          "decided_at": "2025-05-01T10:00:00.000Z"}
    assert check(v1, ADJUDICATION_SCHEMA)


# --- item 3: 10 MiB on the officers' WebSockets listener ----------------------------------------

def test_oversized_message_on_the_wss_listener_never_reaches_the_unit(tmp_path):
    try:
        need("mosquitto_passwd")
    except Exception as exc:
        pytest.skip(str(exc))
    certs = make_certs(tmp_path / "certs", units=[UNIT], handhelds=[HANDHELD])
    password = "throwaway-test-password-1"
    for args, stdin in ((["officer", "off-01"], password + "\n"), (["acl"], "")):
        subprocess.run(["bash", str(deploy_dir() / "make-certs.sh"), "-d", str(certs), *args], input=stdin,
                       text=True, check=True, capture_output=True, timeout=60)
    b = HandheldBroker(tmp_path / "broker", certs).start()
    cfg = unit_config(certs, b.port, tmp_path / "state")
    got = []
    pub = AlertPublisher(cfg, on_adjudication=lambda a: got.append(a) and None).start()
    try:
        assert pub.wait_connected(10)
        a = make_alert()
        pub.submit(a)
        assert pub.wait_idle(10)
        rss_before = _rss_mb()
        # the officer's client in its own process, so that only the unit's memory is measured here
        sender = _SENDER.format(ca=str(certs / "ca.crt"), port=b.ws_port, password=password,
                                topic=f"lfr/{UNIT}/adjudication", adj=_adj(a["event_id"], officer="off-01").decode())
        r = subprocess.run([sys.executable, "-c", sender], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        time.sleep(2)
        # a well-formed decision still arrives afterwards: the listener and the unit still work
        c2 = mqtt_client(certs, HANDHELD, b.port)
        assert connect(c2, b.port)
        assert publish_wait(c2, f"lfr/{UNIT}/adjudication", _adj(a["event_id"])) in (0, 0x10)
        assert wait_for(lambda: len(got) == 1, 10)
        c2.disconnect()
        c2.loop_stop()
        rss_after = _rss_mb()
        reached = pub.rejection_counts()["by_reason"]["oversized"]
        print(f"sender: {r.stdout.strip()}; unit RSS {rss_before:.1f} -> {rss_after:.1f} MB; oversized messages "
              f"that reached the unit: {reached}")
        assert reached == 0 and len(got) == 1 and rss_after - rss_before < 5, (rss_before, rss_after)
    finally:
        pub.stop(timeout=0.5)
        b.stop()


_SENDER = """
import ssl, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="off-01", protocol=mqtt.MQTTv5, transport="websockets")
c.tls_set_context(ssl.create_default_context(cafile={ca!r}))
c.ws_set_options(path="/mqtt")
c.username_pw_set("off-01", {password!r})
c.connect("127.0.0.1", {port}, keepalive=30)
c.loop_start()
t = time.monotonic()
while not c.is_connected() and time.monotonic() - t < 10:
    time.sleep(0.05)
assert c.is_connected()
for size in (10 << 20, 64 << 20):
    c.publish({topic!r}, {adj!r}[:-1].encode() + b', "pad": "' + b"x" * size + b'"}}', qos=1)
time.sleep(4)
print("sent 10 MiB and 64 MiB adjudications over WSS")
c.loop_stop()
"""


# --- item 6: a full disk ------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs (root only): a unit state folder that fills up."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _fill(directory) -> None:
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_full_disk_health_reports_refusals_and_low_space_and_keeps_publishing(cert_dir, tmp_path, small_disk):  # noqa: F811
    b = Mosquitto(tmp_path / "broker", cert_dir)          # started later: alerts wait in the outbox
    state = small_disk / "state"
    cfg = unit_config(cert_dir, b.port, state, reconnect_min_seconds=1.0, reconnect_max_seconds=2.0)
    pub = AlertPublisher(cfg).start()
    held = [make_alert(n=i) for i in range(3)]
    for a in held:
        pub.submit(a)
    _fill(small_disk)
    refused = 0
    for i in range(3, 6):
        try:
            pub.submit(make_alert(n=i))
        except OutboxError:
            refused += 1
    assert refused == 3
    h = pub.health()
    assert h["outbox_refused"] == 3 and h["disk_low"] is True and h["disk_free_mb"] < 1, h
    b.start()
    obs = Collector(cert_dir, b.port, OBSERVER, [f"lfr/{UNIT}/alert"]).start()   # before the unit reconnects
    try:
        # published although the outbox cannot even mark them delivered (they are sent again later,
        # and consumers de-duplicate by event id)
        assert obs.wait_for(lambda o: set(o.event_ids()) >= {a["event_id"] for a in held}, 15), \
            "what the outbox holds was not published on a full disk"
        obs.stop()
        pub.stop(timeout=1.0)
        # restart on the full disk: the publisher and outbox open; nothing exits
        again = AlertPublisher(cfg).start()
        assert again.wait_connected(10)
        assert again.health()["disk_low"] is True
        again.stop(timeout=1.0)
    finally:
        b.stop()
