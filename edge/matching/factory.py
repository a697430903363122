"""The unit's matcher for a loaded watchlist, built from ``config.match`` (one place decides
between the calibrated cohort-normalised score and raw cosine)."""
from __future__ import annotations

from edge.errors import InputError
from edge.matching.calibration import ThresholdPolicy
from edge.matching.match import Matcher
from edge.matching.normalise import load_score_model
from edge.types import CATEGORIES


def build_matcher(watchlist, config, score_model=None):
    """The unit's matcher for a loaded list, following ``config.match``:

    * ``score_normalisation: true`` (default) - cohort-normalised calibrated scores from the
      shipped score model (``score_model`` or :func:`edge.matching.normalise.load_score_model`), a
      subject's several templates fused (:func:`edge.recognition.fusion.fuse_embeddings`, measured better
      than the best single template), and each category's threshold from the policy for its
      ``target_fpir_<category>`` (default ``target_fpir``) and the list's size;
    * ``score_normalisation: false`` - raw cosine, best template, ``threshold_<category>``.

    Per-subject thresholds carried by a bundle are raw cosines; with normalisation they remain a
    floor on the raw cosine (an alert needs both)."""
    m = config.match
    cosine_thresholds = {c: float(getattr(m, f"threshold_{c}")) for c in CATEGORIES}
    if not m.score_normalisation:
        return Matcher(watchlist, cosine_thresholds)
    if score_model is None:
        score_model = load_score_model(config.runtime.models_dir or None)
    if score_model.calibration is None:
        raise InputError("score normalisation needs the model's calibration (manifest score_normalisation.calibration)")
    from edge.config import category_target_fpir
    targets = category_target_fpir(m)
    policy = ThresholdPolicy(score_model.calibration, float(m.target_fpir), len(watchlist),
                             tuple((c, targets[c]) for c in CATEGORIES))
    return Matcher(watchlist, policy.thresholds(CATEGORIES), scorer=score_model, policy=policy)
