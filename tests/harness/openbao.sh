#!/usr/bin/env bash
# OpenBao (Vault-compatible secrets server) for the operator's tests: `bao
# server -dev` on the node's bridge address (10.244.0.1):${BIZOSAAS_BAO_PORT:-18200}, plain HTTP, host-only
# only (its cluster listener takes the next port, 18201).
#
# Usage: openbao.sh up|down|status|env|addr|token|operator-token|k8s-auth
#   up        build (fetch) bao if needed and start the server; idempotent
#   down      stop it (dev mode keeps everything in memory: all data is gone)
#   status    running or not; exits 1 unless the server answers healthy
#   env       prints `export VAULT_ADDR=... VAULT_TOKEN=... BAO_ADDR=... BAO_TOKEN=...`
#             (use: eval "$(openbao.sh env)")
#   addr      prints http://10.244.0.1:<port>
#   token     prints the root token (tests use it to look; the operator never gets it)
#   operator-token
#             writes the operator's least-privilege policy (manifests/vault/
#             operator-policy.hcl) as `bizosaas-operator` and prints a token that
#             holds only that policy (no default policy); kept and reused while valid
#   k8s-auth  enables Kubernetes auth at auth/kubernetes/, configured against
#             the local control plane (cluster.sh up first). Needed again
#             after every restart of OpenBao (its state is in memory).
#
# Dev mode: unsealed in-memory storage, and the only secrets engine mounted is
# KV version 2 at secret/ (so data lives at secret/data/<path>, metadata at
# secret/metadata/<path>). Tests that need more mounts enable them themselves.
#
# The root token is generated at the first `up` and kept (across down/up) in
# ${BIZOSAAS_STATE_DIR:-$HOME/.local/state/bizosaas}/openbao/root-token, next
# to the pid file and bao.log.
set -euo pipefail
LOG_PREFIX=openbao
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BAO_STATE="$STATE_BASE/openbao"
BAO_PORT="${BIZOSAAS_BAO_PORT:-18200}"
BAO_CLUSTER_PORT=$((BAO_PORT + 1))         # dev mode's cluster listener
BAO_URL="http://$NODE_IP:$BAO_PORT"
BAO_BIN="$OPENBAO_BIN_DIR/bao"
TOKEN_FILE="$BAO_STATE/root-token"
OPERATOR_TOKEN_FILE="$BAO_STATE/operator-token"
OPERATOR_POLICY=bizosaas-operator
OPERATOR_POLICY_FILE="$HARNESS_DIR/../../manifests/vault/operator-policy.hcl"
PID_FILE="$BAO_STATE/bao.pid"
LOG_FILE="$BAO_STATE/bao.log"
UP_TIMEOUT="${BIZOSAAS_UP_TIMEOUT:-120}"   # seconds to wait for health
STOP_TIMEOUT=15                            # seconds before SIGKILL

# Kubernetes auth: the token reviewer identity OpenBao uses to call the
# TokenReview API (k8s-auth).
K8S_AUTH_NS=kube-system
K8S_AUTH_SA=openbao-auth
K8S_AUTH_SECRET=openbao-auth-token
K8S_AUTH_BINDING=openbao-auth-tokenreview

# ---------------------------------------------------------------- helpers

# The caller's BAO_*/VAULT_* variables (another server's address, a
# namespace, CA settings...) must not leak into our server or CLI calls.
clean_env=(env)
while IFS= read -r var; do clean_env+=(-u "$var"); done < <(compgen -e | grep -E '^(BAO|VAULT)_' || true)

root_token() { [[ -s $TOKEN_FILE ]] && cat "$TOKEN_FILE"; }

# The bao CLI, talking to our server as root.
bao_cli() {
  "${clean_env[@]}" BAO_ADDR="$BAO_URL" BAO_TOKEN="$(root_token)" "$BAO_BIN" "$@"
}

# Prints the server's pid if it is alive. The pid file holds "<pid> <binary>";
# the process must still be running that binary (guards against pid reuse).
running_pid() { pid_file_pid "$PID_FILE"; }


# 200 from sys/health: initialised, unsealed and active.
healthy() { curl -fsS -o /dev/null --max-time 2 "$BAO_URL/v1/sys/health" 2>/dev/null; }

# The server accepts our root token (it is not some other dev server).
token_valid() {
  local token
  token=$(root_token) || return 1
  curl -fsS -o /dev/null --max-time 2 -H "X-Vault-Token: $token" \
    "$BAO_URL/v1/auth/token/lookup-self" 2>/dev/null
}

ensure_token() {
  [[ -s $TOKEN_FILE ]] && return 0
  (umask 077 && printf 'root-%s\n' "$(openssl rand -hex 16)" >"$TOKEN_FILE")
}

