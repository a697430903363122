#!/usr/bin/env bash
# Turn a fresh Raspberry Pi OS (Bookworm, 64-bit) into an edge-lfr unit, in one idempotent
# command: service user and folders, the package and models in a venv, the hardened systemd
# unit with its broker drop-in, the Coral udev rule, the device key pair, the MQTT client key
# and certificate request, and the configuration. Re-running changes nothing that is already
# right and never replaces the device key, the MQTT key or the configuration.
# See docs/service.md. Run as root: sudo deploy/provision.sh --unit-id van-07 --broker 127.0.0.1
set -euo pipefail
umask 022

usage() {
  cat <<'USAGE'
usage: sudo deploy/provision.sh --unit-id ID --broker HOST[:PORT] [options]

Turns this Raspberry Pi OS (Bookworm, 64-bit) into an edge-lfr unit. Idempotent: run it again
(with the same --unit-id and --broker) to repair permissions, upgrade the package, or install
the MQTT certificates; existing keys and /etc/edge-lfr/unit.yaml are never overwritten.

required:
  --unit-id ID             the unit's id: 1-64 letters, digits, '-' or '_' (e.g. van-07); it is
                           also the CN of the unit's MQTT certificate, i.e. its MQTT user name
  --broker HOST[:PORT]     the MQTT broker: an IPv4 address, [IPv6] address or "localhost";
                           port 8883 unless given. The service may connect to no other address
                           (IPAddressDeny=any), not even a DNS server, hence no host names: use
                           the van-local broker (127.0.0.1) or issue the broker's certificate
                           for its IP address (make-certs.sh server broker 192.0.2.10).

options:
  --wheel-or-src PATH      edge-lfr wheel or source checkout to install (default: this checkout;
                           with --offline: the bundle's wheel)
  --models DIR             models folder with manifest.json (default: this checkout's models/)
  --ca FILE                install the MQTT CA certificate as /etc/edge-lfr/mqtt/ca.crt
  --unit-cert FILE         install the unit's signed MQTT certificate as /etc/edge-lfr/mqtt/unit.crt
                           (checked: CN = unit id, key = /etc/edge-lfr/mqtt/unit.key, CA)
  --root DIR               provision the tree under DIR instead of / (image preparation, tests);
                           users are then added to DIR/etc/passwd; needs --no-install
  --no-install             test mode: no apt, no venv or pip, no systemctl or udevadm on the
                           running system (with --root, the unit is still enabled inside DIR)
  --offline FILE           install from a signed offline bundle (deploy/make-offline.sh) with no
                           network at all: its SHA256SUMS signature is checked with openssl
                           against --release-key, then every file against SHA256SUMS, before
                           anything in it is used; the wheels, models, unit files and (only for
                           packages the OS lacks) .debs all come from it
  --release-key PUB        the release public key (NAME.issuer.pub.yaml, or PEM), required with
                           --offline; get it from the back office, not from the bundle's medium
  --python PATH            Python that runs edge-lfr for key generation and config checks
                           (default: /opt/edge-lfr/venv/bin/python; with --no-install: python3,
                           with --wheel-or-src on PYTHONPATH when it is a checkout)
  -h, --help               this text

At the end it prints the unit id, the device public key to register with the back office and
the MQTT certificate request (CSR) to have signed.
USAGE
}

PROG=provision.sh
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
usage_error() { printf '%s: %s\n(run "%s --help" for the options)\n' "$PROG" "$*" "$0" >&2; exit 2; }
say() { printf '%s\n' "$*"; }
ACTIONS=0
did() { ACTIONS=$((ACTIONS + 1)); say "  $*"; }  # report one change made to the system

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
CHECKOUT="$(dirname "$HERE")"

ROOT=/
UNIT_ID=
BROKER=
SRC="$CHECKOUT"
MODELS_SRC="$CHECKOUT/models"
CA_IN=
CERT_IN=
INSTALL=1
PYTHON=
OFFLINE=
RELEASE_KEY=

while [ $# -gt 0 ]; do
  opt="$1"
  case "$opt" in
    -h|--help) usage; exit 0 ;;
    --no-install) INSTALL=0; shift; continue ;;
    --*=*) val="${opt#*=}"; opt="${opt%%=*}"; shift ;;
    --root|--unit-id|--broker|--wheel-or-src|--models|--ca|--unit-cert|--python|--offline|--release-key)
      [ $# -ge 2 ] || usage_error "$opt needs a value"
      val="$2"; shift 2 ;;
    *) usage_error "unknown argument: $opt" ;;
  esac
  case "$opt" in
    --root) ROOT="$val" ;;
    --unit-id) UNIT_ID="$val" ;;
    --broker) BROKER="$val" ;;
    --wheel-or-src) SRC="$val" ;;
    --models) MODELS_SRC="$val" ;;
    --ca) CA_IN="$val" ;;
    --unit-cert) CERT_IN="$val" ;;
    --python) PYTHON="$val" ;;
    --offline) OFFLINE="$val" ;;
    --release-key) RELEASE_KEY="$val" ;;
    *) usage_error "unknown option: $opt" ;;
  esac
done

# --- arguments -------------------------------------------------------------------------------
[ -n "$UNIT_ID" ] || usage_error "missing --unit-id ID (1-64 letters, digits, '-' or '_')"
[[ "$UNIT_ID" =~ ^[A-Za-z0-9_-]{1,64}$ ]] \
  || usage_error "bad --unit-id '$UNIT_ID': use 1-64 letters, digits, '-' or '_'"
