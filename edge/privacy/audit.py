"""The unit's tamper-evident audit log: append-only, hash-chained, with checkpoints signed by the unit.

What is recorded (one JSON object per line in ``<unit.state_dir>/audit/audit.jsonl``), and
nothing else: service start and stop (with the sha256 of the configuration in force), a
watchlist bundle loaded (its id, serial, operation, size by category) or refused (and why), the
watchlist deleted (and why), each alert emitted (event id, subject id, category, score,
threshold; **never an image**), each adjudication received, each retention purge (what was
deleted, counts), errors, and a periodic **counts** entry (frames, faces processed, faces gated
by the quality gate by reason, alerts: numbers only). The deployment report
(:mod:`edge.privacy.report`) is computed from these entries.

An entry::

    {"seq": 17, "t": "2025-06-15T15:06:40.123Z", "type": "alert", "data": {...},
     "prev": "<hash of entry 16>", "hash": "<sha256 of this entry>"}

``hash = sha256(b"edge-lfr audit entry v1\\n" + canonical JSON of {seq, t, type, data, prev})``;
the first entry's ``prev`` is 64 zeros. Changing, removing, moving or adding a line therefore
breaks a link that :func:`verify` finds and names (line, seq, kind).

Signatures (Ed25519 with the unit's device key, :class:`edge.watchlist.keys.DeviceKey`):

* a **checkpoint** entry every ``privacy.audit_checkpoint_entries`` entries, at every service
  stop and on demand: the unit's signature over the entry (its seq, time and ``prev``, so over
  the whole chain before it). Someone who rewrites the chain and recomputes every hash still
  cannot sign, so the next checkpoint no longer verifies;
* the **head** file (``audit.head.json``), rewritten after every append: the signed seq and hash
  of the last entry, so removing entries from the end is detected too;
* an **audit_trim** entry when entries older than ``privacy.audit_retention_days`` are purged
  (:meth:`AuditLog.trim`): it signs the seq and ``prev`` of the first entry kept, so the log still
  verifies from there, and a prefix removed by anyone else (no signed trim) is detected.

Appends are serialised between threads (a lock) and between processes (``flock`` on
``audit/.lock``), written with one ``write`` on an ``O_APPEND`` descriptor and fsynced before
the head is updated. A line torn by a crash is cut off at the next open and the repair itself
is logged. A trim writes the kept entries to a temporary file and renames it over the log:
a crash leaves the old log or the new one, never a mix.

The data of an entry is checked before it is written: numbers, booleans, short strings
(at most :data:`MAX_STRING` characters) and small lists/maps of them, nothing else - a face
crop (kilobytes of base64) or an embedding (128 numbers) cannot be written by mistake.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import math
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.atomicfile import atomic_write
from edge.encoding import b64encode, canonical_json
from edge.errors import EdgeError
from edge.readfile import open_regular, read_regular
from edge.utc import format_utc_ms, parse_utc_ms
from edge.watchlist.keys import device_key_from_config

log = logging.getLogger(__name__)

__all__ = ["AuditLog", "AuditError", "Problem", "Verification", "verify", "read_entries", "entry_hash",
           "config_sha256", "public_key_from_config", "public_key_raw", "GENESIS", "TYPES",
           "DIRNAME", "FILENAME", "HEAD_FILENAME"]

DIRNAME = "audit"
FILENAME = "audit.jsonl"
HEAD_FILENAME = "audit.head.json"
GENESIS = "0" * 64
VERSION = 1
_ENTRY_DOMAIN = b"edge-lfr audit entry v1\n"
_SIG_DOMAIN = b"edge-lfr audit signature v1\n"
_HEAD_DOMAIN = b"edge-lfr audit head v1\n"

#: Every entry type the unit writes. ``checkpoint`` and ``audit_trim`` are signed.
TYPES = ("service_start", "service_stop", "bundle_loaded", "bundle_refused", "watchlist_deleted", "alert",
         "alert_failed", "adjudication", "purge", "error", "counts", "checkpoint", "audit_trim", "log_repaired",
         "adjudication_rejected", "segment")
#: ``segment``: the unit found a tail it did not write (or damage) and starts a new signed segment
SIGNED = ("checkpoint", "audit_trim", "segment")

MAX_STRING = 512          # characters: a JPEG crop in base64 is kilobytes, an id is < 130
MAX_ITEMS = 64            # per list / map
MAX_DEPTH = 3
MAX_LINE = 16384          # bytes: a line longer than this is not an entry this module wrote
MAX_LOG_BYTES = 1 << 30   # a log larger than this (31 days of entries are far less) is refused unread

#: Kinds of problem :func:`verify` reports.
KINDS = ("malformed", "edited", "deleted", "reordered", "inserted", "truncated", "bad_signature",
         "head_missing", "torn", "unsigned_tail")


class AuditError(EdgeError):
    """The audit log cannot be written or read as asked (the message says why)."""

    exit_code = 74  # EX_IOERR




def _line(e: Mapping[str, Any]) -> bytes:
    """One line of the file: the fields in reading order (the hash does not depend on it)."""
    ordered = {k: e[k] for k in ("seq", "t", "type", "data", "prev", "hash")}
    ordered["data"] = json.loads(canonical_json(e["data"]))
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii") + b"\n"


def entry_hash(entry: Mapping[str, Any]) -> str:
    body = {k: entry[k] for k in ("seq", "t", "type", "data", "prev")}
    return hashlib.sha256(_ENTRY_DOMAIN + canonical_json(body)).hexdigest()


def _sig_message(entry: Mapping[str, Any]) -> bytes:
    data = {k: v for k, v in entry["data"].items() if k != "sig"}
    body = {"seq": entry["seq"], "t": entry["t"], "type": entry["type"], "prev": entry["prev"], "data": data}
    return _SIG_DOMAIN + canonical_json(body)


def _head_message(head: Mapping[str, Any]) -> bytes:
    return _HEAD_DOMAIN + canonical_json({k: head[k] for k in ("seq", "hash", "t", "unit_id")})


def public_key_raw(key) -> bytes:
    """Raw 32-byte Ed25519 public key of a DeviceKey, an Ed25519 private or public key, or raw bytes."""
    if isinstance(key, (bytes, bytearray)):
        if len(key) != 32:
            raise AuditError("an Ed25519 public key is 32 bytes")
        return bytes(key)
    ed = getattr(key, "ed25519", key)  # DeviceKey / UnitPublic
    if isinstance(ed, (bytes, bytearray)):
        return bytes(ed)
    if isinstance(ed, Ed25519PrivateKey):
        ed = ed.public_key()
    if isinstance(ed, Ed25519PublicKey):
        return ed.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise AuditError(f"not an Ed25519 key: {type(key).__name__}")


def signer_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


def config_sha256(cfg) -> str:
    """sha256 of the validated configuration (canonical JSON): what the service ran with."""
    values = cfg.as_dict() if hasattr(cfg, "as_dict") else dict(cfg)
    return hashlib.sha256(canonical_json(values)).hexdigest()


def public_key_from_config(cfg) -> bytes:
    """The unit's Ed25519 public key, from its device key file (``unit.device_key``)."""
    return public_key_raw(device_key_from_config(cfg))


