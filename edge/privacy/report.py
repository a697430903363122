"""The post-deployment report: the figures police forces publish after each deployment,
computed from the unit's audit log rather than typed by someone.

``edge-lfr report --config unit.yaml --out DIR`` writes ``DIR/report.json`` and
``DIR/report.html`` (self-contained: the plot is an embedded PNG, no external resource) for
one deployment window:

* the time window, the location label, the operation and the unit;
* the watchlist in force (bundle id, serial) and its size by category;
* faces processed (a count only: no image, crop or embedding of these people exists) and faces
  the quality gate refused, by reason;
* alerts, and how officers adjudicated them: confirmed, rejected (not a match), person not
  located, not adjudicated; the false alert rate (rejected alerts per face processed);
* the alert threshold per category and the FPIR it was calibrated for (and on what);
* the model (sha256 of the embedding model) and the software version;
* the retention in force, and whether the audit log the figures come from verifies (every
  hash, link and signature: :func:`edge.privacy.audit.verify`), with the seq and hash of the last
  entry used, so the report can be traced to the signed log.

The window is, by default, the latest deployment: from the latest ``bundle_loaded`` to the
deletion of that watchlist (or the last entry); ``--bundle ID`` picks another, ``--from/--to``
set it explicitly. Adjudications are counted for the window's alerts whenever they arrived.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from edge import __version__
from edge.errors import InputError
from edge.privacy.audit import Verification
from edge.types import CATEGORIES
from edge.utc import format_utc_ms, parse_utc_ms

__all__ = ["build_report", "render_html", "plot_png", "write_report", "render_png", "Window", "find_chromium"]

OUTCOMES = ("confirmed", "rejected", "not_located")


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    bundle_id: str | None
    how: str


def _t(e: Mapping[str, Any]) -> float:
    return parse_utc_ms(e["t"])


def choose_window(entries: list[dict], *, start: float | None = None, end: float | None = None,
                  bundle_id: str | None = None) -> Window:
    """The report's window (see the module docstring)."""
    if not entries:
        raise InputError("the audit log has no entries: nothing to report")
    loads = [e for e in entries if e["type"] == "bundle_loaded"]
    if bundle_id is None and start is None and end is None and loads:
        bundle_id = loads[-1]["data"].get("bundle_id")
    how = "explicit window" if start is not None or end is not None else "whole log"
    w0, w1 = _t(entries[0]), _t(entries[-1])
    if bundle_id is not None:
        mine = [e for e in loads if e["data"].get("bundle_id") == bundle_id]
        if not mine:
            raise InputError(f"bundle {bundle_id} was never loaded according to the audit log")
        w0 = _t(mine[0])
        gone = [e for e in entries if e["type"] == "watchlist_deleted" and e["data"].get("bundle_id") == bundle_id
                and _t(e) >= w0]
        other = [e for e in loads if _t(e) > w0 and e["data"].get("bundle_id") != bundle_id]
        ends = [_t(gone[0])] if gone else []
        if other:
            ends.append(_t(other[0]))
        w1 = min(ends) if ends else _t(entries[-1])
        runs = [e for e in entries if e["type"] in ("service_start", "service_stop") and w0 <= _t(e) <= w1]
        if runs and runs[-1]["type"] == "service_stop":
            w1 = _t(runs[-1])            # the deployment ended when the service last stopped
        how = "deployment of bundle " + bundle_id
    if start is not None:
        w0 = start
    if end is not None:
        w1 = end
    if w1 < w0:
        raise InputError("the report window ends before it starts")
    return Window(w0, w1, bundle_id, how)


def _sum_into(acc: Counter, d: Any) -> None:
    if isinstance(d, Mapping):
        for k, v in d.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                acc[str(k)] += v


def _bin_seconds(span: float) -> int:
    for b in (60, 300, 900, 1800, 3600, 7200, 21600, 43200, 86400):
        if span / b <= 60:
            return b
    return 86400 * max(1, math.ceil(span / 86400 / 60))


def _unsigned(audit: Mapping[str, Any]) -> str:
    tail = audit.get("unsigned_tail") or []
    return (f"; NOT signed: {len(tail)} entr{'y' if len(tail) == 1 else 'ies'} after it (seq {tail[0]}..{tail[-1]})"
            if tail else "; every entry used is signed")


