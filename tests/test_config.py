import pytest
from hypothesis import given, settings, strategies as st

from edge.config import SCHEMA, describe, load_config, parse_text, validate
from edge.errors import ConfigError


def test_defaults_cover_every_option():
    cfg = validate({})
    for section, options in SCHEMA.items():
        for key, opt in options.items():
            assert getattr(getattr(cfg, section), key) == opt.default


def test_values_are_applied_and_ints_widen_to_float(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("detector:\n  score_threshold: 0.7\n  tile_size: 320\nmatch:\n  threshold_wanted: 1\n")
    cfg = load_config(p)
    assert cfg.detector.score_threshold == 0.7
    assert cfg.detector.tile_size == 320
    assert cfg.match.threshold_wanted == 1.0 and isinstance(cfg.match.threshold_wanted, float)


@pytest.mark.parametrize("data, words", [
    ({"detectr": {}}, ["detectr", "unknown section"]),
    ({"detector": {"score": 0.5}}, ["detector.score", "unknown option"]),
    ({"detector": {"score_threshold": "high"}}, ["detector.score_threshold", "expected float"]),
    ({"detector": {"score_threshold": 1.5}}, ["detector.score_threshold", "range"]),
    ({"runtime": {"threads": True}}, ["runtime.threads", "expected int"]),
    ({"runtime": {"threads": 2.5}}, ["runtime.threads", "expected int"]),
    ({"detector": {"model": "yolo"}}, ["detector.model", "not one of"]),
    ({"detector": {"roi": [0.5, 0.1, 0.2, 0.9]}}, ["detector.roi", "x0 < x1"]),
    ({"detector": {"roi": [0, 0, 1]}}, ["detector.roi", "four numbers"]),
    ({"quality": {"min_sharpness": float("nan")}}, ["quality.min_sharpness", "finite"]),
    ({"detector": ["a"]}, ["detector", "mapping"]),
    ([1, 2], ["<root>", "mapping"]),
])
def test_bad_values_name_the_key_and_reason(data, words):
    with pytest.raises(ConfigError) as err:
        validate(data)
    for w in words:
        assert w in str(err.value)


def test_file_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("detector: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        load_config(binary)


def test_config_is_read_only():
    cfg = validate({})
    with pytest.raises(AttributeError):
        cfg.detector.score_threshold = 0.1


def test_describe_lists_every_option():
    text = describe()
    for section, options in SCHEMA.items():
        for key in options:
            assert f"  {key}:" in text


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**9, 10**9), st.floats(allow_nan=True),
                         st.text(max_size=10))
yaml_values = st.recursive(yaml_scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                              st.dictionaries(st.text(max_size=8), c, max_size=4)),
                           max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(list(SCHEMA) + ["x"]),
                       st.one_of(yaml_values, st.dictionaries(
                           st.sampled_from([k for o in SCHEMA.values() for k in o] + ["zz"]), yaml_values,
                           max_size=4)), max_size=4))
def test_fuzzed_configs_give_config_or_clear_error(data):
    try:
        validate(data)
    except ConfigError as exc:
        assert ":" in str(exc)


# --- issue 14: what the runtime would refuse or re-read is refused at validation -------------

@pytest.mark.parametrize("text, where", [
    ("camera: false\n", "camera: expected a mapping"),
    ("camera: 0\n", "camera: expected a mapping"),
    ("mqtt:\n  topic_prefix: 'lfr/x'\n", "mqtt.topic_prefix"),
    ("mqtt:\n  topic_prefix: \"lfr\\n\"\n", "mqtt.topic_prefix"),
    ("mqtt:\n  topic_prefix: '+'\n", "mqtt.topic_prefix"),
    ("unit:\n  id: 'van 01'\n", "unit.id"),
    ("unit:\n  id: \"van-01\\n\"\n", "unit.id"),
    ("camera:\n  source: v4l2\n  device: /dev/../etc/passwd\n", "camera.device"),
    ("camera:\n  source: v4l2\n  device: /dev/./video0\n", "camera.device"),
    ("camera:\n  source: v4l2\n  device: /dev//video0\n", "camera.device"),
    ("camera:\n  device: \"0\\n\"\n", "camera.device"),
    ("unit:\n  id: a\n  id: b\n", "duplicate key"),
    ("unit:\n  id: a\nunit:\n  id: b\n", "duplicate key"),
])
def test_check_refuses_what_the_runtime_would_refuse(text, where):
    with pytest.raises(ConfigError, match=where):
        parse_text(text)


def test_empty_section_and_merge_keys_still_accepted():
    assert parse_text("camera:\n").camera.source == "picamera2"
    assert parse_text("unit: &u\n  id: van-01\n").unit.id == "van-01"


def test_config_file_must_be_a_regular_file(tmp_path):
    import os
    import threading
    fifo = tmp_path / "unit.yaml"
    os.mkfifo(fifo)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", _raises(lambda: load_config(fifo))), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "load_config hangs on a named pipe"
    assert "named pipe" in out["r"]
    assert "device" in _raises(lambda: load_config("/dev/zero"))


def _raises(fn) -> str:
    try:
        fn()
    except ConfigError as exc:
        return str(exc)
    raise AssertionError("no ConfigError")


def test_one_name_for_the_unit_config_and_its_mqtt_files_everywhere():
    """deploy/config/unit.yaml, the provisioned config, the option defaults, the CLI help and the docs
    all name the same files: /etc/edge-lfr/unit.yaml and /etc/edge-lfr/mqtt/unit.{crt,key}."""
    import re
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    example = yaml.safe_load((repo / "deploy/config/unit.yaml").read_text())
    provisioned = (repo / "deploy/provision/unit.yaml.in").read_text()
    defaults = validate({}).mqtt
    for key in ("ca_file", "cert_file", "key_file"):
        assert example["mqtt"][key] == getattr(defaults, key)
        assert f"{key}: {getattr(defaults, key)}" in provisioned
    texts = [p for d in ("docs", "edge", "deploy", "systemd") for p in (repo / d).rglob("*")
             if p.is_file() and p.suffix in (".md", ".py", ".sh", ".yaml", ".in", ".service", ".timer")]
    texts.append(repo / "README.md")
    for p in texts:
        text = p.read_text(encoding="utf-8", errors="replace")
        names = {n for n in re.findall(r"/etc/edge-lfr/[A-Za-z0-9_.-]+\.yaml", text)
                 if not n.endswith(".unit.yaml")}        # <unit id>.unit.yaml: the public registration file
        assert names <= {"/etc/edge-lfr/unit.yaml", "/etc/edge-lfr/trust.yaml"}, (p, names)
        assert not re.search(r"/etc/edge-lfr/mqtt/(?!ca\.crt|unit\.crt|unit\.key|unit\.csr)[A-Za-z0-9_.-]+", text), p
