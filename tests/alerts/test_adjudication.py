"""The unit's side of the adjudication loop (edge/alerts/adjudication.py): records in the outbox's SQLite
file (first adjudication wins), acknowledgements (schema, published by AlertPublisher on
lfr/<unit>/adjudication/ack), counts for the deployment report; the v2 adjudication schema.

The browser side (handheld page) is tests/handheld/test_handheld.py.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from edge.alerts import message as A
from edge.alerts import schema as message_schema
from edge.alerts.adjudication import AdjudicationRecords
from edge.alerts.publisher import AlertPublisher
from edge.alerts.expiry import purge_match_records
from edge.alerts.outbox import Outbox
from edge.utc import format_utc_ms
from tests.support.brokers import (HANDHELD, OBSERVER, OTHER_UNIT, UNIT, Collector, broker, cert_dir,  # noqa: F401
                         make_alert, unit_config)
from tests.support.brokers import connect, mqtt_client, publish_wait, wait_for

T0 = 1_760_000_000.0          # a fixed "now" for the clocked tests


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _alert(category: str = "wanted", n: int = 0, **kw) -> dict:
    a = make_alert(n=n, **kw)
    if category != "wanted":   # make_alert builds a wanted subject; the category is data only
        a = dict(a, category=category)
        message_schema.validate_alert(a)
    return a


def adj_v2(event_id: str, outcome: str = "confirmed", officer: str = "off-01",
           decided_at: str = "2025-05-01T10:00:00.000Z") -> dict:
    return A.parse_adjudication(json.dumps({"schema_version": 2, "event_id": event_id, "outcome": outcome,
                                            "officer_id": officer, "decided_at": decided_at}).encode(), 4096)


def adj_v1(event_id: str, decision: str = "rejected", handheld: str = HANDHELD) -> dict:
    return A.parse_adjudication(json.dumps({"schema_version": 1, "event_id": event_id, "decision": decision,
                                            "handheld_id": handheld, "decided_at": "2025-05-01T10:00:01.500Z"}
                                           ).encode(), 4096)


@pytest.fixture
def store(tmp_path):
    clock = Clock()
    ob = Outbox(tmp_path / "state" / "outbox.sqlite", clock=clock)
    rec = AdjudicationRecords(ob, clock=clock)
    yield ob, rec, clock
    rec.close()
    ob.close()


def _enqueue(ob: Outbox, alert: dict) -> None:
    ob.enqueue(alert["event_id"], A.encode(alert))


# --- schema ------------------------------------------------------------------------------

def test_v2_adjudication_accepts_the_three_outcomes_and_refuses_the_rest():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(message_schema.ADJUDICATION_SCHEMA_V2, format_checker=jsonschema.FormatChecker())
    eid = str(uuid.uuid4())
    for outcome in ("confirmed", "rejected", "not_located"):
        d = adj_v2(eid, outcome)
        validator.validate(d)
        assert A.adjudication_fields(d) == (eid, outcome, "off-01", "2025-05-01T10:00:00.000Z")
    assert A.adjudication_fields(adj_v1(eid)) == (eid, "rejected", HANDHELD, "2025-05-01T10:00:01.500Z")
    good = {"schema_version": 2, "event_id": eid, "outcome": "confirmed", "officer_id": "off-01",
            "decided_at": "2025-05-01T10:00:00.000Z"}
    for bad, reason in [({"outcome": "maybe"}, "must be one of"),
                        ({"outcome": "not_located", "decision": "confirmed"}, "not in the schema"),
                        ({"officer_id": "a b"}, "pattern"),
                        ({"officer_id": None}, "expected string"),
                        ({"schema_version": 3}, "must be 1"),        # unknown versions: checked as version 1
                        ({"handheld_id": "hh-01"}, "not in the schema")]:
        with pytest.raises(message_schema.AdjudicationError, match=reason):
            A.parse_adjudication(json.dumps({**good, **bad}).encode(), 4096)
    # version 1 keeps its two decisions: not_located needs version 2
    with pytest.raises(message_schema.AdjudicationError, match="must be one of"):
        A.parse_adjudication(json.dumps({"schema_version": 1, "event_id": eid, "decision": "not_located",
                                         "handheld_id": "hh-01", "decided_at": good["decided_at"]}).encode(), 4096)


def test_ack_schema_is_closed():
    ack = {"schema_version": 1, "unit_id": UNIT, "event_id": str(uuid.uuid4()), "outcome": "rejected",
           "officer_id": "off-01", "decided_at": "2025-05-01T10:00:00.000Z",
           "recorded_at": "2025-05-01T10:00:00.250Z", "duplicate": False}
    assert A.validate_ack(ack) is ack
    for bad in ({"duplicate": 0}, {"extra": 1}, {"outcome": "confirmed!"}, {"recorded_at": "now"}):
        with pytest.raises(message_schema.AlertError):
            A.validate_ack({**ack, **bad})


# --- records -----------------------------------------------------------------------------

def test_first_adjudication_wins_and_a_repeat_returns_the_recorded_one(store):
    ob, rec, clock = store
    a = _alert("missing")
    _enqueue(ob, a)
    clock.t = T0 + 5
    ack = rec.record(adj_v2(a["event_id"], "not_located"))
    assert ack == {"schema_version": 1, "unit_id": UNIT, "event_id": a["event_id"], "outcome": "not_located",
                   "officer_id": "off-01", "decided_at": "2025-05-01T10:00:00.000Z",
                   "recorded_at": format_utc_ms(T0 + 5), "duplicate": False}
    clock.t = T0 + 9
    again = rec.record(adj_v2(a["event_id"], "not_located"))           # the page sending it again
    other = rec.record(adj_v1(a["event_id"], "confirmed"))            # a second device, another outcome
    for dup in (again, other):
        assert dup == {**ack, "duplicate": True}                       # the recorded one, unchanged
    rows = rec.all()
    assert len(rows) == 1
    r = rows[0]
    assert (r["outcome"], r["officer_id"], r["recorded_at"]) == ("not_located", "off-01", T0 + 5)
    assert (r["repeats"], r["conflicting_repeats"], r["last_repeat_at"]) == (2, 1, T0 + 9)
    # what a report needs is copied from the alert
    assert (r["subject_id"], r["category"], r["unit_id"]) == (a["subject_id"], "missing", UNIT)
    assert r["score"] == a["score"] and r["threshold"] == a["threshold"] and r["alerted_at"] == a["alerted_at"]
    assert r["adjudication_schema"] == 2


def test_unknown_event_is_refused_and_nothing_is_recorded(store):
    ob, rec, _ = store
    with pytest.raises(message_schema.AdjudicationError, match="unknown event id"):
        rec.record(adj_v2(str(uuid.uuid4())))
    assert rec.all() == []


def test_records_survive_a_restart_and_live_exactly_as_long_as_their_alert(tmp_path):
    clock = Clock()
    path = tmp_path / "outbox.sqlite"
    kept, rejected = _alert(n=1), _alert(n=2)
    with Outbox(path, clock=clock) as ob, AdjudicationRecords(ob, clock=clock) as rec:
        _enqueue(ob, kept)
        _enqueue(ob, rejected)
        ob.mark_delivered([1, 2], at=T0)
        rec.record(adj_v2(kept["event_id"], "confirmed"))
        rec.record(adj_v2(rejected["event_id"], "rejected"))
    with Outbox(path, clock=clock) as ob, AdjudicationRecords(ob, clock=clock) as rec:
        assert ob.integrity_check() == ["ok"]
        assert rec.record(adj_v2(rejected["event_id"], "confirmed"))["duplicate"] is True   # first decision wins
        day = 86400.0
        purge_match_records(path, T0 + 2 * day, 30 * day, day)            # "not a match": gone after a day
        assert not ob.knows(rejected["event_id"]) and rec.get(rejected["event_id"]) is None
        assert ob.knows(kept["event_id"]) and rec.get(kept["event_id"])["outcome"] == "confirmed"
        purge_match_records(path, T0 + 31 * day, 30 * day, day)           # the rest after 30 days, together
        assert not ob.knows(kept["event_id"]) and rec.get(kept["event_id"]) is None

def test_counts_by_outcome_and_category_for_a_window(store):
    ob, rec, clock = store
    plan = [  # (alert made at, category, outcome or None)
        (T0 + 10, "wanted", "confirmed"), (T0 + 20, "wanted", "rejected"), (T0 + 30, "missing", "rejected"),
        (T0 + 40, "vulnerable", "not_located"), (T0 + 50, "wanted", None), (T0 + 3600, "wanted", "confirmed"),
        (T0 - 1, "missing", "confirmed"),
    ]
    for i, (t, category, outcome) in enumerate(plan):
        clock.t = t
        a = _alert(category, n=i)
        _enqueue(ob, a)
        if outcome:
            clock.t = t + 7200                     # decided two hours later: still counted with its alert
            rec.record(adj_v2(a["event_id"], outcome))
    c = rec.counts(T0, T0 + 3600)
    assert {k: c[k] for k in ("confirmed", "rejected", "not_located", "adjudicated", "unadjudicated")} == \
        {"confirmed": 1, "rejected": 2, "not_located": 1, "adjudicated": 4, "unadjudicated": 1}
    assert c["by_category"] == {"wanted": {"confirmed": 1, "rejected": 1, "not_located": 0},
                                "missing": {"confirmed": 0, "rejected": 1, "not_located": 0},
                                "vulnerable": {"confirmed": 0, "rejected": 0, "not_located": 1}}
    assert c["start"] == format_utc_ms(T0) and c["by"] == "alert"
    # aware datetimes work too, and the window is half-open
    d0 = datetime.fromtimestamp(T0, timezone.utc)
    assert rec.counts(d0, d0 + timedelta(seconds=3601))["confirmed"] == 2
    # by the time the unit recorded the decision
    r = rec.counts(T0 + 7200, T0 + 7200 + 45, by="recorded")
    assert (r["confirmed"], r["rejected"], r["not_located"], r["unadjudicated"]) == (1, 2, 1, None)
    assert rec.counts(T0 + 10**6, T0 + 10**6 + 1)["adjudicated"] == 0
    for bad in (dict(by="decided"), dict(start=datetime(2025, 1, 1))):
        with pytest.raises(ValueError):
            rec.counts(bad.get("start", T0), T0 + 1, by=bad.get("by", "alert"))
    with pytest.raises(ValueError):
        rec.counts(T0 + 1, T0)


def test_concurrent_adjudications_of_one_event_make_one_record(store):
    ob, rec, _ = store
    a = _alert()
    _enqueue(ob, a)
    acks: list[dict] = []
    lock = threading.Lock()

    def go(i: int) -> None:
        k = rec.record(adj_v2(a["event_id"], ("confirmed", "rejected")[i % 2], officer=f"off-{i:02d}"))
        with lock:
            acks.append(k)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not k["duplicate"] for k in acks) == 1
    first = next(k for k in acks if not k["duplicate"])
    assert all(k["officer_id"] == first["officer_id"] and k["outcome"] == first["outcome"] for k in acks)
    assert len(rec.all()) == 1 and rec.all()[0]["repeats"] == 7


# --- over a real broker (certificates; the WebSockets listener is in test_handheld.py) ---

def test_publisher_acknowledges_on_the_ack_topic(cert_dir, broker, tmp_path, caplog):
    jsonschema = pytest.importorskip("jsonschema")
    obs = Collector(cert_dir, broker.port, OBSERVER, ["#"]).start()
    cfg = unit_config(cert_dir, broker.port, tmp_path / "state")
    ob = Outbox.from_config(cfg)
    rec = AdjudicationRecords(ob)
    pub = AlertPublisher(cfg, outbox=ob, on_adjudication=rec.record).start()
    hh = mqtt_client(cert_dir, HANDHELD, broker.port)
    try:
        assert pub.wait_connected(10) and connect(hh, broker.port)
        hh.subscribe("lfr/+/adjudication/ack", qos=1)
        assert wait_for(lambda: hh.subacks, 5)
        a, b = make_alert(n=1), make_alert(n=2)
        pub.submit(a)
        pub.submit(b)
        assert pub.wait_idle(10)
        topic = f"lfr/{UNIT}/adjudication"
        with caplog.at_level(logging.INFO, logger="edge"):
            assert publish_wait(hh, topic, json.dumps({"schema_version": 1, "event_id": a["event_id"],
                                 "decision": "confirmed", "handheld_id": HANDHELD,
                                 "decided_at": "2025-05-01T10:00:00.000Z"}).encode()) in (0, 0x10)
            assert publish_wait(hh, topic, A.encode(adj_v2(b["event_id"], "not_located"))) in (0, 0x10)
            assert publish_wait(hh, topic, A.encode(adj_v2(b["event_id"], "confirmed", "off-02"))) in (0, 0x10)
            assert wait_for(lambda: len(hh.got) == 3, 10), hh.got
        acks = [json.loads(p) for _, p in hh.got]
        validator = jsonschema.Draft202012Validator(message_schema.ADJUDICATION_ACK_SCHEMA, format_checker=jsonschema.FormatChecker())
        for k in acks:
            validator.validate(k)
        assert [(k["event_id"], k["outcome"], k["officer_id"], k["duplicate"]) for k in acks] == [
            (a["event_id"], "confirmed", HANDHELD, False), (b["event_id"], "not_located", "off-01", False),
            (b["event_id"], "not_located", "off-01", True)]
        assert {t for t, _ in hh.got} == {f"lfr/{UNIT}/adjudication/ack"}
        assert len(rec.all()) == 2
        lines = [r.getMessage() for r in caplog.records if r.name == "edge.alerts.adjudication"]
        assert len(lines) == 3 and all("/9j/" not in m and len(m) < 300 for m in lines)   # no images logged
    finally:
        hh.disconnect()
        hh.loop_stop()
        pub.stop()
        rec.close()
        ob.close()
    obs.stop()
    topics = {t for t, _ in obs.messages}
    assert topics == {f"lfr/{UNIT}/{k}" for k in ("alert", "status", "adjudication", "adjudication/ack")}


def test_acl_for_the_ack_topic(cert_dir, broker):
    van1 = mqtt_client(cert_dir, UNIT, broker.port)
    van2 = mqtt_client(cert_dir, OTHER_UNIT, broker.port)
    hh = mqtt_client(cert_dir, HANDHELD, broker.port)
    for c in (van1, van2, hh):
        assert connect(c, broker.port)
    van2.subscribe(f"lfr/{UNIT}/adjudication/ack", qos=1)
    hh.subscribe("lfr/+/adjudication/ack", qos=1)
    assert wait_for(lambda: van2.subacks and hh.subacks, 5)
    ack = json.dumps({"duplicate": False}).encode()
    try:
        assert publish_wait(van1, f"lfr/{UNIT}/adjudication/ack", ack) in (0, 0x10)        # its own
        assert publish_wait(van1, f"lfr/{OTHER_UNIT}/adjudication/ack", ack) == 0x87       # not another unit's
        assert publish_wait(hh, f"lfr/{UNIT}/adjudication/ack", ack) == 0x87               # not a handheld
        assert wait_for(lambda: len(hh.got) == 1, 5)
        time.sleep(0.3)
        assert van2.got == []                                                               # a unit reads no ack
    finally:
        for c in (van1, van2, hh):
            c.disconnect()
            c.loop_stop()


def test_a_hook_returning_a_bad_ack_publishes_nothing(cert_dir, broker, tmp_path, caplog):
    cfg = unit_config(cert_dir, broker.port, tmp_path / "state")
    obs = Collector(cert_dir, broker.port, OBSERVER, ["#"]).start()
    calls = []

    def hook(adj):
        calls.append(adj)
        return {"schema_version": 1, "unit_id": UNIT, "event_id": adj["event_id"]}   # incomplete

    pub = AlertPublisher(cfg, on_adjudication=hook).start()
    hh = mqtt_client(cert_dir, HANDHELD, broker.port)
    try:
        assert pub.wait_connected(10) and connect(hh, broker.port)
        a = make_alert()
        pub.submit(a)
        assert pub.wait_idle(10)
        with caplog.at_level(logging.ERROR, logger="edge.alerts.publisher"):
            assert publish_wait(hh, f"lfr/{UNIT}/adjudication", A.encode(adj_v2(a["event_id"]))) in (0, 0x10)
            assert wait_for(lambda: calls, 10)
            time.sleep(0.3)
        assert "acknowledgement that is not sent" in caplog.text
    finally:
        hh.disconnect()
        hh.loop_stop()
        pub.stop()
    obs.stop()
    assert not [t for t, _ in obs.messages if t.endswith("/ack")]
