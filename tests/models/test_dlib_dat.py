"""Tests for models/dlib_dat.py, the parser of dlib's serialized face ResNet.

Tests on the real ``dlib_face_recognition_resnet_model_v1.dat`` skip when the
face_recognition_models package (dev extra ``models``) is not installed.
"""
import random
import sys
from pathlib import Path

import numpy as np
import pytest

# models/ is not an installed package: make it importable from the repository root
# without relying on tests/conftest.py.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from models.dlib_dat import (  # noqa: E402
    AddPrev, Affine, AvgPool, Conv, FullyConnected, MaxPool, Relu, TagOrSkip, _Reader, load_dat,
    parse_dat)


# --------------------------------------------------------------------------- primitives
@pytest.mark.parametrize("raw, value", [
    (b"\x00", 0),
    (b"\x01\x05", 5),
    (b"\x02\x80\x12", 0x1280),
    (b"\x81\x03", -3),
    (b"\x08" + b"\xff" * 8, 2 ** 64 - 1),
])
def test_packed_int(raw, value):
    r = _Reader(raw)
    assert r.int() == value
    assert r.pos == len(raw)


@pytest.mark.parametrize("raw", [b"\x09" + b"\x00" * 9, b"\x11\x00", b"\x02\x01"])
def test_bad_or_short_int_raises_value_error(raw):
    with pytest.raises(ValueError, match="byte offset"):
        _Reader(raw).int()


def test_float_and_special_values():
    # 3 * 2**-1 = 1.5 ; exponent 32000 is +inf in dlib's float_details
    assert _Reader(b"\x01\x03\x81\x01").float() == 1.5
    assert _Reader(b"\x01\x01\x02\x00\x7d").float() == float("inf")


def test_bool_rejects_other_bytes():
    assert _Reader(b"1").bool() is True
    with pytest.raises(ValueError, match="byte offset 0"):
        _Reader(b"\x01").bool()


def test_empty_and_garbage_input():
    for data in (b"", b"\x01", b"\x01\x01\x01\x0dloss_metric_2"):
        with pytest.raises(ValueError, match="byte offset"):
            parse_dat(data)


# --------------------------------------------------------------------------- real file
@pytest.fixture(scope="module")
def dat_path():
    frm = pytest.importorskip("face_recognition_models",
                              reason="face_recognition_models not installed (extra 'models')")
    path = Path(frm.face_recognition_model_location())
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture(scope="module")
def dat_bytes(dat_path):
    return dat_path.read_bytes()


@pytest.fixture(scope="module")
def net(dat_path):
    return load_dat(dat_path)


def test_parses_real_file_exactly(net, dat_bytes):
    assert net.total_bytes == len(dat_bytes)
    assert net.loss == "loss_metric_2"
    assert net.input_size == (150, 150)
    assert net.input_mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-3)
    assert net.distance_threshold == pytest.approx(0.6)
    assert net.margin == pytest.approx(0.04)


def test_layer_counts(net):
    counts = {kind: net.count(kind) for kind in
              ("con", "affine", "relu", "add_prev", "tag_or_skip", "avg_pool", "max_pool", "fc")}
    assert counts == {"con": 29, "affine": 29, "relu": 29, "add_prev": 14, "tag_or_skip": 22,
                      "avg_pool": 5, "max_pool": 1, "fc": 1}
    assert len(net.layers) == sum(counts.values())
    kinds = (Conv, Affine, Relu, AddPrev, TagOrSkip, AvgPool, MaxPool, FullyConnected)
    assert all(isinstance(layer, kinds) for layer in net.layers)


def test_layer_shapes(net):
    first = net.layers[0]
    assert isinstance(first, Conv)
    assert first.weights.shape == (32, 3, 7, 7) and first.bias.shape == (32,)
    assert first.stride == (2, 2) and first.padding == (0, 0)
    # every con is followed by its affine with one gamma per filter
    for a, b in zip(net.layers, net.layers[1:]):
        if isinstance(a, Conv):
            assert isinstance(b, Affine) and b.gamma.shape == b.beta.shape == (a.filters,)
    fc = net.layers[-1]
    assert isinstance(fc, FullyConnected)
    assert fc.weights.shape == (256, 128) and fc.bias is None
    glob = net.layers[-2]
    assert isinstance(glob, AvgPool) and glob.is_global
    n_params = sum(l.weights.size + l.bias.size for l in net.layers if isinstance(l, Conv))
    assert n_params + fc.weights.size == 5607488  # same count as the Keras rebuild
    assert all(np.isfinite(l.weights).all() for l in net.layers if isinstance(l, Conv))


@pytest.mark.parametrize("keep", [0, 1, 17, 200, 334, 341, 20000, -1000, -1])
def test_truncated_copy_raises_value_error(dat_bytes, keep):
    cut = dat_bytes[:keep] if keep >= 0 else dat_bytes[:len(dat_bytes) + keep]
    with pytest.raises(ValueError, match=r"byte offset \d+"):
        parse_dat(cut)


def test_trailing_bytes_raise_value_error(dat_bytes):
    with pytest.raises(ValueError, match=f"byte offset {len(dat_bytes)}.*trailing"):
        parse_dat(dat_bytes + b"\x00")


def _corrupt(data: bytes, pos: int, value: int) -> bytes:
    b = bytearray(data)
    b[pos] = value
    return bytes(b)


def test_corrupted_structural_bytes_raise_value_error(net, dat_bytes):
    positions = [0, 3, 17]  # loss version, loss name, first header version
    for layer in net.layers:
        if not isinstance(layer, TagOrSkip):
            positions.append(layer.offset + 2)  # first character of the layer name
    positions.append(net.layers[0].offset + 9)  # first conv: tensor dimension header
    for pos in positions:
        with pytest.raises(ValueError, match=r"byte offset \d+"):
            parse_dat(_corrupt(dat_bytes, pos, dat_bytes[pos] ^ 0x7F))


def test_corrupted_layer_name_reports_its_offset(net, dat_bytes):
    relu = next(l for l in net.layers if isinstance(l, Relu))
    bad = _corrupt(dat_bytes, relu.offset + 2, ord("x"))  # "relu_" -> "xelu_"
    with pytest.raises(ValueError, match=f"byte offset {relu.offset}: unknown layer type 'xelu_'"):
        parse_dat(bad)


def test_non_finite_weight_raises_value_error(net, dat_bytes):
    first = net.layers[0]
    value = first.weights.ravel()[0].astype("<f4").tobytes()
    pos = dat_bytes.index(value, first.offset)
    b = bytearray(dat_bytes)
    b[pos:pos + 4] = np.float32(np.nan).astype("<f4").tobytes()
    with pytest.raises(ValueError, match="non-finite"):
        parse_dat(bytes(b))


def test_random_corruption_only_ever_raises_value_error(net, dat_bytes):
    """Corrupt single bytes near layer boundaries: parse succeeds or raises ValueError."""
    rng = random.Random(0)
    anchors = [0] + [l.offset for l in net.layers]
    failures = 0
    for _ in range(60):
        pos = min(len(dat_bytes) - 1, rng.choice(anchors) + rng.randrange(0, 40))
        try:
            parse_dat(_corrupt(dat_bytes, pos, rng.randrange(256)))
        except ValueError:
            failures += 1
    assert failures > 0
