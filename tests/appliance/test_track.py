"""The tracker alone (pure): association, embedding budget, fusion, one alert per track per
subject, the re-alert cool-down, splits and re-identification. No models, no threads."""
import numpy as np
import pytest

from edge.recognition.fusion import fuse_embeddings
from edge.appliance.track import TrackParams, Tracker, prescore, quality_weight
from edge.types import Detection, Quality


def det(cx, cy, w=80.0, score=0.9):
    """A frontal face box with plausible BlazeFace keypoints."""
    h = w
    kp = np.array([[cx - 0.18 * w, cy - 0.12 * h], [cx + 0.18 * w, cy - 0.12 * h], [cx, cy + 0.05 * h],
                   [cx, cy + 0.25 * h], [cx - 0.45 * w, cy], [cx + 0.45 * w, cy]], np.float32)
    return Detection((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), score, kp)


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def person(seed, dim=128):
    return unit(np.random.default_rng(seed).standard_normal(dim))


def near(e, noise, seed):
    return unit(e + noise * np.random.default_rng(seed).standard_normal(len(e)) / np.sqrt(len(e)))


Q = Quality(interocular_px=30.0, sharpness=50.0, yaw_deg=0.0)


class Walk:
    """A face walking right, frame by frame; ``run(emb)`` answers every embedding request at once
    with an embedding near ``emb`` and alerts whenever the probe matches (cosine >= 0.9)."""

    def __init__(self, tracker, frames=45, fps=15.0, x0=100.0, speed=300.0, y=300.0, w=80.0, t0=0.0, grow=0.0):
        self.tr, self.frames, self.fps, self.x0, self.speed, self.y, self.w, self.t0, self.grow = (
            tracker, frames, fps, x0, speed, y, w, t0, grow)
        self.ups = []

    def run(self, emb=None, subject="S1", seed=0, hits=None) -> int:
        alerts = 0
        for i in range(self.frames):
            t = self.t0 + i / self.fps
            u = self.tr.update(t, [det(self.x0 + self.speed * (t - self.t0), self.y, self.w + self.grow * i)])
            self.ups.append(u)
            if emb is None:
                continue
            for r in u.embed_requests:
                out = self.tr.add_embedding(r.key, near(emb, 0.1, seed + i), quality_weight(Q), r.t,
                                            crop=np.zeros((4, 4, 3), np.uint8), prescore_value=r.prescore)
                if out is not None and float(out.probe @ emb) >= 0.9 and self.tr.should_alert(r.key, subject, r.t):
                    alerts += 1
                    if hits is not None:
                        hits.append((out.track_id, r.t))
        return alerts


def walk(tracker, **kw):
    w = Walk(tracker, **kw)
    w.run()
    return w.ups


def serve(tracker, emb, subject="S1", seed=0, hits=None, **kw):
    return Walk(tracker, **kw).run(emb, subject, seed, hits)


def test_a_face_walking_past_is_one_track():
    tr = Tracker()
    ups = walk(tr)
    ids = {tr.tracks[k].id for u in ups for k, _ in u.assigned if k in tr.tracks}
    assert len(ids) == 1
    assert tr.counts["tracks"] == 1
    assert all(len(u.assigned) == 1 for u in ups)


def test_no_embedding_before_min_hits_and_budget_is_bounded():
    p = TrackParams(min_hits=3, max_embeds=3, max_attempts=5, embed_interval_seconds=0.0, min_improvement=0.0)
    tr = Tracker(p)
    ups = []
    for i in range(60):
        ups.append(tr.update(i / 15, [det(100 + 10 * i, 300, 60 + i)]))  # growing face: quality keeps improving
        for r in ups[-1].embed_requests:
            tr.add_embedding(r.key, person(1), 1.0, r.t, prescore_value=r.prescore)
    first = [i for i, u in enumerate(ups) if u.embed_requests]
    assert first[0] == 2  # the third detection
    regular = [r for u in ups for r in u.embed_requests if not r.verify]
    checks = [r for u in ups for r in u.embed_requests if r.verify]
    assert len(regular) == 3
    # after the budget only the periodic identity check: one per verify_interval (1 s) of 4 s
    assert 1 <= len(checks) <= 4
    assert all(b.t - a.t >= p.verify_interval_seconds - 1e-9 for a, b in zip(checks, checks[1:]))
    assert len(next(iter(tr.tracks.values())).embeddings) == 3


