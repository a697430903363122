"""Face detection with MediaPipe's BlazeFace: letterbox, anchors, decoding, weighted NMS.

A frame is looked at whole, and optionally as overlapping square tiles (``tile_size``) so
that a 1920x1080 frame yields faces down to about 40 px wide; a region of interest
(``roi``, fractions of the frame) restricts both. Detections from all views are merged
by score-weighted non-maximum suppression.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.recognition.images import check_frame
from edge.recognition.runtime import LoadedModel
from edge.types import Detection

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
    """One BlazeFace model with its anchors, output layout, quantization and score threshold.

    Outputs are the scores (logits, ``[1, A, 1]``) and the 16 regressors ``[1, A, 16]`` in
    either order; or, when the manifest entry's ``outputs`` give each a ``role``
    ("classificators" / "regressors") and regressor ``channels`` ``[start, stop]``, the
    regressors split over several outputs (each quantized with its own scale).
    """

    def __init__(self, model: LoadedModel, score_threshold: float):
        self.model = model
        self.logit_threshold = float(np.log(score_threshold / (1.0 - score_threshold)))
        self.size = int(model.inputs[0]["shape"][1])
        self.anchors = make_anchors(self.size)
        for d in model.outputs:
            if int(d["shape"][1]) != len(self.anchors):
                raise ValueError(f"{model.name}: {int(d['shape'][1])} outputs do not match "
                                 f"{len(self.anchors)} anchors")
        self.cls_index, self.reg_parts = _output_layout(model)
        # full-integer models: pixels go in through a lookup table (pixel p -> the quantized
        # value of p / 127.5 - 1), outputs come out as (q - zero_point) * scale
        inp = model.inputs[0]
        self.input_dtype = np.dtype(inp["dtype"])
        self.quantized_input = np.issubdtype(self.input_dtype, np.integer)
        self.lut = None
        if self.quantized_input:
            q_scale, q_zero = _quantization(inp, model.name, "input")
            info = np.iinfo(self.input_dtype)
            real = np.arange(256, dtype=np.float64) / 127.5 - 1.0
            self.lut = np.clip(np.round(real / q_scale + q_zero), info.min, info.max).astype(self.input_dtype)
        self.dequant = [None if not np.issubdtype(np.dtype(d["dtype"]), np.integer)
                        else _quantization(d, model.name, "output") for d in model.outputs]
        # the score threshold in the logits' own units, so only kept rows are dequantized
        cls = self.dequant[self.cls_index]
        self.raw_logit_threshold = (self.logit_threshold if cls is None
                                    else self.logit_threshold / cls[0] + cls[1])

    def prepare(self, canvas: np.ndarray) -> np.ndarray:
        """The model input for a letterboxed uint8 RGB canvas (size x size x 3)."""
        if self.lut is not None:  # cv2.LUT maps bytes to bytes: reinterpret for int8 models
            return cv2.LUT(canvas, self.lut.view(np.uint8)).view(self.input_dtype)[None]
        return (canvas.astype(np.float32) * (1.0 / 127.5) - 1.0)[None]

    def output(self, outputs: list[np.ndarray], index: int, rows=None) -> np.ndarray:
        """Output ``index`` (optionally only ``rows`` of its anchors) as float32."""
        a = outputs[index][0] if rows is None else outputs[index][0][rows]
        q = self.dequant[index]
        if q is None:
            return a
        return (a.astype(np.float32) - q[1]) * q[0]

    def keep(self, outputs: list[np.ndarray]) -> np.ndarray:
        """Anchor indices whose score passes the threshold (compared before dequantizing)."""
        return np.nonzero(outputs[self.cls_index][0, :, 0] > self.raw_logit_threshold)[0]

    def logits(self, outputs: list[np.ndarray], rows=None) -> np.ndarray:
        return self.output(outputs, self.cls_index, rows)[:, 0]

    def regressors(self, outputs: list[np.ndarray], rows=None) -> np.ndarray:
        """The 16 regressors (float32, ``[rows, 16]``) gathered from their output(s)."""
        if len(self.reg_parts) == 1:
            return self.output(outputs, self.reg_parts[0][0], rows)
        n = len(self.anchors) if rows is None else len(rows)
        reg = np.empty((n, 16), np.float32)
        for index, start, stop in self.reg_parts:
            reg[:, start:stop] = self.output(outputs, index, rows)
        return reg


def _output_layout(model: LoadedModel) -> tuple[int, list[tuple[int, int, int]]]:
    """(index of the scores output, [(output index, first channel, end channel)] of the
    regressors) from the manifest's output roles, or else from the output shapes."""
    shapes = [tuple(int(v) for v in d["shape"]) for d in model.outputs]
    described = (model.spec or {}).get("outputs") if isinstance(model.spec, dict) else None
    if isinstance(described, list) and len(described) == len(shapes) and \
            all(isinstance(o, dict) and o.get("role") for o in described):
        cls = [i for i, o in enumerate(described) if o["role"] == "classificators"]
        parts = []
        for i, o in enumerate(described):
            if o["role"] == "regressors":
                start, stop = o.get("channels", [0, 16])
                if shapes[i][-1] != stop - start:
                    raise ValueError(f"{model.name}: output {i} has {shapes[i][-1]} channels, "
                                     f"the manifest says {start}..{stop}")
                parts.append((i, int(start), int(stop)))
        covered = sorted(c for _, a, b in parts for c in range(a, b))
        if len(cls) != 1 or shapes[cls[0]][-1] != 1 or covered != list(range(16)):
            raise ValueError(f"{model.name}: manifest output roles do not describe 1 score output "
                             "and 16 regressor channels")
        return cls[0], sorted(parts, key=lambda p: p[1])
    if len(shapes) != 2 or sorted(s[-1] for s in shapes) != [1, 16]:
        raise ValueError(f"{model.name}: expected outputs [1, A, 16] and [1, A, 1], got {shapes}")
    reg = 0 if shapes[0][-1] == 16 else 1
    return 1 - reg, [(reg, 0, 16)]


