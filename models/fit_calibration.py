"""Fit the score model shipped with the embedder: background cohort + score calibration (dev-only).

    python models/fit_calibration.py --lfw ../shared/faces/lfw-dev \
        [--embeddings-cache /tmp/lfw-dev-emb.npz] [--models-dir models] [--dry-run]

What it does, all on lfw-dev and reproducible (no randomness):

1. embeds every image with the unit's own pipeline (``edge.recognition.api.Recognizer``; the face nearest
   the image centre, quality gate on), or reuses an ``edge-lfr eval lfw --embeddings-cache``;
2. **cohort**: the usable embeddings of half of the identities that have a single image: those
   whose name's SHA-256 starts with a hex digit 0-7 (:func:`in_cohort`) ->
   ``models/background_cohort.npy`` (float32, unit rows), with ``top_k`` and the cohort-wide
   constants of :mod:`edge.matching.normalise`; their names' hashes ->
   ``models/background_cohort_identities.txt``. The other half (and every identity with several
   images) is left for benchmarks and evaluations to list and to walk past the unit
   (``edge-lfr bench scenes``), so no face there is scored by a cohort holding its person;
3. **calibration**: the impostor distribution of the normalised score from every non-mated
   pair of lfw-dev images each scored by a cohort that holds neither face's identity: every
   pair outside the shipped cohort's identities with the shipped model, and every pair that
   involves a shipped-cohort face (but no face of the other half) with a model whose cohort is
   the other half of the single-image identities (the same size, drawn the same way). Some 20
   million comparisons (less the cross pairs of names that are one person,
   ``models/lfw_dev_errata.txt``): the table reaches FMR ~5e-6, and the tail beyond it
   (:func:`edge.matching.calibration.fit_calibration`) is fitted on the top 1e-5 and checked
   against the sample down to 3 comparisons (FMR ~1.5e-7); then the fusion offsets and the pass
   multiplicity (:func:`fusion_study`). The cross-fitted open-set check of ``edge-lfr eval lfw`` is
   recorded as the validation;
4. writes the ``score_normalisation`` section of ``models/manifest.json`` (read, modified and
   written back at once; every other section is kept as it is).

A learned projection is not fitted here: measured with the same cross-fitting it lowered
every figure (``models/fit_projection.py``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.tools.evaluation import embeddings as ev_emb, lfw as ev_lfw, protocol as ev  # noqa: E402
from edge.matching.normalise import (COHORT_FILE, COHORT_IDENTITIES_FILE, DEFAULT_TOP_FRACTION,  # noqa: E402
                                    MANIFEST_SECTION, ScoreModel, cohort_sha256, fit_score_model, identity_key)
from edge.matching.calibration import ThresholdPolicy, fit_calibration  # noqa: E402


def load_embeddings(lfw: Path, pairs_path: Path, cache: str | None):
    """(table, identities, pairs) of lfw-dev with the unit's pipeline (or the eval cache)."""
    from edge.recognition.api import Recognizer
    from edge.config import load_config
    from edge.progress import Progress
    identities = ev_lfw.scan_lfw(lfw)
    pairs = ev_lfw.parse_pairs(pairs_path, lfw)
    paths = [p for ps in identities.values() for p in ps]
    config = load_config(None)
    rec = Recognizer(config)
    meta = ev_emb.table_meta(rec, config)
    table = ev_emb.load_table(cache, paths, meta) if cache and Path(cache).is_file() else None
    if table is None:
        with Progress(len(paths), "embedding", unit="img") as bar:
            table = ev_emb.embed_ours(rec, paths, bar)
        if cache:
            ev_emb.save_table(cache, table, meta)
    provenance = {"embedder_sha256": rec.embedder_sha256, "detector": config.detector.model,
                  "near_detector": config.detector.near_model, "mirror_average": config.embed.mirror_average,
                  "quality_gate": config.quality.as_dict()}
    return table, identities, pairs, provenance


def in_cohort(name: str, n_images: int) -> bool:
    """The shipped cohort's half of lfw-dev: single-image identities whose name hashes to 0-7."""
    return n_images == 1 and int(identity_key(name)[0], 16) < 8


