"""A small progress display for long commands (evaluation, enrolment of big folders, bench).

    with Progress(len(paths), "embedding") as bar:
        for p in paths:
            ...
            bar.update()

On a terminal it redraws one line on stderr (bar, count, rate, ETA) a few times a second;
when stderr is not a terminal (logs, CI, pytest) it prints a plain line at most every
``interval`` seconds (2 s by default) and a final line when closed.
"""
from __future__ import annotations

import sys
import time
from typing import IO


def format_duration(seconds: float) -> str:
    """'0:07', '3:25', '1:02:03' (unknown or infinite -> '?')."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts finished items out of ``total`` and shows count, rate and ETA on ``stream``.

    ``total`` may be 0 or None when unknown (no bar, no ETA). ``interval`` is the least time
    between two plain lines when the stream is not a terminal; a terminal is redrawn at most
    every ``tty_interval`` seconds. ``enabled=False`` silences it entirely.
    """

    def __init__(self, total: int | None, label: str = "", stream: IO[str] | None = None,
                 interval: float = 2.0, tty_interval: float = 0.1, width: int = 24,
                 enabled: bool = True, unit: str = "it"):
        self.total = int(total) if total else 0
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = tty_interval if self.tty else interval
        self.width = width
        self.unit = unit
        self.count = 0
        self.skipped = 0          # items counted but not worked on (missing files...): not in the rate
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._closed = False

    # -- numbers -----------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    @property
    def rate(self) -> float:
        """Items worked on per second since the start (0 before the first; skipped items, which
        took no work, are not counted)."""
        e = self.elapsed
        done = self.count - self.skipped
        return done / e if e > 0 and done > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds left at the mean rate so far (inf when unknown)."""
        if not self.total or self.count <= self.skipped:
            return float("inf")
        return max(0, self.total - self.count) / self.rate if self.rate > 0 else float("inf")

    def text(self) -> str:
        """The status line (without carriage return or newline)."""
        parts = [self.label] if self.label else []
        if self.total:
            frac = min(1.0, self.count / self.total)
            if self.tty:
                filled = int(round(frac * self.width))
                parts.append("[" + "#" * filled + "." * (self.width - filled) + "]")
            parts.append(f"{self.count}/{self.total} ({100 * frac:.0f}%)")
        else:
            parts.append(f"{self.count}")
        if self.count > self.skipped:
            parts.append(f"{self.rate:.1f} {self.unit}/s")
        if self.skipped:
            parts.append(f"({self.skipped} skipped)")
        if self._closed:
            parts.append(f"in {format_duration(self.elapsed)}")
        elif self.total:
            parts.append(f"ETA {format_duration(self.eta)}")
        return " ".join(parts)

    # -- drawing -----------------------------------------------------------------------------
    def _draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        try:
            if self.tty:
                self.stream.write("\r\x1b[K" + self.text() + ("\n" if final else ""))
            else:
                self.stream.write(self.text() + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False  # closed or broken stream: stop drawing, never fail the work

    def update(self, n: int = 1, skipped: bool = False) -> None:
        """Record ``n`` more finished items (``skipped``: counted, but not in the rate); redraw if
        enough time has passed."""
        self.count += n
        if skipped:
            self.skipped += n
        now = time.monotonic()
        if now - self._last_draw >= self.interval:
            self._last_draw = now
            self._draw()

    def close(self) -> None:
        """Draw the final line once (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._draw(final=True)

    def __enter__(self) -> "Progress":
        # the first line appears right away on a terminal, after ``interval`` otherwise
        self._last_draw = time.monotonic() if not self.tty else 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.close()
