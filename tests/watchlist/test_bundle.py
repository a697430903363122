"""The bundle format on its own: round trip, tampering, hostile archives, limits, parser fuzzing."""
from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.watchlist.bundle import (EMBEDDINGS, MANIFEST, SIGNATURE, Limits, SubjectEntry, make_bundle, open_bundle,
                         parse_manifest)
from edge.watchlist.errors import (BundleDecryptError, BundleError, BundleFormatError, BundleIntegrityError,
                                BundleLimitError, BundleNotForThisUnitError, BundleSignatureError,
                                BundleUntrustedIssuerError)
from edge.encoding import canonical_json
from edge.watchlist.envelope import parse_envelope
from edge.watchlist.safetar import TarEntry, pack_tar
from tests.support.watchlists import HOUR, MODEL, T0, Pieces, bomb_payload, build, gz, jpeg, make_keys, sealed, subjects, unit_vectors
from edge.matching.match import Matcher


@pytest.fixture(scope="module")
def keys():
    return make_keys()


@pytest.fixture(scope="module")
def trust(keys):
    return keys.trust()


@pytest.fixture(scope="module")
def good(keys):
    return build(keys, n=4, recipients=[keys.dev7.public, keys.dev8.public])


@pytest.fixture(scope="module")
def pieces(keys):
    return Pieces(keys)


def test_round_trip(keys, trust, good):
    b = open_bundle(good, keys.dev7, trust)
    m = b.manifest
    assert m.serial == 10 and m.operation_id == "OP-1" and m.model_sha256 == MODEL
    assert [s.id for s in m.subjects] == [f"S{i:05d}" for i in range(4)]
    assert m.subjects[1].threshold == 0.7 and m.subjects[0].threshold is None
    assert m.targets == ((keys.dev7.unit_id, keys.dev7.key_id), (keys.dev8.unit_id, keys.dev8.key_id))
    np.testing.assert_array_equal(b.embeddings, unit_vectors(4))
    assert b.thumbnail(2) == jpeg(2)
    assert m.counts_by_category() == {"wanted": 2, "missing": 1, "vulnerable": 1}
    assert b.signer.key_id == keys.issuer.key_id
    # both target units can open it
    assert open_bundle(good, keys.dev8, trust).manifest.bundle_id == m.bundle_id
    # the summary never carries embeddings or images
    s = json.dumps(m.summary())
    assert "embedding" not in s.replace("embedding_dim", "") and len(s) < 2000
    # matching works on what came out
    match = Matcher(b.watchlist(), {"wanted": 0.8, "missing": 0.8, "vulnerable": 0.8}).match(unit_vectors(4)[3])
    assert match.subject_id == "S00003" and match.is_hit


def test_manifest_is_canonical_and_signed_over_exact_bytes(keys, trust, good):
    m = open_bundle(good, keys.dev7, trust).manifest
    assert canonical_json(json.loads(m.raw)) == m.raw
    assert list(json.loads(m.raw)) == sorted(json.loads(m.raw))


def test_envelope_needs_no_key_and_shows_only_addressees(good, keys):
    env = parse_envelope(good)
    assert env.unit_ids == ["van-07", "van-08"]
    assert b"OP-1" not in good and b"S00001" not in good  # the content is encrypted


# ---------------------------------------------------------------------------------- tampering


def test_every_sampled_byte_flip_is_refused(keys, trust, good):
    rng = random.Random(1)
    offsets = sorted(set(rng.sample(range(len(good)), 200)) | {0, 7, 8, 11, 12, len(good) - 1})
    for off in offsets:
        bad = bytearray(good)
        bad[off] ^= 1 << rng.randrange(8)
        with pytest.raises((BundleFormatError, BundleDecryptError, BundleNotForThisUnitError)):
            open_bundle(bytes(bad), keys.dev7, trust)


def test_every_byte_flip_of_a_minimal_bundle_is_refused(keys, trust):
    """Exhaustively: each byte of a one-subject bundle, flipped, is refused."""
    small = build(keys, n=1, thumbs=False)
    assert len(small) < 4000
    for off in range(len(small)):
        bad = bytearray(small)
        bad[off] ^= 0x80 >> (off % 8)
        with pytest.raises((BundleFormatError, BundleDecryptError, BundleNotForThisUnitError)):
            open_bundle(bytes(bad), keys.dev7, trust)


