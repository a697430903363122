"""Issue 14, items 2 and 5: entries after the signed head (an unsigned tail) and damaged lines.

A tail appended without the unit's key chains perfectly; today's verify called it intact and the
unit's next checkpoint signed over it. Damaged lines (not JSON, NaN, Infinity, deep nesting) made
verify, show, purge, report and the service's start crash."""
from __future__ import annotations

import json

import pytest

from edge.cli.main import main
from edge.privacy.audit import AuditLog, entry_hash, read_entries, verify
from edge.watchlist.keys import generate_device, save_device

T0 = 1_750_000_000.0


@pytest.fixture(scope="module")
def key():
    return generate_device("van-07")


def _log(tmp_path, key, n=5):
    log = AuditLog(tmp_path / "audit", signer=key, unit_id="van-07", checkpoint_every=100, clock=lambda: T0)
    for i in range(n):
        log.append("counts", {"frames": i})
    return log


def _forge(path, data=None):
    """Append an entry that chains perfectly, as anyone with file access can (no key needed)."""
    last = json.loads(path.read_bytes().splitlines()[-1])
    e = {"seq": last["seq"] + 1, "t": last["t"], "type": "adjudication",
         "data": data or {"event_id": "x", "outcome": "confirmed", "officer_id": "forger", "decided_at": last["t"],
                          "duplicate": False}, "prev": last["hash"]}
    e["hash"] = entry_hash(e)
    with open(path, "ab") as f:
        f.write(json.dumps(e, separators=(",", ":")).encode() + b"\n")
    return e


def test_an_appended_tail_is_reported_as_unsigned(tmp_path, key):
    log = _log(tmp_path, key)
    forged = _forge(log.path)
    res = verify(log.path, key)
    assert res.unsigned_tail == [forged["seq"]] and res.head_seq == forged["seq"] - 1
    assert "UNSIGNED TAIL" in res.summary() and f"signed through seq {forged['seq'] - 1}" in res.summary()
    strict = verify(log.path, key, strict=True)
    assert not strict.ok and [p.kind for p in strict.problems] == ["unsigned_tail"]
    assert strict.problems[0].line == forged["seq"]


def test_the_unit_never_signs_over_a_tail_it_did_not_write(tmp_path, key):
    log = _log(tmp_path, key)
    forged = _forge(log.path)
    unit = AuditLog(log.dir, signer=key, unit_id="van-07", clock=lambda: T0)   # the service starts again
    assert unit.problem and "not written by this unit" in unit.problem
    unit.append("counts", {"frames": 9})
    unit.checkpoint("test")
    entries = list(read_entries(log.path))
    seg = [e for e in entries if e["type"] == "segment"]
    assert len(seg) == 1 and seg[0]["data"]["unsigned_from_seq"] == forged["seq"]
    res = verify(log.path, key)
    assert not res.ok, "the forged entry verified as intact once the unit signed after it"
    assert [(p.kind, p.seq) for p in res.problems] == [("unsigned_tail", forged["seq"])]
    # a second start finds nothing new: no second segment
    AuditLog(log.dir, signer=key, unit_id="van-07", clock=lambda: T0).append("counts", {"frames": 10})
    assert sum(e["type"] == "segment" for e in read_entries(log.path)) == 1


def test_audit_verify_strict_and_report_fail_on_an_unsigned_tail(tmp_path, key, capsys):
    save_device(key, tmp_path / "etc")
    cfg = tmp_path / "unit.yaml"
    cfg.write_text(json.dumps({"unit": {"id": "van-07", "state_dir": str(tmp_path / "state"),
                                        "device_key": str(tmp_path / "etc" / "device.key")}}))
    log = AuditLog(tmp_path / "state" / "audit", signer=key, unit_id="van-07")
    log.append("service_start", {"pid": 1})
    _forge(log.path)
    assert main(["audit", "verify", "--config", str(cfg)]) == 0
    assert "UNSIGNED TAIL" in capsys.readouterr().out
    assert main(["audit", "verify", "--config", str(cfg), "--strict"]) == 65
    assert main(["report", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 65
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["audit"]["signed_through_seq"] == 1 and rep["audit"]["unsigned_tail"] == [2]
    assert "NOT signed: 1 entry after it" in (tmp_path / "r" / "report.html").read_text()


DAMAGE = {
    "not JSON": b"{this is not an entry",
    "NaN": b'{"seq":3,"t":"2025-06-15T15:06:40.000Z","type":"counts","data":{"x":NaN},"prev":"' + b"0" * 64
           + b'","hash":"' + b"1" * 64 + b'"}',
    "Infinity": b'{"seq":3,"t":"2025-06-15T15:06:40.000Z","type":"counts","data":{"x":-Infinity},"prev":"'
                + b"0" * 64 + b'","hash":"' + b"1" * 64 + b'"}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep nesting in data": b'{"seq":3,"t":"2025-06-15T15:06:40.000Z","type":"counts","data":{"x":'
                            + b"[" * 5000 + b"]" * 5000 + b'},"prev":"' + b"0" * 64 + b'","hash":"' + b"1" * 64 + b'"}',
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_line_is_a_finding_never_a_crash(tmp_path, key, case, capsys):
    save_device(key, tmp_path / "etc")
    cfg = tmp_path / "unit.yaml"
    cfg.write_text(json.dumps({"unit": {"id": "van-07", "state_dir": str(tmp_path / "state"),
                                        "device_key": str(tmp_path / "etc" / "device.key")}}))
    log = AuditLog(tmp_path / "state" / "audit", signer=key, unit_id="van-07")
    for i in range(4):
        log.append("counts", {"frames": i})
    lines = log.path.read_bytes().splitlines()
    lines.insert(2, DAMAGE[case])
    log.path.write_bytes(b"\n".join(lines) + b"\n")

    res = verify(log.path, key)                                   # reported by line
    assert not res.ok and any(p.kind == "malformed" and p.line == 3 for p in res.problems), res.problems
    assert len(list(read_entries(log.path))) == 4
    # the service starts (ServiceAudit.start opens the log, purges, writes service_start): damage recorded
    from edge.config import load_config
    from edge.privacy.service_audit import ServiceAudit
    sa = ServiceAudit.start(load_config(cfg))
    seg = [e for e in read_entries(log.path) if e["type"] == "segment"]
    assert len(seg) == 1 and seg[0]["data"]["first_damaged_line"] == 3
    assert "damaged line" in sa.audit.problem
    sa.stop("test")
    # and every command that reads the log answers (65 = the log does not verify), none crashes
    capsys.readouterr()
    assert main(["audit", "verify", "--config", str(cfg)]) == 65
    assert "malformed at line 3" in capsys.readouterr().out
    assert main(["audit", "show", "--config", str(cfg)]) == 0
    assert main(["audit", "purge", "--config", str(cfg)]) == 0
    assert main(["report", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 65
    assert "Traceback" not in capsys.readouterr().err
