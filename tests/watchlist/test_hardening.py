"""Issue 14 (watchlist side): impossible dates in trust files, FIFOs and devices given as files,
key names that leave --out, bidi control characters in signed text, refused loads audited."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from edge.config import validate
from edge.privacy.audit import read_entries
from edge.watchlist.errors import BundleFormatError
from edge.watchlist.keys import (KeyFileError, TrustFileError, generate_device, load_trust, save_device,
                                 save_trust)
from edge.watchlist.unit import UnitStateError, UnitWatchlist
from tests.support.watchlists import HOUR, MODEL, YEAR, Clock, Pieces, build, make_keys, watchlist_cli


@pytest.fixture(scope="module")
def keys():
    return make_keys()


def _rig(tmp_path, keys):
    save_trust(keys.trust(), tmp_path / "trust.yaml")
    cfg = validate({"unit": {"id": "van-07", "state_dir": str(tmp_path / "state"),
                             "trust_file": str(tmp_path / "trust.yaml")},
                    "watchlist": {"max_bundle_bytes": 2_000_000}})
    clock = Clock()
    return UnitWatchlist(cfg, model_sha256=MODEL, device_key=keys.dev7, now=clock.now, monotonic=clock.mono,
                         boot_id=lambda: "b1")


IMPOSSIBLE = "2026-02-30T00:00:00Z"


def _impossible_trust(path, keys):
    text = path.read_text()
    doc_line = next(line for line in text.splitlines() if "valid_until" in line)
    path.write_text(text.replace(doc_line, f"  valid_until: {IMPOSSIBLE}"))   # unquoted: YAML's timestamp


def test_impossible_date_in_the_trust_file_is_a_trust_file_error_not_a_crash(tmp_path, keys):
    save_trust(keys.trust(), tmp_path / "trust.yaml")
    _impossible_trust(tmp_path / "trust.yaml", keys)
    with pytest.raises(TrustFileError, match="not valid YAML.*day is out of range"):
        load_trust(tmp_path / "trust.yaml")


def test_bad_trust_file_refuses_new_bundles_but_keeps_the_running_list(tmp_path, keys):
    unit = _rig(tmp_path, keys)
    unit.load(build(keys, serial=10))
    _impossible_trust(tmp_path / "trust.yaml", keys)
    with pytest.raises(TrustFileError):
        unit.poll()                                 # the service logs and audits this, then carries on
    assert unit.current() is not None, "the running valid list was taken down"
    with pytest.raises(TrustFileError):
        unit.load(build(keys, serial=11))
    assert unit.current().manifest.serial == 10
    # a restart on the bad file: nothing is deleted, the stored list comes back once the file is fixed
    restarted = UnitWatchlist(unit.config, model_sha256=MODEL, device_key=keys.dev7, now=Clock().now,
                              monotonic=Clock().mono, boot_id=lambda: "b1")
    with pytest.raises(TrustFileError):
        restarted.restore()
    assert (tmp_path / "state" / "watchlist" / "current.edgewl").exists()
    assert restarted.read_state()["status"] == "loaded"
    save_trust(keys.trust(), tmp_path / "trust.yaml")
    assert restarted.restore().manifest.serial == 10


def test_duplicate_keys_in_a_trust_file_are_refused(tmp_path, keys):
    save_trust(keys.trust(), tmp_path / "trust.yaml")
    p = tmp_path / "trust.yaml"
    p.write_text(p.read_text() + "version: 1\n")
    with pytest.raises(TrustFileError, match="duplicate key"):
        load_trust(p)


def _fifo(path):
    os.mkfifo(path)
    return path


def _no_hang(fn, seconds: float = 5.0):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "hangs on a named pipe"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_a_fifo_or_a_device_given_as_bundle_is_refused_without_hanging(tmp_path, keys):
    unit = _rig(tmp_path, keys)
    fifo = _fifo(tmp_path / "b.edgewl")
    with pytest.raises(BundleFormatError, match="named pipe"):
        _no_hang(lambda: unit.load(str(fifo)))
    with pytest.raises(BundleFormatError, match="device"):
        _no_hang(lambda: unit.load("/dev/zero"))


def test_key_trust_and_state_files_must_be_regular(tmp_path, keys):
    with pytest.raises(TrustFileError, match="named pipe"):
        _no_hang(lambda: load_trust(_fifo(tmp_path / "t.yaml")))
    from edge.watchlist.keys import load_device_key
    with pytest.raises(KeyFileError, match="device"):
        _no_hang(lambda: load_device_key("/dev/zero", "van-07"))
    unit = _rig(tmp_path, keys)
    unit.dir.mkdir(parents=True, exist_ok=True)
    _fifo(unit.state_path)
    with pytest.raises(UnitStateError, match="named pipe"):
        _no_hang(unit.read_state)


def test_key_name_cannot_leave_the_out_folder(tmp_path):
    for bad in ("../x", "/tmp/x", "a/b", "..", ".hidden", "x\n"):
        with pytest.raises(KeyFileError, match="key-name"):
            save_device(generate_device("van-07"), tmp_path / "out", key_name=bad)
    assert not (tmp_path / "x").exists()
    assert watchlist_cli(["keys", "device", "--unit-id", "van-07", "--out", str(tmp_path / "o2"),
                          "--key-name", "../escaped.key"]) == KeyFileError.exit_code
    assert not (tmp_path / "escaped.key").exists()


@pytest.mark.parametrize("text", ["Supt \u202eJ Smith", "Supt J\u2066 Smith", "A\u200bB", "A\u2028B",
                                  "A\u061cB", "\ufeffSupt"])
def test_bidi_and_invisible_characters_are_refused_in_signed_text(tmp_path, keys, text):
    from edge.watchlist.bundle import check_officer, check_source
    with pytest.raises(BundleFormatError, match="text-direction"):
        check_officer(text)
    with pytest.raises(BundleFormatError, match="text-direction"):
        check_source(text)
    # a bundle signed by a trusted issuer with it: refused by the unit, nothing loaded
    p = Pieces(keys)
    doc = p.copy_doc()
    doc["authorising_officer"] = text
    unit = _rig(tmp_path, keys)
    with pytest.raises(BundleFormatError, match="text-direction"):
        unit.load(p.craft(doc))
    assert unit.current() is None


def test_refused_watchlist_load_is_written_to_the_audit_log(tmp_path, keys, capsys):
    save_device(keys.dev7, tmp_path / "etc")
    now = int(time.time())
    save_trust(keys.trust(valid_from=now - YEAR, valid_until=now + YEAR), tmp_path / "etc" / "trust.yaml")
    cfg = tmp_path / "unit.yaml"
    cfg.write_text(json.dumps({"unit": {"id": "van-07", "state_dir": str(tmp_path / "state"),
                                        "device_key": str(tmp_path / "etc" / "device.key"),
                                        "trust_file": str(tmp_path / "etc" / "trust.yaml")}}))
    other = tmp_path / "other.edgewl"
    other.write_bytes(build(keys, serial=40, recipients=[keys.dev8.public], valid_from=now - 60,
                            valid_until=now + HOUR))
    assert watchlist_cli(["watchlist", "load", str(other), "--config", str(cfg)]) == 77
    entries = list(read_entries(tmp_path / "state" / "audit" / "audit.jsonl"))
    refused = [e for e in entries if e["type"] == "bundle_refused"]
    assert len(refused) == 1, entries
    assert refused[0]["data"]["error"] == "BundleNotForThisUnitError"
    assert "watchlist load" in refused[0]["data"]["source"]
