"""Every int8 model would map whole onto the Coral Edge TPU: its operators against the list in
Coral's documentation, its tensors 8-bit (int32 only for constants such as biases).

The list and the per-op limitations are in models/edgetpu_ops.py, taken from Coral,
"TensorFlow models on the Edge TPU", https://coral.ai/docs/edgetpu/models-intro/
(sections "Model requirements" and "Supported operations").
"""
import numpy as np
import pytest

from edge.recognition.runtime import find_models_dir, load_manifest
from models.edgetpu_ops import AVOID, EDGETPU_OPS, check_model, operator_names


def _int8_models():
    d = find_models_dir()
    models = load_manifest(d)["models"]
    return d, {n: e for n, e in sorted(models.items()) if e.get("precision") == "int8"}


def test_the_int8_models_are_there():
    _, int8 = _int8_models()
    assert {"dlib_resnet_v1_int8", "blazeface_full_range_int8", "blazeface_short_range_int8",
            "face_landmark_int8"} <= set(int8)


def test_every_per_face_role_has_a_full_integer_model():
    """On a Coral unit detection, landmarks and embedding can all stay on the Edge TPU."""
    _, int8 = _int8_models()
    assert {e["role"] for e in int8.values()} >= {"detector", "landmarks", "embedder"}


@pytest.mark.parametrize("name", sorted(_int8_models()[1]))
def test_every_op_of_every_int8_model_is_an_edge_tpu_op(name):
    d, int8 = _int8_models()
    path = d / int8[name]["file"]
    ops = operator_names(path)
    assert ops, f"{name}: no operators read"
    unsupported = sorted({op for op in ops if op not in EDGETPU_OPS})
    assert not unsupported, f"{name}: operators the Edge TPU does not run: {unsupported}"
    assert not set(ops) & set(AVOID), f"{name}: uses {sorted(set(ops) & set(AVOID))}"


@pytest.mark.parametrize("name", sorted(_int8_models()[1]))
def test_every_int8_model_passes_the_full_edge_tpu_check(name):
    d, int8 = _int8_models()
    result = check_model(d / int8[name]["file"])
    assert result["problems"] == [], f"{name}: {result['problems'][:10]}"
    pytest.importorskip("tflite")
    assert result["options_checked"], "fused activations / dilations were not checked"


@pytest.mark.parametrize("name", sorted(_int8_models()[1]))
def test_int8_model_inputs_and_outputs_are_8_bit_and_quantized(name):
    from ai_edge_litert.interpreter import Interpreter
    d, int8 = _int8_models()
    it = Interpreter(model_path=str(d / int8[name]["file"]))
    it.allocate_tensors()
    for detail in it.get_input_details() + it.get_output_details():
        assert np.dtype(detail["dtype"]).name in ("int8", "uint8"), (name, detail["name"], detail["dtype"])
        assert detail["quantization"][0] > 0, (name, detail["name"])


def test_the_check_catches_a_float_graph():
    """MediaPipe's float BlazeFace (fp16 weights widened by DEQUANTIZE) must fail: a float op or
    tensor slipping into an "int8" model is exactly what the check is for."""
    d = find_models_dir()
    result = check_model(d / "blazeface_full_range.tflite")
    text = "\n".join(result["problems"])
    assert "DEQUANTIZE: not an Edge TPU operation" in text
    assert "not an 8-bit integer tensor" in text
    assert "RESIZE_BILINEAR" in text  # listed by Coral, but kept out of our int8 models


def test_edgetpu_builds_in_the_manifest_map_the_whole_graph():
    """When models/build.py ran edgetpu_compiler (x86 host), the recorded builds put every
    operation on the Edge TPU and were compiled from the current int8 file."""
    _, int8 = _int8_models()
    for name, entry in int8.items():
        tpu = entry.get("edgetpu")
        if not tpu:
            continue
        assert tpu["source_sha256"] == entry["sha256"], f"{name}: stale Edge TPU build"
        assert tpu.get("ops_on_cpu", 0) == 0, f"{name}: {tpu.get('ops_on_cpu')} ops stay on the CPU"
