"""``edge-lfr eval lfw``: accuracy of the on-device pipeline on an LFW-layout folder.

Two protocols on the same embeddings (each image is embedded once and reused):

* **Pair verification** (LFW View 2): cosine score per pair, a threshold chosen to maximise
  accuracy on the other folds and tested on the held-out fold (10-fold in LFW; the file's
  header says how many). A pair with an image that has no usable face scores -1, i.e. it is
  decided "different".
* **Open-set identification** (ISO/IEC 19795-1, NIST FRTE 1:N): the watchlist is the first
  image of each identity that has at least two images (N = 100, 500 sampled with ``--seed``,
  and all of them); mated probes are those identities' other images; non-mated probes are
  every image of the identities that have exactly one. For a target false-positive
  identification rate (FPIR) the threshold is the smallest score at which at most that
  fraction of non-mated probes raises an alarm; the false-negative identification rate
  (FNIR) is the fraction of mated probes whose top-1 candidate is wrong or below it.

Per image the face used is the detection whose box centre is nearest the image centre; an
image without a face, or whose face fails the quality gate, has no embedding: a mated probe
without one is a miss, a non-mated probe without one raises no alarm, and an enrolment image
without one is replaced by the identity's next image that has one (the report says so).

**Track protocol** (``--track-size K ...``, default 1 3 5; N = all): every probe fuses K usable
images of one identity with :func:`edge.recognition.fusion.fuse_embeddings` weighted by face quality, as
the live tracker fuses a track's frames. Mated probes: each listed identity's other images in
disjoint groups of K; non-mated probes: every identity's images in disjoint groups of K,
listed identities searched against the list without their own entry (leave-one-out: at
N = all every identity with two or more images is listed). **Multi-image enrolment**: the
first min(M, n - 1) images of each listed identity, fused or kept apart (best template),
probed with the same images for every M.

**Pipelines** (``--pipeline base|improved|both``): *base* is the raw cosine; *improved* is the
cohort-normalised score of :mod:`edge.matching.normalise` with fused templates, **cross-fitted**:
identities are split into the pairs file's folds (the others by a hash of the name), and every
probe, pair and template of fold f is scored by a model whose background cohort holds only
single-image identities of the other folds. No listed identity is in any cohort, so no
comparison is scored by a model fitted on either of its faces. The policy check sets the
threshold of :mod:`edge.matching.calibration` for each target FPIR from a calibration fitted on the
other folds and reports the FPIR and FNIR it delivers. When the dataset shares no face with the
shipped model's cohort, the shipped model is also scored as it is (a held-out test).

``--reference dlib`` runs dlib's own float pipeline (HOG detector, 5-point landmarks,
``get_face_chip``, ResNet descriptor) on the same images in the same run and scores it with
the same protocol, so the two sets of figures are directly comparable.

The protocol functions (:func:`best_threshold`, :func:`cross_validate`,
:func:`threshold_at_fpir`, :func:`fnir_at`, :func:`det_curve`) are pure numpy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edge.errors import InputError, ModelError
from edge.progress import Progress

log = logging.getLogger(__name__)

FPIR_TARGETS = (0.01, 0.001)
WATCHLIST_SIZES = (100, 500, "all")
DET_POINTS = 300
NO_FACE_EXAMPLES = 10
DLIB_WORKERS = 2
IMAGE_NAME = re.compile(r"^(?P<name>.+)_(?P<num>\d{4})\.(?:jpe?g|png)$", re.IGNORECASE)
OUR_STAGES = ("decode", "detect", "landmarks", "align", "quality", "embed", "total")
DLIB_STAGES = ("decode", "detect", "landmarks", "align", "embed", "total")


# ---------------------------------------------------------------------------------------------
# Dataset and pairs file
# ---------------------------------------------------------------------------------------------

def scan_lfw(root: str | os.PathLike, limit: int = 0) -> dict[str, list[Path]]:
    """Identities of an LFW-layout folder ``root/<Name>/<Name>_NNNN.jpg``: sorted names ->
    sorted image paths. ``limit`` > 0 keeps only the first ``limit`` identities."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: images folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: is not a folder (expected an LFW-layout folder DIR/<Name>/<Name>_NNNN.jpg)")
    if limit < 0:
        raise InputError(f"--limit must be >= 0, got {limit}")
    identities: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(f for f in d.iterdir()
                        if (m := IMAGE_NAME.match(f.name)) and m.group("name") == d.name and f.is_file())
        if images:
            identities[d.name] = images
    if not identities:
        raise InputError(f"{root}: no identity folders with images named <Name>/<Name>_NNNN.jpg")
    if limit:
        identities = dict(list(identities.items())[:limit])
    return identities


@dataclass(frozen=True)
class Pair:
    a: Path
    b: Path
    same: bool
    fold: int   # 0-based
    line: int   # 1-based line number in the pairs file


@dataclass
class PairsFile:
    folds: int
    per_class: int
    pairs: list[Pair]
    dropped: int = 0  # pairs left out because --limit excluded one of their identities


def _positive_int(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) > 0 else None


