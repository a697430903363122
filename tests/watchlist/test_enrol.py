"""Enrolment: manifest parsing, per-image rejection reasons on real faces, thumbnails, and
`edge-lfr watchlist build` end to end (build -> inspect -> verify -> load -> match)."""
from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config import validate
from edge.watchlist.enrol import ManifestError, enrol, read_manifest
from edge.recognition.images import decode_image, load_image, save_image

from tests.support.watchlists import watchlist_cli

LFW = ["Abdullah_Gul/Abdullah_Gul_0001.jpg", "Abdullah_Gul/Abdullah_Gul_0002.jpg",
       "AJ_Cook/AJ_Cook_0001.jpg", "Aaron_Sorkin/Aaron_Sorkin_0001.jpg"]
PROFILE = "Budd_Schulberg/Budd_Schulberg_0001.jpg"  # head yaw ~54 degrees


# ---------------------------------------------------------------------------------- manifests


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_manifest(tmp_path):
    p = write(tmp_path, "m.csv", "subject_id,category,reason_code,image,source_ref,threshold\n"
              "S-1,wanted,W01,a/1.jpg,PNC custody 1,\n"
              "S-1,wanted,W01,a/2.jpg,CCTV still 2,\n"
              "\n"
              "S-2,missing,M01,b.jpg,Family photo,0.75\n")
    subs = read_manifest(p)
    assert [s.id for s in subs] == ["S-1", "S-2"]
    assert [i.path for i in subs[0].images] == ["a/1.jpg", "a/2.jpg"]
    assert subs[0].images[1].source == "CCTV still 2"
    assert subs[1].threshold == 0.75 and subs[0].threshold is None


def test_yaml_manifest(tmp_path):
    p = write(tmp_path, "m.yaml", """
subjects:
  - id: S-1
    category: vulnerable
    reason_code: V01
    threshold: 0.8
    images:
      - {path: s1/front.jpg, source: "custody 2024-05-01"}
      - {path: s1/side.jpg, source: "CCTV"}
""")
    (s,) = read_manifest(p)
    assert (s.id, s.category, s.threshold, len(s.images)) == ("S-1", "vulnerable", 0.8, 2)


@pytest.mark.parametrize("text, message", [
    ("subject_id,category,image,source_ref\nS,wanted,a.jpg,x\n", "missing"),
    ("subject_id,category,reason_code,image,source_ref,colour\n", "unknown"),
    ("subject_id,category,reason_code,image,source_ref\nS,suspect,R,a.jpg,x\n", "category"),
    ("subject_id,category,reason_code,image,source_ref\nS,wanted,R,/etc/passwd,x\n", "relative"),
    ("subject_id,category,reason_code,image,source_ref\nS,wanted,R,../x.jpg,x\n", r"'\.\.'"),
    ("subject_id,category,reason_code,image,source_ref\nS,wanted,R,a.jpg,x\nS,missing,R,b.jpg,y\n",
     "rows of one subject must agree"),
    ("subject_id,category,reason_code,image,source_ref\nS,wanted,R,a.jpg,x\nS,wanted,R,a.jpg,y\n", "twice"),
    ("subject_id,category,reason_code,image,source_ref,threshold\nS,wanted,R,a.jpg,x,high\n", "not a number"),
    ("subject_id,category,reason_code,image,source_ref,threshold\nS,wanted,R,a.jpg,x,2\n", "cosine range"),
    ("subject_id,category,reason_code,image,source_ref\nS/1,wanted,R,a.jpg,x\n", "subject id"),
    ("subject_id,category,reason_code,image,source_ref\nS,wanted,R,a.jpg\n", "fields"),
    ("subject_id,category,reason_code,image,source_ref\n", "no subjects"),
    ("", "empty"),
])
def test_bad_csv_manifests(tmp_path, text, message):
    with pytest.raises(ManifestError, match=message):
        read_manifest(write(tmp_path, "m.csv", text))


