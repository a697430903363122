"""Helpers of the system tests (tests/system): progress lines, the figures table, cached Debian
root file systems built with mmdebstrap, and the signed offline bundle they install.

Run them with ``bash run.sh system-test`` (which installs qemu-user-static, mmdebstrap,
qemu-system-x86 and mounts binfmt_misc first). Root file systems are cached under
``$EDGE_LFR_SYSTEM_CACHE`` (default /var/cache/edge-lfr-system-test), one tar per architecture
and package list (the name carries a hash of both), so only the first run pays for them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("EDGE_LFR_SYSTEM_CACHE", "/var/cache/edge-lfr-system-test"))
REPORT = os.environ.get("EDGE_LFR_SYSTEM_REPORT", "")
SUITE = "bookworm"
T0 = time.monotonic()


def progress(msg: str) -> None:
    """One progress line on stderr (run.sh system-test runs pytest with -s, so it shows at once)."""
    sys.__stderr__.write(f"[system-test {time.monotonic() - T0:6.0f} s] {msg}\n")
    sys.__stderr__.flush()


def record(test: str, what: str, value, note: str = "") -> None:
    """A measured figure for run.sh's summary table (JSON lines in $EDGE_LFR_SYSTEM_REPORT)."""
    progress(f"{test}: {what} = {value}{f' ({note})' if note else ''}")
    if REPORT:
        with open(REPORT, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": test, "what": what, "value": value, "note": note}) + "\n")


def run(cmd, *, timeout: float, check: bool = True, input: str | None = None, env=None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd if isinstance(cmd, str) else ' '.join(map(str, cmd))} exited {p.returncode}\n"
                             f"--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-4000:]}")
    return p


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("system tests need root (mmdebstrap, chroot, unshare, loop-free images): run as root")


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run the system tests with 'bash run.sh system-test', "
                    "which installs them", pytrace=False)


def ensure_binfmt_aarch64() -> None:
    """binfmt_misc mounted and qemu-aarch64 registered, else skip: the machine lacks the support."""
    bm = Path("/proc/sys/fs/binfmt_misc")
    if not (bm / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(bm)], capture_output=True)
    if not (bm / "status").exists():
        pytest.skip("this machine lacks binfmt_misc support (cannot mount /proc/sys/fs/binfmt_misc): "
                    "no arm64 emulation, the arm64 system test cannot run here")
    if not (bm / "qemu-aarch64").exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    entry = bm / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        pytest.skip("binfmt_misc has no enabled qemu-aarch64 handler (apt-get install qemu-user-static; "
                    "bash run.sh system-test does it): no arm64 emulation on this machine")
    if "F" not in entry.read_text().split("flags:", 1)[-1].split("\n", 1)[0]:
        pytest.skip("the qemu-aarch64 binfmt handler lacks the F (fix binary) flag, so it cannot run inside a chroot")


def rootfs_tar(arch: str, packages: list[str]) -> Path:
    """A cached mmdebstrap tarball of Debian SUITE for ``arch`` with ``packages`` (built once)."""
    key = hashlib.sha256(json.dumps([SUITE, arch, sorted(packages), "minbase", 1]).encode()).hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"{SUITE}-{arch}-{key}.tar"
    if out.is_file():
        progress(f"{arch} root file system: cached {out.name}")
        return out
    progress(f"{arch} root file system: building with mmdebstrap ({len(packages)} packages; "
             f"{'emulated, about 8 min' if arch == 'arm64' else 'about 2 min'}; cached afterwards)")
    t = time.monotonic()
    tmp = out.with_suffix(".part")
    p = subprocess.run(["mmdebstrap", "--variant=minbase", f"--arch={arch}", f"--include={','.join(packages)}",
                        SUITE, str(tmp)], capture_output=True, text=True, timeout=2400)
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise AssertionError(f"mmdebstrap failed ({p.returncode}):\n{p.stderr[-3000:]}")
    tmp.rename(out)
    progress(f"{arch} root file system built in {time.monotonic() - t:.0f} s: {out}")
    return out


_BUNDLE: dict = {}


def offline_bundle(tmp_root: Path) -> tuple[Path, Path]:
    """(bundle tar, release public key): a throwaway release key, and the bundle built by
    deploy/make-offline.sh for arm64 and amd64, CPython 3.11 (Bookworm), once per session."""
    if _BUNDLE:
        return _BUNDLE["tar"], _BUNDLE["pub"]
    keys = tmp_root / "release-keys"
    run([sys.executable, "-m", "edge.cli", "keys", "issuer", "--name", "release-systest", "--out", str(keys)],
        timeout=60)
    out = tmp_root / "edge-lfr-offline-systest.tar"
    progress("building the offline bundle (deploy/make-offline.sh --arch arm64,amd64 --python 3.11)")
    t = time.monotonic()
    p = subprocess.run(["bash", str(ROOT / "deploy" / "make-offline.sh"), "--arch", "arm64,amd64", "--python", "3.11",
                        "--release-key", str(keys / "release-systest.issuer.key"), "--out", str(out),
                        "--python-bin", sys.executable, "--cache", str(CACHE / "offline-downloads")],
                       capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        raise AssertionError(f"make-offline.sh failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    record("bundle", "offline bundle (arm64+amd64, CPython 3.11)",
           f"{out.stat().st_size / 1e6:.0f} MB", f"built in {time.monotonic() - t:.0f} s")
    _BUNDLE.update(tar=out, pub=keys / "release-systest.issuer.pub.yaml")
    return out, _BUNDLE["pub"]
