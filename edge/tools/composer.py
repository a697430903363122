"""Composed footage with known ground truth: real faces moving across a background.

Used by the demo, the end-to-end tests and ``edge-lfr bench pipeline``. A :class:`Scene` pastes
heads (cut from photos with a feathered elliptical mask) along straight paths over a background
(the frames of a local video such as ``../shared/faces/video/vtest.avi``, resized, or a plain
gradient), one :class:`Actor` per pass of one person. Everything happens in memory; a scene
is written to a file only when asked (:meth:`Scene.write_video`, for the demo and rigs).

The ground truth is exact: :meth:`Scene.truth_at` gives every visible face's box at a time,
:meth:`Scene.passes` every pass with who it is and whether that person is on the watchlist.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from edge.appliance.capture import FrameSource
from edge.errors import InputError
from edge.recognition.images import load_image
from edge.tools.demo_faces import public_domain_faces
from edge.tools.evaluation.lfw import by_image_count, scan_lfw
from edge.types import CATEGORIES


@dataclass(frozen=True)
class Head:
    """An RGBA head cut from a photo; ``face`` is the face box inside it (x0, y0, x1, y1)."""

    rgba: np.ndarray = field(repr=False)
    face: tuple[float, float, float, float]

    @property
    def face_width(self) -> float:
        return self.face[2] - self.face[0]


def cut_head(image: np.ndarray, face_box, margin: float = 0.55) -> Head:
    """Cut the head around ``face_box`` (a detector's box in ``image``) with a feathered
    elliptical alpha mask, so only the head is pasted, not the photo's background."""
    x0, y0, x1, y1 = (float(v) for v in face_box)
    w, h = x1 - x0, y1 - y0
    if w < 8 or h < 8:
        raise InputError(f"face box {face_box} is too small to cut a head from")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 - 0.08 * h  # a little room for the hair
    hw, hh = w * (0.5 + margin / 2), h * (0.5 + margin * 0.75)
    H, W = image.shape[:2]
    bx0, by0 = int(max(0, math.floor(cx - hw))), int(max(0, math.floor(cy - hh)))
    bx1, by1 = int(min(W, math.ceil(cx + hw))), int(min(H, math.ceil(cy + hh)))
    crop = image[by0:by1, bx0:bx1]
    yy, xx = np.mgrid[by0:by1, bx0:bx1].astype(np.float32)
    r = np.sqrt(((xx + 0.5 - cx) / hw) ** 2 + ((yy + 0.5 - cy) / hh) ** 2)
    alpha = np.clip((1.0 - r) / 0.12, 0.0, 1.0)  # feathered edge: 12% of the radius
    rgba = np.dstack([crop, (alpha * 255).astype(np.uint8)])
    return Head(np.ascontiguousarray(rgba), (x0 - bx0, y0 - by0, x1 - bx0, y1 - by0))


def find_head(recognizer, image: np.ndarray, margin: float = 0.55) -> Head:
    """The largest face of ``image`` (found by the unit's own detector) as a :class:`Head`."""
    dets = recognizer.detector.detect(image)
    if not dets:
        raise InputError("no face found to cut a head from")
    det = max(dets, key=lambda d: d.width)
    return cut_head(image, det.box, margin)


@dataclass(frozen=True)
class Actor:
    """One pass of one person: visible from ``start`` to ``end`` (seconds), the face centre
    moving in a straight line from ``path[0]`` to ``path[1]`` (fractions of the frame), the
    face ``face_px`` pixels wide. ``subject_id``: the watchlist id, None for someone not listed."""

    label: str
    head: str                          # key into the scene's heads
    subject_id: str | None
    start: float
    end: float
    path: tuple[tuple[float, float], tuple[float, float]]
    face_px: int

    def visible(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True)
class Pass:
    label: str
    subject_id: str | None
    start: float
    end: float
    face_px: int


class _Background:
    """Frames of a local video (looped, resized) or a plain gradient."""

    def __init__(self, size: tuple[int, int], video: str | os.PathLike | None = None):
        self.w, self.h = size
        self.video = Path(video) if video else None
        self._cap = None
        self._plain = None
        if self.video is not None and not self.video.is_file():
            raise InputError(f"{self.video}: background video not found")

    def _gradient(self) -> np.ndarray:
        if self._plain is None:
            y = np.linspace(70, 150, self.h, dtype=np.float32)[:, None, None]
            x = np.linspace(0, 50, self.w, dtype=np.float32)[None, :, None]
            tint = np.array([1.0, 0.97, 0.9], np.float32)[None, None, :]
            img = (y + x) * tint
            img[int(self.h * 0.72):] *= 0.75  # a "pavement"
            self._plain = np.clip(img, 0, 255).astype(np.uint8)
        return self._plain

    def next(self) -> np.ndarray:
        if self.video is None:
            return self._gradient().copy()
        for _ in range(2):
            if self._cap is None:
                self._cap = cv2.VideoCapture(str(self.video), cv2.CAP_FFMPEG)
            ok, bgr = self._cap.read()
            if ok:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # before resizing: fewer pixels
                if rgb.shape[1] != self.w or rgb.shape[0] != self.h:
                    interp = cv2.INTER_LINEAR if rgb.shape[1] < self.w else cv2.INTER_AREA
                    rgb = cv2.resize(rgb, (self.w, self.h), interpolation=interp)
                return rgb
            self._cap.release()
            self._cap = None  # loop the background
        raise InputError(f"{self.video}: cannot read frames")

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class Scene:
    """Actors pasted over a background: ``size`` (width, height), ``fps``, ``duration`` seconds."""

    def __init__(self, heads: dict[str, Head], actors: Sequence[Actor], size=(1280, 720), fps: float = 15.0,
                 duration: float | None = None, background: str | os.PathLike | None = None):
        self.heads = dict(heads)
        self.actors = tuple(actors)
        missing = {a.head for a in self.actors} - set(self.heads)
        if missing:
            raise InputError(f"actors refer to heads that were not given: {sorted(missing)}")
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.duration = float(duration if duration is not None else max((a.end for a in self.actors), default=1.0))
        self.background = background
        self._patches: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, tuple]] = {}

    @property
    def n_frames(self) -> int:
        return int(round(self.duration * self.fps))

    def _patch(self, actor: Actor):
        key = (actor.head, actor.face_px)
        got = self._patches.get(key)
        if got is None:
            head = self.heads[actor.head]
            s = actor.face_px / head.face_width
            hh, hw = head.rgba.shape[:2]
            size = (max(2, round(hw * s)), max(2, round(hh * s)))
            small = cv2.resize(head.rgba, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
            rgb = small[:, :, :3].astype(np.float32)
            alpha = small[:, :, 3:].astype(np.float32) / 255.0
            face = tuple(v * s for v in head.face)
            got = self._patches[key] = (rgb * alpha, 1.0 - alpha, face)
        return got

    def _centre(self, actor: Actor, t: float) -> tuple[float, float]:
        f = (t - actor.start) / max(actor.end - actor.start, 1e-9)
        (x0, y0), (x1, y1) = actor.path
        bob = 0.004 * math.sin(2 * math.pi * 1.8 * (t - actor.start))  # a walking gait
        return (x0 + (x1 - x0) * f) * self.size[0], (y0 + (y1 - y0) * f + bob) * self.size[1]

    def truth_at(self, t: float) -> list[tuple[Actor, tuple[float, float, float, float]]]:
        """Every actor visible at ``t`` with its face box in frame pixels."""
        out = []
        for a in self.actors:
            if not a.visible(t):
                continue
            _, _, face = self._patch(a)
            cx, cy = self._centre(a, t)
            fw, fh = face[2] - face[0], face[3] - face[1]
            out.append((a, (cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2)))
        return out

    def render(self, t: float, background: np.ndarray) -> np.ndarray:
        frame = background
        W, H = self.size
        for a in self.actors:
            if not a.visible(t):
                continue
            premult, inv_alpha, face = self._patch(a)
            cx, cy = self._centre(a, t)
            fcx, fcy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
            x0, y0 = int(round(cx - fcx)), int(round(cy - fcy))
            ph, pw = premult.shape[:2]
            fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(W, x0 + pw), min(H, y0 + ph)
            if fx1 <= fx0 or fy1 <= fy0:
                continue
            px0, py0 = fx0 - x0, fy0 - y0
            region = frame[fy0:fy1, fx0:fx1].astype(np.float32)
            region *= inv_alpha[py0:py0 + fy1 - fy0, px0:px0 + fx1 - fx0]
            region += premult[py0:py0 + fy1 - fy0, px0:px0 + fx1 - fx0]
            frame[fy0:fy1, fx0:fx1] = region.astype(np.uint8)
        return frame

    def frames(self, loops: int = 1) -> Iterator[tuple[float, np.ndarray]]:
        """(t, RGB frame) for every frame; ``loops`` > 1 repeats the scene with increasing t
        (0 = forever)."""
        bg = _Background(self.size, self.background)
        try:
            i = 0
            n = self.n_frames
            loop = 0
            while loops == 0 or loop < loops:
                for k in range(n):
                    t = k / self.fps
                    yield (loop * n + k) / self.fps, self.render(t, bg.next())
                    i += 1
                loop += 1
        finally:
            bg.close()

    def passes(self) -> list[Pass]:
        return [Pass(a.label, a.subject_id, a.start, a.end, a.face_px) for a in self.actors]

    def expected(self, slack: float = 0.5) -> list[dict]:
        """Rig expectations (see :mod:`edge.tools.rig`): each listed pass alerts once within its time."""
        return [{"subject": a.subject_id, "from": round(a.start, 3), "to": round(a.end + slack, 3), "count": 1,
                 "label": a.label} for a in self.actors if a.subject_id]

    def write_video(self, path: str | os.PathLike, quality: int = 90) -> Path:
        """Write the scene as an MJPEG .avi (replayable by :class:`~edge.appliance.capture.FileSource`)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), self.fps, self.size)
        if not w.isOpened():
            raise InputError(f"{p}: cannot write an MJPEG video here")
        try:
            w.set(cv2.VIDEOWRITER_PROP_QUALITY, quality)
            for _, frame in self.frames():
                w.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            w.release()
        return p


class ComposedSource(FrameSource):
    """A :class:`Scene` as a frame source (rendered in the capture thread, like a camera's
    frames arriving decoded). ``pace``: "fast" or "realtime"; ``loops`` (0 = forever)."""

    def __init__(self, scene: Scene, pace: str = "fast", loops: int = 1, max_frames: int = 0):
        if pace not in ("fast", "realtime"):
            raise InputError(f"pace must be fast or realtime, got {pace!r}")
        self.scene = scene
        self.pace = pace
        self.live = pace == "realtime"
        self.loops = loops
        self.max_frames = max_frames
        self._closed = False
        self.name = f"composed scene {scene.size[0]}x{scene.size[1]}@{scene.fps:g} ({len(scene.actors)} passes, {pace})"

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        start = time.monotonic()
        for n, (t, frame) in enumerate(self.scene.frames(self.loops)):
            if self._closed or (self.max_frames and n >= self.max_frames):
                return
            if self.pace == "realtime":
                delay = start + t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield t, frame

    def close(self) -> None:
        self._closed = True


def lanes(people: Sequence[tuple[str, str, str | None, int]], *, duration: float, n_lanes: int,
          pass_seconds: float = 3.0, gap: float = 0.4, y_range=(0.3, 0.75), seed: int = 0,
          x_margin: float = 0.06) -> list[Actor]:
    """Schedule passes on ``n_lanes`` horizontal lanes, back to back: people (label, head key,
    subject id or None, face width px) are taken in turn; each walks across the frame in
    ``pass_seconds`` (alternating directions), lanes start staggered. Returns the actors."""
    if not people:
        raise InputError("no people to schedule")
    rng = np.random.default_rng(seed)
    actors = []
    k = 0
    ys = np.linspace(y_range[0], y_range[1], n_lanes) if n_lanes > 1 else [sum(y_range) / 2]
    for lane, y in enumerate(ys):
        t = lane * (pass_seconds + gap) / n_lanes
        while t + pass_seconds <= duration + 1e-9:
            label, head, sid, px = people[k % len(people)]
            k += 1
            left = (k + lane) % 2 == 0
            x0, x1 = (x_margin, 1 - x_margin) if left else (1 - x_margin, x_margin)
            dy = float(rng.uniform(-0.03, 0.03))
            actors.append(Actor(label, head, sid, round(t, 3), round(t + pass_seconds, 3),
                                ((x0, float(y)), (x1, float(y) + dy)), int(px)))
            t += pass_seconds + gap
    return actors


# --------------------------------------------------------------------------------------
# Casting: who appears in composed footage
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """Someone in composed footage: the photo a watchlist would be enrolled from (listed people
    only), the head pasted into the scene (cut from a *different* photo where one exists)."""

    label: str
    subject_id: str | None
    category: str
    enrol_image: np.ndarray | None = field(repr=False)
    head: Head = field(repr=False)


def cast(recognizer, shared: str | os.PathLike | None, *, listed: int, unlisted: int, seed: int = 0,
         min_genuine: float | None = None, max_impostor: float | None = None,
         public: bool = True, prefix: str = "DEMO") -> list[Person]:
    """Choose people for composed footage.

    Always (``public``): Grace Hopper (matplotlib, public domain) listed, enrolled from her
    photo and pasted mirrored; the NASA astronaut (scikit-image, public domain) not listed.
    With ``shared`` (../shared/faces): ``listed`` LFW identities with two or more photos
    (enrolled from the first, pasted from the second) and ``unlisted`` identities with one
    photo, drawn with ``seed``.

    ``min_genuine`` / ``max_impostor`` screen the LFW draw with the unit's own model: keep a
    listed identity only if its two photos score at least ``min_genuine``, an unlisted one only
    if it scores below ``max_impostor`` against every listed person. Tests and the demo use
    this to exercise the pipeline rather than the model's error rate (which ``edge-lfr eval``
    measures); the benchmark does not screen.
    """

    people: list[Person] = []
    n = 0
    if public:
        pd = public_domain_faces()
        n += 1
        people.append(Person("Grace Hopper (public domain)", f"{prefix}-{n:04d}", "wanted", pd["grace_hopper"],
                             find_head(recognizer, np.ascontiguousarray(pd["grace_hopper"][:, ::-1]))))
        people.append(Person("NASA astronaut (public domain, not listed)", None, "", None,
                             find_head(recognizer, pd["astronaut"])))
    lfw = Path(shared) / "lfw-dev" if shared else None
    if not lfw or not lfw.is_dir() or (listed <= 0 and unlisted <= 0):
        return people
    multi, single = by_image_count(scan_lfw(lfw))
    rng = np.random.default_rng(seed)
    listed_vecs = [recognizer.embed_image(p.enrol_image) for p in people
                   if p.subject_id and max_impostor is not None]
    for i in rng.permutation(len(multi)):
        if sum(1 for p in people if p.subject_id and p.label.endswith("(LFW)")) >= listed:
            break
        imgs = multi[i]
        enrol, probe = load_image(imgs[0]), load_image(imgs[1])
        try:
            head = find_head(recognizer, probe)
            if min_genuine is not None:
                a, b = recognizer.embed_image(enrol), recognizer.embed_image(probe)
                if float(a @ b) < min_genuine:
                    continue
                listed_vecs.append(a)
        except InputError:
            continue
        n += 1
        people.append(Person(f"{imgs[0].parent.name} (LFW)", f"{prefix}-{n:04d}", CATEGORIES[n % 3], enrol, head))
    taken = 0
    for i in rng.permutation(len(single)):
        if taken >= unlisted:
            break
        image = load_image(single[i][0])
        try:
            head = find_head(recognizer, image)
            if max_impostor is not None and listed_vecs:
                v = recognizer.embed_image(image)
                if float(np.max(np.stack(listed_vecs) @ v)) >= max_impostor:
                    continue
        except InputError:
            continue
        taken += 1
        people.append(Person(f"{single[i][0].parent.name} (LFW, not listed)", None, "", None, head))
    return people
