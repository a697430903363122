"""Issue 14, item 11: every subcommand given bad paths (missing, unwritable, a FIFO, a file where a
folder belongs) or files with impossible dates answers with one line naming the problem and a
documented exit code, never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli.main import main
from edge.watchlist.keys import generate_device, generate_issuer, save_device, save_issuer

ROOT = Path(__file__).resolve().parents[2]
#: the exit codes edge-lfr documents (edge-lfr --help)
DOCUMENTED = {2, 65, 66, 69, 73, 74, 75, 77, 78}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-bad-paths")
    save_issuer(generate_issuer("hq"), d / "keys")
    save_device(generate_device("van-01"), d / "etc")
    pub = d / "keys" / "hq.issuer.pub.yaml"
    bad_pub = d / "keys" / "bad.issuer.pub.yaml"      # an impossible, unquoted date
    bad_pub.write_text(pub.read_text().replace(pub.read_text().split("created: ")[1].splitlines()[0],
                                               "2026-02-30T00:00:00Z"))
    bad_trust = d / "etc" / "bad-trust.yaml"
    bad_trust.write_text("version: 1\nissuers:\n- name: hq\n  valid_from: 2026-02-30T00:00:00Z\n")
    (d / "afile").write_text("x")
    os.mkfifo(d / "fifo")
    cfg = d / "unit.yaml"
    cfg.write_text(json.dumps({"unit": {"id": "van-01", "state_dir": str(d / "state"),
                                        "device_key": str(d / "etc" / "device.key"),
                                        "trust_file": str(d / "etc" / "trust.yaml")}}))
    bad_cfg = d / "bad-trust-unit.yaml"
    bad_cfg.write_text(json.dumps({"unit": {"id": "van-01", "state_dir": str(d / "state"),
                                            "device_key": str(d / "etc" / "device.key"),
                                            "trust_file": str(bad_trust)}}))
    return d


def _cases(d: Path):
    nodir = str(d / "afile" / "sub" / "out")            # a file where a folder belongs: ENOTDIR
    missing = str(d / "missing")
    cfg, bad_cfg = str(d / "unit.yaml"), str(d / "bad-trust-unit.yaml")
    return [
        ["config", "--check", missing],
        ["config", "--check", str(d / "fifo")],
        ["config", "--check", "/dev/zero"],
        ["run", "--config", missing],
        ["run", "--config", str(d / "fifo")],
        ["replay", "--source", missing, "--config", cfg],
        ["keys", "issuer", "--name", "x", "--out", nodir],
        ["keys", "device", "--unit-id", "van-02", "--out", nodir],
        ["keys", "device", "--unit-id", "van-02", "--out", str(d / "k2"), "--key-name", "../x"],
        ["keys", "trust", "add", "--issuer", str(d / "keys" / "hq.issuer.pub.yaml"), "--valid-from", "now",
         "--valid-until", "2026-02-30T00:00:00Z", "--trust", str(d / "t1.yaml")],
        ["keys", "trust", "add", "--issuer", str(d / "keys" / "bad.issuer.pub.yaml"), "--valid-from", "now",
         "--valid-until", "2099-01-01T00:00:00Z", "--trust", str(d / "t2.yaml")],
        ["keys", "trust", "add", "--issuer", str(d / "keys" / "hq.issuer.pub.yaml"), "--valid-from", "now",
         "--valid-until", "2099-01-01T00:00:00Z", "--trust", nodir],
        ["keys", "trust", "list", "--trust", str(d / "etc" / "bad-trust.yaml")],
        ["keys", "trust", "revoke", "abcdef0123", "--trust", str(d / "etc" / "bad-trust.yaml")],
        ["keys", "trust", "list", "--trust", str(d / "fifo")],
        ["watchlist", "inspect", missing, "--config", cfg],
        ["watchlist", "verify", str(d / "fifo"), "--config", cfg],
        ["watchlist", "load", "/dev/zero", "--config", cfg],
        ["watchlist", "load", missing, "--config", bad_cfg],
        ["watchlist", "status", "--config", bad_cfg],
        ["watchlist", "wipe", "--config", cfg, "--state-dir", nodir],
        ["watchlist", "build", "--images", missing, "--manifest", missing, "--issuer-key", missing,
         "--unit", missing, "--operation-id", "OP-1", "--authorising-officer", "Supt A", "--valid-until",
         "2026-02-30T00:00:00Z", "--out", nodir],
        ["audit", "verify", "--log", missing, "--no-signatures"],
        ["audit", "verify", "--log", str(d / "fifo"), "--no-signatures"],
        ["audit", "show", "--log", str(d / "afile")],
        ["audit", "purge", "--config", missing],
        ["report", "--log", str(d / "afile"), "--no-signatures", "--out", nodir],
        ["report", "--config", cfg, "--no-signatures", "--out", nodir],
        ["alerts", "--config", missing],
        ["alerts", "--schema", "--unit", "van 01"],
        ["bench", "alerts", "--out", nodir, "--count", "1", "--burst", "1"],
        ["eval", "lfw", "--images", missing, "--pairs", missing, "--out", nodir],
        ["models", "--models-dir", missing],
    ]


def test_every_subcommand_with_bad_paths_answers_in_one_line(env, capsys):
    failures = []
    for argv in _cases(env):
        try:
            code = main(argv)
        except SystemExit as exc:          # argparse's usage errors
            code = exc.code
        except BaseException as exc:       # noqa: BLE001 - this is what the test is about
            failures.append(f"{argv}: raised {type(exc).__name__}: {exc}")
            continue
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        if code == 0 and "Traceback" not in err:     # nothing wrong for this command (e.g. --schema)
            continue
        if code not in DOCUMENTED or "Traceback" in err or not lines or "internal error" in err:
            failures.append(f"{argv}: exit {code}: {err[-300:]!r}")
        elif not any(line.startswith(("edge-lfr: error:", "edge-lfr: warning:", "usage:")) for line in lines):
            failures.append(f"{argv}: exit {code} without an error line: {err[-300:]!r}")
    assert not failures, "\n".join(failures)


def test_the_console_script_prints_no_traceback(env):
    """The same through a real process (what systemd and a technician see)."""
    for argv in (["config", "--check", str(env / "fifo")],
                 ["keys", "trust", "list", "--trust", str(env / "etc" / "bad-trust.yaml")],
                 ["keys", "issuer", "--name", "x", "--out", str(env / "afile" / "out")]):
        r = subprocess.run([sys.executable, "-m", "edge.cli", *argv], capture_output=True, text=True, timeout=60,
                           cwd=ROOT)
        assert "Traceback" not in r.stderr and r.returncode in DOCUMENTED, (argv, r.returncode, r.stderr)
        assert r.stderr.startswith("edge-lfr: error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