def test_embedding_only_when_quality_improves():
    p = TrackParams(min_hits=1, max_embeds=10, embed_interval_seconds=0.0, min_improvement=0.2)
    tr = Tracker(p)
    n = 0
    for i in range(30):  # constant size and pose: nothing gets better after the first
        for r in tr.update(i / 15, [det(100 + 5 * i, 300, 80)]).embed_requests:
            tr.add_embedding(r.key, person(2), 1.0, r.t, prescore_value=r.prescore)
            n += not r.verify
    assert n == 1
    assert tr.counts["verifications"] == 1  # 2 s: the identity is checked once more after 1 s


def test_gated_attempts_are_retried_within_the_attempt_budget():
    p = TrackParams(min_hits=1, max_attempts=4, embed_interval_seconds=0.0)
    tr = Tracker(p)
    n = 0
    for i in range(30):
        for r in tr.update(i / 15, [det(100 + 5 * i, 300)]).embed_requests:
            tr.embed_failed(r.key)  # e.g. the quality gate said "blurred"
            n += not r.verify
    assert n == 4
    assert tr.counts["verifications"] == 1  # then a slow retry (once a second) in case the face turns


def test_one_alert_per_track_per_subject():
    tr = Tracker(TrackParams(min_hits=1, embed_interval_seconds=0.0, min_improvement=0.0, max_embeds=20))
    emb = person(3)
    hits = []
    assert serve(tr, emb, hits=hits, frames=45, grow=1.0) == 1  # 3 s at 15 fps, many embeddings
    assert tr.counts["embeddings"] > 5
    assert tr.counts["suppressed_track"] > 0


def test_cooldown_across_tracks_and_after_it():
    p = TrackParams(realert_cooldown_seconds=10.0, max_missed_seconds=0.5, reid_seconds=0.0)
    tr = Tracker(p)
    emb = person(4)
    assert serve(tr, emb, t0=0.0) == 1                  # first pass alerts
    assert serve(tr, emb, seed=50, t0=5.0, x0=900) == 0  # second pass within 10 s: suppressed
    assert tr.counts["suppressed_cooldown"] == 1
    assert serve(tr, emb, seed=90, t0=20.0) == 1        # after the cool-down: alerts again
    assert tr.counts["alerts"] == 2


def test_different_subjects_on_one_track_each_alert_once():
    tr = Tracker()
    ups = walk(tr)
    k = ups[0].assigned[0][0]
    assert tr.should_alert(k, "A", 0.1)
    assert tr.should_alert(k, "B", 0.2)
    assert not tr.should_alert(k, "A", 0.3)


def test_probe_is_the_quality_weighted_fusion():
    tr = Tracker(TrackParams(min_hits=1, embed_interval_seconds=0.0, min_improvement=0.0))
    r = tr.update(0.0, [det(100, 100)]).embed_requests[0]
    a, b = person(5), near(person(5), 0.3, 1)
    tr.add_embedding(r.key, a, 0.5, 0.0, prescore_value=1.0)
    r2 = tr.update(0.1, [det(105, 100, 90)]).embed_requests[0]
    out = tr.add_embedding(r2.key, b, 1.0, 0.1, prescore_value=2.0)
    np.testing.assert_allclose(out.probe, fuse_embeddings(np.stack([a, b]), np.array([0.5, 1.0])), atol=1e-6)
    assert out.embeds == 2


