"""Where the source checkout's folders are, computed in one place.

Modules sit at different depths under ``edge/``, so a path computed from a module's own
``__file__`` changes meaning when the module moves; every such path is derived here instead.
In an installed wheel the checkout-only folders (``deploy/``, ``../shared``) do not exist, and
callers treat them as optional.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: The repository root of a source checkout (holds models/, deploy/, docs/).
REPO_ROOT = PACKAGE_DIR.parent
#: The source checkout's models/ folder (manifest.json + .tflite files).
SOURCE_MODELS_DIR = REPO_ROOT / "models"
#: The checkout's deploy/ folder (broker templates, make-certs.sh).
DEPLOY_DIR = REPO_ROOT / "deploy"
#: Real-face data laid beside the checkout (../shared/faces; see its README).
SHARED_FACES = REPO_ROOT.parent / "shared" / "faces"


def shared_faces_or_none() -> Path | None:
    """``../shared/faces`` when it is there, else None (public-domain faces only)."""
    return SHARED_FACES if SHARED_FACES.is_dir() else None
