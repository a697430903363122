"""The service under a real systemd as PID 1: a Debian Bookworm VM (see vm.py) with no network
beyond two port forwards, provisioned by the real ``provision.sh --offline`` (apt, venv and pip
from the signed bundle, useradd, systemctl enable/start, udev reload), its MQTT certificate
issued the way docs/service.md tells the back office to, the van-local mosquitto (from the
bundle's .debs) with TLS and the ACL from deploy/make-certs.sh, a signed watchlist loaded, and
a composed clip looping as the camera. Then, from outside: READY, alerts at a subscriber,
``kill -9`` and the restart, no alert lost or duplicated by event id, a stalled pipeline and
the watchdog, the purge timer, ``systemd-analyze security`` of the installed unit, a reboot.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import pytest
import yaml

from .systest import ROOT, offline_bundle, progress, record, require_root, require_tools, rootfs_tar, run
from .vm import PACKAGES, VM

SHARED_FACES = ROOT.parent / "shared" / "faces"
T = "vm"
UNIT = "van-vm"
OBSERVER = "systest-observer"
EDGE = [sys.executable, "-m", "edge.cli"]


class Alerts:
    """Every alert the observer receives from the VM's broker (TLS, observer certificate)."""

    def __init__(self, certs: Path, port: int):
        from edge.alerts.subscriber import Subscriber
        self.messages: list[dict] = []
        self.lock = threading.Lock()
        self.sub = Subscriber("127.0.0.1", port, str(certs / "ca.crt"), str(certs / f"{OBSERVER}.crt"),
                              str(certs / f"{OBSERVER}.key"), [f"lfr/{UNIT}/alert"], self._add,
                              client_id=OBSERVER, persistent=True, session_expiry=3600, reconnect_max=1.0)

    def _add(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.messages.append(json.loads(payload))

    def ids(self) -> list[str]:
        with self.lock:
            return [m["event_id"] for m in self.messages]

    def wait(self, n: int, timeout: float) -> bool:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if len(set(self.ids())) >= n:
                return True
            time.sleep(0.5)
        return False


def mono(vm: VM) -> float:
    return float(vm.sh("cut -d' ' -f1 /proc/uptime").stdout)


def usec(props: dict, name: str) -> float:
    return int(props[name]) / 1e6


def outbox(vm: VM) -> list[tuple[str, bool]]:
    """(event_id, delivered) of every alert the unit committed to its outbox."""
    out = vm.sh("/opt/edge-lfr/venv/bin/python -c \"import sqlite3, json; c = sqlite3.connect('file:/var/lib/edge-lfr/"
                "outbox.sqlite?mode=ro', uri=True); print(json.dumps(c.execute('SELECT event_id, delivered_at IS NOT NULL "
                "FROM outbox ORDER BY seq').fetchall()))\"").stdout
    return [(e, bool(d)) for e, d in json.loads(out)]


@pytest.fixture(scope="module")
def vm(tmp_path_factory, recognizer):
    require_root()
    require_tools("mmdebstrap", "qemu-system-x86_64", "mke2fs", "ssh", "scp", "ssh-keygen", "openssl")
    if not (SHARED_FACES / "README.md").is_file():
        pytest.skip(f"real-face data not found at {SHARED_FACES} (clone the project with ../shared beside it)")
    tar = rootfs_tar("amd64", PACKAGES)
    bundle, pub = offline_bundle(tmp_path_factory.mktemp("bundle"))
    work = Path(tempfile.mkdtemp(prefix="edge-lfr-vm-", dir="/var/tmp"))
    host = tmp_path_factory.mktemp("host")
    machine = VM(work, tar)
    try:
        progress("VM: building the disk image")
        machine.build_disk()
        machine.probe_kvm()
        shutil.copy(bundle, machine.root / "root/bundle.tar")
        shutil.copy(pub, machine.root / "root/release.pub.yaml")
        machine.make_image()
        machine.boot()
        boot_s = machine.wait_ssh(600)
        record(T, "accelerator", machine.accel, machine.accel_note)
        record(T, "first boot to ssh", f"{boot_s:.1f} s", machine.accel)
        assert machine.sh("ps -p 1 -o comm=").stdout.strip() == "systemd"

        # 1. provisioning from the bundle, as a technician does it (no network in the VM at all)
        progress("VM: provision.sh --offline (real install path: apt from the bundle, venv, pip, systemctl)")
        t = time.monotonic()
        p = machine.sh("cd /root && tar -xf bundle.tar --wildcards '*/deploy/*' && bash edge-lfr-offline-*/deploy/"
                       f"provision.sh --offline /root/bundle.tar --release-key /root/release.pub.yaml --unit-id {UNIT} "
                       "--broker 127.0.0.1", timeout=1800, check=False)
        assert p.returncode == 0, f"provision.sh failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        assert "good signature" in p.stdout and "enabled; it starts once the MQTT certificates" in p.stdout, p.stdout
        record(T, "provision.sh --offline, first run", f"{time.monotonic() - t:.0f} s", "KVM" if machine.accel == "kvm" else "TCG")
        machine.sh("! ip route | grep -q default || ! getent hosts deb.debian.org")   # the VM is offline

        # 2. the back office: MQTT CA, broker and observer certificates, the unit's CSR signed, ACL
        certs = host / "mqtt-certs"
        mk = ["bash", str(ROOT / "deploy/make-certs.sh"), "-d", str(certs)]
        run(mk + ["ca"], timeout=60)
        run(mk + ["server", "broker", "127.0.0.1", "localhost"], timeout=60)
        run(mk + ["observer", OBSERVER], timeout=60)
        (host / "unit.csr").write_text(machine.sh("cat /etc/edge-lfr/mqtt/unit.csr").stdout)
        (host / "client.ext").write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                         "extendedKeyUsage=clientAuth\n")
        run(["openssl", "x509", "-req", "-in", str(host / "unit.csr"), "-CA", str(certs / "ca.crt"), "-CAkey",
             str(certs / "ca.key"), "-set_serial", "0x1f00d", "-days", "30", "-sha256", "-extfile",
             str(host / "client.ext"), "-out", str(certs / f"{UNIT}.crt")], timeout=60)
        run(mk + ["acl"], timeout=60)

        # 3. the van-local broker (mosquitto from the bundle's .debs) with TLS, per deploy/mosquitto
        conf = (ROOT / "deploy/mosquitto/van-local/mosquitto.conf.in").read_text()
        conf = conf[:conf.index("\nconnection ")] + "\n"   # no bridge: the VM has no headquarters to reach
        for k, v in {"RUN_AS": "mosquitto", "PORT": "8883", "BIND_ADDRESS": "0.0.0.0", "CERT_DIR": "/etc/mosquitto/certs",
                     "SERVER": "broker", "DATA_DIR": "/var/lib/mosquitto", "LOG_DEST": "syslog", "UNIT": UNIT}.items():
            conf = conf.replace(f"@{k}@", v)
        assert "@" not in re.sub(r"#.*", "", conf), "unrendered placeholder in the mosquitto configuration"
        (host / "mosquitto.conf").write_text(conf)
        machine.sh("mkdir -p /etc/mosquitto/certs")
        for f in ("ca.crt", "broker.crt", "broker.key", "acl"):
            machine.put(certs / f, f"/etc/mosquitto/certs/{f}")
        machine.put(host / "mosquitto.conf", "/etc/mosquitto/mosquitto.conf")
        machine.sh("chown mosquitto /etc/mosquitto/certs/broker.key && chmod 600 /etc/mosquitto/certs/broker.key && "
                   "systemctl restart mosquitto && systemctl is-active mosquitto")

        # 4. a watchlist: issuer key trusted by the unit, two listed people signed for this unit
        run(EDGE + ["keys", "issuer", "--name", "hq-systest", "--out", str(host / "keys")], timeout=60)
        (host / f"{UNIT}.unit.yaml").write_text(machine.sh(f"cat /etc/edge-lfr/{UNIT}.unit.yaml").stdout)
        from edge.tools.composer import Actor, Scene, cast
        from edge.config import validate
        thr = validate({}).match.threshold_wanted
        people = cast(recognizer, SHARED_FACES, listed=1, unlisted=0, seed=7, min_genuine=thr + 0.012,
                      max_impostor=thr - 0.05, prefix="V")
        enrol = host / "enrol"
        enrol.mkdir()
        with open(enrol / "list.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["subject_id", "category", "reason_code", "image", "source_ref", "threshold"])
            for person in people:
                if person.subject_id:
                    cv2.imwrite(str(enrol / f"{person.subject_id}.png"), cv2.cvtColor(person.enrol_image, cv2.COLOR_RGB2BGR))
                    w.writerow([person.subject_id, "wanted", "R-TEST", f"{person.subject_id}.png", "system test", ""])
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 6 * 3600))
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))   # trusted before it signs
        run(EDGE + ["watchlist", "build", "--images", str(enrol), "--manifest", str(enrol / "list.csv"),
                    "--issuer-key", str(host / "keys/hq-systest.issuer.key"), "--unit", str(host / f"{UNIT}.unit.yaml"),
                    "--operation-id", "OP-SYSTEST", "--authorising-officer", "SYSTEST", "--valid-until", until,
                    "--out", str(host / "B.edgewl"), "--quiet", "--strict"], timeout=600)
        machine.put(host / "keys/hq-systest.issuer.pub.yaml", "/root/hq.issuer.pub.yaml")
        machine.put(host / "B.edgewl", "/tmp/B.edgewl")
        machine.sh("/opt/edge-lfr/venv/bin/edge-lfr keys trust add --config /etc/edge-lfr/unit.yaml "
                   f"--issuer /root/hq.issuer.pub.yaml --valid-from {since} --valid-until {until} && chmod 644 /tmp/B.edgewl && "
                   "runuser -u edge-lfr -- /opt/edge-lfr/venv/bin/edge-lfr watchlist load --config /etc/edge-lfr/unit.yaml "
                   "/tmp/B.edgewl", timeout=300)

        # 5. the camera: a composed clip, looped (every pass is new tracks); pace "fast", i.e. no
        #    frame dropped, because under TCG the pipeline is slower than real time
        actors = [Actor(pp.label, f"h{i}", pp.subject_id, 0.3 + 1.5 * i, 3.3 + 1.5 * i,
                        ((0.1, 0.35 + 0.2 * (i % 2)), (0.9, 0.35 + 0.2 * (i % 2))), (90, 120, 75, 110)[i % 4])
                  for i, pp in enumerate(people)]
        scene = Scene({f"h{i}": pp.head for i, pp in enumerate(people)}, actors, size=(640, 360), fps=10.0,
                      duration=max(a.end for a in actors) + 0.5, background=SHARED_FACES / "video" / "vtest.avi")
        scene.write_video(host / "pass.avi")
        machine.sh("mkdir -p /opt/edge-lfr/rig")
        machine.put(host / "pass.avi", "/opt/edge-lfr/rig/pass.avi")
        machine.sh("chmod 644 /opt/edge-lfr/rig/pass.avi && cat >> /etc/edge-lfr/unit.yaml <<'EOF'\n"
                   "camera:\n  source: file\n  path: /opt/edge-lfr/rig/pass.avi\n  loop: true\n  pace: fast\n"
                   "track:\n  realert_cooldown_seconds: 0.0\n"
                   # one inference thread: under TCG the unit would otherwise starve sshd of CPU
                   "pipeline:\n  workers: 1\nEOF\n"
                   "sed -i 's/^runtime:$/runtime:\\n  threads: 1/' /etc/edge-lfr/unit.yaml\n"
                   "/opt/edge-lfr/venv/bin/edge-lfr config --check /etc/edge-lfr/unit.yaml >/dev/null")

        # 6. the observer subscribes, then the certificates go in and provisioning starts the service
        alerts = Alerts(certs, machine.mqtt_port)
        alerts.sub.start()
        machine.put(certs / "ca.crt", "/root/ca.crt")
        machine.put(certs / f"{UNIT}.crt", f"/root/{UNIT}.crt")
        p = machine.sh(f"bash /root/edge-lfr-offline-*/deploy/provision.sh --offline /root/bundle.tar --release-key "
                       f"/root/release.pub.yaml --unit-id {UNIT} --broker 127.0.0.1 --ca /root/ca.crt "
                       f"--unit-cert /root/{UNIT}.crt", timeout=900, check=False)
        assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        assert "enabled and running" in p.stdout, p.stdout
        yield {"vm": machine, "alerts": alerts, "listed": [a.subject_id for a in actors if a.subject_id],
               "pass_s": scene.duration}
        alerts.sub.stop()
    finally:
        machine.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_service_reaches_ready(vm):
    m = vm["vm"]
    props = m.show("edge-lfr", "ActiveState", "SubState", "Type", "ExecMainStartTimestampMonotonic",
                   "ActiveEnterTimestampMonotonic", "MainPID", "User", "StatusText")
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] == "notify" and props["User"] == "edge-lfr"
    ready = usec(props, "ActiveEnterTimestampMonotonic") - usec(props, "ExecMainStartTimestampMonotonic")
    assert 0 < ready < 120
    record(T, "start to READY=1 (Type=notify)", f"{ready:.2f} s", f"status: {props['StatusText'][:60]}")
    # the sandbox as real systemd builds it: seccomp, namespaces, MemoryDenyWriteExecute, IP firewall
    st = m.sh("grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/$(systemctl show -p MainPID --value edge-lfr)/status").stdout
    assert "Seccomp:\t2" in st and "NoNewPrivs:\t1" in st and "CapEff:\t0000000000000000" in st, st
    log = m.sh("journalctl -b -u edge-lfr -p warning --no-pager -o cat").stdout
    assert "firewall" not in log.lower() and "bpf" not in log.lower(), log


