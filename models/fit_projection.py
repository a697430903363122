"""Does a learned linear projection of the 128-d descriptor pay? (dev-only measurement)

    python models/fit_projection.py --lfw ../shared/faces/lfw-dev \
        [--embeddings-cache /tmp/lfw-dev-emb.npz] [--out projection-study.json]

Candidates, each a (128 x d) map applied to the L2-normalised descriptor and followed by
re-normalisation, fitted on lfw-dev identities only, identity-disjoint cross-fitted exactly
like the improved pipeline of ``edge-lfr eval lfw`` (fold f's probes, pairs and templates are
projected with a map fitted on the other folds' identities with >= 2 images):

* ``wccn a``: within-class covariance normalisation, ``Sw^-1/2`` with ``Sw`` shrunk towards
  a multiple of the identity by ``a`` (a = 1 is the raw cosine);
* ``lda d``: the same whitening followed by the d leading discriminant directions;
* ``nap r``: nuisance attribute projection, removing the r leading within-class directions.

Each is scored with the raw cosine and with the cohort normalisation of :mod:`edge.matching.normalise`
(its cohort projected by the same map). The measured result (docs/accuracy.md) is that every
candidate lowers the open-set figures of its scoring, so no projection ships; the script is
kept so that the decision can be re-checked, e.g. after a model change.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.tools.evaluation import command as ev  # noqa: E402
from edge.matching.normalise import fit_score_model  # noqa: E402

sys.path.insert(0, str(ROOT / "models"))
from fit_calibration import load_embeddings  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def within_class_scatter(table: ev.EmbeddingTable, identities, fold_of, exclude: int) -> np.ndarray:
    """Pooled within-identity covariance of the usable embeddings of identities with >= 2 of
    them, outside fold ``exclude``."""
    ok = table.ok
    d = table.embeddings.shape[1]
    sw, n = np.zeros((d, d)), 0
    for name, ps in identities.items():
        if fold_of[name] == exclude:
            continue
        rows = [table.index[p] for p in ps if ok[table.index[p]]]
        if len(rows) < 2:
            continue
        z = table.embeddings[rows].astype(np.float64)
        z -= z.mean(axis=0)
        sw += z.T @ z
        n += len(rows) - 1
    return sw / max(n, 1)


def fit_map(kind: str, value: float, sw: np.ndarray, between: np.ndarray | None = None) -> np.ndarray:
    d = sw.shape[0]
    if kind == "nap":
        w, v = np.linalg.eigh(sw)
        u = v[:, np.argsort(w)[::-1][:int(value)]]
        return np.eye(d) - u @ u.T
    a = value if kind == "wccn" else 0.3
    s = (1 - a) * sw + a * np.trace(sw) / d * np.eye(d)
    w, v = np.linalg.eigh(s)
    p = v @ np.diag(w ** -0.5) @ v.T
    if kind == "lda":
        b = p.T @ between @ p
        e, u = np.linalg.eigh(b)
        p = p @ u[:, np.argsort(e)[::-1][:int(value)]]
    return p


class ProjectedScorer(ev.EvalScorer):
    """Projects probes and templates of fold f with that fold's map, then scores as the base or
    the normalised pipeline (with a cohort projected by the same map)."""

    def __init__(self, name: str, maps: dict[int, np.ndarray], models: dict[int, object] | None):
        super().__init__(name, models)
        self.maps = maps

    def matrix(self, probes, folds, gallery, templates="fuse"):
        out = np.full((len(probes), len(gallery)), -np.inf)
        for f in np.unique(folds):
            sel = folds == f
            p = self.maps[int(f)]
            sub = ev.EvalScorer(self.name, None if self.models is None else {int(f): self.models[int(f)]})
            out[sel] = sub.matrix(_unit(probes[sel] @ p), folds[sel], [_unit(g @ p) for g in gallery], templates)
        return out

    def pair_scores(self, table, pairs, fold_of):
        out = np.full(len(pairs), ev.MISSING_SCORE)
        for i, pr in enumerate(pairs):
            a, b = table.embeddings[table.index[pr.a]], table.embeddings[table.index[pr.b]]
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                continue
            f = fold_of[pr.a.parent.name]
            pa, pb = _unit(a @ self.maps[f])[None], _unit(b @ self.maps[f])[None]
            out[i] = (float(pa[0] @ pb[0]) if self.models is None
                      else float(self.models[f].pair_scores(pa.astype(np.float32), pb.astype(np.float32))[0]))
        return out


def measure(scorer, table, identities, pairs, fold_of, names) -> dict:
    r = ev.identification(table, identities, names, Path("."), scorer=scorer, fold_of=fold_of)
    t3 = ev.track_identification(table, identities, names, 3, scorer, fold_of)
    s = scorer.pair_scores(table, pairs.pairs, fold_of)
    cv = ev.cross_validate(s, [p.same for p in pairs.pairs], [p.fold for p in pairs.pairs])
    return {"K1_fnir": r["fnir_at_fpir"], "K1_rank1": r["rank1"], "K3_fnir": t3["fnir_at_fpir"],
            "pairs": cv["accuracy_mean"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lfw", type=Path, default=ROOT.parent / "shared" / "faces" / "lfw-dev")
    ap.add_argument("--embeddings-cache", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    table, identities, pairs, _provenance = load_embeddings(args.lfw, args.lfw / "pairs.txt", args.embeddings_cache)
    fold_of = ev.identity_folds(identities, pairs)
    folds = sorted(set(fold_of.values()))
    names = ev.sample_watchlist(identities, "all", 0)
    sw = {f: within_class_scatter(table, identities, fold_of, f) for f in folds}
    st = {}
    for f in folds:
        rows = [table.index[p] for n, ps in identities.items() if fold_of[n] != f for p in ps if table.ok[table.index[p]]]
        st[f] = np.cov(table.embeddings[rows].astype(np.float64).T)
    candidates = [("none", 0)] + [("wccn", a) for a in (0.1, 0.3, 0.6)] + [("lda", 100), ("lda", 64)] + \
                 [("nap", r) for r in (1, 3, 6)]
    results = {}
    for kind, value in candidates:
        label = "none (raw descriptor)" if kind == "none" else f"{kind} {value:g}"
        maps = {f: (np.eye(table.embeddings.shape[1]) if kind == "none" else fit_map(kind, value, sw[f], st[f]))
                for f in folds}
        models = {}
        for f in folds:
            rows = ev.cohort_rows(table, identities, f, fold_of)
            models[f] = fit_score_model(_unit(table.embeddings[rows] @ maps[f]))
        results[label] = {"cosine": measure(ProjectedScorer(label, maps, None), table, identities, pairs, fold_of, names),
                          "normalised": measure(ProjectedScorer(label, maps, models), table, identities, pairs,
                                                fold_of, names)}
        for how, r in results[label].items():
            print(f"{label:22s} {how:10s} K=1 FNIR@0.01 {r['K1_fnir']['0.01']:.4f} @0.001 {r['K1_fnir']['0.001']:.4f} "
                  f"rank-1 {r['K1_rank1']:.4f}  K=3 FNIR@0.01 {r['K3_fnir']['0.01']:.4f}  pairs {100 * r['pairs']:.2f}%",
                  flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
