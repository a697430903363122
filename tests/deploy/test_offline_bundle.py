"""Release signatures (edge.tools.release) and provision.sh --offline's checks, on a small bundle
laid out like deploy/make-offline.sh's (its real wheels and .debs are exercised by
tests/system, which `bash run.sh system-test` runs): a good bundle is accepted and used, and a
bundle with a changed byte, an unlisted file, a link, another signer or a forged signature is
refused before anything is written."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from edge.tools.release import CONTEXT, ReleaseSignatureError, main as release_main, public_pem, sign, verify
from edge.watchlist.keys import generate_issuer, save_issuer

from .test_provision import new_root

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "provision.sh"
NAME = "edge-lfr-offline-0.1.0"


def test_sign_and_verify_round_trip_and_refusals():
    key, other = generate_issuer("release-a"), generate_issuer("release-b")
    sums = b"0" * 64 + b"  wheels/x.whl\n"
    sig = sign(sums, key)
    assert verify(sums, sig, key.public)["signer"] == "release-a"
    with pytest.raises(ReleaseSignatureError, match="does not verify"):
        verify(sums.replace(b"x.whl", b"y.whl"), sig, key.public)
    with pytest.raises(ReleaseSignatureError, match="not by the release key"):
        verify(sums, sig, other.public)
    # a watchlist-style signature over the same bytes (no release context) is not a release signature
    forged = sig.replace(sig.split(b'"sig": "')[1].split(b'"')[0],
                         __import__("base64").b64encode(key.sign(sums)))
    with pytest.raises(ReleaseSignatureError):
        verify(sums, forged, key.public)


def test_openssl_verifies_what_python_signs(tmp_path):
    """provision.sh checks the signature with the OS's openssl: the two must agree."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    key = generate_issuer("release-a")
    sums = b"1" * 64 + b"  models/manifest.json\n"
    import base64
    import json
    (tmp_path / "pub.pem").write_text(public_pem(key.public))
    (tmp_path / "sig").write_bytes(base64.b64decode(json.loads(sign(sums, key))["sig"]))
    (tmp_path / "msg").write_bytes(CONTEXT + sums)
    cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"), "-rawin",
           "-in", str(tmp_path / "msg"), "-sigfile", str(tmp_path / "sig")]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    (tmp_path / "msg").write_bytes(CONTEXT + sums + b"x")
    assert subprocess.run(cmd, capture_output=True).returncode != 0


def test_release_cli_exit_codes(tmp_path, capsys):
    key = generate_issuer("release-c")
    priv, pub = save_issuer(key, tmp_path)
    (tmp_path / "SUMS").write_bytes(b"abc\n")
    assert release_main(["sign", "--key", str(priv), "--sums", str(tmp_path / "SUMS"), "--out", str(tmp_path / "S.sig")]) == 0
    assert release_main(["verify", "--release-key", str(pub), "--sums", str(tmp_path / "SUMS"),
                         "--sig", str(tmp_path / "S.sig")]) == 0
    (tmp_path / "SUMS").write_bytes(b"abd\n")
    assert release_main(["verify", "--release-key", str(pub), "--sums", str(tmp_path / "SUMS"),
                         "--sig", str(tmp_path / "S.sig")]) == 1
    assert release_main(["verify", "--release-key", str(tmp_path / "nope"), "--sums", str(tmp_path / "SUMS"),
                         "--sig", str(tmp_path / "S.sig")]) == 66
    err = capsys.readouterr().err
    assert "does not verify" in err and "Traceback" not in err


