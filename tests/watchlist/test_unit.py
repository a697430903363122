"""The unit side: every refusal leaves the running list untouched; atomic swap, expiry, wipe,
rollback, clock handling, restart, and the unit commands of the CLI."""
from __future__ import annotations

import json
import random
import threading
import time

import pytest

from edge.watchlist.errors import (BundleDecryptError, BundleError, BundleExpiredError, BundleFormatError,
                                BundleIntegrityError, BundleLimitError, BundleModelMismatchError,
                                BundleNotForThisUnitError, BundleNotYetValidError, BundleRollbackError,
                                BundleSignatureError, BundleUntrustedIssuerError)
from edge.config import validate
from edge.watchlist.keys import TrustStore, save_trust
from edge.watchlist.safetar import TarEntry
from edge.watchlist.unit import UnitStateError, UnitWatchlist
from tests.support.watchlists import (HOUR, MODEL, T0, YEAR, Clock, Pieces, bomb_payload, build, make_keys, sealed, watchlist_cli,
                        trusted, unit_vectors)


@pytest.fixture(scope="module")
def keys():
    return make_keys()


@pytest.fixture(scope="module")
def pieces(keys):
    return Pieces(keys, serial=50)


@pytest.fixture(scope="module")
def bundle_a(keys):
    return build(keys, serial=10, n=4, seed=0)


@pytest.fixture(scope="module")
def bundle_b(keys):
    return build(keys, serial=11, n=5, seed=1, prefix="B")


def unit_config(tmp_path, **watchlist):
    return validate({"unit": {"id": "van-07", "state_dir": str(tmp_path / "state"),
                              "trust_file": str(tmp_path / "trust.yaml")},
                     "watchlist": {"max_subjects": 50, "max_bundle_bytes": 2_000_000, **watchlist}})


class Rig:
    """A unit with a controllable clock and a trust file on disk."""

    def __init__(self, tmp_path, keys, trust=None, boot="boot-1", **watchlist):
        self.tmp = tmp_path
        self.keys = keys
        self.clock = Clock()
        self.boot = boot
        self.set_trust(trust or keys.trust())
        self.cfg = unit_config(tmp_path, **watchlist)
        self.unit = self.new_unit()

    def new_unit(self, **kw):
        return UnitWatchlist(self.cfg, model_sha256=MODEL, device_key=self.keys.dev7, now=self.clock.now,
                             monotonic=self.clock.mono, boot_id=lambda: self.boot, **kw)

    def set_trust(self, store: TrustStore):
        save_trust(store, self.tmp / "trust.yaml")

    def files(self) -> dict:
        d = self.tmp / "state" / "watchlist"
        return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


@pytest.fixture
def rig(tmp_path, keys):
    return Rig(tmp_path, keys)


def probe_result(live):
    m = live.matcher.match(unit_vectors(4, seed=0)[2])
    return m.subject_id, round(m.score, 6)


# ---------------------------------------------------------------------------------- loading


def test_load_match_and_thumbnail(rig, bundle_a):
    live = rig.unit.load(bundle_a)
    assert rig.unit.current() is live
    m = live.matcher.match(unit_vectors(4, seed=0)[2])
    assert m.subject_id == "S00002" and m.is_hit
    assert live.thumbnail("S00002").startswith(b"\xff\xd8")
    st = json.loads(rig.files()["state.json"])
    assert st["status"] == "loaded" and st["last_serial"] == 10
    assert rig.files()["current.edgewl"] == bundle_a
    mode = (rig.tmp / "state" / "watchlist" / "current.edgewl").stat().st_mode & 0o777
    assert mode == 0o600


def test_the_loaded_list_is_matched_with_the_calibrated_policy_of_the_config(tmp_path, keys, bundle_a):
    # default: cohort-normalised calibrated scores, one threshold from match.target_fpir and the
    # list's size, and the calibrated meaning an alert carries
    rig = Rig(tmp_path / "a", keys)
    live = rig.unit.load(bundle_a)
    pol = live.matcher.policy
    assert pol is not None and pol.target_fpir == 0.001 and pol.watchlist_size == len(live.manifest.subjects)
    m = live.matcher.match(unit_vectors(4, seed=0)[2])
    assert m.is_hit and 0.0 <= m.score <= 1.0 and m.threshold == pytest.approx(pol.threshold)
    meaning = live.matcher.meaning(m)
    assert meaning["watchlist_size"] == len(live.manifest.subjects) and meaning["fmr"] < pol.target_fmr
    # a stricter target raises the threshold; switching normalisation off gives raw cosines
    strict = Rig(tmp_path / "b", keys)
    strict.cfg = validate({**strict.cfg.as_dict(), "match": {"target_fpir": 1e-6}})
    assert strict.new_unit().load(bundle_a).matcher.policy.threshold > pol.threshold
    raw = Rig(tmp_path / "c", keys)
    raw.cfg = validate({**raw.cfg.as_dict(), "match": {"score_normalisation": False}})
    live_raw = raw.new_unit().load(bundle_a)
    assert live_raw.matcher.policy is None and live_raw.matcher.meaning(m) is None
    r = live_raw.matcher.match(unit_vectors(4, seed=0)[2])
    assert r.threshold == 0.95 and r.score == pytest.approx(1.0, abs=1e-5)


