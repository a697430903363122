"""edge.recognition.quality: one gate, one order, live and at enrolment."""
import numpy as np

from edge.recognition.quality import GATE_ORDER, assess, gate, yaw_degrees
from edge.types import Detection


def _face(eye_distance: float, nose_shift: float) -> Detection:
    """Keypoints of a face whose eyes are ``eye_distance`` px apart, nose moved sideways by
    ``nose_shift`` times the ear span (0: frontal)."""
    cx, cy, ear = 100.0, 100.0, 3 * eye_distance
    kp = np.array([[cx - eye_distance / 2, cy], [cx + eye_distance / 2, cy], [cx + nose_shift * ear, cy + 10],
                   [cx, cy + 20], [cx - ear / 2, cy], [cx + ear / 2, cy]], np.float32)
    return Detection((cx - ear / 2, cy - ear / 2, cx + ear / 2, cy + ear / 2), 0.9, kp)


def test_profile_is_reported_before_a_short_eye_distance_everywhere():
    det = _face(eye_distance=8.0, nose_shift=0.6)            # small AND turned away
    assert abs(yaw_degrees(det)) > 45
    sharp_chip = np.indices((150, 150)).sum(0).astype(np.uint8)[..., None].repeat(3, 2) * 40
    live = assess(det, sharp_chip, min_interocular_px=20, min_sharpness=0, max_abs_yaw_deg=45)
    assert live.reason == "profile"
    enrol = gate(live.interocular_px, live.sharpness, live.yaw_deg, 20, 0, 45)
    assert enrol[0] == live.reason and "yaw" in enrol[1]


def test_each_check_names_itself_in_the_documented_order():
    assert GATE_ORDER == ("profile", "too_small", "blurred")
    assert gate(30, 100, 0, 20, 50, 45) is None
    assert gate(30, 10, 60, 20, 50, 45)[0] == "profile"
    assert gate(10, 10, 0, 20, 50, 45)[0] == "too_small"
    assert gate(30, 10, 0, 20, 50, 45) == ("blurred", "sharpness 10.0 < 50")
