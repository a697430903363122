"""Rig mode: expectations files, checking alerts against them, JUnit XML, and the whole
`edge-lfr replay` on a composed video with a real signed bundle and a rig config file."""
import io
import json
import xml.etree.ElementTree as ET
from contextlib import redirect_stdout
from types import SimpleNamespace

import pytest
import yaml

from edge.cli.main import main
from edge.tools.composer import Actor, Scene, cast
from edge.config import validate
from edge.errors import InputError
from edge.tools.rig import (CaseResult, Expectation, Expectations, RigResult, ThrowawayUnit, check, load_expectations,
                      parse_expectations, write_junit)


def ev(subject, t, track=1, score=0.97):
    return SimpleNamespace(subject_id=subject, t=t, track_id=track, score=score, category="wanted")


@pytest.mark.parametrize("doc, words", [
    ([1], ["expected a mapping"]),
    ({"expect": {"subject": "S"}}, ["'expect' must be a list"]),
    ({"expect": [{"subject": "S", "from": 1}]}, ["expect[0]", "'to' is required"]),
    ({"expect": [{"subject": "", "from": 1, "to": 2}]}, ["expect[0].subject"]),
    ({"expect": [{"subject": "S", "from": "a", "to": 2}]}, ["expect[0].from", "number"]),
    ({"expect": [{"subject": "S", "from": 3, "to": 2}]}, ["before"]),
    ({"expect": [{"subject": "S", "from": 1, "to": 2, "count": -1}]}, ["count"]),
    ({"expect": [{"subject": "S", "from": 1, "to": 2, "when": 3}]}, ["unknown key 'when'"]),
    ({"expect": [], "strict": True}, ["unknown key 'strict'"]),
    ({"expect": [{"subject": "S", "from": float("nan"), "to": 2}]}, ["finite"]),
    ({"allow_unexpected": "yes"}, ["allow_unexpected"]),
])
def test_bad_expectations_are_refused_clearly(doc, words):
    with pytest.raises(InputError) as err:
        parse_expectations(doc, "e.yaml")
    for w in words:
        assert w in str(err.value)


