"""Face tracking: detections across frames -> tracks; which faces to embed; when to alert.

Pure Python/numpy state machine: no models, no threads, no I/O. Time ``t`` is the frame's
source timestamp in seconds (monotonic capture time, or media time in a replay).

Association
    Each live track predicts its box at ``t`` from a constant-velocity model. A detection may
    continue a track when its centre lies within ``max_center_distance`` face widths of the
    prediction and the widths differ by at most ``max_size_ratio``; pairs are scored by box
    overlap (IoU with the prediction) plus closeness, and taken greedily, best first. An
    unmatched detection starts a track; a track unseen for ``max_missed_seconds`` ends.

    Embedding similarity refines this at the track level: an embedding that is not similar
    enough to its track's fused embedding (``same_person_min_similarity``) means two people's
    tracks crossed, and the track is split into a new identity; the first embedding of a new
    track that resembles a track ended less than ``reid_seconds`` ago
    (``reid_min_similarity``) continues that track (same id, its alerts stay raised), so a
    face lost for a moment does not alert twice.

Embedding budget
    A track is embedded once it has ``min_hits`` detections, then again only when a face's
    quality score (eye distance x frontalness x detector score) beats the best embedded one by
    ``min_improvement``, at least ``embed_interval_seconds`` apart, at most ``max_embeds``
    embeddings and ``max_attempts`` attempts (the quality gate may refuse a face). The track's
    probe is :func:`edge.recognition.fusion.fuse_embeddings` of its embeddings weighted by quality.

Verification (hand-over)
    A box can pass from one person to the next: someone steps into the spot another has just
    left, within a frame or two. Once a track's budget is spent (or its quality stops
    improving) nothing would ever look at the face again, and the newcomer would inherit the
    first person's identity and alert state: never embedded, never alerted, and shown as a
    match they are not. So every embedded track is re-embedded at least every
    ``verify_interval_seconds``, and at once when its box jumps (IoU with the prediction below
    ``verify_jump_iou``); the embedding either joins the track (the best-weighted
    ``max_embeds`` are kept) or, when it is another person, splits the track as above.
    Verification is outside ``max_attempts``; its cost is one embedding per track per interval.

Alerts
    :meth:`Tracker.should_alert` allows one alert per track per subject, and none for a
    subject within ``realert_cooldown_seconds`` of the previous alert for that subject from any
    track: a person walking past for three seconds alerts once, not forty-five times.

Privacy: a track holds at most ``max_embeds`` embeddings and one face crop, in memory; all of
it is dropped when the track ends (ended tracks kept for re-identification hold only their
embeddings, for ``reid_seconds``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edge.recognition.fusion import fuse_embeddings, view_spread
from edge.recognition.quality import interocular_px, yaw_degrees
from edge.types import Detection, Quality


@dataclass(frozen=True)
class TrackParams:
    max_center_distance: float = 1.0
    max_size_ratio: float = 1.6
    max_missed_seconds: float = 0.7
    min_hits: int = 2
    max_embeds: int = 4
    max_attempts: int = 12
    embed_interval_seconds: float = 0.15
    min_improvement: float = 0.15
    same_person_min_similarity: float = 0.92
    reid_seconds: float = 2.0
    reid_min_similarity: float = 0.93
    realert_cooldown_seconds: float = 60.0
    max_tracks: int = 64
    verify_interval_seconds: float = 1.0
    verify_jump_iou: float = 0.3
    max_speed: float = 20.0
    second_look_margin: float = 0.1
    second_look_embeds: int = 4

    @classmethod
    def from_config(cls, cfg) -> "TrackParams":
        return cls(**{k: getattr(cfg.track, k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class EmbedRequest:
    """Embed this detection for this track (``key`` is the track's stable internal key)."""

    key: int
    track_id: int
    detection: Detection
    t: float
    prescore: float
    verify: bool = False               # a check that the track still holds the same person
    second_look: bool = False          # beyond max_embeds: the best candidate was just below threshold


@dataclass(frozen=True)
class TrackState:
    """What the detection planner needs of a live track: where to look next."""

    key: int
    track_id: int
    box: tuple[float, float, float, float]
    velocity: tuple[float, float]  # centre pixels per second
    last_seen: float
    #: subjects this track alerted on (the operator's preview shows it as a match)
    alerted: tuple[str, ...] = ()
    #: the crop that produced the match, only for a track that alerted (shown in place of the face)
    match_crop: np.ndarray | None = field(default=None, repr=False, compare=False)
    hits: int = 2                  #: detections so far (a track seen once has no velocity yet)

    def predict(self, t: float) -> tuple[float, float, float, float]:
        dt = max(0.0, t - self.last_seen)
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        x0, y0, x1, y1 = self.box
        return x0 + dx, y0 + dy, x1 + dx, y1 + dy


@dataclass(frozen=True)
class Update:
    """The result of one :meth:`Tracker.update`."""

    t: float
    assigned: tuple[tuple[int, int], ...]      # (track key, detection index), including new tracks
    started: tuple[int, ...]                   # keys of tracks started by this frame
    ended: tuple[int, ...]                     # keys of tracks that ended
    embed_requests: tuple[EmbedRequest, ...]


@dataclass(frozen=True)
class EmbedOutcome:
    """After an embedding was added: the track's (possibly new) id and its fused probe."""

    key: int
    track_id: int
    probe: np.ndarray = field(repr=False)
    embeds: int
    split_from: int | None = None     # the track id this identity was split from
    continued: int | None = None      # the ended track id this track continues (re-identification)
    spread: float = 0.0               # 1 - mean pairwise cosine of the fused embeddings (0 for one)


def prescore(det: Detection) -> float:
    """Quality of a detection before any chip is made: eye distance x frontalness x score."""
    frontal = max(0.05, math.cos(math.radians(min(90.0, abs(yaw_degrees(det))))))
    return float(interocular_px(det) * frontal * det.score)


#: Eye distance (frame pixels) at which a face gets full weight in its track's fused probe: about a
#: 100 px wide face, from which the 150 px aligned chip is cut with little upsampling. A smaller
#: face's embedding is noisier, so it counts proportionally less (never below MIN_WEIGHT).
FULL_WEIGHT_INTEROCULAR_PX = 40.0
#: No embedding that passed the quality gate counts for nothing in the fused probe.
MIN_WEIGHT = 0.05


def quality_weight(q: Quality) -> float:
    """Fusion weight of an embedded face from its measured quality, in (0, 1]."""
    size = min(1.0, max(MIN_WEIGHT, q.interocular_px / FULL_WEIGHT_INTEROCULAR_PX))
    frontal = max(MIN_WEIGHT, math.cos(math.radians(min(90.0, abs(q.yaw_deg)))))
    return float(size * frontal)


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _likeness(e: np.ndarray, tr: "_Track") -> float:
    """How much a new embedding looks like the track's person: its best cosine with the fused
    probe or any one embedding (a face turning slowly stays close to its latest view)."""
    sims = np.stack(tr.embeddings) @ e if tr.embeddings else np.empty(0, np.float32)
    return float(max(float(e @ tr.fused), float(sims.max(initial=-1.0))))


class _Track:
    __slots__ = ("key", "id", "first_seen", "last_seen", "box", "velocity", "hits", "embeddings", "weights",
                 "fused", "best_prescore", "crop", "crop_weight", "attempts", "pending", "last_attempt",
                 "alerted", "started_at", "suspect", "near_miss", "second_looks")

    def __init__(self, key: int, track_id: int, det: Detection, t: float):
        self.key = key
        self.id = track_id
        self.first_seen = t
        self.last_seen = t
        self.box = tuple(float(v) for v in det.box)
        self.velocity = (0.0, 0.0)
        self.hits = 1
        self.embeddings: list[np.ndarray] = []
        self.weights: list[float] = []
        self.fused: np.ndarray | None = None
        self.best_prescore = 0.0
        self.crop: np.ndarray | None = None
        self.crop_weight = -1.0
        self.attempts = 0
        self.pending = False
        self.last_attempt = -math.inf
        self.alerted: set[str] = set()
        self.suspect = False      # the box jumped: check the face before trusting the identity
        self.near_miss = False    # the last match was below the threshold by at most second_look_margin
        self.second_looks = 0

    def state(self) -> TrackState:
        alerted = tuple(sorted(self.alerted))
        return TrackState(self.key, self.id, self.box, self.velocity, self.last_seen, alerted,
                          self.crop if alerted else None, self.hits)


@dataclass
class _Ended:
    id: int
    first_seen: float
    ended_at: float
    embeddings: list
    weights: list
    fused: np.ndarray
    alerted: set


class Tracker:
    """See the module docstring. ``tracks`` maps internal key -> live track."""

    def __init__(self, params: TrackParams = TrackParams()):
        self.p = params
        self.tracks: dict[int, _Track] = {}
        self._ended: list[_Ended] = []
        self._subject_alerted: dict[str, float] = {}
        self._next_key = 0
        self._next_id = 1
        self.counts = {"tracks": 0, "embed_requests": 0, "embeddings": 0, "splits": 0, "continued": 0,
                       "alerts": 0, "suppressed_cooldown": 0, "suppressed_track": 0, "over_max_tracks": 0,
                       "verifications": 0, "jumps": 0, "second_looks": 0}

    # -- association -------------------------------------------------------------------------

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def snapshot(self) -> tuple[TrackState, ...]:
        """Every live track as an immutable :class:`TrackState`: what the detection planner and the
        operator's preview read (other threads never touch the tracker itself)."""
        return tuple(tr.state() for tr in self.tracks.values())

    def update(self, t: float, detections) -> Update:
        """Associate one frame's detections (any order) with the live tracks."""
        p = self.p
        dets = list(detections)
        live = list(self.tracks.values())
        pairs = []
        for ti, tr in enumerate(live):
            pred = tr.state().predict(t)
            pc = _centre(pred)
            pw = pred[2] - pred[0]
            for di, d in enumerate(dets):
                dw = d.box[2] - d.box[0]
                if pw <= 0 or dw <= 0:
                    continue
                ratio = max(pw, dw) / min(pw, dw)
                if ratio > p.max_size_ratio:
                    continue
                dc = _centre(d.box)
                dist = math.hypot(dc[0] - pc[0], dc[1] - pc[1]) / max(pw, dw)
                reach = p.max_center_distance + self._uncertainty(tr, pw) * max(0.0, t - tr.last_seen)
                if dist > reach:
                    continue
                pairs.append((_iou(pred, d.box) + (1.0 - dist / reach), ti, di))
        pairs.sort(key=lambda x: -x[0])
        used_t, used_d = set(), set()
        assigned = []
        for _, ti, di in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            tr = live[ti]
            d = dets[di]
            if tr.fused is not None and _iou(tr.state().predict(t), d.box) < p.verify_jump_iou:
                tr.suspect = True
                self.counts["jumps"] += 1
            dt = t - tr.last_seen
            if dt > 0:
                oc, nc = _centre(tr.box), _centre(d.box)
                v = ((nc[0] - oc[0]) / dt, (nc[1] - oc[1]) / dt)
                a = 0.5 if tr.hits > 1 else 1.0
                tr.velocity = (a * v[0] + (1 - a) * tr.velocity[0], a * v[1] + (1 - a) * tr.velocity[1])
            tr.box = tuple(float(x) for x in d.box)
            tr.last_seen = t
            tr.hits += 1
            assigned.append((tr.key, di))
        started = []
        for di, d in enumerate(dets):
            if di in used_d:
                continue
            if len(self.tracks) >= p.max_tracks:
                self.counts["over_max_tracks"] += 1
                continue
            key = self._next_key
            self._next_key += 1
            tr = _Track(key, self._new_id(), d, t)
            self.tracks[key] = tr
            self.counts["tracks"] += 1
            started.append(key)
            assigned.append((key, di))
        ended = self._expire(t)
        requests = []
        for key, di in assigned:
            req = self._maybe_request(self.tracks[key], dets[di], t)
            if req is not None:
                requests.append(req)
        return Update(t, tuple(assigned), tuple(started), tuple(ended), tuple(requests))

    def _uncertainty(self, tr: "_Track", width: float) -> float:
        """How far off the prediction may be, in face widths per second since last seen: a track
        seen once has no velocity (any speed up to ``max_speed``); else a quarter of its speed
        plus one width per second (the same model as the pipeline's search regions)."""
        if tr.hits < 2:
            return self.p.max_speed
        return 0.25 * math.hypot(*tr.velocity) / max(width, 1.0) + 1.0

    def _expire(self, t: float) -> list[int]:
        p = self.p
        ended = [k for k, tr in self.tracks.items() if t - tr.last_seen > p.max_missed_seconds]
        for k in ended:
            tr = self.tracks.pop(k)
            if tr.fused is not None and p.reid_seconds > 0:
                self._ended.append(_Ended(tr.id, tr.first_seen, t, tr.embeddings, tr.weights, tr.fused, tr.alerted))
            tr.crop = None  # the face crop goes now; nothing about the face outlives the track
        self._ended = [e for e in self._ended if t - e.ended_at <= p.reid_seconds]
        cool = p.realert_cooldown_seconds
        if len(self._subject_alerted) > 64:
            self._subject_alerted = {s: a for s, a in self._subject_alerted.items() if t - a < cool}
        return ended

    def end_all(self) -> list[int]:
        """End every track (end of a replay)."""
        keys = list(self.tracks)
        for k in keys:
            self.tracks.pop(k).crop = None
        self._ended.clear()
        return keys

    # -- embedding budget --------------------------------------------------------------------

    def _maybe_request(self, tr: _Track, det: Detection, t: float) -> EmbedRequest | None:
        p = self.p
        if tr.pending or tr.hits < p.min_hits or t - tr.last_attempt < p.embed_interval_seconds:
            return None
        score = prescore(det)
        regular = (tr.attempts < p.max_attempts and len(tr.embeddings) < p.max_embeds
                   and (not tr.embeddings or score >= tr.best_prescore * (1.0 + p.min_improvement)))
        # second look: the best candidate was just below the threshold; more views of the face
        # (fused) may settle it. Faces at least as good as the median embedded one, within a budget.
        second = (not regular and tr.near_miss and tr.second_looks < p.second_look_embeds
                  and tr.attempts < p.max_attempts + p.second_look_embeds
                  and score >= 0.5 * tr.best_prescore)
        # a spent or idle track still looks again now and then (for a gated track: a retry)
        verify = not (regular or second) and (tr.suspect or t - tr.last_attempt >= p.verify_interval_seconds)
        if not (regular or second or verify):
            return None
        tr.pending = True
        tr.attempts += 1
        tr.last_attempt = t
        if second:
            tr.second_looks += 1
            self.counts["second_looks"] += 1
        self.counts["embed_requests"] += 1
        self.counts["verifications"] += verify
        return EmbedRequest(tr.key, tr.id, det, t, score, verify, second)

    def embed_failed(self, key: int) -> None:
        """The attempt for this track produced no embedding (gated, or the job was dropped)."""
        tr = self.tracks.get(key)
        if tr is not None:
            tr.pending = False

    def add_embedding(self, key: int, embedding: np.ndarray, weight: float, t: float,
                      crop: np.ndarray | None = None, prescore_value: float = 0.0) -> EmbedOutcome | None:
        """Add one embedding to a live track; returns the track's fused probe (None if the track
        has ended meanwhile: its embedding is dropped with it)."""
        p = self.p
        tr = self.tracks.get(key)
        if tr is None:
            return None
        tr.pending = False
        tr.suspect = False
        e = np.asarray(embedding, np.float32)
        split_from = continued = None
        if tr.fused is not None and _likeness(e, tr) < p.same_person_min_similarity:
            # two people's tracks crossed: what follows is another identity
            split_from = tr.id
            tr.id = self._new_id()
            tr.first_seen = t
            tr.embeddings, tr.weights, tr.fused = [], [], None
            tr.best_prescore, tr.crop, tr.crop_weight = 0.0, None, -1.0
            tr.alerted = set()
            tr.near_miss, tr.second_looks = False, 0
            self.counts["splits"] += 1
        if not tr.embeddings and self._ended:
            sims = [float(e @ old.fused) for old in self._ended]
            best = int(np.argmax(sims))
            if sims[best] >= p.reid_min_similarity:
                old = self._ended.pop(best)
                continued = old.id
                tr.id, tr.first_seen, tr.alerted = old.id, min(old.first_seen, tr.first_seen), set(old.alerted)
                tr.embeddings, tr.weights = list(old.embeddings), list(old.weights)
                self.counts["continued"] += 1
        tr.embeddings.append(e)
        tr.weights.append(max(1e-3, float(weight)))
        keep = p.max_embeds + tr.second_looks
        if len(tr.embeddings) > keep:  # keep the best-weighted (after a verification or continuation)
            order = np.argsort(tr.weights)[::-1][:keep]
            tr.embeddings = [tr.embeddings[i] for i in sorted(order)]
            tr.weights = [tr.weights[i] for i in sorted(order)]
        tr.best_prescore = max(tr.best_prescore, float(prescore_value))
        if crop is not None and weight >= tr.crop_weight:
            tr.crop, tr.crop_weight = crop, float(weight)
        views = np.stack(tr.embeddings)
        tr.fused = fuse_embeddings(views, np.asarray(tr.weights, np.float32))
        self.counts["embeddings"] += 1
        return EmbedOutcome(tr.key, tr.id, tr.fused, len(tr.embeddings), split_from, continued, view_spread(views))

    # -- alerts ------------------------------------------------------------------------------

    def note_match(self, key: int, score: float, threshold: float) -> None:
        """The track's fused probe scored ``score`` for its best candidate against ``threshold``:
        a near miss (below by at most ``second_look_margin``) earns it a second look."""
        tr = self.tracks.get(key)
        if tr is not None:
            tr.near_miss = score < threshold and threshold - score <= self.p.second_look_margin

    def should_alert(self, key: int, subject_id: str, t: float) -> bool:
        """True (and recorded) if this track may alert for this subject now."""
        tr = self.tracks.get(key)
        if tr is None or subject_id in tr.alerted:
            self.counts["suppressed_track"] += tr is not None
            return False
        tr.alerted.add(subject_id)
        last = self._subject_alerted.get(subject_id)
        if last is not None and t - last < self.p.realert_cooldown_seconds:
            self.counts["suppressed_cooldown"] += 1
            return False
        self._subject_alerted[subject_id] = t
        self.counts["alerts"] += 1
        return True

    def crop(self, key: int) -> np.ndarray | None:
        """The best face crop of a live track (for the alert's probe image)."""
        tr = self.tracks.get(key)
        return None if tr is None else tr.crop

    def first_seen(self, key: int) -> float | None:
        tr = self.tracks.get(key)
        return None if tr is None else tr.first_seen

    def track_id(self, key: int) -> int | None:
        tr = self.tracks.get(key)
        return None if tr is None else tr.id
