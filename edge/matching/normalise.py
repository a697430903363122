"""Cohort score normalisation: how unusual is this cosine for *these two* faces?

A raw cosine means different things for different people. A face in a crowded region of the
embedding space (a common look, or a group the network separates less well) scores high
against many strangers, so a raw threshold that is right for most people raises false
alarms on its look-alikes and misses nobody; a face in a sparse region is the opposite. The
watchlist's false alarms are those look-alikes (issue 8: "the top false alarms are genuine
look-alikes, many of them East Asian or Black subjects").

The normalised score compares a cosine with what each of the two faces scores against a
**background cohort** of people who are on no list (faces shipped with the model, fitted on
lfw-dev identities that have a single image; ``models/background_cohort.npy``)::

    mu_x, sd_x = mean and standard deviation of x's top_k cosines against the cohort
    t(p, g) = ( (s - mu_g) / sd_g        listed person: a subject who resembles many
              + (s - mu_p) / sd_p        passer-by:     strangers needs a higher raw score
              + (s - mu_0) / sd_0 ) / 3  everyone:      the cohort's own typical mu, sd

where ``s`` is the cosine of the probe ``p`` and the subject's template ``g``. The first
term is a per-subject adaptive threshold fixed at enrolment (Z-norm, computed once when a
list is loaded), the second a per-probe one (T-norm), both "adaptive" (top-k of the cohort,
the region the face lives in, not all of it); together they are the symmetric S-norm. The
third term is the same z-score with cohort-wide constants: it stabilises the other two
where the local estimate is noisy (a face in a sparse region has few close cohort
neighbours and a wide spread, which would otherwise shrink its genuine scores). ``t`` is in
standard deviations; :mod:`edge.matching.calibration` turns it into a calibrated score.

Cost on the unit, per probe: one (C, D) @ (D,) product against the cohort and a partial
sort (C = 1,364), then two multiply-adds per listed subject. The subjects' own
(mu_g, sd_g) are computed once when a list is loaded (N x C products).

Measured on lfw-dev with identity-disjoint cross-fitting (``edge-lfr eval lfw``,
``docs/accuracy.md``); a learned linear projection (within-class whitening, LDA, nuisance
projection) fitted the same way made every figure worse, so none is applied
(``models/fit_projection.py`` reproduces that measurement).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edge.errors import InputError, ModelError
from edge.matching.calibration import ScoreCalibration
from edge.recognition.runtime import find_models_dir

__all__ = ["ScoreModel", "fit_score_model", "load_score_model", "MANIFEST_SECTION", "COHORT_FILE",
           "DEFAULT_TOP_FRACTION", "MIN_SD"]

#: manifest.json section describing the shipped score model.
MANIFEST_SECTION = "score_normalisation"
#: default cohort file name in the models folder.
COHORT_FILE = "background_cohort.npy"
#: top_k = round(DEFAULT_TOP_FRACTION x cohort size): the upper ~half of a face's cohort
#: scores (lfw-dev: k from 2% to 70% of the cohort changed FNIR @ FPIR 0.01 by < 0.02).
DEFAULT_TOP_FRACTION = 0.45
#: floor of a standard deviation (cosine units) so that a degenerate cohort cannot divide by 0.
MIN_SD = 1e-4
# cohort rows scored per block when computing statistics for many faces (bounds memory)
_BLOCK = 4096


def _unit_rows(a: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(a)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{what} must be a non-empty (N, D) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{what} dtype {x.dtype} is not floating-point")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"{what} contain NaN or inf")
    n = np.linalg.norm(x, axis=1)
    if np.any(n < 1e-12):
        raise InputError(f"{what} contain zero vectors")
    return np.ascontiguousarray((x / n[:, None]).astype(np.float32))


@dataclass(frozen=True)
class ScoreModel:
    """The background cohort and the constants of the normalised score ``t``.

    cohort: (C, D) float32 unit rows, read-only.  top_k: cohort scores per face used for its
    statistics.  mu0, sd0: the cohort-wide constants (medians over cohort members of their own
    top-k statistics against the rest of the cohort).  sha256: of the cohort file ('' when
    built in memory).  calibration: the map from ``t`` to a calibrated score and rates
    (:class:`edge.matching.calibration.ScoreCalibration`), or None.
    """

    cohort: np.ndarray = field(repr=False)
    top_k: int
    mu0: float
    sd0: float
    sha256: str = ""
    calibration: "ScoreCalibration | None" = field(default=None, repr=False)

    def __post_init__(self):
        c = self.cohort
        if not isinstance(c, np.ndarray) or c.ndim != 2 or c.dtype != np.float32 or c.shape[0] < 2:
            raise InputError("cohort must be a (C >= 2, D) float32 array")
        if not 1 <= int(self.top_k) <= c.shape[0]:
            raise InputError(f"top_k {self.top_k} must be in [1, {c.shape[0]}] (the cohort size)")
        if not (math.isfinite(self.mu0) and math.isfinite(self.sd0) and self.sd0 > 0):
            raise InputError(f"mu0 {self.mu0} / sd0 {self.sd0} must be finite, sd0 > 0")
        if c.flags.writeable:
            c = c.copy()
            c.flags.writeable = False
            object.__setattr__(self, "cohort", c)

    @property
    def dim(self) -> int:
        return self.cohort.shape[1]

    @property
    def size(self) -> int:
        return self.cohort.shape[0]

    def with_calibration(self, calibration) -> "ScoreModel":
        return ScoreModel(self.cohort, self.top_k, self.mu0, self.sd0, self.sha256, calibration)

    # ---- statistics ---------------------------------------------------------------------

    def cohort_stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sd) float64 (M,) of each unit row of ``x`` (M, D): mean and standard deviation
        of its ``top_k`` highest cosines against the cohort (sd floored at MIN_SD)."""
        x = np.asarray(x, np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InputError(f"expected (M, {self.dim}) embeddings, got shape {x.shape}")
        c, k = self.size, int(self.top_k)
        mu = np.empty(len(x))
        sd = np.empty(len(x))
        for i in range(0, len(x), _BLOCK):
            if len(x) == 1:  # numpy's own SIMD loop: no BLAS threads to wake for one probe
                s = (np.vecdot(self.cohort, x[0]) if hasattr(np, "vecdot")
                     else np.einsum("cd,d->c", self.cohort, x[0]))[None, :]
            else:
                s = x[i:i + _BLOCK] @ self.cohort.T
            top = np.partition(s, c - k, axis=1)[:, c - k:].astype(np.float64) if k < c else s.astype(np.float64)
            mu[i:i + len(top)] = top.mean(axis=1)
            sd[i:i + len(top)] = top.std(axis=1)
        return mu, np.maximum(sd, MIN_SD)

    def normalise(self, s: np.ndarray, probe_stats: tuple[np.ndarray, np.ndarray],
                  subject_stats: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """t for cosines ``s`` (M, S) of M probes against S subjects, given the probes' and
        the subjects' (mu, sd) from :meth:`cohort_stats` (float64 result)."""
        s = np.asarray(s, np.float64)
        pm, ps = (np.asarray(v, np.float64)[:, None] for v in probe_stats)
        gm, gs = (np.asarray(v, np.float64)[None, :] for v in subject_stats)
        return ((s - gm) / gs + (s - pm) / ps + (s - self.mu0) / self.sd0) / 3.0

    def pair_scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """t of each row pair (a[i], b[i]) of unit embeddings (symmetric in a and b)."""
        a = np.asarray(a, np.float32)
        b = np.asarray(b, np.float32)
        s = np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))
        am, asd = self.cohort_stats(a)
        bm, bsd = self.cohort_stats(b)
        return ((s - am) / asd + (s - bm) / bsd + (s - self.mu0) / self.sd0) / 3.0

    # ---- manifest -----------------------------------------------------------------------

    def manifest_entry(self, file: str = COHORT_FILE, **extra: Any) -> dict[str, Any]:
        entry = {"cohort_file": file, "sha256": self.sha256, "cohort_size": self.size, "dim": self.dim,
                 "top_k": int(self.top_k), "mu0": float(self.mu0), "sd0": float(self.sd0),
                 "score": "t = ((s - mu_g)/sd_g + (s - mu_p)/sd_p + (s - mu0)/sd0) / 3, s = cosine, "
                          "(mu, sd) of a face = mean, sd of its top_k cosines against the cohort"}
        if self.calibration is not None:
            entry["calibration"] = self.calibration.to_manifest()
        entry.update(extra)
        return entry


