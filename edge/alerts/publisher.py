"""The unit's MQTT side: publish alerts from the durable outbox, status, health; take adjudications.

:class:`AlertPublisher` (paho-mqtt 2.x, MQTT v5, TLS with a client certificate):

* **Session**: ``clean_start=False`` on every connect with a session expiry
  (``mqtt.session_expiry_seconds``), so the broker keeps the unit's subscription and queued
  adjudications while the van is out of coverage. Reconnects with back-off
  (``mqtt.reconnect_min_seconds`` .. ``reconnect_max_seconds``).
* **Availability**: last will ``offline`` (retained, QoS 1) on ``<prefix>/<unit>/status``;
  ``online`` (retained) on every connect; ``offline`` again on a clean stop.
* **Alerts**: :meth:`AlertPublisher.submit` validates an alert and commits it to the
  :class:`~edge.alerts.outbox.Outbox` before anything is sent. One pump thread publishes pending rows
  in outbox order (QoS 1, at most ``mqtt.max_inflight`` unacknowledged) and marks a row
  delivered only on its PUBACK with a success reason code. After a lost connection paho
  resends the unacknowledged ones first (DUP) and the pump hands over nothing newer until
  they are acknowledged, so order holds across reconnects; after a crash everything not
  marked is sent again from the outbox, oldest first. A PUBACK with a failure reason (e.g.
  0x87 not authorized) leaves the row pending: it is logged and counted, and the pump starts
  again from the oldest pending row after a back-off, so no alert is skipped.
* **Health**: every ``mqtt.health_interval_seconds`` while connected (:data:`edge.alerts.message.HEALTH_SCHEMA`).
* **Adjudications**: subscribed on ``<prefix>/<unit>/adjudication`` (QoS 1); each payload is
  checked (size cap, UTF-8 JSON object, schema, an event id known to the outbox); bad ones
  are logged and ignored, good ones go to the ``on_adjudication`` hook. When the hook
  returns an acknowledgement (:data:`edge.alerts.message.ADJUDICATION_ACK_SCHEMA`, e.g. from
  :meth:`edge.alerts.adjudication.AdjudicationRecords.record`), it is checked and published on
  ``<prefix>/<unit>/adjudication/ack`` (QoS 1, one in flight at a time, queued meanwhile).

Nothing else is ever published: the class has no general-purpose publish method.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.alerts import message as alerts
from edge.alerts import schema as message_schema
from edge.alerts.connection import PAHO_LOG, no_delay, tls_context, topics
from edge.alerts.outbox import Outbox
from edge.utc import format_utc_ms

log = logging.getLogger(__name__)

#: Room paho keeps above the alert window for the status and health messages, so that it
#: never queues an alert behind them (a queued message would break the resend order).
_EXTRA_INFLIGHT = 4
_POLL_SECONDS = 1.0
#: Acknowledgements waiting to be published at most (the oldest is dropped past this: the
#: handheld sends its adjudication again when no acknowledgement comes, and gets a duplicate one).
_MAX_QUEUED_ACKS = 1000
#: An acknowledgement without a PUBACK after this long no longer holds back the next one.
_ACK_STALE_SECONDS = 30.0
#: Inbound adjudications waiting for the adjudication thread at most; past this they are
#: dropped (counted) unread: a flood never holds back alerts, and never grows memory.
_MAX_QUEUED_ADJUDICATIONS = 1000
#: Decisions remembered to answer repeats without a database transaction or an audit entry.
_DECIDED_CACHE = 10_000
#: Officers whose rate is tracked at once (least recently seen forgotten first).
_MAX_TRACKED_OFFICERS = 10_000
#: All officers together may make this many times one officer's rate.
_GLOBAL_RATE_FACTOR = 10
#: Reasons an inbound message is not handed to the hook (counted; the service audits the counts).
REJECTION_REASONS = ("malformed", "unknown_event", "rate_limited", "duplicate", "retained", "oversized",
                     "queue_full", "wrong_topic")


class _Buckets:
    """Token buckets: ``rate`` per minute for each key (burst = one minute's worth), and
    ``_GLOBAL_RATE_FACTOR`` times that for all keys together."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.rate = float(per_minute) / 60.0
        self.burst = float(max(1, per_minute))
        self.clock = clock
        self._keys: OrderedDict[str, list[float]] = OrderedDict()
        self._all = [self.burst * _GLOBAL_RATE_FACTOR, clock()]

    def _take(self, b: list[float], rate: float, burst: float, now: float) -> bool:
        b[0] = min(burst, b[0] + (now - b[1]) * rate)
        b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        return False

    def allow(self, key: str) -> bool:
        now = self.clock()
        b = self._keys.pop(key, None) or [self.burst, now]
        self._keys[key] = b
        while len(self._keys) > _MAX_TRACKED_OFFICERS:
            self._keys.popitem(last=False)
        if not self._take(b, self.rate, self.burst, now):
            return False
        return self._take(self._all, self.rate * _GLOBAL_RATE_FACTOR, self.burst * _GLOBAL_RATE_FACTOR, now)




@dataclass(frozen=True)
class Delivery:
    """One alert acknowledged by the broker: its outbox seq and the monotonic time of the PUBACK."""

    seq: int
    acked_at: float


class AlertPublisher:
    """Publishes the unit's alerts from the outbox, its status and its health; receives adjudications.

    ``health_source()`` returns any of ``fps``, ``queue_depth``, ``bundle_id``,
    ``bundle_expires_at`` (epoch seconds or an aware datetime); ``on_adjudication(dict)`` is
    called (from the publisher's thread; keep it quick) for each valid adjudication and may
    return an acknowledgement dict to publish (``None``: nothing is published);
    ``on_delivered(Delivery)`` for each acknowledged alert.
    """

    def __init__(self, cfg, *, outbox: Outbox | None = None,
                 health_source: Callable[[], Mapping[str, Any]] | None = None,
                 on_adjudication: Callable[[dict], None] | None = None,
                 on_delivered: Callable[[Delivery], None] | None = None,
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        m = cfg.mqtt
        self.unit_id = cfg.unit.id
        self.topics = topics(m.topic_prefix, self.unit_id)
        self._ctx = tls_context(m.ca_file, m.cert_file, m.key_file)
        self._own_outbox = outbox is None
        self.outbox = outbox if outbox is not None else Outbox.from_config(cfg, clock=clock)
        self.clock = clock
        self.health_source = health_source
        self.on_adjudication = on_adjudication
        self.on_delivered = on_delivered
        self.window = int(m.max_inflight)
        self.max_image_bytes = int(cfg.outbox.max_crop_bytes)
        self.max_context_bytes = int(cfg.outbox.max_context_bytes)

        self._events: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._started_at = time.monotonic()
        self._lock = threading.Lock()  # guards the counters below for readers in other threads
        self.connected = False
        self.connects = 0
        self.publish_rejections = 0
        self.adjudications_rejected = 0
        self.adjudications_accepted = 0
        self.rejections = {r: 0 for r in REJECTION_REASONS}        # by reason, ever (health, audit)
        self.rejections_by_officer: dict[str, int] = {}            # claimed officer id -> count (bounded)
        self.delivered = 0
        # inbound adjudications: their own queue and thread, never the pump's
        self._adj_queue: queue.Queue = queue.Queue(maxsize=_MAX_QUEUED_ADJUDICATIONS)
        self._adj_thread: threading.Thread | None = None
        self._decided: OrderedDict[tuple, dict] = OrderedDict()
        self._buckets = _Buckets(int(getattr(m, "adjudication_rate_per_officer", 30)))
        self._max_adj_bytes = int(m.max_adjudication_bytes)
        self._last_limit_log: dict[str, float] = {}
        self._log_window = [0.0, 0]

        # pump state (touched only by the pump thread)
        self._inflight: dict[int, int] = {}      # seq -> mid, in hand-over order
        self._mid_seq: dict[int, int] = {}       # mid -> seq of an alert
        self._other_mids: dict[int, str] = {}    # mid -> 'status' | 'health'
        self._last_handed = 0
        self._drain = False        # after a disconnect: hand over nothing new until in-flight are acked
        self._rewind = False       # after a refused PUBACK: start again from the oldest pending row
        self._hold_until = 0.0
        self._reject_backoff = 0.0
        self._health_mid: int | None = None
        self._acks: deque[bytes] = deque()      # acknowledgements waiting to be published
        self._ack_mid: int | None = None        # the one in flight ...
        self._ack_sent_at = 0.0                 # ... and when it was handed over
        self._connect_failures = 0

        self.client = self._make_client()

    # -- paho ---------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        m = self.cfg.mqtt
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.unit_id, protocol=mqtt.MQTTv5,
                        reconnect_on_failure=True)
        c.tls_set_context(self._ctx)
        c.will_set(self.topics.status, message_schema.STATUS_OFFLINE, qos=1, retain=True)
        c.reconnect_delay_set(m.reconnect_min_seconds, m.reconnect_max_seconds)
        c.max_inflight_messages_set(self.window + _EXTRA_INFLIGHT)
        c.max_queued_messages_set(0)
        c.enable_logger(PAHO_LOG)
        c.on_socket_open = no_delay
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_connect_fail = self._on_connect_fail
        return c

    def _on_connect_fail(self, client, userdata) -> None:
        self._connect_failures += 1
        n = self._connect_failures
        if n == 1 or n % 20 == 0:  # say it once, then now and then: the van may be out of coverage for hours
            log.warning("cannot connect to the broker %s:%d (attempt %d; retrying with back-off up to %.0f s); "
                        "alerts wait in the outbox", self.cfg.mqtt.host, self.cfg.mqtt.port, n,
                        self.cfg.mqtt.reconnect_max_seconds)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connect_failures = 0
        if reason_code.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.cfg.mqtt.host, self.cfg.mqtt.port, reason_code)
            return
        self._events.put(("connected", bool(flags.session_present)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._events.put(("disconnected", str(reason_code)))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._events.put(("ack", mid, reason_code, time.monotonic()))

    def _on_message(self, client, userdata, message) -> None:
        """paho's network thread: cheap checks before anything is copied, then the adjudication
        thread's bounded queue (never the pump's: alerts are not queued behind adjudications)."""
        if message.retain:        # left on the broker by someone: re-delivered at every reconnect
            self._reject("retained", None)
            return
        if message.topic != self.topics.adjudication:
            self._reject("wrong_topic", None)
            return
        if len(message.payload) > self._max_adj_bytes:   # refused before the payload is copied
            self._reject("oversized", None)
            self._log_rejection(f"adjudication rejected ({len(message.payload)} bytes): exceeds the cap "
                                f"mqtt.max_adjudication_bytes {self._max_adj_bytes}")
            return
        try:
            self._adj_queue.put_nowait((message.topic, bytes(message.payload)))
        except queue.Full:
            self._reject("queue_full", None)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                log.error("broker refused the subscription to %s: %s", self.topics.adjudication, rc)

    # -- public -------------------------------------------------------------------------------

    def start(self) -> "AlertPublisher":
        """Connect in the background (retrying with back-off) and start the pump."""
        if self._thread is not None:
            return self
        m = self.cfg.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(m.session_expiry_seconds)
        # the broker must not send this client anything larger (MQTT v5): only adjudications come in
        props.MaximumPacketSize = self._max_adj_bytes + 1024
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_seconds, clean_start=False,
                                  properties=props)
        self.client.loop_start()
        self._adj_thread = threading.Thread(target=self._adj_run, name="edge-lfr-adjudications", daemon=True)
        self._adj_thread.start()
        self._thread = threading.Thread(target=self._run, name="edge-lfr-outbox-pump", daemon=True)
        self._thread.start()
        return self

    def submit(self, alert: Mapping[str, Any]) -> int:
        """Validate an alert, commit it to the outbox (durable before anything is sent) and wake
        the pump. Returns the outbox seq. Raises AlertError or OutboxFull (never drops older ones)."""
        message_schema.validate_alert(alert, self.max_image_bytes, self.max_context_bytes)
        if alert["unit_id"] != self.unit_id:
            raise message_schema.AlertError(f"alert is for unit {alert['unit_id']!r}, this unit is {self.unit_id!r}")
        seq = self.outbox.enqueue(alert["event_id"], alerts.encode(alert))
        self._events.put(("wake",))
        return seq

    def stats(self) -> dict:
        ob = self.outbox.stats()
        with self._lock:
            return {"connected": self.connected, "connects": self.connects, "delivered": self.delivered,
                    "publish_rejections": self.publish_rejections,
                    "adjudications_accepted": self.adjudications_accepted,
                    "adjudications_rejected": self.adjudications_rejected,
                    "adjudications_rate_limited": self.rejections["rate_limited"],
                    "adjudications_duplicate": self.rejections["duplicate"],
                    "adjudications_dropped": self.rejections["queue_full"],
                    "outbox_pending": ob["pending"], "outbox_refused": ob["refused"],
                    "oldest_pending_s": ob["oldest_pending_s"]}

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the outbox has nothing pending; True if it got there within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.pending_count() == 0:
                return True
            time.sleep(0.02)
        return self.outbox.pending_count() == 0

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.connected:
            time.sleep(0.01)
        return self.connected

    def stop(self, timeout: float = 5.0) -> None:
        """Give in-flight alerts up to ``timeout`` seconds to be acknowledged, publish ``offline``,
        disconnect. Undelivered alerts stay in the outbox for the next start."""
        if self._adj_thread is not None:
            try:
                self._adj_queue.put(None, timeout=1.0)
            except queue.Full:
                pass
            self._adj_thread.join(5.0)
            self._adj_thread = None
        if self._thread is not None:
            self._events.put(("stop", time.monotonic() + timeout))
            self._thread.join(timeout + 5.0)
            self._thread = None
        self.client.disconnect()
        self.client.loop_stop()
        if self._own_outbox:
            self.outbox.close()

    def __enter__(self) -> "AlertPublisher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the pump thread ----------------------------------------------------------------------

    def _run(self) -> None:
        interval = float(self.cfg.mqtt.health_interval_seconds)
        now = time.monotonic()
        next_health = now + interval
        next_poll = now + _POLL_SECONDS
        stopping_until: float | None = None
        offline_mid: int | None = None
        offline_deadline = 0.0
        while True:
            now = time.monotonic()
            wake = min(next_poll, next_health)
            if self._hold_until > now:
                wake = min(wake, self._hold_until)
            try:
                events = [self._events.get(timeout=max(0.0, wake - now))]
            except queue.Empty:
                events = []
            while True:
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            acks = []
            for ev in events:
                kind = ev[0]
                if kind == "ack":
                    acks.append(ev[1:])
                elif kind == "connected":
                    self._handle_connected(ev[1])
                    next_health = time.monotonic() + min(1.0, interval)
                elif kind == "disconnected":
                    with self._lock:
                        was, self.connected = self.connected, False
                    if was and stopping_until is None:
                        log.warning("disconnected from the broker (%s); %d alert(s) in flight will be resent",
                                    ev[1], len(self._inflight))
                    if self._inflight:
                        self._drain = True
                    self._health_mid = None
                elif kind == "message":
                    self._handle_message(ev[1], ev[2])
                elif kind == "stop" and stopping_until is None:
                    stopping_until = ev[1]
            if acks:
                if offline_mid is not None and any(a[0] == offline_mid for a in acks):
                    offline_mid = None
                self._handle_acks(acks)
            now = time.monotonic()
            if not self._inflight:
                self._drain = False
                if self._rewind:
                    self._rewind = False
                    self._last_handed = 0
                    self._hold_until = now + self._reject_backoff
            if stopping_until is not None:
                if offline_deadline == 0.0 and (not self._inflight or now >= stopping_until or not self.connected):
                    if self.connected:
                        info = self.client.publish(self.topics.status, message_schema.STATUS_OFFLINE, qos=1, retain=True)
                        self._other_mids[info.mid] = "status"
                        offline_mid = info.mid
                    offline_deadline = now + 2.0
                if offline_deadline and (offline_mid is None or now >= offline_deadline):
                    return
                continue
            self._fill()
            self._publish_acks()
            if now >= next_poll:
                next_poll = now + _POLL_SECONDS
            if now >= next_health:
                next_health = now + interval
                self._publish_health()

    def _handle_connected(self, session_present: bool) -> None:
        with self._lock:
            self.connected = True
            self.connects += 1
        log.info("connected to %s:%d (session present: %s)", self.cfg.mqtt.host, self.cfg.mqtt.port, session_present)
        info = self.client.publish(self.topics.status, message_schema.STATUS_ONLINE, qos=1, retain=True)
        self._other_mids[info.mid] = "status"
        self.client.subscribe(self.topics.adjudication, qos=1)
        if self._inflight:
            self._drain = True

    def _handle_acks(self, acks) -> None:
        done: list[tuple[int, float]] = []
        for mid, reason, t in acks:
            seq = self._mid_seq.pop(mid, None)
            if seq is None:
                kind = self._other_mids.pop(mid, None)
                if kind == "health" and self._health_mid == mid:
                    self._health_mid = None
                if kind == "ack" and self._ack_mid == mid:
                    self._ack_mid = None
                if kind and reason.is_failure:
                    log.error("broker refused the %s message: %s", kind, reason)
                continue
            self._inflight.pop(seq, None)
            if reason.is_failure:
                with self._lock:
                    self.publish_rejections += 1
                self._reject_backoff = min(max(2 * self._reject_backoff, 1.0), float(self.cfg.mqtt.reconnect_max_seconds))
                log.error("broker refused alert seq %d on %s: %s; it stays in the outbox and will be "
                          "retried in %.0f s (check the broker ACL for this unit's certificate)",
                          seq, self.topics.alert, reason, self._reject_backoff)
                self._rewind = True
            else:
                self._reject_backoff = 0.0
                done.append((seq, t))
        if done:
            try:
                self.outbox.mark_delivered([s for s, _ in done])
            except Exception as exc:  # a failed mark only means the alert is sent again later
                log.error("could not mark %d alert(s) delivered (they will be sent again): %s", len(done), exc)
            with self._lock:
                self.delivered += len(done)
            if self.on_delivered is not None:
                for seq, t in done:
                    try:
                        self.on_delivered(Delivery(seq, t))
                    except Exception:
                        log.exception("on_delivered hook failed")

    def _fill(self) -> None:
        if (not self.connected or self._drain or self._rewind or time.monotonic() < self._hold_until
                or not self.client.is_connected()):
            return
        room = self.window - len(self._inflight)
        if room <= 0:
            return
        try:
            rows = self.outbox.pending_after(self._last_handed, room)
        except Exception as exc:
            log.error("cannot read the outbox: %s", exc)
            return
        props = Properties(PacketTypes.PUBLISH)
        props.PayloadFormatIndicator = 1
        props.ContentType = "application/json"
        for row in rows:
            info = self.client.publish(self.topics.alert, row.payload, qos=1, retain=False, properties=props)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.error("paho refused to queue alert seq %d: %s", row.seq, mqtt.error_string(info.rc))
                break
            self._inflight[row.seq] = info.mid
            self._mid_seq[info.mid] = row.seq
            self._last_handed = row.seq

    def _publish_acks(self) -> None:
        """Hand the next queued acknowledgement to paho, one in flight at a time (status, health
        and one acknowledgement stay within the room kept above the alert window)."""
        if self._ack_mid is not None and time.monotonic() - self._ack_sent_at > _ACK_STALE_SECONDS:
            self._other_mids.pop(self._ack_mid, None)
            self._ack_mid = None
        if not self._acks or self._ack_mid is not None or not self.connected or not self.client.is_connected():
            return
        payload = self._acks.popleft()
        props = Properties(PacketTypes.PUBLISH)
        props.PayloadFormatIndicator = 1
        props.ContentType = "application/json"
        info = self.client.publish(self.topics.ack, payload, qos=1, retain=False, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.error("paho refused to queue an adjudication acknowledgement: %s", mqtt.error_string(info.rc))
            self._acks.appendleft(payload)
            return
        self._other_mids[info.mid] = "ack"
        self._ack_mid, self._ack_sent_at = info.mid, time.monotonic()

    def _queue_ack(self, ack: Any) -> None:
        try:
            payload = alerts.encode(alerts.validate_ack(ack))
        except (message_schema.AlertError, TypeError, ValueError) as exc:
            log.error("on_adjudication returned an acknowledgement that is not sent: %s", exc)
            return
        if ack["unit_id"] != self.unit_id:
            log.error("acknowledgement for unit %r not sent: this unit is %r", ack["unit_id"], self.unit_id)
            return
        if len(self._acks) >= _MAX_QUEUED_ACKS:
            self._acks.popleft()
            log.warning("more than %d adjudication acknowledgements waiting: the oldest is dropped",
                        _MAX_QUEUED_ACKS)
        self._acks.append(payload)
        self._events.put(("wake",))       # the pump publishes it

    def _publish_health(self) -> None:
        if not self.connected or self._health_mid is not None:
            return
        try:
            payload = alerts.encode(self.health())
        except Exception as exc:
            log.error("health message not sent: %s", exc)
            return
        info = self.client.publish(self.topics.health, payload, qos=1, retain=False)
        self._other_mids[info.mid] = "health"
        self._health_mid = info.mid

    def health(self) -> dict:
        """The current health message (validated against :data:`edge.alerts.message.HEALTH_SCHEMA`)."""
        src: Mapping[str, Any] = {}
        if self.health_source is not None:
            try:
                src = dict(self.health_source() or {})
            except Exception as exc:
                log.warning("health source failed: %s", exc)
        st = self.stats()

        def number(v):
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 else None

        def celsius(v):  # the pipeline's reading (edge.appliance.metrics); a van in winter is below 0
            return round(float(v), 1) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

        def count(v):
            return int(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None

        expires = src.get("bundle_expires_at")
        try:
            expires = format_utc_ms(expires) if expires is not None else None
        except message_schema.AlertError:
            expires = None
        bundle = src.get("bundle_id")
        try:
            free = number(self.outbox.disk_free_mb())
        except Exception:
            free = None
        msg = {
            "schema_version": message_schema.SCHEMA_VERSION,
            "unit_id": self.unit_id,
            "at": format_utc_ms(datetime.now(timezone.utc)),
            "uptime_s": round(time.monotonic() - self._started_at, 1),
            "fps": number(src.get("fps")),
            "queue_depth": count(src.get("queue_depth")),
            "outbox_pending": st["outbox_pending"],
            "outbox_refused": st["outbox_refused"],
            "oldest_pending_s": None if st["oldest_pending_s"] is None else round(st["oldest_pending_s"], 1),
            "bundle_id": bundle if isinstance(bundle, str) and not message_schema.check(bundle, message_schema.HEALTH_SCHEMA["properties"]["bundle_id"]) else None,
            "bundle_expires_at": expires,
            "cpu_temp_c": celsius(src.get("cpu_temp_c")),
            "publish_rejections": st["publish_rejections"],
            "adjudications_rejected": st["adjudications_rejected"],
            "adjudications_rate_limited": st["adjudications_rate_limited"],
            "disk_free_mb": free,
            "disk_low": None if free is None else free < float(self.cfg.outbox.min_free_mb),
            "audit_problem": (str(src["audit_problem"])[:200] if src.get("audit_problem") else None),
        }
        errors = message_schema.check(msg, message_schema.HEALTH_SCHEMA)
        if errors:
            raise message_schema.AlertError("invalid health message: " + "; ".join(errors))
        return msg

    def rejection_counts(self) -> dict:
        """Inbound messages not handed to the hook, by reason, and the officers that sent most of
        them (claimed ids, at most 10): what the service writes as one aggregated audit entry."""
        with self._lock:
            top = sorted(self.rejections_by_officer.items(), key=lambda kv: -kv[1])[:10]
            return {"by_reason": dict(self.rejections), "by_officer": dict(top)}

    def _reject(self, reason: str, officer: str | None) -> None:
        with self._lock:
            self.rejections[reason] += 1
            if reason != "duplicate":
                self.adjudications_rejected += 1
            if officer is not None:
                if officer in self.rejections_by_officer or len(self.rejections_by_officer) < 1000:
                    self.rejections_by_officer[officer] = self.rejections_by_officer.get(officer, 0) + 1

    def _log_rejection(self, text: str) -> None:
        """One warning per rejected message, at most 20 a minute (a flood must not flood the log)."""
        now = time.monotonic()
        with self._lock:
            if now - self._log_window[0] > 60.0:
                if self._log_window[1] > 20:
                    log.warning("%d more adjudication(s) rejected in the last minute (counted, not logged)",
                                self._log_window[1] - 20)
                self._log_window = [now, 0]
            self._log_window[1] += 1
            if self._log_window[1] > 20:
                return
        log.warning("%s", text)

    def _adj_run(self) -> None:
        while True:
            item = self._adj_queue.get()
            if item is None:
                return
            try:
                self._handle_message(*item)
            except Exception:  # never let one message end the thread
                log.exception("adjudication handling failed")

    def _handle_message(self, topic: str, payload: bytes) -> None:
        """The adjudication thread: parse, rate-limit by officer, answer a repeat from memory,
        check the event id, then the hook (records + audit) and the acknowledgement."""
        if topic != self.topics.adjudication:
            self._reject("wrong_topic", None)
            return
        try:
            adj = alerts.parse_adjudication(payload, self._max_adj_bytes)
        except message_schema.AdjudicationError as exc:
            self._reject("malformed", None)
            self._log_rejection(f"adjudication rejected ({len(payload)} bytes on {topic}): {exc}")
            return
        event_id, outcome, officer, _ = alerts.adjudication_fields(adj)
        if not self._buckets.allow(officer):
            self._reject("rate_limited", officer)
            now = time.monotonic()
            if now - self._last_limit_log.get(officer, -1e9) > 60.0 and len(self._last_limit_log) < 1000:
                self._last_limit_log[officer] = now
                log.warning("adjudications from officer %s over the rate limit (%d a minute): ignored and counted",
                            officer, int(self._buckets.burst))
            return
        key = (event_id, officer, outcome)
        cached = self._decided.get(key)
        if cached is not None:          # a repeat: answered from memory, counted, not recorded again
            self._reject("duplicate", officer)
            with self._lock:
                self.adjudications_accepted += 1
            self._queue_ack(dict(cached, duplicate=True))
            return
        try:
            if not self.outbox.knows(event_id):
                raise message_schema.AdjudicationError(f"unknown event id {event_id}")
        except message_schema.AdjudicationError as exc:
            self._reject("unknown_event", officer)
            self._log_rejection(f"adjudication rejected ({len(payload)} bytes on {topic}): {exc}")
            return
        except Exception as exc:
            self._reject("malformed", officer)
            log.error("adjudication could not be checked: %s", exc)
            return
        with self._lock:
            self.adjudications_accepted += 1
        log.info("adjudication %s for event %s from %s", outcome, event_id, officer)
        if self.on_adjudication is not None:
            try:
                ack = self.on_adjudication(adj)
            except Exception:
                log.exception("on_adjudication hook failed")
                return
            if ack is not None:
                self._decided[key] = dict(ack)
                while len(self._decided) > _DECIDED_CACHE:
                    self._decided.popitem(last=False)
                self._queue_ack(ack)
