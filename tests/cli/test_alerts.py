"""`edge-lfr alerts` (terminal subscriber) and `edge-lfr bench alerts`, against real brokers."""
from __future__ import annotations

import argparse
import json
import time

import paho.mqtt.client as mqtt
import yaml

from edge.alerts import message as A
from edge.alerts import schema as message_schema
from edge.cli.alerts import add_bench_arguments, add_commands
from edge.tools.bench_alerts import run_alert_bench
from edge.alerts.localbroker import LOOPBACK
from edge.alerts.publisher import AlertPublisher
from edge.alerts.connection import tls_context
from tests.support.brokers import UNIT, Collector, broker, cert_dir, make_alert, require_tools, unit_config  # noqa: F401


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-lfr")
    sub = p.add_subparsers(dest="command")
    add_commands(sub)
    b = sub.add_parser("bench").add_subparsers(dest="what").add_parser("alerts")
    add_bench_arguments(b)
    b.set_defaults(func=run_alert_bench)
    return p


def test_alerts_prints_deduplicates_and_saves_images(cert_dir, broker, tmp_path, capsys):
    rig = tmp_path / "rig.yaml"
    rig.write_text(yaml.safe_dump({"mqtt": {"host": LOOPBACK, "port": broker.port, "ca_file": str(cert_dir / "ca.crt"),
                                            "cert_file": str(cert_dir / "obs-02.crt"),
                                            "key_file": str(cert_dir / "obs-02.key")}}))
    # the rig's session exists before the alerts are made (as when a technician reconnects)
    Collector(cert_dir, broker.port, "obs-02", ["lfr/+/alert", "lfr/+/status"], persistent=True).start().stop()
    sent = [make_alert(n=i) for i in range(3)]
    cfg = unit_config(cert_dir, broker.port, tmp_path / "state")
    pub = AlertPublisher(cfg).start()
    pub.submit(sent[0])
    assert pub.wait_idle(10)
    pub.stop()
    # a raw redelivery of the first alert and a garbled payload, sent with the unit's certificate
    raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw", protocol=mqtt.MQTTv5)
    raw.tls_set_context(tls_context(str(cert_dir / "ca.crt"), str(cert_dir / f"{UNIT}.crt"), str(cert_dir / f"{UNIT}.key")))
    raw.connect(LOOPBACK, broker.port)
    raw.loop_start()
    raw.publish(f"lfr/{UNIT}/alert", A.encode(sent[0]), qos=1).wait_for_publish(5)
    raw.publish(f"lfr/{UNIT}/alert", b"{garbage", qos=1).wait_for_publish(5)
    raw.disconnect()
    raw.loop_stop()
    pub = AlertPublisher(cfg).start()
    for a in sent[1:]:
        pub.submit(a)
    assert pub.wait_idle(10)
    pub.stop()
    time.sleep(0.2)

    shots = tmp_path / "shots"
    args = _parser().parse_args(["alerts", "--config", str(rig), "--persistent", "--count", "3",
                                 "--timeout", "20", "--save", str(shots)])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    blocks = [b for b in out.split("\n2") if "WANTED" in b]       # one block of lines per alert
    assert len(blocks) == 3
    for a, block in zip(sent, blocks):
        assert a["event_id"] in block and "score 0.910" in block and UNIT in block
        assert "images: context " in block
        assert all(len(line) <= 80 for line in block.splitlines())
    for a in sent:
        for kind in ("context", "probe", "reference"):
            assert (shots / f"{a['event_id']}-{kind}.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    assert "status online" in out or "status offline" in out
    assert "invalid alert" in err and "3 alert(s), 1 redelivered duplicate(s) ignored, 1 invalid" in err


def test_alerts_gives_up_after_the_timeout_and_prints_the_schema(cert_dir, broker, tmp_path, capsys):
    args = _parser().parse_args(["alerts", "--host", LOOPBACK, "--port", str(broker.port),
                                 "--ca", str(cert_dir / "ca.crt"), "--cert", str(cert_dir / "hh-01.crt"),
                                 "--key", str(cert_dir / "hh-01.key"), "--count", "1", "--timeout", "1"])
    assert args.func(args) == 1
    assert "only 0 of 1" in capsys.readouterr().err
    args = _parser().parse_args(["alerts", "--schema"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == message_schema.ALERT_SCHEMA


def test_bench_alerts_reports_match_to_puback(tmp_path, capsys):
    require_tools()
    out = tmp_path / "bench.json"
    args = _parser().parse_args(["bench", "alerts", "--count", "20", "--burst", "20", "--out", str(out)])
    assert args.func(args) == 0
    report = json.loads(out.read_text())
    s = report["sequential"]["match_to_puback"]
    assert s["n"] == 20 and 0 < s["p50_ms"] <= s["p95_ms"] <= s["max_ms"]
    assert report["burst"]["n"] == 20 and report["burst"]["alerts_per_s"] > 0
    assert "match_to_puback" in capsys.readouterr().out


def test_an_alert_line_says_what_the_score_means_and_fits_80_columns():
    from tests.support.brokers import CALIBRATED, make_alert

    from edge.alerts.display import format_alert, one_in
    text = format_alert(make_alert())
    assert all(len(line) <= 80 for line in text.splitlines()), text
    flat = " ".join(line.strip() for line in text.splitlines())
    assert "~1 in 3,800 passers-by not on the list score this high (wanted alerts set for 1 in 1,000; 826 listed)" in flat
    assert "score 0.910 (threshold 0.800, margin 0.120)" in flat
    assert "images: context " in flat and ", face 150x150" in flat
    raw = make_alert(calibrated=None)
    assert raw["calibrated"] is None and "passers-by" not in format_alert(raw)
    rare = make_alert(calibrated={**CALIBRATED, "expected_fpir": 2e-9, "supported": False})
    flat = " ".join(line.strip() for line in format_alert(rare).splitlines())
    assert "beyond the calibrated range" in flat and "500,000,000" not in flat
    # long ids wrap instead of running past the edge
    long = {**make_alert(), "subject_id": "S" * 120}
    assert all(len(line) <= 80 for line in format_alert(long).splitlines())
    assert [one_in(r) for r in (0.5, 0.01, 0.0)] == ["1 in 2", "1 in 100", "none"]
