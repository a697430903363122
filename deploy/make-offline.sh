#!/usr/bin/env bash
# Build the signed offline install bundle that a technician carries to a van with no network:
# the edge-lfr wheel, every dependency as binary wheels for each target architecture and
# Python version, the models with their manifest, the Debian packages provisioning may need
# (openssl and the van-local broker mosquitto, with their dependencies, as a local apt repository per
# architecture), provisioning's own files, a SHA256SUMS list and its Ed25519 signature by a
# release key. Install it with: sudo deploy/provision.sh --offline FILE --release-key PUB ...
# See docs/service.md ("Offline installation").
set -euo pipefail
umask 022

usage() {
  cat <<'USAGE'
usage: deploy/make-offline.sh --release-key KEY [options]

Builds edge-lfr-offline-<version>.tar (needs network access to PyPI and the Debian mirror
that this machine's apt uses; run it on a Debian machine with python3, pip and dpkg-dev).

required:
  --release-key FILE        the release private key (an Ed25519 key made with
                            "edge-lfr keys issuer --name release-YYYY --out keys/"); its public
                            half (NAME.issuer.pub.yaml) goes to the technicians separately
options:
  --arch LIST               Debian architectures, comma-separated: arm64, amd64 (default: arm64,amd64)
  --python LIST             CPython versions of the target OS (default: 3.11,3.13: Bookworm, Trixie)
  --suite NAME              Debian suite for the .deb files (default: bookworm)
  --debs LIST               Debian packages to carry, with their dependencies
                            (default: openssl,mosquitto)
  --out FILE                the bundle (default: edge-lfr-offline-<version>.tar in this folder)
  --passphrase-file FILE    the release key's passphrase, if it has one
  --python-bin PATH         Python with edge-lfr's dependencies, used to sign (default: the
                            checkout's .venv/bin/python, else python3)
  --cache DIR               download cache, reused by later runs (default: ~/.cache/edge-lfr-offline)
  -h, --help                this text

Exit status: 0 the bundle was written and verified; 1 a step failed (the message says which);
2 bad arguments.
USAGE
}

PROG=make-offline.sh
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
usage_error() { printf '%s: %s\n(run "%s --help" for the options)\n' "$PROG" "$*" "$0" >&2; exit 2; }
step() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
CHECKOUT="$(dirname "$HERE")"

ARCHES=arm64,amd64
PYTHONS=3.11,3.13
SUITE=bookworm
DEBS=openssl,mosquitto
OUT=
KEY=
PASS=
PYBIN=
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/edge-lfr-offline"

while [ $# -gt 0 ]; do
  opt="$1"
  case "$opt" in
    -h|--help) usage; exit 0 ;;
    --*=*) val="${opt#*=}"; opt="${opt%%=*}"; shift ;;
    --arch|--python|--suite|--debs|--out|--release-key|--passphrase-file|--python-bin|--cache)
      [ $# -ge 2 ] || usage_error "$opt needs a value"
      val="$2"; shift 2 ;;
    *) usage_error "unknown argument: $opt" ;;
  esac
  case "$opt" in
    --arch) ARCHES="$val" ;;
    --python) PYTHONS="$val" ;;
    --suite) SUITE="$val" ;;
    --debs) DEBS="$val" ;;
    --out) OUT="$val" ;;
    --release-key) KEY="$val" ;;
    --passphrase-file) PASS="$val" ;;
    --python-bin) PYBIN="$val" ;;
    --cache) CACHE="$val" ;;
    *) usage_error "unknown option: $opt" ;;
  esac
done

[ -n "$KEY" ] || usage_error "missing --release-key FILE (make one: edge-lfr keys issuer --name release-2026 --out keys/)"
[ -f "$KEY" ] || usage_error "--release-key $KEY: not found"
[ -z "$PASS" ] || [ -f "$PASS" ] || usage_error "--passphrase-file $PASS: not found"
IFS=, read -r -a ARCH_LIST <<<"$ARCHES"
IFS=, read -r -a PY_LIST <<<"$PYTHONS"
IFS=, read -r -a DEB_LIST <<<"$DEBS"
[ ${#ARCH_LIST[@]} -gt 0 ] || usage_error "--arch is empty"
for a in "${ARCH_LIST[@]}"; do
  case "$a" in arm64|amd64) ;; *) usage_error "bad --arch '$a': use arm64 and/or amd64" ;; esac
done
for v in "${PY_LIST[@]}"; do
  [[ "$v" =~ ^3\.(1[1-3])$ ]] || usage_error "bad --python '$v': edge-lfr runs on CPython 3.11 to 3.13"
done
[[ "$SUITE" =~ ^[a-z]+$ ]] || usage_error "bad --suite '$SUITE'"

if [ -z "$PYBIN" ]; then
  if [ -x "$CHECKOUT/.venv/bin/python" ]; then PYBIN="$CHECKOUT/.venv/bin/python"; else PYBIN=python3; fi
