"""The van-local layout: edge-lfr -> a mosquitto on the van (persistence) -> bridge -> headquarters.

Two real brokers on loopback, configured from deploy/mosquitto/hq.conf.in and
deploy/mosquitto/van-local/mosquitto.conf.in; the mobile link between them is a TCP relay
that the test cuts and restores (and the van's broker restarts during the cut). Officers near the van keep receiving alerts from the van's
broker while the link is down; headquarters gets every alert, in order, once it is back.
"""
from __future__ import annotations

import json
import time

import pytest

from edge.alerts.localbroker import LOOPBACK, Mosquitto, make_certs
from edge.alerts.publisher import AlertPublisher
from tests.support.brokers import HANDHELD, OBSERVER, UNIT, Collector, Link, make_alert, require_tools, unit_config


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    require_tools()
    return make_certs(tmp_path_factory.mktemp("bridge-certs"), units=[UNIT], handhelds=[HANDHELD, "hh-hq"],
                      observers=[OBSERVER],
                      servers={"broker": ["localhost", LOOPBACK], "van-broker": ["localhost", LOOPBACK]})


def test_bridge_keeps_officers_served_while_the_link_is_down_and_catches_up(certs, tmp_path):
    hq = Mosquitto(tmp_path / "hq", certs).start()
    link = Link(hq.port)
    van = Mosquitto(tmp_path / "van", certs, layout="van-local", server="van-broker", unit=UNIT,
                    hq_host=LOOPBACK, hq_port=link.port).start()
    hq_obs = Collector(certs, hq.port, OBSERVER, ["#"], persistent=True).start()
    near_van = Collector(certs, van.port, HANDHELD, ["lfr/+/alert", "lfr/+/status"]).start()
    adjudications: list[dict] = []
    cfg = unit_config(certs, van.port, tmp_path / "state", health_interval_seconds=1.0)
    pub = AlertPublisher(cfg, on_adjudication=adjudications.append).start()
    try:
        assert pub.wait_connected(10)
        before = [make_alert(n=i) for i in range(10)]
        for a in before:
            pub.submit(a)
        assert hq_obs.wait_for(lambda o: len(o.event_ids()) >= 10, 30), hq.log_tail() + van.log_tail()

        link.cut()
        t_cut = time.monotonic()
        during = [make_alert(n=100 + i) for i in range(50)]
        for a in during:
            pub.submit(a)
            time.sleep(0.02)
        assert pub.wait_idle(10)                               # the van broker acknowledged them all
        ids_during = [a["event_id"] for a in during]
        assert near_van.wait_for(lambda o: set(ids_during) <= set(o.event_ids()), 10)
        served_near_van = time.monotonic() - t_cut
        van.stop()                                             # the van broker restarts meanwhile:
        van.start()                                            # its queue for the bridge is persisted
        time.sleep(max(1.0, 6.0 - (time.monotonic() - t_cut)))  # the bridge retries against a dead link
        assert not set(ids_during) & set(hq_obs.event_ids())   # headquarters is really cut off
        cut_for = time.monotonic() - t_cut

        link.restore()
        t_back = time.monotonic()
        assert hq_obs.wait_for(lambda o: set(ids_during) <= set(o.event_ids()), 60), van.log_tail()
        caught_up = time.monotonic() - t_back

        # an officer at headquarters adjudicates; it reaches the unit through the bridge
        hh = Collector(certs, hq.port, "hh-hq", [])
        hh.start()
        decision = {"schema_version": 1, "event_id": during[0]["event_id"], "decision": "confirmed",
                    "handheld_id": "hh-hq", "decided_at": "2025-05-01T10:00:00.000Z"}
        hh.sub.client.publish(f"lfr/{UNIT}/adjudication", json.dumps(decision).encode(), qos=1)
        assert hh.wait_for(lambda o: adjudications, 20)
        hh.stop()
    finally:
        pub.stop()
        near_van.stop()
        hq_obs.stop()
        van.stop()
        link.close()
        hq.stop()
    raw = hq_obs.event_ids()
    deduped = list(dict.fromkeys(raw))
    sent = [a["event_id"] for a in before + during]
    print(f"\nBRIDGE: link cut for {cut_for:.1f} s; near the van all {len(ids_during)} alerts made during the "
          f"cut arrived within {served_near_van:.1f} s; headquarters caught up {caught_up:.1f} s after the link returned; "
          f"{len(deduped)} distinct at HQ, {len(raw) - len(deduped)} redelivered")
    assert deduped == sent                                      # everything, in order
    assert adjudications and adjudications[0]["event_id"] == during[0]["event_id"]
    topics = {t for t, _ in hq_obs.messages}
    assert topics <= {f"lfr/{UNIT}/alert", f"lfr/{UNIT}/status", f"lfr/{UNIT}/health", f"lfr/{UNIT}/adjudication"}
    assert f"lfr/{UNIT}/health" in topics and f"lfr/{UNIT}/status" in topics
