"""Full-integer BlazeFace (models/blazeface_*_int8.tflite): same faces as the float model.

Recall on the 43 ground-truth boxes of ../shared/faces/scenes within 1 point of the float
detector, detections matched box for box, keypoints close, and the int8 plumbing of
edge.recognition.detect (pixel lookup table, dequantization, regressors split over three outputs).
"""
import numpy as np
import pytest

from edge.recognition.detect import FaceDetector, _Head, _output_layout, iou_matrix
from edge.recognition.images import load_image
from edge.recognition.runtime import LoadedModel, find_models_dir, load_manifest, open_model
from tests.recognition.test_detect import ground_truth, recall


@pytest.fixture(scope="module")
def models():
    d = find_models_dir()
    have = load_manifest(d)["models"]
    if "blazeface_full_range_int8" not in have:
        pytest.skip("models/manifest.json has no int8 detector (python models/build.py --only detector-int8)")
    return {n: open_model(n, d, threads=2) for n in ("blazeface_full_range", "blazeface_full_range_int8",
                                                    "blazeface_short_range", "blazeface_short_range_int8")}


def _match(ref, cand):
    """Greedy IoU >= 0.5 matching: [(ref det, cand det, iou)]."""
    if not ref or not cand:
        return []
    m = iou_matrix(np.array([d.box for d in ref]), np.array([d.box for d in cand]))
    pairs, used_r, used_c = [], set(), set()
    for flat in np.argsort(-m, axis=None):
        i, j = divmod(int(flat), m.shape[1])
        if m[i, j] < 0.5:
            break
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
            pairs.append((ref[i], cand[j], float(m[i, j])))
    return pairs


def test_int8_models_take_int8_pixels_and_give_int8_outputs(models):
    for name in ("blazeface_full_range_int8", "blazeface_short_range_int8"):
        m = models[name]
        assert m.inputs[0]["dtype"] == np.int8 and all(d["dtype"] == np.int8 for d in m.outputs)
        roles = [o["role"] for o in m.spec["outputs"]]
        assert roles.count("classificators") == 1 and roles.count("regressors") == 3


@pytest.mark.parametrize("tile_size", [0, 512])
def test_int8_recall_on_43_boxes_within_1_point_of_float(models, faces_dir, tile_size):
    scenes = faces_dir / "scenes"
    f_hit, total = recall(FaceDetector(models["blazeface_full_range"], 0.5, tile_size=tile_size), scenes)
    i_hit, total_i = recall(FaceDetector(models["blazeface_full_range_int8"], 0.5, tile_size=tile_size), scenes)
    assert total == total_i == 43
    assert i_hit / total >= f_hit / total - 0.01, f"int8 {i_hit}/43 vs float {f_hit}/43"


def test_int8_detections_match_float_box_for_box(models, faces_dir):
    scenes = faces_dir / "scenes"
    f_det = FaceDetector(models["blazeface_full_range"], 0.5)
    i_det = FaceDetector(models["blazeface_full_range_int8"], 0.5)
    n_ref = n_cand = 0
    ious, kp_rel = [], []
    for file, _ in ground_truth(scenes):
        img = load_image(scenes / file)
        ref, cand = f_det.detect(img), i_det.detect(img)
        n_ref, n_cand = n_ref + len(ref), n_cand + len(cand)
        for r, c, iou in _match(ref, cand):
            ious.append(iou)
            kp_rel.extend(np.linalg.norm(r.keypoints - c.keypoints, axis=1) / r.width)
    assert len(ious) >= 0.95 * max(n_ref, n_cand), f"matched {len(ious)} of {n_ref} float / {n_cand} int8"
    assert np.mean(ious) >= 0.92 and min(ious) >= 0.7
    assert np.median(kp_rel) <= 0.03, f"median keypoint error {np.median(kp_rel):.3f} face widths"


