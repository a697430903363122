"""The evaluation protocols, pure numpy on embedding tables: LFW pair verification with
cross-validated thresholds, open-set identification (ISO/IEC 19795-1) at target FPIRs, the track
protocol, multi-image enrolment, cohort-normalised scoring cross-fitted by identity fold."""
from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.errors import InputError
from edge.matching.calibration import ThresholdPolicy, fit_calibration
from edge.matching.match import Matcher, Watchlist
from edge.matching.normalise import DEFAULT_TOP_FRACTION, fit_score_model
from edge.recognition.fusion import fuse_embeddings
from edge.tools.evaluation import DET_POINTS, FPIR_TARGETS, NO_FACE_EXAMPLES, WATCHLIST_SIZES
from edge.tools.evaluation.embeddings import EmbeddingTable
from edge.tools.evaluation.lfw import Pair, PairsFile

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Pure protocol functions
# ---------------------------------------------------------------------------------------------

def best_threshold(scores: Sequence[float], same: Sequence[bool]) -> tuple[float, float]:
    """The threshold t maximising the accuracy of "same if score >= t" and that accuracy.

    Candidates are the lowest score (all "same"), the midpoints between consecutive distinct
    scores and just above the highest (all "different"); among equally good ones the middle
    candidate is taken."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(same, bool)
    if s.shape != y.shape or s.ndim != 1 or s.size == 0:
        raise ValueError("scores and labels must be non-empty 1-d arrays of the same length")
    u = np.unique(s)
    cand = np.concatenate([u[:1], (u[:-1] + u[1:]) / 2, [np.nextafter(u[-1], np.inf)]])
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    pos_below = np.searchsorted(pos, cand, "left")   # same pairs called "different"
    neg_below = np.searchsorted(neg, cand, "left")   # different pairs called "different"
    correct = (len(pos) - pos_below) + neg_below
    best = np.flatnonzero(correct == correct.max())
    i = best[len(best) // 2]
    return float(cand[i]), float(correct[i] / len(s))


def cross_validate(scores: Sequence[float], same: Sequence[bool], folds: Sequence[int]) -> dict[str, Any]:
    """Per fold: threshold chosen on the other folds, accuracy on this one.

    Returns folds, accuracy_mean, accuracy_std (sample standard deviation over folds),
    threshold (mean of the per-fold thresholds) and per_fold [{fold, n, threshold, accuracy}]."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(same, bool)
    f = np.asarray(folds)
    ids = [int(k) for k in np.unique(f)]
    if len(ids) < 2:
        raise InputError("cross-validation needs at least 2 folds with pairs")
    per_fold = []
    for k in ids:
        test = f == k
        t, _ = best_threshold(s[~test], y[~test])
        acc = float(np.mean((s[test] >= t) == y[test]))
        per_fold.append({"fold": k + 1, "n": int(test.sum()), "threshold": t, "accuracy": acc})
    accs = np.array([p["accuracy"] for p in per_fold])
    return {
        "folds": len(ids),
        "accuracy_mean": float(accs.mean()),
        "accuracy_std": float(accs.std(ddof=1)),
        "threshold": float(np.mean([p["threshold"] for p in per_fold])),
        "per_fold": per_fold,
    }


def threshold_at_fpir(nonmated_top: Sequence[float], fpir: float) -> tuple[float, int]:
    """(threshold, false alarms): the smallest threshold t at which the fraction of non-mated
    top-1 scores >= t is at most ``fpir``, and how many non-mated probes are >= t.

    Non-mated probes without a usable face carry score -inf (they never alarm). Scores are
    cosines, so a threshold of -1 is the floor (used when every probe may alarm)."""
    nm = np.sort(np.asarray(nonmated_top, np.float64))[::-1]
    if nm.size == 0:
        raise ValueError("no non-mated scores")
    allowed = int(math.floor(fpir * nm.size + 1e-9))
    if allowed >= nm.size or nm[allowed] < -1.0:
        t = -1.0
    else:
        t = float(np.nextafter(nm[allowed], np.inf))
    return t, int(np.count_nonzero(nm >= t))


