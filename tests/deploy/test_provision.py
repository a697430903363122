"""deploy/provision.sh against a temporary root: every file, owner and mode; idempotence; the
certificate hand-back; refusals with clear messages.

Nothing outside the temporary root is changed: the service user and group are added to copies
of the host's account files inside it (useradd/groupadd --prefix), owners are checked against
the uid/gid allocated there, and the host's own account files are compared before and after.
The script runs in its test mode (--no-install: no apt, venv, pip, systemctl on the host) with
this checkout's edge package run by this interpreter.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "provision.sh"
UNIT = "van-07"
BROKER = "192.0.2.10"
ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="provision.sh sets file owners, which needs root (CI runs as root)"),
    pytest.mark.skipif(not all(shutil.which(t) for t in ("useradd", "groupadd", "openssl", "flock")),
                       reason="needs useradd/groupadd (passwd), openssl and flock (util-linux)"),
]


def new_root(base: Path) -> Path:
    """A temporary root holding minimal account files and nothing else: the host's passwd and
    group (so ids are allocated as on a real system) and matching shadow/gshadow entries
    without any password hash (the host's secrets are not copied)."""
    root = base / "root"
    etc = root / "etc"
    etc.mkdir(parents=True)
    users = Path("/etc/passwd").read_text(encoding="utf-8")
    groups = Path("/etc/group").read_text(encoding="utf-8")
    (etc / "passwd").write_text(users, encoding="utf-8")
    (etc / "group").write_text(groups, encoding="utf-8")
    (etc / "shadow").write_text("".join(f"{ln.split(':')[0]}:*:19000:0:99999:7:::\n"
                                        for ln in users.splitlines() if ln), encoding="utf-8")
    (etc / "gshadow").write_text("".join(f"{ln.split(':')[0]}:*::\n" for ln in groups.splitlines() if ln),
                                 encoding="utf-8")
    for name, mode in (("passwd", 0o644), ("group", 0o644), ("shadow", 0o640), ("gshadow", 0o640)):
        (etc / name).chmod(mode)
    return root


def provision(root: Path, *args: str, unit: str | None = UNIT, broker: str | None = BROKER,
              check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["bash", str(SCRIPT), "--root", str(root), "--no-install", "--python", sys.executable]
    if unit is not None:
        cmd += ["--unit-id", unit]
    if broker is not None:
        cmd += ["--broker", broker]
    r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, f"provision.sh failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def ids(root: Path) -> dict[str, int]:
    """Names -> ids from the temporary root's own account files."""
    out = {}
    for line in (root / "etc" / "passwd").read_text(encoding="utf-8").splitlines():
        f = line.split(":")
        out["user:" + f[0]] = int(f[2])
    for line in (root / "etc" / "group").read_text(encoding="utf-8").splitlines():
        f = line.split(":")
        out["group:" + f[0]] = int(f[2])
    return out


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: type, mode, owner, group, and content hash or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "->" + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = ""
            out[str(p.relative_to(root))] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, what)
    return out


@pytest.fixture(scope="module")
def host_accounts():
    before = {n: (Path("/etc") / n).read_bytes() for n in ACCOUNT_FILES if (Path("/etc") / n).exists()}
    yield
    after = {n: (Path("/etc") / n).read_bytes() for n in ACCOUNT_FILES if (Path("/etc") / n).exists()}
    assert before == after, "provision.sh changed the host's own account files"


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory, host_accounts):
    root = new_root(tmp_path_factory.mktemp("prov"))
    first = provision(root)
    return root, first


