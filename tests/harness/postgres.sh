#!/usr/bin/env bash
# PostgreSQL for the tests, from the machine's PostgreSQL 15 binaries, on
# 127.0.0.1 and the node's bridge address (10.244.0.1, where pods reach it), port
# ${BIZOSAAS_PG_PORT:-15432} (TCP only, no Unix socket).
#
# Usage: postgres.sh up|down|status|url|tls-url|ca
#   url prints postgres://postgres:<password>@10.244.0.1:<port>/postgres
#   tls-url prints the same URL with ?sslmode=verify-full
#   ca prints the path of the CA certificate (PEM) that signed the server's
#
# The server serves TLS with a certificate for 127.0.0.1 and the node's bridge
# address (not for the name localhost, so a test can show that verify-full
# checks the name) signed by a CA generated here with openssl and kept in
# ${BIZOSAAS_STATE_DIR:-$HOME/.local/state/bizosaas}/postgres/tls/ca.pem.
# Plain connections are still accepted.
#
# Superuser `postgres` has a generated password kept in
# ${BIZOSAAS_STATE_DIR:-$HOME/.local/state/bizosaas}/postgres/password; every
# role (including LOGIN roles that tests create) must authenticate with
# scram-sha-256. `down` stops the server and deletes the data; the password
# is kept. Binaries: initdb's directory on PATH, else
# /usr/lib/postgresql/15/bin (override: BIZOSAAS_PG_BIN).
#
# initdb and postgres refuse to run as root, so as root the server runs as the
# system user bizosaas-pg (created if missing). That user cannot reach a data
# directory inside a private (mode 700) home, so in that case the data lives in
# ${BIZOSAAS_PG_RUN_DIR:-/var/tmp/bizosaas-pg}/<id>/ and $STATE/postgres/data
# is a symlink to it.
set -euo pipefail
LOG_PREFIX=postgres
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_STATE="$STATE_BASE/postgres"
PG_PORT="${BIZOSAAS_PG_PORT:-15432}"
PASSWORD_FILE="$PG_STATE/password"
DATA_LINK="$PG_STATE/data"        # the data directory, or a symlink to it
LOG_FILE="$PG_STATE/postgres.log"
PG_OS_USER=bizosaas-pg
PG_RUN_DIR="${BIZOSAAS_PG_RUN_DIR:-/var/tmp/bizosaas-pg}"   # see header (root only)
MAX_CONNECTIONS=200
TLS_DIR="$PG_STATE/tls"
TLS_CONF=bizosaas-tls.conf        # in the data directory, included by postgresql.conf

is_root() { [[ $(id -u) -eq 0 ]]; }

find_pg_bin() {
  local initdb
  if [[ -n ${BIZOSAAS_PG_BIN:-} ]]; then
    PG_BIN=$BIZOSAAS_PG_BIN
  elif initdb=$(command -v initdb); then
    # Resolve symlinks: PATH often only has initdb/pg_ctl/postgres linked,
    # while pg_isready lives next to the real ones.
    PG_BIN=$(dirname "$(readlink -f "$initdb")")
  else
    PG_BIN=/usr/lib/postgresql/15/bin
  fi
  [[ -x $PG_BIN/initdb && -x $PG_BIN/pg_ctl && -x $PG_BIN/postgres ]] ||
    die "PostgreSQL binaries not found (looked in $PG_BIN); install PostgreSQL 15 or set BIZOSAAS_PG_BIN"
}

# Run a command as the server's OS user.
as_pg() {
  if is_root; then runuser -u "$PG_OS_USER" -- "$@"; else "$@"; fi
}

ensure_os_user() {
  is_root || return 0
  id "$PG_OS_USER" >/dev/null 2>&1 && return 0
  log "creating system user $PG_OS_USER to run the server (PostgreSQL refuses to run as root)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$PG_OS_USER"
}

# Sets DATA_DIR to the real data directory (may not exist yet).
resolve_data_dir() {
  if [[ -L $DATA_LINK ]]; then
    DATA_DIR=$(readlink "$DATA_LINK")
  else
    DATA_DIR=$DATA_LINK
  fi
}