def fnir_at(mated_top: Sequence[float], mated_correct: Sequence[bool], threshold: float) -> float:
    """Fraction of mated probes whose top-1 candidate is wrong or scores below ``threshold``."""
    top = np.asarray(mated_top, np.float64)
    ok = np.asarray(mated_correct, bool)
    if top.size == 0:
        raise ValueError("no mated scores")
    return float(1.0 - np.mean(ok & (top >= threshold)))


def det_curve(mated_top: Sequence[float], mated_correct: Sequence[bool],
              nonmated_top: Sequence[float], max_points: int = DET_POINTS) -> dict[str, list[float]]:
    """FNIR against FPIR as the threshold sweeps the non-mated scores, subsampled to about
    ``max_points`` points spaced evenly in log FPIR (FPIR = 0 is the first point)."""
    top = np.asarray(mated_top, np.float64)
    ok = np.asarray(mated_correct, bool)
    nm = np.sort(np.asarray(nonmated_top, np.float64))[::-1]
    nm = nm[np.isfinite(nm)]
    n_nm = len(np.asarray(nonmated_top))
    if n_nm == 0 or top.size == 0:
        return {"fpir": [], "fnir": [], "threshold": []}
    hits = np.sort(top[ok & np.isfinite(top)])
    # k = how many non-mated probes may alarm; spaced geometrically so log FPIR is even
    ks = np.unique(np.concatenate([[0], np.round(np.geomspace(1, max(1, nm.size), max_points))]).astype(int))
    ks = ks[ks <= nm.size]
    thresholds = np.array([np.nextafter(nm[k], np.inf) if k < nm.size else -1.0 for k in ks])
    alarms = nm.size - np.searchsorted(nm[::-1], thresholds, "left")
    found = hits.size - np.searchsorted(hits, thresholds, "left")
    return {"fpir": (alarms / n_nm).tolist(),
            "fnir": (1.0 - found / top.size).tolist(),
            "threshold": thresholds.tolist()}


# ---------------------------------------------------------------------------------------------
# Scoring one pipeline
# ---------------------------------------------------------------------------------------------

def pair_scores(table: EmbeddingTable, pairs: Sequence[Pair], scorer: "EvalScorer | None" = None,
                fold_of: dict[str, int] | None = None) -> np.ndarray:
    """Score per pair: the cosine (or the scorer's statistic, each pair scored by the model of
    its identities' fold); MISSING_SCORE when either image has no embedding."""
    ia = np.array([table.index[p.a] for p in pairs], int)
    ib = np.array([table.index[p.b] for p in pairs], int)
    a = table.embeddings[ia].astype(np.float64)
    b = table.embeddings[ib].astype(np.float64)
    if scorer is None or scorer.models is None:
        s = np.einsum("ij,ij->i", a, b)
        return np.where(np.isfinite(s), s, -1.0)
    have = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    folds = np.array([fold_of.get(p.a.parent.name, 0) if fold_of else 0 for p in pairs], int)
    out = np.full(len(pairs), MISSING_SCORE)
    for f in np.unique(folds[have]):
        sel = have & (folds == f)
        out[sel] = scorer.model(int(f)).pair_scores(a[sel], b[sel])
    return out


def sample_watchlist(identities: dict[str, list[Path]], size: int | str, seed: int) -> list[str] | None:
    """Names of the watchlisted identities (those with >= 2 images): all of them, or ``size``
    sampled with numpy's default_rng(seed); None when fewer than ``size`` are available."""
    eligible = [n for n in identities if len(identities[n]) >= 2]
    if size == "all":
        return eligible
    if size > len(eligible):
        return None
    rng = np.random.default_rng(seed)
    return [eligible[i] for i in sorted(rng.choice(len(eligible), size=size, replace=False))]


