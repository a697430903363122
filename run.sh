#!/usr/bin/env bash
# One entry point for newcomers, CI and test rigs:
#   bash run.sh demo    set up .venv (first time only) and run the demo end to end
#   bash run.sh test    set up .venv with test extras (and system packages) and run the test suite
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

setup_venv() {  # $1: pip extras
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then need_apt python3-venv; fi
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[$1]"
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
  *)
    echo "usage: bash run.sh demo|test [args...]" >&2
    exit 2
    ;;
esac