def _check_data(value: Any, path: str = "data", depth: int = 0) -> None:
    """Only small, plain values: numbers, booleans, None, short strings, small lists and maps."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > 2 ** 63:
            raise AuditError(f"{path}: integer out of range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditError(f"{path}: not a finite number")
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise AuditError(f"{path}: a string of {len(value)} characters (at most {MAX_STRING}): the audit log "
                             "holds ids and counts, never images or embeddings")
        return
    if depth >= MAX_DEPTH:
        raise AuditError(f"{path}: nested deeper than {MAX_DEPTH}")
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            raise AuditError(f"{path}: a list of {len(value)} items (at most {MAX_ITEMS}): the audit log holds "
                             "ids and counts, never embeddings")
        for i, v in enumerate(value):
            _check_data(v, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        if len(value) > MAX_ITEMS:
            raise AuditError(f"{path}: a map of {len(value)} keys (at most {MAX_ITEMS})")
        for k, v in value.items():
            if not isinstance(k, str) or len(k) > 64:
                raise AuditError(f"{path}: keys must be strings of at most 64 characters")
            _check_data(v, f"{path}.{k}", depth + 1)
        return
    raise AuditError(f"{path}: {type(value).__name__} cannot be written to the audit log (numbers, booleans, "
                     "short strings and small lists/maps only)")


def _plain(value: Any) -> Any:
    """numpy scalars and tuples to plain JSON values (before the check)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_line(raw: bytes) -> tuple[dict | None, str | None]:
    """(entry, None) for a line that has the shape of an entry; (None, why) for anything else:
    not JSON, NaN / Infinity, nested too deeply, too long, not an entry. Never raises."""
    if len(raw) > MAX_LINE:
        return None, "longer than any entry"
    try:
        e = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        return None, "nested too deeply"
    except (ValueError, UnicodeDecodeError) as exc:
        return None, "not JSON" if not str(exc).endswith("not a JSON number") else str(exc)
    why = _well_formed(e)
    if why:
        return None, why
    try:
        canonical_json(e["data"])                 # what the hash is computed over must encode
    except (ValueError, TypeError, RecursionError):
        return None, "data cannot be encoded"
    return e, None


def open_log(path: str | os.PathLike):
    """The audit file opened for reading (a regular file only: a FIFO would hang), or None when
    it does not exist. Raises AuditError naming anything else."""
    p = Path(path)
    if not os.path.lexists(p):
        return None
    fd = open_regular(p, "audit log", AuditError)
    return os.fdopen(fd, "rb")


def read_entries(path: str | os.PathLike) -> Iterator[dict]:
    """Every well-formed entry of an audit file, in file order (no verification: see
    :func:`verify`). Lines that are not entries (damaged, NaN, deep nesting) are skipped."""
    f = open_log(path)
    if f is None:
        return
    with f:
        for raw in f:
            if not raw.endswith(b"\n"):
                continue
            e, _ = parse_line(raw[:-1])
            if e is not None:
                yield e


