"""The one configuration schema: every option, its type, default, range and meaning.

A config file is YAML (read with ``yaml.safe_load``) holding any subset of the sections
below; everything missing takes its default. Unknown keys, wrong types and out-of-range
values are refused with the key path and the reason (:class:`edge.errors.ConfigError`).
``edge-lfr config`` prints this schema.
"""
from __future__ import annotations

import math
import posixpath
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from edge.errors import ConfigError
from edge.readfile import read_regular

#: a config file larger than this is refused unread
MAX_CONFIG_BYTES = 1_000_000


@dataclass(frozen=True)
class Option:
    default: Any
    kind: type
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None


SCHEMA: dict[str, dict[str, Option]] = {
    "runtime": {
        "threads": Option(2, int, "CPU threads per model interpreter", 1, 16),
        "models_dir": Option("", str, "folder with manifest.json and .tflite files ('' = the package's models/)"),
        "prefer_edgetpu": Option(True, bool, "use an *_edgetpu.tflite with the Coral delegate when both exist"),
    },
    "detector": {
        "model": Option("blazeface_full_range", str, "detector model name in the manifest: MediaPipe's float "
                        "BlazeFace (default: best measured accuracy, 99.07% on lfw-dev pairs) or its full-integer "
                        "rebuild *_int8 (same recall on the 43 ground-truth boxes, ~1.5x faster on the CPU, the only "
                        "kind the Coral Edge TPU runs; 98.87% on lfw-dev pairs)",
                        choices=("blazeface_full_range", "blazeface_short_range",
                                 "blazeface_full_range_int8", "blazeface_short_range_int8")),
        "near_model": Option("blazeface_short_range", str, "second model run once on the whole frame for close-up "
                             "faces (enrolment photos, someone at the window) and on tracked faces' search regions; "
                             "'' = off",
                             choices=("", "blazeface_short_range", "blazeface_short_range_int8")),
        "near_score_threshold": Option(0.6, float, "minimum confidence of the close-up model", 0.05, 0.99),
        "score_threshold": Option(0.5, float, "minimum detector confidence for a face", 0.05, 0.99),
        "nms_iou": Option(0.3, float, "boxes overlapping more than this IoU are merged (weighted NMS)", 0.05, 0.95),
        "max_faces": Option(64, int, "at most this many faces per frame, highest score first", 1, 1000),
        "tile_size": Option(512, int, "square tile side in frame pixels for small faces in big frames; 0 = whole frame only", 0, 4096),
        "tile_overlap": Option(0.25, float, "fraction of a tile shared with its neighbour", 0.0, 0.5),
        "roi": Option([], list, "region of interest [x0, y0, x1, y1] as fractions of the frame; [] = whole frame"),
    },
    "landmarks": {
        "model": Option("face_landmark", str, "face-mesh model that places the alignment points (eye corners, nose "
                        "base): MediaPipe's float model (default) or its full-integer rebuild face_landmark_int8 "
                        "(the kind the Coral Edge TPU runs; measured against float in docs/coral.md)",
                        choices=("face_landmark", "face_landmark_int8")),
    },
    "quality": {
        "min_interocular_px": Option(14.0, float, "eye-centre distance below which a face is too small", 0.0, 1000.0),
        "min_sharpness": Option(6.0, float, "variance of the Laplacian of the grey chip below which a face is blurred", 0.0, 10000.0),
        "max_abs_yaw_deg": Option(65.0, float, "estimated head yaw beyond which a face is a profile", 0.0, 90.0),
    },
    "embed": {
        "mirror_average": Option(True, bool, "embed each chip and its mirror image and average the two descriptors "
                                 "(measured on LFW pairs: 98.7% -> 99.1%; twice the embedding time)"),
    },
    "match": {
        "threshold_wanted": Option(0.95, float, "with score_normalisation false: the raw cosine at or above which a 'wanted' entry alerts (0.95 ~ FPIR 1% per passer-by for ~800 listed people, measured on lfw-dev)", -1.0, 1.0),
        "threshold_missing": Option(0.95, float, "with score_normalisation false: the raw cosine at or above which a 'missing' entry alerts", -1.0, 1.0),
        "threshold_vulnerable": Option(0.95, float, "with score_normalisation false: the raw cosine at or above which a 'vulnerable' entry alerts", -1.0, 1.0),
        "top_k": Option(5, int, "candidates returned per probe", 1, 100),
        "score_normalisation": Option(True, bool, "score with the model's background cohort (edge.matching.normalise: a look-alike of "
                                      "many people needs a higher raw cosine) and calibrated scores; each category's "
                                      "threshold then comes from its target_fpir_<category> (default target_fpir) and "
                                      "the loaded list's size, and the "
                                      "threshold_<category> cosines are not used (edge.matching.factory.build_matcher). "
                                      "false: raw cosine and threshold_<category>"),
        "target_fpir": Option(0.001, float, "with score_normalisation: the fraction of passers-by who are on no list that "
                              "may raise an alert (0.001 = 1 in 1,000), converted into a threshold for the loaded "
                              "list's size with the calibration shipped with the model", 1e-9, 0.5),
        "target_fpir_wanted": Option(0.0, float, "with score_normalisation: the target_fpir for 'wanted' subjects (the "
                                     "threshold of this category is the loaded list's threshold at this rate); "
                                     "0 = match.target_fpir", 0.0, 0.5),
        "target_fpir_missing": Option(0.0, float, "with score_normalisation: the target_fpir for 'missing' subjects "
                                      "(e.g. 0.01: a missing child is worth more false alarms than a suspect); "
                                      "0 = match.target_fpir", 0.0, 0.5),
        "target_fpir_vulnerable": Option(0.0, float, "with score_normalisation: the target_fpir for 'vulnerable' "
                                         "subjects; 0 = match.target_fpir", 0.0, 0.5),
    },
    "unit": {
        "id": Option("", str, "this unit's id, as registered with the issuer (letters, digits, '-', '_')"),
        "state_dir": Option("/var/lib/edge-lfr", str, "the only writable folder: loaded watchlist, outbox, audit log"),
        "device_key": Option("/etc/edge-lfr/device.key", str, "this unit's private key file (X25519 + Ed25519)"),
        "device_key_passphrase_file": Option("", str, "file holding the device key's passphrase ('' = unencrypted key)"),
        "trust_file": Option("/etc/edge-lfr/trust.yaml", str, "issuer public keys this unit accepts, with validity windows"),
    },
    "watchlist": {
        "clock_skew_seconds": Option(300, int, "tolerance when checking a bundle's validity window", 0, 86400),
        "trusted_clock": Option(True, bool, "false on a unit without a synchronised clock: validity is then reported as unverifiable"),
        "max_subjects": Option(100_000, int, "bundles with more subjects are refused", 1, 1_000_000),
        "max_bundle_bytes": Option(1 << 30, int, "bundle files larger than this are refused", 1024, 1 << 34),
        "max_templates_per_subject": Option(10, int, "bundles with a subject holding more enrolment templates are refused", 1, 100),
        "max_validity_hours": Option(168, int, "bundles whose validity window is longer are refused (built and loaded)", 1, 8760),
        "enrol_min_interocular_px": Option(24.0, float, "enrolment: eye distance below which an image is rejected as too_small (the live gate's quality.min_interocular_px also applies)", 0.0, 1000.0),
        "enrol_max_second_face_ratio": Option(0.8, float, "enrolment: an image whose second-largest face is at least this fraction of the largest face's width is rejected as multiple_faces", 0.1, 1.0),
    },
    "mqtt": {
        "host": Option("127.0.0.1", str, "broker host name or address (the van's own broker or headquarters')"),
        "port": Option(8883, int, "broker TLS port", 1, 65535),
        "ca_file": Option("/etc/edge-lfr/mqtt/ca.crt", str, "CA certificate that signed the broker's certificate"),
        "cert_file": Option("/etc/edge-lfr/mqtt/unit.crt", str, "this unit's client certificate (its CN is the MQTT user name)"),
        "key_file": Option("/etc/edge-lfr/mqtt/unit.key", str, "this unit's client certificate key"),
        "keepalive_seconds": Option(30, int, "MQTT keep-alive interval", 5, 600),
        "reconnect_min_seconds": Option(1.0, float, "first reconnect back-off", 0.1, 60.0),
        "reconnect_max_seconds": Option(30.0, float, "longest reconnect back-off", 1.0, 600.0),
        "health_interval_seconds": Option(30.0, float, "period of the health message", 1.0, 3600.0),
        "topic_prefix": Option("lfr", str, "topics are <prefix>/<unit>/alert|status|health|adjudication"),
        "session_expiry_seconds": Option(7 * 86400, int, "MQTT v5 session expiry: the broker keeps this unit's session (and queued adjudications) this long while it is offline", 0, 4294967295),
        "max_inflight": Option(10, int, "alerts published and not yet acknowledged (PUBACK) at most; kept below the broker's receive maximum", 1, 16),
        "max_adjudication_bytes": Option(4096, int, "inbound adjudication payloads larger than this are rejected unread", 256, 65536),
        "adjudication_rate_per_officer": Option(30, int, "inbound adjudications per minute one officer id may send "
                                                "(a minute's worth at once); more are ignored and counted "
                                                "(adjudications_rate_limited in health); all officers together "
                                                "get ten times this", 1, 6000),
    },
    "outbox": {
        "max_pending": Option(10_000, int, "undelivered alerts kept at most; when full, new alerts are refused and counted, never the oldest dropped", 10, 1_000_000),
        "retention_days": Option(30, int, "match records (alerts with their crops, delivered or not, and officers' "
                                 "adjudication records) are deleted this many days after the alert", 1, 31),
        "rejected_retention_hours": Option(24, int, "an alert an officer marked not a match (rejected) is deleted "
                                           "with its record this many hours after the decision (0 = at the next purge)", 0, 168),
        "min_free_mb": Option(200, int, "free space in unit.state_dir below which health reports disk_low "
                              "(alerts may then be refused: outbox_refused; the service keeps running and "
                              "publishing what it holds)", 0, 1_000_000),
        "max_crop_bytes": Option(32 * 1024, int, "largest JPEG carried in an alert, for the probe crop and for the reference thumbnail alike", 2048, 262144),
        "max_context_bytes": Option(24 * 1024, int, "largest JPEG of an alert's context image (the scene around the "
                                    "matched face, about 3 face widths by 4, every other face blurred)", 4096, 262144),
    },
    "privacy": {
        "audit_checkpoint_entries": Option(100, int, "a checkpoint signed with the unit key is appended to the audit log "
                                           "after this many entries (and at every stop and purge)", 1, 100_000),
        "audit_retention_days": Option(31, int, "audit entries older than this are deleted (they hold subject ids and "
                                       "counts, never images); the rest stays verifiable from a signed anchor", 1, 31),
        "audit_stats_seconds": Option(300.0, float, "period of the counts entry in the audit log (faces processed, "
                                      "gated by reason, alerts: counts only)", 10.0, 3600.0),
        "purge_interval_seconds": Option(3600.0, float, "period of the retention purge while the service runs "
                                         "(also run at start and by edge-lfr audit purge)", 60.0, 86400.0),
        "deployment_end_wipe_hours": Option(24.0, float, "the watchlist is deleted this long after the deployment ended "
                                            "(the service stopped, or was last alive, and did not start again)", 0.0, 24.0),
        "location_label": Option("", str, "where the unit is deployed, as published in deployment reports "
                                 "(a place name, never personal data)"),
        "calibrated_fpir": Option(0.01, float, "with match.score_normalisation false: the false-positive identification "
                                  "rate per passer-by the threshold_<category> cosines were calibrated for, stated in "
                                  "deployment reports (with normalisation the report states match.target_fpir and the per-category targets)", 0.0, 1.0),
        "calibration_reference": Option("lfw-dev, ~800 listed people", str, "with match.score_normalisation false: what "
                                        "that calibration was measured on, stated in deployment reports"),
        "preview_port": Option(0, int, "operator preview on http://127.0.0.1:PORT (0 = off): loopback only, every face "
                               "that is not a current match blurred beyond recognition", 0, 65535),
        "preview_max_fps": Option(5.0, float, "frames per second the operator preview encodes at most", 0.5, 30.0),
        "preview_mode": Option("scene", str, "scene: the whole preview is coarsened and only current matches are shown "
                               "as they are (a face the detector missed is obscured too); faces: the frame as it is "
                               "with every detected or tracked face that is not a match blurred", choices=("scene", "faces")),
    },
    "camera": {
        "source": Option("picamera2", str, "where frames come from: the Pi camera (picamera2), a local V4L2/USB camera "
                         "(v4l2) or a local video file / image folder replayed for rigs and tests (file). Network "
                         "sources (rtsp, http, udp, ...) are refused: the unit is standalone and takes no CCTV feed",
                         choices=("picamera2", "v4l2", "file")),
        "device": Option("/dev/video0", str, "v4l2: the camera device (/dev/videoN, /dev/v4l/by-id/..., or an index like 0)"),
        "path": Option("", str, "file: a local video file or a folder of images (sorted by name); required when source is file"),
        "width": Option(1920, int, "frame width in pixels (cameras; files are used at their own size)", 64, 8192),
        "height": Option(1080, int, "frame height in pixels (cameras; files are used at their own size)", 64, 8192),
        "fps": Option(30.0, float, "frame rate asked of the camera; the timeline rate of an image folder "
                      "(and of a video file that does not state its own)", 1.0, 240.0),
        "exposure_us": Option(0, int, "picamera2: fixed exposure time in microseconds (0 = automatic exposure)", 0, 1_000_000),
        "analogue_gain": Option(0.0, float, "picamera2: fixed analogue gain (0 = automatic)", 0.0, 64.0),
        "fourcc": Option("MJPG", str, "v4l2: pixel format asked of the camera", choices=("MJPG", "YUYV")),
        "pace": Option("realtime", str, "file: deliver frames at their timestamps (realtime: late frames are dropped "
                       "like a camera's) or as fast as the pipeline takes them (fast: nothing is dropped)",
                       choices=("realtime", "fast")),
        "loop": Option(False, bool, "file: start again at the end (soak tests); otherwise the run ends with the file"),
    },
    "track": {
        "max_center_distance": Option(1.0, float, "a detection continues a track when its centre is within this many "
                                      "face widths of the track's predicted centre", 0.05, 10.0),
        "max_size_ratio": Option(1.6, float, "... and its width is within this factor of the track's", 1.0, 10.0),
        "max_missed_seconds": Option(0.7, float, "a track not seen for this long ends (its faces and embeddings are dropped)", 0.05, 60.0),
        "min_hits": Option(2, int, "detections a track needs before it is embedded (filters one-frame false detections)", 1, 100),
        "max_embeds": Option(4, int, "embeddings per track at most (the per-track embedding budget); the track's probe is "
                             "their fusion (edge.recognition.fusion.fuse_embeddings, weighted by quality)", 1, 100),
        "max_attempts": Option(12, int, "landmark + quality attempts per track at most (including faces refused by the gate)", 1, 1000),
        "embed_interval_seconds": Option(0.15, float, "at least this long between two attempts on one track", 0.0, 60.0),
        "min_improvement": Option(0.15, float, "after the first embedding, a face is embedded again only if its quality "
                                  "score beats the best so far by this fraction", 0.0, 10.0),
        "same_person_min_similarity": Option(0.92, float, "a new embedding less similar than this to its track's fused "
                                             "embedding and to each of its embeddings is another person (tracks crossed, "
                                             "or someone took the spot): the track is split. lfw-dev: two strangers' "
                                             "faces reach 0.88 in 10% of pairs, 0.92 in 0.26%", -1.0, 1.0),
        "reid_seconds": Option(2.0, float, "a new track whose first embedding resembles a track that ended at most this "
                               "long ago continues it (same id, alerts already raised stay raised)", 0.0, 600.0),
        "reid_min_similarity": Option(0.93, float, "similarity needed for that continuation", -1.0, 1.0),
        "realert_cooldown_seconds": Option(60.0, float, "after an alert for a subject, no other alert for that subject "
                                           "(from any track) for this long; one track alerts at most once per subject", 0.0, 86400.0),
        "max_tracks": Option(64, int, "live tracks at most; further faces wait until a track ends", 1, 10000),
        "verify_interval_seconds": Option(1.0, float, "an embedded track whose budget is spent (or whose quality stopped "
                                          "improving) is embedded again this often, so that someone stepping into the "
                                          "spot another person just left is seen as a new person (the track splits)",
                                          0.1, 60.0),
        "max_speed": Option(20.0, float, "fastest a face is expected to cross the frame, in face widths per second: the "
                            "search region of a track seen once (no velocity yet) covers this far for the time since "
                            "it was seen (frames in flight included); known velocities widen it by their uncertainty",
                            0.5, 200.0),
        "second_look_margin": Option(0.1, float, "second look: a track whose best candidate scored below the threshold "
                                     "by at most this (calibrated score; 0.1 = one decade of false-match rate) keeps "
                                     "being embedded beyond max_embeds, on its best-quality faces", 0.0, 1.0),
        "second_look_embeds": Option(4, int, "second look: extra embeddings per track at most (0 = off)", 0, 100),
        "verify_jump_iou": Option(0.3, float, "... and at once when its box jumps: overlap with the predicted box below "
                                  "this", 0.0, 1.0),
    },
    "pipeline": {
        "workers": Option(2, int, "inference threads, each with its own detector, landmark and embedding models", 1, 16),
        "queue_frames": Option(4, int, "captured frames waiting for a worker at most; when full the oldest is dropped "
                               "and counted (live sources) or capture waits (file source with pace: fast)", 1, 256),
        "scan_views_per_frame": Option(2, int, "views of the round-robin scan for new faces run per frame (the cycle is "
                                       "the whole frame, the close-up model and the detector tiles); tracked faces "
                                       "are looked for around their predicted position in every frame", 1, 64),
        "roi_scale": Option(3.0, float, "side of a tracked face's search region, in face widths", 1.5, 10.0),
        "roi_model": Option("short_range", str, "detector run on the tracked faces' search regions: short_range (the "
                            "close-up model, ~3x cheaper; measured: same recall, tighter boxes on such crops) or "
                            "full_range; short_range needs detector.near_model", choices=("short_range", "full_range")),
        "lockstep": Option("auto", str, "replay in lockstep so a run is reproducible: a frame's tracked-face regions come "
                           "from the tracker as it was lockstep_lag_frames frames before, and embeddings are applied "
                           "lockstep_embed_frames frames after they were asked for, whatever the thread timing. auto: "
                           "for sources that wait for the pipeline (file with pace: fast); never for a live source",
                           choices=("auto", "on", "off")),
        "lockstep_lag_frames": Option(2, int, "lockstep: frames detected at once (a frame is searched around the tracks "
                                      "as they were this many frames before); also the same with any worker count", 1, 16),
        "lockstep_embed_frames": Option(3, int, "lockstep: an embedding asked for at frame n joins its track before "
                                        "frame n + this is tracked", 1, 64),
        "max_embed_queue": Option(16, int, "embedding jobs waiting at most (each holds its frame in memory)", 1, 1024),
        "status_interval_seconds": Option(10.0, float, "period of the status line in the log and systemd STATUS", 1.0, 3600.0),
        "watchlist_poll_seconds": Option(5.0, float, "period of checks for a watchlist loaded, wiped or expired by another process", 0.5, 3600.0),
        "stall_seconds": Option(15.0, float, "no frame processed for this long: the systemd watchdog is no longer fed "
                                "(systemd then restarts the service)", 1.0, 3600.0),
    },
    "limits": {
        "max_image_pixels": Option(40_000_000, int, "images with more pixels are refused before decoding", 1, 400_000_000),
        "max_image_bytes": Option(64 * 1024 * 1024, int, "image files larger than this are refused", 1, 1 << 31),
    },
}