def test_expectations_file_round_trip(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("expect:\n  - {subject: S-1, from: 1, to: 4.5}\n  - {subject: S-2, from: 5, to: 9, count: 2, "
                 "label: twice}\nallow_unexpected: true\n")
    e = load_expectations(p)
    assert e.items == (Expectation("S-1", 1.0, 4.5, 1, ""), Expectation("S-2", 5.0, 9.0, 2, "twice"))
    assert e.allow_unexpected
    (tmp_path / "bad.yaml").write_text("expect: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        load_expectations(tmp_path / "bad.yaml")


def test_check_claims_each_alert_once_and_reports_the_rest():
    e = Expectations((Expectation("A", 0, 5), Expectation("B", 3, 8), Expectation("A", 10, 15)))
    res = check(e, [ev("A", 1.0), ev("B", 4.0), ev("A", 12.0)])
    assert res.ok and not res.unexpected
    res = check(e, [ev("A", 1.0), ev("A", 2.0), ev("C", 4.0)])   # A twice, B never, C unexpected
    names = {c.name: c for c in res.cases}
    assert not res.ok and res.failures == 4
    assert "got 2" in names["A alerts 1x between 0 s and 5 s"].message
    assert "got 0" in names["B alerts 1x between 3 s and 8 s"].message
    assert "got 0" in names["A alerts 1x between 10 s and 15 s"].message
    assert [u.subject_id for u in res.unexpected] == ["C"]
    assert check(Expectations((), allow_unexpected=True), [ev("C", 1.0)]).ok


def test_pipeline_case_fails_on_dropped_frames_in_fast_mode():
    e = Expectations(())
    assert not check(e, [], {"frames_processed": 10, "dropped_frames": 2}, fast=True).ok
    assert check(e, [], {"frames_processed": 10, "dropped_frames": 2}, fast=False).ok


def test_junit_xml_structure(tmp_path):
    r = RigResult([CaseResult("S-1 alerts 1x between 1 s and 4 s", "replay.expected", True, "", "2.00 s"),
                   CaseResult("no unexpected alerts", "replay.unexpected", False, "1 alert(s) matched no expectation",
                              "3.00 s: X")], [], {"fps": 41.5, "frames_processed": 120}, 3.2)
    p = write_junit(r, tmp_path / "out" / "j.xml")
    root = ET.parse(p).getroot()
    suite = root.find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1" and suite.get("time") == "3.200"
    props = {q.get("name"): q.get("value") for q in suite.iter("property")}
    assert props == {"fps": "41.5", "frames_processed": "120"}
    cases = suite.findall("testcase")
    assert cases[0].find("failure") is None and cases[0].find("system-out").text == "2.00 s"
    f = cases[1].find("failure")
    assert f.get("message") == "1 alert(s) matched no expectation" and f.text == "3.00 s: X"


# --- the whole replay -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rig(recognizer, faces_dir, tmp_path_factory):
    """A composed video, a rig unit with throwaway keys, a signed bundle and a rig config file."""
    tmp = tmp_path_factory.mktemp("rig")
    thr = validate({}).match.threshold_wanted
    people = cast(recognizer, faces_dir, listed=1, unlisted=1, seed=4, min_genuine=thr + 0.012,
                  max_impostor=thr - 0.05, prefix="R")
    actors = [Actor(p.label, f"h{i}", p.subject_id, 0.3 + 1.6 * i, 3.3 + 1.6 * i,
                    ((0.1, 0.35 + 0.2 * (i % 2)), (0.9, 0.35 + 0.2 * (i % 2))), (90, 120, 75, 110)[i % 4])
              for i, p in enumerate(people)]
    scene = Scene({f"h{i}": p.head for i, p in enumerate(people)}, actors, size=(960, 540), fps=12.0,
                  duration=max(a.end for a in actors) + 0.3, background=faces_dir / "video" / "vtest.avi")
    video = scene.write_video(tmp / "pass.avi")
    tu = ThrowawayUnit(tmp / "unit", "rig-01")
    bundle, _ = tu.sign(people, recognizer)
    (tmp / "rig.edgewl").write_bytes(bundle)
    cfg = tu.config.as_dict()
    (tmp / "rig.yaml").write_text(yaml.safe_dump({"unit": cfg["unit"]}))
    (tmp / "expected.yaml").write_text(yaml.safe_dump({"expect": scene.expected()}))
    return {"tmp": tmp, "scene": scene, "video": video, "people": people}


def _replay(rig, *extra):
    t = rig["tmp"]
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["replay", "--source", str(rig["video"]), "--bundle", str(t / "rig.edgewl"),
                     "--config", str(t / "rig.yaml"), *extra])
    return code, out.getvalue()


def test_replay_meets_the_expectations_and_writes_junit(rig):
    t = rig["tmp"]
    code, out = _replay(rig, "--expect", str(t / "expected.yaml"), "--junit", str(t / "ok.xml"),
                        "--json", str(t / "report.json"), "--detections", str(t / "dets.jsonl"))
    assert code == 0, out
    listed = [a for a in rig["scene"].actors if a.subject_id]
    assert out.count("  alert  ") == len(listed)
    assert "all expectations met" in out
    suite = ET.parse(t / "ok.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0"
    names = [c.get("name") for c in suite.findall("testcase")]
    # a case names the pass it checks (the expectation's label: who walked, which pass)
    assert f"pass {listed[0].label}: {listed[0].subject_id} alerts 1x" in " ".join(names)
    # --json: every alert with its frame, box, track and the track's start, in the walker's pass
    rep = json.loads((t / "report.json").read_text())
    assert rep["lockstep"] is True
    assert len(rep["alerts_raised"]) == len(listed)
    (a,) = [x for x in rep["alerts_raised"] if x["subject_id"] == listed[0].subject_id]
    assert a["subject_id"] == listed[0].subject_id and a["t"] == pytest.approx(a["frame"] / rig["scene"].fps)
    assert listed[0].start <= a["track_start_t"] <= a["t"] <= listed[0].end
    truth = dict((id(x), b) for x, b in rig["scene"].truth_at(a["t"]))[id(listed[0])]
    assert abs((a["box"][0] + a["box"][2]) / 2 - (truth[0] + truth[2]) / 2) < 0.5 * (truth[2] - truth[0])
    # --detections: one line per frame, the alert's track among that frame's detections
    lines = [json.loads(x) for x in (t / "dets.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(rig["scene"].n_frames))
    at = lines[a["frame"]]["detections"]
    assert any(d["track"] == a["track_id"] and d["box"] == a["box"] for d in at)
    assert "no unexpected alerts" in names
    props = {q.get("name") for q in suite.iter("property")}
    assert {"fps", "frames_processed", "dropped_frames", "detect_p95_ms", "capture_to_alert_p95_ms"} <= props


def test_replay_fails_when_the_expectation_is_wrong(rig):
    t = rig["tmp"]
    sid = next(a.subject_id for a in rig["scene"].actors if a.subject_id)
    (t / "wrong.yaml").write_text(yaml.safe_dump({"expect": [{"subject": sid, "from": 100.0, "to": 200.0},
                                                             {"subject": "NOBODY", "from": 0, "to": 100}]}))
    code, out = _replay(rig, "--expect", str(t / "wrong.yaml"), "--junit", str(t / "bad.xml"))
    assert code == 1
    suite = ET.parse(t / "bad.xml").getroot().find("testsuite")
    failures = {c.get("name"): c.find("failure") for c in suite.findall("testcase")}
    assert suite.get("failures") == "3"
    assert failures["no unexpected alerts"] is not None          # the real alert is now unexpected
    assert "got 0" in failures["NOBODY alerts 1x between 0 s and 100 s"].get("message")


def test_replay_refuses_a_bundle_for_another_unit(rig, tmp_path):
    other = ThrowawayUnit(tmp_path / "other", "rig-02")
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"unit": other.config.as_dict()["unit"]}))
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["replay", "--source", str(rig["video"]), "--bundle", str(rig["tmp"] / "rig.edgewl"),
                     "--config", str(tmp_path / "other.yaml")])
    assert code != 0


def test_replay_refuses_network_sources(rig):
    code = main(["replay", "--source", "rtsp://10.0.0.9/stream", "--config", str(rig["tmp"] / "rig.yaml")])
    assert code == 78