def test_association_by_overlap_keeps_two_walkers_apart():
    tr = Tracker()
    for i in range(40):
        t = i / 15
        # two people on parallel paths 150 px apart, walking towards each other's column
        tr.update(t, [det(100 + 200 * t, 300), det(900 - 200 * t, 450)])
    assert tr.counts["tracks"] == 2
    ys = sorted(round((s.box[1] + s.box[3]) / 2) for s in tr.snapshot())
    assert ys == [300, 450]


def test_prediction_follows_a_fast_face_at_low_frame_rate():
    tr = Tracker()
    # 60 px face moving 45 px per frame: boxes barely overlap frame to frame; the
    # constant-velocity prediction keeps the track
    for i in range(30):
        tr.update(i / 10, [det(100 + 45 * i, 300, 60)])
    assert tr.counts["tracks"] == 1


def test_a_face_far_from_any_prediction_starts_a_new_track():
    tr = Tracker()
    tr.update(0.0, [det(100, 100)])
    tr.update(0.07, [det(100, 100)])
    tr.update(0.13, [det(1000, 600)])
    assert tr.counts["tracks"] == 2


def test_size_change_beyond_ratio_is_not_the_same_face():
    tr = Tracker(TrackParams(max_size_ratio=1.5))
    tr.update(0.0, [det(300, 300, 60)])
    tr.update(0.07, [det(300, 300, 150)])
    assert tr.counts["tracks"] == 2


def test_track_ends_after_missing_and_drops_its_faces():
    p = TrackParams(max_missed_seconds=0.5, min_hits=1, reid_seconds=1.0)
    tr = Tracker(p)
    r = tr.update(0.0, [det(100, 100)]).embed_requests[0]
    tr.add_embedding(r.key, person(6), 1.0, 0.0, crop=np.ones((4, 4, 3), np.uint8))
    assert tr.crop(r.key) is not None
    u = tr.update(0.6, [])
    assert u.ended == (r.key,) and not tr.tracks
    assert tr.crop(r.key) is None
    assert len(tr._ended) == 1                  # kept for re-identification: embeddings only
    tr.update(2.0, [])
    assert tr._ended == []                      # and dropped after reid_seconds


def test_embedding_of_another_person_splits_the_track():
    tr = Tracker(TrackParams(min_hits=1, embed_interval_seconds=0.0, min_improvement=0.0))
    r = tr.update(0.0, [det(100, 100)]).embed_requests[0]
    first = tr.add_embedding(r.key, person(7), 1.0, 0.0, prescore_value=1.0)
    assert tr.should_alert(r.key, "S7", 0.0)
    r2 = tr.update(0.1, [det(104, 100, 90)]).embed_requests[0]
    out = tr.add_embedding(r2.key, person(8), 1.0, 0.1, prescore_value=2.0)  # someone else now
    assert out.split_from == first.track_id and out.track_id != first.track_id
    assert out.embeds == 1
    assert tr.should_alert(r2.key, "S8", 0.2)  # a new identity with its own alert state
    assert tr.counts["splits"] == 1


def test_a_face_lost_for_a_moment_continues_its_track_and_does_not_alert_twice():
    p = TrackParams(min_hits=1, max_missed_seconds=0.3, reid_seconds=2.0, realert_cooldown_seconds=0.0,
                    embed_interval_seconds=0.0)
    tr = Tracker(p)
    emb = person(9)
    assert serve(tr, emb, frames=10, fps=15) == 1
    old_id = next(iter(tr.tracks.values())).id
    tr.update(1.2, [])                       # occluded: the track ends
    assert not tr.tracks
    # reappears elsewhere, within reid_seconds; no cool-down here: re-identification stops a 2nd alert
    assert serve(tr, emb, seed=300, frames=10, t0=1.5, x0=700) == 0
    assert tr.counts["continued"] == 1
    assert next(iter(tr.tracks.values())).id == old_id


