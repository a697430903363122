"""The running service's privacy wiring: what it writes to the audit log, and when it purges.

:class:`ServiceAudit` sits above both the log (:mod:`edge.privacy.audit`) and the retention
rules (:mod:`edge.privacy.retention`), which is why it lives apart from either: the log format
knows nothing of retention, and retention writes its purges through the log.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

from edge.errors import EdgeError
from edge.privacy.audit import MAX_STRING, AuditLog
from edge.privacy.retention import Retention, RetentionError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Periodic counts
# --------------------------------------------------------------------------------------


def _delta(now: Mapping[str, Any], before: Mapping[str, Any]) -> dict:
    out = {}
    for k, v in now.items():
        if isinstance(v, Mapping):
            d = _delta(v, before.get(k, {}) if isinstance(before.get(k), Mapping) else {})
            out[k] = {kk: vv for kk, vv in d.items() if vv}
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            b = before.get(k, 0)
            out[k] = v - (b if isinstance(b, (int, float)) else 0)
    return out


class CountsRecorder:
    """Writes a ``counts`` entry every ``interval`` seconds: the increase of cumulative
    counters since the last entry (``source()`` returns e.g. ``{"frames": 1200, "faces": 40,
    "gated": {"too_small": 3}, "alerts": 1}``). Numbers only, by construction of the source."""

    def __init__(self, audit: AuditLog, source: Callable[[], Mapping[str, Any]], interval: float,
                 clock: Callable[[], float] = time.monotonic):
        self.audit = audit
        self.source = source
        self.interval = float(interval)
        self.clock = clock
        self._last = {}
        self._last_t = clock()

    def due(self) -> bool:
        return self.clock() - self._last_t >= self.interval

    def poll(self, force: bool = False) -> dict | None:
        """Write the entry if one is due (or ``force``); returns it."""
        now = self.clock()
        if not force and now - self._last_t < self.interval:
            return None
        cur = dict(self.source())
        d = _delta(cur, self._last)
        d["interval_s"] = round(now - self._last_t, 3)
        self._last, self._last_t = cur, now
        return self.audit.counts(d)


# --------------------------------------------------------------------------------------
# The running service's side, in a few calls
# --------------------------------------------------------------------------------------


class ServiceAudit:
    """What the service records and enforces for privacy, wired with a handful of calls::

        sa = ServiceAudit.start(cfg, unit=unit, model_sha256=..., version=__version__)  # purge, then start entry
        live = unit.restore(); sa.restored(live)                                        # or sa.restored(None, exc)
        pipeline = Pipeline(..., on_alert=sa.on_alert)
        publisher = AlertPublisher(..., on_adjudication=sa.wrap_adjudication(records.record))
        while running: sa.tick(pipeline)             # counts entries, hourly purge, watchlist changes
        sa.stop("SIGTERM", pipeline)                  # last counts, service_stop + signed checkpoint

    Failures to write the audit log are logged, never raised into the pipeline's threads.
    """

    def __init__(self, cfg, audit: AuditLog, unit=None, *, monotonic: Callable[[], float] = time.monotonic,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.audit = audit
        self.clock = clock
        self.unit = unit
        self.mono = monotonic
        self._counts: CountsRecorder | None = None
        self._next_purge = monotonic() + float(cfg.privacy.purge_interval_seconds)
        self._live_id: str | None = None
        self._lock = threading.Lock()
        # adjudications answered without a full entry: repeats of a decided alert, and everything the
        # publisher refused (flood, rate limit, malformed, unknown id): one aggregated entry a period
        self._publisher = None
        self._repeats = 0
        self._rejections_logged: dict = {"repeats_recorded": 0}
        self._next_rejections = monotonic() + float(cfg.privacy.audit_stats_seconds)

    @classmethod
    def start(cls, cfg, *, unit=None, model_sha256: str = "", version: str = "", device_key=None,
              clock: Callable[[], float] = time.time) -> "ServiceAudit":
        """Open the audit log, run the retention purge for the time the service was not running
        (a deployment that ended more than 24 h ago loses its watchlist here, before it could be
        restored), then write ``service_start``."""

        audit = AuditLog.from_config(cfg, device_key=device_key, clock=clock)
        self = cls(cfg, audit, unit, clock=clock)
        try:
            Retention(cfg, audit=audit, unit=unit, clock=clock, service_running=False).run()
        except (RetentionError, EdgeError, OSError) as exc:
            log.error("retention purge at start failed (retried hourly): %s", exc)
            self._safe(audit.error, "retention", exc)
        # a full disk must not stop the service: it keeps publishing what it holds (health says so)
        self._safe(audit.service_start, cfg, model_sha256=model_sha256, version=version)
        return self

    def _safe(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as exc:  # the audit log must never take the service down
            log.error("audit log: %s failed: %s", getattr(fn, "__name__", "write"), exc)
            return None

    # -- events ----------------------------------------------------------------------------

    def restored(self, live, error: BaseException | None = None) -> None:
        """The watchlist restored at start (``live``), or why it could not be (``error``)."""
        if error is not None:
            self._safe(self.audit.bundle_refused, error, "stored watchlist at start")
        if live is not None:
            self._live_id = live.manifest.bundle_id
            self._safe(self.audit.bundle_loaded, live, "restored")

    def on_alert(self, ev) -> None:
        """``Pipeline(on_alert=...)``: one ``alert`` entry (ids and numbers, no image)."""
        self._safe(self.audit.alert_event, ev, self._live_id)

    def on_adjudication(self, ack: Mapping[str, Any] | None) -> None:
        """A decision recorded: a full ``adjudication`` entry. A repeat of a decided alert (the
        record was already there) is only counted, into the periodic ``adjudication_rejected``
        entry: one sender cannot grow the log by an entry per message."""
        if not ack:
            return
        if ack.get("duplicate"):
            with self._lock:
                self._repeats += 1
            return
        self._safe(self.audit.adjudication, ack)

    def attach_publisher(self, publisher) -> None:
        """Count what ``publisher`` (:class:`edge.alerts.publisher.AlertPublisher`) refused
        into the aggregated ``adjudication_rejected`` entries."""
        self._publisher = publisher

    def _rejections(self, force: bool = False) -> None:
        """One ``adjudication_rejected`` entry with what changed since the last one (nothing
        written when nothing changed)."""
        if not force and self.mono() < self._next_rejections:
            return
        self._next_rejections = self.mono() + float(self.cfg.privacy.audit_stats_seconds)
        now: dict = {"repeats_recorded": self._repeats}
        officers: dict = {}
        if self._publisher is not None:
            try:
                rc = self._publisher.rejection_counts()
                now.update({str(k): int(v) for k, v in rc["by_reason"].items()})
                officers = {str(k)[:64]: int(v) for k, v in list(rc["by_officer"].items())[:10]}
            except Exception as exc:  # pragma: no cover - counters of another shape
                log.debug("rejection counts unavailable: %s", exc)
        delta = {k: v - self._rejections_logged.get(k, 0) for k, v in now.items()}
        if not any(delta.values()):
            return
        self._rejections_logged = now
        self._safe(self.audit.append, "adjudication_rejected",
                   {"counts": {k: v for k, v in delta.items() if v}, "top_officers_ever": officers,
                    "interval_s": float(self.cfg.privacy.audit_stats_seconds)})

    def wrap_adjudication(self, record: Callable[[dict], Any]) -> Callable[[dict], Any]:
        """Wrap :meth:`edge.alerts.adjudication.AdjudicationRecords.record` so that each adjudication
        received is also written to the audit log."""
        def hook(adj):
            ack = record(adj)
            self.on_adjudication(ack)
            return ack
        return hook

    def error(self, where: str, exc: BaseException | str) -> None:
        self._safe(self.audit.error, where, exc)

    # -- the service loop ----------------------------------------------------------------------

    def tick(self, pipeline=None) -> None:
        """From the service loop: a counts entry when due, the periodic purge, and watchlist
        changes (loaded by another process, wiped, expired)."""
        with self._lock:
            if pipeline is not None:
                if self._counts is None:
                    self._counts = CountsRecorder(self.audit, pipeline.counts,
                                                  self.cfg.privacy.audit_stats_seconds, clock=self.mono)
                if self._counts.due():
                    self._safe(self._counts.poll)
            self._watchlist_changes()
            self._rejections()
            if self.mono() >= self._next_purge:
                self._next_purge = self.mono() + float(self.cfg.privacy.purge_interval_seconds)
                counts = self.purge()
                if counts and counts.get("watchlist_deleted"):
                    self._live_id = None        # the purge wrote its own watchlist_deleted entry

    def purge(self) -> dict | None:

        try:
            return Retention(self.cfg, audit=self.audit, unit=self.unit, clock=self.clock, service_running=True).run()
        except Exception as exc:
            log.error("retention purge failed (retried at the next run): %s", exc)
            self._safe(self.audit.error, "retention", exc)
            return None

    def _watchlist_changes(self) -> None:
        if self.unit is None:
            return
        try:
            live = self.unit.current()
        except Exception:  # pragma: no cover - current() reads memory and a clock
            return
        now_id = live.manifest.bundle_id if live is not None else None
        if now_id == self._live_id:
            return
        if self._live_id is not None:
            reason = "replaced" if now_id else "no longer in force"
            try:
                st = self.unit.read_state()
                if now_id is None:
                    reason = f"{st.get('status')}: {st.get('status_reason', '')}"[:MAX_STRING]
            except Exception:
                pass
            self._safe(self.audit.watchlist_deleted, self._live_id, reason)
        self._live_id = now_id
        if live is not None:
            self._safe(self.audit.bundle_loaded, live, "loaded")

    def failed_start(self, exc: BaseException, stage: str = "start-up") -> int:
        """The start on record could not be completed (a missing CA file, a broker or camera that
        fails...): an ``error`` entry and the run's one ``service_stop``, with the exit code the
        process will end with. Returns that exit code."""
        code = exit_code_of(exc)
        self.error(f"service {stage}", exc)
        self.stop(f"failed during {stage}: {type(exc).__name__}", None, exit_code=code)
        return code

    def stop(self, reason: str = "stopped", pipeline=None, **extra) -> None:
        """Last counts entry, then ``service_stop`` (with the run's totals) and a signed checkpoint.
        Written once per start: a second call is ignored."""
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        with self._lock:
            if pipeline is not None and self._counts is not None:
                self._safe(self._counts.poll, True)
            self._rejections(force=True)
            totals = pipeline.counts() if pipeline is not None else {}
            self._safe(self.audit.service_stop, reason, frames=totals.get("frames", 0),
                       alerts=totals.get("alerts", 0), **extra)


def exit_code_of(exc: BaseException) -> int:
    """The process exit code an exception ends ``edge-lfr`` with (edge/cli/main.py)."""
    from edge.errors import EdgeError
    if isinstance(exc, EdgeError):
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1
