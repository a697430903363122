"""Full-integer face mesh: rebuild MediaPipe's ``face_landmark.tflite`` from its own weights,
calibrate on real face crops, convert, and measure against the float original (dev only;
used by ``models/build.py --only landmarks-int8`` and the full build).

The same method as the int8 detectors (``models/blazeface_int8.py``):

1. read the float ``.tflite`` (``tflite_reader``; fp16 weights widened) and rebuild it in Keras
   op by op with the generic walker (``blazeface_keras.build_keras_from_tflite``: CONV_2D,
   DEPTHWISE_CONV_2D, PRELU, ADD, MAX_POOL_2D, PAD -- nothing specific to this model);
2. *float parity*: raw outputs of the rebuild against the original file run by LiteRT's
   reference kernels on real crops (fails above float round-off);
3. *calibration*: 192x192 crops exactly as :class:`edge.recognition.landmarks.LandmarkRefiner` makes them
   (upright square of 1.5 detection boxes, from the pipeline's own detector) of real faces:
   LFW images of the *calibration* half of the identities (``build.select_images``, seed 1729)
   and the faces of the scene photos that carry no ground truth. Nothing is committed: the
   crops are made in memory from ``../shared/faces`` at build time;
4. convert with ``TFLITE_BUILTINS_INT8`` only (int8 input and outputs) and check the result
   with ``edgetpu_ops.check_model``;
5. *int8 against float* on faces the calibration never saw -- LFW images of the *parity* half
   of the identities (disjoint from the calibration identities) and the faces of the 9 scene
   photos with ground truth: error of the 5 alignment points in frame pixels (and in % of the
   inter-ocular distance), error of all 468 mesh points in crop pixels, face-presence
   agreement, and cosine between the embeddings of the chip aligned from the float points and
   from the int8 points (the unit's int8 embedder, mirror averaging as configured); then
   latency of both models at 1/2/4 threads. Fails if the alignment points move more than
   :data:`MAX_MEDIAN_POINT_ERROR_IOD` of the inter-ocular distance at the median or the
   embedding cosine falls below :data:`MIN_EMBEDDING_COSINE_P01` at the 1st percentile.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLOAT_NAME = "face_landmark"
INT8_NAME = "face_landmark_int8"
OUTPUT_NAMES = {1404: "landmarks", 1: "face_presence_logit"}
CALIB_LFW = 600            # LFW images (one per identity) of the calibration identities
PARITY_LFW = 400           # LFW images (one per identity) of the parity identities
FLOAT_REBUILD_ATOL_PX = 1e-2   # |keras - original| on the mesh output, crop pixels
MAX_MEDIAN_POINT_ERROR_IOD = 0.03     # build fails above 3 % of the eye distance at the median
MIN_EMBEDDING_COSINE_P01 = 0.98       # ... or below this cosine at the 1st percentile
THREADS = (1, 2, 4)
PRELU_AS_DEPTHWISE = True     # XNNPACK runs no int8 PRELU (measured: 8.1 ms per face vs 1.5 float)
PRESENCE_LOGIT_RANGE = (-16.0, 16.0)  # calibrated on faces only, the logit never goes below 0


def _log(msg: str) -> None:
    import sys
    print(msg, file=sys.stderr, flush=True)


def _st(v, d=3) -> Dict[str, float]:
    v = np.asarray(v, np.float64)
    return {"mean": round(float(v.mean()), d), "median": round(float(np.median(v)), d),
            "p95": round(float(np.percentile(v, 95)), d), "max": round(float(v.max()), d),
            "min": round(float(v.min()), d), "n": int(v.size)}


# --------------------------------------------------------------------------- faces
class FaceSample:
    """One real face: the frame, the pipeline's detection of it, its 192x192 mesh crop."""

    def __init__(self, source: str, frame: np.ndarray, det, crop: np.ndarray):
        self.source, self.frame, self.det, self.crop = source, frame, det, crop