def identification(table: EmbeddingTable, identities: dict[str, list[Path]], names: list[str],
                   images_dir: Path, fpirs: Sequence[float] = FPIR_TARGETS,
                   with_det: bool = False, scorer: "EvalScorer | None" = None,
                   fold_of: dict[str, int] | None = None, keep_scores: bool = False) -> dict[str, Any]:
    """Open-set 1:N figures for a watchlist of ``names`` (see the module docstring), scored by
    ``scorer`` (None: the raw cosine); ``keep_scores`` adds the raw score matrices under the
    private key ``_scores`` (for the calibration, removed before the report is written)."""
    scorer = scorer or EvalScorer.base()
    ok = table.ok
    enrol_rows, enrol_names, mated_rows, mated_labels = [], [], [], []
    substituted, failed = [], []
    for name in names:
        rows = [table.index[p] for p in identities[name]]
        usable = [r for r in rows if ok[r]]
        if not usable:
            failed.append(name)
            continue
        e = usable[0]
        if e != rows[0]:
            substituted.append({"identity": name,
                                "listed": _rel(identities[name][0], images_dir),
                                "enrolled": _rel(table.paths[e], images_dir)})
        label = len(enrol_rows)
        enrol_rows.append(e)
        enrol_names.append(name)
        for r in rows:
            if r != e:
                mated_rows.append(r)
                mated_labels.append(label)
    nonmated_rows = [table.index[p] for n, ps in identities.items() if len(ps) == 1 for p in ps]
    out: dict[str, Any] = {"n_watchlist": len(enrol_rows), "n_mated": len(mated_rows),
                           "n_nonmated": len(nonmated_rows)}
    if not enrol_rows or not mated_rows or not nonmated_rows:
        out["error"] = "not enough identities for open-set identification"
        return out
    gallery = [table.embeddings[[r]] for r in enrol_rows]

    def folds_of(rows):
        return np.array([fold_of.get(table.paths[r].parent.name, 0) if fold_of else 0 for r in rows], int)

    sm = scorer.matrix(table.embeddings[mated_rows], folds_of(mated_rows), gallery)
    sn = scorer.matrix(table.embeddings[nonmated_rows], folds_of(nonmated_rows), gallery)
    m_idx, m_top = np.argmax(sm, axis=1), sm.max(axis=1)
    n_idx, n_top = np.argmax(sn, axis=1), sn.max(axis=1)
    m_have, n_have = np.isfinite(m_top), np.isfinite(n_top)
    m_idx[~m_have] = -1
    m_correct = m_idx == np.asarray(mated_labels)
    out.update({
        "n_mated_no_face": int((~m_have).sum()),
        "n_nonmated_no_face": int((~n_have).sum()),
        "failed_to_enrol": {"count": len(failed), "identities": failed[:NO_FACE_EXAMPLES],
                            "note": "identities with no usable face in any image: left out of the "
                                    "watchlist, their images are not probes"},
        "enrolment_substituted": {"count": len(substituted), "examples": substituted[:NO_FACE_EXAMPLES],
                                  "note": "the first image had no usable face; the identity's next "
                                          "image with one was enrolled instead"},
        "rank1": float(np.mean(m_correct)),
        "min_resolvable_fpir": 1.0 / len(nonmated_rows),
    })
    out.update(_rates(m_top, m_correct, n_top, fpirs))
    # concentration of the false alarms on listed subjects ("hubs": a subject who resembles many
    # passers-by collects their alarms - raw cosines do this to crowded regions of the space)
    hubs = {}
    for f in fpirs:
        hit = n_idx[n_top >= out["threshold_at_fpir"][fpir_key(f)]]
        counts = Counter(int(k) for k in hit)
        hubs[fpir_key(f)] = {"distinct_subjects": len(counts), "max_per_subject": max(counts.values(), default=0),
                          "most_hit": [{"subject": enrol_names[k], "false_alarms": v}
                                       for k, v in counts.most_common(3)]}
    out["false_alarm_subjects_at_fpir"] = hubs
    if with_det:
        out["det"] = det_curve(m_top, m_correct, n_top)
        # the strongest false alarms, for a human to check (LFW has some mislabelled people)
        order = np.argsort(-n_top)[:NO_FACE_EXAMPLES]
        out["top_nonmated"] = [{"probe": _rel(table.paths[nonmated_rows[i]], images_dir),
                                "matched": enrol_names[n_idx[i]], "score": float(n_top[i])}
                               for i in order if np.isfinite(n_top[i])]
    if keep_scores:
        out["_scores"] = {"mated": sm, "mated_labels": np.asarray(mated_labels), "nonmated": sn,
                          "mated_folds": folds_of(mated_rows), "nonmated_folds": folds_of(nonmated_rows)}
    return out


