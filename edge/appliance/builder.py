"""The one place that assembles the appliance from a :class:`~edge.config.Config`.

source -> recognisers (one per worker) -> tracker (inside the pipeline) -> live watchlist ->
outbox -> publisher (or a plain outbox sink) -> audit -> preview. The service, the test rig,
the pipeline bench and the demo all call :func:`build_appliance`; none wires the parts by hand,
so what a rig or a bench measures is what a van runs.

    app = build_appliance(cfg, source, restore=True, publish=True, audit=True, preview=True)
    app.start(); ...; app.pipeline.stop(); app.pipeline.wait(30); app.close()
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edge.alerts.adjudication import AdjudicationRecords
from edge.alerts.outbox import FILENAME as OUTBOX_FILENAME
from edge.alerts.outbox import Outbox
from edge.alerts.publisher import AlertPublisher
from edge.appliance.board import AlertEvent
from edge.appliance.pipeline import OutboxSink, Pipeline
from edge.appliance.preview import PreviewServer
from edge.config import Config, validate
from edge.errors import ConfigError
from edge.privacy.service_audit import ServiceAudit
from edge.recognition.api import Recognizer
from edge.watchlist.errors import BundleError
from edge.watchlist.unit import UnitWatchlist

log = logging.getLogger(__name__)


def build_recognizers(config: Config, workers: int) -> list[Recognizer]:
    """One Recognizer per worker. Interpreter threads are split between the workers
    (``runtime.threads // workers``, at least 1): on a small CPU, parallel single-threaded
    interpreters beat one multi-threaded one."""
    d = config.as_dict()
    d["runtime"]["threads"] = max(1, int(config.runtime.threads) // max(1, workers))
    per_worker = validate(d)
    return [Recognizer(per_worker) for _ in range(max(1, workers))]


@dataclass
class Appliance:
    """The assembled parts; :attr:`pipeline` runs them. ``unit`` is None when no watchlist was
    asked for (nothing can match), ``publisher`` None when alerts only go to the outbox,
    ``audit`` and ``preview`` None when not asked for."""

    config: Config
    recognizers: list
    unit: UnitWatchlist | None
    outbox: Outbox
    publisher: AlertPublisher | None
    audit: ServiceAudit | None
    preview: PreviewServer | None
    pipeline: Pipeline

    def health(self) -> dict:
        """The pipeline's figures for the publisher's health message."""
        return self.pipeline.health()

    def start(self) -> "Appliance":
        """Start the publisher (if any), the preview (if any) and the pipeline's threads."""
        if self.publisher is not None:
            self.publisher.start()
        if self.preview is not None:
            self.pipeline.preview = self.preview.start()
        self.pipeline.start()
        return self

    def run(self) -> dict:
        """:meth:`start`, wait until the source ends, return the pipeline's report (the parts stay
        open: :meth:`close` them)."""
        self.start()
        try:
            self.pipeline.wait()
        except BaseException:
            self.pipeline.stop()
            raise
        return self.pipeline.report()

    def close(self, publisher_timeout: float = 5.0) -> None:
        """After the pipeline has ended: stop publishing (what is not delivered stays in the
        outbox for the next run), stop the preview, close the outbox."""
        if self.publisher is not None:
            self.publisher.stop(timeout=publisher_timeout)
        if self.preview is not None:
            self.preview.close()
        self.outbox.close()


def build_appliance(config: Config, source, *, recognizers=None, state_dir: str | os.PathLike | None = None,
                    bundle: bytes | str | os.PathLike | None = None, restore: bool = False,
                    publish: bool = False, audit: bool = False, preview: bool = False,
                    on_alert: Callable[[AlertEvent], None] | None = None, device_key=None, version: str = "",
                    unit_id: str | None = None, max_frames: int = 0, keep_events: int = 10_000,
                    on_frame: Callable[[Any], None] | None = None, on_match: Callable[[Any], None] | None = None,
                    say: Callable[[str], Any] = log.info) -> Appliance:
    """Assemble the appliance for ``source`` (a :class:`~edge.appliance.capture.FrameSource`).

    state_dir: where the watchlist state and the outbox live (default ``unit.state_dir``).
    bundle: a signed watchlist bundle (bytes or path) to load into that state (rigs, benches,
        the demo); restore: restore the stored one instead (the service). Neither: no watchlist.
    publish: alerts go to the MQTT publisher (``mqtt.*``), which also takes adjudications;
        else they are only committed to the outbox.
    audit: the service's audit log and retention (:class:`ServiceAudit`): purge, then a
        ``service_start`` entry; alerts, adjudications and watchlist changes are recorded.
    preview: the operator's loopback preview when ``privacy.preview_port`` is set.
    device_key: the unit's key (default: read from ``unit.device_key`` when a bundle is opened).
    on_frame, on_match: the pipeline's per-frame and per-match hooks (rigs, benches; see
        :class:`~edge.appliance.pipeline.Pipeline`).
    """
    state = Path(state_dir) if state_dir is not None else Path(config.unit.state_dir)
    recognizers = list(recognizers) if recognizers is not None else build_recognizers(config, config.pipeline.workers)
    embedder = recognizers[0].embedder_sha256

    unit = None
    if bundle is not None or restore:
        if not config.unit.id and device_key is None:
            raise ConfigError("unit.id: this unit's id is needed to open a watchlist bundle (set it in the config)")
        unit = UnitWatchlist(config, model_sha256=embedder, state_dir=state, device_key=device_key)

    service_audit = None
    if audit:
        service_audit = ServiceAudit.start(config, unit=unit, model_sha256=embedder, version=version)
    try:
        return _assemble(config, source, recognizers, state, unit, service_audit, bundle=bundle, restore=restore,
                         publish=publish, preview=preview, on_alert=on_alert, unit_id=unit_id,
                         max_frames=max_frames, keep_events=keep_events, on_frame=on_frame, on_match=on_match,
                         say=say)
    except BaseException as exc:
        if service_audit is not None:     # a start on record gets its error and exactly one stop
            service_audit.failed_start(exc)
        raise


def _assemble(config, source, recognizers, state, unit, service_audit, *, bundle, restore, publish, preview,
              on_alert, unit_id, max_frames, keep_events, on_frame, on_match, say) -> Appliance:
    if bundle is not None:
        live = unit.load(bundle)
        if service_audit is not None:
            service_audit.restored(live)
        s = live.manifest.summary()
        say(f"watchlist {s['bundle_id']} serial {s['serial']}: {s['subjects']} subjects, valid until {s['valid_until']}")
    elif restore:
        try:
            live = unit.restore()
        except Exception as exc:  # a bad trust / key / state file: the service still starts, and says why
            live = None
            log.error("the stored watchlist could not be restored: %s", exc)
            if service_audit is not None:
                if isinstance(exc, BundleError):
                    service_audit.restored(None, exc)
                else:
                    service_audit.error("watchlist restore", exc)
        else:
            if service_audit is not None:
                for exc, _ in unit.take_refusals():
                    service_audit.restored(None, exc)
                service_audit.restored(live)
        if live is None:
            log.warning("no watchlist loaded: the unit runs but nothing can match until one is loaded "
                        "(edge-lfr watchlist load B.edgewl --config ...)")
        else:
            s = live.manifest.summary()
            log.info("watchlist %s serial %d: %d subjects, valid until %s", s["bundle_id"], s["serial"],
                     s["subjects"], s["valid_until"])

    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    outbox = Outbox(state / OUTBOX_FILENAME, max_pending=config.outbox.max_pending)
    publisher = None
    if publish:
        try:
            publisher = AlertPublisher(config, outbox=outbox)
        except BaseException:
            outbox.close()
            raise
        record = AdjudicationRecords(outbox).record
        publisher.on_adjudication = service_audit.wrap_adjudication(record) if service_audit else record
        if service_audit is not None:
            service_audit.attach_publisher(publisher)
        sink = publisher.submit
    else:
        sink = OutboxSink(outbox, config.outbox.max_crop_bytes, config.outbox.max_context_bytes)

    hooks = [h for h in (service_audit.on_alert if service_audit else None, on_alert) if h is not None]

    def alerted(ev: AlertEvent) -> None:
        for hook in hooks:
            hook(ev)

    pipeline = Pipeline(config, source, watchlist=unit.current if unit is not None else (lambda: None), sink=sink,
                        unit_id=unit_id or config.unit.id or "unit", on_alert=alerted if hooks else None,
                        recognizers=recognizers, outbox_stats=lambda: {"outbox_pending": outbox.pending_count()},
                        max_frames=max_frames, keep_events=keep_events, on_frame=on_frame, on_match=on_match)
    preview_server = None
    if preview and config.privacy.preview_port:   # loopback only; faces that are not a current match blurred
        preview_server = PreviewServer(config.privacy.preview_port, max_fps=config.privacy.preview_max_fps,
                                       unit_id=config.unit.id, mode=config.privacy.preview_mode)
    if publisher is not None:
        if service_audit is not None:   # the audit log's tail problem, if any, goes on the health topic too
            publisher.health_source = lambda: {**pipeline.health(), "audit_problem": service_audit.audit.problem}
        else:
            publisher.health_source = pipeline.health
    return Appliance(config, recognizers, unit, outbox, publisher, service_audit, preview_server, pipeline)
