#!/usr/bin/env bash
# Single sign-on for the local cluster: a real OIDC provider (Keycloak, from its server
# distribution on Maven Central, run on a JDK 21+) with the realm `bizosaas` of
# tests/harness/sso/realm.json: users alice (group acme-admins), bob (globex-admins) and carol
# (no group), the public client `bizosaas` whose access tokens carry `aud: bizosaas` and a
# `groups` claim, `other-app`, whose tokens are for another audience, and `key-rotator`, a
# confidential client allowed to manage the realm (the tests rotate its signing keys). The
# local API server trusts the issuer through its structured authentication configuration
# (cluster.sh), with usernames and groups prefixed `oidc:`, as the gateway maps them.
#
# Usage: sso.sh prepare|up|down|status|issuer|ca|auth-config|token USER [CLIENT]
#   prepare      the serving certificate and the API server's authentication configuration
#                (cluster.sh runs it before starting the API server)
#   up           prepare, fetch Keycloak once, start it and wait until the realm answers
#   token        an access token of USER (password grant; the password is <user>-password)
#   issuer, ca   the issuer URL, and the CA file its certificate chains to
#
# State lives in ${BIZOSAAS_STATE_DIR:-$HOME/.local/state/bizosaas}/sso. Ports:
# BIZOSAAS_SSO_PORT (18443, HTTPS on the node's address, where pods and the API server reach
# it), BIZOSAAS_SSO_HTTP_PORT (18480, plain HTTP on the same address: Keycloak's development mode insists on one).
set -euo pipefail
LOG_PREFIX=sso
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE="$STATE_BASE/sso"
PKI="$STATE/pki"
PID_FILE="$STATE/keycloak.pid"
LOG="$STATE/keycloak.log"
PORT="${BIZOSAAS_SSO_PORT:-18443}"
HTTP_PORT="${BIZOSAAS_SSO_HTTP_PORT:-18480}"
REALM=bizosaas
ISSUER="https://$NODE_IP:$PORT/realms/$REALM"
KEYCLOAK_DIR="$CACHE_DIR/bin/keycloak-$KEYCLOAK_VERSION"
AUTH_CONFIG="$STATE/authentication-config.yaml"
UP_TIMEOUT="${BIZOSAAS_SSO_UP_TIMEOUT:-300}"

# The CA and the serving certificate (IP SAN: the node's address). They survive `down`, so the
# API server's configuration stays valid; regenerated when missing or expiring within a day.
ensure_pki() {
  if [[ -s $PKI/ca.crt && -s $PKI/server.key ]] && openssl x509 -checkend 86400 -noout -in "$PKI/server.crt" >/dev/null 2>&1; then
    return 0
  fi
  rm -rf "$PKI"; mkdir -p "$PKI"; chmod 700 "$PKI"
  (
    umask 077
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$PKI/ca.key" \
      -out "$PKI/ca.crt" -days 3650 -sha256 -subj /CN=bizosaas-test-sso-ca -config /dev/null \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/server.key" -subj /CN=bizosaas-sso -out "$PKI/server.csr" 2>/dev/null
    printf '%s\n' "basicConstraints = critical, CA:FALSE" "keyUsage = critical, digitalSignature, keyEncipherment" \
      "extendedKeyUsage = serverAuth" "subjectAltName = IP:$NODE_IP, IP:127.0.0.1" >"$PKI/server.ext"
    openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
      -days 365 -sha256 -extfile "$PKI/server.ext" -out "$PKI/server.crt" 2>/dev/null
    rm -f "$PKI/server.csr" "$PKI/server.ext"
  )
  chmod 644 "$PKI/ca.crt"
}

# The API server's structured authentication configuration: JWTs of this issuer for audience
# `bizosaas`, username from preferred_username and groups from groups, both prefixed `oidc:`.
write_auth_config() {
  local tmp
  tmp=$(mktemp "$AUTH_CONFIG.XXXXXX")
  {
    echo "apiVersion: apiserver.config.k8s.io/v1"
    echo "kind: AuthenticationConfiguration"
    echo "jwt:"
    echo "  - issuer:"
    echo "      url: $ISSUER"
    echo "      audiences: [bizosaas]"
    echo "      certificateAuthority: |"
    sed 's/^/        /' "$PKI/ca.crt"
    echo "    claimMappings:"
    echo "      username: {claim: preferred_username, prefix: 'oidc:'}"
    echo "      groups: {claim: groups, prefix: 'oidc:'}"
    echo "      uid: {claim: sub}"
  } >"$tmp"
  mv -f "$tmp" "$AUTH_CONFIG"
}

cmd_prepare() {
  mkdir -p "$STATE"
  ensure_pki
  write_auth_config
}

