"""The live pipeline end to end on composed footage with known ground truth: real LFW faces of
listed and unlisted people walking across ../shared/faces/video/vtest.avi at several sizes,
the real models, a real signed bundle loaded as on a unit, a real outbox. Every listed pass
alerts exactly once; nobody else alerts. Also: the bounded drop-oldest queue, running with no
watchlist, what the run writes, and the service (`edge-lfr run`) with sd_notify."""
import json
import os
import socket
import sqlite3
import threading
import time

import numpy as np
import pytest

from edge.alerts import message as alerts
from edge.alerts import schema as message_schema
from edge.appliance.capture import FrameSource
from edge.tools.composer import Actor, ComposedSource, Scene, cast
from edge.config import validate
from edge.alerts.outbox import Outbox
from edge.appliance.builder import build_recognizers
from edge.appliance.pipeline import OutboxSink, Pipeline
from edge.appliance.board import Frame, WorkBoard, embed_job
from edge.tools.rig import ThrowawayUnit
from edge.appliance.track import EmbedRequest
from edge.types import Detection

SIZES = (64, 90, 120, 150)


@pytest.fixture(scope="module")
def recs():
    return build_recognizers(validate({}), 2)


@pytest.fixture(scope="module")
def people(recs, faces_dir):
    cfg = validate({})
    thr = cfg.match.threshold_wanted
    # screened so the test exercises the pipeline, not the model's error rate (eval measures that)
    return cast(recs[0], faces_dir, listed=4, unlisted=4, seed=21, min_genuine=thr + 0.012, max_impostor=thr - 0.05,
                prefix="T")


