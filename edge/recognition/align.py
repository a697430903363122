"""Face alignment: warp a detected face into the 150x150 chip the embedder was trained on.

dlib's ResNet was trained on chips made by ``get_face_chip(size=150, padding=0.25)`` from
a 5-point landmark fit. We reproduce that geometry from landmark points (face-mesh eye
corners and nose base, or BlazeFace's coarser keypoints): the template (where each point
lands in dlib's chip, on average) was fitted on real faces by ``models/fit_alignment.py``
and is stored in the model manifest with the point set chosen by measured accuracy. A
least-squares similarity transform maps the points onto it.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.types import Detection

CHIP_SIZE = 150


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking src (K, 2) to dst (K, 2).

    Returns a 2x3 float64 matrix M with dst ~= M[:, :2] @ src + M[:, 2] (Umeyama, no reflection).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s ** 2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("keypoints are degenerate (all at one point)")
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        fix[1, 1] = -1
    rot = u @ fix @ vt
    scale = np.trace(np.diag(sig) @ fix) / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


class Aligner:
    """Makes 150x150 RGB uint8 chips from a frame and landmark points.

    template: (K, 2) chip coordinates where the K alignment points should land.
    source: "detector" (points = BlazeFace keypoints ``indices``) or "mesh" (points from
    :class:`edge.recognition.landmarks.LandmarkRefiner`, face-mesh ``indices``).
    """

    def __init__(self, template, indices, source: str = "detector", size: int = CHIP_SIZE):
        self.template = np.asarray(template, np.float64)
        self.indices = list(indices)
        self.source = source
        self.size = size
        if source not in ("detector", "mesh"):
            raise ValueError(f"unknown alignment source {source!r}")
        if self.template.shape != (len(self.indices), 2):
            raise ValueError(f"alignment template shape {self.template.shape} does not match "
                             f"{len(self.indices)} points")

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Aligner":
        spec = manifest.get("alignment")
        if not isinstance(spec, dict):
            raise ValueError("model manifest has no 'alignment' section; rebuild with models/build.py")
        return cls(spec["template"], spec["points"], spec.get("source", "detector"),
                   int(spec.get("chip_size", CHIP_SIZE)))

    def transform(self, points: np.ndarray) -> np.ndarray:
        """2x3 matrix mapping frame pixels to chip pixels, from the (K, 2) alignment points."""
        return similarity_transform(points, self.template)

    def detector_points(self, detection: Detection) -> np.ndarray:
        return detection.keypoints[self.indices]

    def chip(self, frame: np.ndarray, detection: Detection, points: np.ndarray | None = None) -> np.ndarray:
        """The aligned (size, size, 3) uint8 chip; border pixels outside the frame are black.

        ``points``: the (K, 2) alignment points; by default the detection's own keypoints."""
        m = self.transform(self.detector_points(detection) if points is None else points)
        scale = float(np.hypot(m[0, 0], m[0, 1]))  # chip pixels per frame pixel
        if scale < 0.5:
            # shrink the neighbourhood first so the warp does not alias (dlib uses a pyramid too)
            x0, y0, x1, y1 = detection.box
            pad = max(x1 - x0, y1 - y0)
            cx0, cy0 = int(max(0, x0 - pad)), int(max(0, y0 - pad))
            cx1, cy1 = int(min(frame.shape[1], x1 + pad)), int(min(frame.shape[0], y1 + pad))
            crop = frame[cy0:cy1, cx0:cx1]
            f = min(1.0, 2.0 * scale)
            small = cv2.resize(crop, (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f))),
                               interpolation=cv2.INTER_AREA)
            fx, fy = small.shape[1] / crop.shape[1], small.shape[0] / crop.shape[0]
            to_small = np.array([[fx, 0, -cx0 * fx], [0, fy, -cy0 * fy], [0, 0, 1]])
            m = m @ np.linalg.inv(to_small)
            frame = small
        return cv2.warpAffine(frame, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
