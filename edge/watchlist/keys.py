"""Keys and trust: who may sign a watchlist, and which unit may read it.

Two kinds of key pair (from the ``cryptography`` package):

* **issuer** (back office): Ed25519, signs bundle manifests. Private key: one PKCS#8 PEM
  block, file mode 0600, optionally passphrase-protected. Public key: a small YAML file
  (``<name>.issuer.pub.yaml``) that goes into every unit's trust file.
* **device** (one per unit): X25519 (bundles are encrypted to it) and Ed25519 (reserved for
  the unit's own signatures, e.g. match events). Private key: two PKCS#8 PEM blocks in one
  0600 file. Public key: ``<unit_id>.unit.yaml``, the unit's registration with the back office.

A key id is the lowercase hex SHA-256 of the raw 32-byte public key (the X25519 key for a
device). Public-key files carry the id and it is re-computed on every load, so a damaged or
edited file is refused.

The **trust file** (YAML) lists the issuer keys a unit accepts, each with a validity window
and a ``revoked`` flag; rotating a key is adding the new one and later revoking or letting
the old one lapse::

    version: 1
    issuers:
      - name: backoffice-2025
        key_id: 3f1c...
        ed25519: <base64 raw public key>
        valid_from: "2025-01-01T00:00:00Z"
        valid_until: "2026-01-01T00:00:00Z"
        revoked: false
        note: ""
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.atomicfile import atomic_write, write_new_private
from edge.config import safe_load_unique
from edge.encoding import b64decode_exact, b64encode
from edge.errors import ConfigError, EdgeError
from edge.types import UNIT_ID_RE
from edge.readfile import read_regular
from edge.utc import format_utc, parse_utc

__all__ = [
    "KeyFileError", "KeyPassphraseError", "TrustFileError",
    "IssuerKey", "IssuerPublic", "DeviceKey", "UnitPublic", "TrustedKey", "TrustStore",
    "key_id", "check_unit_id", "generate_issuer", "generate_device",
    "save_issuer", "save_device", "load_issuer_key", "load_device_key",
    "load_issuer_public", "load_unit_public", "load_trust", "save_trust", "read_passphrase", "device_key_from_config",
]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_TRUST_FILE_BYTES = 1024 * 1024
MAX_TRUSTED_KEYS = 256
_PEM_RE = re.compile(rb"-----BEGIN (?:ENCRYPTED )?PRIVATE KEY-----.+?-----END (?:ENCRYPTED )?PRIVATE KEY-----\r?\n?",
                     re.DOTALL)


class KeyFileError(EdgeError):
    """A key file that is missing, unreadable, malformed or of the wrong kind."""

    exit_code = 66  # EX_NOINPUT


class KeyPassphraseError(KeyFileError):
    """A passphrase-protected key without its passphrase, or with a wrong one."""

    exit_code = 77  # EX_NOPERM


class TrustFileError(ConfigError):
    """A trust file that is missing or malformed."""

    exit_code = 78  # EX_CONFIG


def key_id(raw_public: bytes) -> str:
    """Lowercase hex SHA-256 of a raw 32-byte public key."""
    return hashlib.sha256(raw_public).hexdigest()


def check_unit_id(unit_id: object, what: str = "unit id", error: type[Exception] = KeyFileError) -> str:
    if not isinstance(unit_id, str) or not UNIT_ID_RE.fullmatch(unit_id):
        raise error(f"{what} must be 1-64 letters, digits, '-' or '_', got {unit_id!r:.80}")
    return unit_id


def _raw(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)






# --------------------------------------------------------------------------------------
# Key records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuerPublic:
    name: str
    public: bytes  # raw Ed25519 public key

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public)


@dataclass(frozen=True)
class IssuerKey:
    name: str
    private: Ed25519PrivateKey = field(repr=False)

    @property
    def public(self) -> IssuerPublic:
        return IssuerPublic(self.name, _raw(self.private.public_key()))

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


@dataclass(frozen=True)
class UnitPublic:
    unit_id: str
    x25519: bytes   # raw, bundles are encrypted to it
    ed25519: bytes  # raw, the unit's own signing key

    @property
    def key_id(self) -> str:
        return key_id(self.x25519)


@dataclass(frozen=True)
class DeviceKey:
    unit_id: str
    x25519: X25519PrivateKey = field(repr=False)
    ed25519: Ed25519PrivateKey = field(repr=False)

    @property
    def public(self) -> UnitPublic:
        return UnitPublic(self.unit_id, _raw(self.x25519.public_key()), _raw(self.ed25519.public_key()))

    @property
    def key_id(self) -> str:
        return self.public.key_id


def generate_issuer(name: str) -> IssuerKey:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise KeyFileError(f"issuer key name must be 1-64 letters, digits, '.', '-' or '_', got {name!r:.80}")
    return IssuerKey(name, Ed25519PrivateKey.generate())


def generate_device(unit_id: str) -> DeviceKey:
    check_unit_id(unit_id)
    return DeviceKey(unit_id, X25519PrivateKey.generate(), Ed25519PrivateKey.generate())


# --------------------------------------------------------------------------------------
# Private key files
# --------------------------------------------------------------------------------------


def read_passphrase(path: str | os.PathLike | None) -> bytes | None:
    """The passphrase in ``path`` (first line, trailing newline stripped); None for no file."""
    if not path:
        return None
    data = read_regular(path, 4096, "passphrase file", KeyFileError)
    line = data.splitlines()[0] if data.splitlines() else b""
    if not line:
        raise KeyFileError(f"{path}: passphrase file is empty")
    return line


def _pem(private, passphrase: bytes | None) -> bytes:
    enc = (serialization.BestAvailableEncryption(passphrase) if passphrase
           else serialization.NoEncryption())
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _read_limited(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """A regular file of at most ``limit`` bytes (no FIFO, device or folder): KeyFileError otherwise."""
    p = Path(path)
    try:
        return read_regular(p, limit, what, KeyFileError)
    except KeyFileError as exc:
        if "larger than" in str(exc):
            raise KeyFileError(f"{p}: {what} is more than {limit:,} bytes; not a {what}") from None
        raise


def _load_pem_blocks(path: str | os.PathLike, passphrase: bytes | None, what: str) -> list:
    data = _read_limited(path, MAX_KEY_FILE_BYTES, what)
    blocks = _PEM_RE.findall(data)
    if not blocks:
        raise KeyFileError(f"{path}: no PEM private key found; is this the {what}?")
    keys = []
    for block in blocks:
        encrypted = b"ENCRYPTED" in block.split(b"\n", 1)[0]
        if encrypted and not passphrase:
            raise KeyPassphraseError(f"{path}: the {what} is passphrase-protected; give its passphrase file")
        try:
            keys.append(serialization.load_pem_private_key(block, password=passphrase if encrypted else None))
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            if encrypted:
                raise KeyPassphraseError(f"{path}: cannot decrypt the {what}: wrong passphrase?") from None
            raise KeyFileError(f"{path}: malformed {what}: {exc}") from None
    return keys


def _public_yaml(kind: str, fields: dict) -> bytes:
    header = {
        "edge-lfr-issuer-public-key": "# edge-lfr issuer public key: add it to units' trust files "
                                      "(edge-lfr keys trust add --issuer THIS_FILE)\n",
        "edge-lfr-unit-public-key": "# edge-lfr unit registration: give it to the back office; watchlist "
                                    "bundles are encrypted to this key (edge-lfr watchlist build --unit THIS_FILE)\n",
    }[kind]
    return (header + yaml.safe_dump({"kind": kind, **fields}, sort_keys=False)).encode("utf-8")


def save_issuer(key: IssuerKey, out_dir: str | os.PathLike, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Write ``<name>.issuer.key`` (0600) and ``<name>.issuer.pub.yaml``; refuse to overwrite."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv = out / f"{key.name}.issuer.key"
    pub = out / f"{key.name}.issuer.pub.yaml"
    for p in (priv, pub):
        if p.exists():
            raise KeyFileError(f"{p} already exists; keys are never overwritten (move it away first)")
    comment = f"# edge-lfr issuer signing key {key.name!r}, key id {key.key_id}\n".encode()
    write_new_private(priv, comment + _pem(key.private, passphrase))
    ip = key.public
    atomic_write(pub, _public_yaml("edge-lfr-issuer-public-key", {
        "name": ip.name, "key_id": ip.key_id, "ed25519": b64encode(ip.public), "created": format_utc(_now())}), 0o644)
    return priv, pub


def save_device(key: DeviceKey, out_dir: str | os.PathLike, passphrase: bytes | None = None,
                key_name: str = "device.key") -> tuple[Path, Path]:
    """Write ``device.key`` (0600, two PEM blocks) and ``<unit_id>.unit.yaml``; refuse to overwrite."""
    if not isinstance(key_name, str) or not NAME_RE.fullmatch(key_name):
        raise KeyFileError(f"--key-name {key_name!r:.80}: a file name in --out (1-64 letters, digits, '.', "
                           "'-' or '_', starting with a letter or digit; no folder, no '..')")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv = out / key_name
    pub = out / f"{key.unit_id}.unit.yaml"
    for p in (priv, pub):
        if p.exists():
            raise KeyFileError(f"{p} already exists; keys are never overwritten (move it away first)")
    comment = (f"# edge-lfr device key of unit {key.unit_id}, key id {key.key_id}\n"
               "# block 1: Ed25519 (unit signatures), block 2: X25519 (watchlist decryption)\n").encode()
    write_new_private(priv, comment + _pem(key.ed25519, passphrase) + _pem(key.x25519, passphrase))
    up = key.public
    atomic_write(pub, _public_yaml("edge-lfr-unit-public-key", {
        "unit_id": up.unit_id, "key_id": up.key_id, "x25519": b64encode(up.x25519), "ed25519": b64encode(up.ed25519),
        "created": format_utc(_now())}), 0o644)
    return priv, pub


def load_issuer_key(path: str | os.PathLike, passphrase: bytes | None = None) -> IssuerKey:
    keys = _load_pem_blocks(path, passphrase, "issuer key file")
    if len(keys) != 1 or not isinstance(keys[0], Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an issuer key (expected one Ed25519 private key); "
                           "is this a device key?")
    name = Path(path).name
    name = name[:-len(".issuer.key")] if name.endswith(".issuer.key") else "issuer"
    return IssuerKey(name if NAME_RE.fullmatch(name) else "issuer", keys[0])


def load_device_key(path: str | os.PathLike, unit_id: str, passphrase: bytes | None = None) -> DeviceKey:
    keys = _load_pem_blocks(path, passphrase, "device key file")
    x = [k for k in keys if isinstance(k, X25519PrivateKey)]
    e = [k for k in keys if isinstance(k, Ed25519PrivateKey)]
    if len(keys) != 2 or len(x) != 1 or len(e) != 1:
        raise KeyFileError(f"{path}: not a device key (expected one X25519 and one Ed25519 private key); "
                           "is this an issuer key?")
    return DeviceKey(check_unit_id(unit_id, "unit.id"), x[0], e[0])


# --------------------------------------------------------------------------------------
# Public key files
# --------------------------------------------------------------------------------------


def _load_yaml_mapping(path: str | os.PathLike, what: str, error: type[Exception], limit: int) -> dict:
    try:
        data = _read_limited(path, limit, what)
    except KeyFileError as exc:
        raise error(str(exc)) from None
    try:
        doc = safe_load_unique(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    except (ValueError, TypeError, OverflowError) as exc:  # an impossible date such as 2026-02-30T00:00:00Z
        raise error(f"{path}: not valid YAML: {exc} (an impossible date or number; quote dates and check "
                    "them)") from None
    except RecursionError:
        raise error(f"{path}: not valid YAML: nested too deeply") from None
    if not isinstance(doc, dict):
        raise error(f"{path}: expected a YAML mapping in the {what}")
    return doc


def _check_kind(doc: dict, kind: str, path, error) -> None:
    if doc.get("kind") != kind:
        raise error(f"{path}: kind is {doc.get('kind')!r}, expected {kind!r}")


def _check_id(doc: dict, raw: bytes, path, error) -> None:
    if doc.get("key_id") != key_id(raw):
        raise error(f"{path}: key_id {str(doc.get('key_id'))[:16]}… does not match the key "
                    f"({key_id(raw)[:16]}…); the file is damaged or was edited")


def load_issuer_public(path: str | os.PathLike) -> IssuerPublic:
    doc = _load_yaml_mapping(path, "issuer public key file", KeyFileError, MAX_KEY_FILE_BYTES)
    _check_kind(doc, "edge-lfr-issuer-public-key", path, KeyFileError)
    raw = b64decode_exact(doc.get("ed25519"), f"{path}: ed25519", KeyFileError, length=32)
    _check_id(doc, raw, path, KeyFileError)
    name = doc.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise KeyFileError(f"{path}: name must be 1-64 letters, digits, '.', '-' or '_', got {name!r:.80}")
    return IssuerPublic(name, raw)


def load_unit_public(path: str | os.PathLike) -> UnitPublic:
    doc = _load_yaml_mapping(path, "unit public key file", KeyFileError, MAX_KEY_FILE_BYTES)
    _check_kind(doc, "edge-lfr-unit-public-key", path, KeyFileError)
    x = b64decode_exact(doc.get("x25519"), f"{path}: x25519", KeyFileError, length=32)
    e = b64decode_exact(doc.get("ed25519"), f"{path}: ed25519", KeyFileError, length=32)
    _check_id(doc, x, path, KeyFileError)
    return UnitPublic(check_unit_id(doc.get("unit_id"), f"{path}: unit_id"), x, e)


# --------------------------------------------------------------------------------------
# Trust file
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    name: str
    public: bytes
    valid_from: int
    valid_until: int
    revoked: bool = False
    note: str = ""

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public)

    def problem(self, at: int | None, skew: int = 0) -> str | None:
        """Why this key may not be used at Unix time ``at`` (None = time unknown: only the
        revocation is checked); None when it may."""
        if self.revoked:
            return f"issuer key {self.name!r} ({self.key_id[:16]}…) is revoked" + (f": {self.note}" if self.note else "")
        if at is None:
            return None
        if at < self.valid_from - skew:
            return (f"issuer key {self.name!r} ({self.key_id[:16]}…) is not valid before "
                    f"{format_utc(self.valid_from)}")
        if at >= self.valid_until:
            return (f"issuer key {self.name!r} ({self.key_id[:16]}…) expired at {format_utc(self.valid_until)}")
        return None


@dataclass(frozen=True)
class TrustStore:
    keys: tuple[TrustedKey, ...] = ()
    path: str = ""

    def get(self, kid: str) -> TrustedKey | None:
        for k in self.keys:
            if k.key_id == kid:
                return k
        return None

    def find(self, prefix: str) -> TrustedKey:
        """The one key whose id starts with ``prefix`` (at least 8 hex characters)."""
        prefix = prefix.lower()
        if len(prefix) < 8:
            raise TrustFileError("give at least 8 hex characters of the key id")
        hits = [k for k in self.keys if k.key_id.startswith(prefix)]
        if len(hits) != 1:
            raise TrustFileError(f"{len(hits)} keys in the trust file have an id starting with {prefix!r}")
        return hits[0]

    def with_key(self, key: TrustedKey) -> "TrustStore":
        if self.get(key.key_id):
            raise TrustFileError(f"key {key.key_id[:16]}… is already in the trust file")
        if len(self.keys) >= MAX_TRUSTED_KEYS:
            raise TrustFileError(f"a trust file holds at most {MAX_TRUSTED_KEYS} keys")
        return replace(self, keys=self.keys + (key,))

    def revoked(self, kid: str, note: str = "") -> "TrustStore":
        k = self.get(kid)
        if k is None:
            raise TrustFileError(f"key {kid[:16]}… is not in the trust file")
        new = replace(k, revoked=True, note=note or k.note)
        return replace(self, keys=tuple(new if x.key_id == kid else x for x in self.keys))


def trusted_key(pub: IssuerPublic, valid_from: int, valid_until: int, note: str = "") -> TrustedKey:
    if valid_until <= valid_from:
        raise TrustFileError(f"valid_until {format_utc(valid_until)} is not after valid_from {format_utc(valid_from)}")
    return TrustedKey(pub.name, pub.public, int(valid_from), int(valid_until), False, note)


def load_trust(path: str | os.PathLike) -> TrustStore:
    doc = _load_yaml_mapping(path, "trust file", TrustFileError, MAX_TRUST_FILE_BYTES)
    if doc.get("version") != 1:
        raise TrustFileError(f"{path}: version must be 1, got {doc.get('version')!r}")
    items = doc.get("issuers")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise TrustFileError(f"{path}: issuers must be a list")
    if len(items) > MAX_TRUSTED_KEYS:
        raise TrustFileError(f"{path}: more than {MAX_TRUSTED_KEYS} issuer keys")
    unknown = set(doc) - {"version", "issuers"}
    if unknown:
        raise TrustFileError(f"{path}: unknown key {sorted(map(str, unknown))[0]!r}")
    keys: list[TrustedKey] = []
    for i, item in enumerate(items):
        where = f"{path}: issuers[{i}]"
        if not isinstance(item, dict):
            raise TrustFileError(f"{where}: expected a mapping")
        allowed = {"name", "key_id", "ed25519", "valid_from", "valid_until", "revoked", "note"}
        extra = set(item) - allowed
        if extra:
            raise TrustFileError(f"{where}: unknown key {sorted(map(str, extra))[0]!r}")
        raw = b64decode_exact(item.get("ed25519"), f"{where}.ed25519", TrustFileError, length=32)
        _check_id(item, raw, where, TrustFileError)
        name = item.get("name", "")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise TrustFileError(f"{where}.name must be 1-64 letters, digits, '.', '-' or '_'")
        vf = parse_utc(item.get("valid_from"), f"{where}.valid_from", TrustFileError)
        vu = parse_utc(item.get("valid_until"), f"{where}.valid_until", TrustFileError)
        if vu <= vf:
            raise TrustFileError(f"{where}: valid_until is not after valid_from")
        revoked = item.get("revoked", False)
        if not isinstance(revoked, bool):
            raise TrustFileError(f"{where}.revoked must be true or false")
        note = item.get("note", "") or ""
        if not isinstance(note, str):
            raise TrustFileError(f"{where}.note must be text")
        k = TrustedKey(name, raw, vf, vu, revoked, note)
        if any(x.key_id == k.key_id for x in keys):
            raise TrustFileError(f"{where}: key {k.key_id[:16]}… is listed twice")
        keys.append(k)
    return TrustStore(tuple(keys), str(path))


def save_trust(store: TrustStore, path: str | os.PathLike) -> None:
    doc = {"version": 1, "issuers": [
        {"name": k.name, "key_id": k.key_id, "ed25519": b64encode(k.public), "valid_from": format_utc(k.valid_from),
         "valid_until": format_utc(k.valid_until), "revoked": k.revoked, "note": k.note} for k in store.keys]}
    text = ("# edge-lfr trust file: the issuer keys whose watchlist bundles this unit accepts.\n"
            "# Edit with `edge-lfr keys trust add|revoke|list`.\n" + yaml.safe_dump(doc, sort_keys=False))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode("utf-8"), 0o644)


def _now() -> int:
    return int(time.time())


def device_key_from_config(config, unit_id: str | None = None) -> "DeviceKey":
    """This unit's device key, as its configuration names it (``unit.device_key``, with the
    passphrase in ``unit.device_key_passphrase_file`` when the key is encrypted)."""
    u = config.unit
    return load_device_key(u.device_key, unit_id or u.id or "unit", read_passphrase(u.device_key_passphrase_file))
