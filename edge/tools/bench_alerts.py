"""``edge-lfr bench alerts``: match -> outbox -> MQTT PUBACK latency through a throwaway TLS
mosquitto on loopback (Debian's), with the unit's own publisher."""
from __future__ import annotations

import json
import tempfile
import threading
import time
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
        from edge.tools.bench_flood import run_flood
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
