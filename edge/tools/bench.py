"""``edge-lfr bench``: latency of each stage on real faces, with dlib timed in the same run.

Faces: matplotlib's ``grace_hopper.jpg`` and scikit-image's ``astronaut.png`` (public domain,
installed with the packages), plus a few group photos from ``../shared/faces/scenes`` when
that folder exists (detection only). Every measurement is warmed up first, then timed
``--repeat`` times (dlib, being slower, fewer times); median and 95th percentile in ms.

Stages: detect (whole frame, per image and pooled), align, quality, embed with the int8
model (one chip), embed with the float32 TFLite model, top-1 match against N = 1,000 /
10,000 / 100,000 random unit vectors with a real probe, and — when dlib is importable —
dlib's ``compute_face_descriptor`` on the same chip and its HOG detector on the same images.

Per model: every network of the manifest, float and int8 side by side where both exist, at
1 / 2 / 4 interpreter threads (median ms per invoke, the two precisions invoked in turn so
that other load on the machine hits both alike), plus the Edge TPU build when its delegate
loads. docs/performance.md turns these into the Raspberry Pi 5 budget.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge.appliance.metrics import latency_summary
from edge.config import load_config
from edge.errors import InputError
from edge.matching.match import Matcher, Watchlist
from edge.paths import SHARED_FACES
from edge.progress import Progress
from edge.recognition.api import Recognizer
from edge.recognition.embed import Embedder
from edge.recognition.images import load_image
from edge.recognition.quality import assess
from edge.recognition.runtime import find_models_dir, load_manifest, open_model
from edge.tools.demo_faces import public_domain_faces

MATCH_SIZES = (1_000, 10_000, 100_000)
# (label, float model, int8 model) -- either may be absent from a manifest
MODEL_FAMILIES = (
    ("detector full range (BlazeFace 192)", "blazeface_full_range", "blazeface_full_range_int8"),
    ("detector short range (BlazeFace 128)", "blazeface_short_range", "blazeface_short_range_int8"),
    ("embedder (dlib ResNet-29, 150)", "dlib_resnet_v1_float32", "dlib_resnet_v1_int8"),
    ("landmarks (face mesh 192)", "face_landmark", "face_landmark_int8"),
)
TABLE_THREADS = (1, 2, 4)
SCENE_IMAGES = ("2008_002506.jpg", "2007_007763.jpg", "friends_t1.jpg")
WARMUP = 3


def time_calls(fn: Callable[[], Any], n: int, warmup: int = WARMUP) -> np.ndarray:
    """Call ``fn`` ``warmup`` times untimed, then ``n`` times; the n durations in seconds."""
    for _ in range(warmup):
        fn()
    out = np.empty(max(1, n))
    for i in range(out.size):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def bench_images(shared: Path | None = SHARED_FACES) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(face images, detection images): the public-domain faces, and those plus a few scenes."""
    faces = public_domain_faces()
    scenes = dict(faces)
    if shared is not None and (shared / "scenes").is_dir():
        for name in SCENE_IMAGES:
            p = shared / "scenes" / name
            if p.is_file():
                scenes[Path(name).stem] = load_image(p)
    return faces, scenes


def _dlib_models():
    """(dlib, HOG detector, face_recognition_model_v1) or None when dlib is not installed."""
    try:
        import dlib
        import face_recognition_models as frm
    except ImportError:
        return None
    return dlib, dlib.get_frontal_face_detector(), dlib.face_recognition_model_v1(frm.face_recognition_model_location())


