"""The tamper-evident audit log (edge/privacy/audit.py): append-only, hash-chained, signed checkpoints, signed
head, signed trims; ``verify`` finds every edited, deleted, reordered, inserted or truncated entry and
names its line and seq; the CLI ``edge-lfr audit verify``."""
from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.privacy.audit import GENESIS, AuditError, AuditLog, config_sha256, entry_hash, read_entries, verify
from edge.privacy.service_audit import CountsRecorder
from edge.config import validate
from edge.watchlist.keys import generate_device, save_device

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_750_000_000.0
#: every tampering case the tests run, with its detection (summed up by test_zz_tamper_tally)
TALLY = {"cases": 0, "detected_with_position": 0}


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@pytest.fixture(scope="module")
def key():
    return generate_device("van-07")


@pytest.fixture
def clock():
    return Clock()


def make_log(tmp_path, key, clock, n: int = 30, every: int = 5) -> AuditLog:
    log = AuditLog(tmp_path / "audit", signer=key, unit_id="van-07", checkpoint_every=every, clock=clock)
    for i in range(n):
        clock.advance(60)
        if i % 3 == 0:
            log.alert(event_id=f"00000000-0000-4000-8000-{i:012d}", subject_id=f"S{i:05d}", category="wanted",
                      score=0.96, threshold=0.95, track_id=i, bundle_id="b1")
        else:
            log.counts({"frames": 300, "faces": 7 + i, "gated": {"too_small": 2}, "alerts": 0})
    return log


def lines_of(log: AuditLog) -> list[bytes]:
    return log.path.read_bytes().splitlines(keepends=True)


def write_lines(log: AuditLog, lines: list[bytes]) -> None:
    log.path.write_bytes(b"".join(lines))


def rehash_from(lines: list[bytes], start: int) -> list[bytes]:
    """An attacker without the key: recompute every hash and link from line ``start`` (0-based)."""
    out = list(lines)
    prev = json.loads(out[start - 1])["hash"] if start > 0 else GENESIS
    for i in range(start, len(out)):
        e = json.loads(out[i])
        e["prev"] = prev
        e["hash"] = entry_hash(e)
        prev = e["hash"]
        out[i] = (json.dumps(e, separators=(",", ":")) + "\n").encode()
    return out


def check(log: AuditLog, key, kind: str, line: int | None, seq: int | None = None):
    res = verify(log.path, key)
    TALLY["cases"] += 1
    assert not res.ok, "tampering not detected"
    first = res.problems[0]
    assert first.kind == kind, f"expected {kind}, got {first}"
    if line is not None:
        assert first.line == line, f"expected line {line}, got {first}"
    if seq is not None:
        assert first.seq == seq, f"expected seq {seq}, got {first}"
    TALLY["detected_with_position"] += 1
    return res


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def test_chain_checkpoints_and_head(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock, n=30, every=5)
    res = verify(log.path, key)
    assert res.ok, res.problems
    assert res.entries == 36 and res.checkpoints == 6           # 30 entries + a checkpoint after every 5
    entries = list(read_entries(log.path))
    assert [e["seq"] for e in entries] == list(range(1, 37))
    assert entries[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:]))
    assert all(entries[i]["type"] == "checkpoint" for i in (5, 11, 17, 23, 29, 35))
    head = json.loads((log.dir / "audit.head.json").read_text())
    assert (head["seq"], head["hash"]) == (36, entries[-1]["hash"])
    assert "intact: 36 entries" in res.summary()
    # permissions: private
    assert (log.dir.stat().st_mode & 0o777) == 0o700 and (log.path.stat().st_mode & 0o777) == 0o600


def test_reopen_continues_the_chain(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock, n=7, every=5)
    again = AuditLog(log.dir, signer=key, unit_id="van-07", checkpoint_every=5, clock=clock)
    assert again.last_seq == 8
    for _ in range(4):
        again.counts({"frames": 1})
    # the checkpoint counter survived the reopen: 2 after the first checkpoint + 3 more = 5 -> checkpoint
    types = [e["type"] for e in read_entries(log.path)]
    assert types.count("checkpoint") == 2
    assert verify(log.path, key).ok


def test_two_writers_interleave_safely(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock, n=2)
    other = AuditLog(log.dir, signer=key, unit_id="van-07", checkpoint_every=5, clock=clock)
    for i in range(6):
        (log if i % 2 else other).counts({"frames": i})
    log.trim(T0 + 90)               # one trims while the other holds stale state
    other.counts({"frames": 99})
    res = verify(log.path, key)
    assert res.ok, res.problems


