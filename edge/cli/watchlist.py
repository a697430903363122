"""``edge-lfr keys ...`` and ``edge-lfr watchlist ...``: keys, trust, and signed watchlist bundles.

Wired into :mod:`edge.cli.main` by ``add_commands(subparsers)``; every command returns an exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from edge.errors import InputError

KEYS_EPILOG = """\
examples:
  back office, once per issuer key (rotate yearly):
    edge-lfr keys issuer --name backoffice-2025 --out keys/ --passphrase-file pass.txt
  each unit, once (then send keys/van-07.unit.yaml to the back office):
    edge-lfr keys device --unit-id van-07 --out /etc/edge-lfr/
  each unit, trust the issuer key for a period; revoke a compromised key:
    edge-lfr keys trust add --issuer backoffice-2025.issuer.pub.yaml \\
        --valid-from 2025-01-01T00:00:00Z --valid-until 2026-01-01T00:00:00Z --trust /etc/edge-lfr/trust.yaml
    edge-lfr keys trust revoke 3f1c9a0b --note "laptop stolen 2025-03-02" --trust /etc/edge-lfr/trust.yaml
    edge-lfr keys trust list --trust /etc/edge-lfr/trust.yaml

exit codes: 0 ok, 66 key file missing or malformed, 77 wrong or missing passphrase, 78 bad trust file
"""

WATCHLIST_EPILOG = """\
examples:
  back office: enrol images and write one bundle for two vans
    edge-lfr watchlist build --images enrol/ --manifest op-123.csv \\
        --issuer-key keys/backoffice-2025.issuer.key --passphrase-file pass.txt \\
        --unit units/van-07.unit.yaml --unit units/van-08.unit.yaml \\
        --operation-id OP-123 --authorising-officer "Supt J Smith 4411" \\
        --valid-from 2025-06-01T08:00:00Z --valid-until 2025-06-01T20:00:00Z \\
        --out op-123.edgewl --report op-123-report.json
  on the unit (paths from --config, section unit):
    edge-lfr watchlist inspect op-123.edgewl --config /etc/edge-lfr/unit.yaml
    edge-lfr watchlist verify  op-123.edgewl --config /etc/edge-lfr/unit.yaml
    edge-lfr watchlist load    op-123.edgewl --config /etc/edge-lfr/unit.yaml
    edge-lfr watchlist status  --config /etc/edge-lfr/unit.yaml
    edge-lfr watchlist wipe    --config /etc/edge-lfr/unit.yaml

