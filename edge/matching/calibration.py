"""Threshold policy: the operator's target false-alarm rate -> a threshold for the loaded list.

The operator states what false-alarm rate is acceptable per passer-by (``match.target_fpir``,
e.g. 0.001 = one non-listed person in a thousand raises an alert); the unit turns it into a
threshold for the size of the list it has loaded, from the calibration shipped with the model.

Calibration
-----------
:class:`ScoreCalibration` is the impostor distribution of the normalised score ``t``
(:mod:`edge.matching.normalise`): for a grid of false-match rates FMR = 10^-(j/10) (j = 0, 1, ...), the
score ``t_j`` that a fraction FMR of single non-mated comparisons (a person on no list
against one listed person) reaches. It was measured with identity-disjoint cross-fitting on
lfw-dev (every comparison scored by a cohort that held neither face's identity), some 22
million, so the table reaches FMR ~5e-6 with at least 100 comparisons beyond each point. Above
the last point the tail is extrapolated as exponential (log10 FMR linear in ``t``, the slope
fitted on the deepest few hundred comparisons) and checked against the sample (``supported_fmr``).

Fused sides and passes: a template fused from several photos, or a track's probe fused from
several views, scores strangers higher than a single face; its ``t`` is lowered by
:meth:`ScoreCalibration.fusion_offset` before it is calibrated. A passer-by's track is matched
several times; :attr:`ScoreCalibration.pass_multiplicity` (measured) spreads the target over
those comparisons too, so the target holds per passer-by.

Calibrated score
----------------
The score the matcher reports (``Match.score``, the alert's ``score``) is
``-log10(FMR(t)) / 10``: 0.5 means one comparison in 10^5 between strangers scores as high,
0.6 one in 10^6; it lies in [0, 1] (clipped at FMR 1e-10). It is monotone in ``t``, so
ranking is unchanged.

Threshold for a list of N subjects
----------------------------------
A passer-by is compared with all N subjects; with independent comparisons
``FPIR = 1 - (1 - FMR)^N`` (:func:`edge.matching.match.fpir_for_fmr`). The threshold for a target
FPIR is therefore the calibrated score of ``FMR = fmr_for_fpir(target, N) / pass_multiplicity``. Checked on
lfw-dev (cross-fitted, N = 100 / 500 / 826): asking for FPIR 0.01 gave 0.008-0.013 and asking
for 0.001 gave 0.001-0.002 (a handful of false alarms; see ``docs/accuracy.md``). When the
needed FMR is below the table (large lists at low targets) the threshold rests on the
extrapolated tail and :meth:`ThresholdPolicy.meaning` says ``supported: false``.

What an alert should carry
--------------------------
:meth:`ThresholdPolicy.meaning` gives, for a match's score, the ``calibrated`` object an
alert should carry next to ``score`` and ``threshold``::

    {"fmr": 3.2e-07,                 # one stranger in ~3 million scores this high vs this subject
     "expected_fpir": 0.00026,       # fraction of non-listed passers-by scoring this high vs the whole list
     "watchlist_size": 826,
     "target_fpir": 0.001,           # what the operator asked for (threshold's FPIR)
     "supported": true,              # false when the rate rests on the extrapolated tail
     "calibration": "lfw-dev (3554 identities), identity-disjoint cross-fitted over 5 folds, 5,021,199 non-mated comparisons"}
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from edge.errors import InputError
from edge.matching.match import fmr_for_fpir, fpir_for_fmr

__all__ = ["ScoreCalibration", "ThresholdPolicy", "fit_calibration", "SCORE_DECADES", "MIN_EXCEEDANCES",
           "TAIL_FROM_FMR", "MIN_TAIL_EXCEEDANCES"]

#: the calibrated score is -log10(FMR) / SCORE_DECADES, clipped to [0, 1].
SCORE_DECADES = 10.0
#: a table point needs at least this many comparisons at or above it. Below that the fitted
#: tail takes over: an empirical quantile resting on a few dozen comparisons is set by whichever
#: pairs happen to be there (on lfw-dev the deepest "impostor" pairs were label errors: the same
#: photo or person filed under two names), while the tail model rests on thousands.
MIN_EXCEEDANCES = 100
#: the tail's slope is fitted from at least this many comparisons (else the table's last decade)
MIN_TAIL_FIT = 100
#: table resolution: points per decade of FMR.
POINTS_PER_DECADE = 10


@dataclass(frozen=True)
class ScoreCalibration:
    """Impostor distribution of the normalised score: ``t`` (strictly increasing) and
    ``log10_fmr`` (strictly decreasing, first value 0) at each table point; ``tail_slope`` >
    0 is the decades of FMR per unit of ``t`` beyond the last point."""

    t: tuple[float, ...]
    log10_fmr: tuple[float, ...]
    tail_slope: float
    n_comparisons: int
    source: str = ""
    #: how deep the calibration is supported: the table's last point, or deeper where the tail
    #: model was fitted to and checked against the sample beyond it (:func:`fit_calibration`).
    #: 0 = the table's last point.
    supported_fmr: float = 0.0
    tail_check: tuple = ()          # (log10 FMR, comparisons predicted, observed) beyond the table
    #: fusion offsets: how far (in t) a stranger's score rises when one side is fused from k views
    #: instead of one, for k = 2, 3, ... (the last applies beyond): averaging removes the noise that
    #: kept strangers apart as well as the noise that kept a person apart from himself, so a fused
    #: template or track probe must clear a higher t for the same FMR (:meth:`fusion_offset`).
    fusion_offsets: tuple[float, ...] = ()
    #: 1 - mean cosine between the views the offsets were measured with (different photos of one
    #: person); a track whose views are more alike than that has removed less noise by fusing.
    reference_spread: float = 0.0
    #: how many single-comparison false matches one pass past the unit risks against one listed
    #: subject: a track is matched again each time its fused probe grows, and nested fusions are
    #: correlated, so this is measured (on tracks after the fusion offsets), not the count.
    pass_multiplicity: float = 1.0

    def __post_init__(self):
        t, f = np.asarray(self.t, float), np.asarray(self.log10_fmr, float)
        if t.ndim != 1 or t.size < 2 or t.shape != f.shape:
            raise InputError("calibration needs at least two (t, log10_fmr) points of equal length")
        if not (np.isfinite(t).all() and np.isfinite(f).all()):
            raise InputError("calibration points must be finite")
        if np.any(np.diff(t) <= 0) or np.any(np.diff(f) >= 0) or f[0] > 0:
            raise InputError("calibration t must increase strictly and log10_fmr decrease strictly from <= 0")
        if not (math.isfinite(self.tail_slope) and self.tail_slope > 0):
            raise InputError(f"calibration tail_slope {self.tail_slope} must be > 0")
        if self.n_comparisons < 1:
            raise InputError("calibration n_comparisons must be >= 1")
        if not (0.0 <= float(self.supported_fmr) <= 1.0):
            raise InputError(f"calibration supported_fmr {self.supported_fmr} must be in [0, 1]")
        offs = np.asarray(self.fusion_offsets, float)
        if offs.size and not (np.isfinite(offs).all() and (offs >= 0).all() and offs.max() < 5.0):
            raise InputError(f"calibration fusion_offsets {self.fusion_offsets} must be finite, in [0, 5)")
        if not (0.0 <= float(self.reference_spread) < 2.0):
            raise InputError(f"calibration reference_spread {self.reference_spread} must be in [0, 2)")
        if not (math.isfinite(self.pass_multiplicity) and 1.0 <= float(self.pass_multiplicity) <= 1000.0):
            raise InputError(f"calibration pass_multiplicity {self.pass_multiplicity} must be in [1, 1000]")

    def fusion_offset(self, views: int, spread: float | None = None) -> float:
        """How much a fused side's t is lowered before calibration: the offset for ``views`` fused
        embeddings (0 for one), scaled by how different the views were (``spread`` = 1 - their
        mean cosine) relative to the photos it was measured on; ``spread=None`` (enrolment photos,
        different pictures by rule) takes the whole offset."""
        k = int(views)
        if k <= 1 or not self.fusion_offsets:
            return 0.0
        off = float(self.fusion_offsets[min(k - 2, len(self.fusion_offsets) - 1)])
        if spread is None or self.reference_spread <= 0:
            return off
        return off * min(1.0, max(0.0, float(spread)) / self.reference_spread)

    @property
    def min_supported_fmr(self) -> float:
        """The smallest FMR the calibration supports: the table's last point, or the depth to
        which the fitted tail was checked against the sample (below it: extrapolated)."""
        table = 10.0 ** self.log10_fmr[-1]
        return min(table, self.supported_fmr) if self.supported_fmr > 0 else table

    def log10_fmr_at(self, t) -> np.ndarray:
        """log10 FMR at normalised score(s) t (0 below the table, extrapolated above)."""
        t = np.asarray(t, np.float64)
        xs, ys = np.asarray(self.t), np.asarray(self.log10_fmr)
        inside = np.interp(t, xs, ys, left=min(0.0, ys[0]))
        above = ys[-1] - self.tail_slope * (t - xs[-1])
        return np.where(t > xs[-1], above, inside)

    def score(self, t) -> np.ndarray:
        """Calibrated score -log10(FMR(t)) / SCORE_DECADES in [0, 1] (monotone in t)."""
        return np.clip(-self.log10_fmr_at(t) / SCORE_DECADES, 0.0, 1.0)

    def t_for_score(self, score: float) -> float:
        """The normalised score t whose calibrated score is ``score`` (inverse of :meth:`score`)."""
        target = -float(score) * SCORE_DECADES
        xs, ys = np.asarray(self.t), np.asarray(self.log10_fmr)
        if target >= ys[0]:
            return float(xs[0])
        if target < ys[-1]:
            return float(xs[-1] + (ys[-1] - target) / self.tail_slope)
        return float(np.interp(-target, -ys, xs))

    def to_manifest(self) -> dict[str, Any]:
        out = {"t": [round(v, 6) for v in self.t], "log10_fmr": [round(v, 4) for v in self.log10_fmr],
               "tail_slope": round(self.tail_slope, 6), "n_comparisons": int(self.n_comparisons),
               "source": self.source,
               "score": f"calibrated score = -log10(FMR(t)) / {SCORE_DECADES:g}, clipped to [0, 1]"}
        if self.supported_fmr > 0:
            out["supported_fmr"] = float(f"{self.supported_fmr:.4g}")
            out["tail_check"] = [list(r) for r in self.tail_check]
        if self.fusion_offsets:
            out["fusion_offsets"] = [round(v, 4) for v in self.fusion_offsets]
            out["reference_spread"] = round(float(self.reference_spread), 5)
        if self.pass_multiplicity != 1.0:
            out["pass_multiplicity"] = round(float(self.pass_multiplicity), 3)
        return out

    @classmethod
    def from_manifest(cls, d: Mapping[str, Any]) -> "ScoreCalibration":
        try:
            return cls(tuple(float(v) for v in d["t"]), tuple(float(v) for v in d["log10_fmr"]),
                       float(d["tail_slope"]), int(d["n_comparisons"]), str(d.get("source", "")),
                       float(d.get("supported_fmr", 0.0)),
                       tuple(tuple(float(x) for x in r) for r in d.get("tail_check", ())),
                       tuple(float(v) for v in d.get("fusion_offsets", ())),
                       float(d.get("reference_spread", 0.0)), float(d.get("pass_multiplicity", 1.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"calibration is malformed: {exc}") from None


#: the tail model is fitted on the comparisons above the table point at this FMR: the deepest
#: few hundred of a large sample (on lfw-dev's 22 million, 220), since the slope that matters is
#: the one at 1e-6 and below; fitted from 1e-4 it predicted half the comparisons observed there
TAIL_FROM_FMR = 1e-5
#: the tail is supported down to the FMR at which the sample still holds this many comparisons ...
MIN_TAIL_EXCEEDANCES = 3
#: ... while at every 1/POINTS_PER_DECADE decade on the way the sample's count is within the
#: two-sided 99% Poisson range of the count the tail model predicts
TAIL_CHECK_Z = 2.576


def _poisson_ok(predicted: float, observed: int) -> bool:
    """``observed`` is within the central 99% of Poisson(``predicted``) (normal approximation
    with continuity correction on the square-root scale, adequate from a few counts up)."""
    return abs(math.sqrt(observed + 0.375) - math.sqrt(predicted + 0.375)) <= TAIL_CHECK_Z / 2.0


def fit_calibration(impostor_t: Sequence[float] | np.ndarray, source: str = "") -> ScoreCalibration:
    """The table from a sample of normalised scores of non-mated comparisons: a point every
    1/POINTS_PER_DECADE decade of FMR from 1 down to the smallest FMR that still has
    MIN_EXCEEDANCES comparisons at or above it.

    The tail beyond the table is exponential (log10 FMR linear in ``t``), its slope the maximum
    likelihood estimate from every comparison above the table point at TAIL_FROM_FMR
    (thousands of them in a large sample: far steadier than a line through the last few
    points); with fewer, the least-squares slope of the table's last decade. The tail is then
    checked against the sample beyond the table, every 1/POINTS_PER_DECADE decade, down to
    where MIN_TAIL_EXCEEDANCES comparisons remain: the calibration is supported
    (``supported_fmr``) down to the deepest point before the first check that fails."""
    x = np.asarray(impostor_t, np.float64).ravel()
    x = x[np.isfinite(x)]
    n = x.size
    if n < 10 * MIN_EXCEEDANCES:
        raise InputError(f"calibration needs at least {10 * MIN_EXCEEDANCES} scores, got {n}")
    x = np.sort(x)
    ts, fs = [float(x[0])], [0.0]
    j = 1
    while True:
        fmr = 10.0 ** (-j / POINTS_PER_DECADE)
        m = int(math.floor(fmr * n))          # comparisons allowed at or above the point
        if m < MIN_EXCEEDANCES:
            break
        t = float(x[n - m])                   # m scores are >= t (ties aside)
        frac = float(np.count_nonzero(x >= t)) / n
        if t > ts[-1] and math.log10(frac) < fs[-1]:
            ts.append(t)
            fs.append(math.log10(frac))
        j += 1
    if len(ts) < 3:
        raise InputError("calibration sample too concentrated to build a table")
    slope = 0.0
    m_tail = int(math.floor(TAIL_FROM_FMR * n))
    if m_tail >= MIN_TAIL_FIT and 10.0 ** fs[-1] < TAIL_FROM_FMR:
        u = float(x[n - m_tail])
        excess = x[x >= u] - u
        if excess.size and excess.mean() > 0:
            slope = math.log10(math.e) / float(excess.mean())   # decades of FMR per unit of t
    if not slope > 0:
        last = np.asarray(fs) <= fs[-1] + 1.0 + 1e-9   # the last decade of the table
        tt, ff = np.asarray(ts)[last], np.asarray(fs)[last]
        if tt.size >= 2 and np.ptp(tt) > 0:
            slope = -float(np.polyfit(tt, ff, 1)[0])
    if not slope > 0:
        slope = (fs[0] - fs[-1]) / (ts[-1] - ts[0])
    # check the tail beyond the table against the sample
    supported, checks = 0.0, []
    t_end, f_end = ts[-1], fs[-1]
    j = int(round(-f_end * POINTS_PER_DECADE)) + 1
    while True:
        lf = -j / POINTS_PER_DECADE
        predicted = n * 10.0 ** lf
        if predicted < MIN_TAIL_EXCEEDANCES:
            break
        t = t_end + (f_end - lf) / slope
        observed = int(n - np.searchsorted(x, t, side="left"))
        ok = _poisson_ok(predicted, observed)
        checks.append((round(lf, 2), round(predicted, 2), observed))
        if not ok:
            break
        supported = 10.0 ** lf
        j += 1
    return ScoreCalibration(tuple(ts), tuple(fs), slope, n, source, supported, tuple(checks))


@dataclass(frozen=True)
class ThresholdPolicy:
    """A target FPIR for a list of ``watchlist_size`` subjects, on a calibration.

    ``category_fpir``: per-category targets (``match.target_fpir_<category>``), as
    ``((category, fpir), ...)``; a category not named uses ``target_fpir``. The threshold of a
    category is the list's threshold at that category's target (the whole list's size: a
    passer-by is compared with every subject), so a category with a smaller target needs a
    higher score. Each category's alerts then stay within its target (its subjects are only
    part of the list, so the rate it contributes is at most the target)."""

    calibration: ScoreCalibration
    target_fpir: float
    watchlist_size: int
    category_fpir: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        if not 0.0 < float(self.target_fpir) < 1.0:
            raise InputError(f"target_fpir {self.target_fpir} must be in (0, 1)")
        if int(self.watchlist_size) < 1:
            raise InputError(f"watchlist_size {self.watchlist_size} must be >= 1")
        for c, f in self.category_fpir:
            if not 0.0 < float(f) < 1.0:
                raise InputError(f"target_fpir for category {c!r} ({f}) must be in (0, 1)")

    def target_for(self, category: str | None = None) -> float:
        """The target FPIR of ``category`` (``target_fpir`` when it has none of its own)."""
        return float(dict(self.category_fpir).get(category, self.target_fpir)) if category else float(self.target_fpir)

    def _fmr(self, category: str | None = None) -> float:
        """The single-comparison FMR the threshold is set at: the target spread over the list and
        over the comparisons one pass makes with each subject (calibration.pass_multiplicity)."""
        return fmr_for_fpir(self.target_for(category), int(self.watchlist_size)) / self.calibration.pass_multiplicity

    @property
    def target_fmr(self) -> float:
        return self._fmr()

    def threshold_for(self, category: str | None = None) -> float:
        """The calibrated-score threshold of ``category``: an alert needs ``score >= threshold``."""
        return float(min(1.0, -math.log10(max(self._fmr(category), 1e-300)) / SCORE_DECADES))

    @property
    def threshold(self) -> float:
        """The calibrated-score threshold at ``target_fpir`` (categories without their own target)."""
        return self.threshold_for(None)

    def thresholds(self, categories: Sequence[str]) -> dict[str, float]:
        """Each category's threshold."""
        return {c: self.threshold_for(c) for c in categories}

    def supported_for(self, category: str | None = None) -> bool:
        """False when the category's threshold rests on the extrapolated tail of the calibration."""
        return self._fmr(category) >= self.calibration.min_supported_fmr

    @property
    def supported(self) -> bool:
        """False when the threshold rests on the extrapolated tail of the calibration."""
        return self.supported_for(None)

    def meaning(self, score: float, category: str | None = None) -> dict[str, Any]:
        """The calibrated meaning of a calibrated ``score`` against this list (see the module
        docstring): per-comparison FMR, expected FPIR for the list size, the target the
        threshold of ``category`` came from, whether the table supports the rate, and the
        calibration's provenance."""
        s = float(score)
        fmr = 10.0 ** (-SCORE_DECADES * min(max(s, 0.0), 1.0))
        per_pass = min(fmr * self.calibration.pass_multiplicity, 1.0)
        return {"fmr": float(f"{fmr:.3g}"),
                "expected_fpir": float(f"{fpir_for_fmr(per_pass, int(self.watchlist_size)):.3g}"),
                "watchlist_size": int(self.watchlist_size),
                "target_fpir": self.target_for(category),
                "supported": bool(fmr >= self.calibration.min_supported_fmr),
                "calibration": self.calibration.source}

    def summary(self, categories: Sequence[str]) -> dict[str, Any]:
        """What is in force, for the audit log and the report: per category the target FPIR, the
        threshold and whether the calibration supports it."""
        return {c: {"target_fpir": self.target_for(c), "threshold": round(self.threshold_for(c), 6),
                    "supported": bool(self.supported_for(c))} for c in categories}

    def describe(self) -> str:
        cats = dict(self.category_fpir)
        note = "" if self.supported else (f" (rests on the extrapolated tail: the calibration holds FMR down to "
                                          f"{self.calibration.min_supported_fmr:.2g})")
        own = "".join(f"; {c}: FPIR {f:g} -> {self.threshold_for(c):.4f}" for c, f in cats.items()
                      if float(f) != float(self.target_fpir))
        return (f"target FPIR {self.target_fpir:g} with {self.watchlist_size} listed subjects -> per-comparison "
                f"FMR {self.target_fmr:.3g} -> calibrated threshold {self.threshold:.4f}{note}{own}")