class Section:
    """Read-only attribute view of one validated section."""

    def __init__(self, name: str, values: Mapping[str, Any]):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"config section {self._name!r} has no option {key!r}") from None

    def __setattr__(self, key, value):
        raise AttributeError("configuration is read-only")

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Section({self._name}, {self._values})"


class Config:
    """Validated configuration: ``cfg.detector.score_threshold`` etc."""

    def __init__(self, values: Mapping[str, Mapping[str, Any]]):
        self._sections = {name: Section(name, values[name]) for name in SCHEMA}

    def __getattr__(self, name: str) -> Section:
        try:
            return self.__dict__["_sections"][name]
        except KeyError:
            raise AttributeError(f"no config section {name!r}") from None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: s.as_dict() for name, s in self._sections.items()}


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def _short(value: Any) -> str:
    """A bounded repr for error messages (a YAML alias bomb must not be expanded)."""
    try:
        return _SHORT.repr(value)[:80]
    except Exception:  # pragma: no cover - repr of a YAML value does not fail
        return f"<{type(value).__name__}>"


# Any "scheme://" and the bare schemes FFmpeg / OpenCV / GStreamer would open over a network.
_URL = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.\-]*)://")
_NET_SCHEME = re.compile(r"^\s*(rtsps?|rtmp[ste]*|rtp|srtp?|udp|tcp|tls|https?|ftps?|sftp|mmsh?|mmst|hls|"
                         r"gopher|smb|wss?|sdp|data|pipe|unix|concat|subfile|crypto|async|cache|icecast|"
                         r"ipfs|ipns|zmq|rist|librtmp\w*|ndi|sap|v4l2|gst\w*|souphttpsrc)\s*:", re.I)
