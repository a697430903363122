"""The outer layer of a bundle: encryption to one or more units' X25519 keys.

File layout::

    b"EDGE-WL\\x01"                 8-byte magic (format version 1)
    uint32 big-endian              length H of the header (at most 64 KiB)
    header                         H bytes of canonical JSON (see below)
    ciphertext                     AES-256-GCM(CEK, nonce, payload, aad = all bytes before it) + tag

The header names the cipher, the payload nonce and, per recipient unit, its id, its key id,
an ephemeral X25519 public key ``epk`` and the content key CEK wrapped with
``KEK = HKDF-SHA256(X25519(eph, unit), salt = epk || unit_pub, info = WRAP_INFO)`` under
AES-256-GCM (random nonce, aad = ``WRAP_INFO | unit_id | key_id``). The whole header is the
payload's associated data, so flipping any byte of the file makes decryption fail.

Encryption gives confidentiality only: anybody holding a unit's public key can encrypt to it.
Authenticity comes from the issuer's signature inside the payload (:mod:`edge.watchlist.bundle`).
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.encoding import b64decode_exact, b64encode, canonical_json
from edge.types import UNIT_ID_RE
from edge.watchlist.errors import BundleDecryptError, BundleFormatError, BundleLimitError, BundleNotForThisUnitError
from edge.watchlist.keys import DeviceKey, UnitPublic

MAGIC = b"EDGE-WL\x01"
MAX_HEADER_BYTES = 64 * 1024
MAX_RECIPIENTS = 64
MAX_AEAD_BYTES = (1 << 31) - 1 - 16  # the cryptography package's one-shot AEAD limit
WRAP_INFO = b"edge-lfr/watchlist/v1/key-wrap"
HEADER_KEYS = {"format", "version", "cipher", "kem", "nonce", "recipients"}
RECIPIENT_KEYS = {"unit_id", "key_id", "epk", "nonce", "wrapped"}
_HEX64 = re.compile(r"[0-9a-f]{64}")




def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name):
    raise ValueError(f"{name} is not allowed")


def strict_json(raw: bytes, what: str, error: type[Exception] = BundleFormatError):
    """Parse canonical JSON: UTF-8, no duplicate keys, no NaN/Infinity, and byte-identical to
    its canonical re-encoding (so the signed bytes have exactly one meaning)."""
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"{what} is not valid JSON: {str(exc)[:200]}") from None
    try:
        again = canonical_json(doc)
    except (ValueError, RecursionError) as exc:
        raise error(f"{what} is not encodable as canonical JSON: {str(exc)[:200]}") from None
    if again != raw:
        raise error(f"{what} is not in canonical form (sorted keys, no spaces, ASCII)")
    return doc






@dataclass(frozen=True)
class Recipient:
    unit_id: str
    key_id: str
    epk: bytes
    nonce: bytes
    wrapped: bytes


@dataclass(frozen=True)
class Envelope:
    header: dict
    recipients: tuple[Recipient, ...]
    nonce: bytes
    aad: bytes
    ciphertext: memoryview

    @property
    def unit_ids(self) -> list[str]:
        return [r.unit_id for r in self.recipients]


def _wrap_aad(unit_id: str, kid: str) -> bytes:
    return WRAP_INFO + b"|" + unit_id.encode("ascii") + b"|" + kid.encode("ascii")


def _kek(shared: bytes, epk: bytes, unit_pub: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + unit_pub, info=WRAP_INFO).derive(shared)


def seal(payload: bytes, recipients: list[UnitPublic]) -> bytes:
    """Encrypt ``payload`` to every unit in ``recipients`` (1..64, distinct keys)."""
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise BundleLimitError(f"a bundle needs 1 to {MAX_RECIPIENTS} target units, got {len(recipients)}")
    if len({r.key_id for r in recipients}) != len(recipients):
        raise BundleFormatError("the same unit key is listed twice among the target units")
    if len(payload) > MAX_AEAD_BYTES:
        raise BundleLimitError(f"the bundle content is {len(payload):,} bytes, more than {MAX_AEAD_BYTES:,}")
    cek = AESGCM.generate_key(256)
    entries = []
    for unit in recipients:
        eph = X25519PrivateKey.generate()
        epk = eph.public_key().public_bytes_raw()
        shared = eph.exchange(X25519PublicKey.from_public_bytes(unit.x25519))
        nonce = os.urandom(12)
        wrapped = AESGCM(_kek(shared, epk, unit.x25519)).encrypt(nonce, cek, _wrap_aad(unit.unit_id, unit.key_id))
        entries.append({"unit_id": unit.unit_id, "key_id": unit.key_id, "epk": b64encode(epk),
                        "nonce": b64encode(nonce), "wrapped": b64encode(wrapped)})
    nonce = os.urandom(12)
    header = canonical_json({"format": "edge-lfr-watchlist-bundle", "version": 1, "cipher": "AES-256-GCM",
                             "kem": "X25519-HKDF-SHA256", "nonce": b64encode(nonce), "recipients": entries})
    aad = MAGIC + struct.pack(">I", len(header)) + header
    return aad + AESGCM(cek).encrypt(nonce, payload, aad)


def parse_envelope(data: bytes) -> Envelope:
    """The clear-text header of a bundle file (no key needed)."""
    if len(data) < len(MAGIC) + 4:
        raise BundleFormatError(f"file is {len(data)} bytes: too short to be a watchlist bundle")
    if data[:len(MAGIC)] != MAGIC:
        if data[:7] == MAGIC[:7]:
            raise BundleFormatError(f"unsupported bundle format version {data[7]}")
        raise BundleFormatError("not a watchlist bundle (wrong magic bytes)")
    (hlen,) = struct.unpack(">I", data[8:12])
    if hlen > MAX_HEADER_BYTES:
        raise BundleFormatError(f"bundle header length {hlen:,} is over the {MAX_HEADER_BYTES:,}-byte limit")
    end = 12 + hlen
    if len(data) < end + 16:
        raise BundleFormatError("bundle is truncated (header or ciphertext missing)")
    header = strict_json(bytes(data[12:end]), "bundle header")
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        raise BundleFormatError("bundle header has the wrong fields")
    if (header["format"], header["version"], header["cipher"], header["kem"]) != (
            "edge-lfr-watchlist-bundle", 1, "AES-256-GCM", "X25519-HKDF-SHA256"):
        raise BundleFormatError("bundle header names an unsupported format, version or cipher")
    items = header["recipients"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_RECIPIENTS:
        raise BundleFormatError(f"bundle header must list 1 to {MAX_RECIPIENTS} recipients")
    recipients = []
    for i, r in enumerate(items):
        if not isinstance(r, dict) or set(r) != RECIPIENT_KEYS:
            raise BundleFormatError(f"bundle header recipient {i} has the wrong fields")
        if not isinstance(r["unit_id"], str) or not UNIT_ID_RE.fullmatch(r["unit_id"]):
            raise BundleFormatError(f"bundle header recipient {i}: bad unit id")
        if not isinstance(r["key_id"], str) or not _HEX64.fullmatch(r["key_id"]):
            raise BundleFormatError(f"bundle header recipient {i}: bad key id")
        recipients.append(Recipient(r["unit_id"], r["key_id"], b64decode_exact(r["epk"], "recipient epk", BundleFormatError, 32),
                                    b64decode_exact(r["nonce"], "recipient nonce", BundleFormatError, 12),
                                    b64decode_exact(r["wrapped"], "recipient wrapped key", BundleFormatError, 48)))
    if len({r.key_id for r in recipients}) != len(recipients):
        raise BundleFormatError("bundle header lists the same unit key twice")
    nonce = b64decode_exact(header["nonce"], "bundle nonce", BundleFormatError, 12)
    return Envelope(header, tuple(recipients), nonce, bytes(data[:end]), memoryview(data)[end:])


def open_envelope(env: Envelope, device: DeviceKey) -> bytes:
    """Decrypt the payload with this unit's device key."""
    mine = device.key_id
    rec = next((r for r in env.recipients if r.key_id == mine), None)
    if rec is None:
        same_id = [r for r in env.recipients if r.unit_id == device.unit_id]
        hint = (f" (unit {device.unit_id} is listed, but with device key {same_id[0].key_id[:16]}…: "
                "was the unit re-keyed?)" if same_id else "")
        raise BundleNotForThisUnitError(
            f"bundle is addressed to unit(s) {', '.join(env.unit_ids)}, not to this unit "
            f"{device.unit_id} (key {mine[:16]}…){hint}")
    try:
        shared = device.x25519.exchange(X25519PublicKey.from_public_bytes(rec.epk))
        cek = AESGCM(_kek(shared, rec.epk, device.public.x25519)).decrypt(
            rec.nonce, rec.wrapped, _wrap_aad(rec.unit_id, rec.key_id))
        return AESGCM(cek).decrypt(env.nonce, env.ciphertext, env.aad)
    except (InvalidTag, ValueError):
        raise BundleDecryptError("bundle cannot be decrypted: it was altered or damaged "
                                 "(authentication failed)") from None
