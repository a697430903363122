"""A Debian Bookworm amd64 virtual machine for the real-systemd test: an mmdebstrap root (systemd
as PID 1, linux-image-amd64, openssh-server) written into an ext4 disk image with ``mke2fs -d``
(no loop device or mount needed), booted by qemu-system-x86_64 with its own kernel and initrd
(``-kernel``/``-initrd`` taken from the image), KVM when /dev/kvm is usable, else TCG.

Networking is qemu's user mode with ``restrict=on``: the guest can reach nothing outside, not
even the host; the host reaches the guest's sshd and broker only through two port forwards on
127.0.0.1. The serial console goes to ``console.log`` beside the disk.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .systest import progress, run

PACKAGES = ["systemd", "systemd-sysv", "udev", "dbus", "linux-image-amd64", "openssh-server", "python3", "openssl",
            "passwd", "util-linux", "diffutils", "procps", "iproute2", "ca-certificates", "kmod"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


class VM:
    def __init__(self, work: Path, rootfs_tar: Path, *, memory_mb: int = 3072, disk_gb: int = 8):
        self.work = Path(work)
        self.tar = rootfs_tar
        self.memory_mb = memory_mb
        self.disk_gb = disk_gb
        self.key = self.work / "id_ed25519"
        self.disk = self.work / "disk.img"
        self.console = self.work / "console.log"
        self.ssh_port = free_port()
        self.mqtt_port = free_port()
        self.accel = "tcg"
        self.accel_note = "no usable /dev/kvm"
        self.proc: subprocess.Popen | None = None

    # --- image ---------------------------------------------------------------------------------
    def build_disk(self) -> None:
        root = self.work / "root"
        root.mkdir(parents=True)
        run(["tar", "-C", str(root), "-xf", str(self.tar)], timeout=600)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], timeout=60)
        ssh = root / "root/.ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(self.key.with_suffix(".pub"), ssh / "authorized_keys")
        (root / "etc/hostname").write_text("edge-vm\n")
        (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 edge-vm\n")
        (root / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
        net = root / "etc/systemd/network"
        net.mkdir(parents=True, exist_ok=True)
        (net / "10-wired.network").write_text("[Match]\nName=e*\n\n[Network]\nDHCP=ipv4\n")
        run(["systemctl", f"--root={root}", "enable", "systemd-networkd.service", "ssh.service",
             "serial-getty@ttyS0.service"], timeout=60)
        for k in ("vmlinuz", "initrd.img"):
            src = sorted((root / "boot").glob(f"{k}-*"))
            assert src, f"no /boot/{k}-* in the image"
            shutil.copy(src[-1], self.work / k)
        self.root = root

    def make_image(self) -> None:
        """Write the prepared root into disk.img (after files were added to self.root)."""
        run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(self.root), "-F", str(self.disk),
             f"{self.disk_gb}G"], timeout=900)
        shutil.rmtree(self.root, ignore_errors=True)

    def probe_kvm(self, timeout: float = 30) -> None:
        """Use KVM only when a guest kernel really runs under it: boot the image's kernel with no
        disk and wait for it to reach its 'cannot mount root' panic. (Under some hypervisors a
        nested /dev/kvm opens but the guest hangs or qemu aborts on an MSR it cannot set.)"""
        if not kvm_usable():
            return
        log = self.work / "kvm-probe.log"
        p = subprocess.Popen(["qemu-system-x86_64", "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "512",
                              "-kernel", str(self.work / "vmlinuz"), "-append", "console=ttyS0 panic=-1",
                              "-display", "none", "-serial", f"file:{log}", "-monitor", "none", "-no-reboot"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t = time.monotonic()
        while time.monotonic() - t < timeout and p.poll() is None:
            if log.exists() and "Kernel panic" in log.read_text(errors="replace"):
                break
            time.sleep(0.5)
        ok = log.exists() and "Kernel panic" in log.read_text(errors="replace")
        if p.poll() is None:
            p.kill()
        err = (p.communicate(timeout=30)[1] or "").strip().splitlines()
        if ok:
            self.accel, self.accel_note = "kvm", "KVM"
        else:
            self.accel_note = ("/dev/kvm is there but a guest kernel does not run under it "
                               f"({err[0][:90] if err else 'no console output in %d s' % timeout}): TCG")
        progress(f"VM accelerator: {self.accel} ({self.accel_note})")

    # --- life cycle ---------------------------------------------------------------------------
    def boot(self) -> None:
        cmd = ["qemu-system-x86_64", "-machine", f"q35,accel={self.accel}", "-m", str(self.memory_mb), "-smp", "2",
               "-kernel", str(self.work / "vmlinuz"), "-initrd", str(self.work / "initrd.img"),
               "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.show_status=0 quiet",
               "-drive", f"file={self.disk},if=virtio,format=raw",
               "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,"
                          f"hostfwd=tcp:127.0.0.1:{self.mqtt_port}-:8883",
               "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci",
               "-display", "none", "-serial", f"file:{self.console}", "-monitor", "none"]
        if self.accel == "tcg":   # multi-threaded TCG: one host thread per virtual CPU
            cmd[1:3] = ["-machine", "q35", "-accel", "tcg,thread=multi"]
        cmd[1:1] = ["-cpu", "host" if self.accel == "kvm" else "max"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.work / "qemu.log", "w"))

    def ssh_cmd(self, command: str) -> list[str]:
        return ["ssh", "-i", str(self.key), "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30",
                "-o", "BatchMode=yes", "root@127.0.0.1", command]

    def sh(self, command: str, *, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """``command`` as root in the VM; a connection that fails (ssh's 255: a busy emulated
        guest can miss the banner deadline) is tried again, up to 3 times."""
        for attempt in range(3):
            p = run(self.ssh_cmd(command), timeout=timeout, check=False)
            if p.returncode != 255 or "Connection" not in p.stderr:
                break
            time.sleep(2)
        if check and p.returncode != 0:
            raise AssertionError(f"in the VM: {command!r} exited {p.returncode}\n--- stdout ---\n{p.stdout[-4000:]}\n"
                                 f"--- stderr ---\n{p.stderr[-4000:]}")
        return p

    def put(self, src: Path, dest: str, timeout: float = 600) -> None:
        run(["scp", "-q", "-i", str(self.key), "-P", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", str(src), f"root@127.0.0.1:{dest}"],
            timeout=timeout)

    def wait_ssh(self, timeout: float) -> float:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"qemu exited {self.proc.returncode}: {(self.work / 'qemu.log').read_text()[-2000:]}")
            try:
                if subprocess.run(self.ssh_cmd("true"), capture_output=True, timeout=45).returncode == 0:
                    return time.monotonic() - t
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1)
        raise AssertionError(f"the VM did not answer ssh within {timeout:.0f} s; console:\n"
                             f"{self.console.read_text(errors='replace')[-3000:]}")

    def wait_down(self, timeout: float) -> None:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            try:
                if subprocess.run(self.ssh_cmd("true"), capture_output=True, timeout=35).returncode != 0:
                    return
            except subprocess.TimeoutExpired:
                return
            time.sleep(0.5)
        raise AssertionError("the VM did not go down")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        subprocess.run(self.ssh_cmd("systemctl poweroff"), capture_output=True, timeout=30)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        progress("VM powered off")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