# Local files FFmpeg would treat as a list of (possibly remote) sources.
_PLAYLISTS = (".sdp", ".m3u", ".m3u8", ".pls", ".ffconcat", ".concat", ".xspf", ".asx", ".url", ".strm")


def refuse_network_source(path: str, value: str) -> None:
    """Raise ConfigError when ``value`` names a network source (any URL scheme, a GStreamer
    pipeline, or a playlist that would pull one): this unit is standalone."""
    m = _URL.match(value) or _NET_SCHEME.match(value)
    why = None
    if m:
        why = f"URL scheme {m.group(1).lower()!r}"
    elif "!" in value:
        why = "a GStreamer pipeline ('!')"
    elif value.strip().lower().endswith(_PLAYLISTS):
        why = "a playlist / session description that would open network streams"
    if why:
        raise ConfigError(f"{path}: {_short(value)} is a network source ({why}); refused: this unit is "
                          "standalone and takes no CCTV or network feed. Use the Pi camera, a local V4L2 "
                          "device or a local file")


_DEVICE = re.compile(r"(/dev/[A-Za-z0-9._:/+-]{1,200}|[0-9]{1,3})")
#: unit ids and the topic prefix: one MQTT topic level of plain characters (matched whole: fullmatch)
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _check(path: str, opt: Option, value: Any) -> Any:
    kind = opt.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{path}: {_short(value)} is outside the allowed range [{opt.min}, {opt.max}]") from None
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{path}: expected {kind.__name__}, got {type(value).__name__} ({_short(value)})")
    if kind is str and "\x00" in value:
        raise ConfigError(f"{path}: contains a NUL character")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {_short(value)}")
    if opt.min is not None and value < opt.min or opt.max is not None and value > opt.max:
        raise ConfigError(f"{path}: {_short(value)} is outside the allowed range [{opt.min}, {opt.max}]")
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{path}: {_short(value)} is not one of {', '.join(map(str, opt.choices))}")
    if path in ("camera.path", "camera.device") and value:
        refuse_network_source(path, value)
    if path == "camera.device" and (not _DEVICE.fullmatch(value) or (
            value.startswith("/dev/") and (posixpath.normpath(value) != value
                                           or any(part in (".", "..") for part in value.split("/"))))):
        raise ConfigError(f"{path}: {_short(value)} is not a local camera device (expected /dev/videoN, "
                          "a /dev/v4l/... link, or an index such as 0; no '.', '..' or '//' in the path)")
    if path == "mqtt.topic_prefix" and not ID_RE.fullmatch(value):
        raise ConfigError(f"{path}: {_short(value)} must be 1-64 letters, digits, '-' or '_' (one topic level)")
    if path == "unit.id" and value and not ID_RE.fullmatch(value):
        raise ConfigError(f"{path}: {_short(value)} must be 1-64 letters, digits, '-' or '_'")
    if path == "detector.roi" and value:
        if len(value) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{path}: expected [x0, y0, x1, y1] as four numbers, got {_short(value)}")
        try:
            x0, y0, x1, y1 = (float(v) for v in value)
        except OverflowError:
            raise ConfigError(f"{path}: fractions must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, "
                              f"got {_short(value)}") from None
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ConfigError(f"{path}: fractions must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {_short(value)}")
        value = [x0, y0, x1, y1]
    return value


