"""The unit side: verify a bundle, load it atomically, expire it, wipe it.

    unit = UnitWatchlist(config, model_sha256=recognizer.embedder_sha256)
    unit.restore()                  # at start: reload the persisted list (re-verified) or nothing
    unit.load("op-123.edgewl")      # verify + persist + swap in; on any failure the old list stays
    live = unit.current()           # per frame: the LoadedList, or None (no list / expired)
    if live: match = live.matcher.match(face.embedding)
    unit.poll()                     # pick up a load or wipe done by another process (the CLI)
    unit.wipe()                     # delete on demand

Checks on load, in order (each failure raises its own BundleError subclass and changes nothing):
file size; envelope; encrypted to this unit's key; authenticated decryption; archive names and
types; issuer signature with a key from the trust file; manifest types and limits; member
hashes; issuer key not revoked and inside its validity window (now and at signing); this
unit (id and key) among the signed targets; validity window; rollback; model hash and dim.

Time: with ``watchlist.trusted_clock`` a bundle is accepted from ``valid_from -
clock_skew_seconds`` and stops matching at ``valid_until`` exactly (no grace after the end:
the tolerance is only for loading a little early). Without a trustworthy clock the window
cannot be checked and every report says so; the list then stops matching at most
``valid_until - issued_at`` seconds of monotonic time after it was loaded, and is deleted at
the next restart rather than reloaded (its age could not be known).

State (``<unit.state_dir>/watchlist/``): ``current.edgewl`` (the accepted bundle, still
encrypted to the device key) and ``state.json`` (last accepted serial and bundle id, status
loaded/wiped/expired, load time). Both are written atomically (temp file, fsync, rename,
fsync folder). The serial survives wipes and expiry: a list cannot be loaded again once
wiped or expired, and a lower serial never.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from edge.atomicfile import atomic_write, remove_durably
from edge.errors import ConfigError, EdgeError
from edge.matching.factory import build_matcher
from edge.readfile import read_regular
from edge.matching.match import Matcher
from edge.matching.normalise import load_score_model
from edge.utc import format_utc, parse_canonical
from edge.watchlist.bundle import Bundle, Limits, Manifest, open_bundle, read_file_limited
from edge.watchlist.errors import (
    BundleError,
    BundleExpiredError,
    BundleModelMismatchError,
    BundleNotForThisUnitError,
    BundleNotYetValidError,
    BundleRollbackError,
    BundleUntrustedIssuerError,
)
from edge.watchlist.keys import DeviceKey, TrustStore, check_unit_id, device_key_from_config, load_trust

log = logging.getLogger(__name__)

__all__ = ["UnitWatchlist", "LoadedList", "Verified", "UnitStateError"]

STATE_FILE = "state.json"
BUNDLE_FILE = "current.edgewl"
MAX_STATE_BYTES = 64 * 1024


class UnitStateError(EdgeError):
    """The unit's watchlist state file is unreadable or damaged: loading is refused (rollback
    protection depends on it) until an operator repairs it."""

    exit_code = 74  # EX_IOERR


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Verified:
    bundle: Bundle
    checks: tuple[tuple[str, str], ...]  # (check, what was found)
    clock_verified: bool


@dataclass(frozen=True)
class LoadedList:
    """One accepted list, immutable: recognition threads keep using the object they read."""

    manifest: Manifest = field(repr=False)
    matcher: Matcher = field(repr=False)
    thumbnails: Mapping[str, bytes] = field(repr=False)
    signer_name: str
    signer_key_id: str
    file_sha256: str
    loaded_at: int
    clock_verified: bool
    deadline_monotonic: float | None = None  # only without a trustworthy clock

    def expired(self, now: float, mono: float) -> bool:
        if self.deadline_monotonic is not None:
            return mono >= self.deadline_monotonic
        return now >= self.manifest.valid_until

    def thumbnail(self, subject_id: str) -> bytes | None:
        """The reference thumbnail (JPEG) of a subject, for the side-by-side review."""
        k = self.matcher.watchlist.index(subject_id)
        name = self.manifest.subjects[k].thumbnail
        return self.thumbnails.get(name) if name else None


class UnitWatchlist:
    """Verified loading, atomic swap, expiry and wipe of the unit's one watchlist.

    ``now`` (Unix seconds), ``monotonic`` and ``boot_id`` are injectable for tests. ``device_key``
    and ``trust`` default to the files named in ``config.unit``; the trust file is re-read on
    every verification so that a revocation takes effect at once.
    """

    def __init__(self, config, *, model_sha256: str | None, embedding_dim: int = 128,
                 device_key: DeviceKey | None = None, trust: TrustStore | None = None,
                 state_dir: str | os.PathLike | None = None, now: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, boot_id: Callable[[], str] = _boot_id,
                 score_model=None):
        self.config = config
        unit_id = config.unit.id or (device_key.unit_id if device_key else "")
        self.unit_id = check_unit_id(unit_id, "unit.id (this unit's id)", ConfigError)
        if device_key is not None and device_key.unit_id != self.unit_id:
            raise ConfigError(f"device key is for unit {device_key.unit_id!r} but unit.id is {self.unit_id!r}")
        self.model_sha256 = model_sha256
        self.embedding_dim = embedding_dim
        self.limits = Limits.from_config(config)
        self.skew = int(config.watchlist.clock_skew_seconds)
        self.trusted_clock = bool(config.watchlist.trusted_clock)
        self._score_model = score_model
        self._device = device_key
        self._trust = trust
        self.dir = Path(state_dir or config.unit.state_dir) / "watchlist"
        self._now, self._mono, self._boot_id = now, monotonic, boot_id
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._live: LoadedList | None = None
        self._refusals: list[tuple[BaseException, str]] = []   # for the service's audit log

    def take_refusals(self) -> list[tuple[BaseException, str]]:
        """Stored bundles :meth:`restore` refused since the last call (error, where): the service
        writes each as a ``bundle_refused`` audit entry."""
        with self._lock:
            out, self._refusals = self._refusals, []
        return out

    @contextmanager
    def _locked(self):
        """Serialise changes between threads (RLock) and between processes (flock on
        ``.lock`` in the state folder), so a CLI ``load`` or ``wipe`` and the running service
        never interleave their writes. Readers of the live list never take it."""
        with self._lock:
            if self._lock_depth == 0:
                self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # releases the flock
                    self._lock_fd = None

    # ---- keys -------------------------------------------------------------------------------

    @property
    def device_key(self) -> DeviceKey:
        if self._device is None:
            self._device = device_key_from_config(self.config, self.unit_id)
        return self._device

    def trust(self) -> TrustStore:
        return self._trust if self._trust is not None else load_trust(self.config.unit.trust_file)

    # ---- state files ------------------------------------------------------------------------

    @property
    def bundle_path(self) -> Path:
        return self.dir / BUNDLE_FILE

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    def read_state(self) -> dict:
        if not os.path.lexists(self.state_path):
            return {"version": 1, "status": "none", "last_serial": 0}
        raw = read_regular(self.state_path, MAX_STATE_BYTES, "watchlist state file", UnitStateError)
        try:
            st = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            st = None
        if (not isinstance(st, dict) or st.get("version") != 1 or isinstance(st.get("last_serial"), bool)
                or not isinstance(st.get("last_serial"), int) or st.get("status") not in
                ("none", "loaded", "wiped", "expired")):
            raise UnitStateError(f"{self.state_path} is damaged; loading is refused because rollback protection "
                                 "depends on it. Restore it, or remove it knowingly to start over")
        return st

    def _write_state(self, st: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self.state_path, json.dumps(st, indent=2, sort_keys=True).encode("utf-8") + b"\n")

    # ---- verification -----------------------------------------------------------------------

    def _policy(self, bundle: Bundle, st: dict):
        """(name, check) pairs; each check returns what it found or raises its BundleError."""
        m = bundle.manifest
        key = bundle.signer
        now = int(self._now())
        clock = now if self.trusted_clock else None

        def issuer():
            problem = key.problem(clock, self.skew)
            if problem:
                raise BundleUntrustedIssuerError(f"{problem}; bundle refused")
            if not key.valid_from <= m.issued_at < key.valid_until:
                raise BundleUntrustedIssuerError(
                    f"bundle was issued at {format_utc(m.issued_at)}, outside issuer key {key.name!r}'s window "
                    f"{format_utc(key.valid_from)} .. {format_utc(key.valid_until)}")
            return f"signed by {key.name!r} ({key.key_id[:16]}…), key valid {format_utc(key.valid_from)} .. " \
                   f"{format_utc(key.valid_until)}"

        def addressee():
            me = (self.unit_id, self.device_key.key_id)
            if me not in m.targets:
                units = ", ".join(u for u, _ in m.targets)
                raise BundleNotForThisUnitError(f"bundle is signed for unit(s) {units}, not for this unit "
                                                f"{self.unit_id} (key {me[1][:16]}…)")
            return f"this unit {self.unit_id} is among {len(m.targets)} target unit(s)"

        def window():
            span = f"{format_utc(m.valid_from)} .. {format_utc(m.valid_until)}"
            if not self.trusted_clock:
                return (f"NOT VERIFIED: this unit has no trustworthy clock (watchlist.trusted_clock: false); "
                        f"window {span}; the list will stop matching at most "
                        f"{(m.valid_until - m.issued_at) / 3600:.1f} h after loading and is not kept across a restart")
            if now >= m.valid_until:
                raise BundleExpiredError(f"bundle expired at {format_utc(m.valid_until)}; this unit's clock says "
                                         f"{format_utc(now)}")
            if now < m.valid_from - self.skew:
                raise BundleNotYetValidError(
                    f"bundle is valid from {format_utc(m.valid_from)}; this unit's clock says {format_utc(now)} "
                    f"(tolerance {self.skew} s). If the clock is wrong, fix it")
            if now < m.issued_at - self.skew:
                raise BundleNotYetValidError(
                    f"bundle was issued at {format_utc(m.issued_at)}, later than this unit's clock "
                    f"{format_utc(now)}: the unit's (or the issuer's) clock is wrong")
            return f"{span}, clock {format_utc(now)} (tolerance {self.skew} s before the start, none after the end)"

        def rollback():
            last = int(st.get("last_serial", 0))
            if m.serial < last:
                raise BundleRollbackError(f"bundle serial {m.serial} is lower than the last accepted serial {last}: "
                                          "an older list cannot be loaded again")
            if m.serial == last:
                if st.get("bundle_id") != m.bundle_id:
                    raise BundleRollbackError(f"serial {m.serial} was already used by another bundle "
                                              f"({str(st.get('bundle_id'))[:12]}…); the issuer must use a new serial")
                if st.get("status") != "loaded":
                    raise BundleRollbackError(f"this bundle (serial {m.serial}) was {st.get('status')} on this unit "
                                              "and cannot be loaded again; ask for a new bundle")
                return f"serial {m.serial} is the list already loaded"
            return f"serial {m.serial} > last accepted {last}"

        def model():
            if self.model_sha256 is None:
                raise BundleModelMismatchError("this handle was opened without the unit's embedder hash (to expire "
                                               "and wipe only); it cannot check a bundle's model")
            if m.model_sha256 != self.model_sha256:
                raise BundleModelMismatchError(
                    f"bundle was built with model {m.model_sha256[:16]}… but this unit runs {self.model_sha256[:16]}…; "
                    "rebuild the watchlist with this unit's model")
            if m.dim != self.embedding_dim:
                raise BundleModelMismatchError(f"bundle embeddings have {m.dim} dimensions, the model gives "
                                               f"{self.embedding_dim}")
            return f"model {m.model_sha256[:16]}… matches"

        return [("issuer key", issuer), ("addressed to this unit", addressee), ("validity window", window),
                ("rollback", rollback), ("model", model)]

    def verify(self, data: bytes, state: dict | None = None) -> Verified:
        """Every check a load makes, without side effects. Raises the first failure."""
        st = self.read_state() if state is None else state
        bundle = open_bundle(data, self.device_key, self.trust(), self.limits)
        checks = [("signature", f"verified with trusted key {bundle.signer.key_id[:16]}…")]
        for name, fn in self._policy(bundle, st):
            checks.append((name, fn()))
        return Verified(bundle, tuple(checks), self.trusted_clock)

    def inspect(self, data: bytes) -> tuple[Bundle, list[tuple[str, bool, str, BundleError | None]]]:
        """Decrypt and verify the signature (raises if that fails), then run every policy
        check and report each as (name, passed, message, error)."""
        st = self.read_state()
        bundle = open_bundle(data, self.device_key, self.trust(), self.limits)
        results = [("signature", True, f"verified with trusted key {bundle.signer.key_id[:16]}…", None)]
        for name, fn in self._policy(bundle, st):
            try:
                results.append((name, True, fn(), None))
            except BundleError as exc:
                results.append((name, False, str(exc), exc))
        return bundle, results

    # ---- loading ----------------------------------------------------------------------------

    def _matcher(self, bundle: Bundle) -> Matcher:
        """The matcher ``config.match`` asks for (edge.matching.factory.build_matcher): by default
        the cohort-normalised calibrated score with the threshold for ``match.target_fpir`` at this
        list's size; the shipped score model is loaded (sha256-checked) once, on first use."""
        if self.config.match.score_normalisation and self._score_model is None:
            self._score_model = load_score_model(self.config.runtime.models_dir or None)
        return build_matcher(bundle.watchlist(), self.config, self._score_model)

    def _make_live(self, v: Verified, loaded_at: int, deadline: float | None) -> LoadedList:
        b = v.bundle
        return LoadedList(b.manifest, self._matcher(b), b.thumbnails, b.signer.name, b.signer.key_id,
                          b.file_sha256,
                          loaded_at, v.clock_verified, deadline)

    def load(self, source: bytes | str | os.PathLike) -> LoadedList:
        """Verify, persist and swap in a new list. On any failure nothing changes: the running
        list (if any), the stored bundle and the state file are left exactly as they were."""
        data = source if isinstance(source, (bytes, bytearray, memoryview)) else read_file_limited(source, self.limits)
        data = bytes(data)
        with self._locked():
            st = self.read_state()
            v = self.verify(data, st)
            m = v.bundle.manifest
            mono = self._mono()
            deadline = None if self.trusted_clock else mono + (m.valid_until - m.issued_at)
            live = self._make_live(v, int(self._now()), deadline)
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.bundle_path, data)
            self._write_state({
                "version": 1, "status": "loaded", "last_serial": m.serial, "bundle_id": m.bundle_id,
                "bundle_sha256": v.bundle.file_sha256, "operation_id": m.operation_id,
                "valid_until": format_utc(m.valid_until), "loaded_at": format_utc(live.loaded_at),
                "loaded_boot_id": self._boot_id(), "loaded_monotonic": mono, "deadline_monotonic": deadline,
                "clock_verified": self.trusted_clock, "status_at": format_utc(live.loaded_at), "status_reason": "",
            })
            self._live = live  # the swap: readers see the old list or the new one, never a mix
        log.info("watchlist %s serial %d loaded: %d subjects", m.bundle_id, m.serial, len(m.subjects))
        return live

    def restore(self) -> LoadedList | None:
        """At start-up (or after another process loaded a list): re-verify and swap in the
        stored bundle. An expired, no longer acceptable, or (without a trustworthy clock)
        pre-restart list is deleted instead; returns None then."""
        with self._locked():
            st = self.read_state()
            if st.get("status") != "loaded":
                if remove_durably(self.bundle_path):
                    log.warning("removed a stored bundle whose state is %s", st.get("status"))
                self._live = None
                return None
            try:
                data = read_file_limited(self.bundle_path, self.limits)
            except BundleError as exc:
                self._refusals.append((exc, "stored watchlist"))
                self._set_status(st, "wiped", f"stored bundle unreadable: {exc}")
                self._live = None
                return None
            deadline = None
            if not self.trusted_clock:
                boot = self._boot_id()
                if not boot or st.get("loaded_boot_id") != boot:
                    self._delete(st, "wiped", "untrusted clock: the list was loaded before a restart and its "
                                              "age cannot be known; load it again")
                    return None
            try:
                v = self.verify(data, st)
            except BundleExpiredError as exc:
                self._delete(st, "expired", str(exc))
                return None
            except BundleError as exc:
                self._refusals.append((exc, "stored watchlist"))
                self._delete(st, "wiped", f"stored list no longer acceptable: {exc}")
                return None
            if not self.trusted_clock:
                deadline = st.get("deadline_monotonic")
                if not isinstance(deadline, (int, float)) or self._mono() >= deadline:
                    self._delete(st, "expired", "list lifetime (measured without a trustworthy clock) is over")
                    return None
            live = self._make_live(v, int(self._now()), deadline)
            self._live = live
            return live

    def poll(self) -> bool:
        """Follow the state on disk (a load or wipe by another process) and the trust file (a
        revoked or removed signing key stops the running list and deletes it). True if the
        live list changed. Meant to be called every few seconds by the recognition service."""
        st = self.read_state()
        want = st.get("bundle_id") if st.get("status") == "loaded" else None
        live = self._live
        if want != (live.manifest.bundle_id if live else None):
            if want is None:
                with self._locked():
                    self._live = None
                return True
            return self.restore() is not live
        if live is not None:
            key = self.trust().get(live.signer_key_id)
            if key is None or key.revoked:
                why = "revoked" if key is not None else "removed from the trust file"
                with self._locked():
                    if self._live is live:
                        self._delete(self.read_state(), "wiped", f"issuer key {live.signer_key_id[:16]}… was {why}")
                return True
        return False

    # ---- using, expiring, wiping ------------------------------------------------------------

    def current(self) -> LoadedList | None:
        """The list to match against now, or None. Called per frame: a reference read and one
        clock comparison; at expiry it stops matching and is deleted."""
        live = self._live
        if live is None:
            return None
        if live.expired(self._now(), self._mono()):
            self._expire(live)
            return None
        return live

    def _expire(self, live: LoadedList) -> None:
        with self._locked():
            if self._live is not live:
                return
            self._live = None
            st = self.read_state()
            if st.get("bundle_id") == live.manifest.bundle_id and st.get("status") == "loaded":
                self._delete(st, "expired", f"validity ended {format_utc(live.manifest.valid_until)}")
        log.info("watchlist %s expired and was deleted", live.manifest.bundle_id)

    def _set_status(self, st: dict, status: str, reason: str) -> None:
        new = dict(st, status=status, status_reason=reason, status_at=format_utc(self._now()))
        self._write_state(new)

    def _delete(self, st: dict, status: str, reason: str) -> None:
        self._live = None
        remove_durably(self.bundle_path)
        self._set_status(st, status, reason)

    def wipe(self, reason: str = "wiped on demand") -> bool:
        """Stop matching and delete the stored list now. True if there was something to wipe.
        The last accepted serial is kept (rollback protection)."""
        with self._locked():
            st = self.read_state()
            had = self._live is not None or self.bundle_path.exists() or st.get("status") == "loaded"
            self._live = None
            removed = remove_durably(self.bundle_path)
            if st.get("status") == "loaded" or removed:
                self._set_status(st, "wiped", reason)
            return had

    def enforce_expiry(self) -> bool:
        """Delete the list once it has expired, whether or not this process holds it live (run
        it from a timer or at start-up). True if something was deleted."""
        live = self._live
        if live is not None:
            return self.current() is None
        with self._locked():
            st = self.read_state()
            if st.get("status") != "loaded":
                return False
            if self.trusted_clock:
                until = parse_canonical(st.get("valid_until"), "state valid_until", UnitStateError)
                over = self._now() >= until
            else:
                deadline = st.get("deadline_monotonic")
                over = (st.get("loaded_boot_id") != self._boot_id() or not isinstance(deadline, (int, float))
                        or self._mono() >= deadline)
            if over:
                self._delete(st, "expired", "validity ended")
            return over

    def status(self) -> dict:
        st = self.read_state()
        live = self.current()
        out = {"unit_id": self.unit_id, "state": st.get("status"), "last_serial": st.get("last_serial"),
               "bundle_id": st.get("bundle_id"), "operation_id": st.get("operation_id"),
               "valid_until": st.get("valid_until"), "status_reason": st.get("status_reason", ""),
               "clock": "trusted" if self.trusted_clock else "NOT trustworthy (watchlist.trusted_clock: false)",
               "live_in_this_process": live is not None}
        if live is not None:
            out["summary"] = live.manifest.summary()
        return out
