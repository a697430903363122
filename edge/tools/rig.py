"""Rig mode: replay footage through the whole pipeline and check who alerts, when.

    edge-lfr replay --source VIDEO --bundle B.edgewl --expect EXPECTED.yaml --junit OUT.xml --config rig.yaml

The bundle is verified and loaded exactly as on a unit (:class:`~edge.watchlist.unit.UnitWatchlist`,
with the rig's device key and trust file from ``--config``), but into a temporary state folder,
so a replay never touches the rig unit's own watchlist state or rollback serial. Alerts are built
and committed to a temporary outbox (``--publish``: the configured broker gets them too).

Expectations (YAML, read with ``safe_load``)::

    expect:
      - subject: S-0001      # watchlist subject id
        from: 2.0            # seconds from the start of the footage
        to: 7.5
        count: 1             # optional (default 1): exactly this many alerts in the window
        label: "walks left to right"   # optional, shown in the report
    allow_unexpected: false  # optional: any alert not claimed by an expectation fails the run

Every expectation is one JUnit test case, plus one for "no unexpected alert" and one for the
pipeline itself (it ran, and with ``pace: fast`` dropped nothing). The JUnit XML carries the
figures (frames, fps, dropped frames, per-stage p50/p95) as properties.

Also here: :class:`ThrowawayUnit`, a unit with throwaway keys in a temporary folder that signs
and loads bundles (demo, tests, benchmark).
"""
from __future__ import annotations

import csv
import json
import math
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import yaml

from edge.appliance.builder import build_appliance
from edge.appliance.capture import FileSource
from edge.config import load_config, validate
from edge.errors import InputError
from edge.recognition.api import embedder_sha256
from edge.watchlist.bundle import Limits, make_bundle
from edge.watchlist.enrol import enrol, read_manifest
from edge.watchlist.keys import TrustStore, generate_device, generate_issuer, save_device, save_trust, trusted_key
from edge.watchlist.unit import UnitWatchlist

MAX_EXPECT_BYTES = 1 << 20


@dataclass(frozen=True)
class Expectation:
    subject: str
    start: float
    end: float
    count: int = 1
    label: str = ""

    def describe(self) -> str:
        """The JUnit case name: the pass (its label, else the subject) and what it must do."""
        what = f"{self.subject} alerts {self.count}x between {self.start:g} s and {self.end:g} s"
        return f"pass {self.label}: {what}" if self.label else what


@dataclass(frozen=True)
class Expectations:
    items: tuple[Expectation, ...]
    allow_unexpected: bool = False


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"{where}: expected a number of seconds, got {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:
        raise InputError(f"{where}: number too large") from None
    if not math.isfinite(f) or f < 0:
        raise InputError(f"{where}: expected a finite number >= 0, got {v!r}")
    return f