fi
for tool in python3 tar sha256sum openssl dpkg-scanpackages apt-get; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install python3 tar coreutils openssl dpkg-dev apt)"
done
SIGN=("$PYBIN" -m edge.tools.release)
(cd "$CHECKOUT" && PYTHONPATH="$CHECKOUT" "${SIGN[@]}" --help >/dev/null 2>&1) \
  || die "cannot run python -m edge.tools.release with $PYBIN (give --python-bin: a Python with cryptography and pyyaml)"

VERSION="$(sed -n 's/^version *= *//p' "$CHECKOUT/setup.cfg" | head -1)"
[ -n "$VERSION" ] || die "no version in $CHECKOUT/setup.cfg"
NAME="edge-lfr-offline-$VERSION"
OUT="${OUT:-$PWD/$NAME.tar}"
OUT="$(cd "$(dirname "$OUT")" && pwd -P)/$(basename "$OUT")"
mkdir -p "$CACHE"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/make-offline.XXXXXX")"
trap 'rm -rf -- "$WORK"' EXIT
B="$WORK/$NAME"
mkdir -p "$B/wheels" "$B/models" "$B/debs"
t0=$SECONDS

# --- 1. the project wheel ----------------------------------------------------------------------
step "building the edge-lfr $VERSION wheel"
python3 -m pip wheel --disable-pip-version-check -q --no-deps -w "$B/wheels" "$CHECKOUT" >"$WORK/wheel.log" 2>&1 \
  || { tail -20 "$WORK/wheel.log" >&2; die "pip wheel of $CHECKOUT failed"; }
WHEEL="$(ls "$B"/wheels/edge_lfr-"$VERSION"-*.whl 2>/dev/null | head -1)"
[ -n "$WHEEL" ] || die "pip wheel made no edge_lfr-$VERSION wheel"

# --- 2. dependency wheels, per architecture and Python version -------------------------------------
# numpy<2 on Python < 3.13: Bookworm's picamera2 helpers (simplejpeg) are built against numpy 1.x
# (the same pin as provision.sh's online install); Trixie's (Python 3.13) against numpy 2.
for arch in "${ARCH_LIST[@]}"; do
  case "$arch" in arm64) m=aarch64 ;; amd64) m=x86_64 ;; esac
  plats=()
  # glibc 2.36 is Bookworm's (Trixie has 2.41): any manylinux wheel up to that runs on both.
  for tag in manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
             manylinux_2_34 manylinux_2_35 manylinux_2_36; do
    plats+=(--platform "${tag}_$m")
  done
  for py in "${PY_LIST[@]}"; do
    step "downloading wheels for $arch ($m), CPython $py"
    # (pip download evaluates markers for this machine's Python, so the pin is chosen here)
    # pip: provision.sh bootstraps the venv's pip from it where the OS has no python3-venv
    REQS=("$WHEEL" pip); [ "${py#3.}" -ge 13 ] || REQS+=("numpy<2")
    python3 -m pip download --disable-pip-version-check -q --only-binary=:all: "${plats[@]}" \
      --implementation cp --python-version "$py" --abi "cp${py/./}" --abi abi3 --abi none \
      --cache-dir "$CACHE/pip" -d "$B/wheels" "${REQS[@]}" >"$WORK/pip.log" 2>&1 \
      || { tail -20 "$WORK/pip.log" >&2; die "no complete set of binary wheels for $arch, CPython $py (see above)"; }
  done
done
for dep in ai_edge_litert opencv_python_headless numpy cryptography paho_mqtt pyyaml; do
  ls "$B"/wheels/ | grep -qi "^$dep-" || die "no $dep wheel was downloaded"
done

# --- 3. models ------------------------------------------------------------------------------------
step "copying the models and their manifest"
"$PYBIN" - "$CHECKOUT/models" "$B/models" <<'PY' || die "the models do not match models/manifest.json"
import hashlib, json, pathlib, shutil, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
m = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
names = {"manifest.json"}
for entry in m.get("models", {}).values():
    for e in (entry, entry.get("edgetpu") if isinstance(entry.get("edgetpu"), dict) else None):
        if not e:
            continue
        for key in ("file", "licence_file"):
            if isinstance(e.get(key), str):
                names.add(e[key])
        if "file" in e and "sha256" in e:
            if hashlib.sha256((src / e["file"]).read_bytes()).hexdigest() != e["sha256"]:
                sys.exit(f"{src / e['file']}: sha256 differs from the manifest")
sn = m.get("score_normalisation")   # the background cohort the matcher normalises scores against
if isinstance(sn, dict) and isinstance(sn.get("cohort_file"), str):
    names.add(sn["cohort_file"])
    if "sha256" in sn and hashlib.sha256((src / sn["cohort_file"]).read_bytes()).hexdigest() != sn["sha256"]:
        sys.exit(f"{src / sn['cohort_file']}: sha256 differs from the manifest")
for n in sorted(names):
    if "/" in n or n.startswith("."):
        sys.exit(f"unsafe file name in the manifest: {n!r}")
    shutil.copy2(src / n, dst / n)
PY

