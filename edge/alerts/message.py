"""Building the messages a unit sends (alerts, their images) and reading the one it receives
(an officer's adjudication), each checked against :mod:`edge.alerts.schema`."""
from __future__ import annotations

import base64
import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

import cv2
import numpy as np

from edge.alerts.schema import (
    ADJUDICATION_ACK_SCHEMA,
    ADJUDICATION_SCHEMA,
    ADJUDICATION_SCHEMA_V2,
    ADJUDICATION_V2,
    ALERT_SCHEMA_VERSION,
    CONTEXT_MAX_SIDE,
    IMAGE_MAX_SIDE,

    AdjudicationError,
    AlertError,
    check,
    validate_alert,
)
from edge.recognition.images import check_frame, decode_image
from edge.types import Match
from edge.utc import format_utc_ms

# --- building an alert --------------------------------------------------------------------

def jpeg_capped(image: np.ndarray | bytes, max_bytes: int, max_side: int = IMAGE_MAX_SIDE) -> bytes:
    """Encode an RGB uint8 image (or re-encode JPEG/PNG bytes) as a JPEG of at most ``max_bytes``.

    The image is first shrunk so its longest side is at most ``max_side``; then the quality is
    lowered step by step (90 -> 30) and, if still too big, the image is shrunk by a quarter
    and tried again. Re-encoding drops every metadata segment (EXIF, GPS, comments).
    """


    if isinstance(image, (bytes, bytearray, memoryview)):
        rgb = decode_image(bytes(image), "reference image", max_pixels=40_000_000)
    else:
        rgb = check_frame(image)
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    while True:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = bgr if scale == 1.0 else cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        for quality in (90, 80, 70, 60, 50, 40, 30):
            ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and buf.size <= max_bytes:
                return buf.tobytes()
        scale *= 0.75
        if max(size) * 0.75 < 16:
            raise AlertError(f"cannot encode a {w}x{h} image as a JPEG of at most {max_bytes} bytes")


@dataclass(frozen=True)
class AlertContext:
    """What a unit knows about itself for every alert: who, under which operation, with which
    signed watchlist bundle and which embedding model."""

    unit_id: str
    operation_id: str
    bundle_id: str
    bundle_serial: int
    model_sha256: str


def build_alert(match: Match, context: AlertContext, *, track_id: int, first_seen: float | datetime,
                probe_crop: np.ndarray | bytes, reference: np.ndarray | bytes, max_image_bytes: int,
                context_image: np.ndarray | bytes, max_context_bytes: int | None = None,
                alerted_at: float | datetime | None = None, event_id: str | None = None,
                calibrated: Mapping[str, Any] | None = None) -> dict:
    """The alert dict for one match (validated against :data:`ALERT_SCHEMA`).

    ``probe_crop`` is the face crop of the probe (e.g. ``Face.chip``, RGB uint8) and
    ``reference`` the subject's watchlist reference image (RGB array or JPEG/PNG bytes); both
    are re-encoded as JPEGs of at most ``max_image_bytes``. ``context_image``: the camera's view
    around the matched face **with every other face already blurred**
    (:func:`edge.appliance.context.context_image`), re-encoded as a JPEG of at most
    ``max_context_bytes`` (default ``max_image_bytes``), longest side :data:`CONTEXT_MAX_SIDE`. ``calibrated``: the score's
    calibrated meaning (``Matcher.meaning(match)``), carried when given. A match below its
    threshold is refused: only match events leave the unit.
    """
    if not match.is_hit:
        raise AlertError(f"not a match (score {match.score:.3f} < threshold {match.threshold:.3f}): "
                         "only match events may leave the unit")
    if alerted_at is None:
        alerted_at = datetime.now(timezone.utc)
    margin = float(match.margin)
    if max_context_bytes is None:
        max_context_bytes = max_image_bytes
    alert = {
        "schema_version": ALERT_SCHEMA_VERSION,
        "event_id": event_id or str(uuid.uuid4()),
        "unit_id": context.unit_id,
        "operation_id": context.operation_id,
        "bundle_id": context.bundle_id,
        "bundle_serial": int(context.bundle_serial),
        "subject_id": match.subject_id,
        "category": match.category,
        "score": round(float(match.score), 6),
        "threshold": round(float(match.threshold), 6),
        "margin": round(margin, 6) if math.isfinite(margin) else None,
        "track_id": int(track_id),
        "first_seen": format_utc_ms(first_seen, AlertError),
        "alerted_at": format_utc_ms(alerted_at, AlertError),
        "context_jpeg": base64.b64encode(jpeg_capped(context_image, max_context_bytes,
                                                     CONTEXT_MAX_SIDE)).decode("ascii"),
        "probe_jpeg": base64.b64encode(jpeg_capped(probe_crop, max_image_bytes)).decode("ascii"),
        "reference_jpeg": base64.b64encode(jpeg_capped(reference, max_image_bytes)).decode("ascii"),
        "model_sha256": context.model_sha256,
    }
    alert["calibrated"] = dict(calibrated) if calibrated is not None else None
    return validate_alert(alert, max_image_bytes, max_context_bytes)


