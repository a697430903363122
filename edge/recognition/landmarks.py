"""Landmark refinement: MediaPipe's face-mesh model turns a detection into precise points.

BlazeFace's six keypoints are coarse (a few pixels of scatter at LFW scale); the embedder
was trained on chips aligned from eye corners and the base of the nose. The mesh model
(468 points, Apache-2.0) finds those on a 192x192 crop rotated upright from the detector's
eye keypoints; :data:`MESH_POINTS` picks the five that match dlib's 5-point layout.

The float model and its full-integer rebuild (``face_landmark_int8``, for the Coral Edge TPU)
run through the same code: an integer model takes its pixels through a 256-entry lookup table
(pixel p -> the quantized value of p / 255) and its outputs are dequantized as
``(q - zero_point) * scale``.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.recognition.detect import _quantization
from edge.recognition.runtime import LoadedModel
from edge.types import Detection

# right eye outer/inner corner, left eye inner/outer corner, base of the nose (mesh indices)
MESH_POINTS = (33, 133, 362, 263, 2)
ROI_SCALE = 1.5  # crop side relative to the detection box, as MediaPipe's face-mesh graph does


class LandmarkRefiner:
    """``points(frame, detection)`` -> (float32 (5, 2) frame pixels, face presence in [0, 1])."""

    def __init__(self, model: LoadedModel, indices=MESH_POINTS):
        self.model = model
        self.size = int(model.inputs[0]["shape"][1])
        self.indices = np.asarray(indices)
        outs = model.outputs
        self._mesh_index = 0 if int(np.prod(outs[0]["shape"])) > 1 else 1
        self.n_points = int(np.prod(outs[self._mesh_index]["shape"])) // 3
        inp = model.inputs[0]
        self.input_dtype = np.dtype(inp["dtype"])
        self.lut = None
        if np.issubdtype(self.input_dtype, np.integer):
            scale, zero = _quantization(inp, model.name, "input")
            info = np.iinfo(self.input_dtype)
            real = np.arange(256, dtype=np.float64) / 255.0
            self.lut = np.clip(np.round(real / scale + zero), info.min, info.max).astype(self.input_dtype)
        self.dequant = [_quantization(d, model.name, "output") if np.issubdtype(np.dtype(d["dtype"]), np.integer)
                        else None for d in outs]

    def prepare(self, crop: np.ndarray) -> np.ndarray:
        """The model input for a (size, size, 3) uint8 RGB crop."""
        if self.lut is not None:  # cv2.LUT maps bytes to bytes: reinterpret for int8 models
            return cv2.LUT(crop, self.lut.view(np.uint8)).view(self.input_dtype)[None]
        return crop.astype(np.float32)[None] * (1.0 / 255.0)

    def _output(self, outs: list[np.ndarray], k: int) -> np.ndarray:
        q = self.dequant[k]
        a = outs[k]
        return a if q is None else (a.astype(np.float32) - q[1]) * q[0]

    def roi_transform(self, det: Detection) -> np.ndarray:
        """2x3 matrix from frame pixels to the model's upright square crop."""
        x0, y0, x1, y1 = det.box
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        side = max(x1 - x0, y1 - y0) * ROI_SCALE
        right_eye, left_eye = det.keypoints[0].astype(np.float64), det.keypoints[1].astype(np.float64)
        angle = np.arctan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0])
        k = self.size / max(side, 1e-6)
        c, s = np.cos(-angle) * k, np.sin(-angle) * k
        m = np.array([[c, -s, 0.0], [s, c, 0.0]])
        m[:, 2] = np.array([self.size / 2.0, self.size / 2.0]) - m[:, :2] @ np.array([cx, cy])
        return m

    def points(self, frame: np.ndarray, det: Detection) -> tuple[np.ndarray, float]:
        m = self.roi_transform(det)
        crop = cv2.warpAffine(frame, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        outs = self.model.run(self.prepare(crop))
        mesh = self._output(outs, self._mesh_index).reshape(self.n_points, 3)[self.indices, :2].astype(np.float64)
        logit = float(np.ravel(self._output(outs, 1 - self._mesh_index))[0])
        back = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
        pts = mesh @ back[:, :2].T + back[:, 2]
        presence = 1.0 / (1.0 + np.exp(-np.clip(logit, -80, 80)))
        return pts.astype(np.float32), presence
