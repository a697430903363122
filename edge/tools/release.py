"""Sign and verify an offline install bundle's checksum list (``SHA256SUMS``) with a release key.

A release key is an Ed25519 key pair made like a watchlist issuer's (``edge-lfr keys issuer
--name release-2026 --out keys/``): this module only reuses :mod:`edge.watchlist.keys` (loading the
private and public key files, :meth:`IssuerKey.sign`, :meth:`IssuerPublic.verifier`); there is
no crypto of its own. The signed message is ``CONTEXT + SHA256SUMS`` so that a release signature
can never pass for a watchlist signature or the other way round.

``SHA256SUMS.sig`` is JSON: ``{"alg": "ed25519", "key_id": ..., "signer": ..., "sig": base64}``.

On the unit, ``deploy/provision.sh --offline`` verifies the same signature with the OS's own
``openssl pkeyutl`` before it runs anything from the bundle; ``pem`` prints the public key in
the form openssl reads. Run as ``python -m edge.tools.release``; exit codes: 0 ok, 1 signature does not
verify, 2 usage, 65 malformed input, 66 key file missing or malformed, 77 wrong passphrase.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from pathlib import Path

from edge.errors import EdgeError, InputError
from edge.watchlist.keys import IssuerKey, IssuerPublic, load_issuer_key, load_issuer_public, read_passphrase

__all__ = ["CONTEXT", "ReleaseSignatureError", "sign", "verify", "public_pem", "main"]

CONTEXT = b"edge-lfr offline release SHA256SUMS v1\n"
MAX_SUMS_BYTES = 4 * 1024 * 1024
MAX_SIG_BYTES = 4096
# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw 32-byte key follows.
_SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")


class ReleaseSignatureError(EdgeError):
    """The checksum list is not signed by the given release key."""

    exit_code = 1


def sign(sums: bytes, key: IssuerKey) -> bytes:
    """The signature file's bytes for the checksum list ``sums``."""
    doc = {"alg": "ed25519", "key_id": key.key_id, "signer": key.name,
           "sig": base64.b64encode(key.sign(CONTEXT + sums)).decode("ascii")}
    return (json.dumps(doc, indent=1) + "\n").encode("utf-8")


def verify(sums: bytes, sig_file: bytes, pub: IssuerPublic) -> dict:
    """Check ``sig_file`` over ``sums`` with ``pub``; returns the parsed signature document."""
    try:
        doc = json.loads(sig_file.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InputError("the signature file is not JSON") from None
    if not isinstance(doc, dict) or doc.get("alg") != "ed25519" or not isinstance(doc.get("sig"), str):
        raise InputError("the signature file must be {alg: ed25519, key_id, signer, sig}")
    if doc.get("key_id") != pub.key_id:
        raise ReleaseSignatureError(f"signed by key {str(doc.get('key_id'))[:16]}…, not by the release key "
                                    f"{pub.name!r} ({pub.key_id[:16]}…)")
    try:
        sig = base64.b64decode(doc["sig"].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InputError("the signature is not base64") from None
    from cryptography.exceptions import InvalidSignature
    try:
        pub.verifier().verify(sig, CONTEXT + sums)
    except InvalidSignature:
        raise ReleaseSignatureError(f"the signature does not verify with release key {pub.name!r}: "
                                    "the checksum list was altered or signed by another key") from None
    return doc


def public_pem(pub: IssuerPublic) -> str:
    """The key as a PEM SubjectPublicKeyInfo (what ``openssl pkeyutl -pubin`` reads)."""
    b64 = base64.b64encode(_SPKI_ED25519 + pub.public).decode("ascii")
    return f"-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"


def _read(path: str, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(f"{path}: {what} larger than {limit:,} bytes")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.tools.release",
                                description="Sign or verify an edge-lfr offline bundle's SHA256SUMS with a release "
                                            "key (an Ed25519 key made by 'edge-lfr keys issuer').")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sign", help="write SUMS.sig")
    s.add_argument("--key", required=True, help="the release private key (NAME.issuer.key)")
    s.add_argument("--passphrase-file", help="its passphrase, if it has one")
    s.add_argument("--sums", required=True, help="the SHA256SUMS file")
    s.add_argument("--out", required=True, help="the signature file to write")
    v = sub.add_parser("verify", help="check SUMS.sig against the release public key")
    v.add_argument("--release-key", required=True, help="the release public key (NAME.issuer.pub.yaml)")
    v.add_argument("--sums", required=True)
    v.add_argument("--sig", required=True)
    k = sub.add_parser("pem", help="print the release public key as PEM (for openssl)")
    k.add_argument("--release-key", required=True)
    a = p.parse_args(argv)
    try:
        if a.cmd == "sign":
            key = load_issuer_key(a.key, read_passphrase(a.passphrase_file))
            sig = sign(_read(a.sums, MAX_SUMS_BYTES, "checksum list"), key)
            Path(a.out).write_bytes(sig)
            print(f"signed {a.sums} with release key {key.name} ({key.key_id[:16]}…) -> {a.out}")
        elif a.cmd == "verify":
            pub = load_issuer_public(a.release_key)
            verify(_read(a.sums, MAX_SUMS_BYTES, "checksum list"), _read(a.sig, MAX_SIG_BYTES, "signature file"), pub)
            print(f"good signature by release key {pub.name} ({pub.key_id[:16]}…)")
        else:
            sys.stdout.write(public_pem(load_issuer_public(a.release_key)))
    except EdgeError as exc:
        print(f"edge.tools.release: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"edge.tools.release: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