def _scene(people, faces_dir, fps=15.0):
    """Each person walks across once, at one of several sizes, three lanes staggered."""
    actors = []
    lanes = [0.3, 0.55, 0.78]
    t_lane = [0.2, 1.4, 2.6]
    for i, p in enumerate(people):
        lane = i % 3
        t = t_lane[lane]
        left = (i // 3) % 2 == 0
        x0, x1 = (0.08, 0.92) if left else (0.92, 0.08)
        actors.append(Actor(p.label, f"h{i}", p.subject_id, t, t + 3.2, ((x0, lanes[lane]), (x1, lanes[lane])),
                            SIZES[i % len(SIZES)]))
        t_lane[lane] = t + 3.6
    heads = {f"h{i}": p.head for i, p in enumerate(people)}
    return Scene(heads, actors, size=(1280, 720), fps=fps, duration=max(a.end for a in actors) + 0.4,
                 background=faces_dir / "video" / "vtest.avi")


def _attribute(scene, ev):
    cx, cy = (ev.box[0] + ev.box[2]) / 2, (ev.box[1] + ev.box[3]) / 2
    for actor, b in scene.truth_at(ev.t):
        if b[0] - 10 <= cx <= b[2] + 10 and b[1] - 10 <= cy <= b[3] + 10:
            return actor
    return None


@pytest.fixture(scope="module")
def e2e(recs, people, faces_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    tu = ThrowawayUnit(tmp / "unit", "van-e2e")
    bundle, report = tu.sign(people, recs[0])
    unit = tu.unit()
    live = unit.load(bundle)
    outbox = Outbox(tmp / "unit" / "state" / "outbox.sqlite")
    scene = _scene(people, faces_dir)
    pl = Pipeline(tu.config, ComposedSource(scene, pace="fast"), watchlist=unit.current,
                  sink=OutboxSink(outbox, tu.config.outbox.max_crop_bytes), unit_id="van-e2e", recognizers=recs)
    rep = pl.run()
    rows = outbox.pending_after(0, 1000)
    outbox.close()
    return {"scene": scene, "pipeline": pl, "report": rep, "rows": rows, "live": live, "tmp": tmp,
            "enrolled": report}


def test_every_listed_pass_alerts_exactly_once_and_nobody_else(e2e):
    scene, pl = e2e["scene"], e2e["pipeline"]
    listed = [a for a in scene.actors if a.subject_id]
    assert len(listed) >= 4 and len(scene.actors) - len(listed) >= 4
    assert {a.face_px for a in scene.actors} == set(SIZES)
    per_actor = {id(a): [] for a in scene.actors}
    for ev in pl.events:
        a = _attribute(scene, ev)
        assert a is not None, f"alert for {ev.subject_id} at t={ev.t:.2f} is not at any pasted face"
        per_actor[id(a)].append(ev.subject_id)
    for a in scene.actors:
        got = per_actor[id(a)]
        if a.subject_id:
            assert got == [a.subject_id], f"{a.label} ({a.face_px}px): expected one alert, got {got}"
        else:
            assert got == [], f"{a.label} is not listed but alerted as {got}"
    rep = e2e["report"]
    assert rep["frames_processed"] == scene.n_frames and rep["dropped_frames"] == 0
    assert rep["alerts"] == len(listed)


def test_alerts_in_the_outbox_are_valid_and_only_about_matches(e2e):
    rows, live, pl = e2e["rows"], e2e["live"], e2e["pipeline"]
    assert len(rows) == len(pl.events)
    subjects = {s.id for s in live.manifest.subjects}
    for row in rows:
        a = message_schema.validate_alert(json.loads(row.payload))
        assert a["unit_id"] == "van-e2e"
        assert a["bundle_id"] == live.manifest.bundle_id and a["bundle_serial"] == live.manifest.serial
        assert a["subject_id"] in subjects and a["score"] >= a["threshold"]
        assert a["model_sha256"] == live.manifest.model_sha256
        # the unit's matcher: calibrated scores, the threshold for target FPIR 0.001 at this list's size
        cal = a["calibrated"]
        assert cal["watchlist_size"] == len(subjects) and cal["target_fpir"] == 0.001
        assert a["threshold"] == pytest.approx(live.matcher.policy.threshold, abs=1e-6)
        assert cal["fmr"] == pytest.approx(10 ** (-10 * a["score"]), rel=0.01)
        assert cal["expected_fpir"] <= cal["target_fpir"]
        probe, ref = alerts.alert_images(a)
        assert probe[:3] == b"\xff\xd8\xff" and ref[:3] == b"\xff\xd8\xff"
    assert {json.loads(r.payload)["event_id"] for r in rows} == {e.event_id for e in pl.events}


def test_tracks_embeds_and_latencies_are_bounded(e2e):
    rep = e2e["report"]
    tr = rep["tracker"]
    # the per-track budget: max_embeds (4) + second looks (4); identity checks come on top
    assert tr["embeddings"] - tr["verifications"] <= tr["tracks"] * (4 + 4)
    assert tr["embed_requests"] < rep["frames_processed"]          # far fewer embeddings than faces seen
    assert rep["views_per_frame"] < 8
    for stage in ("capture", "detect", "track", "embed", "match", "alert", "capture_to_alert"):
        assert rep["stages"][stage]["n"] > 0


def test_the_run_writes_only_the_outbox_and_the_watchlist_state(e2e):
    root = e2e["tmp"] / "unit" / "state"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    allowed = {"outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm", "watchlist/current.edgewl",
               "watchlist/state.json", "watchlist/.lock",
               ".outbox-reserve"}   # zeros: disk space kept for the outbox to open on a full disk
    assert set(files) <= allowed, files
    db = sqlite3.connect(root / "outbox.sqlite")
    assert db.execute("select count(*) from outbox").fetchone()[0] == len(e2e["pipeline"].events)
    db.close()


def test_without_a_watchlist_it_runs_and_never_matches(recs, people, faces_dir):
    scene = _scene(people[:3], faces_dir)
    cfg = validate({})
    pl = Pipeline(cfg, ComposedSource(scene, pace="fast", max_frames=40), recognizers=recs)
    rep = pl.run()
    assert rep["frames_processed"] == 40 and rep["alerts"] == 0
    assert pl.tally["unmatched_no_list"] > 0
    assert "none loaded" in pl.status_line()


def test_someone_stepping_into_the_spot_another_just_left_is_recognised(recs, people, faces_dir, tmp_path):
    """The hand-over: at two spots one person stands still, then another takes exactly the same
    place from one frame to the next (no gap, same size), so the box never breaks. The newcomer
    must be recognised as who they are - not inherit the first person's track, identity or
    alert state."""
    listed = [p for p in people if p.subject_id]
    others = [p for p in people if not p.subject_id]
    spots = [((0.3, 0.45), others[0], listed[0]),     # someone not listed, then a listed person
             ((0.7, 0.45), listed[1], listed[2])]     # a listed person, then another
    heads, actors = {}, []
    for n, (xy, first, second) in enumerate(spots):
        for j, (p, t0, t1) in enumerate(((first, 0.2, 3.2), (second, 3.2, 6.2))):
            key = f"s{n}p{j}"
            heads[key] = p.head
            actors.append(Actor(p.label, key, p.subject_id, t0, t1, (xy, xy), 120))
    scene = Scene(heads, actors, size=(1280, 720), fps=15.0, duration=6.4,
                  background=faces_dir / "video" / "vtest.avi")
    tu = ThrowawayUnit(tmp_path / "unit", "van-handover")
    bundle, _ = tu.sign(people, recs[0])
    unit = tu.unit()
    unit.load(bundle)
    pl = Pipeline(tu.config, ComposedSource(scene, pace="fast"), watchlist=unit.current, unit_id="van-handover",
                  recognizers=recs)
    rep = pl.run()
    got = sorted((ev.subject_id, _attribute(scene, ev).label) for ev in pl.events)
    want = sorted((p.subject_id, p.label) for p in (listed[0], listed[1], listed[2]))
    assert got == want, f"expected one alert for each listed person at their own face, got {got}; {rep['tracker']}"
    assert rep["tracker"]["splits"] >= 2                       # both spots changed hands
    newcomers = [ev for ev in pl.events if ev.subject_id in (listed[0].subject_id, listed[2].subject_id)]
    assert all(ev.t - 3.2 <= 1.6 for ev in newcomers), [ev.t for ev in newcomers]  # within a verify interval


# --- the bounded queue --------------------------------------------------------------------

def _frame(i):
    return Frame(i, i / 30, time.monotonic(), time.time(), np.zeros((2, 2, 3), np.uint8))


def test_board_drops_the_oldest_frame_and_counts_it():
    b = WorkBoard(max_frames=3, max_jobs=2, drop_oldest=True)
    for i in range(10):
        assert b.put_frame(_frame(i))
    assert b.dropped == 7 and b.frame_depth == 3
    got = [b.take(0)[2].seq for _ in range(3)]
    assert got == [7, 8, 9]
    assert b.take(0.01) == ("idle",)


def test_board_blocks_instead_for_fast_replay_and_prefers_jobs():
    b = WorkBoard(max_frames=2, max_jobs=1, drop_oldest=False)
    b.put_frame(_frame(0))
    b.put_frame(_frame(1))
    done = threading.Event()
    threading.Thread(target=lambda: (b.put_frame(_frame(2)), done.set()), daemon=True).start()
    assert not done.wait(0.2)          # full: the producer waits
    assert b.put_job("job-1") and not b.put_job("job-2")
    assert b.take(0) == ("job", "job-1")
    assert b.take(0)[:2] == ("frame", 0)
    assert done.wait(2.0)
    assert b.dropped == 0 and b.jobs_refused == 1
    b.close_frames()
    assert [b.take(0)[1] for _ in range(2)] == [1, 2]
    b.stop()
    assert b.take(0) is None


def test_board_bounds_the_frames_in_flight():
    b = WorkBoard(max_frames=8, max_jobs=2, drop_oldest=False, max_in_flight=2)
    for i in range(4):
        b.put_frame(_frame(i))
    assert b.take(0)[1] == 0 and b.take(0)[1] == 1
    assert b.take(0.01) == ("idle",)          # two frames taken and not done: no third
    assert b.put_job("j") and b.take(0) == ("job", "j")  # embedding jobs still flow
    b.frame_done()
    assert b.take(0)[1] == 2


class _Flood(FrameSource):
    """A live source far faster than the pipeline: frames must be dropped, oldest first."""

    live = True

    def __init__(self, n):
        self.n = n

    def frames(self):
        img = np.full((720, 1280, 3), 90, np.uint8)
        for i in range(self.n):
            yield i / 1000.0, img


def test_a_live_source_faster_than_the_pipeline_drops_frames_counted(recs):
    cfg = validate({"pipeline": {"queue_frames": 2, "workers": 1}})
    pl = Pipeline(cfg, _Flood(400), recognizers=recs[:1])
    rep = pl.run()
    assert rep["dropped_frames"] > 0
    assert rep["frames_processed"] + rep["dropped_frames"] == rep["frames_captured"] == 400
    assert pl.health()["dropped_frames"] == rep["dropped_frames"]


def test_an_embedding_job_keeps_only_the_face_neighbourhood():
    img = np.zeros((1080, 1920, 3), np.uint8)
    kp = np.tile(np.array([[1000.0, 500.0]], np.float32), (6, 1))
    det = Detection((960.0, 460.0, 1040.0, 540.0), 0.9, kp)
    job = embed_job(EmbedRequest(0, 1, det, 0.0, 1.0), Frame(0, 0.0, 0.0, 0.0, img), ((100.0, 100.0, 150.0, 150.0),))
    # 1.25 face sizes around the face for the aligner, and down to the chest for the context image
    # (3 face sizes wide, 4 tall from half a face above the head): 281 x 380, not the 6 MB frame
    assert job.patch.shape == (380, 281, 3) and job.offset == (860, 360)
    assert job.frame.image.size == 0 and not np.shares_memory(job.patch, img)
    assert job.faces == ((100.0, 100.0, 150.0, 150.0),) and job.frame_size == (1920, 1080)


# --- the service ----------------------------------------------------------------------------

def test_run_service_speaks_sd_notify_and_stops_cleanly(recs, people, faces_dir, tmp_path, monkeypatch):
    from edge.alerts.localbroker import BrokerError, LOOPBACK, Mosquitto, make_certs, need
    from edge.appliance.sdnotify import Notifier
    from edge.appliance.service import run_service
    try:
        need("mosquitto")
        need("openssl")
    except BrokerError as exc:
        pytest.skip(str(exc))
    scene = _scene(people[:2], faces_dir)
    video = scene.write_video(tmp_path / "clip.avi")
    certs = make_certs(tmp_path / "certs", units=["van-svc"])
    broker = Mosquitto(tmp_path / "broker", certs).start()
    sock_path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sock_path)
    srv.settimeout(0.2)
    try:
        tu = ThrowawayUnit(tmp_path / "unit", "van-svc")
        cfg = tu.with_config(mqtt={"host": LOOPBACK, "port": broker.port, "ca_file": str(certs / "ca.crt"),
                                   "cert_file": str(certs / "van-svc.crt"), "key_file": str(certs / "van-svc.key")},
                             camera={"source": "file", "path": str(video), "pace": "realtime", "loop": True},
                             pipeline={"status_interval_seconds": 1.0})
        notifier = Notifier(sock_path, watchdog_usec=400_000)
        stop = threading.Event()
        monkeypatch.setattr("edge.appliance.service.build_recognizers", lambda *a: recs)
        msgs = []
        result = {}
        th = threading.Thread(target=lambda: result.update(code=run_service(cfg, notifier=notifier, stop_event=stop,
                                                                            say=lambda *a: None)), daemon=True)
        th.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                msgs.append(srv.recv(4096).decode())
            except socket.timeout:
                pass
            if any("READY=1" in m for m in msgs) and sum("WATCHDOG=1" in m for m in msgs) >= 2 and \
                    any(m.startswith("STATUS=") for m in msgs):
                break
        stop.set()
        th.join(30)
        while True:
            try:
                msgs.append(srv.recv(4096).decode())
            except socket.timeout:
                break
    finally:
        srv.close()
        broker.stop()
    assert result.get("code") == 0
    ready = [m for m in msgs if "READY=1" in m]
    assert ready and "watchlist none loaded" in ready[0]
    assert sum("WATCHDOG=1" in m for m in msgs) >= 2
    assert any("STOPPING=1" in m for m in msgs)
    status = [m for m in msgs if m.startswith("STATUS=")]
    assert status and "fps" in status[0] and "dropped" in status[0]
    assert not os.path.exists(tmp_path / "unit" / "state" / "watchlist" / "current.edgewl")


def test_demo_runs_end_to_end(tmp_path, faces_dir):
    """The README's first command (here replaying as fast as possible)."""
    import io
    from contextlib import redirect_stdout

    from edge.cli.main import main
    from edge.alerts.localbroker import BrokerError, need
    try:
        need("mosquitto")
        need("openssl")
    except BrokerError as exc:
        pytest.skip(str(exc))
    alerts = tmp_path / "demo" / "alerts"
    alerts.mkdir(parents=True)
    (alerts / "S-OLD-0000-probe.jpg").write_bytes(b"a previous run's")      # gone after this run
    (alerts / "notes.txt").write_text("not the demo's")                      # left alone
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["demo", "--out", str(tmp_path / "demo"), "--faces", str(faces_dir), "--fast"])
    text = out.getvalue()
    assert code == 0, text
    n = int(text.split(" alert(s) raised")[0].rsplit(";", 1)[-1])
    assert f"{n} received over MQTT" in text and n >= 2
    for kind in ("context", "probe", "reference"):
        assert len(list(alerts.glob(f"*-{kind}.jpg"))) == n, kind
    assert not (alerts / "S-OLD-0000-probe.jpg").exists() and (alerts / "notes.txt").exists()
    assert (tmp_path / "demo" / "demo-scene.avi").stat().st_size > 100_000
    # readable in an 80-column terminal (a line longer than that is one unbreakable word, e.g. a path)
    long = [ln for ln in text.splitlines() if len(ln) > 80 and " " in ln.strip()[:80]]
    assert not long, long[:3]
    flat = " ".join(ln.strip() for ln in text.splitlines())
    assert "beyond the calibrated range" in flat or "passers-by not on the list" in flat