def fit_score_model(cohort: np.ndarray, top_fraction: float = DEFAULT_TOP_FRACTION) -> ScoreModel:
    """A ScoreModel from background embeddings (people on no list): rows are re-normalised,
    top_k = round(top_fraction x C), and (mu0, sd0) are the medians of every cohort member's
    own statistics against the rest of the cohort."""
    c = _unit_rows(cohort, "cohort embeddings")
    if c.shape[0] < 3:
        raise InputError("a cohort needs at least 3 faces")
    if not 0.0 < float(top_fraction) <= 1.0:
        raise InputError(f"top_fraction {top_fraction} must be in (0, 1]")
    n = c.shape[0]
    k = int(min(n - 1, max(1, round(top_fraction * n))))
    mus, sds = [], []
    for i in range(0, n, _BLOCK):
        s = c[i:i + _BLOCK] @ c.T
        s[np.arange(len(s)), np.arange(i, i + len(s))] = -np.inf   # not oneself
        top = np.partition(s, n - k, axis=1)[:, n - k:].astype(np.float64)
        mus.append(top.mean(axis=1))
        sds.append(top.std(axis=1))
    mu0 = float(np.median(np.concatenate(mus)))
    sd0 = float(max(np.median(np.concatenate(sds)), MIN_SD))
    return ScoreModel(c, k, mu0, sd0)