def encode(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON bytes of a message (no NaN/Infinity)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def alert_images(alert: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """(probe JPEG bytes, reference JPEG bytes) of a validated alert."""
    return base64.b64decode(alert["probe_jpeg"]), base64.b64decode(alert["reference_jpeg"])


def context_jpeg(alert: Mapping[str, Any]) -> bytes | None:
    """The context image's JPEG bytes of a validated alert (None for a version 1 alert)."""
    c = alert.get("context_jpeg")
    return base64.b64decode(c) if c else None


# --- inbound adjudications ----------------------------------------------------------------

def _no_constants(name: str):
    raise ValueError(f"{name} is not allowed")


def parse_adjudication(payload: bytes, max_bytes: int) -> dict:
    """Decode and check one adjudication payload; raise :class:`AdjudicationError` saying why
    it is refused (too large, not UTF-8 JSON, not an object, schema violations).

    ``schema_version`` 2 is checked against :data:`ADJUDICATION_SCHEMA_V2`, anything else
    against :data:`ADJUDICATION_SCHEMA` (version 1). The dict is returned as sent; see
    :func:`adjudication_fields` for a version-independent view."""
    if not isinstance(payload, (bytes, bytearray)):
        raise AdjudicationError(f"payload is {type(payload).__name__}, not bytes")
    if len(payload) > max_bytes:
        raise AdjudicationError(f"payload of {len(payload)} bytes exceeds the cap of {max_bytes}")
    try:
        text = bytes(payload).decode("utf-8")
        data = json.loads(text, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise AdjudicationError("payload is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise AdjudicationError(f"payload is not JSON ({str(exc)[:80]})") from None
    if not isinstance(data, dict):
        raise AdjudicationError(f"payload is a JSON {type(data).__name__}, not an object")
    v2 = data.get("schema_version") == ADJUDICATION_V2 and type(data.get("schema_version")) is int
    errors = check(data, ADJUDICATION_SCHEMA_V2 if v2 else ADJUDICATION_SCHEMA)
    if errors:
        raise AdjudicationError("; ".join(errors[:5]))
    return data


def adjudication_fields(adj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(event_id, outcome, officer_id, decided_at) of a parsed adjudication of either version
    (version 1: ``decision`` is the outcome and ``handheld_id`` the officer)."""
    if adj.get("schema_version") == ADJUDICATION_V2:
        return adj["event_id"], adj["outcome"], adj["officer_id"], adj["decided_at"]
    return adj["event_id"], adj["decision"], adj["handheld_id"], adj["decided_at"]


def validate_ack(ack: Any) -> dict:
    """Return ``ack`` if it satisfies :data:`ADJUDICATION_ACK_SCHEMA`, else raise :class:`AlertError`."""
    errors = check(ack, ADJUDICATION_ACK_SCHEMA)
    if errors:
        raise AlertError("invalid adjudication acknowledgement: " + "; ".join(errors[:5]))
    return ack