def test_alerts_reach_the_broker(vm):
    alerts = vm["alerts"]
    t = time.monotonic()
    assert alerts.wait(len(vm["listed"]), timeout=600), f"only {len(alerts.ids())} alerts in 600 s"
    record(T, "wait for the first alerts at the observer", f"{time.monotonic() - t:.0f} s", "TCG: a slow pipeline")
    with alerts.lock:
        msgs = list(alerts.messages)
    assert all(m["unit_id"] == UNIT for m in msgs)
    assert {m["subject_id"] for m in msgs} <= set(vm["listed"])   # only listed people, never the passer-by
    record(T, "alerts at the observer (TLS broker in the VM)", len(alerts.ids()), "first pass of the clip")


def test_kill_9_restarts_and_no_alert_is_lost_or_duplicated(vm):
    m, alerts = vm["vm"], vm["alerts"]
    before = m.show("edge-lfr", "MainPID", "NRestarts")
    t_kill = float(m.sh(f"cut -d' ' -f1 /proc/uptime; kill -9 {before['MainPID']}").stdout.split()[0])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = m.show("edge-lfr", "MainPID", "ActiveState", "NRestarts", "ActiveEnterTimestampMonotonic")
        if now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"]):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"edge-lfr did not come back after kill -9: {now}")
    assert int(now["NRestarts"]) == int(before["NRestarts"]) + 1
    restart = usec(now, "ActiveEnterTimestampMonotonic") - t_kill
    record(T, "kill -9 -> active (READY) again", f"{restart:.1f} s", "RestartSec=10s included")
    # keep it running for two more alerts, then stop it and let every committed alert out
    n = len(set(alerts.ids()))
    assert alerts.wait(n + 2, timeout=600), "no alert after the restart"
    m.sh("systemctl stop edge-lfr")
    m.sh("systemctl start edge-lfr", timeout=180)   # the outbox is drained by the publisher
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        made = outbox(m)
        if all(d for _, d in made) and set(alerts.ids()) >= {e for e, _ in made}:
            break
        time.sleep(1)
    made_ids = [e for e, _ in made]
    got = alerts.ids()
    dup = len(got) - len(set(got))
    record(T, "alerts made (outbox) / delivered (unique event ids) / duplicated",
           f"{len(made_ids)} / {len(set(got) & set(made_ids))} / {dup}", "across kill -9, stop and start")
    assert len(made_ids) == len(set(made_ids)) >= len(vm["listed"]) + 2
    assert set(made_ids) == set(got), (set(made_ids) ^ set(got))
    assert dup == 0