def _rates(m_top, m_correct, n_top, fpirs: Sequence[float] = FPIR_TARGETS) -> dict[str, Any]:
    fnir, thr, fa = {}, {}, {}
    for f in fpirs:
        t, alarms = threshold_at_fpir(n_top, f)
        key = fpir_key(f)
        thr[key], fa[key] = t, alarms
        fnir[key] = fnir_at(m_top, m_correct, t)
    return {"fnir_at_fpir": fnir, "threshold_at_fpir": thr, "false_alarms_at_fpir": fa}


# ---------------------------------------------------------------------------------------------
# Scorers: base (raw cosine) and improved (cohort-normalised, cross-fitted by identity fold)
# ---------------------------------------------------------------------------------------------

MISSING_SCORE = -1e9      # a pair with a faceless image under a normalised score ("different")
MIN_COHORT = 20           # fewer background faces per fold than this: no improved pipeline


def identity_folds(identities: dict[str, list[Path]], pairs: PairsFile) -> dict[str, int]:
    """Identity -> fold (0-based): the pairs file's fold for identities that appear in it (LFW's
    View-2 folds are identity-disjoint), else a stable hash of the name over as many folds.
    Everything fitted for the improved pipeline's fold f uses only identities of other folds."""
    n = max(2, pairs.folds)
    fold: dict[str, int] = {}
    for p in pairs.pairs:
        for q in (p.a, p.b):
            fold.setdefault(q.parent.name, p.fold)
    for name in identities:
        if name not in fold:
            fold[name] = int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16) % n
    return fold


def cohort_rows(table: EmbeddingTable, identities: dict[str, list[Path]], exclude_fold: int | None,
                fold_of: dict[str, int]) -> np.ndarray:
    """Rows of usable images of single-image identities (on no watchlist of this protocol) outside
    ``exclude_fold``: the background cohort of that fold's model."""
    ok = table.ok
    return np.array([table.index[p] for n, ps in identities.items() if len(ps) == 1
                     and fold_of.get(n) != exclude_fold for p in ps if ok[table.index[p]]], int)


class EvalScorer:
    """Scores probes against a gallery as one pipeline does, with the unit's Matcher:
    ``models`` None = raw cosine; else a ScoreModel per identity fold (the probe's fold picks
    the model; cross-fitting), or the same model for every fold (the shipped one)."""

    def __init__(self, name: str, models: dict[int, Any] | None, note: str = ""):
        self.name, self.models, self.note = name, models, note
        self.fixed_calibration = None   # the shipped calibration, for the policy check of the shipped model

    @classmethod
    def base(cls) -> "EvalScorer":
        return cls("base", None, "raw cosine, best template")

    def model(self, fold: int):
        return self.models[fold] if fold in self.models else self.models[min(self.models)]

    def matrix(self, probes: np.ndarray, folds: np.ndarray, gallery: Sequence[np.ndarray],
               templates: str = "fuse") -> np.ndarray:
        """(M, S) float64 statistics of probes (rows; NaN rows = no face -> -inf) against S
        subjects given as (m_i, D) template arrays. ``templates``: 'fuse' (one fused template,
        what the unit does with a score model) or 'max' (best single template)."""
        m, s = len(probes), len(gallery)
        out = np.full((m, s), -np.inf)
        have = np.isfinite(probes).all(axis=1)
        if not have.any():
            return out
        if templates == "fuse":
            rows = np.stack([g[0] if len(g) == 1 else fuse_embeddings(g) for g in gallery])
            ids = np.arange(s)
        else:
            rows = np.concatenate(list(gallery))
            ids = np.repeat(np.arange(s), [len(g) for g in gallery])
        # distinct row ids: the Matcher scores every row; 'max' reduces per subject below
        wl = Watchlist(rows, [str(i) for i in range(len(rows))], ["wanted"] * len(rows))
        fold_list = [None] if self.models is None else sorted(set(int(f) for f in folds[have]))
        for f in fold_list:
            sel = have if f is None else have & (folds == f)
            matcher = Matcher(wl, {"wanted": 0.0}, scorer=None if f is None else self.model(f))
            st = matcher.statistics(probes[sel].astype(np.float32)).astype(np.float64)
            if templates == "fuse":
                out[sel] = st
            else:
                red = np.full((st.shape[0], s), -np.inf)
                np.maximum.at(red.T, ids, st.T)
                out[sel] = red
        return out