def _quantization(detail: dict, name: str, what: str) -> tuple[float, float]:
    """(scale, zero_point) of an integer tensor; a per-tensor scale is required."""
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), np.float64).ravel()
    zeros = np.asarray(params.get("zero_points", []), np.float64).ravel()
    if scales.size > 1:
        raise ValueError(f"{name}: per-channel quantized {what} is not supported")
    scale, zero = (float(scales[0]), float(zeros[0]) if zeros.size else 0.0) if scales.size else \
        (float(detail["quantization"][0]), float(detail["quantization"][1]))
    if not scale > 0:
        raise ValueError(f"{name}: integer {what} without a quantization scale")
    return scale, zero


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
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[:nh, :nw] = cv2.resize(crop, (nw, nh), interpolation=interp)
        outputs = head.model.run(head.prepare(canvas))
        keep = head.keep(outputs)
        if keep.size == 0:
            return None
        reg, logits, anchors = head.regressors(outputs, keep), head.logits(outputs, keep), head.anchors[keep]
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

    def scan_cycle(self, width: int, height: int) -> list[tuple[tuple[int, int, int, int], str]]:
        """Every (view, head) run of a full look at a width x height frame: the whole frame (or
        ROI) and the tiles with the full-range model ("far"), and the whole frame once more with
        the close-up model ("near") when there is one. :meth:`detect` runs them all; the live
        pipeline runs a few per frame, round robin."""
        views = self._views(width, height)
        runs = [(v, "far") for v in views]
        if self.near is not None:  # close-up faces filling the frame: the short-range model's job
            runs.append((views[0], "near"))
        return runs

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 (H, W, 3) frame, highest score first, frame-pixel coordinates."""
        frame = check_frame(frame, self.max_pixels)
        height, width = frame.shape[:2]
        return self.detect_views(frame, self.scan_cycle(width, height))

    def detect_views(self, frame: np.ndarray, runs) -> list[Detection]:
        """Faces found in the given ``(view, head)`` runs only (view: (x0, y0, x1, y1) frame
        pixels; head: "far" or "near"), merged by weighted NMS; highest score first."""
        frame = check_frame(frame, self.max_pixels)
        height, width = frame.shape[:2]
        heads = {"far": self.head, "near": self.near}
        found = [r for v, h in runs if heads.get(h) is not None
                 and (r := self._run_view(frame, v, heads[h])) is not None]
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
