"""Helpers for the MQTT tests: real mosquitto brokers on loopback with certificates from
``deploy/make-certs.sh``, unit configurations, alert factories and a collecting subscriber.

Everything listens on and dials 127.0.0.1 only.
"""
from __future__ import annotations

import json
import threading
import ssl
import time
from pathlib import Path

import numpy as np
import pytest
from paho.mqtt.enums import CallbackAPIVersion
import paho.mqtt.client as mqtt

from edge.alerts.message import AlertContext, build_alert
from edge.config import validate
from edge.alerts.localbroker import LOOPBACK, BrokerError, Mosquitto, deploy_dir, free_port, make_certs, need
from edge.alerts.subscriber import Subscriber
from edge.types import Match

UNIT = "van-01"
OTHER_UNIT = "van-02"
HANDHELD = "hh-01"
OBSERVER = "obs-01"
SHA = "ab" * 32


def require_tools() -> None:
    try:
        need("mosquitto")
        need("openssl")
    except BrokerError as exc:
        pytest.skip(str(exc))


def certs(directory: Path) -> Path:
    return make_certs(directory, units=[UNIT, OTHER_UNIT], handhelds=[HANDHELD], observers=[OBSERVER, "obs-02"])


def unit_config(cert_dir: Path, port: int, state_dir: Path, unit: str = UNIT, **mqtt):
    m = {"host": LOOPBACK, "port": port, "ca_file": str(cert_dir / "ca.crt"),
         "cert_file": str(cert_dir / f"{unit}.crt"), "key_file": str(cert_dir / f"{unit}.key"),
         "reconnect_min_seconds": 0.2, "reconnect_max_seconds": 2.0, "keepalive_seconds": 10}
    m.update(mqtt)
    return validate({"unit": {"id": unit, "state_dir": str(state_dir)}, "mqtt": m,
                     "outbox": {"max_crop_bytes": 8192}})


def config_dict(cfg) -> dict:
    d = cfg.as_dict()
    return {k: d[k] for k in ("unit", "mqtt", "outbox")}


_RNG = np.random.default_rng(7)
PROBE = _RNG.integers(0, 255, (150, 150, 3), dtype=np.uint8)
REFERENCE = np.full((200, 160, 3), 128, np.uint8)
REFERENCE[40:160, 30:130] = (200, 150, 120)
CONTEXT = np.full((400, 300, 3), 90, np.uint8)         # the scene around the face (alert schema 2)
CONTEXT[50:200, 75:225] = PROBE
CONTEXT[200:400, 40:260] = (40, 60, 120)


#: a calibrated meaning as the unit's default matcher gives it (edge.matching.calibration)
CALIBRATED = {"fmr": 3.16e-07, "expected_fpir": 0.000261, "watchlist_size": 826, "target_fpir": 0.001,
              "supported": True, "calibration": "lfw-dev (3554 identities), cross-fitted"}


def make_alert(unit: str = UNIT, n: int = 0, **kw) -> dict:
    match = Match(subject_id=f"S{n:05d}", category="wanted", score=0.91, threshold=0.8, margin=0.12, index=n)
    ctx = AlertContext(unit, "op-2025-001", "bundle-7", 7, SHA)
    now = time.time()
    args = dict(track_id=n, first_seen=now - 1.5, probe_crop=PROBE, reference=REFERENCE,
                max_image_bytes=8192, context_image=CONTEXT, max_context_bytes=16384, alerted_at=now,
                calibrated=CALIBRATED)
    args.update(kw)
    return build_alert(match, ctx, **args)


class Collector:
    """Subscriber that keeps every message (topic, payload) in arrival order."""

    def __init__(self, cert_dir: Path, port: int, identity: str, subscriptions, *, persistent=False):
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.sub = Subscriber(LOOPBACK, port, str(cert_dir / "ca.crt"), str(cert_dir / f"{identity}.crt"),
                              str(cert_dir / f"{identity}.key"), list(subscriptions), self._add,
                              client_id=identity, persistent=persistent, session_expiry=600,
                              reconnect_max=1.0)

    def _add(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.messages.append((topic, payload))

    def start(self) -> "Collector":
        self.sub.start()
        deadline = time.monotonic() + 5
        while len(self.sub.suback) < len(self.sub.subscriptions) and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.sub.stop()

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t.endswith(suffix)]

    def event_ids(self, topic_suffix: str = "/alert") -> list[str]:
        return [json.loads(p)["event_id"] for p in self.on(topic_suffix)]

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return predicate(self)


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory):
    require_tools()
    return certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def broker(cert_dir, tmp_path):
    b = Mosquitto(tmp_path / "broker", cert_dir).start()
    yield b
    b.stop()