def test_load_from_path_and_same_bundle_twice_is_idempotent(rig, bundle_a):
    p = rig.tmp / "a.edgewl"
    p.write_bytes(bundle_a)
    rig.unit.load(p)
    rig.unit.load(p)
    assert rig.unit.current().manifest.serial == 10


def _case_builders():
    """name -> (function(keys, pieces, rig) -> bytes, expected error, message regex)."""
    def wrong_issuer(k, p, r):
        return build(k, serial=20, issuer=k.other_issuer)

    # key rotation: the running list is signed by the current key; the old key is the problem
    def revoked(k, p, r):
        r.set_trust(TrustStore((trusted(k.issuer), trusted(k.other_issuer, revoked=True, note="laptop stolen"))))
        return build(k, serial=20, issuer=k.other_issuer)

    def key_expired(k, p, r):
        r.set_trust(TrustStore((trusted(k.issuer), trusted(k.other_issuer, T0 - 2 * YEAR, T0 - 1))))
        return build(k, serial=20, issuer=k.other_issuer, valid_from=T0 - 2 * HOUR, issued_at=T0 - 2 * HOUR)

    def key_not_yet_valid(k, p, r):
        r.set_trust(TrustStore((trusted(k.issuer), trusted(k.other_issuer, T0 + 3600, T0 + YEAR))))
        return build(k, serial=20, issuer=k.other_issuer)

    def issued_outside_key_window(k, p, r):
        r.set_trust(TrustStore((trusted(k.issuer), trusted(k.other_issuer, T0 - 600, T0 + YEAR))))
        return build(k, serial=20, issuer=k.other_issuer, valid_from=T0 - HOUR, issued_at=T0 - HOUR)

    def expired(k, p, r):
        return build(k, serial=20, valid_from=T0 - 7 * HOUR, valid_until=T0 - 1)

    def not_yet_valid(k, p, r):
        return build(k, serial=20, valid_from=T0 + HOUR, valid_until=T0 + 5 * HOUR, issued_at=T0 - 60)

    def other_unit(k, p, r):
        return build(k, serial=20, recipients=[k.dev8.public])

    def signed_for_other_unit(k, p, r):
        doc = p.copy_doc()
        doc["targets"] = [{"unit_id": "van-08", "key_id": k.dev8.key_id}]
        return p.craft(doc)  # encrypted to van-07, but signed for van-08 only

    def rolled_back(k, p, r):
        return build(k, serial=9)

    def reused_serial(k, p, r):
        return build(k, serial=10, seed=7)

    def model_mismatch(k, p, r):
        return build(k, serial=20, model="cd" * 32)

    def dim_mismatch(k, p, r):
        from edge.watchlist.bundle import make_bundle
        from tests.support.watchlists import subjects
        data, _ = make_bundle(subjects=subjects(2), embeddings=unit_vectors(2, dim=64), thumbnails={},
                              issuer=k.issuer, recipients=[k.dev7.public], serial=20, operation_id="O",
                              authorising_officer="X", valid_from=T0 - HOUR, valid_until=T0 + HOUR,
                              model_sha256=MODEL, issued_at=T0 - HOUR)
        return data

    def duplicate_ids(k, p, r):
        doc = p.copy_doc()
        doc["subjects"][1]["id"] = doc["subjects"][0]["id"]
        return p.craft(doc)

    def absolute_path(k, p, r):
        return p.craft(members=p.members() + [TarEntry("/etc/cron.d/x", b"x")])

    def dotdot(k, p, r):
        return p.craft(members=p.members() + [TarEntry("thumbnails/../../x.jpg", b"x")])

    def symlink(k, p, r):
        return p.craft(members=[TarEntry("thumbnails/000000.jpg", b"", b"2", "/etc/shadow")] + p.members()[1:])

    def bomb(k, p, r):
        return sealed(bomb_payload(total=64 << 20), k)

    def too_many_subjects(k, p, r):
        return build(k, serial=20, n=60, thumbs=False)

    def malformed_types(k, p, r):
        doc = p.copy_doc()
        doc["serial"] = "50"
        return p.craft(doc)

    def forged_signature(k, p, r):
        import json as j

        from edge.watchlist.bundle import sign_manifest
        from edge.encoding import canonical_json
        sig = j.loads(sign_manifest(canonical_json(p.doc), k.other_issuer))
        sig["key_id"] = k.issuer.key_id
        return p.craft(sig=canonical_json(sig))

    def member_swapped(k, p, r):
        members = p.members()
        members[1], members[2] = TarEntry(members[1].name, members[2].data), TarEntry(members[2].name, members[1].data)
        return p.craft(members=members)

    def oversized_file(k, p, r):
        return b"EDGE-WL\x01" + bytes(2_000_001)

    def garbage(k, p, r):
        return bytes(random.Random(3).randbytes(5000))

    return {
        "wrong issuer": (wrong_issuer, BundleUntrustedIssuerError, "not in this unit's trust file"),
        "revoked issuer key": (revoked, BundleUntrustedIssuerError, "revoked: laptop stolen"),
        "expired issuer key": (key_expired, BundleUntrustedIssuerError, "expired at"),
        "issuer key not yet valid": (key_not_yet_valid, BundleUntrustedIssuerError, "not valid before"),
        "issued outside key window": (issued_outside_key_window, BundleUntrustedIssuerError, "outside issuer key"),
        "expired bundle": (expired, BundleExpiredError, "expired at"),
        "not-yet-valid bundle": (not_yet_valid, BundleNotYetValidError, "valid from"),
        "bundle for another unit": (other_unit, BundleNotForThisUnitError, "van-08"),
        "signed for another unit": (signed_for_other_unit, BundleNotForThisUnitError, "signed for unit"),
        "rolled-back serial": (rolled_back, BundleRollbackError, "lower than the last accepted serial 10"),
        "reused serial": (reused_serial, BundleRollbackError, "already used"),
        "model-hash mismatch": (model_mismatch, BundleModelMismatchError, "built with model cdcd"),
        "embedding dim mismatch": (dim_mismatch, BundleModelMismatchError, "64 dimensions"),
        "duplicate subject ids": (duplicate_ids, BundleFormatError, "duplicate subject id"),
        "absolute path member": (absolute_path, BundleFormatError, "absolute path"),
        "dot-dot member": (dotdot, BundleFormatError, r"'\.\.'"),
        "symlink member": (symlink, BundleFormatError, "symbolic link"),
        "decompression bomb": (bomb, BundleLimitError, "over the 270,336-byte limit|decompression bomb"),
        "oversized entry count": (too_many_subjects, BundleLimitError, "60 subjects, more than the limit of 50"),
        "malformed manifest types": (malformed_types, BundleFormatError, "serial must be an integer"),
        "forged signature": (forged_signature, BundleSignatureError, "does not verify"),
        "member swapped": (member_swapped, BundleIntegrityError, "signed manifest"),
        "oversized file": (oversized_file, BundleLimitError, "over watchlist.max_bundle_bytes"),
        "not a bundle": (garbage, BundleFormatError, "wrong magic"),
    }


