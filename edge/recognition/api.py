"""The few public verbs of the recognition core.

    rec = Recognizer()                      # loads and verifies the models in the manifest
    faces = rec.faces(frame)                # detect -> align -> quality gate -> embed
    vec = rec.embed_image(image)            # one face expected: (128,) float32 unit vector

Frames are RGB uint8 arrays (H, W, 3); see :mod:`edge.recognition.images` for loading files.
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np

from edge.config import Config, load_config
from edge.errors import InputError
from edge.recognition.align import Aligner
from edge.recognition.detect import FaceDetector
from edge.recognition.embed import Embedder
from edge.recognition.images import check_frame
from edge.recognition.landmarks import LandmarkRefiner
from edge.recognition.quality import assess
from edge.recognition.runtime import find_models_dir, load_manifest, open_model, verified_sha256
from edge.types import Face

EMBEDDER_MODEL = "dlib_resnet_v1_int8"
LANDMARK_MODEL = "face_landmark"


def embedder_sha256(config: Config | None = None) -> str:
    """The sha256 a watchlist bundle must name for this unit's embedder (see
    :attr:`Recognizer.embedder_sha256`), checked against the file on disk; no model is loaded."""
    cfg = config or load_config(None)
    return verified_sha256(EMBEDDER_MODEL, cfg.runtime.models_dir or None)


class Recognizer:
    """Detection, alignment, quality gate and embedding on one set of loaded models.

    ``gated`` counts faces refused by the quality gate, by reason. ``stage_seconds`` sums the
    wall time spent per stage (detect, landmarks, align, quality, embed) since construction.
    """

    def __init__(self, config: Config | None = None, embedder_model: str = EMBEDDER_MODEL):
        self.config = config or load_config(None)
        rt = self.config.runtime
        models_dir = find_models_dir(rt.models_dir or None)
        self.manifest = load_manifest(models_dir)
        det_model = open_model(self.config.detector.model, models_dir, rt.threads, rt.prefer_edgetpu)
        emb_model = open_model(embedder_model, models_dir, rt.threads, rt.prefer_edgetpu)
        near = self.config.detector.near_model
        near_model = open_model(near, models_dir, rt.threads, rt.prefer_edgetpu) if near else None
        self.detector = FaceDetector.from_config(det_model, self.config, near_model)
        self.aligner = Aligner.from_manifest(self.manifest)
        self.refiner = None
        if self.aligner.source == "mesh":
            name = self.config.landmarks.model or self.manifest["alignment"].get("landmark_model", LANDMARK_MODEL)
            self.refiner = LandmarkRefiner(open_model(name, models_dir, rt.threads, rt.prefer_edgetpu),
                                           self.aligner.indices)
        self.embedder = Embedder(emb_model, self.config.embed.mirror_average)
        #: The embedder's identity, which bundles name and reports state: the manifest's sha256 of
        #: the CPU int8 model (an Edge TPU build is compiled from it and gives the same embeddings).
        self.embedder_sha256 = str(emb_model.spec["sha256"])
        #: The file actually loaded: the Edge TPU build on a Coral, else the same as above.
        self.loaded_embedder_sha256 = emb_model.sha256
        self.gated: Counter[str] = Counter()
        self.stage_seconds: Counter[str] = Counter()

    @property
    def delegates(self) -> dict[str, str]:
        """Which delegate each model runs on ('cpu' or 'edgetpu') and why."""
        models = [self.detector.model, self.embedder.model]
        if self.detector.near is not None:
            models.append(self.detector.near.model)
        if self.refiner is not None:
            models.append(self.refiner.model)
        return {m.name: f"{m.delegate} ({m.delegate_reason})" for m in models}

    def alignment_points(self, frame: np.ndarray, det) -> np.ndarray:
        """The (K, 2) frame-pixel points the aligner's template expects for this detection."""
        if self.refiner is None:
            return self.aligner.detector_points(det)
        t0 = time.perf_counter()
        points, _presence = self.refiner.points(frame, det)
        self.stage_seconds["landmarks"] += time.perf_counter() - t0
        return points

    def chip(self, frame: np.ndarray, det) -> np.ndarray:
        """The aligned 150x150 RGB uint8 chip of one detection."""
        return self.aligner.chip(frame, det, self.alignment_points(frame, det))

    def faces(self, frame: np.ndarray, embed: bool = True) -> list[Face]:
        """Every face in ``frame``: detection, aligned chip, quality and, for faces that pass
        the gate (and when ``embed``), the (128,) unit embedding. Highest detector score first."""
        q = self.config.quality
        t0 = time.perf_counter()
        detections = self.detector.detect(frame)
        t1 = time.perf_counter()
        self.stage_seconds["detect"] += t1 - t0
        out = []
        for det in detections:
            t1 = time.perf_counter()
            chip = self.chip(frame, det)
            t2 = time.perf_counter()
            quality = assess(det, chip, q.min_interocular_px, q.min_sharpness, q.max_abs_yaw_deg)
            t3 = time.perf_counter()
            self.stage_seconds["align"] += t2 - t1
            self.stage_seconds["quality"] += t3 - t2
            vec = None
            if not quality.passed:
                self.gated[quality.reason] += 1
            elif embed:
                vec = self.embedder.embed(chip)[0]
                self.stage_seconds["embed"] += time.perf_counter() - t3
            out.append(Face(det, chip, quality, vec))
        return out

    def embed_image(self, image: np.ndarray, use_gate: bool = True) -> np.ndarray:
        """The embedding of the single most prominent face (largest box) in ``image``.

        Raises InputError when no face is found or (with ``use_gate``) the face fails the gate.
        """
        image = check_frame(image, self.config.limits.max_image_pixels)
        faces = self.faces(image, embed=False)
        if not faces:
            raise InputError("no face found in the image")
        face = max(faces, key=lambda f: f.detection.width * f.detection.height)
        if use_gate and not face.quality.passed:
            raise InputError(f"face refused by the quality gate: {face.quality.reason}")
        return self.embedder.embed(face.chip)[0]