@pytest.mark.parametrize("text, message", [
    ("subjects:\n  - {id: A, category: wanted, reason_code: R, images: [{path: a.jpg, source: x}]}\n"
     "  - {id: A, category: wanted, reason_code: R, images: [{path: b.jpg, source: y}]}\n", "duplicate subject id 'A'"),
    ("subjects:\n  - {id: A, category: wanted, reason_code: R, images: []}\n", "non-empty"),
    ("subjects:\n  - {id: A, category: wanted, reason_code: R, images: [{path: a.jpg}]}\n", "path"),
    ("subjects:\n  - {id: A, category: wanted, reason_code: R, note: x, images: [{path: a.jpg, source: x}]}\n",
     "unknown key"),
    ("people: []\n", "subjects"),
    ("subjects: [\n", "YAML"),
])
def test_bad_yaml_manifests(tmp_path, text, message):
    with pytest.raises(ManifestError, match=message):
        read_manifest(write(tmp_path, "m.yaml", text))


def test_manifest_extension_and_missing_file(tmp_path):
    with pytest.raises(ManifestError, match=r"\.csv, \.yaml"):
        read_manifest(write(tmp_path, "m.txt", "x"))
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "none.csv")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300), st.sampled_from(["m.csv", "m.yaml"]))
def test_manifest_reader_only_raises_manifest_errors(tmp_path, text, name):
    p = tmp_path / name
    p.write_text("subject_id,category,reason_code,image,source_ref\n" + text if name.endswith("csv") and
                 text[:1] == "S" else text, encoding="utf-8")
    try:
        subjects = read_manifest(p)
    except ManifestError as exc:
        assert str(p) in str(exc)              # every refusal names the file (and the line when it has one)
    else:                                      # accepted: every row is a complete subject
        assert subjects and all(s.id and s.category and s.images for s in subjects), text


# ---------------------------------------------------------------------------------- real faces


@pytest.fixture(scope="module")
def enrol_dir(tmp_path_factory, faces_dir, public_faces):
    """Enrolment images outside the repository: links to LFW files and derived test images."""
    d = tmp_path_factory.mktemp("enrol")
    lfw = faces_dir / "lfw-dev"
    for rel in LFW + [PROFILE]:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).symlink_to(lfw / rel)
    a = load_image(lfw / LFW[0])
    b = load_image(lfw / LFW[2])
    save_image(d / "blank.png", np.full((250, 250, 3), 128, np.uint8))
    save_image(d / "two.png", np.hstack([a, b]))
    small = cv2.resize(a, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)
    canvas = np.full((250, 250, 3), 128, np.uint8)
    canvas[:small.shape[0], :small.shape[1]] = small
    save_image(d / "tiny.png", canvas)
    save_image(d / "blurred.png", cv2.GaussianBlur(a, (21, 21), 0))
    save_image(d / "grace.png", public_faces["grace_hopper"])
    save_image(d / "astronaut.png", public_faces["astronaut"])
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return d


MANIFEST_CSV = f"""subject_id,category,reason_code,image,source_ref,threshold
S-GUL,wanted,W01,{LFW[0]},LFW {LFW[0]},
S-GUL,wanted,W01,{LFW[1]},LFW {LFW[1]},
S-COOK,missing,M01,{LFW[2]},LFW {LFW[2]},0.75
S-HOPPER,vulnerable,V01,grace.png,matplotlib sample data (public domain),
S-ASTRO,wanted,W02,astronaut.png,scikit-image sample data (NASA),
S-BAD,wanted,W03,blank.png,blank,
S-BAD,wanted,W03,two.png,collage,
S-BAD,wanted,W03,tiny.png,tiny,
S-BAD,wanted,W03,blurred.png,blurred,
S-BAD,wanted,W03,corrupt.jpg,corrupt,
S-BAD,wanted,W03,missing.jpg,missing,
S-PROF,wanted,W04,{PROFILE},LFW profile,
"""


