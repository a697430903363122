"""The live pipeline: capture -> bounded queue -> inference workers -> tracker -> match -> alert.

Threads
    capture      iterates a :class:`~edge.appliance.capture.FrameSource` (decoding happens there) and puts
                 each frame on the :class:`WorkBoard`. The board holds at most
                 ``pipeline.queue_frames`` frames: from a live source the *oldest* waiting frame
                 is dropped (and counted) when it is full, so the unit falls behind by at most a
                 few frames and memory never grows; a file replayed with ``pace: fast`` waits
                 instead, so every frame is processed.
    workers      ``pipeline.workers`` threads, each with its own models. A worker prefers
                 embedding jobs; otherwise it takes the next frame and runs the detector on a
                 few views of it: ``pipeline.scan_views_per_frame`` views of the round-robin
                 scan (whole frame, close-up model, tiles), plus a region around the predicted
                 position of every live track. Embedding jobs run landmarks -> alignment ->
                 quality gate -> embedding on one detection.
    coordinator  puts detection results back in frame order, updates the
                 :class:`~edge.appliance.track.Tracker`, queues the embedding jobs the tracker asks for,
                 fuses each track's embeddings (``fuse_embeddings``, in the tracker), matches the
                 fused probe against the live watchlist and decides alerts.
    alerter      builds each alert (:func:`edge.alerts.message.build_alert`) and hands it to the sink
                 (the durable outbox, published by :class:`~edge.alerts.publisher.AlertPublisher`).

Privacy: frames, crops and embeddings of faces that do not match live only in memory, in
objects dropped once processed (a track's crop and embeddings go when the track ends). Nothing
is logged about a face. The only thing written is what the sink writes: alerts about matches.

Measured: per-stage latency (bounded sample windows), frames per second, queue depth and
dropped frames, capture-to-alert latency; :meth:`Pipeline.health` and :meth:`Pipeline.report`.
"""
from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from edge.alerts import message as alerts
from edge.alerts import schema as message_schema
from edge.appliance.board import (AlertEvent, AlertJob, DetectResult, EmbedJob, EmbedResult, Frame, FrameRecord,
                                  MatchRecord, WorkBoard, embed_job)
from edge.appliance.metrics import RateMeter, StageTimes, read_cpu_temperature
from edge.appliance.context import context_image
from edge.appliance.preview import preview_boxes
from edge.appliance.track import Tracker, TrackParams, quality_weight
from edge.errors import EdgeError
from edge.recognition.quality import assess
from edge.types import Detection

log = logging.getLogger(__name__)

#: Frames a worker may take beyond one per worker before the coordinator has tracked the older
#: ones: enough that a worker finishing a frame finds the next one waiting, few enough that the
#: track predictions the workers search around are at most this many frames old.
FRAMES_AHEAD = 2
#: Alerts waiting for the alerter thread. A full queue makes the coordinator wait (frame intake
#: slows, the oldest frames drop and are counted): a matched alert is never dropped here.
ALERT_QUEUE_SIZE = 256
#: How often a waiting thread looks up to see whether the run is stopping (seconds).
POLL_SECONDS = 0.25
#: Window of the frames-per-second figure in health and status (seconds).
FPS_WINDOW_SECONDS = 5.0
#: How long wait() gives each thread to finish once the run has ended (seconds).
JOIN_SECONDS = 5.0



def _shifted(det: Detection, dx: float, dy: float) -> Detection:
    x0, y0, x1, y1 = det.box
    return Detection((x0 - dx, y0 - dy, x1 - dx, y1 - dy), det.score,
                     det.keypoints - np.array([dx, dy], np.float32))

# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------
# Alert sinks
# --------------------------------------------------------------------------------------


class OutboxSink:
    """Commits alerts to an :class:`~edge.alerts.outbox.Outbox` (replays and benches without a broker;
    the service uses :meth:`AlertPublisher.submit`, which does the same and then publishes)."""

    def __init__(self, outbox, max_image_bytes: int, max_context_bytes: int | None = None):
        self.outbox = outbox
        self.max_image_bytes = max_image_bytes
        self.max_context_bytes = (max_context_bytes if max_context_bytes is not None
                                  else message_schema.MAX_IMAGE_BYTES_LIMIT)

    def __call__(self, alert: Mapping[str, Any]) -> int:
        message_schema.validate_alert(alert, self.max_image_bytes, self.max_context_bytes)
        return self.outbox.enqueue(alert["event_id"], alerts.encode(alert))

    def stats(self) -> dict:
        return {"outbox_pending": self.outbox.pending_count()}


