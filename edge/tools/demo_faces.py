"""Public-domain faces that ship inside installed packages (no download needed):
matplotlib's ``grace_hopper.jpg`` (US Navy photo) and scikit-image's ``astronaut.png`` (NASA)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from edge.errors import InputError
from edge.recognition.images import load_image


def public_domain_face_paths() -> dict[str, Path]:
    paths = {}
    try:
        import matplotlib
        paths["grace_hopper"] = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    except ImportError:
        pass
    spec = importlib.util.find_spec("skimage")
    if spec and spec.origin:
        paths["astronaut"] = Path(spec.origin).parent / "data" / "astronaut.png"
    missing = [n for n in ("grace_hopper", "astronaut") if n not in paths or not paths[n].is_file()]
    if missing:
        raise InputError("public-domain demo faces not found (" + ", ".join(missing) + "): "
                         "pip install -e '.[demo]' installs matplotlib and scikit-image")
    return paths


def public_domain_faces() -> dict[str, np.ndarray]:
    return {name: load_image(p) for name, p in public_domain_face_paths().items()}