def fit_crossfit_models(table: EmbeddingTable, identities: dict[str, list[Path]],
                        fold_of: dict[str, int],
                        top_fraction: float | None = None) -> tuple[dict[int, Any] | None, str]:
    """A ScoreModel per identity fold, its cohort drawn from the other folds' single-image
    identities; (None, why) when a fold's cohort would be too small."""
    frac = DEFAULT_TOP_FRACTION if top_fraction is None else top_fraction
    models = {}
    for f in sorted(set(fold_of.values())):
        rows = cohort_rows(table, identities, f, fold_of)
        if len(rows) < MIN_COHORT:
            return None, (f"fold {f + 1}: only {len(rows)} background faces (single-image identities of "
                          f"the other folds); the improved pipeline needs at least {MIN_COHORT}")
        models[f] = fit_score_model(table.embeddings[rows], frac)
    return models, ""


# ---------------------------------------------------------------------------------------------
# Track protocol (K images of one identity fused into one probe) and multi-image enrolment
# ---------------------------------------------------------------------------------------------

def _groups(rows: Sequence[int], k: int) -> list[list[int]]:
    """Consecutive disjoint groups of k (a remainder shorter than k is left out)."""
    return [list(rows[i:i + k]) for i in range(0, len(rows) - k + 1, k)]


def track_identification(table: EmbeddingTable, identities: dict[str, list[Path]], names: list[str],
                         k: int, scorer: "EvalScorer | None" = None, fold_of: dict[str, int] | None = None,
                         fpirs: Sequence[float] = FPIR_TARGETS, enrol_images: int = 1,
                         templates: str = "fuse") -> dict[str, Any]:
    """Open-set figures when every probe is K images of one identity fused with
    :func:`edge.recognition.fusion.fuse_embeddings` weighted by face quality (what the live tracker does
    with a track's frames).

    Watchlist: as :func:`identification` (first usable image of each identity in ``names``);
    with ``enrol_images`` M > 1, the identities of ``names`` with at least M + K usable images,
    each enrolled with its first M (``templates``: 'fuse' them into one, what the unit does with
    a score model, or 'max', the best single template, what it did before).
    Mated probes: each listed identity's other usable images, in order, in disjoint groups of
    K. Non-mated probes: every identity's usable images in disjoint groups of K - unlisted
    identities against the whole list, listed ones against the list without their own entry
    (leave-one-out: at N = all every identity with >= 2 images is listed, so non-mated tracks
    of K > 1 images can only come from them). At K = 1 the non-mated probes are every usable
    image in the folder."""
    scorer = scorer or EvalScorer.base()
    ok = table.ok
    m_enrol = max(1, int(enrol_images))
    listed = {}
    enrol_rows: list[list[int]] = []
    for name in names:
        usable = [table.index[p] for p in identities[name] if ok[table.index[p]]]
        if usable and (m_enrol == 1 or len(usable) >= m_enrol + k):
            listed[name] = len(enrol_rows)
            enrol_rows.append(usable[:m_enrol])
    mated, nonmated = [], []   # (rows, label or own index or -1, identity)
    for name, ps in identities.items():
        usable = [table.index[p] for p in ps if ok[table.index[p]]]
        if name in listed:
            lab = listed[name]
            mated += [(g, lab, name) for g in _groups([r for r in usable if r not in enrol_rows[lab]], k)]
            nonmated += [(g, lab, name) for g in _groups(usable, k)]
        else:
            nonmated += [(g, -1, name) for g in _groups(usable, k)]
    out: dict[str, Any] = {"track_size": k, "enrol_images": m_enrol, "templates": templates,
                           "n_watchlist": len(enrol_rows), "n_mated": len(mated),
                           "n_nonmated": len(nonmated),
                           "n_nonmated_identities": len({n for _, _, n in nonmated})}
    if not enrol_rows or not mated or not nonmated:
        out["error"] = f"not enough identities with {k + 1}+ usable images for tracks of {k}"
        return out
    w = table.weights if table.weights is not None else np.ones(len(table.paths))

    def fused(groups):
        return np.stack([fuse_embeddings(table.embeddings[g], np.maximum(w[g], 1e-3)) for g, _, _ in groups])

    def folds(groups):
        return np.array([fold_of.get(n, 0) if fold_of else 0 for _, _, n in groups], int)

    gallery = [table.embeddings[rows] for rows in enrol_rows]
    sm = scorer.matrix(fused(mated), folds(mated), gallery, templates)
    sn = scorer.matrix(fused(nonmated), folds(nonmated), gallery, templates)
    own = np.array([lab for _, lab, _ in nonmated])
    loo = np.flatnonzero(own >= 0)
    sn[loo, own[loo]] = -np.inf
    labels = np.array([lab for _, lab, _ in mated])
    m_idx, m_top = np.argmax(sm, axis=1), sm.max(axis=1)
    m_correct = m_idx == labels
    n_top = sn.max(axis=1)
    out["rank1"] = float(np.mean(m_correct))
    out["n_nonmated_leave_one_out"] = int(loo.size)
    out.update(_rates(m_top, m_correct, n_top, fpirs))
    who = {}
    for f in fpirs:
        t = out["threshold_at_fpir"][fpir_key(f)]
        who[fpir_key(f)] = len({nonmated[i][2] for i in np.flatnonzero(n_top >= t)})
    out["false_alarm_identities_at_fpir"] = who
    out["det"] = det_curve(m_top, m_correct, n_top)
    return out