def _well_formed(e: Any) -> str | None:
    """None when ``e`` has the shape of an entry, else what is wrong."""
    if not isinstance(e, dict):
        return "not a JSON object"
    if set(e) != {"seq", "t", "type", "data", "prev", "hash"}:
        return f"fields {sorted(map(str, e))} are not those of an entry"
    if not isinstance(e["seq"], int) or isinstance(e["seq"], bool) or e["seq"] < 1:
        return "seq is not a positive integer"
    if not isinstance(e["type"], str) or not isinstance(e["data"], dict):
        return "type or data has the wrong type"
    for k in ("prev", "hash"):
        if not isinstance(e[k], str) or len(e[k]) != 64:
            return f"{k} is not a sha256"
    if not isinstance(e["t"], str):
        return "t is not a time"
    try:
        parse_utc_ms(e["t"])
    except ValueError:
        return "t is not a time"
    return None


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    kind: str          # one of KINDS
    line: int | None   # 1-based line in the file (None: about the file as a whole)
    seq: int | None    # the entry's seq where known
    message: str

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        return f"{self.kind} at {', '.join(where) or 'end of log'}: {self.message}"


@dataclass
class Verification:
    path: str
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_time: str | None = None
    last_time: str | None = None
    checkpoints: int = 0
    trims: int = 0
    signatures_checked: bool = False
    head_seq: int | None = None
    #: seqs of the entries after the one the signed head names: nothing signed them (an append
    #: cut short by a crash before the head was rewritten, or entries added by someone without
    #: the key). Reported always; a problem with ``strict``.
    unsigned_tail: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "entries": self.entries, "first_seq": self.first_seq,
                "last_seq": self.last_seq, "first_time": self.first_time, "last_time": self.last_time,
                "checkpoints": self.checkpoints, "trims": self.trims,
                "signatures_checked": self.signatures_checked, "head_seq": self.head_seq,
                "signed_through_seq": self.head_seq, "unsigned_tail": list(self.unsigned_tail),
                "problems": [{"kind": p.kind, "line": p.line, "seq": p.seq, "message": p.message}
                             for p in self.problems]}

    def summary(self) -> str:
        if self.ok:
            span = "" if not self.entries else f" (seq {self.first_seq}..{self.last_seq}, {self.first_time} .. " \
                                               f"{self.last_time})"
            sig = "" if self.signatures_checked else "; signatures NOT checked (no public key given)"
            tail = ""
            if self.unsigned_tail:
                tail = (f"; UNSIGNED TAIL: {len(self.unsigned_tail)} entr{'y' if len(self.unsigned_tail) == 1 else 'ies'}"
                        f" after the signed head (seq {self.unsigned_tail[0]}..{self.unsigned_tail[-1]}) are not "
                        "signed by the unit")
            return (f"audit log intact: {self.entries} entries{span}, {self.checkpoints} signed checkpoint(s), "
                    f"signed through seq {self.head_seq}{sig}{tail}")
        return f"audit log TAMPERED or damaged: {len(self.problems)} problem(s); first: {self.problems[0]}"


def _check_sig(entry: dict, public: Ed25519PublicKey | None, expected_signer: str | None) -> str | None:
    """None if the signed entry verifies; else why not. Without a key only the shape is checked."""
    data = entry["data"]
    sig = data.get("sig")
    if not isinstance(sig, str):
        return "no signature"
    if public is None:
        return None
    if data.get("signer") != expected_signer:
        return f"signed by key {str(data.get('signer'))[:16]}…, not by this unit's key {expected_signer[:16]}…"
    try:
        public.verify(base64.b64decode(sig, validate=True), _sig_message(entry))
    except (InvalidSignature, ValueError):
        return "the signature does not verify"
    return None