# Creates the data directory where the server's user can reach it.
create_data_dir() {
  if is_root && ! runuser -u "$PG_OS_USER" -- test -x "$PG_STATE"; then
    local id
    id=$(printf '%s' "$PG_STATE" | sha256sum | cut -c1-12)
    DATA_DIR="$PG_RUN_DIR/$id/data"
    mkdir -p "$PG_RUN_DIR/$id"
    chown "$PG_OS_USER:" "$PG_RUN_DIR/$id"
    chmod 700 "$PG_RUN_DIR/$id"
    ln -sfn "$DATA_DIR" "$DATA_LINK"
  else
    DATA_DIR=$DATA_LINK
  fi
  mkdir -p "$DATA_DIR"
  chmod 700 "$DATA_DIR"
  if is_root; then chown "$PG_OS_USER:" "$DATA_DIR"; fi
}

ensure_password() {
  [[ -s $PASSWORD_FILE ]] && return 0
  (umask 077 && openssl rand -hex 24 >"$PASSWORD_FILE")
}

init_cluster() {
  create_data_dir
  log "initdb in $DATA_DIR ($("$PG_BIN/postgres" --version))"
  # initdb reads the password from a file that the server's user must be able
  # to open: hand it over in a private temp file of that user.
  local pwfile rc=0
  pwfile=$(as_pg mktemp)
  as_pg tee "$pwfile" <"$PASSWORD_FILE" >/dev/null
  as_pg "$PG_BIN/initdb" -D "$DATA_DIR" -U postgres --pwfile="$pwfile" \
    --auth=scram-sha-256 --encoding=UTF8 --no-locale >"$PG_STATE/initdb.log" 2>&1 || rc=$?
  as_pg rm -f "$pwfile"
  if ((rc)); then
    cat "$PG_STATE/initdb.log" >&2
    die "initdb failed"
  fi
  # Settings for a throwaway test database: TCP on loopback only, password
  # auth for everyone, no durability (faster tests).
  as_pg tee -a "$DATA_DIR/postgresql.conf" >/dev/null <<EOF

# --- bizosaas test harness ---
listen_addresses = '127.0.0.1,$NODE_IP'
unix_socket_directories = ''
max_connections = $MAX_CONNECTIONS
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  as_pg tee "$DATA_DIR/pg_hba.conf" >/dev/null <<EOF
# TYPE  DATABASE  USER  ADDRESS       METHOD
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   $NODE_POD_CIDR  scram-sha-256
EOF
}

# A CA and a server certificate signed by it (P-256, 10 years: a test server).
ensure_certificates() {
  [[ -s $TLS_DIR/ca.pem && -s $TLS_DIR/server.pem && -s $TLS_DIR/server.key ]] && return 0
  mkdir -p "$TLS_DIR"
  log "generating the TLS CA and server certificate in $TLS_DIR"
  (
    umask 077
    cd "$TLS_DIR"
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 3650 \
      -subj "/CN=bizosaas test PostgreSQL CA" -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
      -subj "/CN=bizosaas test PostgreSQL" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' \
      "$NODE_IP" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.pem 2>/dev/null
    rm -f server.csr server.ext ca.srl
  ) || die "openssl could not generate the TLS certificates"
  chmod 644 "$TLS_DIR/ca.pem"
}

# Puts the certificate in the data directory and turns TLS on; reloads a running server
# when that changed something.
ensure_tls() {
  ensure_certificates
  local changed=false
  if ! as_pg cmp -s "$DATA_DIR/server.crt" - <"$TLS_DIR/server.pem" 2>/dev/null; then
    as_pg tee "$DATA_DIR/server.crt" <"$TLS_DIR/server.pem" >/dev/null
    as_pg sh -c "umask 077; cat >'$DATA_DIR/server.key'" <"$TLS_DIR/server.key"
    changed=true
  fi
  if ! as_pg grep -q "^include_if_exists = '$TLS_CONF'" "$DATA_DIR/postgresql.conf"; then
    printf "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_min_protocol_version = 'TLSv1.2'\n" |
      as_pg tee "$DATA_DIR/$TLS_CONF" >/dev/null
    printf "include_if_exists = '%s'\n" "$TLS_CONF" | as_pg tee -a "$DATA_DIR/postgresql.conf" >/dev/null
    changed=true
  fi
  if $changed && is_running; then
    as_pg "$PG_BIN/pg_ctl" reload -D "$DATA_DIR" >/dev/null
    log "TLS turned on (reloaded)"
  fi
}