def test_a_stalled_pipeline_trips_the_watchdog(vm):
    """SIGSTOP freezes every thread (as a deadlock would): no WATCHDOG=1, so systemd aborts and restarts it."""
    m = vm["vm"]
    before = m.show("edge-lfr", "MainPID", "NRestarts", "WatchdogUSec")
    assert before["WatchdogUSec"] == "30s"
    t_stop = float(m.sh(f"cut -d' ' -f1 /proc/uptime; kill -STOP {before['MainPID']}").stdout.split()[0])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        log = m.sh("journalctl -b -u edge-lfr --no-pager -o short-monotonic | grep -i 'watchdog timeout' | tail -1",
                   check=False).stdout
        now = m.show("edge-lfr", "MainPID", "ActiveState", "NRestarts")
        if log and now["ActiveState"] == "active" and int(now["NRestarts"]) > int(before["NRestarts"]):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"no watchdog restart: {now}\n{log}")
    t_fire = float(re.match(r"\[\s*([0-9.]+)\]", log.strip()).group(1))
    record(T, "stalled (SIGSTOP) -> watchdog fires", f"{t_fire - t_stop:.1f} s", "WatchdogSec=30s; then restarted")
    res = m.sh("journalctl -b -u edge-lfr --no-pager -o cat | grep -E \"Failed with result 'watchdog'|Killing process\" "
               "| tail -2", check=False).stdout
    assert "watchdog" in res, res