def verify(path: str | os.PathLike, public_key=None, head_path: str | os.PathLike | None = None, *,
           strict: bool = False) -> Verification:
    """Check an audit log: every hash, every link, every signature (with ``public_key``: the
    unit's Ed25519 public key, raw or as a key object), the start (genesis, or a signed trim
    record naming the first entry kept) and the end (the signed head). Each problem names its
    kind (:data:`KINDS`), line and seq."""
    p = Path(path)
    head_path = Path(head_path) if head_path is not None else p.with_name(HEAD_FILENAME)
    res = Verification(str(p))
    pub = None
    expected_signer = None
    if public_key is not None:
        raw = public_key_raw(public_key)
        pub = Ed25519PublicKey.from_public_bytes(raw)
        expected_signer = signer_id(raw)
        res.signatures_checked = True
    f = open_log(p)
    if f is None:
        blob = None
    else:
        with f:
            blob = f.read(MAX_LOG_BYTES + 1)
        if len(blob) > MAX_LOG_BYTES:
            raise AuditError(f"{p}: larger than {MAX_LOG_BYTES:,} bytes; not this unit's audit log")
    add = res.problems.append

    lines: list[tuple[int, dict]] = []        # (line number, entry) for well-formed lines
    if blob:
        raw_lines = blob.split(b"\n")
        torn = raw_lines.pop()                # after the last "\n": b"" unless torn
        for n, raw_line in enumerate(raw_lines, 1):
            e, why = parse_line(raw_line)
            if why:
                add(Problem("malformed", n, None, f"not an audit entry ({why}): edited or damaged"))
                continue
            lines.append((n, e))
        if torn:
            add(Problem("torn", len(raw_lines) + 1, None, f"{len(torn)} bytes without a line end: an append "
                        "interrupted by a crash (cut off at the next open), or an edit"))

    by_hash: dict[str, int] = {}
    for i, (_, e) in enumerate(lines):
        by_hash.setdefault(e["hash"], i)
    referenced = {e["prev"] for _, e in lines}
    seq_count: dict[int, int] = {}
    for _, e in lines:
        seq_count[e["seq"]] = seq_count.get(e["seq"], 0) + 1

    # -- the start: genesis, or the last signed trim record ------------------------------
    if lines:
        n0, e0 = lines[0]
        trims = [(n, e) for n, e in lines if e["type"] == "audit_trim"]
        if e0["seq"] == 1 and e0["prev"] == GENESIS:
            pass
        elif e0["prev"] in by_hash:
            j = by_hash[e0["prev"]]
            add(Problem("reordered", n0, e0["seq"], f"the first line follows seq {lines[j][1]['seq']}, which comes "
                        f"later, at line {lines[j][0]}: entries were moved"))
        elif not trims:
            add(Problem("deleted", n0, e0["seq"], f"the log starts at seq {e0['seq']} but no signed trim record "
                        f"says entries before it were purged: entries 1..{e0['seq'] - 1} were removed"))
        else:
            tn, te = trims[-1]
            want = (te["data"].get("first_seq"), te["data"].get("first_prev"))
            if want != (e0["seq"], e0["prev"]):
                add(Problem("deleted", n0, e0["seq"], f"the log starts at seq {e0['seq']} but the last trim "
                            f"record (line {tn}) says it starts at seq {want[0]}: entries were removed at the "
                            "start"))

    # -- every entry: hash, link, signature ------------------------------------------------
    last_good_sig_line: int | None = None
    flagged: list[tuple[int, dict]] = []
    prev_e: dict | None = None
    prev_n: int | None = None
    for i, (n, e) in enumerate(lines):
        if by_hash[e["hash"]] != i:
            first_n = lines[by_hash[e["hash"]]][0]
            add(Problem("inserted", n, e["seq"], f"a copy of the entry at line {first_n} (replayed)"))
            continue
        if entry_hash(e) != e["hash"]:
            add(Problem("edited", n, e["seq"], f"the {e['type']} entry's content does not match its hash"))
        if prev_e is not None and e["prev"] != prev_e["hash"]:
            j = by_hash.get(e["prev"])
            if j is not None and j > i:
                add(Problem("reordered", n, e["seq"], f"this entry follows seq {lines[j][1]['seq']}, which comes "
                            f"later, at line {lines[j][0]}: entries were moved"))
            elif j is not None and j < i - 1:
                between = lines[j + 1:i]
                moved = any(b["hash"] in referenced for _, b in between)
                kind = "reordered" if moved else "inserted"
                first_n, first_e = between[0]
                what = "moved here from elsewhere in the log" if moved else "not part of the chain"
                add(Problem(kind, first_n, first_e["seq"], f"{len(between)} entr{'y' if len(between) == 1 else 'ies'}"
                            f" (line {first_n}..{between[-1][0]}) {what}: the entry at line {n} links to "
                            f"line {lines[j][0]}"))
            elif e["seq"] > prev_e["seq"] + 1:
                gap = (f"entry seq {prev_e['seq'] + 1} is" if e["seq"] == prev_e["seq"] + 2
                       else f"entries seq {prev_e['seq'] + 1}..{e['seq'] - 1} are")
                add(Problem("deleted", n, e["seq"], f"{gap} missing between line {prev_n} and line {n}"))
            elif e["seq"] == prev_e["seq"] + 1:
                add(Problem("edited", prev_n, prev_e["seq"], f"the {prev_e['type']} entry was changed and its hash "
                            f"recomputed: the next entry (line {n}) no longer links to it"))
            elif seq_count.get(e["seq"], 0) > 1:
                add(Problem("inserted", n, e["seq"], f"a second entry with seq {e['seq']} that is not part of "
                            "the chain"))
            else:
                add(Problem("reordered", n, e["seq"], f"seq {e['seq']} after seq {prev_e['seq']}: entries were "
                            "moved"))
        elif prev_e is not None and e["seq"] != prev_e["seq"] + 1:
            add(Problem("edited", n, e["seq"], f"seq {e['seq']} follows seq {prev_e['seq']}: renumbered"))
        if e["type"] in SIGNED:
            why = _check_sig(e, pub, expected_signer)
            if why:
                since = f"after line {last_good_sig_line}" if last_good_sig_line else "from the start"
                add(Problem("bad_signature", n, e["seq"], f"{e['type']}: {why}; the entries {since} up to this "
                            "line were rewritten (inserted, deleted or edited, with the hashes recomputed), or the "
                            "record was forged"))
            else:
                last_good_sig_line = n
                if e["type"] == "checkpoint":
                    res.checkpoints += 1
                elif e["type"] == "segment":
                    flagged.append((n, e["data"]))
                else:
                    res.trims += 1
        prev_e, prev_n = e, n
    # a new segment the unit started: the entries it found after its own last head were not its own
    for seg_line, d in flagged:
        lo, hi = d.get("unsigned_from_seq"), d.get("unsigned_to_seq")
        if isinstance(lo, int) and isinstance(hi, int):
            for n, e in lines:
                if n < seg_line and lo <= e["seq"] <= hi:
                    add(Problem("unsigned_tail", n, e["seq"], "not written by the unit: it came after the unit's "
                                f"last signed head (seq {d.get('last_signed_seq')}); the unit found it at line "
                                f"{seg_line} and started a new signed segment"))

    if lines:
        res.entries = len(lines)
        res.first_seq, res.last_seq = lines[0][1]["seq"], lines[-1][1]["seq"]
        res.first_time, res.last_time = lines[0][1]["t"], lines[-1][1]["t"]

    # -- the end: the signed head --------------------------------------------------------
    try:
        head = json.loads(read_regular(head_path, 65536, "audit head", AuditError), parse_constant=_no_constant)
    except AuditError as exc:
        head = None
        if "not found" not in str(exc):
            head = {}
        elif lines:
            add(Problem("head_missing", None, None, f"{head_path.name} is missing: the end of the log cannot be "
                        "checked (entries may have been removed from the end)"))
    except (ValueError, RecursionError):
        head = {}
    if head is not None:
        ok_shape = (isinstance(head, dict) and isinstance(head.get("seq"), int) and isinstance(head.get("hash"), str)
                    and isinstance(head.get("t"), str) and isinstance(head.get("sig"), str))
        if not ok_shape:
            add(Problem("head_missing", None, None, f"{head_path.name} is damaged: the end of the log cannot be "
                        "checked"))
        else:
            res.head_seq = head["seq"]
            if pub is not None:
                try:
                    if head.get("signer") != expected_signer:
                        raise InvalidSignature()
                    pub.verify(base64.b64decode(head["sig"], validate=True), _head_message(head))
                except (InvalidSignature, ValueError, KeyError):
                    add(Problem("bad_signature", None, head["seq"], f"{head_path.name}: the head's signature does "
                                "not verify (forged or edited)"))
            last = lines[-1][1] if lines else None
            if last is None or head["seq"] > last["seq"]:
                have = last["seq"] if last else 0
                add(Problem("truncated", (lines[-1][0] if lines else 0), have,
                            f"the signed head says the log ends at seq {head['seq']}, but it ends at seq {have}: "
                            f"entries {have + 1}..{head['seq']} were removed from the end"))
            else:
                at = [e for _, e in lines if e["seq"] == head["seq"]]
                if not at or head["hash"] not in {e["hash"] for e in at}:
                    add(Problem("edited", None, head["seq"], f"the entry with seq {head['seq']} is not the one the "
                                "signed head names"))
                tail = [(n, e) for n, e in lines if e["seq"] > head["seq"]]
                res.unsigned_tail = [e["seq"] for _, e in tail]
                if strict and tail:
                    add(Problem("unsigned_tail", tail[0][0], tail[0][1]["seq"],
                                f"{len(tail)} entr{'y' if len(tail) == 1 else 'ies'} after the signed head (seq "
                                f"{head['seq']}): nothing signed them (added without the unit's key, or an append "
                                "cut short before the head was rewritten)"))
    # report problems in file order (those about the whole file last)
    res.problems.sort(key=lambda q: (q.line is None, q.line or 0))
    return res


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