# The complete expected tree under the folders provisioning owns: path -> (mode, owner, group).
EXPECTED = {
    "etc/edge-lfr": ("drwxr-x---", "root", "edge-lfr"),
    "etc/edge-lfr/unit.yaml": ("-rw-r-----", "root", "edge-lfr"),
    "etc/edge-lfr/device.key": ("-rw-------", "edge-lfr", "edge-lfr"),
    f"etc/edge-lfr/{UNIT}.unit.yaml": ("-rw-r--r--", "root", "root"),
    "etc/edge-lfr/mqtt": ("drwxr-x---", "root", "edge-lfr"),
    "etc/edge-lfr/mqtt/unit.key": ("-rw-------", "edge-lfr", "edge-lfr"),
    "etc/edge-lfr/mqtt/unit.csr": ("-rw-r--r--", "root", "root"),
    "var/lib/edge-lfr": ("drwx------", "edge-lfr", "edge-lfr"),
    "opt/edge-lfr": ("drwxr-xr-x", "root", "root"),
    "opt/edge-lfr/models": ("drwxr-xr-x", "root", "root"),
    "opt/edge-lfr/docs": ("drwxr-xr-x", "root", "root"),
    "opt/edge-lfr/docs/service.md": ("-rw-r--r--", "root", "root"),
    "etc/systemd/system/edge-lfr.service": ("-rw-r--r--", "root", "root"),
    "etc/systemd/system/edge-lfr.service.d": ("drwxr-xr-x", "root", "root"),
    "etc/systemd/system/edge-lfr.service.d/broker.conf": ("-rw-r--r--", "root", "root"),
    "etc/udev/rules.d/70-edge-lfr.rules": ("-rw-r--r--", "root", "root"),
    "etc/systemd/system/edge-lfr-purge.service": ("-rw-r--r--", "root", "root"),
    "etc/systemd/system/edge-lfr-purge.timer": ("-rw-r--r--", "root", "root"),
    "opt/edge-lfr/docs/privacy.md": ("-rw-r--r--", "root", "root"),
}
OWNED = ("etc/edge-lfr", "var/lib/edge-lfr", "opt/edge-lfr", "etc/systemd/system/edge-lfr.service",
         "etc/systemd/system/edge-lfr-purge.", "etc/udev/rules.d/70-edge-lfr.rules")


def model_files() -> list[str]:
    import json
    m = json.loads((ROOT / "models" / "manifest.json").read_text(encoding="utf-8"))
    names = {"manifest.json"}
    for e in m["models"].values():
        names.add(e["file"])
        if "licence_file" in e:
            names.add(e["licence_file"])
        if isinstance(e.get("edgetpu"), dict):
            names.add(e["edgetpu"]["file"])
    if "cohort_file" in m.get("score_normalisation", {}):
        names.add(m["score_normalisation"]["cohort_file"])
    return sorted(names)


def test_service_account_is_created_in_the_temporary_root_only(provisioned):
    root, _ = provisioned
    entry = next(line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("edge-lfr:"))
    name, _, uid, gid, _, home, shell = entry.split(":")
    assert home == "/var/lib/edge-lfr" and shell == "/usr/sbin/nologin"
    assert 0 < int(uid) < 1000, "a system user (uid below 1000)"
    assert int(gid) == ids(root)["group:edge-lfr"]
    assert re.search(r"^edge-lfr:[!*]", (root / "etc/shadow").read_text(), re.M), "no password: locked"
    assert "edge-lfr:" not in Path("/etc/passwd").read_text(), "the host must not get the user"


def test_every_file_owner_and_mode(provisioned):
    root, _ = provisioned
    idmap = ids(root)
    expected = dict(EXPECTED)
    for f in model_files():
        expected[f"opt/edge-lfr/models/{f}"] = ("-rw-r--r--", "root", "root")
    tree = snapshot(root)
    for path, (mode, user, group) in expected.items():
        assert path in tree, f"{path} was not created"
        got_mode, uid, gid, _ = tree[path]
        assert got_mode == mode, f"{path}: mode {got_mode}, expected {mode}"
        assert uid == idmap["user:" + user], f"{path}: owner uid {uid}, expected {user} ({idmap['user:' + user]})"
        assert gid == idmap["group:" + group], f"{path}: group gid {gid}, expected {group}"
    # nothing else in the folders provisioning owns (no scratch files, no stray keys)
    extra = sorted(p for p in tree if p.startswith(OWNED) and p not in expected)
    assert not extra, f"unexpected files: {extra}"
    # private keys are readable by the service user only
    for key in ("etc/edge-lfr/device.key", "etc/edge-lfr/mqtt/unit.key"):
        assert stat.S_IMODE((root / key).stat().st_mode) == 0o600


def test_unit_is_enabled_inside_the_root(provisioned):
    root, _ = provisioned
    if not shutil.which("systemctl"):
        pytest.skip("systemctl not installed: the offline enable step is skipped")
    link = root / "etc/systemd/system/multi-user.target.wants/edge-lfr.service"
    assert link.is_symlink() and os.readlink(link) == "/etc/systemd/system/edge-lfr.service"
    timer = root / "etc/systemd/system/timers.target.wants/edge-lfr-purge.timer"
    assert timer.is_symlink() and os.readlink(timer) == "/etc/systemd/system/edge-lfr-purge.timer"


