"""dlib's own float pipeline (HOG detector, 5-point landmarks, get_face_chip, ResNet descriptor) as the
reference measured in the same run; needs the ``reference`` extra (dlib-bin)."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edge.errors import InputError
from edge.progress import Progress
from edge.recognition.images import load_image
from edge.tools.evaluation.embeddings import EmbeddingTable, nearest_centre

#: dlib runs in this many processes (its descriptor is single-threaded and slow)
DLIB_WORKERS = 2
DLIB_STAGES = ("decode", "detect", "landmarks", "align", "embed", "total")

log = logging.getLogger(__name__)


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
