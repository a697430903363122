"""The operator preview: the live frame on the van's own screen, every face that is not a current
match blurred beyond recognition.

* :func:`redact` is the one function that makes a preview image. In the default ``scene`` mode
  the whole frame is first reduced to :data:`SCENE_CELLS` cells across and smoothed (people stay
  coloured shapes where they stand; no face keeps a feature, including one the detector missed);
  in ``faces`` mode the frame is kept as it is. Then every face box (grown by :data:`MARGIN` of
  its size on each side, to take in hair, ears and jaw line) is reduced to a :data:`CELLS` x
  :data:`CELLS` mosaic of average colours and blurred with a Gaussian half as wide as the box. A
  current match is drawn as a red box holding the face crop that produced the match (not the
  live face: a track can be handed over to the next person stepping into the same place before
  a new embedding could tell them apart; the crop is the matched face by construction).
  ``tests/appliance/test_preview.py`` checks on real faces that a blurred face is no longer found by
  the detector and that, even aligned with its original landmarks, its embedding says nothing
  about who it was; ``tests/privacy/test_privacy_writes.py`` looks at what the running service's
  preview served. The frame is shrunk to at most :data:`MAX_WIDTH` pixels wide.
* :func:`preview_boxes` gives, for one frame, every detection and every live track's box
  (covering a face the detector missed in that frame); a track that alerted is a match, with its
  subject id(s) and the crop that matched.
* :class:`PreviewServer` serves the redacted frames over HTTP **on the loopback interface only**
  (127.0.0.0/8 or ::1; any other address is refused at construction) for a browser on the
  van's screen: ``/`` (a page), ``/frame.jpg`` (the latest frame) and ``/stream.mjpg`` (MJPEG).
  Requests whose ``Host`` header is not a loopback name are refused (no DNS rebinding from a
  web page). The server keeps only the latest frame and its boxes in memory, redacts and encodes
  lazily (no viewer: no work), at most ``privacy.preview_max_fps`` times a second, and never
  writes a file. An unredacted frame never reaches the HTTP side.

Limit of ``faces`` mode: a face neither detected nor tracked in that frame (one just entering
the frame, very small, turned away) is shown as the camera saw it. ``scene`` mode has no such gap.
"""
from __future__ import annotations

import html
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable, Sequence

import cv2
import numpy as np

from edge.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["redact", "preview_boxes", "PreviewBox", "PreviewServer", "MARGIN", "CELLS", "MAX_WIDTH", "MODES"]

MARGIN = 0.5         # box growth on each side, as a fraction of the box size
CELLS = 4            # mosaic cells across a face before the blur
MAX_WIDTH = 960      # preview frames are shrunk to at most this width
SCENE_CELLS = 16     # "scene" mode: the frame reduced to this many cells across (measured: a face a sixth of
                     # the frame wide keeps no identity at 16 or 24 cells; at 48 it still ranks near the top)
MODES = ("scene", "faces")
JPEG_QUALITY = 70


@dataclass(frozen=True)
class PreviewBox:
    """One face in the frame: its box (x0, y0, x1, y1) in frame pixels, whether it is a current
    match (its track raised an alert), the subject id(s) as ``label`` and, for a match, ``crop``:
    the face crop that produced the match (RGB), shown in place of the live face."""

    box: tuple[float, float, float, float]
    matched: bool = False
    label: str = ""
    crop: np.ndarray | None = field(default=None, repr=False, compare=False)


def preview_boxes(detections, tracks=()) -> list[PreviewBox]:
    """The faces of one frame for :meth:`PreviewServer.update`: every detection, and every live
    track's box (a face the detector missed in this frame is still covered). A track that raised
    an alert is a match, shown by the crop that matched (``tracks``: the pipeline's
    :meth:`~edge.appliance.track.Tracker.snapshot` right after ``update`` with these detections)."""
    out = []
    for st in tracks:
        box = tuple(float(v) for v in st.box)
        if st.alerted:
            out.append(PreviewBox(box, True, ", ".join(st.alerted)[:40], st.match_crop))
        else:
            out.append(PreviewBox(box, False))
    for d in detections:
        out.append(PreviewBox(tuple(float(v) for v in d.box), False))
    return out


