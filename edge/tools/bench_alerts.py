"""``edge-lfr bench alerts``: match -> outbox -> MQTT PUBACK latency through a throwaway TLS
mosquitto on loopback (Debian's), with the unit's own publisher."""
from __future__ import annotations

import json
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.alerts import message as alerts
from edge.alerts.localbroker import LOOPBACK, Mosquitto, make_certs
from edge.alerts.publisher import AlertPublisher
from edge.appliance.metrics import latency_summary
from edge.config import load_config, validate
from edge.errors import ConfigError, InputError
from edge.types import Match


def run_alert_bench(args) -> int:
    """Time match -> alert built -> committed to the outbox -> PUBACK from a real mosquitto.

    The broker is always a throwaway one on 127.0.0.1 (deploy/ configuration, TLS, client
    certificates from deploy/make-certs.sh), so a bench never sends alerts to a real broker.
    """


    flood = int(getattr(args, "flood", 0) or 0)
    if flood:
        if not 1 <= flood <= 100_000:
            raise InputError("--flood must be 1..100000 messages")
        report = run_flood(flood)
        if getattr(args, "out", None):
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2))
        return 0
    count = int(getattr(args, "count", 200) or 0)
    burst = int(getattr(args, "burst", 200) or 0)
    if count < 1 or burst < 0:
        raise InputError("--count must be at least 1 and --burst not negative")
    base = load_config(getattr(args, "config", None))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:150]
    probe = np.clip(np.stack([xx, yy, (xx + yy) // 2], -1) + rng.normal(0, 12, (150, 150, 3)), 0, 255).astype(np.uint8)
    reference = np.clip(np.stack([yy, xx, 255 - xx], -1) + rng.normal(0, 8, (150, 150, 3)), 0, 255).astype(np.uint8)
    ctx = alerts.AlertContext("bench-unit", "bench-op", "bench-bundle", 1, "0" * 64)
    match = Match("BENCH-SUBJECT", "wanted", 0.93, 0.80, 0.11, 0)
    max_bytes = base.outbox.max_crop_bytes
    cy, cx = np.mgrid[0:400, 0:300]                        # a context image of a typical size (3 x 4 faces)
    scene = np.clip(np.stack([cx * 0.8, cy * 0.6, (cx + cy) // 3], -1) + rng.normal(0, 10, (400, 300, 3)),
                    0, 255).astype(np.uint8)
    max_context = base.outbox.max_context_bytes

    with tempfile.TemporaryDirectory(prefix="edge-lfr-bench-") as tmp:
        tmp = Path(tmp)
        certs = make_certs(tmp / "certs", units=["bench-unit"], observers=["bench-observer"])
        broker = Mosquitto(tmp / "broker", certs).start()
        acked: dict[int, float] = {}
        cond = threading.Condition()

        def delivered(d) -> None:
            with cond:
                acked[d.seq] = d.acked_at
                cond.notify_all()

        cfg = validate({"unit": {"id": "bench-unit", "state_dir": str(tmp / "state")},
                        "mqtt": {"host": LOOPBACK, "port": broker.port, "ca_file": str(certs / "ca.crt"),
                                 "cert_file": str(certs / "bench-unit.crt"), "key_file": str(certs / "bench-unit.key"),
                                 "max_inflight": base.mqtt.max_inflight, "health_interval_seconds": 3600.0},
                        "outbox": base.as_dict()["outbox"]})
        pub = AlertPublisher(cfg, on_delivered=delivered)
        try:
            pub.start()
            if not pub.wait_connected(15):
                raise ConfigError(f"could not connect to the bench broker: {broker.log_tail(600)}")

            def one(i: int) -> tuple[float, float, int]:
                t_match = time.monotonic()
                a = alerts.build_alert(match, ctx, track_id=i, first_seen=time.time() - 1.0, probe_crop=probe,
                                       reference=reference, max_image_bytes=max_bytes, context_image=scene,
                                       max_context_bytes=max_context)
                t_built = time.monotonic()
                seq = pub.submit(a)
                return t_match, t_built, seq

            def wait_for(seqs, timeout=30.0):
                deadline = time.monotonic() + timeout
                with cond:
                    while not all(s in acked for s in seqs):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise ConfigError(f"no PUBACK within {timeout} s (broker log: {broker.log_tail(600)})")
                        cond.wait(left)

            for i in range(10):  # warm-up: TLS session, SQLite pages, JPEG encoder
                wait_for([one(i)[2]])
            total, build, commit, ack = [], [], [], []
            for i in range(count):
                t_match, t_built, seq = one(i)
                t_committed = time.monotonic()
                wait_for([seq])
                total.append(acked[seq] - t_match)
                build.append(t_built - t_match)
                commit.append(t_committed - t_built)
                ack.append(acked[seq] - t_committed)
            burst_report = None
            if burst:
                t0 = time.monotonic()
                started = [one(i) for i in range(burst)]
                wait_for([s for _, _, s in started], timeout=120.0)
                elapsed = time.monotonic() - t0
                burst_report = {"n": burst, "seconds": round(elapsed, 3), "alerts_per_s": round(burst / elapsed, 1),
                                "match_to_puback": latency_summary([acked[s] - tm for tm, _, s in started])}
            sample = alerts.encode(alerts.build_alert(match, ctx, track_id=0, first_seen=time.time(), probe_crop=probe,
                                                      reference=reference, max_image_bytes=max_bytes,
                                                      context_image=scene, max_context_bytes=max_context))
            size = len(sample)
        finally:
            pub.stop()
            broker.stop()
        version = broker.log_tail(100000)
        version = next((ln.split("mosquitto version ")[1].split()[0] for ln in version.splitlines()
                        if "mosquitto version" in ln), "?")
    report = {
        "what": "alert latency from match to the broker's PUBACK: build (JSON + two capped JPEGs), "
                "validate + commit to the SQLite outbox (WAL, synchronous=FULL), publish QoS 1 -> PUBACK",
        "broker": f"mosquitto {version} on {LOOPBACK}, TLS 1.2+ with client certificates, deploy/mosquitto/hq.conf.in",
        "payload_bytes": size,
        "sequential": {"match_to_puback": latency_summary(total), "build": latency_summary(build),
                       "validate_and_commit": latency_summary(commit), "publish_to_puback": latency_summary(ack)},
        "burst": burst_report,
    }
    print(format_bench(report))
    if getattr(args, "out", None):
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return 0


def format_bench(report: dict) -> str:
    lines = [f"alert latency, {report['broker']}; payload {report['payload_bytes']} bytes",
             f"{'stage':24s} {'n':>5s} {'p50 ms':>9s} {'p95 ms':>9s} {'max ms':>9s}"]
    for name, s in report["sequential"].items():
        lines.append(f"{name:24s} {s['n']:5d} {s['p50_ms']:9.2f} {s['p95_ms']:9.2f} {s['max_ms']:9.2f}")
    b = report.get("burst")
    if b:
        s = b["match_to_puback"]
        lines.append(f"{'burst match_to_puback':24s} {s['n']:5d} {s['p50_ms']:9.2f} {s['p95_ms']:9.2f} "
                     f"{s['max_ms']:9.2f}   ({b['alerts_per_s']} alerts/s)")
    return "\n".join(lines)


# --- edge-lfr bench alerts --flood N ----------------------------------------------------------
#
# ``edge-lfr bench alerts --flood N``: alert commit -> PUBACK latency while one officer's
# handheld floods the unit with N duplicate adjudications, through a throwaway TLS mosquitto on
# 127.0.0.1 (deploy/mosquitto/hq.conf.in, certificates from deploy/make-certs.sh).
#
# The unit side is wired as the service wires it (edge.appliance.builder): the publisher with its
# outbox, the adjudication records as the hook, wrapped by the service's audit log (hash-chained,
# fsynced, signed checkpoints). The flood: one real decision on an alert, then N copies of it,
# published QoS 1 as fast as the broker takes them. Meanwhile an alert is committed every
# ``interval`` seconds; each one's commit -> PUBACK time is what an officer waiting for an alert
# would feel. Every message goes to 127.0.0.1 only; the loop is bounded in count and time.


def _ms(values) -> dict:
    if not values:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    a = np.asarray(values) * 1e3
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "max_ms": round(float(a.max()), 2)}


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_flood(n: int, *, interval: float = 0.02, max_seconds: float = 120.0, say=print) -> dict:
    """Run the flood benchmark; returns the report (also printed with ``say``)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.alerts import message as alerts
    from edge.alerts.adjudication import AdjudicationRecords
    from edge.alerts.connection import tls_context
    from edge.alerts.localbroker import LOOPBACK, Mosquitto, make_certs
    from edge.alerts.outbox import Outbox
    from edge.alerts.publisher import AlertPublisher
    from edge.config import validate
    from edge.privacy.audit import AuditLog
    from edge.privacy.service_audit import ServiceAudit
    from edge.types import Match
    from edge.watchlist.keys import generate_device

    unit, officer = "bench-unit", "bench-hh"
    rng = np.random.default_rng(0)
    probe = rng.integers(0, 255, (150, 150, 3), dtype=np.uint8)
    ctx = alerts.AlertContext(unit, "bench-op", "bench-bundle", 1, "0" * 64)
    match = Match("BENCH-SUBJECT", "wanted", 0.93, 0.80, 0.11, 0)

    with tempfile.TemporaryDirectory(prefix="edge-lfr-flood-") as tmp:
        tmp = Path(tmp)
        certs = make_certs(tmp / "certs", units=[unit], handhelds=[officer])
        broker = Mosquitto(tmp / "broker", certs).start()
        cfg = validate({"unit": {"id": unit, "state_dir": str(tmp / "state")},
                        "mqtt": {"host": LOOPBACK, "port": broker.port, "ca_file": str(certs / "ca.crt"),
                                 "cert_file": str(certs / f"{unit}.crt"), "key_file": str(certs / f"{unit}.key"),
                                 "health_interval_seconds": 3600.0},
                        "outbox": {"max_crop_bytes": 8192}})
        (tmp / "state").mkdir(mode=0o700)
        acked: dict[int, float] = {}
        cond = threading.Condition()

        def delivered(d) -> None:
            with cond:
                acked[d.seq] = d.acked_at
                cond.notify_all()

        outbox = Outbox(tmp / "state" / "outbox.sqlite", max_pending=100_000)
        pub = AlertPublisher(cfg, outbox=outbox, on_delivered=delivered)
        audit = AuditLog(tmp / "state" / "audit", signer=generate_device(unit), unit_id=unit,
                         checkpoint_every=cfg.privacy.audit_checkpoint_entries)
        sa = ServiceAudit(cfg, audit)
        audit.append("service_start", {"bench": "flood"})
        pub.on_adjudication = sa.wrap_adjudication(AdjudicationRecords(outbox).record)
        if hasattr(sa, "attach_publisher"):     # the service's wiring (edge.appliance.builder)
            sa.attach_publisher(pub)
        flooder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=officer, protocol=mqtt.MQTTv5)
        flooder.tls_set_context(tls_context(str(certs / "ca.crt"), str(certs / f"{officer}.crt"),
                                            str(certs / f"{officer}.key")))
        flooder.max_inflight_messages_set(100)
        flooder.max_queued_messages_set(0)
        puback_flood = threading.Semaphore(0)
        flooder.on_publish = lambda c, u, mid, rc, p: puback_flood.release()
        try:
            pub.start()
            if not pub.wait_connected(15):
                raise RuntimeError(f"could not connect to the bench broker: {broker.log_tail(600)}")
            flooder.connect(LOOPBACK, broker.port, keepalive=30)
            flooder.loop_start()

            events: list[str] = []

            def alert(i: int) -> tuple[float, int]:
                a = alerts.build_alert(match, ctx, track_id=i, first_seen=time.time() - 1.0, probe_crop=probe,
                                       reference=probe, max_image_bytes=8192, context_image=probe)
                events.append(a["event_id"])
                seq = pub.submit(a)
                return time.monotonic(), seq

            def wait(seq: int, timeout: float = 120.0) -> None:
                deadline = time.monotonic() + timeout
                with cond:
                    while seq not in acked and time.monotonic() < deadline:
                        cond.wait(0.1)

            quiet = []
            for i in range(20):                                 # before the flood
                t, seq = alert(i)
                wait(seq)
                quiet.append(acked[seq] - t)
                time.sleep(interval)
            target_event = events[0]
            decided = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            payload = json.dumps({"schema_version": 2, "event_id": target_event, "outcome": "confirmed",
                                  "officer_id": officer, "decided_at": decided}).encode()
            audit_before = (tmp / "state" / "audit" / "audit.jsonl").stat().st_size
            rss_before = _rss_mb()
            seen_before = pub.stats()["adjudications_accepted"] + pub.stats()["adjudications_rejected"]

            sent = threading.Event()

            def flood() -> None:
                for _ in range(n + 1):
                    flooder.publish(f"lfr/{unit}/adjudication", payload, qos=1)
                for _ in range(n + 1):
                    puback_flood.acquire(timeout=max_seconds)
                sent.set()
            t_flood = time.monotonic()
            threading.Thread(target=flood, daemon=True).start()
            during, pending = [], []
            i = 100
            while time.monotonic() - t_flood < max_seconds:
                st = pub.stats()
                handled = st["adjudications_accepted"] + st["adjudications_rejected"] - seen_before
                if sent.is_set() and handled >= n + 1 - st.get("adjudications_dropped", 0) and len(during) >= 20:
                    break
                pending.append(alert(i))
                i += 1
                time.sleep(interval)
                with cond:
                    for t, seq in list(pending):
                        if seq in acked:
                            during.append(acked[seq] - t)
                            pending.remove((t, seq))
            flood_seconds = time.monotonic() - t_flood
            for t, seq in pending:                              # alerts still waiting when the flood ended
                wait(seq, 60.0)
                if seq in acked:
                    during.append(acked[seq] - t)
            st = pub.stats()
            report = {
                "what": f"alert commit -> PUBACK while one handheld sends 1 decision + {n} duplicates (QoS 1)",
                "broker": f"mosquitto on {LOOPBACK}, TLS client certificates, deploy/mosquitto/hq.conf.in",
                "flood": n, "flood_seconds": round(flood_seconds, 2),
                "quiet": _ms(quiet), "during_flood": _ms(during),
                "adjudications_handled": st["adjudications_accepted"] + st["adjudications_rejected"] - seen_before,
                "audit_bytes_added": (tmp / "state" / "audit" / "audit.jsonl").stat().st_size - audit_before,
                "rss_mb_before": round(rss_before, 1), "rss_mb_after": round(_rss_mb(), 1),
                "counters": {k: v for k, v in st.items() if k.startswith("adjudication")},
            }
        finally:
            flooder.loop_stop()
            flooder.disconnect()
            pub.stop()
            outbox.close()
            broker.stop()
    d = report["during_flood"]
    say(f"flood of {n} duplicate adjudications ({report['flood_seconds']} s): alert commit -> PUBACK "
        f"p50 {d['p50_ms']} ms, p95 {d['p95_ms']} ms, max {d['max_ms']} ms over {d['n']} alerts "
        f"(quiet: p50 {report['quiet']['p50_ms']} ms, p95 {report['quiet']['p95_ms']} ms); "
        f"audit log +{report['audit_bytes_added']:,} bytes")
    return report
