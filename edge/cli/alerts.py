"""``edge-lfr alerts`` (a terminal subscriber) and ``edge-lfr bench alerts`` (match -> PUBACK latency).

Wiring (``edge/cli/main.py``): ``add_commands(subparsers)`` registers ``alerts``;
``add_bench_arguments(parser)`` holds the options of ``bench alerts`` (:mod:`edge.tools.bench_alerts`).
"""
from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from pathlib import Path

from edge.errors import InputError
from edge.types import is_unit_id

ALERTS_EPILOG = """\
examples:
  edge-lfr alerts --config rig.yaml                       every unit's alerts and status, as they arrive
  edge-lfr alerts --config rig.yaml --unit van-01 --save shots/   also save each alert's three JPEGs
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
        "and print each alert (a few lines within 80 columns), de-duplicated by event id; optionally save "
        "each alert's context image, face crop and reference thumbnail. Connection settings come from the mqtt section of --config; "
        "the options below override them.",
        epilog=ALERTS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--config", help="YAML configuration file (its mqtt section; see `edge-lfr config`)")
    s.add_argument("--unit", default="+", help="unit id to follow (default: every unit)")
    s.add_argument("--host", help="broker host (default: mqtt.host)")
    s.add_argument("--port", type=int, help="broker TLS port (default: mqtt.port)")
    s.add_argument("--ca", help="CA certificate (default: mqtt.ca_file)")
    s.add_argument("--cert", help="client certificate of a handheld or observer (default: mqtt.cert_file)")
    s.add_argument("--key", help="its key (default: mqtt.key_file)")
    s.add_argument("--save", metavar="DIR", help="write <event_id>-context.jpg (the camera view, other faces blurred), -probe.jpg (the face) and "
                   "-reference.jpg (the watchlist image) here")
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


def run_alerts(args) -> int:
    from edge.alerts import message as alerts
    from edge.alerts import schema as message_schema
    from edge.alerts.display import format_alert
    from edge.alerts.subscriber import Subscriber
    from edge.utc import format_utc_ms

    if args.schema:
        print(json.dumps(message_schema.ALERT_SCHEMA, indent=2))
        return 0
    if args.count < 0 or args.timeout < 0:
        raise InputError("--count and --timeout must not be negative")
    if args.unit != "+" and not is_unit_id(args.unit):
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
                print(f"{format_utc_ms(time.time())}  {unit}  status {payload[:16].decode('ascii', 'replace')}",
                      flush=True)
                continue
            try:
                a = message_schema.validate_alert(json.loads(payload))
            except (ValueError, message_schema.AlertError) as exc:
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
                scene = alerts.context_jpeg(a)
                if scene is not None:     # the camera view, every other face blurred on the unit
                    (save / f"{a['event_id']}-context.jpg").write_bytes(scene)
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
    _add(parser, "--flood", type=int, default=0, metavar="N",
         help="alerts: instead, time alert commit -> PUBACK while one handheld floods the unit with N duplicate "
              "adjudications (e.g. 3000; the service's wiring: records + audit log)")

