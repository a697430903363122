#!/usr/bin/env bash
# Make the MQTT certificate authority, broker certificates and per-client certificates for
# edge-lfr units, officers' handhelds and observers, officers' passwords for the handheld web
# page (MQTT over WebSockets), and the broker ACL derived from them.
# Needs openssl (and mosquitto_passwd for "officer"). Keys are EC P-256, written with mode 0600.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: make-certs.sh [-d DIR] [-p PREFIX] [-D DAYS] COMMAND [ARGS...]

  ca                          create the CA (DIR/ca.key, DIR/ca.crt) unless it already exists
  server NAME [SAN...]        a broker certificate DIR/NAME.crt; SANs are host names or IP
                              addresses the clients dial (default: localhost 127.0.0.1)
  unit ID                     a van unit's client certificate (CN=ID, OU=unit)
  handheld ID                 an officer's handheld client certificate (CN=ID, OU=handheld)
  observer ID                 a read-only observer (technician's rig, audit): CN=ID, OU=observer
  officer ID                  an officer's user name and password for the handheld web page
                              (WebSockets listener) in DIR/passwd: prompts twice on a terminal,
                              else reads one line (12+ characters) from standard input
  acl                         write DIR/acl for mosquitto from every client certificate in DIR
  all UNIT HANDHELD OBSERVER  ca + server "broker" + the three clients + acl (tests, bench rigs)

options:
  -d DIR      where keys, certificates and the ACL live (default: ./mqtt-certs)
  -p PREFIX   topic prefix used in the ACL (default: lfr; must match mqtt.topic_prefix)
  -D DAYS     validity of a new leaf certificate in days (default: 825; the CA gets 3650)

The client's certificate CN is its MQTT user name (mosquitto: use_identity_as_username), so
the ACL is per identity:
  unit      may publish only PREFIX/ID/alert, PREFIX/ID/status, PREFIX/ID/health,
            PREFIX/ID/adjudication/ack and read only PREFIX/ID/adjudication
  handheld  (certificate) and
  officer   (password) may read PREFIX/+/alert, PREFIX/+/status, PREFIX/+/adjudication/ack
            and publish PREFIX/+/adjudication
  observer  may read everything and publish nothing
IDs are 1-64 letters, digits, '-' or '_', unique across certificates and officers. Re-run
"acl" after adding or revoking a client (revoke an officer: mosquitto_passwd -D DIR/passwd ID)
and reload mosquitto (kill -HUP). Keep DIR/ca.key offline in production.
USAGE
}

DIR=./mqtt-certs
PREFIX=lfr
DAYS=825
while getopts "d:p:D:h" opt; do
  case "$opt" in
    d) DIR="$OPTARG" ;;
    p) PREFIX="$OPTARG" ;;
    D) DAYS="$OPTARG" ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { usage >&2; exit 2; }
cmd="$1"; shift

