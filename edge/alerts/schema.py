"""The versioned JSON Schemas of every message a unit exchanges, and a strict validator.

Only four kinds of message ever leave a unit (see ``docs/alerts.md``):

* an **alert** (``lfr/<unit>/alert``): one match event, :data:`ALERT_SCHEMA` (version 2: the
  aligned face chip, the watchlist image and a context image with every other face blurred);
* its **status** (``lfr/<unit>/status``): the plain strings ``online`` / ``offline``;
* its **health** (``lfr/<unit>/health``): :data:`HEALTH_SCHEMA`;
* the **acknowledgement** of an adjudication (``lfr/<unit>/adjudication/ack``):
  :data:`ADJUDICATION_ACK_SCHEMA`, what the unit recorded (``docs/handheld.md``).

One kind arrives: an officer's **adjudication** of an alert (``lfr/<unit>/adjudication``),
:data:`ADJUDICATION_SCHEMA` (version 1: certificate handhelds and tools) or
:data:`ADJUDICATION_SCHEMA_V2` (version 2: the handheld web page), checked strictly by
:func:`edge.alerts.message.parse_adjudication`.

The schemas are JSON Schema (2020-12) documents kept here as Python dicts, so an installed
package carries them; ``docs/*.schema.json`` are the same documents (a test keeps them equal)
and ``edge-lfr alerts --schema`` prints the alert schema. Every object is closed
(``additionalProperties: false``): an alert holds exactly the listed fields, so nothing about
other faces and no full frame can travel in it. :func:`check` is a small validator for the
subset of JSON Schema these documents use, so the unit needs no extra dependency; the tests
also validate with the reference ``jsonschema`` package.
"""
from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from datetime import datetime
from typing import Any, Mapping

from edge.errors import EdgeError
from edge.types import CATEGORIES, UNIT_ID_PATTERN

SCHEMA_VERSION = 1
#: Version of the alert schema a unit sends (2: with the context image). Version 1 alerts (no
#: context image), e.g. still in an outbox from before an upgrade, remain valid and deliverable.
ALERT_SCHEMA_VERSION = 2
#: Largest JPEG an alert may carry in any configuration (the cap of ``outbox.max_crop_bytes``
#: and of ``outbox.max_context_bytes``).
MAX_IMAGE_BYTES_LIMIT = 262144
#: Longest side of the probe crop and of the reference thumbnail, in pixels.
IMAGE_MAX_SIDE = 256
#: Longest side of the context image, in pixels (a phone shows it across its width).
CONTEXT_MAX_SIDE = 480
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
ADJUDICATION_DECISIONS = ("confirmed", "rejected")
#: Outcomes of an adjudication, version 2: the officer confirmed the match, judged it not to be
#: the subject, or could not find the person to check.
ADJUDICATION_OUTCOMES = ("confirmed", "rejected", "not_located")
ADJUDICATION_V2 = 2
ACK_SCHEMA_VERSION = 1


class AlertError(EdgeError, ValueError):
    """A message that does not satisfy its schema, or an alert that may not be built."""

    exit_code = 65


class AdjudicationError(AlertError):
    """An inbound adjudication payload that is refused (the reason says why)."""


_UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
_UTC = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?Z$"
_ID = "^" + UNIT_ID_PATTERN + "$"
_REF = "^[A-Za-z0-9_.:-]{1,128}$"
_B64 = "^[A-Za-z0-9+/]*={0,2}$"
_B64_MAX = 4 * ((MAX_IMAGE_BYTES_LIMIT + 2) // 3)


def _ts(desc: str) -> dict:
    return {"type": "string", "format": "date-time", "pattern": _UTC, "description": desc}


def _jpeg(desc: str) -> dict:
    return {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/jpeg",
            "minLength": 4, "maxLength": _B64_MAX, "pattern": _B64, "description": desc}


ALERT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:edge-lfr:schema:alert:2",
    "title": "edge-lfr match alert, schema version 2",
    "description": "One match event published by a unit on <prefix>/<unit>/alert (QoS 1, not retained). "
                   "Consumers de-duplicate by event_id. Of the scene only the region around the matched "
                   "person travels (context_jpeg), with every other face in it blurred on the unit: no full "
                   "frame and no recognisable data about any other face.",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "event_id", "unit_id", "operation_id", "bundle_id", "bundle_serial",
                 "subject_id", "category", "score", "threshold", "margin", "track_id", "first_seen",
                 "alerted_at", "context_jpeg", "probe_jpeg", "reference_jpeg", "model_sha256", "calibrated"],
    "properties": {
        "schema_version": {"const": ALERT_SCHEMA_VERSION, "description": "version of this schema"},
        "event_id": {"type": "string", "format": "uuid", "pattern": _UUID,
                     "description": "random UUID of this match event, fixed when the alert is made; the "
                                    "de-duplication key (an alert may arrive more than once, never with "
                                    "a different content)"},
        "unit_id": {"type": "string", "pattern": _ID, "description": "the unit that made the match"},
        "operation_id": {"type": "string", "pattern": _REF,
                         "description": "operation / deployment the watchlist was issued for"},
        "bundle_id": {"type": "string", "pattern": _REF, "description": "signed watchlist bundle in use"},
        "bundle_serial": {"type": "integer", "minimum": 0, "maximum": 9007199254740991,
                          "description": "the bundle's serial number (increases with every issue)"},
        "subject_id": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^\\u0000-\\u001f\\u007f]+$",
                       "description": "watchlist subject matched"},
        "category": {"enum": list(CATEGORIES), "description": "the subject's watchlist category"},
        "score": {"type": "number", "minimum": -1, "maximum": 1,
                  "description": "the match score. With score normalisation (match.score_normalisation, the "
                                 "default; 'calibrated' present) the calibrated score -log10(FMR)/10 in [0, 1]: "
                                 "0.5 = one comparison between strangers in 100,000 scores this high. Without it, "
                                 "the cosine similarity of the probe to the subject's best template"},
        "threshold": {"type": "number", "minimum": -1, "maximum": 1,
                      "description": "alert threshold in force for this subject, on the same scale as score"},
        "calibrated": {
            "type": ["object", "null"], "additionalProperties": False,
            "required": ["fmr", "expected_fpir", "watchlist_size", "target_fpir", "supported", "calibration"],
            "description": "what the score means, from the calibration shipped with the model "
                           "(edge.matching.calibration); null when score normalisation is off (raw cosine)",
            "properties": {
                "fmr": {"type": "number", "minimum": 0, "maximum": 1,
                        "description": "fraction of strangers (people on no list) scoring at least this high "
                                       "against this one subject"},
                "expected_fpir": {"type": "number", "minimum": 0, "maximum": 1,
                                  "description": "fraction of passers-by on no list expected to score at least this "
                                                 "high against the whole loaded list"},
                "watchlist_size": {"type": "integer", "minimum": 1, "maximum": 10000000,
                                   "description": "subjects in the loaded list"},
                "target_fpir": {"type": "number", "minimum": 0, "maximum": 1,
                                "description": "the operator's false-alarm target for the subject's category "
                                               "(match.target_fpir_<category>, default match.target_fpir) the "
                                               "threshold was set from"},
                "supported": {"type": "boolean",
                              "description": "false when the rate is rarer than the calibration measured "
                                             "(it rests on the extrapolated tail)"},
                "calibration": {"type": "string", "maxLength": 400,
                                "pattern": "^[^\\u0000-\\u001f\\u007f]*$",
                                "description": "where the calibration comes from"},
            },
        },
        "margin": {"type": ["number", "null"], "minimum": -2, "maximum": 2,
                   "description": "score minus the best score of a different subject (the runner-up); "
                                  "null when the watchlist holds a single subject"},
        "track_id": {"type": "integer", "minimum": 0, "maximum": 9007199254740991,
                     "description": "the unit's id of the face track that produced the match"},
        "first_seen": _ts("UTC time the track was first seen (ISO 8601, Z)"),
        "alerted_at": _ts("UTC time the alert was made (ISO 8601, Z)"),
        "context_jpeg": _jpeg("the camera's view around the matched face (about 3 face widths wide and 4 "
                              "tall, clipped to the frame; longest side <= 480 px, at most "
                              "outbox.max_context_bytes bytes), every other face in it blurred on the unit "
                              "(edge.appliance.context), base64"),
        "probe_jpeg": _jpeg("the probe face crop: the aligned face chip that matched (longest side <= 256 px, "
                            "at most outbox.max_crop_bytes bytes), base64"),
        "reference_jpeg": _jpeg("the subject's watchlist reference thumbnail: JPEG re-encoded on the unit "
                                "(no metadata), same caps, base64"),
        "model_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                         "description": "sha256 of the embedding model file that produced the score"},
    },
}

