"""Frame sources: one interface, three kinds of local source. I/O lives here, at the edge.

Every source yields ``(timestamp, frame)``: ``timestamp`` in seconds, increasing (the camera's
capture time on the monotonic clock, or the media time of a replayed file), and ``frame`` a
C-contiguous RGB ``uint8`` array (H, W, 3). Decoding and colour conversion happen here, in the
capture thread that iterates the source, not in the inference workers.

* :class:`Picamera2Source` - the Raspberry Pi camera (``picamera2`` imported lazily, only on
  the Pi); resolution, frame rate and fixed exposure / analogue gain from ``camera.*``.
* :class:`V4L2Source` - a USB / V4L2 camera through OpenCV (``/dev/videoN`` or an index).
* :class:`FileSource` - a local video file or a folder of images, paced in real time (late
  frames are then dropped downstream like a camera's) or as fast as they are taken; for rigs,
  tests and soaks (``loop``).

Network sources are refused twice: by configuration validation
(:func:`edge.config.refuse_network_source`) and again when a source is opened; OpenCV's FFmpeg
back end is also restricted to the ``file`` protocol. The unit takes no CCTV or network feed.
"""
from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from edge.config import refuse_network_source
from edge.errors import ConfigError, EdgeError, InputError
from edge.recognition.images import check_frame, load_image

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".m4v", ".mkv", ".mov", ".webm", ".mjpg", ".mjpeg", ".h264", ".264",
                    ".h265", ".hevc", ".mpg", ".mpeg", ".ts", ".y4m")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
#: Consecutive failed reads after which a camera counts as gone (the service then exits and
#: systemd restarts it).
CAMERA_READ_FAILURES = 50


class CaptureError(EdgeError):
    """A source that cannot be opened or stopped delivering frames."""

    exit_code = 74  # EX_IOERR


class FootageError(CaptureError):
    """A local video file or image folder that cannot be replayed (missing, empty, not a video,
    corrupt): bad input data, exit 65, not a camera failure (74) that a restart could cure."""

    exit_code = 65  # EX_DATAERR


def _ffmpeg_local_only() -> None:
    """Restrict OpenCV's FFmpeg back end to local files (defence in depth: a file name that is
    really a URL, or a container that references one, is not fetched)."""
    opts = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS", "")
    if "protocol_whitelist" not in opts:
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = (opts + "|" if opts else "") + "protocol_whitelist;file"


class FrameSource(ABC):
    """``for t, frame in source.frames(): ...``; ``close()`` releases the device or file.

    ``live`` is True when frames arrive in real time whether or not they are taken (cameras,
    real-time replay): the pipeline then drops the oldest waiting frame rather than fall behind.
    """

    live: bool = True
    name: str = "source"

    @abstractmethod
    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        """Yield (timestamp seconds, RGB uint8 frame) until the source ends or is closed."""

    def close(self) -> None:
        """Release the device or file (idempotent)."""

    def describe(self) -> str:
        return self.name

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Picamera2Source(FrameSource):
    """The Raspberry Pi camera via picamera2 (libcamera). Asks for ``BGR888``, which picamera2
    lays out in memory as R, G, B: the arrays are RGB without a conversion."""

    live = True

    def __init__(self, width: int = 1920, height: int = 1080, fps: float = 30.0, exposure_us: int = 0,
                 analogue_gain: float = 0.0):
        try:
            from picamera2 import Picamera2  # lazy: only present on a Pi (pip install '.[pi]' or python3-picamera2)
        except ImportError as exc:
            raise CaptureError(f"camera.source is picamera2 but picamera2 cannot be imported ({exc}); on a "
                               "Raspberry Pi install python3-picamera2 (apt) or use camera.source v4l2 / file") from None
        self.name = f"picamera2 {width}x{height}@{fps:g}"
        self._closed = self._reading = self._released = False
        try:
            self.cam = Picamera2()
            config = self.cam.create_video_configuration(main={"size": (int(width), int(height)), "format": "BGR888"},
                                                         controls={"FrameRate": float(fps)}, buffer_count=4)
            self.cam.configure(config)
            controls = {}
            if exposure_us:
                controls["ExposureTime"] = int(exposure_us)
            if analogue_gain:
                controls["AnalogueGain"] = float(analogue_gain)
            if controls:
                controls["AeEnable"] = False
                self.cam.set_controls(controls)
            self.cam.start()
        except Exception as exc:  # libcamera raises RuntimeError / IndexError (no camera) and others
            raise CaptureError(f"cannot start the Pi camera: {exc}") from None

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        self._reading = True
        try:
            while not self._closed:
                try:
                    frame = self.cam.capture_array("main")
                except Exception as exc:
                    if self._closed:
                        return
                    raise CaptureError(f"the Pi camera stopped delivering frames: {exc}") from None
                t = time.monotonic()
                if frame.ndim == 3 and frame.shape[2] == 4:
                    frame = frame[:, :, :3]
                yield t, np.ascontiguousarray(frame)
        finally:
            self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            try:
                self.cam.stop()
                self.cam.close()
            except Exception:  # pragma: no cover - best effort on the way out
                pass

    def close(self) -> None:
        """Ask the reading thread to stop; the camera is released by that thread (or here, if
        nobody is reading), never under a capture in progress."""
        self._closed = True
        if not self._reading:
            self._release()