ENROL_SIZES = (1, 2, 3)
#: (enrolment photos M, track size K) reported by the study of multi-photo enrolment with tracks
ENROL_TRACKS = ((2, 1), (2, 3))


def enrolment_study(table: EmbeddingTable, identities: dict[str, list[Path]], names: list[str],
                    scorer: "EvalScorer | None" = None, fold_of: dict[str, int] | None = None,
                    sizes: Sequence[int] = ENROL_SIZES, fpirs: Sequence[float] = FPIR_TARGETS) -> dict[str, Any]:
    """Several enrolment images per subject: the first min(M, n - 1) usable images of each
    listed identity are its templates, either fused into one (``fuse``) or kept apart with the
    best one scoring (``max``). The mated probes are the same for every M: each identity's
    usable images from position min(max(sizes), n - 1) on. Non-mated: single-image identities."""
    scorer = scorer or EvalScorer.base()
    ok = table.ok
    mmax = max(sizes)
    templates = {m: [] for m in sizes}
    probes, labels, pfold = [], [], []
    for name in names:
        usable = [table.index[p] for p in identities[name] if ok[table.index[p]]]
        if len(usable) < 2:
            continue
        cut = min(mmax, len(usable) - 1)
        lab = len(templates[sizes[0]])
        for m in sizes:
            templates[m].append(table.embeddings[usable[:min(m, cut)]])
        for r in usable[cut:]:
            probes.append(r)
            labels.append(lab)
            pfold.append(fold_of.get(name, 0) if fold_of else 0)
    nonmated = [table.index[p] for n, ps in identities.items() if len(ps) == 1 for p in ps]
    out: dict[str, Any] = {"n_watchlist": len(templates[sizes[0]]), "n_mated": len(probes),
                           "n_nonmated": len(nonmated),
                           "n_subjects_with": {str(m): int(sum(len(t) >= m for t in templates[m])) for m in sizes}}
    if not probes or not nonmated:
        out["error"] = "not enough identities"
        return out
    nfold = np.array([fold_of.get(table.paths[r].parent.name, 0) if fold_of else 0 for r in nonmated], int)
    labels = np.asarray(labels)
    for m in sizes:
        for mode in ("fuse", "max"):
            if m == 1 and mode == "max":
                continue
            sm = scorer.matrix(table.embeddings[probes], np.asarray(pfold), templates[m], mode)
            sn = scorer.matrix(table.embeddings[nonmated], nfold, templates[m], mode)
            m_top, m_correct = sm.max(axis=1), np.argmax(sm, axis=1) == labels
            r = {"rank1": float(np.mean(m_correct))}
            r.update(_rates(m_top, m_correct, sn.max(axis=1), fpirs))
            out[f"M={m} {mode}" if m > 1 else "M=1"] = r
    return out


