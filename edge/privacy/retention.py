"""Retention: match data is kept no longer than needed, and deleted so that it is gone.

One purge (:meth:`Retention.run`), run by the service at start and every
``privacy.purge_interval_seconds``, and by ``edge-lfr audit purge`` (e.g. from a timer while the
service is stopped), deletes:

* **alerts** (the outbox rows: probe crop, reference thumbnail, scores) ``outbox.retention_days``
  (default 30, at most 31) after the alert was made, delivered or not, and the officers'
  **adjudication records** of those alerts;
* alerts an officer marked **not a match** (``rejected``) with their record
  ``outbox.rejected_retention_hours`` (default 24) after the decision;
* the **watchlist** once its bundle has expired, or ``privacy.deployment_end_wipe_hours``
  (at most 24) after the deployment ended: the service stopped (its ``service_stop`` in the audit
  log) or was last alive (its last audit entry: a counts entry is written every
  ``privacy.audit_stats_seconds``) and was not started again;
* **audit entries** older than ``privacy.audit_retention_days`` (:meth:`edge.privacy.audit.AuditLog.trim`);
* temporary files left in the state folder by a crashed write.

**Gone, not just unlinked**: the SQLite connection that deletes has ``secure_delete=ON``, so the
freed pages (overflow pages of the JPEGs included) are overwritten with zeros, and the WAL is
then checkpointed and truncated so no older copy of a page stays in it.

**Crash-safe**: before anything is deleted an intent file (``retention.intent.json``, atomic
write) records that a purge is under way. The database deletions are one transaction (all or
nothing); the watchlist and audit deletions are each atomic (rename / unlink + fsync); every
step is idempotent. A purge that did not finish (crash, power cut) leaves the intent behind and
the next run - at the latest the next start - runs every step again, including the WAL
checkpoint a crash may have skipped (until then the zeroed pages are only in the WAL and the old
ones still in the main file). The purge's ``purge`` audit entry says ``resumed: true`` then.

The clock is injectable (``clock``, Unix seconds) for tests.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from edge.alerts.expiry import purge_match_records
from edge.alerts.outbox import FILENAME as OUTBOX_FILENAME
from edge.atomicfile import atomic_write, remove_durably
from edge.errors import EdgeError
from edge.privacy.audit import AuditLog, read_entries
from edge.utc import format_utc_ms, parse_utc_ms

log = logging.getLogger(__name__)

__all__ = ["Retention", "RetentionError", "deployment_ended_at", "INTENT_FILE"]

INTENT_FILE = "retention.intent.json"
DAY = 86400.0
HOUR = 3600.0
_TEMP = re.compile(r"\A\..+\.tmp-(\d+)\Z")


class RetentionError(EdgeError):
    """A purge could not be completed (the message says which step); it is resumed next time."""

    exit_code = 74


def deployment_ended_at(audit_path: str | os.PathLike) -> tuple[float, bool] | None:
    """When the last deployment ended, from the audit log: ``(time, True)`` for a clean stop (its
    last entries are the ``service_stop`` and the checkpoint after it), ``(time of the last entry,
    False)`` otherwise (a crash or power cut - or a service still running, which writes a counts
    entry every ``privacy.audit_stats_seconds``). None when the log is empty."""
    last = None
    stopped = False
    for e in read_entries(audit_path):
        if e["type"] == "checkpoint" and last is not None and last["type"] == "service_stop":
            continue                      # the stop's own checkpoint
        if e["type"] in ("purge", "watchlist_deleted", "audit_trim", "checkpoint") and last is not None:
            continue                      # written by a purge run after the stop: not a sign of life
        last = e
        stopped = e["type"] == "service_stop"
    if last is None:
        return None
    return parse_utc_ms(last["t"]), stopped


class Retention:
    """One retention purge over the unit's state folder.

    ``audit``: the unit's :class:`~edge.privacy.audit.AuditLog` (the purge is recorded there, its entries
    are trimmed, and it tells when the deployment ended). ``unit``: the
    :class:`~edge.watchlist.unit.UnitWatchlist` (the running service's, so a deletion also stops
    matching; the ``audit purge`` command makes one for the stopped unit); None: the watchlist
    step is skipped. ``service_running``: True when called by the running service (its
    deployment has not ended). ``step_hook(name)`` is called after each step (tests stop the
    process there to check that a purge killed half way is finished next time).
    """

    def __init__(self, cfg, *, audit: AuditLog | None = None, unit=None, clock: Callable[[], float] = time.time,
                 service_running: bool = False, state_dir: str | os.PathLike | None = None,
                 step_hook: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.audit = audit
        self.clock = clock
        self.service_running = service_running
        self.dir = Path(state_dir or cfg.unit.state_dir)
        self.retention_s = float(cfg.outbox.retention_days) * DAY
        self.rejected_s = min(float(cfg.outbox.rejected_retention_hours) * HOUR, self.retention_s)
        self.audit_s = float(cfg.privacy.audit_retention_days) * DAY
        self.wipe_s = float(cfg.privacy.deployment_end_wipe_hours) * HOUR
        # without a clean stop, silence this long means the service is not running any more
        self.alive_s = max(self.wipe_s, 2.0 * float(cfg.privacy.audit_stats_seconds) + 60.0)
        self._unit = unit
        self._hook = step_hook or (lambda step: None)

    @property
    def intent_path(self) -> Path:
        return self.dir / INTENT_FILE

    # -- the purge ---------------------------------------------------------------------------

    def run(self) -> dict:
        """Run every step; returns the counts (also written to the audit log as a ``purge`` entry)."""
        now = float(self.clock())
        resumed = self.intent_path.exists()
        if resumed:
            log.warning("retention: a purge did not finish (crash or power cut); running it again")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.intent_path, json.dumps({"version": 1, "started_at": format_utc_ms(now),
                                                   "resumed": resumed}).encode() + b"\n")
        self._hook("intent_written")
        counts: dict[str, Any] = {"resumed": resumed, "at": format_utc_ms(now),
                                  "retention_days": self.cfg.outbox.retention_days,
                                  "rejected_retention_hours": self.cfg.outbox.rejected_retention_hours}
        errors = []
        for name, step in (("records", self._purge_records), ("watchlist", self._purge_watchlist),
                           ("audit", self._purge_audit), ("temp", self._purge_temp)):
            try:
                counts.update(step(now))
            except Exception as exc:  # one failing step must not stop the others
                log.error("retention: %s step failed: %s", name, exc)
                errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
            self._hook(f"after_{name}")
        if errors:
            counts["errors"] = errors[:8]
        if self.audit is not None:
            try:
                self.audit.purge(counts)
            except EdgeError as exc:
                errors.append(f"audit entry: {exc}")
                log.error("retention: cannot record the purge in the audit log: %s", exc)
        if errors:
            # keep the intent: the next run does every step again
            raise RetentionError("purge incomplete (resumed at the next run): " + "; ".join(errors))
        remove_durably(self.intent_path)
        deleted = sum(v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)
                      and k.startswith(("alerts_", "records_", "audit_entries", "temp_files")))
        if deleted or counts.get("watchlist_deleted"):
            log.info("retention: purge done: %s", {k: v for k, v in counts.items() if v})
        return counts

    # -- steps -----------------------------------------------------------------------------------

    def _purge_records(self, now: float) -> dict:
        """Alerts and adjudication records, by the one rule in :mod:`edge.alerts.expiry`."""
        out = purge_match_records(self.dir / OUTBOX_FILENAME, now, self.retention_s, self.rejected_s, step=self._hook)
        if out["alerts_expired_undelivered"]:
            log.warning("retention: %d undelivered alerts older than %d days deleted (never acknowledged by the "
                        "broker)", out["alerts_expired_undelivered"], self.cfg.outbox.retention_days)
        return out

    def _purge_watchlist(self, now: float) -> dict:
        out: dict[str, Any] = {"watchlist_deleted": None}
        unit = self._unit
        if unit is None:
            return out
        st = unit.read_state()
        if st.get("status") != "loaded":
            if unit.bundle_path.exists():         # a stored bundle whose state says it is gone
                unit.wipe(f"stored bundle left after status {st.get('status')}")
                out["watchlist_deleted"] = "stale file"
            return out
        bundle_id = st.get("bundle_id")
        if unit.enforce_expiry():
            out["watchlist_deleted"] = "expired"
        elif not self.service_running and self.audit is not None:
            ended = deployment_ended_at(self.audit.path)
            if ended is not None and now - ended[0] >= (self.wipe_s if ended[1] else self.alive_s):
                ended = ended[0]
                reason = (f"deployment ended: the service last ran at {format_utc_ms(ended)}, more than "
                          f"{self.wipe_s / HOUR:g} h ago")
                if unit.wipe(reason):
                    out["watchlist_deleted"] = "deployment ended"
        if out["watchlist_deleted"] and self.audit is not None:
            self.audit.watchlist_deleted(bundle_id, out["watchlist_deleted"])
        return out

    def _purge_audit(self, now: float) -> dict:
        if self.audit is None:
            return {"audit_entries": 0}
        return {"audit_entries": self.audit.trim(now - self.audit_s)}

    def _purge_temp(self, now: float) -> dict:
        """Temporary files of atomic writes whose process is gone (a crash between write and
        rename): they may hold a copy of a bundle or of the audit log."""
        n = 0
        me = os.getpid()
        for p in self.dir.rglob(".*.tmp-*"):
            m = _TEMP.match(p.name)
            if not m or not p.is_file():
                continue
            pid = int(m.group(1))
            if pid == me or _alive(pid):
                continue
            if remove_durably(p):
                n += 1
        return {"temp_files": n}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
