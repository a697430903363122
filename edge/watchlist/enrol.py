"""Enrolment: a folder of images plus a manifest -> embeddings, thumbnails and a per-image report.

Every image goes through the unit's own pipeline (:class:`edge.recognition.api.Recognizer`: the same
detector, alignment, quality gate and int8 embedder, so the same model hash), and is either
accepted (one template row) or rejected with a reason, never silently enrolled:

=================  ===========================================================================
reason             meaning
=================  ===========================================================================
unreadable         missing, empty, corrupt or oversized file
no_face            the detector found no face
multiple_faces     a second face at least ``watchlist.enrol_max_second_face_ratio`` of the
                   largest face's width: it is not clear who the record shows
profile            head yaw beyond ``quality.max_abs_yaw_deg`` (checked first: a turned head
                   also shows a short eye distance)
too_small          eye distance under ``watchlist.enrol_min_interocular_px`` (or the live gate's)
blurred            sharpness under ``quality.min_sharpness``
=================  ===========================================================================

The face enrolled is the largest one. A subject may list several images (best first); each
accepted image is one template, and the first accepted image gives the subject's reference
thumbnail (the aligned face, 112x112 JPEG) for officers' side-by-side review. A subject none
of whose images is accepted is not enrolled and is named in the report.

Manifest formats
----------------
CSV, one row per image, header required (``threshold`` optional, empty = category default)::

    subject_id,category,reason_code,image,source_ref,threshold
    S-0001,wanted,W-ASSAULT,S-0001/custody.jpg,PNC custody image 2024-05-01 ref 8812,
    S-0001,wanted,W-ASSAULT,S-0001/cctv.jpg,CCTV still case 44/2024,
    S-0002,missing,M-CHILD,S-0002/family.jpg,Family photo supplied 2024-06-02,0.78

YAML, one entry per subject::

    subjects:
      - id: S-0001
        category: wanted
        reason_code: W-ASSAULT
        threshold: 0.82            # optional
        images:
          - {path: S-0001/custody.jpg, source: "PNC custody image 2024-05-01 ref 8812"}

Rows of one subject must agree on category, reason code and threshold; a subject id listed
twice in YAML, or an image listed twice for a subject, is an error.
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import yaml

from edge.errors import EdgeError, WatchlistError
from edge.progress import Progress
from edge.recognition.images import load_image
from edge.recognition.quality import gate
from edge.watchlist.bundle import (
    SubjectEntry,
    check_category,
    check_reason_code,
    check_source,
    check_subject_id,
    check_threshold,
)

__all__ = ["EnrolmentError", "ManifestError", "EnrolImage", "EnrolSubject", "ImageReport", "Enrolment",
           "read_manifest", "assess_image", "enrol", "thumbnail_jpeg", "REASONS"]

REASONS = ("unreadable", "no_face", "multiple_faces", "too_small", "profile", "blurred")
THUMBNAIL_PX = 112
THUMBNAIL_QUALITY = 85
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
CSV_COLUMNS = ("subject_id", "category", "reason_code", "image", "source_ref", "threshold")


class ManifestError(WatchlistError):
    """An enrolment manifest that cannot be used as written (names file and line)."""

    exit_code = 65


class EnrolmentError(WatchlistError):
    """Enrolment produced nothing usable, or --strict and an image was rejected."""

    exit_code = 65


@dataclass(frozen=True)
class EnrolImage:
    path: str       # relative to the images folder, '/'-separated
    source: str     # image source reference (recorded in the signed manifest)


@dataclass(frozen=True)
class EnrolSubject:
    id: str
    category: str
    reason_code: str
    threshold: float | None
    images: tuple[EnrolImage, ...]
    where: str = ""  # "file:line" of its first appearance, for messages


@dataclass
class ImageReport:
    subject_id: str
    image: str
    source: str
    accepted: bool
    reason: str | None = None
    detail: str = ""
    faces: int = 0
    interocular_px: float | None = None
    sharpness: float | None = None
    yaw_deg: float | None = None


@dataclass
class Enrolment:
    subjects: list[SubjectEntry]
    embeddings: np.ndarray            # (templates, D) float32, rows grouped by subject
    thumbnails: dict[int, bytes]      # subject index -> JPEG
    images: list[ImageReport] = field(default_factory=list)
    not_enrolled: list[str] = field(default_factory=list)

    def report(self) -> dict:
        by_reason = Counter(r.reason for r in self.images if not r.accepted)
        return {
            "images": len(self.images), "accepted": sum(r.accepted for r in self.images),
            "rejected": sum(not r.accepted for r in self.images),
            "rejected_by_reason": {k: by_reason.get(k, 0) for k in REASONS},
            "subjects_enrolled": len(self.subjects), "subjects_not_enrolled": list(self.not_enrolled),
            "templates": int(self.embeddings.shape[0]),
            "per_image": [asdict(r) for r in self.images],
        }


# --------------------------------------------------------------------------------------
# Manifest reading
# --------------------------------------------------------------------------------------


def _image_path(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: image path must be a non-empty text")
    p = value.strip().replace("\\", "/")
    if p.startswith("/") or (len(p) > 1 and p[1] == ":"):
        raise ManifestError(f"{where}: image path {value!r} must be relative to the images folder")
    parts = PurePosixPath(p).parts
    if ".." in parts:
        raise ManifestError(f"{where}: image path {value!r} must not contain '..'")
    return str(PurePosixPath(*parts))


def _field(check, value, where: str):
    try:
        return check(value, ManifestError)
    except ManifestError as exc:
        raise ManifestError(f"{where}: {exc}") from None


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{path}: {size:,} bytes, over the {MAX_MANIFEST_BYTES:,}-byte manifest limit")
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: manifest is not UTF-8 text") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc.strerror or exc}") from None


def _read_csv(path: Path, text: str) -> list[EnrolSubject]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ManifestError(f"{path}: empty manifest") from None
    except csv.Error as exc:
        raise ManifestError(f"{path}:1: {exc}") from None
    need = [c for c in CSV_COLUMNS if c != "threshold"]
    missing = [c for c in need if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        raise ManifestError(f"{path}:1: header must be {','.join(CSV_COLUMNS)} (threshold optional); "
                            f"missing {missing}, unknown {unknown}")
    col = {c: header.index(c) for c in header}
    order: list[str] = []
    subj: dict[str, dict] = {}
    try:
        for row in reader:
            line = reader.line_num
            where = f"{path}:{line}"
            if not any(x.strip() for x in row):
                continue
            if len(row) != len(header):
                raise ManifestError(f"{where}: {len(row)} fields, the header has {len(header)}")
            get = lambda c: row[col[c]].strip() if c in col else ""  # noqa: E731
            sid = _field(check_subject_id, get("subject_id"), where)
            cat = _field(check_category, get("category"), where)
            reason = _field(check_reason_code, get("reason_code"), where)
            t_text = get("threshold")
            if t_text:
                try:
                    t_val = float(t_text)
                except ValueError:
                    raise ManifestError(f"{where}: threshold {t_text!r} is not a number") from None
            else:
                t_val = None
            thr = _field(check_threshold, t_val, where)
            img = EnrolImage(_image_path(get("image"), where), _field(check_source, get("source_ref"), where))
            s = subj.get(sid)
            if s is None:
                subj[sid] = {"category": cat, "reason": reason, "threshold": thr, "images": [img], "where": where}
                order.append(sid)
                continue
            for name, old, new in (("category", s["category"], cat), ("reason code", s["reason"], reason),
                                   ("threshold", s["threshold"], thr)):
                if old != new:
                    raise ManifestError(f"{where}: subject {sid!r} has {name} {new!r} here but {old!r} at "
                                        f"{s['where']}; rows of one subject must agree")
            if any(i.path == img.path for i in s["images"]):
                raise ManifestError(f"{where}: image {img.path!r} is listed twice for subject {sid!r}")
            s["images"].append(img)
    except csv.Error as exc:
        raise ManifestError(f"{path}:{reader.line_num}: {exc}") from None
    return [EnrolSubject(sid, subj[sid]["category"], subj[sid]["reason"], subj[sid]["threshold"],
                         tuple(subj[sid]["images"]), subj[sid]["where"]) for sid in order]


def _read_yaml(path: Path, text: str) -> list[EnrolSubject]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"subjects"} or not isinstance(doc["subjects"], list):
        raise ManifestError(f"{path}: expected a mapping with one key 'subjects' holding a list")
    out: list[EnrolSubject] = []
    seen: dict[str, int] = {}
    for i, s in enumerate(doc["subjects"]):
        where = f"{path}: subjects[{i}]"
        if not isinstance(s, dict):
            raise ManifestError(f"{where}: expected a mapping")
        extra = set(s) - {"id", "category", "reason_code", "threshold", "images"}
        if extra:
            raise ManifestError(f"{where}: unknown key {sorted(map(str, extra))[0]!r}")
        sid = _field(check_subject_id, s.get("id"), where)
        if sid in seen:
            raise ManifestError(f"{where}: duplicate subject id {sid!r} (also subjects[{seen[sid]}])")
        seen[sid] = i
        images = s.get("images")
        if not isinstance(images, list) or not images:
            raise ManifestError(f"{where} ({sid}): images must be a non-empty list of {{path, source}}")
        imgs: list[EnrolImage] = []
        for j, im in enumerate(images):
            w = f"{where}.images[{j}]"
            if not isinstance(im, dict) or set(im) != {"path", "source"}:
                raise ManifestError(f"{w}: expected {{path: ..., source: ...}}")
            img = EnrolImage(_image_path(im["path"], w), _field(check_source, im["source"], w))
            if any(x.path == img.path for x in imgs):
                raise ManifestError(f"{w}: image {img.path!r} is listed twice for subject {sid!r}")
            imgs.append(img)
        out.append(EnrolSubject(sid, _field(check_category, s.get("category"), where),
                                _field(check_reason_code, s.get("reason_code"), where),
                                _field(check_threshold, s.get("threshold"), where), tuple(imgs), where))
    return out


def read_manifest(path: str | os.PathLike) -> list[EnrolSubject]:
    """Read a CSV (``.csv``) or YAML (``.yaml``/``.yml``) enrolment manifest."""
    p = Path(path)
    text = _read_text(p)
    if p.suffix.lower() == ".csv":
        subjects = _read_csv(p, text)
    elif p.suffix.lower() in (".yaml", ".yml"):
        subjects = _read_yaml(p, text)
    else:
        raise ManifestError(f"{p}: manifest must be .csv, .yaml or .yml")
    if not subjects:
        raise ManifestError(f"{p}: the manifest lists no subjects")
    return subjects


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def thumbnail_jpeg(chip: np.ndarray, size: int = THUMBNAIL_PX, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """The aligned face chip (RGB) as a small JPEG for the officer's side-by-side review."""
    small = cv2.resize(chip, (size, size), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 image
        raise EnrolmentError("could not encode a thumbnail")
    return buf.tobytes()


def assess_image(recognizer, image: np.ndarray, config=None):
    """(face, report fields): the largest face (embedded) and its measurements, or None and the
    rejection reason with a detail."""
    cfg = config or recognizer.config
    w = cfg.watchlist
    faces = recognizer.faces(image)  # the public path: faces passing the live gate are embedded
    info = {"faces": len(faces)}
    if not faces:
        return None, {**info, "reason": "no_face", "detail": "the detector found no face"}
    faces = sorted(faces, key=lambda f: -f.detection.width)
    main = faces[0]
    q = main.quality
    info.update(interocular_px=round(q.interocular_px, 1), sharpness=round(q.sharpness, 1), yaw_deg=round(q.yaw_deg, 1))
    if len(faces) > 1:
        ratio = faces[1].detection.width / max(main.detection.width, 1e-6)
        if ratio >= w.enrol_max_second_face_ratio:
            return None, {**info, "reason": "multiple_faces",
                          "detail": f"{len(faces)} faces; the second is {ratio:.0%} of the largest's width"}
    qc = cfg.quality
    failed = gate(q.interocular_px, q.sharpness, q.yaw_deg, max(w.enrol_min_interocular_px, qc.min_interocular_px),
                  qc.min_sharpness, qc.max_abs_yaw_deg)
    if failed:
        return None, {**info, "reason": failed[0], "detail": failed[1]}
    return main, info


def enrol(subjects: list[EnrolSubject], images_dir: str | os.PathLike, recognizer, config=None,
          progress: bool = True) -> Enrolment:
    """Run every image of every subject through the unit's pipeline (see the module docstring)."""
    cfg = config or recognizer.config
    root = Path(images_dir)
    if not root.is_dir():
        raise EnrolmentError(f"{root}: images folder not found")
    rows: list[np.ndarray] = []
    entries: list[SubjectEntry] = []
    thumbs: dict[int, bytes] = {}
    reports: list[ImageReport] = []
    not_enrolled: list[str] = []
    total = sum(len(s.images) for s in subjects)
    with Progress(total, "enrolling", enabled=progress, unit="img") as bar:
        for s in subjects:
            sources: list[str] = []
            thumb = None
            for img in s.images:
                rep = ImageReport(s.id, img.path, img.source, False)
                unreadable = False
                try:
                    image = load_image(root / img.path, cfg.limits.max_image_pixels, cfg.limits.max_image_bytes)
                except EdgeError as exc:
                    rep.reason, rep.detail = "unreadable", str(exc)
                    unreadable = True
                else:
                    face, info = assess_image(recognizer, image, cfg)
                    for k, v in info.items():
                        setattr(rep, k, v)
                    if face is not None and face.embedding is None:  # pragma: no cover - gate mismatch
                        face, info = None, {"reason": "blurred", "detail": "refused by the live quality gate"}
                        rep.reason, rep.detail = info["reason"], info["detail"]
                    if face is not None:
                        rows.append(np.asarray(face.embedding, dtype=np.float32))
                        sources.append(img.source)
                        rep.accepted = True
                        if thumb is None:
                            thumb = thumbnail_jpeg(face.chip)
                reports.append(rep)
                bar.update(skipped=unreadable)
            if sources:
                if thumb is not None:
                    thumbs[len(entries)] = thumb
                entries.append(SubjectEntry(s.id, s.category, s.reason_code, tuple(sources), s.threshold))
            else:
                not_enrolled.append(s.id)
    emb = np.stack(rows) if rows else np.empty((0, 128), np.float32)
    return Enrolment(entries, emb, thumbs, reports, not_enrolled)
