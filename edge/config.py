"""The one configuration schema: every option, its type, default, range and meaning.

A config file is YAML (read with ``yaml.safe_load``) holding any subset of the sections
below; everything missing takes its default. Unknown keys, wrong types and out-of-range
values are refused with the key path and the reason (:class:`edge.errors.ConfigError`).
``edge-lfr config`` prints this schema.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .errors import ConfigError


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
        "model": Option("blazeface_full_range", str, "detector model name in the manifest",
                        choices=("blazeface_full_range", "blazeface_short_range")),
        "near_model": Option("blazeface_short_range", str, "second model run once on the whole frame for close-up faces "
                             "(enrolment photos, someone at the window); '' = off",
                             choices=("", "blazeface_short_range")),
        "near_score_threshold": Option(0.6, float, "minimum confidence of the close-up model", 0.05, 0.99),
        "score_threshold": Option(0.5, float, "minimum detector confidence for a face", 0.05, 0.99),
        "nms_iou": Option(0.3, float, "boxes overlapping more than this IoU are merged (weighted NMS)", 0.05, 0.95),
        "max_faces": Option(64, int, "at most this many faces per frame, highest score first", 1, 1000),
        "tile_size": Option(512, int, "square tile side in frame pixels for small faces in big frames; 0 = whole frame only", 0, 4096),
        "tile_overlap": Option(0.25, float, "fraction of a tile shared with its neighbour", 0.0, 0.5),
        "roi": Option([], list, "region of interest [x0, y0, x1, y1] as fractions of the frame; [] = whole frame"),
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
        "threshold_wanted": Option(0.95, float, "cosine score at or above which a 'wanted' entry alerts (0.95 ~ FPIR 1% per passer-by for ~800 listed people, measured on lfw-dev)", -1.0, 1.0),
        "threshold_missing": Option(0.95, float, "cosine score at or above which a 'missing' entry alerts", -1.0, 1.0),
        "threshold_vulnerable": Option(0.95, float, "cosine score at or above which a 'vulnerable' entry alerts", -1.0, 1.0),
        "top_k": Option(5, int, "candidates returned per probe", 1, 100),
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
    },
    "outbox": {
        "max_pending": Option(10_000, int, "undelivered alerts kept at most; when full, new alerts are refused and counted, never the oldest dropped", 10, 1_000_000),
        "retention_days": Option(30, int, "delivered alert rows are deleted after this many days", 1, 31),
        "max_crop_bytes": Option(32 * 1024, int, "largest JPEG carried in an alert, for the probe crop and for the reference thumbnail alike", 2048, 262144),
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


def _check(path: str, opt: Option, value: Any) -> Any:
    kind = opt.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{path}: expected {kind.__name__}, got {type(value).__name__} ({value!r:.60})")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {value!r}")
    if opt.min is not None and value < opt.min or opt.max is not None and value > opt.max:
        raise ConfigError(f"{path}: {value!r} is outside the allowed range [{opt.min}, {opt.max}]")
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(str, opt.choices))}")
    if path == "detector.roi" and value:
        if len(value) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{path}: expected [x0, y0, x1, y1] as four numbers, got {value!r:.80}")
        x0, y0, x1, y1 = (float(v) for v in value)
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ConfigError(f"{path}: fractions must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {value!r}")
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
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(SCHEMA)})")
    values: dict[str, dict[str, Any]] = {}
    for name, options in SCHEMA.items():
        given = data.get(name) or {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"{name}: expected a mapping of options, got {type(given).__name__}")
        bad = [str(k) for k in given if k not in options]
        if bad:
            raise ConfigError(f"{name}.{bad[0]}: unknown option (known: {', '.join(options)})")
        values[name] = {key: _check(f"{name}.{key}", opt, given[key]) if key in given else opt.default
                        for key, opt in options.items()}
    return Config(values)


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate a YAML config file; ``None`` gives the defaults."""
    if path is None:
        return validate({})
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    if len(text) > 1_000_000:
        raise ConfigError(f"{p}: config file is larger than 1 MB")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
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