def test_truncation_is_refused_at_every_sampled_length(keys, trust, good):
    lengths = sorted(set(range(0, 64)) | set(range(0, len(good), max(1, len(good) // 150))) | {len(good) - 1})
    for n in lengths:
        with pytest.raises((BundleFormatError, BundleDecryptError)):
            open_bundle(good[:n], keys.dev7, trust)


def test_appended_bytes_are_refused(keys, trust, good):
    with pytest.raises(BundleDecryptError):
        open_bundle(good + b"\0", keys.dev7, trust)


def test_not_a_bundle(keys, trust):
    with pytest.raises(BundleFormatError, match="wrong magic"):
        open_bundle(b"PK\x03\x04" + bytes(100), keys.dev7, trust)
    with pytest.raises(BundleFormatError, match="version"):
        open_bundle(b"EDGE-WL\x02" + bytes(100), keys.dev7, trust)


def test_wrong_issuer_is_refused(keys, trust):
    data = build(keys, issuer=keys.other_issuer)
    with pytest.raises(BundleUntrustedIssuerError, match="not in this unit's trust file"):
        open_bundle(data, keys.dev7, trust)


def test_forged_signature_naming_the_trusted_key_is_refused(keys, trust, pieces):
    raw = canonical_json(pieces.doc)
    from edge.watchlist.bundle import sign_manifest
    forged = json.loads(sign_manifest(raw, keys.other_issuer))
    forged["key_id"] = keys.issuer.key_id  # claims to be the trusted key
    with pytest.raises(BundleSignatureError, match="does not verify"):
        open_bundle(pieces.craft(sig=canonical_json(forged)), keys.dev7, trust)


def test_manifest_altered_after_signing_is_refused(keys, trust, pieces):
    from edge.watchlist.bundle import sign_manifest
    raw = canonical_json(pieces.doc)
    sig = sign_manifest(raw, keys.issuer)
    doc = pieces.copy_doc()
    doc["valid_until"] = "2099-01-01T00:00:00Z"
    with pytest.raises(BundleSignatureError):
        open_bundle(pieces.craft(doc, sig=sig), keys.dev7, trust)


def test_bundle_for_another_unit_is_refused(keys, trust):
    data = build(keys, recipients=[keys.dev8.public])
    with pytest.raises(BundleNotForThisUnitError, match="van-08"):
        open_bundle(data, keys.dev7, trust)


def test_member_not_matching_signed_hash_is_refused(keys, trust, pieces):
    members = pieces.members()
    members[1] = TarEntry(members[1].name, jpeg(999)[:len(members[1].data)].ljust(len(members[1].data), b"\0"))
    with pytest.raises(BundleIntegrityError, match="sha256"):
        open_bundle(pieces.craft(members=members), keys.dev7, trust)


def test_missing_extra_and_duplicate_members_are_refused(keys, trust, pieces):
    members = pieces.members()
    with pytest.raises(BundleIntegrityError, match="missing"):
        open_bundle(pieces.craft(members=members[:-1]), keys.dev7, trust)
    with pytest.raises(BundleIntegrityError, match="not listed"):
        open_bundle(pieces.craft(members=members + [TarEntry("thumbnails/000099.jpg", jpeg(1))]), keys.dev7, trust)
    with pytest.raises(BundleIntegrityError, match="twice"):
        open_bundle(pieces.craft(members=members + [members[0]]), keys.dev7, trust)
    with pytest.raises(BundleIntegrityError, match="not listed"):
        open_bundle(pieces.craft(members=members + [TarEntry(MANIFEST, b"{}")]), keys.dev7, trust)


def test_manifest_and_signature_must_come_first(keys, trust, pieces):
    raw = canonical_json(pieces.doc)
    data = sealed(gz(pack_tar(pieces.members() + [TarEntry(MANIFEST, raw)])), keys)
    with pytest.raises(BundleFormatError, match="must start with"):
        open_bundle(data, keys.dev7, trust)


# ---------------------------------------------------------------------------------- hostile archives


@pytest.mark.parametrize("name, message", [
    ("/etc/passwd", "absolute path"),
    ("/manifest.json", "absolute path"),
    ("C:/x.jpg", "absolute path"),
    ("../manifest.json", r"'\.\.'"),
    ("thumbnails/../../etc/x.jpg", r"'\.\.'"),
    ("thumbnails/../manifest.json", r"'\.\.'"),
    ("notes.txt", "unexpected archive member"),
    ("thumbnails/1.jpg", "unexpected archive member"),
])
def test_hostile_member_names_are_refused(keys, trust, pieces, name, message):
    # first in the archive (before any signature is checked) ...
    with pytest.raises(BundleFormatError, match=message):
        open_bundle(pieces.craft(extra_first=[TarEntry(name, b"x")]), keys.dev7, trust)
    # ... and after a valid signature
    with pytest.raises(BundleFormatError, match=message):
        open_bundle(pieces.craft(members=pieces.members() + [TarEntry(name, b"x")]), keys.dev7, trust)


@pytest.mark.parametrize("flag, kind", [(b"2", "symbolic link"), (b"1", "hard link"), (b"3", "character device"),
                                        (b"4", "block device"), (b"5", "folder"), (b"6", "FIFO"),
                                        (b"x", "pax"), (b"L", "GNU long-name")])
def test_links_devices_and_extension_headers_are_refused(keys, trust, pieces, flag, kind):
    evil = TarEntry("thumbnails/000000.jpg", b"", typeflag=flag, linkname="/etc/shadow")
    with pytest.raises(BundleFormatError, match=kind):
        open_bundle(pieces.craft(members=[evil] + pieces.members()[1:]), keys.dev7, trust)


def test_tarfile_made_archive_with_symlink_and_absolute_path(keys, trust):
    """Archives made by a standard tar writer are refused too, not only our own crafted ones."""
    import io
    import tarfile
    for setup in ("symlink", "absolute"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            if setup == "symlink":
                info = tarfile.TarInfo(MANIFEST)
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
            else:
                info = tarfile.TarInfo("/tmp/manifest.json")
                info.size = 2
                tf.addfile(info, io.BytesIO(b"{}"))
        with pytest.raises(BundleFormatError, match="symbolic link" if setup == "symlink" else "absolute"):
            open_bundle(sealed(gz(buf.getvalue()), keys), keys.dev7, trust)


def test_decompression_bomb_is_stopped_early(keys, trust):
    payload = bomb_payload(total=256 << 20)
    assert len(payload) < 400_000
    with pytest.raises(BundleLimitError, match="decompression bomb"):
        open_bundle(sealed(payload, keys), keys.dev7, trust)


def test_total_decompressed_size_is_capped(keys, trust):
    """Under the ratio limit but over the total: 300 kB of 2-bit noise (~4:1) against a 200 kB cap."""
    noise = np.random.default_rng(0).integers(0, 4, 300_000, dtype=np.uint8).tobytes()
    data = sealed(gz(pack_tar([TarEntry(MANIFEST, noise)])), keys)
    limits = Limits(max_bundle_bytes=100_000)
    assert len(data) < limits.max_bundle_bytes < len(noise)
    with pytest.raises(BundleLimitError, match="decompresses to more than 200,000 bytes"):
        open_bundle(data, keys.dev7, trust, limits)


def test_manifest_member_over_its_cap_is_refused_before_reading(keys, trust):
    limits = Limits(max_subjects=1)
    header = pack_tar([TarEntry(MANIFEST, b"")])[:512]
    header = bytearray(header)
    header[124:136] = b"%011o\0" % (limits.max_manifest_bytes + 1)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    with pytest.raises(BundleLimitError, match="limit"):
        open_bundle(sealed(gz(bytes(header)), keys), keys.dev7, trust, limits)


def test_trailing_garbage_inside_the_payload_is_refused(keys, trust, pieces):
    from edge.watchlist.bundle import sign_manifest
    raw = canonical_json(pieces.doc)
    tar = pack_tar([TarEntry(MANIFEST, raw), TarEntry(SIGNATURE, sign_manifest(raw, keys.issuer))] + pieces.members())
    with pytest.raises(BundleFormatError, match="after the end"):
        open_bundle(sealed(gz(tar + b"junk" + bytes(508)), keys), keys.dev7, trust)
    with pytest.raises(BundleFormatError, match="after the end"):
        open_bundle(sealed(gz(tar) + b"x", keys), keys.dev7, trust)
    with pytest.raises(BundleFormatError, match="truncated"):
        open_bundle(sealed(gz(tar[:-1024]), keys), keys.dev7, trust)


# ---------------------------------------------------------------------------------- limits and types


def test_oversized_entry_counts_are_refused(keys, trust, good):
    with pytest.raises(BundleLimitError, match="more than the limit of 3"):
        open_bundle(good, keys.dev7, trust, Limits(max_subjects=3))
    data, _ = make_bundle(subjects=[SubjectEntry("A", "wanted", "R", ("a", "b", "c"))], embeddings=unit_vectors(3),
                          thumbnails={}, issuer=keys.issuer, recipients=[keys.dev7.public], serial=1,
                          operation_id="O", authorising_officer="X", valid_from=T0, valid_until=T0 + HOUR,
                          model_sha256=MODEL, issued_at=T0)
    with pytest.raises(BundleLimitError, match="3 templates"):
        open_bundle(data, keys.dev7, trust, Limits(max_templates_per_subject=2))
    with pytest.raises(BundleLimitError, match="bundle file is"):
        open_bundle(good, keys.dev7, trust, Limits(max_bundle_bytes=len(good) - 1))


def test_validity_window_longer_than_allowed_is_refused(keys, trust):
    data = build(keys, valid_from=T0, valid_until=T0 + 8 * 86400, limits=Limits(max_validity_seconds=9 * 86400))
    with pytest.raises(BundleLimitError, match="validity window"):
        open_bundle(data, keys.dev7, trust, Limits())


def _set(path, value):
    def f(doc):
        d = doc
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return f


def _del(key):
    return lambda doc: doc.pop(key)


MALFORMED = {
    "serial as text": (_set(["serial"], "20"), "serial must be an integer"),
    "serial as bool": (_set(["serial"], True), "serial must be an integer"),
    "serial zero": (_set(["serial"], 0), "serial"),
    "serial as float": (_set(["serial"], 20.0), "serial must be an integer"),
    "threshold as text": (_set(["subjects", 0, "threshold"], "0.8"), "threshold"),
    "threshold out of range": (_set(["subjects", 0, "threshold"], 1.5), "outside the cosine range"),
    "unknown category": (_set(["subjects", 0, "category"], "suspect"), "category must be one of"),
    "id not text": (_set(["subjects", 0, "id"], 7), "subject id"),
    "id with slash": (_set(["subjects", 0, "id"], "a/../b"), "subject id"),
    "sources not a list": (_set(["subjects", 0, "sources"], "src"), "sources"),
    "source with newline": (_set(["subjects", 0, "sources"], ["a\nb"]), "control characters"),
    "missing field": (_del("model_sha256"), "missing"),
    "extra field": (_set(["extra"], 1), "unexpected"),
    "subjects not a list": (_set(["subjects"], {"a": 1}), "subjects must be a list"),
    "no subjects": (_set(["subjects"], []), "no subjects"),
    "bad time": (_set(["valid_until"], "2025-06-15 18:00"), "valid_until"),
    "window reversed": (_set(["valid_until"], "2020-01-01T00:00:00Z"), "not after valid_from"),
    "dim wrong type": (_set(["embedding", "dim"], "128"), "dim must be an integer"),
    "templates mismatch": (_set(["embedding", "templates"], 4), "templates"),
    "bad dtype": (_set(["embedding", "dtype"], "float64"), "dtype"),
    "thumbnail elsewhere": (_set(["subjects", 0, "thumbnail"], "thumbnails/000001.jpg"), "thumbnail must be"),
    "member size negative": (_set(["members", EMBEDDINGS, "size"], -1), "size"),
    "targets empty": (_set(["targets"], []), "targets"),
    "model hash upper": (_set(["model_sha256"], "AB" * 32), "model_sha256"),
    "bundle id short": (_set(["bundle_id"], "abc"), "bundle_id"),
    "format other": (_set(["format"], "zip"), "format"),
    "manifest is a list": (lambda doc: None, "must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_manifest_types_are_refused_even_when_signed(keys, trust, pieces, case):
    change, message = MALFORMED[case]
    doc = pieces.copy_doc()
    change(doc)
    if case == "manifest is a list":
        doc = [doc]
    with pytest.raises((BundleFormatError, BundleLimitError), match=message):
        open_bundle(pieces.craft(doc), keys.dev7, trust)


def test_duplicate_subject_ids_are_refused(keys, trust, pieces):
    doc = pieces.copy_doc()
    doc["subjects"][2]["id"] = doc["subjects"][0]["id"]
    with pytest.raises(BundleFormatError, match="duplicate subject id 'P0'"):
        open_bundle(pieces.craft(doc), keys.dev7, trust)
    with pytest.raises(BundleFormatError, match="duplicate subject id"):
        make_bundle(subjects=[SubjectEntry("A", "wanted", "R", ("a",)), SubjectEntry("A", "wanted", "R", ("b",))],
                    embeddings=unit_vectors(2), thumbnails={}, issuer=keys.issuer, recipients=[keys.dev7.public],
                    serial=1, operation_id="O", authorising_officer="X", valid_from=T0, valid_until=T0 + HOUR,
                    model_sha256=MODEL, issued_at=T0)


@pytest.mark.parametrize("raw, message", [
    (b'{"a":1,"a":2}', "duplicate key"),
    (b'{"a": 1}', "canonical"),
    (b'{"b":1,"a":2}', "canonical"),
    (b'{"a":NaN}', "NaN"),
    (b'{"a":"\xc3\xa9"}', "canonical"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 100000, "not valid JSON"),
    (b'{"a":1' + b"0" * 5000 + b"}", "not valid JSON"),
])
def test_non_canonical_or_hostile_json_is_refused(keys, trust, pieces, raw, message):
    with pytest.raises(BundleFormatError, match=message):
        parse_manifest(raw)
    with pytest.raises(BundleFormatError):
        open_bundle(pieces.craft(raw=raw), keys.dev7, trust)


def test_nan_embeddings_are_refused(keys, trust, pieces):
    import hashlib as h
    emb = bytearray(pieces.emb)
    emb[0:4] = np.array([np.nan], "<f4").tobytes()
    doc = pieces.copy_doc()
    doc["members"][EMBEDDINGS]["sha256"] = h.sha256(bytes(emb)).hexdigest()
    members = [TarEntry(EMBEDDINGS, bytes(emb))] + pieces.members()[1:]
    with pytest.raises(BundleFormatError, match="NaN"):
        open_bundle(pieces.craft(doc, members=members), keys.dev7, trust)


def test_builder_refuses_what_a_unit_would(keys):
    kw = dict(embeddings=unit_vectors(1), thumbnails={}, issuer=keys.issuer, recipients=[keys.dev7.public],
              serial=1, operation_id="O", authorising_officer="X", valid_from=T0, valid_until=T0 + HOUR,
              model_sha256=MODEL, issued_at=T0)
    with pytest.raises(BundleFormatError, match="category"):
        make_bundle(subjects=[SubjectEntry("A", "suspect", "R", ("a",))], **kw)
    with pytest.raises(BundleFormatError, match="templates"):
        make_bundle(subjects=[SubjectEntry("A", "wanted", "R", ("a", "b"))], **kw)
    with pytest.raises(BundleFormatError, match="NaN"):
        make_bundle(subjects=[SubjectEntry("A", "wanted", "R", ("a",))], **{**kw, "embeddings": np.full((1, 128), np.nan)})
    with pytest.raises((BundleFormatError, BundleLimitError), match="1 to 64"):
        make_bundle(subjects=[SubjectEntry("A", "wanted", "R", ("a",))], **{**kw, "recipients": []})


def test_ten_thousand_subjects_round_trip(keys, trust):
    n = 10_000
    data, m = make_bundle(subjects=subjects(n), embeddings=unit_vectors(n, seed=3),
                          thumbnails={i: jpeg(i % 50) for i in range(n)}, issuer=keys.issuer,
                          recipients=[keys.dev7.public], serial=5, operation_id="BIG", authorising_officer="X",
                          valid_from=T0, valid_until=T0 + HOUR, model_sha256=MODEL, issued_at=T0, compresslevel=1)
    b = open_bundle(data, keys.dev7, trust)
    assert len(b.manifest.subjects) == n and b.embeddings.shape == (n, 128) and len(b.thumbnails) == n
    wl = b.watchlist()
    assert len(wl) == n and wl.subjects[9999] == "S09999"


# ---------------------------------------------------------------------------------- property-based


FAMILY = (BundleError,)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_bundle_errors(keys, trust, data):
    """Random bytes are not an envelope: refused as a format error that says so, before any
    decryption, signature or policy step."""
    with pytest.raises(BundleFormatError) as caught:
        open_bundle(data, keys.dev7, trust)
    assert type(caught.value) is BundleFormatError and str(caught.value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_valid_bundles_only_raise_bundle_errors(keys, trust, good, data):
    buf = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        i = data.draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "set":
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[i:i + data.draw(st.integers(1, 16))]
        else:
            del buf[i:]
        if not buf:
            buf = bytearray(b"\0")
    if bytes(buf) == good:
        return
    with pytest.raises(FAMILY):
        open_bundle(bytes(buf), keys.dev7, trust)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=4096), st.booleans())
def test_arbitrary_payloads_encrypted_to_the_unit_only_raise_bundle_errors(keys, trust, payload, compress):
    """Anybody can encrypt to a unit's public key: the archive parser must hold on its own. The
    payload decrypts, so what fails is the archive: its format or its size limits."""
    with pytest.raises((BundleFormatError, BundleLimitError)):
        open_bundle(sealed(gz(payload) if compress else payload, keys), keys.dev7, trust)


_names = st.sampled_from([MANIFEST, SIGNATURE, EMBEDDINGS, "thumbnails/000000.jpg", "../x", "/abs", "a" * 120,
                          "thumbnails/000001.jpg", "x\x00y", ""])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(_names, st.binary(max_size=600), st.sampled_from([b"0", b"\0", b"2", b"5", b"x"])),
                max_size=5), st.integers(0, 2000))
def test_arbitrary_archives_only_raise_bundle_errors(keys, trust, entries, cut):
    try:
        tar = pack_tar([TarEntry(n, d, t) for n, d, t in entries])
    except ValueError:
        return
    if cut:
        tar = tar[:cut]
    with pytest.raises((BundleFormatError, BundleLimitError)):  # never a policy or signature verdict:
        # no archive here holds a signed manifest, so the parser must stop at its format
        open_bundle(sealed(gz(tar), keys), keys.dev7, trust)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_manifest_parser_only_raises_bundle_errors(pieces, data):
    """Random JSON values, and the real manifest with random fields replaced by random values."""
    doc = pieces.copy_doc()
    if data.draw(st.booleans()):
        doc = data.draw(json_values)
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            target = doc
            key = data.draw(st.sampled_from(sorted(target)))
            while isinstance(target[key], (dict, list)) and target[key] and data.draw(st.booleans()):
                target = target[key]
                key = data.draw(st.sampled_from(sorted(target) if isinstance(target, dict)
                                                else list(range(len(target)))))
            target[key] = data.draw(json_values)
    try:
        raw = canonical_json(doc)
    except ValueError:
        return
    try:
        parse_manifest(raw)
    except BundleError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_manifest_parser_on_raw_bytes(raw):
    """No 600 random bytes are a complete manifest: always a format error naming the manifest."""
    with pytest.raises(BundleFormatError, match="manifest"):
        parse_manifest(raw)


def test_keys_are_distinct_per_bundle(keys, trust):
    """Two builds of the same content differ (fresh content key, nonces, bundle id)."""
    a, b = build(keys), build(keys)
    assert a != b
    assert hashlib.sha256(a).digest() != hashlib.sha256(b).digest()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_plaintext_of_a_valid_bundle_only_raises_bundle_errors(keys, trust, good, data):
    """Past the encryption layer: mutate the decrypted archive (or its gzip stream) and re-seal."""
    import gzip as gzip_mod

    from edge.watchlist.envelope import open_envelope
    packed = open_envelope(parse_envelope(good), keys.dev7)
    layer = data.draw(st.sampled_from(["tar", "gzip"]))
    buf = bytearray(gzip_mod.decompress(packed) if layer == "tar" else packed)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(buf) - 1))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=600))
        else:
            del buf[i:i + data.draw(st.integers(1, 600))]
    payload = gz(bytes(buf)) if layer == "tar" else bytes(buf)
    try:
        got = open_bundle(sealed(payload, keys), keys.dev7, trust)
    except BundleError:
        return
    # accepted only if the content is still exactly what was signed (e.g. a change to the gzip
    # header's timestamp or OS byte, which carry no content)
    want = open_bundle(good, keys.dev7, trust)
    assert got.manifest.raw == want.manifest.raw
    np.testing.assert_array_equal(got.embeddings, want.embeddings)
    assert dict(got.thumbnails) == dict(want.thumbnails)