def pair_scores(model: ScoreModel, emb: np.ndarray, ident: np.ndarray, mask_rows=None, block: int = 512):
    """t of every unordered pair (i < j) of rows of ``emb`` with different ``ident``, and where
    ``mask_rows`` is given, at least one of the two rows in it. float32 array."""
    mu, sd = model.cohort_stats(emb)
    out = []
    n = len(emb)
    for i in range(0, n, block):
        e = emb[i:i + block]
        s = (e @ emb.T).astype(np.float64)
        t = ((s - mu[i:i + block, None]) / sd[i:i + block, None] + (s - mu[None, :]) / sd[None, :]
             + (s - model.mu0) / model.sd0) / 3.0
        rows = np.arange(i, i + len(e))[:, None]
        keep = (np.arange(n)[None, :] > rows) & (ident[i:i + block, None] != ident[None, :])
        if mask_rows is not None:
            keep &= mask_rows[i:i + block, None] | mask_rows[None, :]
        out.append(t[keep].astype(np.float32))
    return np.concatenate(out) if out else np.empty(0, np.float32)


def all_pairs_impostors(table, identities, top_fraction: float, aliases: dict[str, str] | None = None):
    """(shipped model, impostor t of every pair scored by a cohort holding neither identity,
    cohort rows, cohort names, description). ``aliases`` (second name -> first,
    :func:`edge.tools.evaluation.lfw.load_aliases`): one person under two names, never paired."""
    aliases = aliases or {}
    ok = table.ok
    a_names = sorted(n for n, ps in identities.items() if in_cohort(n, len(ps)))
    b_names = sorted(n for n, ps in identities.items() if len(ps) == 1 and not in_cohort(n, 1))
    rows_of = lambda names: np.array([table.index[p] for n in names for p in identities[n]  # noqa: E731
                                      if ok[table.index[p]]], int)
    a_rows, b_rows = rows_of(a_names), rows_of(b_names)
    model_a = fit_score_model(table.embeddings[a_rows], top_fraction)
    model_b = fit_score_model(table.embeddings[b_rows], top_fraction)
    a_set = set(a_names)
    b_set = set(b_names)
    names = sorted(identities)
    # 1. everything outside cohort A, scored by A
    out_a = [n for n in names if n not in a_set]
    r1 = rows_of(out_a)
    person = {n: i for i, n in enumerate(names)}
    person.update({a: person[b] for a, b in aliases.items() if a in person and b in person})
    id1 = np.array([person[n] for n in out_a for p in identities[n] if ok[table.index[p]]])
    v1 = pair_scores(model_a, table.embeddings[r1], id1)
    # 2. pairs with a face of A (and none of B), scored by B
    out_b = [n for n in names if n not in b_set]
    r2 = rows_of(out_b)
    id2 = np.array([person[n] for n in out_b for p in identities[n] if ok[table.index[p]]])
    in_a = np.array([n in a_set for n in out_b for p in identities[n] if ok[table.index[p]]])
    v2 = pair_scores(model_b, table.embeddings[r2], id2, mask_rows=in_a)
    how = (f"every non-mated pair of lfw-dev scored by a cohort holding neither identity: {v1.size:,} pairs "
           f"outside the shipped cohort's {len(a_names)} identities (shipped cohort), {v2.size:,} pairs with a "
           f"shipped-cohort face (the other {len(b_names)} single-image identities as cohort); "
           f"{len(aliases)} pairs of names that are one person (models/{ev_lfw.ERRATA_FILE}) never paired")
    return model_a, np.concatenate([v1, v2]), a_rows, a_names, how


#: tracks for the fusion study: people outside the cohort with this many usable photos (one is
#: the template, the rest the track's views in order)
FUSION_TRACK_PHOTOS = 6
#: FMR levels the fusion offsets are read at: the deepest with enough exceedances in ~10^5 comparisons
#: (thresholds live deeper still, where the shift is smaller: at 1e-2 it was 0.31 for two views)
FUSION_LEVELS = (1e-3, 1e-4)


def _quantile(v: np.ndarray, fmr: float) -> float:
    v = np.sort(v)
    return float(v[len(v) - max(1, int(fmr * len(v)))])


