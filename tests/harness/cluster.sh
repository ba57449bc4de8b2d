#!/usr/bin/env bash
# Local Kubernetes control plane for the operator's tests: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok (fake nodes whose pods
# "run" without containers), all listening on 127.0.0.1 only.
#
# Usage: cluster.sh up|down|status|restart-apiserver|kubeconfig
#
# State (pid files, logs, PKI, kubeconfigs, etcd data) lives in
#   ${BIZOSAAS_STATE_DIR:-$HOME/.local/state/bizosaas}/cluster
# Ports (all overridable): BIZOSAAS_APISERVER_PORT (16443),
# BIZOSAAS_ETCD_CLIENT_PORT (12379), BIZOSAAS_ETCD_PEER_PORT (12380),
# BIZOSAAS_KCM_PORT (12257), BIZOSAAS_SCHEDULER_PORT (12259),
# BIZOSAAS_KWOK_PORT (12247). BIZOSAAS_KWOK_NODES sets the fake node count (1).
set -euo pipefail
LOG_PREFIX=cluster
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE="$STATE_BASE/cluster"
PKI="$STATE/pki"
RUN="$STATE/run"
LOGS="$STATE/logs"
DATA="$STATE/data"
KCFG_DIR="$STATE/kubeconfigs"
ADMIN_KUBECONFIG="$STATE/kubeconfig"
# What the API server records under the chart's audit policy (JSON lines).
AUDIT_LOG="$STATE/audit.log"

APISERVER_PORT="${BIZOSAAS_APISERVER_PORT:-16443}"
ETCD_CLIENT_PORT="${BIZOSAAS_ETCD_CLIENT_PORT:-12379}"
ETCD_PEER_PORT="${BIZOSAAS_ETCD_PEER_PORT:-12380}"
KCM_PORT="${BIZOSAAS_KCM_PORT:-12257}"
SCHEDULER_PORT="${BIZOSAAS_SCHEDULER_PORT:-12259}"
KWOK_PORT="${BIZOSAAS_KWOK_PORT:-12247}"
NODE_COUNT="${BIZOSAAS_KWOK_NODES:-1}"
UP_TIMEOUT="${BIZOSAAS_UP_TIMEOUT:-120}"   # seconds per readiness wait
STOP_TIMEOUT=15                            # seconds before SIGKILL

KWOK_POD_CIDR=10.245.0.0/16               # fake pod IPs handed out by kwok (never routed)
SA_ISSUER=https://kubernetes.default.svc.cluster.local
KWOK_NODE_SELECTOR=kwok.x-k8s.io/node=fake

# Start order (stop_all stops them clients-first, etcd last).
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

# The API server listens on the node's bridge address, so pods reach it through the
# `kubernetes` Service as well as the host does.
API_URL="https://$NODE_IP:$APISERVER_PORT"

kubectl_admin() { kubectl --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

# ---------------------------------------------------------------- processes

bin_of() {
  case $1 in
    etcd) echo "$ETCD_BIN_DIR/etcd" ;;
    kwok) echo "$KWOK_BIN_DIR/kwok" ;;
    *) echo "$K8S_BIN_DIR/$1" ;;
  esac
}

# Prints the pid of component $1 if it is alive. The pid file holds
# "<pid> <binary>"; the process must still be running that binary (guards
# against pid reuse after a crash or reboot; zombies have an empty cmdline).
running_pid() { pid_file_pid "$RUN/$1.pid"; }

# start NAME ARGS... : run the component detached from this shell, with a fresh log.
start() {
  local name=$1; shift
  : >"$LOGS/$name.log"
  spawn_detached "$RUN/$name.pid" "$LOGS/$name.log" "$(bin_of "$name")" "$@"
  wait_for 10 running_pid "$name" >/dev/null || fail "$name" "exited right after starting"
}

