"""``edge-lfr alerts`` (a terminal subscriber) and ``edge-lfr bench alerts`` (match -> PUBACK latency).

Wiring (``edge/cli/main.py``): ``add_commands(subparsers)`` registers ``alerts``;
``add_bench_arguments(parser)`` + ``run_alert_bench(args)`` implement ``bench alerts``.
"""
from __future__ import annotations

import argparse
import json
import queue
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from edge.alerts import message as alerts
from edge.errors import ConfigError, InputError

ALERTS_EPILOG = """\
examples:
  edge-lfr alerts --config rig.yaml                       every unit's alerts and status, as they arrive
  edge-lfr alerts --config rig.yaml --unit van-01 --save shots/   also save each alert's two JPEGs
  edge-lfr alerts --config rig.yaml --count 5 --timeout 60        exit 0 after 5 alerts, 1 if none in 60 s
  edge-lfr alerts --schema                                 print the alert JSON Schema

The certificate (mqtt.cert_file / --cert) must be a handheld's or an observer's from
deploy/make-certs.sh: the broker ACL lets units read nothing but their own adjudications.
"""


def add_commands(subparsers) -> None:
    """Register ``edge-lfr alerts``."""
    s = subparsers.add_parser(
        "alerts", help="print match alerts as they arrive (technicians, test rigs)",
        description="Subscribe to <prefix>/<unit>/alert and /status (QoS 1, TLS client certificate) "
        "and print one line per alert, de-duplicated by event id; optionally save each alert's probe "
        "crop and reference thumbnail. Connection settings come from the mqtt section of --config; "
        "the options below override them.",
        epilog=ALERTS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--config", help="YAML configuration file (its mqtt section; see `edge-lfr config`)")
    s.add_argument("--unit", default="+", help="unit id to follow (default: every unit)")
    s.add_argument("--host", help="broker host (default: mqtt.host)")
    s.add_argument("--port", type=int, help="broker TLS port (default: mqtt.port)")
    s.add_argument("--ca", help="CA certificate (default: mqtt.ca_file)")
    s.add_argument("--cert", help="client certificate of a handheld or observer (default: mqtt.cert_file)")
    s.add_argument("--key", help="its key (default: mqtt.key_file)")
    s.add_argument("--save", metavar="DIR", help="write <event_id>-probe.jpg and <event_id>-reference.jpg here")
    s.add_argument("--json", action="store_true", help="print each alert as one JSON line (images left out)")
    s.add_argument("--count", type=int, default=0, help="exit after this many distinct alerts (0 = never)")
    s.add_argument("--timeout", type=float, default=0.0, help="give up after this many seconds (0 = never)")
    s.add_argument("--persistent", action="store_true",
                   help="keep a broker session (1 day) so alerts sent while away arrive on return")
    s.add_argument("--schema", action="store_true", help="print the alert JSON Schema and exit")
    s.set_defaults(func=run_alerts)


def _settings(args):
    from edge.config import load_config
    cfg = load_config(getattr(args, "config", None))
    m = cfg.mqtt
    return {"host": args.host or m.host, "port": args.port or m.port, "ca": args.ca or m.ca_file,
            "cert": args.cert or m.cert_file, "key": args.key or m.key_file, "prefix": m.topic_prefix}


def one_in(rate: float) -> str:
    """'1 in 3,800' for a rate of 0.00026 (two significant figures from 100 on)."""
    if not rate > 0:
        return "none"
    n = 1.0 / rate
    return f"1 in {float(f'{n:.2g}') if n >= 100 else round(n):,.0f}"


def format_alert(a: dict) -> str:
    margin = "n/a" if a["margin"] is None else f"{a['margin']:.3f}"
    cal = a.get("calibrated")
    meaning = ""
    if cal:
        rarer = "" if cal["supported"] else ", extrapolated beyond the calibration"
        meaning = (f" ~{one_in(cal['expected_fpir'])} passers-by{rarer} "
                   f"(alerts set for {one_in(cal['target_fpir'])}, {cal['watchlist_size']} listed)")
    return (f"{a['alerted_at']}  {a['unit_id']}  {a['category'].upper():10s} {a['subject_id']}  "
            f"score {a['score']:.3f} (threshold {a['threshold']:.3f}, margin {margin}){meaning}  "
            f"track {a['track_id']}  bundle {a['bundle_id']}#{a['bundle_serial']}  event {a['event_id']}")


def run_alerts(args) -> int:
    from edge.alerts.publisher import Subscriber

    if args.schema:
        print(json.dumps(alerts.ALERT_SCHEMA, indent=2))
        return 0
    if args.count < 0 or args.timeout < 0:
        raise InputError("--count and --timeout must not be negative")
    if args.unit != "+" and not re.match(r"^[A-Za-z0-9_-]{1,64}$", args.unit):
        raise InputError(f"--unit {args.unit!r}: expected a unit id or '+'")
    s = _settings(args)
    save = Path(args.save) if args.save else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    inbox: queue.Queue = queue.Queue()
    topics = [f"{s['prefix']}/{args.unit}/alert", f"{s['prefix']}/{args.unit}/status"]
    sub = Subscriber(s["host"], s["port"], s["ca"], s["cert"], s["key"], topics,
                     lambda t, p: inbox.put((t, p)), persistent=args.persistent, session_expiry=86400)
    seen: set[str] = set()
    duplicates = invalid = 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    try:
        try:
            sub.start(wait=min(args.timeout, 10.0) if args.timeout else 10.0)
        except ConnectionError as exc:
            print(f"edge-lfr alerts: {exc}", file=sys.stderr)
            return 1
        print(f"# listening on {s['host']}:{s['port']} for {', '.join(topics)}", file=sys.stderr, flush=True)
        while not (args.count and len(seen) >= args.count):
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                topic, payload = inbox.get(timeout=wait)
            except queue.Empty:
                continue
            if topic.endswith("/status"):
                unit = topic.split("/")[-2]
                print(f"{alerts.utc_iso(time.time())}  {unit}  status {payload[:16].decode('ascii', 'replace')}",
                      flush=True)
                continue
            try:
                a = alerts.validate_alert(json.loads(payload))
            except (ValueError, alerts.AlertError) as exc:
                invalid += 1
                print(f"# invalid alert on {topic} ({len(payload)} bytes): {str(exc)[:200]}", file=sys.stderr)
                continue
            if a["event_id"] in seen:
                duplicates += 1
                continue
            seen.add(a["event_id"])
            if args.json:
                print(json.dumps({k: v for k, v in a.items() if not k.endswith("_jpeg")}), flush=True)
            else:
                print(format_alert(a), flush=True)
            if save:
                probe, ref = alerts.alert_images(a)
                (save / f"{a['event_id']}-probe.jpg").write_bytes(probe)
                (save / f"{a['event_id']}-reference.jpg").write_bytes(ref)
    finally:
        sub.stop()
    print(f"# {len(seen)} alert(s), {duplicates} redelivered duplicate(s) ignored, {invalid} invalid",
          file=sys.stderr)
    if args.count and len(seen) < args.count:
        print(f"edge-lfr alerts: only {len(seen)} of {args.count} alerts before the timeout", file=sys.stderr)
        return 1
    return 0


# --- edge-lfr bench alerts ------------------------------------------------------------------

def _add(parser, *flags, **kw) -> None:
    if not any(f in parser._option_string_actions for f in flags):
        parser.add_argument(*flags, **kw)


def add_bench_arguments(parser) -> None:
    """Options of ``edge-lfr bench alerts`` (an option the parser already has is left as it is)."""
    _add(parser, "--count", type=int, default=200, help="alerts timed one at a time (default: %(default)s)")
    _add(parser, "--burst", type=int, default=200,
         help="then this many submitted at once, for throughput (default: %(default)s; 0 = skip)")
    _add(parser, "--config", help="YAML configuration (only its outbox and mqtt.max_inflight settings are used)")
    _add(parser, "--out", help="also write the figures as JSON here")


def _stats_ms(values: list[float]) -> dict:
    import numpy as np
    a = np.asarray(values, float) * 1000.0
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p95_ms": round(float(np.percentile(a, 95)), 3), "max_ms": round(float(a.max()), 3),
            "min_ms": round(float(a.min()), 3)}


def run_alert_bench(args) -> int:
    """Time match -> alert built -> committed to the outbox -> PUBACK from a real mosquitto.

    The broker is always a throwaway one on 127.0.0.1 (deploy/ configuration, TLS, client
    certificates from deploy/make-certs.sh), so a bench never sends alerts to a real broker.
    """
    import numpy as np

    from edge.config import load_config, validate
    from edge.alerts.localbroker import LOOPBACK, Mosquitto, make_certs
    from edge.alerts.publisher import AlertPublisher
    from edge.types import Match

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
                                       reference=reference, max_image_bytes=max_bytes)
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
                                "match_to_puback": _stats_ms([acked[s] - tm for tm, _, s in started])}
            sample = alerts.encode(alerts.build_alert(match, ctx, track_id=0, first_seen=time.time(), probe_crop=probe,
                                                      reference=reference, max_image_bytes=max_bytes))
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
        "sequential": {"match_to_puback": _stats_ms(total), "build": _stats_ms(build),
                       "validate_and_commit": _stats_ms(commit), "publish_to_puback": _stats_ms(ack)},
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
