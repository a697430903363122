"""Issuer and device keys, passphrases, public-key files, the trust file, UTC times, `edge-lfr keys`."""
from __future__ import annotations

import hashlib
import stat

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import InputError
from edge.watchlist.keys import (KeyFileError, KeyPassphraseError, TrustFileError, TrustStore, generate_device,
                       generate_issuer, key_id, load_device_key, load_issuer_key, load_issuer_public,
                       load_trust, load_unit_public, save_device, save_issuer, save_trust, trusted_key)
from edge.utc import format_utc, parse_canonical, parse_utc

from tests.support.watchlists import watchlist_cli

T0 = 1_750_000_000


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_issuer_key_round_trip_with_passphrase(tmp_path):
    key = generate_issuer("bo-2025")
    priv, pub = save_issuer(key, tmp_path, b"correct horse")
    assert priv.name == "bo-2025.issuer.key" and mode(priv) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in priv.read_bytes()
    loaded = load_issuer_key(priv, b"correct horse")
    assert loaded.key_id == key.key_id and loaded.name == "bo-2025"
    msg = b"hello"
    loaded.public.verifier().verify(key.sign(msg), msg)
    p = load_issuer_public(pub)
    assert p.key_id == key.key_id == hashlib.sha256(p.public).hexdigest() == key_id(p.public)
    doc = yaml.safe_load(pub.read_text())
    assert doc["kind"] == "edge-lfr-issuer-public-key" and "PRIVATE" not in pub.read_text()


def test_wrong_or_missing_passphrase(tmp_path):
    priv, _ = save_issuer(generate_issuer("k"), tmp_path, b"right")
    with pytest.raises(KeyPassphraseError, match="wrong passphrase"):
        load_issuer_key(priv, b"wrong")
    with pytest.raises(KeyPassphraseError, match="passphrase-protected"):
        load_issuer_key(priv, None)
    assert KeyPassphraseError.exit_code == 77


def test_device_key_round_trip_and_registration(tmp_path):
    dev = generate_device("van-07")
    priv, pub = save_device(dev, tmp_path)
    assert priv.name == "device.key" and mode(priv) == 0o600
    loaded = load_device_key(priv, "van-07")
    assert loaded.key_id == dev.key_id and loaded.public.ed25519 == dev.public.ed25519
    u = load_unit_public(pub)
    assert (u.unit_id, u.key_id, u.x25519) == ("van-07", dev.key_id, dev.public.x25519)
    priv2, _ = save_device(generate_device("van-08"), tmp_path / "p", b"pw")
    assert load_device_key(priv2, "van-08", b"pw").unit_id == "van-08"


def test_keys_of_the_wrong_kind_are_refused(tmp_path):
    ipriv, ipub = save_issuer(generate_issuer("k"), tmp_path / "i")
    dpriv, dpub = save_device(generate_device("u1"), tmp_path / "d")
    with pytest.raises(KeyFileError, match="not a device key"):
        load_device_key(ipriv, "u1")
    with pytest.raises(KeyFileError, match="not an issuer key"):
        load_issuer_key(dpriv)
    with pytest.raises(KeyFileError, match="kind"):
        load_unit_public(ipub)
    with pytest.raises(KeyFileError, match="kind"):
        load_issuer_public(dpub)


def test_keys_are_never_overwritten(tmp_path):
    save_issuer(generate_issuer("k"), tmp_path)
    with pytest.raises(KeyFileError, match="already exists"):
        save_issuer(generate_issuer("k"), tmp_path)
    save_device(generate_device("u1"), tmp_path)
    with pytest.raises(KeyFileError, match="already exists"):
        save_device(generate_device("u1"), tmp_path)


def test_bad_names_and_ids(tmp_path):
    with pytest.raises(KeyFileError):
        generate_issuer("../evil")
    with pytest.raises(KeyFileError):
        generate_device("van 07")
    with pytest.raises(KeyFileError, match="not found"):
        load_issuer_key(tmp_path / "nope.key")
    (tmp_path / "junk.key").write_text("hello")
    with pytest.raises(KeyFileError, match="no PEM private key"):
        load_issuer_key(tmp_path / "junk.key")