[ -n "$BROKER" ] || usage_error "missing --broker HOST[:PORT] (an IP address or localhost)"

command -v python3 >/dev/null || die "python3 not found (it is part of Raspberry Pi OS)"

# Split HOST[:PORT]; IPv6 as [ADDR]:PORT or bare ADDR.
BROKER_PORT=8883
if [[ "$BROKER" =~ ^\[([^]]+)\](:([0-9]{1,5}))?$ ]]; then
  BROKER_HOST="${BASH_REMATCH[1]}"; BROKER_PORT="${BASH_REMATCH[3]:-8883}"
elif [[ "$BROKER" == *:*:* ]]; then
  BROKER_HOST="$BROKER"
elif [[ "$BROKER" =~ ^([^:]+):([0-9]{1,5})$ ]]; then
  BROKER_HOST="${BASH_REMATCH[1]}"; BROKER_PORT="${BASH_REMATCH[2]}"
elif [[ "$BROKER" =~ ^[^:]+$ ]]; then
  BROKER_HOST="$BROKER"
else
  usage_error "bad --broker '$BROKER': expected HOST[:PORT], e.g. 127.0.0.1 or 192.0.2.10:8883 or [2001:db8::1]:8883"
fi
BROKER_PORT=$((10#$BROKER_PORT))
[ "$BROKER_PORT" -ge 1 ] && [ "$BROKER_PORT" -le 65535 ] || usage_error "bad --broker port $BROKER_PORT: use 1-65535"
if [ "$BROKER_HOST" = localhost ]; then
  BROKER_ALLOW=localhost
else
  BROKER_HOST="$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_address(sys.argv[1]))' "$BROKER_HOST" 2>/dev/null)" \
    || usage_error "bad --broker host '${BROKER%:*}': give an IP address or localhost (the service may not reach a DNS server; see --help)"
  BROKER_ALLOW="$BROKER_HOST"
fi

[ -d "$ROOT" ] || usage_error "--root $ROOT: no such folder"
ROOT="$(cd "$ROOT" && pwd -P)"
P="${ROOT%/}"   # prefix for every path written: "" on a real system
if [ "$INSTALL" = 1 ] && [ -n "$P" ]; then
  usage_error "--root $ROOT needs --no-install (a venv works only at the path where it was made)"
fi
if [ -n "$P" ]; then
  # the service account is added to the image's own account files, never the host's
  for f in passwd group; do
    [ -f "$P/etc/$f" ] || usage_error "--root $ROOT has no etc/$f: --root must be an unpacked image's root file system (holding its etc/passwd, etc/group, etc/shadow, etc/gshadow), e.g. 'mkdir -p $ROOT/etc && cp /etc/{passwd,group,shadow,gshadow} $ROOT/etc/' for a test tree, or the mounted root partition of a Raspberry Pi OS image"
  done
fi
if [ -n "$OFFLINE" ]; then
  [ -f "$OFFLINE" ] || usage_error "--offline $OFFLINE: not found"
  [ -n "$RELEASE_KEY" ] || usage_error "--offline needs --release-key PUB (the release public key from the back office)"
  [ -f "$RELEASE_KEY" ] || usage_error "--release-key $RELEASE_KEY: not found"
  [ "$SRC" = "$CHECKOUT" ] && [ "$MODELS_SRC" = "$CHECKOUT/models" ] \
    || usage_error "--offline takes the wheel and the models from the bundle: drop --wheel-or-src and --models"
  OFFLINE="$(cd "$(dirname "$OFFLINE")" && pwd -P)/$(basename "$OFFLINE")"
  RELEASE_KEY="$(cd "$(dirname "$RELEASE_KEY")" && pwd -P)/$(basename "$RELEASE_KEY")"
else
  [ -z "$RELEASE_KEY" ] || usage_error "--release-key is for --offline FILE"
  [ -e "$SRC" ] || usage_error "--wheel-or-src $SRC: not found"
  SRC="$(cd "$(dirname "$SRC")" && pwd -P)/$(basename "$SRC")"
  [ -f "$MODELS_SRC/manifest.json" ] || usage_error "--models $MODELS_SRC: no manifest.json there"
fi
[ -z "$CA_IN" ] || [ -f "$CA_IN" ] || usage_error "--ca $CA_IN: not found"
[ -z "$CERT_IN" ] || [ -f "$CERT_IN" ] || usage_error "--unit-cert $CERT_IN: not found"

[ "$(id -u)" = 0 ] || die "run as root (sudo): it creates a system user and root-owned files"
for tool in openssl useradd groupadd cmp flock; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install openssl passwd diffutils util-linux)"
done

# --- paths (as seen by the running unit; written under $P) ----------------------------------
SVC=edge-lfr
ETC=/etc/edge-lfr
MQTT_DIR=$ETC/mqtt
STATE=/var/lib/edge-lfr
OPT=/opt/edge-lfr
VENV=$OPT/venv
MODELS=$OPT/models
UNIT_FILE=/etc/systemd/system/edge-lfr.service
PURGE_SERVICE=/etc/systemd/system/edge-lfr-purge.service
PURGE_TIMER=/etc/systemd/system/edge-lfr-purge.timer
DROPIN_DIR=/etc/systemd/system/edge-lfr.service.d
UDEV_RULE=/etc/udev/rules.d/70-edge-lfr.rules
CONFIG=$ETC/unit.yaml
DEVICE_KEY=$ETC/device.key
REGISTRATION=$ETC/$UNIT_ID.unit.yaml
MQTT_KEY=$MQTT_DIR/unit.key
MQTT_CSR=$MQTT_DIR/unit.csr

TMPS=()
cleanup() { local t; for t in ${TMPS[@]+"${TMPS[@]}"}; do rm -rf -- "$t"; done; }
trap cleanup EXIT
newtmp() {  # newtmp DIR: TMP = a private scratch folder inside DIR (same file system: mv is atomic)
  TMP="$(mktemp -d "$1/.provision.XXXXXX")"; TMPS+=("$TMP")
}

# set_attr PATH MODE UID GID [quiet]: owner and mode, touched only when they differ
set_attr() {
  local cur; cur="$(stat -c '%a %u %g' -- "$1")"
  [ "$cur" = "$(printf '%o %s %s' "$((8#$2))" "$3" "$4")" ] && return 0
  chown -h "$3:$4" -- "$1"
  chmod "$2" -- "$1"
  [ -n "${5:-}" ] || [[ "$1" == */.provision.* ]] || did "repaired owner/mode of ${1#"$P"} ($3:$4 $2)"
}

# ensure_dir PATH MODE UID GID: one of our folders (created, owner and mode enforced)
ensure_dir() {
  local d="$P$1"
  [ ! -L "$d" ] || die "$d is a symbolic link; refusing to use it"
  if [ ! -d "$d" ]; then
    mkdir -p -- "$(dirname "$d")"
    mkdir -- "$d"
    set_attr "$d" "$2" "$3" "$4" quiet
    did "created $1/"
  fi
  set_attr "$d" "$2" "$3" "$4"
}

# sys_dir PATH: a system folder we put files in (created 0755 root if missing, else untouched)
sys_dir() { [ -d "$P$1" ] || { mkdir -p -- "$P$1"; did "created $1/"; }; }

# put_file SRC DEST MODE UID GID: install a copy of SRC unless DEST already has that content
CHANGED=()
put_file() {
  local src="$1" dest="$P$2" tmp
  [ ! -L "$dest" ] || die "$dest is a symbolic link; refusing to replace it"
  if [ -f "$dest" ] && cmp -s -- "$src" "$dest"; then
    set_attr "$dest" "$3" "$4" "$5"
    return 0
  fi
  newtmp "$(dirname "$dest")"; tmp="$TMP"
  cp -- "$src" "$tmp/f"
  set_attr "$tmp/f" "$3" "$4" "$5"
  if [ -e "$dest" ]; then did "updated $2"; else did "created $2"; fi
  mv -f -- "$tmp/f" "$dest"
  CHANGED+=("$2")
}

# put_text DEST MODE UID GID TEXT
put_text() {
  local t; newtmp "$(dirname "$P$1")"; t="$TMP"
  printf '%s' "$5" > "$t/text"
  put_file "$t/text" "$1" "$2" "$3" "$4"
}

changed() { local c; for c in ${CHANGED[@]+"${CHANGED[@]}"}; do [ "$c" = "$1" ] && return 0; done; return 1; }

say "edge-lfr provisioning of unit $UNIT_ID${P:+ under $ROOT}"

# --- 0. the offline bundle: verified before anything in it is used ----------------------------------
# The signature is checked with the OS's own openssl (no code from the bundle runs before that),
# then every file against the signed SHA256SUMS, and no file may be unlisted.
OFFLINE_CONTEXT='edge-lfr offline release SHA256SUMS v1'   # edge/tools/release.py CONTEXT, without its newline
if [ -n "$OFFLINE" ]; then
  for tool in tar sha256sum; do command -v "$tool" >/dev/null || die "$tool not found"; done
  say "  verifying the offline bundle $OFFLINE"
  mkdir -p /var/tmp
  newtmp /var/tmp; OFF="$TMP"
  # members: regular files and folders only, under one top folder, no absolute or '..' paths
  tar -tvf "$OFFLINE" > "$OFF/list" 2>"$OFF/log" || die "$OFFLINE is not a tar file: $(head -1 "$OFF/log")"
  awk '{ t = substr($1, 1, 1); if (t != "-" && t != "d") { print "member of type " t ": " $NF; exit 1 } }' "$OFF/list" \
    > "$OFF/bad" || die "$OFFLINE holds a link or device ($(cat "$OFF/bad")); refusing it"
  tops="$(tar -tf "$OFFLINE" | awk -F/ '{ print $1 }' | sort -u)"
  [[ "$tops" =~ ^edge-lfr-offline-[A-Za-z0-9._+-]+$ ]] || die "$OFFLINE is not an edge-lfr offline bundle (top folder: ${tops:0:80})"
  ! tar -tf "$OFFLINE" | grep -qE '(^|/)\.\.(/|$)|^/' || die "$OFFLINE has a member outside its folder; refusing it"
  mkdir "$OFF/x"
  tar -xf "$OFFLINE" -C "$OFF/x" --no-same-owner --no-same-permissions --no-overwrite-dir 2>"$OFF/log" \
    || die "cannot unpack $OFFLINE: $(head -1 "$OFF/log")"
  BUNDLE="$OFF/x/$tops"
  for f in SHA256SUMS SHA256SUMS.sig; do [ -f "$BUNDLE/$f" ] || die "$OFFLINE has no $f: not a signed bundle"; done
  # the release key as PEM: a NAME.issuer.pub.yaml (raw base64 Ed25519, checked against its key_id) or PEM
  python3 - "$RELEASE_KEY" "$OFF/release.pem" "$BUNDLE/SHA256SUMS.sig" "$OFF/sig.bin" <<'PY' 2>"$OFF/log" \
    || die "$(cat "$OFF/log")"
import base64, binascii, hashlib, json, re, sys
key_path, pem_out, sig_path, sig_out = sys.argv[1:]
text = open(key_path, encoding="utf-8", errors="replace").read(65536)
if "-----BEGIN PUBLIC KEY-----" in text:
    der = base64.b64decode("".join(l for l in text.splitlines() if l and not l.startswith("-----")))
    raw, kid = der[-32:], None
    if len(der) != 44 or der[:12] != bytes.fromhex("302a300506032b6570032100"):
        sys.exit(f"--release-key {key_path}: not an Ed25519 public key")
else:
    m = re.search(r"^ed25519: *'?([A-Za-z0-9+/=]+)'?\s*$", text, re.M)
    k = re.search(r"^key_id: *'?([0-9a-f]{64})'?\s*$", text, re.M)
    if not m or not k or "edge-lfr-issuer-public-key" not in text:
        sys.exit(f"--release-key {key_path}: not a release public key (NAME.issuer.pub.yaml with ed25519 and key_id)")
    try:
        raw = base64.b64decode(m.group(1), validate=True)
    except binascii.Error:
        raw = b""
    kid = k.group(1)
    if len(raw) != 32 or hashlib.sha256(raw).hexdigest() != kid:
        sys.exit(f"--release-key {key_path}: damaged (its key_id does not match its key)")
kid = hashlib.sha256(raw).hexdigest()
open(pem_out, "w").write("-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(
    bytes.fromhex("302a300506032b6570032100") + raw).decode() + "\n-----END PUBLIC KEY-----\n")
try:
    doc = json.loads(open(sig_path, "rb").read(4096))
    sig = base64.b64decode(doc["sig"], validate=True)
    assert doc["alg"] == "ed25519" and len(sig) == 64
except Exception:
    sys.exit("the bundle's SHA256SUMS.sig is malformed")
if doc.get("key_id") != kid:
    sys.exit(f"the bundle is signed by key {str(doc.get('key_id'))[:16]}..., not by the release key {kid[:16]}...: "
             "refusing it (wrong --release-key, or not an official bundle)")
open(sig_out, "wb").write(sig)
PY
  { printf '%s\n' "$OFFLINE_CONTEXT"; cat "$BUNDLE/SHA256SUMS"; } > "$OFF/signed"
  openssl pkeyutl -verify -pubin -inkey "$OFF/release.pem" -rawin -in "$OFF/signed" -sigfile "$OFF/sig.bin" \
    >"$OFF/log" 2>&1 || die "BAD SIGNATURE: $OFFLINE's SHA256SUMS is not signed by --release-key $RELEASE_KEY (altered or forged bundle); nothing was installed"
  (cd "$BUNDLE" && sha256sum --strict --quiet -c SHA256SUMS) >"$OFF/log" 2>&1 \
    || die "checksum mismatch in $OFFLINE: $(grep -v '^sha256sum' "$OFF/log" | head -3 | tr '\n' ' ')(altered bundle); nothing was installed"
  (cd "$BUNDLE" && find . -type f ! -name SHA256SUMS ! -name SHA256SUMS.sig -printf '%P\n' | LC_ALL=C sort) > "$OFF/have"
  sed 's/^[0-9a-f]\{64\}  //' "$BUNDLE/SHA256SUMS" | LC_ALL=C sort > "$OFF/listed"
  extra="$(comm -23 "$OFF/have" "$OFF/listed" | head -3 | tr '\n' ' ')"
  [ -z "$extra" ] || die "$OFFLINE holds files not in its signed SHA256SUMS: $extra; refusing it"
  say "  good signature (release key $(basename "$RELEASE_KEY")), $(wc -l < "$OFF/listed") files checked"
  # from now on, every file comes from the verified bundle
  CHECKOUT="$BUNDLE"; HERE="$BUNDLE/deploy"; MODELS_SRC="$BUNDLE/models"
  SRC="$(ls "$BUNDLE"/wheels/edge_lfr-*.whl 2>/dev/null | head -1)"
  [ -n "$SRC" ] || die "$OFFLINE has no edge_lfr wheel"
  [ -f "$MODELS_SRC/manifest.json" ] || die "$OFFLINE has no models/manifest.json"
fi

# One run per root at a time (a lock on the root folder itself: no lock file is left behind);
# then scratch folders left by a killed run can be removed safely.
exec 9<"$ROOT"
flock -w 60 9 || die "another provision.sh is working on $ROOT"
for d in "$P/etc/edge-lfr" "$P/etc/edge-lfr/mqtt" "$P/opt/edge-lfr/models" "$P/opt/edge-lfr/docs" "$P/etc/systemd/system" \
         "$P/etc/systemd/system/edge-lfr.service.d" "$P/etc/udev/rules.d"; do
  for t in "$d"/.provision.??????; do [ ! -d "$t" ] || [ -L "$t" ] || rm -rf -- "$t"; done
done

# A unit is provisioned once under one id: refuse another id before changing anything.
for f in "$P$REGISTRATION" "$P$ETC"/*.unit.yaml; do
  [ -e "$f" ] || continue
  [ "$f" = "$P$REGISTRATION" ] && break
  other="$(basename "$f" .unit.yaml)"
  die "this unit was provisioned as '$other' ($ETC/$other.unit.yaml), not '$UNIT_ID'; its keys and configuration are never replaced"
done

# --- 1. packages and venv (real system only) --------------------------------------------------
if [ "$INSTALL" = 1 ]; then
  missing=()
  # python3-picamera2 (and libcamera's Python bindings) are not on PyPI: the venv sees them
  # through --system-site-packages.
  for pkg in python3-venv python3-picamera2 openssl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ -n "$OFFLINE" ]; then
    # No network: the bundle's local apt repository for this architecture, and nothing else
    # (no configured source, no package list of the system's own is read or changed).
    # python3-picamera2 is not there (it comes from the Raspberry Pi archive, not Debian); it is
    # part of the full Raspberry Pi OS image. The van-local broker's mosquitto is installed when
    # --broker is this machine and the OS lacks it.
    want=()
    for pkg in ${missing[@]+"${missing[@]}"}; do
      if [ "$pkg" = python3-venv ]; then
        continue   # the venv gets pip from the bundle's wheel instead (step 4)
      elif [ "$pkg" = python3-picamera2 ]; then
        say "  note: python3-picamera2 is not installed and is not in the offline bundle (Raspberry Pi archive);"
        say "        the Pi camera needs it (flash the full Raspberry Pi OS image, or install it when online)"
      else
        want+=("$pkg")
      fi
    done
    case "$BROKER_HOST" in
      127.*|::1|localhost)
        dpkg-query -W -f='${Status}' mosquitto 2>/dev/null | grep -q "ok installed" || want+=(mosquitto) ;;
    esac
    if [ ${#want[@]} -gt 0 ]; then
      arch="$(dpkg --print-architecture)"
      repo="$BUNDLE/debs/$arch"
      [ -f "$repo/Packages" ] || die "the OS lacks ${want[*]} and $OFFLINE has no .deb files for $arch"
      newtmp /var/tmp; a="$TMP"
      mkdir -p "$a/lists/partial" "$a/parts" "$a/prefs" "$a/archives/partial"
      printf 'deb [trusted=yes] file:%s ./\n' "$repo" > "$a/sources.list"   # trusted: SHA256SUMS is signed
      OFFAPT=(-o "Dir::Etc::SourceList=$a/sources.list" -o "Dir::Etc::SourceParts=$a/parts"
              -o "Dir::Etc::PreferencesParts=$a/prefs" -o "Dir::State::Lists=$a/lists"
              -o "Dir::Cache::archives=$a/archives/" -o "Dir::Cache::pkgcache=$a/pkgcache.bin"
              -o "Dir::Cache::srcpkgcache=$a/srcpkgcache.bin" -o APT::Sandbox::User=root -o Acquire::Languages=none)
      did "install ${want[*]} from the offline bundle's $arch packages (dpkg, no network)"
      apt-get "${OFFAPT[@]}" -qq update >"$a/log" 2>&1 || { cat "$a/log" >&2; die "cannot read the bundle's package list"; }
      DEBIAN_FRONTEND=noninteractive apt-get "${OFFAPT[@]}" install -y -qq --no-install-recommends \
        "${want[@]}" >"$a/log" 2>&1 \
        || { tail -15 "$a/log" >&2; die "installing ${want[*]} from the bundle failed (see above); this OS may be newer than the bundle's Debian release"; }
    fi
  elif [ ${#missing[@]} -gt 0 ]; then
    did "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# --- 2. the service user and group ------------------------------------------------------------
# With --root the accounts go into ROOT/etc/{passwd,group,shadow,gshadow} only (--prefix: no
# chroot, the host's own accounts are never touched).
PREFIX_ARGS=()
[ -z "$P" ] || PREFIX_ARGS=(--prefix "$ROOT")
for f in passwd group; do [ -f "$P/etc/$f" ] || die "$P/etc/$f not found (a system without account files?)"; done
if ! grep -q "^$SVC:" "$P/etc/group"; then
  groupadd --system ${PREFIX_ARGS[@]+"${PREFIX_ARGS[@]}"} "$SVC"
  did "created group $SVC"
fi
if ! grep -q "^$SVC:" "$P/etc/passwd"; then
  useradd --system --gid "$SVC" --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin \
    --comment "edge-lfr service" ${PREFIX_ARGS[@]+"${PREFIX_ARGS[@]}"} "$SVC"
  did "created user $SVC (system, no login shell, home $STATE)"
fi
SVC_UID="$(awk -F: -v n="$SVC" '$1 == n { print $3 }' "$P/etc/passwd")"
SVC_GID="$(awk -F: -v n="$SVC" '$1 == n { print $3 }' "$P/etc/group")"
[[ "$SVC_UID" =~ ^[0-9]+$ && "$SVC_GID" =~ ^[0-9]+$ ]] || die "cannot find user/group $SVC in $P/etc/passwd, $P/etc/group"
[ "$SVC_UID" != 0 ] || die "user $SVC has uid 0; refusing to run a service as root"

# --- 3. folders ---------------------------------------------------------------------------------
ensure_dir "$ETC" 0750 0 "$SVC_GID"
ensure_dir "$MQTT_DIR" 0750 0 "$SVC_GID"
ensure_dir "$STATE" 0700 "$SVC_UID" "$SVC_GID"
ensure_dir "$OPT" 0755 0 0
ensure_dir "$MODELS" 0755 0 0
ensure_dir "$OPT/docs" 0755 0 0
sys_dir /etc/systemd/system
sys_dir /etc/udev/rules.d
ensure_dir "$DROPIN_DIR" 0755 0 0

# --- 4. venv and package (real system only) -------------------------------------------------
if [ "$INSTALL" = 1 ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    if [ -n "$OFFLINE" ] && ! python3 -c 'import ensurepip' 2>/dev/null; then
      # No python3-venv (its .deb is pinned to the OS's exact python3.x build, so the bundle
      # can't carry one that fits every point release): a venv without pip, then pip from the
      # bundle's pip wheel.
      python3 -m venv --system-site-packages --without-pip "$VENV" || die "python3 -m venv failed"
    else
      python3 -m venv --system-site-packages "$VENV"
    fi
    did "created venv $VENV"
  fi
  if [ -n "$OFFLINE" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    pipwhl="$(ls "$BUNDLE"/wheels/pip-*.whl 2>/dev/null | head -1)"
    [ -n "$pipwhl" ] || die "$OFFLINE has no pip wheel to bootstrap the venv"
    "$VENV/bin/python" "$pipwhl/pip" install --disable-pip-version-check -q --no-index --find-links "$BUNDLE/wheels" pip \
      >"$OFF/pip.log" 2>&1 || { tail -15 "$OFF/pip.log" >&2; die "cannot install pip into $VENV from the bundle"; }
    did "installed pip into $VENV from the offline bundle"
  fi
  # (no package yet on a first install: find fails, which pipefail must not turn into an exit)
  installed_code() { { find "$VENV"/lib/python3*/site-packages/edge -type f -name '*.py' -print0 2>/dev/null || true; } \
                       | sort -z | xargs -0r sha256sum | sha256sum; }
  before="$(installed_code)"
  # numpy<2: picamera2's compiled helpers from apt (simplejpeg) are built against Bookworm's
  # numpy 1.x and fail to import next to numpy 2 in the venv.
  if [ -n "$OFFLINE" ]; then
    # only the bundle's wheels; picamera2 comes from the OS (--system-site-packages)
    reqs=("$SRC"); "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info >= (3, 13))' && reqs+=("numpy<2")
    did "pip install $(basename "$SRC") into $VENV from the offline bundle (--no-index)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-index --find-links "$BUNDLE/wheels" \
      "${reqs[@]}" >"$OFF/pip.log" 2>&1 || { tail -15 "$OFF/pip.log" >&2; die "pip install from the bundle failed (see above)"; }
  else
    did "pip install ${SRC}[pi] into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${SRC}[pi]" "numpy<2"
  fi
  [ "$(installed_code)" = "$before" ] || CHANGED+=("$VENV")   # restart the service below
  PYTHON="${PYTHON:-$VENV/bin/python}"
else
  PYTHON="${PYTHON:-python3}"
  if [ -d "$SRC/edge" ]; then export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"; fi
fi
EDGE=("$PYTHON" -m edge.cli)
"${EDGE[@]}" --version >/dev/null 2>&1 || die "edge-lfr cannot be run with $PYTHON (give --python PATH)"

# --- 5. models -------------------------------------------------------------------------------------
# The manifest and every file it names (models, Edge TPU builds, licence texts, the score
# normalisation's background cohort), root-owned and
# read-only for the service; each checked against its sha256 after copying.
model_list="$(python3 - "$MODELS_SRC/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1], encoding="utf-8"))
names = {"manifest.json"}
for entry in m.get("models", {}).values():
    for key in ("file", "licence_file"):
        if isinstance(entry.get(key), str):
            names.add(entry[key])
    if isinstance(entry.get("edgetpu"), dict) and isinstance(entry["edgetpu"].get("file"), str):
        names.add(entry["edgetpu"]["file"])