# --- 4. Debian packages: a local apt repository per architecture -----------------------------------
# A private apt state (empty dpkg status, the host's sources, the target architecture): apt
# resolves the packages' whole dependency closure, and provision.sh later installs from it only
# what the unit lacks.
for arch in "${ARCH_LIST[@]}"; do
  step "downloading Debian $SUITE $arch packages: ${DEB_LIST[*]} (with dependencies)"
  A="$CACHE/apt-$SUITE-$arch"
  mkdir -p "$A/lists/partial" "$A/archives/partial" "$A/etc/preferences.d"
  : > "$A/status"
  # the host's Debian sources (this machine's mirror), read with the target's architecture
  rm -f "$A"/etc/*.list "$A"/etc/*.sources
  if [ -f /etc/apt/sources.list ]; then cp /etc/apt/sources.list "$A/etc/sources.list"; else : > "$A/etc/sources.list"; fi
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && cp "$f" "$A/etc/"; done
  APT=(-o "Dir::State::status=$A/status" -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A"
       -o "Dir::Cache::archives=$A/archives" -o "Dir::Etc::SourceList=$A/etc/sources.list"
       -o "Dir::Etc::SourceParts=$A/etc" -o "Dir::Etc::preferencesparts=$A/etc/preferences.d"
       -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch" -o "APT::Install-Recommends=false"
       -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get "${APT[@]}" -qq update >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log" >&2; die "apt-get update ($arch) failed"; }
  apt-get "${APT[@]}" -qq -y --download-only install "${DEB_LIST[@]}" >"$WORK/apt.log" 2>&1 \
    || { tail -20 "$WORK/apt.log" >&2; die "apt-get could not download ${DEB_LIST[*]} for $arch"; }
  # the closure of exactly these packages (the cache may hold other downloads too): apt's
  # simulation lists "Inst NAME (VERSION ... [ARCH])"; the file is NAME_VERSION_ARCH.deb, ':' as %3a
  apt-get "${APT[@]}" -s -y install "${DEB_LIST[@]}" 2>/dev/null \
    | sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*\[\([a-z0-9]*\)\])$/\1_\2_\3.deb/p' | sed 's/:/%3a/g' > "$WORK/debs-$arch"
  mkdir -p "$B/debs/$arch"
  n=0
  while read -r f; do
    [ -f "$A/archives/$f" ] || die "apt did not download $f ($arch)"
    cp "$A/archives/$f" "$B/debs/$arch/"; n=$((n + 1))
  done < "$WORK/debs-$arch"
  [ "$n" -gt 0 ] || die "no .deb files for $arch"
  (cd "$B/debs/$arch" && dpkg-scanpackages --multiversion . /dev/null 2>/dev/null > Packages) \
    || die "dpkg-scanpackages failed ($arch)"
  step "  $n packages, $(du -sh "$B/debs/$arch" | cut -f1)"
done

# --- 5. provisioning's own files ------------------------------------------------------------------
mkdir -p "$B/deploy/provision" "$B/systemd" "$B/docs"
cp "$CHECKOUT/deploy/provision.sh" "$CHECKOUT/deploy/make-certs.sh" "$B/deploy/"
cp -r "$CHECKOUT/deploy/provision/." "$B/deploy/provision/"
cp -r "$CHECKOUT/deploy/mosquitto" "$CHECKOUT/deploy/config" "$B/deploy/"
cp "$CHECKOUT"/systemd/*.service "$CHECKOUT"/systemd/*.timer "$B/systemd/"
cp "$CHECKOUT/docs/service.md" "$CHECKOUT/docs/privacy.md" "$CHECKOUT/docs/alerts.md" "$B/docs/"
"$PYBIN" - "$B/release.json" "$VERSION" "$SUITE" "${ARCH_LIST[*]}" "${PY_LIST[*]}" "${DEB_LIST[*]}" <<'PY'
import json, sys, time
out, ver, suite, arches, pys, debs = sys.argv[1:]
json.dump({"name": "edge-lfr-offline", "version": ver, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "debian_suite": suite, "architectures": arches.split(), "python": pys.split(), "debs": debs.split()},
          open(out, "w"), indent=1)
PY

# --- 6. checksums, signature, self-check, tar -------------------------------------------------------
step "writing SHA256SUMS and signing it"
(cd "$B" && find . -type f ! -name SHA256SUMS ! -name SHA256SUMS.sig -printf '%P\n' | LC_ALL=C sort \
   | xargs -d '\n' sha256sum > SHA256SUMS)
(cd "$CHECKOUT" && PYTHONPATH="$CHECKOUT" "${SIGN[@]}" sign --key "$KEY" ${PASS:+--passphrase-file "$PASS"} \
   --sums "$B/SHA256SUMS" --out "$B/SHA256SUMS.sig") || die "signing failed"
step "writing $OUT"
tar --sort=name --owner=0 --group=0 --numeric-owner --mode='u+rw,go+r,go-w' -C "$WORK" -cf "$OUT.part" "$NAME" \
  || die "tar failed"
mv -f "$OUT.part" "$OUT"
step "done in $((SECONDS - t0)) s: $OUT ($(du -h "$OUT" | cut -f1), $(wc -l < "$B/SHA256SUMS") files)"