# ---------------------------------------------------------------- server

# Runs bao detached from this shell, as cluster.sh does: setsid gives it its
# own session (no SIGHUP when the caller's shell exits) and process group; the
# wrapper closes inherited descriptors above stderr (callers reading our
# output through a pipe get EOF), records its pid and execs bao under it.
# The root token goes in through the environment (BAO_DEV_ROOT_TOKEN_ID, the
# same as -dev-root-token-id) so that it does not show in `ps`.
start_server() {
  rm -f "$PID_FILE"
  # shellcheck disable=SC2016 # expanded by the inner shell
  "${clean_env[@]}" BAO_DEV_ROOT_TOKEN_ID="$(root_token)" setsid bash -c '
    for fd in /proc/self/fd/*; do fd=${fd##*/}; if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null; fi; done
    echo "$$ $1" >"$2"; shift 2; exec "$@"' \
    _ "$BAO_BIN" "$PID_FILE" "$BAO_BIN" server -dev \
    -dev-listen-address="$NODE_IP:$BAO_PORT" \
    -dev-no-store-token \
    </dev/null >"$LOG_FILE" 2>&1 &
  wait_for 10 running_pid >/dev/null || fail "exited right after starting"
}

stop_server() { stop_pid_file "$PID_FILE" bao "$STOP_TIMEOUT"; }

# fail MESSAGE : show the log tail, stop the server, exit 1.
fail() {
  log "ERROR: bao $1; last lines of $LOG_FILE:"
  tail -n 30 "$LOG_FILE" 2>/dev/null | sed 's/^/    /' >&2 || true
  stop_server
  exit 1
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local t0=$EPOCHREALTIME
  node_network_up   # it listens on the node's bridge address too
  "$HARNESS_DIR/build.sh" openbao
  command -v curl >/dev/null || die "curl is not on PATH"
  ensure_token

  if running_pid >/dev/null; then
    if healthy && token_valid; then
      log "already up ($(elapsed_since "$t0")s) at $BAO_URL"
      return 0
    fi
    log "running but not healthy or not accepting our root token; restarting"
    stop_server
  fi
  local port
  for port in "$BAO_PORT" "$BAO_CLUSTER_PORT"; do
    ! port_open "$port" "$NODE_IP" ||
      die "port $port on $NODE_IP is already in use by another process (set BIZOSAAS_BAO_PORT; bao uses it and the next one)"
  done
  start_server
  wait_for "$UP_TIMEOUT" healthy || fail "not healthy after ${UP_TIMEOUT}s"
  running_pid >/dev/null || fail "exited"
  token_valid || fail "rejects the root token in $TOKEN_FILE"
  log "up in $(elapsed_since "$t0")s at $BAO_URL (KV v2 at secret/); eval \"\$($0 env)\""
}

cmd_down() {
  stop_server
  log "down"
}

cmd_status() {
  local pid
  if pid=$(running_pid) && healthy; then
    echo "openbao running (pid $pid) at $BAO_URL; $("$BAO_BIN" version 2>/dev/null || true)"
  elif [[ -n ${pid:-} ]]; then
    echo "openbao running (pid $pid) but not healthy at $BAO_URL (log: $LOG_FILE)"
    return 1
  else
    echo "openbao stopped"
    return 1
  fi
}

need_token() { [[ -s $TOKEN_FILE ]] || die "no root token yet; run: $0 up"; }

cmd_env() {
  need_token
  local token; token=$(root_token)
  printf 'export VAULT_ADDR=%q VAULT_TOKEN=%q BAO_ADDR=%q BAO_TOKEN=%q\n' \
    "$BAO_URL" "$token" "$BAO_URL" "$token"
}

# The operator's token: only the shipped policy, so every test that runs the operator
# proves the policy is enough. Rewritten each time (the file may have changed); the
# token is reused while OpenBao still accepts it.
cmd_operator_token() {
  if ! { running_pid >/dev/null && healthy && token_valid; }; then die "OpenBao is not up; run: $0 up"; fi
  local out token
  out=$(bao_cli policy write "$OPERATOR_POLICY" "$OPERATOR_POLICY_FILE" 2>&1) ||
    die "writing the operator policy failed: $out"
  if [[ -s $OPERATOR_TOKEN_FILE ]] &&
    curl -fsS -o /dev/null --max-time 2 -H "X-Vault-Token: $(cat "$OPERATOR_TOKEN_FILE")" \
      "$BAO_URL/v1/auth/token/lookup-self" 2>/dev/null; then
    cat "$OPERATOR_TOKEN_FILE"
    return 0
  fi
  token=$(bao_cli token create -orphan -no-default-policy -policy="$OPERATOR_POLICY" -ttl=720h \
    -display-name=bizosaas-operator -field=token 2>&1) || die "creating the operator token failed: $token"
  (umask 077 && printf '%s\n' "$token" >"$OPERATOR_TOKEN_FILE")
  printf '%s\n' "$token"
}