def _obscure(region: np.ndarray) -> np.ndarray:
    h, w = region.shape[:2]
    if h < 2 or w < 2:
        return np.full_like(region, int(region.mean()) if region.size else 0)
    cells = (max(1, min(CELLS, w)), max(1, min(CELLS, h)))
    small = cv2.resize(region, cells, interpolation=cv2.INTER_AREA)
    mosaic = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    k = max(3, (max(w, h) // 2) | 1)               # odd kernel about half the region
    return cv2.GaussianBlur(mosaic, (k, k), 0, borderType=cv2.BORDER_REFLECT)


def _scene(frame: np.ndarray) -> np.ndarray:
    """The whole frame reduced to :data:`SCENE_CELLS` cells across and smoothed back: people
    remain coloured blobs where they stand, no face keeps a feature (a close-up a third of the
    frame wide becomes about 5 cells)."""
    h, w = frame.shape[:2]
    cw = max(1, min(SCENE_CELLS, w))
    ch = max(1, round(h * cw / w))
    small = cv2.resize(frame, (cw, ch), interpolation=cv2.INTER_AREA)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    k = max(3, (w // cw) | 1)
    return cv2.GaussianBlur(big, (k, k), 0, borderType=cv2.BORDER_REFLECT)


def _grow(box, w: int, h: int, margin: float) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (float(v) for v in box)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return (int(max(0, np.floor(x0 - mx))), int(max(0, np.floor(y0 - my))),
            int(min(w, np.ceil(x1 + mx))), int(min(h, np.ceil(y1 + my))))


def redact(frame: np.ndarray, faces: Iterable[PreviewBox | tuple], *, mode: str = "scene",
           max_width: int | None = MAX_WIDTH, draw_matches: bool = True) -> np.ndarray:
    """A copy of ``frame`` (RGB uint8) in which no face but a current match's can be recognised,
    shrunk to at most ``max_width`` pixels wide (None: full size). ``faces``:
    :class:`PreviewBox` or ``(box, matched)`` pairs.

    ``mode="scene"`` (the default): the whole frame is reduced to a coarse, smoothed image
    (:func:`_scene`), so a face the detector missed is obscured too. ``mode="faces"``: the frame
    as it is. Then every face box (grown by :data:`MARGIN`) is obscured, and each current match
    is drawn as a red box holding the face crop that matched (:func:`_draw_match`)."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.dtype != np.uint8:
        raise ValueError("frame must be an RGB uint8 array")
    if mode not in MODES:
        raise ValueError(f"preview mode must be one of {MODES}, got {mode!r}")
    boxes = [f if isinstance(f, PreviewBox) else PreviewBox(tuple(f[0]), bool(f[1])) for f in faces]
    h, w = frame.shape[:2]
    out = _scene(frame) if mode == "scene" else frame.copy()
    for f in boxes:                # every face in the live frame, a match's too (see _draw_match)
        a0, b0, a1, b1 = _grow(f.box, w, h, MARGIN)
        if a1 > a0 and b1 > b0:
            out[b0:b1, a0:a1] = _obscure(out[b0:b1, a0:a1])
    scale = 1.0
    if max_width and w > max_width:
        scale = max_width / w
        out = cv2.resize(out, (max_width, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if draw_matches:
        for f in boxes:
            if f.matched:
                _draw_match(out, f, scale)
    return out


def _draw_match(out: np.ndarray, f: PreviewBox, scale: float) -> None:
    """A current match: a red box where the person is and, in it, the face crop that produced the
    match. The live face itself is not shown: a track can be handed over to the next person
    stepping into the same place before any new embedding could tell them apart, and the crop
    is, by construction, the matched face."""
    h, w = out.shape[:2]
    x0, y0, x1, y1 = (int(round(v * scale)) for v in f.box)
    if f.crop is not None and f.crop.ndim == 3 and f.crop.shape[2] == 3 and f.crop.size:
        side = max(48, min(x1 - x0, y1 - y0, 256))
        a0, b0 = max(0, min(w - side, x0)), max(0, min(h - side, y0))
        if side <= min(w, h):
            out[b0:b0 + side, a0:a0 + side] = cv2.resize(np.ascontiguousarray(f.crop, np.uint8), (side, side),
                                                          interpolation=cv2.INTER_AREA)
    cv2.rectangle(out, (x0, y0), (x1, y1), (255, 40, 40), 2)
    if f.label:
        cv2.putText(out, f.label[:40], (x0, max(12, y0 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 40, 40), 1,
                    cv2.LINE_AA)


def check_loopback(host: str) -> str:
    """``host`` if it is a loopback address (or ``localhost``, as 127.0.0.1); else ConfigError."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"preview: {host!r:.60} is not an IP address; the preview binds to the loopback "
                          "interface only (127.0.0.1 or ::1)") from None
    if not ip.is_loopback:
        raise ConfigError(f"preview: {host} is not a loopback address; the operator preview is served on the "
                          "van's own screen only (127.0.0.1 or ::1), never on a network")
    return str(ip)


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>edge-lfr preview</title>
<style>body{{margin:0;background:#111;color:#ddd;font:14px sans-serif}}img{{display:block;max-width:100%;
margin:auto}}p{{text-align:center}}</style></head><body><img src="/stream.mjpg" alt="live preview">
<p>{unit}: live preview. Every face that is not a current match is blurred. Nothing is recorded.</p>
</body></html>"""


class PreviewServer:
    """Loopback-only HTTP preview. ``update(frame, faces)`` from the pipeline (cheap: keeps a
    reference); frames are redacted and encoded only when a viewer asks, at most ``max_fps``."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", max_fps: float = 5.0, unit_id: str = "",
                 max_width: int = MAX_WIDTH, mode: str = "scene"):
        self.host = check_loopback(host)
        if mode not in MODES:
            raise ConfigError(f"preview mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.max_fps = float(max_fps)
        self.unit_id = unit_id
        self.max_width = max_width
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, tuple[PreviewBox, ...]] | None = None
        self._version = 0
        self._jpeg: bytes | None = None
        self._jpeg_version = -1
        self._jpeg_at = 0.0
        self._closed = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "edge-lfr-preview"
            sys_version = ""

            def log_message(self, fmt, *args):  # no access log: nothing about viewers is kept
                pass

            def _host_ok(self) -> bool:
                name = (self.headers.get("Host") or "").strip().lower()
                if name.startswith("["):
                    name = name[1:name.find("]")] if "]" in name else name
                else:
                    name = name.rsplit(":", 1)[0]
                if name == "localhost":
                    return True
                try:
                    return ipaddress.ip_address(name).is_loopback
                except ValueError:
                    return False

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self._common()
                self.end_headers()
                self.wfile.write(body)

            def _common(self) -> None:
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'")
                self.send_header("Referrer-Policy", "no-referrer")

            def do_GET(self):  # noqa: N802 - http.server API
                if not self._host_ok():
                    self._send(421, "text/plain", b"loopback only\n")
                    return
                path = self.path.split("?", 1)[0]
                if path == "/":
                    self._send(200, "text/html; charset=utf-8",
                               _PAGE.format(unit=html.escape(server.unit_id or "unit")).encode())
                elif path == "/frame.jpg":
                    jpeg = server.current_jpeg(wait=1.0)
                    if jpeg is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", jpeg)
                elif path == "/stream.mjpg":
                    self.send_response(200)
                    self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                    self._common()
                    self.end_headers()
                    last = -1
                    try:
                        while not server._closed:
                            jpeg, version = server.next_jpeg(last, timeout=2.0)
                            if jpeg is None:
                                continue
                            last = version
                            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                             + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                            self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                else:
                    self._send(404, "text/plain", b"not found\n")

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        if ":" in self.host:
            Server.address_family = socket.AF_INET6
        self._httpd = Server((self.host, int(port)), Handler)
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> "PreviewServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="edge-preview", daemon=True)
        self._thread.start()
        log.info("operator preview on %s (loopback only)", self.url)
        return self

    def update(self, frame: np.ndarray, faces: Sequence[PreviewBox | tuple]) -> None:
        """The latest frame and its faces (from the pipeline). Keeps references only."""
        boxes = tuple(f if isinstance(f, PreviewBox) else PreviewBox(tuple(f[0]), bool(f[1])) for f in faces)
        with self._cond:
            self._latest = (frame, boxes)
            self._version += 1
            self._cond.notify_all()

    def _encode(self) -> tuple[bytes | None, int]:
        """The JPEG of the latest frame (redacted and encoded outside the lock, once per frame)."""
        with self._cond:
            if self._latest is None:
                return None, self._version
            if self._jpeg_version == self._version:
                return self._jpeg, self._jpeg_version
            frame, boxes = self._latest
            version = self._version
        img = redact(frame, boxes, mode=self.mode, max_width=self.max_width)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        with self._cond:
            if ok and version >= self._jpeg_version and not self._closed:
                self._jpeg, self._jpeg_version, self._jpeg_at = buf.tobytes(), version, time.monotonic()
            return (self._jpeg if not self._closed else None), self._jpeg_version

    def current_jpeg(self, wait: float = 0.0) -> bytes | None:
        with self._cond:
            if self._latest is None and wait > 0:
                self._cond.wait_for(lambda: self._latest is not None or self._closed, timeout=wait)
        return self._encode()[0]

    def next_jpeg(self, after_version: int, timeout: float = 2.0) -> tuple[bytes | None, int]:
        """A frame newer than ``after_version``, no sooner than 1/max_fps after the last one."""
        with self._cond:
            wait = self._jpeg_at + 1.0 / self.max_fps - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        with self._cond:
            self._cond.wait_for(lambda: self._version != after_version or self._closed, timeout=timeout)
            if self._closed or self._version == after_version:
                return None, after_version
        return self._encode()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._latest = None
            self._jpeg = None
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> "PreviewServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
