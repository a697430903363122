"""Model loading: manifest hashes are enforced, and the runtime reports its delegate."""
import json
import shutil

import pytest

from edge.errors import ModelError
from edge.recognition.runtime import find_models_dir, load_manifest, open_model


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


def _with_edgetpu_entry(model_copy, name):
    """Give manifest model ``name`` an Edge TPU build (a copy of its CPU file stands in for
    edgetpu_compiler's output) and return (manifest, entry)."""
    manifest = json.loads((model_copy / "manifest.json").read_text())
    entry = manifest["models"][name]
    tpu_file = entry["file"].replace(".tflite", "_edgetpu.tflite")
    shutil.copy(model_copy / entry["file"], model_copy / tpu_file)
    entry["edgetpu"] = {"file": tpu_file, "sha256": entry["sha256"], "source_sha256": entry["sha256"]}
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    return manifest, entry


def test_int8_detector_with_edgetpu_build_falls_back_to_its_cpu_model(model_copy, caplog):
    """No libedgetpu here: the int8 detector's CPU file is loaded, the reason names the missing
    runtime library and is logged, and detection works as usual."""
    import numpy as np
    from edge.recognition.detect import FaceDetector
    if "blazeface_full_range_int8" not in load_manifest(model_copy)["models"]:
        pytest.skip("no int8 detector in the manifest")
    _, entry = _with_edgetpu_entry(model_copy, "blazeface_full_range_int8")
    caplog.set_level("WARNING", logger="edge.recognition.runtime")
    m = open_model("blazeface_full_range_int8", model_copy)
    assert m.delegate == "cpu" and m.path.name == entry["file"]
    assert "Edge TPU unavailable" in m.delegate_reason and "libedgetpu.so.1" in m.delegate_reason
    logged = [r.getMessage() for r in caplog.records if r.name == "edge.recognition.runtime"]
    assert any("Edge TPU unavailable" in msg and entry["file"] in msg for msg in logged)
    assert FaceDetector(m).detect(np.zeros((240, 320, 3), np.uint8)) == []


def test_edgetpu_model_is_preferred_when_the_delegate_loads(model_copy, monkeypatch, caplog):
    """With a loadable delegate (faked here) the *_edgetpu.tflite is opened with it."""
    import edge.recognition.runtime as rt
    _, entry = _with_edgetpu_entry(model_copy, "dlib_resnet_v1_int8")
    Real, _, backend = rt._interpreter_api()
    seen = {}

    class FakeInterpreter(Real):
        def __init__(self, model_content=None, experimental_delegates=None, num_threads=None):
            seen["delegates"] = experimental_delegates
            super().__init__(model_content=model_content, num_threads=num_threads)

    def fake_load_delegate(library):
        seen["library"] = library
        return "coral-delegate"

    monkeypatch.setattr(rt, "_interpreter_api", lambda: (FakeInterpreter, fake_load_delegate, backend))
    monkeypatch.setattr(rt, "_library_missing", lambda: None)
    caplog.set_level("INFO", logger="edge.recognition.runtime")
    m = open_model("dlib_resnet_v1_int8", model_copy)
    assert m.delegate == "edgetpu" and m.delegate_reason == "Edge TPU delegate loaded"
    assert m.path.name == entry["edgetpu"]["file"]
    assert seen == {"library": "libedgetpu.so.1", "delegates": ["coral-delegate"]}
    assert any("on the Edge TPU" in r.getMessage() for r in caplog.records)
    # prefer_edgetpu=False (config runtime.prefer_edgetpu) keeps it on the CPU file
    off = open_model("dlib_resnet_v1_int8", model_copy, prefer_edgetpu=False)
    assert off.delegate == "cpu" and off.path.name == entry["file"]


def test_delegate_that_fails_to_open_a_device_falls_back_with_the_reason(model_copy, monkeypatch):
    import edge.recognition.runtime as rt
    _, entry = _with_edgetpu_entry(model_copy, "dlib_resnet_v1_int8")
    Real, _, backend = rt._interpreter_api()

    def no_device(library):
        raise ValueError("Failed to load delegate from libedgetpu.so.1")

    monkeypatch.setattr(rt, "_interpreter_api", lambda: (Real, no_device, backend))
    monkeypatch.setattr(rt, "_library_missing", lambda: None)
    m = open_model("dlib_resnet_v1_int8", model_copy)
    assert m.delegate == "cpu" and m.path.name == entry["file"]
    assert "no Edge TPU could be opened" in m.delegate_reason


def test_altered_edgetpu_file_is_refused_and_the_cpu_model_used(model_copy):
    _, entry = _with_edgetpu_entry(model_copy, "dlib_resnet_v1_int8")
    tpu = model_copy / entry["edgetpu"]["file"]
    data = bytearray(tpu.read_bytes())
    data[len(data) // 3] ^= 0x01
    tpu.write_bytes(bytes(data))
    m = open_model("dlib_resnet_v1_int8", model_copy)
    assert m.delegate == "cpu" and m.path.name == entry["file"]
    assert "refusing to load an altered" in m.delegate_reason


def test_the_embedders_identity_and_the_loaded_file_are_two_named_hashes(model_copy, monkeypatch):
    """On a Coral the file loaded is the Edge TPU build, but bundles and reports name the embedder
    by its CPU model's manifest hash (the build is compiled from it). Recognizer.model_sha256 used
    to be the loaded file's hash and was used as both."""
    import edge.recognition.runtime as rt
    from edge.config import validate
    from edge.recognition.api import EMBEDDER_MODEL, Recognizer, embedder_sha256
    manifest, entry = _with_edgetpu_entry(model_copy, EMBEDDER_MODEL)
    tpu = model_copy / entry["edgetpu"]["file"]          # a compiled build is a different file
    tpu.write_bytes(tpu.read_bytes() + bytes(16))
    entry["edgetpu"]["sha256"] = rt.sha256_bytes(tpu.read_bytes())
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    Real, _, backend = rt._interpreter_api()

    class CoralInterpreter(Real):  # the hardware edge, faked: the delegate "loads"
        def __init__(self, model_content=None, experimental_delegates=None, num_threads=None):
            super().__init__(model_content=model_content, num_threads=num_threads)

    monkeypatch.setattr(rt, "_interpreter_api", lambda: (CoralInterpreter, lambda lib: "coral", backend))
    monkeypatch.setattr(rt, "_library_missing", lambda: None)
    cfg = validate({"runtime": {"models_dir": str(model_copy)}})
    rec = Recognizer(cfg)
    assert rec.embedder.model.delegate == "edgetpu"
    assert rec.embedder_sha256 == entry["sha256"]                    # what a bundle must name
    assert rec.loaded_embedder_sha256 == entry["edgetpu"]["sha256"]  # what runs
    assert rec.loaded_embedder_sha256 != rec.embedder_sha256
    # the unit's watchlist side reads the identity from the file, without an interpreter
    monkeypatch.setattr(rt, "_interpreter_api", lambda: pytest.fail("no model may be loaded for its hash"))
    assert embedder_sha256(cfg) == entry["sha256"]


def test_tflites_delegate_banner_is_kept_out_of_the_users_way_and_other_stderr_is_not():
    import subprocess
    import sys
    code = ("import sys, os\n"
            "from edge.recognition.runtime import open_model, _without_delegate_banner\n"
            "open_model('dlib_resnet_v1_int8', None, threads=1)\n"
            "with _without_delegate_banner():\n"
            "    os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\nreal problem\\n')\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert "XNNPACK" not in r.stderr and "real problem" in r.stderr
