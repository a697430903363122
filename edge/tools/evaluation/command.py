"""``edge-lfr eval lfw``: accuracy of the on-device pipeline on an LFW-layout folder.

Two protocols on the same embeddings (each image is embedded once and reused):

* **Pair verification** (LFW View 2): cosine score per pair, a threshold chosen to maximise
  accuracy on the other folds and tested on the held-out fold (10-fold in LFW; the file's
  header says how many). A pair with an image that has no usable face scores -1, i.e. it is
  decided "different".
* **Open-set identification** (ISO/IEC 19795-1, NIST FRTE 1:N): the watchlist is the first
  image of each identity that has at least two images (N = 100, 500 sampled with ``--seed``,
  and all of them); mated probes are those identities' other images; non-mated probes are
  every image of the identities that have exactly one. For a target false-positive
  identification rate (FPIR) the threshold is the smallest score at which at most that
  fraction of non-mated probes raises an alarm; the false-negative identification rate
  (FNIR) is the fraction of mated probes whose top-1 candidate is wrong or below it.

Per image the face used is the detection whose box centre is nearest the image centre; an
image without a face, or whose face fails the quality gate, has no embedding: a mated probe
without one is a miss, a non-mated probe without one raises no alarm, and an enrolment image
without one is replaced by the identity's next image that has one (the report says so).

**Track protocol** (``--track-size K ...``, default 1 3 5; N = all): every probe fuses K usable
images of one identity with :func:`edge.recognition.fusion.fuse_embeddings` weighted by face quality, as
the live tracker fuses a track's frames. Mated probes: each listed identity's other images in
disjoint groups of K; non-mated probes: every identity's images in disjoint groups of K,
listed identities searched against the list without their own entry (leave-one-out: at
N = all every identity with two or more images is listed). **Multi-image enrolment**: the
first min(M, n - 1) images of each listed identity, fused or kept apart (best template),
probed with the same images for every M.

**Pipelines** (``--pipeline base|improved|both``): *base* is the raw cosine; *improved* is the
cohort-normalised score of :mod:`edge.matching.normalise` with fused templates, **cross-fitted**:
identities are split into the pairs file's folds (the others by a hash of the name), and every
probe, pair and template of fold f is scored by a model whose background cohort holds only
single-image identities of the other folds. No listed identity is in any cohort, so no
comparison is scored by a model fitted on either of its faces. The policy check sets the
threshold of :mod:`edge.matching.calibration` for each target FPIR from a calibration fitted on the
other folds and reports the FPIR and FNIR it delivers. When the dataset shares no face with the
shipped model's cohort, the shipped model is also scored as it is (a held-out test).

``--reference dlib`` runs dlib's own float pipeline (HOG detector, 5-point landmarks,
``get_face_chip``, ResNet descriptor) on the same images in the same run and scores it with
the same protocol, so the two sets of figures are directly comparable.

The protocol functions (:func:`best_threshold`, :func:`cross_validate`,
:func:`threshold_at_fpir`, :func:`fnir_at`, :func:`det_curve`) are pure numpy.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge.config import load_config
from edge.errors import InputError, ModelError
from edge.matching.calibration import ThresholdPolicy, fit_calibration
from edge.matching.match import Matcher, Watchlist
from edge.matching.normalise import load_score_model
from edge.progress import Progress
from edge.recognition.api import Recognizer
from edge.tools.evaluation import PIPELINES, TRACK_SIZES
from edge.tools.evaluation.dlib_reference import DLIB_WORKERS, dlib_available, embed_dlib
from edge.tools.evaluation.embeddings import EmbeddingTable, embed_ours, load_table, save_table, table_meta
from edge.tools.evaluation.lfw import PairsFile, parse_pairs, scan_lfw
from edge.tools.evaluation.plots import plot_det, summary_table
from edge.tools.evaluation.protocol import (
    MISSING_SCORE,
    EvalScorer,
    compare,
    fit_crossfit_models,
    identity_folds,
    score_pipeline,
)

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------

def _prepare_output(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: {what} path is a folder; give a file name")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{p}: cannot create the folder for the {what}: {exc}") from None
    if not os.access(p.parent, os.W_OK):
        raise InputError(f"{p.parent}: folder is not writable (for the {what})")
    return p


def _sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()




def _standalone_parser():
    """``python -m edge.tools.evaluation.command lfw ...``: the same options as ``edge-lfr eval lfw``."""
    p = argparse.ArgumentParser(prog="python -m edge.tools.evaluation.command")
    sub = p.add_subparsers(dest="dataset", required=True)
    e = sub.add_parser("lfw")
    e.add_argument("--images", required=True)
    e.add_argument("--pairs", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--plot")
    e.add_argument("--reference", choices=["dlib"])
    e.add_argument("--config")
    e.add_argument("--limit", type=int, default=0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--pipeline", choices=PIPELINES, default="both")
    e.add_argument("--track-size", type=int, nargs="+", default=list(TRACK_SIZES))
    e.add_argument("--embeddings-cache")
    return p


def benchmark_added_cost(model, table: EmbeddingTable, sizes: Sequence[int] = (1000, 10000),
                         repeat: int = 300, seed: int = 0) -> dict[str, Any]:
    """Per-face cost of the improved scoring on this machine: median seconds of one
    ``Matcher.match`` of a real probe with and without the score model, for lists of ``sizes``
    subjects (real embeddings, repeated with a little noise to reach the size), and the one-off
    cost of loading a list (the subjects' cohort statistics)."""
    rng = np.random.default_rng(seed)
    real = table.embeddings[table.ok].astype(np.float32)
    if len(real) < 2:
        return {"error": "too few embeddings"}
    cal = model.calibration or fit_calibration(rng.normal(size=20000))
    scorer = model.with_calibration(cal)
    probes = real[rng.choice(len(real), min(64, len(real)), replace=False)]
    out: dict[str, Any] = {"cohort_size": model.size, "top_k": int(model.top_k), "repeat": repeat}
    for n in sizes:
        rows = real[rng.integers(0, len(real), n)] + rng.normal(0, 0.02, (n, real.shape[1])).astype(np.float32)
        wl = Watchlist(rows, [f"s{i}" for i in range(n)], ["wanted"] * n)
        base = Matcher(wl, {"wanted": 0.95})
        t0 = time.perf_counter()
        pol = ThresholdPolicy(cal, 0.001, n)
        imp = Matcher(wl, {"wanted": pol.threshold}, scorer=scorer, policy=pol)
        load = time.perf_counter() - t0
        times = {"base": [], "improved": []}
        for i in range(repeat):
            p = probes[i % len(probes)]
            for name, m in (("base", base), ("improved", imp)):
                t0 = time.perf_counter()
                m.match(p)
                times[name].append(time.perf_counter() - t0)
        b, im = float(np.median(times["base"])), float(np.median(times["improved"]))
        out[str(n)] = {"base_ms": 1000 * b, "improved_ms": 1000 * im, "added_ms": 1000 * (im - b),
                       "added_p90_ms": 1000 * float(np.percentile(times["improved"], 90)
                                                    - np.percentile(times["base"], 90)),
                       "list_load_seconds": load}
    return out


def _cohort_overlap(model, table: EmbeddingTable) -> int:
    """How many of this dataset's faces are (near-)identical to a face of the shipped cohort."""
    e = table.embeddings[table.ok].astype(np.float32)
    hits = 0
    for i in range(0, len(e), 2048):
        hits += int(np.count_nonzero((e[i:i + 2048] @ model.cohort.T).max(axis=1) > 0.9995))
    return hits


def run_eval_lfw(args) -> int:

    images_dir = Path(args.images)
    identities = scan_lfw(images_dir, getattr(args, "limit", 0) or 0)
    limited = bool(getattr(args, "limit", 0))
    pairs = parse_pairs(args.pairs, images_dir, keep=set(identities) if limited else None)
    out_path = _prepare_output(args.out, "report")
    plot_path = _prepare_output(args.plot, "plot") if getattr(args, "plot", None) else None
    pipeline = getattr(args, "pipeline", None) or "both"
    track_sizes = tuple(getattr(args, "track_size", None) or TRACK_SIZES)
    if pipeline not in PIPELINES:
        raise InputError(f"--pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    if any(k < 1 for k in track_sizes):
        raise InputError(f"--track-size values must be >= 1, got {list(track_sizes)}")
    reference = getattr(args, "reference", None)
    if reference == "dlib":
        ok, why = dlib_available()
        if not ok:
            raise ModelError(f"--reference dlib needs dlib and face_recognition_models ({why}); "
                             "install them with: pip install -e '.[reference]'")
    config = load_config(getattr(args, "config", None))
    rec = Recognizer(config)

    # every image once: all images of the (limited) identities, plus any pair image beyond them
    paths = [p for ps in identities.values() for p in ps]
    seen = set(paths)
    for pr in pairs.pairs:
        for p in (pr.a, pr.b):
            if p not in seen:
                seen.add(p)
                paths.append(p)
    n_ids = len(identities)
    n_multi = sum(len(v) >= 2 for v in identities.values())
    print(f"eval lfw: {len(paths)} images, {n_ids} identities ({n_multi} with >= 2 images, "
          f"{n_ids - n_multi} with one), {len(pairs.pairs)} pairs in {pairs.folds} folds", file=sys.stderr)
    if pairs.dropped:
        print(f"eval lfw: --limit {args.limit} left out {pairs.dropped} of {pairs.dropped + len(pairs.pairs)} "
              "pairs (an identity outside the limit); the pair figures are a quick check only", file=sys.stderr)

    cache = getattr(args, "embeddings_cache", None)
    meta = table_meta(rec, config)
    ours_table = load_table(cache, paths, meta) if cache and Path(cache).is_file() else None
    if ours_table is not None:
        print(f"eval lfw: embeddings reused from {cache}", file=sys.stderr)
    else:
        with Progress(len(paths), "ours (int8) ", unit="img") as bar:
            ours_table = embed_ours(rec, paths, bar)
        if cache:
            save_table(_prepare_output(cache, "embeddings cache"), ours_table, meta)
    fold_of = identity_folds(identities, pairs)
    ours = score_pipeline(ours_table, pairs, identities, images_dir, args.seed, EvalScorer.base(), fold_of,
                          track_sizes, studies=True)
    ours.pop("_impostor", None)
    report: dict[str, Any] = {
        "dataset": {"images": str(images_dir), "pairs_file": str(args.pairs), "n_images": len(paths),
                    "n_identities": n_ids, "n_identities_multi": n_multi, "limit": getattr(args, "limit", 0),
                    "seed": args.seed},
        "protocol": {
            "face_choice": "detection whose box centre is nearest the image centre; no face or a "
                           "quality-gate failure = no embedding",
            "pairs": "cosine score (improved: normalised score), missing embedding scores -1 (improved: "
                     f"{MISSING_SCORE:g}); per fold the threshold maximising accuracy on the other folds; "
                     "accuracy_std is the sample sd over folds",
            "identification": "watchlist = first image (sorted) of each identity with >= 2 images "
                              "(N < all: sampled with numpy default_rng(seed)); mated probes = their "
                              "other images; non-mated probes = identities with one image; threshold "
                              "at FPIR f = smallest t with fraction of non-mated top-1 scores >= t "
                              "<= f; FNIR = mated top-1 wrong or below t",
            "track": "N = all; each probe fuses K usable images of one identity with edge.recognition.fusion."
                     "fuse_embeddings weighted by face quality (edge.appliance.track.quality_weight), as the live "
                     "tracker fuses a track; mated = listed identities' other images in disjoint groups "
                     "of K; non-mated = every identity's images in disjoint groups of K, listed ones "
                     "searched against the list without their own entry (leave-one-out)",
            "enrolment": "N = all; templates = first min(M, n-1) usable images, fused into one or kept "
                         "apart (best template scores); mated probes = images from position "
                         "min(3, n-1) on, the same for every M; non-mated = single-image identities",
            "improved": "cohort-normalised score (edge.matching.normalise) cross-fitted: identities are split "
                        "into the pairs file's folds (others by a hash of the name); every probe, pair "
                        "and template of fold f is scored by a model whose background cohort holds only "
                        "single-image identities of the other folds; the policy check's calibration "
                        "likewise comes from the other folds",
        },
        "model_sha256": rec.embedder_sha256, "loaded_model_sha256": rec.loaded_embedder_sha256,
        "models": {rec.detector.model.name: rec.detector.model.sha256,
                   rec.embedder.model.name: rec.embedder.model.sha256},
        "delegates": rec.delegates,
        "config": config.as_dict(),
        **ours,
    }
    gate_off = score_pipeline(ours_table.ungated, pairs, identities, images_dir, args.seed)
    for k in ("seconds_per_image", "wall_seconds", "pipeline"):
        gate_off.pop(k, None)
    report["without_quality_gate"] = {
        "note": "diagnostic only, not the device's figures: the same int8 pipeline with the quality "
                "gate off (faces it refuses are embedded anyway), to separate the gate's cost from "
                "the embedding model's", **gate_off}
    columns: list[tuple[str, dict[str, Any]]] = []
    if pipeline in ("base", "both"):
        columns += [("base", ours), ("base, gate off", gate_off)]
    if pipeline in ("improved", "both"):
        columns += _improved_columns(report, ours_table, pairs, identities, images_dir, args.seed, fold_of,
                                     track_sizes, ours)
    if reference == "dlib":
        import face_recognition_models as frm  # the reference extra (dlib model files)
        _, version = dlib_available()
        with Progress(len(paths), f"dlib ({DLIB_WORKERS} procs)", unit="img") as bar:
            ref_table = embed_dlib(paths, DLIB_WORKERS, bar)
        ref = score_pipeline(ref_table, pairs, identities, images_dir, args.seed)
        ref.pop("pipeline", None)
        ref = {"pipeline": "dlib get_frontal_face_detector (upsample 1) + shape_predictor 5-point + "
                           "get_face_chip(size=150, padding=0.25) + face_recognition_model_v1 float, "
                           "L2-normalised; same face choice and protocol",
               "dlib_version": version,
               "model_sha256": _sha256_file(frm.face_recognition_model_location()),
               "workers": DLIB_WORKERS,
               "seconds_note": "per-image stage times measured inside each worker process",
               **ref}
        report["reference"] = ref
        report["comparison"] = compare(ours, ref)
        report["comparison"]["without_quality_gate"] = compare(gate_off, ref)
        columns.append(("dlib (float)", ref))

    if plot_path:
        plot_det(plot_path, [c for c in columns if "gate off" not in c[0]])
        report["plot"] = str(plot_path)
    out_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print(summary_table(columns))
    if "comparison" in report and "pairs_accuracy_points" in report["comparison"]:
        print(f"pairs accuracy, ours minus dlib: {report['comparison']['pairs_accuracy_points']:+.2f} points")
    for key in ("improved", "improved_shipped"):
        cost = report.get(key, {}).get("added_cost", {})
        for n in ("1000", "10000"):
            if n in cost:
                print(f"{key}: added per-face cost, list of {n}: {cost[n]['added_ms']:.3f} ms "
                      f"(match {cost[n]['base_ms']:.3f} -> {cost[n]['improved_ms']:.3f} ms)")
    print(f"report: {out_path}" + (f"   DET plot: {plot_path}" if plot_path else ""))
    return 0


def _improved_columns(report: dict[str, Any], table: EmbeddingTable, pairs: PairsFile,
                      identities: dict[str, list[Path]], images_dir: Path, seed: int, fold_of: dict[str, int],
                      track_sizes: Sequence[int], base: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The improved pipeline, cross-fitted (the headline), and with the shipped score model when
    this dataset shares no face with its cohort (on lfw-dev it does: that run would be in-sample)."""
    columns = []
    try:
        shipped, shipped_why = load_score_model(), ""
    except ModelError as exc:
        shipped, shipped_why = None, str(exc)
    models, why = fit_crossfit_models(table, identities, fold_of)
    if models is None:
        report["improved"] = {"skipped": why}
        print(f"eval lfw: improved pipeline skipped: {why}", file=sys.stderr)
    else:
        note = ("cohort-normalised score t (edge.matching.normalise), each identity fold scored by a model fitted on "
                "the other folds' single-image identities; fused templates")
        imp = score_pipeline(table, pairs, identities, images_dir, seed, EvalScorer("improved", models, note),
                             fold_of, track_sizes, studies=True)
        vals, _ = imp.pop("_impostor", (np.empty(0), None))
        sizes = sorted({m.size for m in models.values()})
        imp["cohort_sizes"] = sizes
        try:
            cal = fit_calibration(vals, f"lfw-style folder {images_dir.name}, cross-fitted, {len(vals):,} "
                                        "non-mated comparisons")
            imp["calibration_fitted"] = cal.to_manifest()
        except InputError as exc:
            cal = None
            imp["calibration_fitted"] = {"error": str(exc)}
        # what runs on the unit: the shipped model when there is one (its cohort is the larger)
        bench_model = shipped or (models[min(models)].with_calibration(cal) if cal else models[min(models)])
        imp["added_cost"] = benchmark_added_cost(bench_model, table)
        imp["added_cost"]["model"] = "shipped" if shipped else "fold model"
        imp["minus_base"] = compare(imp, base)
        report["improved"] = imp
        columns.append(("improved (cross-fitted)", imp))
    if shipped is None:
        report["improved_shipped"] = {"skipped": f"no shipped score model: {shipped_why}"}
        return columns
    overlap = _cohort_overlap(shipped, table)
    if overlap:
        report["improved_shipped"] = {"skipped": f"{overlap} faces of this dataset are in the shipped model's "
                                                 "background cohort: scoring them with it would be in-sample; "
                                                 "the cross-fitted column is the measurement"}
        return columns
    scorer = EvalScorer("improved (shipped model)", {0: shipped},
                        f"shipped score model (cohort {shipped.size}, sha256 {shipped.sha256[:16]}...)")
    scorer.fixed_calibration = shipped.calibration
    imp_s = score_pipeline(table, pairs, identities, images_dir, seed, scorer, None, track_sizes, studies=True)
    imp_s.pop("_impostor", None)
    imp_s["minus_base"] = compare(imp_s, base)
    report["improved_shipped"] = imp_s
    columns.append(("improved (shipped model)", imp_s))
    return columns


if __name__ == "__main__":  # python -m edge.tools.evaluation.command lfw ... (same options as edge-lfr eval lfw)
    from edge.errors import EdgeError
    _args = _standalone_parser().parse_args()
    try:
        sys.exit(run_eval_lfw(_args))
    except EdgeError as _exc:
        print(f"edge.tools.evaluation.command: error: {_exc}", file=sys.stderr)
        sys.exit(_exc.exit_code)