# A java of major version 21 or newer: $JAVA_HOME's, the one on PATH, or one of the JDKs
# installed side by side under /usr/lib/jvm.
find_java() {
  local candidate major
  for candidate in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java 2>/dev/null || true)" /usr/lib/jvm/*/bin/java; do
    [[ -x $candidate ]] || continue
    major=$("$candidate" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = \([0-9]*\).*/\1/p')
    if [[ -n $major ]] && ((major >= 21)); then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

fetch_keycloak() {
  [[ -x $KEYCLOAK_DIR/bin/kc.sh && -f $KEYCLOAK_DIR/.stamp ]] && return 0
  command -v mvn >/dev/null || die "fetching Keycloak needs Maven (Debian: apt-get install maven)"
  command -v unzip >/dev/null || die "unpacking Keycloak needs unzip (Debian: apt-get install unzip)"
  local t0=$EPOCHREALTIME tmp
  tmp=$(mktemp -d "$CACHE_DIR/bin/.keycloak.XXXXXX")
  log "fetching Keycloak $KEYCLOAK_VERSION (org.keycloak:keycloak-quarkus-dist, about 180 MB) ..."
  mvn -q -B dependency:copy -Dartifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" \
    -DoutputDirectory="$tmp" >"$tmp/mvn.log" 2>&1 || { tail -20 "$tmp/mvn.log" >&2; die "could not fetch Keycloak through Maven"; }
  unzip -q "$tmp/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip" -d "$tmp"
  rm -rf "$KEYCLOAK_DIR"
  mv "$tmp/keycloak-$KEYCLOAK_VERSION" "$KEYCLOAK_DIR"
  rm -rf "$tmp"
  touch "$KEYCLOAK_DIR/.stamp"
  log "fetched Keycloak in $(elapsed_since "$t0")s"
}

realm_answers() {
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" "$ISSUER/.well-known/openid-configuration" >/dev/null 2>&1
}

cmd_up() {
  cmd_prepare
  if pid_file_pid "$PID_FILE" >/dev/null && realm_answers; then return 0; fi
  local java
  java=$(find_java) || die "Keycloak $KEYCLOAK_VERSION needs a JDK 21 or newer: install one (e.g. a Temurin 21 or 25 package) or set JAVA_HOME"
  fetch_keycloak
  stop_pid_file "$PID_FILE" keycloak 15
  ! port_open "$PORT" "$NODE_IP" || die "port $PORT on $NODE_IP is taken (BIZOSAAS_SSO_PORT)"
  node_network_up
  # The realm is imported at every start into an in-memory database: nothing to migrate.
  mkdir -p "$KEYCLOAK_DIR/data/import"
  cp "$HARNESS_DIR/sso/realm.json" "$KEYCLOAK_DIR/data/import/bizosaas-realm.json"
  local t0=$EPOCHREALTIME java_home
  java_home="$(dirname "$(dirname "$(readlink -f "$java")")")"
  log "starting Keycloak on $NODE_IP:$PORT (log: $LOG)"
  JAVA_HOME="$java_home" JAVA_OPTS_APPEND="-Xms64m -Xmx768m" \
    setsid nohup "$KEYCLOAK_DIR/bin/kc.sh" start-dev --import-realm --db=dev-mem \
    --https-port="$PORT" --https-certificate-file="$PKI/server.crt" --https-certificate-key-file="$PKI/server.key" \
    --http-host="$NODE_IP" --http-port="$HTTP_PORT" --hostname="https://$NODE_IP:$PORT" \
    --log-level=warn,org.keycloak.services:info,io.quarkus:info >"$LOG" 2>&1 </dev/null &
  # kc.sh either execs the JVM or waits on it as its child; a first start runs the build JVM
  # as a child and then execs the server's. Record the session leader's pid once a JVM is
  # there, with both names it may run under (kc.sh's and the JVM's): `down` signals the whole
  # process group, and checks argv0 against those names to know the pid is still ours.
  local pid=$! argv0=""
  for _ in $(seq 1 $((UP_TIMEOUT * 5))); do
    { IFS= read -r -d '' argv0 <"/proc/$pid/cmdline"; } 2>/dev/null || true
    [[ $argv0 == */bin/java ]] && break
    pgrep -P "$pid" -f 'bin/java' >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { tail -30 "$LOG" >&2; die "Keycloak exited at start"; }
    sleep 0.2
  done
  echo "$pid $argv0 $java_home/bin/java" >"$PID_FILE"
  if ! wait_for "$UP_TIMEOUT" realm_answers; then
    tail -30 "$LOG" >&2
    die "Keycloak did not serve realm $REALM within ${UP_TIMEOUT}s"
  fi
  log "Keycloak up in $(elapsed_since "$t0")s: issuer $ISSUER"
}

cmd_down() {
  stop_pid_file "$PID_FILE" keycloak 20
  log "down"
}

cmd_token() {
  local user=${1:?usage: sso.sh token USER [CLIENT]} client=${2:-bizosaas}
  curl -fsS --cacert "$PKI/ca.crt" "$ISSUER/protocol/openid-connect/token" \
    -d grant_type=password -d client_id="$client" -d username="$user" --data-urlencode "password=$user-password" \
    -d scope=openid | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'
}

case "${1:-}" in
  prepare) cmd_prepare ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) if pid_file_pid "$PID_FILE" >/dev/null && realm_answers; then echo "up: $ISSUER"; else echo down; exit 1; fi ;;
  issuer) echo "$ISSUER" ;;
  ca) echo "$PKI/ca.crt" ;;
  auth-config) echo "$AUTH_CONFIG" ;;
  token) shift; cmd_token "$@" ;;
  *) echo "usage: $0 prepare|up|down|status|issuer|ca|auth-config|token USER [CLIENT]" >&2; exit 2 ;;
esac