def parse_expectations(data: Any, where: str = "expectations") -> Expectations:
    """Validate parsed YAML; InputError names the entry and the problem."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping with 'expect:'")
    unknown = [str(k) for k in data if k not in ("expect", "allow_unexpected")]
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0][:40]!r} (known: expect, allow_unexpected)")
    items = data.get("expect") or []
    if not isinstance(items, list):
        raise InputError(f"{where}: 'expect' must be a list")
    allow = data.get("allow_unexpected", False)
    if not isinstance(allow, bool):
        raise InputError(f"{where}: allow_unexpected must be true or false")
    out = []
    for i, e in enumerate(items):
        w = f"{where}: expect[{i}]"
        if not isinstance(e, dict):
            raise InputError(f"{w}: expected a mapping with subject, from, to")
        bad = [str(k) for k in e if k not in ("subject", "from", "to", "count", "label")]
        if bad:
            raise InputError(f"{w}: unknown key {bad[0][:40]!r} (known: subject, from, to, count, label)")
        for k in ("subject", "from", "to"):
            if k not in e:
                raise InputError(f"{w}: '{k}' is required")
        if not isinstance(e["subject"], str) or not e["subject"].strip():
            raise InputError(f"{w}.subject: expected a subject id")
        start, end = _num(e["from"], f"{w}.from"), _num(e["to"], f"{w}.to")
        if end < start:
            raise InputError(f"{w}: 'to' ({end:g}) is before 'from' ({start:g})")
        count = e.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 1000:
            raise InputError(f"{w}.count: expected an integer 0..1000")
        label = e.get("label", "")
        if not isinstance(label, str):
            raise InputError(f"{w}.label: expected text")
        out.append(Expectation(e["subject"], start, end, count, label[:200]))
    return Expectations(tuple(out), allow)


def load_expectations(path) -> Expectations:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"{p}: cannot read expectations: {exc.strerror or exc}") from None
    if len(raw) > MAX_EXPECT_BYTES:
        raise InputError(f"{p}: larger than {MAX_EXPECT_BYTES} bytes")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{p}: not valid YAML: {str(exc)[:200]}") from None
    return parse_expectations(data, str(p))


# --------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    name: str
    classname: str
    ok: bool
    message: str = ""
    detail: str = ""


@dataclass
class RigResult:
    cases: list[CaseResult]
    unexpected: list[Any]
    properties: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cases)

    @property
    def failures(self) -> int:
        return sum(not c.ok for c in self.cases)


def check(expectations: Expectations, events: Sequence[Any], report: dict | None = None,
          fast: bool = True) -> RigResult:
    """Match alert events (``subject_id``, ``t``) against the expectations. An event is claimed
    by at most one expectation (the first whose subject and window fit); an expectation passes
    when it claims exactly ``count`` events; unclaimed events are unexpected."""
    events = sorted(events, key=lambda e: e.t)
    claimed: set[int] = set()
    cases = []
    for e in expectations.items:
        got = [i for i, ev in enumerate(events)
               if i not in claimed and ev.subject_id == e.subject and e.start <= ev.t <= e.end]
        claimed.update(got)  # too many is this expectation's failure, not also "unexpected"
        times = ", ".join(f"{events[i].t:.2f} s (frame {getattr(events[i], 'frame_seq', '?')}, track "
                          f"{events[i].track_id}, score {events[i].score:.3f})" for i in got)
        ok = len(got) == e.count
        msg = "" if ok else f"expected {e.count} alert(s) for {e.subject} in {e.start:g}-{e.end:g} s, got {len(got)}"
        cases.append(CaseResult(e.describe(), "replay.expected", ok, msg, times))
    unexpected = [ev for i, ev in enumerate(events) if i not in claimed]
    ok = expectations.allow_unexpected or not unexpected
    detail = "\n".join(f"{ev.t:.2f} s: {ev.subject_id} ({ev.category}) score {ev.score:.3f} track {ev.track_id}"
                       for ev in unexpected)
    cases.append(CaseResult("no unexpected alerts", "replay.unexpected", ok,
                            "" if ok else f"{len(unexpected)} alert(s) matched no expectation", detail))
    if report is not None:
        dropped = report.get("dropped_frames", 0)
        good = report.get("frames_processed", 0) > 0 and (not fast or dropped == 0)
        cases.append(CaseResult("pipeline processed the footage" + (" without dropping frames" if fast else ""),
                                "replay.pipeline", good,
                                "" if good else f"{report.get('frames_processed', 0)} frames processed, {dropped} dropped"))
    return RigResult(cases, unexpected)


def write_junit(result: RigResult, path, suite: str = "edge-lfr replay") -> Path:
    """Write the result as JUnit XML (one testsuite)."""
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(result.cases)), failures=str(result.failures),
                       errors="0", skipped="0", time=f"{result.seconds:.3f}",
                       timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()))
    props = ET.SubElement(ts, "properties")
    for k, v in result.properties.items():
        ET.SubElement(props, "property", name=str(k), value=str(v))
    for c in result.cases:
        tc = ET.SubElement(ts, "testcase", classname=c.classname, name=c.name, time="0")
        if not c.ok:
            f = ET.SubElement(tc, "failure", message=c.message, type="AssertionError")
            f.text = c.detail or c.message
        elif c.detail:
            ET.SubElement(tc, "system-out").text = c.detail
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(p, encoding="utf-8", xml_declaration=True)
    return p


def report_properties(report: dict) -> dict:
    props = {k: report[k] for k in ("frames_captured", "frames_processed", "dropped_frames", "fps", "seconds",
                                    "workers", "alerts", "tracks") if k in report}
    for stage, s in report.get("stages", {}).items():
        props[f"{stage}_p50_ms"] = s["p50_ms"]
        props[f"{stage}_p95_ms"] = s["p95_ms"]
    return props


# --------------------------------------------------------------------------------------
# A throwaway unit (keys, trust, state) for the demo, tests and the benchmark
# --------------------------------------------------------------------------------------


class ThrowawayUnit:
    """An issuer key, a device key, a trust file and a state folder under ``root`` (a temporary
    folder the caller owns and deletes), and the unit configuration that points at them."""

    def __init__(self, root, unit_id: str = "rig-unit", base_config=None):
        self.root = Path(root)
        self.unit_id = unit_id
        keys = self.root / "keys"
        self.issuer = generate_issuer("throwaway-issuer")
        self.device = generate_device(unit_id)
        save_device(self.device, keys)
        now = int(time.time())
        save_trust(TrustStore((trusted_key(self.issuer.public, now - 3600, now + 30 * 86400),)), keys / "trust.yaml")
        base = (base_config or load_config(None)).as_dict()
        base["unit"].update({"id": unit_id, "state_dir": str(self.root / "state"),
                             "device_key": str(keys / "device.key"), "trust_file": str(keys / "trust.yaml"),
                             "device_key_passphrase_file": ""})
        self.config_dict = base
        self.config = validate(base)

    def with_config(self, **sections) -> Any:
        """The unit's config with some sections replaced/updated (dicts)."""
        d = {k: dict(v) for k, v in self.config_dict.items()}
        for k, v in sections.items():
            d[k].update(v)
        self.config_dict = d
        self.config = validate(d)
        return self.config

    def sign(self, people, recognizer, *, hours: float = 4.0, serial: int | None = None,
             operation_id: str = "OP-THROWAWAY") -> tuple[bytes, dict]:
        """Enrol the listed people (their enrolment photos, through :func:`edge.watchlist.enrol.enrol`, the
        back office's path) and sign a bundle for this unit. Returns (bundle bytes, enrolment report)."""
        listed = [p for p in people if p.subject_id]
        if not listed:
            raise InputError("nobody to enrol: no listed people")
        images = self.root / "enrol"
        images.mkdir(parents=True, exist_ok=True)
        manifest = images / "manifest.csv"
        with open(manifest, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["subject_id", "category", "reason_code", "image", "source_ref", "threshold"])
            for p in listed:
                name = f"{p.subject_id}.png"
                ok, buf = cv2.imencode(".png", cv2.cvtColor(p.enrol_image, cv2.COLOR_RGB2BGR))
                if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
                    raise InputError(f"cannot encode the enrolment image of {p.subject_id}")
                (images / name).write_bytes(buf.tobytes())
                w.writerow([p.subject_id, p.category or "wanted", "R-TEST", name, f"test image of {p.label}"[:100], ""])
        result = enrol(read_manifest(manifest), images, recognizer, self.config, progress=False)
        for f in images.iterdir():  # the enrolment photos are not needed any more
            f.unlink()
        if not result.subjects:
            raise InputError("no subject could be enrolled")
        now = int(time.time())
        data, _ = make_bundle(subjects=result.subjects, embeddings=result.embeddings, thumbnails=result.thumbnails,
                              issuer=self.issuer, recipients=[self.device.public],
                              serial=serial if serial is not None else now, operation_id=operation_id,
                              authorising_officer="Test Rig 0000", valid_from=now - 60,
                              valid_until=now + int(hours * 3600),
                              model_sha256=recognizer.embedder_sha256,
                              issued_at=now - 60, limits=Limits.from_config(self.config))
        return data, result.report()

    def unit(self, state_dir=None):
        """A :class:`~edge.watchlist.unit.UnitWatchlist` for this unit."""
        return UnitWatchlist(self.config, model_sha256=embedder_sha256(self.config), state_dir=state_dir,
                             device_key=self.device)