def test_config_validates_and_names_the_unit_and_broker(provisioned):
    from edge.config import load_config
    root, _ = provisioned
    cfg = load_config(root / "etc/edge-lfr/unit.yaml")
    assert cfg.unit.id == UNIT
    assert cfg.unit.state_dir == "/var/lib/edge-lfr"
    assert cfg.unit.device_key == "/etc/edge-lfr/device.key"
    assert cfg.unit.trust_file == "/etc/edge-lfr/trust.yaml"
    assert (cfg.mqtt.host, cfg.mqtt.port) == (BROKER, 8883)
    assert cfg.mqtt.key_file == "/etc/edge-lfr/mqtt/unit.key"
    assert cfg.mqtt.cert_file == "/etc/edge-lfr/mqtt/unit.crt"
    assert cfg.mqtt.ca_file == "/etc/edge-lfr/mqtt/ca.crt"
    assert cfg.runtime.models_dir == "/opt/edge-lfr/models"


def test_device_key_pair_and_registration(provisioned):
    from edge.watchlist.keys import load_device_key, load_unit_public
    root, first = provisioned
    key = load_device_key(root / "etc/edge-lfr/device.key", UNIT)
    reg = load_unit_public(root / f"etc/edge-lfr/{UNIT}.unit.yaml")
    assert reg.unit_id == UNIT and reg.key_id == key.key_id
    # the summary names the unit and shows the public key to register
    assert f"unit id: {UNIT}" in first.stdout
    assert f"key_id: {key.key_id}" in first.stdout
    assert "/etc/edge-lfr/mqtt/unit.csr" in first.stdout