def _matcher_for(n: int, dim: int, rng: np.random.Generator):
    """A top-1 function over N random unit vectors: the package's Matcher when importable."""
    w = rng.standard_normal((n, dim), dtype=np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    wl = Watchlist(w, [f"s{i}" for i in range(n)], ["wanted"] * n)
    m = Matcher(wl, {"wanted": 0.8})
    return m.match, "edge.matching.match.Matcher.match"


def _invoker(model) -> Callable[[], Any]:
    """invoke() of a loaded model with a fixed random input of the right dtype."""
    rng = np.random.default_rng(0)
    interp = model.interpreter
    for d in model.inputs:
        if np.issubdtype(d["dtype"], np.integer):
            info = np.iinfo(d["dtype"])
            x = rng.integers(info.min, info.max, d["shape"], endpoint=True).astype(d["dtype"])
        else:
            x = rng.uniform(-1, 1, d["shape"]).astype(d["dtype"])
        interp.set_tensor(d["index"], x)
    return interp.invoke


def model_table(models_dir: Path, runs: int, threads=TABLE_THREADS, prefer_edgetpu: bool = True
                ) -> list[dict[str, Any]]:
    """Median ms per invoke of each model family, float and int8 invoked in turn, per thread
    count; ``edgetpu_ms`` when the int8 model's Edge TPU build loads (else the reason)."""
    have = load_manifest(models_dir)["models"]
    rows = []
    for label, float_name, int8_name in MODEL_FAMILIES:
        names = {k: n for k, n in (("float", float_name), ("int8", int8_name)) if n in have}
        if not names:
            continue
        tpu_ms, tpu_note = None, "no int8 model"
        if "int8" in names and prefer_edgetpu:
            m = open_model(names["int8"], models_dir, 1, prefer_edgetpu=True)
            if m.delegate == "edgetpu":
                tpu_ms = float(np.median(time_calls(_invoker(m), runs)) * 1000.0)
                tpu_note = "Edge TPU"
            else:
                tpu_note = m.delegate_reason
            del m
        for t in threads:
            models = {k: open_model(n, models_dir, t, prefer_edgetpu=False) for k, n in names.items()}
            calls = {k: _invoker(m) for k, m in models.items()}
            for fn in calls.values():
                for _ in range(WARMUP):
                    fn()
            times: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(max(1, runs)):
                for k, fn in calls.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
            row: dict[str, Any] = {"model": label, "threads": t, "float": names.get("float"),
                                   "int8": names.get("int8")}
            for k in ("float", "int8"):
                row[f"{k}_ms"] = float(np.median(times[k]) * 1000.0) if k in times else None
            row["speedup"] = (row["float_ms"] / row["int8_ms"]) if row["float_ms"] and row["int8_ms"] else None
            row["edgetpu_ms"], row["edgetpu"] = tpu_ms, tpu_note
            rows.append(row)
    return rows


def format_model_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'model, median ms per invoke':40s}{'threads':>8s}{'float':>9s}{'int8':>9s}{'float/int8':>12s}"
             f"{'Edge TPU':>10s}"]
    notes = set()
    for r in rows:
        def ms(v):
            return f"{v:9.3f}" if v is not None else f"{'-':>9s}"
        sp = f"{r['speedup']:11.2f}x" if r["speedup"] else f"{'-':>12s}"
        tpu = f"{r['edgetpu_ms']:10.3f}" if r["edgetpu_ms"] is not None else f"{'-':>10s}"
        lines.append(f"{r['model']:40s}{r['threads']:8d}{ms(r['float_ms'])}{ms(r['int8_ms'])}{sp}{tpu}")
        if r["edgetpu_ms"] is None and r["int8"]:
            notes.add(r["edgetpu"])
    for n in sorted(notes):
        lines.append(f"Edge TPU: {n}")
    return "\n".join(lines)


