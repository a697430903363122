"""Package re-exports resolved on first use (PEP 562).

A package ``__init__`` names its public verbs without importing them: ``edge-lfr --help`` and
the provisioning script's key and config commands must not pay for numpy, OpenCV and LiteRT
(about 0.3 s on a Pi 5) just because the package that holds them was imported.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` that import ``exports[name]`` (a module path)
    the first time ``package.name`` is read, and cache the value in the package."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