exit codes: 0 ok; 65 damaged, malformed, over a limit, wrong model, or enrolment failed;
66 key file missing; 74 unit state damaged; 75 not valid yet; 77 refused by trust policy
(signature, issuer key, other unit, expired, rollback); 78 bad configuration or trust file
"""


def _say(*parts) -> None:
    print(*parts, flush=True)


# --------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------


def _trust_path(args) -> str:
    if args.trust:
        return args.trust
    from edge.config import load_config
    return load_config(args.config).unit.trust_file


def cmd_keys_issuer(args) -> int:
    from edge.watchlist.keys import generate_issuer, read_passphrase, save_issuer
    key = generate_issuer(args.name)
    priv, pub = save_issuer(key, args.out, read_passphrase(args.passphrase_file))
    _say(f"issuer key {key.name}: key id {key.key_id}")
    _say(f"  private (0600{', passphrase-protected' if args.passphrase_file else ', NOT passphrase-protected'}): {priv}")
    _say(f"  public (for units' trust files): {pub}")
    return 0


def cmd_keys_device(args) -> int:
    from edge.watchlist.keys import generate_device, read_passphrase, save_device
    key = generate_device(args.unit_id)
    priv, pub = save_device(key, args.out, read_passphrase(args.passphrase_file), args.key_name)
    _say(f"device key of unit {key.unit_id}: key id {key.key_id}")
    _say(f"  private (0600{', passphrase-protected' if args.passphrase_file else ''}): {priv}")
    _say(f"  registration (give to the back office): {pub}")
    return 0


def _load_or_new_trust(path: str):
    from edge.watchlist.keys import TrustStore, load_trust
    return load_trust(path) if Path(path).exists() else TrustStore((), path)


def cmd_trust_add(args) -> int:
    from edge.utc import format_utc, parse_utc
    from edge.watchlist.keys import load_issuer_public, save_trust, trusted_key
    path = _trust_path(args)
    pub = load_issuer_public(args.issuer)
    vf = parse_utc(args.valid_from, "--valid-from")
    vu = parse_utc(args.valid_until, "--valid-until")
    store = _load_or_new_trust(path).with_key(trusted_key(pub, vf, vu, args.note or ""))
    save_trust(store, path)
    _say(f"{path}: now trusts {pub.name} ({pub.key_id[:16]}…) from {format_utc(vf)} until {format_utc(vu)}")
    return 0


def cmd_trust_revoke(args) -> int:
    from edge.watchlist.keys import load_trust, save_trust
    path = _trust_path(args)
    store = load_trust(path)
    key = store.find(args.key_id)
    save_trust(store.revoked(key.key_id, args.note or ""), path)
    _say(f"{path}: revoked {key.name} ({key.key_id[:16]}…); bundles it signed are refused from now on")
    return 0


def cmd_trust_list(args) -> int:
    from edge.utc import format_utc
    from edge.watchlist.keys import load_trust
    path = _trust_path(args)
    store = load_trust(path)
    now = int(time.time())
    _say(f"{path}: {len(store.keys)} issuer key(s)")
    for k in store.keys:
        state = k.problem(now) or "usable now"
        _say(f"  {k.key_id[:16]}…  {k.name:24s} {format_utc(k.valid_from)} .. {format_utc(k.valid_until)}  {state}")
    return 0


# --------------------------------------------------------------------------------------
# watchlist: back office
# --------------------------------------------------------------------------------------


def cmd_build(args) -> int:
    from edge.atomicfile import atomic_write
    from edge.config import load_config
    from edge.recognition.api import Recognizer
    from edge.utc import format_utc, parse_utc
    from edge.watchlist.bundle import Limits, make_bundle
    from edge.watchlist.enrol import EnrolmentError, ManifestError, enrol, read_manifest
    from edge.watchlist.keys import load_issuer_key, load_unit_public, read_passphrase

    cfg = load_config(args.config)
    limits = Limits.from_config(cfg)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError(f"{out} already exists (use --force to replace it)")
    now = int(time.time())
    vf = parse_utc(args.valid_from, "--valid-from")
    vu = parse_utc(args.valid_until, "--valid-until")
    if vu <= vf:
        raise InputError("--valid-until must be after --valid-from")
    if vu <= now:
        raise InputError(f"--valid-until {format_utc(vu)} is already past; the bundle would be refused")
    if vu - vf > limits.max_validity_seconds:
        raise InputError(f"validity window {(vu - vf) / 3600:.1f} h is longer than watchlist.max_validity_hours "
                         f"{limits.max_validity_seconds // 3600}")
    serial = args.serial if args.serial is not None else now
    if serial < 1:
        raise InputError("--serial must be >= 1")

    subjects = read_manifest(args.manifest)
    if len(subjects) > limits.max_subjects:
        raise ManifestError(f"{args.manifest}: {len(subjects):,} subjects, over watchlist.max_subjects "
                            f"{limits.max_subjects:,}")
    for s in subjects:
        if len(s.images) > limits.max_templates_per_subject:
            raise ManifestError(f"{s.where}: subject {s.id!r} lists {len(s.images)} images, over "
                                f"watchlist.max_templates_per_subject {limits.max_templates_per_subject}")
    issuer = load_issuer_key(args.issuer_key, read_passphrase(args.passphrase_file))
    units = [load_unit_public(u) for u in args.unit]

    rec = Recognizer(cfg)
    model_sha = rec.embedder_sha256
    t0 = time.perf_counter()
    result = enrol(subjects, args.images, rec, cfg, progress=not args.quiet)
    t_enrol = time.perf_counter() - t0
    report = result.report()
    rejected = report["rejected"]
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    if rejected and args.strict:
        if args.report:
            atomic_write(args.report, json.dumps({"enrolment": report}, indent=2).encode(), 0o600)
        raise EnrolmentError(f"{rejected} image(s) rejected and --strict given; no bundle written "
                             f"(by reason: {_reasons(report)})")
    if not result.subjects:
        raise EnrolmentError(f"no subject could be enrolled: all {report['images']} images were rejected "
                             f"({_reasons(report)})")
    t1 = time.perf_counter()
    data, manifest = make_bundle(subjects=result.subjects, embeddings=result.embeddings,
                                 thumbnails=result.thumbnails, issuer=issuer, recipients=units, serial=serial,
                                 operation_id=args.operation_id, authorising_officer=args.authorising_officer,
                                 valid_from=vf, valid_until=vu, model_sha256=model_sha, issued_at=now, limits=limits)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, data, 0o600)
    t_write = time.perf_counter() - t1
    summary = manifest.summary()
    if args.report:
        atomic_write(args.report, json.dumps({"bundle": {**summary, "file": str(out), "bytes": len(data)},
                                              "enrolment": report}, indent=2).encode(), 0o600)
    _say(f"wrote {out}: {len(data):,} bytes, serial {manifest.serial}, bundle id {manifest.bundle_id}")
    _say(f"  subjects {summary['subjects']:,} ({_cats(summary)}), templates {summary['templates']:,}")
    single = sum(1 for e in result.subjects if len(e.sources) == 1)
    if single:  # every accepted photo is a template and the unit fuses them: more photos, fewer misses
        _say(f"  {single:,} subject(s) enrolled from one photo only: supply two or more where you have them "
             f"(the unit fuses every photo of a subject; docs/watchlist.md has the measured gain)")
    _say(f"  images {report['images']:,}: accepted {report['accepted']:,}, rejected {rejected:,} ({_reasons(report)})")
    if report["subjects_not_enrolled"]:
        ids = report["subjects_not_enrolled"]
        _say(f"  NOT enrolled (no usable image): {len(ids)}: {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}")
    _say(f"  for units {', '.join(u.unit_id for u in units)}; valid {summary['valid_from']} .. {summary['valid_until']}")
    _say(f"  enrolment {t_enrol:.1f} s, sign+encrypt+write {t_write:.1f} s"
         + (f"; report {args.report}" if args.report else ""))
    return 0


def _reasons(report: dict) -> str:
    parts = [f"{k} {v}" for k, v in report["rejected_by_reason"].items() if v]
    return ", ".join(parts) or "none"


def _cats(summary: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in summary["by_category"].items())


# --------------------------------------------------------------------------------------
# watchlist: unit
# --------------------------------------------------------------------------------------


def _unit_config(args):
    from edge.config import load_config, validate
    from edge.errors import UsageError
    if args.config is None and not (args.unit_id and args.device_key and args.trust and args.state_dir):
        raise UsageError(f"watchlist {getattr(args, 'watchlist_command', '') or ''}: give --config FILE (the unit's configuration, "
                         "e.g. --config /etc/edge-lfr/unit.yaml), or all of --unit-id, --device-key, --trust "
                         "and --state-dir")
    cfg = load_config(args.config).as_dict()
    over = {"id": args.unit_id, "device_key": args.device_key, "trust_file": args.trust,
            "state_dir": args.state_dir, "device_key_passphrase_file": args.passphrase_file}
    cfg["unit"].update({k: v for k, v in over.items() if v is not None})
    return validate(cfg)


def _unit(args, need_model: bool = True):
    from edge.recognition.api import embedder_sha256
    from edge.watchlist.unit import UnitWatchlist
    cfg = _unit_config(args)
    return UnitWatchlist(cfg, model_sha256=embedder_sha256(cfg) if need_model else "")


def _print_bundle(path: str, bundle, results) -> None:
    s = bundle.manifest.summary()
    k = bundle.signer
    from edge.utc import format_utc
    _say(f"bundle       {path} ({bundle.file_size:,} bytes, sha256 {bundle.file_sha256[:16]}…)")
    _say(f"signed by    {k.name} (key {k.key_id[:16]}…), trusted {format_utc(k.valid_from)} .. "
         f"{format_utc(k.valid_until)}{' REVOKED' if k.revoked else ''}")
    _say(f"bundle id    {s['bundle_id']}  serial {s['serial']}  issued {s['issued_at']}")
    _say(f"operation    {s['operation_id']}  authorised by {s['authorising_officer']}")
    _say(f"valid        {s['valid_from']} .. {s['valid_until']}")
    _say(f"for units    {', '.join(s['target_units'])}")
    _say(f"model        sha256 {s['model_sha256']}")
    _say(f"subjects     {s['subjects']:,} ({_cats(s)}); templates {s['templates']:,}; thumbnails {s['thumbnails']:,}")
    _say("checks")
    for name, ok, msg, _ in results:
        _say(f"  {'ok  ' if ok else 'FAIL'}  {name:22s} {msg}")


def _json_report(path: str, bundle, results) -> dict:
    return {"file": path, "bytes": bundle.file_size, "sha256": bundle.file_sha256,
            "signer": {"name": bundle.signer.name, "key_id": bundle.signer.key_id, "revoked": bundle.signer.revoked},
            **bundle.manifest.summary(),
            "checks": [{"check": n, "ok": ok, "message": m, "error": type(e).__name__ if e else None}
                       for n, ok, m, e in results]}


def _inspect_common(args, strict: bool) -> int:
    from edge.watchlist.bundle import read_file_limited
    from edge.watchlist.envelope import parse_envelope
    from edge.watchlist.keys import KeyFileError
    unit = _unit(args)
    data = read_file_limited(args.bundle, unit.limits)
    try:
        bundle, results = unit.inspect(data)
    except KeyFileError as exc:
        env = parse_envelope(data)
        _say(f"bundle       {args.bundle} ({len(data):,} bytes), encrypted to unit(s) {', '.join(env.unit_ids)}")
        _say(f"cannot open it here: {exc}")
        return exc.exit_code
    if args.json:
        print(json.dumps(_json_report(args.bundle, bundle, results), indent=2))
    else:
        _print_bundle(args.bundle, bundle, results)
    failed = [e for _, ok, _, e in results if not ok]
    if strict and failed:
        print(f"edge-lfr: error: {failed[0]}", file=sys.stderr)
        return failed[0].exit_code
    if not args.json:
        _say("verdict      " + ("would be ACCEPTED by this unit" if not failed else
                                f"would be REFUSED by this unit ({len(failed)} check(s) failed)"))
    return 0


def cmd_inspect(args) -> int:
    return _inspect_common(args, strict=False)


def cmd_verify(args) -> int:
    return _inspect_common(args, strict=True)


def _audit_refusal(unit, exc: BaseException, source: str) -> None:
    """A refused ``watchlist load`` goes to the unit's audit log (docs/privacy.md); when the log
    itself cannot be written (no device key, say), the refusal is still reported on stderr."""
    from edge.privacy.audit import AuditLog
    try:
        AuditLog.from_config(unit.config, device_key=unit.device_key).bundle_refused(exc, source)
    except Exception as audit_exc:  # the refusal itself is what the user must see
        print(f"edge-lfr: warning: the refusal could not be written to the audit log: {audit_exc}", file=sys.stderr)


def cmd_load(args) -> int:
    from edge.errors import EdgeError
    unit = _unit(args)
    try:
        live = unit.load(args.bundle)
    except (EdgeError, OSError) as exc:
        _audit_refusal(unit, exc, f"edge-lfr watchlist load {str(args.bundle)[:150]}")
        raise
    s = live.manifest.summary()
    _say(f"loaded {args.bundle}: serial {s['serial']}, operation {s['operation_id']}, {s['subjects']:,} subjects "
         f"({_cats(s)}), valid until {s['valid_until']}")
    if not live.clock_verified:
        _say("WARNING: this unit has no trustworthy clock (watchlist.trusted_clock: false): the validity window "
             "was NOT verified; the list stops at most "
             f"{(live.manifest.valid_until - live.manifest.issued_at) / 3600:.1f} h from now and is not kept across a restart")
    _say(f"stored in {unit.dir}; a running recognition service picks it up on its next poll")
    return 0


def cmd_wipe(args) -> int:
    unit = _unit(args, need_model=False)
    had = unit.wipe(args.reason)
    _say(f"watchlist {'wiped' if had else 'was already absent'}; state in {unit.dir} (last serial kept)")
    return 0


def cmd_status(args) -> int:
    unit = _unit(args, need_model=False)
    unit.enforce_expiry()
    st = unit.status()
    st.pop("live_in_this_process", None)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    for k, v in st.items():
        _say(f"{k:14s} {v}")
    return 0


# --------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------


def _unit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML configuration file (section unit names the key, trust and state paths)")
    g = p.add_argument_group("overrides of the config's unit section")
    g.add_argument("--unit-id", help="this unit's id (unit.id)")
    g.add_argument("--device-key", help="this unit's private key file (unit.device_key)")
    g.add_argument("--passphrase-file", help="file with the device key's passphrase (unit.device_key_passphrase_file)")
    g.add_argument("--trust", help="trust file (unit.trust_file)")
    g.add_argument("--state-dir", help="state folder (unit.state_dir)")


def add_commands(subparsers) -> None:
    """Register ``keys`` and ``watchlist`` on an argparse subparsers object."""
    fmt = argparse.RawDescriptionHelpFormatter

    k = subparsers.add_parser("keys", help="make issuer and device keys; manage a unit's trust file",
                              description="Ed25519 issuer keys sign watchlist bundles; each unit has an X25519 "
                              "device key that bundles are encrypted to. A unit's trust file lists the issuer "
                              "keys it accepts, each with a validity window, so keys rotate and can be revoked.",
                              epilog=KEYS_EPILOG, formatter_class=fmt)
    ks = k.add_subparsers(dest="keys_command", metavar="KIND")
    p = ks.add_parser("issuer", help="new issuer (signing) key pair", epilog=KEYS_EPILOG, formatter_class=fmt)
    p.add_argument("--name", required=True, help="key name, e.g. backoffice-2025")
    p.add_argument("--out", required=True, help="folder for NAME.issuer.key (0600) and NAME.issuer.pub.yaml")
    p.add_argument("--passphrase-file", help="protect the private key with the passphrase in this file (recommended)")
    p.set_defaults(func=cmd_keys_issuer)
    p = ks.add_parser("device", help="new device key pair for one unit", epilog=KEYS_EPILOG, formatter_class=fmt)
    p.add_argument("--unit-id", required=True, help="the unit's id (letters, digits, '-', '_')")
    p.add_argument("--out", required=True, help="folder for the private key (0600) and UNIT.unit.yaml")
    p.add_argument("--key-name", default="device.key", help="private key file name (default: %(default)s)")
    p.add_argument("--passphrase-file", help="protect the private key with the passphrase in this file")
    p.set_defaults(func=cmd_keys_device)
    t = ks.add_parser("trust", help="add, revoke or list trusted issuer keys", epilog=KEYS_EPILOG, formatter_class=fmt)
    ts = t.add_subparsers(dest="trust_command", metavar="ACTION")
    for name, hlp, fn in (("add", "trust an issuer public key for a period", cmd_trust_add),
                          ("revoke", "revoke a trusted key (by id prefix, >= 8 hex digits)", cmd_trust_revoke),
                          ("list", "list trusted keys and whether each is usable now", cmd_trust_list)):
        p = ts.add_parser(name, help=hlp, epilog=KEYS_EPILOG, formatter_class=fmt)
        p.add_argument("--trust", help="trust file (default: the config's unit.trust_file)")
        p.add_argument("--config", help="YAML configuration file")
        if name == "add":
            p.add_argument("--issuer", required=True, help="issuer public key file (NAME.issuer.pub.yaml)")
            p.add_argument("--valid-from", required=True, help="UTC time, e.g. 2025-01-01T00:00:00Z, or 'now'")
            p.add_argument("--valid-until", required=True, help="UTC time, e.g. 2026-01-01T00:00:00Z")
            p.add_argument("--note", help="free text kept in the trust file")
        if name == "revoke":
            p.add_argument("key_id", help="key id or a unique prefix of it")
            p.add_argument("--note", help="why (kept in the trust file and shown in refusals)")
        p.set_defaults(func=fn)

    w = subparsers.add_parser("watchlist", help="build, inspect, verify, load and wipe signed watchlist bundles",
                              description="A bundle is one operation's watchlist: enrolment embeddings, "
                              "thumbnails and a manifest signed by the issuer, encrypted to the target units, "
                              "with a validity window and a serial that never goes back.",
                              epilog=WATCHLIST_EPILOG, formatter_class=fmt)
    ws = w.add_subparsers(dest="watchlist_command", metavar="ACTION")
    p = ws.add_parser("build", help="enrol images and write a signed, encrypted bundle (back office)",
                      epilog=WATCHLIST_EPILOG, formatter_class=fmt,
                      description="Runs every image through the unit's own detector, quality gate and "
                      "embedder; unusable images are rejected with a reason (see --report), never enrolled.")
    p.add_argument("--images", required=True, help="folder of enrolment images (manifest paths are relative to it)")
    p.add_argument("--manifest", required=True, help="CSV or YAML: subject id, category, reason code, image, source")
    p.add_argument("--issuer-key", required=True, help="issuer private key file (NAME.issuer.key)")
    p.add_argument("--passphrase-file", help="passphrase of the issuer key")
    p.add_argument("--unit", required=True, action="append", help="target unit registration UNIT.unit.yaml (repeat)")
    p.add_argument("--operation-id", required=True, help="operation identifier")
    p.add_argument("--authorising-officer", required=True, help="reference of the authorising officer")
    p.add_argument("--valid-from", default="now", help="UTC start, e.g. 2025-06-01T08:00:00Z (default: now)")
    p.add_argument("--valid-until", required=True, help="UTC end, e.g. 2025-06-01T20:00:00Z")
    p.add_argument("--serial", type=int, help="bundle serial; must exceed every serial the units accepted "
                   "(default: the current Unix time)")
    p.add_argument("--out", required=True, help="bundle file to write (mode 0600)")
    p.add_argument("--report", help="JSON report: per-image verdicts and reasons, bundle summary")
    p.add_argument("--config", help="YAML configuration file (the units' detector/quality settings)")
    p.add_argument("--strict", action="store_true", help="fail (write nothing) if any image is rejected")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_build)
    for name, hlp, fn in (
            ("inspect", "show who signed a bundle, for which units and operation, validity, counts (never embeddings)",
             cmd_inspect),
            ("verify", "run every check a load makes, without loading; exit code names the first failure", cmd_verify),
            ("load", "verify and load a bundle on this unit (the old list stays if anything fails)", cmd_load)):
        p = ws.add_parser(name, help=hlp, epilog=WATCHLIST_EPILOG, formatter_class=fmt)
        p.add_argument("bundle", help="bundle file")
        if name != "load":
            p.add_argument("--json", action="store_true", help="machine-readable output")
        _unit_options(p)
        p.set_defaults(func=fn)
    p = ws.add_parser("wipe", help="stop matching and delete the unit's watchlist now", epilog=WATCHLIST_EPILOG,
                      formatter_class=fmt)
    p.add_argument("--reason", default="wiped on demand", help="recorded in the unit's state")
    _unit_options(p)
    p.set_defaults(func=cmd_wipe)
    p = ws.add_parser("status", help="the unit's watchlist state (deletes an expired list)", epilog=WATCHLIST_EPILOG,
                      formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _unit_options(p)
    p.set_defaults(func=cmd_status)
    for parser in (k, w, t):
        parser.set_defaults(func=_help_of(parser))


def _help_of(parser):
    def show(args) -> int:
        parser.print_help()
        return 2
    return show
