"""The post-deployment report (edge/privacy/report.py, ``edge-lfr report``): every published figure computed from
the audit log of a simulated 8-hour deployment; the window; the verification banner; the HTML rendered
to PNG in headless Chromium (Debian's /usr/bin/chromium; skipped clearly when absent)."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edge.privacy.audit import AuditLog, read_entries, verify
from edge.config import validate
from edge.errors import InputError
from edge.watchlist.keys import save_device, save_trust
from edge.privacy.report import build_report, find_chromium, render_html, render_png, write_report
from edge.watchlist.unit import UnitWatchlist
from tests.support.watchlists import MODEL, build, make_keys

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "report"
START = datetime(2025, 6, 14, 8, 0, tzinfo=timezone.utc).timestamp()
HOUR = 3600.0


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t

    def now(self):
        return self.t

    def mono(self):
        return self.t


def uuid_for(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


class Deployment:
    """An 8-hour deployment (08:00-16:00 UTC) written through the real AuditLog, preceded by an
    earlier deployment with another bundle and followed by other activity."""

    def __init__(self, tmp: Path, location: str = "Stratford Broadway, London E15"):
        self.tmp = tmp
        self.keys = make_keys()
        save_trust(self.keys.trust(), tmp / "trust.yaml")
        self.clock = Clock(START - 30 * HOUR)
        self.cfg = validate({"unit": {"id": "van-07", "state_dir": str(tmp / "state"),
                                      "trust_file": str(tmp / "trust.yaml")},
                             "watchlist": {"max_subjects": 50, "max_bundle_bytes": 2_000_000},
                             "privacy": {"location_label": location}})
        self.audit = AuditLog.from_config(self.cfg, device_key=self.keys.dev7, clock=self.clock)
        self.unit = UnitWatchlist(self.cfg, model_sha256=MODEL, device_key=self.keys.dev7, now=self.clock.now,
                                  monotonic=self.clock.mono, boot_id=lambda: "b")
        a = self.audit
        rng = random.Random(14)
        # an earlier deployment (another bundle), not part of the report
        a.service_start(self.cfg, model_sha256=MODEL, version="0.1.0")
        old = self.unit.load(build(self.keys, serial=5, n=3, valid_from=int(self.clock.t - HOUR),
                                   valid_until=int(self.clock.t + 10 * HOUR)))
        a.bundle_loaded(old)
        self.clock.t += 600
        a.counts({"frames": 1000, "faces": 500, "gated": {"too_small": 50}, "alerts": 0})
        a.alert(event_id=uuid_for(9999), subject_id="S00001", category="missing", score=0.96, threshold=0.95)
        a.watchlist_deleted(old.manifest.bundle_id, "wiped on demand")
        a.service_stop("end of shift")
        # the deployment
        self.clock.t = START
        a.service_start(self.cfg, model_sha256=MODEL, version="0.1.0")
        live = self.unit.load(build(self.keys, serial=10, n=10, valid_from=int(START - HOUR),
                                    valid_until=int(START + 12 * HOUR)))
        self.bundle_id = live.manifest.bundle_id
        a.bundle_loaded(live)
        self.faces = self.frames = 0
        self.gated = {"too_small": 0, "blurred": 0, "profile": 0}
        plan = {int(h * 12): o for h, o in ((0.5, "confirmed"), (1.2, "rejected"), (2.0, "confirmed"),
                                            (3.1, "not_located"), (4.4, "confirmed"), (5.0, "rejected"),
                                            (6.5, "confirmed"), (7.2, None))}
        cats = ["wanted", "missing", "vulnerable", "wanted", "wanted", "missing", "vulnerable", "wanted"]
        self.outcomes = {}
        self.categories = {}
        k = 0
        for step in range(96):                       # every 5 minutes for 8 hours
            self.clock.t = START + (step + 1) * 300
            if step == 48:                          # a restart half way (same deployment)
                a.service_stop("restart")
                self.clock.t += 5
                a.service_start(self.cfg, model_sha256=MODEL, version="0.1.0")
            busy = 1.0 + 2.0 * (1 - abs(step - 48) / 48)          # a midday peak
            faces = int(rng.gauss(40 * busy, 6))
            g = {"too_small": rng.randrange(0, 6), "blurred": rng.randrange(0, 3), "profile": rng.randrange(0, 4)}
            self.faces += faces
            self.frames += 9000
            for r, n in g.items():
                self.gated[r] += n
            a.counts({"frames": 9000, "faces": faces, "gated": g, "alerts": int(step in plan), "interval_s": 300})
            if step in plan:
                eid = uuid_for(k)
                a.alert(event_id=eid, subject_id=f"S{k:05d}", category=cats[k], score=0.955 + k / 1000,
                        threshold=0.95, track_id=k, bundle_id=self.bundle_id)
                self.categories[eid] = cats[k]
                self.outcomes[eid] = plan[step]
                k += 1
            for eid, o in list(self.outcomes.items()):
                # decisions arrive a few minutes later; a repeat is not counted twice
                if o and not getattr(self, "_done_" + eid[-4:], False) and rng.random() < 0.7:
                    a.adjudication({"event_id": eid, "outcome": o, "officer_id": "off-3",
                                    "decided_at": "2025-06-14T10:00:00.000Z", "duplicate": False})
                    a.adjudication({"event_id": eid, "outcome": "confirmed", "officer_id": "off-9",
                                    "decided_at": "2025-06-14T10:00:01.000Z", "duplicate": True})
                    setattr(self, "_done_" + eid[-4:], True)
        self.clock.t = START + 8 * HOUR
        for eid, o in self.outcomes.items():         # late decisions, after the window
            if o and not getattr(self, "_done_" + eid[-4:], False):
                self.clock.t += 60
                a.adjudication({"event_id": eid, "outcome": o, "officer_id": "off-3",
                                "decided_at": "2025-06-14T16:10:00.000Z", "duplicate": False})
        self.clock.t = START + 8 * HOUR + 30
        a.service_stop("end of deployment")
        self.clock.t = START + 20 * HOUR
        a.watchlist_deleted(self.bundle_id, "deployment ended")
        a.purge({"alerts_expired": 0, "resumed": False})
        self.end = START + 20 * HOUR

    @property
    def entries(self):
        return list(read_entries(self.audit.path))


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    return Deployment(tmp_path_factory.mktemp("dep"))


def test_figures(dep):
    v = verify(dep.audit.path, dep.keys.dev7)
    assert v.ok, v.problems
    r = build_report(dep.entries, verification=v, now=START + 21 * HOUR)
    # the latest deployment: from its bundle_loaded to the service's last stop before the list was deleted
    assert r["window"]["start"] == "2025-06-14T08:00:00.000Z"
    assert r["window"]["end"] == "2025-06-14T16:00:30.000Z"
    assert r["location"] == "Stratford Broadway, London E15"
    assert r["unit_id"] == "van-07" and r["operation_ids"] == ["OP-1"]
    assert [w["bundle_id"] for w in r["watchlist"]] == [dep.bundle_id]
    assert r["watchlist"][0]["subjects"] == 10
    assert r["watchlist"][0]["by_category"] == {"wanted": 4, "missing": 3, "vulnerable": 3}
    assert r["faces_processed"] == dep.faces and r["frames_processed"] == dep.frames
    assert r["faces_gated"] == {"total": sum(dep.gated.values()), "by_reason": dict(sorted(dep.gated.items()))}
    assert r["alerts"] == 8
    assert r["adjudications"] == {"confirmed": 4, "rejected": 2, "not_located": 1, "not_adjudicated": 1}
    assert r["false_alert_rate"] == pytest.approx(2 / dep.faces)
    for cat in ("wanted", "missing", "vulnerable"):
        mine = [o for e, o in dep.outcomes.items() if dep.categories[e] == cat]
        assert r["by_category"][cat] == {"alerts": len(mine), **{o: mine.count(o) for o in
                                                                 ("confirmed", "rejected", "not_located")}}
    assert r["by_category"]["wanted"] == {"alerts": 4, "confirmed": 2, "rejected": 0, "not_located": 1}
    # the unit's default: one calibrated threshold for the list, from match.target_fpir (0.001) and
    # its 10 subjects: FMR 1.0e-4 per passer-by and subject, spread over a pass's comparisons
    # (the calibration's pass_multiplicity) -> -log10(FMR) / 10
    from edge.matching.normalise import load_score_model
    want = 0.4 + math.log10(load_score_model().calibration.pass_multiplicity) / 10.0
    assert r["threshold_kind"].startswith("calibrated score")
    assert r["thresholds"] == {c: pytest.approx(want, abs=1e-3) for c in ("wanted", "missing", "vulnerable")}
    assert r["calibrated_fpir"] == 0.001 and "lfw-dev" in r["calibration_reference"]
    assert r["model_sha256"] == MODEL and r["software_version"] == "0.1.0"
    assert r["service"]["starts"] == 2 and r["service"]["stops"] == 2
    assert r["retention"] == {"match_records_days": 30, "rejected_hours": 24}
    assert r["audit"]["verified"] is True and r["audit"]["signatures_checked"] is True
    # the series adds up to the totals
    s = r["series"]
    assert sum(s["faces"]) == dep.faces
    assert sum(sum(v) for v in s["alerts"].values()) == 8
    # nothing about a person but the subject id... and not even that: the report holds counts only
    text = json.dumps(r)
    assert "S0000" not in text and uuid_for(0) not in text


def test_explicit_window_and_bundle(dep):
    r = build_report(dep.entries, start=START, end=START + 4 * HOUR)
    assert r["alerts"] == 4 and r["window"]["hours"] == 4.0
    assert [w["bundle_id"] for w in r["watchlist"]] == [dep.bundle_id]
    earlier = [e for e in dep.entries if e["type"] == "bundle_loaded"][0]["data"]["bundle_id"]
    r2 = build_report(dep.entries, bundle_id=earlier)
    assert r2["alerts"] == 1 and r2["faces_processed"] == 500 and r2["watchlist"][0]["subjects"] == 3
    with pytest.raises(InputError):
        build_report(dep.entries, bundle_id="nope")
    with pytest.raises(InputError):
        build_report([], start=0)


def test_html_escapes_and_flags_a_tampered_log(dep, tmp_path):
    r = build_report(dep.entries, location="<script>alert(1)</script>", verification=verify(dep.audit.path, dep.keys.dev7))
    page = render_html(r)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "Audit log intact" in page and "signature checked" in page
    # a copy of the log with one alert removed
    bad = tmp_path / "audit.jsonl"
    lines = dep.audit.path.read_bytes().splitlines(keepends=True)
    idx = next(i for i, ln in enumerate(lines) if b'"type":"alert"' in ln and b"S00003" in ln)
    del lines[idx]
    bad.write_bytes(b"".join(lines))
    (tmp_path / "audit.head.json").write_bytes((dep.audit.dir / "audit.head.json").read_bytes())
    v = verify(bad, dep.keys.dev7)
    r = build_report(read_entries(bad), verification=v)
    assert r["alerts"] == 7 and r["audit"]["verified"] is False
    assert "does NOT verify" in render_html(r)
    assert f"line {idx + 1}" in r["audit"]["problems"][0]


def test_cli_report(dep, tmp_path):
    save_device(dep.keys.dev7, tmp_path / "keys")
    cfg = tmp_path / "unit.yaml"
    cfg.write_text(json.dumps({"unit": {"id": "van-07", "state_dir": str(dep.audit.dir.parent),
                                        "device_key": str(tmp_path / "keys" / "device.key")}}))
    r = subprocess.run([sys.executable, "-m", "edge.cli", "report", "--config", str(cfg), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=180, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert "8 alerts (4 confirmed, 2 rejected, 1 not located, 1 not adjudicated)" in r.stdout
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["faces_processed"] == dep.faces
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page and "http://" not in page and "https://" not in page


def test_rendered_in_headless_chromium(dep, tmp_path):
    """The HTML as a person sees it: rendered by Debian's chromium to test-artifacts/report/report.png."""
    if find_chromium() is None:
        pytest.skip("chromium is not installed (bash run.sh test installs it: apt-get install chromium)")
    v = verify(dep.audit.path, dep.keys.dev7)
    r = build_report(dep.entries, verification=v, now=START + 21 * HOUR)
    _, html_path = write_report(r, tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = render_png(html_path, ARTIFACTS / "report.png", width=1100, height=1900)
    import cv2
    img = cv2.imread(str(png))
    assert img is not None and img.shape[:2] == (1900, 1100)
    assert img.std() > 20                                        # not a blank page
    # the plot's bars (the report's blue) are on the page, i.e. the embedded PNG was drawn
    blue = ((abs(img[..., 0].astype(int) - 0xb5) < 12) & (abs(img[..., 1].astype(int) - 0x7f) < 12)
            & (abs(img[..., 2].astype(int) - 0x4a) < 12))
    assert blue.sum() > 2000


def test_threshold_from_the_lists_threshold_policy(dep):
    """With cohort-normalised scores the threshold follows match.target_fpir and the list's size:
    the report states the loaded list's policy, not the raw cosines."""
    entries = dep.entries
    load = next(i for i, e in enumerate(entries) if e["type"] == "bundle_loaded"
                and e["data"]["bundle_id"] == dep.bundle_id)
    e = json.loads(json.dumps(entries[load]))
    e["data"]["threshold_policy"] = {"threshold": 0.4123, "target_fpir": 0.001, "watchlist_size": 10,
                                     "supported": True, "calibration": "lfw-dev, cross-fitted"}
    r = build_report(entries[:load] + [e] + entries[load + 1:])
    assert r["thresholds"] == {"wanted": 0.4123, "missing": 0.4123, "vulnerable": 0.4123}
    assert r["calibrated_fpir"] == 0.001 and r["calibration_reference"] == "lfw-dev, cross-fitted"
    assert "calibrated score" in r["threshold_kind"]
    assert "FPIR 0.10%" in render_html(r)
