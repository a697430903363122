"""Face detection with MediaPipe's BlazeFace: letterbox, anchors, decoding, weighted NMS.

A frame is looked at whole, and optionally as overlapping square tiles (``tile_size``) so
that a 1920x1080 frame yields faces down to about 40 px wide; a region of interest
(``roi``, fractions of the frame) restricts both. Detections from all views are merged
by score-weighted non-maximum suppression.
"""
from __future__ import annotations

import cv2
import numpy as np

from .images import check_frame
from .runtime import LoadedModel
from .types import Detection

# MediaPipe SSD anchor layouts: (stride, anchors per cell) for each model input size.
ANCHOR_LAYOUTS = {192: ((4, 1),), 128: ((8, 2), (16, 6))}


def make_anchors(input_size: int) -> np.ndarray:
    """Anchor centres as float32 (A, 2) of (x, y) fractions of the input square."""
    try:
        layout = ANCHOR_LAYOUTS[input_size]
    except KeyError:
        raise ValueError(f"no BlazeFace anchor layout for input size {input_size}") from None
    centres = []
    for stride, per_cell in layout:
        cells = int(np.ceil(input_size / stride))
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs.ravel() + 0.5) / cells, (ys.ravel() + 0.5) / cells], axis=1)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes a (N, 4) and b (M, 4), each row (x0, y0, x1, y1)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou: float,
                 limit: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Cluster overlapping candidates; each cluster's box and keypoints are the score-weighted
    mean of its members and its score is the best member's. Returns at most ``limit``."""
    order = np.argsort(-scores)
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    alive = np.ones(len(scores), bool)
    out = []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        members = alive & (iou_matrix(boxes[i:i + 1], boxes)[0] > iou)
        members[i] = True
        w = scores[members][:, None]
        box = (boxes[members] * w).sum(0) / w.sum()
        kps = (keypoints[members] * w[:, :, None]).sum(0) / w.sum()
        out.append((box, kps, float(scores[i])))
        alive &= ~members
        if len(out) == limit:
            break
    return out


