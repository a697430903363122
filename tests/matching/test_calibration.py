"""edge.matching.calibration: calibration table, calibrated score, target FPIR -> threshold for the
loaded list, the alert's calibrated meaning, and the config-driven matcher."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edge.config import validate
from edge.errors import InputError
from edge.matching.match import Watchlist, fmr_for_fpir
from edge.matching.normalise import fit_score_model
from edge.matching.factory import build_matcher
from edge.matching.calibration import (SCORE_DECADES, ScoreCalibration, ThresholdPolicy,
                                   fit_calibration)


@pytest.fixture(scope="module")
def gauss():
    """Impostor scores ~ N(0, 1): the exact FMR at t is the normal tail."""
    return np.random.default_rng(0).normal(size=2_000_000)


@pytest.fixture(scope="module")
def cal(gauss):
    return fit_calibration(gauss, "synthetic N(0,1)")


def _tail(t):
    return 0.5 * math.erfc(t / math.sqrt(2))


def test_table_tracks_the_empirical_tail(cal, gauss):
    assert cal.n_comparisons == gauss.size and cal.log10_fmr[0] == 0.0
    assert all(np.diff(cal.t) > 0) and all(np.diff(cal.log10_fmr) < 0)
    # the last table point still has >= 10 exceedances: FMR >= 10 / n
    assert 10 ** cal.log10_fmr[-1] >= 10 / gauss.size * (1 - 1e-9)
    # support beyond the table only as deep as the sample still has comparisons
    assert cal.min_supported_fmr >= 3 / gauss.size * (1 - 1e-9)
    for t in (1.0, 2.0, 3.0, 4.0):
        assert cal.log10_fmr_at(t) == pytest.approx(math.log10(_tail(t)), abs=0.05)


def test_extrapolated_tail_errs_towards_fewer_false_alarms(cal):
    # beyond the table the exponential tail over-states a Gaussian FMR -> higher thresholds
    for t in (5.5, 6.0, 7.0):
        assert cal.log10_fmr_at(t) > math.log10(_tail(t))
    assert cal.log10_fmr_at(-10.0) == 0.0             # below the table: every comparison


def test_calibrated_score_is_monotone_bounded_and_invertible(cal):
    t = np.linspace(-8, 12, 500)
    s = cal.score(t)
    assert np.all(np.diff(s) >= 0) and s.min() == 0.0 and s.max() <= 1.0
    for score in (0.1, 0.35, 0.5, 0.62, 0.8):
        assert cal.score(cal.t_for_score(score)) == pytest.approx(score, abs=1e-9)
    # meaning of the scale: score 0.5 <-> FMR 1e-5
    assert 10 ** (-SCORE_DECADES * float(cal.score(cal.t_for_score(0.5)))) == pytest.approx(1e-5)


def test_manifest_round_trip(cal):
    back = ScoreCalibration.from_manifest(cal.to_manifest())
    assert np.allclose(back.t, cal.t, atol=1e-6) and np.allclose(back.log10_fmr, cal.log10_fmr, atol=1e-4)
    assert back.tail_slope == pytest.approx(cal.tail_slope, abs=1e-6) and back.source == cal.source
    with pytest.raises(InputError):
        ScoreCalibration.from_manifest({"t": [0, 1]})
    with pytest.raises(InputError):
        ScoreCalibration((0.0, 1.0), (0.0, 0.5), 1.0, 10)        # FMR must fall
    with pytest.raises(InputError):
        fit_calibration(np.zeros(50))


def test_threshold_for_list_size(cal):
    for target, n in ((0.01, 100), (0.001, 826), (0.001, 100_000)):
        pol = ThresholdPolicy(cal, target, n)
        assert pol.target_fmr == pytest.approx(fmr_for_fpir(target, n))
        assert pol.threshold == pytest.approx(-math.log10(pol.target_fmr) / SCORE_DECADES)
    # a bigger list or a stricter target needs a higher threshold
    assert ThresholdPolicy(cal, 0.001, 10_000).threshold > ThresholdPolicy(cal, 0.001, 1_000).threshold
    assert ThresholdPolicy(cal, 0.001, 1_000).threshold > ThresholdPolicy(cal, 0.01, 1_000).threshold
    assert ThresholdPolicy(cal, 0.01, 100).supported
    assert not ThresholdPolicy(cal, 0.001, 100_000).supported
    with pytest.raises(InputError):
        ThresholdPolicy(cal, 0.0, 10)
    with pytest.raises(InputError):
        ThresholdPolicy(cal, 0.01, 0)


def test_policy_delivers_the_asked_fpir_on_independent_impostors(cal):
    """Simulated passers-by, each compared with N listed people (independent N(0,1) scores):
    the realised FPIR at the policy's threshold is the target."""
    rng = np.random.default_rng(1)
    n_list, n_people, target = 200, 20_000, 0.01
    pol = ThresholdPolicy(cal, target, n_list)
    t = cal.t_for_score(pol.threshold)
    top = rng.normal(size=(n_people, n_list)).max(axis=1)
    fpir = float(np.mean(top >= t))
    assert fpir == pytest.approx(target, rel=0.25)


def test_meaning_of_an_alert(cal):
    pol = ThresholdPolicy(cal, 0.001, 1000)
    m = pol.meaning(0.7)
    assert m["fmr"] == pytest.approx(1e-7, rel=0.01)
    assert m["expected_fpir"] == pytest.approx(1 - (1 - 1e-7) ** 1000, rel=0.01)
    assert m["watchlist_size"] == 1000 and m["target_fpir"] == 0.001 and m["supported"] is False
    assert m["calibration"] == "synthetic N(0,1)"
    assert pol.meaning(0.3)["supported"] is True
    assert "FMR" in pol.describe()


