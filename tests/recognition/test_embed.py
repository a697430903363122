"""int8 embedder: parity with the float model (and with dlib itself when installed) on real faces."""
import numpy as np
import pytest

from edge.recognition.embed import Embedder
from edge.errors import InputError
from edge.recognition.images import load_image
from edge.recognition.runtime import open_model


def real_chips(recognizer, faces_dir, count=60):
    people = sorted(p for p in (faces_dir / "lfw-dev").iterdir() if p.is_dir())
    rng = np.random.default_rng(3)
    chips = []
    for i in rng.choice(len(people), count * 2, replace=False):
        img = load_image(sorted(people[i].glob("*.jpg"))[0])
        faces = recognizer.faces(img, embed=False)
        if faces:
            chips.append(faces[0].chip)
        if len(chips) == count:
            break
    return np.stack(chips)


@pytest.fixture(scope="module")
def chips(recognizer, faces_dir):
    return real_chips(recognizer, faces_dir)


def test_int8_matches_float_on_real_faces(recognizer, chips):
    int8 = Embedder(open_model("dlib_resnet_v1_int8", threads=2))
    float_model = Embedder(open_model("dlib_resnet_v1_float32", threads=2))
    a = int8.embed(chips)
    b = float_model.embed(chips)
    cos = (a * b).sum(1)
    assert len(cos) == 60
    assert cos.min() >= 0.995, f"worst int8-vs-float cosine {cos.min():.4f}"


def test_embeddings_are_unit_norm_and_discriminative(recognizer, chips):
    e = recognizer.embedder.embed(chips)
    assert e.shape == (60, 128) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    off = (e @ e.T)[~np.eye(60, dtype=bool)]
    assert np.median(off) < 0.85  # different people are not all alike


def test_int8_matches_dlib_itself(recognizer, chips):
    dlib = pytest.importorskip("dlib", reason="dlib-bin not installed (pip install -e '.[reference]')")
    frm = pytest.importorskip("face_recognition_models")
    facerec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    ours = Embedder(open_model("dlib_resnet_v1_int8", threads=2)).embed(chips[:20])
    for chip, e in zip(chips[:20], ours):
        ref = np.array(facerec.compute_face_descriptor(chip))
        assert float(e @ ref / np.linalg.norm(ref)) >= 0.99


def test_mirror_average_is_the_mean_of_chip_and_mirror(chips):
    model = open_model("dlib_resnet_v1_int8", threads=2)
    plain, mirrored = Embedder(model), Embedder(model, mirror_average=True)
    c = chips[:5]
    expect = plain.embed(c) + plain.embed(np.ascontiguousarray(c[:, :, ::-1]))
    expect /= np.linalg.norm(expect, axis=1, keepdims=True)
    # rows were normalised before summing in `expect`; norms are near-equal, so cosine ~ 1
    assert np.all((mirrored.embed(c) * expect).sum(1) > 0.9999)


def test_bad_chips_are_refused(recognizer):
    for bad, word in [(np.zeros((150, 150, 3), np.float32), "uint8"), (np.zeros((10, 10, 3), np.uint8), "shape"),
                      ([1, 2, 3], "uint8")]:
        with pytest.raises(InputError, match=word):
            recognizer.embedder.embed(bad)


def test_embed_image_needs_a_face(recognizer, public_faces):
    with pytest.raises(InputError, match="no face"):
        recognizer.embed_image(np.full((200, 200, 3), 127, np.uint8))
    g = recognizer.embed_image(public_faces["grace_hopper"])
    g2 = recognizer.embed_image(np.ascontiguousarray(public_faces["grace_hopper"][:, ::-1]))
    a = recognizer.embed_image(public_faces["astronaut"])
    assert float(g @ g2) > 0.97 and float(g @ a) < 0.93