def build_report(entries: Iterable[dict], *, start: float | None = None, end: float | None = None,
                 bundle_id: str | None = None, location: str | None = None,
                 verification: Verification | None = None, now: float | None = None) -> dict:
    """The report as a JSON-ready dict, from audit entries (in log order)."""
    entries = list(entries)
    w = choose_window(entries, start=start, end=end, bundle_id=bundle_id)
    inside = [e for e in entries if w.start <= _t(e) <= w.end]
    before = [e for e in entries if _t(e) < w.start]

    # the watchlist(s) in force: loaded inside the window, or the last one loaded before it
    bundles: dict[str, dict] = {}
    prior = [e for e in before if e["type"] in ("bundle_loaded", "watchlist_deleted")]
    if prior and prior[-1]["type"] == "bundle_loaded":
        bundles[prior[-1]["data"]["bundle_id"]] = prior[-1]["data"]
    for e in inside:
        if e["type"] == "bundle_loaded":
            bundles.setdefault(e["data"]["bundle_id"], e["data"])
    if w.bundle_id and w.bundle_id in bundles:
        bundles = {w.bundle_id: bundles[w.bundle_id]}

    starts = [e for e in before if e["type"] == "service_start"][-1:] + \
        [e for e in inside if e["type"] == "service_start"]
    config = starts[-1]["data"] if starts else {}

    faces = Counter()
    gated = Counter()
    series_counts: list[tuple[float, float]] = []
    for e in inside:
        if e["type"] == "counts":
            d = e["data"]
            _sum_into(faces, {k: d.get(k, 0) for k in ("frames", "faces", "dropped_frames")})
            _sum_into(gated, d.get("gated", {}))
            series_counts.append((_t(e), float(d.get("faces", 0) or 0)))

    alerts = [e for e in inside if e["type"] == "alert"]
    alert_ids = {e["data"]["event_id"] for e in alerts}
    outcome_of: dict[str, str] = {}
    for e in entries:                 # decisions may come after the window ends
        if e["type"] == "adjudication" and e["data"].get("event_id") in alert_ids and not e["data"].get("duplicate"):
            outcome_of.setdefault(e["data"]["event_id"], e["data"].get("outcome"))
    outcomes = Counter(outcome_of.values())
    by_category = {c: {"alerts": 0, **{o: 0 for o in OUTCOMES}} for c in CATEGORIES}
    for e in alerts:
        c = by_category.setdefault(e["data"].get("category", "?"), {"alerts": 0, **{o: 0 for o in OUTCOMES}})
        c["alerts"] += 1
        o = outcome_of.get(e["data"]["event_id"])
        if o in OUTCOMES:
            c[o] += 1

    types = Counter(e["type"] for e in inside)
    faces_processed = int(faces["faces"])
    rejected = outcomes.get("rejected", 0)
    last = inside[-1] if inside else None
    report = {
        "report_version": 1,
        "generated_at": format_utc_ms(now if now is not None else datetime.now(timezone.utc).timestamp()),
        "generated_by": f"edge-lfr {__version__}",
        "window": {"start": format_utc_ms(w.start), "end": format_utc_ms(w.end), "hours": round((w.end - w.start) / 3600, 2),
                   "selected_by": w.how},
        "unit_id": config.get("unit_id") or (last["data"].get("unit_id") if last else None),
        "location": location if location is not None else (config.get("location") or ""),
        "operation_ids": sorted({b.get("operation_id") for b in bundles.values() if b.get("operation_id")}),
        "watchlist": [{"bundle_id": b.get("bundle_id"), "serial": b.get("serial"), "operation_id": b.get("operation_id"),
                       "subjects": b.get("subjects"), "by_category": b.get("by_category", {}),
                       "valid_from": b.get("valid_from"), "valid_until": b.get("valid_until"),
                       "authorising_officer": b.get("authorising_officer")} for b in bundles.values()],
        "frames_processed": int(faces["frames"]),
        "faces_processed": faces_processed,
        "faces_gated": {"total": int(sum(gated.values())), "by_reason": dict(sorted(gated.items()))},
        "alerts": len(alerts),
        "adjudications": {"confirmed": outcomes.get("confirmed", 0), "rejected": rejected,
                          "not_located": outcomes.get("not_located", 0),
                          "not_adjudicated": len(alerts) - sum(outcomes[o] for o in OUTCOMES)},
        "by_category": by_category,
        "false_alert_rate": (rejected / faces_processed) if faces_processed else None,
        "alert_rate": (len(alerts) / faces_processed) if faces_processed else None,
        **_threshold_figures(config, bundles),
        "model_sha256": config.get("model_sha256"),
        "software_version": config.get("software_version"),
        "config_sha256": sorted({s["data"].get("config_sha256") for s in starts if s["data"].get("config_sha256")}),
        "retention": {"match_records_days": config.get("retention_days"),
                      "rejected_hours": config.get("rejected_retention_hours")},
        "service": {"starts": types["service_start"], "stops": types["service_stop"], "errors": types["error"],
                    "bundles_refused": types["bundle_refused"], "purges": types["purge"]},
        "audit": {"entries_in_window": len(inside),
                  "last_seq": last["seq"] if last else None, "last_hash": last["hash"] if last else None,
                  "verified": verification.ok if verification is not None else None,
                  "signatures_checked": verification.signatures_checked if verification is not None else None,
                  "summary": verification.summary() if verification is not None else "not verified",
                  "problems": [str(p) for p in verification.problems[:20]] if verification is not None else [],
                  # which entries the unit's signatures cover: up to the signed head; anything after is not
                  "signed_through_seq": verification.head_seq if verification is not None else None,
                  "unsigned_tail": list(verification.unsigned_tail) if verification is not None else []},
        "series": _series(w, series_counts, alerts, outcome_of),
    }
    return report


