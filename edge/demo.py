"""``edge-lfr demo``: the recognition core end to end on real faces, no camera needed.

A small watchlist is enrolled (Grace Hopper from matplotlib; with ../shared/faces present,
also LFW identities), then a scene is composed with other photos of the listed people and
with people who are not listed (the NASA astronaut from scikit-image; more LFW identities).
Every face in the scene goes through detect -> align -> quality -> int8 embed -> match; the
alerts are printed and an annotated scene is written in which every face that is not a match
is blurred beyond recognition.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .api import Recognizer
from .config import load_config
from .demo_faces import public_domain_faces
from .images import load_image, save_image
from .match import Matcher, Watchlist
from .types import CATEGORIES

DEFAULT_SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "faces"


@dataclass(frozen=True)
class Placement:
    label: str             # who is pasted there (ground truth, for the printed check only)
    listed_as: str | None  # watchlist subject id, or None for someone not on the list
    box: tuple[int, int, int, int]


def _lfw_people(lfw: Path, listed: int, unlisted: int) -> tuple[list[list[Path]], list[Path]]:
    multi, single = [], []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        imgs = sorted(person.glob("*.jpg"))
        (multi if len(imgs) >= 2 else single).append(imgs)
    rng = np.random.default_rng(7)
    pick = [multi[i] for i in rng.choice(len(multi), listed, replace=False)]
    others = [single[i][0] for i in rng.choice(len(single), unlisted, replace=False)]
    return pick, others


def _background(shared: Path | None, size=(720, 1280)) -> np.ndarray:
    h, w = size
    video = shared / "video" / "vtest.avi" if shared else None
    if video and video.is_file():
        cap = cv2.VideoCapture(str(video))
        ok, frame = cap.read()
        cap.release()
        if ok:
            return cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), (w, h), interpolation=cv2.INTER_LINEAR)
    y = np.linspace(60, 160, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 40, w, dtype=np.float32)[None, :, None]
    return np.broadcast_to(y + x, (h, w, 3)).astype(np.uint8).copy()


def _paste(scene: np.ndarray, image: np.ndarray, x: int, y: int, height: int) -> tuple[int, int, int, int]:
    width = int(round(image.shape[1] * height / image.shape[0]))
    patch = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    h = min(height, scene.shape[0] - y)
    w = min(width, scene.shape[1] - x)
    scene[y:y + h, x:x + w] = patch[:h, :w]
    return x, y, x + w, y + h


def compose(shared: Path | None):
    """(watchlist images {subject_id: (category, RGB)}, scene RGB, placements)."""
    public = public_domain_faces()
    enrol = {"DEMO-0001": ("wanted", public["grace_hopper"])}
    probes = [("Grace Hopper (mirrored, smaller)", "DEMO-0001", public["grace_hopper"][:, ::-1]),
              ("NASA astronaut (not listed)", None, public["astronaut"])]
    lfw = shared / "lfw-dev" if shared else None
    if lfw and lfw.is_dir():
        listed, unlisted = _lfw_people(lfw, 5, 4)
        for i, imgs in enumerate(listed):
            sid = f"DEMO-{i + 2:04d}"
            enrol[sid] = (CATEGORIES[(i + 1) % 3], load_image(imgs[0]))
            probes.append((f"{imgs[1].parent.name} (another photo)", sid, load_image(imgs[1])))
        for p in unlisted:
            probes.append((f"{p.parent.name} (not listed)", None, load_image(p)))
    scene = _background(shared)
    placements = []
    cols = 4
    for i, (label, sid, img) in enumerate(probes):
        r, c = divmod(i, cols)
        height = 230 if img.shape[0] > 300 else 200
        box = _paste(scene, img, 20 + c * 315, 10 + r * 238, height)
        placements.append(Placement(label, sid, box))
    return enrol, scene, placements


def run_demo(args) -> int:
    cfg = load_config(args.config)
    shared = Path(args.faces) if args.faces else (DEFAULT_SHARED if DEFAULT_SHARED.is_dir() else None)
    t0 = time.perf_counter()
    rec = Recognizer(cfg)
    print(f"models verified and loaded in {time.perf_counter() - t0:.2f} s: "
          + "; ".join(f"{k} on {v}" for k, v in rec.delegates.items()))
    enrol, scene, placements = compose(shared)
    ids, cats, vecs = [], [], []
    for sid, (category, image) in enrol.items():
        vecs.append(rec.embed_image(image))
        ids.append(sid)
        cats.append(category)
    watchlist = Watchlist(np.stack(vecs), ids, cats)
    m = cfg.match
    matcher = Matcher(watchlist, {"wanted": m.threshold_wanted, "missing": m.threshold_missing,
                                  "vulnerable": m.threshold_vulnerable})
    print(f"watchlist: {len(watchlist)} subjects enrolled "
          f"({', '.join(f'{c} {cats.count(c)}' for c in CATEGORIES)}); "
          f"scene {scene.shape[1]}x{scene.shape[0]} with {len(placements)} people"
          + ("" if shared else " (../shared/faces not found: public-domain faces only)"))

    t1 = time.perf_counter()
    faces = rec.faces(scene)
    elapsed = time.perf_counter() - t1
    alerts, annotated = [], scene.copy()
    correct = 0
    print(f"\n{'who is there (ground truth)':42s} {'alert':10s} {'category':10s} {'score':>6s} {'thr':>5s} {'margin':>6s}")
    for face in faces:
        x0, y0, x1, y1 = (int(v) for v in face.detection.box)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        inside = [p for p in placements if p.box[0] <= cx < p.box[2] and p.box[1] <= cy < p.box[3]]
        who = inside[0] if inside else None
        match = matcher.match(face.embedding) if face.embedding is not None else None
        hit = match is not None and match.is_hit
        expected = who.listed_as if who else None
        correct += int((match.subject_id if hit else None) == expected)
        label = who.label if who else "(unknown position)"
        if face.embedding is None:
            print(f"{label:42s} {'gated':10s} {face.quality.reason}")
        else:
            print(f"{label:42s} {match.subject_id if hit else '-':10s} {match.category if hit else '':10s} "
                  f"{match.score:6.3f} {match.threshold:5.2f} {match.margin:6.3f}")
        if hit:
            alerts.append(match)
            cv2.rectangle(annotated, (x0, y0), (x1, y1), (255, 40, 40), 3)
            cv2.putText(annotated, f"{match.subject_id} {match.category} {match.score:.2f}", (x0, max(12, y0 - 6)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 0), 2)
        else:  # privacy by construction: a non-match is shown only blurred beyond recognition
            region = annotated[max(0, y0):y1, max(0, x0):x1]
            if region.size:
                small = cv2.resize(region, (4, 4), interpolation=cv2.INTER_AREA)
                annotated[max(0, y0):y1, max(0, x0):x1] = cv2.resize(small, region.shape[1::-1],
                                                                    interpolation=cv2.INTER_NEAREST)
    listed = sum(1 for p in placements if p.listed_as)
    print(f"\n{len(faces)} faces found, {len(alerts)} alerts ({listed} listed people in the scene, "
          f"{len(placements) - listed} not listed); {correct}/{len(faces)} faces decided correctly; "
          f"pipeline {elapsed * 1e3:.0f} ms for the whole frame")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_image(out / "demo-scene-alerts.jpg", annotated)
    print(f"annotated scene (non-matches blurred): {out / 'demo-scene-alerts.jpg'}")
    sys.stdout.flush()
    return 0
