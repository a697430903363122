"""The work board between the pipeline's threads, and the small frozen records they pass.

capture --Frame--> board --frame--> worker --DetectResult--> coordinator --EmbedJob--> board
--job--> worker --EmbedResult--> coordinator --AlertJob--> alerter --AlertEvent--> on_alert
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from edge.appliance.track import EmbedRequest
from edge.types import Detection, Match, Quality

# --------------------------------------------------------------------------------------
# Records passed between threads
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    seq: int            # capture order
    t: float            # source timestamp (s)
    captured: float     # time.monotonic() when the frame was in memory
    wall: float         # time.time() at the same moment
    image: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class EmbedJob:
    """One detection to embed, with the part of its frame around it (``patch``, whose top-left
    corner is ``offset`` in the frame): a job does not keep the whole frame alive."""

    request: EmbedRequest
    frame: Frame                      # the frame's metadata; its image is dropped (see embed_job)
    patch: np.ndarray = field(repr=False)
    offset: tuple[int, int] = (0, 0)
    faces: tuple = ()                 # every face box the pipeline knew of in that frame (frame pixels)
    frame_size: tuple[int, int] = (0, 0)   # (width, height) of the frame
    job_id: int = -1                  # issue order (a lockstep replay applies results in this order)


#: An embedding job keeps this many face widths of context on each side of the face box:
#: enough for the landmark model's crop (1.5x the box) and the aligner's anti-aliasing pad.
JOB_CONTEXT = 1.25


def embed_job(request: EmbedRequest, frame: Frame, faces: tuple = (), job_id: int = -1) -> EmbedJob:
    """Cut the neighbourhood of the request's face out of the frame (a copy), so the 6 MB frame
    itself can go as soon as detection is done. The patch also covers the face's context region
    (:func:`edge.appliance.context.context_region`: the alert's context image, should this face
    match); ``faces``: every face box known in the frame, blurred in that image."""
    from edge.appliance.context import context_region
    x0, y0, x1, y1 = request.detection.box
    pad = JOB_CONTEXT * max(x1 - x0, y1 - y0)
    h, w = frame.image.shape[:2]
    rx0, ry0, rx1, ry1 = context_region(request.detection.box, w, h)
    cx0, cy0 = int(max(0, min(x0 - pad, rx0))), int(max(0, min(y0 - pad, ry0)))
    cx1, cy1 = int(min(w, max(x1 + pad + 1, rx1))), int(min(h, max(y1 + pad + 1, ry1)))
    patch = np.ascontiguousarray(frame.image[cy0:cy1, cx0:cx1])
    meta = Frame(frame.seq, frame.t, frame.captured, frame.wall, _NO_IMAGE)
    return EmbedJob(request, meta, patch, (cx0, cy0), tuple(faces), (w, h), job_id)


_NO_IMAGE = np.zeros((0, 0, 3), np.uint8)



@dataclass(frozen=True)
class DetectResult:
    pick: int
    frame: Frame
    detections: tuple[Detection, ...]
    seconds: float
    views: int
    error: str | None = None


@dataclass(frozen=True)
class FrameRecord:
    """One frame once tracked (told to the pipeline's ``on_frame``): its detections and, for
    each, the id of the track it was given (None if none: over ``track.max_tracks``)."""

    seq: int
    t: float
    detections: tuple[Detection, ...]
    track_ids: tuple[int | None, ...]
    views: int


@dataclass(frozen=True)
class MatchRecord:
    """A track's fused probe matched against the list (told to the pipeline's ``on_match``)."""

    track_id: int
    frame_seq: int
    t: float
    box: tuple[float, float, float, float]
    subject_id: str
    score: float
    threshold: float
    embeds: int
    alerted: bool


@dataclass(frozen=True)
class EmbedResult:
    job: EmbedJob
    embedding: np.ndarray | None = field(repr=False)
    quality: Quality | None
    chip: np.ndarray | None = field(repr=False)
    seconds: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class AlertJob:
    match: Match
    live: Any                     # edge.watchlist.unit.LoadedList in force when the match was made
    track_id: int
    first_seen_wall: float
    crop: np.ndarray = field(repr=False)
    context: np.ndarray = field(repr=False)   # the scene around the face, every other face already blurred
    frame_seq: int
    t: float
    captured: float
    box: tuple[float, float, float, float]
    first_seen_t: float


@dataclass(frozen=True)
class AlertEvent:
    """One alert raised (told to ``on_alert``; carries no image)."""

    event_id: str
    subject_id: str
    category: str
    score: float
    threshold: float
    margin: float
    track_id: int
    t: float                      # source time of the frame that produced the match
    first_seen_t: float
    frame_seq: int
    box: tuple[float, float, float, float]
    outbox_seq: int | None
    capture_to_alert_s: float


# --------------------------------------------------------------------------------------
# Work board: the bounded frame queue and the embedding jobs
# --------------------------------------------------------------------------------------


class WorkBoard:
    """Frames waiting for a worker (bounded; drop-oldest or blocking) and embedding jobs
    (bounded; refused when full), behind one condition so a worker waits on both at once.
    ``max_in_flight`` bounds the frames taken and not yet done (:meth:`frame_done`), so frames
    cannot pile up between the workers and a coordinator that falls behind.

    ``take()`` returns ``("job", job)`` (jobs first), ``("frame", pick, frame)`` with ``pick``
    counting frames in the order they were taken, or None once stopped and empty.
    """

    def __init__(self, max_frames: int, max_jobs: int, drop_oldest: bool = True, max_in_flight: int = 0):
        self.max_frames = max(1, int(max_frames))
        self.max_jobs = max(1, int(max_jobs))
        self.max_in_flight = int(max_in_flight)  # 0 = unlimited
        self.in_flight = 0
        self.drop_oldest = drop_oldest
        self._frames: collections.deque = collections.deque()
        self._jobs: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self.frames_closed = False
        self.stopped = False
        self.dropped = 0
        self.picks = 0
        self.jobs_refused = 0

    def put_frame(self, frame) -> bool:
        """Queue a frame; False if the board no longer takes frames."""
        with self._cond:
            if self.frames_closed or self.stopped:
                return False
            while len(self._frames) >= self.max_frames:
                if self.drop_oldest:
                    self._frames.popleft()
                    self.dropped += 1
                    break
                self._cond.wait(0.5)
                if self.frames_closed or self.stopped:
                    return False
            self._frames.append(frame)
            self._cond.notify()
            return True

    def put_job(self, job) -> bool:
        with self._cond:
            if self.stopped or len(self._jobs) >= self.max_jobs:
                self.jobs_refused += 1
                return False
            self._jobs.append(job)
            self._cond.notify()
            return True

    def take(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._jobs:
                    return ("job", self._jobs.popleft())
                if self._frames and (not self.max_in_flight or self.in_flight < self.max_in_flight):
                    frame = self._frames.popleft()
                    pick = self.picks
                    self.picks += 1
                    self.in_flight += 1
                    self._cond.notify_all()  # a blocked producer may go on
                    return ("frame", pick, frame)
                if self.stopped:
                    return None
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return ("idle",)
                self._cond.wait(wait)

    def frame_done(self) -> None:
        """A taken frame has been dealt with (its detections tracked): room for another."""
        with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def close_frames(self) -> None:
        with self._cond:
            self.frames_closed = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.stopped = True
            self.frames_closed = True
            self._frames.clear()
            self._cond.notify_all()

    @property
    def frame_depth(self) -> int:
        return len(self._frames)

    @property
    def job_depth(self) -> int:
        return len(self._jobs)

    def frames_done(self) -> bool:
        """No frame will ever be taken again."""
        with self._cond:
            return self.frames_closed and not self._frames
