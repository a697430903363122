"""Watchlist matching and threshold calibration (pure numpy, no I/O).

Matching
--------
A :class:`Watchlist` holds one L2-normalised float32 row per enrolment template; a subject
may own several rows (several images). The score of a probe against a subject is the best
cosine similarity (dot product of unit vectors) over that subject's templates. A
:class:`Matcher` adds the alert thresholds (per category, overridden per subject) and
answers ``top_k``/``match`` for the live path and ``identify`` for evaluation at scale.

With a score model (``Matcher(..., scorer=edge.matching.normalise.ScoreModel, policy=...)``, built by
:func:`edge.matching.factory.build_matcher` from ``config.match``) the matcher instead
fuses each subject's templates into one (:func:`edge.recognition.fusion.fuse_embeddings`; measured on
lfw-dev, a fused template misses fewer listed people than the best of several), ranks by the
cohort-normalised score of :mod:`edge.matching.normalise` (each subject's cohort statistics computed
once, here; the probe's per match) and reports the calibrated score of
:mod:`edge.matching.calibration` in [0, 1] (``-log10 FMR / 10``); thresholds are then on that
scale, and :meth:`Matcher.meaning` gives a match's calibrated meaning for the alert.

Latency: scoring one probe against N templates streams the (N, D) matrix from memory once,
so it is memory-bound (N = 100k, D = 128 is 51 MB). For a single probe the product is taken
with numpy's single-threaded SIMD loop (``np.vecdot``, ``np.einsum`` before numpy 2) rather
than BLAS: on a small, busy CPU a
multi-threaded BLAS call has to wake worker threads that may be descheduled, which adds
milliseconds of jitter without making a memory-bound product faster. Batches of probes go
through BLAS (``matmul``), in chunks that bound the temporary memory.

Calibration (open-set identification)
-------------------------------------
FPIR (false-positive identification rate) is the fraction of non-mated probes - people
not on the watchlist - whose best score over the whole watchlist reaches the threshold.
FMR (false match rate) is the same fraction for a single non-mated comparison. If a
probe's N comparisons were independent, ``FPIR = 1 - (1 - FMR)^N``
(:func:`fpir_for_fmr`, :func:`fmr_for_fpir`).

:func:`calibrate_threshold` works in one of two modes:

(a) ``watchlist_size=None``: the sample holds top-1 scores of non-mated probes against the
    deployed watchlist (an FPIR sample); the target rate is ``target_fpir`` itself.
(b) ``watchlist_size=N``: the sample holds single non-mated comparison scores (an FMR
    sample); the target rate is ``fmr_for_fpir(target_fpir, N)``.

Either way the threshold is the smallest value ``t`` (representable in the sample's float
type) with ``empirical_rate(sample, t) <= rate``: just above the (a+1)-th highest score,
where ``a`` is the largest count with ``a / n <= rate``. Ties are handled exactly: the
returned threshold never lets more than ``a`` sample scores through. Mode (a) is the more
faithful, since it needs no independence assumption; mode (b) needs far fewer probes.

Support rule: an estimate is ``supported`` when the sample is expected to hold at least
``MIN_EXPECTED_EXCEEDANCES`` (10) scores at or above the threshold, i.e.
``rate * sample_size >= 10``; below that the relative standard error of the rate the
threshold actually gives exceeds about 1/sqrt(10) ~ 32 %. When ``rate * sample_size < 1``
no score may exceed the threshold at all, so the threshold is set just above the highest
score, ``supported`` is False and the note says how many more scores are needed. A sample
that is too small is reported, never raised.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from edge.errors import InputError, WatchlistError
from edge.recognition.fusion import fuse_embeddings
from edge.types import CATEGORIES, Match

__all__ = [
    "Watchlist",
    "Matcher",
    "Calibration",
    "MIN_EXPECTED_EXCEEDANCES",
    "fmr_for_fpir",
    "fpir_for_fmr",
    "calibrate_threshold",
    "empirical_rate",
]

#: A calibration is "supported" when rate * sample_size reaches this many expected exceedances.
MIN_EXPECTED_EXCEEDANCES = 10.0

# Temporary score matrices are built in row chunks of about this many float32 elements (64 MB).
_CHUNK_ELEMENTS = 1 << 24
# Rows normalised per step when loading a watchlist (bounds the float64 temporary).
_NORM_CHUNK_ROWS = 8192


def _matvec(e: np.ndarray, p: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """e (N, D) @ p (D,) with numpy's own single-threaded SIMD loop (no BLAS threads)."""
    if hasattr(np, "vecdot"):  # numpy >= 2.0; a little faster than einsum
        return np.vecdot(e, p, out=out)
    return np.einsum("nd,d->n", e, p, out=out)