def validate(data: Any) -> Config:
    """Validate a mapping (as parsed from YAML) against SCHEMA; return a Config.

    Raises ConfigError naming the key path and the reason for the first problem found.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"<root>: expected a mapping of sections, got {type(data).__name__}")
    unknown = [str(k) for k in data if k not in SCHEMA]
    if unknown:
        raise ConfigError(f"{unknown[0][:60]}: unknown section (known: {', '.join(SCHEMA)})")
    values: dict[str, dict[str, Any]] = {}
    for name, options in SCHEMA.items():
        given = data.get(name)
        if given is None:             # "camera:" with every option commented out
            given = {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"{name}: expected a mapping of options, got {type(given).__name__}")
        bad = [str(k) for k in given if k not in options]
        if bad:
            raise ConfigError(f"{name}.{bad[0][:60]}: unknown option (known: {', '.join(options)})")
        values[name] = {key: _check(f"{name}.{key}", opt, given[key]) if key in given else opt.default
                        for key, opt in options.items()}
    _cross_checks(values)
    return Config(values)


def category_target_fpir(match_section) -> dict[str, float]:
    """The target FPIR of each category (``match.target_fpir_<category>``, 0 = ``match.target_fpir``),
    from a config's ``match`` section (a :class:`Section` or a mapping)."""
    from edge.types import CATEGORIES
    get = match_section.get if isinstance(match_section, Mapping) else (lambda k: getattr(match_section, k))
    base = float(get("target_fpir"))
    return {c: (float(get(f"target_fpir_{c}")) or base) for c in CATEGORIES}


