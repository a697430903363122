"""edge.matching.normalise: the cohort-normalised score, its use inside the Matcher, and the shipped model."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edge.errors import InputError, ModelError
from edge.matching.match import Matcher, Watchlist
from edge.matching.normalise import (COHORT_FILE, MANIFEST_SECTION, ScoreModel, cohort_sha256, fit_score_model,
                            load_score_model)
from edge.matching.calibration import ThresholdPolicy, fit_calibration


def _unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def cohort():
    return _unit(np.random.default_rng(0).normal(size=(300, 32)))


@pytest.fixture(scope="module")
def model(cohort):
    return fit_score_model(cohort, 0.2)


def test_fit_constants_from_the_cohort_itself(cohort, model):
    assert model.top_k == 60 and model.size == 300 and model.dim == 32
    assert not model.cohort.flags.writeable
    # mu0, sd0 = medians of each member's top-k statistics against the others (not itself)
    s = cohort.astype(np.float64) @ cohort.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    top = -np.sort(-s, axis=1)[:, :60]
    assert model.mu0 == pytest.approx(np.median(top.mean(axis=1)), abs=1e-5)
    assert model.sd0 == pytest.approx(np.median(top.std(axis=1)), abs=1e-5)


def test_cohort_stats_are_top_k_mean_and_sd(cohort, model):
    x = _unit(np.random.default_rng(1).normal(size=(7, 32)))
    mu, sd = model.cohort_stats(x)
    s = x.astype(np.float64) @ cohort.T.astype(np.float64)
    top = -np.sort(-s, axis=1)[:, :model.top_k]
    assert np.allclose(mu, top.mean(axis=1), atol=1e-5) and np.allclose(sd, top.std(axis=1), atol=1e-5)
    mu1, sd1 = model.cohort_stats(x[3])            # one probe: the single-threaded path
    assert mu1[0] == pytest.approx(mu[3], abs=1e-6) and sd1[0] == pytest.approx(sd[3], abs=1e-6)
    with pytest.raises(InputError):
        model.cohort_stats(np.ones((2, 5), np.float32))


def test_score_is_mean_of_three_z_scores(model):
    rng = np.random.default_rng(2)
    p, g = _unit(rng.normal(size=(3, 32))), _unit(rng.normal(size=(4, 32)))
    ps, gs = model.cohort_stats(p), model.cohort_stats(g)
    t = model.normalise(p.astype(np.float64) @ g.T.astype(np.float64), ps, gs)
    s = float(p[1].astype(np.float64) @ g[2].astype(np.float64))
    want = ((s - gs[0][2]) / gs[1][2] + (s - ps[0][1]) / ps[1][1] + (s - model.mu0) / model.sd0) / 3
    assert t[1, 2] == pytest.approx(want, rel=1e-9)
    # a pair score is symmetric and equals the matrix entry
    assert model.pair_scores(p[1:2], g[2:3])[0] == pytest.approx(want, rel=1e-6)
    assert model.pair_scores(g[2:3], p[1:2])[0] == pytest.approx(want, rel=1e-6)


def test_look_alike_of_many_needs_a_higher_raw_score():
    """Same raw cosine, two listed subjects: the one who resembles many cohort faces (a crowded
    region) gets the lower normalised score - the per-subject adaptive threshold."""
    rng = np.random.default_rng(3)
    crowd_centre = _unit(rng.normal(size=16))
    cohort = np.concatenate([_unit(crowd_centre + 0.3 * rng.normal(size=(150, 16))),
                             _unit(rng.normal(size=(150, 16)))])
    m = fit_score_model(cohort, 0.1)
    crowded, sparse = crowd_centre, _unit(rng.normal(size=16))
    assert m.cohort_stats(crowded[None])[0][0] > m.cohort_stats(sparse[None])[0][0]
    probe_stats = m.cohort_stats(_unit(rng.normal(size=(1, 16))))
    s = np.array([[0.8, 0.8]])
    t = m.normalise(s, probe_stats, m.cohort_stats(np.stack([crowded, sparse])))
    assert t[0, 0] < t[0, 1]


def test_bad_models_are_refused(cohort):
    with pytest.raises(InputError):
        fit_score_model(cohort[:2])
    with pytest.raises(InputError):
        fit_score_model(cohort, 0.0)
    with pytest.raises(InputError):
        fit_score_model(np.full((5, 4), np.nan))
    with pytest.raises(InputError):
        ScoreModel(cohort, 0, 0.5, 0.1)
    with pytest.raises(InputError):
        ScoreModel(cohort.astype(np.float64), 5, 0.5, 0.1)


# ---------------------------------------------------------------------------------------------
# Inside the Matcher: what is measured is what runs
# ---------------------------------------------------------------------------------------------

def _calibrated(model):
    rng = np.random.default_rng(4)
    return model.with_calibration(fit_calibration(rng.normal(size=50_000), "synthetic"))


def test_matcher_statistics_equal_the_model_formula(model):
    rng = np.random.default_rng(5)
    g = _unit(rng.normal(size=(40, 32)))
    wl = Watchlist(g, [f"s{i}" for i in range(40)], ["wanted"] * 40)
    m = Matcher(wl, {"wanted": 0.5}, scorer=_calibrated(model))
    p = _unit(rng.normal(size=(6, 32)))
    want = model.normalise(p.astype(np.float64) @ g.T.astype(np.float64), model.cohort_stats(p),
                           model.cohort_stats(g))
    assert np.allclose(m.statistics(p), want, atol=1e-4)
    for i in range(len(p)):                       # the one-probe live path agrees
        assert np.allclose(m.statistics(p[i]), want[i], atol=1e-4)


def test_matcher_reports_calibrated_scores_and_keeps_the_ranking(model):
    rng = np.random.default_rng(6)
    g = _unit(rng.normal(size=(30, 32)))
    wl = Watchlist(g, [f"s{i}" for i in range(30)], ["wanted"] * 30)
    scorer = _calibrated(model)
    pol = ThresholdPolicy(scorer.calibration, 0.01, len(wl))
    m = Matcher(wl, {"wanted": pol.threshold}, scorer=scorer, policy=pol)
    probe = _unit(g[7] + 0.05 * rng.normal(size=32))
    hit = m.match(probe)
    assert hit.subject_id == "s7" and 0.0 <= hit.score <= 1.0 and hit.margin >= 0
    assert hit.threshold == pytest.approx(pol.threshold)
    st = m.statistics(probe)[0]
    assert hit.score == pytest.approx(float(scorer.calibration.score(st.max())), abs=1e-6)
    top = m.top_k(probe, 3)[0]
    assert [t.subject_id for t in top] == [f"s{i}" for i in np.argsort(-st)[:3]]
    assert top[0].score == pytest.approx(hit.score) and top[0].margin == pytest.approx(hit.margin, abs=1e-6)
    best, score, margin = m.identify(np.stack([probe, g[3]]))
    assert list(best) == [7, 3] and score[0] == pytest.approx(hit.score, abs=1e-6)
    sc = m.scores(probe)[0]
    assert sc.max() == pytest.approx(hit.score, abs=1e-6) and np.all((sc >= 0) & (sc <= 1))
    meaning = m.meaning(hit)
    assert meaning["watchlist_size"] == 30 and meaning["target_fpir"] == 0.01 and meaning["fmr"] > 0


def test_several_templates_are_fused(model):
    rng = np.random.default_rng(7)
    a = _unit(rng.normal(size=(3, 32)))
    b = _unit(rng.normal(size=(1, 32)))
    wl = Watchlist(np.concatenate([a, b]), ["A", "A", "A", "B"], ["wanted"] * 4)
    m = Matcher(wl, {"wanted": 0.5}, scorer=_calibrated(model))
    fused = _unit(a.sum(axis=0))
    p = _unit(rng.normal(size=(2, 32)))
    g = np.stack([fused, b[0]])
    want = model.normalise(p.astype(np.float64) @ g.T.astype(np.float64), model.cohort_stats(p),
                           model.cohort_stats(g))
    assert np.allclose(m.statistics(p), want, atol=1e-4)


def test_bundle_cosine_threshold_becomes_a_stricter_subject_threshold(model):
    rng = np.random.default_rng(8)
    g = _unit(rng.normal(size=(3, 32)))
    wl = Watchlist(g, ["a", "b", "c"], ["wanted"] * 3, thresholds=[None, 0.99, -0.5])
    m = Matcher(wl, {"wanted": 0.3}, scorer=_calibrated(model))
    assert m.thresholds[0] == pytest.approx(0.3)
    assert m.thresholds[1] > 0.3                     # a near-1 cosine is a very high calibrated bar
    assert m.thresholds[2] == pytest.approx(0.3)     # a lax per-subject value never loosens the policy


def test_without_calibration_only_statistics(model):
    g = _unit(np.random.default_rng(9).normal(size=(5, 32)))
    m = Matcher(Watchlist(g, list("abcde"), ["wanted"] * 5), {"wanted": 0.5}, scorer=model)
    assert m.statistics(g[0]).shape == (1, 5)
    with pytest.raises(InputError, match="calibration"):
        m.match(g[0])


def test_dimension_mismatch_is_refused(model):
    g = _unit(np.random.default_rng(10).normal(size=(2, 8)))
    with pytest.raises(InputError, match="dimension"):
        Matcher(Watchlist(g, ["a", "b"], ["wanted"] * 2), {"wanted": 0.5}, scorer=model)


# ---------------------------------------------------------------------------------------------
# The shipped model
# ---------------------------------------------------------------------------------------------

def _shipped_or_skip():
    try:
        return load_score_model()
    except ModelError as exc:
        pytest.skip(f"no shipped score model: {exc}")


def test_shipped_model_is_consistent():
    m = _shipped_or_skip()
    assert m.dim == 128 and 1000 <= m.size and m.cohort.nbytes < 2_000_000
    assert np.allclose(np.linalg.norm(m.cohort, axis=1), 1.0, atol=1e-4)
    assert m.calibration is not None and m.calibration.min_supported_fmr < 1e-5
    assert 0.8 < m.mu0 < 0.95 and 0.005 < m.sd0 < 0.05


def test_altered_cohort_file_is_refused(tmp_path):
    _shipped_or_skip()
    from edge.recognition.runtime import find_models_dir
    src = find_models_dir()
    manifest = json.loads((src / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(src / COHORT_FILE, tmp_path / COHORT_FILE)
    ok = load_score_model(tmp_path)
    assert ok.sha256 == cohort_sha256(tmp_path / COHORT_FILE)
    c = np.load(tmp_path / COHORT_FILE)
    c[0, 0] += 0.01
    np.save(tmp_path / COHORT_FILE, c)
    with pytest.raises(ModelError, match="sha256"):
        load_score_model(tmp_path)
    del manifest[MANIFEST_SECTION]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=MANIFEST_SECTION):
        load_score_model(tmp_path)


def test_fused_templates_and_fused_probes_are_lowered_by_their_fusion_offset(model):
    """A subject enrolled from two photos, or a track fused from several views, scores strangers
    higher than one photo: the matcher lowers its statistic by the calibration's offset, the
    ranking among subjects of one kind is unchanged."""
    from dataclasses import replace
    rng = np.random.default_rng(11)
    g = _unit(rng.normal(size=(20, 32)))
    scorer = _calibrated(model)
    scorer = replace(scorer, calibration=replace(scorer.calibration, fusion_offsets=(0.3, 0.5),
                                                 reference_spread=0.05))
    # the same fused template given as one row, and as two rows (two photos) that fuse to it
    one = Watchlist(g, [f"s{i}" for i in range(20)], ["wanted"] * 20)
    twin = np.concatenate([g, g])
    two = Watchlist(twin, [f"s{i}" for i in range(20)] * 2, ["wanted"] * 40)
    m1 = Matcher(one, {"wanted": 0.5}, scorer=scorer)
    m2 = Matcher(two, {"wanted": 0.5}, scorer=scorer)
    p = _unit(rng.normal(size=(5, 32)))
    assert np.allclose(m2.statistics(p), m1.statistics(p) - 0.3, atol=1e-4)
    probe = _unit(g[4] + 0.1 * rng.normal(size=32))
    single, fused = m1.match(probe), m1.match(probe, views=3, spread=0.05)
    assert fused.subject_id == single.subject_id == "s4"
    cal = scorer.calibration
    assert fused.score == pytest.approx(float(cal.score(cal.t_for_score(single.score) - 0.5)), abs=1e-5)
    half = m1.match(probe, views=3, spread=0.025)              # views half as different: half the offset
    assert half.score == pytest.approx(float(cal.score(cal.t_for_score(single.score) - 0.25)), abs=1e-5)
