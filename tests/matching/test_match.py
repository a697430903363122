"""Tests for edge.matching.match: watchlist validation, top-k matching, calibration."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.matching import match as match_mod
from edge.errors import InputError, WatchlistError
from edge.matching.match import (
    MIN_EXPECTED_EXCEEDANCES,
    Calibration,
    Matcher,
    Watchlist,
    calibrate_threshold,
    empirical_rate,
    fmr_for_fpir,
    fpir_for_fmr,
)
from edge.types import Match

E = np.eye(4, dtype=np.float32)
PROBE = np.array([0.7, 0.5, 0.1, 0.5], dtype=np.float32)  # unit norm: .49 + .25 + .01 + .25 = 1


def hand_watchlist() -> Watchlist:
    """Rows interleave subjects; B has two templates, the better one second.

    Scores against PROBE: A 0.7, B max(0.5, 0.1) = 0.5, C (0.1 + 0.5) / sqrt(2) = 0.4243, D -0.7.
    Subject order (first seen): B 0, A 1, C 2, D 3.
    """
    rows = np.stack([E[2], E[0], (E[2] + E[3]) / np.sqrt(2), E[1], -E[0]])
    ids = ["B", "A", "C", "B", "D"]
    cats = ["missing", "wanted", "vulnerable", "missing", "wanted"]
    thr = [None, None, 0.4, None, None]  # C overrides its category threshold
    return Watchlist(rows, ids, cats, thr)


THRESHOLDS = {"wanted": 0.8, "missing": 0.45, "vulnerable": 0.9}
C_SCORE = 0.6 / math.sqrt(2)


def random_unit(rng, n, d=128):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- hand-made watchlist


def test_watchlist_structure():
    wl = hand_watchlist()
    assert wl.subjects == ("B", "A", "C", "D")
    assert len(wl) == 4 and wl.n_templates == 5 and wl.dim == 4
    assert wl.row_subject.tolist() == [0, 1, 2, 0, 3]
    assert wl.subject_categories == ("missing", "wanted", "vulnerable", "wanted")
    assert wl.subject_thresholds == (None, None, 0.4, None)
    assert wl.index("C") == 2 and "A" in wl and "Z" not in wl
    assert not wl.single_template


def test_top_k_order_scores_and_margins():
    m = Matcher(hand_watchlist(), THRESHOLDS)
    (res,) = m.top_k(PROBE, 4)
    assert [r.subject_id for r in res] == ["A", "B", "C", "D"]
    assert [r.index for r in res] == [1, 0, 2, 3]
    assert [r.category for r in res] == ["wanted", "missing", "vulnerable", "wanted"]
    assert [r.score for r in res] == pytest.approx([0.7, 0.5, C_SCORE, -0.7], abs=1e-6)
    assert [r.margin for r in res[:3]] == pytest.approx([0.2, 0.5 - C_SCORE, C_SCORE + 0.7], abs=1e-6)
    assert res[3].margin == math.inf  # nothing ranks below the last subject
    assert all(isinstance(r, Match) for r in res)


def test_top_k_truncated_keeps_margin_to_next_subject():
    m = Matcher(hand_watchlist(), THRESHOLDS)
    (res,) = m.top_k(PROBE, 2)
    assert [r.subject_id for r in res] == ["A", "B"]
    assert res[1].margin == pytest.approx(0.5 - C_SCORE, abs=1e-6)  # not inf: C follows B
    (res,) = m.top_k(PROBE, 10)  # k larger than the watchlist: every subject once
    assert [r.subject_id for r in res] == ["A", "B", "C", "D"]


def test_match_is_top1_with_margin_to_runner_up():
    m = Matcher(hand_watchlist(), THRESHOLDS)
    best = m.match(PROBE)
    assert best == m.top_k(PROBE, 1)[0][0]
    assert best.subject_id == "A" and best.margin == pytest.approx(0.2, abs=1e-6)
    assert m.match(PROBE[None, :]) == best  # (1, D) is accepted too


def test_multi_template_subject_uses_max_and_appears_once():
    m = Matcher(hand_watchlist(), THRESHOLDS)
    s = m.scores(PROBE)
    assert s.shape == (1, 4) and s.dtype == np.float32
    assert s[0, 0] == pytest.approx(0.5, abs=1e-6)  # B: max(0.1, 0.5), not its first template
    # a probe equal to B's first template: B wins with score 1, listed once
    (res,) = m.top_k(E[2], 4)
    assert [r.subject_id for r in res].count("B") == 1
    assert res[0].subject_id == "B" and res[0].score == pytest.approx(1.0, abs=1e-6)
    assert res[1].subject_id == "C" and res[1].score == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_per_subject_threshold_overrides_category():
    m = Matcher(hand_watchlist(), THRESHOLDS)
    assert m.thresholds.tolist() == [0.45, 0.8, 0.4, 0.8]
    (res,) = m.top_k(PROBE, 4)
    by_id = {r.subject_id: r for r in res}
    assert by_id["C"].threshold == 0.4  # not the vulnerable category's 0.9
    assert by_id["A"].threshold == 0.8 and by_id["B"].threshold == 0.45


def test_is_hit_logic():
    m = Matcher(hand_watchlist(), THRESHOLDS)
    by_id = {r.subject_id: r for r in m.top_k(PROBE, 4)[0]}
    assert not by_id["A"].is_hit  # best score 0.7 < 0.8
    assert by_id["B"].is_hit  # 0.5 >= 0.45
    assert by_id["C"].is_hit  # 0.424 >= its own 0.4 although the category says 0.9
    assert not by_id["D"].is_hit
    # the comparison is inclusive
    at = Match("X", "wanted", score=0.5, threshold=0.5, margin=0.1, index=0)
    assert at.is_hit
    assert not Match("X", "wanted", score=0.5, threshold=math.nextafter(0.5, 1), margin=0.1, index=0).is_hit
    # raising A's category threshold to its score makes the top-1 a hit only at <=
    hit = Matcher(hand_watchlist(), {**THRESHOLDS, "wanted": 0.69}).match(PROBE)
    miss = Matcher(hand_watchlist(), {**THRESHOLDS, "wanted": 0.71}).match(PROBE)
    assert hit.is_hit and not miss.is_hit


def test_identify_matches_per_probe_results():
    rng = np.random.default_rng(3)
    emb = random_unit(rng, 300)
    ids = [f"s{i // 3}" for i in range(300)]  # 100 subjects with 3 templates each
    m = Matcher(Watchlist(emb, ids, ["wanted"] * 300), {"wanted": 0.5})
    probes = emb[::7] + 0.05 * rng.standard_normal((43, 128)).astype(np.float32)
    best, score, margin = m.identify(probes)
    assert best.shape == score.shape == margin.shape == (43,)
    for i, p in enumerate(probes):
        one = m.match(p)
        assert one.index == best[i]
        assert one.score == pytest.approx(score[i], abs=1e-5)
        assert one.margin == pytest.approx(margin[i], abs=1e-5)
    assert np.array_equal(best, np.arange(0, 300, 7) // 3)


def test_single_subject_margin_is_inf():
    m = Matcher(Watchlist(E[:2], ["only", "only"], ["missing", "missing"]), {"missing": 0.5})
    assert m.match(PROBE).margin == math.inf
    _, _, margin = m.identify(np.stack([PROBE, E[1]]))
    assert np.all(np.isinf(margin))
    assert m.top_k(PROBE, 3)[0][0].margin == math.inf


def test_argpartition_path_equals_full_sort():
    rng = np.random.default_rng(11)
    n, k = 5000, 5
    emb = random_unit(rng, n)
    m = Matcher(Watchlist(emb, [f"s{i}" for i in range(n)], ["wanted"] * n), {"wanted": 0.6})
    probes = random_unit(rng, 25)
    probes[:5] = emb[[4, 99, 1000, 2500, 4999]]  # some mated probes too
    res = m.top_k(probes, k)
    brute = probes.astype(np.float64) @ m.watchlist.embeddings.astype(np.float64).T
    full = m.scores(probes)
    for i in range(len(probes)):
        order = np.argsort(-brute[i], kind="stable")
        assert [r.index for r in res[i]] == order[:k].tolist()
        assert [r.index for r in res[i]] == np.argsort(-full[i], kind="stable")[:k].tolist()
        assert [r.score for r in res[i]] == pytest.approx(brute[i, order[:k]], abs=1e-5)
        want_margin = brute[i, order[:k]] - brute[i, order[1:k + 1]]
        assert [r.margin for r in res[i]] == pytest.approx(want_margin, abs=1e-5)
    assert [r[0].index for r in res[:5]] == [4, 99, 1000, 2500, 4999]


@settings(max_examples=60, deadline=None)
@given(n_rows=st.integers(1, 40), n_subj=st.integers(1, 12), k=st.integers(1, 15), seed=st.integers(0, 2**32 - 1),
       ties=st.booleans())
def test_top_k_property_against_brute_force(n_rows, n_subj, k, seed, ties):
    rng = np.random.default_rng(seed)
    d = 6
    emb = random_unit(rng, n_rows, d)
    if ties:  # copy a few rows onto others, so several subjects tie exactly
        emb[rng.integers(0, n_rows, n_rows // 2)] = emb[0]
    ids = [f"s{v}" for v in rng.integers(0, n_subj, n_rows)]
    m = Matcher(Watchlist(emb, ids, ["wanted"] * n_rows), {"wanted": 0.0})
    wl = m.watchlist
    probe = random_unit(rng, 1, d)[0] if not ties else emb[0]
    s = m.scores(probe)[0]
    brute = np.full(len(wl), -np.inf)
    for r, subj in enumerate(wl.row_subject):
        brute[subj] = max(brute[subj], float(wl.embeddings[r].astype(np.float64) @ probe))
    assert s == pytest.approx(brute, abs=1e-5)
    order = sorted(range(len(wl)), key=lambda j: (-s[j], j))  # score descending, lower index first
    got = m.top_k(probe, k)[0]
    kk = min(k, len(wl))
    assert [r.index for r in got] == order[:kk]
    assert len({r.subject_id for r in got}) == kk
    for pos, r in enumerate(got):
        nxt = float(s[order[pos + 1]]) if pos + 1 < len(wl) else -math.inf
        assert r.margin == float(s[order[pos]]) - nxt
    assert m.match(probe).index == order[0]


def test_ties_rank_lower_index_first_at_partition_boundary():
    rng = np.random.default_rng(5)
    emb = random_unit(rng, 200)
    emb[50:60] = emb[7]  # subjects 7 and 50..59 are identical
    m = Matcher(Watchlist(emb, [f"s{i}" for i in range(200)], ["wanted"] * 200), {"wanted": 0.5})
    res = m.top_k(emb[7], 4)[0]
    assert [r.index for r in res] == [7, 50, 51, 52]
    assert [r.margin for r in res] == [0.0, 0.0, 0.0, 0.0]
    assert m.match(emb[7]).index == 7
    assert m.identify(emb[7][None])[0][0] == 7


def test_chunked_batches_equal_unchunked(monkeypatch):
    rng = np.random.default_rng(8)
    emb = random_unit(rng, 400)
    ids = [f"s{i % 150}" for i in range(400)]
    m = Matcher(Watchlist(emb, ids, ["missing"] * 400), {"missing": 0.5})
    probes = random_unit(rng, 37)
    s, ident, top = m.scores(probes), m.identify(probes), m.top_k(probes, 3)
    monkeypatch.setattr(match_mod, "_CHUNK_ELEMENTS", 1000)  # blocks of 2 probes
    # BLAS may round differently for another batch shape: equal up to float32 rounding
    assert np.allclose(m.scores(probes), s, rtol=0, atol=1e-6)
    best, score, margin = m.identify(probes)
    assert np.array_equal(best, ident[0])
    assert np.allclose(score, ident[1], atol=1e-6) and np.allclose(margin, ident[2], atol=1e-6)
    chunked = m.top_k(probes, 3)
    assert [[r.index for r in row] for row in chunked] == [[r.index for r in row] for row in top]
    assert [r.score for row in chunked for r in row] == pytest.approx([r.score for row in top for r in row], abs=1e-6)


def test_empty_probe_batch():
    m = Matcher(hand_watchlist(), THRESHOLDS)
    assert m.scores(np.zeros((0, 4), np.float32)).shape == (0, 4)
    assert m.top_k(np.zeros((0, 4), np.float32), 2) == []
    assert all(a.shape == (0,) for a in m.identify(np.zeros((0, 4), np.float32)))


# ---------------------------------------------------------------- watchlist storage


def test_watchlist_normalises_copies_and_is_immutable():
    rng = np.random.default_rng(2)
    raw = rng.standard_normal((6, 128)) * 3.0  # float64, not unit norm
    wl = Watchlist(raw, list("abcdef"), ["wanted"] * 6)
    assert wl.embeddings.dtype == np.float32 and wl.embeddings.flags.c_contiguous
    assert np.allclose(np.linalg.norm(wl.embeddings, axis=1), 1.0, atol=1e-6)
    assert not wl.embeddings.flags.writeable and not wl.row_subject.flags.writeable
    with pytest.raises(AttributeError, match="immutable"):
        wl.subjects = ("x",)
    # the caller's array is copied, even when it is already float32 and unit-norm
    unit = random_unit(rng, 3)
    wl2 = Watchlist(unit, ["a", "b", "c"], ["wanted"] * 3)
    unit[0] = 0.0
    assert unit.flags.writeable and np.linalg.norm(wl2.embeddings[0]) == pytest.approx(1.0)
    # huge and tiny float64 values normalise without overflow or underflow
    wl3 = Watchlist(np.array([[1e300, 1e300], [1e-310, 0.0]]), ["a", "b"], ["wanted"] * 2)
    assert np.allclose(wl3.embeddings, [[2 ** -0.5, 2 ** -0.5], [1.0, 0.0]])


def test_threshold_given_on_one_row_applies_to_subject():
    wl = Watchlist(E[:3], ["a", "a", "b"], ["wanted"] * 3, [None, 0.3, None])
    assert wl.subject_thresholds == (0.3, None)
    assert Matcher(wl, {"wanted": 0.9}).thresholds.tolist() == [0.3, 0.9]


# ---------------------------------------------------------------- bad input

GOOD = dict(subject_ids=["a", "b"], categories=["wanted", "missing"])


@pytest.mark.parametrize("embeddings, kwargs, word", [
    (np.zeros((0, 128), np.float32), dict(subject_ids=[], categories=[]), "empty"),
    ([], dict(subject_ids=[], categories=[]), "empty"),
    (np.array([[np.nan, 1.0], [1.0, 0.0]]), GOOD, "NaN"),
    (np.array([[np.inf, 1.0], [1.0, 0.0]]), GOOD, "inf"),
    (np.ones(4, np.float32), GOOD, "2-D"),
    (np.ones((2, 2, 2), np.float32), GOOD, "2-D"),
    (np.ones((2, 0), np.float32), GOOD, "dimension"),
    (np.ones((2, 4), np.int64), GOOD, "dtype"),
    (np.array([["a", "b"], ["c", "d"]]), GOOD, "dtype"),
    (np.array([[True, False], [False, True]]), GOOD, "dtype"),
    ([[1.0, 0.0], [1.0]], GOOD, "rectangular"),
    (np.array([[1.0, 0.0], [0.0, 0.0]], np.float32), GOOD, "zero"),
    (E[:2], dict(subject_ids=["a", "b"], categories=["wanted", "suspect"]), "category"),
    (E[:2], dict(subject_ids=["a"], categories=["wanted", "wanted"]), "mismatch"),
    (E[:2], dict(subject_ids=["a", "b"], categories=["wanted"]), "mismatch"),
    (E[:2], dict(subject_ids="ab", categories=["wanted", "wanted"]), "sequence"),
    (E[:2], dict(subject_ids=["a", 7], categories=["wanted", "wanted"]), "string"),
    (E[:2], dict(subject_ids=["a", ""], categories=["wanted", "wanted"]), "string"),
    (E[:2], dict(subject_ids=["a", "a"], categories=["wanted", "missing"]), "two categories"),
    (E[:2], dict(**GOOD, thresholds=[0.5, 1.5]), "outside"),
    (E[:2], dict(**GOOD, thresholds=[-1.01, None]), "outside"),
    (E[:2], dict(**GOOD, thresholds=[float("nan"), None]), "NaN"),
    (E[:2], dict(**GOOD, thresholds=[0.5]), "mismatch"),
    (E[:2], dict(**GOOD, thresholds=["0.5", None]), "real number"),
    (E[:2], dict(subject_ids=["a", "a"], categories=["wanted"] * 2, thresholds=[0.5, 0.6]), "two thresholds"),
])
def test_bad_watchlist_raises(embeddings, kwargs, word):
    with pytest.raises(WatchlistError, match=word):
        Watchlist(embeddings, **kwargs)


@pytest.mark.parametrize("thresholds, word", [
    ({"wanted": 0.8, "missing": 0.8, "vulnerable": 0.8, "suspect": 0.8}, "unknown category"),
    ({"wanted": 0.8, "vulnerable": 0.8}, "no threshold for category 'missing'"),
    ({"wanted": 0.8, "missing": 1.2, "vulnerable": 0.8}, "outside"),
    ({"wanted": float("nan"), "missing": 0.8, "vulnerable": 0.8}, "NaN"),
    ([("wanted", 0.8)], "mapping"),
])
def test_bad_matcher_thresholds_raise(thresholds, word):
    with pytest.raises(InputError, match=word):
        Matcher(hand_watchlist(), thresholds)


def test_matcher_needs_a_watchlist():
    with pytest.raises(InputError, match="Watchlist"):
        Matcher(E, THRESHOLDS)


@pytest.mark.parametrize("probe, word", [
    (np.ones(5, np.float32), "dimension"),
    (np.ones((2, 3), np.float32), "dimension"),
    (np.ones((1, 2, 4), np.float32), "shape"),
    (np.array([0.5, np.nan, 0.5, 0.5], np.float32), "NaN"),
    (np.array([[0.5, 0.5, 0.5, 0.5], [np.inf, 0, 0, 0]]), "row\\(s\\) \\[1\\] contain NaN or inf"),
    (np.array([1, 0, 0, 0]), "dtype"),
    (np.array(["a", "b", "c", "d"]), "dtype"),
    (np.zeros(4, np.float32), "zero"),
    ([[1.0, 0.0, 0.0, 0.0], [1.0]], "rectangular"),
])
def test_bad_probe_raises(probe, word):
    m = Matcher(hand_watchlist(), THRESHOLDS)
    for call in (m.match, m.scores, m.identify, lambda p: m.top_k(p, 2)):
        with pytest.raises(InputError, match=word):
            call(probe)


def test_probe_is_normalised():
    m = Matcher(hand_watchlist(), THRESHOLDS)
    assert m.match(PROBE * 7.5).score == pytest.approx(0.7, abs=1e-6)
    assert m.match(PROBE.astype(np.float64)).score == pytest.approx(0.7, abs=1e-6)


def test_bad_k_and_batch_to_match_raise():
    m = Matcher(hand_watchlist(), THRESHOLDS)
    for k in (0, -1, 2.0, True):
        with pytest.raises(InputError, match="k must be"):
            m.top_k(PROBE, k)
    with pytest.raises(InputError, match="one probe"):
        m.match(np.stack([PROBE, PROBE]))


# ---------------------------------------------------------------- FPIR / FMR conversion


def test_fmr_fpir_conversion():
    assert fmr_for_fpir(0.01, 1000) == pytest.approx(1 - 0.99 ** 0.001, rel=1e-9)
    assert fmr_for_fpir(0.3, 1) == pytest.approx(0.3, rel=1e-15)
    assert fpir_for_fmr(fmr_for_fpir(0.01, 1000), 1000) == pytest.approx(0.01, rel=1e-12)
    # precision at tiny rates, where 1 - (1 - x) ** (1 / n) loses every digit
    assert fmr_for_fpir(1e-12, 10) == pytest.approx(1e-13, rel=1e-9, abs=0)  # default abs would hide it
    assert fpir_for_fmr(1e-15, 1000) == pytest.approx(1e-12, rel=1e-9, abs=0)
    assert fmr_for_fpir(0.0, 5) == 0.0 and fpir_for_fmr(1.0, 5) == 1.0


@pytest.mark.parametrize("args, word", [
    ((1.5, 10), "outside"), ((-0.1, 10), "outside"), ((float("nan"), 10), "NaN"),
    ((0.1, 0), ">= 1"), ((0.1, 2.5), "integer"), ((0.1, True), "integer"),
])
def test_conversion_bad_input(args, word):
    for f in (fmr_for_fpir, fpir_for_fmr):
        with pytest.raises(InputError, match=word):
            f(*args)


# ---------------------------------------------------------------- calibration


def test_calibration_mode_b_against_normal_distribution():
    """FMR scores ~ N(0, 0.1): the threshold for FPIR 1% at N = 1000 is the normal quantile."""
    rng = np.random.default_rng(20240601)
    sd, n_wl, target = 0.1, 1000, 0.01
    sample = rng.normal(0.0, sd, 2_000_000)
    cal = calibrate_threshold(sample, target, watchlist_size=n_wl)
    fmr = fmr_for_fpir(target, n_wl)
    dist = NormalDist(0.0, sd)
    analytic = dist.inv_cdf(1 - fmr)  # about 0.426
    assert isinstance(cal, Calibration)
    assert cal.target_fmr == pytest.approx(fmr) and cal.watchlist_size == n_wl and cal.target_fpir == target
    assert cal.sample_size == 2_000_000
    assert cal.expected_false_alarms == pytest.approx(fmr * 2_000_000)  # about 20
    assert cal.supported
    assert cal.exceedances <= math.floor(fmr * 2_000_000)
    assert empirical_rate(sample, cal.threshold) <= fmr
    # ~20 exceedances: the rate is known to ~22 %, i.e. the threshold to ~0.005; allow 4 sigma
    assert cal.threshold == pytest.approx(analytic, abs=0.02)

    # FPIR the threshold actually gives: analytic (from the true FMR at it) and simulated,
    # with watchlist_size fresh non-mated comparisons per probe
    true_fpir = fpir_for_fmr(1 - dist.cdf(cal.threshold), n_wl)
    probes, hits = 20_000, 0
    for _ in range(probes // 2000):
        block = rng.standard_normal((2000, n_wl), dtype=np.float32) * np.float32(sd)
        hits += int(np.count_nonzero(block.max(axis=1) >= cal.threshold))
    sim = hits / probes
    assert sim == pytest.approx(true_fpir, abs=4 * math.sqrt(true_fpir / probes))  # binomial, 4 sigma
    assert 0.5 * target <= sim <= 1.6 * target


def test_calibration_mode_a_uniform_fpir_sample():
    rng = np.random.default_rng(4)
    sample = rng.uniform(0.0, 1.0, 100_000)  # top-1 scores of non-mated probes
    cal = calibrate_threshold(sample, 0.01)
    assert cal.watchlist_size is None and cal.target_fmr is None
    assert cal.threshold == pytest.approx(0.99, abs=0.002)
    assert cal.expected_false_alarms == pytest.approx(1000) and cal.supported
    assert cal.exceedances == 1000 == round(empirical_rate(sample, cal.threshold) * 100_000)


@settings(max_examples=300, deadline=None)
@given(scores=st.lists(st.one_of(st.sampled_from([-0.2, 0.1, 0.3, 0.3001, 0.5, 0.9, 1.0]),
                                 st.floats(-1.0, 1.0, allow_nan=False)), min_size=1, max_size=300),
       fpir=st.floats(1e-6, 0.999, exclude_min=True, exclude_max=True),
       as_float32=st.booleans())
def test_mode_a_threshold_meets_target_and_is_smallest(scores, fpir, as_float32):
    x = np.array(scores, dtype=np.float32 if as_float32 else np.float64)
    cal = calibrate_threshold(x, fpir)
    rate = empirical_rate(x, cal.threshold)
    assert rate <= fpir
    assert round(rate * x.size) == cal.exceedances
    assert cal.threshold > x[x < cal.threshold].max(initial=-np.inf)
    below = x[x < cal.threshold]
    if below.size:  # lowering the threshold to the next sample score would exceed the target
        assert empirical_rate(x, float(below.max())) > fpir
    if as_float32:  # the threshold survives a round trip through float32
        assert float(np.float32(cal.threshold)) == cal.threshold
    assert cal.supported == (fpir * x.size >= MIN_EXPECTED_EXCEEDANCES)


def test_too_small_sample_is_reported_not_raised():
    rng = np.random.default_rng(9)
    sample = rng.normal(0.0, 0.1, 50)
    cal = calibrate_threshold(sample, 0.001)  # 0.05 expected exceedances
    assert not cal.supported and cal.exceedances == 0
    assert cal.threshold == np.nextafter(sample.max(), np.inf) and cal.threshold > sample.max()
    assert "too few" in cal.note and "9950 more" in cal.note  # 10 / 0.001 = 10000 in all
    # mode (b): FMR 1.005e-5 needs ~995k comparisons for 10 expected exceedances
    cal = calibrate_threshold(rng.normal(0.0, 0.1, 1000), 0.01, watchlist_size=1000)
    need = math.ceil(10 / fmr_for_fpir(0.01, 1000))
    assert not cal.supported and f"{need - 1000} more" in cal.note


def test_partly_supported_sample():
    sample = np.linspace(0.0, 1.0, 500)
    cal = calibrate_threshold(sample, 0.01)  # 5 expected exceedances
    assert not cal.supported and cal.exceedances == 5
    assert cal.threshold == np.nextafter(sample[-6], np.inf)
    assert "500 more" in cal.note
    assert calibrate_threshold(np.linspace(0.0, 1.0, 1000), 0.01).supported  # exactly 10 expected


def test_ties_never_let_more_through():
    sample = np.array([0.9] * 5 + [0.1] * 95)
    cal = calibrate_threshold(sample, 0.03)  # 3 allowed, but five tie at the top
    assert cal.exceedances == 0 and cal.threshold > 0.9
    assert empirical_rate(sample, cal.threshold) == 0.0
    cal = calibrate_threshold(sample, 0.05)  # exactly five allowed
    assert cal.exceedances == 5 and 0.1 < cal.threshold <= 0.9


@pytest.mark.parametrize("scores, fpir, n, word", [
    ([], 0.01, None, "empty"),
    ([0.1, float("nan")], 0.01, None, "NaN"),
    ([0.1, float("inf")], 0.01, None, "inf"),
    (np.array([1, 2, 3]), 0.01, None, "dtype"),
    (np.array(["a"]), 0.01, None, "dtype"),
    ([0.1, 0.2], 0.0, None, "outside"),
    ([0.1, 0.2], 1.0, None, "outside"),
    ([0.1, 0.2], -0.5, None, "outside"),
    ([0.1, 0.2], float("nan"), None, "NaN"),
    ([0.1, 0.2], 0.01, 0, ">= 1"),
    ([0.1, 0.2], 0.01, -5, ">= 1"),
    ([0.1, 0.2], 0.01, 10.5, "integer"),
])
def test_calibration_bad_input(scores, fpir, n, word):
    with pytest.raises(InputError, match=word):
        calibrate_threshold(scores, fpir, watchlist_size=n)


def test_empirical_rate():
    assert empirical_rate([0.1, 0.2, 0.3, 0.4], 0.3) == 0.5  # inclusive
    assert empirical_rate(np.float32([0.1, 0.2]), np.nextafter(0.2, 0)) == 0.5  # no float32 rounding of t
    with pytest.raises(InputError, match="empty"):
        empirical_rate([], 0.5)
    with pytest.raises(InputError, match="NaN"):
        empirical_rate([0.5], float("nan"))