def _placeholder_reference() -> np.ndarray:
    """Shown beside the probe when a bundle carries no thumbnail for the subject."""
    img = np.full((112, 112, 3), 200, np.uint8)
    img[::8, :] = 150
    return img


# --------------------------------------------------------------------------------------
# Detection planning
# --------------------------------------------------------------------------------------


def roi_view(box, scale: float, width: int, height: int, min_side: int = 48) -> tuple[int, int, int, int] | None:
    """The square search region around a predicted face box, clipped to the frame."""
    x0, y0, x1, y1 = box
    side = max(min_side, scale * max(x1 - x0, y1 - y0))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return _square(cx, cy, side, width, height)


def _square(cx: float, cy: float, side: float, width: int, height: int):
    vx0, vy0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    vx1, vy1 = int(min(width, cx + side / 2)), int(min(height, cy + side / 2))
    if vx1 - vx0 < 16 or vy1 - vy0 < 16:
        return None
    return vx0, vy0, vx1, vy1


#: A track's speed is known to about this fraction (two noisy box centres, a walking gait) ...
VELOCITY_REL_ERROR = 0.25
#: ... plus this many face widths per second (box jitter between frames).
VELOCITY_ABS_ERROR = 1.0
#: The short-range model sees a face well while it fills at least ~1/4 of its 128 px input;
#: a wider search region is run with the full-range model (192 px input).
NEAR_MAX_WIDTHS = 4.0


def search_view(st, t: float, scale: float, max_speed: float, width: int, height: int, *,
                max_widths: float = 12.0, min_side: int = 48):
    """Where to look for a tracked face at time ``t``: ``(view, head)`` or None.

    The region is centred on the constant-velocity prediction and grows with what the
    prediction cannot know: the time since the face was last seen (frames in flight while the
    snapshot was taken, frames in which it was missed) times the uncertainty of its speed. A
    track seen once has no velocity yet: any speed up to ``max_speed`` face widths per second
    is possible. A region more than ``NEAR_MAX_WIDTHS`` face widths wide is searched with the
    full-range model ("far"), which sees smaller faces. None when the prediction has left the
    frame, or when the region would need more than ``max_widths`` widths (a face unconfirmed or
    lost for that long is left to the round-robin scan; on the pipeline bench this halved the
    full-range search runs, 156 to 79 in 150 frames)."""
    x0, y0, x1, y1 = st.predict(t)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    if not (0.0 <= cx < width and 0.0 <= cy < height):
        return None                       # predicted to have left the frame: nothing to search
    w = max(x1 - x0, y1 - y0, 1.0)
    dt = max(0.0, t - st.last_seen)
    if getattr(st, "hits", 2) < 2:
        unc = max_speed * w
    else:
        unc = VELOCITY_REL_ERROR * math.hypot(*st.velocity) + VELOCITY_ABS_ERROR * w
    side = scale * w + 2.0 * unc * dt
    if side > max_widths * w:
        return None                       # beyond a search region's reach: the scan cycle finds it again
    side = max(min_side, side)
    view = _square(cx, cy, side, width, height)
    if view is None:
        return None
    return view, ("far" if side > NEAR_MAX_WIDTHS * w else "near")


# --------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------