die() { echo "make-certs.sh: $*" >&2; exit 1; }
check_id() { [[ "$1" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "bad id '$1': use 1-64 letters, digits, '-' or '_'"; }
[[ "$PREFIX" =~ ^[A-Za-z0-9_-]{1,64}$ ]] || die "bad topic prefix '$PREFIX'"
[[ "$DAYS" =~ ^[0-9]{1,5}$ ]] || die "bad -D '$DAYS'"
command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"

mkdir -p "$DIR"
umask 077

make_ca() {
  if [ -f "$DIR/ca.key" ] && [ -f "$DIR/ca.crt" ]; then return 0; fi
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$DIR/ca.key" -out "$DIR/ca.crt" -days 3650 -sha256 \
    -subj "/O=edge-lfr/OU=ca/CN=edge-lfr MQTT CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  chmod 644 "$DIR/ca.crt"
  echo "CA: $DIR/ca.crt"
}

# leaf NAME OU EXTENSIONS
leaf() {
  local name="$1" ou="$2" ext="$3"
  [ -f "$DIR/ca.key" ] || die "no CA in $DIR: run '$0 -d $DIR ca' first"
  [ -e "$DIR/$name.crt" ] && die "$DIR/$name.crt exists already (remove it to re-issue)"
  local tmp; tmp="$(mktemp -d)"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$DIR/$name.key" -out "$tmp/req.csr" -subj "/O=edge-lfr/OU=$ou/CN=$name" 2>/dev/null
  printf '%s\n' "$ext" > "$tmp/ext.cnf"
  openssl x509 -req -in "$tmp/req.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$DAYS" -sha256 \
    -extfile "$tmp/ext.cnf" -out "$DIR/$name.crt" 2>/dev/null
  rm -rf "$tmp"
  chmod 644 "$DIR/$name.crt"
  echo "$ou: $DIR/$name.crt $DIR/$name.key"
}

officer_exists() { [ -f "$DIR/passwd" ] && cut -d: -f1 "$DIR/passwd" | grep -qxF "$1"; }

client() {  # client ROLE ID
  check_id "$2"
  officer_exists "$2" && die "'$2' is an officer's user name in $DIR/passwd: identities must be unique"
  leaf "$2" "$1" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
}

server() {  # server NAME [SAN...]
  local name="$1"; shift
  check_id "$name"
  [ $# -gt 0 ] || set -- localhost 127.0.0.1
  local sans="" s
  for s in "$@"; do
    if [[ "$s" =~ ^[0-9.]+$ || "$s" == *:* ]]; then sans+="${sans:+,}IP:$s"; else sans+="${sans:+,}DNS:$s"; fi
  done
  leaf "$name" server "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$sans"
}

officer() {  # officer ID: add or change an officer's password in DIR/passwd
  local id="$1" pw create=()
  check_id "$id"
  [ -e "$DIR/$id.crt" ] && die "'$id' already names a certificate in $DIR: identities must be unique"
  command -v mosquitto_passwd >/dev/null || die "mosquitto_passwd not found (apt-get install mosquitto)"
  [ -f "$DIR/passwd" ] || create=(-c)
  if [ -t 0 ]; then
    mosquitto_passwd ${create[@]+"${create[@]}"} "$DIR/passwd" "$id"
  else
    IFS= read -r pw || true
    [ ${#pw} -ge 12 ] || die "officer $id: the password (one line on standard input) needs 12 or more characters"
    # printf is a shell builtin: the password never appears in a process's arguments
    printf '%s\n%s\n' "$pw" "$pw" | mosquitto_passwd ${create[@]+"${create[@]}"} "$DIR/passwd" "$id" >/dev/null
  fi
  chmod 600 "$DIR/passwd"
  echo "officer: $id in $DIR/passwd (run 'acl' next)"
}

acl() {
  local out="$DIR/acl.new" f subject cn ou units=() handhelds=() observers=() officers=()
  for f in "$DIR"/*.crt; do
    [ -e "$f" ] || continue
    subject="$(openssl x509 -in "$f" -noout -subject -nameopt RFC2253)"
    cn="$(sed -n 's/.*CN=\([A-Za-z0-9_-]*\).*/\1/p' <<<"$subject")"
    ou="$(sed -n 's/.*OU=\([a-z]*\).*/\1/p' <<<"$subject")"
    openssl verify -CAfile "$DIR/ca.crt" "$f" >/dev/null 2>&1 || continue
    case "$ou" in
      unit) units+=("$cn") ;;
      handheld) handhelds+=("$cn") ;;
      observer) observers+=("$cn") ;;
    esac
  done
  if [ -f "$DIR/passwd" ]; then
    while IFS=: read -r cn _; do
      [[ "$cn" =~ ^[A-Za-z0-9_-]{1,64}$ ]] && [ ! -e "$DIR/$cn.crt" ] && officers+=("$cn")
    done < "$DIR/passwd"
  fi
  {
    echo "# mosquitto ACL generated by deploy/make-certs.sh from the client certificates in $DIR."
    echo "# Do not edit by hand: issue or remove certificates and run 'make-certs.sh acl' again."
    echo "# Nothing is granted to anonymous clients (there are none: require_certificate true on the"
    echo "# TLS listener, a password from DIR/passwd on the WebSockets listener, allow_anonymous false)."
    local id
    for id in ${units[@]+"${units[@]}"}; do
      printf '\n# unit %s\nuser %s\ntopic write %s/%s/alert\ntopic write %s/%s/status\ntopic write %s/%s/health\ntopic write %s/%s/adjudication/ack\ntopic read %s/%s/adjudication\n' \
        "$id" "$id" "$PREFIX" "$id" "$PREFIX" "$id" "$PREFIX" "$id" "$PREFIX" "$id" "$PREFIX" "$id"
    done
    for id in ${handhelds[@]+"${handhelds[@]}"}; do
      printf '\n# handheld %s\nuser %s\ntopic read %s/+/alert\ntopic read %s/+/status\ntopic read %s/+/adjudication/ack\ntopic write %s/+/adjudication\n' \
        "$id" "$id" "$PREFIX" "$PREFIX" "$PREFIX" "$PREFIX"
    done
    for id in ${officers[@]+"${officers[@]}"}; do
      printf '\n# officer %s (password, handheld web page)\nuser %s\ntopic read %s/+/alert\ntopic read %s/+/status\ntopic read %s/+/adjudication/ack\ntopic write %s/+/adjudication\n' \
        "$id" "$id" "$PREFIX" "$PREFIX" "$PREFIX" "$PREFIX"
    done
    for id in ${observers[@]+"${observers[@]}"}; do
      printf '\n# observer %s\nuser %s\ntopic read #\n' "$id" "$id"
    done
  } > "$out"
  chmod 644 "$out"
  mv "$out" "$DIR/acl"
  echo "ACL: $DIR/acl (${#units[@]} units, ${#handhelds[@]} handhelds, ${#officers[@]} officers, ${#observers[@]} observers)"
}

case "$cmd" in
  ca) make_ca ;;
  server) [ $# -ge 1 ] || die "server needs a NAME"; server "$@" ;;
  unit|handheld|observer) [ $# -eq 1 ] || die "$cmd needs one ID"; client "$cmd" "$1" ;;
  officer) [ $# -eq 1 ] || die "officer needs one ID"; officer "$1" ;;
  acl) acl ;;
  all)
    [ $# -eq 3 ] || die "all needs UNIT HANDHELD OBSERVER"
    make_ca
    [ -e "$DIR/broker.crt" ] || server broker localhost 127.0.0.1
    for pair in "unit:$1" "handheld:$2" "observer:$3"; do
      [ -e "$DIR/${pair#*:}.crt" ] || client "${pair%%:*}" "${pair#*:}"
    done
    acl ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
