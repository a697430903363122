"""UTC timestamps as they appear in key files, trust files and bundle manifests.

One textual form is written everywhere: ``2025-06-01T08:00:00Z`` (seconds, UTC, "Z").
Reading also accepts an explicit offset (``+01:00``) or a timezone-aware ``datetime`` (as
YAML gives for unquoted timestamps); a time without a timezone is refused as ambiguous.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timezone

from edge.errors import InputError

_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def format_utc(epoch_seconds: int | float) -> str:
    """``2025-06-01T08:00:00Z`` for a Unix time (fractions of a second are dropped)."""
    return datetime.fromtimestamp(int(epoch_seconds), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_canonical(text: object, what: str, error: type[Exception] = InputError) -> int:
    """Strict parse of the canonical ``YYYY-MM-DDTHH:MM:SSZ`` form only (used for signed data)."""
    if not isinstance(text, str) or not _CANONICAL.fullmatch(text):
        raise error(f"{what} must be a UTC time written as YYYY-MM-DDTHH:MM:SSZ, got {text!r:.60}")
    try:
        dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise error(f"{what}: {text!r} is not a valid date and time") from None
    return int(dt.timestamp())


def parse_utc(value: object, what: str, error: type[Exception] = InputError) -> int:
    """Unix seconds from an ISO-8601 string with a timezone ('Z' or '+HH:MM'), an aware
    datetime, or the word 'now'. Naive times are refused."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        s = value.strip()
        if s.lower() == "now":
            return int(datetime.now(timezone.utc).timestamp())
        if s.endswith(("Z", "z")):
            s = s[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise error(f"{what}: {value!r:.60} is not an ISO-8601 time such as 2025-06-01T08:00:00Z") from None
    else:
        raise error(f"{what} must be a time such as 2025-06-01T08:00:00Z, got {type(value).__name__}")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise error(f"{what}: {value!s:.60} has no timezone; write it in UTC with a trailing Z, "
                    "e.g. 2025-06-01T08:00:00Z")
    return int(dt.timestamp())


def format_utc_ms(t: float | datetime, error: type[Exception] = InputError) -> str:
    """``2025-06-01T08:00:00.123Z`` (milliseconds, UTC, "Z") from Unix seconds or an aware
    datetime: the form of every alert, acknowledgement, health message and audit entry."""
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise error("timestamps must be timezone-aware (UTC)")
        d = t.astimezone(timezone.utc)
    elif isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
        d = datetime.fromtimestamp(float(t), tz=timezone.utc)
    else:
        raise error(f"not a timestamp: {t!r:.60}")
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def parse_utc_ms(text: str) -> float:
    """Unix seconds (with fraction) of a :func:`format_utc_ms` string; ValueError otherwise."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
