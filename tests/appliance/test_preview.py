"""The operator preview (edge/appliance/preview.py): a face that is not a current match is blurred beyond
recognition - on real LFW faces the detector no longer finds it, and even aligned with the original
landmarks its embedding says nothing about who it was (the true person ranks at chance among the
enrolments) - while matches are shown as they are; the HTTP server binds to loopback only."""
from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import ConfigError
from edge.recognition.images import load_image
from edge.appliance.preview import PreviewBox, PreviewServer, check_loopback, redact

N_PEOPLE = 30


def test_redact_blurs_every_face_and_shows_a_match_by_its_crop():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    crop = np.zeros((150, 150, 3), np.uint8)
    crop[:, :75] = (200, 30, 30)
    crop[:, 75:] = (30, 200, 30)
    faces = [PreviewBox((100, 100, 200, 220), False), PreviewBox((400, 100, 500, 220), True, "S00001", crop)]
    out = redact(frame, faces, mode="faces", max_width=None)
    assert out.shape == frame.shape and out is not frame
    blurred = out[100:220, 100:200].astype(float)
    assert blurred.std() < 0.25 * frame[100:220, 100:200].astype(float).std()      # detail gone
    # the margin around the box is obscured too (hair, ears, jaw line)
    assert not np.array_equal(out[45:100, 50:250], frame[45:100, 50:250])
    # the match: its crop in a red box, not the live face
    inset = cv2.resize(crop, (100, 100), interpolation=cv2.INTER_AREA)
    assert np.array_equal(out[103:197, 403:497], inset[3:97, 3:97])
    assert tuple(out[100, 450]) == (255, 40, 40)
    without = redact(frame, faces, mode="faces", max_width=None, draw_matches=False)
    assert without[100:220, 400:500].std() < 0.25 * frame[100:220, 400:500].std()  # the live face: blurred
    # outside every face: untouched (faces mode); the input frame is never modified
    assert np.array_equal(out[300:, :], frame[300:, :])
    assert not np.array_equal(out, frame)


def test_scene_mode_coarsens_everything():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    out = redact(frame, [], max_width=None)
    detail = np.abs(np.diff(out.astype(float), axis=1)).mean()
    assert detail < 0.05 * np.abs(np.diff(frame.astype(float), axis=1)).mean()
    with pytest.raises(ValueError):
        redact(frame, [], mode="none")


def test_redact_shrinks_wide_frames_and_accepts_pairs():
    frame = np.zeros((1080, 1920, 3), np.uint8)
    out = redact(frame, [((10, 10, 50, 50), False)])
    assert out.shape == (540, 960, 3)
    with pytest.raises(ValueError):
        redact(np.zeros((10, 10), np.uint8), [])


def _people(faces_dir: Path, n: int):
    root = faces_dir / "lfw-dev"
    out = []
    for d in sorted(root.iterdir()):
        if d.is_dir():
            imgs = sorted(d.glob("*.jpg"))
            if len(imgs) >= 2:
                out.append((d.name, imgs[0], imgs[1]))
        if len(out) >= n:
            break
    return out


@pytest.fixture(scope="module")
def probes(faces_dir, recognizer):
    """(name, enrolment embedding, frame with the person's other photo, detection, landmarks)."""
    data = []
    for name, enrol_img, probe_img in _people(faces_dir, N_PEOPLE + 6):
        try:
            enrol = recognizer.embed_image(load_image(str(enrol_img)))
        except Exception:
            continue
        frame = np.full((480, 640, 3), 96, np.uint8)
        frame[100:350, 200:450] = load_image(str(probe_img))
        faces = [f for f in recognizer.faces(frame) if f.embedding is not None]
        if not faces:
            continue
        f = max(faces, key=lambda f: f.detection.width)
        data.append((name, enrol, frame, f, recognizer.alignment_points(frame, f.detection)))
        if len(data) == N_PEOPLE:
            break
    assert len(data) >= 20
    return data


def _unit_matcher(enrol: np.ndarray):
    """The matcher a unit would run for a list of these enrolments (default configuration:
    calibrated cohort-normalised score, threshold for target FPIR 0.001 at this list's size)."""
    from edge.config import validate
    from edge.matching.match import Watchlist
    from edge.matching.factory import build_matcher
    return build_matcher(Watchlist(enrol, [f"P{i:03d}" for i in range(len(enrol))], ["wanted"] * len(enrol)),
                         validate({}))


