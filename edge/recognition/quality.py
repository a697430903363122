"""Quality gate: a face that is too small, blurred or in profile is never embedded.

Pure numpy/OpenCV on one detection and its chip; the caller counts the reasons.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.types import Detection, Quality

RIGHT_EYE, LEFT_EYE, NOSE, MOUTH, RIGHT_EAR, LEFT_EAR = range(6)


def interocular_px(det: Detection) -> float:
    """Eye-centre distance in frame pixels."""
    return float(np.linalg.norm(det.keypoints[LEFT_EYE] - det.keypoints[RIGHT_EYE]))


def sharpness(chip: np.ndarray) -> float:
    """Variance of the Laplacian of the grey chip (higher is sharper)."""
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def yaw_degrees(det: Detection) -> float:
    """Head yaw from the ear tragions and the nose tip, modelling the head as a circle:
    the ears sit at +-90 degrees, so the nose's offset from the ears' midpoint along the ear
    axis is R sin(yaw) while the ear span is 2R cos(yaw). Positive: the nose points toward
    the image's right. Near 0 for a frontal face, beyond ~45 for a profile."""
    kp = det.keypoints.astype(np.float64)
    axis = kp[LEFT_EAR] - kp[RIGHT_EAR]
    span = float(np.linalg.norm(axis))
    if span < 1e-6:
        return 90.0
    offset = float((kp[NOSE] - (kp[LEFT_EAR] + kp[RIGHT_EAR]) / 2) @ axis / span)
    return float(np.degrees(np.arctan2(2.0 * offset, span)))


#: The gate's checks, in the one order both the live path and enrolment apply them: yaw first,
#: because a head turned away also shows a short eye distance, which is not the problem to report.
GATE_ORDER = ("profile", "too_small", "blurred")


def gate(interocular: float, sharp: float, yaw: float, min_interocular_px: float, min_sharpness: float,
         max_abs_yaw_deg: float) -> tuple[str, str] | None:
    """The first check (in :data:`GATE_ORDER`) a face fails, as ``(reason, detail)``; None if it passes."""
    if abs(yaw) > max_abs_yaw_deg:
        return "profile", f"head yaw {yaw:.0f} deg beyond {max_abs_yaw_deg:g}"
    if interocular < min_interocular_px:
        return "too_small", f"eye distance {interocular:.1f} px < {min_interocular_px:g} px"
    if sharp < min_sharpness:
        return "blurred", f"sharpness {sharp:.1f} < {min_sharpness:g}"
    return None


def assess(det: Detection, chip: np.ndarray, min_interocular_px: float, min_sharpness: float,
           max_abs_yaw_deg: float) -> Quality:
    """Measure a face and name the first gate it fails (None if it passes)."""
    iod, sharp, yaw = interocular_px(det), sharpness(chip), yaw_degrees(det)
    failed = gate(iod, sharp, yaw, min_interocular_px, min_sharpness, max_abs_yaw_deg)
    return Quality(iod, sharp, yaw, failed[0] if failed else None)
