"""Fit the score model shipped with the embedder: background cohort + score calibration (dev-only).

    python models/fit_calibration.py --lfw ../shared/faces/lfw-dev \
        [--embeddings-cache /tmp/lfw-dev-emb.npz] [--models-dir models] [--dry-run]

What it does, all on lfw-dev and reproducible (no randomness):

1. embeds every image with the unit's own pipeline (``edge.recognition.api.Recognizer``; the face nearest
   the image centre, quality gate on), or reuses an ``edge-lfr eval lfw --embeddings-cache``;
2. **cohort**: the usable embeddings of every identity that has a single image (people on no
   watchlist of the evaluation protocol) -> ``models/background_cohort.npy`` (float32, unit
   rows), with ``top_k`` and the cohort-wide constants of :mod:`edge.matching.normalise`;
3. **calibration**: the impostor distribution of the normalised score measured with
   identity-disjoint cross-fitting, exactly as ``edge-lfr eval lfw`` scores the improved
   pipeline: identities are split into the pairs file's folds (the rest by a hash of the
   name); each fold's probes are scored against the whole watchlist (first image of each
   identity with >= 2 images) by a model whose cohort holds only the other folds'
   single-image identities; every non-mated comparison (non-mated probes x all subjects,
   mated probes x the other subjects) goes into :func:`edge.matching.calibration.fit_calibration`.
   The shipped cohort itself is never used to score the faces it contains;
4. writes the ``score_normalisation`` section of ``models/manifest.json`` (read, modified and
   written back at once; every other section is kept as it is).

A learned projection is not fitted here: measured with the same cross-fitting it lowered
every figure (``models/fit_projection.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.tools.evaluation import command as ev  # noqa: E402
from edge.matching.normalise import (COHORT_FILE, DEFAULT_TOP_FRACTION, MANIFEST_SECTION, ScoreModel,  # noqa: E402
                            cohort_sha256, fit_score_model)
from edge.matching.calibration import ThresholdPolicy, fit_calibration  # noqa: E402


def load_embeddings(lfw: Path, pairs_path: Path, cache: str | None):
    """(table, identities, pairs) of lfw-dev with the unit's pipeline (or the eval cache)."""
    from edge.recognition.api import Recognizer
    from edge.config import load_config
    from edge.progress import Progress
    identities = ev.scan_lfw(lfw)
    pairs = ev.parse_pairs(pairs_path, lfw)
    paths = [p for ps in identities.values() for p in ps]
    config = load_config(None)
    rec = Recognizer(config)
    meta = ev._table_meta(rec, config)
    table = ev.load_table(cache, paths, meta) if cache and Path(cache).is_file() else None
    if table is None:
        with Progress(len(paths), "embedding", unit="img") as bar:
            table = ev.embed_ours(rec, paths, bar)
        if cache:
            ev.save_table(cache, table, meta)
    provenance = {"embedder_sha256": rec.embedder_sha256, "detector": config.detector.model,
                  "near_detector": config.detector.near_model, "mirror_average": config.embed.mirror_average,
                  "quality_gate": config.quality.as_dict()}
    return table, identities, pairs, provenance


def write_section(models_dir: Path, section: dict) -> Path:
    """Read manifest.json, set only our section, write it back atomically (sorted keys, indent 2,
    the format models/build.py uses)."""
    path = models_dir / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest[MANIFEST_SECTION] = section
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lfw", type=Path, default=ROOT.parent / "shared" / "faces" / "lfw-dev")
    ap.add_argument("--pairs", type=Path, default=None, help="default: <lfw>/pairs.txt")
    ap.add_argument("--embeddings-cache", default=None)
    ap.add_argument("--models-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--top-fraction", type=float, default=DEFAULT_TOP_FRACTION)
    ap.add_argument("--dry-run", action="store_true", help="print the section, write nothing")
    args = ap.parse_args(argv)
    t0 = time.time()
    table, identities, pairs, provenance = load_embeddings(args.lfw, args.pairs or args.lfw / "pairs.txt",
                                                             args.embeddings_cache)
    fold_of = ev.identity_folds(identities, pairs)

    # cross-fitted impostor scores -> calibration
    models, why = ev.fit_crossfit_models(table, identities, fold_of, args.top_fraction)
    if models is None:
        raise SystemExit(why)
    scorer = ev.EvalScorer("improved", models)
    names = ev.sample_watchlist(identities, "all", 0)
    ident = ev.identification(table, identities, names, args.lfw, scorer=scorer, fold_of=fold_of,
                              keep_scores=True)
    vals, _ = ev.impostor_scores(ident)
    check = ev.policy_check(ident)
    source = (f"lfw-dev ({len(identities)} identities), identity-disjoint cross-fitted over {len(models)} folds, "
              f"{vals.size:,} non-mated comparisons")
    cal = fit_calibration(vals, source)

    # the shipped cohort: every usable single-image identity of lfw-dev
    rows = ev.cohort_rows(table, identities, None, fold_of)
    model = fit_score_model(table.embeddings[rows], args.top_fraction)
    cohort = np.ascontiguousarray(model.cohort, dtype=np.float32)
    n_list = ident["n_watchlist"]
    examples = {f"{t:g} @ N={n}": round(ThresholdPolicy(cal, t, n).threshold, 4)
                for t in (0.01, 0.001) for n in (100, 1000, 10000, 100000)}
    section = {
        "method": "cohort score normalisation (edge.matching.normalise): t = mean of three z-scores of the cosine "
                  "(listed subject's top-k cohort statistics, passer-by's, cohort-wide); calibrated score = "
                  "-log10 FMR(t) / 10 (edge.matching.calibration)",
        "fitted_on": f"{args.lfw.name}: cohort = {len(rows)} usable faces of single-image identities; "
                     f"calibration = {source}",
        "pipeline": provenance,
        "refit_when": "the detector, alignment, quality gate or embedder defaults change (the cohort and the "
                      "calibration are embeddings of that pipeline): python models/fit_calibration.py",
        "script": "models/fit_calibration.py",
        "top_fraction": args.top_fraction,
        "projection": "none (measured: within-class whitening / LDA / nuisance projection fitted on lfw-dev "
                      "lowered the cross-fitted figures; models/fit_projection.py)",
        "validation": {"watchlist_size": n_list, "policy_check_cross_fitted": check,
                       "thresholds_for": examples},
    }
    if args.dry_run:
        print(json.dumps(section | {"calibration": cal.to_manifest()}, indent=1)[:4000])
        return 0
    out = args.models_dir / COHORT_FILE
    np.save(out, cohort, allow_pickle=False)
    sha = cohort_sha256(out)
    final = ScoreModel(model.cohort, model.top_k, model.mu0, model.sd0, sha, cal)
    entry = final.manifest_entry(COHORT_FILE, **section)
    write_section(args.models_dir, entry)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(rows)} faces, top_k {model.top_k}, "
          f"mu0 {model.mu0:.4f}, sd0 {model.sd0:.5f}) and the {MANIFEST_SECTION!r} section of "
          f"{args.models_dir / 'manifest.json'} in {time.time() - t0:.0f} s")
    print(f"calibration: {len(cal.t)} points down to FMR {cal.min_supported_fmr:.2g}, tail slope "
          f"{cal.tail_slope:.3f} decades per unit")
    print("policy check (cross-fitted):", json.dumps(check))
    print("thresholds:", json.dumps(examples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
