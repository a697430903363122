"""The watchlist bundle format: a signed manifest, embeddings and thumbnails, encrypted to units.

    bundle file = envelope (edge.watchlist.envelope: AES-256-GCM to each target unit's X25519 key)
      payload   = gzip(ustar archive) (edge.watchlist.safetar), members in this order:
        manifest.json          canonical JSON (sorted keys, no spaces, ASCII), see below
        manifest.sig           canonical JSON {"alg": "ed25519", "key_id": <issuer key id>, "sig": <base64>}
                               signature over SIGNING_CONTEXT + manifest.json bytes
        embeddings.f32         raw little-endian float32, shape (templates, dim) given in the manifest
        thumbnails/NNNNNN.jpg  optional ~112 px JPEG of subject NNNNNN's reference face

The manifest lists the size and sha256 of every other member, so the issuer's signature covers
everything. Reading (:func:`open_bundle`) checks, in order: file size; envelope; addressed to
this unit's key; authenticated decryption; member names/types; signature against the trust
file's key; manifest types and limits; every member's size and hash. Policy checks that need
the unit's state, clock and model (validity window, key windows/revocation, rollback, model hash)
are in :mod:`edge.watchlist.unit`.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import math
import os
import re
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidSignature

from edge.encoding import b64encode, canonical_json
from edge.errors import WatchlistError
from edge.matching.match import Watchlist
from edge.types import CATEGORIES, UNIT_ID_RE
from edge.readfile import open_regular
from edge.utc import format_utc, parse_canonical
from edge.watchlist.envelope import open_envelope, parse_envelope, seal, strict_json
from edge.watchlist.errors import (
    BundleFormatError,
    BundleIntegrityError,
    BundleLimitError,
    BundleSignatureError,
    BundleUntrustedIssuerError,
)
from edge.watchlist.keys import DeviceKey, IssuerKey, TrustedKey, TrustStore, UnitPublic
from edge.watchlist.safetar import BoundedInflater, TarEntry, TarReader, pack_tar

__all__ = [
    "Limits", "SubjectEntry", "Manifest", "Bundle", "make_bundle", "open_bundle", "parse_manifest",
    "manifest_dict", "sign_manifest", "assemble", "check_member_name", "read_file_limited", "SIGNING_CONTEXT",
]

SIGNING_CONTEXT = b"edge-lfr watchlist manifest v1\n"
FORMAT = "edge-lfr-watchlist"
EMBEDDINGS = "embeddings.f32"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
EMBEDDING_DTYPE = "float32-le"
MAX_DIM = 4096
MAX_SERIAL = (1 << 53) - 1
MAX_SIGNATURE_BYTES = 4096
MANIFEST_BYTES_PER_SUBJECT = 4096
_THUMB_RE = re.compile(r"thumbnails/[0-9]{6}\.jpg")
_SUBJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_REASON_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_OPERATION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_B64SIG = re.compile(r"[A-Za-z0-9+/]{86}==")

MANIFEST_KEYS = {"format", "version", "bundle_id", "serial", "issuer_key_id", "issued_at", "valid_from",
                 "valid_until", "operation_id", "authorising_officer", "targets", "model_sha256", "embedding",
                 "subjects", "members"}
SUBJECT_KEYS = {"id", "category", "reason_code", "sources", "threshold", "thumbnail"}


@dataclass(frozen=True)
class Limits:
    """Hard limits, from the ``watchlist`` config section (:meth:`from_config`)."""

    max_bundle_bytes: int = 1 << 30
    max_subjects: int = 100_000
    max_templates_per_subject: int = 10
    max_validity_seconds: int = 7 * 86400
    max_thumbnail_bytes: int = 64 * 1024
    max_ratio: float = 200.0

    @property
    def max_manifest_bytes(self) -> int:
        return 64 * 1024 + MANIFEST_BYTES_PER_SUBJECT * self.max_subjects

    @property
    def max_unpacked_bytes(self) -> int:
        """Total decompressed archive size allowed (tar headers and padding included)."""
        return 2 * self.max_bundle_bytes

    @classmethod
    def from_config(cls, cfg) -> "Limits":
        w = cfg.watchlist
        return cls(max_bundle_bytes=w.max_bundle_bytes, max_subjects=w.max_subjects,
                   max_templates_per_subject=w.max_templates_per_subject,
                   max_validity_seconds=int(w.max_validity_hours) * 3600)


# --------------------------------------------------------------------------------------
# Field checks (shared with enrolment so that the builder refuses what a unit would)
# --------------------------------------------------------------------------------------


#: Unicode categories refused in a bundle's free text: format characters (bidi overrides and
#: isolates U+202A-202E / U+2066-2069, marks U+200E/200F/061C, zero-width U+200B-200D, U+FEFF),
#: line and paragraph separators, surrogates.
_HIDDEN_CATEGORIES = frozenset({"Cf", "Zl", "Zp", "Cs"})


def _printable(value: object, what: str, max_len: int, error: type[Exception]) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise error(f"{what} must be text of 1 to {max_len} characters, got {value!r:.80}")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value) or value != value.strip():
        raise error(f"{what} contains control characters or leading/trailing spaces: {value!r:.80}")
    hidden = [c for c in value if unicodedata.category(c) in _HIDDEN_CATEGORIES]
    if hidden:
        # U+202E etc. reorder what the handheld page and the report display; zero-width ones hide text
        raise error(f"{what} contains invisible or text-direction control characters "
                    f"({', '.join(sorted({f'U+{ord(c):04X}' for c in hidden}))}): {value!r:.80}")
    return value


def check_subject_id(value: object, error: type[Exception] = BundleFormatError) -> str:
    if not isinstance(value, str) or not _SUBJECT_RE.fullmatch(value):
        raise error(f"subject id must be 1-64 of A-Z a-z 0-9 . _ : - (starting with a letter or digit), got {value!r:.80}")
    return value


def check_category(value: object, error: type[Exception] = BundleFormatError) -> str:
    if value not in CATEGORIES:
        raise error(f"category must be one of {', '.join(CATEGORIES)}, got {value!r:.80}")
    return value


def check_reason_code(value: object, error: type[Exception] = BundleFormatError) -> str:
    if not isinstance(value, str) or not _REASON_RE.fullmatch(value):
        raise error(f"reason code must be 1-32 of A-Z a-z 0-9 . _ - , got {value!r:.80}")
    return value


def check_source(value: object, error: type[Exception] = BundleFormatError) -> str:
    return _printable(value, "image source reference", 256, error)


def check_operation_id(value: object, error: type[Exception] = BundleFormatError) -> str:
    if not isinstance(value, str) or not _OPERATION_RE.fullmatch(value):
        raise error(f"operation id must be 1-64 of A-Z a-z 0-9 . _ : / - , got {value!r:.80}")
    return value


def check_officer(value: object, error: type[Exception] = BundleFormatError) -> str:
    return _printable(value, "authorising officer reference", 128, error)


def check_threshold(value: object, error: type[Exception] = BundleFormatError) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"threshold must be a number in [-1, 1] or null, got {value!r:.80}")
    v = float(value)
    if not math.isfinite(v) or not -1.0 <= v <= 1.0:
        raise error(f"threshold {v!r} is outside the cosine range [-1, 1]")
    return v


def check_member_name(name: str) -> None:
    """Only the names a bundle may hold: no absolute paths, no '..', nothing unexpected."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise BundleFormatError(f"archive member {name!r:.120} has an absolute path; refused")
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        raise BundleFormatError(f"archive member {name!r:.120} contains '..'; refused")
    if name not in (MANIFEST, SIGNATURE, EMBEDDINGS) and not _THUMB_RE.fullmatch(name):
        raise BundleFormatError(f"unexpected archive member {name!r:.120}; a bundle holds only "
                                f"{MANIFEST}, {SIGNATURE}, {EMBEDDINGS} and thumbnails/NNNNNN.jpg")


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleFormatError(f"manifest {what} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise BundleLimitError(f"manifest {what} = {value} is outside [{lo}, {hi}]")
    return value


def _hex(value: object, what: str, rx: re.Pattern = _HEX64) -> str:
    if not isinstance(value, str) or not rx.fullmatch(value):
        digits = 32 if rx is _HEX32 else 64
        raise BundleFormatError(f"manifest {what} must be {digits} lowercase hex digits, got {value!r:.80}")
    return value


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubjectEntry:
    """One subject: its templates are ``len(sources)`` consecutive embedding rows."""

    id: str
    category: str
    reason_code: str
    sources: tuple[str, ...]
    threshold: float | None = None
    thumbnail: str | None = None

    @property
    def templates(self) -> int:
        return len(self.sources)


@dataclass(frozen=True)
class Manifest:
    raw: bytes = field(repr=False)
    bundle_id: str
    serial: int
    issuer_key_id: str
    issued_at: int
    valid_from: int
    valid_until: int
    operation_id: str
    authorising_officer: str
    targets: tuple[tuple[str, str], ...]  # (unit_id, key_id)
    model_sha256: str
    dim: int
    n_templates: int
    subjects: tuple[SubjectEntry, ...] = field(repr=False)
    members: Mapping[str, tuple[int, str]] = field(repr=False)  # name -> (size, sha256)

    def counts_by_category(self) -> dict[str, int]:
        c = Counter(s.category for s in self.subjects)
        return {k: c.get(k, 0) for k in CATEGORIES}

    def summary(self) -> dict:
        """Everything an officer reviews, never an embedding or an image."""
        return {
            "bundle_id": self.bundle_id, "serial": self.serial, "issuer_key_id": self.issuer_key_id,
            "issued_at": format_utc(self.issued_at), "valid_from": format_utc(self.valid_from),
            "valid_until": format_utc(self.valid_until), "operation_id": self.operation_id,
            "authorising_officer": self.authorising_officer,
            "target_units": [u for u, _ in self.targets], "model_sha256": self.model_sha256,
            "subjects": len(self.subjects), "templates": self.n_templates, "embedding_dim": self.dim,
            "by_category": self.counts_by_category(),
            "thumbnails": sum(1 for s in self.subjects if s.thumbnail),
            "manifest_sha256": hashlib.sha256(self.raw).hexdigest(),
        }


def manifest_dict(*, bundle_id: str, serial: int, issuer_key_id: str, issued_at: int, valid_from: int,
                  valid_until: int, operation_id: str, authorising_officer: str,
                  targets: Sequence[tuple[str, str]], model_sha256: str, dim: int,
                  subjects: Sequence[SubjectEntry], members: Mapping[str, tuple[int, str]]) -> dict:
    """The manifest as a JSON-ready dict (no checks: see :func:`parse_manifest`)."""
    return {
        "format": FORMAT, "version": 1, "bundle_id": bundle_id, "serial": serial,
        "issuer_key_id": issuer_key_id, "issued_at": format_utc(issued_at),
        "valid_from": format_utc(valid_from), "valid_until": format_utc(valid_until),
        "operation_id": operation_id, "authorising_officer": authorising_officer,
        "targets": [{"unit_id": u, "key_id": k} for u, k in targets], "model_sha256": model_sha256,
        "embedding": {"dim": dim, "dtype": EMBEDDING_DTYPE, "member": EMBEDDINGS,
                      "templates": sum(s.templates for s in subjects)},
        "subjects": [{"id": s.id, "category": s.category, "reason_code": s.reason_code, "sources": list(s.sources),
                      "threshold": s.threshold, "thumbnail": s.thumbnail} for s in subjects],
        "members": {name: {"size": size, "sha256": sha} for name, (size, sha) in members.items()},
    }


def parse_manifest(raw: bytes, limits: Limits = Limits()) -> Manifest:
    """Strictly validate manifest bytes: canonical JSON, exact fields and types, limits, and
    internal consistency (template count, member list, embedding size). BundleFormatError
    or BundleLimitError naming the first problem."""
    if len(raw) > limits.max_manifest_bytes:
        raise BundleLimitError(f"manifest is {len(raw):,} bytes, over the {limits.max_manifest_bytes:,}-byte limit")
    doc = strict_json(raw, "manifest")
    if not isinstance(doc, dict):
        raise BundleFormatError(f"manifest must be a JSON object, got {type(doc).__name__}")
    missing, extra = MANIFEST_KEYS - set(doc), set(doc) - MANIFEST_KEYS
    if missing or extra:
        raise BundleFormatError(f"manifest fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)[:5]}")
    if doc["format"] != FORMAT or doc["version"] != 1 or isinstance(doc["version"], bool):
        raise BundleFormatError(f"manifest format/version {doc['format']!r:.40}/{doc['version']!r:.20} is not "
                                f"{FORMAT!r}/1")
    bundle_id = _hex(doc["bundle_id"], "bundle_id", _HEX32)
    serial = _int(doc["serial"], "serial", 1, MAX_SERIAL)
    issuer = _hex(doc["issuer_key_id"], "issuer_key_id")
    issued = parse_canonical(doc["issued_at"], "manifest issued_at", BundleFormatError)
    vf = parse_canonical(doc["valid_from"], "manifest valid_from", BundleFormatError)
    vu = parse_canonical(doc["valid_until"], "manifest valid_until", BundleFormatError)
    if vu <= vf:
        raise BundleFormatError(f"manifest valid_until {doc['valid_until']} is not after valid_from {doc['valid_from']}")
    if issued >= vu:
        raise BundleFormatError(f"manifest issued_at {doc['issued_at']} is not before valid_until {doc['valid_until']}")
    if vu - vf > limits.max_validity_seconds:
        raise BundleLimitError(f"validity window of {(vu - vf) / 3600:.1f} h is longer than the allowed "
                               f"{limits.max_validity_seconds / 3600:g} h")
    operation = check_operation_id(doc["operation_id"])
    officer = check_officer(doc["authorising_officer"])
    model = _hex(doc["model_sha256"], "model_sha256")

    targets_doc = doc["targets"]
    if not isinstance(targets_doc, list) or not 1 <= len(targets_doc) <= 64:
        raise BundleFormatError("manifest targets must be a list of 1 to 64 units")
    targets = []
    for t in targets_doc:
        if not isinstance(t, dict) or set(t) != {"unit_id", "key_id"}:
            raise BundleFormatError("manifest target must be {unit_id, key_id}")
        if not isinstance(t["unit_id"], str) or not UNIT_ID_RE.fullmatch(t["unit_id"]):
            raise BundleFormatError(f"manifest target unit id {t['unit_id']!r:.80} is malformed")
        targets.append((t["unit_id"], _hex(t["key_id"], "target key_id")))
    if len({k for _, k in targets}) != len(targets):
        raise BundleFormatError("manifest lists the same unit key twice in targets")

    emb = doc["embedding"]
    if not isinstance(emb, dict) or set(emb) != {"dim", "dtype", "member", "templates"}:
        raise BundleFormatError("manifest embedding must be {dim, dtype, member, templates}")
    if emb["dtype"] != EMBEDDING_DTYPE or emb["member"] != EMBEDDINGS:
        raise BundleFormatError(f"manifest embedding dtype/member must be {EMBEDDING_DTYPE}/{EMBEDDINGS}")
    dim = _int(emb["dim"], "embedding dim", 1, MAX_DIM)
    n_templates = _int(emb["templates"], "embedding templates", 1,
                       limits.max_subjects * limits.max_templates_per_subject)

    subj_doc = doc["subjects"]
    if not isinstance(subj_doc, list):
        raise BundleFormatError("manifest subjects must be a list")
    if not subj_doc:
        raise BundleFormatError("manifest has no subjects")
    if len(subj_doc) > limits.max_subjects:
        raise BundleLimitError(f"bundle has {len(subj_doc):,} subjects, more than the limit of {limits.max_subjects:,}")
    subjects = []
    seen: dict[str, int] = {}
    for i, s in enumerate(subj_doc):
        if not isinstance(s, dict) or set(s) != SUBJECT_KEYS:
            raise BundleFormatError(f"manifest subject {i} must have exactly the fields {sorted(SUBJECT_KEYS)}")
        sid = check_subject_id(s["id"])
        if sid in seen:
            raise BundleFormatError(f"duplicate subject id {sid!r} (entries {seen[sid]} and {i})")
        seen[sid] = i
        sources = s["sources"]
        if not isinstance(sources, list) or not sources:
            raise BundleFormatError(f"subject {sid!r}: sources must be a non-empty list (one per template)")
        if len(sources) > limits.max_templates_per_subject:
            raise BundleLimitError(f"subject {sid!r} has {len(sources)} templates, more than the limit of "
                                   f"{limits.max_templates_per_subject}")
        thumb = s["thumbnail"]
        if thumb is not None and thumb != f"thumbnails/{i:06d}.jpg":
            raise BundleFormatError(f"subject {sid!r}: thumbnail must be null or 'thumbnails/{i:06d}.jpg'")
        subjects.append(SubjectEntry(sid, check_category(s["category"]), check_reason_code(s["reason_code"]),
                                     tuple(check_source(x) for x in sources), check_threshold(s["threshold"]),
                                     thumb))
    total = sum(s.templates for s in subjects)
    if total != n_templates:
        raise BundleFormatError(f"manifest says {n_templates} templates but its subjects have {total}")

    mem_doc = doc["members"]
    if not isinstance(mem_doc, dict):
        raise BundleFormatError("manifest members must be an object")
    expected = {EMBEDDINGS} | {s.thumbnail for s in subjects if s.thumbnail}
    if set(mem_doc) != expected:
        odd = sorted(set(mem_doc) ^ expected)[:3]
        raise BundleFormatError(f"manifest members do not match its subjects and embeddings (e.g. {odd})")
    members: dict[str, tuple[int, str]] = {}
    for name, m in mem_doc.items():
        if not isinstance(m, dict) or set(m) != {"size", "sha256"}:
            raise BundleFormatError(f"manifest member {name!r} must be {{size, sha256}}")
        cap = n_templates * dim * 4 if name == EMBEDDINGS else limits.max_thumbnail_bytes
        size = _int(m["size"], f"member {name} size", 0, cap)
        members[name] = (size, _hex(m["sha256"], f"member {name} sha256"))
    if members[EMBEDDINGS][0] != n_templates * dim * 4:
        raise BundleFormatError(f"{EMBEDDINGS} size {members[EMBEDDINGS][0]} is not templates x dim x 4 "
                                f"= {n_templates * dim * 4}")
    return Manifest(raw, bundle_id, serial, issuer, issued, vf, vu, operation, officer, tuple(targets), model,
                    dim, n_templates, tuple(subjects), MappingProxyType(members))


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign_manifest(raw: bytes, issuer: IssuerKey) -> bytes:
    """The manifest.sig member for manifest bytes ``raw``."""
    sig = issuer.sign(SIGNING_CONTEXT + raw)
    return canonical_json({"alg": "ed25519", "key_id": issuer.key_id, "sig": b64encode(sig)})


def assemble(entries: Sequence[TarEntry], recipients: Sequence[UnitPublic], compresslevel: int = 6) -> bytes:
    """Low level: archive ``entries`` as given (no checks), gzip, encrypt to ``recipients``.
    Used by :func:`make_bundle` and by tests that craft hostile bundles."""
    return seal(gzip.compress(pack_tar(entries), compresslevel=compresslevel, mtime=0), list(recipients))


def make_bundle(*, subjects: Sequence[SubjectEntry], embeddings: np.ndarray, thumbnails: Mapping[int, bytes],
                issuer: IssuerKey, recipients: Sequence[UnitPublic], serial: int, operation_id: str,
                authorising_officer: str, valid_from: int, valid_until: int, model_sha256: str,
                issued_at: int, bundle_id: str | None = None, limits: Limits = Limits(),
                compresslevel: int = 6) -> tuple[bytes, Manifest]:
    """Validate, sign and encrypt one bundle; returns (file bytes, parsed manifest).

    ``subjects[i]`` owns ``subjects[i].templates`` consecutive rows of ``embeddings`` (float32,
    (N, D)); ``thumbnails`` maps subject index -> JPEG bytes. The manifest is checked with the
    same :func:`parse_manifest` a unit runs, so the builder refuses what a unit would.
    """
    e = np.ascontiguousarray(embeddings, dtype="<f4")
    if e.ndim != 2 or e.shape[0] == 0:
        raise BundleFormatError(f"embeddings must be a non-empty (N, D) array, got shape {e.shape}")
    if not np.isfinite(e).all():
        raise BundleFormatError("embeddings contain NaN or inf")
    entries_subjects = []
    thumbs: dict[str, bytes] = {}
    for i, s in enumerate(subjects):
        data = thumbnails.get(i)
        name = f"thumbnails/{i:06d}.jpg" if data else None
        if data:
            if len(data) > limits.max_thumbnail_bytes:
                raise BundleLimitError(f"thumbnail of subject {s.id!r} is {len(data):,} bytes, over "
                                       f"{limits.max_thumbnail_bytes:,}")
            thumbs[name] = data
        entries_subjects.append(SubjectEntry(s.id, s.category, s.reason_code, tuple(s.sources), s.threshold, name))
    emb_bytes = e.tobytes()
    members = {EMBEDDINGS: (len(emb_bytes), _sha(emb_bytes))}
    members.update({n: (len(d), _sha(d)) for n, d in sorted(thumbs.items())})
    doc = manifest_dict(bundle_id=bundle_id or uuid.uuid4().hex, serial=serial, issuer_key_id=issuer.key_id,
                        issued_at=issued_at, valid_from=valid_from, valid_until=valid_until,
                        operation_id=operation_id, authorising_officer=authorising_officer,
                        targets=[(u.unit_id, u.key_id) for u in recipients], model_sha256=model_sha256,
                        dim=int(e.shape[1]), subjects=entries_subjects, members=members)
    try:
        raw = canonical_json(doc)
    except (ValueError, TypeError) as exc:
        raise BundleFormatError(f"manifest cannot be encoded: {exc}") from None
    manifest = parse_manifest(raw, limits)
    entries = [TarEntry(MANIFEST, raw), TarEntry(SIGNATURE, sign_manifest(raw, issuer)), TarEntry(EMBEDDINGS, emb_bytes)]
    entries += [TarEntry(n, d) for n, d in sorted(thumbs.items())]
    data = assemble(entries, recipients, compresslevel)
    if len(data) > limits.max_bundle_bytes:
        raise BundleLimitError(f"bundle would be {len(data):,} bytes, over watchlist.max_bundle_bytes "
                               f"{limits.max_bundle_bytes:,}")
    return data, manifest


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A decrypted bundle whose signature and member hashes were verified."""

    manifest: Manifest
    signer: TrustedKey
    embeddings: np.ndarray = field(repr=False)  # (N, D) float32, read-only
    thumbnails: Mapping[str, bytes] = field(repr=False)
    file_sha256: str = ""
    file_size: int = 0

    def watchlist(self) -> Watchlist:
        ids, cats, thr = [], [], []
        for s in self.manifest.subjects:
            ids += [s.id] * s.templates
            cats += [s.category] * s.templates
            thr += [s.threshold] * s.templates
        try:
            return Watchlist(self.embeddings, ids, cats, thr)
        except WatchlistError as exc:
            raise BundleFormatError(f"bundle embeddings are unusable: {exc}") from None

    def thumbnail(self, subject_index: int) -> bytes | None:
        name = self.manifest.subjects[subject_index].thumbnail
        return self.thumbnails.get(name) if name else None


def _verify_signature(raw: bytes, sig_raw: bytes, trust: TrustStore) -> TrustedKey:
    doc = strict_json(sig_raw, "manifest signature")
    if not isinstance(doc, dict) or set(doc) != {"alg", "key_id", "sig"} or doc["alg"] != "ed25519":
        raise BundleFormatError("manifest signature must be {alg: ed25519, key_id, sig}")
    kid = doc["key_id"]
    if not isinstance(kid, str) or not _HEX64.fullmatch(kid):
        raise BundleFormatError("manifest signature key_id is malformed")
    if not isinstance(doc["sig"], str) or not _B64SIG.fullmatch(doc["sig"]):
        raise BundleFormatError("manifest signature is not a base64 Ed25519 signature")
    key = trust.get(kid)
    if key is None:
        raise BundleUntrustedIssuerError(f"bundle is signed by key {kid[:16]}…, which is not in this unit's trust "
                                         f"file{' ' + trust.path if trust.path else ''}")
    try:
        key.verifier().verify(base64.b64decode(doc["sig"]), SIGNING_CONTEXT + raw)
    except InvalidSignature:
        raise BundleSignatureError(f"the manifest signature does not verify with issuer key {key.name!r} "
                                   f"({kid[:16]}…): the bundle was forged or altered") from None
    return key


def open_bundle(data: bytes, device: DeviceKey, trust: TrustStore, limits: Limits = Limits()) -> Bundle:
    """Decrypt and verify a bundle (see the module docstring for the order of checks).

    Raises only :class:`~edge.watchlist.errors.BundleError` subclasses.
    """
    if len(data) > limits.max_bundle_bytes:
        raise BundleLimitError(f"bundle file is {len(data):,} bytes, over watchlist.max_bundle_bytes "
                               f"{limits.max_bundle_bytes:,}")
    file_sha = _sha(data)
    env = parse_envelope(data)
    payload = open_envelope(env, device)
    del env
    tar = TarReader(BoundedInflater(payload, limits.max_unpacked_bytes, limits.max_ratio))

    def expect(name: str, cap: int) -> bytes:
        head = tar.next_member(check_member_name)
        if head is None or head[0] != name:
            raise BundleFormatError(f"archive must start with {MANIFEST} then {SIGNATURE}; found "
                                    f"{'the end' if head is None else repr(head[0])} where {name} belongs")
        if head[1] > cap:
            raise BundleLimitError(f"{name} is {head[1]:,} bytes, over the {cap:,}-byte limit")
        return tar.read_data(head[1], name)

    raw = expect(MANIFEST, limits.max_manifest_bytes)
    signer = _verify_signature(raw, expect(SIGNATURE, MAX_SIGNATURE_BYTES), trust)
    manifest = parse_manifest(raw, limits)
    if manifest.issuer_key_id != signer.key_id:
        raise BundleSignatureError(f"manifest names issuer key {manifest.issuer_key_id[:16]}… but was signed "
                                   f"by {signer.key_id[:16]}…")
    got: dict[str, bytes] = {}
    while (head := tar.next_member(check_member_name)) is not None:
        name, size = head
        if name in (MANIFEST, SIGNATURE) or name not in manifest.members:
            raise BundleIntegrityError(f"archive member {name!r} is not listed in the signed manifest")
        if name in got:
            raise BundleIntegrityError(f"archive member {name!r} appears twice")
        want_size, want_sha = manifest.members[name]
        if size != want_size:
            raise BundleIntegrityError(f"archive member {name!r} is {size:,} bytes but the signed manifest "
                                       f"says {want_size:,}")
        body = tar.read_data(size, name)
        if _sha(body) != want_sha:
            raise BundleIntegrityError(f"archive member {name!r} does not match its sha256 in the signed manifest")
        if name != EMBEDDINGS and not body.startswith(b"\xff\xd8\xff"):
            raise BundleFormatError(f"thumbnail {name!r} is not a JPEG")
        got[name] = body
    missing = [n for n in manifest.members if n not in got]
    if missing:
        raise BundleIntegrityError(f"{len(missing)} member(s) listed in the signed manifest are missing, "
                                   f"e.g. {missing[0]!r}")
    emb = np.frombuffer(got.pop(EMBEDDINGS), dtype="<f4").reshape(manifest.n_templates, manifest.dim)
    emb = emb.astype(np.float32)  # native byte order, own copy
    if not np.isfinite(emb).all():
        raise BundleFormatError("embeddings contain NaN or inf")
    emb.flags.writeable = False
    return Bundle(manifest, signer, emb, MappingProxyType(got), file_sha, len(data))


def read_file_limited(path, limits: Limits) -> bytes:
    """A bundle file's bytes, refusing files over the size limit before reading them."""
    p = Path(path)
    try:
        fd = open_regular(p, "bundle file", BundleFormatError)  # a FIFO or /dev/zero is refused, never read
    except BundleFormatError as exc:
        if str(exc).endswith("bundle file not found"):
            raise BundleFormatError(f"{p}: no such bundle file") from None
        raise
    try:
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limits.max_bundle_bytes:
                raise BundleLimitError(f"{p}: {size:,} bytes, over watchlist.max_bundle_bytes "
                                       f"{limits.max_bundle_bytes:,}")
            data = f.read(size + 1)  # not max+1: a huge read() preallocates its whole buffer
    except OSError as exc:
        raise BundleFormatError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if len(data) > limits.max_bundle_bytes:
        raise BundleLimitError(f"{p}: over watchlist.max_bundle_bytes {limits.max_bundle_bytes:,}")
    return data