@pytest.fixture(scope="module")
def enrolment(enrol_dir, recognizer):
    cfg = validate({"quality": {"max_abs_yaw_deg": 45.0}})
    (enrol_dir / "m.csv").write_text(MANIFEST_CSV)
    subjects = read_manifest(enrol_dir / "m.csv")
    return enrol(subjects, enrol_dir, recognizer, cfg, progress=False)


def test_rejection_reasons_on_real_faces(enrolment):
    by_image = {r.image: r for r in enrolment.images}
    expect = {"blank.png": "no_face", "two.png": "multiple_faces", "tiny.png": "too_small",
              "blurred.png": "blurred", "corrupt.jpg": "unreadable", "missing.jpg": "unreadable",
              PROFILE: "profile"}
    for image, reason in expect.items():
        r = by_image[image]
        assert not r.accepted and r.reason == reason, (image, r)
        assert r.detail
    assert by_image["two.png"].faces == 2
    for image in LFW[:3] + ["grace.png", "astronaut.png"]:
        assert by_image[image].accepted, by_image[image]
    report = enrolment.report()
    assert report["rejected_by_reason"] == {"unreadable": 2, "no_face": 1, "multiple_faces": 1, "too_small": 1,
                                            "profile": 1, "blurred": 1}
    assert report["subjects_not_enrolled"] == ["S-BAD", "S-PROF"]
    json.dumps(report)  # serialisable


def test_enrolled_subjects_templates_and_thumbnails(enrolment, enrol_dir, recognizer):
    subs = enrolment.subjects
    assert [s.id for s in subs] == ["S-GUL", "S-COOK", "S-HOPPER", "S-ASTRO"]
    assert subs[0].templates == 2 and subs[0].sources == (f"LFW {LFW[0]}", f"LFW {LFW[1]}")
    assert subs[1].threshold == 0.75 and subs[1].category == "missing"
    assert enrolment.embeddings.shape == (5, 128) and enrolment.embeddings.dtype == np.float32
    # the same pipeline as the unit: identical to Recognizer.embed_image on the same file
    ref = recognizer.embed_image(load_image(enrol_dir / LFW[2]))
    np.testing.assert_allclose(enrolment.embeddings[2], ref, atol=1e-6)
    for i in range(4):
        thumb = decode_image(enrolment.thumbnails[i])
        assert thumb.shape == (112, 112, 3) and len(enrolment.thumbnails[i]) < 16_000


# ---------------------------------------------------------------------------------- CLI build


_cli = watchlist_cli