CASES = _case_builders()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_bundle_is_refused_and_running_list_unchanged(rig, keys, pieces, bundle_a, case):
    make, error, message = CASES[case]
    live = rig.unit.load(bundle_a)
    before_files, before_match = rig.files(), probe_result(live)
    data = make(keys, pieces, rig)
    with pytest.raises(error, match=message):
        rig.unit.load(data)
    assert rig.unit.current() is live
    assert rig.files() == before_files
    assert probe_result(rig.unit.current()) == before_match
    # and a restarted unit still gets the same list back
    assert probe_result(rig.new_unit().restore()) == before_match


def test_every_sampled_byte_flip_is_refused_and_list_unchanged(rig, bundle_a, bundle_b):
    live = rig.unit.load(bundle_a)
    before = rig.files()
    rng = random.Random(7)
    offsets = sorted(set(rng.sample(range(len(bundle_b)), 200)) | {0, len(bundle_b) - 1})
    refused = 0
    for off in offsets:
        bad = bytearray(bundle_b)
        bad[off] ^= 1 << rng.randrange(8)
        with pytest.raises((BundleFormatError, BundleDecryptError, BundleNotForThisUnitError)):
            rig.unit.load(bytes(bad))
        refused += 1
        assert rig.unit.current() is live
    assert refused == len(offsets) >= 200
    assert rig.files() == before