# Kubernetes auth against the local control plane: OpenBao verifies a login
# JWT by sending it to the apiserver's TokenReview API, authenticated with a
# long-lived token of the ServiceAccount kube-system/openbao-auth (bound to
# system:auth-delegator). The apiserver URL and CA come from the harness's
# admin kubeconfig.
cmd_k8s_auth() {
  local t0=$EPOCHREALTIME kubeconfig host ca_file jwt_file out
  if ! { running_pid >/dev/null && healthy && token_valid; }; then die "OpenBao is not up; run: $0 up"; fi
  command -v kubectl >/dev/null || die "kubectl is not on PATH"
  kubeconfig=$("$HARNESS_DIR/cluster.sh" kubeconfig 2>/dev/null)
  kube() { kubectl --kubeconfig "$kubeconfig" "$@"; }
  if ! { [[ -s $kubeconfig ]] && kube get --raw /readyz >/dev/null 2>&1; }; then
    die "the local cluster is not up; run: $HARNESS_DIR/cluster.sh up"
  fi

  kube apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata:
  name: $K8S_AUTH_SA
  namespace: $K8S_AUTH_NS
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: $K8S_AUTH_BINDING
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:auth-delegator
subjects:
- kind: ServiceAccount
  name: $K8S_AUTH_SA
  namespace: $K8S_AUTH_NS
---
apiVersion: v1
kind: Secret
metadata:
  name: $K8S_AUTH_SECRET
  namespace: $K8S_AUTH_NS
  annotations:
    kubernetes.io/service-account.name: $K8S_AUTH_SA
type: kubernetes.io/service-account-token
EOF
  # kube-controller-manager's token controller fills in the token.
  reviewer_token() {
    kube -n "$K8S_AUTH_NS" get secret "$K8S_AUTH_SECRET" -o 'jsonpath={.data.token}' 2>/dev/null |
      base64 -d 2>/dev/null
  }
  reviewer_token_ready() { [[ -n $(reviewer_token) ]]; }
  wait_for 30 reviewer_token_ready ||
    die "secret $K8S_AUTH_NS/$K8S_AUTH_SECRET got no token (is kube-controller-manager running?)"

  host=$(kube config view --raw --minify -o 'jsonpath={.clusters[0].cluster.server}')
  ca_file=$(mktemp "$BAO_STATE/.k8s-ca.XXXXXX")
  jwt_file=$(mktemp "$BAO_STATE/.k8s-jwt.XXXXXX")
  # shellcheck disable=SC2064 # expand now: the locals are gone when it runs
  trap "rm -f '$ca_file' '$jwt_file'" EXIT
  kube config view --raw --minify -o 'jsonpath={.clusters[0].cluster.certificate-authority-data}' |
    base64 -d >"$ca_file"
  [[ -s $ca_file ]] || die "the kubeconfig has no certificate-authority-data"
  reviewer_token >"$jwt_file"

  if ! out=$(bao_cli auth enable kubernetes 2>&1); then
    [[ $out == *"path is already in use"* ]] || die "enabling kubernetes auth failed: $out"
  fi
  # Issuer validation is off: TokenReview already proves that the apiserver
  # issued the JWT (and legacy Secret tokens carry a different issuer).
  # disable_local_ca_jwt: never fall back to an in-pod service account.
  out=$(bao_cli write auth/kubernetes/config \
    kubernetes_host="$host" \
    kubernetes_ca_cert=@"$ca_file" \
    token_reviewer_jwt=@"$jwt_file" \
    disable_iss_validation=true \
    disable_local_ca_jwt=true 2>&1) || die "writing auth/kubernetes/config failed: $out"
  log "kubernetes auth configured at auth/kubernetes/ against $host ($(elapsed_since "$t0")s)"
}

# Serialise up/down/k8s-auth of the same state dir (e.g. parallel test jobs).
lock_state() {
  lock_dir "$BAO_STATE"
  chmod 700 "$BAO_STATE"
}

main() {
  case "${1:-}" in
    up) lock_state; cmd_up ;;
    down) lock_state; cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    addr) echo "$BAO_URL" ;;
    token) need_token; root_token ;;
    operator-token) lock_state; cmd_operator_token ;;
    k8s-auth) lock_state; cmd_k8s_auth ;;
    *) echo "usage: $0 up|down|status|env|addr|token|operator-token|k8s-auth" >&2; exit 2 ;;
  esac
}

main "$@"
