"""What every MQTT client of the unit shares: the topic names, the TLS context, socket and log settings."""
from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import NamedTuple

from edge.errors import ConfigError
from edge.types import is_unit_id


class _QuietAfterDisconnect(logging.Filter):
    """paho 2.2 logs an error from its network thread once a clean disconnect has closed the socket."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


PAHO_LOG = logging.getLogger(__name__ + ".paho")
PAHO_LOG.addFilter(_QuietAfterDisconnect())


def no_delay(client, userdata, sock) -> None:
    """Disable Nagle's algorithm: an alert spans several TLS records, and waiting for the peer's
    delayed ACK before sending the last one adds ~40 ms to every publish."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class Topics(NamedTuple):
    alert: str
    status: str
    health: str
    adjudication: str
    ack: str


def topics(prefix: str, unit_id: str) -> Topics:
    """The five topics of one unit: ``<prefix>/<unit>/alert|status|health|adjudication|adjudication/ack``."""
    for what, value in (("mqtt.topic_prefix", prefix), ("unit.id", unit_id)):
        if not is_unit_id(value):
            raise ConfigError(f"{what}: {value!r} must be 1-64 letters, digits, '-' or '_'")
    base = f"{prefix}/{unit_id}"
    return Topics(f"{base}/alert", f"{base}/status", f"{base}/health", f"{base}/adjudication",
                  f"{base}/adjudication/ack")


def tls_context(ca_file: str, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """TLS 1.2+ client context that verifies the broker against ``ca_file`` (and its host name)
    and presents the client certificate."""
    for what, path in (("mqtt.ca_file", ca_file), ("mqtt.cert_file", cert_file), ("mqtt.key_file", key_file)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{what}: {path} not found (make certificates with deploy/make-certs.sh)")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the MQTT TLS files ({ca_file}, {cert_file}, {key_file}): {exc}") from None
    return ctx