# stop NAME... : SIGTERM the running ones among NAMEs, SIGKILL whatever is
# left after STOP_TIMEOUT seconds.
stop() {
  local name pid names=()
  for name; do
    if pid=$(running_pid "$name"); then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      names+=("$name")
    fi
  done
  ((${#names[@]})) || return 0
  wait_for "$STOP_TIMEOUT" none_running "${names[@]}" && return 0
  for name in "${names[@]}"; do
    if pid=$(running_pid "$name"); then
      log "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait_for 5 none_running "${names[@]}" || die "could not stop: ${names[*]}"
}

# Clients of the apiserver first, etcd last: an apiserver whose etcd is gone
# hangs in its graceful shutdown (it retries to remove its leases).
stop_all() {
  stop kwok kube-scheduler kube-controller-manager
  stop kube-apiserver
  stop etcd
  rm -rf "$RUN"
}

none_running() {
  local name
  for name; do ! running_pid "$name" >/dev/null || return 1; done
}

all_running() {
  local name
  for name in "${COMPONENTS[@]}"; do running_pid "$name" >/dev/null || return 1; done
}

# fail NAME MESSAGE : show the component's log tail, tear down, exit 1.
fail() {
  local name=$1 msg=$2
  log "ERROR: $name $msg; last lines of $LOGS/$name.log:"
  tail -n 30 "$LOGS/$name.log" 2>/dev/null | sed 's/^/    /' >&2 || true
  log "stopping the half-started cluster (logs are kept in $LOGS)"
  stop_all
  exit 1
}

check_ports_free() {
  local spec name port
  for spec in etcd:$ETCD_CLIENT_PORT etcd:$ETCD_PEER_PORT kube-apiserver:$APISERVER_PORT \
              kube-controller-manager:$KCM_PORT kube-scheduler:$SCHEDULER_PORT kwok:$KWOK_PORT; do
    name=${spec%%:*} port=${spec##*:}
    ! port_open "$port" || ! port_open "$port" "$NODE_IP" ||
      die "port $port (for $name) on 127.0.0.1 is already in use by another process; stop it or pick another port (see the header of $0)"
  done
}

# ---------------------------------------------------------------- PKI
# ECDSA P-256 keys in PKCS#8 PEM (accepted by Go and by rustls), one CA. The
# service-account signing key is RSA 2048 (RS256 is what every JWT consumer
# supports).

# openssl_ca NAME COMMON_NAME : self-signed CA.
openssl_ca() {
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$PKI/$1.key" -out "$PKI/$1.crt" -days 3650 -sha256 \
    -subj "/CN=$2" -config /dev/null \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
}

# openssl_leaf NAME SUBJECT EXTENDED_KEY_USAGE [SAN [ISSUER]]
openssl_leaf() {
  local name=$1 subj=$2 eku=$3 san=${4:-} ca=${5:-ca}
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature"
    echo "extendedKeyUsage = $eku"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid"
    [[ -z $san ]] || echo "subjectAltName = $san"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 \
    -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

CERTS=(ca apiserver admin kube-controller-manager kube-scheduler kwok front-proxy-ca front-proxy-client
  apiserver-kubelet-client kubelet kubelet-serving kube-proxy kube-router)
NODE_NAME=bizosaas-node

# PKI survives `down` (so a kubeconfig held by a client stays valid across
# restarts); it is regenerated if incomplete or any cert expires within a day.
pki_valid() {
  local c
  [[ -s $PKI/sa.key && -s $PKI/sa.pub ]] || return 1
  for c in "${CERTS[@]}"; do
    [[ -s $PKI/$c.key ]] && openssl x509 -checkend 86400 -noout -in "$PKI/$c.crt" >/dev/null 2>&1 || return 1
  done
}

ensure_pki() {
  pki_valid && return 0
  log "generating PKI in $PKI"
  rm -rf "$PKI"
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  (
    umask 077
    openssl_ca ca bizosaas-test-ca
    openssl_leaf apiserver "/CN=kube-apiserver" serverAuth \
      "IP:127.0.0.1, DNS:localhost, IP:$NODE_IP, IP:$SERVICE_IP, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local"
    openssl_leaf admin "/O=system:masters/CN=bizosaas-admin" clientAuth
    openssl_leaf kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
    openssl_leaf kube-scheduler "/CN=system:kube-scheduler" clientAuth
    # kwok also serves its (fake kubelet) API over TLS with this cert. It
    # patches status of arbitrary nodes and pods and manages their leases, so
    # it gets full rights, as kwokctl gives it.
    openssl_leaf kwok "/O=system:masters/CN=kwok-controller" "serverAuth, clientAuth" "IP:127.0.0.1, DNS:localhost"
    # Request-header (front-proxy) auth, as kubeadm sets it up: aggregated API
    # servers need it, and kcm/scheduler log errors every few seconds without it.
    openssl_ca front-proxy-ca bizosaas-test-front-proxy-ca
    openssl_leaf front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca
    # The real node (node.sh): kubelet's client identity (the Node authorizer and
    # NodeRestriction key on it) and serving cert, the API server's client cert for
    # logs/exec, kube-proxy (bound to system:node-proxier by default) and kube-router's
    # policy controller (watches pods, namespaces and policies cluster-wide).
    openssl_leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    openssl_leaf kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
    openssl_leaf kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP, DNS:$NODE_NAME"
    openssl_leaf kube-proxy "/CN=system:kube-proxy" clientAuth
    openssl_leaf kube-router "/O=system:masters/CN=kube-router" clientAuth
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key" 2>/dev/null
    openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"
  )
}

# write_kubeconfig FILE CERTNAME : self-contained (embedded PEM) kubeconfig
# that verifies the apiserver against our CA.
write_kubeconfig() {
  local file=$1 cert=$2 tmp
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bizosaas
  cluster:
    server: $API_URL
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: bizosaas
  context:
    cluster: bizosaas
    user: $cert
current-context: bizosaas
EOF
  chmod 600 "$tmp"
  mv -f "$tmp" "$file"   # atomic: readers never see a half-written file
}

write_kubeconfigs() {
  mkdir -p "$KCFG_DIR"
  write_kubeconfig "$ADMIN_KUBECONFIG" admin
  local c
  for c in kube-controller-manager kube-scheduler kwok kubelet kube-proxy kube-router; do
    write_kubeconfig "$KCFG_DIR/$c.kubeconfig" "$c"
  done
}

# ---------------------------------------------------------------- components

start_etcd() {
  # --unsafe-no-fsync: the data is thrown away on `down`; fsync only slows tests.
  start etcd \
    --name=bizosaas \
    --data-dir="$DATA/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="bizosaas=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state=new \
    --unsafe-no-fsync=true \
    --log-level=warn
}

start_apiserver() {
  # Users of the harness's OIDC provider (sso.sh) authenticate with its tokens too: the
  # structured authentication configuration names the issuer, its CA and claim mappings.
  bash "$HARNESS_DIR/sso.sh" prepare
  # The `kubernetes` Service's endpoint is the node's bridge address, where pods
  # (the operator, CoreDNS) reach the API server.
  # The chart's audit policy, so tests see what the API server records of BizOSaaS objects.
  start kube-apiserver \
    --authentication-config="$(bash "$HARNESS_DIR/sso.sh" auth-config)" \
    --audit-policy-file="$HARNESS_DIR/../../charts/bizosaas/files/audit-policy.yaml" \
    --audit-log-path="$AUDIT_LOG" \
    --audit-log-format=json \
    --audit-log-maxsize=100 \
    --audit-log-maxbackup=1 \
    --bind-address="$NODE_IP" \
    --advertise-address="$NODE_IP" \
    --secure-port="$APISERVER_PORT" \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --service-account-issuer="$SA_ISSUER" \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --api-audiences="$SA_ISSUER" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --allow-privileged=true \
    --profiling=false
}

start_controller_manager() {
  local kcfg="$KCFG_DIR/kube-controller-manager.kubeconfig"
  # --leader-elect=false: single instance; a stale lease left by a crash would
  # otherwise delay the restart by the lease duration.
  # --resource-quota-sync-period: CRDs are installed seconds after `up`; a quota
  # created before the quota controller discovered them only counts their objects
  # at its next full sync (5 minutes by default).
  start kube-controller-manager \
    --kubeconfig="$kcfg" \
    --authentication-kubeconfig="$kcfg" \
    --authorization-kubeconfig="$kcfg" \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --leader-elect=false \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$PKI/ca.crt" \
    --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --allocate-node-cidrs=false \
    --kube-api-qps=100 \
    --kube-api-burst=200 \
    --resource-quota-sync-period=10s \
    --profiling=false
}

start_scheduler() {
  local kcfg="$KCFG_DIR/kube-scheduler.kubeconfig"
  start kube-scheduler \
    --kubeconfig="$kcfg" \
    --authentication-kubeconfig="$kcfg" \
    --authorization-kubeconfig="$kcfg" \
    --bind-address=127.0.0.1 \
    --secure-port="$SCHEDULER_PORT" \
    --leader-elect=false \
    --profiling=false
}

start_kwok() {
  # kwok.yaml holds the upstream "fast" node/pod stages (see build.sh).
  # Only nodes annotated kwok.x-k8s.io/node=fake are taken over.
  start kwok \
    --kubeconfig="$KCFG_DIR/kwok.kubeconfig" \
    --config="$KWOK_BIN_DIR/kwok.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector="$KWOK_NODE_SELECTOR" \
    --node-ip=127.0.0.1 \
    --node-port="$KWOK_PORT" \
    --server-address="127.0.0.1:$KWOK_PORT" \
    --tls-cert-file="$PKI/kwok.crt" \
    --tls-private-key-file="$PKI/kwok.key" \
    --cidr="$KWOK_POD_CIDR" \
    --node-lease-duration-seconds=40
}

node_name() { echo "kwok-node-$1"; }

# Fake nodes, as in kwok's docs, tainted so that real workloads land on the real
# node (node.sh); the scale benchmark's objects need no pods. kwok fills in
# conditions, addresses and nodeInfo and keeps the node lease fresh.
apply_nodes() {
  local i name
  for ((i = 0; i < NODE_COUNT; i++)); do
    name=$(node_name "$i")
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
  labels:
    beta.kubernetes.io/arch: amd64
    beta.kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
spec:
  taints:
  - {key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}
status:
  allocatable: {cpu: "32", memory: 128Gi, pods: "110", ephemeral-storage: 1Ti}
  capacity: {cpu: "32", memory: 128Gi, pods: "110", ephemeral-storage: 1Ti}
  nodeInfo: {architecture: amd64, operatingSystem: linux}
  phase: Running
EOF
  done | kubectl_admin apply -f - >/dev/null
}

# ---------------------------------------------------------------- readiness

etcd_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

apiserver_ready() {
  curl -fsS --max-time 2 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "$API_URL/readyz" >/dev/null 2>&1
}

# Health endpoints of kcm/scheduler use self-signed serving certs (-k is fine
# for a liveness probe on loopback).
secure_healthz() { curl -fsSk --max-time 2 "https://127.0.0.1:$1/healthz" >/dev/null 2>&1; }

nodes_ready() {
  local i status
  for ((i = 0; i < NODE_COUNT; i++)); do
    status=$(kubectl_admin get node "$(node_name "$i")" \
      -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) || return 1
    [[ $status == True ]] || return 1
  done
}

default_sa_exists() { kubectl_admin -n default get serviceaccount default >/dev/null 2>&1; }

# await COMPONENT WHAT CHECK... : wait for CHECK, or fail showing COMPONENT's log.
await() {
  local name=$1 what=$2; shift 2
  wait_for "$UP_TIMEOUT" "$@" || fail "$name" "not $what after ${UP_TIMEOUT}s"
  running_pid "$name" >/dev/null || fail "$name" "exited"
}

wait_cluster_ready() {
  await kube-apiserver ready apiserver_ready
  await kube-controller-manager healthy secure_healthz "$KCM_PORT"
  await kube-scheduler healthy secure_healthz "$SCHEDULER_PORT"
  await kwok "making the node(s) Ready" nodes_ready
  await kube-controller-manager "creating the default ServiceAccount" default_sa_exists
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local t0=$EPOCHREALTIME
  "$HARNESS_DIR/build.sh"
  command -v kubectl >/dev/null || die "kubectl is not on PATH"

  node_network_up
  if all_running && apiserver_ready; then
    apply_nodes
    wait_cluster_ready
    log "already up ($(elapsed_since "$t0")s); KUBECONFIG=$ADMIN_KUBECONFIG"
    return 0
  fi

  if [[ -d $RUN || -d $DATA ]]; then
    log "cleaning up leftovers of a previous (crashed or partial) run"
    stop_all
    rm -rf "$DATA"
  fi
  check_ports_free
  node_network_up
  mkdir -p "$RUN" "$LOGS" "$DATA"
  ensure_pki
  write_kubeconfigs

  start_etcd
  await etcd healthy etcd_healthy
  start_apiserver
  await kube-apiserver ready apiserver_ready
  start_controller_manager
  start_scheduler
  start_kwok
  apply_nodes || fail kube-apiserver "rejected the kwok node(s)"
  wait_cluster_ready
  log "up in $(elapsed_since "$t0")s; KUBECONFIG=$ADMIN_KUBECONFIG"
}

cmd_down() {
  stop_all
  rm -rf "$DATA"
  log "down"
}

cmd_status() {
  local name pid any=0
  for name in "${COMPONENTS[@]}"; do
    if pid=$(running_pid "$name"); then
      printf '%-24s running (pid %s)\n' "$name" "$pid"
      any=1
    else
      printf '%-24s stopped\n' "$name"
    fi
  done
  if ((any)) && apiserver_ready; then
    printf '%-24s ready at %s\n' apiserver "$API_URL"
    printf '%-24s %s\n' kubeconfig "$ADMIN_KUBECONFIG"
    kubectl_admin get nodes 2>/dev/null || true
  fi
}

# Stops and starts the API server alone, keeping etcd and its data: what a control-plane
# upgrade or crash looks like to the operator.
cmd_restart_apiserver() {
  local t0=$EPOCHREALTIME
  running_pid etcd >/dev/null || die "the cluster is not up (run: $0 up)"
  stop kube-apiserver
  start_apiserver
  await kube-apiserver ready apiserver_ready
  log "kube-apiserver restarted in $(elapsed_since "$t0")s"
}

cmd_audit_log() { echo "$AUDIT_LOG"; }

cmd_kubeconfig() {
  [[ -f $ADMIN_KUBECONFIG ]] || log "warning: $ADMIN_KUBECONFIG does not exist yet (run: $0 up)"
  echo "$ADMIN_KUBECONFIG"
}

# Serialise up/down of the same state dir (e.g. parallel test jobs).
lock_state() { lock_dir "$STATE"; }

main() {
  case "${1:-}" in
    up) lock_state; cmd_up ;;
    down) lock_state; cmd_down ;;
    status) cmd_status ;;
    restart-apiserver) lock_state; cmd_restart_apiserver ;;
    kubeconfig) cmd_kubeconfig ;;
    audit-log) cmd_audit_log ;;
    *) echo "usage: $0 up|down|status|restart-apiserver|kubeconfig|audit-log" >&2; exit 2 ;;
  esac
}

main "$@"