def _cross_checks(values: Mapping[str, Mapping[str, Any]]) -> None:
    """Rules that involve more than one option."""
    cam = values["camera"]
    if cam["source"] == "file" and not cam["path"].strip():
        raise ConfigError("camera.path: required when camera.source is file (a local video file or image folder)")
    m = values["mqtt"]
    if m["reconnect_min_seconds"] > m["reconnect_max_seconds"]:
        raise ConfigError(f"mqtt.reconnect_min_seconds: {m['reconnect_min_seconds']} is more than "
                          f"mqtt.reconnect_max_seconds {m['reconnect_max_seconds']}")


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a YAML config file; ``None`` gives the defaults."""
    if path is None:
        return validate({})
    p = Path(path)
    data = read_regular(p, MAX_CONFIG_BYTES, "config file", ConfigError)  # no FIFO, no /dev/zero
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    return parse_text(text, str(p))


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last
    one silently: a reviewer reading the first would be misled)."""


def _construct_unique_mapping(loader, node, deep=False):
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {_short(key)} (first at line {seen[key].line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark
            except TypeError:
                pass  # an unhashable key: construct_mapping names it
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def safe_load_unique(text: str):
    """``yaml.safe_load`` that refuses duplicate keys (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_text(text: str, where: str = "<config>") -> Config:
    """Validate configuration YAML given as text (``where`` names it in errors)."""
    try:
        data = safe_load_unique(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    except (ValueError, TypeError, OverflowError) as exc:  # safe_load: bad !!int, !!float or dates like 2020-02-31
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from None
    return validate(data)


def describe() -> str:
    """The schema as readable text: section.option, type, default, range, meaning."""
    lines = []
    for name, options in SCHEMA.items():
        lines.append(f"{name}:")
        for key, opt in options.items():
            rng = ""
            if opt.choices:
                rng = f" one of {list(opt.choices)}"
            elif opt.min is not None:
                rng = f" in [{opt.min}, {opt.max}]"
            lines.append(f"  {key}: {opt.default!r}  ({opt.kind.__name__}{rng}) {opt.help}")
    return "\n".join(lines)