def _alert_schema_v1() -> dict[str, Any]:
    """Version 1 of the alert schema (no context image): still accepted, never sent."""
    import copy
    v1 = copy.deepcopy(ALERT_SCHEMA)
    v1["$id"] = "urn:edge-lfr:schema:alert:1"
    v1["title"] = "edge-lfr match alert, schema version 1"
    v1["description"] = ("One match event published by a unit on <prefix>/<unit>/alert (QoS 1, not retained). "
                         "Consumers de-duplicate by event_id. Nothing else about the scene is carried: no full "
                         "frame and no data about any other face. Superseded by version 2 (context image).")
    v1["required"] = [k for k in v1["required"] if k != "context_jpeg"]
    del v1["properties"]["context_jpeg"]
    v1["properties"]["schema_version"]["const"] = 1
    return v1


ALERT_SCHEMA_V1: dict[str, Any] = _alert_schema_v1()

ADJUDICATION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:edge-lfr:schema:adjudication:1",
    "title": "edge-lfr adjudication, schema version 1",
    "description": "An officer's decision on one alert, published by a handheld on <prefix>/<unit>/adjudication "
                   "(QoS 1). The unit accepts it only for an event id in its outbox.",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "event_id", "decision", "handheld_id", "decided_at"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "event_id": {"type": "string", "format": "uuid", "pattern": _UUID,
                     "description": "event_id of the alert decided on"},
        "decision": {"enum": list(ADJUDICATION_DECISIONS),
                     "description": "confirmed: the officer judges the person to be the subject; "
                                    "rejected: not the subject"},
        "handheld_id": {"type": "string", "pattern": _ID, "description": "the deciding handheld"},
        "decided_at": _ts("UTC time of the decision (ISO 8601, Z)"),
    },
}

ADJUDICATION_SCHEMA_V2: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:edge-lfr:schema:adjudication:2",
    "title": "edge-lfr adjudication, schema version 2",
    "description": "An officer's decision on one alert, published by the handheld web page on "
                   "<prefix>/<unit>/adjudication (QoS 1). The unit accepts it only for an event id in its "
                   "outbox, records the first adjudication of an event and acknowledges every one on "
                   "<prefix>/<unit>/adjudication/ack.",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "event_id", "outcome", "officer_id", "decided_at"],
    "properties": {
        "schema_version": {"const": ADJUDICATION_V2},
        "event_id": {"type": "string", "format": "uuid", "pattern": _UUID,
                     "description": "event_id of the alert decided on"},
        "outcome": {"enum": list(ADJUDICATION_OUTCOMES),
                    "description": "confirmed: the officer judges the person to be the subject; rejected: "
                                   "not the subject; not_located: the officer could not find the person"},
        "officer_id": {"type": "string", "pattern": _ID,
                       "description": "the deciding officer (the broker user name the page logged in with)"},
        "decided_at": _ts("UTC time of the decision (ISO 8601, Z)"),
    },
}

ADJUDICATION_ACK_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:edge-lfr:schema:adjudication-ack:1",
    "title": "edge-lfr adjudication acknowledgement, schema version 1",
    "description": "What a unit recorded for an alert, published on <prefix>/<unit>/adjudication/ack (QoS 1, "
                   "not retained) for every valid adjudication it receives. The first adjudication of an "
                   "event is recorded; a later one is answered with the recorded one and duplicate true.",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "unit_id", "event_id", "outcome", "officer_id", "decided_at",
                 "recorded_at", "duplicate"],
    "properties": {
        "schema_version": {"const": ACK_SCHEMA_VERSION},
        "unit_id": {"type": "string", "pattern": _ID, "description": "the unit that recorded it"},
        "event_id": {"type": "string", "format": "uuid", "pattern": _UUID,
                     "description": "event_id of the alert"},
        "outcome": {"enum": list(ADJUDICATION_OUTCOMES), "description": "the recorded outcome"},
        "officer_id": {"type": "string", "pattern": _ID,
                       "description": "who made the recorded decision (officer, or handheld for version 1)"},
        "decided_at": _ts("UTC time of the recorded decision, as the deciding handheld sent it"),
        "recorded_at": _ts("UTC time the unit recorded it"),
        "duplicate": {"type": "boolean",
                      "description": "true when this event had been adjudicated already: the adjudication "
                                     "answered was not recorded, and the fields above are the recorded one's"},
    },
}

