"""Shared helpers for the watchlist-bundle tests: keys, a controllable clock, synthetic bundles
and hostile ones crafted with a valid signature (so each defence is reached on its own)."""
from __future__ import annotations

import copy
import gzip
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from edge.watchlist.bundle import (EMBEDDINGS, MANIFEST, SIGNATURE, Limits, SubjectEntry, assemble, make_bundle,
                         manifest_dict, sign_manifest)
from edge.watchlist.envelope import canonical_json, seal
from edge.watchlist.keys import TrustedKey, TrustStore, generate_device, generate_issuer
from edge.watchlist.safetar import TarEntry, pack_tar

T0 = 1_750_000_000            # 2025-06-15T15:06:40Z: "now" for the tests
HOUR = 3600
YEAR = 365 * 86400
MODEL = "ab" * 32             # the model sha256 the test unit "runs"


class Clock:
    """Injectable wall clock and monotonic clock."""

    def __init__(self, now: float = T0, mono: float = 1000.0):
        self.t = float(now)
        self.m = float(mono)

    def now(self) -> float:
        return self.t

    def mono(self) -> float:
        return self.m

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.m += seconds


@dataclass
class Keys:
    issuer: object
    other_issuer: object
    dev7: object
    dev8: object

    def trust(self, **kw) -> TrustStore:
        return TrustStore((trusted(self.issuer, **kw),))


def trusted(issuer, valid_from: int = T0 - YEAR, valid_until: int = T0 + YEAR, revoked: bool = False,
            note: str = "") -> TrustedKey:
    return TrustedKey(issuer.name, issuer.public.public, valid_from, valid_until, revoked, note)


def make_keys() -> Keys:
    return Keys(generate_issuer("bo-2025"), generate_issuer("rogue"), generate_device("van-07"),
                generate_device("van-08"))


def unit_vectors(n: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def jpeg(seed: int = 0, size: int = 16) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def subjects(n: int, prefix: str = "S", categories=("wanted", "missing", "vulnerable")) -> list[SubjectEntry]:
    return [SubjectEntry(f"{prefix}{i:05d}", categories[i % len(categories)], "R1", (f"source {i}",),
                         0.7 if i == 1 else None) for i in range(n)]


def build(keys: Keys, *, serial: int = 10, n: int = 4, seed: int = 0, recipients=None, issuer=None,
          valid_from: int = T0 - HOUR, valid_until: int = T0 + 6 * HOUR, issued_at: int | None = None,
          model: str = MODEL, prefix: str = "S", thumbs: bool = True, limits: Limits = Limits()) -> bytes:
    """A valid bundle of n single-template subjects with random unit embeddings."""
    data, _ = make_bundle(
        subjects=subjects(n, prefix), embeddings=unit_vectors(n, seed=seed),
        thumbnails={i: jpeg(i) for i in range(n)} if thumbs else {}, issuer=issuer or keys.issuer,
        recipients=recipients or [keys.dev7.public], serial=serial, operation_id="OP-1",
        authorising_officer="Supt J Smith 4411", valid_from=valid_from, valid_until=valid_until,
        model_sha256=model, issued_at=valid_from if issued_at is None else issued_at, limits=limits)
    return data


class Pieces:
    """The parts of a valid bundle, to be altered and re-signed by a test."""

    def __init__(self, keys: Keys, n: int = 3, serial: int = 20, seed: int = 5):
        self.keys = keys
        self.emb = unit_vectors(n, seed=seed).astype("<f4").tobytes()
        self.thumbs = {f"thumbnails/{i:06d}.jpg": jpeg(100 + i) for i in range(n)}
        import hashlib
        members = {EMBEDDINGS: (len(self.emb), hashlib.sha256(self.emb).hexdigest())}
        members.update({k: (len(v), hashlib.sha256(v).hexdigest()) for k, v in self.thumbs.items()})
        subs = [SubjectEntry(f"P{i}", "wanted", "R1", (f"src {i}",), None, f"thumbnails/{i:06d}.jpg")
                for i in range(n)]
        self.doc = manifest_dict(bundle_id="c" * 32, serial=serial, issuer_key_id=keys.issuer.key_id,
                                 issued_at=T0 - HOUR, valid_from=T0 - HOUR, valid_until=T0 + 6 * HOUR,
                                 operation_id="OP-2", authorising_officer="Supt A 1", targets=[
                                     (keys.dev7.unit_id, keys.dev7.key_id)], model_sha256=MODEL, dim=128,
                                 subjects=subs, members=members)

    def copy_doc(self) -> dict:
        return copy.deepcopy(self.doc)

    def members(self) -> list[TarEntry]:
        return [TarEntry(EMBEDDINGS, self.emb)] + [TarEntry(k, v) for k, v in sorted(self.thumbs.items())]

    def craft(self, doc=None, raw: bytes | None = None, members=None, signer=None, sig: bytes | None = None,
              recipients=None, extra_first=()) -> bytes:
        """Sign (with ``signer``, default the trusted issuer) and encrypt a manifest and members."""
        if raw is None:
            raw = canonical_json(self.doc if doc is None else doc)
        entries = list(extra_first) + [TarEntry(MANIFEST, raw),
                                       TarEntry(SIGNATURE, sig if sig is not None else
                                                sign_manifest(raw, signer or self.keys.issuer))]
        entries += self.members() if members is None else list(members)
        return assemble(entries, recipients or [self.keys.dev7.public])


def bomb_payload(name: str = MANIFEST, total: int = 256 << 20) -> bytes:
    """gzip of a tar whose first member claims ``total`` bytes of zeros (a few hundred KB)."""
    header = pack_tar([TarEntry(name, b"")])[:512]
    header = bytearray(header)
    header[124:136] = b"%011o\0" % total
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [z.compress(bytes(header))]
    chunk = bytes(1 << 20)
    for _ in range(total >> 20):
        out.append(z.compress(chunk))
    out.append(z.flush())
    return b"".join(out)


def sealed(payload: bytes, keys: Keys) -> bytes:
    """Encrypt an arbitrary payload to van-07 (anybody with its public key can)."""
    return seal(payload, [keys.dev7.public])


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def watchlist_cli(argv) -> int:
    """``edge-lfr`` with the watchlist/keys commands, in process: the exit code, and an
    EdgeError printed as the console script prints it."""
    import argparse

    from edge.cli.watchlist import add_commands
    from edge.errors import EdgeError
    p = argparse.ArgumentParser(prog="edge-lfr")
    add_commands(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except EdgeError as exc:
        print(f"edge-lfr: error: {exc}")
        return exc.exit_code