def cohort_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_score_model(models_dir: str | Path | None = None,
                     manifest: Mapping[str, Any] | None = None) -> ScoreModel:
    """The shipped score model: the manifest's ``score_normalisation`` section, its cohort
    file checked against the recorded sha256, and its calibration. ModelError when absent,
    altered or inconsistent."""

    directory = Path(find_models_dir(str(models_dir) if models_dir else None))
    if manifest is None:
        try:
            manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{directory / 'manifest.json'}: cannot read: {exc}") from None
    entry = manifest.get(MANIFEST_SECTION)
    if not isinstance(entry, Mapping):
        raise ModelError(f"{directory / 'manifest.json'} has no {MANIFEST_SECTION!r} section "
                         "(run models/fit_calibration.py)")
    try:
        name = str(entry["cohort_file"])
        want = str(entry["sha256"])
        top_k, mu0, sd0 = int(entry["top_k"]), float(entry["mu0"]), float(entry["sd0"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"manifest {MANIFEST_SECTION!r} section is malformed: {exc}") from None
    path = directory / name
    if Path(name).name != name or not path.is_file():
        raise ModelError(f"{path}: background cohort file missing")
    got = cohort_sha256(path)
    if got != want:
        raise ModelError(f"{path}: sha256 {got[:16]}… does not match the manifest's {want[:16]}…; refused")
    try:
        cohort = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a numpy array file: {exc}") from None
    if cohort.ndim != 2 or cohort.dtype != np.float32 or not np.isfinite(cohort).all():
        raise ModelError(f"{path}: expected a finite (C, D) float32 array, got {cohort.dtype} {cohort.shape}")
    if cohort.shape[0] != int(entry.get("cohort_size", cohort.shape[0])):
        raise ModelError(f"{path}: {cohort.shape[0]} rows but the manifest says {entry.get('cohort_size')}")
    try:
        cal = ScoreCalibration.from_manifest(entry["calibration"]) if "calibration" in entry else None
        return ScoreModel(cohort, top_k, mu0, sd0, got, cal)
    except InputError as exc:
        raise ModelError(f"manifest {MANIFEST_SECTION!r} section is inconsistent: {exc}") from None


#: Which people the shipped cohort holds: one line per identity, the SHA-256 (hex) of its name in
#: the folder it came from (``models/fit_calibration.py`` writes it). A benchmark or an
#: evaluation must not list these people, nor walk them past the unit: a face scored against a
#: cohort that holds the same person is scored by a model fitted on it.
COHORT_IDENTITIES_FILE = "background_cohort_identities.txt"


def identity_key(name: str) -> str:
    """The key of an identity name in :data:`COHORT_IDENTITIES_FILE`."""
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def load_cohort_identities(models_dir: str | Path | None = None) -> set[str]:
    """The keys of the identities the shipped cohort holds (empty when the file is absent)."""
    from edge.recognition.runtime import find_models_dir
    path = Path(find_models_dir(str(models_dir) if models_dir else None)) / COHORT_IDENTITIES_FILE
    try:
        text = path.read_text(encoding="ascii")
    except OSError:
        return set()
    return {line.strip() for line in text.splitlines() if len(line.strip()) == 64}