def tile_windows(width: int, height: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Square windows (x0, y0, x1, y1) of side ``tile`` covering a width x height area."""
    if tile <= 0 or (width <= tile and height <= tile):
        return []
    step = max(1, int(tile * (1.0 - overlap)))

    def starts(extent: int) -> list[int]:
        if extent <= tile:
            return [0]
        s = list(range(0, extent - tile, step)) + [extent - tile]
        return sorted(set(s))

    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in starts(height) for x in starts(width)]


class _Head:
    """One BlazeFace model with its anchors, output order and score threshold."""

    def __init__(self, model: LoadedModel, score_threshold: float):
        self.model = model
        self.logit_threshold = float(np.log(score_threshold / (1.0 - score_threshold)))
        self.size = int(model.inputs[0]["shape"][1])
        self.anchors = make_anchors(self.size)
        n_anchors = int(model.outputs[0]["shape"][1])
        if n_anchors != len(self.anchors):
            raise ValueError(f"{model.name}: {n_anchors} outputs do not match {len(self.anchors)} anchors")
        # outputs are (regressors [1, A, 16], scores [1, A, 1]) in either order
        self.reg_index = 0 if model.outputs[0]["shape"][-1] == 16 else 1


class FaceDetector:
    """BlazeFace on a loaded model. ``detect(frame)`` -> list of :class:`Detection`."""

    def __init__(self, model: LoadedModel, score_threshold: float = 0.5, nms_iou: float = 0.3,
                 max_faces: int = 64, tile_size: int = 0, tile_overlap: float = 0.25,
                 roi: list[float] | None = None, max_pixels: int = 40_000_000,
                 near_model: LoadedModel | None = None, near_score_threshold: float = 0.6):
        self.model = model
        self.near = _Head(near_model, near_score_threshold) if near_model is not None else None
        self.head = _Head(model, score_threshold)
        self.input_size = self.head.size
        self.anchors = self.head.anchors
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_faces = max_faces
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.roi = list(roi) if roi else None
        self.max_pixels = max_pixels

    @classmethod
    def from_config(cls, model: LoadedModel, cfg, near_model: LoadedModel | None = None) -> "FaceDetector":
        d = cfg.detector
        return cls(model, d.score_threshold, d.nms_iou, d.max_faces, d.tile_size, d.tile_overlap,
                   d.roi, cfg.limits.max_image_pixels, near_model, d.near_score_threshold)

    def _views(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        x0, y0, x1, y1 = 0, 0, width, height
        if self.roi:
            x0, y0 = int(self.roi[0] * width), int(self.roi[1] * height)
            x1, y1 = max(x0 + 1, int(self.roi[2] * width)), max(y0 + 1, int(self.roi[3] * height))
        views = [(x0, y0, x1, y1)]
        for tx0, ty0, tx1, ty1 in tile_windows(x1 - x0, y1 - y0, self.tile_size, self.tile_overlap):
            views.append((x0 + tx0, y0 + ty0, x0 + tx1, y0 + ty1))
        return views

    def _run_view(self, frame: np.ndarray, view: tuple[int, int, int, int], head: "_Head"):
        x0, y0, x1, y1 = view
        crop = frame[y0:y1, x0:x1]
        h, w = crop.shape[:2]
        size = head.size
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        canvas = np.zeros((size, size, 3), np.float32)
        canvas[:nh, :nw] = cv2.resize(crop, (nw, nh), interpolation=interp)
        x = (canvas * (1.0 / 127.5) - 1.0)[None]
        outputs = head.model.run(x)
        reg = outputs[head.reg_index][0]
        logits = outputs[1 - head.reg_index][0, :, 0]
        keep = np.nonzero(logits > head.logit_threshold)[0]
        if keep.size == 0:
            return None
        reg, logits, anchors = reg[keep], logits[keep], head.anchors[keep]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -80, 80)))
        # regressors are in input pixels relative to the anchor centre
        cx = anchors[:, 0] * size + reg[:, 0]
        cy = anchors[:, 1] * size + reg[:, 1]
        bw, bh = reg[:, 2], reg[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        kps = reg[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :] * size
        offset = np.array([x0, y0], np.float32)
        boxes = boxes / scale + np.tile(offset, 2)
        kps = kps / scale + offset
        # a face cut by a tile border is not a face: drop boxes mostly outside their view
        inside = ((np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0)) *
                  (np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0)))
        area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
        ok = (inside / area > 0.7) if (x1 - x0, y1 - y0) != frame.shape[1::-1] else np.ones(len(area), bool)
        return boxes[ok], kps[ok], scores[ok]

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 (H, W, 3) frame, highest score first, frame-pixel coordinates."""
        frame = check_frame(frame, self.max_pixels)
        height, width = frame.shape[:2]
        views = self._views(width, height)
        runs = [(v, self.head) for v in views]
        if self.near is not None:  # close-up faces filling the frame: the short-range model's job
            runs.append((views[0], self.near))
        found = [r for v, h in runs if (r := self._run_view(frame, v, h)) is not None]
        if not found:
            return []
        boxes = np.concatenate([f[0] for f in found])
        kps = np.concatenate([f[1] for f in found])
        scores = np.concatenate([f[2] for f in found])
        if boxes.size == 0:
            return []
        merged = weighted_nms(boxes, kps, scores, self.nms_iou, self.max_faces)
        out = []
        for box, kp, score in merged:
            bx = (float(np.clip(box[0], 0, width)), float(np.clip(box[1], 0, height)),
                  float(np.clip(box[2], 0, width)), float(np.clip(box[3], 0, height)))
            if bx[2] - bx[0] < 2 or bx[3] - bx[1] < 2:
                continue
            out.append(Detection(bx, score, kp.astype(np.float32)))
        return out
