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
CONTAINERD_BIN_DIR="$CACHE_DIR/bin/containerd-$CONTAINERD_VERSION"
RUNC_BIN_DIR="$CACHE_DIR/bin/runc-$RUNC_VERSION"
CNI_BIN_DIR="$CACHE_DIR/bin/cni-plugins-$CNI_PLUGINS_VERSION"
KUBE_ROUTER_BIN_DIR="$CACHE_DIR/bin/kube-router-$KUBE_ROUTER_VERSION"
COREDNS_BIN_DIR="$CACHE_DIR/bin/coredns-$COREDNS_VERSION"
# The harness's own Go tools (image writer, pause, runc's oom clamp): rebuilt
# whenever their sources change.
TOOLS_BIN_DIR="$CACHE_DIR/bin/harness-tools"
HELM_BIN_DIR="$CACHE_DIR/bin/helm-$HELM_VERSION"
PROMTOOL_BIN_DIR="$CACHE_DIR/bin/promtool-$PROMTOOL_VERSION"
OTELCOL_BIN_DIR="$CACHE_DIR/bin/otelcol-$OTELCOL_VERSION"

log() { printf '[%s] %s\n' "${LOG_PREFIX:-harness}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Seconds (with decimals) since an $EPOCHREALTIME value.
elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# True if something accepts TCP connections on ${2:-127.0.0.1}:$1.
port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# Poll "$@" every 0.2s until it succeeds or $1 seconds pass.
wait_for() {
  local timeout=$1; shift
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# Serialise up/down of one state dir (e.g. parallel test jobs): takes fd 8.
lock_dir() {
  mkdir -p "$1"
  exec 8>"$1/.lock"
  flock 8
}

# pid_file_pid FILE : the pid recorded in FILE ("pid WORD...") while that
# process's argv0 is one of the words after it; fails otherwise (stale file,
# reused pid).
pid_file_pid() {
  local fields argv0
  [[ -s $1 ]] || return 1
  read -r -a fields <"$1" || true
  [[ ${fields[0]:-} =~ ^[0-9]+$ ]] || return 1
  { IFS= read -r -d '' argv0 <"/proc/${fields[0]}/cmdline"; } 2>/dev/null || return 1
  local name
  for name in "${fields[@]:1}"; do
    if [[ $argv0 == "$name" ]]; then echo "${fields[0]}"; return 0; fi
  done
  return 1
}

# stop_pid_file FILE NAME TIMEOUT : SIGTERM the process group recorded in FILE,
# SIGKILL after TIMEOUT seconds, then remove FILE.
stop_pid_file() {
  local file=$1 name=$2 timeout=$3 pid
  pid=$(pid_file_pid "$file") || { rm -f "$file"; return 0; }
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  if ! wait_for "$timeout" pid_gone "$file"; then
    log "$name (pid $pid) ignored SIGTERM for ${timeout}s; sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait_for 5 pid_gone "$file" || die "could not stop $name (pid $pid)"
  fi
  rm -f "$file"
}

pid_gone() { ! pid_file_pid "$1" >/dev/null; }

# spawn_detached PID_FILE LOG_FILE BINARY ARGS... : run BINARY detached from this shell,
# appending to LOG_FILE. setsid gives it its own session (no controlling terminal, no SIGHUP
# when the caller's shell exits) and process group (so a stop can signal the group). The
# wrapper closes inherited descriptors above stderr, so callers reading our output through a
# pipe are not kept waiting for EOF, records "<pid> <binary>" in PID_FILE and then execs the
# binary under that pid.
spawn_detached() {
  local pid_file=$1 log_file=$2 bin=$3; shift 3
  rm -f "$pid_file"
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c '
    for fd in /proc/self/fd/*; do fd=${fd##*/}; if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null; fi; done
    echo "$$ $1" >"$2"; shift 2; exec "$@"' \
    _ "$bin" "$pid_file" "$bin" "$@" </dev/null >>"$log_file" 2>&1 &
}

# ---------------------------------------------------------------- the node's network
# One bridge carries the real node's pods, and its host address is where everything that
# pods must reach listens (the API server, PostgreSQL, OpenBao, the LLM server). Nothing
# that arrives from the bridge is routed anywhere but back onto it: a policy-routing table
# with only the pod subnet and a blackhole default keeps pod traffic on this machine.
NODE_BRIDGE="${BIZOSAAS_NODE_BRIDGE:-bizosaas0}"
NODE_IP="${BIZOSAAS_NODE_IP:-10.244.0.1}"
NODE_POD_CIDR="${BIZOSAAS_NODE_POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1                       # first IP: the `kubernetes` Service
CLUSTER_DNS_IP=10.96.0.10
NODE_ROUTE_TABLE=4244
NODE_RULE_PRIORITY=4244

node_network_up() {
  command -v ip >/dev/null || die "ip (iproute2) is not on PATH"
  [[ $(id -u) == 0 ]] || die "the node's network needs root (a bridge, routes and iptables rules)"
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || ip link add "$NODE_BRIDGE" type bridge
  ip -4 addr show dev "$NODE_BRIDGE" | grep -q "inet $NODE_IP/" ||
    ip addr add "$NODE_IP/${NODE_POD_CIDR#*/}" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # The host reaches ClusterIPs through the bridge (kube-proxy DNATs them in OUTPUT).
  ip route replace "$SERVICE_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP"
  ip route replace "$NODE_POD_CIDR" dev "$NODE_BRIDGE" src "$NODE_IP" table "$NODE_ROUTE_TABLE"
  ip route replace blackhole default table "$NODE_ROUTE_TABLE"
  ip rule show priority "$NODE_RULE_PRIORITY" | grep -q . ||
    ip rule add priority "$NODE_RULE_PRIORITY" iif "$NODE_BRIDGE" lookup "$NODE_ROUTE_TABLE"
  # Pods reach each other and Services through iptables (kube-proxy, kube-router): bridged
  # traffic must pass it, and the host forwards between the pods' veths.
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || modprobe br_netfilter 2>/dev/null ||
    die "the br_netfilter kernel module is not loaded (modprobe br_netfilter, from the kmod package)"
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  echo 1 >/proc/sys/net/ipv4/ip_forward
}

node_network_down() {
  ip rule del priority "$NODE_RULE_PRIORITY" 2>/dev/null || true
  ip route flush table "$NODE_ROUTE_TABLE" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" dev "$NODE_BRIDGE" 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
}