def fusion_study(model: ScoreModel, table, identities, cohort_names, aliases, calibration):
    """Fusion offsets, their reference spread and the pass multiplicity, measured on lfw-dev.

    Tracks: people outside the cohort with FUSION_TRACK_PHOTOS usable photos; views 1..k of a
    track fused (as the unit fuses a track's embeddings) and compared with the first photo of
    every other person outside the cohort who has two or more (the list). The offset for k views
    is how far the strangers' t quantiles at FUSION_LEVELS moved from one view (averaged, made
    non-decreasing in k); the reference spread is the tracks' mean view spread; the pass
    multiplicity is how many times more often *any* of a track's k fused probes (each lowered by
    its offset) reaches a threshold than its first view alone, at the thresholds of FMR 1e-3 and
    1e-4 (geometric mean), rounded up to a tenth."""
    from edge.recognition.fusion import fuse_embeddings, view_spread
    ok = table.ok
    cohort = set(cohort_names)
    canon = lambda n: aliases.get(n, n)  # noqa: E731
    usable = {n: [table.index[p] for p in ps if ok[table.index[p]]] for n, ps in identities.items() if n not in cohort}
    listed = sorted(n for n, r in usable.items() if len(r) >= 2)
    tracks = sorted(n for n, r in usable.items() if len(r) >= FUSION_TRACK_PHOTOS)
    templates = np.stack([table.embeddings[usable[n][0]] for n in listed]).astype(np.float32)
    template_stats = model.cohort_stats(templates)
    who = np.array([canon(n) for n in listed])
    k_max = FUSION_TRACK_PHOTOS - 1
    per_k = {k: [] for k in range(1, k_max + 1)}
    spreads, probes = [], []
    for n in tracks:
        views = table.embeddings[usable[n][1:FUSION_TRACK_PHOTOS]].astype(np.float32)
        fused = np.stack([fuse_embeddings(views[:k]) for k in range(1, k_max + 1)]).astype(np.float32)
        t = model.normalise(fused @ templates.T, model.cohort_stats(fused), template_stats)[:, who != canon(n)]
        for k in range(1, k_max + 1):
            per_k[k].append(t[k - 1])
        spreads.append([view_spread(views[:k]) for k in range(1, k_max + 1)])
        probes.append(t)
    pooled = {k: np.concatenate(v) for k, v in per_k.items()}
    base = {f: _quantile(pooled[1], f) for f in FUSION_LEVELS}
    offsets = [float(np.mean([_quantile(pooled[k], f) - base[f] for f in FUSION_LEVELS])) for k in range(2, k_max + 1)]
    offsets = [round(float(v), 4) for v in np.maximum.accumulate(np.maximum(offsets, 0.0))]
    reference = float(np.mean([sp[-1] for sp in spreads]))
    cal = replace(calibration, fusion_offsets=tuple(offsets), reference_spread=round(reference, 5))
    ratios = {}
    for fmr in (1e-3, 1e-4):
        thr = cal.t_for_score(-math.log10(fmr) / 10.0)
        first = any_ = 0
        for t, sp in zip(probes, spreads):
            adj = t - np.array([[cal.fusion_offset(k, sp[k - 1])] for k in range(1, k_max + 1)])
            first += int(np.count_nonzero(t[0] >= thr))
            any_ += int(np.count_nonzero(adj.max(axis=0) >= thr))
        ratios[f"{fmr:g}"] = (any_, first)
    mult = math.exp(np.mean([math.log(max(a, 1) / max(f, 1)) for a, f in ratios.values()]))
    mult = max(1.0, math.ceil(mult * 10.0) / 10.0)
    details = {"tracks": len(tracks), "views": k_max, "list": len(listed),
               "comparisons_per_view": int(pooled[1].size),
               "quantile_shift_by_views": {k: {f"{f:g}": round(_quantile(pooled[k], f) - base[f], 3)
                                               for f in FUSION_LEVELS} for k in range(2, k_max + 1)},
               "any_probe_vs_first_view (pairs over threshold)": ratios}
    return replace(cal, pass_multiplicity=mult), details


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

    # the shipped cohort (half the single-image identities) and every pair scored by a cohort
    # holding neither face's identity -> calibration
    aliases = ev_lfw.load_aliases(args.models_dir)
    model, vals, rows, cohort_names, how = all_pairs_impostors(table, identities, args.top_fraction, aliases)
    source = f"lfw-dev ({len(identities)} identities): {how}; {vals.size:,} non-mated comparisons"
    cal = fit_calibration(vals, source)
    del vals
    cal, fusion = fusion_study(model, table, identities, cohort_names, aliases, cal)
    cohort = np.ascontiguousarray(model.cohort, dtype=np.float32)

    # validation: the cross-fitted open-set check of edge-lfr eval (folds' cohorts from the other
    # folds' single-image identities), thresholds from this calibration
    models, why = ev.fit_crossfit_models(table, identities, fold_of, args.top_fraction)
    if models is None:
        raise SystemExit(why)
    scorer = ev.EvalScorer("improved", models)
    names = ev.sample_watchlist(identities, "all", 0)
    ident = ev.identification(table, identities, names, args.lfw, scorer=scorer, fold_of=fold_of,
                              keep_scores=True)
    check = {"cross_fitted": ev.policy_check(ident), "this_calibration": ev.policy_check(ident, fixed_calibration=cal)}
    n_list = ident["n_watchlist"]
    examples = {f"{t:g} @ N={n}": round(ThresholdPolicy(cal, t, n).threshold, 4)
                for t in (0.01, 0.001) for n in (100, 1000, 10000, 100000)}
    section = {
        "method": "cohort score normalisation (edge.matching.normalise): t = mean of three z-scores of the cosine "
                  "(listed subject's top-k cohort statistics, passer-by's, cohort-wide); calibrated score = "
                  "-log10 FMR(t) / 10 (edge.matching.calibration)",
        "fitted_on": f"{args.lfw.name}: cohort = {len(rows)} usable faces of the {len(cohort_names)} single-image "
                     f"identities whose name's SHA-256 starts with 0-7 (named in {COHORT_IDENTITIES_FILE}); "
                     f"calibration = {source}",
        "cohort_identities_file": COHORT_IDENTITIES_FILE,
        "pipeline": provenance,
        "refit_when": "the detector, alignment, quality gate or embedder defaults change (the cohort and the "
                      "calibration are embeddings of that pipeline): python models/fit_calibration.py",
        "script": "models/fit_calibration.py",
        "top_fraction": args.top_fraction,
        "projection": "none (measured: within-class whitening / LDA / nuisance projection fitted on lfw-dev "
                      "lowered the cross-fitted figures; models/fit_projection.py)",
        "validation": {"watchlist_size": n_list, "policy_check_cross_fitted": check,
                       "thresholds_for": examples},
        "fusion_study": fusion,
    }
    print(f"calibration: {len(cal.t)} points down to FMR {10 ** cal.log10_fmr[-1]:.2g}, tail slope "
          f"{cal.tail_slope:.3f} decades per unit, supported down to FMR {cal.min_supported_fmr:.2g}; "
          f"tail check (log10 FMR, predicted, observed): {list(cal.tail_check)}")
    print("policy check (cross-fitted):", json.dumps(check))
    print("thresholds:", json.dumps(examples))
    print(f"fusion offsets {list(cal.fusion_offsets)} (reference spread {cal.reference_spread}), pass multiplicity "
          f"{cal.pass_multiplicity}: {json.dumps(fusion)}")
    if args.dry_run:
        return 0
    out = args.models_dir / COHORT_FILE
    np.save(out, cohort, allow_pickle=False)
    (args.models_dir / COHORT_IDENTITIES_FILE).write_text("".join(identity_key(n) + "\n" for n in sorted(cohort_names)),
                                                          encoding="ascii")
    sha = cohort_sha256(out)
    final = ScoreModel(model.cohort, model.top_k, model.mu0, model.sd0, sha, cal)
    entry = final.manifest_entry(COHORT_FILE, **section)
    write_section(args.models_dir, entry)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(rows)} faces, top_k {model.top_k}, "
          f"mu0 {model.mu0:.4f}, sd0 {model.sd0:.5f}) and the {MANIFEST_SECTION!r} section of "
          f"{args.models_dir / 'manifest.json'} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