def test_the_purge_timer_runs_the_purge(vm):
    """The installed timer is enabled and waiting; with a runtime drop-in (/run, gone at reboot)
    firing every 20 s, the timer itself starts the sandboxed purge service, which succeeds."""
    m = vm["vm"]
    t = m.show("edge-lfr-purge.timer", "ActiveState", "UnitFileState", "NextElapseUSecRealtime")
    assert t["ActiveState"] == "active" and t["UnitFileState"] == "enabled", t
    m.sh("mkdir -p /run/systemd/system/edge-lfr-purge.timer.d && printf '[Timer]\\nOnCalendar=\\nOnCalendar=*:*:0/20\\n"
         "RandomizedDelaySec=0\\nAccuracySec=1s\\n' > /run/systemd/system/edge-lfr-purge.timer.d/systest.conf && "
         "systemctl daemon-reload && systemctl restart edge-lfr-purge.timer")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        s = m.show("edge-lfr-purge.service", "Result", "ExecMainStatus", "ExecMainExitTimestampMonotonic", "NRestarts")
        if s["ExecMainExitTimestampMonotonic"] not in ("0", ""):
            break
        time.sleep(1)
    else:
        raise AssertionError("the purge timer did not start edge-lfr-purge.service")
    assert s["Result"] == "success" and s["ExecMainStatus"] == "0", s
    log = m.sh("journalctl -b -u edge-lfr-purge --no-pager -o cat | tail -5").stdout
    m.sh("rm -r /run/systemd/system/edge-lfr-purge.timer.d && systemctl daemon-reload")
    record(T, "purge timer -> edge-lfr-purge.service", "ran, exit 0", log.strip().splitlines()[-1][:70] if log.strip() else "")