def test_blurred_face_no_longer_matches_the_person(probes, recognizer):
    """Control first: unblurred, the probe finds its own enrolment (rank 1) and scores at the alert
    threshold; blurred, the true person is no more similar than anyone else, and the unit's own
    matcher raises no alert for it."""
    enrol = np.stack([p[1] for p in probes])
    matcher = _unit_matcher(enrol)
    threshold = matcher.match(enrol[0]).threshold
    clear_hits = 0
    n = len(probes)
    clear_rank1, blurred_ranks, true_scores, other_scores, found = 0, [], [], [], 0
    clear_true, clear_other = [], []
    for i, (name, _, frame, face, points) in enumerate(probes):
        s = enrol @ face.embedding
        clear_rank1 += int(np.argmax(s) == i)
        m = matcher.match(face.embedding)
        clear_hits += int(m.is_hit and m.subject_id == f"P{i:03d}")
        clear_true.append(s[i])
        clear_other.extend(np.delete(s, i))
        red = redact(frame, [PreviewBox(face.detection.box, False)], mode="faces", max_width=None)
        # 1. the detector no longer finds a face there
        found += any(abs(g.detection.box[0] - face.detection.box[0]) < 0.5 * face.detection.width
                     for g in recognizer.faces(red, embed=False))
        # 2. even aligned with the original landmarks, the embedding does not match the person
        v = recognizer.embedder.embed(recognizer.aligner.chip(red, face.detection, points))[0]
        m = matcher.match(v)
        assert not m.is_hit, f"{name}: blurred face still alerts ({m.subject_id}, {m.score:.3f} >= {threshold:.3f})"
        s = enrol @ v
        blurred_ranks.append(int((s > s[i]).sum()) + 1)
        true_scores.append(s[i])
        other_scores.extend(np.delete(s, i))
    print(f"\npreview blur on {n} LFW people: unblurred rank-1 {clear_rank1}/{n}, score to own enrolment mean "
          f"{np.mean(clear_true):.3f} vs others {np.mean(clear_other):.3f}; blurred: found by the detector "
          f"{found}/{n}, rank-1 {sum(r == 1 for r in blurred_ranks)}/{n}, median rank {np.median(blurred_ranks)}, "
          f"score to own enrolment mean {np.mean(true_scores):.3f} (max {np.max(true_scores):.3f}) vs others "
          f"{np.mean(other_scores):.3f}; unit's calibrated threshold {threshold:.3f}: unblurred alerts {clear_hits}/{n}, "
          f"blurred 0/{n}")
    assert clear_rank1 >= 0.9 * n                                   # the test can tell people apart
    assert clear_hits >= 0.6 * n                                    # ... and the unit's matcher alerts on them
    assert found <= 0.1 * n                                         # the blur hides the face from the detector
    # identity is gone: the true person ranks like a random one (median ~ n/2), and is top-1 no more
    # often than chance allows (expected 1 in n each; at most 3 of n)
    assert np.median(blurred_ranks) >= n / 4, blurred_ranks
    assert sum(r == 1 for r in blurred_ranks) <= 3, blurred_ranks
    assert abs(np.mean(true_scores) - np.mean(other_scores)) < 0.01


def test_a_match_is_shown_by_the_crop_that_matched(probes, recognizer):
    name, enrol, frame, face, points = probes[0]
    out = redact(frame, [PreviewBox(face.detection.box, True, "S1", face.chip)], max_width=None)
    x0, y0, x1, y1 = (int(round(v)) for v in face.detection.box)
    side = max(48, min(x1 - x0, y1 - y0, 256))
    inset = out[y0 + 3:y0 + side - 3, x0 + 3:x0 + side - 3]
    v = recognizer.embedder.embed(cv2.resize(inset, (150, 150)))[0]
    assert float(v @ enrol) == pytest.approx(float(face.embedding @ enrol), abs=0.03)


# ---------------------------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.org", ""])
def test_non_loopback_binds_are_refused(host):
    with pytest.raises(ConfigError):
        PreviewServer(0, host=host)
    with pytest.raises(ConfigError):
        check_loopback(host)


def _get(url: str, host: str | None = None, timeout: float = 5.0):
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    return urllib.request.urlopen(req, timeout=timeout)


