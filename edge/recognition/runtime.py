"""Load TFLite models named in ``models/manifest.json``, refusing any whose bytes changed.

The interpreter comes from ``ai_edge_litert`` (LiteRT) or, failing that, ``tflite_runtime``.
A model whose manifest entry names an Edge TPU build (``edgetpu.file``) runs on the Coral
delegate when that loads, and on the CPU otherwise; :attr:`LoadedModel.delegate` and
:attr:`LoadedModel.delegate_reason` say which and why.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError
from edge.paths import SOURCE_MODELS_DIR

log = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"


#: The line TFLite's C++ runtime prints to stderr once per process when it applies its default
#: XNNPACK delegate; it tells a user nothing (the models' delegates are reported by edge-lfr itself).
_DELEGATE_BANNER = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


class _without_delegate_banner:
    """Run a block with file descriptor 2 on a pipe; afterwards everything written there is passed
    on to the real stderr except :data:`_DELEGATE_BANNER` lines (a thread drains the pipe, so
    nothing blocks, and nothing written meanwhile by another thread is lost)."""

    def __enter__(self):
        import threading
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            r, w = os.pipe()
        except (OSError, ValueError, AttributeError):
            self._saved = None
            return self
        self._chunks: list[bytes] = []

        def drain():
            while True:
                b = os.read(r, 65536)
                if not b:
                    break
                self._chunks.append(b)
            os.close(r)
        self._reader = threading.Thread(target=drain, name="stderr-filter", daemon=True)
        self._reader.start()
        os.dup2(w, 2)
        os.close(w)
        return self

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        os.dup2(self._saved, 2)            # closes the pipe's last write end: the reader ends
        os.close(self._saved)
        self._reader.join(5.0)
        text = b"".join(self._chunks)
        kept = b"".join(line for line in text.splitlines(keepends=True) if line.rstrip() != _DELEGATE_BANNER)
        if kept:
            os.write(2, kept)
        return False


def _interpreter_api():
    """(Interpreter, load_delegate, backend name) from the first runtime that imports."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate
        return Interpreter, load_delegate, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter, load_delegate
        return Interpreter, load_delegate, "tflite_runtime"
    except ImportError:
        raise ModelError("no TFLite runtime: install ai-edge-litert (pip install ai-edge-litert) "
                         "or tflite-runtime") from None


def find_models_dir(configured: str | os.PathLike | None = None) -> Path:
    """The folder holding manifest.json: the configured one, $EDGE_LFR_MODELS, the source
    tree's models/, or the installed share/edge-lfr/models, first that exists."""
    if configured:  # an explicit choice is authoritative: no silent fallback elsewhere
        if (Path(configured) / "manifest.json").is_file():
            return Path(configured)
        raise ModelError(f"{configured}: no manifest.json in the configured models folder")
    candidates = []
    if os.environ.get("EDGE_LFR_MODELS"):
        candidates.append(Path(os.environ["EDGE_LFR_MODELS"]))
    candidates.append(SOURCE_MODELS_DIR)
    candidates.append(Path(sys.prefix) / "share" / "edge-lfr" / "models")
    for c in candidates:
        if (c / "manifest.json").is_file():
            return c
    raise ModelError("no models folder with manifest.json found (looked in: "
                     + ", ".join(str(c) for c in candidates) + ")")


def load_manifest(models_dir: Path) -> dict[str, Any]:
    path = Path(models_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: model manifest not found") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable model manifest: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise ModelError(f"{path}: manifest has no 'models' mapping")
    return manifest


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _library_missing() -> str | None:
    """Why the Coral runtime library cannot be loaded, or None when it can."""
    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
    except OSError:
        return (f"{EDGETPU_LIBRARY} is not installed (Edge TPU runtime: apt install libedgetpu1-std, "
                "see docs/coral.md)")
    return None


def _verified_bytes(models_dir: Path, entry: dict, name: str) -> tuple[Path, bytes]:
    path = Path(models_dir) / entry["file"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model {name!r}: file {path} is missing") from None
    digest = sha256_bytes(data)
    if digest != entry.get("sha256"):
        raise ModelError(f"model {name!r}: {path} has sha256 {digest[:16]}… but the manifest lists "
                         f"{str(entry.get('sha256'))[:16]}…; refusing to load an altered or replaced model")
    return path, data


@dataclass
class LoadedModel:
    """An allocated interpreter plus what the manifest says about it."""

    name: str
    path: Path
    sha256: str
    spec: dict
    delegate: str
    delegate_reason: str
    backend: str
    interpreter: Any = field(repr=False)

    def __post_init__(self):
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """Invoke on inputs in input-detail order; returns copies of every output tensor."""
        for detail, array in zip(self.inputs, arrays):
            self.interpreter.set_tensor(detail["index"], array)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(d["index"]).copy() for d in self.outputs]


def verified_sha256(name: str, models_dir: str | os.PathLike | None = None) -> str:
    """The manifest's sha256 of model ``name`` (its CPU build) after checking the file on disk
    against it: the model's identity, without building an interpreter."""
    directory = find_models_dir(models_dir)
    entry = load_manifest(directory).get("models", {}).get(name)
    if not isinstance(entry, dict) or "file" not in entry:
        raise ModelError(f"model {name!r} is not in {directory}/manifest.json")
    _verified_bytes(directory, entry, name)
    return str(entry["sha256"])


def open_model(name: str, models_dir: str | os.PathLike | None = None, threads: int = 2,
               prefer_edgetpu: bool = True) -> LoadedModel:
    """Load manifest model ``name`` after checking its sha256; Edge TPU first when available."""
    directory = find_models_dir(models_dir)
    manifest = load_manifest(directory)
    entry = manifest["models"].get(name)
    if not isinstance(entry, dict) or "file" not in entry:
        raise ModelError(f"model {name!r} is not in {directory / 'manifest.json'} "
                         f"(has: {', '.join(sorted(manifest['models']))})")
    Interpreter, load_delegate, backend = _interpreter_api()

    reason = "no Edge TPU build of this model in the manifest"
    tpu = entry.get("edgetpu")
    if prefer_edgetpu and isinstance(tpu, dict) and "file" in tpu:
        try:
            path, data = _verified_bytes(directory, tpu, name + " (edgetpu)")
            missing = _library_missing()
            if missing:
                raise OSError(missing)
            try:
                delegate = load_delegate(EDGETPU_LIBRARY)
            except (OSError, ValueError, RuntimeError) as exc:
                raise OSError(f"{EDGETPU_LIBRARY} is installed but no Edge TPU could be opened ({exc}); is the "
                              "Coral plugged in (USB) or its driver loaded (PCIe), and may this user access it?"
                              ) from None
            interp = Interpreter(model_content=data, experimental_delegates=[delegate], num_threads=threads)
            interp.allocate_tensors()
            log.info("model %s: running %s on the Edge TPU", name, path.name)
            return LoadedModel(name, path, tpu["sha256"], entry, "edgetpu", "Edge TPU delegate loaded",
                               backend, interp)
        except (ModelError, OSError, ValueError, RuntimeError) as exc:
            reason = f"Edge TPU unavailable, running on CPU: {exc}"
            log.warning("model %s: %s (CPU model %s)", name, reason, entry["file"])
    elif not prefer_edgetpu:
        reason = "Edge TPU disabled by configuration"

    path, data = _verified_bytes(directory, entry, name)
    try:
        with _without_delegate_banner():
            interp = Interpreter(model_content=data, num_threads=threads)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"model {name!r}: {path} is not a loadable TFLite model: {exc}") from None
    return LoadedModel(name, path, entry["sha256"], entry, "cpu", reason, backend, interp)