def test_mqtt_key_and_certificate_request(provisioned):
    root, first = provisioned
    csr = root / "etc/edge-lfr/mqtt/unit.csr"
    key = root / "etc/edge-lfr/mqtt/unit.key"
    r = subprocess.run(["openssl", "req", "-in", str(csr), "-noout", "-verify", "-subject", "-nameopt", "RFC2253"],
                       capture_output=True, text=True, check=True)
    assert "CN=van-07,OU=unit,O=edge-lfr" in r.stdout  # as make-certs.sh issues unit certificates
    csr_pub = subprocess.run(["openssl", "req", "-in", str(csr), "-noout", "-pubkey"],
                             capture_output=True, text=True, check=True).stdout
    key_pub = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout"],
                             capture_output=True, text=True, check=True).stdout
    assert csr_pub == key_pub
    text = subprocess.run(["openssl", "pkey", "-in", str(key), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "prime256v1" in text or "P-256" in text
    assert "-----BEGIN CERTIFICATE REQUEST-----" in first.stdout


def test_models_match_the_manifest(provisioned):
    from edge.recognition.runtime import find_models_dir, load_manifest
    root, _ = provisioned
    d = find_models_dir(root / "opt/edge-lfr/models")
    m = load_manifest(d)
    for name, entry in m["models"].items():
        assert hashlib.sha256((d / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], name
    sn = m["score_normalisation"]   # without it the service exits 69 ("background cohort file missing")
    assert hashlib.sha256((d / sn["cohort_file"]).read_bytes()).hexdigest() == sn["sha256"]


def test_systemd_files(provisioned):
    root, _ = provisioned
    assert (root / "etc/systemd/system/edge-lfr.service").read_bytes() == \
        (ROOT / "systemd/edge-lfr.service").read_bytes()
    dropin = (root / "etc/systemd/system/edge-lfr.service.d/broker.conf").read_text()
    assert re.search(r"^\[Service\]$", dropin, re.M)
    assert re.findall(r"^IPAddressAllow=(.*)$", dropin, re.M) == [BROKER]
    assert (root / "etc/udev/rules.d/70-edge-lfr.rules").read_bytes() == \
        (ROOT / "deploy/provision/70-edge-lfr.rules").read_bytes()
    for name in ("edge-lfr-purge.service", "edge-lfr-purge.timer"):
        assert (root / "etc/systemd/system" / name).read_bytes() == (ROOT / "systemd" / name).read_bytes()


def test_second_run_changes_nothing(provisioned):
    root, _ = provisioned
    before = snapshot(root)
    again = provision(root)
    assert snapshot(root) == before
    assert "nothing to change" in again.stdout


def test_drift_is_repaired_and_keys_and_config_are_kept(tmp_path):
    root = new_root(tmp_path)
    provision(root)
    key = root / "etc/edge-lfr/device.key"
    mqtt_key = root / "etc/edge-lfr/mqtt/unit.key"
    config = root / "etc/edge-lfr/unit.yaml"
    key_bytes, mqtt_bytes = key.read_bytes(), mqtt_key.read_bytes()
    config.write_text(config.read_text() + "match:\n  threshold_wanted: 0.9\n")  # a technician's edit
    edited = config.read_bytes()
    key.chmod(0o644)
    os.chown(config, 0, 0)
    (root / "var/lib/edge-lfr").chmod(0o755)
    r = provision(root)
    assert "repaired" in r.stdout
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert config.stat().st_gid == ids(root)["group:edge-lfr"]
    assert stat.S_IMODE((root / "var/lib/edge-lfr").stat().st_mode) == 0o700
    assert key.read_bytes() == key_bytes and mqtt_key.read_bytes() == mqtt_bytes
    assert config.read_bytes() == edited


def test_a_killed_run_is_completed_by_the_next(tmp_path):
    root = new_root(tmp_path)
    provision(root)
    (root / "etc/edge-lfr/unit.yaml").unlink()
    (root / "etc/edge-lfr/mqtt/unit.csr").unlink()
    (root / "etc/systemd/system/edge-lfr.service.d/broker.conf").unlink()
    scratch = root / "etc/edge-lfr/.provision.AbC123"
    scratch.mkdir()
    (scratch / "device.key").write_text("left over by a killed run")
    key_bytes = (root / "etc/edge-lfr/device.key").read_bytes()
    provision(root)
    assert not scratch.exists()
    for p in ("etc/edge-lfr/unit.yaml", "etc/edge-lfr/mqtt/unit.csr",
              "etc/systemd/system/edge-lfr.service.d/broker.conf"):
        assert (root / p).is_file(), p
    assert (root / "etc/edge-lfr/device.key").read_bytes() == key_bytes


def sign_csr(ca_dir: Path, csr: Path, out: Path) -> None:
    """What the back office does with the unit's CSR (same extensions as make-certs.sh unit)."""
    ext = ca_dir / "client.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                   "extendedKeyUsage=clientAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.crt"),
                    "-CAkey", str(ca_dir / "ca.key"), "-set_serial", "0x01", "-days", "30", "-sha256",
                    "-extfile", str(ext), "-out", str(out)], check=True, capture_output=True)


def test_certificates_from_the_back_office_are_checked_and_installed(tmp_path):
    root = new_root(tmp_path)
    provision(root)
    ca = tmp_path / "ca"
    subprocess.run(["bash", str(ROOT / "deploy/make-certs.sh"), "-d", str(ca), "ca"], check=True, capture_output=True)
    subprocess.run(["bash", str(ROOT / "deploy/make-certs.sh"), "-d", str(ca), "unit", "van-99"],
                   check=True, capture_output=True)
    signed = tmp_path / "van-07.crt"
    sign_csr(ca, root / "etc/edge-lfr/mqtt/unit.csr", signed)

    # another unit's certificate: refused, nothing installed
    r = provision(root, "--ca", str(ca / "ca.crt"), "--unit-cert", str(ca / "van-99.crt"), check=False)
    assert r.returncode == 1 and "does not belong to /etc/edge-lfr/mqtt/unit.key" in r.stderr
    assert not (root / "etc/edge-lfr/mqtt/unit.crt").exists()

    # a certificate for this key from a CA other than the one given: refused
    other = tmp_path / "other-ca"
    subprocess.run(["bash", str(ROOT / "deploy/make-certs.sh"), "-d", str(other), "ca"], check=True, capture_output=True)
    r = provision(root, "--ca", str(other / "ca.crt"), "--unit-cert", str(signed), check=False)
    assert r.returncode == 1 and "not signed by" in r.stderr
    shutil.rmtree(other)

    r = provision(root, "--ca", str(ca / "ca.crt"), "--unit-cert", str(signed))
    idmap = ids(root)
    for name in ("ca.crt", "unit.crt"):
        p = root / "etc/edge-lfr/mqtt" / name
        st = p.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o644, 0, 0), name
    assert (root / "etc/edge-lfr/mqtt/unit.crt").read_bytes() == signed.read_bytes()
    assert "re-run" not in r.stdout.split("unit id:")[1]  # nothing left to install
    before = snapshot(root)
    again = provision(root, "--ca", str(ca / "ca.crt"), "--unit-cert", str(signed))
    assert snapshot(root) == before and "nothing to change" in again.stdout
    assert idmap == ids(root)


