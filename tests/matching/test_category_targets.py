"""``match.target_fpir_<category>`` end to end (issue 17, item 2): config -> the threshold policy (one
threshold per category) -> the matcher -> the alert's ``calibrated`` field -> the audit log -> the
deployment report. Real score model and calibration, a real signed bundle, the real AuditLog."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from edge.alerts.message import AlertContext, build_alert, validate_alert
from edge.config import category_target_fpir, validate
from edge.matching.calibration import SCORE_DECADES, ThresholdPolicy
from edge.matching.match import fmr_for_fpir
from edge.privacy.audit import AuditLog, read_entries, verify
from edge.privacy.report import build_report, render_html
from edge.watchlist.keys import save_trust
from edge.watchlist.unit import UnitWatchlist
from tests.support.watchlists import MODEL, Clock, build, jpeg, make_keys


def _thr(fpir: float, n: int) -> float:
    """The threshold for a target: the FMR spread over the list and a pass's comparisons."""
    from edge.matching.normalise import load_score_model
    per_pass = load_score_model().calibration.pass_multiplicity
    return -np.log10(fmr_for_fpir(fpir, n) / per_pass) / SCORE_DECADES


def test_defaults_follow_target_fpir():
    cfg = validate({"match": {"target_fpir": 0.002}})
    assert category_target_fpir(cfg.match) == {"wanted": 0.002, "missing": 0.002, "vulnerable": 0.002}
    cfg = validate({"match": {"target_fpir": 0.002, "target_fpir_missing": 0.02}})
    assert category_target_fpir(cfg.match) == {"wanted": 0.002, "missing": 0.02, "vulnerable": 0.002}


def test_policy_gives_one_threshold_per_category():
    from edge.matching.normalise import load_score_model
    cal = load_score_model().calibration
    p = ThresholdPolicy(cal, 0.001, 826, (("wanted", 0.0001), ("missing", 0.01)))
    assert p.threshold_for("wanted") == pytest.approx(_thr(0.0001, 826))
    assert p.threshold_for("missing") == pytest.approx(_thr(0.01, 826))
    assert p.threshold_for("vulnerable") == p.threshold == pytest.approx(_thr(0.001, 826))
    assert p.threshold_for("missing") < p.threshold_for("vulnerable") < p.threshold_for("wanted")
    assert p.meaning(0.6, "missing")["target_fpir"] == 0.01 and p.meaning(0.6, "wanted")["target_fpir"] == 0.0001
    assert p.meaning(0.6)["target_fpir"] == 0.001
    assert "missing: FPIR 0.01" in p.describe()