def _nearest_centre(frame: np.ndarray, dets):
    h, w = frame.shape[:2]
    return min(dets, key=lambda d: ((d.box[0] + d.box[2]) / 2 - w / 2) ** 2 + ((d.box[1] + d.box[3]) / 2 - h / 2) ** 2)


def face_samples(rec, refiner, lfw_items: Sequence[Tuple[str, Path]], count: int,
                 scene_files: Sequence[Path], label: str) -> Tuple[List[FaceSample], Dict[str, int]]:
    """Up to ``count`` LFW faces (the detection nearest the image centre, one image per
    identity, in the order given) plus every face the detector finds in ``scene_files``."""
    import cv2
    from edge.recognition.images import load_image
    out: List[FaceSample] = []
    tried = missing = 0
    seen = set()

    def crop_of(frame, det):
        m = refiner.roi_transform(det)
        return cv2.warpAffine(frame, m, (refiner.size, refiner.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    for ident, path in lfw_items:
        if len(out) >= count:
            break
        if ident in seen:
            continue
        seen.add(ident)
        tried += 1
        frame = load_image(path)
        dets = rec.detector.detect(frame)
        if not dets:
            missing += 1
            continue
        det = _nearest_centre(frame, dets)
        out.append(FaceSample(f"lfw/{path.parent.name}/{path.name}", frame, det, crop_of(frame, det)))
    n_lfw = len(out)
    for path in scene_files:
        frame = load_image(path)
        for det in rec.detector.detect(frame):
            out.append(FaceSample(f"scenes/{path.name}", frame, det, crop_of(frame, det)))
    counts = {"lfw_faces": n_lfw, "lfw_images_tried": tried, "lfw_images_without_face": missing,
              "scene_photos": len(scene_files), "scene_faces": len(out) - n_lfw}
    _log(f"[h] {label}: {counts}")
    return out, counts


# --------------------------------------------------------------------------- measures
def _float_rebuild_parity(bi, keras_model, original: Path, crops: Sequence[np.ndarray]) -> Dict[str, Any]:
    ref = bi.load_model(original, "original", 1, reference_kernels=True)
    names = list(keras_model.output_names)
    worst = {n: 0.0 for n in names}
    for c in crops:
        x = c.astype(np.float32)[None] / 255.0
        outs = ref.run(x)
        by_size = {int(np.prod(o.shape)): o.ravel() for o in outs}
        for n, v in zip(names, keras_model(x, training=False)):
            v = np.asarray(v).ravel()
            worst[n] = max(worst[n], float(np.abs(v - by_size[v.size]).max()))
    return {f"{n}_max_abs": float(f"{v:.3g}") for n, v in worst.items()} | {"inputs": len(crops)}


def int8_vs_float(rec, float_refiner, int8_refiner, samples: Sequence[FaceSample]) -> Dict[str, Any]:
    """Alignment points (frame px, % of inter-ocular distance), all mesh points (crop px),
    presence, and the embedding cosine of the chips aligned from float and from int8 points."""
    pt_px, pt_iod, mesh_px, pres_d, cos = [], [], [], [], []
    pres_flip = 0
    per_face_max_iod = []
    for s in samples:
        pf, presf = float_refiner.points(s.frame, s.det)
        pi, presi = int8_refiner.points(s.frame, s.det)
        err = np.linalg.norm(pf.astype(np.float64) - pi, axis=1)
        # inter-ocular distance: centres of the two eyes' corner pairs (mesh 33/133, 362/263)
        iod = float(np.linalg.norm(pf[:2].mean(0) - pf[2:4].mean(0))) if len(pf) >= 4 else float(s.det.width)
        pt_px.extend(err.tolist())
        pt_iod.extend((100.0 * err / max(iod, 1e-6)).tolist())
        per_face_max_iod.append(100.0 * float(err.max()) / max(iod, 1e-6))
        # the whole mesh, crop pixels
        of = float_refiner.model.run(float_refiner.prepare(s.crop))
        oi = int8_refiner.model.run(int8_refiner.prepare(s.crop))
        mf = float_refiner._output(of, float_refiner._mesh_index).reshape(-1, 3)[:, :2]
        mi = int8_refiner._output(oi, int8_refiner._mesh_index).reshape(-1, 3)[:, :2]
        mesh_px.extend(np.linalg.norm(mf - mi, axis=1).tolist())
        pres_d.append(abs(presf - presi))
        pres_flip += int((presf >= 0.5) != (presi >= 0.5))
        cf = rec.aligner.chip(s.frame, s.det, pf)
        ci = rec.aligner.chip(s.frame, s.det, pi)
        ef, ei = rec.embedder.embed(cf)[0], rec.embedder.embed(ci)[0]
        cos.append(float(np.dot(ef, ei) / (np.linalg.norm(ef) * np.linalg.norm(ei))))
    c = np.asarray(cos)
    return {
        "faces": len(samples),
        "alignment_points_error_frame_px": _st(pt_px),
        "alignment_points_error_pct_interocular": _st(pt_iod),
        "per_face_worst_point_pct_interocular": _st(per_face_max_iod),
        "mesh_468_error_crop_px": _st(mesh_px),
        "presence_abs_diff": _st(pres_d, 4),
        "presence_decision_flips": pres_flip,
        "embedding_cosine_float_vs_int8_points": {
            "min": round(float(c.min()), 5), "p01": round(float(np.percentile(c, 1)), 5),
            "p05": round(float(np.percentile(c, 5)), 5), "median": round(float(np.median(c)), 5),
            "mean": round(float(c.mean()), 5), "n": int(c.size)},
    }


# --------------------------------------------------------------------------- build
def build_int8_landmarks(models_dir: Path, shared: Path, lfw: Path, seed: int, work: Path,
                         select_images) -> Tuple[Path, Dict[str, Any]]:
    """Rebuild, check, calibrate and convert the face mesh; returns (int8 file in ``work``,
    figures). ``select_images(lfw, seed)`` gives the (parity, calibration) candidate lists of
    ``models/build.py``. Raises ValueError when a check fails."""
    try:
        from . import blazeface_int8 as bi
        from .blazeface_keras import build_keras_from_tflite
        from .edgetpu_ops import check_model
        from .tflite_reader import read_tflite, set_tensor_ranges, tensor_ranges
    except ImportError:  # pragma: no cover - models/ itself on sys.path
        import blazeface_int8 as bi  # type: ignore
        from blazeface_keras import build_keras_from_tflite  # type: ignore
        from edgetpu_ops import check_model  # type: ignore
        from tflite_reader import read_tflite, set_tensor_ranges, tensor_ranges  # type: ignore
    from edge.recognition.api import Recognizer
    from edge.config import load_config
    from edge.recognition.landmarks import LandmarkRefiner

    t0 = time.time()
    original = models_dir / f"{FLOAT_NAME}.tflite"
    graph = read_tflite(original)
    out_names = [OUTPUT_NAMES[int(np.prod(graph.tensors[t].shape))] for t in graph.outputs]
    keras_model = build_keras_from_tflite(graph, out_names, prelu_as_depthwise=PRELU_AS_DEPTHWISE)
    frozen = bi.freeze(keras_model)
    figures: Dict[str, Any] = {"float_model": original.name, "prelu_as_depthwise": PRELU_AS_DEPTHWISE,
                               "graph_ops": {n: graph.op_names().count(n) for n in sorted(set(graph.op_names()))}}

    # the unit's own pipeline (default configuration, float face mesh) makes the detections
    config = load_config(None)
    rec = Recognizer(config)
    if rec.refiner is None or rec.refiner.model.name != FLOAT_NAME:
        raise ValueError("the default configuration does not align from the float face mesh")
    float_refiner = rec.refiner

    parity_items, calib_items = select_images(lfw, seed)
    scenes = shared / "scenes"
    gt_files = [scenes / f for f, _ in bi.ground_truth(scenes)]
    gt_names = {p.name for p in gt_files}
    other_scenes = [p for p in sorted(scenes.glob("*.jpg")) if p.name not in gt_names]
    calib, calib_counts = face_samples(rec, float_refiner, calib_items, CALIB_LFW, other_scenes, "calibration")
    parity, parity_counts = face_samples(rec, float_refiner, parity_items, PARITY_LFW, gt_files, "parity")

    figures["keras_vs_original"] = _float_rebuild_parity(bi, keras_model, original,
                                                         [s.crop for s in parity[::8]])
    if figures["keras_vs_original"]["landmarks_max_abs"] > FLOAT_REBUILD_ATOL_PX:
        raise ValueError(f"{INT8_NAME}: Keras rebuild differs from {original.name}: {figures['keras_vs_original']}")
    _log(f"[h] {INT8_NAME}: rebuilt {len(keras_model.layers)} Keras layers from {len(graph.compute_ops())} ops; "
         f"vs original {figures['keras_vs_original']}")

    samples = [s.crop.astype(np.float32)[None] / 255.0 for s in calib]
    # calibrate, then widen the face-presence output to +-16 logits: calibrated on faces only,
    # its range would start above 0 and a non-face could never score below 0.5
    calibrated = bi.convert(frozen, samples, calibrate_only=True)
    cal_graph = read_tflite(calibrated)
    recorded = tensor_ranges(calibrated)
    presence = [t for t in cal_graph.outputs if int(np.prod(cal_graph.tensors[t].shape)) == 1]
    if len(presence) != 1:
        raise ValueError(f"{INT8_NAME}: expected one face-presence output")
    edits = {t: PRESENCE_LOGIT_RANGE for t in bi.output_chains(cal_graph)[presence[0]]}
    range_log = {"face_presence_logit": {"calibrated": [round(v, 3) for v in recorded[presence[0]]],
                                         "used": list(PRESENCE_LOGIT_RANGE)}}
    path = work / f"{INT8_NAME}.tflite"
    path.write_bytes(bi.quantize_calibrated(set_tensor_ranges(calibrated, edits)))
    figures["calibration"] = {**calib_counts, "crops": len(samples), "output_ranges": range_log,
                              "description": ("192x192 crops as edge.recognition.landmarks.LandmarkRefiner "
                                              "makes them, from the default pipeline's detections: LFW images "
                                              "of the calibration "
                                              "identities (models/build.py select_images, seed "
                                              f"{seed}; one image per identity) and every face in the scene "
                                              "photos without ground truth")}
    figures["parity_faces"] = {**parity_counts,
                               "description": ("LFW images of the parity identities (disjoint from the calibration "
                                               "identities; one image per identity) and every face the pipeline "
                                               "detects in the 9 scene photos with ground truth")}

    check = check_model(path)
    figures["edgetpu_op_check"] = {"passed": not check["problems"], "ops": check["ops"],
                                   "problems": check["problems"], "notes": check["notes"]}
    if check["problems"]:
        raise ValueError(f"{INT8_NAME}: not Edge TPU-compatible: {check['problems'][:5]}")

    int8_refiner = LandmarkRefiner(bi.load_model(path, INT8_NAME, 2), float_refiner.indices)
    lfw_par = [s for s in parity if s.source.startswith("lfw/")]
    scene_par = [s for s in parity if s.source.startswith("scenes/")]
    figures["int8_vs_float"] = {"lfw": int8_vs_float(rec, float_refiner, int8_refiner, lfw_par),
                                "scenes": int8_vs_float(rec, float_refiner, int8_refiner, scene_par),
                                "all": int8_vs_float(rec, float_refiner, int8_refiner, parity)}
    allf = figures["int8_vs_float"]["all"]
    if allf["alignment_points_error_pct_interocular"]["median"] > 100 * MAX_MEDIAN_POINT_ERROR_IOD:
        raise ValueError(f"{INT8_NAME}: alignment points moved too far: {allf['alignment_points_error_pct_interocular']}")
    if allf["embedding_cosine_float_vs_int8_points"]["p01"] < MIN_EMBEDDING_COSINE_P01:
        raise ValueError(f"{INT8_NAME}: embeddings changed too much: {allf['embedding_cosine_float_vs_int8_points']}")
    _log(f"[h] {INT8_NAME}: int8 vs float {allf}")

    lat = {}
    for th in THREADS:
        f_ms, i_ms = bi.paired_latency_ms([original, path], th)
        lat[f"{th}_thread" + ("s" if th > 1 else "")] = {"float_ms": f_ms, "int8_ms": i_ms,
                                                         "speedup": round(f_ms / i_ms, 2)}
    figures["latency_invoke_median_ms"] = lat
    figures["bytes"] = {"float": original.stat().st_size, "int8": path.stat().st_size}
    figures["seconds"] = round(time.time() - t0, 1)
    _log(f"[h] {INT8_NAME}: latency {lat}")
    return path, figures


def int8_entry(float_entry: Dict[str, Any], path: Path, figures: Dict[str, Any],
               tools: Dict[str, Any]) -> Dict[str, Any]:
    """Manifest entry of the int8 face mesh, derived from the float model's entry."""
    import copy
    from ai_edge_litert.interpreter import Interpreter
    from edge.recognition.runtime import sha256_bytes
    data = path.read_bytes()
    it = Interpreter(model_content=data)
    it.allocate_tensors()

    def describe(details, outputs=False):
        out = []
        for d in details:
            scale, zero = d["quantization"]
            item = {"name": d["name"], "shape": [int(v) for v in d["shape"]], "dtype": d["dtype"].__name__,
                    "quantization": {"scale": float(scale), "zero_point": int(zero)}}
            if outputs:
                item["role"] = OUTPUT_NAMES[int(np.prod(d["shape"]))]
            out.append(item)
        return out

    inputs = describe(it.get_input_details())
    outputs = describe(it.get_output_details(), outputs=True)
    q = inputs[0]["quantization"]
    pre = copy.deepcopy(float_entry.get("preprocessing", {}))
    pre.update({
        "description": (pre.get("description", "") + ". Full-integer model: feed int8 "
                        f"q = clip(round((x / 255) / {q['scale']:.9g} + {q['zero_point']}), -128, 127) "
                        "for each uint8 pixel x (a 256-entry lookup table)."),
        "dtype": "int8",
        "input_quantization": q,
    })
    post = copy.deepcopy(float_entry.get("postprocessing", {}))
    post["dequantize"] = "each output is int8: (q - zero_point) * scale"
    return {
        "file": path.name, "sha256": sha256_bytes(data), "bytes": len(data),
        "role": "landmarks",
        "precision": "int8",
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": pre,
        "postprocessing": post,
        "source": {**float_entry.get("source", {}), "derived_from": float_entry.get("file"),
                   "derived_from_sha256": float_entry.get("sha256"), "modified": True},
        "licence": "Apache-2.0",
        "licence_file": float_entry.get("licence_file", "LICENSE-mediapipe.txt"),
        "build": {
            "method": ("float weights read from the .tflite flatbuffer (models/tflite_reader.py), network "
                       "rebuilt in Keras op by op (models/blazeface_keras.py, the generic walker; each PRELU as "
                       "relu(x) - alpha * relu(-x) from three 1x1 depthwise convolutions and an add, which "
                       "XNNPACK and the Edge TPU both run in int8), calibrated on real face crops made as "
                       "edge.recognition.landmarks.LandmarkRefiner makes them, face-presence output range widened to "
                       "+-16 logits, converted to full integer with TFLITE_BUILTINS_INT8 only "
                       "(models/face_mesh_int8.py)"),
            "tools": tools,
            **figures,
        },
    }