def _threshold_figures(config: Mapping[str, Any], bundles: Mapping[str, dict]) -> dict:
    """What was actually in force: with cohort-normalised calibrated scores (the default) the
    loaded list's threshold policy (each category's threshold from its ``match.target_fpir_<category>``
    and the list's size); with normalisation on but no list loaded, the targets alone (a threshold
    exists only for a list); with raw cosines the ``threshold_<category>`` cosines and
    ``privacy.calibrated_fpir``."""
    from edge.types import CATEGORIES as cats
    policies = [b["threshold_policy"] for b in bundles.values() if isinstance(b.get("threshold_policy"), Mapping)]
    if policies:
        p = policies[-1]
        thresholds = p.get("thresholds") if isinstance(p.get("thresholds"), Mapping) else \
            {c: p.get("threshold") for c in cats}
        targets = p.get("target_fpirs") if isinstance(p.get("target_fpirs"), Mapping) else \
            {c: p.get("target_fpir") for c in cats}
        supported = p.get("supported_by_category")
        one = len({thresholds.get(c) for c in cats}) == 1
        return {"threshold_kind": "calibrated score (cohort-normalised), "
                                  + ("one threshold for the list" if one else "one threshold per category"),
                "thresholds": {c: thresholds.get(c) for c in cats}, "calibrated_fpir": p.get("target_fpir"),
                "target_fpir_by_category": {c: targets.get(c) for c in cats},
                "calibration_reference": p.get("calibration") or config.get("calibration_reference"),
                "threshold_supported": (all(supported.values()) if isinstance(supported, Mapping)
                                        else p.get("supported"))}
    if config.get("score_normalisation"):
        by_cat = config.get("target_fpir_by_category")
        target = config.get("target_fpir")
        return {"threshold_kind": "calibrated score (cohort-normalised); no watchlist was loaded, so no threshold "
                                  "was set (it follows the target false-alarm rate and the size of a loaded list)",
                "thresholds": {}, "calibrated_fpir": target,
                "target_fpir_by_category": dict(by_cat) if isinstance(by_cat, Mapping) else {c: target for c in cats},
                "calibration_reference": "the calibration shipped with the embedding model",
                "threshold_supported": None}
    return {"threshold_kind": "cosine similarity, per category", "thresholds": config.get("thresholds", {}),
            "calibrated_fpir": config.get("calibrated_fpir"), "target_fpir_by_category": None,
            "calibration_reference": config.get("calibration_reference"), "threshold_supported": None}


