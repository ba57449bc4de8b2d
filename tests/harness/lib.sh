# shellcheck shell=bash disable=SC2034 # variables are used by the scripts that source this
# Shared helpers for build.sh, cluster.sh and postgres.sh. Source it; do not run it.

HARNESS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HARNESS_DIR/versions.env"

CACHE_DIR="${BIZOSAAS_CACHE_DIR:-$HOME/.cache/bizosaas}"
STATE_BASE="${BIZOSAAS_STATE_DIR:-$HOME/.local/state/bizosaas}"

# Where build.sh puts (and the other scripts find) each pinned binary set.
K8S_BIN_DIR="$CACHE_DIR/bin/kubernetes-$KUBERNETES_VERSION"
ETCD_BIN_DIR="$CACHE_DIR/bin/etcd-$ETCD_VERSION"
KWOK_BIN_DIR="$CACHE_DIR/bin/kwok-$KWOK_VERSION"
OPENBAO_BIN_DIR="$CACHE_DIR/bin/openbao-$OPENBAO_VERSION"

log() { printf '[%s] %s\n' "${LOG_PREFIX:-harness}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Seconds (with decimals) since an $EPOCHREALTIME value.
elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Poll "$@" every 0.2s until it succeeds or $1 seconds pass.
wait_for() {
  local timeout=$1; shift
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}
