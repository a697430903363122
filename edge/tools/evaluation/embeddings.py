"""Embedding every image of a dataset once with the on-device pipeline, and caching the table."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edge.appliance.track import quality_weight
from edge.errors import InputError
from edge.progress import Progress
from edge.recognition.images import load_image

OUR_STAGES = ("decode", "detect", "landmarks", "align", "quality", "embed", "total")

log = logging.getLogger(__name__)


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


def table_meta(rec, config) -> dict[str, Any]:
    """What an embedding depends on: the models and the detector / quality / embed options."""
    d = config.as_dict()
    parts = {k: d[k] for k in ("detector", "quality", "embed") if k in d}
    near = rec.detector.near.model.sha256 if getattr(rec.detector, "near", None) is not None else ""
    return {"model_sha256": rec.embedder_sha256, "loaded_model_sha256": rec.loaded_embedder_sha256, "detector_sha256": rec.detector.model.sha256, "near_sha256": near,
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