class _NoFrames:
    live = False

    def frames(self):
        return iter(())

    def close(self):
        pass


def test_a_matched_alert_waits_for_a_slow_alerter_instead_of_being_dropped(monkeypatch):
    """The hand-off used to give up after 5 s with the queue full and drop the alert (counted, logged,
    but lost). Now it waits for room, however long the sink takes."""
    from edge.appliance import pipeline as pipeline_module
    monkeypatch.setattr(pipeline_module, "ALERT_QUEUE_SIZE", 1)
    pl = Pipeline(validate({}), _NoFrames(), recognizers=[object()])
    pl._alerts.put("an alert the slow alerter has not taken yet")     # the queue is full
    threading.Timer(6.0, pl._alerts.get).start()                      # the alerter frees it after 6 s
    job = object()
    t0 = time.monotonic()
    pl.hand_off(job)
    assert time.monotonic() - t0 >= 5.5
    assert pl._alerts.get_nowait() is job
    assert pl.tally["alert_hand_off_waits"] == 1 and "alerts_lost_failed_run" not in pl.tally


def test_counts_are_the_public_figures_the_audit_log_records(recs, people, faces_dir):
    """Pipeline.counts() replaces the audit's getattr reads of tracker and pipeline internals
    (a rename used to record 0 silently): every figure is present and counts what happened."""
    scene = _scene(people[:3], faces_dir)
    pl = Pipeline(validate({}), ComposedSource(scene, pace="fast"), recognizers=recs)
    rep = pl.run()
    c = pl.counts()
    assert set(c) == {"frames", "faces", "embeddings", "gated", "alerts", "dropped_frames"}
    assert c["frames"] == rep["frames_processed"] > 0
    assert c["faces"] == rep["tracks"] >= 3 and c["embeddings"] >= c["faces"]
    assert c["alerts"] == 0 and c["dropped_frames"] == 0              # no list: nothing can alert