def parse_pairs(path: str | os.PathLike, images_dir: str | os.PathLike,
                keep: set[str] | None = None) -> PairsFile:
    """Read and check an LFW View-2 pairs file: header ``<folds> <pairs-per-class>``, then per
    fold ``pairs-per-class`` same-person lines ``name i j`` followed by as many
    different-person lines ``name1 i name2 j``. Every image must exist as
    ``images_dir/name/name_{i:04d}.jpg``. Raises InputError naming the file and line.

    ``keep``: when given, pairs naming an identity outside it are dropped (counted)."""
    path, images_dir = Path(path), Path(images_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: pairs file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a pairs file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read pairs file: {exc}") from None
    lines = [(n, ln.split()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise InputError(f"{path}: pairs file is empty")
    n0, header = lines[0]
    if len(header) != 2 or _positive_int(header[0]) is None or _positive_int(header[1]) is None:
        raise InputError(f"{path}:{n0}: header must be '<folds> <pairs-per-class>' (two positive "
                         f"integers, e.g. '10 300'), got {' '.join(header)!r}")
    folds, per_class = int(header[0]), int(header[1])
    if folds < 2:
        raise InputError(f"{path}:{n0}: the header announces {folds} fold; cross-validated thresholds "
                         "need at least 2 folds")
    body = lines[1:]
    expected = folds * 2 * per_class
    if len(body) < expected:
        raise InputError(f"{path}: header announces {folds} folds x 2 x {per_class} = {expected} pair "
                         f"lines, but the file has only {len(body)}")
    if len(body) > expected:
        raise InputError(f"{path}:{body[expected][0]}: unexpected line after the {expected} pair lines "
                         f"announced by the header ({folds} folds x 2 x {per_class})")
    pairs: list[Pair] = []
    missing: list[tuple[int, Path]] = []
    dropped = 0
    for k, (lineno, f) in enumerate(body):
        fold, within = divmod(k, 2 * per_class)
        same = within < per_class
        where = f"{path}:{lineno}"
        if same:
            if len(f) != 3 or _positive_int(f[1]) is None or _positive_int(f[2]) is None:
                raise InputError(f"{where}: expected a same-person line 'name i j' (fold {fold + 1}, "
                                 f"pair {within + 1} of {per_class}), got {' '.join(f)!r}")
            names, idx = (f[0], f[0]), (int(f[1]), int(f[2]))
        else:
            if len(f) != 4 or _positive_int(f[1]) is None or _positive_int(f[3]) is None:
                raise InputError(f"{where}: expected a different-person line 'name1 i name2 j' (fold "
                                 f"{fold + 1}, pair {within - per_class + 1} of {per_class}), got {' '.join(f)!r}")
            names, idx = (f[0], f[2]), (int(f[1]), int(f[3]))
        paths = [images_dir / n / f"{n}_{i:04d}.jpg" for n, i in zip(names, idx)]
        for p in paths:
            if not p.is_file():
                missing.append((lineno, p))
        if keep is not None and not (names[0] in keep and names[1] in keep):
            dropped += 1
            continue
        pairs.append(Pair(paths[0], paths[1], same, fold, lineno))
    if missing:
        lineno, p = missing[0]
        more = f" (and {len(missing) - 1} more missing images)" if len(missing) > 1 else ""
        raise InputError(f"{path}:{lineno}: image {p} not found{more}; is --images the folder the pairs file belongs to?")
    return PairsFile(folds, per_class, pairs, dropped)


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
# Embedding passes
# ---------------------------------------------------------------------------------------------

@dataclass
class EmbeddingTable:
    """One pipeline's result for every image: embedding (NaN row when missing), reason for a
    missing one, and per-stage seconds."""

    paths: list[Path]
    embeddings: np.ndarray          # (n, D) float32
    reasons: list[str | None]       # None = usable
    seconds: dict[str, np.ndarray]  # stage -> (n,) seconds
    wall_seconds: float = 0.0
    ungated: "EmbeddingTable | None" = None  # same images with the quality gate switched off
    # (n,) fusion weight of each image's face from its measured quality (edge.appliance.track.quality_weight,
    # what the live tracker weights a track's embeddings by); None = all equal
    weights: np.ndarray | None = None
    index: dict[Path, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.index = {p: i for i, p in enumerate(self.paths)}

    @property
    def ok(self) -> np.ndarray:
        return np.array([r is None for r in self.reasons], bool)


def nearest_centre(boxes: Iterable[Sequence[float]], width: int, height: int) -> int:
    """Index of the box whose centre is nearest the image centre."""
    b = np.asarray(list(boxes), np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return int(np.argmin((cx - width / 2) ** 2 + (cy - height / 2) ** 2))


def embed_ours(rec, paths: Sequence[Path], progress: Progress | None = None) -> EmbeddingTable:
    """Run the Recognizer on each image; embed only the face nearest the centre.

    The returned table's ``ungated`` holds the same figures with the quality gate off (faces
    the gate refuses are embedded too, untimed), to tell the gate's cost from the model's."""
    from edge.recognition.images import load_image
    try:
        from edge.appliance.track import quality_weight
    except ImportError:  # pragma: no cover - the tracker ships with the package
        def quality_weight(_q):
            return 1.0
    limits = rec.config.limits
    n = len(paths)
    emb = np.full((n, rec.embedder.dim), np.nan, np.float32)
    emb_all = np.full((n, rec.embedder.dim), np.nan, np.float32)
    reasons: list[str | None] = [None] * n
    reasons_all: list[str | None] = [None] * n
    weights = np.ones(n)
    secs = {s: np.zeros(n) for s in OUR_STAGES}
    wall0 = time.perf_counter()
    for i, p in enumerate(paths):
        t0 = time.perf_counter()
        try:
            img = load_image(p, limits.max_image_pixels, limits.max_image_bytes)
        except InputError as exc:
            log.warning("%s", exc)
            reasons[i] = reasons_all[i] = "unreadable"
            img = None
        t1 = time.perf_counter()
        secs["decode"][i] = t1 - t0
        if img is not None:
            before = {k: rec.stage_seconds.get(k, 0.0) for k in ("detect", "landmarks", "align", "quality")}
            faces = rec.faces(img, embed=False)
            for k in before:
                secs[k][i] = rec.stage_seconds.get(k, 0.0) - before[k]
            # the Recognizer's "align" includes the landmark refinement it also reports alone
            secs["align"][i] = max(0.0, secs["align"][i] - secs["landmarks"][i])
            face = None
            if not faces:
                reasons[i] = reasons_all[i] = "no_detection"
            else:
                face = faces[nearest_centre([f.detection.box for f in faces], img.shape[1], img.shape[0])]
                weights[i] = quality_weight(face.quality)
                if not face.quality.passed:
                    reasons[i] = face.quality.reason
                else:
                    t2 = time.perf_counter()
                    emb[i] = emb_all[i] = rec.embedder.embed(face.chip)[0]
                    secs["embed"][i] = time.perf_counter() - t2
        secs["total"][i] = time.perf_counter() - t0
        if img is not None and face is not None and not face.quality.passed:
            emb_all[i] = rec.embedder.embed(face.chip)[0]
        if progress:
            progress.update()
    wall = time.perf_counter() - wall0
    ungated = EmbeddingTable(list(paths), emb_all, reasons_all, secs, wall, weights=weights)
    return EmbeddingTable(list(paths), emb, reasons, secs, wall, ungated, weights=weights)


# -- dlib reference (runs in worker processes) -------------------------------------------------

_DLIB: tuple | None = None


def dlib_available() -> tuple[bool, str]:
    """(True, dlib version) when dlib and face_recognition_models import, else (False, why)."""
    try:
        import dlib
        import face_recognition_models  # noqa: F401
    except ImportError as exc:
        return False, str(exc)
    return True, getattr(dlib, "__version__", "?")


def _dlib_init() -> None:
    global _DLIB
    import dlib
    import face_recognition_models as frm
    _DLIB = (dlib,
             dlib.get_frontal_face_detector(),
             dlib.shape_predictor(frm.pose_predictor_five_point_model_location()),
             dlib.face_recognition_model_v1(frm.face_recognition_model_location()))


def dlib_embed_one(path: str | os.PathLike) -> tuple[np.ndarray | None, str | None, dict[str, float]]:
    """dlib's float pipeline on one image: (unit (128,) descriptor or None, reason, seconds)."""
    from edge.recognition.images import load_image
    if _DLIB is None:
        _dlib_init()
    dlib, detector, predictor, facerec = _DLIB
    secs = dict.fromkeys(DLIB_STAGES, 0.0)
    t0 = time.perf_counter()
    vec, reason = None, None
    try:
        img = load_image(path)
    except InputError:
        img, reason = None, "unreadable"
    t1 = time.perf_counter()
    secs["decode"] = t1 - t0
    if img is not None:
        rects = list(detector(img, 1))
        t2 = time.perf_counter()
        secs["detect"] = t2 - t1
        if not rects:
            reason = "no_detection"
        else:
            r = rects[nearest_centre([(q.left(), q.top(), q.right(), q.bottom()) for q in rects],
                                     img.shape[1], img.shape[0])]
            shape = predictor(img, r)
            t3 = time.perf_counter()
            chip = dlib.get_face_chip(img, shape, size=150, padding=0.25)
            t4 = time.perf_counter()
            v = np.asarray(facerec.compute_face_descriptor(chip), np.float32)
            t5 = time.perf_counter()
            vec = v / max(float(np.linalg.norm(v)), 1e-12)
            secs.update(landmarks=t3 - t2, align=t4 - t3, embed=t5 - t4)
    secs["total"] = time.perf_counter() - t0
    return vec, reason, secs


def embed_dlib(paths: Sequence[Path], workers: int = DLIB_WORKERS,
               progress: Progress | None = None) -> EmbeddingTable:
    """dlib's pipeline on every image with a pool of ``workers`` processes (spawned, so the
    parent's interpreter threads are not forked)."""
    import multiprocessing as mp
    n = len(paths)
    emb = np.full((n, 128), np.nan, np.float32)
    reasons: list[str | None] = [None] * n
    secs = {s: np.zeros(n) for s in DLIB_STAGES}
    wall0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_dlib_init) as pool:
        for i, (vec, reason, s) in enumerate(pool.imap(dlib_embed_one, [str(p) for p in paths], chunksize=4)):
            if vec is not None:
                emb[i] = vec
            reasons[i] = reason
            for k, v in s.items():
                secs[k][i] = v
            if progress:
                progress.update()
    return EmbeddingTable(list(paths), emb, reasons, secs, time.perf_counter() - wall0)


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
        hit = n_idx[n_top >= out["threshold_at_fpir"][_fkey(f)]]
        counts = Counter(int(k) for k in hit)
        hubs[_fkey(f)] = {"distinct_subjects": len(counts), "max_per_subject": max(counts.values(), default=0),
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
        key = _fkey(f)
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
        from edge.recognition.fusion import fuse_embeddings
        from edge.matching.match import Matcher, Watchlist
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
    from edge.matching.normalise import DEFAULT_TOP_FRACTION, fit_score_model
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
    from edge.recognition.fusion import fuse_embeddings
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
        t = out["threshold_at_fpir"][_fkey(f)]
        who[_fkey(f)] = len({nonmated[i][2] for i in np.flatnonzero(n_top >= t)})
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
    from edge.matching.calibration import ThresholdPolicy, fit_calibration
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
        out[_fkey(target)] = {"threshold": float(np.mean(thresholds)), "supported": bool(pol.supported),
                              "fpir": float(alarm.mean()), "false_alarms": int(alarm.sum()),
                              "n_nonmated": int(len(alarm)), "fnir": float(1.0 - hit_m.mean())}
    return out


def _fkey(f: float) -> str:
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


# ---------------------------------------------------------------------------------------------
# Output: plot and summary table
# ---------------------------------------------------------------------------------------------

def _curve_label(name: str, rep: dict[str, Any]) -> str:
    parts = [name]
    p = rep.get("pairs", {})
    if "accuracy_mean" in p:
        parts.append(f"pairs {100 * p['accuracy_mean']:.2f}%")
    r = rep.get("identification", {}).get("all", {})
    for k, v in r.get("fnir_at_fpir", {}).items():
        parts.append(f"FNIR {v:.3f} @ {k}")
    return "; ".join(parts)


def _det_axes(ax, curves: list[tuple[str, dict[str, Any], dict[str, Any]]], title: str) -> None:
    """One DET panel: curves = (label, det dict, figures dict with fnir_at_fpir) in order."""
    lo_x, lo_y = 1.0, 1.0
    styles = {}
    for label, det, fig, style in curves:
        x, y = np.asarray(det.get("fpir", []), float), np.asarray(det.get("fnir", []), float)
        keep = (x > 0) & (y > 0)
        if keep.any():
            lo_x, lo_y = min(lo_x, x[keep].min()), min(lo_y, y[keep].min())
        line, = ax.plot(x[keep], y[keep], drawstyle="steps-post", label=label, **style)
        for k, v in fig.get("fnir_at_fpir", {}).items():
            if v > 0:
                ax.plot([float(k)], [v], "o", ms=4, color=line.get_color())
        styles[label] = line
    for f in FPIR_TARGETS:
        ax.axvline(f, color="grey", ls=":", lw=0.8)
        ax.text(f, 0.98, f" FPIR {f:g}", rotation=90, va="top", ha="right", fontsize=7,
                color="grey", transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(max(1e-5, min(lo_x, min(FPIR_TARGETS)) / 2), 1.0)
    ax.set_ylim(max(1e-3, lo_y / 2), 1.0)
    ax.set_xlabel("FPIR (fraction of non-mated probes raising an alarm)")
    ax.set_ylabel("FNIR (fraction of mated probes missed)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower left")


def plot_det(path: Path, curves: list[tuple[str, dict[str, Any]]]) -> None:
    """DET curves (FNIR vs FPIR, log-log), watchlist N = all. Left: the open-set protocol, one
    curve per pipeline. Right (when any pipeline has the track protocol): tracks of K images,
    colour = K, solid = improved pipelines, dashed = base."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracks = [(n, r) for n, r in curves if r.get("track")]
    fig, axes = plt.subplots(1, 2 if tracks else 1, figsize=(14 if tracks else 8, 6), dpi=110, squeeze=False)
    title = "open-set identification (DET), watchlist N = all"
    left = []
    for name, rep in curves:
        r = rep.get("identification", {}).get("all", {})
        if "n_watchlist" in r:
            title = (f"open-set protocol: N = {r['n_watchlist']}, {r['n_mated']} mated / "
                     f"{r['n_nonmated']} non-mated probes (K = 1)")
        left.append((_curve_label(name, rep), rep.get("det") or {}, r,
                     {"lw": 1.2 if "gate off" in name else 1.8, "ls": "--" if name.startswith("base") else "-"}))
    _det_axes(axes[0][0], left, title)
    if tracks:
        colours = {}
        palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
        right = []
        for name, rep in tracks:
            for k, r in rep["track"].items():
                if "det" not in r:
                    continue
                c = colours.setdefault(k, palette[len(colours) % len(palette)])
                lab = (f"{name}, K={k}: " + ", ".join(f"FNIR {v:.3f} @ {f}" for f, v in r["fnir_at_fpir"].items()))
                right.append((lab, r["det"], r, {"color": c, "lw": 1.6,
                                                 "ls": "--" if name.startswith("base") else "-"}))
        any_r = next(iter(tracks[0][1]["track"].values()))
        _det_axes(axes[0][1], right, f"track protocol: each probe fuses K images of one person; N = "
                                     f"{any_r.get('n_watchlist', '?')}, non-mated by leave-one-out")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def summary_table(columns: list[tuple[str, dict[str, Any]]]) -> str:
    """A short side-by-side text table of the headline figures."""
    rows: list[tuple[str, list[str]]] = []

    def row(label, fn):
        vals = []
        for _, rep in columns:
            try:
                vals.append(fn(rep))
            except (KeyError, TypeError, IndexError):
                vals.append("-")
        rows.append((label, vals))

    row("pairs accuracy (mean ± sd)",
        lambda r: f"{100 * r['pairs']['accuracy_mean']:.2f}% ± {100 * r['pairs']['accuracy_std']:.2f}")
    row("pairs threshold (mean)", lambda r: f"{r['pairs']['threshold']:.3f}")
    sizes = [s for s in ("100", "500", "all") if any(s in rep.get("identification", {}) for _, rep in columns)]
    for s in sizes:
        row(f"N={s}: watchlist / mated / non-mated",
            lambda r, s=s: "{n_watchlist} / {n_mated} / {n_nonmated}".format(**r["identification"][s]))
        row(f"N={s}: rank-1", lambda r, s=s: f"{100 * r['identification'][s]['rank1']:.2f}%")
        for f in FPIR_TARGETS:
            k = _fkey(f)
            row(f"N={s}: FNIR @ FPIR {k}",
                lambda r, s=s, k=k: "{:.4f} (t={:.3f}, {} FA)".format(
                    r["identification"][s]["fnir_at_fpir"][k], r["identification"][s]["threshold_at_fpir"][k],
                    r["identification"][s]["false_alarms_at_fpir"][k]))
    ks = sorted({k for _, rep in columns for k in rep.get("track", {})}, key=int)
    for k in ks:
        row(f"track K={k}: mated / non-mated (ids)",
            lambda r, k=k: "{n_mated} / {n_nonmated} ({n_nonmated_identities})".format(**r["track"][k]))
        row(f"track K={k}: rank-1", lambda r, k=k: f"{100 * r['track'][k]['rank1']:.2f}%")
        for f in FPIR_TARGETS:
            fk = _fkey(f)
            row(f"track K={k}: FNIR @ FPIR {fk}",
                lambda r, k=k, fk=fk: "{:.4f} ({} FA, {} ids)".format(
                    r["track"][k]["fnir_at_fpir"][fk], r["track"][k]["false_alarms_at_fpir"][fk],
                    r["track"][k]["false_alarm_identities_at_fpir"][fk]))
    enrol_keys = []
    for _, rep in columns:
        for key in rep.get("enrolment", {}):
            if key.startswith("M=") and key not in enrol_keys:
                enrol_keys.append(key)
    for key in enrol_keys:
        row(f"enrol {key}: FNIR @ 0.01 / 0.001",
            lambda r, key=key: "{:.4f} / {:.4f}".format(r["enrolment"][key]["fnir_at_fpir"]["0.01"],
                                                     r["enrolment"][key]["fnir_at_fpir"]["0.001"]))
    et_keys = []
    for _, rep in columns:
        for key in rep.get("enrolment_tracks", {}):
            if key not in et_keys:
                et_keys.append(key)
    for key in et_keys:
        row(f"enrol+track {key}: N / mated / non-mated",
            lambda r, key=key: "{n_watchlist} / {n_mated} / {n_nonmated}".format(**r["enrolment_tracks"][key]))
        row(f"enrol+track {key}: FNIR @ 0.01 / 0.001",
            lambda r, key=key: "{:.4f} / {:.4f} ({})".format(r["enrolment_tracks"][key]["fnir_at_fpir"]["0.01"],
                                                          r["enrolment_tracks"][key]["fnir_at_fpir"]["0.001"],
                                                          r["enrolment_tracks"][key]["templates"]))
    for f in FPIR_TARGETS:
        fk = _fkey(f)
        row(f"policy: ask FPIR {fk} -> FPIR (FA) / FNIR",
            lambda r, fk=fk: "{:.4f} ({}) / {:.4f}".format(r["policy_check"][fk]["fpir"],
                                                         r["policy_check"][fk]["false_alarms"],
                                                         r["policy_check"][fk]["fnir"]))
    row("N=all: FA @ 0.01 on distinct subjects (max)",
        lambda r: "{distinct_subjects} ({max_per_subject})".format(
            **r["identification"]["all"]["false_alarm_subjects_at_fpir"]["0.01"]))
    row("no usable face", lambda r: f"{r['no_face']['count']} of {r['no_face']['of']}")
    reasons = sorted({k for _, rep in columns for k in rep.get("no_face", {}).get("reasons", {})})
    for reason in reasons:
        row(f"  {reason}", lambda r, reason=reason: str(r["no_face"]["reasons"].get(reason, 0)))
    order = ("decode", "detect", "landmarks", "align", "quality", "embed", "total")
    present = {k for _, rep in columns for k in rep.get("seconds_per_image", {}) if k != "n_images"}
    stages = [k for k in order if k in present] + sorted(present - set(order))
    for st in stages:
        row(f"ms/image {st}", lambda r, st=st: f"{1000 * r['seconds_per_image'][st]:.1f}")
    row("wall time", lambda r: f"{r['wall_seconds']:.0f} s")
    width = max(len(label) for label, _ in rows) + 2
    colw = [max(len(name), *(len(v[i]) for _, v in rows)) + 2 for i, (name, _) in enumerate(columns)]
    lines = [" " * width + "".join(name.rjust(w) for (name, _), w in zip(columns, colw))]
    for label, vals in rows:
        lines.append(label.ljust(width) + "".join(v.rjust(w) for v, w in zip(vals, colw)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------

def _prepare_output(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: {what} path is a folder; give a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{p}: cannot create the folder for the {what}: {exc}") from None
    if not os.access(p.parent, os.W_OK):
        raise InputError(f"{p.parent}: folder is not writable (for the {what})")
    return p


def _sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


TRACK_SIZES = (1, 3, 5)
PIPELINES = ("base", "improved", "both")


def add_lfw_arguments(parser) -> None:
    """The issue-8 options of ``edge-lfr eval lfw`` (the base options are in edge.cli.main)."""
    parser.add_argument("--pipeline", choices=PIPELINES, default="both",
                        help="base = raw cosine, single template; improved = cohort-normalised score "
                             "(cross-fitted by identity fold); both side by side (default)")
    parser.add_argument("--track-size", type=int, nargs="+", default=list(TRACK_SIZES), metavar="K",
                        help="track protocol: each probe fuses K images of one identity, as the live "
                             "tracker fuses a track's frames (default: 1 3 5)")
    parser.add_argument("--embeddings-cache", metavar="NPZ",
                        help="reuse the per-image embeddings saved here by an earlier run with the same "
                             "images, model and configuration (written when absent or stale)")


def _standalone_parser():
    """``python -m edge.tools.evaluation.command lfw ...``: the same options as ``edge-lfr eval lfw``."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m edge.tools.evaluation.command")
    sub = p.add_subparsers(dest="dataset", required=True)
    e = sub.add_parser("lfw")
    e.add_argument("--images", required=True)
    e.add_argument("--pairs", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--plot")
    e.add_argument("--reference", choices=["dlib"])
    e.add_argument("--config")
    e.add_argument("--limit", type=int, default=0)
    e.add_argument("--seed", type=int, default=0)
    add_lfw_arguments(e)
    return p


def _table_meta(rec, config) -> dict[str, Any]:
    """What an embedding depends on: the models and the detector / quality / embed options."""
    d = config.as_dict()
    parts = {k: d[k] for k in ("detector", "quality", "embed") if k in d}
    near = rec.detector.near.model.sha256 if getattr(rec.detector, "near", None) is not None else ""
    return {"model_sha256": rec.model_sha256, "detector_sha256": rec.detector.model.sha256, "near_sha256": near,
            "config": hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()}


def save_table(path: str | os.PathLike, table: EmbeddingTable, meta: dict[str, Any]) -> None:
    """Write an embedding table (and its gate-off twin) to an .npz file."""
    u = table.ungated or table
    np.savez_compressed(
        path, paths=np.array([str(p) for p in table.paths]), embeddings=table.embeddings,
        reasons=np.array([r or "" for r in table.reasons]), ungated_embeddings=u.embeddings,
        ungated_reasons=np.array([r or "" for r in u.reasons]),
        weights=table.weights if table.weights is not None else np.ones(len(table.paths)),
        stages=np.array(list(table.seconds)), seconds=np.stack([table.seconds[k] for k in table.seconds]),
        wall=np.array(table.wall_seconds), meta=np.array(json.dumps(meta, sort_keys=True)))


def load_table(path: str | os.PathLike, paths: Sequence[Path], meta: dict[str, Any]) -> EmbeddingTable | None:
    """The table saved at ``path`` if it holds exactly ``paths`` with the same model and
    configuration, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["meta"])) != meta or list(z["paths"]) != [str(p) for p in paths]:
                return None
            secs = {str(k): z["seconds"][i] for i, k in enumerate(z["stages"])}
            wall, weights = float(z["wall"]), z["weights"]
            ungated = EmbeddingTable(list(paths), z["ungated_embeddings"],
                                     [str(r) or None for r in z["ungated_reasons"]], secs, wall, weights=weights)
            return EmbeddingTable(list(paths), z["embeddings"], [str(r) or None for r in z["reasons"]], secs,
                                  wall, ungated, weights=weights)
    except (OSError, KeyError, ValueError):
        return None


def benchmark_added_cost(model, table: EmbeddingTable, sizes: Sequence[int] = (1000, 10000),
                         repeat: int = 300, seed: int = 0) -> dict[str, Any]:
    """Per-face cost of the improved scoring on this machine: median seconds of one
    ``Matcher.match`` of a real probe with and without the score model, for lists of ``sizes``
    subjects (real embeddings, repeated with a little noise to reach the size), and the one-off
    cost of loading a list (the subjects' cohort statistics)."""
    from edge.matching.match import Matcher, Watchlist
    from edge.matching.calibration import ThresholdPolicy, fit_calibration
    rng = np.random.default_rng(seed)
    real = table.embeddings[table.ok].astype(np.float32)
    if len(real) < 2:
        return {"error": "too few embeddings"}
    cal = model.calibration or fit_calibration(rng.normal(size=20000))
    scorer = model.with_calibration(cal)
    probes = real[rng.choice(len(real), min(64, len(real)), replace=False)]
    out: dict[str, Any] = {"cohort_size": model.size, "top_k": int(model.top_k), "repeat": repeat}
    for n in sizes:
        rows = real[rng.integers(0, len(real), n)] + rng.normal(0, 0.02, (n, real.shape[1])).astype(np.float32)
        wl = Watchlist(rows, [f"s{i}" for i in range(n)], ["wanted"] * n)
        base = Matcher(wl, {"wanted": 0.95})
        t0 = time.perf_counter()
        pol = ThresholdPolicy(cal, 0.001, n)
        imp = Matcher(wl, {"wanted": pol.threshold}, scorer=scorer, policy=pol)
        load = time.perf_counter() - t0
        times = {"base": [], "improved": []}
        for i in range(repeat):
            p = probes[i % len(probes)]
            for name, m in (("base", base), ("improved", imp)):
                t0 = time.perf_counter()
                m.match(p)
                times[name].append(time.perf_counter() - t0)
        b, im = float(np.median(times["base"])), float(np.median(times["improved"]))
        out[str(n)] = {"base_ms": 1000 * b, "improved_ms": 1000 * im, "added_ms": 1000 * (im - b),
                       "added_p90_ms": 1000 * float(np.percentile(times["improved"], 90)
                                                    - np.percentile(times["base"], 90)),
                       "list_load_seconds": load}
    return out


def _cohort_overlap(model, table: EmbeddingTable) -> int:
    """How many of this dataset's faces are (near-)identical to a face of the shipped cohort."""
    e = table.embeddings[table.ok].astype(np.float32)
    hits = 0
    for i in range(0, len(e), 2048):
        hits += int(np.count_nonzero((e[i:i + 2048] @ model.cohort.T).max(axis=1) > 0.9995))
    return hits


def run_eval_lfw(args) -> int:
    from edge.recognition.api import Recognizer
    from edge.config import load_config

    images_dir = Path(args.images)
    identities = scan_lfw(images_dir, getattr(args, "limit", 0) or 0)
    limited = bool(getattr(args, "limit", 0))
    pairs = parse_pairs(args.pairs, images_dir, keep=set(identities) if limited else None)
    out_path = _prepare_output(args.out, "report")
    plot_path = _prepare_output(args.plot, "plot") if getattr(args, "plot", None) else None
    pipeline = getattr(args, "pipeline", None) or "both"
    track_sizes = tuple(getattr(args, "track_size", None) or TRACK_SIZES)
    if pipeline not in PIPELINES:
        raise InputError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    if any(k < 1 for k in track_sizes):
        raise InputError(f"--track-size values must be >= 1, got {list(track_sizes)}")
    reference = getattr(args, "reference", None)
    if reference == "dlib":
        ok, why = dlib_available()
        if not ok:
            raise ModelError(f"--reference dlib needs dlib and face_recognition_models ({why}); "
                             "install them with: pip install -e '.[reference]'")
    config = load_config(getattr(args, "config", None))
    rec = Recognizer(config)

    # every image once: all images of the (limited) identities, plus any pair image beyond them
    paths = [p for ps in identities.values() for p in ps]
    seen = set(paths)
    for pr in pairs.pairs:
        for p in (pr.a, pr.b):
            if p not in seen:
                seen.add(p)
                paths.append(p)
    n_ids = len(identities)
    n_multi = sum(len(v) >= 2 for v in identities.values())
    print(f"eval lfw: {len(paths)} images, {n_ids} identities ({n_multi} with >= 2 images, "
          f"{n_ids - n_multi} with one), {len(pairs.pairs)} pairs in {pairs.folds} folds", file=sys.stderr)
    if pairs.dropped:
        print(f"eval lfw: --limit {args.limit} left out {pairs.dropped} of {pairs.dropped + len(pairs.pairs)} "
              "pairs (an identity outside the limit); the pair figures are a quick check only", file=sys.stderr)

    cache = getattr(args, "embeddings_cache", None)
    meta = _table_meta(rec, config)
    ours_table = load_table(cache, paths, meta) if cache and Path(cache).is_file() else None
    if ours_table is not None:
        print(f"eval lfw: embeddings reused from {cache}", file=sys.stderr)
    else:
        with Progress(len(paths), "ours (int8) ", unit="img") as bar:
            ours_table = embed_ours(rec, paths, bar)
        if cache:
            save_table(_prepare_output(cache, "embeddings cache"), ours_table, meta)
    fold_of = identity_folds(identities, pairs)
    ours = score_pipeline(ours_table, pairs, identities, images_dir, args.seed, EvalScorer.base(), fold_of,
                          track_sizes, studies=True)
    ours.pop("_impostor", None)
    report: dict[str, Any] = {
        "dataset": {"images": str(images_dir), "pairs_file": str(args.pairs), "n_images": len(paths),
                    "n_identities": n_ids, "n_identities_multi": n_multi, "limit": getattr(args, "limit", 0),
                    "seed": args.seed},
        "protocol": {
            "face_choice": "detection whose box centre is nearest the image centre; no face or a "
                           "quality-gate failure = no embedding",
            "pairs": "cosine score (improved: normalised score), missing embedding scores -1 (improved: "
                     f"{MISSING_SCORE:g}); per fold the threshold maximising accuracy on the other folds; "
                     "accuracy_std is the sample sd over folds",
            "identification": "watchlist = first image (sorted) of each identity with >= 2 images "
                              "(N < all: sampled with numpy default_rng(seed)); mated probes = their "
                              "other images; non-mated probes = identities with one image; threshold "
                              "at FPIR f = smallest t with fraction of non-mated top-1 scores >= t "
                              "<= f; FNIR = mated top-1 wrong or below t",
            "track": "N = all; each probe fuses K usable images of one identity with edge.recognition.fusion."
                     "fuse_embeddings weighted by face quality (edge.appliance.track.quality_weight), as the live "
                     "tracker fuses a track; mated = listed identities' other images in disjoint groups "
                     "of K; non-mated = every identity's images in disjoint groups of K, listed ones "
                     "searched against the list without their own entry (leave-one-out)",
            "enrolment": "N = all; templates = first min(M, n-1) usable images, fused into one or kept "
                         "apart (best template scores); mated probes = images from position "
                         "min(3, n-1) on, the same for every M; non-mated = single-image identities",
            "improved": "cohort-normalised score (edge.matching.normalise) cross-fitted: identities are split "
                        "into the pairs file's folds (others by a hash of the name); every probe, pair "
                        "and template of fold f is scored by a model whose background cohort holds only "
                        "single-image identities of the other folds; the policy check's calibration "
                        "likewise comes from the other folds",
        },
        "model_sha256": rec.model_sha256,
        "models": {rec.detector.model.name: rec.detector.model.sha256,
                   rec.embedder.model.name: rec.embedder.model.sha256},
        "delegates": rec.delegates,
        "config": config.as_dict(),
        **ours,
    }
    gate_off = score_pipeline(ours_table.ungated, pairs, identities, images_dir, args.seed)
    for k in ("seconds_per_image", "wall_seconds", "pipeline"):
        gate_off.pop(k, None)
    report["without_quality_gate"] = {
        "note": "diagnostic only, not the device's figures: the same int8 pipeline with the quality "
                "gate off (faces it refuses are embedded anyway), to separate the gate's cost from "
                "the embedding model's", **gate_off}
    columns: list[tuple[str, dict[str, Any]]] = []
    if pipeline in ("base", "both"):
        columns += [("base", ours), ("base, gate off", gate_off)]
    if pipeline in ("improved", "both"):
        columns += _improved_columns(report, ours_table, pairs, identities, images_dir, args.seed, fold_of,
                                     track_sizes, ours)
    if reference == "dlib":
        import face_recognition_models as frm
        _, version = dlib_available()
        with Progress(len(paths), f"dlib ({DLIB_WORKERS} procs)", unit="img") as bar:
            ref_table = embed_dlib(paths, DLIB_WORKERS, bar)
        ref = score_pipeline(ref_table, pairs, identities, images_dir, args.seed)
        ref.pop("pipeline", None)
        ref = {"pipeline": "dlib get_frontal_face_detector (upsample 1) + shape_predictor 5-point + "
                           "get_face_chip(size=150, padding=0.25) + face_recognition_model_v1 float, "
                           "L2-normalised; same face choice and protocol",
               "dlib_version": version,
               "model_sha256": _sha256_file(frm.face_recognition_model_location()),
               "workers": DLIB_WORKERS,
               "seconds_note": "per-image stage times measured inside each worker process",
               **ref}
        report["reference"] = ref
        report["comparison"] = compare(ours, ref)
        report["comparison"]["without_quality_gate"] = compare(gate_off, ref)
        columns.append(("dlib (float)", ref))

    if plot_path:
        plot_det(plot_path, [c for c in columns if "gate off" not in c[0]])
        report["plot"] = str(plot_path)
    out_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(summary_table(columns))
    if "comparison" in report and "pairs_accuracy_points" in report["comparison"]:
        print(f"pairs accuracy, ours minus dlib: {report['comparison']['pairs_accuracy_points']:+.2f} points")
    for key in ("improved", "improved_shipped"):
        cost = report.get(key, {}).get("added_cost", {})
        for n in ("1000", "10000"):
            if n in cost:
                print(f"{key}: added per-face cost, list of {n}: {cost[n]['added_ms']:.3f} ms "
                      f"(match {cost[n]['base_ms']:.3f} -> {cost[n]['improved_ms']:.3f} ms)")
    print(f"report: {out_path}" + (f"   DET plot: {plot_path}" if plot_path else ""))
    return 0


def _improved_columns(report: dict[str, Any], table: EmbeddingTable, pairs: PairsFile,
                      identities: dict[str, list[Path]], images_dir: Path, seed: int, fold_of: dict[str, int],
                      track_sizes: Sequence[int], base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The improved pipeline, cross-fitted (the headline), and with the shipped score model when
    this dataset shares no face with its cohort (on lfw-dev it does: that run would be in-sample)."""
    from edge.matching.normalise import load_score_model
    from edge.matching.calibration import fit_calibration
    columns = []
    try:
        shipped, shipped_why = load_score_model(), ""
    except ModelError as exc:
        shipped, shipped_why = None, str(exc)
    models, why = fit_crossfit_models(table, identities, fold_of)
    if models is None:
        report["improved"] = {"skipped": why}
        print(f"eval lfw: improved pipeline skipped: {why}", file=sys.stderr)
    else:
        note = ("cohort-normalised score t (edge.matching.normalise), each identity fold scored by a model fitted on "
                "the other folds' single-image identities; fused templates")
        imp = score_pipeline(table, pairs, identities, images_dir, seed, EvalScorer("improved", models, note),
                             fold_of, track_sizes, studies=True)
        vals, _ = imp.pop("_impostor", (np.empty(0), None))
        sizes = sorted({m.size for m in models.values()})
        imp["cohort_sizes"] = sizes
        try:
            cal = fit_calibration(vals, f"lfw-style folder {images_dir.name}, cross-fitted, {len(vals):,} "
                                        "non-mated comparisons")
            imp["calibration_fitted"] = cal.to_manifest()
        except InputError as exc:
            cal = None
            imp["calibration_fitted"] = {"error": str(exc)}
        # what runs on the unit: the shipped model when there is one (its cohort is the larger)
        bench_model = shipped or (models[min(models)].with_calibration(cal) if cal else models[min(models)])
        imp["added_cost"] = benchmark_added_cost(bench_model, table)
        imp["added_cost"]["model"] = "shipped" if shipped else "fold model"
        imp["minus_base"] = compare(imp, base)
        report["improved"] = imp
        columns.append(("improved (cross-fitted)", imp))
    if shipped is None:
        report["improved_shipped"] = {"skipped": f"no shipped score model: {shipped_why}"}
        return columns
    overlap = _cohort_overlap(shipped, table)
    if overlap:
        report["improved_shipped"] = {"skipped": f"{overlap} faces of this dataset are in the shipped model's "
                                                 "background cohort: scoring them with it would be in-sample; "
                                                 "the cross-fitted column is the measurement"}
        return columns
    scorer = EvalScorer("improved (shipped model)", {0: shipped},
                        f"shipped score model (cohort {shipped.size}, sha256 {shipped.sha256[:16]}...)")
    scorer.fixed_calibration = shipped.calibration
    imp_s = score_pipeline(table, pairs, identities, images_dir, seed, scorer, None, track_sizes, studies=True)
    imp_s.pop("_impostor", None)
    imp_s["minus_base"] = compare(imp_s, base)
    report["improved_shipped"] = imp_s
    columns.append(("improved (shipped model)", imp_s))
    return columns


if __name__ == "__main__":  # python -m edge.tools.evaluation.command lfw ... (same options as edge-lfr eval lfw)
    from edge.errors import EdgeError
    _args = _standalone_parser().parse_args()
    try:
        sys.exit(run_eval_lfw(_args))
    except EdgeError as _exc:
        print(f"edge.tools.evaluation.command: error: {_exc}", file=sys.stderr)
        sys.exit(_exc.exit_code)
