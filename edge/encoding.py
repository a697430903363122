"""Byte encodings shared by everything that signs, hashes or ships data: canonical JSON and base64.

Signed manifests (watchlist bundles), audit entries and their hashes all depend on one JSON
value having exactly one byte string, so there is one encoder for it.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from edge.errors import InputError


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, ASCII only, no NaN: one byte string per value."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def b64encode(data: bytes) -> str:
    """Standard base64 (with padding) as an ASCII str."""
    return base64.b64encode(data).decode("ascii")


def b64decode_exact(text: object, what: str, error: type[Exception] = InputError, length: int | None = None) -> bytes:
    """Strict base64 (no stray characters) of exactly ``length`` bytes when given; ``error``
    names ``what`` and the problem."""
    if not isinstance(text, str):
        raise error(f"{what} must be a base64 string, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise error(f"{what} is not valid base64") from None
    if length is not None and len(raw) != length:
        raise error(f"{what} must decode to {length} bytes, got {len(raw)}")
    return raw