def test_edited_public_key_files_are_refused(tmp_path):
    _, pub = save_device(generate_device("van-07"), tmp_path)
    doc = yaml.safe_load(pub.read_text())
    other = generate_device("van-07").public
    import base64
    doc["x25519"] = base64.b64encode(other.x25519).decode()
    pub.write_text(yaml.safe_dump(doc))
    with pytest.raises(KeyFileError, match="does not match the key"):
        load_unit_public(pub)
    doc["x25519"] = "not base64!"
    pub.write_text(yaml.safe_dump(doc))
    with pytest.raises(KeyFileError, match="base64"):
        load_unit_public(pub)


# ---------------------------------------------------------------------------------- trust file


def test_trust_file_round_trip_rotation_and_revocation(tmp_path):
    a, b = generate_issuer("bo-2024"), generate_issuer("bo-2025")
    path = tmp_path / "trust.yaml"
    store = TrustStore().with_key(trusted_key(a.public, T0 - 100, T0 + 100))
    store = store.with_key(trusted_key(b.public, T0, T0 + 1000, note="rotation"))
    save_trust(store, path)
    loaded = load_trust(path)
    assert [k.name for k in loaded.keys] == ["bo-2024", "bo-2025"]
    assert loaded.get(b.key_id).note == "rotation" and loaded.get(b.key_id).valid_until == T0 + 1000
    revoked = loaded.revoked(a.key_id, "compromised")
    save_trust(revoked, path)
    k = load_trust(path).find(a.key_id[:8])
    assert k.revoked and k.problem(T0) == f"issuer key 'bo-2024' ({a.key_id[:16]}…) is revoked: compromised"
    assert k.problem(None) is not None  # revocation holds even without a clock
    with pytest.raises(TrustFileError, match="already"):
        loaded.with_key(trusted_key(a.public, T0, T0 + 1))
    with pytest.raises(TrustFileError, match="at least 8"):
        loaded.find("abc")


def test_key_validity_window():
    k = trusted_key(generate_issuer("k").public, T0, T0 + 100)
    assert k.problem(T0) is None and k.problem(T0 + 99) is None and k.problem(None) is None
    assert "not valid before" in k.problem(T0 - 1)
    assert k.problem(T0 - 10, skew=10) is None
    assert "expired" in k.problem(T0 + 100)
    with pytest.raises(TrustFileError):
        trusted_key(generate_issuer("k").public, T0, T0)


def _trust_doc(**change):
    key = generate_issuer("k")
    import base64
    item = {"name": "k", "key_id": key.key_id, "ed25519": base64.b64encode(key.public.public).decode(),
            "valid_from": "2025-01-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z", "revoked": False}
    item.update(change)
    return {"version": 1, "issuers": [item]}


@pytest.mark.parametrize("change, message", [
    ({"valid_from": "2025-01-01T00:00:00"}, "no timezone"),
    ({"valid_until": "2024-01-01T00:00:00Z"}, "not after"),
    ({"revoked": "no"}, "true or false"),
    ({"key_id": "00" * 32}, "does not match"),
    ({"extra": 1}, "unknown key"),
    ({"name": "bad name"}, "name"),
    ({"valid_from": "yesterday"}, "ISO-8601"),
])
def test_malformed_trust_files_are_refused(tmp_path, change, message):
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(_trust_doc(**change)))
    with pytest.raises(TrustFileError, match=message):
        load_trust(p)