def test_config_to_threshold_to_alert_to_report(tmp_path):
    keys = make_keys()
    save_trust(keys.trust(), tmp_path / "trust.yaml")
    clock = Clock()
    cfg = validate({"unit": {"id": "van-07", "state_dir": str(tmp_path / "state"), "trust_file": str(tmp_path / "trust.yaml")},
                    "watchlist": {"max_subjects": 50, "max_bundle_bytes": 2_000_000},
                    "match": {"target_fpir": 0.001, "target_fpir_wanted": 0.0001, "target_fpir_missing": 0.01}})
    audit = AuditLog.from_config(cfg, device_key=keys.dev7, clock=clock.now)
    unit = UnitWatchlist(cfg, model_sha256=MODEL, device_key=keys.dev7, now=clock.now, monotonic=clock.mono,
                         boot_id=lambda: "b")
    audit.service_start(cfg, model_sha256=MODEL, version="0.1.0")
    live = unit.load(build(keys, serial=10, n=9, valid_from=int(clock.now() - 3600), valid_until=int(clock.now() + 7200)))
    audit.bundle_loaded(live)
    n = len(live.matcher.watchlist)

    # config -> threshold: each category's threshold is the list's threshold at its own target
    thr = dict(live.matcher.category_thresholds)
    assert thr["wanted"] == pytest.approx(_thr(0.0001, n))
    assert thr["missing"] == pytest.approx(_thr(0.01, n))
    assert thr["vulnerable"] == pytest.approx(_thr(0.001, n))
    assert thr["missing"] < thr["vulnerable"] < thr["wanted"]

    # threshold -> alert: a probe equal to a subject's template matches it; the alert says which target applied
    wl = live.matcher.watchlist
    seen = {}
    for k, subject in enumerate(wl.subjects):
        cat = wl.subject_categories[k]
        if cat in seen or wl.subject_thresholds[k] is not None:     # (a bundle's own per-subject floor aside)
            continue
        m = live.matcher.match(np.asarray(wl.embeddings)[np.asarray(wl.row_subject) == k][0])
        assert m.subject_id == subject and m.category == cat and m.is_hit
        assert m.threshold == pytest.approx(thr[cat], abs=1e-6)
        a = build_alert(m, AlertContext("van-07", "OP-1", live.manifest.bundle_id, 10, MODEL), track_id=k,
                        first_seen=clock.now() - 2, probe_crop=np.full((150, 150, 3), 90, np.uint8),
                        context_image=np.full((200, 150, 3), 120, np.uint8), reference=jpeg(k, 64),
                        max_image_bytes=8192, calibrated=live.matcher.meaning(m))
        validate_alert(a)
        assert a["threshold"] == pytest.approx(thr[cat], abs=1e-6)
        assert a["calibrated"]["target_fpir"] == {"wanted": 0.0001, "missing": 0.01, "vulnerable": 0.001}[cat]
        audit.alert(event_id=a["event_id"], subject_id=subject, category=cat, score=a["score"],
                    threshold=a["threshold"], track_id=k, bundle_id=live.manifest.bundle_id)
        seen[cat] = a
    assert set(seen) == {"wanted", "missing", "vulnerable"}
    clock.advance(600)
    audit.service_stop("signal", frames=100, alerts=3, exit_code=0)

    # alert -> audit log -> report: the per-category thresholds and targets in force
    assert verify(audit.path, keys.dev7).ok
    entries = list(read_entries(audit.path))
    loaded = next(e["data"] for e in entries if e["type"] == "bundle_loaded")
    assert loaded["threshold_policy"]["target_fpirs"] == {"wanted": 0.0001, "missing": 0.01, "vulnerable": 0.001}
    r = build_report(entries)
    assert r["threshold_kind"] == "calibrated score (cohort-normalised), one threshold per category"
    assert r["thresholds"] == {c: pytest.approx(thr[c], abs=1e-5) for c in thr}
    assert r["target_fpir_by_category"] == {"wanted": 0.0001, "missing": 0.01, "vulnerable": 0.001}
    assert r["by_category"]["missing"]["alerts"] == 1 and r["alerts"] == 3
    page = render_html(r)
    assert "wanted: FPIR 0.01%" in page and "missing: FPIR 1.00%" in page and "vulnerable: FPIR 0.10%" in page


def test_report_before_any_list_states_what_is_in_force(tmp_path):
    """Normalisation on, no list ever loaded: no raw-cosine figures (0.95, calibrated FPIR 0.01) that
    are not in use, but the targets that are."""
    keys = make_keys()
    clock = Clock()
    cfg = validate({"unit": {"id": "van-07", "state_dir": str(tmp_path / "state")},
                    "match": {"target_fpir_missing": 0.01}})
    audit = AuditLog.from_config(cfg, device_key=keys.dev7, clock=clock.now)
    audit.service_start(cfg, model_sha256=MODEL, version="0.1.0")
    clock.advance(60)
    audit.service_stop("signal", frames=0, alerts=0, exit_code=0)
    r = build_report(list(read_entries(audit.path)))
    assert r["thresholds"] == {} and "no watchlist was loaded" in r["threshold_kind"]
    assert r["calibrated_fpir"] == 0.001
    assert r["target_fpir_by_category"] == {"wanted": 0.001, "missing": 0.01, "vulnerable": 0.001}
    page = render_html(r)
    assert "0.950" not in page and "missing: FPIR 1.00%" in page