@pytest.mark.parametrize("broker, host, port, allow", [
    ("localhost", "localhost", 8883, "localhost"),
    ("127.0.0.1:1883", "127.0.0.1", 1883, "127.0.0.1"),
    ("[2001:db8::1]:8884", "2001:db8::1", 8884, "2001:db8::1"),
    ("2001:DB8:0::2", "2001:db8::2", 8883, "2001:db8::2"),
])
def test_broker_forms(tmp_path, broker, host, port, allow):
    from edge.config import load_config
    root = new_root(tmp_path)
    provision(root, broker=broker)
    cfg = load_config(root / "etc/edge-lfr/unit.yaml")
    assert (cfg.mqtt.host, cfg.mqtt.port) == (host, port)
    dropin = (root / "etc/systemd/system/edge-lfr.service.d/broker.conf").read_text()
    assert re.findall(r"^IPAddressAllow=(.*)$", dropin, re.M) == [allow]


@pytest.mark.parametrize("args, message", [
    (dict(unit=None), "missing --unit-id"),
    (dict(unit=""), "missing --unit-id"),
    (dict(unit="van 07"), "bad --unit-id 'van 07'"),
    (dict(unit="van/07"), "bad --unit-id"),
    (dict(unit="../etc"), "bad --unit-id"),
    (dict(unit="v" * 65), "bad --unit-id"),
    (dict(unit="van-07;rm"), "bad --unit-id"),
    (dict(broker=None), "missing --broker"),
    (dict(broker="broker.example.org"), "give an IP address or localhost"),
    (dict(broker="192.0.2.300"), "give an IP address or localhost"),
    (dict(broker="192.0.2.10:0"), "bad --broker port"),
    (dict(broker="192.0.2.10:70000"), "bad --broker port"),
    (dict(broker="192.0.2.10:x"), "bad --broker"),
    (dict(extra=("--frobnicate",)), "unknown argument: --frobnicate"),
    (dict(extra=("--models",)), "--models needs a value"),
    (dict(extra=("--unit-cert", "/nonexistent.crt")), "--unit-cert /nonexistent.crt: not found"),
])
def test_bad_arguments_exit_2_and_change_nothing(tmp_path, args, message):
    root = new_root(tmp_path)
    before = snapshot(root)
    r = provision(root, *args.get("extra", ()), unit=args.get("unit", UNIT), broker=args.get("broker", BROKER),
                  check=False)
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert message in r.stderr, r.stderr
    assert snapshot(root) == before


def test_root_other_than_slash_needs_test_mode(tmp_path):
    root = new_root(tmp_path)
    r = subprocess.run(["bash", str(SCRIPT), "--root", str(root), "--unit-id", UNIT, "--broker", BROKER],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "needs --no-install" in r.stderr


def test_root_without_account_files_says_what_to_do(tmp_path):
    root = tmp_path / "empty-root"
    root.mkdir()
    r = provision(root, check=False)
    assert r.returncode == 2, r.stderr
    assert "has no etc/passwd" in r.stderr and "unpacked image's root file system" in r.stderr
    assert "cp /etc/{passwd,group,shadow,gshadow}" in r.stderr
    assert list(root.iterdir()) == []


def test_a_provisioned_unit_keeps_its_id_and_broker(provisioned):
    root, _ = provisioned
    before = snapshot(root)
    r = provision(root, unit="van-08", check=False)
    assert r.returncode == 1 and "provisioned as 'van-07'" in r.stderr
    r = provision(root, broker="192.0.2.11", check=False)
    assert r.returncode == 1 and "names broker 192.0.2.10:8883, not 192.0.2.11:8883" in r.stderr
    assert snapshot(root) == before


def test_help():
    r = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0
    for word in ("--unit-id", "--broker", "--root", "--no-install", "--wheel-or-src", "--unit-cert", "--ca"):
        assert word in r.stdout
