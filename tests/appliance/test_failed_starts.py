"""Every ``edge-lfr run`` start gets exactly one stop in the audit log, failures included (issue 17,
item 4), and input is checked before the environment (item 7): a refused or unusable ``--source``
is reported as such (before any missing CA file) and exits 78 / 65 without a start entry; a start
that fails later (missing CA file) writes ``service_start``, an ``error`` and one ``service_stop``
with its reason and exit code, and the report counts them. The real CLI in a subprocess, the real
models and audit log."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.privacy.audit import read_entries, verify
from edge.privacy.report import build_report
from edge.tools.rig import ThrowawayUnit

ROOT = Path(__file__).resolve().parents[2]


def _run(cfg_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg_path), *args],
                          capture_output=True, text=True, timeout=120, cwd=str(cfg_path.parent), env=env)


@pytest.fixture()
def unit(tmp_path, faces_dir):
    tu = ThrowawayUnit(tmp_path / "unit", "van-17")
    tu.with_config(mqtt={"ca_file": str(tmp_path / "missing-ca.crt"), "cert_file": str(tmp_path / "u.crt"),
                         "key_file": str(tmp_path / "u.key")},
                   camera={"source": "file", "path": str(faces_dir / "video" / "vtest.avi"), "pace": "fast"},
                   pipeline={"workers": 1})
    cfg_path = tmp_path / "unit.yaml"
    cfg_path.write_text(yaml.safe_dump(tu.config_dict))
    return tu, cfg_path


def _entries(tu) -> list[dict]:
    log = Path(tu.config.unit.state_dir) / "audit" / "audit.jsonl"
    return list(read_entries(log)) if log.exists() else []


def test_a_refused_source_is_reported_before_the_missing_ca_and_writes_no_start(unit, tmp_path):
    tu, cfg = unit
    r = _run(cfg, "--source", "rtsp://192.0.2.1/stream")
    assert r.returncode == 78, r.stderr
    assert "network" in r.stderr.lower() and "ca" not in r.stderr.lower().split("error:")[-1].split()[:3]
    assert "missing-ca.crt" not in r.stderr and "Traceback" not in r.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    r = _run(cfg, "--source", str(notes))
    assert r.returncode == 65 and "not a video file" in r.stderr and "missing-ca.crt" not in r.stderr, r.stderr
    r = _run(cfg, "--source", str(tmp_path / "gone.avi"))
    assert r.returncode == 65 and "no such video file" in r.stderr, r.stderr
    assert [e["type"] for e in _entries(tu) if e["type"].startswith("service_")] == []


def test_a_start_that_fails_gets_an_error_and_exactly_one_stop_with_its_exit_code(unit):
    tu, cfg = unit
    for _ in range(2):
        r = _run(cfg)
        assert r.returncode == 78, r.stderr
        assert "missing-ca.crt not found" in r.stderr and "Traceback" not in r.stderr
    entries = _entries(tu)
    kinds = [e["type"] for e in entries if e["type"] in ("service_start", "error", "service_stop")]
    assert kinds == ["service_start", "error", "service_stop"] * 2
    stops = [e["data"] for e in entries if e["type"] == "service_stop"]
    assert all(s["exit_code"] == 78 and "start-up" in s["reason"] and "ConfigError" in s["reason"] for s in stops)
    errors = [e["data"] for e in entries if e["type"] == "error"]
    assert all(e["error"] == "ConfigError" and "missing-ca.crt" in e["message"] for e in errors)
    assert verify(Path(tu.config.unit.state_dir) / "audit" / "audit.jsonl", tu.device.private_ed25519
                  if hasattr(tu.device, "private_ed25519") else tu.device).ok
    rep = build_report(entries, start=0, end=4e9)
    assert rep["service"]["starts"] == 2 and rep["service"]["stops"] == 2 and rep["service"]["errors"] == 2
