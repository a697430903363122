"""A small MQTT subscriber for technicians (``edge-lfr alerts``), test rigs, the demo and tests."""
from __future__ import annotations

import os
import threading
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.alerts.connection import PAHO_LOG, no_delay, tls_context

# --- a subscriber for technicians, rigs and tests -------------------------------------------

class Subscriber:
    """A small QoS 1 subscriber (TLS client certificate, MQTT v5). ``on_message(topic, payload)``
    runs in paho's network thread. With ``persistent=True`` the broker keeps the session (and
    queues messages) while it is away; the session belongs to the certificate's identity."""

    def __init__(self, host: str, port: int, ca_file: str, cert_file: str, key_file: str,
                 subscriptions: list[str], on_message: Callable[[str, bytes], None], *,
                 client_id: str = "", persistent: bool = False, session_expiry: int = 3600,
                 reconnect_max: float = 5.0):
        self.host, self.port = host, port
        self.subscriptions = list(subscriptions)
        self.on_message_cb = on_message
        self.persistent = persistent
        self.session_expiry = session_expiry
        self.connected = threading.Event()
        self.refused: str | None = None
        self.suback: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"sub-{os.getpid()}",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set_context(tls_context(ca_file, cert_file, key_file))
        self.client.reconnect_delay_set(0.2, reconnect_max)
        self.client.enable_logger(PAHO_LOG)
        self.client.on_socket_open = no_delay
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = lambda c, u, m: self.on_message_cb(m.topic, bytes(m.payload))
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.suback.extend(str(r) for r in rcs)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            return
        for t in self.subscriptions:
            client.subscribe(t, qos=1)
        self.connected.set()

    def start(self, wait: float = 10.0) -> "Subscriber":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.session_expiry if self.persistent else 0)
        self.client.connect_async(self.host, self.port, keepalive=30, clean_start=not self.persistent,
                                  properties=props)
        self.client.loop_start()
        if wait and not self.connected.wait(wait):
            self.stop()
            raise ConnectionError(f"could not connect to {self.host}:{self.port}"
                                  + (f" ({self.refused})" if self.refused else ""))
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