def impostor_scores(ident: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, folds) of every single non-mated comparison kept by :func:`identification`
    (``keep_scores``): non-mated probes against every subject, mated probes against every
    subject but their own."""
    sc = ident["_scores"]
    sn, sm, lab = sc["nonmated"], sc["mated"], sc["mated_labels"]
    keep_n = np.isfinite(sn[:, 0])
    keep_m = np.isfinite(sm[:, 0])
    mask = np.ones(sm.shape, bool)
    mask[np.arange(len(sm)), lab] = False
    mask &= keep_m[:, None]
    vals = np.concatenate([sn[keep_n].ravel(), sm[mask]])
    folds = np.concatenate([np.repeat(sc["nonmated_folds"][keep_n], sn.shape[1]),
                            np.broadcast_to(sc["mated_folds"][:, None], sm.shape)[mask]])
    return vals, folds


def policy_check(ident: dict[str, Any], fixed_calibration=None,
                 fpirs: Sequence[float] = FPIR_TARGETS) -> dict[str, Any]:
    """What the threshold policy delivers: for each target FPIR, the threshold that
    :class:`edge.matching.calibration.ThresholdPolicy` sets for this list size, from a calibration
    fitted on the other folds' non-mated comparisons (cross-fitted; or ``fixed_calibration``,
    the shipped one), and the FPIR and FNIR it then gives on this fold's probes, pooled."""
    sc = ident["_scores"]
    n_list = ident["n_watchlist"]
    vals, vfold = impostor_scores(ident)
    sm, sn, lab = sc["mated"], sc["nonmated"], sc["mated_labels"]
    m_top, m_correct = sm.max(axis=1), np.argmax(sm, axis=1) == lab
    n_top = sn.max(axis=1)
    out: dict[str, Any] = {"watchlist_size": n_list, "calibration": "shipped" if fixed_calibration else "cross-fitted"}
    for target in fpirs:
        hit_m = np.zeros(len(m_top), bool)
        alarm = np.zeros(len(n_top), bool)
        thresholds = []
        for f in np.unique(np.concatenate([sc["mated_folds"], sc["nonmated_folds"]])):
            cal = fixed_calibration or fit_calibration(vals[vfold != f])
            pol = ThresholdPolicy(cal, target, n_list)
            t = cal.t_for_score(pol.threshold)
            thresholds.append(pol.threshold)
            fm, fn = sc["mated_folds"] == f, sc["nonmated_folds"] == f
            hit_m[fm] = m_correct[fm] & (m_top[fm] >= t)
            alarm[fn] = n_top[fn] >= t
        out[fpir_key(target)] = {"threshold": float(np.mean(thresholds)), "supported": bool(pol.supported),
                              "fpir": float(alarm.mean()), "false_alarms": int(alarm.sum()),
                              "n_nonmated": int(len(alarm)), "fnir": float(1.0 - hit_m.mean())}
    return out


def fpir_key(f: float) -> str:
    return f"{f:g}"


def _rel(p: Path, root: Path) -> str:
    try:
        return str(Path(p).relative_to(root))
    except ValueError:
        return str(p)


def no_face_summary(table: EmbeddingTable, images_dir: Path) -> dict[str, Any]:
    bad = [(p, r) for p, r in zip(table.paths, table.reasons) if r is not None]
    return {"count": len(bad), "of": len(table.paths), "rate": len(bad) / max(1, len(table.paths)),
            "reasons": dict(Counter(r for _, r in bad).most_common()),
            "examples": [{"path": _rel(p, images_dir), "reason": r} for p, r in bad[:NO_FACE_EXAMPLES]]}


