"""The figures people look at: DET curves (FNIR against FPIR) and the summary table of ``edge-lfr eval lfw``."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge.tools.evaluation import FPIR_TARGETS
from edge.tools.evaluation.protocol import fpir_key

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Output: plot and summary table
# ---------------------------------------------------------------------------------------------

def _curve_label(name: str, rep: dict[str, Any]) -> str:
    parts = [name]
    p = rep.get("pairs", {})
    if "accuracy_mean" in p:
        parts.append(f"pairs {100 * p['accuracy_mean']:.2f}%")
    r = rep.get("identification", {}).get("all", {})
    for k, v in r.get("fnir_at_fpir", {}).items():
        parts.append(f"FNIR {v:.3f} @ {k}")
    return "; ".join(parts)


def _det_axes(ax, curves: list[tuple[str, dict[str, Any], dict[str, Any]]], title: str) -> None:
    """One DET panel: curves = (label, det dict, figures dict with fnir_at_fpir) in order."""
    lo_x, lo_y = 1.0, 1.0
    styles = {}
    for label, det, fig, style in curves:
        x, y = np.asarray(det.get("fpir", []), float), np.asarray(det.get("fnir", []), float)
        keep = (x > 0) & (y > 0)
        if keep.any():
            lo_x, lo_y = min(lo_x, x[keep].min()), min(lo_y, y[keep].min())
        line, = ax.plot(x[keep], y[keep], drawstyle="steps-post", label=label, **style)
        for k, v in fig.get("fnir_at_fpir", {}).items():
            if v > 0:
                ax.plot([float(k)], [v], "o", ms=4, color=line.get_color())
        styles[label] = line
    for f in FPIR_TARGETS:
        ax.axvline(f, color="grey", ls=":", lw=0.8)
        ax.text(f, 0.98, f" FPIR {f:g}", rotation=90, va="top", ha="right", fontsize=7,
                color="grey", transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(max(1e-5, min(lo_x, min(FPIR_TARGETS)) / 2), 1.0)
    ax.set_ylim(max(1e-3, lo_y / 2), 1.0)
    ax.set_xlabel("FPIR (fraction of non-mated probes raising an alarm)")
    ax.set_ylabel("FNIR (fraction of mated probes missed)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower left")


def plot_det(path: Path, curves: list[tuple[str, dict[str, Any]]]) -> None:
    """DET curves (FNIR vs FPIR, log-log), watchlist N = all. Left: the open-set protocol, one
    curve per pipeline. Right (when any pipeline has the track protocol): tracks of K images,
    colour = K, solid = improved pipelines, dashed = base."""
    import matplotlib  # optional: only --plot needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracks = [(n, r) for n, r in curves if r.get("track")]
    fig, axes = plt.subplots(1, 2 if tracks else 1, figsize=(14 if tracks else 8, 6), dpi=110, squeeze=False)
    title = "open-set identification (DET), watchlist N = all"
    left = []
    for name, rep in curves:
        r = rep.get("identification", {}).get("all", {})
        if "n_watchlist" in r:
            title = (f"open-set protocol: N = {r['n_watchlist']}, {r['n_mated']} mated / "
                     f"{r['n_nonmated']} non-mated probes (K = 1)")
        left.append((_curve_label(name, rep), rep.get("det") or {}, r,
                     {"lw": 1.2 if "gate off" in name else 1.8, "ls": "--" if name.startswith("base") else "-"}))
    _det_axes(axes[0][0], left, title)
    if tracks:
        colours = {}
        palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
        right = []
        for name, rep in tracks:
            for k, r in rep["track"].items():
                if "det" not in r:
                    continue
                c = colours.setdefault(k, palette[len(colours) % len(palette)])
                lab = (f"{name}, K={k}: " + ", ".join(f"FNIR {v:.3f} @ {f}" for f, v in r["fnir_at_fpir"].items()))
                right.append((lab, r["det"], r, {"color": c, "lw": 1.6,
                                                 "ls": "--" if name.startswith("base") else "-"}))
        any_r = next(iter(tracks[0][1]["track"].values()))
        _det_axes(axes[0][1], right, f"track protocol: each probe fuses K images of one person; N = "
                                     f"{any_r.get('n_watchlist', '?')}, non-mated by leave-one-out")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def summary_table(columns: list[tuple[str, dict[str, Any]]]) -> str:
    """A short side-by-side text table of the headline figures."""
    rows: list[tuple[str, list[str]]] = []

    def row(label, fn):
        vals = []
        for _, rep in columns:
            try:
                vals.append(fn(rep))
            except (KeyError, TypeError, IndexError):
                vals.append("-")
        rows.append((label, vals))

    row("pairs accuracy (mean ± sd)",
        lambda r: f"{100 * r['pairs']['accuracy_mean']:.2f}% ± {100 * r['pairs']['accuracy_std']:.2f}")
    row("pairs threshold (mean)", lambda r: f"{r['pairs']['threshold']:.3f}")
    sizes = [s for s in ("100", "500", "all") if any(s in rep.get("identification", {}) for _, rep in columns)]
    for s in sizes:
        row(f"N={s}: watchlist / mated / non-mated",
            lambda r, s=s: "{n_watchlist} / {n_mated} / {n_nonmated}".format(**r["identification"][s]))
        row(f"N={s}: rank-1", lambda r, s=s: f"{100 * r['identification'][s]['rank1']:.2f}%")
        for f in FPIR_TARGETS:
            k = fpir_key(f)
            row(f"N={s}: FNIR @ FPIR {k}",
                lambda r, s=s, k=k: "{:.4f} (t={:.3f}, {} FA)".format(
                    r["identification"][s]["fnir_at_fpir"][k], r["identification"][s]["threshold_at_fpir"][k],
                    r["identification"][s]["false_alarms_at_fpir"][k]))
    ks = sorted({k for _, rep in columns for k in rep.get("track", {})}, key=int)
    for k in ks:
        row(f"track K={k}: mated / non-mated (ids)",
            lambda r, k=k: "{n_mated} / {n_nonmated} ({n_nonmated_identities})".format(**r["track"][k]))
        row(f"track K={k}: rank-1", lambda r, k=k: f"{100 * r['track'][k]['rank1']:.2f}%")
        for f in FPIR_TARGETS:
            fk = fpir_key(f)
            row(f"track K={k}: FNIR @ FPIR {fk}",
                lambda r, k=k, fk=fk: "{:.4f} ({} FA, {} ids)".format(
                    r["track"][k]["fnir_at_fpir"][fk], r["track"][k]["false_alarms_at_fpir"][fk],
                    r["track"][k]["false_alarm_identities_at_fpir"][fk]))
    enrol_keys = []
    for _, rep in columns:
        for key in rep.get("enrolment", {}):
            if key.startswith("M=") and key not in enrol_keys:
                enrol_keys.append(key)
    for key in enrol_keys:
        row(f"enrol {key}: FNIR @ 0.01 / 0.001",
            lambda r, key=key: "{:.4f} / {:.4f}".format(r["enrolment"][key]["fnir_at_fpir"]["0.01"],
                                                     r["enrolment"][key]["fnir_at_fpir"]["0.001"]))
    et_keys = []
    for _, rep in columns:
        for key in rep.get("enrolment_tracks", {}):
            if key not in et_keys:
                et_keys.append(key)
    for key in et_keys:
        row(f"enrol+track {key}: N / mated / non-mated",
            lambda r, key=key: "{n_watchlist} / {n_mated} / {n_nonmated}".format(**r["enrolment_tracks"][key]))
        row(f"enrol+track {key}: FNIR @ 0.01 / 0.001",
            lambda r, key=key: "{:.4f} / {:.4f} ({})".format(r["enrolment_tracks"][key]["fnir_at_fpir"]["0.01"],
                                                          r["enrolment_tracks"][key]["fnir_at_fpir"]["0.001"],
                                                          r["enrolment_tracks"][key]["templates"]))
    for f in FPIR_TARGETS:
        fk = fpir_key(f)
        row(f"policy: ask FPIR {fk} -> FPIR (FA) / FNIR",
            lambda r, fk=fk: "{:.4f} ({}) / {:.4f}".format(r["policy_check"][fk]["fpir"],
                                                         r["policy_check"][fk]["false_alarms"],
                                                         r["policy_check"][fk]["fnir"]))
    row("N=all: FA @ 0.01 on distinct subjects (max)",
        lambda r: "{distinct_subjects} ({max_per_subject})".format(
            **r["identification"]["all"]["false_alarm_subjects_at_fpir"]["0.01"]))
    row("no usable face", lambda r: f"{r['no_face']['count']} of {r['no_face']['of']}")
    reasons = sorted({k for _, rep in columns for k in rep.get("no_face", {}).get("reasons", {})})
    for reason in reasons:
        row(f"  {reason}", lambda r, reason=reason: str(r["no_face"]["reasons"].get(reason, 0)))
    order = ("decode", "detect", "landmarks", "align", "quality", "embed", "total")
    present = {k for _, rep in columns for k in rep.get("seconds_per_image", {}) if k != "n_images"}
    stages = [k for k in order if k in present] + sorted(present - set(order))
    for st in stages:
        row(f"ms/image {st}", lambda r, st=st: f"{1000 * r['seconds_per_image'][st]:.1f}")
    row("wall time", lambda r: f"{r['wall_seconds']:.0f} s")
    width = max(len(label) for label, _ in rows) + 2
    colw = [max(len(name), *(len(v[i]) for _, v in rows)) + 2 for i, (name, _) in enumerate(columns)]
    lines = [" " * width + "".join(name.rjust(w) for (name, _), w in zip(columns, colw))]
    for label, vals in rows:
        lines.append(label.ljust(width) + "".join(v.rjust(w) for v, w in zip(vals, colw)))
    return "\n".join(lines)