class Pipeline:
    """Runs a source through detection, tracking, embedding, matching and alerting.

    watchlist: returns the live :class:`~edge.watchlist.unit.LoadedList` or None (then nothing
        matches; the pipeline still runs, tracks and reports).
    sink: ``sink(alert_dict) -> outbox seq``: :meth:`AlertPublisher.submit` or an
        :class:`OutboxSink`; None = alerts are built and told to ``on_alert`` only.
    on_alert: called with an :class:`AlertEvent` for each alert (from the alerter thread).
    recognizers: one :class:`~edge.recognition.api.Recognizer` per worker (:func:`edge.appliance.builder.build_recognizers`).
    max_frames: stop after this many captured frames (0 = until the source ends or ``stop()``).
    keep_events: how many :class:`AlertEvent` to keep in ``events`` (the service keeps none).
    on_frame: called with a :class:`~edge.appliance.board.FrameRecord` for each frame once tracked
        (coordinator thread; rigs write per-frame detections with it, benchmarks score
        detection). Keep it quick.
    on_match: called with a :class:`~edge.appliance.board.MatchRecord` each time a track's fused
        probe is matched (coordinator thread; benchmarks: why a pass was missed).

    Lockstep (``pipeline.lockstep``; by default for a source that waits for the pipeline, i.e. a
    file replayed with ``pace: fast``): the result does not depend on thread timing. Frame n is
    searched around the tracks as they were after frame n - ``lockstep_lag_frames`` (so at most
    that many frames are detected at once), and the embeddings asked for at frame n join their
    tracks, in the order they were asked for, just before frame n + ``lockstep_embed_frames`` is
    tracked (the coordinator waits for them). Nothing is refused for a full queue.
    """

    def __init__(self, config, source, *, watchlist: Callable[[], Any] = lambda: None,
                 sink: Callable[[Mapping[str, Any]], int] | None = None, unit_id: str | None = None,
                 on_alert: Callable[[AlertEvent], None] | None = None, recognizers=None,
                 outbox_stats: Callable[[], Mapping[str, Any]] | None = None, max_frames: int = 0,
                 drop_oldest: bool | None = None, keep_events: int = 10_000,
                 on_frame: Callable[[FrameRecord], None] | None = None,
                 on_match: Callable[[MatchRecord], None] | None = None):
        self.cfg = config
        self.source = source
        self.watchlist = watchlist
        self.sink = sink
        self.unit_id = unit_id if unit_id is not None else (config.unit.id or "unit")
        self.on_alert = on_alert
        self.outbox_stats = outbox_stats
        self.max_frames = int(max_frames)
        pc = config.pipeline
        if not recognizers:
            raise ValueError("Pipeline needs its recognizers (edge.appliance.builder.build_recognizers)")
        self.recognizers = list(recognizers)
        self.tracker = Tracker(TrackParams.from_config(config))
        live = getattr(source, "live", True) if drop_oldest is None else drop_oldest
        self.lockstep = pc.lockstep == "on" or (pc.lockstep == "auto" and not live)
        self.lag = int(pc.lockstep_lag_frames)
        self.embed_lag = int(pc.lockstep_embed_frames)
        self.board = WorkBoard(pc.queue_frames, (1 << 30) if self.lockstep else pc.max_embed_queue, drop_oldest=live,
                               max_in_flight=self.lag if self.lockstep else len(self.recognizers) + FRAMES_AHEAD)
        self.on_frame = on_frame
        self.on_match = on_match
        self.times = StageTimes()
        self.fps = RateMeter(FPS_WINDOW_SECONDS)
        self.gated: collections.Counter = collections.Counter()
        self.tally: collections.Counter = collections.Counter()   # events by name; see counts()
        self.events: list[AlertEvent] = []        # the first ``keep_events`` alerts raised (rigs, tests)
        self.keep_events = int(keep_events)
        self._results: queue.Queue = queue.Queue()
        self._alerts: queue.Queue = queue.Queue(maxsize=ALERT_QUEUE_SIZE)
        self._snapshot: tuple = ()
        self._snapshots: dict[int, tuple] = {}   # lockstep: pick -> tracker snapshot after that frame
        self._job_seq = 0
        self._stop = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.finished_at = 0.0
        self.frames_captured = 0
        self.frames_processed = 0
        self.last_progress = time.monotonic()
        self.first_frame = threading.Event()
        self._lock = threading.Lock()
        self._scan_cache: dict = {}
        self.preview = None  # edge.appliance.preview.PreviewServer (the operator's screen), set by the service

    # -- control -----------------------------------------------------------------------------

    def start(self) -> "Pipeline":
        self.started_at = time.monotonic()
        self.last_progress = self.started_at
        self._threads = [threading.Thread(target=self._guard(self._capture), name="edge-capture", daemon=True),
                         threading.Thread(target=self._guard(self._coordinate), name="edge-track", daemon=True),
                         threading.Thread(target=self._guard(self._alerter), name="edge-alert", daemon=True)]
        for i, rec in enumerate(self.recognizers):
            self._threads.append(threading.Thread(target=self._guard(self._worker, rec), name=f"edge-infer-{i}",
                                                  daemon=True))
        for t in self._threads:
            t.start()
        return self

    def _guard(self, fn, *args):
        def run():
            try:
                fn(*args)
            except BaseException as exc:  # a dead thread must end the run, not hang it
                log.exception("pipeline thread %s failed", threading.current_thread().name)
                with self._lock:
                    if self.error is None:
                        self.error = exc
                self._abort()
        return run

    def _abort(self) -> None:
        self._done.set()
        self._stop.set()
        try:
            self.source.close()
        except Exception:  # pragma: no cover - best effort
            pass
        self.board.stop()
        try:
            self._alerts.put_nowait(None)
        except queue.Full:
            pass
        self._results.put(None)

    def stop(self) -> None:
        """Stop capturing; frames already taken are finished, then every thread ends."""
        self._stop.set()
        try:
            self.source.close()
        except Exception:  # pragma: no cover
            pass
        self.board.close_frames()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the run to end; True if it did. Re-raises a thread's failure."""
        ok = self._done.wait(timeout)
        if ok:
            for t in self._threads:
                t.join(JOIN_SECONDS)
        if self.error is not None:
            err = self.error
            if isinstance(err, EdgeError):
                raise err
            raise RuntimeError(f"pipeline failed: {err!r}") from err
        return ok

    def run(self) -> dict:
        """start(), wait until the source ends, return :meth:`report`."""
        self.start()
        try:
            self.wait()
        except BaseException:
            self.stop()
            raise
        return self.report()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    # -- capture -----------------------------------------------------------------------------

    def _capture(self) -> None:
        seq = 0
        it = iter(self.source.frames())
        try:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    t, image = next(it)
                except StopIteration:
                    break
                now = time.monotonic()
                self.times.add("capture", now - t0)
                frame = Frame(seq, float(t), now, time.time(), image)
                if not self.board.put_frame(frame):
                    break
                seq += 1
                self.frames_captured = seq
                if self.max_frames and seq >= self.max_frames:
                    break
        finally:
            self.board.close_frames()
            self._results.put(("wake",))
            try:
                self.source.close()
            except Exception:  # pragma: no cover
                pass

    # -- workers -----------------------------------------------------------------------------

    def _scan_runs(self, rec, width: int, height: int, pick: int) -> list:
        key = (id(rec), width, height)
        cycle = self._scan_cache.get(key)
        if cycle is None:
            cycle = self._scan_cache[key] = rec.detector.scan_cycle(width, height)
        k = self.cfg.pipeline.scan_views_per_frame
        if k >= len(cycle):
            return list(cycle)
        return [cycle[(pick * k + j) % len(cycle)] for j in range(k)]

    def _worker(self, rec) -> None:
        q = self.cfg.quality
        scale = self.cfg.pipeline.roi_scale
        max_speed = self.cfg.track.max_speed
        near_ok = self.cfg.pipeline.roi_model == "short_range" and rec.detector.near is not None
        while True:
            item = self.board.take(timeout=POLL_SECONDS)
            if item is None:
                return
            kind = item[0]
            if kind == "idle":
                continue
            if kind == "frame":
                _, pick, frame = item
                t0 = time.monotonic()
                self.times.add("queue_wait", t0 - frame.captured)
                h, w = frame.image.shape[:2]
                runs = self._scan_runs(rec, w, h, pick)
                snap = self._snapshots.get(pick - self.lag, ()) if self.lockstep else self._snapshot
                for st in snap:
                    sv = search_view(st, frame.t, scale, max_speed, w, h)
                    if sv is not None:
                        runs.append((sv[0], sv[1] if near_ok else "far"))
                err = None
                try:
                    dets = tuple(rec.detector.detect_views(frame.image, runs))
                except Exception as exc:  # one bad frame must not stop the unit
                    dets, err = (), f"{type(exc).__name__}: {exc}"
                dt = time.monotonic() - t0
                self.times.add("detect", dt)
                self._results.put(DetectResult(pick, frame, dets, dt, len(runs), err))
            else:
                job: EmbedJob = item[1]
                self._results.put(self._embed(rec, job, q))

    def _embed(self, rec, job: EmbedJob, q) -> EmbedResult:
        det = _shifted(job.request.detection, *job.offset)
        image = job.patch
        secs = {}
        try:
            t0 = time.monotonic()
            points = rec.alignment_points(image, det)
            t1 = time.monotonic()
            chip = rec.aligner.chip(image, det, points)
            t2 = time.monotonic()
            quality = assess(det, chip, q.min_interocular_px, q.min_sharpness, q.max_abs_yaw_deg)
            t3 = time.monotonic()
            secs.update(landmarks=t1 - t0, align=t2 - t1, quality=t3 - t2)
            if not quality.passed:
                return EmbedResult(job, None, quality, None, secs)
            vec = rec.embedder.embed(chip)[0]
            secs["embed"] = time.monotonic() - t3
            return EmbedResult(job, vec, quality, chip, secs)
        except Exception as exc:
            return EmbedResult(job, None, None, None, secs, f"{type(exc).__name__}: {exc}")

    # -- coordinator -------------------------------------------------------------------------

    def _coordinate(self) -> None:
        if self.lockstep:
            self._coordinate_lockstep()
        else:
            self._coordinate_live()
        self.tracker.end_all()
        self._snapshot = ()
        self._snapshots.clear()
        self.board.stop()
        self._alerts.put(None)

    def _next_result(self):
        """The next worker result; ``("wake",)`` after POLL_SECONDS of quiet (so the coordinator
        looks at the board); None once the run is aborted."""
        try:
            return self._results.get(timeout=POLL_SECONDS)
        except queue.Empty:
            return ("wake",)

    def _coordinate_live(self) -> None:
        pending: dict[int, DetectResult] = {}
        expected = 0
        outstanding = 0
        while True:
            item = self._next_result()
            if item is None:
                break
            if isinstance(item, DetectResult):
                pending[item.pick] = item
                while expected in pending:
                    outstanding += len(self._on_frame(pending.pop(expected)))
                    expected += 1
            elif isinstance(item, EmbedResult):
                outstanding -= 1
                self._on_embedding(item)
            if (self.board.frames_done() and expected == self.board.picks and not pending
                    and outstanding <= 0 and self.board.job_depth == 0):
                break

    def _coordinate_lockstep(self) -> None:
        """Frames in order; the embeddings asked for at frame n applied, in the order asked,
        right before frame n + embed_lag (waiting for them): the same run whatever the timing."""
        pending: dict[int, DetectResult] = {}
        issued: collections.deque = collections.deque()   # (pick, [job ids]) in issue order
        results: dict[int, EmbedResult] = {}
        expected = 0

        def apply_through(limit: float) -> bool:
            """Apply the results of jobs issued at frames <= limit, in order; False if one is missing."""
            while issued and issued[0][0] <= limit:
                ids = issued[0][1]
                if any(i not in results for i in ids):
                    return False
                for i in ids:
                    self._on_embedding(results.pop(i))
                issued.popleft()
            return True

        while True:
            item = self._next_result()
            if item is None:
                return
            if isinstance(item, DetectResult):
                pending[item.pick] = item
            elif isinstance(item, EmbedResult):
                results[item.job.job_id] = item
            while expected in pending and apply_through(expected - self.embed_lag):
                ids = self._on_frame(pending.pop(expected))
                if ids:
                    issued.append((expected, ids))
                expected += 1
            if self.board.frames_done() and expected == self.board.picks and not pending:
                if apply_through(math.inf) and not issued:
                    return

    def _on_frame(self, r: DetectResult) -> list[int]:
        """Track one frame's detections; queue the embedding jobs asked for (their ids)."""
        t0 = time.monotonic()
        if r.error:
            self.tally["detect_errors"] += 1
            if self.tally["detect_errors"] <= 3:
                log.error("detection failed on frame %d: %s", r.frame.seq, r.error)
        upd = self.tracker.update(r.frame.t, r.detections)
        snap = self.tracker.snapshot()
        if self.lockstep:
            self._snapshots[r.pick] = snap
            self._snapshots.pop(r.pick - self.lag, None)  # its frame (pick) has been searched
        self._snapshot = snap
        self.board.frame_done()  # after the snapshot: the frame it lets in may need it
        if self.on_frame is not None:
            try:
                by_det = {di: k for k, di in upd.assigned}
                ids = tuple(self.tracker.track_id(by_det[i]) if i in by_det else None
                            for i in range(len(r.detections)))
                self.on_frame(FrameRecord(r.frame.seq, r.frame.t, r.detections, ids, r.views))
            except Exception:
                log.exception("on_frame hook failed")
        if self.preview is not None:  # every face not a current match is blurred there (edge/appliance/preview.py)
            self.preview.update(r.frame.image, preview_boxes(r.detections, self._snapshot))
        queued = []
        faces = tuple(b.box for b in preview_boxes(r.detections, self._snapshot)) if upd.embed_requests else ()
        for req in upd.embed_requests:
            job_id = self._job_seq
            self._job_seq += 1
            if self.board.put_job(embed_job(req, r.frame, faces, job_id)):
                queued.append(job_id)
            else:
                self.tracker.embed_failed(req.key)
                self.tally["embed_jobs_refused"] += 1
        now = time.monotonic()
        self.times.add("track", now - t0)
        self.times.add("frame_latency", now - r.frame.captured)
        self.tally["detections"] += len(r.detections)
        self.tally["views"] += r.views
        self.frames_processed += 1
        self.fps.tick(now)
        self.last_progress = now
        if not self.first_frame.is_set():
            self.first_frame.set()
        return queued

    def _on_embedding(self, r: EmbedResult) -> None:
        for k, v in r.seconds.items():
            self.times.add(k, v)
        req = r.job.request
        if r.embedding is None:
            self.tracker.embed_failed(req.key)
            if r.error:
                self.tally["embed_errors"] += 1
                if self.tally["embed_errors"] <= 3:
                    log.error("embedding failed: %s", r.error)
            elif r.quality is not None:
                self.gated[r.quality.reason] += 1
            return
        frame = r.job.frame
        out = self.tracker.add_embedding(req.key, r.embedding, quality_weight(r.quality), frame.t, r.chip,
                                         req.prescore)
        if out is None:
            return
        live = self.watchlist()
        if live is None:
            self.tally["unmatched_no_list"] += 1
            return
        t0 = time.monotonic()
        m = live.matcher.match(out.probe, views=out.embeds, spread=out.spread)
        self.times.add("match", time.monotonic() - t0)
        self.tracker.note_match(req.key, float(m.score), float(m.threshold))
        alert = m.is_hit and self.tracker.should_alert(req.key, m.subject_id, frame.t)
        if self.on_match is not None:
            try:
                self.on_match(MatchRecord(out.track_id, frame.seq, frame.t, tuple(req.detection.box), m.subject_id,
                                          float(m.score), float(m.threshold), out.embeds, alert))
            except Exception:
                log.exception("on_match hook failed")
        if not alert:
            return
        first_t = self.tracker.first_seen(req.key)
        first_t = frame.t if first_t is None else first_t
        crop = self.tracker.crop(req.key)
        try:   # every other face blurred here, before the image leaves this thread (edge/appliance/context.py)
            scene = context_image(r.job.patch, r.job.offset, req.detection.box, r.job.faces, r.job.frame_size)
        except ValueError as exc:  # pragma: no cover - the patch always holds the face
            log.error("no context image for track %d: %s", out.track_id, exc)
            scene = crop if crop is not None else r.chip
        job = AlertJob(m, live, out.track_id, frame.wall - max(0.0, frame.t - first_t),
                       crop if crop is not None else r.chip, scene, frame.seq, frame.t, frame.captured,
                       tuple(req.detection.box), first_t)
        self.hand_off(job)

    def hand_off(self, job: AlertJob) -> None:
        """Give a matched alert to the alerter thread, waiting as long as it takes: an alert, once
        matched, reaches the sink (the outbox) or the run fails. Only a run that is already
        failing (a thread died) gives up, and then says so."""
        waited = 0.0
        while True:
            try:
                self._alerts.put(job, timeout=POLL_SECONDS)
                break
            except queue.Full:
                if self._done.is_set():
                    self.tally["alerts_lost_failed_run"] += 1
                    log.error("the pipeline is failing: an alert (track %d) could not be handed on", job.track_id)
                    return
                waited += POLL_SECONDS
                if waited == JOIN_SECONDS:
                    log.warning("the alerter has taken no alert for %.0f s (a slow sink?); waiting", waited)
        if waited:
            self.tally["alert_hand_off_waits"] += 1

    # -- alerts ------------------------------------------------------------------------------

    def _alerter(self) -> None:
        max_bytes = int(self.cfg.outbox.max_crop_bytes)
        max_context = int(self.cfg.outbox.max_context_bytes)
        while True:
            job = self._alerts.get()
            if job is None:
                break
            t0 = time.monotonic()
            m = job.live.manifest
            ctx = alerts.AlertContext(self.unit_id, m.operation_id, m.bundle_id, m.serial, m.model_sha256)
            try:
                ref = job.live.thumbnail(job.match.subject_id)
            except Exception:
                ref = None
            try:
                a = alerts.build_alert(job.match, ctx, track_id=job.track_id, first_seen=job.first_seen_wall,
                                       probe_crop=job.crop, reference=ref if ref else _placeholder_reference(),
                                       max_image_bytes=max_bytes, context_image=job.context,
                                       max_context_bytes=max_context, calibrated=job.live.matcher.meaning(job.match))
                seq = self.sink(a) if self.sink is not None else None
            except EdgeError as exc:
                self.tally["alerts_failed"] += 1
                log.error("an alert (track %d) was not committed: %s", job.track_id, exc)
                continue
            now = time.monotonic()
            self.times.add("alert", now - t0)
            latency = now - job.captured
            self.times.add("capture_to_alert", latency)
            self.tally["alerts"] += 1
            ev = AlertEvent(a["event_id"], job.match.subject_id, job.match.category, job.match.score,
                            job.match.threshold, job.match.margin, job.track_id, job.t, job.first_seen_t,
                            job.frame_seq, job.box, seq, latency)
            if len(self.events) < self.keep_events:
                self.events.append(ev)
            # the alert itself is in the outbox; the log only says that one was raised
            log.info("alert raised: event %s (%s), track %d", ev.event_id, ev.category, ev.track_id)
            if self.on_alert is not None:
                try:
                    self.on_alert(ev)
                except Exception:
                    log.exception("on_alert hook failed")
        self.finished_at = time.monotonic()
        self._done.set()

    # -- figures -----------------------------------------------------------------------------

    def health(self) -> dict:
        """For :class:`AlertPublisher`'s health message and the status line."""
        live = None
        try:
            live = self.watchlist()
        except Exception:  # pragma: no cover - the provider is ours
            pass
        out = {"fps": round(self.fps.rate(), 2), "queue_depth": self.board.frame_depth,
               "dropped_frames": self.board.dropped, "frames": self.frames_processed,
               "tracks": len(self.tracker.tracks), "alerts": self.tally["alerts"],
               "bundle_id": live.manifest.bundle_id if live is not None else None,
               "bundle_expires_at": float(live.manifest.valid_until) if live is not None else None,
               "cpu_temp_c": read_cpu_temperature()}
        if self.outbox_stats is not None:
            try:
                out["outbox_pending"] = self.outbox_stats().get("outbox_pending")
            except Exception:
                out["outbox_pending"] = None
        return out

    def counts(self) -> dict:
        """Cumulative counts of this run, numbers only (the audit log's ``counts`` entries): frames
        processed, faces (tracks started: each person passing by counted once), embeddings, faces
        gated by the quality gate by reason, alerts, dropped frames. Safe from any thread."""
        # copying a dict is one step under the GIL: no torn read while the threads count on
        tracker, gated, tally = dict(self.tracker.counts), dict(self.gated), dict(self.tally)
        return {"frames": int(self.frames_processed), "faces": int(tracker.get("tracks", 0)),
                "embeddings": int(tracker.get("embeddings", 0)), "gated": {str(k): int(v) for k, v in gated.items()},
                "alerts": int(tally.get("alerts", 0)), "dropped_frames": int(self.board.dropped)}

    def status_line(self) -> str:
        h = self.health()
        bundle = h["bundle_id"] or "none loaded (nothing can match)"
        temp = "n/a" if h["cpu_temp_c"] is None else f"{h['cpu_temp_c']:.1f} C"
        return (f"{h['fps']:.1f} fps, queue {h['queue_depth']}, dropped {h['dropped_frames']}, tracks {h['tracks']}, "
                f"alerts {h['alerts']}, outbox {h.get('outbox_pending', 'n/a')}, watchlist {bundle}, cpu {temp}")

    def report(self) -> dict:
        end = self.finished_at or time.monotonic()
        elapsed = max(end - self.started_at, 1e-9)
        return {"frames_captured": self.frames_captured, "frames_processed": self.frames_processed,
                "dropped_frames": self.board.dropped, "seconds": round(elapsed, 3),
                "fps": round(self.frames_processed / elapsed, 2), "workers": len(self.recognizers),
                "lockstep": self.lockstep,
                "alerts": self.tally["alerts"], "tracks": self.tracker.counts["tracks"],
                "tracker": dict(self.tracker.counts), "gated": dict(self.gated),
                "counts": dict(self.tally), "views_per_frame": round(self.tally["views"] / max(1, self.frames_processed), 2),
                "stages": self.times.summary()}
