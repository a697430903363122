"""``edge-lfr bench scenes``: recall of listed people on composed footage, at realistic list sizes.

What it composes
    From an LFW-layout folder (``--lfw DIR``: ``DIR/<Name>/<Name>_NNNN.jpg``): ``--scenes``
    scenes per frame rate (``--fps``, default 15 and 30), each with ``--listed`` listed and
    ``--unlisted`` unlisted walkers crossing the frame (``--size``, default 1920x1080) in 2-4 s,
    face widths spread evenly over 48-64 / 64-96 / 96-140 / 140-220 px, about five faces on
    screen at once, over ``../shared/faces/video/vtest.avi`` when present. A listed walker is
    pasted from a photo that is not an enrolment photo (so listed walkers need three photos).

Who is who (the identity split)
    The shipped background cohort names its people (``models/background_cohort_identities.txt``,
    hashed names); they are never walkers nor list entries, so no face is scored by a cohort that
    holds the same person. Of the rest, drawn with ``--seed``: listed walkers (identities with
    >= 3 photos, distinct per scene), unlisted walkers (distinct per scene), and distractors =
    everyone else. List sizes (``--lists``): the scene's listed walkers alone (12), those plus
    distractors up to 1,000, and ``all`` = plus every distractor (the largest list the split
    leaves). ``--photos 1 2``: every list entry enrolled from its first photo, or its first two
    where it has them (the unit fuses a subject's templates).

What it reports (per frame rate, list size and photo count)
    listed passes alerted exactly once (recall), false alerts per 1,000 unlisted passes (an alert
    on an unlisted walker, or for the wrong subject), duplicates, time to alert p50/p95 (from
    the walker's entry), and why each missed pass was missed: ``never_detected`` (the pipeline
    found the face in no frame), ``not_kept`` (found, but the tracker never got an embedding
    matched: track too short or broken up), ``below_threshold`` (matched, best score below the
    threshold), ``wrong_subject``, ``duplicate``. Per-frame detection, by face width and by speed
    (face widths moved per frame): the pipeline's detections vs the unit's detector run on every
    view of the same frame (the full scan), a face counted found when a detection's centre is
    within half a face width of the truth.

Every run is a ``pace: fast`` replay, i.e. in lockstep: the figures are reproducible.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import InputError

WIDTH_BUCKETS = ((48, 64), (64, 96), (96, 140), (140, 221))
SPEED_BUCKETS = ((0.0, 0.2), (0.2, 0.45), (0.45, 0.7), (0.7, math.inf))
MISS_REASONS = ("never_detected", "not_kept", "below_threshold", "wrong_subject", "duplicate")


def width_bucket(w: float) -> str:
    for lo, hi in WIDTH_BUCKETS:
        if lo <= w < hi:
            return f"{lo}-{min(hi, 220)}"
    return f"{WIDTH_BUCKETS[0][0]}-" if w < WIDTH_BUCKETS[0][0] else f"{WIDTH_BUCKETS[-1][0]}-220"


def speed_bucket(v: float) -> str:
    for lo, hi in SPEED_BUCKETS:
        if lo <= v < hi:
            return f"<{hi:g}" if lo == 0 else (f">={lo:g}" if hi == math.inf else f"{lo:g}-{hi:g}")
    return "?"


# --------------------------------------------------------------------------------------
# The identity split
# --------------------------------------------------------------------------------------


@dataclass
class Split:
    listed: list[list[str]]        # per scene: listed walkers (names)
    unlisted: list[list[str]]      # per scene: unlisted walkers
    distractors: list[str]
    cohort_excluded: int
    how: str


def split_identities(identities: dict[str, list[Path]], cohort_keys: set[str], *, scenes: int, listed: int,
                     unlisted: int, seed: int, aliases: dict[str, str] | None = None) -> Split:
    """``aliases`` (second name -> first: one person under two names, models/lfw_dev_errata.txt):
    the second name is never cast, so nobody walks past or is listed twice under two names."""
    from edge.matching.normalise import identity_key
    aliases = aliases or {}
    free = [n for n in sorted(identities) if identity_key(n) not in cohort_keys and n not in aliases]
    excluded = len(identities) - len(free)
    rng = np.random.default_rng(seed)
    order = [free[i] for i in rng.permutation(len(free))]
    three = [n for n in order if len(identities[n]) >= 3]
    need = scenes * listed
    if len(three) < need:
        raise InputError(f"{need} listed walkers need identities with >= 3 photos outside the cohort; "
                         f"the folder has {len(three)}")
    listed_names = [three[i * listed:(i + 1) * listed] for i in range(scenes)]
    taken = {n for s in listed_names for n in s}
    rest = [n for n in order if n not in taken]
    # unlisted walkers: prefer people with one photo (the others are more useful as list entries)
    singles = [n for n in rest if len(identities[n]) == 1] + [n for n in rest if len(identities[n]) > 1]
    if len(singles) < scenes * unlisted:
        raise InputError(f"not enough identities outside the cohort for {scenes * unlisted} unlisted walkers")
    unlisted_names = [singles[i * unlisted:(i + 1) * unlisted] for i in range(scenes)]
    taken |= {n for s in unlisted_names for n in s}
    distractors = [n for n in rest if n not in taken]
    held = sum(1 for n in identities if identity_key(n) in cohort_keys)
    how = (f"{len(identities)} identities: {held} held by the shipped background cohort (never walkers nor "
           f"list entries), {excluded - held} second names of one person (errata); of the other {len(free)}, "
           f"drawn with seed {seed}: {need} listed walkers (>= 3 photos, "
           f"{listed} per scene), {scenes * unlisted} unlisted walkers ({unlisted} per scene), "
           f"{len(distractors)} distractors (list entries who never walk past)")
    return Split(listed_names, unlisted_names, distractors, held, how)


# --------------------------------------------------------------------------------------
# Enrolment embeddings (cached) and lists
# --------------------------------------------------------------------------------------


class Embeddings:
    """Enrolment embeddings of photos through the enrolment path (:func:`edge.watchlist.enrol.assess_image`);
    None for a photo enrolment would refuse. Optionally cached in an .npz file."""

    def __init__(self, recognizer, config, cache: str | None = None):
        self.rec, self.cfg, self.cache = recognizer, config, cache
        self.table: dict[str, np.ndarray | None] = {}
        if cache and Path(cache).is_file():
            with np.load(cache, allow_pickle=False) as z:
                if str(z["model"]) == str(recognizer.embedder_sha256):
                    for p, e, ok in zip(z["paths"], z["emb"], z["ok"]):
                        self.table[str(p)] = e if ok else None

    def get(self, path: Path) -> np.ndarray | None:
        key = str(path)
        if key not in self.table:
            from edge.recognition.images import load_image
            from edge.watchlist.enrol import assess_image
            try:
                face, _ = assess_image(self.rec, load_image(path), self.cfg)
                self.table[key] = None if face is None or face.embedding is None else np.asarray(face.embedding,
                                                                                                   np.float32)
            except Exception:  # an unreadable photo is not enrolled, as in enrol()
                self.table[key] = None
        return self.table[key]

    def save(self) -> None:
        if not self.cache or not self.table:
            return
        paths = sorted(self.table)
        emb = np.stack([self.table[p] if self.table[p] is not None else np.zeros(128, np.float32) for p in paths])
        np.savez(self.cache, paths=np.array(paths), emb=emb, ok=np.array([self.table[p] is not None for p in paths]),
                 model=np.array(str(self.rec.embedder_sha256)))


def list_entries(names, identities, emb: Embeddings, photos: int, prefix: str, bar=None, limit: int = 0):
    """(subject ids by name, SubjectEntry list, embeddings (N, 128)) for the names that enrol
    (the first ``limit`` that do, when given)."""
    from edge.watchlist.bundle import SubjectEntry
    ids, entries, rows = {}, [], []
    for n in names:
        if limit and len(entries) >= limit:
            break
        vecs = []
        for p in identities[n][:photos]:
            v = emb.get(p)
            if v is not None:
                vecs.append(v)
        if bar is not None:
            bar.update()
        if not vecs:
            continue
        sid = f"{prefix}-{len(entries) + 1:05d}"
        ids[n] = sid
        entries.append(SubjectEntry(sid, "wanted", "R-BENCH", tuple(f"photo {i + 1}" for i in range(len(vecs)))))
        rows.extend(vecs)
    return ids, entries, (np.stack(rows).astype(np.float32) if rows else np.empty((0, 128), np.float32))


def sign_list(tu, entries, rows, model_sha: str) -> bytes:
    from edge.watchlist.bundle import Limits, make_bundle
    now = int(time.time())
    data, _ = make_bundle(subjects=entries, embeddings=rows, thumbnails={}, issuer=tu.issuer,
                          recipients=[tu.device.public], serial=now, operation_id="BENCH-SCENES",
                          authorising_officer="Bench 0000", valid_from=now - 60, valid_until=now + 86400,
                          model_sha256=model_sha, issued_at=now - 60, limits=Limits.from_config(tu.config))
    return data


# --------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------


def compose(walkers, *, seed: int, concurrency: float = 5.0):
    """walkers: (label, head key, subject id or None). Each crosses the frame in 2-4 s at a width
    drawn evenly over the width buckets (walker i: bucket i mod 4), about ``concurrency`` on
    screen at once. Returns (actors, duration)."""
    from edge.tools.composer import Actor
    rng = np.random.default_rng(seed)
    gap = 3.0 / concurrency
    actors, t = [], 0.2
    for i, (label, head, sid) in enumerate(walkers):
        lo, hi = WIDTH_BUCKETS[i % len(WIDTH_BUCKETS)]
        px = int(rng.integers(lo, min(hi, 221)))
        dur = float(rng.uniform(2.0, 4.0))
        y0 = float(rng.uniform(0.15, 0.85))
        y1 = float(np.clip(y0 + rng.uniform(-0.05, 0.05), 0.12, 0.88))
        left = bool(rng.integers(0, 2))
        x0, x1 = (0.04, 0.96) if left else (0.96, 0.04)
        actors.append(Actor(label, head, sid, round(t, 3), round(t + dur, 3), ((x0, y0), (x1, y1)), px))
        t += float(rng.uniform(0.5, 1.5)) * gap
    return actors, max(a.end for a in actors) + 0.3


def actor_speed(scene, a) -> float:
    """Face widths moved per frame."""
    (x0, y0), (x1, y1) = a.path
    d = math.hypot((x1 - x0) * scene.size[0], (y1 - y0) * scene.size[1])
    return d / max(a.end - a.start, 1e-9) / scene.fps / a.face_px


def _found(truth_box, dets) -> bool:
    cx, cy = (truth_box[0] + truth_box[2]) / 2, (truth_box[1] + truth_box[3]) / 2
    w = truth_box[2] - truth_box[0]
    for d in dets:
        b = d.box if hasattr(d, "box") else d
        if math.hypot((b[0] + b[2]) / 2 - cx, (b[1] + b[3]) / 2 - cy) <= 0.5 * w:
            return True
    return False


def _in_frame(scene, box) -> bool:
    W, H = scene.size
    return box[0] >= 0 and box[1] >= 0 and box[2] <= W and box[3] <= H


def detection_table(scene, per_frame: dict[int, list]) -> dict:
    """Per width and speed bucket: faces (fully in frame) and the fraction found, from
    ``per_frame[frame index] = detections``. Also per actor: frames found."""
    by_w, by_s = {}, {}
    per_actor: dict[int, int] = {}
    for k in sorted(per_frame):
        dets = per_frame[k]
        for a, box in scene.truth_at(k / scene.fps):
            if not _in_frame(scene, box):
                continue
            hit = _found(box, dets)
            per_actor[id(a)] = per_actor.get(id(a), 0) + hit
            for table, key in ((by_w, width_bucket(a.face_px)), (by_s, speed_bucket(actor_speed(scene, a)))):
                n, f = table.get(key, (0, 0))
                table[key] = (n + 1, f + hit)
    return {"by_width": by_w, "by_speed": by_s, "per_actor": per_actor}


def _attribute(scene, t, box):
    from edge.tools.bench_pipeline import attribute_box
    return attribute_box(scene, t, box)


def score_run(scene, events, matches, frames_found: dict[int, int]) -> dict:
    """Per pass: the outcome, and for a listed pass that was not alerted exactly once, why."""
    per_alerts: dict[int, list] = {id(a): [] for a in scene.actors}
    stray = 0
    for e in events:
        a = _attribute(scene, e.t, e.box)
        if a is None:
            stray += 1
        else:
            per_alerts[id(a)].append(e)
    best: dict[int, float] = {}
    thr = None
    for m in matches:
        a = _attribute(scene, m.t, m.box)
        thr = m.threshold
        if a is not None and a.subject_id and m.subject_id == a.subject_id:
            best[id(a)] = max(best.get(id(a), -1.0), m.score)
        elif a is not None:
            best.setdefault(id(a), -1.0)
    passes = []
    for a in scene.actors:
        got = per_alerts[id(a)]
        right = [e for e in got if e.subject_id == a.subject_id]
        wrong = [e for e in got if e.subject_id != a.subject_id]
        rec = {"label": a.label, "listed": bool(a.subject_id), "width": a.face_px,
               "speed": round(actor_speed(scene, a), 3), "alerts": len(got), "false": len(wrong),
               "frames_found": frames_found.get(id(a), 0),
               "frames": int(round((a.end - a.start) * scene.fps))}
        if a.subject_id:
            rec["exactly_once"] = len(right) == 1 and not wrong
            if right:
                rec["time_to_alert"] = round(min(e.t for e in right) - a.start, 3)
            if not rec["exactly_once"]:
                if len(right) > 1:
                    why = "duplicate"
                elif wrong:
                    why = "wrong_subject"
                elif not frames_found.get(id(a)):
                    why = "never_detected"
                elif id(a) not in best:
                    why = "not_kept"
                else:
                    why = "below_threshold"
                rec["why"] = why
                if id(a) in best:
                    rec["best_score"] = round(best[id(a)], 4)
        passes.append(rec)
    return {"passes": passes, "stray_alerts": stray, "threshold": thr}


# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


def still_ceiling(matcher, names, subject_ids: dict[str, str], identities, emb: "Embeddings") -> dict:
    """The embedder's ceiling for this list: each listed walker's pasted photo, embedded as a full
    still through the enrolment path (no video, no motion, no tracker), matched once against the
    same list: how many would alert (top-1 is their subject, at or above its threshold)."""
    hits = tried = 0
    for n in names:
        sid = subject_ids.get(n)
        v = emb.get(identities[n][-1]) if sid else None
        if v is None:
            continue
        tried += 1
        m = matcher.match(v)
        hits += int(m.subject_id == sid and m.is_hit)
    return {"hits": hits, "walkers": tried}


def _lo(bucket: str) -> float:
    """Sort key of a width bucket label ('48-64' -> 48)."""
    try:
        return float(bucket.split("-")[0])
    except ValueError:
        return math.inf


def _pct(xs, q):
    return round(float(np.percentile(xs, q)), 3) if xs else None


def summarise(runs: list[dict]) -> dict:
    """Aggregate per (fps, list, photos): recall, false alerts per 1,000 unlisted passes, ..."""
    out: dict = {}
    for r in runs:
        key = (r["fps"], r["list"], r["photos"])
        s = out.setdefault(key, {"fps": r["fps"], "list": r["list"], "photos": r["photos"], "list_sizes": set(),
                                 "listed_passes": 0, "exactly_once": 0, "unlisted_passes": 0, "false_alerts": 0,
                                 "duplicates": 0, "tta": [], "why": {k: 0 for k in MISS_REASONS},
                                 "by_width": {}, "thresholds": set(), "supported": set(),
                                 "embeddings": 0, "second_looks": 0, "still": [0, 0]})
        s["embeddings"] += r.get("embeddings") or 0
        s["second_looks"] += r.get("second_looks") or 0
        s["list_sizes"].add(r["list_size"])
        s["thresholds"].add(r["threshold"])
        s["supported"].add(r["supported"])
        s["false_alerts"] += r["stray_alerts"]
        if r.get("still"):
            s["still"][0] += r["still"]["hits"]
            s["still"][1] += r["still"]["walkers"]
        for p in r["passes"]:
            s["false_alerts"] += p["false"]
            if not p["listed"]:
                s["unlisted_passes"] += 1
                continue
            s["listed_passes"] += 1
            s["exactly_once"] += p["exactly_once"]
            if "time_to_alert" in p:
                s["tta"].append(p["time_to_alert"])
            if p.get("why"):
                s["why"][p["why"]] += 1
                s["duplicates"] += p["why"] == "duplicate"
            b = s["by_width"].setdefault(width_bucket(p["width"]), [0, 0])
            b[0] += 1
            b[1] += p["exactly_once"]
    rows = []
    for s in out.values():
        rows.append({"fps": s["fps"], "list": s["list"], "photos": s["photos"],
                     "list_size": sorted(s["list_sizes"]),
                     "threshold": sorted(s["thresholds"]), "supported": sorted(s["supported"]),
                     "listed_passes": s["listed_passes"], "exactly_once": s["exactly_once"],
                     "recall": round(s["exactly_once"] / max(1, s["listed_passes"]), 4),
                     "still_ceiling": round(s["still"][0] / max(1, s["still"][1]), 4),
                     "unlisted_passes": s["unlisted_passes"], "false_alerts": s["false_alerts"],
                     "false_per_1000_unlisted": round(1000.0 * s["false_alerts"] / max(1, s["unlisted_passes"]), 2),
                     "duplicates": s["duplicates"], "time_to_alert_p50": _pct(s["tta"], 50),
                     "time_to_alert_p95": _pct(s["tta"], 95), "missed_why": s["why"],
                     "embeddings": s["embeddings"], "second_looks": s["second_looks"],
                     "recall_by_width": {k: round(v[1] / max(1, v[0]), 3)
                                         for k, v in sorted(s["by_width"].items(), key=lambda kv: _lo(kv[0]))}})
    return rows


def _merge_det(acc: dict, d: dict) -> None:
    for part in ("by_width", "by_speed"):
        for k, (n, f) in d[part].items():
            a = acc.setdefault(part, {}).setdefault(k, [0, 0])
            a[0] += n
            a[1] += f


def _rates(acc: dict) -> dict:
    order = {f"<{SPEED_BUCKETS[0][1]:g}": 0}
    return {part: {k: {"faces": n, "found": round(f / max(1, n), 3)}
                   for k, (n, f) in sorted(v.items(), key=lambda kv: order.get(kv[0], _lo(kv[0].lstrip(">="))))}
            for part, v in acc.items()}


def run_scenes(args, say=print) -> dict:
    from edge.appliance.builder import build_recognizers
    from edge.appliance.metrics import tune_malloc
    from edge.appliance.builder import build_appliance
    from edge.config import load_config, validate
    from edge.matching.normalise import load_cohort_identities
    from edge.progress import Progress
    from edge.tools.composer import ComposedSource, Scene, find_head
    from edge.tools.evaluation.lfw import load_aliases, scan_lfw
    from edge.tools.rig import ThrowawayUnit
    from edge.recognition.images import load_image
    from edge.paths import shared_faces_or_none

    tune_malloc()
    lfw = Path(args.lfw) if args.lfw else None
    if lfw is None:
        shared = shared_faces_or_none()
        lfw = shared / "lfw-dev" if shared else None
    if lfw is None or not lfw.is_dir():
        raise InputError("bench scenes needs an LFW-layout folder: --lfw DIR (DIR/<Name>/<Name>_NNNN.jpg)")
    base = load_config(getattr(args, "config", None)).as_dict()
    # every pass is its own event: people do not come back, but keep the unit's defaults otherwise
    cfg = validate(base)
    identities = scan_lfw(lfw)
    cohort = load_cohort_identities(cfg.runtime.models_dir or None)
    split = split_identities(identities, cohort, scenes=args.scenes, listed=args.listed, unlisted=args.unlisted,
                             seed=args.seed, aliases=load_aliases(cfg.runtime.models_dir or None))
    say(f"identity split: {split.how}")
    if not cohort:
        say("WARNING: the models folder does not name the cohort's identities; nobody was excluded")
    w, h = (int(v) for v in args.size.lower().split("x"))
    shared = shared_faces_or_none()
    background = (shared / "video" / "vtest.avi") if shared and (shared / "video" / "vtest.avi").is_file() else None
    recs = build_recognizers(cfg, cfg.pipeline.workers)
    rec = recs[0]
    emb = Embeddings(rec, cfg, args.cache)
    lists = [str(x) for x in args.lists]
    sizes = {}
    for name in lists:
        if name == "all":
            sizes[name] = len(split.distractors) + args.listed
        else:
            n = int(name)
            if n < args.listed:
                raise InputError(f"list size {n} is smaller than the {args.listed} listed walkers")
            sizes[name] = min(n, len(split.distractors) + args.listed)
    need = max(sizes.values()) - args.listed
    photos_opts = sorted({int(p) for p in args.photos})
    with Progress(need * max(photos_opts) + sum(len(s) for s in split.listed) * max(photos_opts),
                  "enrolment embeddings", unit="photo") as bar:
        distractor_sets = {}
        for ph in photos_opts:
            distractor_sets[ph] = list_entries(split.distractors, identities, emb, ph, "X", bar, limit=need)
    emb.save()
    t_all = time.monotonic()
    runs, det_pipe, det_ref = [], {}, {}
    result = {"folder": str(lfw), "split": split.how, "size": [w, h], "fps": list(args.fps),
              "lists": {k: sizes[k] for k in lists}, "photos": photos_opts, "scenes": args.scenes,
              "workers": cfg.pipeline.workers, "lockstep": True}
    with tempfile.TemporaryDirectory(prefix="edge-lfr-scenes-") as tmp:
        tmp = Path(tmp)
        tu = ThrowawayUnit(tmp / "unit", "bench-scenes", base_config=cfg)
        model_sha = rec.embedder_sha256
        for si in range(args.scenes):
            heads, walkers = {}, []
            for n in split.listed[si]:
                heads[n] = find_head(rec, load_image(identities[n][-1]))
                walkers.append((f"{n} (listed)", n, "?"))
            for n in split.unlisted[si]:
                try:
                    heads[n] = find_head(rec, load_image(identities[n][0]))
                except InputError:
                    continue
                walkers.append((f"{n}", n, None))
            order = np.random.default_rng(args.seed * 100 + si).permutation(len(walkers))
            walkers = [walkers[i] for i in order]
            for fps in args.fps:
                actors_plan, duration = compose(walkers, seed=args.seed * 100 + si)
                for ph in photos_opts:
                    listed_ids, l_entries, l_rows = list_entries(split.listed[si], identities, emb, ph, "L")
                    from dataclasses import replace
                    actors = [replace(a, subject_id=listed_ids.get(a.head)) if a.subject_id == "?" else a
                              for a in actors_plan]
                    scene = Scene(heads, actors, size=(w, h), fps=fps, duration=duration, background=background)
                    # the detector on every view is costly (17 runs at 1080p): on every frame at 15 fps,
                    # every 2nd at 30 (the pipeline is scored on the same frames)
                    every = max(1, int(round(fps / 15.0)))
                    if (si, fps) not in det_ref and not args.no_detector_reference:
                        per = {}
                        with Progress(scene.n_frames // every, f"scene {si + 1} @ {fps:g} fps: detector on every view",
                                      unit="frame") as bar:
                            for k, (t, frame) in enumerate(scene.frames()):
                                if k % every:
                                    continue
                                per[k] = rec.detector.detect(frame)
                                bar.update()
                        det_ref[(si, fps)] = detection_table(scene, per)
                        _merge_det(det_ref.setdefault(("all", fps), {}), det_ref[(si, fps)])
                    for lname in lists:
                        d_ids, d_entries, d_rows = distractor_sets[ph]
                        k = sizes[lname] - len(l_entries)
                        ents = list(l_entries) + list(d_entries[:k])
                        nrows = sum(len(e.sources) for e in d_entries[:k])
                        rows = np.concatenate([l_rows, d_rows[:nrows]]) if k else l_rows
                        bundle = sign_list(tu, ents, rows, model_sha)
                        state = tmp / f"s{si}-{fps:g}-{ph}-{lname}"
                        frames, matches = {}, []
                        app = build_appliance(tu.config, ComposedSource(scene, pace="fast"), recognizers=recs,
                                              state_dir=state, bundle=bundle, device_key=tu.device,
                                              unit_id="bench-scenes", say=lambda *a: None,
                                              on_frame=lambda f, fr=frames: fr.__setitem__(f.seq, f.detections),
                                              on_match=matches.append)
                        pl = app.pipeline
                        live = app.unit.current()
                        t0 = time.monotonic()
                        try:
                            rep = app.run()
                        finally:
                            app.close()
                        dt = time.monotonic() - t0
                        det = detection_table(scene, frames)
                        if (si, fps) not in det_pipe:
                            det_pipe[(si, fps)] = det
                            _merge_det(det_pipe.setdefault(("all", fps), {}),
                                       detection_table(scene, {k: v for k, v in frames.items() if k % every == 0}))
                        sc = score_run(scene, pl.events, matches, det["per_actor"])
                        sc["still"] = still_ceiling(live.matcher, split.listed[si], listed_ids, identities, emb)
                        pol = live.matcher.policy
                        r = {"scene": si, "fps": fps, "photos": ph, "list": lname, "list_size": len(ents),
                             "threshold": round(float(pol.threshold), 4) if pol else None,
                             "supported": bool(pol.supported) if pol else None, "frames": rep["frames_processed"],
                             "seconds": round(dt, 1), "fps_processed": rep["fps"],
                             "embeddings": rep["tracker"].get("embeddings"),
                             "second_looks": rep["tracker"].get("second_looks", 0), **sc}
                        runs.append(r)
                        ok = sum(p.get("exactly_once", False) for p in sc["passes"])
                        nl = sum(p["listed"] for p in sc["passes"])
                        fa = sum(p["false"] for p in sc["passes"]) + sc["stray_alerts"]
                        say(f"scene {si + 1}/{args.scenes} @ {fps:g} fps, {ph} photo(s), list {len(ents):,}: "
                            f"{ok}/{nl} listed passes alerted exactly once, {fa} false; "
                            f"{rep['frames_processed']} frames in {dt:.1f} s ({rep['fps']:.0f} fps)")
    result["runs"] = runs
    result["summary"] = summarise(runs)
    result["detection"] = {f"{fps:g}": {"pipeline": _rates(det_pipe.get(("all", fps), {})),
                                        "detector_every_view": _rates(det_ref.get(("all", fps), {}))}
                           for fps in args.fps}
    result["seconds"] = round(time.monotonic() - t_all, 1)
    return result


def format_report(r: dict) -> str:
    lines = [f"\n{r['split']}", "",
             f"{'fps':>4s} {'list':>6s} {'photos':>6s} {'recall (exactly once)':>24s} {'false/1k unlisted':>18s} "
             f"{'dup':>4s} {'tta p50/p95 s':>14s} {'threshold':>10s} {'still':>6s}  missed: why"]
    for s in r["summary"]:
        why = ", ".join(f"{k} {v}" for k, v in s["missed_why"].items() if v)
        lines.append(f"{s['fps']:>4g} {'/'.join(map(str, s['list_size'])):>6s} {s['photos']:>6d} "
                     f"{s['exactly_once']:>4d}/{s['listed_passes']:<4d} = {100 * s['recall']:5.1f}%      "
                     f"{s['false_per_1000_unlisted']:>8.2f} ({s['false_alerts']}/{s['unlisted_passes']}) "
                     f"{s['duplicates']:>4d} {str(s['time_to_alert_p50']) + '/' + str(s['time_to_alert_p95']):>14s} "
                     f"{'/'.join(f'{t:.3f}' for t in s['threshold']):>10s} {100 * s['still_ceiling']:5.1f}%"
                     f"{'' if all(s['supported']) else ' (unsupported)'}  {why}")
        lines.append(f"{'':>18s} recall by width: " + ", ".join(f"{k} {100 * v:.0f}%"
                                                              for k, v in s["recall_by_width"].items()))
    for fps, d in r["detection"].items():
        lines.append(f"\nper-frame detection @ {fps} fps: pipeline vs detector on every view")
        for part in ("by_width", "by_speed"):
            p, ref = d["pipeline"].get(part, {}), d["detector_every_view"].get(part, {})
            cells = [f"{k}: {100 * p[k]['found']:.0f}% vs {100 * ref[k]['found']:.0f}%" if k in ref
                     else f"{k}: {100 * p[k]['found']:.0f}%" for k in p]
            lines.append(f"  {part.replace('_', ' ')}: " + "; ".join(cells))
    return "\n".join(lines)


def plot(path, r: dict) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for fps in sorted({s["fps"] for s in r["summary"]}):
        for ph in sorted({s["photos"] for s in r["summary"]}):
            rows = sorted((s for s in r["summary"] if s["fps"] == fps and s["photos"] == ph),
                          key=lambda s: max(s["list_size"]))
            if not rows:
                continue
            axes[0].plot([max(s["list_size"]) for s in rows], [100 * s["recall"] for s in rows], marker="o",
                         label=f"{fps:g} fps, {ph} photo{'s' if ph > 1 else ''}")
            for s in rows:
                ks = sorted(s["recall_by_width"], key=_lo)
                axes[1].plot(range(len(ks)), [100 * s["recall_by_width"][k] for k in ks], marker=".",
                             label=f"{fps:g} fps, {ph} ph, N={max(s['list_size'])}")
                axes[1].set_xticks(range(len(ks)), ks)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("listed subjects")
    axes[0].set_ylabel("listed passes alerted exactly once (%)")
    axes[0].set_ylim(0, 100)
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("face width (px)")
    axes[1].set_ylim(0, 100)
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=6)
    axes[0].set_title("recall by list size")
    axes[1].set_title("recall by face width")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def run(args) -> int:
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    if args.scenes < 1 or args.listed < 1 or args.unlisted < 0:
        raise InputError("--scenes and --listed must be >= 1, --unlisted >= 0")
    if not all(0 < f <= 120 for f in args.fps):
        raise InputError("--fps: frame rates must be in (0, 120]")
    if not all(p in (1, 2) for p in args.photos):
        raise InputError("--photos: 1 or 2 enrolment photos per subject (a listed walker is pasted from a third)")
    try:
        w, h = (int(v) for v in str(args.size).lower().split("x"))
        if not (320 <= w <= 8192 and 240 <= h <= 8192):
            raise ValueError
    except ValueError:
        raise InputError(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 1920x1080 (320x240 at least)") from None
    for name in args.lists:
        if name != "all" and not str(name).isdigit():
            raise InputError(f"--lists: {name!r} is neither a number nor 'all'")
    r = run_scenes(args, say)
    say(format_report(r))
    if getattr(args, "plot", None):
        say(f"plot: {plot(args.plot, r)}")
    if getattr(args, "out", None):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(r, indent=1))
    return 0