def run_bench(args) -> int:

    repeat = int(getattr(args, "repeat", 200))
    if repeat < 1:
        raise InputError(f"--repeat must be at least 1, got {repeat}")
    out_path = Path(args.out) if getattr(args, "out", None) else None
    if out_path is not None:
        if out_path.is_dir():
            raise InputError(f"{out_path}: --out is a folder; give a file name")
        out_path.parent.mkdir(parents=True, exist_ok=True)
    n_dlib = max(min(repeat, 20), repeat // 10)
    config = load_config(getattr(args, "config", None))
    rt = config.runtime
    rec = Recognizer(config)
    float_embedder = Embedder(open_model("dlib_resnet_v1_float32", find_models_dir(rt.models_dir or None),
                                         rt.threads, rt.prefer_edgetpu))          # one pass, no mirror
    single_int8 = Embedder(rec.embedder.model)                                    # one pass, no mirror
    mirror = bool(getattr(rec.embedder, "mirror_average", False))
    refiner = getattr(rec, "refiner", None)
    faces, scenes = bench_images()
    shared_used = len(scenes) > len(faces)

    # the probe face: Grace Hopper's most prominent detection
    frame = faces["grace_hopper"]
    dets = rec.detector.detect(frame)
    if not dets:
        raise InputError("no face detected in grace_hopper.jpg; are the models the right ones?")
    det = max(dets, key=lambda d: d.width * d.height)
    points = rec.alignment_points(frame, det) if hasattr(rec, "alignment_points") else None
    chip = rec.aligner.chip(frame, det, points) if points is not None else rec.chip(frame, det)
    probe = rec.embedder.embed(chip)[0]
    q = config.quality

    results: dict[str, dict[str, float]] = {}
    per_image: dict[str, dict[str, Any]] = {}
    dl = _dlib_models()
    steps = 8 + len(MATCH_SIZES) + (2 if dl else 0) + (1 if refiner is not None else 0)
    with Progress(steps, "bench", unit="step") as bar:
        per_n = max(3, repeat // len(scenes))
        pooled = []
        for name, img in scenes.items():
            t = time_calls(lambda img=img: rec.detector.detect(img), per_n)
            pooled.append(t)
            per_image[name] = {"size": f"{img.shape[1]}x{img.shape[0]}", "faces": len(rec.detector.detect(img)),
                               "detect": latency_summary(t)}
        results["detect"] = latency_summary(np.concatenate(pooled))
        bar.update()
        if refiner is not None:
            results["landmarks"] = latency_summary(time_calls(lambda: rec.alignment_points(frame, det), repeat))
            bar.update()
        if points is not None:
            results["align"] = latency_summary(time_calls(lambda: rec.aligner.chip(frame, det, points), repeat))
        else:
            results["align"] = latency_summary(time_calls(lambda: rec.chip(frame, det), repeat))
        bar.update()
        results["quality"] = latency_summary(time_calls(
            lambda: assess(det, chip, q.min_interocular_px, q.min_sharpness, q.max_abs_yaw_deg), repeat))
        bar.update()
        results["embed_int8"] = latency_summary(time_calls(lambda: rec.embedder.embed(chip), repeat))
        bar.update()
        results["embed_int8_single_pass"] = latency_summary(time_calls(lambda: single_int8.embed(chip), repeat))
        bar.update()
        results["embed_float32"] = latency_summary(time_calls(lambda: float_embedder.embed(chip), repeat))
        bar.update()
        rng = np.random.default_rng(0)
        matcher_kind = ""
        for n in MATCH_SIZES:
            fn, matcher_kind = _matcher_for(n, probe.size, rng)
            results[f"match_top1_{n}"] = latency_summary(time_calls(lambda fn=fn: fn(probe), repeat))
            bar.update()
        # the whole on-device path for one frame with one face, as the van runs it
        results["pipeline_one_face"] = latency_summary(time_calls(lambda: rec.faces(frame), max(3, repeat // 4)))
        bar.update()
        v_int8, v_f32 = single_int8.embed(chip)[0], float_embedder.embed(chip)[0]
        agreement = {"cosine_int8_vs_float32": float(v_int8 @ v_f32)}
        if dl:
            dlib, hog, facerec = dl
            results["dlib_descriptor"] = latency_summary(time_calls(lambda: facerec.compute_face_descriptor(chip),
                                                             n_dlib, warmup=1))
            d = np.asarray(facerec.compute_face_descriptor(chip), np.float32)
            agreement["cosine_int8_vs_dlib"] = float(v_int8 @ (d / np.linalg.norm(d)))
            bar.update()
            per_hog = max(2, n_dlib // len(scenes))
            pooled = []
            for name, img in scenes.items():
                t = time_calls(lambda img=img: hog(img, 1), per_hog, warmup=1)
                pooled.append(t)
                per_image[name]["dlib_hog_faces"] = len(hog(img, 1))
                per_image[name]["dlib_hog"] = latency_summary(t)
            results["dlib_hog_detect"] = latency_summary(np.concatenate(pooled))
            bar.update()

        model_rows = model_table(find_models_dir(rt.models_dir or None), max(10, min(repeat, 100)),
                                 prefer_edgetpu=rt.prefer_edgetpu)
        bar.update()

    single = results["embed_int8_single_pass"]["p50_ms"]
    ratios = {"float32_over_int8": results["embed_float32"]["p50_ms"] / single}
    if dl:
        ratios["dlib_over_int8"] = results["dlib_descriptor"]["p50_ms"] / single
        ratios["dlib_over_int8_as_configured"] = results["dlib_descriptor"]["p50_ms"] / results["embed_int8"]["p50_ms"]
        ratios["dlib_hog_over_blazeface"] = results["dlib_hog_detect"]["p50_ms"] / results["detect"]["p50_ms"]
    report = {
        "stages": results,
        "ratios": ratios,
        "detect_per_image": per_image,
        "agreement": agreement,
        "repeat": repeat,
        "repeat_dlib": n_dlib if dl else 0,
        "matcher": matcher_kind,
        "mirror_average": mirror,
        "alignment_source": getattr(rec.aligner, "source", "detector"),
        "ratio_note": "float32_over_int8 and dlib_over_int8 compare one inference on one chip each; "
                      "dlib_over_int8_as_configured uses embed_int8, which with mirror_average runs two",
        "dlib": (getattr(dl[0], "__version__", "?") if dl else None),
        "shared_scenes": shared_used,
        "model_sha256": rec.embedder_sha256, "loaded_model_sha256": rec.loaded_embedder_sha256,
        "delegates": rec.delegates,
        "threads": rt.threads,
        "models": model_rows,
        "detector": {"model": config.detector.model, "near_model": config.detector.near_model},
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "python": platform.python_version(), "cpus": os.cpu_count()},
    }
    print(format_table(report))
    print()
    print(format_model_table(model_rows))
    if out_path is not None:
        out_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        print(f"written: {out_path}")
    return 0


LABELS = {
    "detect": "detect (BlazeFace, whole frame)",
    "landmarks": "landmarks (face-mesh refinement)",
    "align": "align (150x150 chip warp)",
    "quality": "quality gate",
    "embed_int8": "embed int8 (1 chip, as configured)",
    "embed_int8_single_pass": "embed int8 (1 chip, one pass)",
    "embed_float32": "embed float32 TFLite (1 chip)",
    "match_top1_1000": "match top-1, N=1,000",
    "match_top1_10000": "match top-1, N=10,000",
    "match_top1_100000": "match top-1, N=100,000",
    "pipeline_one_face": "faces(): whole pipeline, frame with 1 face",
    "dlib_descriptor": "dlib compute_face_descriptor (same chip)",
    "dlib_hog_detect": "dlib HOG detect (upsample 1, same images)",
}


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'stage':46s}{'median ms':>11s}{'p95 ms':>10s}{'runs':>7s}"]
    for key, s in report["stages"].items():
        lines.append(f"{LABELS.get(key, key):46s}{s['p50_ms']:11.3f}{s['p95_ms']:10.3f}{s['n']:7d}")
    lines.append("")
    lines.append(f"{'detect per image':30s}{'size':>11s}{'faces':>7s}{'median ms':>11s}"
                 + (f"{'dlib faces':>12s}{'dlib ms':>10s}" if report["dlib"] else ""))
    for name, r in report["detect_per_image"].items():
        line = f"{name:30s}{r['size']:>11s}{r['faces']:7d}{r['detect']['p50_ms']:11.2f}"
        if "dlib_hog" in r:
            line += f"{r['dlib_hog_faces']:12d}{r['dlib_hog']['p50_ms']:10.1f}"
        lines.append(line)
    lines.append("")
    r = report["ratios"]
    lines.append(f"embed int8 as configured: mirror_average={report['mirror_average']} "
                 f"({'2 passes' if report['mirror_average'] else '1 pass'}); alignment from {report['alignment_source']} points")
    lines.append(f"float32 / int8 embed, one pass each (median): {r['float32_over_int8']:.2f}x")
    if "dlib_over_int8" in r:
        lines.append(f"dlib descriptor / int8 embed, one pass each (median): {r['dlib_over_int8']:.2f}x   "
                     f"(vs int8 as configured: {r['dlib_over_int8_as_configured']:.2f}x)")
        lines.append(f"dlib HOG / BlazeFace detect (median): {r['dlib_hog_over_blazeface']:.2f}x   (dlib {report['dlib']})")
    else:
        lines.append("dlib not installed: no reference timing (pip install -e '.[reference]')")
    a = report["agreement"]
    lines.append("same chip, cosine int8 vs float32: {:.4f}".format(a["cosine_int8_vs_float32"])
                 + ("   int8 vs dlib: {:.4f}".format(a["cosine_int8_vs_dlib"]) if "cosine_int8_vs_dlib" in a else ""))
    lines.append(f"matcher: {report['matcher']}; threads {report['threads']}; "
                 + ", ".join(f"{k} on {v}" for k, v in report["delegates"].items()))
    return "\n".join(lines)
