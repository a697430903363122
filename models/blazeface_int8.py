"""Full-integer BlazeFace: rebuild from the MediaPipe weights, calibrate on real frames,
convert, and measure against the float original (dev only; used by ``models/build.py``).

Steps for one detector (:func:`build_detector`):

1. read the float ``.tflite`` (``tflite_reader``) and rebuild it in Keras op by op
   (``blazeface_keras``; the 2x bilinear upsampling of the full-range model as the exact
   Edge TPU-safe decomposition);
2. *float parity*: raw outputs of the rebuild against the original file run by LiteRT's
   reference kernels on real inputs, and detections of a float32 ``.tflite`` of the rebuild
   against the original's through :class:`edge.recognition.detect.FaceDetector`;
3. *calibration*: views of real frames as the detector sees them -- whole frames, the 512 px
   tiles and the 3-face-width search regions of tracked faces -- from the scene photos that
   carry no ground truth, frames of ``video/vtest.avi`` and composed frames (LFW faces pasted
   on ``vtest.avi`` backgrounds at random sizes); the 9 photos with the 43 ground-truth boxes
   are never used for calibration;
4. convert with ``TFLITE_BUILTINS_INT8`` only (uint8 input, int8 outputs), check the result
   with ``edgetpu_ops.check_model``;
5. *int8 parity and recall*: detections (boxes IoU, keypoint error in frame pixels), recall on
   the 43 boxes for float and int8, extra / missed detections, and latency at 1/2/4 threads.
"""
from __future__ import annotations

import os
import random
import statistics
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GT_FILES = ("training.xml", "testing.xml")
VIDEO = Path("video") / "vtest.avi"
TILE = 512               # config detector.tile_size default
TILE_OVERLAP = 0.25
ROI_SCALE = 3.0          # config pipeline.roi_scale default
SCORE_THRESHOLD = 0.5    # config detector.score_threshold default
NEAR_SCORE_THRESHOLD = 0.6
MATCH_IOU = 0.5
LATENCY_RUNS = 300
THREADS = (1, 2, 4)


def _log(msg: str) -> None:
    import sys
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data
def ground_truth(scenes: Path) -> List[Tuple[str, np.ndarray]]:
    """(file, boxes (N, 4) x0 y0 x1 y1) for every image of training.xml and testing.xml."""
    out = []
    for name in GT_FILES:
        for im in ET.parse(scenes / name).getroot().iter("image"):
            boxes = [(int(b.get("left")), int(b.get("top")), int(b.get("left")) + int(b.get("width")),
                      int(b.get("top")) + int(b.get("height")))
                     for b in im.iter("box") if b.get("ignore") != "1"]
            out.append((im.get("file"), np.array(boxes, float).reshape(-1, 4)))
    return out


def _load(path: Path) -> np.ndarray:
    from edge.recognition.images import load_image
    return load_image(path)


def video_frames(path: Path, count: int) -> List[np.ndarray]:
    """``count`` RGB frames evenly spaced through a video file."""
    import cv2
    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for k in range(count):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int((k + 0.5) * total / count))
        ok, bgr = cap.read()
        if ok:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def composed_frames(backgrounds: Sequence[np.ndarray], lfw: Path, count: int, seed: int,
                    size: Tuple[int, int] = (1280, 720)) -> List[np.ndarray]:
    """Frames of ``size`` made of a resized background with 1-4 real LFW faces pasted at
    random places, face widths 36-360 px (the central 140x160 of each 250x250 LFW image,
    blended with a feathered ellipse)."""
    import cv2
    rng = random.Random(seed)
    people = sorted(p for p in lfw.iterdir() if p.is_dir()) if lfw.is_dir() else []
    if not people:
        return []
    out = []
    w, h = size
    for k in range(count):
        frame = cv2.resize(backgrounds[k % len(backgrounds)], (w, h), interpolation=cv2.INTER_LINEAR)
        for _ in range(rng.randint(1, 4)):
            person = rng.choice(people)
            images = sorted(person.glob("*.jpg"))
            if not images:
                continue
            face = _load(rng.choice(images))[45:205, 55:195]                     # 140 x 160
            fw = rng.choice([36, 48, 64, 90, 128, 180, 260, 360])
            fh = int(fw * 160 / 140)
            if fw >= w or fh >= h:
                continue
            patch = cv2.resize(face, (fw, fh), interpolation=cv2.INTER_AREA if fw < 140 else cv2.INTER_LINEAR)
            x0, y0 = rng.randrange(0, w - fw), rng.randrange(0, h - fh)
            yy, xx = np.mgrid[0:fh, 0:fw].astype(np.float32)
            r = np.sqrt(((xx + 0.5) / fw * 2 - 1) ** 2 + ((yy + 0.5) / fh * 2 - 1) ** 2)
            alpha = np.clip((1.0 - r) / 0.15, 0, 1)[..., None]
            region = frame[y0:y0 + fh, x0:x0 + fw].astype(np.float32)
            frame[y0:y0 + fh, x0:x0 + fw] = (alpha * patch + (1 - alpha) * region).astype(np.uint8)
        out.append(frame)
    return out


