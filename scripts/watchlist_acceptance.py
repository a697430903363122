#!/usr/bin/env python3
"""Acceptance run for signed watchlist bundles (not a test): build a 10,000-subject bundle from
LFW images with `edge-lfr watchlist build`, then verify + load it as the unit does, and try a
sweep of tampered copies against the loaded list.

    python scripts/watchlist_acceptance.py [--subjects 10000] [--faces ../shared/faces] [--work DIR]

Build and load each run in their own process so that each one's peak memory (ru_maxrss) is its
own. LFW has ~6,900 images of ~3,500 people: subjects beyond that reuse images, which is fine
for a size and speed test. Prints a JSON summary at the end (and writes it with --out).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cli(argv: list[str]) -> int:
    from edge.cli.watchlist import add_commands
    p = argparse.ArgumentParser(prog="edge-lfr")
    add_commands(p.add_subparsers(dest="command"))
    args = p.parse_args(argv)
    return int(args.func(args) or 0)


def step_build(work: Path, images: Path) -> dict:
    t0 = time.perf_counter()
    rc = _cli(["watchlist", "build", "--images", str(images), "--manifest", str(work / "manifest.csv"),
               "--issuer-key", str(work / "bo" / "bo-2025.issuer.key"), "--passphrase-file", str(work / "pw"),
               "--unit", str(work / "van" / "van-07.unit.yaml"), "--operation-id", "ACCEPT-10K",
               "--authorising-officer", "Supt Acceptance 0001", "--valid-until",
               time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 6 * 3600)),
               "--out", str(work / "big.edgewl"), "--report", str(work / "report.json"), "--force"])
    wall = time.perf_counter() - t0
    return {"rc": rc, "build_seconds": round(wall, 2), "build_peak_rss_mb": round(_rss_mb(), 1),
            "bundle_bytes": (work / "big.edgewl").stat().st_size}


def step_load(work: Path) -> dict:
    from edge.watchlist.errors import BundleError
    from edge.config import load_config
    from edge.watchlist.unit import UnitWatchlist, embedder_sha256
    cfg = load_config(work / "unit.yaml")
    unit = UnitWatchlist(cfg, model_sha256=embedder_sha256(cfg))
    unit.device_key  # noqa: B018 - key loading is start-up, not load, time
    rss_before = _rss_mb()
    data_path = work / "big.edgewl"

    # timings first, without tracemalloc (it slows allocation-heavy code several-fold)
    t0 = time.perf_counter()
    verified = unit.verify(data_path.read_bytes())
    t_verify = time.perf_counter() - t0
    del verified
    t0 = time.perf_counter()
    live = unit.load(data_path)  # read + verify + persist (fsync) + swap: `edge-lfr watchlist load`
    t_load = time.perf_counter() - t0
    rss_after = _rss_mb()

    # then the Python-heap peak of one more verify + load of the same bundle (an idempotent reload)
    tracemalloc.start()
    live = unit.load(data_path)
    _, peak_load = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    t0 = time.perf_counter()
    restored = UnitWatchlist(cfg, model_sha256=unit.model_sha256, device_key=unit.device_key).restore()
    t_restore = time.perf_counter() - t0
    assert restored is not None

    # tampering sweep against the loaded 10k list: byte flips and truncations
    data = data_path.read_bytes()
    rng = random.Random(0)
    cases = [("flip", o) for o in rng.sample(range(len(data)), 40)] + \
            [("truncate", n) for n in sorted(rng.sample(range(len(data)), 10))]
    refused, times = 0, []
    state_before = (unit.state_path.read_bytes(), unit.bundle_path.stat().st_mtime_ns)
    for kind, n in cases:
        bad = bytearray(data)
        if kind == "flip":
            bad[n] ^= 0x10
        else:
            del bad[n:]
        t0 = time.perf_counter()
        try:
            unit.load(bytes(bad))
        except BundleError:
            refused += 1
        times.append(time.perf_counter() - t0)
        assert unit.current() is live
    assert (unit.state_path.read_bytes(), unit.bundle_path.stat().st_mtime_ns) == state_before
    probe = live.matcher.watchlist.embeddings[1234]
    m = live.matcher.match(probe)
    t0 = time.perf_counter()
    for _ in range(100):
        live.matcher.match(probe)
    t_match = (time.perf_counter() - t0) / 100
    s = live.manifest.summary()
    return {"subjects": s["subjects"], "templates": s["templates"], "by_category": s["by_category"],
            "verify_seconds": round(t_verify, 3), "load_seconds": round(t_load, 3),
            "restore_seconds": round(t_restore, 3),
            "load_traced_peak_mb": round(peak_load / 2**20, 1),
            "unit_rss_before_load_mb": round(rss_before, 1), "unit_peak_rss_mb": round(rss_after, 1),
            "tamper_cases": len(cases), "tamper_refused": refused,
            "tamper_refusal_median_ms": round(1000 * sorted(times)[len(times) // 2], 1),
            "list_unchanged_after_refusals": True, "match_ms_10k": round(1000 * t_match, 3),
            "self_match": m.subject_id == live.manifest.subjects[1234].id}


def screen(images: Path, paths: list[str]) -> list[str]:
    """The images the enrolment gate accepts, so that every subject of the size test enrols
    (the rejected ones are counted in the summary of the screening pass)."""
    from collections import Counter

    from edge.recognition.api import Recognizer
    from edge.watchlist.enrol import assess_image
    from edge.recognition.images import load_image
    rec = Recognizer()
    keep, reasons = [], Counter()
    t0 = time.perf_counter()
    for rel in paths:
        face, info = assess_image(rec, load_image(images / rel))
        if face is None:
            reasons[info["reason"]] += 1
        else:
            keep.append(rel)
    print(f"screened {len(paths)} LFW images in {time.perf_counter() - t0:.0f} s: {len(keep)} usable, "
          f"rejected {dict(reasons)}", file=sys.stderr)
    return keep


def prepare(work: Path, images: Path, n: int) -> None:
    if (work / "unit.yaml").exists():
        return
    (work / "pw").write_text("acceptance-passphrase\n")
    assert _cli(["keys", "issuer", "--name", "bo-2025", "--out", str(work / "bo"),
                 "--passphrase-file", str(work / "pw")]) == 0
    assert _cli(["keys", "device", "--unit-id", "van-07", "--out", str(work / "van")]) == 0
    assert _cli(["keys", "trust", "add", "--issuer", str(work / "bo" / "bo-2025.issuer.pub.yaml"),
                 "--valid-from", "now", "--valid-until", "2099-01-01T00:00:00Z",
                 "--trust", str(work / "van" / "trust.yaml")]) == 0
    paths = sorted(p.relative_to(images).as_posix() for p in images.glob("*/*.jpg"))
    paths = screen(images, paths)
    cats = ("wanted", "missing", "vulnerable")
    with open(work / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject_id", "category", "reason_code", "image", "source_ref"])
        for i in range(n):
            rel = paths[i % len(paths)]
            w.writerow([f"S{i:05d}", cats[i % 3], "ACC", rel, f"LFW {rel}"])
    (work / "unit.yaml").write_text(json.dumps({"unit": {
        "id": "van-07", "state_dir": str(work / "state"), "device_key": str(work / "van" / "device.key"),
        "trust_file": str(work / "van" / "trust.yaml")}}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=10_000)
    ap.add_argument("--faces", default=str(ROOT.parent / "shared" / "faces"))
    ap.add_argument("--work", help="working folder (default: a new temporary folder)")
    ap.add_argument("--out", help="also write the JSON summary here")
    ap.add_argument("--step", choices=["build", "load"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    images = Path(args.faces) / "lfw-dev"
    work = Path(args.work or tempfile.mkdtemp(prefix="wl-accept-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.step == "build":
        print(json.dumps(step_build(work, images)))
        return 0
    if args.step == "load":
        print(json.dumps(step_load(work)))
        return 0
    if not images.is_dir():
        print(f"no LFW images at {images}", file=sys.stderr)
        return 2
    prepare(work, images, args.subjects)
    result = {"machine": f"{os.cpu_count()} cores", "work": str(work)}
    for step in ("build", "load"):
        proc = subprocess.run([sys.executable, __file__, "--step", step, "--work", str(work),
                               "--faces", args.faces], stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            print(proc.stdout, file=sys.stderr)
            return proc.returncode
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    report = json.loads((work / "report.json").read_text())["enrolment"]
    result.update({"images_accepted": report["accepted"], "images_rejected": report["rejected"],
                   "rejected_by_reason": report["rejected_by_reason"],
                   "subjects_not_enrolled": len(report["subjects_not_enrolled"])})
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["load_seconds"] <= 2.0 and result["tamper_refused"] == result["tamper_cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
