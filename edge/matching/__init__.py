"""A probe against the watchlist: vectorised top-k, the cohort-normalised calibrated score, and the
threshold from a target FPIR and the list size."""
from edge.lazy import lazy_exports

__all__ = ["Matcher", "Watchlist", "build_matcher", "ThresholdPolicy", "ScoreCalibration", "load_score_model"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "Matcher": "edge.matching.match",
    "Watchlist": "edge.matching.match",
    "build_matcher": "edge.matching.factory",
    "ThresholdPolicy": "edge.matching.calibration",
    "ScoreCalibration": "edge.matching.calibration",
    "load_score_model": "edge.matching.normalise",
})
