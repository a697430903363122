"""Frame sources: file replay (video, image folder; paced or fast; looped), camera sources that
fail clearly, network sources refused, and composed footage with its ground truth."""
import os
import time

import cv2
import numpy as np
import pytest

from edge.appliance.capture import CaptureError, FileSource, FootageError, Picamera2Source, V4L2Source, open_source
from edge.tools.composer import Actor, ComposedSource, Scene, cut_head
from edge.config import validate
from edge.errors import ConfigError


def _images(folder, n=6, size=(48, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((size[0], size[1], 3), 20 * i, np.uint8)
        cv2.imwrite(str(folder / f"f{i:03d}.png"), img)
    return folder


def test_video_file_fast_yields_every_frame_rgb_with_media_time(faces_dir):
    src = FileSource(faces_dir / "video" / "vtest.avi", pace="fast")
    assert not src.live and src.fps == 10.0
    n = 0
    for t, frame in src.frames():
        assert t == pytest.approx(n / 10.0)
        assert frame.shape == (576, 768, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
        n += 1
    assert n == 795 == src.frame_count


def test_video_is_rgb_not_bgr(tmp_path):
    path = tmp_path / "red.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(3):
        w.write(np.dstack([np.zeros((48, 64)), np.zeros((48, 64)), np.full((48, 64), 255)]).astype(np.uint8))  # BGR red
    w.release()
    _, frame = next(FileSource(path, pace="fast").frames())
    r, g, b = frame.reshape(-1, 3).mean(0)
    assert r > 200 and g < 50 and b < 50


def test_image_folder_in_name_order_at_the_configured_rate(tmp_path):
    src = FileSource(_images(tmp_path / "imgs"), pace="fast", fps=5.0)
    got = list(src.frames())
    assert [round(t, 3) for t, _ in got] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert [int(f[0, 0, 0]) for _, f in got] == [0, 20, 40, 60, 80, 100]


def test_realtime_pacing_follows_media_time(tmp_path):
    src = FileSource(_images(tmp_path / "imgs"), pace="realtime", fps=20.0)
    assert src.live
    t0 = time.monotonic()
    stamps = []
    for t, _ in src.frames():
        stamps.append((t, time.monotonic() - t0))
    assert stamps[-1][0] == pytest.approx(0.25)
    assert 0.22 <= stamps[-1][1] <= 0.6
    for media, wall in stamps:
        assert wall >= media - 0.02


def test_loop_continues_the_timeline_and_max_frames_stops(tmp_path):
    src = FileSource(_images(tmp_path / "imgs", n=3), pace="fast", loop=True, fps=10.0, max_frames=8)
    ts = [t for t, _ in src.frames()]
    assert len(ts) == 8 and ts == sorted(ts) and ts[-1] == pytest.approx(0.7)


def test_close_stops_a_source(tmp_path):
    src = FileSource(_images(tmp_path / "imgs"), pace="fast", loop=True)
    it = src.frames()
    next(it)
    src.close()
    assert len(list(it)) <= 1


@pytest.mark.parametrize("url", ["rtsp://10.0.0.5:554/stream1", "http://cam.local/video.mjpg", "udp://@:5000",
                                 "HTTPS://example.org/x.mp4", "rtmp://a/b", "srt://1.2.3.4:9000", "tcp://1.2.3.4:1",
                                 "rtsp:camera", "  http://x/y.avi", "videotestsrc ! appsink"])
def test_network_sources_are_refused(url):
    with pytest.raises(ConfigError, match="network source"):
        FileSource(url)
    with pytest.raises(ConfigError) as e:
        validate({"camera": {"source": "file", "path": url}})
    assert "camera.path" in str(e.value) and "network" in str(e.value)


def test_a_playlist_that_would_pull_streams_is_refused(tmp_path):
    p = tmp_path / "list.m3u8"
    p.write_text("#EXTM3U\nhttp://example.org/seg.ts\n")
    with pytest.raises(ConfigError, match="network source"):
        FileSource(p)


def test_ffmpeg_is_restricted_to_local_files(faces_dir, monkeypatch):
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)
    FileSource(faces_dir / "video" / "vtest.avi")
    assert "protocol_whitelist;file" in os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"]


def test_unusable_files_fail_clearly(tmp_path):
    assert FootageError.exit_code == 65 and issubclass(FootageError, CaptureError)   # bad input, not a camera (74)
    with pytest.raises(FootageError, match="no such"):
        FileSource(tmp_path / "missing.avi")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FootageError, match="not a video file"):
        FileSource(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FootageError, match="no images"):
        FileSource(tmp_path / "empty")
    (tmp_path / "bad.avi").write_bytes(b"not a video")
    with pytest.raises(FootageError, match="cannot open"):
        FileSource(tmp_path / "bad.avi")


def test_camera_sources_fail_clearly_when_absent():
    with pytest.raises(CaptureError, match="cannot open camera"):
        V4L2Source("/dev/video-does-not-exist")
    with pytest.raises(ConfigError, match="network"):
        V4L2Source("rtsp://1.2.3.4/x")
    try:
        import picamera2  # noqa: F401
    except ImportError:
        with pytest.raises(CaptureError, match="picamera2"):
            Picamera2Source()


def test_open_source_follows_the_config(tmp_path):
    folder = _images(tmp_path / "imgs")
    cfg = validate({"camera": {"source": "file", "path": str(folder), "pace": "fast", "fps": 4}})
    src = open_source(cfg)
    assert isinstance(src, FileSource) and src.fps == 4.0 and not src.live
    src = open_source(validate({}), path=str(folder), pace="realtime")  # a path overrides the camera
    assert isinstance(src, FileSource) and src.live


def test_composed_scene_ground_truth_is_where_the_faces_are(recognizer, public_faces):
    head = cut_head(public_faces["grace_hopper"], recognizer.detector.detect(public_faces["grace_hopper"])[0].box)
    actors = [Actor("grace", "g", "S1", 0.0, 2.0, ((0.2, 0.5), (0.8, 0.5)), 90)]
    scene = Scene({"g": head}, actors, size=(640, 360), fps=5.0)
    src = ComposedSource(scene, pace="fast")
    n = 0
    for t, frame in src.frames():
        assert frame.shape == (360, 640, 3)
        (actor, box), = scene.truth_at(t)
        dets = recognizer.detector.detect(frame)
        assert dets, f"no face detected at t={t}"
        d = max(dets, key=lambda d: d.width)
        assert abs((d.box[0] + d.box[2]) / 2 - (box[0] + box[2]) / 2) < 0.15 * 90
        assert abs(d.width - 90) < 0.2 * 90
        n += 1
    assert n == 10
    assert scene.expected()[0]["subject"] == "S1"


class _FakePicamera2:
    """Stands in for picamera2 (not installed off the Pi) to check what the source asks of it."""

    instances = []

    def __init__(self):
        self.calls = []
        self.frames = 0
        _FakePicamera2.instances.append(self)

    def create_video_configuration(self, main, controls, buffer_count):
        self.calls.append(("config", main, controls, buffer_count))
        return {"main": main}

    def configure(self, config):
        self.calls.append(("configure", config))

    def set_controls(self, controls):
        self.calls.append(("controls", controls))

    def start(self):
        self.calls.append(("start",))

    def capture_array(self, stream):
        self.frames += 1
        return np.full((48, 64, 4), self.frames, np.uint8)  # XBGR-like 4-channel buffer

    def stop(self):
        self.calls.append(("stop",))

    def close(self):
        self.calls.append(("close",))


def test_picamera2_source_asks_for_rgb_rate_and_fixed_exposure(monkeypatch):
    import sys
    import types
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=_FakePicamera2))
    cfg = validate({"camera": {"source": "picamera2", "width": 64, "height": 64, "fps": 25, "exposure_us": 4000,
                               "analogue_gain": 2.0}})
    src = open_source(cfg)
    cam = _FakePicamera2.instances[-1]
    kind, main, controls, _ = cam.calls[0]
    assert main == {"size": (64, 64), "format": "BGR888"} and controls == {"FrameRate": 25.0}
    assert ("controls", {"ExposureTime": 4000, "AnalogueGain": 2.0, "AeEnable": False}) in cam.calls
    it = src.frames()
    t1, f1 = next(it)
    t2, f2 = next(it)
    assert f1.shape == (48, 64, 3) and f1.flags.c_contiguous and t2 >= t1 and src.live
    src.close()
    assert list(it) == [] and ("stop",) in cam.calls and ("close",) in cam.calls


def test_picamera2_automatic_exposure_sets_no_controls(monkeypatch):
    import sys
    import types
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=_FakePicamera2))
    Picamera2Source(64, 48, 30.0)
    assert not any(c[0] == "controls" for c in _FakePicamera2.instances[-1].calls)