def score_pipeline(table: EmbeddingTable, pairs: PairsFile, identities: dict[str, list[Path]],
                   images_dir: Path, seed: int, scorer: EvalScorer | None = None,
                   fold_of: dict[str, int] | None = None, track_sizes: Sequence[int] = (),
                   studies: bool = False) -> dict[str, Any]:
    """Pairs, identification per watchlist size, DET (N = all), the track protocol for each of
    ``track_sizes`` (N = all), with ``studies`` the multi-image enrolment study and (for a
    normalised scorer) the threshold-policy check; no_face and timings."""
    scorer = scorer or EvalScorer.base()
    report: dict[str, Any] = {"pipeline": scorer.name}
    if scorer.note:
        report["scoring"] = scorer.note
    if len({p.fold for p in pairs.pairs}) >= 2:
        s = pair_scores(table, pairs.pairs, scorer, fold_of)
        cv = cross_validate(s, [p.same for p in pairs.pairs], [p.fold for p in pairs.pairs])
        cv["n_pairs"] = len(pairs.pairs)
        cv["n_pairs_missing_face"] = int(np.count_nonzero(s == (-1.0 if scorer.models is None else MISSING_SCORE)))
        if pairs.dropped:
            cv["n_pairs_dropped_by_limit"] = pairs.dropped
        report["pairs"] = cv
    else:
        report["pairs"] = {"error": "fewer than 2 folds with pairs left after --limit", "n_pairs": len(pairs.pairs),
                           "n_pairs_dropped_by_limit": pairs.dropped}
    ident: dict[str, Any] = {}
    skipped = {}
    all_names = None
    for size in WATCHLIST_SIZES:
        names = sample_watchlist(identities, size, seed)
        if names is None:
            skipped[str(size)] = "fewer identities with >= 2 images than this watchlist size"
            continue
        r = identification(table, identities, names, images_dir, with_det=size == "all", scorer=scorer,
                           fold_of=fold_of, keep_scores=size == "all" and studies and scorer.models is not None)
        if size == "all":
            all_names = names
            if "det" in r:
                report["det"] = {"watchlist": "all", **r.pop("det")}
        ident[str(size)] = r
    if skipped:
        ident["skipped"] = skipped
    report["identification"] = ident
    if all_names and track_sizes:
        report["track"] = {str(k): track_identification(table, identities, all_names, k, scorer, fold_of)
                           for k in track_sizes}
    if all_names and studies:
        report["enrolment"] = enrolment_study(table, identities, all_names, scorer, fold_of)
        # two enrolment photos per listed person, single images and tracks: the unit's way of
        # using them for this scorer (normalised: fused; raw cosine: the best template, as before)
        mode = "max" if scorer.models is None else "fuse"
        report["enrolment_tracks"] = {
            f"K={k} M={m}": track_identification(table, identities, all_names, k, scorer, fold_of,
                                                 enrol_images=m, templates=mode)
            for m, k in ENROL_TRACKS}
    full = ident.get("all", {})
    if "_scores" in full:
        report["_impostor"] = impostor_scores(full)
        try:
            report["policy_check"] = policy_check(full, getattr(scorer, "fixed_calibration", None))
        except InputError as exc:
            report["policy_check"] = {"error": str(exc)}
        del full["_scores"]
    report["no_face"] = no_face_summary(table, images_dir)
    report["seconds_per_image"] = {k: float(v.mean()) for k, v in table.seconds.items()}
    report["seconds_per_image"]["n_images"] = len(table.paths)
    report["wall_seconds"] = table.wall_seconds
    return report


def compare(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Ours minus the reference: accuracy in percentage points, FNIR and rank1 as fractions."""
    out: dict[str, Any] = {"sign": "ours minus reference (negative FNIR difference = ours misses less)"}
    a, b = ours.get("pairs", {}), ref.get("pairs", {})
    if "accuracy_mean" in a and "accuracy_mean" in b:
        out["pairs_accuracy_points"] = 100.0 * (a["accuracy_mean"] - b["accuracy_mean"])
    ident = {}
    for size, r in ours.get("identification", {}).items():
        q = ref.get("identification", {}).get(size)
        if not isinstance(q, dict) or "fnir_at_fpir" not in r or "fnir_at_fpir" not in q:
            continue
        ident[size] = {"rank1": r["rank1"] - q["rank1"],
                       "fnir_at_fpir": {k: r["fnir_at_fpir"][k] - q["fnir_at_fpir"][k] for k in r["fnir_at_fpir"]}}
    out["identification"] = ident
    track = {}
    for k, r in ours.get("track", {}).items():
        q = ref.get("track", {}).get(k)
        if isinstance(q, dict) and "fnir_at_fpir" in r and "fnir_at_fpir" in q:
            track[k] = {"fnir_at_fpir": {f: r["fnir_at_fpir"][f] - q["fnir_at_fpir"][f] for f in r["fnir_at_fpir"]}}
    if track:
        out["track"] = track
    out["no_face"] = ours["no_face"]["count"] - ref["no_face"]["count"]
    return out
