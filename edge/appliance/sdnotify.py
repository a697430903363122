"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``) without a dependency.

systemd passes ``$NOTIFY_SOCKET`` (a datagram socket path; ``@`` = Linux abstract namespace)
and, with a watchdog, ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``). Outside systemd both are
absent and every call here does nothing, so the service runs the same from a terminal.

    n = Notifier.from_environment()
    n.ready("watchlist: none loaded")      # READY=1 + STATUS=...
    n.watchdog()                            # WATCHDOG=1, at most every watchdog_interval() / 2
    n.status("12.0 fps, queue 0")
    n.stopping()                            # STOPPING=1
"""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends ``KEY=value`` lines to systemd's notify socket; a no-op without one."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None):
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self.sent: int = 0

    @classmethod
    def from_environment(cls, environ=None) -> "Notifier":
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec = None
        raw = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if raw and (not pid or pid == str(os.getpid())):
            try:
                usec = int(raw)
            except ValueError:
                log.warning("ignoring a malformed WATCHDOG_USEC=%r", raw[:40])
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of systemd's WatchdogSec, or None without a watchdog."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def notify(self, *fields: str) -> bool:
        """Send one datagram of newline-separated ``KEY=value`` fields; True if sent."""
        if self.address is None:
            return False
        payload = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, addr)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