def test_systemd_analyze_security_of_the_installed_units(vm):
    m = vm["vm"]
    for unit, limit in (("edge-lfr.service", 2.0), ("edge-lfr-purge.service", 1.0)):
        out = m.sh(f"systemd-analyze security {unit} --no-pager", check=False).stdout
        score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
        record(T, f"systemd-analyze security {unit} (live, with drop-in)", score, f"limit {limit}")
        assert score <= limit


def test_a_reboot_comes_back_up_on_its_own(vm):
    m, alerts = vm["vm"], vm["alerts"]
    n = len(set(alerts.ids()))
    m.sh("systemctl reboot", check=False)
    m.wait_down(120)
    t = m.wait_ssh(600)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        p = m.show("edge-lfr", "ActiveState", "ActiveEnterTimestampMonotonic", "NRestarts")
        if p["ActiveState"] == "active":
            break
        time.sleep(1)
    else:
        raise AssertionError(f"edge-lfr is not active after the reboot: {p}")
    record(T, "reboot: kernel start to edge-lfr READY", f"{usec(p, 'ActiveEnterTimestampMonotonic'):.1f} s",
           f"ssh back {t:.0f} s after going down; NRestarts {p['NRestarts']}")
    assert m.show("edge-lfr-purge.timer", "ActiveState")["ActiveState"] == "active"
    assert alerts.wait(n + 1, timeout=600), "no new alert after the reboot"