def test_short_range_int8_finds_the_faces_of_search_regions(models, faces_dir):
    """The close-up model runs on 3-face-width regions around tracked faces (pipeline.roi_model)."""
    scenes = faces_dir / "scenes"
    f_det = FaceDetector(models["blazeface_short_range"], 0.6)
    i_det = FaceDetector(models["blazeface_short_range_int8"], 0.6)
    found_f = found_i = matched = 0
    for file, boxes in ground_truth(scenes):
        img = load_image(scenes / file)
        h, w = img.shape[:2]
        for x0, y0, x1, y1 in boxes:
            side = 3 * max(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            v = img[int(max(0, cy - side / 2)):int(min(h, cy + side / 2)),
                    int(max(0, cx - side / 2)):int(min(w, cx + side / 2))]
            ref, cand = f_det.detect(v), i_det.detect(v)
            found_f, found_i = found_f + len(ref), found_i + len(cand)
            matched += len(_match(ref, cand))
    assert found_f >= 30
    assert matched >= 0.9 * found_f and found_i <= found_f + 3, (found_f, found_i, matched)


def test_pixel_lookup_table_equals_quantizing_the_float_input(models):
    head = _Head(models["blazeface_full_range_int8"], 0.5)
    scale, zero = models["blazeface_full_range_int8"].inputs[0]["quantization"]
    canvas = np.arange(192 * 192 * 3, dtype=np.int64).reshape(192, 192, 3) % 256
    canvas = canvas.astype(np.uint8)
    expected = np.clip(np.round((canvas / 127.5 - 1.0) / scale + zero), -128, 127).astype(np.int8)
    got = head.prepare(canvas)
    assert got.dtype == np.int8 and got.shape == (1, 192, 192, 3)
    assert np.array_equal(got[0], expected)


def test_regressors_are_gathered_from_their_three_outputs(models, public_faces):
    m = models["blazeface_full_range_int8"]
    head = _Head(m, 0.5)
    canvas = np.zeros((192, 192, 3), np.uint8)
    outs = m.run(head.prepare(canvas))
    reg = head.regressors(outs)
    assert reg.shape == (2304, 16) and reg.dtype == np.float32
    for k, o in enumerate(m.spec["outputs"]):
        if o["role"] == "regressors":
            a, b = o["channels"]
            scale, zero = m.outputs[k]["quantization"]
            assert np.allclose(reg[:, a:b], (outs[k][0].astype(np.float32) - zero) * scale)
    rows = np.array([5, 100, 2000])
    assert np.allclose(head.regressors(outs, rows), reg[rows])
    # the int8 and float detectors agree on a real face
    face = public_faces["grace_hopper"]
    f, i = FaceDetector(models["blazeface_full_range"]).detect(face), FaceDetector(m).detect(face)
    assert len(f) == len(i) >= 1 and iou_matrix(np.array([f[0].box]), np.array([i[0].box]))[0, 0] > 0.85


def test_output_layout_from_manifest_roles_and_from_shapes(models):
    m = models["blazeface_full_range_int8"]
    cls, parts = _output_layout(m)
    assert m.spec["outputs"][cls]["role"] == "classificators"
    assert [(a, b) for _, a, b in parts] == [(0, 2), (2, 4), (4, 16)]
    # a float model without roles falls back to the shapes
    f = models["blazeface_full_range"]
    bare = LoadedModel(f.name, f.path, f.sha256, {}, "cpu", "", f.backend, f.interpreter)
    cls, parts = _output_layout(bare)
    assert parts == [(1 - cls, 0, 16)]
    # roles that do not cover the 16 regressor channels are refused
    spec = {"outputs": [dict(o) for o in m.spec["outputs"]]}
    for o in spec["outputs"]:
        if o.get("channels") == [2, 4]:
            o["channels"] = [2, 3]
    bad = LoadedModel(m.name, m.path, m.sha256, spec, "cpu", "", m.backend, m.interpreter)
    with pytest.raises(ValueError):
        _output_layout(bad)


def test_upsampling_decomposition_equals_half_pixel_bilinear_resize():
    """The Edge TPU-safe 2x upsampling (slices, concatenations, depthwise convolutions,
    reshapes) computes exactly what RESIZE_BILINEAR(half_pixel_centers=True) does."""
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tflite")
    import keras
    from models.blazeface_keras import upsample2x_bilinear
    x = np.random.default_rng(0).normal(size=(1, 6, 5, 7)).astype(np.float32)
    inp = keras.Input(shape=(6, 5, 7), batch_size=1)
    model = keras.Model(inp, upsample2x_bilinear(inp, "up"))
    ours = np.asarray(model(x))
    ref = tf.compat.v1.image.resize_bilinear(x, [12, 10], align_corners=False, half_pixel_centers=True).numpy()
    assert ours.shape == (1, 12, 10, 7)
    assert np.abs(ours - ref).max() < 1e-5


def test_keras_rebuild_of_the_short_range_model_matches_the_file(faces_dir):
    """The generic flatbuffer-to-Keras walker reproduces MediaPipe's model on a real photo."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tflite")
    from models.blazeface_int8 import _reassemble, letterbox, load_model, raw_outputs
    from models.blazeface_keras import build_keras_from_tflite
    path = find_models_dir() / "blazeface_short_range.tflite"
    km = build_keras_from_tflite(path, ["regressors", "classificators"],
                                 split_outputs={0: [(0, 2), (2, 4), (4, 16)]})
    canvas = letterbox(load_image(faces_dir / "scenes" / "2008_002506.jpg"), 128)
    reg_ref, logit_ref = raw_outputs(load_model(path, "original", 1, reference_kernels=True), canvas)
    reg, logits = _reassemble(km.output_names, km((canvas.astype(np.float32) / 127.5 - 1.0)[None]))
    candidates = logit_ref > -5  # anchors that could become detections
    assert candidates.any()
    assert np.abs(reg - reg_ref)[candidates].max() < 1e-3
    assert np.abs(logits - logit_ref)[candidates].max() < 1e-3
    assert (np.abs(logits - logit_ref) / np.maximum(1, np.abs(logit_ref))).max() < 1e-3