class Link:
    """A TCP relay 127.0.0.1:port -> 127.0.0.1:target that can be cut and restored: the van's
    mobile link between its local broker's bridge and headquarters."""

    def __init__(self, target_port: int):
        import socket
        self._socket = socket
        from edge.alerts.localbroker import free_port
        self.port = free_port()
        self.target = target_port
        self._lock = threading.Lock()
        self._conns: list = []
        self._server = None
        self._running = False
        self._thread = None
        self.restore()

    def restore(self) -> None:
        socket = self._socket
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOOPBACK, self.port))
        s.listen(8)
        s.settimeout(0.1)
        self._server, self._running = s, True
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Refuse new connections and break the open ones (no FIN handshake niceties)."""
        self._running = False
        self._thread.join(2)
        self._server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(self._socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self) -> None:
        socket = self._socket
        while self._running:
            try:
                a, _ = self._server.accept()
            except (socket.timeout, OSError):
                continue
            try:
                b = socket.create_connection((LOOPBACK, self.target), timeout=2)
            except OSError:
                a.close()
                continue
            with self._lock:
                self._conns += [a, b]
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            src.settimeout(None)
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        if self._running:
            self.cut()


# --- raw MQTT clients for ACL and adjudication tests ---------------------------------------

def mqtt_client(cert_dir: Path, identity: str | None, port: int, ca: Path | None = None):
    """A raw paho v5 client with the given certificate (None: no client certificate)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity or "anon", protocol=mqtt.MQTTv5)
    ctx = ssl.create_default_context(cafile=str(ca or cert_dir / "ca.crt"))
    if identity:
        ctx.load_cert_chain(str(cert_dir / f"{identity}.crt"), str(cert_dir / f"{identity}.key"))
    c.tls_set_context(ctx)
    c.acks, c.subacks, c.got = {}, [], []
    c.ready, c.gone = threading.Event(), threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: (c.ready.set() if not rc.is_failure else c.gone.set())
    c.on_disconnect = lambda *a: c.gone.set()
    c.on_publish = lambda cl, u, mid, rc, p: c.acks.__setitem__(mid, rc.value)
    c.on_subscribe = lambda cl, u, mid, rcs, p: c.subacks.extend(r.value for r in rcs)
    c.on_message = lambda cl, u, m: c.got.append((m.topic, bytes(m.payload)))
    return c


def connect(c, port: int, timeout: float = 5.0) -> bool:
    try:
        c.connect(LOOPBACK, port, keepalive=10)
    except (ssl.SSLError, OSError):
        return False
    c.loop_start()
    deadline = time.monotonic() + timeout
    while not (c.ready.is_set() or c.gone.is_set()) and time.monotonic() < deadline:
        time.sleep(0.01)
    if not c.ready.is_set():
        c.disconnect()
        c.loop_stop()
    return c.ready.is_set()


def publish_wait(c, topic: str, payload: bytes) -> int:
    info = c.publish(topic, payload, qos=1)
    deadline = time.monotonic() + 5
    while info.mid not in c.acks and time.monotonic() < deadline:
        time.sleep(0.01)
    return c.acks.get(info.mid, -1)


def wait_for(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


# --- delivery, topics, schema ------------------------------------------------------------


# --- the officers' broker: HQ layout with the handhelds' WebSockets listener --------------

class HandheldBroker(Mosquitto):
    """hq.conf.in with handhelds.conf.in appended (as docs/handheld.md says), on loopback:
    ``port`` (TLS, certificates) and ``ws_port`` (WebSockets + TLS, passwords, interface lo)."""

    def __init__(self, workdir: Path, cert_dir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        template = workdir / "hq+handhelds.conf.in"
        mosq = deploy_dir() / "mosquitto"
        template.write_text((mosq / "hq.conf.in").read_text() + "\n" + (mosq / "handhelds.conf.in").read_text())
        self.TEMPLATES = {"hq+handhelds": str(template)}
        self.ws_port = free_port()
        super().__init__(workdir, cert_dir, layout="hq+handhelds", ws_port=self.ws_port, ws_interface="lo")