def test_writers_in_separate_processes(tmp_path, key):
    d = tmp_path / "audit"
    save_device(key, tmp_path / "keys")
    code = ("import sys; from edge.privacy.audit import AuditLog; from edge.watchlist.keys import load_device_key;"
            "k = load_device_key(sys.argv[1], 'van-07');"
            "a = AuditLog(sys.argv[2], signer=k, unit_id='van-07', checkpoint_every=7);"
            "[a.counts({'frames': i, 'writer': int(sys.argv[3])}) for i in range(40)]")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "keys" / "device.key"), str(d), str(w)],
                              env=env) for w in range(2)]
    assert all(p.wait(60) == 0 for p in procs)
    res = verify(d / "audit.jsonl", key)
    assert res.ok, res.problems
    counts = [e for e in read_entries(d / "audit.jsonl") if e["type"] == "counts"]
    assert len(counts) == 80


def test_only_ids_and_counts_can_be_written(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock, n=1)
    crop = base64.b64encode(os.urandom(3000)).decode()
    for bad in ({"probe_jpeg": crop}, {"embedding": [0.1] * 128}, {"blob": b"\xff\xd8\xff"},
                {"arr": np.zeros(128, np.float32)}, {"x": float("nan")}, {"deep": {"a": {"b": {"c": 1}}}}):
        with pytest.raises(AuditError):
            log.append("error", bad)
    with pytest.raises(AuditError):
        log.append("checkpoint", {})           # signed records are written by the log itself
    with pytest.raises(AuditError):
        log.append("selfie", {})
    # numpy scalars are fine (converted)
    log.counts({"faces": np.int64(3), "score": np.float32(0.5)})
    assert verify(log.path, key).ok
    with pytest.raises(TypeError):
        log.alert(event_id="e", subject_id="S", category="wanted", score=1.0, threshold=0.9, probe_jpeg=crop)


def test_torn_last_line_is_cut_and_logged(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock, n=4)
    whole = log.path.read_bytes()
    log.path.write_bytes(whole + b'{"seq":99,"t":"2025-')         # a crash in the middle of an append
    res = verify(log.path, key)
    assert [p.kind for p in res.problems] == ["torn"] and res.problems[0].line == 5
    again = AuditLog(log.dir, signer=key, unit_id="van-07", clock=clock)
    assert again.last_seq == 5
    e = list(read_entries(log.path))[-1]
    assert e["type"] == "log_repaired" and e["data"]["discarded_bytes"] == 20
    assert verify(log.path, key).ok


def test_service_entries_and_config_hash(tmp_path, key, clock):
    cfg = validate({"unit": {"id": "van-07"}, "privacy": {"location_label": "Stratford, E15"}})
    log = make_log(tmp_path, key, clock, n=0)
    e = log.service_start(cfg, model_sha256="ab" * 32, version="0.1.0")
    assert e["data"]["config_sha256"] == config_sha256(cfg) and len(config_sha256(cfg)) == 64
    assert e["data"]["location"] == "Stratford, E15"
    assert e["data"]["thresholds"] == {"wanted": 0.95, "missing": 0.95, "vulnerable": 0.95}
    other = validate({"unit": {"id": "van-07"}, "match": {"threshold_wanted": 0.9}})
    assert config_sha256(other) != config_sha256(cfg)
    log.bundle_refused(ValueError("bundle expired at 2025-06-01T00:00:00Z"), source="/tmp/b.edgewl")
    log.adjudication({"event_id": "e1", "outcome": "rejected", "officer_id": "off-1",
                      "decided_at": "2025-06-15T15:00:00.000Z", "duplicate": False})
    log.error("camera", OSError("camera unplugged"))
    log.service_stop("SIGTERM", frames=100, alerts=0)
    types = [e["type"] for e in read_entries(log.path)]
    assert types == ["service_start", "bundle_refused", "adjudication", "error", "service_stop", "checkpoint"]
    assert verify(log.path, key).ok