class AuditLog:
    """The writer. ``signer``: the unit's :class:`~edge.watchlist.keys.DeviceKey` (or an Ed25519 private
    key). ``clock`` (Unix seconds) is injectable for tests. Thread- and process-safe."""

    def __init__(self, directory: str | os.PathLike, *, signer, unit_id: str, checkpoint_every: int = 100,
                 clock: Callable[[], float] = time.time, fsync: bool = True):
        self.dir = Path(directory)
        self.path = self.dir / FILENAME
        self.head_path = self.dir / HEAD_FILENAME
        ed = getattr(signer, "ed25519", signer)
        if not isinstance(ed, Ed25519PrivateKey):
            raise AuditError("the audit log is signed with the unit's Ed25519 device key")
        self._key = ed
        self.public = public_key_raw(ed)
        self.signer = signer_id(self.public)
        self.unit_id = str(unit_id)
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.clock = clock
        self.fsync = fsync
        self._lock = threading.RLock()
        self._state: tuple | None = None       # (ino, size) of the file as we last left it
        self._last_seq = 0
        self._last_hash = GENESIS
        self._since_checkpoint = 0
        self._last_t = float("-inf")
        #: the last problem found with the log's tail or lines (for the health topic); None when none
        self.problem: str | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise AuditError(f"{self.dir}: cannot create the audit folder: {exc}") from None
        with self._locked():
            self._sync_state(repair=True)

    @classmethod
    def from_config(cls, cfg, *, device_key=None, clock: Callable[[], float] = time.time) -> "AuditLog":
        """The unit's audit log: ``<unit.state_dir>/audit/`` signed with the device key."""
        if device_key is None:
            device_key = device_key_from_config(cfg)
        return cls(Path(cfg.unit.state_dir) / DIRNAME, signer=device_key, unit_id=cfg.unit.id or device_key.unit_id,
                   checkpoint_every=cfg.privacy.audit_checkpoint_entries, clock=clock)

    # -- locking and the tail state ------------------------------------------------------

    @contextmanager
    def _locked(self):
        with self._lock:
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _file_state(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size)

    def _sync_state(self, repair: bool = False) -> None:
        """Re-read the tail (last seq and hash, entries since the last signed record) when the
        file changed under us (another process appended or trimmed), and cut off a torn line."""
        now = self._file_state()
        if now is not None and now == self._state:
            return
        self._last_seq, self._last_hash, self._since_checkpoint = 0, GENESIS, 0
        self._last_t = float("-inf")
        if now is None:
            self._state = None
            return
        f = open_log(self.path)
        with f:
            blob = f.read(MAX_LOG_BYTES + 1)
        if len(blob) > MAX_LOG_BYTES:
            raise AuditError(f"{self.path}: larger than {MAX_LOG_BYTES:,} bytes; not this unit's audit log")
        cut = blob.rfind(b"\n") + 1
        if cut < len(blob):
            if not repair:
                raise AuditError(f"{self.path}: the last line is incomplete")
            with open(self.path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
            log.warning("audit log: cut off %d bytes of an entry torn by a crash", len(blob) - cut)
            torn = len(blob) - cut
            blob = blob[:cut]
        else:
            torn = 0
        damaged: list[int] = []              # line numbers that are not entries, since the last segment
        hashes: dict[int, str] = {}
        for n, raw in enumerate(blob.split(b"\n"), 1):
            if not raw:
                continue
            e, why = parse_line(raw)
            if e is None:
                damaged.append(n)
                continue
            self._last_seq, self._last_hash = e["seq"], e["hash"]
            hashes[e["seq"]] = e["hash"]
            self._since_checkpoint = 0 if e["type"] in SIGNED else self._since_checkpoint + 1
            self._last_t = max(self._last_t, parse_utc_ms(e["t"]))
            if e["type"] == "segment":
                damaged = []                 # the unit recorded what came before
        self._state = self._file_state()
        if not repair:
            return
        tail = self._tail_problem(hashes)
        try:
            self._record_findings(torn, tail, damaged)
        except OSError as exc:  # a full disk must not stop the service: the next open tries again
            self.problem = self.problem or f"audit log findings not written: {exc}"
            log.error("audit log: could not record what was found at open (%s); retried at the next open", exc)
            self._state = None

    def _record_findings(self, torn: int, tail, damaged: list[int]) -> None:
        if torn:
            self._append_locked("log_repaired", {"discarded_bytes": torn, "reason": "a line torn by a crash"})
        if tail is not None or damaged:
            data: dict = {"unit_id": self.unit_id, "reason": "; ".join(filter(None, [
                tail[0] if tail else None,
                f"{len(damaged)} damaged line(s) (first: line {damaged[0]})" if damaged else None]))[:MAX_STRING]}
            if tail is not None and tail[1] is not None:
                data.update({"unsigned_from_seq": tail[1] + 1, "unsigned_to_seq": self._last_seq,
                             "last_signed_seq": tail[1]})
            if damaged:
                data.update({"damaged_lines": len(damaged), "first_damaged_line": damaged[0]})
            self.problem = data["reason"]
            log.error("audit log: %s; a new signed segment starts here (reported on the health topic)",
                      data["reason"])
            self._write_line(self._make("segment", data))

    def _tail_problem(self, hashes: Mapping[int, str]) -> tuple[str, int | None] | None:
        """Whether the log ends where this unit's signed head says it does: None if so, else
        (what is wrong, the seq of the last entry the unit signed, when known). Every writer of
        the log (the service, ``audit purge``, ``watchlist load``) holds the unit key and rewrites
        the head with each append, so entries after the head were added by someone else (or an
        append was cut short by a crash before the head was rewritten)."""
        if not hashes:
            return None
        try:
            head = json.loads(read_regular(self.head_path, 65536, "audit head", AuditError),
                              parse_constant=_no_constant)
            Ed25519PublicKey.from_public_bytes(self.public).verify(
                base64.b64decode(head["sig"], validate=True), _head_message(head))
            seq, hsh = head["seq"], head["hash"]
            if head.get("signer") != self.signer or not isinstance(seq, int):
                raise ValueError("not this unit's head")
        except AuditError as exc:
            return (f"the signed head is missing or unreadable ({exc}): the tail cannot be the unit's own", None)
        except (InvalidSignature, ValueError, KeyError, TypeError, RecursionError):
            return ("the head is not signed by this unit: the tail cannot be the unit's own", None)
        if seq == self._last_seq and hashes.get(seq) == hsh:
            return None
        if hashes.get(seq) == hsh and seq < self._last_seq:
            return (f"entries seq {seq + 1}..{self._last_seq} come after the unit's last signed head (seq {seq}): "
                    "not written by this unit", seq)
        return (f"the log does not end with the entry the unit's signed head names (seq {seq})", None)

    # -- appending -----------------------------------------------------------------------

    def _now(self) -> float:
        # entries stay in time order even if the wall clock steps back a little
        return max(float(self.clock()), self._last_t)

    def _make(self, type_: str, data: Mapping[str, Any], t: float | None = None) -> dict:
        e = {"seq": self._last_seq + 1, "t": format_utc_ms(self._now() if t is None else t), "type": type_,
             "data": dict(data), "prev": self._last_hash}
        if type_ in SIGNED:
            e["data"]["signer"] = self.signer
            e["data"]["sig"] = ""
            e["data"]["sig"] = b64encode(self._key.sign(_sig_message(e)))
        e["hash"] = entry_hash(e)
        return e

    def _write_line(self, e: dict) -> None:
        line = _line(e)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(line)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._last_seq, self._last_hash = e["seq"], e["hash"]
        self._last_t = parse_utc_ms(e["t"])
        self._since_checkpoint = 0 if e["type"] in SIGNED else self._since_checkpoint + 1
        self._write_head()
        self._state = self._file_state()

    def _write_head(self) -> None:
        head = {"version": VERSION, "seq": self._last_seq, "hash": self._last_hash,
                "t": format_utc_ms(self._last_t if math.isfinite(self._last_t) else self.clock()), "unit_id": self.unit_id,
                "signer": self.signer}
        head["sig"] = b64encode(self._key.sign(_head_message(head)))
        atomic_write(self.head_path, canonical_json(head) + b"\n", durable=self.fsync)

    def _append_locked(self, type_: str, data: Mapping[str, Any]) -> dict:
        e = self._make(type_, data)
        self._write_line(e)
        if type_ not in SIGNED and self._since_checkpoint >= self.checkpoint_every:
            self._write_line(self._make("checkpoint", {"unit_id": self.unit_id, "reason": "periodic",
                                                        "entries": self._since_checkpoint}))
        return e

    def append(self, type_: str, data: Mapping[str, Any] | None = None) -> dict:
        """Append one entry (and a signed checkpoint when one is due); returns the entry."""
        if type_ not in TYPES or type_ in SIGNED:
            raise AuditError(f"unknown audit entry type {type_!r}")
        data = _plain(dict(data or {}))
        _check_data(data)
        if len(canonical_json(data)) > MAX_LINE // 2:
            raise AuditError(f"{type_} entry too large")
        with self._locked():
            self._sync_state(repair=True)
            try:
                return self._append_locked(type_, data)
            except OSError as exc:
                raise AuditError(f"{self.path}: cannot append to the audit log: {exc}") from None

    def checkpoint(self, reason: str = "on demand", *, if_needed: bool = False) -> dict | None:
        """Append a checkpoint signed with the unit key (committing to every entry before it);
        with ``if_needed``, only when the last entry is not signed already."""
        with self._locked():
            self._sync_state(repair=True)
            if if_needed and self._since_checkpoint == 0:
                return None
            return self._write_checkpoint(reason)

    def _write_checkpoint(self, reason: str) -> dict:
        e = self._make("checkpoint", {"unit_id": self.unit_id, "reason": str(reason)[:64],
                                      "entries": self._since_checkpoint})
        self._write_line(e)
        return e

    @property
    def last_seq(self) -> int:
        with self._locked():
            self._sync_state(repair=True)
            return self._last_seq

    # -- retention ------------------------------------------------------------------------

    def trim(self, before: float) -> int:
        """Delete the entries older than ``before`` (Unix seconds) and append a signed
        ``audit_trim`` record naming the first entry kept. Crash-safe (temp file + rename).
        Returns how many entries were deleted."""
        with self._locked():
            self._sync_state(repair=True)
            f = open_log(self.path)
            if f is None:
                return 0
            with f:
                blob = f.read(MAX_LOG_BYTES + 1)
            raw_lines = [r for r in blob.split(b"\n") if r]
            cut = 0
            for raw in raw_lines:
                e, _ = parse_line(raw)
                if e is None:
                    break      # never cut past a line we cannot read: verify will name it
                if parse_utc_ms(e["t"]) >= before:
                    break
                cut += 1
            if cut == 0:
                return 0
            kept = raw_lines[cut:]
            if kept:
                first, _ = parse_line(kept[0])
                if first is None:
                    return 0   # the next line is damaged: keep everything, verify names it
                first_seq, first_prev = first["seq"], first["prev"]
            else:
                first_seq, first_prev = self._last_seq + 1, self._last_hash
            trim = self._make("audit_trim", {"unit_id": self.unit_id, "first_seq": first_seq,
                                             "first_prev": first_prev, "removed": cut,
                                             "before": format_utc_ms(before)})
            atomic_write(self.path, b"".join(raw + b"\n" for raw in kept) + _line(trim))
            self._last_seq, self._last_hash = trim["seq"], trim["hash"]
            self._last_t = parse_utc_ms(trim["t"])
            self._since_checkpoint = 0
            self._write_head()
            self._state = self._file_state()
        log.info("audit log: %d entries older than %s deleted", cut, format_utc_ms(before))
        return cut

    # -- the entries the unit writes ---------------------------------------------------------

    def service_start(self, cfg, *, model_sha256: str = "", version: str = "", **extra) -> dict:
        m = cfg.match
        pv = cfg.privacy
        data = {"config_sha256": config_sha256(cfg), "unit_id": self.unit_id, "software_version": version,
                "model_sha256": model_sha256, "location": pv.location_label[:MAX_STRING],
                "thresholds": {"wanted": m.threshold_wanted, "missing": m.threshold_missing,
                               "vulnerable": m.threshold_vulnerable},
                "score_normalisation": bool(getattr(m, "score_normalisation", False)),
                "target_fpir": getattr(m, "target_fpir", None),
                "target_fpir_by_category": _category_targets(m),
                "calibrated_fpir": pv.calibrated_fpir, "calibration_reference": pv.calibration_reference[:200],
                "retention_days": cfg.outbox.retention_days,
                "rejected_retention_hours": cfg.outbox.rejected_retention_hours,
                "pid": os.getpid(), **extra}
        return self.append("service_start", data)

    def service_stop(self, reason: str = "stopped", **counts) -> dict:
        e = self.append("service_stop", {"reason": str(reason)[:200], **counts})
        self.checkpoint("service stop", if_needed=True)
        return e

    def bundle_loaded(self, live, how: str = "loaded") -> dict:
        """A watchlist in force (``live``: :class:`edge.watchlist.unit.LoadedList`)."""
        m = live.manifest
        s = m.summary()
        extra = {}
        policy = getattr(getattr(live, "matcher", None), "policy", None)
        if policy is not None:           # edge.matching.calibration.ThresholdPolicy: the threshold for this list
            try:
                extra["threshold_policy"] = {
                    "threshold": round(float(policy.threshold), 6), "target_fpir": float(policy.target_fpir),
                    "watchlist_size": int(policy.watchlist_size), "supported": bool(policy.supported),
                    "calibration": str(getattr(policy.calibration, "source", ""))[:200]}
                if hasattr(policy, "threshold_for"):   # one threshold per category (match.target_fpir_<category>)
                    from edge.types import CATEGORIES
                    extra["threshold_policy"].update(
                        thresholds={c: round(float(policy.threshold_for(c)), 6) for c in CATEGORIES},
                        target_fpirs={c: float(policy.target_for(c)) for c in CATEGORIES},
                        supported_by_category={c: bool(policy.supported_for(c)) for c in CATEGORIES})
            except Exception:  # pragma: no cover - a policy of another shape: recorded without it
                pass
        return self.append("bundle_loaded", {**extra,
            "how": how, "bundle_id": m.bundle_id, "serial": m.serial, "operation_id": m.operation_id,
            "subjects": s["subjects"], "templates": s["templates"], "by_category": s["by_category"],
            "valid_from": s["valid_from"], "valid_until": s["valid_until"], "issuer_key_id": m.issuer_key_id,
            "authorising_officer": s["authorising_officer"][:200], "model_sha256": m.model_sha256,
            "clock_verified": bool(live.clock_verified)})

    def bundle_refused(self, error: BaseException, source: str = "") -> dict:
        return self.append("bundle_refused", {"error": type(error).__name__, "reason": str(error)[:MAX_STRING],
                                              "source": str(source)[:200]})

    def watchlist_deleted(self, bundle_id: str | None, reason: str) -> dict:
        return self.append("watchlist_deleted", {"bundle_id": bundle_id, "reason": str(reason)[:MAX_STRING]})

    def alert(self, *, event_id: str, subject_id: str, category: str, score: float, threshold: float,
              track_id: int | None = None, bundle_id: str | None = None, margin: float | None = None,
              outbox_seq: int | None = None) -> dict:
        """One alert emitted: ids and numbers, never an image."""
        margin = None if margin is None or not math.isfinite(float(margin)) else round(float(margin), 6)
        return self.append("alert", {"event_id": event_id, "subject_id": subject_id, "category": category,
                                     "score": round(float(score), 6), "threshold": round(float(threshold), 6),
                                     "margin": margin, "track_id": track_id, "bundle_id": bundle_id,
                                     "outbox_seq": outbox_seq})

    def alert_event(self, ev, bundle_id: str | None = None) -> dict:
        """From an :class:`edge.appliance.pipeline.AlertEvent`."""
        return self.alert(event_id=ev.event_id, subject_id=ev.subject_id, category=ev.category, score=ev.score,
                          threshold=ev.threshold, track_id=ev.track_id, bundle_id=bundle_id, margin=ev.margin,
                          outbox_seq=ev.outbox_seq)

    def adjudication(self, ack: Mapping[str, Any]) -> dict:
        """An adjudication received (the acknowledgement :class:`edge.alerts.adjudication.AdjudicationRecords`
        returned: what was recorded, and whether it was a repeat)."""
        return self.append("adjudication", {"event_id": ack["event_id"], "outcome": ack["outcome"],
                                            "officer_id": ack["officer_id"], "decided_at": ack["decided_at"],
                                            "duplicate": bool(ack.get("duplicate", False))})

    def purge(self, counts: Mapping[str, Any]) -> dict:
        return self.append("purge", dict(counts))

    def error(self, where: str, error: BaseException | str) -> dict:
        kind = type(error).__name__ if isinstance(error, BaseException) else "error"
        return self.append("error", {"where": str(where)[:100], "error": kind, "message": str(error)[:MAX_STRING]})

    def counts(self, counts: Mapping[str, Any]) -> dict:
        return self.append("counts", dict(counts))


def _category_targets(match_section) -> dict | None:
    """``match.target_fpir_<category>`` as in force (0 in the file = ``match.target_fpir``)."""
    try:
        from edge.config import category_target_fpir
        return category_target_fpir(match_section)
    except Exception:  # a config without these options (older tests' stand-ins)
        return None