def test_someone_else_after_a_lost_track_is_not_continued():
    p = TrackParams(min_hits=1, max_missed_seconds=0.3, reid_seconds=2.0)
    tr = Tracker(p)
    serve(tr, person(10), frames=5)
    tr.update(1.0, [])
    serve(tr, person(11), subject="S2", frames=5, t0=1.2)
    assert tr.counts["continued"] == 0


def test_max_tracks_bounds_memory():
    tr = Tracker(TrackParams(max_tracks=3))
    tr.update(0.0, [det(100 + 200 * i, 300) for i in range(6)])
    assert len(tr.tracks) == 3
    assert tr.counts["over_max_tracks"] == 3


def test_results_for_an_ended_track_are_dropped():
    tr = Tracker(TrackParams(min_hits=1, max_missed_seconds=0.2))
    r = tr.update(0.0, [det(100, 100)]).embed_requests[0]
    tr.update(1.0, [])
    assert tr.add_embedding(r.key, person(12), 1.0, 1.0) is None
    assert tr.should_alert(r.key, "S", 1.0) is False


def test_prescore_prefers_big_frontal_sharp_detections():
    assert prescore(det(0, 0, 120)) > prescore(det(0, 0, 60))
    turned = det(0, 0, 80)
    kp = turned.keypoints.copy()
    kp[2, 0] += 25  # nose towards one ear: a turned head
    assert prescore(Detection(turned.box, turned.score, kp)) < prescore(turned)
    assert 0 < quality_weight(Quality(10.0, 5.0, 60.0)) < quality_weight(Q) <= 1.0


@pytest.mark.parametrize("fps", [5, 15, 30])
def test_three_second_pass_gives_one_alert_at_any_frame_rate(fps):
    tr = Tracker()
    emb = person(13)
    assert serve(tr, emb, frames=3 * fps, fps=fps, speed=300.0, grow=30.0 / fps) == 1
    assert tr.counts["tracks"] == 1
    assert len(next(iter(tr.tracks.values())).embeddings) <= TrackParams().max_embeds
    assert tr.counts["embed_requests"] <= TrackParams().max_embeds + 3  # + one identity check a second


def _stand(tr, t0, t1, fps, emb, subject, box=(400, 300, 90), seed=0, alerts=None):
    """Someone standing still at ``box`` from t0 to t1, every request answered at once."""
    for i in range(int(round((t1 - t0) * fps))):
        t = t0 + i / fps
        for r in tr.update(t, [det(*box)]).embed_requests:
            out = tr.add_embedding(r.key, near(emb, 0.1, seed + i), quality_weight(Q), t,
                                   crop=np.full((4, 4, 3), seed % 255, np.uint8), prescore_value=r.prescore)
            if out is not None and float(out.probe @ emb) >= 0.9 and tr.should_alert(r.key, subject, t):
                alerts.append((subject, out.track_id, t))


def test_someone_stepping_into_the_spot_another_left_is_a_new_person():
    # A stands at a spot long enough to spend the budget, then B takes exactly the same spot
    # within one frame: the box never breaks, so only the face can tell
    tr = Tracker()
    alerts = []
    a, b = person(20), person(21)
    _stand(tr, 0.0, 4.0, 15, a, "SA", seed=1, alerts=alerts)
    key = next(iter(tr.tracks))
    a_id = tr.track_id(key)
    assert alerts == [("SA", a_id, alerts[0][2])]
    _stand(tr, 4.0, 7.0, 15, b, "SB", seed=101, alerts=alerts)
    assert tr.counts["splits"] == 1
    assert len(alerts) == 2
    subject, b_id, t_b = alerts[1]
    assert subject == "SB" and b_id != a_id                    # B alerts as B, on a new identity
    assert t_b - 4.0 <= TrackParams().verify_interval_seconds + 0.15
    assert float(tr.tracks[key].fused @ a) < 0.5                # nothing of A is left in the probe
    assert tr.crop(key)[0, 0, 0] != 1                          # nor A's crop