def test_a_bad_trust_file_never_takes_down_the_running_service_or_its_list(recs, people, faces_dir, tmp_path,
                                                                          monkeypatch):
    """Issue 14, item 4: an impossible, unquoted date in the trust file (2026-02-30T00:00:00Z) at the
    service's next watchlist check: the list in force stays in force, one audit ``error`` entry
    says why, the loop carries on, and the stop is recorded as what it was."""
    from edge.alerts.localbroker import BrokerError, LOOPBACK, Mosquitto, make_certs, need
    from edge.appliance.service import run_service
    from edge.privacy.audit import read_entries
    from edge.tools.rig import ThrowawayUnit
    try:
        need("mosquitto")
        need("openssl")
    except BrokerError as exc:
        pytest.skip(str(exc))
    video = _scene(people[:2], faces_dir).write_video(tmp_path / "clip.avi")
    certs = make_certs(tmp_path / "certs", units=["van-svc"])
    broker = Mosquitto(tmp_path / "broker", certs).start()
    try:
        tu = ThrowawayUnit(tmp_path / "unit", "van-svc")
        cfg = tu.with_config(mqtt={"host": LOOPBACK, "port": broker.port, "ca_file": str(certs / "ca.crt"),
                                   "cert_file": str(certs / "van-svc.crt"), "key_file": str(certs / "van-svc.key")},
                             camera={"source": "file", "path": str(video), "pace": "realtime", "loop": True},
                             pipeline={"watchlist_poll_seconds": 0.5})
        bundle, _ = tu.sign(people, recs[0])
        tu.unit().load(bundle)
        monkeypatch.setattr("edge.appliance.service.build_recognizers", lambda *a: recs)
        stop, result = threading.Event(), {}
        th = threading.Thread(target=lambda: result.update(code=run_service(cfg, stop_event=stop,
                                                                            say=lambda *a: None)), daemon=True)
        th.start()
        audit_path = tmp_path / "unit" / "state" / "audit" / "audit.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(e["type"] == "bundle_loaded" for e in read_entries(audit_path)):
            time.sleep(0.2)
        trust = tmp_path / "unit" / "keys" / "trust.yaml"
        text = trust.read_text()
        line = next(x for x in text.splitlines() if "valid_until" in x)
        tmp = trust.with_name("trust.yaml.new")
        tmp.write_text(text.replace(line, "  valid_until: 2026-02-30T00:00:00Z"))
        os.replace(tmp, trust)                            # as an editor or `keys trust` would: atomically
        time.sleep(3.0)                                   # about six watchlist checks
        assert th.is_alive(), "the service stopped"
        stop.set()
        th.join(30)
    finally:
        broker.stop()
    assert result.get("code") == 0
    entries = list(read_entries(audit_path))
    errors = [e for e in entries if e["type"] == "error" and e["data"]["where"] == "watchlist check"]
    # logged and audited once per distinct problem, not at every check
    assert 1 <= len(errors) <= 2 and all("day is out of range" in e["data"]["message"] for e in errors), errors
    assert not [e for e in entries if e["type"] == "watchlist_deleted"], "the running list was taken down"
    assert (tmp_path / "unit" / "state" / "watchlist" / "current.edgewl").exists()
    assert [e["data"]["reason"] for e in entries if e["type"] == "service_stop"] == ["signal"]