def test_trust_file_structure_errors(tmp_path):
    p = tmp_path / "t.yaml"
    for text, message in (("version: 2\nissuers: []\n", "version"), ("[1, 2]\n", "mapping"),
                          ("version: 1\nissuers: {}\n", "list"), ("version: 1\nissuers: [\n", "YAML")):
        p.write_text(text)
        with pytest.raises(TrustFileError, match=message):
            load_trust(p)
    doc = _trust_doc()
    doc["issuers"].append(dict(doc["issuers"][0]))
    p.write_text(yaml.safe_dump(doc))
    with pytest.raises(TrustFileError, match="twice"):
        load_trust(p)
    with pytest.raises(TrustFileError, match="not found"):
        load_trust(tmp_path / "missing.yaml")
    # unquoted YAML timestamps (datetime objects) are accepted when they carry a timezone
    doc = _trust_doc()
    text = yaml.safe_dump(doc).replace("'2025-01-01T00:00:00Z'", "2025-01-01T00:00:00Z")
    p.write_text(text)
    assert load_trust(p).keys[0].valid_from == parse_utc("2025-01-01T00:00:00Z", "t")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=400))
def test_trust_loader_only_raises_trust_file_errors(tmp_path, text):
    p = tmp_path / "fuzz.yaml"
    p.write_text(text, encoding="utf-8")
    try:
        store = load_trust(p)
    except TrustFileError as exc:
        assert str(p) in str(exc)              # every refusal names the file
    else:                                      # accepted: only an empty or well-formed trust document
        import yaml
        doc = yaml.safe_load(text) if text.strip() else None
        assert doc is None or isinstance(doc, dict), text
        assert all(k.key_id and k.public for k in store.keys), text


# ---------------------------------------------------------------------------------- UTC


def test_utc_parsing():
    assert format_utc(T0) == "2025-06-15T15:06:40Z"
    assert parse_utc("2025-06-15T15:06:40Z", "t") == T0
    assert parse_utc("2025-06-15T16:06:40+01:00", "t") == T0
    with pytest.raises(InputError, match="no timezone"):
        parse_utc("2025-06-15T15:06:40", "t")
    assert abs(parse_utc("now", "t") - __import__("time").time()) < 5
    assert parse_canonical("2025-06-15T15:06:40Z", "t") == T0
    for bad in ("2025-06-15T15:06:40+00:00", "2025-13-01T00:00:00Z", 5, "2025-06-15"):
        with pytest.raises(InputError):
            parse_canonical(bad, "t")


# ---------------------------------------------------------------------------------- CLI


_cli = watchlist_cli


def test_cli_keys(tmp_path, capsys):
    pw = tmp_path / "pw.txt"
    pw.write_text("s3cret\n")
    assert _cli(["keys", "issuer", "--name", "bo-2025", "--out", str(tmp_path / "k"), "--passphrase-file", str(pw)]) == 0
    assert _cli(["keys", "device", "--unit-id", "van-07", "--out", str(tmp_path / "u")]) == 0
    trust = str(tmp_path / "u" / "trust.yaml")
    pub = str(tmp_path / "k" / "bo-2025.issuer.pub.yaml")
    assert _cli(["keys", "trust", "add", "--issuer", pub, "--valid-from", "now",
                 "--valid-until", "2099-01-01T00:00:00Z", "--trust", trust]) == 0
    assert _cli(["keys", "trust", "list", "--trust", trust]) == 0
    assert "usable now" in capsys.readouterr().out
    kid = load_issuer_public(pub).key_id
    assert _cli(["keys", "trust", "revoke", kid[:10], "--note", "stolen", "--trust", trust]) == 0
    assert load_trust(trust).keys[0].revoked
    assert _cli(["keys", "trust", "list", "--trust", trust]) == 0
    assert "revoked: stolen" in capsys.readouterr().out
    # exit codes: missing passphrase 77, missing file 66, usage 2
    assert load_issuer_key(tmp_path / "k" / "bo-2025.issuer.key", b"s3cret").name == "bo-2025"
    assert _cli(["keys", "trust", "list", "--trust", str(tmp_path / "none.yaml")]) == 78
    assert _cli(["keys"]) == 2
