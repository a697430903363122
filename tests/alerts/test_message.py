"""The alert, adjudication and health schemas, the alert builder and the strict checks (no broker)."""
from __future__ import annotations

import base64
import json
import math
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.alerts import message as A
from edge.alerts import schema as message_schema
from edge.types import Match
from tests.support.brokers import CONTEXT, PROBE, REFERENCE, SHA, make_alert

jsonschema = pytest.importorskip("jsonschema")
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _validator(schema):
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("name", sorted(message_schema.SCHEMAS))
def test_docs_schema_files_are_the_package_schemas(name):
    schema = message_schema.SCHEMAS[name]
    assert json.loads((DOCS / f"{name}.schema.json").read_text()) == schema
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False and set(schema["required"]) == set(schema["properties"])


def test_built_alert_validates_and_holds_exactly_the_schema_fields():
    a = make_alert()
    _validator(message_schema.ALERT_SCHEMA).validate(a)
    assert message_schema.check(a, message_schema.ALERT_SCHEMA) == []
    assert set(a) == set(message_schema.ALERT_SCHEMA["properties"])
    assert uuid.UUID(a["event_id"]).version == 4
    assert a["first_seen"].endswith("Z") and a["alerted_at"] > a["first_seen"]
    probe, ref = A.alert_images(a)
    for jpeg in (probe, ref):
        assert jpeg[:3] == b"\xff\xd8\xff" and len(jpeg) <= 8192
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert max(img.shape[:2]) <= message_schema.IMAGE_MAX_SIDE
    scene = A.context_jpeg(a)
    assert scene[:3] == b"\xff\xd8\xff" and len(scene) <= 32768
    assert cv2.imdecode(np.frombuffer(scene, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (400, 300)   # full size
    encoded = A.encode(a)
    assert json.loads(encoded) == a and b"NaN" not in encoded


def _mutations():
    yield "extra field (a full frame)", lambda a: a.update(frame="AAAA")
    yield "extra field (another face)", lambda a: a.update(other_faces=[])
    yield "missing field", lambda a: a.pop("model_sha256")
    yield "score as string", lambda a: a.update(score="0.9")
    yield "score above 1", lambda a: a.update(score=1.5)
    yield "bool as integer", lambda a: a.update(track_id=True)
    yield "negative track", lambda a: a.update(track_id=-1)
    yield "bad uuid", lambda a: a.update(event_id="not-a-uuid")
    yield "uppercase uuid", lambda a: a.update(event_id=a["event_id"].upper())
    yield "local time", lambda a: a.update(alerted_at="2025-05-01T10:00:00+02:00")
    yield "unknown category", lambda a: a.update(category="suspect")
    yield "bad unit id", lambda a: a.update(unit_id="van/01")
    yield "short sha", lambda a: a.update(model_sha256="abc")
    yield "schema version 3", lambda a: a.update(schema_version=3)
    yield "no context image", lambda a: a.pop("context_jpeg")
    yield "context image not base64", lambda a: a.update(context_jpeg="!!!!")
    yield "schema version true", lambda a: a.update(schema_version=True)
    yield "image not base64", lambda a: a.update(probe_jpeg="!!!!")
    yield "control character in subject", lambda a: a.update(subject_id="S\n1")
    yield "calibrated not an object", lambda a: a.update(calibrated="1 in 1000")
    yield "calibrated rate as string", lambda a: a["calibrated"].update(expected_fpir="often")
    yield "calibrated rate above 1", lambda a: a["calibrated"].update(fmr=2.0)
    yield "calibrated field missing", lambda a: a["calibrated"].pop("target_fpir")
    yield "calibrated extra field", lambda a: a["calibrated"].update(faces_seen=12)
    yield "calibrated empty list", lambda a: a["calibrated"].update(watchlist_size=0)


@pytest.mark.parametrize("what, mutate", list(_mutations()), ids=[w for w, _ in _mutations()])
def test_invalid_alerts_are_refused_by_both_validators(what, mutate):
    a = make_alert()
    mutate(a)
    assert message_schema.check(a, message_schema.ALERT_SCHEMA), what
    assert not _validator(message_schema.ALERT_SCHEMA).is_valid(a), what
    with pytest.raises(message_schema.AlertError):
        message_schema.validate_alert(a)


def test_runtime_check_also_refuses_what_a_schema_cannot_say():
    a = make_alert()
    a["probe_jpeg"] = base64.b64encode(b"GIF89a" + b"\0" * 100).decode()
    with pytest.raises(message_schema.AlertError, match="not a JPEG"):
        message_schema.validate_alert(a)
    a = make_alert()
    with pytest.raises(message_schema.AlertError, match="larger than the cap"):
        message_schema.validate_alert(a, max_image_bytes=100)
    a = make_alert()
    a["score"] = 0.5
    with pytest.raises(message_schema.AlertError, match="below the threshold"):
        message_schema.validate_alert(a)


def test_only_matches_make_alerts_and_a_single_subject_margin_is_null():
    ctx = A.AlertContext("van-01", "op-1", "b-1", 1, SHA)
    kw = dict(track_id=1, first_seen=0.0, probe_crop=PROBE, reference=REFERENCE, max_image_bytes=8192,
              context_image=CONTEXT)
    with pytest.raises(message_schema.AlertError, match="only match events"):
        A.build_alert(Match("S1", "missing", 0.79, 0.80, 0.3, 0), ctx, **kw)
    a = A.build_alert(Match("S1", "missing", 0.85, 0.80, math.inf, 0), ctx, **kw)
    assert a["margin"] is None and a["category"] == "missing"
    _validator(message_schema.ALERT_SCHEMA).validate(a)


def test_crop_is_reencoded_until_under_the_cap_and_reference_metadata_is_dropped():
    noisy = np.random.default_rng(1).integers(0, 255, (600, 500, 3), dtype=np.uint8)
    for cap in (2048, 4096, 32768):
        jpeg = A.jpeg_capped(noisy, cap)
        assert len(jpeg) <= cap and jpeg[:2] == b"\xff\xd8"
    ok, buf = cv2.imencode(".jpg", REFERENCE)
    raw = buf.tobytes()
    exif = b"\xff\xe1" + (8 + 14).to_bytes(2, "big") + b"Exif\0\0" + b"GPS-SECRET-XY!"
    tagged = raw[:2] + exif + raw[2:]
    assert b"GPS-SECRET" in tagged
    out = A.jpeg_capped(tagged, 8192)
    assert b"GPS-SECRET" not in out and b"Exif" not in out
    with pytest.raises(message_schema.AlertError):
        A.jpeg_capped(noisy, 200)


# --- adjudications -----------------------------------------------------------------------

def _adj(**kw) -> bytes:
    d = {"schema_version": 1, "event_id": str(uuid.uuid4()), "decision": "confirmed",
         "handheld_id": "hh-01", "decided_at": "2025-05-01T10:00:00.000Z"}
    d.update(kw)
    return json.dumps(d).encode()


def test_valid_adjudication_is_accepted():
    d = A.parse_adjudication(_adj(decision="rejected"), 4096)
    assert d["decision"] == "rejected"
    _validator(message_schema.ADJUDICATION_SCHEMA).validate(d)


@pytest.mark.parametrize("payload, reason", [
    (b"x" * 5000, "exceeds the cap"),
    (b"\xff\xfe", "not UTF-8"),
    (b"{oops", "not JSON"),
    (b'"just a string"', "not an object"),
    (b"null", "not an object"),
    (b"[" * 3000 + b"]" * 3000, "cap"),
    (b"[" * 1000 + b"]" * 1000, "JSON"),
    (_adj(schema_version="1"), "must be 1"),
    (_adj(decision=1), "must be one of"),
    (_adj(event_id="123"), "pattern"),
    (_adj(handheld_id=None), "expected string"),
    (_adj(decided_at="yesterday"), "pattern"),
    (_adj(extra=1), "not in the schema"),
    (b'{"schema_version": Infinity}', "not JSON"),
])
def test_bad_adjudications_are_refused_with_a_reason(payload, reason):
    with pytest.raises(message_schema.AdjudicationError, match=reason):
        A.parse_adjudication(payload, 4096)


def test_context_image_is_capped_by_its_own_option_and_version_1_alerts_stay_valid():
    ctx = A.AlertContext("van-01", "op-1", "b-1", 1, SHA)
    big = np.random.default_rng(1).integers(0, 255, (900, 700, 3), dtype=np.uint8)   # noise: hard to compress
    a = A.build_alert(Match("S1", "wanted", 0.85, 0.80, 0.1, 0), ctx, track_id=1, first_seen=0.0, probe_crop=PROBE,
                      reference=REFERENCE, max_image_bytes=8192, context_image=big, max_context_bytes=6000)
    scene = A.context_jpeg(a)
    img = cv2.imdecode(np.frombuffer(scene, np.uint8), cv2.IMREAD_COLOR)
    assert len(scene) <= 6000 and max(img.shape[:2]) <= message_schema.CONTEXT_MAX_SIDE
    with pytest.raises(message_schema.AlertError, match="context_jpeg: JPEG of .* larger than the cap of 1000"):
        message_schema.validate_alert(a, max_context_bytes=1000)
    # an alert of version 1 (made before the upgrade, still in an outbox) is valid without a context image
    v1 = make_alert()
    v1.pop("context_jpeg")
    v1["schema_version"] = 1
    assert message_schema.validate_alert(v1) is v1 and A.context_jpeg(v1) is None
    _validator(message_schema.ALERT_SCHEMA_V1).validate(v1)
    v1["context_jpeg"] = make_alert()["context_jpeg"]          # but version 1 never carries one
    with pytest.raises(message_schema.AlertError, match="context_jpeg"):
        message_schema.validate_alert(v1)