def test_build_matcher_follows_the_config(cal):
    rng = np.random.default_rng(2)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    cohort = unit(rng.normal(size=(200, 16))).astype(np.float32)
    model = fit_score_model(cohort).with_calibration(cal)
    g = unit(rng.normal(size=(50, 16))).astype(np.float32)
    wl = Watchlist(g, [f"s{i}" for i in range(50)], ["wanted"] * 25 + ["missing"] * 25)
    m = build_matcher(wl, validate({"match": {"target_fpir": 0.01}}), score_model=model)
    assert m.scorer is model and m.policy.watchlist_size == 50
    assert np.allclose(m.thresholds, ThresholdPolicy(cal, 0.01, 50).threshold)
    m = build_matcher(wl, validate({"match": {"score_normalisation": False, "threshold_wanted": 0.9}}))
    assert m.scorer is None and m.thresholds[0] == 0.9 and m.thresholds[-1] == 0.95
    with pytest.raises(InputError, match="calibration"):
        build_matcher(wl, validate({}), score_model=fit_score_model(cohort))


def test_config_options():
    c = validate({})
    assert c.match.score_normalisation is True and c.match.target_fpir == 0.001
    from edge.errors import ConfigError
    with pytest.raises(ConfigError):
        validate({"match": {"target_fpir": 0.0}})
    with pytest.raises(ConfigError):
        validate({"match": {"target_fpir": 0.9}})


def test_tail_supported_beyond_the_table_only_where_the_sample_agrees():
    rng = np.random.default_rng(1)
    # an exponential tail (what the tail model assumes): checked and supported to ~3 / n
    expo = rng.exponential(size=2_000_000)
    c = fit_calibration(expo)
    assert c.tail_slope == pytest.approx(math.log10(math.e), rel=0.05)
    assert c.min_supported_fmr < 10 ** c.log10_fmr[-1] and c.min_supported_fmr <= 3e-6
    assert all(abs(obs - pred) < 4 * math.sqrt(pred) + 2 for _, pred, obs in c.tail_check)
    # a tail the exponential model does not describe (a cluster of far-out impostors): the
    # first check beyond the table fails and nothing beyond the table is supported
    heavy = np.concatenate([rng.normal(size=2_000_000), rng.normal(9.0, 0.3, size=400)])
    h = fit_calibration(heavy)
    assert h.min_supported_fmr == pytest.approx(10 ** h.log10_fmr[-1])
    assert len(h.tail_check) == 1
    # round trip keeps the supported depth
    back = ScoreCalibration.from_manifest(c.to_manifest())
    assert back.min_supported_fmr == pytest.approx(c.min_supported_fmr, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# Fused views and passes (issue 15: the false-alert rate is per pass, not per comparison)
# ---------------------------------------------------------------------------------------------

def test_fusion_offset_grows_with_views_and_shrinks_with_alike_views(cal):
    from dataclasses import replace
    c = replace(cal, fusion_offsets=(0.3, 0.4, 0.45), reference_spread=0.05)
    assert c.fusion_offset(1) == 0.0 and c.fusion_offset(0) == 0.0
    assert c.fusion_offset(2) == 0.3 and c.fusion_offset(3) == 0.4
    assert c.fusion_offset(4) == c.fusion_offset(9) == 0.45        # the last applies beyond the table
    # a track of nearly identical frames removed little noise by fusing: a fraction of the offset
    assert c.fusion_offset(3, spread=0.01) == pytest.approx(0.4 * 0.01 / 0.05)
    assert c.fusion_offset(3, spread=0.2) == 0.4 and c.fusion_offset(3, spread=None) == 0.4
    assert cal.fusion_offset(5) == 0.0                                  # no offsets fitted: none applied


def test_fusion_offsets_and_pass_multiplicity_survive_the_manifest_and_bad_values_are_refused(cal):
    from dataclasses import replace
    c = replace(cal, fusion_offsets=(0.28, 0.37), reference_spread=0.046, pass_multiplicity=2.1)
    back = ScoreCalibration.from_manifest(c.to_manifest())
    assert back.fusion_offsets == (0.28, 0.37) and back.reference_spread == 0.046 and back.pass_multiplicity == 2.1
    old = {k: v for k, v in c.to_manifest().items() if k not in ("fusion_offsets", "reference_spread",
                                                                 "pass_multiplicity")}
    plain = ScoreCalibration.from_manifest(old)        # a calibration from before issue 15 still loads
    assert plain.fusion_offsets == () and plain.pass_multiplicity == 1.0
    for bad in ({"fusion_offsets": (float("nan"),)}, {"fusion_offsets": (-0.1,)}, {"pass_multiplicity": 0.5},
                {"pass_multiplicity": float("inf")}, {"reference_spread": -1.0}):
        with pytest.raises(InputError):
            replace(cal, **bad)


def test_pass_multiplicity_spreads_the_target_over_a_pass_and_the_meaning_agrees(cal):
    from dataclasses import replace
    c = replace(cal, pass_multiplicity=2.0)
    one, per_pass = ThresholdPolicy(cal, 0.001, 1000), ThresholdPolicy(c, 0.001, 1000)
    assert per_pass.target_fmr == pytest.approx(one.target_fmr / 2.0)
    assert per_pass.threshold == pytest.approx(one.threshold + math.log10(2.0) / SCORE_DECADES)
    # at the threshold, the expected rate per passer-by is the target (not half of it)
    assert per_pass.meaning(per_pass.threshold)["expected_fpir"] == pytest.approx(0.001, rel=1e-2)
