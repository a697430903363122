"""The unit on its own architecture: a Debian Bookworm arm64 root file system (mmdebstrap,
qemu-user-static through binfmt_misc) with nothing but what a Raspberry Pi OS Lite card has of
ours (python3, openssl, passwd, util-linux), the signed offline bundle installed there by the
real ``provision.sh --offline`` with networking cut off (``unshare --net``: only a down
loopback), then ``edge-lfr models``, a composed clip replayed through the whole pipeline to the
outbox with its expected alerts, and arm64 embeddings compared with x86-64's.

Every wall time here is under qemu-user emulation on x86-64, not a Pi's.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from .systest import ROOT, ensure_binfmt_aarch64, offline_bundle, progress, record, require_root, require_tools, \
    rootfs_tar, run

PACKAGES = ["python3", "openssl", "passwd", "util-linux", "diffutils", "ca-certificates", "procps"]
SHARED_FACES = ROOT.parent / "shared" / "faces"
T = "arm64"


def chroot(root: Path, script: str, *, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    """``script`` (bash) as root inside ``root`` with no network at all: a new network namespace
    holds only a loopback that is down, so no package mirror, DNS or PyPI can be reached.

    No /sys: with it, XNNPACK's cpuinfo library finds the processors there, then parses the
    x86-64 host's /proc/cpuinfo that qemu-user passes through as an ARM one and crashes
    (SIGSEGV, seen); without it cpuinfo prints "Error in cpuinfo" and inference runs on (the
    figures below are from that). An emulation artefact: a Pi has both files, and they agree."""
    wrapper = (f"set -e; mount -t proc proc {root}/proc; mount --rbind /dev {root}/dev; "
               f"mount -t tmpfs tmpfs {root}/run; mount -t tmpfs tmpfs {root}/tmp; "
               f"exec chroot {root} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "
               f"EDGE_LFR_MODELS=/opt/edge-lfr/models /bin/bash -c \"$0\"")
    return run(["unshare", "--net", "--mount", "--fork", "bash", "-c", wrapper, script], timeout=timeout, check=check)


@pytest.fixture(scope="module")
def arm64(tmp_path_factory):
    require_root()
    require_tools("mmdebstrap", "unshare", "chroot")
    ensure_binfmt_aarch64()
    tar = rootfs_tar("arm64", PACKAGES)
    bundle, pub = offline_bundle(tmp_path_factory.mktemp("bundle"))
    root = Path(tempfile.mkdtemp(prefix="edge-lfr-arm64-", dir="/var/tmp"))
    try:
        run(["tar", "-C", str(root), "-xf", str(tar)], timeout=300)
        shutil.copy(bundle, root / "root" / "bundle.tar")
        shutil.copy(pub, root / "root" / "release.pub.yaml")
        progress("arm64: provision.sh --offline inside the arm64 root, network cut off (emulated)")
        t = time.monotonic()
        # the technician's path: unpack the bundle, run its provision.sh against the bundle file
        p = chroot(root, "cd /root && tar -xf bundle.tar --wildcards '*/deploy/*' && "
                         "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' > /root/netdevs && "
                         "bash edge-lfr-offline-*/deploy/provision.sh --offline /root/bundle.tar "
                         "--release-key /root/release.pub.yaml --unit-id van-arm64 --broker 127.0.0.1",
                   timeout=3600, check=False)
        secs = time.monotonic() - t
        yield {"root": root, "provision": p, "provision_s": secs, "bundle": bundle}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_offline_provisioning_succeeds_with_no_network(arm64):
    p = arm64["provision"]
    assert p.returncode == 0, f"provision.sh failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    root = arm64["root"]
    assert (root / "root/netdevs").read_text().split() == ["lo"], "the chroot could see a network interface"
    assert "good signature" in p.stdout
    assert "from the offline bundle" in p.stdout          # pip --no-index from the bundle's wheels
    assert "mosquitto" in p.stdout                         # the van-local broker, from the bundle's .debs
    assert (root / "usr/sbin/mosquitto").exists()
    assert (root / "etc/systemd/system/edge-lfr.service").is_file()
    assert (root / "etc/edge-lfr/unit.yaml").is_file() and (root / "etc/edge-lfr/device.key").is_file()
    site = list((root / "opt/edge-lfr/venv/lib").glob("python3*/site-packages"))
    assert site and (site[0] / "edge").is_dir()
    so = next(site[0].glob("ai_edge_litert/*.so"))
    assert b"\x7fELF" == so.read_bytes()[:4] and so.read_bytes()[18] == 183   # e_machine EM_AARCH64
    record(T, "provision.sh --offline (no network), emulated", f"{arm64['provision_s']:.0f} s")


def test_a_tampered_bundle_is_refused_before_anything_runs(arm64, tmp_path):
    """One changed byte in a wheel: the checksum list catches it; a re-made list: the signature."""
    import tarfile
    src = arm64["bundle"]
    bad = tmp_path / "bad.tar"
    with tarfile.open(src) as tin, tarfile.open(bad, "w") as tout:
        for m in tin.getmembers():
            f = tin.extractfile(m) if m.isfile() else None
            data = f.read() if f else None
            if m.name.endswith(".whl") and "edge_lfr" in m.name:
                data = data[:-1] + bytes([data[-1] ^ 1])
            tout.addfile(m, __import__("io").BytesIO(data) if data is not None else None)
    root = arm64["root"]
    shutil.copy(bad, root / "root/bad.tar")
    p = chroot(root, "bash /root/edge-lfr-offline-*/deploy/provision.sh --offline /root/bad.tar "
                     "--release-key /root/release.pub.yaml --unit-id van-arm64 --broker 127.0.0.1", timeout=600, check=False)
    assert p.returncode == 1 and "checksum mismatch" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_edge_lfr_models_on_arm64(arm64):
    assert arm64["provision"].returncode == 0
    t = time.monotonic()
    p = chroot(arm64["root"], "runuser -u edge-lfr -- /opt/edge-lfr/venv/bin/edge-lfr models "
                              "--models-dir /opt/edge-lfr/models", timeout=900)
    manifest = json.loads((ROOT / "models/manifest.json").read_text())
    for name in manifest["models"]:
        assert name in p.stdout, p.stdout
    record(T, "edge-lfr models as user edge-lfr, emulated", f"{time.monotonic() - t:.1f} s", "every model verified")


@pytest.fixture(scope="module")
def rig_files(arm64, recognizer):
    """A composed clip with two listed people (Grace Hopper and one from LFW) and one unlisted,
    a unit with throwaway keys and a bundle signed for it, all made on x86-64 and placed at
    /srv/rig inside the arm64 root."""
    if not (SHARED_FACES / "README.md").is_file():
        pytest.skip(f"real-face data not found at {SHARED_FACES} (clone the project with ../shared beside it)")
    from edge.tools.composer import Actor, Scene, cast
    from edge.config import validate
    from edge.tools.rig import ThrowawayUnit
    root = arm64["root"]
    d = root / "srv/rig"
    d.mkdir(parents=True)
    thr = validate({}).match.threshold_wanted
    people = cast(recognizer, SHARED_FACES, listed=1, unlisted=0, seed=4, min_genuine=thr + 0.012,
                  max_impostor=thr - 0.05, prefix="A")
    actors = [Actor(p.label, f"h{i}", p.subject_id, 0.3 + 1.6 * i, 3.3 + 1.6 * i,
                    ((0.1, 0.35 + 0.2 * (i % 2)), (0.9, 0.35 + 0.2 * (i % 2))), (90, 120, 75, 110)[i % 4])
              for i, p in enumerate(people)]
    scene = Scene({f"h{i}": p.head for i, p in enumerate(people)}, actors, size=(960, 540), fps=10.0,
                  duration=max(a.end for a in actors) + 0.3, background=SHARED_FACES / "video" / "vtest.avi")
    scene.write_video(d / "pass.avi")
    tu = ThrowawayUnit(d / "unit", "rig-arm64")
    bundle, _ = tu.sign(people, recognizer)
    (d / "rig.edgewl").write_bytes(bundle)
    unit = {k: (v.replace(str(root), "") if isinstance(v, str) else v) for k, v in tu.config.as_dict()["unit"].items()}
    (d / "rig.yaml").write_text(yaml.safe_dump({"unit": unit}))
    (d / "expected.yaml").write_text(yaml.safe_dump({"expect": scene.expected()}))
    return {"listed": [a.subject_id for a in actors if a.subject_id], "unlisted": sum(not a.subject_id for a in actors),
            "frames": int(scene.duration * scene.fps)}


def test_replay_on_arm64_meets_the_expectations(arm64, rig_files):
    t = time.monotonic()
    p = chroot(arm64["root"], "cd /srv/rig && /opt/edge-lfr/venv/bin/edge-lfr replay --source pass.avi "
                              "--bundle rig.edgewl --config rig.yaml --expect expected.yaml --junit junit.xml "
                              "--json report.json", timeout=3600, check=False)
    secs = time.monotonic() - t
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-2000:]}"
    assert "all expectations met" in p.stdout
    assert p.stdout.count("  alert  ") == len(rig_files["listed"])
    for sid in rig_files["listed"]:
        assert sid in p.stdout
    report = json.loads((arm64["root"] / "srv/rig/report.json").read_text())
    assert "Traceback" not in p.stderr
    record(T, "replay: listed people alerted / expected", f"{p.stdout.count('  alert  ')}/{len(rig_files['listed'])}",
           f"{rig_files['unlisted']} unlisted people walked past too; 0 unexpected alerts")
    record(T, "replay wall time, emulated", f"{secs:.0f} s", f"{rig_files['frames']} frames of 960x540, "
           f"models loaded and pipeline started included")


def test_arm64_embeddings_agree_with_x86_64(arm64, recognizer):
    """A fixed set of LFW faces: aligned 150x150 chips made on x86-64, embedded by the int8
    model on both architectures; and the whole path (detect, landmarks, align, embed) on arm64
    from the same JPEGs."""
    if not (SHARED_FACES / "lfw-dev").is_dir():
        pytest.skip(f"real-face data not found at {SHARED_FACES} (clone the project with ../shared beside it)")
    import cv2
    names = sorted(p.name for p in (SHARED_FACES / "lfw-dev").iterdir() if p.is_dir())[:400:10]
    images, chips = [], []
    for n in names:
        f = sorted((SHARED_FACES / "lfw-dev" / n).glob("*.jpg"))[0]
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        faces = recognizer.faces(rgb, embed=False)
        if not faces:
            continue
        face = max(faces, key=lambda x: x.detection.width * x.detection.height)
        images.append(rgb)
        chips.append(face.chip)
    assert len(chips) >= 30
    chips = np.stack(chips).astype(np.uint8)
    x86 = recognizer.embedder.embed(chips)
    images = images[:16]   # the whole path is the slow part under emulation
    x86_full = np.stack([recognizer.embed_image(im, use_gate=False) for im in images])
    d = arm64["root"] / "srv/emb"
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "chips.npy", chips)
    np.save(d / "images.npy", np.stack(images))
    (d / "embed.py").write_text(
        "import sys, numpy as np\n"
        "from edge.recognition.api import Recognizer\n"
        "r = Recognizer()\n"
        "np.save('/srv/emb/arm_chips.npy', r.embedder.embed(np.load('/srv/emb/chips.npy')))\n"
        "np.save('/srv/emb/arm_full.npy', np.stack([r.embed_image(i, use_gate=False) for i in np.load('/srv/emb/images.npy')]))\n"
        "import platform; print(platform.machine())\n")
    t = time.monotonic()
    p = chroot(arm64["root"], "/opt/edge-lfr/venv/bin/python /srv/emb/embed.py", timeout=1800)
    assert p.stdout.strip().endswith("aarch64"), p.stdout
    arm = np.load(d / "arm_chips.npy")
    arm_full = np.load(d / "arm_full.npy")
    cos = np.sum(arm * x86, axis=1) / (np.linalg.norm(arm, axis=1) * np.linalg.norm(x86, axis=1))
    cos_full = np.sum(arm_full * x86_full, axis=1) / (np.linalg.norm(arm_full, axis=1) * np.linalg.norm(x86_full, axis=1))
    maxdiff = float(np.max(np.abs(arm - x86)))
    record(T, f"embeddings of {len(chips)} LFW chips, arm64 vs x86-64: max |diff|", f"{maxdiff:.2e}")
    record(T, f"embeddings of {len(chips)} LFW chips, arm64 vs x86-64: min cosine", f"{cos.min():.6f}")
    record(T, f"whole path (detect+landmarks+align+embed) on {len(images)} JPEGs: min cosine",
           f"{cos_full.min():.6f}", f"max |diff| {np.max(np.abs(arm_full - x86_full)):.2e}")
    record(T, "embedding script wall time, emulated", f"{time.monotonic() - t:.0f} s")
    # int8 kernels are integer arithmetic; the only float steps are dequantisation and the norm
    assert cos.min() > 0.999, cos.min()
    assert cos_full.min() > 0.99, cos_full.min()
