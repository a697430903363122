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

from .errors import InputError, ModelError
from .progress import Progress

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
    from .images import load_image
    limits = rec.config.limits
    n = len(paths)
    emb = np.full((n, rec.embedder.dim), np.nan, np.float32)
    emb_all = np.full((n, rec.embedder.dim), np.nan, np.float32)
    reasons: list[str | None] = [None] * n
    reasons_all: list[str | None] = [None] * n
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
    ungated = EmbeddingTable(list(paths), emb_all, reasons_all, secs, wall)
    return EmbeddingTable(list(paths), emb, reasons, secs, wall, ungated)


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
    from .images import load_image
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

def pair_scores(table: EmbeddingTable, pairs: Sequence[Pair]) -> np.ndarray:
    """Cosine score per pair; -1 when either image has no embedding."""
    ia = np.array([table.index[p.a] for p in pairs], int)
    ib = np.array([table.index[p.b] for p in pairs], int)
    a = table.embeddings[ia].astype(np.float64)
    b = table.embeddings[ib].astype(np.float64)
    s = np.einsum("ij,ij->i", a, b)
    return np.where(np.isfinite(s), s, -1.0)


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
                   with_det: bool = False) -> dict[str, Any]:
    """Open-set 1:N figures for a watchlist of ``names`` (see the module docstring)."""
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
    w = table.embeddings[enrol_rows].astype(np.float64)

    def top1(rows):
        e = table.embeddings[rows].astype(np.float64)
        have = ok[rows]
        best = np.full(len(rows), -np.inf)
        idx = np.full(len(rows), -1)
        if have.any():
            s = e[have] @ w.T
            idx[have] = np.argmax(s, axis=1)
            best[have] = s[np.arange(len(s)), idx[have]]
        return idx, best, have

    m_idx, m_top, m_have = top1(mated_rows)
    m_correct = m_idx == np.asarray(mated_labels)
    n_idx, n_top, n_have = top1(nonmated_rows)
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
    fnir, thr, fa = {}, {}, {}
    for f in fpirs:
        t, alarms = threshold_at_fpir(n_top, f)
        key = _fkey(f)
        thr[key], fa[key] = t, alarms
        fnir[key] = fnir_at(m_top, m_correct, t)
    out.update(fnir_at_fpir=fnir, threshold_at_fpir=thr, false_alarms_at_fpir=fa)
    if with_det:
        out["det"] = det_curve(m_top, m_correct, n_top)
        # the strongest false alarms, for a human to check (LFW has some mislabelled people)
        order = np.argsort(-n_top)[:NO_FACE_EXAMPLES]
        out["top_nonmated"] = [{"probe": _rel(table.paths[nonmated_rows[i]], images_dir),
                                "matched": enrol_names[n_idx[i]], "score": float(n_top[i])}
                               for i in order if np.isfinite(n_top[i])]
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
                   images_dir: Path, seed: int) -> dict[str, Any]:
    """Pairs, identification per watchlist size, DET (N = all), no_face and timings."""
    report: dict[str, Any] = {}
    if len({p.fold for p in pairs.pairs}) >= 2:
        s = pair_scores(table, pairs.pairs)
        cv = cross_validate(s, [p.same for p in pairs.pairs], [p.fold for p in pairs.pairs])
        cv["n_pairs"] = len(pairs.pairs)
        cv["n_pairs_missing_face"] = int(np.count_nonzero(s == -1.0))
        if pairs.dropped:
            cv["n_pairs_dropped_by_limit"] = pairs.dropped
        report["pairs"] = cv
    else:
        report["pairs"] = {"error": "fewer than 2 folds with pairs left after --limit", "n_pairs": len(pairs.pairs),
                           "n_pairs_dropped_by_limit": pairs.dropped}
    ident: dict[str, Any] = {}
    skipped = {}
    for size in WATCHLIST_SIZES:
        names = sample_watchlist(identities, size, seed)
        if names is None:
            skipped[str(size)] = "fewer identities with >= 2 images than this watchlist size"
            continue
        r = identification(table, identities, names, images_dir, with_det=size == "all")
        if size == "all" and "det" in r:
            report["det"] = {"watchlist": "all", **r.pop("det")}
        ident[str(size)] = r
    if skipped:
        ident["skipped"] = skipped
    report["identification"] = ident
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
    out["no_face"] = ours["no_face"]["count"] - ref["no_face"]["count"]
    return out


# ---------------------------------------------------------------------------------------------
# Output: plot and summary table
# ---------------------------------------------------------------------------------------------

def _curve_label(name: str, rep: dict[str, Any]) -> str:
    parts = [name]
    p = rep.get("pairs", {})
    if "accuracy_mean" in p:
        parts.append(f"pairs acc {100 * p['accuracy_mean']:.2f}% ± {100 * p['accuracy_std']:.2f}")
    r = rep.get("identification", {}).get("all", {})
    for k, v in r.get("fnir_at_fpir", {}).items():
        parts.append(f"FNIR {v:.3f} @ FPIR {k}")
    return "; ".join(parts)


