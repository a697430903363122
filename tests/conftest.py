"""Shared fixtures: real faces from ../shared/faces (skipped clearly when absent) and the
public-domain faces that ship in matplotlib and scikit-image.

Also puts the repository root on sys.path so tests can import ``models.*`` (dev scripts).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_FACES = ROOT.parent / "shared" / "faces"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def shared_faces() -> Path:
    if not (SHARED_FACES / "README.md").is_file():
        pytest.skip(f"real-face data not found at {SHARED_FACES} (clone the project with ../shared beside it)")
    return SHARED_FACES


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return shared_faces()


@pytest.fixture(scope="session")
def public_faces():
    """{'grace_hopper': RGB uint8, 'astronaut': RGB uint8} from matplotlib / scikit-image."""
    from edge.tools.demo_faces import public_domain_faces
    return public_domain_faces()


@pytest.fixture(scope="session")
def recognizer():
    from edge.recognition.api import Recognizer
    return Recognizer()