def _rows_list(rows: np.ndarray, limit: int = 5) -> str:
    """'[1, 4, 9]' or '[1, 4, 9, 12, 15, ... (7 rows)]' for an error message."""
    rows = [int(r) for r in rows]
    head = ", ".join(str(r) for r in rows[:limit])
    return f"[{head}]" if len(rows) <= limit else f"[{head}, ... ({len(rows)} rows)]"


def _normalise_rows(a: np.ndarray, what: str, error: type[Exception]) -> np.ndarray:
    """Return a new float32 C-contiguous array whose rows are a's rows scaled to unit L2 norm.

    Works in float64 on chunks of rows, scaling each row by its largest |value| first so that
    neither tiny (subnormal) nor huge float64 values under- or overflow. Zero rows are refused.
    """
    n = a.shape[0]
    out = np.empty(a.shape, dtype=np.float32)
    for i in range(0, n, _NORM_CHUNK_ROWS):
        x = a[i:i + _NORM_CHUNK_ROWS].astype(np.float64)
        peak = np.abs(x).max(axis=1)
        zero = np.flatnonzero(peak == 0)
        if zero.size:
            raise error(f"{what} row(s) {_rows_list(zero + i)} are zero vectors and cannot be normalised")
        x /= peak[:, None]
        x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        out[i:i + len(x)] = x
    return out


