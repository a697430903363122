"""Crash-safe file writes: a reader sees the old file or the new one, never a mix.

``atomic_write`` writes a temporary file in the same folder, flushes and fsyncs it, renames
it over the target and fsyncs the folder, so the rename itself survives a power cut.
``write_new_private`` creates a file that must not exist yet, readable by its owner only.
"""
from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a folder so that renames and deletions in it are durable (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + rename + fsync folder).
    ``durable=False`` skips the fsyncs (still atomic for readers; not across a power cut): for
    benches and tests that write thousands of times."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(p.parent)


def write_new_private(path: str | os.PathLike, data: bytes) -> None:
    """Create ``path`` with mode 0600; FileExistsError if it already exists (keys are never
    overwritten silently)."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(p)
        except OSError:
            pass
        raise
    os.chmod(p, 0o600)  # whatever the umask said
    fsync_dir(p.parent)


def remove_durably(path: str | os.PathLike) -> bool:
    """Delete ``path`` if present and fsync its folder; True if a file was removed."""
    p = Path(path)
    try:
        p.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(p.parent)
    return True