is_running() {
  [[ -f $DATA_DIR/PG_VERSION ]] && as_pg "$PG_BIN/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1
}

accepting() {
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres -t 2 2>/dev/null
}

start_server() {
  ! port_open "$PG_PORT" ||
    die "port $PG_PORT on 127.0.0.1 is already in use by another process (set BIZOSAAS_PG_PORT)"
  rm -f "$DATA_DIR/postmaster.pid"   # stale after a crash; pg_ctl said it is not running
  # The log is opened here (possibly as root) and inherited, so the server's
  # user needs no access to $PG_STATE. pg_ctl puts the server in its own
  # session, so it outlives this shell.
  if ! as_pg "$PG_BIN/pg_ctl" start -D "$DATA_DIR" -w -t 60 -o "-p $PG_PORT" \
      </dev/null >"$LOG_FILE" 2>&1; then
    tail -n 30 "$LOG_FILE" >&2
    die "server did not start (log: $LOG_FILE)"
  fi
  wait_for 30 accepting || { tail -n 30 "$LOG_FILE" >&2; die "server is not accepting connections on port $PG_PORT"; }
}

stop_server() {
  as_pg "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t 30 >/dev/null 2>&1 ||
    as_pg "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m immediate -w -t 10 >/dev/null 2>&1 || true
}

cmd_up() {
  local t0=$EPOCHREALTIME
  node_network_up   # it listens on the node's bridge address too
  find_pg_bin
  ensure_os_user
  mkdir -p "$PG_STATE"
  resolve_data_dir
  if is_running; then
    if accepting; then
      ensure_tls
      log "already up ($(elapsed_since "$t0")s)"
      return 0
    fi
    log "running but not answering on port $PG_PORT; restarting"
    stop_server
  fi
  ensure_password
  [[ -f $DATA_DIR/PG_VERSION ]] || { rm -rf "$DATA_DIR"; init_cluster; }
  ensure_tls
  start_server
  log "up in $(elapsed_since "$t0")s on 127.0.0.1 and $NODE_IP:$PG_PORT"
}

cmd_down() {
  find_pg_bin
  resolve_data_dir
  if [[ -f $DATA_DIR/PG_VERSION ]] && { ! is_root || id "$PG_OS_USER" >/dev/null 2>&1; }; then
    stop_server
  fi
  rm -rf "$DATA_DIR"
  rm -f "$DATA_LINK"
  # Remove the per-state parent that create_data_dir made outside $PG_STATE.
  if [[ $DATA_DIR != "$DATA_LINK" ]]; then rmdir "$(dirname "$DATA_DIR")" 2>/dev/null || true; fi
  log "down"
}

cmd_status() {
  find_pg_bin
  resolve_data_dir
  if is_running && accepting; then
    echo "postgres running on $NODE_IP:$PG_PORT (data: $DATA_DIR)"
  else
    echo "postgres stopped"
    return 1
  fi
}

cmd_url() {
  [[ -s $PASSWORD_FILE ]] || die "no password yet; run: $0 up"
  echo "postgres://postgres:$(<"$PASSWORD_FILE")@$NODE_IP:$PG_PORT/postgres"
}

cmd_tls_url() {
  echo "$(cmd_url)?sslmode=verify-full"
}

cmd_ca() {
  [[ -s $TLS_DIR/ca.pem ]] || die "no CA yet; run: $0 up"
  echo "$TLS_DIR/ca.pem"
}

main() {
  case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    url) cmd_url ;;
    tls-url) cmd_tls_url ;;
    ca) cmd_ca ;;
    *) echo "usage: $0 up|down|status|url|tls-url|ca" >&2; exit 2 ;;
  esac
}

main "$@"
