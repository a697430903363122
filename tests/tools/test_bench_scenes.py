"""edge-lfr bench scenes: the identity split keeps the cohort's people out, per-frame detection is
counted by width and speed, and every missed pass gets its reason. Pure parts, no models."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.errors import InputError
from edge.matching.normalise import identity_key
from edge.tools.bench_scenes import detection_table, score_run, split_identities, summarise
from edge.tools.composer import Actor, Scene


def _ids(n_multi=40, n_single=60):
    ids = {f"M{i:03d}": [Path(f"M{i:03d}_{k}.jpg") for k in range(3 + i % 3)] for i in range(n_multi)}
    ids.update({f"S{i:03d}": [Path(f"S{i:03d}_0.jpg")] for i in range(n_single)})
    return ids


def test_split_never_uses_the_cohorts_people_and_keeps_roles_apart():
    ids = _ids()
    cohort = {identity_key(n) for n in list(ids)[::3]}          # a third of everyone is in the cohort
    sp = split_identities(ids, cohort, scenes=2, listed=5, unlisted=6, seed=1)
    walkers = [n for s in sp.listed + sp.unlisted for n in s]
    everyone = walkers + sp.distractors
    assert not {identity_key(n) for n in everyone} & cohort
    assert len(set(everyone)) == len(everyone)                  # nobody has two roles
    assert all(len(ids[n]) >= 3 for s in sp.listed for n in s)  # enrol from 2, paste the 3rd
    assert sp.cohort_excluded == len(cohort)
    assert "held by the shipped background cohort" in sp.how
    assert split_identities(ids, cohort, scenes=2, listed=5, unlisted=6, seed=1).listed == sp.listed
    with pytest.raises(InputError):
        split_identities(ids, cohort, scenes=20, listed=5, unlisted=6, seed=1)


def _scene():
    a = Actor("A", "h", "S-1", 0.0, 2.0, ((0.1, 0.5), (0.9, 0.5)), 60)      # fast and small
    b = Actor("B", "h", None, 0.0, 2.0, ((0.5, 0.2), (0.5, 0.2)), 150)      # standing, large
    scene = Scene({"h": None}, [a, b], size=(1000, 600), fps=10.0, duration=2.0)
    scene._patch = lambda actor: (None, None, (0.0, 0.0, float(actor.face_px), float(actor.face_px)))
    return scene, a, b


def test_detection_is_counted_by_width_and_speed():
    scene, a, b = _scene()
    per = {}
    for k in range(scene.n_frames):
        dets = [box for actor, box in scene.truth_at(k / scene.fps) if actor is b or k % 2 == 0]
        per[k] = [SimpleNamespace(box=box) for box in dets]
    d = detection_table(scene, per)
    # A: found in every other frame; B in all; boxes fully inside the frame only
    na, fa = d["by_width"]["48-64"]
    nb, fb = d["by_width"]["140-220"]
    assert nb == fb > 0 and fa == pytest.approx(na / 2, abs=1)
    assert set(d["by_speed"]) == {"<0.2", "0.45-0.7"}              # 40 px per frame at 60 px wide: 0.67
    assert d["per_actor"][id(b)] == nb


def test_every_missed_listed_pass_gets_a_reason():
    scene, a, _ = _scene()
    ev = lambda sid, t: SimpleNamespace(subject_id=sid, t=t, box=next(bx for ac, bx in scene.truth_at(t)  # noqa: E731
                                                                       if ac is a))
    m = lambda sid, score, t=1.0: SimpleNamespace(subject_id=sid, score=score, threshold=0.6, t=t,  # noqa: E731
                                                   box=next(bx for ac, bx in scene.truth_at(t) if ac is a))
    why = lambda events, matches, found: next(p for p in score_run(scene, events, matches, found)["passes"]  # noqa: E731
                                              if p["label"] == "A").get("why")
    assert why([], [], {}) == "never_detected"
    assert why([], [], {id(a): 5}) == "not_kept"
    assert why([], [m("S-1", 0.55)], {id(a): 5}) == "below_threshold"
    assert why([ev("S-1", 0.5), ev("S-1", 1.0)], [], {id(a): 5}) == "duplicate"
    assert why([ev("S-9", 0.5)], [], {id(a): 5}) == "wrong_subject"
    r = score_run(scene, [ev("S-1", 0.7)], [m("S-1", 0.7)], {id(a): 5})
    p = next(p for p in r["passes"] if p["label"] == "A")
    assert p["exactly_once"] and p["time_to_alert"] == pytest.approx(0.7) and "why" not in p
    # the summary: recall, and a false alert on the unlisted walker counted per 1,000 unlisted passes
    run = {"fps": 10.0, "list": "12", "photos": 1, "list_size": 12, "threshold": 0.6, "supported": True, **r}
    (s,) = summarise([run])
    assert s["recall"] == 1.0 and s["false_per_1000_unlisted"] == 0.0 and s["unlisted_passes"] == 1


def test_one_person_under_two_names_is_cast_once():
    ids = _ids()
    sp = split_identities(ids, set(), scenes=2, listed=5, unlisted=6, seed=1, aliases={"M001": "M000", "S002": "S001"})
    everyone = [n for s in sp.listed + sp.unlisted for n in s] + sp.distractors
    assert "M001" not in everyone and "S002" not in everyone and {"M000", "S001"} <= set(everyone)
    assert sp.cohort_excluded == 0 and "2 second names of one person" in sp.how


def test_the_shipped_errata_name_people_of_lfw_dev(tmp_path):
    """models/lfw_dev_errata.txt parses, and where lfw-dev is present both names of every pair are in it."""
    from edge.paths import shared_faces_or_none
    from edge.tools.evaluation.lfw import load_aliases
    aliases = load_aliases()
    assert len(aliases) >= 7 and "Hassan_Wirajuda" in aliases and aliases["Martha_Bowen"] == "Gabrielle_Rose"
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "lfw_dev_errata.txt").write_text("# comment\nA\tB\twhy\n\nC D\n")
    with pytest.raises(InputError, match="lfw_dev_errata.txt:4"):
        load_aliases(tmp_path)
    shared = shared_faces_or_none()
    if shared is None or not (shared / "lfw-dev").is_dir():
        pytest.skip("../shared/faces/lfw-dev is absent: the names are checked where it is")
    for a, b in aliases.items():
        assert (shared / "lfw-dev" / a).is_dir() and (shared / "lfw-dev" / b).is_dir(), (a, b)
