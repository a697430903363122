"""``edge-lfr eval``: accuracy on labelled faces (:mod:`edge.tools.evaluation`)."""
from __future__ import annotations

import argparse

from edge.tools.evaluation import PIPELINES, TRACK_SIZES


def add_commands(sub) -> None:
    s = sub.add_parser("eval", help="measure accuracy on a labelled face dataset")
    esub = s.add_subparsers(dest="dataset", metavar="DATASET")
    e = esub.add_parser("lfw", help="LFW-layout folder: pair verification and open-set identification",
                        description="Runs the on-device pipeline on DIR/<Name>/<Name>_NNNN.jpg, scores "
                        "the View-2 pairs with cross-validated thresholds, and open-set identification "
                        "(watchlist = first image of each identity with >= 2 images; mated probes = their "
                        "other images; non-mated probes = identities with one image).",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--images", required=True, help="LFW-layout image folder")
    e.add_argument("--pairs", required=True, help="pairs file in LFW View-2 format (header: <folds> <pairs-per-class>)")
    e.add_argument("--out", required=True, help="JSON report to write")
    e.add_argument("--plot", help="PNG file for the DET curves (FNIR vs FPIR)")
    e.add_argument("--reference", choices=["dlib"], help="also run dlib's own float pipeline in the same run")
    e.add_argument("--config", help="YAML configuration file")
    e.add_argument("--limit", type=int, default=0, help="use only the first N identities (0 = all); for quick checks")
    e.add_argument("--seed", type=int, default=0, help="seed for sampling watchlists smaller than 'all'")
    e.add_argument("--pipeline", choices=PIPELINES, default="both",
                   help="base = raw cosine, single template; improved = cohort-normalised score "
                        "(cross-fitted by identity fold); both side by side (default)")
    e.add_argument("--track-size", type=int, nargs="+", default=list(TRACK_SIZES), metavar="K",
                   help="track protocol: each probe fuses K images of one identity, as the live "
                        "tracker fuses a track's frames (default: 1 3 5)")
    e.add_argument("--embeddings-cache", metavar="NPZ",
                   help="reuse the per-image embeddings saved here by an earlier run with the same "
                        "images, model and configuration (written when absent or stale)")
    e.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from edge.tools.evaluation.command import run_eval_lfw  # numpy, OpenCV, LiteRT: only when it runs
    return run_eval_lfw(args)