def calibration_frames(shared: Path, lfw: Path, seed: int, n_video: int = 12,
                       n_composed: int = 24) -> Dict[str, np.ndarray]:
    """Real frames for calibration: scene photos without ground truth, video frames and
    composed frames. Never the 9 ground-truth photos."""
    scenes = shared / "scenes"
    held_out = {f for f, _ in ground_truth(scenes)}
    frames = {p.name: _load(p) for p in sorted(scenes.glob("*.jpg")) if p.name not in held_out}
    video = video_frames(shared / VIDEO, n_video) if (shared / VIDEO).is_file() else []
    frames.update({f"vtest_{k:02d}": f for k, f in enumerate(video)})
    if video:
        for k, f in enumerate(composed_frames(video, lfw, n_composed, seed)):
            frames[f"composed_{k:02d}"] = f
    return frames


# --------------------------------------------------------------------------- views
def letterbox(crop: np.ndarray, size: int) -> np.ndarray:
    """The detector's canvas: aspect-preserving resize to fit, top-left, black padding
    (exactly as edge.recognition.detect.FaceDetector prepares a view); uint8."""
    import cv2
    h, w = crop.shape[:2]
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:nh, :nw] = cv2.resize(crop, (nw, nh), interpolation=interp)
    return canvas


def roi_square(box, scale: float, width: int, height: int) -> Optional[Tuple[int, int, int, int]]:
    """Square of side ``scale`` face widths around a face box, clipped to the frame."""
    x0, y0, x1, y1 = box
    side = scale * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    v = (int(max(0, cx - side / 2)), int(max(0, cy - side / 2)),
         int(min(width, cx + side / 2)), int(min(height, cy + side / 2)))
    return v if v[2] - v[0] >= 16 and v[3] - v[1] >= 16 else None


