"""``edge-lfr audit`` (verify, show, purge) and ``edge-lfr report``.

    edge-lfr audit verify --config unit.yaml                 every hash, link and signature; where it breaks
    edge-lfr audit verify --log audit.jsonl --unit-public van-07.unit.yaml   at headquarters, on a copy
    edge-lfr audit show --config unit.yaml --last 20         the latest entries (ids and counts only)
    edge-lfr audit purge --config unit.yaml                  the retention purge (e.g. from a timer)
    edge-lfr report --config unit.yaml --out report/         the latest deployment: report.json + report.html

Exit codes: 0 ok; 65 the audit log does not verify; 66 key file missing; 78 bad configuration.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from edge.errors import InputError

TAMPERED_EXIT = 65


def _config(args):
    from edge.config import load_config
    return load_config(getattr(args, "config", None))


def _log_path(args, cfg) -> Path:
    from edge.privacy.audit import DIRNAME, FILENAME
    if getattr(args, "log", None):
        return Path(args.log)
    return Path(cfg.unit.state_dir) / DIRNAME / FILENAME


def _public_key(args, cfg):
    from edge.privacy.audit import public_key_from_config
    from edge.watchlist.keys import load_unit_public
    if getattr(args, "unit_public", None):
        return load_unit_public(args.unit_public).ed25519
    if getattr(args, "no_signatures", False):
        return None
    return public_key_from_config(cfg)


def _verify(args, cfg, path: Path, strict: bool = False):
    from edge.privacy.audit import verify
    return verify(path, _public_key(args, cfg), getattr(args, "head", None), strict=strict)


def cmd_verify(args) -> int:
    cfg = _config(args)
    path = _log_path(args, cfg)
    if not path.exists():
        raise InputError(f"{path}: no audit log")
    res = _verify(args, cfg, path, strict=bool(getattr(args, "strict", False)))
    if args.json:
        print(json.dumps(res.as_dict(), indent=2))
    else:
        print(res.summary())
        for p in res.problems:
            print(f"  {p}")
    return 0 if res.ok else TAMPERED_EXIT


def cmd_show(args) -> int:
    from edge.privacy.audit import read_entries
    cfg = _config(args)
    entries = [e for e in read_entries(_log_path(args, cfg)) if not args.type or e["type"] in args.type]
    for e in entries[-args.last:] if args.last else entries:
        if args.json:
            print(json.dumps(e, sort_keys=True))
        else:
            data = {k: v for k, v in e["data"].items() if k != "sig"}
            print(f"{e['seq']:>7} {e['t']} {e['type']:<18} {json.dumps(data, sort_keys=True)[:200]}")
    return 0


def cmd_purge(args) -> int:
    from edge.privacy.audit import AuditLog
    from edge.privacy.retention import Retention
    from edge.watchlist.unit import UnitWatchlist
    cfg = _config(args)
    audit = AuditLog.from_config(cfg)
    # the stopped unit's stored list: expiry and the end-of-deployment wipe need no model
    unit = UnitWatchlist(cfg, model_sha256=None) if cfg.unit.id else None
    counts = Retention(cfg, audit=audit, unit=unit).run()
    print(json.dumps(counts, indent=2, sort_keys=True))
    return 0


def _when(text: str | None, what: str) -> float | None:
    from edge.utc import parse_utc
    return None if text is None else float(parse_utc(text, what, InputError))


def cmd_report(args) -> int:
    from edge.privacy.audit import read_entries
    from edge.privacy.report import build_report, render_png, write_report
    cfg = _config(args)
    path = _log_path(args, cfg)
    entries = list(read_entries(path))
    # strict: entries after the signed head (nothing signed them) make the report say so
    verification = None if args.no_verify else _verify(args, cfg, path, strict=True)
    report = build_report(entries, start=_when(args.start, "--from"), end=_when(args.end, "--to"),
                          bundle_id=args.bundle, location=args.location, verification=verification)
    jp, hp = write_report(report, args.out)
    print(f"wrote {jp} and {hp}")
    if args.screenshot:
        print(f"wrote {render_png(hp, args.screenshot)}")
    a = report["adjudications"]
    print(f"{report['window']['start']} .. {report['window']['end']}: {report['faces_processed']} faces processed, "
          f"{report['alerts']} alerts ({a['confirmed']} confirmed, {a['rejected']} rejected, {a['not_located']} not "
          f"located, {a['not_adjudicated']} not adjudicated); audit log: {report['audit']['summary']}")
    if verification is not None and not verification.ok:
        print("edge-lfr report: the audit log does not verify; the report says so", file=sys.stderr)
        return TAMPERED_EXIT
    return 0


def _common(p, log: bool = True) -> None:
    p.add_argument("--config", help="the unit's YAML configuration (state folder, device key)")
    if log:
        p.add_argument("--log", help="audit log file (default: <unit.state_dir>/audit/audit.jsonl)")


def _key_options(p) -> None:
    p.add_argument("--unit-public", metavar="UNIT.unit.yaml",
                   help="check signatures with this unit's registered public key (default: the device key "
                        "named in --config)")
    p.add_argument("--head", help="the signed head file (default: audit.head.json beside the log)")
    p.add_argument("--no-signatures", action="store_true",
                   help="check hashes and links only (no key available); truncation and rewrites with "
                        "recomputed hashes are then not detected")


def add_commands(subparsers) -> None:
    s = subparsers.add_parser("audit", help="verify, show or purge the tamper-evident audit log",
                              description="The unit's append-only, hash-chained audit log with signed "
                              "checkpoints (docs/privacy.md).")
    asub = s.add_subparsers(dest="audit_command", metavar="ACTION")
    v = asub.add_parser("verify", help="check every hash, link and signature; name the first broken entry")
    _common(v)
    _key_options(v)
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.add_argument("--strict", action="store_true", help="also fail (exit 65) when entries follow the signed "
                   "head (an unsigned tail: nothing signed them); edge-lfr report always checks this way")
    v.set_defaults(func=cmd_verify)
    sh = asub.add_parser("show", help="print entries (ids and counts; never images)")
    _common(sh)
    sh.add_argument("--type", action="append", help="only entries of this type (repeatable)")
    sh.add_argument("--last", type=int, default=0, help="only the last N entries")
    sh.add_argument("--json", action="store_true", help="one JSON entry per line")
    sh.set_defaults(func=cmd_show)
    pu = asub.add_parser("purge", help="run the retention purge now (alerts, records, watchlist, audit entries)")
    _common(pu, log=False)
    pu.set_defaults(func=cmd_purge)
    s.set_defaults(func=lambda args: (s.print_help(), 2)[1])

    r = subparsers.add_parser("report", help="the post-deployment report (JSON + HTML with a plot) from the audit log",
                              description="Figures police forces publish after a deployment, computed from the "
                              "audit log: window, location, watchlist size by category, faces processed, faces "
                              "gated, alerts, confirmed and rejected alerts, threshold and calibrated FPIR, model, "
                              "bundle id.")
    _common(r)
    _key_options(r)
    r.add_argument("--out", required=True, help="folder for report.json and report.html")
    r.add_argument("--from", dest="start", help="window start (UTC, e.g. 2025-06-01T08:00:00Z)")
    r.add_argument("--to", dest="end", help="window end (UTC)")
    r.add_argument("--bundle", help="the deployment of this watchlist bundle id (default: the latest)")
    r.add_argument("--location", help="location label (default: privacy.location_label at the time)")
    r.add_argument("--no-verify", action="store_true", help="do not verify the audit log first")
    r.add_argument("--screenshot", metavar="PNG", help="also render the HTML to PNG with headless chromium")
    r.set_defaults(func=cmd_report)