HEALTH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:edge-lfr:schema:health:1",
    "title": "edge-lfr unit health, schema version 1",
    "description": "Periodic health of a unit on <prefix>/<unit>/health (QoS 1, not retained), every "
                   "mqtt.health_interval_seconds while connected. null = not known on this unit.",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "unit_id", "at", "uptime_s", "fps", "queue_depth", "outbox_pending",
                 "outbox_refused", "oldest_pending_s", "bundle_id", "bundle_expires_at", "cpu_temp_c",
                 "publish_rejections", "adjudications_rejected", "adjudications_rate_limited", "disk_free_mb",
                 "disk_low", "audit_problem"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "unit_id": {"type": "string", "pattern": _ID},
        "at": _ts("UTC time of this report"),
        "uptime_s": {"type": "number", "minimum": 0, "description": "seconds since the publisher started"},
        "fps": {"type": ["number", "null"], "minimum": 0, "description": "frames processed per second"},
        "queue_depth": {"type": ["integer", "null"], "minimum": 0,
                        "description": "frames waiting in the recognition pipeline"},
        "outbox_pending": {"type": "integer", "minimum": 0, "description": "alerts not yet acknowledged by the broker"},
        "outbox_refused": {"type": "integer", "minimum": 0,
                           "description": "alerts refused because the outbox was full (ever)"},
        "oldest_pending_s": {"type": ["number", "null"], "minimum": 0,
                             "description": "age of the oldest undelivered alert; null when none"},
        "bundle_id": {"type": ["string", "null"], "pattern": _REF},
        "bundle_expires_at": {"type": ["string", "null"], "format": "date-time", "pattern": _UTC},
        "cpu_temp_c": {"type": ["number", "null"], "minimum": -50, "maximum": 150},
        "publish_rejections": {"type": "integer", "minimum": 0,
                               "description": "alert publishes the broker refused (PUBACK reason >= 0x80)"},
        "adjudications_rejected": {"type": "integer", "minimum": 0,
                                   "description": "inbound adjudications ignored (malformed, unknown event id, over "
                                                  "the rate limit, retained, oversized, queue full; ever)"},
        "adjudications_rate_limited": {"type": "integer", "minimum": 0,
                                       "description": "of those, ignored because their officer id sent more than "
                                                      "mqtt.adjudication_rate_per_officer a minute (ever)"},
        "disk_free_mb": {"type": ["number", "null"], "minimum": 0,
                         "description": "free space in unit.state_dir's file system, MiB"},
        "disk_low": {"type": ["boolean", "null"],
                     "description": "free space is below outbox.min_free_mb: new alerts may be refused "
                                    "(outbox_refused), the service keeps publishing what it holds"},
        "audit_problem": {"type": ["string", "null"], "maxLength": 200,
                          "description": "the audit log's tail was not written by this unit (or could not be "
                                         "read): the unit started a new signed segment; null when none"},
    },
}

SCHEMAS = {"alert": ALERT_SCHEMA, "alert-v1": ALERT_SCHEMA_V1, "adjudication": ADJUDICATION_SCHEMA, "adjudication-v2": ADJUDICATION_SCHEMA_V2,
           "adjudication-ack": ADJUDICATION_ACK_SCHEMA, "health": HEALTH_SCHEMA}


# --- a small validator for the JSON Schema subset above ----------------------------------

_ANNOTATIONS = {"$schema", "$id", "title", "description", "contentEncoding", "contentMediaType"}
_KEYWORDS = _ANNOTATIONS | {"type", "const", "enum", "minimum", "maximum", "minLength", "maxLength",
                            "pattern", "format", "required", "properties", "additionalProperties"}
_PATTERNS: dict[str, re.Pattern] = {}


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind == "string":
        return isinstance(value, str)
    if kind == "object":
        return isinstance(value, dict)
    raise AssertionError(f"schema uses unsupported type {kind!r}")


