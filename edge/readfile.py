"""Reading a file the unit was given: a regular file only, with a size cap, never blocking.

A named pipe given as a bundle or a config would hang ``open`` (or ``read``) for ever, and
``/dev/zero`` read "whole" ends in a ``MemoryError``. :func:`read_regular` opens with
``O_NONBLOCK`` (so a FIFO's ``open`` returns at once), refuses anything ``fstat`` does not call a
regular file, and reads at most ``limit + 1`` bytes, refusing the file when it is larger.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from edge.errors import InputError


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: str | os.PathLike, what: str = "file", error: type[Exception] = InputError) -> int:
    """An O_RDONLY descriptor on ``path`` if it is a regular file; else ``error`` naming what it is."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{p}: is a folder, expected a {what}") from None
    except PermissionError:
        raise error(f"{p}: permission denied reading the {what}") from None
    except OSError as exc:
        raise error(f"{p}: cannot open the {what}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{p}: is {_kind(st.st_mode)}, expected a regular {what}; refused")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike, limit: int, what: str = "file",
                 error: type[Exception] = InputError) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes; else ``error``
    (missing, unreadable, a FIFO / device / folder, or too large) naming the problem."""
    p = Path(path)
    fd = open_regular(p, what, error)
    try:
        with os.fdopen(fd, "rb", closefd=True) as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise error(f"{p}: cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{p}: the {what} is larger than {limit:,} bytes; refused")
    return data
