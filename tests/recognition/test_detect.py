"""Detection: anchors, NMS, tiling, and recall on the 43 ground-truth faces of ../shared/faces/scenes."""
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from edge.config import validate
from edge.recognition.detect import FaceDetector, iou_matrix, make_anchors, tile_windows, weighted_nms
from edge.errors import InputError
from edge.recognition.images import load_image
from edge.recognition.runtime import open_model


def ground_truth(scenes):
    out = []
    for name in ("training.xml", "testing.xml"):
        for im in ET.parse(scenes / name).getroot().iter("image"):
            boxes = [(int(b.get("left")), int(b.get("top")), int(b.get("left")) + int(b.get("width")),
                      int(b.get("top")) + int(b.get("height"))) for b in im.iter("box") if b.get("ignore") != "1"]
            out.append((im.get("file"), np.array(boxes, float)))
    return out


def recall(detector, scenes):
    hit = total = 0
    for file, boxes in ground_truth(scenes):
        dets = detector.detect(load_image(scenes / file))
        total += len(boxes)
        if dets:
            hit += int((iou_matrix(boxes, np.array([d.box for d in dets])).max(1) >= 0.4).sum())
    return hit, total


def test_anchor_layouts_match_the_models():
    assert make_anchors(192).shape == (2304, 2)
    assert make_anchors(128).shape == (896, 2)
    a = make_anchors(192)
    assert np.allclose(a[0], [0.5 / 48, 0.5 / 48]) and np.allclose(a[1], [1.5 / 48, 0.5 / 48])


def test_weighted_nms_merges_overlaps_and_keeps_separate_faces():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)
    kps = np.zeros((3, 6, 2), np.float32)
    kps[1] += 1
    scores = np.array([0.9, 0.9, 0.6], np.float32)
    out = weighted_nms(boxes, kps, scores, 0.3, 10)
    assert len(out) == 2
    assert np.allclose(out[0][0], [0.5, 0, 10.5, 10]) and np.allclose(out[0][1], 0.5)
    assert out[1][2] == pytest.approx(0.6)
    assert len(weighted_nms(boxes, kps, scores, 0.3, 1)) == 1


def test_tiles_cover_the_frame_with_overlap():
    tiles = tile_windows(1920, 1080, 480, 0.25)
    covered = np.zeros((1080, 1920), bool)
    for x0, y0, x1, y1 in tiles:
        assert x1 - x0 == 480 and y1 - y0 == 480
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert tile_windows(400, 300, 480, 0.25) == []


@pytest.fixture(scope="module")
def full_range():
    return open_model("blazeface_full_range", threads=2)


def test_recall_on_43_ground_truth_boxes_whole_frame(full_range, faces_dir):
    hit, total = recall(FaceDetector(full_range, score_threshold=0.5), faces_dir / "scenes")
    assert total == 43
    assert hit / total >= 0.9, f"recall {hit}/{total}"


def test_tiling_finds_small_faces_in_a_1080p_frame(full_range, public_faces):
    """A ~44 px face pasted into a 1920x1080 frame: missed whole-frame, found with tiles."""
    import cv2
    face = public_faces["grace_hopper"]
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    small = cv2.resize(face, (int(face.shape[1] * 120 / face.shape[0]), 120), interpolation=cv2.INTER_AREA)
    frame[700:700 + small.shape[0], 1500:1500 + small.shape[1]] = small
    whole = FaceDetector(full_range, score_threshold=0.5).detect(frame)
    tiled = FaceDetector(full_range, score_threshold=0.5, tile_size=480).detect(frame)
    assert tiled, "tiling should find the small face"
    w = tiled[0].width
    assert 30 <= w <= 70
    assert not whole, "a face this small should be below the whole-frame detector's reach"


def test_roi_restricts_detection(full_range, public_faces):
    face = public_faces["grace_hopper"]
    frame = np.zeros((face.shape[0], face.shape[1] * 2, 3), np.uint8)
    frame[:, : face.shape[1]] = face
    assert FaceDetector(full_range).detect(frame)
    assert not FaceDetector(full_range, roi=[0.5, 0.0, 1.0, 1.0]).detect(frame)


def test_from_config_and_bad_frames(full_range):
    det = FaceDetector.from_config(full_range, validate({"detector": {"tile_size": 320}}))
    assert det.tile_size == 320
    assert det.detect(np.zeros((64, 64, 3), np.uint8)) == []
    for bad, word in [(np.zeros((64, 64), np.uint8), "grayscale"), (np.zeros((64, 64, 4), np.uint8), "RGBA"),
                      (np.zeros((1, 1, 3), np.uint8), "too small"), (np.zeros((64, 64, 3), np.float64), "dtype")]:
        with pytest.raises(InputError, match=word):
            det.detect(bad)