def test_counts_recorder_writes_increments(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock, n=0)
    mono = Clock(0.0)
    state = {"frames": 0, "faces": 0, "gated": {"too_small": 0}, "alerts": 0}
    rec = CountsRecorder(log, lambda: json.loads(json.dumps(state)), 300, clock=mono)
    assert rec.poll() is None
    state.update(frames=900, faces=12, gated={"too_small": 3}, alerts=1)
    mono.advance(300)
    e = rec.poll()
    assert e["data"] == {"frames": 900, "faces": 12, "gated": {"too_small": 3}, "alerts": 1, "interval_s": 300.0}
    state.update(frames=1500, faces=20, gated={"too_small": 3, "blurred": 2})
    mono.advance(100)
    e = rec.poll(force=True)
    assert e["data"] == {"frames": 600, "faces": 8, "gated": {"blurred": 2}, "alerts": 0, "interval_s": 100.0}


# ---------------------------------------------------------------------------------------------
# tampering: each case is detected, with its kind and position
# ---------------------------------------------------------------------------------------------


def _edit(line: bytes, **changes) -> bytes:
    e = json.loads(line)
    e["data"].update(changes)
    return (json.dumps(e, separators=(",", ":")) + "\n").encode()


def test_edited_entry(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    ls[9] = _edit(ls[9], score=0.5)                      # line 10: an alert's score
    write_lines(log, ls)
    check(log, key, "edited", 10, 10)


def test_edited_and_rehashed_entry(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    e = json.loads(ls[9])
    e["data"]["subject_id"] = "S99999"
    e["hash"] = entry_hash(e)
    ls[9] = (json.dumps(e) + "\n").encode()
    write_lines(log, ls)
    check(log, key, "edited", 10, 10)


def test_edited_and_everything_after_rehashed(tmp_path, key, clock):
    """Without the unit key the next signed checkpoint (and the head) no longer verify."""
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    ls[8] = _edit(ls[8], faces=0)                        # line 9
    write_lines(log, rehash_from(ls, 8))
    res = check(log, key, "bad_signature", 12, 12)      # the checkpoint after it, at line 12
    assert "after line 6" in res.problems[0].message    # ... names the span since the previous good one


def test_deleted_entry(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    del ls[13]                                           # seq 14
    write_lines(log, ls)
    res = check(log, key, "deleted", 14, 15)
    assert "entry seq 14 is missing" in res.problems[0].message


def test_deleted_several_entries(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    del ls[3:9]
    write_lines(log, ls)
    res = check(log, key, "deleted", 4, 10)
    assert "seq 4..9" in res.problems[0].message


def test_deleted_first_entries(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    write_lines(log, lines_of(log)[4:])
    res = check(log, key, "deleted", 1, 5)
    assert "entries 1..4" in res.problems[0].message


def test_deleted_last_entries(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    write_lines(log, ls[:-3])
    res = check(log, key, "truncated", 33, 33)
    assert "34..36" in res.problems[0].message


def test_truncation_against_a_head_kept_elsewhere(tmp_path, key, clock):
    """Someone who kept an older (validly signed) head can put it back after cutting the entries
    written since: the log is then a valid prefix and the unit alone cannot tell. A copy of a
    later head kept elsewhere (e.g. at headquarters) shows the cut."""
    log = make_log(tmp_path, key, clock, n=10)
    old_head = (log.dir / "audit.head.json").read_bytes()
    for i in range(5):
        log.counts({"frames": i})
    kept = tmp_path / "hq-copy.head.json"
    kept.write_bytes((log.dir / "audit.head.json").read_bytes())
    ls = lines_of(log)
    write_lines(log, ls[:-5])
    (log.dir / "audit.head.json").write_bytes(old_head)
    assert verify(log.path, key).ok                                # the documented limit
    res = verify(log.path, key, head_path=kept)
    TALLY["cases"] += 1
    assert not res.ok and res.problems[0].kind == "truncated" and res.problems[0].seq == 13
    assert "entries 14..18 were removed" in res.problems[0].message
    TALLY["detected_with_position"] += 1


def test_head_removed_or_forged(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    head = log.dir / "audit.head.json"
    saved = head.read_bytes()
    head.unlink()
    check(log, key, "head_missing", None)
    doc = json.loads(saved)
    doc["seq"] = 30
    head.write_text(json.dumps(doc))
    res = verify(log.path, key)
    TALLY["cases"] += 1
    assert any(p.kind == "bad_signature" and p.line is None for p in res.problems)
    TALLY["detected_with_position"] += 1


def test_reordered_adjacent_entries(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    ls[14], ls[15] = ls[15], ls[14]
    write_lines(log, ls)
    check(log, key, "reordered", 15, 16)


def test_reordered_first_two_entries(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    ls[0], ls[1] = ls[1], ls[0]
    write_lines(log, ls)
    check(log, key, "reordered", 1, 2)


def test_entry_moved_far(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    moved = ls.pop(4)                                    # seq 5 ...
    ls.insert(20, moved)                                 # ... to line 21
    write_lines(log, ls)
    res = check(log, key, "reordered", 5, 6)             # seq 6 is at line 5, its predecessor ...
    assert "at line 21" in res.problems[0].message       # ... seq 5 turns up at line 21


def test_inserted_forged_entry(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    prev = json.loads(ls[9])
    forged = {"seq": prev["seq"] + 1, "t": prev["t"], "type": "adjudication",
              "data": {"event_id": "x", "outcome": "confirmed", "officer_id": "o", "decided_at": prev["t"],
                       "duplicate": False}, "prev": prev["hash"]}
    forged["hash"] = entry_hash(forged)
    ls.insert(10, (json.dumps(forged) + "\n").encode())
    write_lines(log, ls)
    check(log, key, "inserted", 11, 11)


def test_inserted_copy_of_an_entry(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    ls.insert(20, ls[3])                                 # replay an old alert
    write_lines(log, ls)
    check(log, key, "inserted", 21, 4)


def test_inserted_and_renumbered_without_the_key(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    e = json.loads(ls[6])
    e["data"] = {"frames": 1, "faces": 0}
    ls.insert(7, (json.dumps(e) + "\n").encode())
    for i in range(7, len(ls)):
        d = json.loads(ls[i])
        d["seq"] = i + 1
        ls[i] = (json.dumps(d) + "\n").encode()
    write_lines(log, rehash_from(ls, 7))
    res = check(log, key, "bad_signature", 13, 13)
    assert "after line 6" in res.problems[0].message


def test_forged_checkpoint_with_another_key(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    rogue = AuditLog(tmp_path / "rogue", signer=generate_device("van-07"), unit_id="van-07", clock=clock)
    ls = lines_of(log)
    for i in range(6):
        rogue.counts({"frames": i})
    rogue.checkpoint("x")
    forged = json.loads(lines_of(rogue)[-1])
    forged["seq"], forged["prev"] = 31, json.loads(ls[29])["hash"]
    forged["hash"] = entry_hash(forged)
    ls[30] = (json.dumps(forged) + "\n").encode()
    write_lines(log, rehash_from(ls, 31))
    check(log, key, "bad_signature", 31, 31)
    # and with the rogue key, the real checkpoints fail instead: the verifier's key decides
    assert not verify(log.path, rogue.public).ok


def test_garbage_line(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)
    ls[2] = b"hello\n"
    write_lines(log, ls)
    check(log, key, "malformed", 3)


def test_random_tampering_is_always_detected_where_it_happened(tmp_path, key, clock):
    """200 random single tamperings (edit, edit+rehash, delete, swap, insert, truncate) of a 60-entry
    log: each one detected, the first problem at the tampered line."""
    log = make_log(tmp_path, key, clock, n=50, every=10)
    pristine = log.path.read_bytes()
    head = (log.dir / "audit.head.json").read_bytes()
    rng = random.Random(6)
    for trial in range(200):
        ls = pristine.splitlines(keepends=True)
        n = len(ls)
        op = rng.choice(["edit", "rehash", "delete", "swap", "insert", "truncate"])
        k = rng.randrange(1, n - 1)           # 0-based, never the last line (truncate covers it)
        if op == "edit":
            ls[k] = _edit(ls[k], tampered=trial)
            want = ("edited", k + 1)
        elif op == "rehash":
            e = json.loads(ls[k])
            e["data"]["tampered"] = trial
            e["hash"] = entry_hash(e)
            ls[k] = (json.dumps(e) + "\n").encode()
            want = ("edited", k + 1)
        elif op == "delete":
            del ls[k]
            want = ("deleted", k + 1)
        elif op == "swap":
            ls[k], ls[k + 1] = ls[k + 1], ls[k]
            want = ("reordered", k + 1)
        elif op == "insert":
            prev = json.loads(ls[k - 1])
            f = {"seq": prev["seq"] + 1, "t": prev["t"], "type": "counts", "data": {"faces": trial},
                 "prev": prev["hash"]}
            f["hash"] = entry_hash(f)
            ls.insert(k, (json.dumps(f) + "\n").encode())
            want = ("inserted", k + 1)
        else:
            cut = rng.randrange(1, 6)
            ls = ls[:-cut]
            want = ("truncated", len(ls))
        log.path.write_bytes(b"".join(ls))
        (log.dir / "audit.head.json").write_bytes(head)
        res = verify(log.path, key)
        TALLY["cases"] += 1
        assert not res.ok, f"trial {trial}: {op} at line {k + 1} not detected"
        got = (res.problems[0].kind, res.problems[0].line)
        if op == "rehash" and json.loads(pristine.splitlines()[k])["type"] == "checkpoint":
            want = ("bad_signature", k + 1)       # a re-hashed checkpoint: its signature fails first
        assert got == want, f"trial {trial}: {op} at line {k + 1}: got {res.problems[0]}"
        TALLY["detected_with_position"] += 1


# ---------------------------------------------------------------------------------------------
# retention of the log itself
# ---------------------------------------------------------------------------------------------


def test_trim_keeps_the_rest_verifiable(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock, n=30, every=5)          # entries at T0+60 .. T0+1800
    removed = log.trim(T0 + 60 * 10 + 1)
    entries = list(read_entries(log.path))
    assert removed == 12                                          # 10 entries + 2 checkpoints before the cutoff
    assert entries[0]["seq"] == 13 and entries[-1]["type"] == "audit_trim"
    assert entries[-1]["data"]["first_seq"] == 13 and entries[-1]["data"]["removed"] == 12
    res = verify(log.path, key)
    assert res.ok, res.problems
    assert res.trims == 1
    # a second trim, then appends: still verifiable
    clock.advance(60)
    assert log.trim(T0 + 60 * 20 + 1) > 0
    log.counts({"frames": 5})
    assert verify(log.path, key).ok
    # removing more than the last trim said: detected
    ls = lines_of(log)
    write_lines(log, ls[2:])
    check(log, key, "deleted", 1)


def test_trim_everything(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock, n=8)
    assert log.trim(T0 + 10 ** 6) == 9
    entries = list(read_entries(log.path))
    assert [e["type"] for e in entries] == ["audit_trim"]
    assert verify(log.path, key).ok
    log.counts({"frames": 1})
    assert verify(log.path, key).ok


def test_trim_record_cannot_be_forged_without_the_key(tmp_path, key, clock):
    log = make_log(tmp_path, key, clock)
    ls = lines_of(log)[10:]                              # cut a prefix ...
    first = json.loads(ls[0])
    last = json.loads(ls[-1])
    fake = {"seq": last["seq"] + 1, "t": last["t"], "type": "audit_trim",
            "data": {"unit_id": "van-07", "first_seq": first["seq"], "first_prev": first["prev"], "removed": 10,
                     "before": last["t"], "signer": json.loads(lines_of(log)[5])["data"]["signer"],
                     "sig": base64.b64encode(b"\0" * 64).decode()},
            "prev": last["hash"]}
    fake["hash"] = entry_hash(fake)
    write_lines(log, ls + [(json.dumps(fake) + "\n").encode()])   # ... and claim it was a purge
    res = check(log, key, "bad_signature", 27)
    assert "audit_trim" in res.problems[0].message


def test_crash_during_trim_leaves_the_old_log(tmp_path, key, clock, monkeypatch):
    log = make_log(tmp_path, key, clock, n=10)
    before = log.path.read_bytes()

    def boom(src, dst):
        raise OSError("power cut")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        log.trim(T0 + 300)
    monkeypatch.undo()
    assert log.path.read_bytes() == before
    assert not list(log.dir.glob(".audit.jsonl.tmp-*"))
    assert verify(log.path, key).ok


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_cli_verify(tmp_path, key, clock):
    save_device(key, tmp_path / "keys")
    state = tmp_path / "state"
    cfg = tmp_path / "unit.yaml"
    cfg.write_text(f"unit:\n  id: van-07\n  state_dir: {state}\n  device_key: {tmp_path / 'keys' / 'device.key'}\n")
    log = make_log(state, key, clock)
    ok = _cli("audit", "verify", "--config", str(cfg))
    assert ok.returncode == 0, ok.stderr
    assert "audit log intact: 36 entries" in ok.stdout
    ok2 = _cli("audit", "verify", "--log", str(log.path), "--unit-public",
               str(tmp_path / "keys" / "van-07.unit.yaml"), "--json")
    assert ok2.returncode == 0 and json.loads(ok2.stdout)["ok"] is True
    ls = lines_of(log)
    ls[16] = _edit(ls[16], score=0.99)
    write_lines(log, ls)
    bad = _cli("audit", "verify", "--config", str(cfg))
    assert bad.returncode == 65
    assert "edited at line 17, seq 17" in bad.stdout
    shown = _cli("audit", "show", "--config", str(cfg), "--type", "alert", "--last", "2")
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 2 and "alert" in shown.stdout


def test_zz_tamper_tally():
    """Every tampering case above was detected with its position (the figure in docs/privacy.md)."""
    if TALLY["cases"] == 0:
        pytest.skip("run with the tampering tests")
    print(f"\naudit tampering cases: {TALLY['cases']}, detected with position: {TALLY['detected_with_position']}")
    assert TALLY["detected_with_position"] == TALLY["cases"]


# ---------------------------------------------------------------------------------------------
# the service's side
# ---------------------------------------------------------------------------------------------


class FakePipeline:
    """What the service audit reads of a pipeline: :meth:`edge.appliance.pipeline.Pipeline.counts`."""

    def __init__(self):
        self.frames, self.faces, self.too_small = 0, 0, 0

    def counts(self) -> dict:
        return {"frames": self.frames, "faces": self.faces, "embeddings": 0, "gated": {"too_small": self.too_small},
                "alerts": 0, "dropped_frames": 0}


def test_service_audit_records_a_run(tmp_path):
    from edge.privacy.service_audit import ServiceAudit
    from edge.watchlist.keys import save_trust
    from edge.watchlist.unit import UnitWatchlist
    from tests.support.watchlists import MODEL, Clock as WClock, build, make_keys

    keys = make_keys()
    save_trust(keys.trust(), tmp_path / "trust.yaml")
    wc = WClock()
    cfg = validate({"unit": {"id": "van-07", "state_dir": str(tmp_path / "state"), "trust_file": str(tmp_path / "trust.yaml")},
                    "watchlist": {"max_subjects": 50, "max_bundle_bytes": 2_000_000},
                    "privacy": {"audit_stats_seconds": 10, "purge_interval_seconds": 60}})
    unit = UnitWatchlist(cfg, model_sha256=MODEL, device_key=keys.dev7, now=wc.now, monotonic=wc.mono,
                         boot_id=lambda: "b")
    unit.load(build(keys, serial=10, n=6, valid_from=int(wc.t - 3600), valid_until=int(wc.t + 7200)))
    mono = Clock(0.0)
    sa = ServiceAudit.start(cfg, unit=unit, model_sha256=MODEL, version="0.1.0", device_key=keys.dev7, clock=wc.now)
    sa.mono = mono
    sa._next_purge = 60
    sa.restored(unit.restore())
    p = FakePipeline()
    for step in range(1, 8):
        mono.advance(10)
        wc.advance(10)
        p.frames += 150
        p.faces += 3
        p.too_small += 1
        sa.tick(p)
    ev = type("Ev", (), dict(event_id="00000000-0000-4000-8000-000000000001", subject_id="S00002",
                             category="vulnerable", score=0.97, threshold=0.95, margin=0.1, track_id=4,
                             outbox_seq=1))()
    sa.on_alert(ev)
    hook = sa.wrap_adjudication(lambda adj: {"event_id": adj["event_id"], "outcome": "confirmed",
                                             "officer_id": "o1", "decided_at": "2025-06-15T15:10:00.000Z",
                                             "duplicate": False})
    assert hook({"event_id": ev.event_id})["outcome"] == "confirmed"
    unit.wipe("operator ended the deployment")
    sa.tick(p)
    sa.stop("SIGTERM", p)
    entries = list(read_entries(sa.audit.path))
    types = [e["type"] for e in entries]
    assert types[:3] == ["purge", "service_start", "bundle_loaded"]
    assert types.count("counts") == 7 and "purge" in types[3:]
    counts = [e["data"] for e in entries if e["type"] == "counts"]
    assert sum(c["frames"] for c in counts) == 1050 and sum(c["faces"] for c in counts) == 21
    assert sum(c.get("gated", {}).get("too_small", 0) for c in counts) == 7
    a = next(e["data"] for e in entries if e["type"] == "alert")
    assert a["bundle_id"] == unit.read_state()["bundle_id"] and a["subject_id"] == "S00002"
    deleted = next(e["data"] for e in entries if e["type"] == "watchlist_deleted")
    assert "operator ended the deployment" in deleted["reason"]
    assert types[-2:] == ["service_stop", "checkpoint"]
    assert entries[-2]["data"]["frames"] == 1050
    assert verify(sa.audit.path, keys.dev7).ok