def make_bundle(base: Path, key, *, tamper=None) -> Path:
    """A bundle with provisioning's files, the models and a stand-in wheel, signed with ``key``."""
    b = base / "b" / NAME
    (b / "deploy").mkdir(parents=True)
    shutil.copy(SCRIPT, b / "deploy/provision.sh")
    shutil.copytree(ROOT / "deploy/provision", b / "deploy/provision")
    shutil.copytree(ROOT / "systemd", b / "systemd")
    (b / "docs").mkdir()
    for d in ("service.md", "privacy.md"):
        shutil.copy(ROOT / "docs" / d, b / "docs" / d)
    shutil.copytree(ROOT / "models", b / "models", ignore=shutil.ignore_patterns("__pycache__"))
    (b / "wheels").mkdir()
    (b / "wheels/edge_lfr-0.1.0-py3-none-any.whl").write_bytes(b"stand-in")
    files = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    import hashlib
    sums = "".join(f"{hashlib.sha256((b / f).read_bytes()).hexdigest()}  {f}\n" for f in files).encode()
    (b / "SHA256SUMS").write_bytes(sums)
    (b / "SHA256SUMS.sig").write_bytes(sign(sums, key))
    if tamper:
        tamper(b)
    out = base / "bundle.tar"
    with tarfile.open(out, "w") as t:
        t.add(b, arcname=NAME)
    return out


def run_offline(root: Path, bundle: Path, pub: Path) -> subprocess.CompletedProcess:
    cmd = ["bash", str(SCRIPT), "--root", str(root), "--no-install", "--python", sys.executable,
           "--unit-id", "van-07", "--broker", "192.0.2.10", "--offline", str(bundle), "--release-key", str(pub)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ("useradd", "openssl", "flock")),
                                reason="provision.sh sets file owners (root) and needs useradd, openssl, flock")


@pytest.fixture()
def keys(tmp_path):
    key = generate_issuer("release-t")
    _, pub = save_issuer(key, tmp_path / "k")
    return key, pub


def test_offline_bundle_is_verified_and_used(tmp_path, keys):
    key, pub = keys
    root = new_root(tmp_path)
    r = run_offline(root, make_bundle(tmp_path, key), pub)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "good signature" in r.stdout
    # the unit file and models came from the verified bundle
    assert (root / "etc/systemd/system/edge-lfr.service").read_bytes() == (ROOT / "systemd/edge-lfr.service").read_bytes()
    assert (root / "opt/edge-lfr/models/manifest.json").is_file()
    assert not list(Path("/var/tmp").glob(".provision.*"))  # the unpacked bundle is gone


def _flip(path: str):
    def f(b: Path):
        p = b / path
        data = bytearray(p.read_bytes())
        data[0] ^= 1
        p.write_bytes(bytes(data))
    return f


@pytest.mark.parametrize("tamper, words", [
    (_flip("systemd/edge-lfr.service"), "checksum mismatch"),
    (_flip("SHA256SUMS"), "BAD SIGNATURE"),
    (lambda b: (b / "wheels/extra.whl").write_bytes(b"x"), "not in its signed SHA256SUMS"),
    (lambda b: os.symlink("/etc/shadow", b / "docs/link"), "holds a link"),
])
def test_a_tampered_bundle_is_refused_and_nothing_is_written(tmp_path, keys, tamper, words):
    key, pub = keys
    root = new_root(tmp_path)
    before = sorted(p for p in root.rglob("*"))
    r = run_offline(root, make_bundle(tmp_path, key, tamper=tamper), pub)
    assert r.returncode == 1, r.stdout + r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p for p in root.rglob("*")) == before


def test_a_bundle_signed_by_another_key_is_refused(tmp_path, keys):
    key, _ = keys
    _, other_pub = save_issuer(generate_issuer("release-other"), tmp_path / "o")
    r = run_offline(new_root(tmp_path), make_bundle(tmp_path, key), other_pub)
    assert r.returncode == 1 and "not by the release key" in r.stderr, r.stderr


def test_offline_needs_a_release_key(tmp_path, keys):
    key, _ = keys
    r = subprocess.run(["bash", str(SCRIPT), "--root", str(new_root(tmp_path)), "--no-install", "--unit-id", "v",
                        "--broker", "127.0.0.1", "--offline", str(make_bundle(tmp_path, key))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--release-key" in r.stderr
