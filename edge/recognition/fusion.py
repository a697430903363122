"""Fusing several embeddings of one person (the frames of a track, or a subject's enrolment
images) into one probe vector. The live tracker (weighted by face quality), ``edge-lfr eval
lfw --track-size`` (same weights) and the Matcher with a score model (a subject's enrolment
templates, unweighted) all call :func:`fuse_embeddings`, so what is measured is what runs.

Measured on lfw-dev (``docs/accuracy.md``): fusing K = 3 images of a person into one probe
cuts the misses at FPIR 0.01 to about a third of single images'; for enrolment, the fused
template of 2-3 images misses clearly fewer listed people than keeping the templates apart
and taking the best one (e.g. FNIR 0.10 vs 0.14 at M = 2, normalised scores), so templates
are fused. Quality weights change nothing measurable on LFW (its faces are all usable);
they are kept for live video, where frames differ far more.
"""
from __future__ import annotations

import numpy as np

from edge.errors import InputError


def fuse_embeddings(embeddings: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(K, D) unit embeddings (optionally with (K,) non-negative weights, e.g. quality) ->
    (D,) unit vector: the normalised weighted mean direction."""
    e = np.asarray(embeddings, np.float32)
    if e.ndim != 2 or len(e) == 0:
        raise InputError(f"expected a non-empty (K, D) array of embeddings, got shape {e.shape}")
    if weights is None:
        v = e.sum(axis=0)
    else:
        w = np.asarray(weights, np.float32)
        if w.shape != (len(e),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise InputError("weights must be (K,) finite, non-negative and not all zero")
        v = (e * w[:, None]).sum(axis=0)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-12:
        raise InputError("embeddings cancel out or are not finite; cannot fuse")
    return (v / n).astype(np.float32)


def view_spread(embeddings: np.ndarray) -> float:
    """1 - the mean cosine between distinct pairs of (K, D) unit embeddings (0 for K < 2): how
    different the views fused into one vector are, i.e. how much noise fusing them removed
    (:meth:`edge.matching.calibration.ScoreCalibration.fusion_offset` scales by it)."""
    e = np.asarray(embeddings, np.float32)
    k = len(e)
    if k < 2:
        return 0.0
    g = e @ e.T
    return float(1.0 - (g.sum() - np.trace(g)) / (k * (k - 1)))
