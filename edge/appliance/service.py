"""``edge-lfr run --config FILE``: the appliance's service loop (systemd ``Type=notify``).

Start-up: validate the configuration; load and verify the models; restore the watchlist from
``unit.state_dir`` (re-verified; with none it runs, matches nothing and says so); open the
camera (``camera.*``); start the MQTT publisher (alerts from the durable outbox, status,
health); start the pipeline. ``READY=1`` is sent once the first frame has been processed.

Running: ``WATCHDOG=1`` every half ``WatchdogSec`` while frames keep being processed (none for
``pipeline.stall_seconds`` and the pings stop, so systemd restarts the service); the watchlist
is polled every ``pipeline.watchlist_poll_seconds`` (a list loaded, wiped or expired by
``edge-lfr watchlist ...`` is picked up, an expired one deleted); a status line goes to the
log and to systemd's ``STATUS=`` every ``pipeline.status_interval_seconds``.

Stopping: on SIGTERM / SIGINT, ``STOPPING=1``, capture stops, frames in flight finish, the
publisher gets a few seconds to deliver, and the process exits 0. A camera that fails exits
with 74 (systemd restarts the service); a bad configuration with 78 (it does not help to retry).
"""
from __future__ import annotations

import logging
import signal
import threading
import time

from edge import __version__
from edge.appliance.builder import build_appliance, build_recognizers
from edge.appliance.capture import open_source
from edge.appliance.metrics import tune_malloc
from edge.appliance.sdnotify import Notifier
from edge.errors import EdgeError

log = logging.getLogger("edge.appliance.service")


def run_service(cfg, *, source_path: str | None = None, max_frames: int = 0, notifier=None,
                stop_event: threading.Event | None = None, say=print) -> int:
    notifier = notifier or Notifier.from_environment()
    stop = stop_event or threading.Event()
    if stop_event is None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

    # input before environment: footage given with --source (or camera.source: file) is checked
    # first, so a refused or unreadable file is reported as such, before models, keys or certificates
    source = open_source(cfg, path=source_path) if (source_path is not None or cfg.camera.source == "file") else None
    try:
        tune_malloc()
        t0 = time.monotonic()
        recognizers = build_recognizers(cfg, cfg.pipeline.workers)
        log.info("models verified and loaded in %.1f s (%d worker(s)): %s", time.monotonic() - t0, len(recognizers),
                 "; ".join(f"{k} on {v}" for k, v in recognizers[0].delegates.items()))
        if source is None:
            source = open_source(cfg, path=source_path)
        log.info("camera: %s", source.describe())
        # from its service_start on, every way out of a failed start writes an error and one service_stop
        app = build_appliance(cfg, source, recognizers=recognizers, restore=True, publish=True, audit=True,
                              preview=True, version=__version__, max_frames=max_frames, keep_events=0)
    except BaseException:
        if source is not None:
            source.close()
        raise
    unit, pipeline, sa = app.unit, app.pipeline, app.audit
    try:
        app.start()
    except BaseException as exc:
        pipeline.stop()
        app.close(publisher_timeout=0.0)
        sa.failed_start(exc, "start")
        raise

    pc = cfg.pipeline
    ping_every = notifier.watchdog_interval()
    ready = False
    next_ping = next_poll = next_status = time.monotonic()
    code = 0
    poll_error: str | None = None
    crashed: BaseException | None = None
    try:
        while not stop.is_set() and not pipeline.done:
            now = time.monotonic()
            if not ready and pipeline.first_frame.is_set():
                ready = True
                notifier.ready("running; " + pipeline.status_line())
                log.info("ready: first frame processed %.1f s after start", now - t0)
            if ping_every and ready and now >= next_ping:
                if now - pipeline.last_progress < pc.stall_seconds:
                    notifier.watchdog()
                else:
                    log.error("no frame processed for %.0f s: not feeding the watchdog", now - pipeline.last_progress)
                next_ping = now + ping_every
            if now >= next_poll:
                next_poll = now + pc.watchlist_poll_seconds
                try:
                    if unit.poll():
                        cur = unit.current()
                        log.warning("watchlist changed: %s", cur.manifest.bundle_id if cur else
                                    "none loaded (nothing can match)")
                    unit.enforce_expiry()
                    poll_error = None
                except Exception as exc:  # a bad trust, state or key file: the running list stays in force
                    text = f"{type(exc).__name__}: {exc}"
                    if text != poll_error:   # once per distinct problem, not every poll
                        poll_error = text
                        log.error("watchlist check failed (the list in force, if any, stays in force; new "
                                  "bundles are refused until this is fixed): %s", exc)
                        sa.error("watchlist check", exc)
                for exc, where in unit.take_refusals():
                    sa.restored(None, exc)
            if now >= next_status:
                next_status = now + pc.status_interval_seconds
                line = pipeline.status_line()
                log.info("%s", line)
                notifier.status(line)
            sa.tick(pipeline)
            stop.wait(0.2)
    except Exception as exc:  # recorded as what it is, never as "source ended"
        crashed = exc
        log.error("the service loop failed: %s", exc)
        sa.error("service", exc)
        code = exc.exit_code if isinstance(exc, EdgeError) else 1
    finally:
        notifier.stopping("stopping")
        pipeline.stop()
        try:
            pipeline.wait(30.0)
        except EdgeError as exc:
            log.error("pipeline ended with an error: %s", exc)
            sa.error("pipeline", exc)
            code = exc.exit_code
        except RuntimeError as exc:
            log.error("%s", exc)
            sa.error("pipeline", exc)
            code = 1
        app.close(publisher_timeout=5.0)
        rep = pipeline.report()
        say(f"edge-lfr run: {rep['frames_processed']} frames in {rep['seconds']:.1f} s ({rep['fps']} fps), "
            f"{rep['dropped_frames']} dropped, {rep['alerts']} alert(s)")
        sa.stop("signal" if stop.is_set() else ("source ended" if code == 0 else
                                                 f"error: {type(crashed).__name__ if crashed else code}"), pipeline,
                exit_code=code)
        notifier.close()
    return code