def _series(w: Window, counts: list[tuple[float, float]], alerts: list[dict], outcome_of: Mapping[str, str]) -> dict:
    span = max(w.end - w.start, 1.0)
    b = _bin_seconds(span)
    n = max(1, math.ceil(span / b))
    faces = [0.0] * n
    by_outcome = {k: [0] * n for k in (*OUTCOMES, "not_adjudicated")}

    def idx(t: float) -> int:
        return min(n - 1, max(0, int((t - w.start) // b)))
    for t, v in counts:
        faces[idx(t)] += v
    for e in alerts:
        o = outcome_of.get(e["data"]["event_id"], "not_adjudicated")
        by_outcome[o if o in by_outcome else "not_adjudicated"][idx(_t(e))] += 1
    return {"bin_seconds": b, "bin_starts": [format_utc_ms(w.start + i * b) for i in range(n)],
            "faces": [int(v) for v in faces], "alerts": by_outcome}


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def plot_png(report: Mapping[str, Any], width_px: int = 1000, dpi: int = 100) -> bytes:
    """The report's plot: faces processed and alerts (by outcome) over the window."""
    import matplotlib  # optional (the demo/test extras): only a report with a plot needs it
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    s = report["series"]
    starts = [datetime.fromisoformat(x.replace("Z", "+00:00")) for x in s["bin_starts"]]
    width = s["bin_seconds"] / 86400.0
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(width_px / dpi, 5.2), dpi=dpi, sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    ax1.bar(starts, s["faces"], width=width, align="edge", color="#4a7fb5", edgecolor="none")
    ax1.set_ylabel("faces processed")
    ax1.set_title(f"Faces processed and alerts per {_fmt_bin(s['bin_seconds'])} (UTC)", fontsize=11)
    colours = {"confirmed": "#2e8b57", "rejected": "#c0392b", "not_located": "#e6a23c", "not_adjudicated": "#9e9e9e"}
    labels = {"confirmed": "confirmed", "rejected": "rejected (not a match)", "not_located": "not located",
              "not_adjudicated": "not adjudicated"}
    bottom = [0] * len(starts)
    for k in ("confirmed", "rejected", "not_located", "not_adjudicated"):
        vals = s["alerts"][k]
        ax2.bar(starts, vals, width=width, bottom=bottom, align="edge", color=colours[k], label=labels[k],
                edgecolor="none")
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax2.set_ylabel("alerts")
    top = max(bottom) if bottom else 0
    ax2.set_ylim(0, max(1, top) * 1.45 + 0.2)       # room for the legend above the bars
    ax2.yaxis.get_major_locator().set_params(integer=True)
    ax2.legend(loc="upper left", fontsize=8, ncol=4, frameon=False)
    ax2.xaxis.set_major_formatter(mdates.DateFormatter("%d %b %H:%M"))
    for ax in (ax1, ax2):
        ax.grid(axis="y", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _fmt_bin(seconds: int) -> str:
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} day(s)"


def _in_order(d: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Items in the watchlist's category order (wanted, missing, vulnerable), then any other."""
    return [(k, d[k]) for k in CATEGORIES if k in d] + [(k, v) for k, v in d.items() if k not in CATEGORIES]


def _pct(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _fmt_time(iso: str | None) -> str:
    if not iso:
        return "n/a"
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%d %b %Y %H:%M UTC")


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2430;margin:0;
background:#f4f6f9}
main{max-width:1040px;margin:0 auto;padding:24px 28px 40px;background:#fff}
h1{font-size:24px;margin:0 0 4px} h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #dde3ea;
padding-bottom:4px} .sub{color:#566172;margin:0 0 14px}
.banner{padding:10px 14px;border-radius:6px;margin:14px 0;font-weight:600}
.ok{background:#e5f4ea;color:#1e6b3a;border:1px solid #b5dcc2} .bad{background:#fbe7e5;color:#8e2319;
border:1px solid #efbab4} .warn{background:#fff5e0;color:#7a5200;border:1px solid #f0d79a}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin:14px 0}
.card{border:1px solid #dde3ea;border-radius:8px;padding:10px 12px}
.card .n{font-size:26px;font-weight:700} .card .l{color:#566172;font-size:13px}
table{border-collapse:collapse;width:100%;margin:6px 0} th,td{text-align:left;padding:5px 8px;
border-bottom:1px solid #edf0f4;vertical-align:top} th{width:34%;color:#3b4656;font-weight:600}
td.num{font-variant-numeric:tabular-nums} code{font-size:12px;word-break:break-all}
img.plot{width:100%;border:1px solid #dde3ea;border-radius:6px} .note{color:#566172;font-size:13px}
"""


def render_html(report: Mapping[str, Any], png: bytes | None = None) -> str:
    """A readable, self-contained HTML page of the report."""
    e = html.escape
    r = report
    adj = r["adjudications"]
    audit = r["audit"]
    if audit["verified"] is True and audit["signatures_checked"]:
        summary = audit["summary"][:1].upper() + audit["summary"][1:]
        banner = (f'<div class="banner ok">{e(summary)}; every hash, link and signature checked with the unit\'s '
                  'key</div>')
    elif audit["verified"] is True:
        banner = f'<div class="banner warn">Audit log hashes verified, signatures not checked: {e(audit["summary"])}</div>'
    elif audit["verified"] is False:
        banner = (f'<div class="banner bad">The audit log does NOT verify: these figures cannot be relied on. '
                  f'{e(audit["summary"])}</div>')
    else:
        banner = '<div class="banner warn">The audit log was not verified for this report.</div>'
    wl_rows = []
    for b in r["watchlist"]:
        cats = ", ".join(f"{k} {v}" for k, v in _in_order(b.get("by_category") or {}))
        wl_rows.append(f"<tr><th>bundle <code>{e(str(b['bundle_id']))}</code> (serial {e(str(b['serial']))})</th>"
                       f"<td>{e(str(b['subjects']))} people: {e(cats)}<br><span class='note'>valid "
                       f"{e(_fmt_time(b.get('valid_from')))} to {e(_fmt_time(b.get('valid_until')))}; authorised by "
                       f"{e(str(b.get('authorising_officer') or 'n/a'))}</span></td></tr>")
    if not wl_rows:
        wl_rows.append("<tr><th>watchlist</th><td>none loaded in this window (nothing could match)</td></tr>")
    gated = r["faces_gated"]
    gated_txt = ", ".join(f"{e(k)} {v}" for k, v in gated["by_reason"].items()) or "none"
    thr = r["thresholds"] or {}
    thr_txt = ", ".join(f"{e(k)} {v:.3f}" for k, v in _in_order(thr) if isinstance(v, (int, float))) or "n/a"
    fpir = r["calibrated_fpir"]
    by_cat = r.get("target_fpir_by_category") or {}
    if by_cat and len({v for v in by_cat.values()}) > 1:
        fpir_txt = "; ".join(f"{e(k)}: FPIR {_pct(v, 2) if v is not None else 'n/a'}" for k, v in _in_order(by_cat))
        fpir_txt += " per passer-by"
    else:
        fpir_txt = f"FPIR {_pct(fpir, 2) if fpir is not None else 'n/a'} per passer-by"
    cat_rows = "".join(
        f"<tr><th>{e(c)}</th><td class='num'>{v['alerts']} alerts: {v['confirmed']} confirmed, {v['rejected']} "
        f"rejected, {v['not_located']} not located</td></tr>" for c, v in _in_order(r["by_category"]))
    plot = (f'<img class="plot" alt="faces processed and alerts over time" src="data:image/png;base64,'
            f'{base64.b64encode(png).decode("ascii")}">' if png else "<p class='note'>(no plot)</p>")
    loc = r["location"] or "not stated"
    ops = ", ".join(r["operation_ids"]) or "n/a"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>LFR deployment report: {e(str(r['unit_id']))}, {e(_fmt_time(r['window']['start']))}</title>
<style>{_CSS}</style></head><body><main>
<h1>Live facial recognition deployment report</h1>
<p class="sub">Unit <b>{e(str(r['unit_id']))}</b> &middot; {e(loc)} &middot; operation {e(ops)}<br>
{e(_fmt_time(r['window']['start']))} to {e(_fmt_time(r['window']['end']))} ({r['window']['hours']} h;
{e(r['window']['selected_by'])})</p>
{banner}
<div class="cards">
<div class="card"><div class="n">{r['faces_processed']:,}</div><div class="l">faces processed (count only)</div></div>
<div class="card"><div class="n">{r['alerts']}</div><div class="l">alerts</div></div>
<div class="card"><div class="n">{adj['confirmed']}</div><div class="l">confirmed by an officer</div></div>
<div class="card"><div class="n">{adj['rejected']}</div><div class="l">rejected (false alerts)</div></div>
</div>
<h2>Deployment</h2>
<table>
<tr><th>time window (UTC)</th><td>{e(r['window']['start'])} &ndash; {e(r['window']['end'])}</td></tr>
<tr><th>location</th><td>{e(loc)}</td></tr>
<tr><th>unit</th><td>{e(str(r['unit_id']))}</td></tr>
{''.join(wl_rows)}
</table>
<h2>Figures</h2>
<table>
<tr><th>faces processed</th><td class="num">{r['faces_processed']:,} (in {r['frames_processed']:,} frames)</td></tr>
<tr><th>faces gated by quality (not compared)</th><td class="num">{gated['total']:,}: {gated_txt}</td></tr>
<tr><th>alerts</th><td class="num">{r['alerts']} ({_pct(r['alert_rate'])} of faces processed)</td></tr>
<tr><th>officers' decisions</th><td class="num">{adj['confirmed']} confirmed, {adj['rejected']} rejected (not a
match), {adj['not_located']} person not located, {adj['not_adjudicated']} not adjudicated</td></tr>
<tr><th>false alert rate</th><td class="num">{_pct(r['false_alert_rate'])} (rejected alerts per face processed)</td></tr>
{cat_rows}
</table>
<h2>Over time</h2>
{plot}
<h2>System</h2>
<table>
<tr><th>alert threshold</th><td>{thr_txt}<br><span class="note">{e(str(r.get('threshold_kind') or ''))}</span></td></tr>
<tr><th>calibrated for</th><td>{fpir_txt}
({e(str(r['calibration_reference'] or 'n/a'))})</td></tr>
<tr><th>embedding model (sha256)</th><td><code>{e(str(r['model_sha256'] or 'n/a'))}</code></td></tr>
<tr><th>software</th><td>edge-lfr {e(str(r['software_version'] or 'n/a'))}</td></tr>
<tr><th>retention</th><td>match records {e(str(r['retention']['match_records_days']))} days; alerts rejected by an officer
{e(str(r['retention']['rejected_hours']))} hours; faces that did not match: never stored</td></tr>
<tr><th>service</th><td>{r['service']['starts']} start(s), {r['service']['stops']} stop(s), {r['service']['errors']}
error(s), {r['service']['bundles_refused']} watchlist bundle(s) refused, {r['service']['purges']} retention purge(s)</td></tr>
<tr><th>audit log</th><td>{audit['entries_in_window']} entries in the window; last seq {e(str(audit['last_seq']))},
hash <code>{e(str(audit['last_hash']))}</code>; signed by the unit through seq
{e(str(audit.get('signed_through_seq')))}{e(_unsigned(audit))}</td></tr>
</table>
<p class="note">Computed by {e(r['generated_by'])} at {e(_fmt_time(r['generated_at']))} from the unit's hash-chained,
signed audit log. "Faces processed" is a count: no image, crop or biometric template of a person who did not match
the watchlist was stored. Alerts carry the match only; an alert an officer rejected is deleted
{e(str(r['retention']['rejected_hours']))} hours after the decision.</p>
</main></body></html>
"""


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike, *, plot: bool = True) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` (with the plot) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_png(report) if plot else None
    jp, hp = out / "report.json", out / "report.html"
    jp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    hp.write_text(render_html(report, png), encoding="utf-8")
    return jp, hp


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def render_png(html_path: str | os.PathLike, png_path: str | os.PathLike, *, width: int = 1100, height: int = 1900,
               timeout: float = 90.0) -> Path:
    """Screenshot the HTML page with headless Chromium (Debian's ``chromium``; nothing is
    downloaded, no network: the page is self-contained)."""
    exe = find_chromium()
    if exe is None:
        raise InputError("chromium not found (apt-get install chromium)")
    png = Path(png_path).resolve()
    profile = png.parent / ".chromium-profile"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
           "--disable-quic", "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           f"--window-size={width},{height}", f"--screenshot={png}", Path(html_path).resolve().as_uri()]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if not png.exists():
        raise InputError("chromium wrote no screenshot")
    return png
