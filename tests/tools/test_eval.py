"""`edge-lfr eval lfw`: the protocol arithmetic on hand-made scores, the pairs-file checks,
and an end-to-end run on a small LFW-layout folder of real faces (symlinks into
../shared/faces/lfw-dev, skipped when that folder is absent)."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.tools.evaluation import command as ev
from edge.tools.evaluation import lfw
from edge.tools.evaluation import protocol
from edge.tools.evaluation import dlib_reference
from edge.tools.evaluation import embeddings
from edge.cli.main import main
from edge.errors import InputError
from edge.progress import Progress, format_duration

SHARED_FACES = Path(__file__).resolve().parents[2].parent / "shared" / "faces"
LFW = SHARED_FACES / "lfw-dev"


# ---------------------------------------------------------------------------------------------
# Pure protocol functions, known answers
# ---------------------------------------------------------------------------------------------

def test_best_threshold_separable():
    t, acc = protocol.best_threshold([0.1, 0.2, 0.3, 0.6, 0.7, 0.9], [0, 0, 0, 1, 1, 1])
    assert acc == 1.0
    assert t == pytest.approx(0.45)


def test_best_threshold_overlap_and_extremes():
    # 0.1F 0.4T 0.5F 0.8T: the best cuts (0.25 or 0.65) get 3 of 4 right
    t, acc = protocol.best_threshold([0.1, 0.5, 0.4, 0.8], [0, 0, 1, 1])
    assert acc == 0.75 and t in (pytest.approx(0.25), pytest.approx(0.65))
    # all "same": accepting everything (threshold = lowest score) is right
    t, acc = protocol.best_threshold([0.3, -1.0, 0.9], [1, 1, 1])
    assert acc == 1.0 and t == -1.0
    # all "different": rejecting everything, threshold just above the highest
    t, acc = protocol.best_threshold([0.3, 0.9], [0, 0])
    assert acc == 1.0 and 0.9 < t < 0.9 + 1e-9


def test_cross_validate_uses_the_other_folds():
    # fold 1 alone is best cut at 0.75, fold 2 alone at 0.5; each is tested with the other's
    scores = [0.8, 0.9, 0.1, 0.7, 0.6, 0.7, 0.3, 0.4]
    same = [1, 1, 0, 0, 1, 1, 0, 0]
    folds = [0, 0, 0, 0, 1, 1, 1, 1]
    cv = protocol.cross_validate(scores, same, folds)
    assert cv["folds"] == 2
    f1, f2 = cv["per_fold"]
    assert f1["threshold"] == pytest.approx(0.5) and f1["accuracy"] == 0.75   # 0.7 "different" called same
    assert f2["threshold"] == pytest.approx(0.75) and f2["accuracy"] == 0.5   # both same pairs missed
    assert cv["accuracy_mean"] == pytest.approx(0.625)
    assert cv["accuracy_std"] == pytest.approx(math.sqrt(2 * 0.125 ** 2))
    assert cv["threshold"] == pytest.approx(0.625)
    with pytest.raises(InputError):
        protocol.cross_validate([0.1, 0.9], [0, 1], [0, 0])


def test_threshold_at_fpir_known_answers():
    nm = np.arange(1000) / 1000.0                      # 0.000 .. 0.999
    t, fa = protocol.threshold_at_fpir(nm, 0.01)
    assert fa == 10 and 0.989 < t <= 0.990             # 0.990 .. 0.999 alarm
    t, fa = protocol.threshold_at_fpir(nm, 0.001)
    assert fa == 1 and 0.998 < t <= 0.999
    # ties: three probes at 0.9 cannot be split; allowing 2 alarms means none of them alarm
    t, fa = protocol.threshold_at_fpir([0.9, 0.9, 0.9, 0.1] + [0.0] * 96, 0.02)
    assert fa == 0 and t > 0.9
    # non-mated probes without a face (-inf) never alarm; the floor is -1
    t, fa = protocol.threshold_at_fpir([0.5, -np.inf, -np.inf, -np.inf], 0.5)
    assert t == -1.0 and fa == 1
    # FPIR below 1/n: the threshold goes above the highest non-mated score
    t, fa = protocol.threshold_at_fpir([0.2, 0.4, 0.3], 0.001)
    assert fa == 0 and 0.4 < t < 0.4 + 1e-9


def test_fnir_counts_wrong_and_below_threshold_and_no_face():
    top = [0.9, 0.8, 0.95, -np.inf]
    correct = [True, True, False, False]               # 3rd: wrong identity; 4th: no face
    assert protocol.fnir_at(top, correct, 0.85) == 0.75      # only 0.9 is a hit
    assert protocol.fnir_at(top, correct, 0.5) == 0.5


def test_det_curve_is_monotone_and_ends_at_rank1():
    rng = np.random.default_rng(1)
    mated = rng.uniform(0.5, 1.0, 400)
    correct = rng.uniform(size=400) > 0.1
    nonmated = np.concatenate([rng.uniform(0.0, 0.8, 2000), [-np.inf] * 10])
    det = protocol.det_curve(mated, correct, nonmated, max_points=100)
    fpir, fnir = np.array(det["fpir"]), np.array(det["fnir"])
    assert 10 < len(fpir) <= 102
    assert fpir[0] == 0 and np.all(np.diff(fpir) >= 0) and np.all(np.diff(fnir) <= 0)
    assert fpir[-1] == pytest.approx(2000 / 2010)
    assert fnir[-1] == pytest.approx(1 - correct.mean())
    # every point agrees with the point functions at its threshold
    for t, x, y in list(zip(det["threshold"], fpir, fnir))[::7]:
        assert x == pytest.approx(np.mean(nonmated >= t))
        assert y == pytest.approx(protocol.fnir_at(mated, correct, t))


def test_nearest_centre():
    boxes = [(0, 0, 20, 20), (40, 40, 60, 60), (80, 0, 100, 20)]
    assert embeddings.nearest_centre(boxes, 100, 100) == 1
    assert embeddings.nearest_centre(boxes[::2], 100, 40) in (0, 1)


def test_identification_enrolment_substitution_and_missing_faces(tmp_path):
    d = 4
    e = np.eye(d, dtype=np.float32)
    ids = {"A": [tmp_path / f"A_{i}" for i in (1, 2, 3)], "B": [tmp_path / f"B_{i}" for i in (1, 2)],
           "C": [tmp_path / "C_1"], "D": [tmp_path / "D_1"]}
    paths = [p for ps in ids.values() for p in ps]
    emb = np.stack([np.full(d, np.nan, np.float32), e[0], e[0],      # A: first image has no face
                    e[1], (e[1] + 0.2 * e[0]) / np.linalg.norm(e[1] + 0.2 * e[0]),  # B
                    e[2],                                              # C: non-mated, far away
                    np.full(d, np.nan, np.float32)])                   # D: non-mated, no face
    reasons = [None if np.isfinite(r).all() else "no_detection" for r in emb]
    table = embeddings.EmbeddingTable(paths, emb, reasons, {"total": np.zeros(len(paths))})
    r = protocol.identification(table, ids, ["A", "B"], tmp_path, with_det=True)
    assert r["n_watchlist"] == 2 and r["n_mated"] == 3 and r["n_nonmated"] == 2
    assert r["enrolment_substituted"]["count"] == 1
    assert r["enrolment_substituted"]["examples"][0]["enrolled"] == "A_2"
    assert r["n_mated_no_face"] == 1 and r["n_nonmated_no_face"] == 1
    assert r["rank1"] == pytest.approx(2 / 3)          # the faceless first image of A is a miss
    assert r["false_alarms_at_fpir"]["0.01"] == 0
    assert r["fnir_at_fpir"]["0.01"] == pytest.approx(1 / 3)
    assert [a["probe"] for a in r["top_nonmated"]] == ["C_1"]   # D has no face: never an alarm


def test_sample_watchlist_is_seeded_and_skips_too_large():
    ids = {f"P{i:03d}": [Path(f"{i}_1"), Path(f"{i}_2")] for i in range(150)}
    ids["single"] = [Path("s_1")]
    a = protocol.sample_watchlist(ids, 100, 7)
    assert a == protocol.sample_watchlist(ids, 100, 7) and len(set(a)) == 100 and "single" not in a
    assert a != protocol.sample_watchlist(ids, 100, 8)
    assert protocol.sample_watchlist(ids, 500, 7) is None
    assert len(protocol.sample_watchlist(ids, "all", 7)) == 150


def test_progress_plain_lines_when_not_a_tty():
    buf = io.StringIO()
    with Progress(10, "work", stream=buf, interval=0.0) as bar:
        for _ in range(10):
            bar.update()
    lines = buf.getvalue().splitlines()
    assert lines[-1].startswith("work 10/10 (100%)") and " in " in lines[-1]
    assert "ETA" in lines[0] and "\r" not in buf.getvalue()
    assert format_duration(3725) == "1:02:05" and format_duration(float("inf")) == "?"


# ---------------------------------------------------------------------------------------------
# Argument and pairs-file checks (no models needed: refused before loading)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_folder(tmp_path):
    root = tmp_path / "imgs"
    for name, n in (("Ann", 2), ("Bob", 1)):
        (root / name).mkdir(parents=True)
        for i in range(1, n + 1):
            cv2.imwrite(str(root / name / f"{name}_{i:04d}.jpg"), np.full((32, 32, 3), 128, np.uint8))
    return root


def _run_eval(capsys, images, pairs_text, tmp_path, extra=()):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(pairs_text)
    code = main(["eval", "lfw", "--images", str(images), "--pairs", str(pairs),
                 "--out", str(tmp_path / "r.json"), *extra])
    return code, capsys.readouterr().err


def test_malformed_pairs_line_is_named(tiny_folder, tmp_path, capsys):
    code, err = _run_eval(capsys, tiny_folder, "2 1\nAnn 1\nAnn 1 Bob 1\nAnn 1 2\nAnn 2 Bob 1\n", tmp_path)
    assert code == 65
    assert "pairs.txt:2" in err and "name i j" in err


def test_missing_pair_image_is_named(tiny_folder, tmp_path, capsys):
    code, err = _run_eval(capsys, tiny_folder, "2 1\nAnn 1 2\nAnn 1 Bob 7\nAnn 1 2\nAnn 2 Bob 1\n", tmp_path)
    assert code == 65
    assert "pairs.txt:3" in err and "Bob_0007.jpg" in err and "not found" in err


@pytest.mark.parametrize("text, where", [("x 300\n", "pairs.txt:1"), ("", "empty"), ("1 1\n", "2 folds"),
                                         ("2 1\nAnn 1 2\n", "only 1"),
                                         ("2 1\nAnn 1 2\nAnn 1 Bob 1\nAnn 1 2\nAnn 2 Bob 1\nAnn 2 Bob 1\n", "pairs.txt:6")])
def test_bad_pairs_structure(tiny_folder, tmp_path, capsys, text, where):
    code, err = _run_eval(capsys, tiny_folder, text, tmp_path)
    assert code == 65 and where in err


def test_missing_images_folder(tmp_path, capsys):
    code, err = _run_eval(capsys, tmp_path / "nowhere", "1 1\n", tmp_path)
    assert code == 65 and "nowhere" in err and "not found" in err


# ---------------------------------------------------------------------------------------------
# End to end on real faces
# ---------------------------------------------------------------------------------------------

def _models_or_skip():
    from edge.errors import ModelError
    from edge.recognition.runtime import find_models_dir, load_manifest
    try:
        manifest = load_manifest(find_models_dir())
    except ModelError as exc:
        pytest.skip(f"models not built: {exc}")
    if "dlib_resnet_v1_int8" not in manifest["models"] or "alignment" not in manifest:
        pytest.skip("models/manifest.json lacks the int8 embedder or the alignment section")


@pytest.fixture(scope="module")
def small_lfw(tmp_path_factory):
    if not LFW.is_dir():
        pytest.skip(f"real-face data not found at {LFW} (../shared/faces beside the repository)")
    _models_or_skip()
    people = sorted(p for p in LFW.iterdir() if p.is_dir())
    counts = {p.name: len(list(p.glob(f"{p.name}_*.jpg"))) for p in people}
    multi = [n for n in counts if 2 <= counts[n] <= 4][:25]
    single = [n for n in counts if counts[n] == 1][:15]
    root = tmp_path_factory.mktemp("lfw") / "images"
    root.mkdir()
    for n in multi + single:
        (root / n).symlink_to(LFW / n, target_is_directory=True)
    lines = ["2\t10"]
    for fold in range(2):
        lines += [f"{n}\t1\t2" for n in multi[fold * 10:(fold + 1) * 10]]
        lines += [f"{multi[fold * 10 + i]}\t1\t{single[(fold * 10 + i) % len(single)]}\t1" for i in range(10)]
    pairs = root.parent / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    return root, pairs


@pytest.fixture(scope="module")
def eval_run(small_lfw):
    root, pairs = small_lfw
    out, plot = root.parent / "report.json", root.parent / "det.png"
    ok, _ = dlib_reference.dlib_available()
    argv = ["eval", "lfw", "--images", str(root), "--pairs", str(pairs), "--out", str(out),
            "--plot", str(plot), "--seed", "3"] + (["--reference", "dlib"] if ok else [])
    code = main(argv)
    assert code == 0
    return json.loads(out.read_text()), plot, ok


def _check_pipeline(rep, stages):
    p = rep["pairs"]
    assert p["folds"] == 2 and len(p["per_fold"]) == 2 and p["n_pairs"] == 40
    assert p["accuracy_mean"] > 0.9
    assert -1.0 <= p["threshold"] <= 1.0 and all(-1.0 <= f["threshold"] <= 1.0 for f in p["per_fold"])
    ident = rep["identification"]
    assert "100" in ident["skipped"] and "500" in ident["skipped"]     # only 25 identities with >= 2
    r = ident["all"]
    assert r["n_watchlist"] + r["failed_to_enrol"]["count"] == 25 and r["n_nonmated"] == 15
    assert r["rank1"] > 0.8
    for key in ("fnir_at_fpir", "threshold_at_fpir", "false_alarms_at_fpir"):
        assert set(r[key]) == {"0.01", "0.001"}
    assert all(-1.0 <= t <= 1.0 for t in r["threshold_at_fpir"].values())
    assert all(0.0 <= v <= 1.0 for v in r["fnir_at_fpir"].values())
    assert all(fa <= 0 for fa in r["false_alarms_at_fpir"].values())  # 15 probes: < 1 alarm allowed
    assert {"count", "reasons", "examples"} <= set(rep["no_face"])
    assert rep["no_face"]["count"] == sum(rep["no_face"]["reasons"].values())
    assert set(stages) <= set(rep["seconds_per_image"])
    assert rep["seconds_per_image"]["total"] > 0
    assert len(rep["det"]["fpir"]) == len(rep["det"]["fnir"]) > 1


def test_eval_end_to_end(eval_run):
    report, plot, with_dlib = eval_run
    assert len(report["model_sha256"]) == 64
    _check_pipeline(report, embeddings.OUR_STAGES)
    assert "pairs" in report["without_quality_gate"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if with_dlib:
        _check_pipeline(report["reference"], dlib_reference.DLIB_STAGES)
        c = report["comparison"]
        assert c["pairs_accuracy_points"] == pytest.approx(
            100 * (report["pairs"]["accuracy_mean"] - report["reference"]["pairs"]["accuracy_mean"]))
        assert set(c["identification"]["all"]["fnir_at_fpir"]) == {"0.01", "0.001"}


def test_eval_reuses_one_embedding_per_image(small_lfw, monkeypatch, tmp_path):
    """Each image goes through the detector once, however many pairs and probes use it."""
    root, pairs = small_lfw
    seen = []
    real = embeddings.embed_ours

    def spy(rec, paths, progress=None):
        seen.extend(paths)
        return real(rec, paths, progress)

    monkeypatch.setattr(ev, "embed_ours", spy)
    assert main(["eval", "lfw", "--images", str(root), "--pairs", str(pairs),
                 "--out", str(tmp_path / "r.json"), "--limit", "30"]) == 0
    assert len(seen) == len(set(seen)) > 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["dataset"]["n_identities"] == 30


# ---------------------------------------------------------------------------------------------
# Issue 8: track protocol, multi-image enrolment, improved (cohort-normalised) pipeline
# ---------------------------------------------------------------------------------------------

def _toy_table(tmp_path, spec, d=6, seed=0, noise=0.05):
    """identities {name: n_images}; each identity a random direction plus a little noise."""
    rng = np.random.default_rng(seed)
    ids, rows = {}, []
    for name, n in spec.items():
        c = rng.normal(size=d)
        ids[name] = [tmp_path / name / f"{name}_{i:04d}.jpg" for i in range(1, n + 1)]
        for _ in range(n):
            v = c / np.linalg.norm(c) + noise * rng.normal(size=d)
            rows.append(v / np.linalg.norm(v))
    paths = [p for ps in ids.values() for p in ps]
    emb = np.asarray(rows, np.float32)
    return embeddings.EmbeddingTable(paths, emb, [None] * len(paths), {"total": np.zeros(len(paths))}), ids


def test_identity_folds_follow_pairs_and_hash(tmp_path):
    ids = {n: [tmp_path / n / f"{n}_0001.jpg"] for n in ("Ann", "Bob", "Cy", "Dee", "Eve")}
    pairs = lfw.PairsFile(2, 1, [lfw.Pair(ids["Ann"][0], ids["Bob"][0], False, 1, 2),
                                lfw.Pair(ids["Cy"][0], ids["Cy"][0], True, 0, 1)])
    f = protocol.identity_folds(ids, pairs)
    assert f["Ann"] == f["Bob"] == 1 and f["Cy"] == 0
    assert f["Dee"] in (0, 1) and f == protocol.identity_folds(ids, pairs)     # stable


def test_track_protocol_groups_and_leave_one_out(tmp_path):
    table, ids = _toy_table(tmp_path, {"A": 7, "B": 5, "C": 1, "D": 3})
    r = protocol.track_identification(table, ids, ["A", "B", "D"], 3)
    # mated: A's 6 other images -> 2 groups, B's 4 -> 1, D's 2 -> 0
    assert r["n_watchlist"] == 3 and r["n_mated"] == 3
    # non-mated: A 7 -> 2, B 5 -> 1, D 3 -> 1 (leave-one-out), C (1 image) cannot form a track
    assert r["n_nonmated"] == 4 and r["n_nonmated_leave_one_out"] == 4 and r["n_nonmated_identities"] == 3
    assert r["rank1"] == 1.0                       # well separated identities
    assert r["fnir_at_fpir"]["0.01"] == 0.0        # own entry removed: no near-perfect non-mated score
    r1 = protocol.track_identification(table, ids, ["A", "B", "D"], 1)
    assert r1["n_mated"] == 6 + 4 + 2 and r1["n_nonmated"] == 16     # every image is a non-mated probe


def test_track_protocol_with_several_enrolment_photos(tmp_path):
    table, ids = _toy_table(tmp_path, {"A": 8, "B": 5, "C": 1, "D": 4}, noise=0.3)
    r = protocol.track_identification(table, ids, ["A", "B", "D"], 3, enrol_images=2)
    # listed: at least 2 + 3 usable images (A, B); D (4) cannot give two photos and a track
    assert r["n_watchlist"] == 2 and r["enrol_images"] == 2 and r["templates"] == "fuse"
    # mated: A's 6 non-enrolment images -> 2 tracks, B's 3 -> 1; the enrolment photos are never probes
    assert r["n_mated"] == 3
    # non-mated: A 8 -> 2, B 5 -> 1 (leave-one-out), D 4 -> 1 (now unlisted)
    assert r["n_nonmated"] == 4 and r["n_nonmated_leave_one_out"] == 3
    best = protocol.track_identification(table, ids, ["A", "B", "D"], 3, enrol_images=2, templates="max")
    assert best["templates"] == "max" and best["n_mated"] == 3
    # one photo: unchanged from before
    assert protocol.track_identification(table, ids, ["A", "B", "D"], 3)["n_watchlist"] == 3


def test_track_fusion_uses_quality_weights(tmp_path, monkeypatch):
    table, ids = _toy_table(tmp_path, {"A": 4, "B": 4})
    table.weights = np.linspace(0.2, 1.0, len(table.paths))
    seen = []
    real = protocol.fuse_embeddings

    def spy(e, w=None):
        seen.append(None if w is None else np.asarray(w).copy())
        return real(e, w)

    monkeypatch.setattr(protocol, "fuse_embeddings", spy)
    protocol.track_identification(table, ids, ["A"], 3)
    assert seen and all(w is not None and len(w) == 3 for w in seen)


def test_enrolment_study_fuse_and_max(tmp_path):
    table, ids = _toy_table(tmp_path, {"A": 6, "B": 4, "C": 2, "S1": 1, "S2": 1}, noise=0.3)
    r = protocol.enrolment_study(table, ids, ["A", "B", "C"])
    assert r["n_watchlist"] == 3 and r["n_nonmated"] == 2
    # probes from position min(3, n-1): A 3, B 1, C 1 - the same for every M
    assert r["n_mated"] == 5
    assert {"M=1", "M=2 fuse", "M=2 max", "M=3 fuse", "M=3 max"} <= set(r)
    assert r["n_subjects_with"] == {"1": 3, "2": 2, "3": 2}     # C (2 images) keeps one to probe with


def test_scorers_base_equals_cosine_and_improved_is_per_fold(tmp_path):
    from edge.matching.normalise import fit_score_model
    rng = np.random.default_rng(3)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    g = [unit(rng.normal(size=(1, 8))) for _ in range(4)]
    p = unit(rng.normal(size=(5, 8)))
    p[2] = np.nan
    folds = np.array([0, 1, 0, 1, 1])
    base = protocol.EvalScorer.base().matrix(p, folds, g)
    want = p.astype(np.float64) @ np.concatenate(g).T.astype(np.float64)
    assert np.allclose(base[[0, 1, 3, 4]], want[[0, 1, 3, 4]], atol=1e-6) and np.all(base[2] == -np.inf)
    models = {0: fit_score_model(unit(rng.normal(size=(50, 8)))), 1: fit_score_model(unit(rng.normal(size=(50, 8))))}
    imp = protocol.EvalScorer("improved", models).matrix(p, folds, g)
    gg = np.concatenate(g)
    for i in (0, 1, 3, 4):
        m = models[folds[i]]
        t = m.normalise(want[i:i + 1], m.cohort_stats(p[i:i + 1]), m.cohort_stats(gg))
        assert np.allclose(imp[i], t[0], atol=1e-4)


def test_embedding_table_cache_round_trip(tmp_path):
    table, ids = _toy_table(tmp_path, {"A": 3, "B": 2})
    table.reasons[1] = "blurred"
    table.embeddings[1] = np.nan
    table.ungated = embeddings.EmbeddingTable(table.paths, table.embeddings.copy(), [None] * 5, table.seconds)
    f = tmp_path / "c.npz"
    embeddings.save_table(f, table, {"model_sha256": "x", "config": "y"})
    back = embeddings.load_table(f, table.paths, {"model_sha256": "x", "config": "y"})
    assert back.reasons == table.reasons and np.array_equal(back.embeddings, table.embeddings, equal_nan=True)
    assert back.ungated is not None and back.weights.shape == (5,)
    assert embeddings.load_table(f, table.paths, {"model_sha256": "other", "config": "y"}) is None
    assert embeddings.load_table(f, table.paths[:4], {"model_sha256": "x", "config": "y"}) is None


def test_issue8_arguments():
    p = ev._standalone_parser()
    a = p.parse_args(["lfw", "--images", "i", "--pairs", "p", "--out", "o", "--track-size", "1", "4",
                      "--pipeline", "improved"])
    assert a.track_size == [1, 4] and a.pipeline == "improved"
    a = p.parse_args(["lfw", "--images", "i", "--pairs", "p", "--out", "o"])
    assert a.track_size == [1, 3, 5] and a.pipeline == "both" and a.embeddings_cache is None


def test_eval_reports_track_and_enrolment(eval_run):
    report, _, _ = eval_run
    assert set(report["track"]) == {"1", "3", "5"}
    t1 = report["track"]["1"]
    assert t1["n_mated"] <= report["identification"]["all"]["n_mated"]
    assert {"fnir_at_fpir", "false_alarms_at_fpir", "false_alarm_identities_at_fpir", "det"} <= set(t1)
    assert "M=1" in report["enrolment"]
    # two enrolment photos, single images and tracks of 3: the base keeps the best template
    assert set(report["enrolment_tracks"]) == {"K=1 M=2", "K=3 M=2"}
    assert report["enrolment_tracks"]["K=3 M=2"]["templates"] == "max"
    # 15 single-image identities: too few background faces per fold for the improved pipeline
    assert "skipped" in report["improved"]


@pytest.fixture(scope="module")
def medium_lfw(tmp_path_factory):
    """30 identities with 3-6 images and 60 with one, two pair folds: enough background faces
    for the cross-fitted improved pipeline."""
    if not LFW.is_dir():
        pytest.skip(f"real-face data not found at {LFW}")
    _models_or_skip()
    people = sorted(p for p in LFW.iterdir() if p.is_dir())
    counts = {p.name: len(list(p.glob(f"{p.name}_*.jpg"))) for p in people}
    multi = [n for n in counts if 3 <= counts[n] <= 6][:30]
    single = [n for n in counts if counts[n] == 1][:60]
    root = tmp_path_factory.mktemp("lfw8") / "images"
    root.mkdir()
    for n in multi + single:
        (root / n).symlink_to(LFW / n, target_is_directory=True)
    lines = ["2\t10"]
    for fold in range(2):
        lines += [f"{n}\t1\t2" for n in multi[fold * 15:fold * 15 + 10]]
        lines += [f"{multi[fold * 15 + i]}\t1\t{single[fold * 30 + i]}\t1" for i in range(10)]
    pairs = root.parent / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    return root, pairs


def test_eval_improved_pipeline_end_to_end(medium_lfw, tmp_path):
    import argparse
    root, pairs = medium_lfw
    out, plot = tmp_path / "r.json", tmp_path / "det.png"
    args = argparse.Namespace(images=str(root), pairs=str(pairs), out=str(out), plot=str(plot), reference=None,
                              config=None, limit=0, seed=0, pipeline="both", track_size=[1, 3],
                              embeddings_cache=str(tmp_path / "emb.npz"))
    assert ev.run_eval_lfw(args) == 0
    rep = json.loads(out.read_text())
    imp = rep["improved"]
    assert imp["pipeline"] == "improved" and set(imp["track"]) == {"1", "3"}
    assert imp["pairs"]["accuracy_mean"] > 0.85 and imp["identification"]["all"]["rank1"] > 0.8
    assert imp["calibration_fitted"]["n_comparisons"] > 1000
    assert {"0.01", "0.001"} <= set(imp["policy_check"])
    assert imp["added_cost"]["1000"]["improved_ms"] > 0
    # two enrolment photos: the improved pipeline fuses them, as the unit's matcher does
    assert imp["enrolment_tracks"]["K=3 M=2"]["templates"] == "fuse"
    assert rep["enrolment_tracks"]["K=3 M=2"]["templates"] == "max"
    assert "skipped" in rep["improved_shipped"]          # these LFW faces are in the shipped cohort
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # second run reuses the cached embeddings
    assert (tmp_path / "emb.npz").is_file()
    assert ev.run_eval_lfw(args) == 0