def test_build_then_inspect_verify_load_and_match(tmp_path, enrol_dir, recognizer, capsys):
    pw = tmp_path / "pw"
    pw.write_text("s3cret")
    assert _cli(["keys", "issuer", "--name", "bo", "--out", str(tmp_path / "bo"), "--passphrase-file", str(pw)]) == 0
    assert _cli(["keys", "device", "--unit-id", "van-07", "--out", str(tmp_path / "van")]) == 0
    trust = tmp_path / "van" / "trust.yaml"
    assert _cli(["keys", "trust", "add", "--issuer", str(tmp_path / "bo" / "bo.issuer.pub.yaml"),
                 "--valid-from", "2020-01-01T00:00:00Z", "--valid-until", "2099-01-01T00:00:00Z",
                 "--trust", str(trust)]) == 0
    manifest = enrol_dir / "cli.csv"
    manifest.write_text("\n".join(MANIFEST_CSV.splitlines()[:6]) + "\n")  # the good subjects only
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    out = tmp_path / "op.edgewl"
    build = ["watchlist", "build", "--images", str(enrol_dir), "--manifest", str(manifest),
             "--issuer-key", str(tmp_path / "bo" / "bo.issuer.key"), "--unit", str(tmp_path / "van" / "van-07.unit.yaml"),
             "--operation-id", "OP-7", "--authorising-officer", "Supt J Smith 4411", "--valid-until", until,
             "--out", str(out), "--quiet", "--serial", "5"]
    assert _cli(build) == 77  # passphrase-protected issuer key without its passphrase
    assert not out.exists()
    capsys.readouterr()
    assert _cli(build + ["--passphrase-file", str(pw), "--report", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "subjects 4" in text and "accepted 5, rejected 0" in text
    assert "3 subject(s) enrolled from one photo only" in text     # S-GUL gave two, all of them enrolled
    assert out.stat().st_mode & 0o777 == 0o600
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bundle"]["subjects"] == 4 and report["enrolment"]["accepted"] == 5

    cfg = tmp_path / "unit.yaml"
    cfg.write_text(json.dumps({"unit": {"id": "van-07", "state_dir": str(tmp_path / "state"),
                                        "device_key": str(tmp_path / "van" / "device.key"),
                                        "trust_file": str(trust)}}))
    assert _cli(["watchlist", "inspect", str(out), "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "operation    OP-7  authorised by Supt J Smith 4411" in text
    assert "subjects     4 (wanted 2, missing 1, vulnerable 1); templates 5; thumbnails 4" in text
    assert _cli(["watchlist", "verify", str(out), "--config", str(cfg)]) == 0
    assert _cli(["watchlist", "load", str(out), "--config", str(cfg)]) == 0

    # what the unit loaded recognises a new photo of an enrolled person
    from edge.config import load_config
    from edge.watchlist.unit import UnitWatchlist
    unit = UnitWatchlist(load_config(cfg), model_sha256=recognizer.embedder_sha256)
    live = unit.restore()
    probe = recognizer.embed_image(load_image(enrol_dir / LFW[1]))
    m = live.matcher.match(probe)
    assert m.subject_id == "S-GUL" and m.is_hit
    assert live.thumbnail("S-GUL").startswith(b"\xff\xd8")

    # --strict refuses to write a bundle when any image is rejected
    strict_out = tmp_path / "strict.edgewl"
    assert _cli(build[:-2] + ["--serial", "6", "--passphrase-file", str(pw), "--manifest", str(enrol_dir / "m.csv"),
                              "--out", str(strict_out), "--strict"]) == 65
    assert not strict_out.exists()


def test_progress_rate_counts_only_images_worked_on():
    """`watchlist build` with every image missing used to claim ~30,000 img/s (issue 17, item 10)."""
    import io

    from edge.progress import Progress
    out = io.StringIO()
    with Progress(3, "enrolling", stream=out, unit="img", interval=1e9) as bar:
        for _ in range(3):
            bar.update(skipped=True)
    line = out.getvalue().strip().splitlines()[-1]
    assert "img/s" not in line and "(3 skipped)" in line and "3/3" in line
    out = io.StringIO()
    with Progress(4, "enrolling", stream=out, unit="img", interval=1e9) as bar:
        bar.update(skipped=True)
        time.sleep(0.05)
        bar.update()
    line = out.getvalue().strip().splitlines()[-1]
    assert "(1 skipped)" in line and float(line.split(" img/s")[0].split()[-1]) < 100


def test_enrol_with_every_image_missing_reports_them_skipped(tmp_path, recognizer, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject_id,category,reason_code,image,source_ref\n"
                        "S-1,wanted,R1,gone1.jpg,ref 1\nS-2,missing,R1,gone2.jpg,ref 2\n")
    (tmp_path / "imgs").mkdir()
    from edge.progress import Progress
    import io
    stream = io_stream = io.StringIO()
    import edge.watchlist.enrol as enrol_mod
    orig = enrol_mod.Progress
    enrol_mod.Progress = lambda total, label, enabled=True, unit="it": Progress(total, label, stream=io_stream,
                                                                              unit=unit)
    try:
        result = enrol(read_manifest(manifest), tmp_path / "imgs", recognizer, progress=True)
    finally:
        enrol_mod.Progress = orig
    assert result.subjects == [] and {r.reason for r in result.images} == {"unreadable"}
    final = stream.getvalue().strip().splitlines()[-1]
    assert "img/s" not in final and "(2 skipped)" in final, final
