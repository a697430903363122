"""Throwaway mosquitto brokers on loopback, configured from ``deploy/`` (tests, benches, rigs).

:func:`make_certs` runs ``deploy/make-certs.sh``; :class:`Mosquitto` renders a template from
``deploy/mosquitto/`` (``@PLACEHOLDER@`` values), starts Debian's ``mosquitto -c`` on
127.0.0.1 and a free port, waits until it listens, and stops or kills it. Nothing here
listens on anything but loopback.
"""
from __future__ import annotations

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Mapping

from edge.errors import EdgeError
from edge.paths import DEPLOY_DIR

LOOPBACK = "127.0.0.1"


class BrokerError(EdgeError):
    """mosquitto, openssl or the deploy/ files are missing, or the broker did not start."""

    exit_code = 69


def deploy_dir() -> Path:
    """The repository's ``deploy/`` folder (present in a source checkout, not in a wheel)."""
    d = DEPLOY_DIR
    if not (d / "make-certs.sh").is_file():
        raise BrokerError(f"{d}: deploy/ folder not found; run from a source checkout of edge-lfr")
    return d


def need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").is_file() else None)
    if not path:
        raise BrokerError(f"{tool} not found: install it (apt-get install mosquitto openssl)")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def make_certs(directory: str | os.PathLike, *, units=(), handhelds=(), observers=(),
               servers: Mapping[str, list[str]] | None = None, prefix: str = "lfr") -> Path:
    """Issue a CA, broker certificates (name -> SANs; default ``broker``: localhost, 127.0.0.1)
    and client certificates with ``deploy/make-certs.sh``, then write the ACL."""
    need("openssl")
    script = deploy_dir() / "make-certs.sh"
    d = Path(directory)

    def run(*args: str) -> None:
        r = subprocess.run(["bash", str(script), "-d", str(d), "-p", prefix, *args],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise BrokerError(f"make-certs.sh {' '.join(args)} failed: {r.stderr.strip() or r.stdout.strip()}")

    run("ca")
    for name, sans in (servers or {"broker": ["localhost", LOOPBACK]}).items():
        if not (d / f"{name}.crt").exists():
            run("server", name, *sans)
    for role, ids in (("unit", units), ("handheld", handhelds), ("observer", observers)):
        for i in ids:
            if not (d / f"{i}.crt").exists():
                run(role, i)
    run("acl")
    return d


def render(template: str | os.PathLike, values: Mapping[str, object]) -> str:
    """Fill ``@NAME@`` placeholders; every placeholder in the template must be given."""
    text = Path(template).read_text()
    missing = sorted(set(re.findall(r"@([A-Z_]+)@", text)) - set(values))
    if missing:
        raise BrokerError(f"{template}: no value for placeholder(s) {', '.join(missing)}")
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    return text


class Mosquitto:
    """One mosquitto process on 127.0.0.1 with a rendered ``deploy/`` configuration.

    ``layout`` is ``"hq"`` (``deploy/mosquitto/hq.conf.in``) or ``"van-local"``
    (``deploy/mosquitto/van-local/mosquitto.conf.in``, which also needs ``unit``, ``hq_host``
    and ``hq_port``). The port stays the same across :meth:`stop` / :meth:`start`, so clients
    find the restarted broker where they left it; persistence lives in ``workdir/data``.
    """

    TEMPLATES = {"hq": "mosquitto/hq.conf.in", "van-local": "mosquitto/van-local/mosquitto.conf.in"}

    def __init__(self, workdir: str | os.PathLike, cert_dir: str | os.PathLike, *, layout: str = "hq",
                 port: int | None = None, server: str = "broker", **extra: object):
        self.binary = need("mosquitto")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_dir = Path(cert_dir)
        self.port = port or free_port()
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = self.workdir / "mosquitto.log"
        self.conf_path = self.workdir / "mosquitto.conf"
        values = {"PORT": self.port, "BIND_ADDRESS": LOOPBACK, "CERT_DIR": self.cert_dir, "SERVER": server,
                  "DATA_DIR": self.data_dir, "LOG_DEST": "stderr", "RUN_AS": getpass.getuser()}
        values.update({k.upper(): v for k, v in extra.items()})
        self._template, self._values, self._fixed_port = deploy_dir() / self.TEMPLATES[layout], values, port is not None
        self.conf_path.write_text(render(self._template, values))
        self.proc: subprocess.Popen | None = None
        self._started_once = False

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        """Start mosquitto and wait until it says it is running (its listeners are open)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf_path)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read()
            if self.proc.poll() is not None:
                if b"Address already in use" in text and not (self._fixed_port or self._started_once):
                    self.port = self._values["PORT"] = free_port()   # lost a race for the free port
                    self.conf_path.write_text(render(self._template, self._values))
                    return self.start(timeout)
                raise BrokerError(f"mosquitto exited with {self.proc.returncode}: {self.log_tail()}")
            if re.search(rb"mosquitto version \S+ running", text):
                self._started_once = True
                return self
            time.sleep(0.02)
        self.kill()
        raise BrokerError(f"mosquitto did not start on {LOOPBACK}:{self.port} within {timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
