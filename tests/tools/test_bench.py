"""`edge-lfr bench`: every stage is measured and reported (no timing thresholds)."""
from __future__ import annotations

import json

import pytest

from edge.cli.main import main

STAGES = ("detect", "align", "quality", "embed_int8", "embed_int8_single_pass", "embed_float32",
          "match_top1_1000", "match_top1_10000", "match_top1_100000", "pipeline_one_face")


def _models_or_skip():
    from edge.errors import ModelError
    from edge.recognition.runtime import find_models_dir, load_manifest
    try:
        manifest = load_manifest(find_models_dir())
    except ModelError as exc:
        pytest.skip(f"models not built: {exc}")
    missing = {"blazeface_full_range", "dlib_resnet_v1_int8", "dlib_resnet_v1_float32"} - set(manifest["models"])
    if missing or "alignment" not in manifest:
        pytest.skip(f"models/manifest.json incomplete (missing {sorted(missing)} or alignment)")


def test_bench_reports_every_stage(tmp_path, capsys):
    _models_or_skip()
    out = tmp_path / "sub" / "bench.json"
    assert main(["bench", "--repeat", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    stages = report["stages"]
    for key in STAGES:
        s = stages[key]
        assert s["n"] >= 1 and s["p50_ms"] > 0 and s["p95_ms"] >= s["min_ms"] > 0, key
    assert {"grace_hopper", "astronaut"} <= set(report["detect_per_image"])
    assert report["detect_per_image"]["grace_hopper"]["faces"] >= 1
    assert report["ratios"]["float32_over_int8"] > 0
    assert 0.9 < report["agreement"]["cosine_int8_vs_float32"] <= 1.0 + 1e-6
    assert len(report["model_sha256"]) == 64
    if report["alignment_source"] == "mesh":
        assert stages["landmarks"]["p50_ms"] > 0
    printed = capsys.readouterr().out
    assert "embed int8" in printed and "match top-1, N=100,000" in printed
    try:
        import dlib  # noqa: F401
        import face_recognition_models  # noqa: F401
    except ImportError:
        assert "dlib not installed" in printed
        return
    assert stages["dlib_descriptor"]["p50_ms"] > 0 and stages["dlib_hog_detect"]["p50_ms"] > 0
    assert report["ratios"]["dlib_over_int8"] > 0 and report["ratios"]["dlib_over_int8_as_configured"] > 0
    assert report["repeat_dlib"] >= 1


def test_bench_refuses_bad_repeat(capsys):
    assert main(["bench", "--repeat", "0"]) == 65
    assert "--repeat" in capsys.readouterr().err


def test_bench_pipeline_scores_pairs_exactly_as_the_unit_matcher_does():
    """The accuracy comparison with face_recognition is only fair if the bench's false-match
    rate is measured on the score the unit alerts on: pair scores must equal the live matcher's
    scores, and moving the threshold must move the unit's threshold to that value."""
    import numpy as np

    from edge.tools.bench_pipeline import UnitScore
    from edge.config import validate
    from edge.matching.match import Watchlist
    from edge.matching.factory import build_matcher

    rng = np.random.default_rng(5)
    emb = rng.standard_normal((12, 128)).astype(np.float32)
    emb += 2.0 * rng.standard_normal(128).astype(np.float32)   # a crowded region: realistic cosines
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    for cfg in (validate({}), validate({"match": {"score_normalisation": False}})):
        us = UnitScore(cfg, n_listed=12)
        matcher = build_matcher(Watchlist(emb, [f"S{i}" for i in range(12)], ["wanted"] * 12), cfg)
        full = matcher.scores(emb)
        iu = np.triu_indices(12, 1)
        assert np.allclose(us.pair_scores(emb), full[iu], atol=2e-5)
        assert us.threshold == pytest.approx(matcher.match(emb[0]).threshold)
        moved = build_matcher(Watchlist(emb, [f"S{i}" for i in range(12)], ["wanted"] * 12), us.config_at(0.3))
        assert moved.match(emb[0]).threshold == pytest.approx(0.3, abs=1e-6)


def test_bench_pipeline_plots_latency_histograms_and_soak_rss(tmp_path):
    import numpy as np

    from edge.tools.bench_pipeline import PLOT_STAGES, plot_bench
    result = {"clip": {"width": 1920, "height": 1080, "faces_per_frame": 5.0},
              "pipeline": {"fps": 80.0, "workers": 2}}
    rng = np.random.default_rng(0)
    lat = {k: rng.gamma(4.0, 5.0, 200) for k in PLOT_STAGES}
    png = plot_bench(tmp_path / "lat.png", result, lat, [])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    soak = {**result, "soak": {"frames": 1000, "rss_start_mb": 250.0, "rss_end_mb": 251.0, "growth_pct": 0.4}}
    samples = [(i * 50, i * 0.7, 250 + float(rng.normal())) for i in range(20)]
    png = plot_bench(tmp_path / "rss.png", soak, {}, samples)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
