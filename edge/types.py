"""Small frozen records passed from one stage to the next.

Coordinates are frame pixels (x to the right, y down), floats. Keypoints follow
BlazeFace's order; "right" is the subject's right, which appears on the image's left.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the command line reads unit ids without loading numpy
    import numpy as np

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")
CATEGORIES = ("wanted", "missing", "vulnerable")
#: A unit id (and an MQTT topic segment): it becomes a topic level, a certificate CN and a
#: file name, so it may hold no "/", "+", "#", dot or space. Always matched whole.
UNIT_ID_PATTERN = "[A-Za-z0-9_-]{1,64}"
UNIT_ID_RE = re.compile(UNIT_ID_PATTERN)


def is_unit_id(value: object) -> bool:
    """True when ``value`` is a whole unit id (no trailing newline slips through ``$``)."""
    return isinstance(value, str) and UNIT_ID_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class Detection:
    """One face found by the detector.

    box: (x0, y0, x1, y1) in frame pixels.  score: detector confidence in [0, 1].
    keypoints: float32 array (6, 2) of (x, y) frame pixels in KEYPOINT_NAMES order.
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray = field(repr=False)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


@dataclass(frozen=True)
class Quality:
    """Measurements of one aligned face and the gate's verdict.

    interocular_px: eye-centre distance in frame pixels.  sharpness: variance of the
    Laplacian of the grey chip.  yaw_deg: signed head-yaw estimate in degrees.
    reason: None when the face passed, else the first gate it failed
    ("too_small", "blurred", "profile").
    """

    interocular_px: float
    sharpness: float
    yaw_deg: float
    reason: str | None = None

    @property
    def passed(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class Face:
    """A detected face with its aligned 150x150 RGB uint8 chip, quality and (if it passed
    the gate) its L2-normalised float32 embedding of shape (128,)."""

    detection: Detection
    chip: np.ndarray = field(repr=False)
    quality: Quality
    embedding: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Match:
    """The matcher's answer for one probe.

    score: cosine similarity to the best watchlist entry, in [-1, 1].
    margin: score minus the best score of a different subject (inf when the list has one subject).
    is_hit: score >= threshold for the subject's category.
    """

    subject_id: str
    category: str
    score: float
    threshold: float
    margin: float
    index: int

    @property
    def is_hit(self) -> bool:
        return self.score >= self.threshold