def _check_real(value, what: str, error: type[Exception]) -> float:
    """A finite real number (bool refused) as float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise error(f"{what} must be a real number, got {value!r}")
    v = float(value)
    if math.isnan(v):
        raise error(f"{what} is NaN")
    return v


# --------------------------------------------------------------------------------------
# Watchlist
# --------------------------------------------------------------------------------------


class Watchlist:
    """An immutable set of enrolment templates.

    Parameters
    ----------
    embeddings : (N, D) floating array, one row per template. Rows are re-normalised to unit
        L2 norm (zero rows are refused) and stored as a read-only float32 C-contiguous copy.
    subject_ids : N non-empty strings; rows of one subject share its id.
    categories : N categories from :data:`edge.types.CATEGORIES`; a subject has one category.
    thresholds : None, or N values each None or a float in [-1, 1]: a per-subject threshold
        overriding the subject's category threshold. None means "no override for this row";
        the non-None values given for one subject must agree and then apply to the subject.

    Attributes
    ----------
    embeddings : (N, D) float32, read-only, in the input row order.
    row_subject : (N,) intp, read-only: subject index of each row.
    subjects : tuple of the S distinct ids, in order of first appearance (subject index order).
    subject_categories : tuple of S categories.
    subject_thresholds : tuple of S per-subject thresholds (float) or None.
    ``len(watchlist)`` is S; ``n_templates`` is N; ``dim`` is D.
    """

    __slots__ = ("embeddings", "row_subject", "subjects", "subject_categories", "subject_thresholds",
                 "_index", "_grouped", "_starts")

    def __init__(self, embeddings: np.ndarray, subject_ids: Sequence[str], categories: Sequence[str],
                 thresholds: Sequence[float | None] | None = None):
        set_ = object.__setattr__
        try:
            a = np.asarray(embeddings)
        except (ValueError, TypeError) as exc:
            raise WatchlistError(f"embeddings are not a rectangular numeric array: {exc}") from None
        if a.size == 0 and a.ndim <= 2 and (a.ndim < 2 or a.shape[0] == 0):
            raise WatchlistError("watchlist is empty: no embeddings were given")
        if a.ndim != 2:
            raise WatchlistError(f"embeddings must be a 2-D array of shape (N, D), got shape {a.shape}")
        if a.shape[1] == 0:
            raise WatchlistError("embedding dimension D is 0")
        if not np.issubdtype(a.dtype, np.floating):
            raise WatchlistError(f"embeddings dtype {a.dtype} is not floating-point (expected float32)")
        bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
        if bad.size:
            raise WatchlistError(f"embedding row(s) {_rows_list(bad)} contain NaN or inf")
        n = a.shape[0]
        e = _normalise_rows(a, "embedding", WatchlistError)
        e.flags.writeable = False

        ids = self._strings(subject_ids, "subject_ids", n)
        cats = self._strings(categories, "categories", n)
        for i, c in enumerate(cats):
            if c not in CATEGORIES:
                raise WatchlistError(f"categories[{i}] {c!r} is not a known category ({', '.join(CATEGORIES)})")
        if thresholds is None:
            thr: list[float | None] = [None] * n
        else:
            if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, (Sequence, np.ndarray)):
                raise WatchlistError(f"thresholds must be a sequence of N floats or None, got {type(thresholds).__name__}")
            thr = list(thresholds)
            if len(thr) != n:
                raise WatchlistError(f"length mismatch: {n} embeddings but {len(thr)} thresholds")
            for i, t in enumerate(thr):
                if t is None:
                    continue
                v = _check_real(t, f"thresholds[{i}]", WatchlistError)
                if not -1.0 <= v <= 1.0:
                    raise WatchlistError(f"thresholds[{i}] = {v} is outside the cosine range [-1, 1]")
                thr[i] = v

        index: dict[str, int] = {}
        first_row: list[int] = []
        s_cat: list[str] = []
        s_thr: list[float | None] = []
        thr_row: list[int] = []
        row_subject = np.empty(n, dtype=np.intp)
        for r, (sid, c, t) in enumerate(zip(ids, cats, thr)):
            k = index.get(sid)
            if k is None:
                k = index[sid] = len(first_row)
                first_row.append(r)
                s_cat.append(c)
                s_thr.append(t)
                thr_row.append(r)
            else:
                if c != s_cat[k]:
                    raise WatchlistError(f"subject {sid!r} has two categories: {s_cat[k]!r} (row {first_row[k]}) "
                                         f"and {c!r} (row {r})")
                if t is not None:
                    if s_thr[k] is None:
                        s_thr[k], thr_row[k] = t, r
                    elif t != s_thr[k]:
                        raise WatchlistError(f"subject {sid!r} has two thresholds: {s_thr[k]} (row {thr_row[k]}) "
                                             f"and {t} (row {r})")
            row_subject[r] = k

        # Rows grouped by subject (stable) for np.maximum.reduceat; no copy when already grouped,
        # which includes the common case of one template per subject.
        if n == len(first_row) or np.all(row_subject[1:] >= row_subject[:-1]):
            grouped = e
            sorted_subject = row_subject
        else:
            order = np.argsort(row_subject, kind="stable")
            grouped = np.ascontiguousarray(e[order])
            grouped.flags.writeable = False
            sorted_subject = row_subject[order]
        starts = np.flatnonzero(np.r_[True, sorted_subject[1:] != sorted_subject[:-1]])
        row_subject.flags.writeable = False
        starts.flags.writeable = False

        set_(self, "embeddings", e)
        set_(self, "row_subject", row_subject)
        set_(self, "subjects", tuple(index))
        set_(self, "subject_categories", tuple(s_cat))
        set_(self, "subject_thresholds", tuple(s_thr))
        set_(self, "_index", MappingProxyType(index))
        set_(self, "_grouped", grouped)
        set_(self, "_starts", starts)

    @staticmethod
    def _strings(values, what: str, n: int) -> list[str]:
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
            raise WatchlistError(f"{what} must be a sequence of N strings, got {type(values).__name__}")
        out = list(values)
        if len(out) != n:
            raise WatchlistError(f"length mismatch: {n} embeddings but {len(out)} {what}")
        for i, v in enumerate(out):
            if not isinstance(v, str) or not v:
                raise WatchlistError(f"{what}[{i}] must be a non-empty string, got {v!r}")
        return [str(v) for v in out]

    def __setattr__(self, name, value):
        raise AttributeError("Watchlist is immutable")

    def __delattr__(self, name):
        raise AttributeError("Watchlist is immutable")

    def __len__(self) -> int:
        return len(self.subjects)

    def __contains__(self, subject_id: object) -> bool:
        return subject_id in self._index

    def __repr__(self) -> str:
        return f"Watchlist(subjects={len(self)}, templates={self.n_templates}, dim={self.dim})"

    @property
    def n_templates(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def single_template(self) -> bool:
        """True when every subject has exactly one template (no max-reduction needed)."""
        return self.n_templates == len(self.subjects)

    def index(self, subject_id: str) -> int:
        """Subject index of subject_id (WatchlistError if absent)."""
        try:
            return self._index[subject_id]
        except KeyError:
            raise WatchlistError(f"subject {subject_id!r} is not on the watchlist") from None


# --------------------------------------------------------------------------------------
# Matcher
# --------------------------------------------------------------------------------------


class Matcher:
    """Scores probes against a :class:`Watchlist` and applies the alert thresholds.

    thresholds maps category -> default threshold in [-1, 1]. Every category used by a
    subject without its own threshold must be present; unknown categories are refused.
    ``matcher.thresholds`` is the (S,) float64 array of effective per-subject thresholds.

    Ties: among equal scores the lower subject index ranks first (as ``np.argmax``).
    """

    def __init__(self, watchlist: Watchlist, thresholds: Mapping[str, float], scorer=None, policy=None):
        if not isinstance(watchlist, Watchlist):
            raise InputError(f"watchlist must be a Watchlist, got {type(watchlist).__name__}")
        if not isinstance(thresholds, Mapping):
            raise InputError(f"thresholds must be a mapping category -> float, got {type(thresholds).__name__}")
        cat_thr: dict[str, float] = {}
        for c, t in thresholds.items():
            if c not in CATEGORIES:
                raise InputError(f"threshold given for unknown category {c!r} (known: {', '.join(CATEGORIES)})")
            v = _check_real(t, f"threshold for category {c!r}", InputError)
            if not -1.0 <= v <= 1.0:
                raise InputError(f"threshold for category {c!r} = {v} is outside the cosine range [-1, 1]")
            cat_thr[c] = v
        self.watchlist = watchlist
        self.scorer = scorer
        self.policy = policy
        if scorer is not None:
            self._init_scorer(scorer)
        eff = np.empty(len(watchlist), dtype=np.float64)
        for k, (c, t) in enumerate(zip(watchlist.subject_categories, watchlist.subject_thresholds)):
            if t is None:
                if c not in cat_thr:
                    raise InputError(f"no threshold for category {c!r} (needed by subject {watchlist.subjects[k]!r})")
                t = cat_thr[c]
            elif scorer is not None:
                t = self._subject_floor(k, t, cat_thr.get(c, -1.0))
            eff[k] = t
        eff.flags.writeable = False
        self.category_thresholds = MappingProxyType(cat_thr)
        self.thresholds = eff

    # ---- cohort-normalised scoring (edge.matching.normalise) ---------------------------------------

    def _init_scorer(self, scorer) -> None:
        """Fuse each subject's templates into one (edge.recognition.fusion.fuse_embeddings: measured on
        lfw-dev, the fused template beats the best of several) and compute each subject's
        cohort statistics once, for the normalised score."""
        wl = self.watchlist
        if scorer.dim != wl.dim:
            raise InputError(f"score model dimension {scorer.dim} does not match the watchlist dimension {wl.dim}")
        ends = np.r_[wl._starts[1:], wl.n_templates]
        if wl.single_template:
            fused = wl._grouped
        else:
            fused = np.stack([fuse_embeddings(wl._grouped[a:b]) for a, b in zip(wl._starts, ends)])
            fused = np.ascontiguousarray(fused, dtype=np.float32)
            fused.flags.writeable = False
        mu, sd = scorer.cohort_stats(fused)
        ga = (1.0 / sd).astype(np.float32)
        gb = (mu / sd).astype(np.float32)
        cal = scorer.calibration
        if cal is not None and cal.fusion_offsets and not wl.single_template:
            # a template fused from k photos scores strangers higher (ScoreCalibration.fusion_offset):
            # its t is lowered by the offset for k, folded into the subject's constant (t = (... - gb - b) / 3)
            gb = gb + np.float32(3.0) * np.array([cal.fusion_offset(int(k)) for k in ends - wl._starts], np.float32)
        for a in (ga, gb):
            a.flags.writeable = False
        self._fused, self._ga, self._gb = fused, ga, gb
        self.subject_stats = (mu, sd)
        self._a0 = np.float32(1.0 / scorer.sd0)
        self._b0 = np.float32(scorer.mu0 / scorer.sd0)

    def _subject_floor(self, k: int, cosine: float, category_threshold: float) -> float:
        """A bundle's per-subject threshold is a raw cosine. With normalised scores it is
        translated with the subject's own cohort statistics (and the cohort-wide ones for the
        passer-by) and the stricter of it and the category threshold applies."""
        cal = getattr(self.scorer, "calibration", None)
        if cal is None:
            return category_threshold
        mu, sd = self.subject_stats[0][k], self.subject_stats[1][k]
        t = ((cosine - mu) / sd + 2.0 * (cosine - self.scorer.mu0) / self.scorer.sd0) / 3.0
        return float(max(category_threshold, float(cal.score(t))))

    def _present(self, stat: np.ndarray) -> np.ndarray:
        """Ranking statistic -> reported score: the cosine itself, or the calibrated score of
        the normalised score (edge.matching.calibration.ScoreCalibration.score)."""
        if self.scorer is None:
            return stat
        cal = self.scorer.calibration
        if cal is None:
            raise InputError("the score model has no calibration: only statistics() is available")
        return cal.score(stat).astype(np.float32)

    def statistics(self, probes) -> np.ndarray:
        """(M, S) float32 ranking statistic per subject: the cosine (max over templates), or
        with a score model the normalised score t of edge.matching.normalise (fused templates)."""
        p = self._probes(probes)
        out = np.empty((p.shape[0], len(self.watchlist)), dtype=np.float32)
        for i, j in self._blocks(p):
            self._score_block(p[i:j], out[i:j])
        return out

    def meaning(self, match: Match) -> dict | None:
        """The calibrated meaning of a match's score for this list (edge.matching.calibration), or
        None without a threshold policy."""
        if self.policy is None:
            return None
        try:
            return self.policy.meaning(match.score, match.category)
        except TypeError:             # a policy without per-category targets
            return self.policy.meaning(match.score)

    # ---- probes and scores --------------------------------------------------------------

    def _probes(self, probes) -> np.ndarray:
        """Validated (M, D) float32 C-contiguous unit rows; a (D,) probe becomes (1, D)."""
        try:
            p = np.asarray(probes)
        except (ValueError, TypeError) as exc:
            raise InputError(f"probes are not a rectangular numeric array: {exc}") from None
        if not np.issubdtype(p.dtype, np.floating):
            raise InputError(f"probe dtype {p.dtype} is not floating-point (expected float32)")
        if p.ndim == 1:
            p = p[None, :]
        elif p.ndim != 2:
            raise InputError(f"probes must have shape (D,) or (M, D), got shape {p.shape}")
        d = self.watchlist.dim
        if p.shape[1] != d:
            raise InputError(f"probe dimension {p.shape[1]} does not match the watchlist dimension {d}")
        if p.shape[0] == 0:
            return np.empty((0, d), dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(p).all(axis=1))
        if bad.size:
            raise InputError(f"probe row(s) {_rows_list(bad)} contain NaN or inf")
        return _normalise_rows(p, "probe", InputError)

    def _score_block(self, p: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(m, S) float32 ranking statistics for validated unit probes p (m, D): cosines
        clipped to [-1, 1], or the normalised score t with a score model."""
        wl = self.watchlist
        m, s = p.shape[0], len(wl)
        if self.scorer is not None:
            sims = _matvec(self._fused, p[0])[None, :] if m == 1 else p @ self._fused.T
            mu, sd = self.scorer.cohort_stats(p)
            a = (1.0 / sd).astype(np.float32) + self._a0
            b = (mu / sd).astype(np.float32) + self._b0
            if out is None:
                out = np.empty((m, s), dtype=np.float32)
            np.multiply(sims, self._ga[None, :] + a[:, None], out=out)
            out -= self._gb[None, :] + b[:, None]
            out /= np.float32(3.0)
            return out
        e = wl._grouped
        if wl.single_template:
            if out is None:
                out = np.empty((m, s), dtype=np.float32)
            if m == 1:
                _matvec(e, p[0], out=out[0])
            else:
                np.matmul(p, e.T, out=out)
        else:
            sims = _matvec(e, p[0])[None, :] if m == 1 else p @ e.T
            out = np.maximum.reduceat(sims, wl._starts, axis=1, out=out)
        np.clip(out, -1.0, 1.0, out=out)
        return out

    def _blocks(self, p: np.ndarray):
        """Yield (start, stop) row ranges so that one block's template scores stay near 64 MB."""
        step = max(1, _CHUNK_ELEMENTS // self.watchlist.n_templates)
        if self.scorer is not None:  # also bounds the (m, cohort) block of the probe statistics
            step = max(1, _CHUNK_ELEMENTS // max(len(self.watchlist), self.scorer.size))
        for i in range(0, p.shape[0], step):
            yield i, min(i + step, p.shape[0])

    def scores(self, probes) -> np.ndarray:
        """(M, S) float32: each probe's score per subject: the best cosine over its templates,
        or with a score model the calibrated score of the fused template."""
        p = self._probes(probes)
        out = np.empty((p.shape[0], len(self.watchlist)), dtype=np.float32)
        for i, j in self._blocks(p):
            self._score_block(p[i:j], out[i:j])
            if self.scorer is not None:
                out[i:j] = self._present(out[i:j])
        return out

    # ---- ranking ------------------------------------------------------------------------

    def _make_match(self, k: int, score: float, margin: float) -> Match:
        wl = self.watchlist
        return Match(subject_id=wl.subjects[k], category=wl.subject_categories[k], score=float(score),
                     threshold=float(self.thresholds[k]), margin=float(margin), index=int(k))

    def top_k(self, probes, k: int) -> list[list[Match]]:
        """Per probe, the best min(k, S) distinct subjects, best first.

        Match.margin is the subject's score minus the next-ranked subject's score (for the
        first entry: minus the runner-up, as in :meth:`match`); inf when no subject follows.
        """
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}")
        p = self._probes(probes)
        n_sub = len(self.watchlist)
        k = min(int(k), n_sub)
        kk = min(k + 1, n_sub)  # one extra entry gives the k-th entry its margin
        results: list[list[Match]] = []
        for i, j in self._blocks(p):
            s = self._score_block(p[i:j])
            m = s.shape[0]
            if kk < n_sub:
                idx = np.argpartition(s, n_sub - kk, axis=1)[:, n_sub - kk:]
            else:
                idx = np.broadcast_to(np.arange(n_sub), (m, n_sub))
            val = np.take_along_axis(s, idx, axis=1)
            order = np.lexsort((idx, -val), axis=1)  # score descending, then index ascending
            idx = np.take_along_axis(idx, order, axis=1)
            val = np.take_along_axis(val, order, axis=1)
            if kk < n_sub:
                # argpartition picks arbitrarily among scores tied with the kk-th; redo those rows
                # so that the lower index wins, as everywhere else.
                low = val[:, -1:]
                tied = np.flatnonzero((s >= low).sum(axis=1) > kk)
                for r in tied:
                    cand = np.flatnonzero(s[r] >= low[r, 0])
                    cand = cand[np.lexsort((cand, -s[r, cand]))][:kk]
                    idx[r], val[r] = cand, s[r, cand]
            v64 = self._present(val).astype(np.float64) if self.scorer is not None else val.astype(np.float64)
            margins = np.full(v64.shape, np.inf)
            margins[:, :-1] = v64[:, :-1] - v64[:, 1:]
            # when kk > k the last column exists only to give the k-th entry its margin
            idx, v64, margins = idx[:, :k], v64[:, :k], margins[:, :k]
            for r in range(m):
                results.append([self._make_match(int(a), b, c) for a, b, c in zip(idx[r], v64[r], margins[r])])
        return results

    def match(self, probe, views: int = 1, spread: float | None = None) -> Match:
        """Top-1 Match of one probe (shape (D,) or (1, D)); margin to the runner-up subject.

        A track's probe fused from ``views`` embeddings whose spread (1 - mean pairwise cosine) is
        ``spread`` scores strangers higher than a single view; with a calibrated score model its
        statistic is lowered by :meth:`ScoreCalibration.fusion_offset` (the same for every
        subject: the ranking is unchanged, the score is what a single view would need)."""
        p = self._probes(probe)
        if p.shape[0] != 1:
            raise InputError(f"match() takes one probe, got {p.shape[0]}; use top_k() or identify() for batches")
        s = self._score_block(p)[0]
        cal = getattr(self.scorer, "calibration", None)
        if cal is not None and views > 1:
            s -= np.float32(cal.fusion_offset(views, spread))
        best = int(np.argmax(s))
        score = float(self._present(s[best:best + 1])[0]) if self.scorer is not None else float(s[best])
        if len(s) > 1:
            s[best] = -np.inf
            second = s.max(keepdims=True)
            margin = score - float(self._present(second)[0] if self.scorer is not None else second[0])
        else:
            margin = math.inf
        return self._make_match(best, score, margin)

    def identify(self, probes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised top-1 for a batch: (best_index (M,) intp, best_score (M,) float64,
        margin (M,) float64, inf when the watchlist has one subject).

        Hits are ``best_score >= matcher.thresholds[best_index]``.
        """
        p = self._probes(probes)
        m = p.shape[0]
        best = np.empty(m, dtype=np.intp)
        score = np.empty(m, dtype=np.float64)
        margin = np.full(m, np.inf)
        for i, j in self._blocks(p):
            s = self._score_block(p[i:j])
            rows = np.arange(j - i)
            b = np.argmax(s, axis=1)
            best[i:j] = b
            top = s[rows, b]
            score[i:j] = self._present(top) if self.scorer is not None else top
            if s.shape[1] > 1:
                s[rows, b] = -np.inf
                second = s.max(axis=1)
                margin[i:j] = score[i:j] - (self._present(second) if self.scorer is not None else second)
        return best, score, margin


# --------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------


def _check_size(n, what: str = "watchlist_size") -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise InputError(f"{what} must be an integer >= 1, got {n!r}")
    if n < 1:
        raise InputError(f"{what} must be >= 1, got {n}")
    return int(n)


def _check_rate(rate, what: str, *, open_interval: bool) -> float:
    v = _check_real(rate, what, InputError)
    ok = 0.0 < v < 1.0 if open_interval else 0.0 <= v <= 1.0
    if not ok:
        interval = "(0, 1)" if open_interval else "[0, 1]"
        raise InputError(f"{what} = {v} is outside {interval}")
    return v


def fmr_for_fpir(fpir: float, n: int) -> float:
    """Per-comparison FMR giving the FPIR ``fpir`` against n independent templates:
    ``1 - (1 - fpir)^(1/n)``, computed with log1p/expm1 so small rates keep full precision."""
    f = _check_rate(fpir, "fpir", open_interval=False)
    n = _check_size(n, "n")
    if f == 1.0:
        return 1.0
    return -math.expm1(math.log1p(-f) / n)


def fpir_for_fmr(fmr: float, n: int) -> float:
    """FPIR of n independent comparisons each with false match rate fmr: ``1 - (1 - fmr)^n``."""
    f = _check_rate(fmr, "fmr", open_interval=False)
    n = _check_size(n, "n")
    if f == 1.0:
        return 1.0
    return -math.expm1(n * math.log1p(-f))


def _sample(scores, what: str = "scores") -> np.ndarray:
    """Flat float32 (kept) or float64 array of finite scores; InputError otherwise."""
    try:
        x = np.asarray(scores)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{what} are not a numeric array: {exc}") from None
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{what} dtype {x.dtype} is not floating-point")
    x = x.ravel()
    if x.size == 0:
        raise InputError(f"{what} sample is empty")
    if x.dtype != np.float32:
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"{what} contain NaN or inf")
    return x


def empirical_rate(scores, threshold: float) -> float:
    """Fraction of scores >= threshold (compared in float64, so no rounding of the threshold)."""
    x = _sample(scores)
    t = _check_real(threshold, "threshold", InputError)
    return int(np.count_nonzero(x >= np.float64(t))) / x.size


@dataclass(frozen=True)
class Calibration:
    """The result of :func:`calibrate_threshold`.

    threshold: alert threshold (score >= threshold alerts).
    target_fpir: the FPIR asked for.  watchlist_size: N in mode (b), None in mode (a).
    target_fmr: per-comparison rate in mode (b), None in mode (a).
    sample_size: number of scores.  expected_false_alarms: target rate x sample_size (the
    rate is target_fpir in mode (a), target_fmr in mode (b)).
    exceedances: sample scores at or above the threshold (never more than the rate allows).
    supported: expected_false_alarms >= MIN_EXPECTED_EXCEEDANCES.  note: a plain-language summary.
    """

    threshold: float
    target_fpir: float
    watchlist_size: int | None
    target_fmr: float | None
    sample_size: int
    expected_false_alarms: float
    exceedances: int
    supported: bool
    note: str


def _samples_needed(rate: float, expected: float) -> int:
    """Smallest n with n * rate >= expected (in floating point)."""
    n = max(1, math.ceil(expected / rate))
    while n * rate < expected:
        n += 1
    while n > 1 and (n - 1) * rate >= expected:
        n -= 1
    return n


def calibrate_threshold(nonmated_scores, target_fpir: float, watchlist_size: int | None = None) -> Calibration:
    """Threshold meeting target_fpir on a sample of non-mated scores (see the module docstring
    for modes (a) ``watchlist_size=None`` and (b) ``watchlist_size=N``, and the support rule)."""
    x = _sample(nonmated_scores, "nonmated_scores")
    fpir = _check_rate(target_fpir, "target_fpir", open_interval=True)
    if watchlist_size is None:
        fmr = None
        rate = fpir
        mode = "FPIR sample (top-1 scores against the watchlist)"
    else:
        n_wl = _check_size(watchlist_size)
        fmr = fmr_for_fpir(fpir, n_wl)
        rate = fmr
        mode = f"FMR sample (single comparisons), FMR {fmr:.4g} for N = {n_wl}"
    n = int(x.size)

    # a = the largest count of exceedances with a / n <= rate, as float arithmetic sees it
    a = min(int(math.floor(rate * n)), n - 1)
    while a > 0 and a / n > rate:
        a -= 1
    while a + 1 < n and (a + 1) / n <= rate:
        a += 1

    # The smallest threshold letting at most a scores through lies just above the (a+1)-th highest.
    pivot = np.partition(x, n - 1 - a)[n - 1 - a]
    threshold = np.nextafter(pivot, x.dtype.type(np.inf))
    exceed = int(np.count_nonzero(x >= threshold))
    assert exceed <= a, (exceed, a)

    expected = rate * n
    supported = expected >= MIN_EXPECTED_EXCEEDANCES
    need_sup = _samples_needed(rate, MIN_EXPECTED_EXCEEDANCES)
    if a == 0:
        need_one = _samples_needed(rate, 1.0)
        note = (f"{mode}: {n} scores are too few for a rate of {rate:.4g} (expected {expected:.3g} "
                f"exceedances); threshold set just above the highest score {float(pivot):.6g}. Need at least "
                f"{need_one - n} more scores for any estimate and {need_sup - n} more for a supported one "
                f"({need_sup} in all).")
    elif not supported:
        note = (f"{mode}: threshold lets {exceed} of {n} scores through; only {expected:.3g} exceedances are "
                f"expected, fewer than {MIN_EXPECTED_EXCEEDANCES:g}, so the estimate is unstable. "
                f"Need {need_sup - n} more scores ({need_sup} in all) for a supported estimate.")
    else:
        note = (f"{mode}: threshold lets {exceed} of {n} scores through "
                f"(empirical rate {exceed / n:.4g} <= target {rate:.4g}; {expected:.3g} expected).")
    return Calibration(threshold=float(threshold), target_fpir=fpir,
                       watchlist_size=None if watchlist_size is None else int(watchlist_size),
                       target_fmr=fmr, sample_size=n, expected_false_alarms=float(expected),
                       exceedances=exceed, supported=bool(supported), note=note)
