"""Deterministic replay: with a source that waits for the pipeline (``pace: fast``) the run is
processed in lockstep, so the alerts (subject, frame, track, score) and every frame's
detections and track ids are the same run after run, whatever the threads' timing. The timing
is shaken on purpose: one run's workers sleep at random before each detector and embedder
call, so a pipeline whose result depended on which worker finished first would differ."""
import random
import time

import pytest

from edge.appliance.builder import build_recognizers
from edge.appliance.pipeline import Pipeline
from edge.config import validate
from edge.tools.composer import Actor, ComposedSource, Scene, cast
from edge.tools.rig import ThrowawayUnit


class _Slow:
    """Forwards to an object; its ``names`` methods first sleep 0-``most`` seconds at random."""

    def __init__(self, inner, names, rng, most=0.012):
        self._inner, self._names, self._rng, self._most = inner, names, rng, most

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name not in self._names:
            return attr

        def slow(*a, **k):
            time.sleep(self._rng.uniform(0, self._most))
            return attr(*a, **k)
        return slow


class _Jittery:
    def __init__(self, rec, seed):
        rng = random.Random(seed)
        self._rec = rec
        self.detector = _Slow(rec.detector, {"detect_views"}, rng)
        self.embedder = _Slow(rec.embedder, {"embed"}, rng)

    def __getattr__(self, name):
        return getattr(self._rec, name)


@pytest.fixture(scope="module")
def setup(faces_dir, tmp_path_factory):
    cfg = validate({})
    recs2 = build_recognizers(cfg, 2)
    recs1 = build_recognizers(validate({"pipeline": {"workers": 1}}), 1)
    thr = cfg.match.threshold_wanted
    people = cast(recs2[0], faces_dir, listed=3, unlisted=2, seed=5, min_genuine=thr, max_impostor=thr - 0.05,
                  prefix="D")
    # fast walkers (1.6-2.2 s across), small and large, crossing each other in two lanes
    actors, heads = [], {}
    for i, p in enumerate(people):
        heads[f"h{i}"] = p.head
        t0 = 0.1 + 0.45 * i
        y = 0.35 if i % 2 else 0.6
        x0, x1 = (0.05, 0.95) if i % 2 == 0 else (0.95, 0.05)
        actors.append(Actor(p.label, f"h{i}", p.subject_id, t0, t0 + 1.6 + 0.15 * i, ((x0, y), (x1, y)),
                            (56, 72, 96, 130, 170)[i % 5]))
    scene = Scene(heads, actors, size=(1280, 720), fps=15.0, duration=max(a.end for a in actors) + 0.2,
                  background=faces_dir / "video" / "vtest.avi")
    tu = ThrowawayUnit(tmp_path_factory.mktemp("lockstep") / "unit", "van-lockstep")
    bundle, _ = tu.sign(people, recs2[0])
    return tu, bundle, scene, recs1, recs2


def _run(setup, recs, workers, tmp):
    tu, bundle, scene, _, _ = setup
    unit = tu.unit(state_dir=tmp)
    unit.load(bundle)
    cfg = tu.with_config(pipeline={"workers": workers})
    frames = []
    pl = Pipeline(cfg, ComposedSource(scene, pace="fast"), watchlist=unit.current, unit_id="van-lockstep",
                  recognizers=recs, on_frame=frames.append)
    rep = pl.run()
    assert pl.lockstep and rep["frames_processed"] == scene.n_frames
    alerts = sorted((e.subject_id, e.frame_seq, e.track_id, round(e.score, 6)) for e in pl.events)
    dets = [(f.seq, tuple((tuple(round(v, 2) for v in d.box), tid) for d, tid in zip(f.detections, f.track_ids)))
            for f in frames]
    return alerts, dets, rep


def test_replays_are_identical_run_after_run_with_one_and_with_two_workers(setup, tmp_path):
    _, _, _, recs1, recs2 = setup
    a, da, rep = _run(setup, recs2, 2, tmp_path / "a")
    b, db, _ = _run(setup, [_Jittery(r, s) for s, r in enumerate(recs2)], 2, tmp_path / "b")
    assert a, f"the scene should raise alerts: {rep['tracker']}"
    assert a == b
    assert da == db
    c, dc, _ = _run(setup, recs1, 1, tmp_path / "c")
    d, dd, _ = _run(setup, [_Jittery(recs1[0], 9)], 1, tmp_path / "d")
    assert c == d and dc == dd
    # and across worker counts: the lockstep does not depend on how many workers there are
    assert a == c and da == dc