def test_truncation_is_refused_and_list_unchanged(rig, bundle_a, bundle_b):
    live = rig.unit.load(bundle_a)
    before = rig.files()
    for n in sorted(set(range(0, len(bundle_b), max(1, len(bundle_b) // 120))) | {1, 12, len(bundle_b) - 1}):
        with pytest.raises((BundleFormatError, BundleDecryptError)):
            rig.unit.load(bundle_b[:n])
        assert rig.unit.current() is live
    assert rig.files() == before


# ---------------------------------------------------------------------------------- swap, expiry, wipe


def test_new_bundle_swaps_in_atomically_while_recognition_runs(rig, bundle_a, bundle_b):
    rig.unit.load(bundle_a)
    probe = unit_vectors(5, seed=1)[3]  # subject B00003 of bundle_b
    seen, errors, stop = set(), [], threading.Event()

    def recognise():
        while not stop.is_set():
            try:
                live = rig.unit.current()
                m = live.matcher.match(probe)
                seen.add((live.manifest.serial, m.subject_id[0]))
            except Exception as exc:  # noqa: BLE001 - any failure here is the bug under test
                errors.append(exc)

    t = threading.Thread(target=recognise)
    t.start()
    time.sleep(0.05)
    rig.unit.load(bundle_b)
    time.sleep(0.05)
    stop.set()
    t.join()
    assert not errors
    assert seen <= {(10, "S"), (11, "B")} and (11, "B") in seen
    assert rig.unit.current().manifest.serial == 11


def test_list_stops_matching_at_expiry_and_is_deleted(rig, bundle_a):
    live = rig.unit.load(bundle_a)
    rig.clock.advance(live.manifest.valid_until - rig.clock.t - 1)
    assert rig.unit.current() is live
    rig.clock.advance(1)
    assert rig.unit.current() is None
    assert "current.edgewl" not in rig.files()
    st = json.loads(rig.files()["state.json"])
    assert st["status"] == "expired" and st["last_serial"] == 10
    with pytest.raises(BundleExpiredError):
        rig.unit.load(bundle_a)


def test_enforce_expiry_without_a_live_list(rig, bundle_a):
    rig.unit.load(bundle_a)
    other = rig.new_unit()  # e.g. the CLI's `status`, which never loaded the list itself
    assert other.enforce_expiry() is False
    rig.clock.advance(7 * HOUR)
    assert other.enforce_expiry() is True
    assert "current.edgewl" not in rig.files()


def test_wipe_on_demand_keeps_rollback_protection(rig, keys, bundle_a, bundle_b):
    rig.unit.load(bundle_b)
    assert rig.unit.wipe() is True
    assert rig.unit.current() is None and "current.edgewl" not in rig.files()
    st = json.loads(rig.files()["state.json"])
    assert st["status"] == "wiped" and st["last_serial"] == 11
    with pytest.raises(BundleRollbackError, match="wiped on this unit"):
        rig.unit.load(bundle_b)
    with pytest.raises(BundleRollbackError, match="lower"):
        rig.unit.load(bundle_a)
    assert rig.unit.load(build(keys, serial=12)).manifest.serial == 12
    assert rig.unit.wipe() is True and rig.unit.wipe() is False


def test_restart_restores_the_list_and_deletes_it_when_expired(rig, bundle_a):
    rig.unit.load(bundle_a)
    fresh = rig.new_unit()
    assert fresh.current() is None
    live = fresh.restore()
    assert live is not None and live.manifest.serial == 10
    rig.clock.advance(7 * HOUR)
    assert rig.new_unit().restore() is None
    assert "current.edgewl" not in rig.files()
    assert json.loads(rig.files()["state.json"])["status"] == "expired"


def test_restart_after_the_issuer_key_is_revoked_deletes_the_list(rig, keys, bundle_a):
    rig.unit.load(bundle_a)
    rig.set_trust(TrustStore((trusted(keys.issuer, revoked=True),)))
    assert rig.new_unit().restore() is None
    st = json.loads(rig.files()["state.json"])
    assert st["status"] == "wiped" and "revoked" in st["status_reason"]


def test_rotation_new_key_accepted_and_revoking_the_old_key_stops_its_list(rig, keys, bundle_a):
    live = rig.unit.load(bundle_a)  # signed by the "bo-2025" key
    rig.set_trust(TrustStore((trusted(keys.issuer), trusted(keys.other_issuer))))
    assert rig.unit.poll() is False and rig.unit.current() is live
    rig.unit.load(build(keys, serial=11, issuer=keys.other_issuer))  # the new key signs the next list
    rig.set_trust(TrustStore((trusted(keys.issuer, revoked=True), trusted(keys.other_issuer))))
    assert rig.unit.poll() is False  # the running list is signed by the new key
    with pytest.raises(BundleUntrustedIssuerError, match="revoked"):
        rig.unit.load(build(keys, serial=12))  # nothing signed by the revoked key loads
    rig.unit.load(build(keys, serial=13, issuer=keys.other_issuer))
    rig.set_trust(TrustStore((trusted(keys.issuer), trusted(keys.other_issuer, revoked=True))))
    assert rig.unit.poll() is True and rig.unit.current() is None
    assert "current.edgewl" not in rig.files()
    assert "revoked" in json.loads(rig.files()["state.json"])["status_reason"]


def test_poll_follows_a_load_and_a_wipe_by_another_process(rig, bundle_a, bundle_b):
    service = rig.unit
    service.load(bundle_a)
    cli = rig.new_unit()
    cli.load(bundle_b)
    assert service.current().manifest.serial == 10
    assert service.poll() is True and service.current().manifest.serial == 11
    assert service.poll() is False
    cli.wipe()
    assert service.poll() is True and service.current() is None


def test_damaged_state_file_refuses_loads_and_keeps_the_list(rig, bundle_a, bundle_b):
    live = rig.unit.load(bundle_a)
    (rig.tmp / "state" / "watchlist" / "state.json").write_text("{not json")
    with pytest.raises(UnitStateError, match="damaged"):
        rig.unit.load(bundle_b)
    assert rig.unit.current() is live


# ---------------------------------------------------------------------------------- clock


def test_clock_skew_tolerance_applies_before_the_start_only(tmp_path, keys):
    rig = Rig(tmp_path, keys, clock_skew_seconds=300)
    start = T0 + 1000
    early = build(keys, serial=20, valid_from=start, valid_until=start + HOUR, issued_at=T0 - 10)
    rig.clock.t = start - 301
    with pytest.raises(BundleNotYetValidError, match="tolerance 300 s"):
        rig.unit.load(early)
    rig.clock.t = start - 299
    live = rig.unit.load(early)
    rig.clock.t = start + HOUR  # no grace after the end
    assert rig.unit.current() is None
    assert live.manifest.valid_until == start + HOUR


def test_unit_clock_behind_issue_time_is_reported(tmp_path, keys):
    rig = Rig(tmp_path, keys, clock_skew_seconds=60)
    data = build(keys, serial=20, valid_from=T0 - HOUR, valid_until=T0 + 9 * HOUR, issued_at=T0 + HOUR)
    with pytest.raises(BundleNotYetValidError, match="clock is wrong"):
        rig.unit.load(data)


def test_untrusted_clock_says_so_and_bounds_the_lifetime(tmp_path, keys):
    rig = Rig(tmp_path, keys, trusted_clock=False)
    rig.clock.t = 0  # a unit whose clock was reset to 1970
    data = build(keys, serial=20, valid_from=T0 - HOUR, valid_until=T0 + 5 * HOUR, issued_at=T0 - HOUR)
    checks = dict(rig.unit.verify(data).checks)
    assert checks["validity window"].startswith("NOT VERIFIED: this unit has no trustworthy clock")
    live = rig.unit.load(data)
    assert live.clock_verified is False
    status = rig.unit.status()
    assert "NOT trustworthy" in status["clock"]
    # same boot (e.g. the service picking up the CLI's load): restored with the same deadline
    assert rig.new_unit().restore().deadline_monotonic == live.deadline_monotonic
    rig.clock.m += 6 * HOUR - 1
    assert rig.unit.current() is live
    rig.clock.m += 1
    assert rig.unit.current() is None and "current.edgewl" not in rig.files()


def test_untrusted_clock_list_does_not_survive_a_restart(tmp_path, keys):
    rig = Rig(tmp_path, keys, trusted_clock=False)
    rig.unit.load(build(keys, serial=20))
    rig.boot = "boot-2"
    assert rig.new_unit().restore() is None
    st = json.loads(rig.files()["state.json"])
    assert st["status"] == "wiped" and "untrusted clock" in st["status_reason"]


def test_inspect_reports_every_check_without_raising_for_policy(rig, keys):
    data = build(keys, serial=20, valid_from=T0 - 7 * HOUR, valid_until=T0 - 1, model="cd" * 32)
    bundle, results = rig.unit.inspect(data)
    verdict = {name: ok for name, ok, _, _ in results}
    assert verdict == {"signature": True, "issuer key": True, "addressed to this unit": True,
                       "validity window": False, "rollback": True, "model": False}
    assert bundle.manifest.serial == 20


# ---------------------------------------------------------------------------------- CLI (unit side)


_cli = watchlist_cli


@pytest.fixture(scope="module")
def real_model_sha():
    from edge.config import load_config
    from edge.recognition.api import embedder_sha256
    return embedder_sha256(load_config(None))


def test_cli_inspect_verify_load_status_wipe(tmp_path, keys, real_model_sha, capsys):
    from edge.watchlist.keys import save_device
    save_device(keys.dev7, tmp_path / "etc")
    save_trust(keys.trust(valid_from=int(time.time()) - YEAR, valid_until=int(time.time()) + YEAR),
               tmp_path / "etc" / "trust.yaml")
    cfg = tmp_path / "unit.yaml"
    cfg.write_text(json.dumps({"unit": {"id": "van-07", "state_dir": str(tmp_path / "state"),
                                        "device_key": str(tmp_path / "etc" / "device.key"),
                                        "trust_file": str(tmp_path / "etc" / "trust.yaml")}}))
    now = int(time.time())
    good = tmp_path / "good.edgewl"
    good.write_bytes(build(keys, serial=30, valid_from=now - 60, valid_until=now + HOUR, model=real_model_sha))
    stale = tmp_path / "stale.edgewl"
    stale.write_bytes(build(keys, serial=29, valid_from=now - 60, valid_until=now + HOUR, model=real_model_sha))

    assert _cli(["watchlist", "inspect", str(good), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    for text in ("signed by    bo-2025", "for units    van-07", "OP-1", "wanted 2, missing 1, vulnerable 1",
                 real_model_sha, "would be ACCEPTED"):
        assert text in out
    assert _cli(["watchlist", "verify", str(good), "--config", str(cfg), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["by_category"] == {"wanted": 2, "missing": 1, "vulnerable": 1} and all(
        c["ok"] for c in report["checks"])
    assert "embeddings" not in json.dumps(report)

    assert _cli(["watchlist", "load", str(good), "--config", str(cfg)]) == 0
    assert _cli(["watchlist", "verify", str(stale), "--config", str(cfg)]) == BundleRollbackError.exit_code == 77
    assert "lower than the last accepted serial 30" in capsys.readouterr().out
    assert _cli(["watchlist", "inspect", str(stale), "--config", str(cfg)]) == 0
    assert "would be REFUSED" in capsys.readouterr().out
    assert _cli(["watchlist", "load", str(stale), "--config", str(cfg)]) == 77
    assert _cli(["watchlist", "status", "--config", str(cfg), "--json"]) == 0
    out = capsys.readouterr().out
    st = json.loads(out[out.index("{"):])
    assert st["state"] == "loaded" and st["last_serial"] == 30
    assert _cli(["watchlist", "wipe", "--config", str(cfg)]) == 0
    assert not (tmp_path / "state" / "watchlist" / "current.edgewl").exists()
    # a bundle for another unit, through the CLI: exit 77 and a message naming the addressee
    other = tmp_path / "other.edgewl"
    other.write_bytes(build(keys, serial=40, recipients=[keys.dev8.public], model=real_model_sha))
    capsys.readouterr()
    assert _cli(["watchlist", "verify", str(other), "--config", str(cfg)]) == 77
    assert "addressed to unit(s) van-08" in capsys.readouterr().out
    # model mismatch: 65; damaged file: 65
    assert _cli(["watchlist", "verify", str(tmp_path / "etc" / "trust.yaml"), "--config", str(cfg)]) == 65


def test_every_bundle_error_has_a_meaningful_exit_code():
    import edge.watchlist.errors as be
    codes = {name: getattr(be, name).exit_code for name in be.__all__}
    assert set(codes.values()) <= {65, 75, 77}
    assert codes["BundleNotYetValidError"] == 75 and codes["BundleSignatureError"] == 77
    assert all(issubclass(getattr(be, n), BundleError) for n in be.__all__)
