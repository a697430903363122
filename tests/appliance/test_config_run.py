"""Configuration of the appliance: the camera / track / pipeline sections, network sources
refused with the key path, property-based fuzzing of whole YAML files (every bad file gives a
clear error, never a traceback), the example configs in deploy/, and sd_notify."""
import io
import os
import socket
import string
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from edge.cli.main import main
from edge.config import SCHEMA, load_config, parse_text, validate
from edge.errors import ConfigError
from edge.appliance.sdnotify import Notifier

ROOT = Path(__file__).resolve().parents[2]
NEW_SECTIONS = ("camera", "track", "pipeline")


def test_new_sections_have_defaults_that_validate():
    cfg = validate({})
    for s in NEW_SECTIONS:
        assert s in SCHEMA
    assert cfg.camera.source == "picamera2" and cfg.camera.width == 1920 and cfg.camera.height == 1080
    assert cfg.pipeline.workers >= 1 and cfg.track.max_embeds >= 1
    assert cfg.unit.state_dir  # the systemd unit's StateDirectory matches this


@pytest.mark.parametrize("data, words", [
    ({"camera": {"source": "rtsp"}}, ["camera.source", "not one of"]),
    ({"camera": {"source": "file"}}, ["camera.path", "required"]),
    ({"camera": {"source": "file", "path": "rtsp://10.1.1.1/live"}}, ["camera.path", "network source", "rtsp"]),
    ({"camera": {"path": "http://example.org/a.mp4"}}, ["camera.path", "network source"]),
    ({"camera": {"device": "udp://@:1234"}}, ["camera.device", "network source"]),
    ({"camera": {"device": "/etc/passwd"}}, ["camera.device", "not a local camera device"]),
    ({"camera": {"device": "video0"}}, ["camera.device", "not a local camera device"]),
    ({"camera": {"fps": 0}}, ["camera.fps", "range"]),
    ({"camera": {"width": "1920"}}, ["camera.width", "expected int"]),
    ({"camera": {"pace": "slow"}}, ["camera.pace", "not one of"]),
    ({"camera": {"exposure_us": -1}}, ["camera.exposure_us", "range"]),
    ({"camera": {"zoom": 2}}, ["camera.zoom", "unknown option"]),
    ({"track": {"max_embeds": 0}}, ["track.max_embeds", "range"]),
    ({"track": {"reid_min_similarity": 1.5}}, ["track.reid_min_similarity", "range"]),
    ({"track": {"realert_cooldown_seconds": "1m"}}, ["track.realert_cooldown_seconds", "expected float"]),
    ({"pipeline": {"workers": 0}}, ["pipeline.workers", "range"]),
    ({"pipeline": {"queue_frames": 10 ** 400}}, ["pipeline.queue_frames", "range"]),
    ({"pipeline": {"roi_scale": 10 ** 400}}, ["pipeline.roi_scale", "range"]),
    ({"pipeline": {"roi_model": "tiny"}}, ["pipeline.roi_model", "not one of"]),
    ({"pipeline": {"stall_seconds": float("inf")}}, ["pipeline.stall_seconds", "finite"]),
    ({"pipeline": [1]}, ["pipeline", "mapping"]),
    ({"mqtt": {"reconnect_min_seconds": 50.0, "reconnect_max_seconds": 5.0}}, ["mqtt.reconnect_min_seconds"]),
])
def test_bad_values_name_the_key_and_the_reason(data, words):
    with pytest.raises(ConfigError) as err:
        validate(data)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("path", ["/dev/video0", "/dev/v4l/by-id/usb-Logitech_C920-video-index0", "0", "12"])
def test_local_camera_devices_are_accepted(path):
    assert validate({"camera": {"source": "v4l2", "device": path}}).camera.device == path


@pytest.mark.parametrize("path", ["/srv/rig/pass-01.avi", "clips/a b.mp4", "frames/", "C-drive.mkv"])
def test_local_files_are_accepted(path):
    assert validate({"camera": {"source": "file", "path": path}}).camera.path == path


schemes = st.sampled_from(["rtsp", "rtsps", "http", "https", "udp", "tcp", "rtmp", "srt", "rtp", "ftp", "hls",
                           "mms", "mmsh", "gopher", "smb", "ws", "wss", "tls", "data", "concat", "subfile"])
hosts = st.text(alphabet=string.ascii_letters + string.digits + ".-:@/[]", min_size=0, max_size=30)


@settings(max_examples=200, deadline=None)
@given(scheme=schemes, rest=hosts, upper=st.booleans(), key=st.sampled_from(["path", "device"]),
       space=st.sampled_from(["", " ", "\t"]))
def test_any_network_url_is_refused_with_the_key_path(scheme, rest, upper, key, space):
    s = scheme.upper() if upper else scheme
    for url in (f"{space}{s}://{rest}", f"{space}{s}:{rest}"):
        with pytest.raises(ConfigError) as err:
            validate({"camera": {"source": "file" if key == "path" else "v4l2", key: url,
                                 **({"path": "x.avi"} if key == "device" else {})}})
        assert f"camera.{key}" in str(err.value)
        assert "network source" in str(err.value) or "not a local camera device" in str(err.value)


@settings(max_examples=100, deadline=None)
@given(scheme=st.from_regex(r"[a-z][a-z0-9+.\-]{0,8}", fullmatch=True), rest=hosts)
def test_every_url_scheme_with_slashes_is_a_network_source(scheme, rest):
    with pytest.raises(ConfigError, match="camera.path: .*network source"):
        validate({"camera": {"source": "file", "path": f"{scheme}://{rest}"}})