def test_a_jumping_box_is_checked_at_once():
    tr = Tracker(TrackParams(min_hits=1, embed_interval_seconds=0.0, verify_interval_seconds=30.0))
    reqs = []
    for i in range(10):
        reqs += tr.update(i / 15, [det(400, 300, 90)]).embed_requests
        for r in reqs[-1:]:
            if tr.tracks[r.key].pending:
                tr.add_embedding(r.key, person(24), 1.0, r.t, prescore_value=r.prescore)
    n = len(reqs)
    up = tr.update(10 / 15, [det(455, 300, 90)])    # same track (within a face width), little overlap
    assert tr.counts["jumps"] == 1
    assert [r.verify for r in up.embed_requests] == [True] and n == 1


def test_identity_checks_of_the_same_person_keep_the_track_and_its_alert():
    tr = Tracker()
    alerts = []
    emb = person(25)
    _stand(tr, 0.0, 20.0, 15, emb, "S", seed=9, alerts=alerts)
    assert len(alerts) == 1 and tr.counts["splits"] == 0
    assert 15 <= tr.counts["verifications"] <= 21              # about one a second, not one a frame
    assert len(next(iter(tr.tracks.values())).embeddings) == TrackParams().max_embeds


# --- fast faces and the second look ----------------------------------------------------------

def test_a_fast_small_face_is_one_track_from_its_second_frame():
    """1.3 face widths per frame (a 48 px face crossing 1920 px in 2 s at 15 fps), with a missed
    frame: a track seen once has no velocity, so its reach grows with max_speed x time."""
    tr = Tracker()
    xs = [100 + 62 * i for i in range(12)]
    ids = []
    for i, x in enumerate(xs):
        if i == 4:
            continue                                    # the detector missed this frame
        u = tr.update(i / 15, [det(x, 300, 48)])
        ids.append(tr.tracks[u.assigned[0][0]].id)
    assert len(set(ids)) == 1 and tr.counts["tracks"] == 1
    # without the speed allowance it would have broken up
    slow = Tracker(TrackParams(max_speed=0.5))
    for i, x in enumerate(xs):
        slow.update(i / 15, [det(x, 300, 48)])
    assert slow.counts["tracks"] > 1


def test_two_faces_side_by_side_keep_their_tracks():
    tr = Tracker()
    for i in range(20):
        tr.update(i / 15, [det(300 + 40 * i, 300, 60), det(300 + 40 * i, 380, 60)])
    assert tr.counts["tracks"] == 2


def _second_look_run(params, scores):
    """A face walking past; every embedding is answered, the match scores come from ``scores``
    (threshold 0.6). Returns the embedding requests."""
    tr = Tracker(params)
    reqs = []
    k = 0
    for i in range(45):
        for r in tr.update(i / 15, [det(100 + 20 * i, 300, 80)]).embed_requests:
            reqs.append(r)
            tr.add_embedding(r.key, near(person(3), 0.1, i), quality_weight(Q), r.t, prescore_value=r.prescore)
            tr.note_match(r.key, scores[min(k, len(scores) - 1)], 0.6)
            k += 1
    return tr, reqs


def test_a_near_miss_gets_a_second_look_within_its_budget():
    p = TrackParams(max_embeds=2, min_improvement=0.0, second_look_embeds=3, second_look_margin=0.1)
    tr, reqs = _second_look_run(p, [0.55])              # always just below the threshold
    second = [r for r in reqs if r.second_look]
    assert len(second) == 3 and tr.counts["second_looks"] == 3
    assert len(next(iter(tr.tracks.values())).embeddings) == 2 + 3   # all fused into the probe
    # far below the threshold: no second look (a stranger is not embedded again and again)
    tr2, reqs2 = _second_look_run(p, [0.3])
    assert not any(r.second_look for r in reqs2)
    # off
    tr3, reqs3 = _second_look_run(TrackParams(max_embeds=2, min_improvement=0.0, second_look_embeds=0), [0.55])
    assert not any(r.second_look for r in reqs3)