class V4L2Source(FrameSource):
    """A local USB / V4L2 camera through OpenCV's V4L2 back end."""

    live = True

    def __init__(self, device: str | int = "/dev/video0", width: int = 1920, height: int = 1080, fps: float = 30.0,
                 fourcc: str = "MJPG"):
        dev = str(device)
        refuse_network_source("camera.device", dev)
        if not (dev.isdigit() or dev.startswith("/dev/")):
            raise CaptureError(f"camera.device: {dev!r} is not a local camera device")
        self.name = f"v4l2 {dev} {width}x{height}@{fps:g} {fourcc}"
        self.cap = cv2.VideoCapture(int(dev) if dev.isdigit() else dev, cv2.CAP_V4L2)
        if not self.cap.isOpened():
            raise CaptureError(f"cannot open camera {dev} (is it connected, and may this user read it?)")
        self.cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc))
        self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
        self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
        self.cap.set(cv2.CAP_PROP_FPS, float(fps))
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 2)  # the newest frames, not a backlog
        self._closed = self._reading = False

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        self._reading = True
        failures = 0
        try:
            while not self._closed:
                ok, bgr = self.cap.read()
                if not ok or bgr is None:
                    if self._closed:
                        return
                    failures += 1
                    if failures >= CAMERA_READ_FAILURES:
                        raise CaptureError(f"{self.name}: {failures} reads in a row failed; camera gone?")
                    time.sleep(0.01)
                    continue
                failures = 0
                t = time.monotonic()
                yield t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            self.cap.release()

    def close(self) -> None:
        """Ask the reading thread to stop (it releases the device: releasing it under a read in
        progress is not safe in OpenCV), or release it here if nobody is reading."""
        self._closed = True
        if not self._reading:
            self.cap.release()


class FileSource(FrameSource):
    """A local video file or a folder of images (sorted by name), replayed.

    ``pace="realtime"`` delivers each frame at its media time (``live``: frames the pipeline
    cannot take in time are dropped downstream, as a camera's would be); ``"fast"`` delivers them
    as fast as they are taken (nothing is dropped: results are reproducible). With ``loop`` the
    file starts again at the end and timestamps keep increasing. ``fps`` is the rate of an image
    folder, and of a video that does not state its own.
    """

    def __init__(self, path: str | os.PathLike, pace: str = "realtime", loop: bool = False, fps: float = 30.0,
                 max_frames: int = 0, max_pixels: int = 40_000_000):
        text = os.fspath(path)
        refuse_network_source("camera.path", text)
        if pace not in ("realtime", "fast"):
            raise ConfigError(f"camera.pace: {pace!r} is not one of realtime, fast")
        p = Path(text)
        if p.is_dir():
            self.images = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not self.images:
                raise FootageError(f"{p}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            self.kind = "images"
        elif p.is_file():
            if p.suffix.lower() not in VIDEO_EXTENSIONS:
                raise FootageError(f"{p}: not a video file this unit replays (extensions: {' '.join(VIDEO_EXTENSIONS)})")
            self.images = []
            self.kind = "video"
        else:
            raise FootageError(f"{p}: no such video file or image folder")
        self.path = p
        self.pace = pace
        self.live = pace == "realtime"
        self.loop = bool(loop)
        self.fps = float(fps)
        self.max_frames = int(max_frames)
        self.max_pixels = max_pixels
        self._closed = False
        self._cap = None
        self.name = f"file {p} ({self.kind}, {pace}{', loop' if loop else ''})"
        if self.kind == "video":
            cap = self._open_video()
            rate = cap.get(cv2.CAP_PROP_FPS)
            if rate and np.isfinite(rate) and 0 < rate <= 1000:
                self.fps = float(rate)
            self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            cap.release()
        else:
            self.frame_count = len(self.images)

    def _open_video(self):
        _ffmpeg_local_only()
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise FootageError(f"{self.path}: cannot open this video file (corrupt or unsupported codec)")
        return cap

    def _one_pass(self) -> Iterator[np.ndarray]:
        if self.kind == "images":
            for f in self.images:
                if self._closed:
                    return
                yield load_image(f, self.max_pixels)
            return
        cap = self._cap = self._open_video()
        try:
            while not self._closed:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    return
                yield check_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.max_pixels)
        finally:
            cap.release()
            self._cap = None

    def frames(self) -> Iterator[tuple[float, np.ndarray]]:
        step = 1.0 / self.fps
        n = 0
        start = time.monotonic()
        while not self._closed:
            got = False
            for frame in self._one_pass():
                got = True
                t = n * step
                if self.pace == "realtime":
                    delay = start + t - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                yield t, frame
                n += 1
                if self.max_frames and n >= self.max_frames:
                    return
            if not self.loop or not got:
                return

    def close(self) -> None:
        self._closed = True


def open_source(cfg, *, path: str | None = None, pace: str | None = None, loop: bool | None = None,
                max_frames: int = 0) -> FrameSource:
    """The source named by the ``camera`` section; ``path``/``pace``/``loop`` override it (and
    a ``path`` implies a file source)."""
    c = cfg.camera
    if path is not None or c.source == "file":
        return FileSource(path if path is not None else c.path, pace or c.pace, c.loop if loop is None else loop,
                          c.fps, max_frames, cfg.limits.max_image_pixels)
    if c.source == "v4l2":
        return V4L2Source(c.device, c.width, c.height, c.fps, c.fourcc)
    if c.source == "picamera2":
        return Picamera2Source(c.width, c.height, c.fps, c.exposure_us, c.analogue_gain)
    raise InputError(f"camera.source: unknown source {c.source!r}")  # pragma: no cover - the schema refuses it