# --------------------------------------------------------------------------------------
# Replay
# --------------------------------------------------------------------------------------


def detection_line(rec) -> str:
    """One JSON line of ``--detections``: a frame's index, media time and every detection with
    its box (frame pixels), detector score and the track it was given."""
    dets = [{"box": [round(float(v), 1) for v in d.box], "score": round(float(d.score), 4), "track": tid}
            for d, tid in zip(rec.detections, rec.track_ids)]
    return json.dumps({"frame": rec.seq, "t": round(float(rec.t), 6), "views": rec.views, "detections": dets})


def alert_record(e) -> dict:
    """An alert as ``replay --json`` writes it (no image)."""
    return {"frame": e.frame_seq, "t": round(float(e.t), 6), "subject_id": e.subject_id, "category": e.category,
            "score": round(float(e.score), 6), "threshold": round(float(e.threshold), 6),
            "box": [round(float(v), 1) for v in e.box], "track_id": e.track_id,
            "track_start_t": round(float(e.first_seen_t), 6), "event_id": e.event_id}


def replay(config, *, source, bundle: str | None, expect: str | None, junit: str | None, pace: str = "fast",
           publish: bool = False, on_alert=None, recognizers=None, say=print,
           detections: str | None = None) -> tuple[RigResult | None, dict]:
    """Run ``source`` (a video file or image folder) through the pipeline with ``bundle``
    loaded into a temporary state folder; check ``expect``; write ``junit``; with
    ``detections``, write every frame's detections as JSON lines (:func:`detection_line`).
    Returns (result or None without --expect, pipeline report)."""
    expectations = load_expectations(expect) if expect else None
    src = FileSource(source, pace=pace, loop=False, fps=config.camera.fps,
                     max_pixels=config.limits.max_image_pixels)
    if not bundle:
        say("no --bundle: nothing can match; every expectation of an alert will fail")
    with tempfile.TemporaryDirectory(prefix="edge-lfr-replay-") as tmp:
        det_file = None
        if detections:
            try:
                Path(detections).parent.mkdir(parents=True, exist_ok=True)
                det_file = open(detections, "w", encoding="utf-8")
            except OSError as exc:
                raise InputError(f"{detections}: cannot write detections: {exc.strerror or exc}") from None
        on_frame = (lambda rec: det_file.write(detection_line(rec) + "\n")) if det_file else None
        app = build_appliance(config, src, recognizers=recognizers, state_dir=Path(tmp) / "state",
                              bundle=bundle or None, publish=publish, on_alert=on_alert,
                              unit_id=config.unit.id or "rig-unit", say=say, on_frame=on_frame)
        pl = app.pipeline
        t0 = time.monotonic()
        try:
            report = app.run()
        finally:
            if det_file is not None:
                det_file.close()
            if app.publisher is not None:
                app.publisher.wait_idle(10.0)
            app.close()
        elapsed = time.monotonic() - t0
    result = None
    if expectations is not None:
        result = check(expectations, pl.events, report, fast=(pace == "fast"))
        result.seconds = elapsed
        result.properties = {"source": str(source), "bundle": str(bundle or ""), **report_properties(report)}
        if junit:
            write_junit(result, junit)
    return result, {**report, "events": pl.events}
