"""Alignment geometry and quality-gate measurements on real faces."""
import numpy as np
import pytest

from edge.recognition.align import Aligner, similarity_transform
from edge.recognition.quality import assess, yaw_degrees
from edge.types import Detection


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, t = 0.3, 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + t
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], rot) and np.allclose(m[:, 2], t)


def test_similarity_transform_refuses_degenerate_points():
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((4, 2)), np.zeros((4, 2)))


def test_template_must_match_keypoints():
    with pytest.raises(ValueError, match="does not match"):
        Aligner(np.zeros((3, 2)), [0, 1])


def test_chip_puts_keypoints_on_the_template(recognizer, public_faces):
    img = public_faces["grace_hopper"]
    det = recognizer.detector.detect(img)[0]
    al = recognizer.aligner
    chip = recognizer.chip(img, det)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
    points = recognizer.alignment_points(img, det)
    m = al.transform(points)
    mapped = points @ m[:, :2].T + m[:, 2]
    # the eye points land within 3 chip pixels of where dlib's 5-point chips put them on average
    assert np.abs(mapped[:2] - al.template[:2]).max() < 3.0


def test_big_faces_are_shrunk_without_aliasing(recognizer, public_faces):
    """A face 4x larger than the chip gives nearly the same chip as the original size."""
    import cv2
    img = public_faces["grace_hopper"]
    big = cv2.resize(img, (img.shape[1] * 4, img.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    d1 = recognizer.detector.detect(img)[0]
    d4 = recognizer.detector.detect(big)[0]
    e1 = recognizer.embedder.embed(recognizer.chip(img, d1))[0]
    e4 = recognizer.embedder.embed(recognizer.chip(big, d4))[0]
    assert float(e1 @ e4) > 0.97


def test_quality_gate_reasons(recognizer, public_faces):
    img = public_faces["grace_hopper"]
    det = recognizer.detector.detect(img)[0]
    chip = recognizer.chip(img, det)
    ok = assess(det, chip, 10, 5, 45)
    assert ok.passed and ok.interocular_px > 30 and abs(ok.yaw_deg) < 20
    assert assess(det, chip, 1000, 5, 45).reason == "too_small"
    assert assess(det, chip, 10, 1e6, 45).reason == "blurred"
    import cv2
    blurred = cv2.GaussianBlur(chip, (0, 0), 4)
    assert assess(det, blurred, 10, 15, 45).reason == "blurred"


def test_yaw_estimate_from_keypoints():
    frontal = np.array([[40, 50], [60, 50], [50, 60], [50, 70], [25, 52], [75, 52]], np.float32)
    assert abs(yaw_degrees(Detection((0, 0, 100, 100), 0.9, frontal))) < 1
    turned = frontal.copy()
    turned[2, 0] = 70  # nose far toward the left ear: a near-profile
    assert yaw_degrees(Detection((0, 0, 100, 100), 0.9, turned)) > 35
