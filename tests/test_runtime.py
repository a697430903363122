"""Model loading: manifest hashes are enforced, and the runtime reports its delegate."""
import json
import shutil

import pytest

from edge.errors import ModelError
from edge.runtime import find_models_dir, load_manifest, open_model


@pytest.fixture()
def model_copy(tmp_path):
    src = find_models_dir()
    for f in src.iterdir():
        if f.suffix in (".tflite", ".json"):
            shutil.copy(f, tmp_path / f.name)
    return tmp_path


def test_every_manifest_model_loads_on_cpu_and_says_why():
    d = find_models_dir()
    for name in load_manifest(d)["models"]:
        m = open_model(name, d, threads=1)
        assert m.delegate == "cpu" and m.delegate_reason
        assert m.inputs and m.outputs


def test_a_model_whose_bytes_changed_is_refused(model_copy):
    manifest = load_manifest(model_copy)
    entry = manifest["models"]["dlib_resnet_v1_int8"]
    path = model_copy / entry["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="refusing to load an altered"):
        open_model("dlib_resnet_v1_int8", model_copy)


def test_missing_unknown_and_unreadable(model_copy, tmp_path):
    with pytest.raises(ModelError, match="not in"):
        open_model("no_such_model", model_copy)
    (model_copy / "blazeface_full_range.tflite").unlink()
    with pytest.raises(ModelError, match="missing"):
        open_model("blazeface_full_range", model_copy)
    (model_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        open_model("dlib_resnet_v1_int8", model_copy)
    with pytest.raises(ModelError, match="no manifest.json"):
        find_models_dir(tmp_path / "empty")


def test_edgetpu_build_falls_back_to_cpu_with_a_reason(model_copy, caplog):
    """A manifest naming an Edge TPU build: with no Coral (and no libedgetpu) here, the CPU
    model is used and the reason is logged and reported."""
    manifest = json.loads((model_copy / "manifest.json").read_text())
    entry = manifest["models"]["dlib_resnet_v1_int8"]
    shutil.copy(model_copy / entry["file"], model_copy / "dlib_resnet_v1_int8_edgetpu.tflite")
    entry["edgetpu"] = {"file": "dlib_resnet_v1_int8_edgetpu.tflite", "sha256": entry["sha256"]}
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    m = open_model("dlib_resnet_v1_int8", model_copy)
    assert m.delegate == "cpu"
    assert "Edge TPU unavailable" in m.delegate_reason
    assert any("Edge TPU unavailable" in r.message for r in caplog.records)
    off = open_model("dlib_resnet_v1_int8", model_copy, prefer_edgetpu=False)
    assert off.delegate == "cpu" and "disabled" in off.delegate_reason
