"""What the appliance measures about itself: stage latencies, rates, memory, CPU temperature.

Read by the pipeline's health and report, the service's status line and the benches; none of
it ever holds anything about a face.
"""
from __future__ import annotations

import collections
import ctypes
import os
import threading
import time
from pathlib import Path

import numpy as np

#: Latency samples kept per stage (a sliding window: memory stays flat on a long run).
SAMPLES = 4096


def latency_summary(seconds, n: int | None = None) -> dict[str, float]:
    """The one latency summary every figure uses: ``n`` and p50 / p95 / mean / min / max in
    milliseconds of durations given in seconds (``n``: the count to report when the samples are
    a window of a longer run)."""
    a = np.asarray(seconds, np.float64) * 1e3
    if a.size == 0:
        return {"n": int(n or 0)}
    return {"n": int(a.size if n is None else n), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p95_ms": round(float(np.percentile(a, 95)), 3), "mean_ms": round(float(a.mean()), 3),
            "min_ms": round(float(a.min()), 3), "max_ms": round(float(a.max()), 3)}


class StageTimes:
    """Bounded windows of latency samples per stage (seconds), thread-safe."""

    def __init__(self, size: int = SAMPLES):
        self.size = size
        self._lock = threading.Lock()
        self._samples: dict[str, collections.deque] = {}
        self._counts: collections.Counter = collections.Counter()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            d = self._samples.get(stage)
            if d is None:
                d = self._samples[stage] = collections.deque(maxlen=self.size)
            d.append(seconds)
            self._counts[stage] += 1

    def samples(self, stage: str) -> np.ndarray:
        """The retained samples of one stage (seconds; the newest ``size`` of them)."""
        with self._lock:
            return np.asarray(self._samples.get(stage, ()), float)

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            items = {k: np.asarray(v, float) for k, v in self._samples.items() if v}
            counts = dict(self._counts)
        return {k: latency_summary(a, counts[k]) for k, a in sorted(items.items())}


class RateMeter:
    """Events per second over the last ``window`` seconds."""

    def __init__(self, window: float = 5.0):
        self.window = window
        self._times: collections.deque = collections.deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            while self._times and now - self._times[0] > self.window:
                self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and now - self._times[0] > self.window:
                self._times.popleft()
            n = len(self._times)
            if n < 2:
                return 0.0
            span = max(now - self._times[0], 1e-6)
        return n / span if span >= 1.0 else (n - 1) / max(self._times[-1] - self._times[0], 1e-6)


def tune_malloc(mmap_threshold: int = 1 << 20, arenas: int = 4) -> bool:
    """glibc: serve every allocation of ``mmap_threshold`` bytes or more (frames are ~6 MB)
    with mmap, so a freed frame goes back to the system at once, instead of letting the
    dynamic threshold move such blocks into the heap where they fragment and RSS creeps up
    over a long run; and cap the malloc arenas the threads use. A no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
        ok = libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
        ok = libc.mallopt(M_ARENA_MAX, int(arenas)) == 1 and ok
        return bool(ok)
    except (OSError, AttributeError):
        return False


def read_cpu_temperature() -> float | None:
    """CPU temperature in °C from the kernel's first thermal zone (a Pi has one), else None."""
    try:
        raw = Path("/sys/class/thermal/thermal_zone0/temp").read_text().strip()
        value = int(raw) / 1000.0
    except (OSError, ValueError):
        return None
    return round(value, 1) if -50 <= value <= 150 else None


def process_rss_bytes() -> int:
    """Resident set size of this process now (from /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (ValueError, OSError, AttributeError):  # pragma: no cover
    _PAGE = 4096