def test_server_serves_only_redacted_frames_on_loopback():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:480, 0:640]
    frame = np.stack([xx * 255 // 640, yy * 255 // 480, np.full_like(xx, 128)], -1).astype(np.uint8)
    frame[100:280, 180:340] = rng.integers(0, 255, (180, 160, 3), dtype=np.uint8)   # detail where the face is
    box = (200, 120, 320, 260)
    with PreviewServer(0, max_fps=20, unit_id="van-07", mode="faces") as srv:
        assert srv.host == "127.0.0.1" and srv.url.startswith("http://127.0.0.1:")
        assert srv._httpd.socket.getsockname()[0] == "127.0.0.1"
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(srv.url + "frame.jpg", timeout=3)
        assert e.value.code == 503                                  # no frame yet
        srv.update(frame, [(box, False)])
        body = _get(srv.url + "frame.jpg").read()
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert img.shape == frame.shape
        face = img[130:250, 210:310].astype(float)
        assert face.std() < 0.25 * frame[130:250, 210:310].astype(float).std()    # blurred in what is served
        assert abs(img[400:, :].astype(float) - frame[400:, :]).mean() < 4      # the rest: JPEG of the frame
        page = _get(srv.url).read().decode()
        assert "/stream.mjpg" in page and "http" not in page.replace("http-equiv", "")
        # a request naming another host (DNS rebinding from a web page) is refused
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(srv.url + "frame.jpg", host="evil.example:80")
        assert e.value.code == 421
        # the MJPEG stream sends frames
        with _get(srv.url + "stream.mjpg") as resp:
            assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            chunk = resp.read(2000)
            assert b"--frame" in chunk and b"Content-Type: image/jpeg" in chunk
        port = srv.port
    # closed: nothing listens any more
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = PreviewServer(0, host="::1")
    except OSError:
        pytest.skip("IPv6 loopback not available here")
    with srv:
        srv.update(np.zeros((48, 64, 3), np.uint8), [])
        assert _get(srv.url + "frame.jpg").read()[:2] == b"\xff\xd8"


def test_preview_boxes_marks_only_alerted_tracks():
    from edge.appliance.preview import preview_boxes
    from edge.appliance.track import Tracker
    from edge.types import Detection
    tr = Tracker()
    dets = [Detection((10, 10, 60, 70), 0.9, np.zeros((6, 2), np.float32)),
            Detection((200, 10, 250, 70), 0.9, np.zeros((6, 2), np.float32))]
    tr.update(0.0, dets)
    boxes = preview_boxes(dets, tr.snapshot())
    assert not any(b.matched for b in boxes) and {b.box for b in boxes} == {d.box for d in dets}
    track = next(t for t in tr.tracks.values() if t.box[0] == 200)
    track.alerted.add("S1")
    track.crop = np.zeros((150, 150, 3), np.uint8)
    boxes = preview_boxes(dets, tr.snapshot())
    m = [b for b in boxes if b.matched]
    assert len(m) == 1 and m[0].box == (200, 10, 250, 70) and m[0].label == "S1" and m[0].crop is track.crop
    # a tracked face the detector missed in this frame is still covered
    assert (10, 10, 60, 70) in {b.box for b in preview_boxes(dets[1:], tr.snapshot()) if not b.matched}
    assert [b.matched for b in preview_boxes(dets)] == [False, False]     # no tracker: nothing is a match


def test_scene_mode_hides_a_face_nobody_detected(probes, recognizer):
    """The default mode needs no detection: with no box at all, no face in the preview can be
    recognised (in 'faces' mode it would be shown as it is)."""
    enrol = np.stack([p[1] for p in probes])
    matcher = _unit_matcher(enrol)
    ranks = []
    for i, (name, _, frame, face, points) in enumerate(probes):
        assert np.array_equal(redact(frame, [], mode="faces", max_width=None), frame)
        red = redact(frame, [], max_width=None)
        v = recognizer.embedder.embed(recognizer.aligner.chip(red, face.detection, points))[0]
        assert not matcher.match(v).is_hit, name
        s = enrol @ v
        ranks.append(int((s > s[i]).sum()) + 1)
    print(f"\nscene mode, no box given, {len(probes)} LFW people: rank-1 {sum(r == 1 for r in ranks)}/{len(probes)}, "
          f"median rank {np.median(ranks)}")
    assert np.median(ranks) >= len(probes) / 4 and sum(r == 1 for r in ranks) <= 3, ranks