# --- whole files, fuzzed ------------------------------------------------------------------

ALL_KEYS = [(s, k) for s, opts in SCHEMA.items() for k in opts]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 30, 10 ** 30), st.integers(),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["picamera2", "v4l2", "file", "fast", "realtime", "/dev/video0", "rtsp://x/y",
                                     "short_range", "MJPG", "", "0", "clip.avi"]))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                   st.dictionaries(st.text(max_size=6), c, max_size=3)), max_leaves=8)


@st.composite
def config_docs(draw):
    doc = {}
    for _ in range(draw(st.integers(0, 6))):
        section, key = draw(st.sampled_from(ALL_KEYS + [("camera", "bogus"), ("nosuch", "x")]))
        sec = doc.setdefault(section, {})
        if isinstance(sec, dict):
            opt = SCHEMA.get(section, {}).get(key)
            good = st.just(opt.default) if opt is not None else scalars
            sec[key] = draw(st.one_of(good, values))
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(list(SCHEMA)))] = draw(values)
    return doc


raw_yaml = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["a: 2020-02-31", "camera: {fps: !!float abc}", "pipeline: {workers: !!int 0xZZ}",
                     "camera: [unclosed", "- 1\n- 2", "camera:\n  fps: 1e999", "? [a, b]\n: 1", "!!binary xx",
                     "camera: &a [*a]", "x: " + "[" * 200 + "]" * 200, "camera:\n\tfps: 3", "\x00", "~",
                     "a: &a [1,2]\nb: &b [*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c]\n"
                     "camera: {path: [*d,*d,*d,*d,*d,*d,*d]}"]),
)


def _check_file(tmp_path, text: str):
    p = tmp_path / "fuzz.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass") if isinstance(text, str) else p.write_bytes(text)
    try:
        cfg = load_config(p)
    except ConfigError as exc:
        msg = str(exc)
        assert msg and ":" in msg and "Traceback" not in msg and len(msg) < 2000
        return None
    return cfg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(doc=config_docs())
def test_fuzzed_config_files_load_or_fail_clearly(tmp_path, doc):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return
    cfg = _check_file(tmp_path, text)
    if cfg is not None:  # accepted: every value is within its schema
        for section, opts in SCHEMA.items():
            for key, opt in opts.items():
                v = getattr(getattr(cfg, section), key)
                assert isinstance(v, opt.kind)
                if opt.choices:
                    assert v in opt.choices
                if opt.min is not None:
                    assert opt.min <= v <= opt.max


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=raw_yaml)
def test_fuzzed_raw_yaml_never_gives_a_traceback(tmp_path, text):
    _check_file(tmp_path, text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=config_docs())
def test_the_cli_reports_bad_files_without_a_traceback(tmp_path, doc):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(doc))
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["config", "--check", str(p)])
    assert code in (0, 78)
    assert "Traceback" not in err.getvalue()
    if code == 78:
        assert err.getvalue().startswith("edge-lfr: error: ")


def test_alias_bomb_is_refused_quickly(tmp_path):
    import time
    bomb = ("a: &a [1,2,3,4,5,6,7,8,9]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
            "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
            "camera: {path: [*e,*e,*e,*e,*e,*e,*e,*e,*e]}\n")
    t0 = time.monotonic()
    with pytest.raises(ConfigError):
        parse_text(bomb)
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(ConfigError, match="camera.path: expected str"):
        parse_text("camera: " + bomb.split("camera: ")[1].replace("*e", "[1]"))


@pytest.mark.parametrize("name", ["unit.yaml", "rig.yaml"])
def test_example_configs_in_deploy_validate(name):
    cfg = load_config(ROOT / "deploy" / "config" / name)
    assert cfg.unit.id and cfg.unit.state_dir


def test_config_command_lists_the_new_sections():
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["config"]) == 0
    text = out.getvalue()
    for s in NEW_SECTIONS:
        assert f"\n{s}:" in text
    assert "network sources" in text.lower()


# --- sd_notify --------------------------------------------------------------------------------

def _listener(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2.0)
    return s


def test_sd_notify_sends_ready_watchdog_status_stopping(tmp_path):
    path = str(tmp_path / "n.sock")
    srv = _listener(path)
    n = Notifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
    assert n.enabled and n.watchdog_interval() == pytest.approx(1.5)
    assert n.ready("warming up")
    assert srv.recv(100) == b"READY=1\nSTATUS=warming up"
    assert n.watchdog() and srv.recv(100) == b"WATCHDOG=1"
    assert n.status("12 fps\nqueue 0") and srv.recv(100) == b"STATUS=12 fps queue 0"
    assert n.stopping() and srv.recv(100) == b"STOPPING=1"
    n.close()
    srv.close()


def test_sd_notify_abstract_socket():
    name = f"edge-lfr-test-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind("\0" + name)
    srv.settimeout(2.0)
    n = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
    assert n.ready() and srv.recv(100) == b"READY=1"
    srv.close()


def test_sd_notify_is_a_no_op_outside_systemd(tmp_path):
    n = Notifier.from_environment({})
    assert not n.enabled and n.watchdog_interval() is None
    assert n.ready() is False and n.watchdog() is False
    other = Notifier.from_environment({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})  # for another process
    assert other.watchdog_interval() is None
    gone = Notifier(str(tmp_path / "missing.sock"))
    assert gone.ready() is False  # a vanished socket is logged, never raised