def plot_det(path: Path, curves: list[tuple[str, dict[str, Any]]]) -> None:
    """DET curves (FNIR vs FPIR, log-log) for N = all, one per pipeline, on the same axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6), dpi=120)
    lo_x, lo_y = 1.0, 1.0
    title = "open-set identification (DET), watchlist N = all"
    for name, rep in curves:
        det = rep.get("det") or {}
        x, y = np.asarray(det.get("fpir", []), float), np.asarray(det.get("fnir", []), float)
        keep = (x > 0) & (y > 0)
        if keep.any():
            lo_x, lo_y = min(lo_x, x[keep].min()), min(lo_y, y[keep].min())
        ax.plot(x[keep], y[keep], drawstyle="steps-post", lw=1.2 if "gate off" in name else 1.8,
                ls="--" if "gate off" in name else "-", label=_curve_label(name, rep))
        r = rep.get("identification", {}).get("all", {})
        for k, v in r.get("fnir_at_fpir", {}).items():
            if v > 0:
                ax.plot([float(k)], [v], "o", ms=5, color=ax.lines[-1].get_color())
        if "n_watchlist" in r:
            title = (f"open-set identification (DET), watchlist N = {r['n_watchlist']}, "
                     f"{r['n_mated']} mated / {r['n_nonmated']} non-mated probes")
    for f in FPIR_TARGETS:
        ax.axvline(f, color="grey", ls="--", lw=0.8)
        ax.text(f, 0.98, f" FPIR {f:g}", rotation=90, va="top", ha="right", fontsize=8,
                color="grey", transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(max(1e-5, min(lo_x, min(FPIR_TARGETS)) / 2), 1.0)
    ax.set_ylim(max(1e-4, lo_y / 2), 1.0)
    ax.set_xlabel("FPIR (fraction of non-mated probes raising an alarm)")
    ax.set_ylabel("FNIR (fraction of mated probes missed)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
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


def run_eval_lfw(args) -> int:
    from .api import Recognizer
    from .config import load_config

    images_dir = Path(args.images)
    identities = scan_lfw(images_dir, getattr(args, "limit", 0) or 0)
    limited = bool(getattr(args, "limit", 0))
    pairs = parse_pairs(args.pairs, images_dir, keep=set(identities) if limited else None)
    out_path = _prepare_output(args.out, "report")
    plot_path = _prepare_output(args.plot, "plot") if getattr(args, "plot", None) else None
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

    with Progress(len(paths), "ours (int8) ", unit="img") as bar:
        ours_table = embed_ours(rec, paths, bar)
    ours = score_pipeline(ours_table, pairs, identities, images_dir, args.seed)
    report: dict[str, Any] = {
        "dataset": {"images": str(images_dir), "pairs_file": str(args.pairs), "n_images": len(paths),
                    "n_identities": n_ids, "n_identities_multi": n_multi, "limit": getattr(args, "limit", 0),
                    "seed": args.seed},
        "protocol": {
            "face_choice": "detection whose box centre is nearest the image centre; no face or a "
                           "quality-gate failure = no embedding",
            "pairs": "cosine score, missing embedding scores -1; per fold the threshold maximising "
                     "accuracy on the other folds; accuracy_std is the sample sd over folds",
            "identification": "watchlist = first image (sorted) of each identity with >= 2 images "
                              "(N < all: sampled with numpy default_rng(seed)); mated probes = their "
                              "other images; non-mated probes = identities with one image; threshold "
                              "at FPIR f = smallest t with fraction of non-mated top-1 scores >= t "
                              "<= f; FNIR = mated top-1 wrong or below t",
        },
        "model_sha256": rec.model_sha256,
        "models": {rec.detector.model.name: rec.detector.model.sha256,
                   rec.embedder.model.name: rec.embedder.model.sha256},
        "delegates": rec.delegates,
        "config": config.as_dict(),
        **ours,
    }
    gate_off = score_pipeline(ours_table.ungated, pairs, identities, images_dir, args.seed)
    for k in ("seconds_per_image", "wall_seconds"):
        gate_off.pop(k, None)
    report["without_quality_gate"] = {
        "note": "diagnostic only, not the device's figures: the same int8 pipeline with the quality "
                "gate off (faces it refuses are embedded anyway), to separate the gate's cost from "
                "the embedding model's", **gate_off}
    columns = [("ours (int8)", ours), ("ours, gate off", gate_off)]
    if reference == "dlib":
        import face_recognition_models as frm
        _, version = dlib_available()
        with Progress(len(paths), f"dlib ({DLIB_WORKERS} procs)", unit="img") as bar:
            ref_table = embed_dlib(paths, DLIB_WORKERS, bar)
        ref = score_pipeline(ref_table, pairs, identities, images_dir, args.seed)
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
        plot_det(plot_path, columns)
        report["plot"] = str(plot_path)
    out_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(summary_table(columns))
    if "comparison" in report and "pairs_accuracy_points" in report["comparison"]:
        print(f"pairs accuracy, ours minus dlib: {report['comparison']['pairs_accuracy_points']:+.2f} points")
    print(f"report: {out_path}" + (f"   DET plot: {plot_path}" if plot_path else ""))
    return 0