sn = m.get("score_normalisation")   # the background cohort the matcher normalises scores against
if isinstance(sn, dict) and isinstance(sn.get("cohort_file"), str):
    names.add(sn["cohort_file"])
for n in sorted(names):
    if "/" in n or n.startswith("."):
        sys.exit(f"unsafe file name in manifest: {n!r}")
    print(n)
PY
)" || die "cannot read the model list from $MODELS_SRC/manifest.json"
mapfile -t model_files <<<"$model_list"
[ ${#model_files[@]} -gt 1 ] || die "$MODELS_SRC/manifest.json names no model files"
for f in "${model_files[@]}"; do
  [ -f "$MODELS_SRC/$f" ] || die "$MODELS_SRC/$f (named in the manifest) not found"
  put_file "$MODELS_SRC/$f" "$MODELS/$f" 0644 0 0
done
python3 - "$P$MODELS" <<'PY' || die "installed models do not match their manifest"
import hashlib, json, pathlib, sys
d = pathlib.Path(sys.argv[1])
m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
for name, entry in m["models"].items():
    for e in (entry, entry.get("edgetpu") if isinstance(entry.get("edgetpu"), dict) else None):
        if e and "file" in e and "sha256" in e:
            if hashlib.sha256((d / e["file"]).read_bytes()).hexdigest() != e["sha256"]:
                sys.exit(f"{d / e['file']}: sha256 differs from the manifest")
sn = m.get("score_normalisation")
if isinstance(sn, dict) and "cohort_file" in sn and "sha256" in sn:
    if hashlib.sha256((d / sn["cohort_file"]).read_bytes()).hexdigest() != sn["sha256"]:
        sys.exit(f"{d / sn['cohort_file']}: sha256 differs from the manifest")
PY

if [ "$INSTALL" = 1 ]; then  # the venv and the models as the service will see them
  runuser -u "$SVC" -- "$VENV/bin/edge-lfr" models --models-dir "$MODELS" >/dev/null \
    || die "edge-lfr models failed as user $SVC: the venv or the models are not usable by the service"
fi

# --- 6. device key pair (never replaced) ------------------------------------------------------
if [ -e "$P$DEVICE_KEY" ]; then
  [ -e "$P$REGISTRATION" ] || say "  warning: $DEVICE_KEY exists but its registration $REGISTRATION does not"
else
  newtmp "$P$ETC"; t="$TMP"
  "${EDGE[@]}" keys device --unit-id "$UNIT_ID" --out "$t" >"$t/log" 2>&1 \
    || { cat "$t/log" >&2; die "edge-lfr keys device failed"; }
  set_attr "$t/$UNIT_ID.unit.yaml" 0644 0 0
  set_attr "$t/device.key" 0600 "$SVC_UID" "$SVC_GID"
  mv -- "$t/$UNIT_ID.unit.yaml" "$P$REGISTRATION"
  mv -- "$t/device.key" "$P$DEVICE_KEY"        # last: its presence means "done"
  did "created $DEVICE_KEY (device key pair) and $REGISTRATION (its public key)"
fi
set_attr "$P$DEVICE_KEY" 0600 "$SVC_UID" "$SVC_GID"
[ ! -e "$P$REGISTRATION" ] || set_attr "$P$REGISTRATION" 0644 0 0

# --- 7. MQTT client key and certificate request (key never replaced) ----------------------------
SUBJECT="/O=edge-lfr/OU=unit/CN=$UNIT_ID"   # as deploy/make-certs.sh issues unit certificates
if [ ! -e "$P$MQTT_KEY" ]; then
  newtmp "$P$MQTT_DIR"; t="$TMP"
  (umask 077; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$t/key" 2>"$t/log") \
    || { cat "$t/log" >&2; die "openssl genpkey failed"; }
  set_attr "$t/key" 0600 "$SVC_UID" "$SVC_GID"
  mv -- "$t/key" "$P$MQTT_KEY"
  did "created $MQTT_KEY (MQTT client key, EC P-256)"
fi
set_attr "$P$MQTT_KEY" 0600 "$SVC_UID" "$SVC_GID"
key_pub="$(openssl pkey -in "$P$MQTT_KEY" -pubout 2>/dev/null)" || die "$MQTT_KEY is not a readable private key"
if [ -e "$P$MQTT_CSR" ]; then
  csr_pub="$(openssl req -in "$P$MQTT_CSR" -noout -pubkey 2>/dev/null)" || die "$MQTT_CSR is not a certificate request"
  [ "$csr_pub" = "$key_pub" ] || die "$MQTT_CSR was not made from $MQTT_KEY; remove the CSR to make a new one"
  csr_cn="$(openssl req -in "$P$MQTT_CSR" -noout -subject -nameopt RFC2253 | sed -n 's/.*CN=\([^,]*\).*/\1/p')"
  [ "$csr_cn" = "$UNIT_ID" ] || die "$MQTT_CSR is for CN=$csr_cn, not $UNIT_ID"
else
  newtmp "$P$MQTT_DIR"; t="$TMP"
  openssl req -new -key "$P$MQTT_KEY" -subj "$SUBJECT" -sha256 -out "$t/csr" 2>"$t/log" \
    || { cat "$t/log" >&2; die "openssl req failed"; }
  set_attr "$t/csr" 0644 0 0
  mv -- "$t/csr" "$P$MQTT_CSR"
  did "created $MQTT_CSR (certificate request, CN=$UNIT_ID)"
fi
set_attr "$P$MQTT_CSR" 0644 0 0

# --- 8. configuration (written once; afterwards it must agree with the arguments) ---------------
if [ ! -e "$P$CONFIG" ]; then
  newtmp "$P$ETC"; t="$TMP"
  sed -e "s|@UNIT_ID@|$UNIT_ID|g" -e "s|@BROKER_HOST@|$BROKER_HOST|g" -e "s|@BROKER_PORT@|$BROKER_PORT|g" \
    "$HERE/provision/unit.yaml.in" > "$t/unit.yaml"
  "${EDGE[@]}" config --check "$t/unit.yaml" >/dev/null 2>"$t/log" \
    || { cat "$t/log" >&2; die "the generated configuration does not validate"; }
  set_attr "$t/unit.yaml" 0640 0 "$SVC_GID"
  mv -- "$t/unit.yaml" "$P$CONFIG"
  did "created $CONFIG"
fi
set_attr "$P$CONFIG" 0640 0 "$SVC_GID"
cfg_json="$("${EDGE[@]}" config --check "$P$CONFIG" 2>&1)" || die "$CONFIG does not validate: $cfg_json"
read -r cfg_id cfg_host cfg_port < <(python3 -c '
import ipaddress, json, sys
c = json.loads(sys.stdin.read())
host = c["mqtt"]["host"]
try:
    host = str(ipaddress.ip_address(host))
except ValueError:
    pass
print(c["unit"]["id"] or "-", host, c["mqtt"]["port"])' <<<"$cfg_json")
[ "$cfg_id" = "$UNIT_ID" ] || die "$CONFIG is for unit '$cfg_id', not '$UNIT_ID' (it is never overwritten)"
if [ "$cfg_host" != "$BROKER_HOST" ] || [ "$cfg_port" != "$BROKER_PORT" ]; then
  die "$CONFIG names broker $cfg_host:$cfg_port, not $BROKER_HOST:$BROKER_PORT; edit mqtt.host/mqtt.port there first, then re-run with the new --broker"
fi

# --- 9. MQTT certificates handed back by the back office (optional) -------------------------------
if [ -n "$CA_IN" ]; then
  openssl x509 -in "$CA_IN" -noout 2>/dev/null || die "--ca $CA_IN is not a PEM certificate"
  put_file "$CA_IN" "$MQTT_DIR/ca.crt" 0644 0 0
fi
if [ -n "$CERT_IN" ]; then
  cert_pub="$(openssl x509 -in "$CERT_IN" -noout -pubkey 2>/dev/null)" || die "--unit-cert $CERT_IN is not a PEM certificate"
  [ "$cert_pub" = "$key_pub" ] || die "--unit-cert $CERT_IN does not belong to $MQTT_KEY (was it signed from $MQTT_CSR?)"
  cert_cn="$(openssl x509 -in "$CERT_IN" -noout -subject -nameopt RFC2253 | sed -n 's/.*CN=\([^,]*\).*/\1/p')"
  [ "$cert_cn" = "$UNIT_ID" ] || die "--unit-cert $CERT_IN has CN=$cert_cn; the MQTT user name must be the unit id $UNIT_ID"
  if [ -f "$P$MQTT_DIR/ca.crt" ]; then
    openssl verify -CAfile "$P$MQTT_DIR/ca.crt" "$CERT_IN" >/dev/null 2>&1 \
      || die "--unit-cert $CERT_IN is not signed by $MQTT_DIR/ca.crt (or has expired)"
  fi
  put_file "$CERT_IN" "$MQTT_DIR/unit.crt" 0644 0 0
fi

# --- 10. systemd unit, broker drop-in, udev rule --------------------------------------------------
put_file "$CHECKOUT/systemd/edge-lfr.service" "$UNIT_FILE" 0644 0 0
put_file "$CHECKOUT/docs/service.md" "$OPT/docs/service.md" 0644 0 0   # the unit's Documentation=
# the retention purge, hourly, also while the recognition service is stopped
put_file "$CHECKOUT/systemd/edge-lfr-purge.service" "$PURGE_SERVICE" 0644 0 0
put_file "$CHECKOUT/systemd/edge-lfr-purge.timer" "$PURGE_TIMER" 0644 0 0
put_file "$CHECKOUT/docs/privacy.md" "$OPT/docs/privacy.md" 0644 0 0   # the purge units' Documentation=
put_text "$DROPIN_DIR/broker.conf" 0644 0 0 "# Written by deploy/provision.sh from $CONFIG (mqtt.host $BROKER_HOST, port $BROKER_PORT).
# The only address besides localhost that edge-lfr may exchange packets with (IPAddressDeny=any).
[Service]
IPAddressAllow=$BROKER_ALLOW
"
put_file "$HERE/provision/70-edge-lfr.rules" "$UDEV_RULE" 0644 0 0

if [ -n "$P" ]; then
  # An image being prepared: enable offline (the multi-user.target.wants symlink in ROOT).
  if command -v systemctl >/dev/null; then
    systemctl --root="$ROOT" --quiet enable "$SVC.service" "$SVC-purge.timer" 2>/dev/null \
      || die "systemctl --root $ROOT enable failed"
  else
    say "  note: systemctl not found; the unit is installed but not enabled"
  fi
elif [ "$INSTALL" = 1 ] && [ -d /run/systemd/system ]; then
  if changed "$UDEV_RULE"; then
    udevadm control --reload-rules && udevadm trigger --action=add --subsystem-match=usb --subsystem-match=apex || true
  fi
  systemctl daemon-reload
  systemctl --quiet enable "$SVC.service"
  systemctl --quiet enable --now "$SVC-purge.timer"
  if [ -f "$MQTT_DIR/ca.crt" ] && [ -f "$MQTT_DIR/unit.crt" ]; then
    if [ ${#CHANGED[@]} -gt 0 ]; then systemctl restart "$SVC.service"; else systemctl start "$SVC.service"; fi
    say "  $SVC.service enabled and running (systemctl status $SVC)"
  else
    say "  $SVC.service enabled; it starts once the MQTT certificates are installed (--ca, --unit-cert)"
  fi
else
  say "  systemctl skipped (--no-install or systemd not running)"
fi

# --- 11. what to send to the back office ------------------------------------------------------------
[ "$ACTIONS" -gt 0 ] || say "  nothing to change: this unit is provisioned"
say ""
say "unit id: $UNIT_ID"
if [ -f "$P$REGISTRATION" ]; then
  say "device public key to register with the back office ($REGISTRATION):"
  sed 's/^/    /' "$P$REGISTRATION"
fi
say "MQTT certificate request to have signed (CN=$UNIT_ID): $MQTT_CSR"
sed 's/^/    /' "$P$MQTT_CSR"
missing=()
[ -f "$P$MQTT_DIR/ca.crt" ] || missing+=("--ca ca.crt")
[ -f "$P$MQTT_DIR/unit.crt" ] || missing+=("--unit-cert $UNIT_ID.crt")
if [ ${#missing[@]} -gt 0 ]; then
  say "then re-run this command with ${missing[*]} to install the certificates"
fi
[ -f "$P$ETC/trust.yaml" ] || say "trust file $ETC/trust.yaml not yet present: add the issuer key (docs/service.md)"