def _format_ok(value: str, fmt: str) -> bool:
    if fmt == "uuid":
        try:
            return str(uuid.UUID(value)) == value
        except ValueError:
            return False
    if fmt == "date-time":
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return True
        except ValueError:
            return False
    raise AssertionError(f"schema uses unsupported format {fmt!r}")


def _python_pattern(pattern: str) -> re.Pattern:
    """A JSON Schema (ECMA-262) pattern for Python: there ``$`` matches only at the very end, while
    Python's ``$`` also matches before a final newline (``"off-01\\n"`` would pass and split log
    lines). A trailing ``$`` becomes ``\\Z``."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def check(instance: Any, schema: Mapping[str, Any], path: str = "$") -> list[str]:
    """Problems of ``instance`` against ``schema`` (empty when valid), each naming its path."""
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise AssertionError(f"schema keyword(s) {sorted(unknown)} not supported by edge.alerts.message.check")
    if "const" in schema and not (instance == schema["const"] and type(instance) is type(schema["const"])):
        return [f"{path}: must be {schema['const']!r}"]
    if "enum" in schema and instance not in schema["enum"]:
        return [f"{path}: must be one of {schema['enum']}"]
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(instance, k) for k in kinds):
            return [f"{path}: expected {' or '.join(kinds)}, got {type(instance).__name__}"]
    errors: list[str] = []
    if isinstance(instance, (int, float)) and not isinstance(instance, bool):
        if "minimum" in schema and instance < schema["minimum"]:
            errors.append(f"{path}: {instance} is below the minimum {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            errors.append(f"{path}: {instance} is above the maximum {schema['maximum']}")
    if isinstance(instance, str):
        if "minLength" in schema and len(instance) < schema["minLength"]:
            errors.append(f"{path}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']} characters")
        elif "pattern" in schema:
            rx = _PATTERNS.get(schema["pattern"]) or _PATTERNS.setdefault(schema["pattern"],
                                                                           _python_pattern(schema["pattern"]))
            if not rx.search(instance):
                errors.append(f"{path}: does not match the pattern {schema['pattern']}")
        if "format" in schema and not errors and not _format_ok(instance, schema["format"]):
            errors.append(f"{path}: not a valid {schema['format']}")
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in instance:
                errors.append(f"{path}: missing required field {key!r}")
        if schema.get("additionalProperties", True) is False:
            extra = sorted(str(k) for k in instance if k not in props)
            if extra:
                errors.append(f"{path}: field(s) not in the schema: {', '.join(extra)}")
        for key, sub in props.items():
            if key in instance:
                errors.extend(check(instance[key], sub, f"{path}.{key}"))
    return errors


def _jpeg_field(alert: Mapping[str, Any], key: str, max_bytes: int) -> list[str]:
    value = alert.get(key)
    if not isinstance(value, str):
        return []
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return [f"$.{key}: not valid base64"]
    if len(data) > max_bytes:
        return [f"$.{key}: JPEG of {len(data)} bytes is larger than the cap of {max_bytes}"]
    if not (data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"):
        return [f"$.{key}: not a JPEG"]
    return []


def validate_alert(alert: Any, max_image_bytes: int = MAX_IMAGE_BYTES_LIMIT,
                   max_context_bytes: int = MAX_IMAGE_BYTES_LIMIT) -> dict:
    """Return ``alert`` if it satisfies :data:`ALERT_SCHEMA` (or :data:`ALERT_SCHEMA_V1`, without a
    context image) and its images are JPEGs within ``max_image_bytes`` (the context image within
    ``max_context_bytes``); else raise :class:`AlertError` listing every problem."""
    v1 = isinstance(alert, dict) and alert.get("schema_version") == 1 and type(alert.get("schema_version")) is int
    errors = check(alert, ALERT_SCHEMA_V1 if v1 else ALERT_SCHEMA)
    if isinstance(alert, dict):
        for key in ("probe_jpeg", "reference_jpeg"):
            errors += _jpeg_field(alert, key, max_image_bytes)
        if not v1:
            errors += _jpeg_field(alert, "context_jpeg", max_context_bytes)
        if not errors and alert["score"] < alert["threshold"]:
            errors.append("$.score: below the threshold: only match events may leave the unit")
    if errors:
        raise AlertError("invalid alert: " + "; ".join(errors[:8]) + (" …" if len(errors) > 8 else ""))
    return alert