def detector_views(frames: Dict[str, np.ndarray], find_faces: Callable[[np.ndarray], list],
                   whole: bool, tiles: bool, rois: bool, seed: int,
                   max_tiles: int = 3, max_rois: int = 4, square_only: bool = False) -> List[np.ndarray]:
    """Crops of each frame as the pipeline feeds them to a detector: the whole frame, up to
    ``max_tiles`` of its 512 px tiles and up to ``max_rois`` search regions around faces.
    ``square_only`` keeps only views that fill the model input (no letterbox padding), and
    adds a centred square crop of each frame (for ``whole``) and shifts clipped search
    regions back inside the frame."""
    from edge.recognition.detect import tile_windows
    rng = random.Random(seed)
    views = []
    for name, frame in frames.items():
        h, w = frame.shape[:2]
        if whole:
            if square_only:
                m = min(h, w)
                views.append(frame[(h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m])
            else:
                views.append(frame)
        if tiles:
            wins = tile_windows(w, h, TILE, TILE_OVERLAP)
            for x0, y0, x1, y1 in rng.sample(wins, min(max_tiles, len(wins))):
                views.append(frame[y0:y1, x0:x1])
        if rois:
            for det in find_faces(frame)[:max_rois]:
                v = roi_square(det.box, ROI_SCALE, w, h)
                if v is None:
                    continue
                if square_only:  # same side, moved inside the frame
                    x0, y0, x1, y1 = det.box
                    side = int(min(ROI_SCALE * max(x1 - x0, y1 - y0), w, h))
                    vx = int(min(max(0, (x0 + x1) / 2 - side / 2), w - side))
                    vy = int(min(max(0, (y0 + y1) / 2 - side / 2), h - side))
                    v = (vx, vy, vx + side, vy + side)
                views.append(frame[v[1]:v[3], v[0]:v[2]])
    if square_only:
        views = [v for v in views if abs(v.shape[0] - v.shape[1]) <= 1]
    return views


# --------------------------------------------------------------------------- models
def load_model(path: Path, name: str, threads: int = 1, reference_kernels: bool = False,
               spec: Optional[Dict[str, Any]] = None):
    """An :class:`edge.recognition.runtime.LoadedModel` for a file outside the manifest (build use);
    ``spec`` stands in for its manifest entry (output roles)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from edge.recognition.runtime import LoadedModel, sha256_bytes
    data = Path(path).read_bytes()
    kwargs = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} \
        if reference_kernels else {}
    it = Interpreter(model_content=data, num_threads=threads, **kwargs)
    it.allocate_tensors()
    return LoadedModel(name, Path(path), sha256_bytes(data), spec or {}, "cpu", "build", "ai_edge_litert", it)


def freeze(model):
    """Concrete function of the Keras model with weights as constants, outputs in order."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    shape = [1] + [int(v) for v in model.input_shape[1:]]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    def serve(x):
        return list(model(x, training=False))

    return convert_variables_to_constants_v2(serve.get_concrete_function())


def convert(frozen, samples: Optional[Sequence[np.ndarray]] = None, calibrate_only: bool = False) -> bytes:
    """float32 TFLite; or, with ``samples`` (float32 [1, S, S, 3] inputs in [-1, 1]), the
    full-integer model (int8 input and outputs, INT8 builtins only) calibrated on them -- or,
    with ``calibrate_only``, the float model carrying the calibrated min/max of every tensor
    (to be adjusted and then quantized by :func:`quantize_calibrated`)."""
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if samples is not None:
        def representative_dataset():
            for x in samples:
                yield [x]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        converter._experimental_calibrate_only = bool(calibrate_only)  # private, TF 2.x
    return converter.convert()


def quantize_calibrated(calibrated: bytes) -> bytes:
    """Full-integer model (int8 in/out) from a calibrated float model, as TFLiteConverter
    itself does after calibration (TensorFlow's MLIR quantizer; a private TF API)."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert
    return tfl_convert.mlir_quantize(calibrated, False, input_data_type=tf.int8, output_data_type=tf.int8)


def output_chains(graph) -> Dict[int, List[int]]:
    """For each graph output tensor, it and the tensors feeding it through RESHAPE and
    CONCATENATION back to (and including) the producing convolution outputs."""
    chains = {}
    for out in graph.outputs:
        seen, stack = [], [out]
        while stack:
            t = stack.pop()
            seen.append(t)
            op = graph.producer(t)
            if op is not None and op.name == "RESHAPE":
                stack.append(op.inputs[0])
            elif op is not None and op.name == "CONCATENATION":
                stack.extend(op.inputs)
        chains[out] = seen
    return chains


def output_ranges(keras_model, samples: Sequence[np.ndarray], logit_clip: float, margin: float,
                  positive_logit: float = -3.0) -> Dict[str, Tuple[float, float]]:
    """Quantization ranges for the detector outputs, by Keras output name: scores clipped to
    +-``logit_clip`` (a score of 1 - 1e-7; the decision is made near 0); regressor ranges
    from the anchors that could become detections (logit > ``positive_logit``) on the
    calibration views, widened by ``margin`` of their span -- junk anchors elsewhere reach
    thousands of pixels and would leave a 256-level scale too coarse for real faces."""
    names = list(keras_model.output_names)
    cls = names.index("classificators")
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    for x in samples:
        outs = [np.asarray(v)[0] for v in keras_model(x, training=False)]
        pos = outs[cls][:, 0] > positive_logit
        for n, v in zip(names, outs):
            v = v if n == "classificators" else v[pos]
            if v.size:
                lo[n], hi[n] = min(lo[n], float(v.min())), max(hi[n], float(v.max()))
    ranges = {}
    for n in names:
        if n == "classificators":
            ranges[n] = (max(lo[n], -logit_clip), min(max(hi[n], 1.0), logit_clip))
        else:
            if not np.isfinite(lo[n]):
                raise ValueError(f"no positive anchors in the calibration views for {n}")
            span = max(hi[n] - lo[n], 1.0)
            ranges[n] = (lo[n] - margin * span, hi[n] + margin * span)
    return ranges


def raw_outputs(model, canvas: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(regressors [A, 16], logits [A]) as float32 for a uint8 canvas, any precision."""
    from edge.recognition.detect import _Head
    head = _Head(model, SCORE_THRESHOLD)
    outs = model.run(head.prepare(canvas))
    return head.regressors(outs), head.logits(outs)


def output_roles(keras_model, model, sample: np.ndarray) -> List[Dict[str, Any]]:
    """Role of each output of the converted ``model`` (LoadedModel, any precision), found by
    matching it to the Keras output with the same shape that it correlates with best on
    ``sample`` (a uint8 canvas): ``{"role": "classificators"}`` or ``{"role": "regressors",
    "channels": [start, stop]}`` (from the Keras output names ``regressors_<start>_<stop>``)."""
    import re
    x = (sample.astype(np.float32) / 127.5 - 1.0)[None]
    ref = [np.asarray(v) for v in keras_model(x, training=False)]
    names = list(keras_model.output_names)
    inp = model.inputs[0]
    if np.issubdtype(inp["dtype"], np.integer):
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        xin = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
    else:
        xin = x
    outs = model.run(xin)
    roles = []
    for d, y in zip(model.outputs, outs):
        y = y.astype(np.float32)
        if np.issubdtype(d["dtype"], np.integer):
            y = (y - d["quantization"][1]) * d["quantization"][0]
        cands = [k for k, r in enumerate(ref) if r.shape == y.shape]
        if not cands:
            raise ValueError(f"output {d['name']} {list(d['shape'])} matches no Keras output")
        best = max(cands, key=lambda k: np.corrcoef(ref[k].ravel(), y.ravel())[0, 1])
        m = re.fullmatch(r"(regressors|classificators)(?:_(\d+)_(\d+))?", names[best])
        if not m:
            raise ValueError(f"Keras output name {names[best]!r} has no role")
        role = {"role": m.group(1)}
        if m.group(1) == "regressors":
            role["channels"] = [int(m.group(2) or 0), int(m.group(3) or 16)]
        roles.append(role)
    return roles


# --------------------------------------------------------------------------- measures
def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from edge.recognition.detect import iou_matrix
    return iou_matrix(a.reshape(-1, 4), b.reshape(-1, 4))


def detection_parity(reference, candidate, frames: Iterable[np.ndarray]) -> Dict[str, Any]:
    """Match ``candidate``'s detections to ``reference``'s (greedy by IoU >= 0.5) over
    ``frames``: IoU of matched boxes, keypoint error (frame px, and in % of the reference face
    width), and the detections only one of them made."""
    ious, kp_px, kp_rel, score_d = [], [], [], []
    only_ref = only_cand = n_ref = n_cand = 0
    for frame in frames:
        r, c = reference.detect(frame), candidate.detect(frame)
        n_ref += len(r)
        n_cand += len(c)
        if not r or not c:
            only_ref += len(r)
            only_cand += len(c)
            continue
        m = _box_iou(np.array([d.box for d in r]), np.array([d.box for d in c]))
        used_r, used_c = set(), set()
        for flat in np.argsort(-m, axis=None):
            i, j = divmod(int(flat), m.shape[1])
            if m[i, j] < MATCH_IOU:
                break
            if i in used_r or j in used_c:
                continue
            used_r.add(i)
            used_c.add(j)
            ious.append(float(m[i, j]))
            err = np.linalg.norm(r[i].keypoints - c[j].keypoints, axis=1)
            kp_px.extend(err.tolist())
            kp_rel.extend((100.0 * err / max(r[i].width, 1e-6)).tolist())
            score_d.append(abs(r[i].score - c[j].score))
        only_ref += len(r) - len(used_r)
        only_cand += len(c) - len(used_c)

    def st(v, d=3):
        return {"mean": round(float(np.mean(v)), d), "median": round(float(np.median(v)), d),
                "p95": round(float(np.percentile(v, 95)), d), "max": round(float(np.max(v)), d),
                "min": round(float(np.min(v)), d)} if v else None

    return {"reference_detections": n_ref, "candidate_detections": n_cand, "matched": len(ious),
            "only_reference": only_ref, "only_candidate": only_cand, "box_iou": st(ious, 4),
            "keypoint_error_px": st(kp_px), "keypoint_error_pct_face_width": st(kp_rel),
            "score_abs_diff": st(score_d, 4)}


def recall(detector, scenes: Path) -> Tuple[int, int]:
    """Ground-truth boxes (of 43) matched at IoU >= 0.4 by a detection (as tests/recognition/test_detect.py)."""
    from edge.recognition.detect import iou_matrix
    hit = total = 0
    for file, boxes in ground_truth(scenes):
        dets = detector.detect(_load(scenes / file))
        total += len(boxes)
        if dets and len(boxes):
            hit += int((iou_matrix(boxes, np.array([d.box for d in dets])).max(1) >= 0.4).sum())
    return hit, total


def paired_latency_ms(paths: Sequence[Path], threads: int, runs: int = LATENCY_RUNS) -> List[float]:
    """Median ms of one invoke for each model, invoked in turn (A, B, A, B, ...) so that load
    from other processes on a shared machine hits them alike; 10 warm-up runs each."""
    models = [load_model(p, Path(p).stem, threads) for p in paths]
    rng = np.random.default_rng(0)
    for m in models:
        d = m.inputs[0]
        x = (rng.integers(-128, 127, d["shape"]).astype(d["dtype"]) if np.issubdtype(d["dtype"], np.integer)
             else rng.uniform(-1, 1, d["shape"]).astype(np.float32))
        m.interpreter.set_tensor(d["index"], x)
        for _ in range(10):
            m.interpreter.invoke()
    times: List[List[float]] = [[] for _ in models]
    for _ in range(runs):
        for k, m in enumerate(models):
            t0 = time.perf_counter()
            m.interpreter.invoke()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return [round(statistics.median(t), 3) for t in times]


# --------------------------------------------------------------------------- build
LOGIT_CLIP = 16.0
RANGE_MARGIN = 0.1
REGRESSOR_SPLIT = ((0, 2), (2, 4), (4, 16))   # box centre offset, box size, 6 keypoints
DETECTORS = {
    # int8 name: (float model, views used for calibration)
    "blazeface_full_range_int8": ("blazeface_full_range",
                                  dict(whole=True, tiles=True, rois=True, square_only=False)),
    # the short-range model answers flat black letterbox padding with activations in the
    # thousands (full range does not): calibrating on padded views would leave an int8 scale
    # too coarse for real content, so it is calibrated on views that fill its input
    "blazeface_short_range_int8": ("blazeface_short_range",
                                   dict(whole=True, tiles=False, rois=True, square_only=True)),
}
RECALL_TOLERANCE = 0.01        # int8 recall may be at most 1 point below float
FLOAT_REBUILD_RTOL = 1e-3      # |keras - original| <= rtol * max(1, |original|): float round-off
                               # (short range reaches activations in the thousands on black padding)


def _reassemble(names: Sequence[str], outs: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """(regressors [A, 16], logits [A]) from Keras outputs named regressors_<a>_<b> / classificators."""
    reg = None
    logits = None
    for n, v in zip(names, outs):
        v = np.asarray(v)[0]
        if n == "classificators":
            logits = v[:, 0]
        else:
            a, b = (int(k) for k in n.split("_")[1:3])
            if reg is None:
                reg = np.zeros((v.shape[0], 16), np.float32)
            reg[:, a:b] = v
    return reg, logits


def float_rebuild_parity(keras_model, original: Path, canvases: Sequence[np.ndarray]) -> Dict[str, Any]:
    """Raw outputs of the Keras rebuild against the original file on LiteRT's builtin
    (non-delegated) kernels: max |difference| of regressors (px) and logits, absolute and
    relative to max(1, |original|)."""
    ref_model = load_model(original, "original", 1, reference_kernels=True)
    names = list(keras_model.output_names)
    worst = {"regressors_max_abs": 0.0, "logits_max_abs": 0.0, "max_rel": 0.0,
             "candidates_regressors_max_abs": 0.0, "candidates_logits_max_abs": 0.0}
    for c in canvases:
        r_ref, l_ref = raw_outputs(ref_model, c)
        r_k, l_k = _reassemble(names, keras_model((c.astype(np.float32) / 127.5 - 1.0)[None], training=False))
        dr, dl = np.abs(r_k - r_ref), np.abs(l_k - l_ref)
        worst["regressors_max_abs"] = max(worst["regressors_max_abs"], float(dr.max()))
        worst["logits_max_abs"] = max(worst["logits_max_abs"], float(dl.max()))
        worst["max_rel"] = max(worst["max_rel"], float((dr / np.maximum(1, np.abs(r_ref))).max()),
                               float((dl / np.maximum(1, np.abs(l_ref))).max()))
        cand = l_ref > -5.0  # anchors that could become detections (score > 0.7 %)
        if cand.any():
            worst["candidates_regressors_max_abs"] = max(worst["candidates_regressors_max_abs"],
                                                         float(dr[cand].max()))
            worst["candidates_logits_max_abs"] = max(worst["candidates_logits_max_abs"], float(dl[cand].max()))
    return {k: float(f"{v:.3g}") for k, v in worst.items()} | {"inputs": len(canvases)}


def build_int8_detector(int8_name: str, models_dir: Path, shared: Path, lfw: Path, seed: int,
                        work: Path) -> Tuple[Path, Dict[str, Any], Dict[str, Any]]:
    """Rebuild, check, calibrate and convert one detector; returns (int8 file in ``work``,
    its output roles spec, figures). Raises ValueError when a check fails."""
    try:
        from .blazeface_keras import build_keras_from_tflite
        from .edgetpu_ops import check_model
        from .tflite_reader import read_tflite, set_tensor_ranges, tensor_ranges
    except ImportError:  # pragma: no cover - models/ itself on sys.path
        from blazeface_keras import build_keras_from_tflite  # type: ignore
        from edgetpu_ops import check_model  # type: ignore
        from tflite_reader import read_tflite, set_tensor_ranges, tensor_ranges  # type: ignore
    from edge.recognition.detect import FaceDetector

    float_name, policy = DETECTORS[int8_name]
    original = models_dir / f"{float_name}.tflite"
    graph = read_tflite(original)
    size = int(graph.tensors[graph.inputs[0]].shape[1])
    reg_pos = [i for i, t in enumerate(graph.outputs) if graph.tensors[t].shape[-1] == 16]
    if len(reg_pos) != 1 or len(graph.outputs) != 2:
        raise ValueError(f"{original.name}: expected outputs regressors [1, A, 16] and scores [1, A, 1]")
    out_names = ["regressors" if i == reg_pos[0] else "classificators" for i in range(2)]
    t0 = time.time()
    keras_model = build_keras_from_tflite(graph, out_names, split_outputs={reg_pos[0]: REGRESSOR_SPLIT})
    frozen = freeze(keras_model)
    figures: Dict[str, Any] = {"float_model": original.name, "input_size": size,
                               "graph_ops": {n: graph.op_names().count(n) for n in sorted(set(graph.op_names()))}}

    # evaluation frames: the 9 ground-truth photos, the other scene photos, 6 video frames
    scenes = shared / "scenes"
    gt = ground_truth(scenes)
    gt_files = {f for f, _ in gt}
    eval_frames = [_load(scenes / f) for f, _ in gt]
    eval_frames += [_load(p) for p in sorted(scenes.glob("*.jpg")) if p.name not in gt_files]
    eval_frames += video_frames(shared / VIDEO, 6) if (shared / VIDEO).is_file() else []
    far = FaceDetector(load_model(models_dir / "blazeface_full_range.tflite", "far", 2),
                       SCORE_THRESHOLD, tile_size=TILE)
    roi_views = detector_views({str(k): f for k, f in enumerate(eval_frames)}, far.detect,
                               whole=False, tiles=False, rois=True, seed=seed + 1, max_rois=20)

    # float parity of the rebuild
    canvases = [letterbox(f, size) for f in eval_frames] + [letterbox(v, size) for v in roi_views[::4]]
    figures["keras_vs_original"] = float_rebuild_parity(keras_model, original, canvases)
    if figures["keras_vs_original"]["max_rel"] > FLOAT_REBUILD_RTOL:
        raise ValueError(f"{int8_name}: Keras rebuild differs from {original.name}: "
                         f"{figures['keras_vs_original']}")
    rebuilt = work / f"{float_name}_rebuilt_float32.tflite"
    rebuilt.write_bytes(convert(frozen))
    rebuilt_roles = output_roles(keras_model, load_model(rebuilt, "rebuilt"), canvases[0])
    threshold = SCORE_THRESHOLD if float_name == "blazeface_full_range" else NEAR_SCORE_THRESHOLD
    orig_model = load_model(original, float_name, 2)
    rebuilt_model = load_model(rebuilt, "rebuilt", 2, spec={"outputs": rebuilt_roles})
    tiles = TILE if float_name == "blazeface_full_range" else 0
    figures["float32_rebuild_vs_original_detections"] = detection_parity(
        FaceDetector(orig_model, threshold, tile_size=tiles), FaceDetector(rebuilt_model, threshold, tile_size=tiles),
        eval_frames)
    _log(f"[f] {int8_name}: rebuilt {len(keras_model.layers)} Keras layers from {len(graph.compute_ops())} "
         f"ops; vs original {figures['keras_vs_original']}")

    # calibration on real frames, as the pipeline crops them
    frames = calibration_frames(shared, lfw, seed)
    views = detector_views(frames, far.detect, seed=seed, **policy)
    samples = [(letterbox(v, size).astype(np.float32) / 127.5 - 1.0)[None] for v in views]
    calibrated = convert(frozen, samples, calibrate_only=True)
    cal_path = work / f"{int8_name}_calibrated.tflite"
    cal_path.write_bytes(calibrated)
    cal_roles = output_roles(keras_model, load_model(cal_path, "calibrated"), canvases[0])
    cal_graph = read_tflite(calibrated)
    chains = output_chains(cal_graph)
    targets = output_ranges(keras_model, samples, LOGIT_CLIP, RANGE_MARGIN)
    recorded = tensor_ranges(calibrated)
    edits, range_log = {}, {}
    for out_t, role in zip(cal_graph.outputs, cal_roles):
        key = role["role"] + ("_{}_{}".format(*role["channels"]) if "channels" in role else "")
        lo, hi = targets[key]
        for t in chains[out_t]:
            clo, chi = recorded[t]
            edits[t] = (max(lo, clo), min(hi, chi))
        range_log[key] = {"calibrated": [round(v, 3) for v in recorded[out_t]],
                          "used": [round(v, 3) for v in edits[out_t]]}
    quantized = quantize_calibrated(set_tensor_ranges(calibrated, edits))
    path = work / f"{int8_name}.tflite"
    path.write_bytes(quantized)
    cal_path.unlink()
    int8_model = load_model(path, int8_name, 2)
    roles = output_roles(keras_model, int8_model, canvases[0])
    spec = {"outputs": roles}
    int8_model = load_model(path, int8_name, 2, spec=spec)
    video = sum(1 for n in frames if n.startswith("vtest_"))
    composed = sum(1 for n in frames if n.startswith("composed_"))
    counts = {"frames": len(frames), "views": len(views),
              "frames_by_source": {"scene_photos_without_ground_truth": len(frames) - video - composed,
                                   "video_vtest_avi": video, "composed_lfw_faces_on_video": composed}}
    figures["calibration"] = {**counts, "policy": policy, "output_ranges": range_log,
                              "logit_clip": LOGIT_CLIP, "range_margin": RANGE_MARGIN}
    _log(f"[f] {int8_name}: calibrated on {len(views)} views of {len(frames)} frames; output ranges {range_log}")

    check = check_model(path)
    figures["edgetpu_op_check"] = {"passed": not check["problems"], "ops": check["ops"],
                                   "problems": check["problems"], "notes": check["notes"]}
    if check["problems"]:
        raise ValueError(f"{int8_name}: not Edge TPU-compatible: {check['problems'][:5]}")

    # int8 against float: detections, recall on the 43 boxes, latency
    f_whole, i_whole = FaceDetector(orig_model, threshold), FaceDetector(int8_model, threshold)
    figures["int8_vs_float_whole_frame"] = detection_parity(f_whole, i_whole, eval_frames)
    figures["int8_vs_float_search_regions"] = detection_parity(f_whole, i_whole, roi_views)
    recall_fig = {}
    for label, t in (("whole_frame", 0), ("tiles_512", TILE)):
        fh = recall(FaceDetector(orig_model, threshold, tile_size=t), scenes)
        ih = recall(FaceDetector(int8_model, threshold, tile_size=t), scenes)
        recall_fig[label] = {"float": f"{fh[0]}/{fh[1]}", "int8": f"{ih[0]}/{ih[1]}",
                             "float_pct": round(100 * fh[0] / fh[1], 1), "int8_pct": round(100 * ih[0] / ih[1], 1)}
        if float_name == "blazeface_full_range" and ih[0] / ih[1] < fh[0] / fh[1] - RECALL_TOLERANCE:
            raise ValueError(f"{int8_name}: recall {ih} is more than 1 point below float {fh} ({label})")
    figures["recall_43_boxes"] = recall_fig
    if float_name == "blazeface_full_range":
        figures["int8_vs_float_tiles_512"] = detection_parity(
            FaceDetector(orig_model, threshold, tile_size=TILE), FaceDetector(int8_model, threshold, tile_size=TILE),
            eval_frames)
    lat = {}
    for th in THREADS:
        f_ms, i_ms = paired_latency_ms([original, path], th)
        lat[f"{th}_thread" + ("s" if th > 1 else "")] = {"float_ms": f_ms, "int8_ms": i_ms,
                                                         "speedup": round(f_ms / i_ms, 2)}
    figures["latency_invoke_median_ms"] = lat
    figures["bytes"] = {"float": original.stat().st_size, "int8": path.stat().st_size}
    figures["seconds"] = round(time.time() - t0, 1)
    _log(f"[f] {int8_name}: recall {recall_fig}; latency {lat}")
    return path, spec, figures


def int8_entry(int8_name: str, float_entry: Dict[str, Any], path: Path, spec: Dict[str, Any],
               figures: Dict[str, Any], tools: Dict[str, Any], sha256: str) -> Dict[str, Any]:
    """Manifest entry of an int8 detector, derived from its float model's entry."""
    import copy
    from edge.recognition.runtime import sha256_bytes
    from ai_edge_litert.interpreter import Interpreter
    data = path.read_bytes()
    it = Interpreter(model_content=data)
    it.allocate_tensors()

    def describe(details, roles=None):
        out = []
        for k, d in enumerate(details):
            scale, zero = d["quantization"]
            item = {"name": d["name"], "shape": [int(v) for v in d["shape"]], "dtype": d["dtype"].__name__,
                    "quantization": {"scale": float(scale), "zero_point": int(zero)}}
            if roles:
                item.update(roles[k])
            out.append(item)
        return out

    inputs = describe(it.get_input_details())
    outputs = describe(it.get_output_details(), spec["outputs"])
    pre = copy.deepcopy(float_entry.get("preprocessing", {}))
    q = inputs[0]["quantization"]
    pre.update({
        "description": (pre.get("description", "") + " Full-integer model: feed int8 "
                        f"q = clip(round((x / 127.5 - 1) / {q['scale']:.9g} + {q['zero_point']}), -128, 127) "
                        "for each uint8 pixel x (a 256-entry lookup table)."),
        "dtype": "int8",
        "input_quantization": q,
    })
    dec = pre.get("decoding", {})
    if dec:
        dec["description"] = (dec.get("description", "") + " Outputs are int8: dequantize as "
                              "(q - zero_point) * scale; the regressors come as three outputs "
                              "(channels 0-2 box centre offset, 2-4 box size, 4-16 keypoints), "
                              "each with its own scale; 'channels' in outputs says which.")
    return {
        "file": path.name, "sha256": sha256_bytes(data), "bytes": len(data),
        "role": "detector",
        "precision": "int8",
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": pre,
        "source": {**float_entry.get("source", {}), "derived_from": float_entry.get("file"),
                   "derived_from_sha256": sha256, "modified": True},
        "licence": "Apache-2.0",
        "licence_file": float_entry.get("licence_file", "LICENSE-mediapipe.txt"),
        "build": {
            "method": ("float weights read from the .tflite flatbuffer (models/tflite_reader.py), "
                       "network rebuilt in Keras op by op (models/blazeface_keras.py; 2x bilinear "
                       "upsampling as an exact slice/concat/depthwise/reshape decomposition; the "
                       "final regressor convolutions split into box-centre / box-size / keypoint "
                       "outputs), calibrated on real frames, output ranges clipped, converted to "
                       "full integer with TFLITE_BUILTINS_INT8 only (models/blazeface_int8.py)"),
            "tools": tools,
            **figures,
        },
    }
