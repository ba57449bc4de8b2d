#!/usr/bin/env bash
# The local cluster's real node: kubelet, containerd with runc, the CNI bridge,
# kube-proxy (ClusterIP Services from pods and from the host), kube-router's
# network policy controller (NetworkPolicies enforced with iptables and ipsets)
# and CoreDNS (a pod, `*.svc.cluster.local`). Pods live on the bridge
# $BIZOSAAS_NODE_BRIDGE (bizosaas0, 10.244.0.0/24, the host is 10.244.0.1);
# nothing that leaves a pod is routed off this machine (see lib.sh).
#
# Usage: node.sh up|down|net-down|status|import ARCHIVE...|images
#   up        start the node against the running control plane (cluster.sh up)
#   down      stop it and remove everything it made: pods, mounts, cgroups,
#             network namespaces, iptables rules and ipsets
#   net-down  remove the bridge and its routes (after everything bound to it stopped)
#   import    import OCI image archives into the node's containerd (pinned, so
#             kubelet's image GC keeps them)
#   images    list the images the node holds
#
# Needs root, and from Debian: iptables, ipset, conntrack, libseccomp-dev (runc's
# build), busybox-static (the harness's toolbox image).
# State lives in ${BIZOSAAS_STATE_DIR:-$HOME/.local/state/bizosaas}/node.
set -euo pipefail
LOG_PREFIX=node
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER_STATE="$STATE_BASE/cluster"
PKI="$CLUSTER_STATE/pki"
KCFG_DIR="$CLUSTER_STATE/kubeconfigs"
ADMIN_KUBECONFIG="$CLUSTER_STATE/kubeconfig"
STATE="$STATE_BASE/node"
RUN="$STATE/run"
LOGS="$STATE/logs"
NODE_NAME=bizosaas-node
CGROUP_ROOT=bizosaas                       # kubelet's pods live under /sys/fs/cgroup/*/bizosaas
CONTAINERD_SOCK="$RUN/containerd.sock"
UP_TIMEOUT="${BIZOSAAS_UP_TIMEOUT:-120}"
STOP_TIMEOUT=15

# The harness's own images (pause, CoreDNS, a toolbox with busybox for tests).
HARNESS_IMAGE_TAG=harness
PAUSE_IMAGE="docker.io/bizosaas/pause:$HARNESS_IMAGE_TAG"
COREDNS_IMAGE="docker.io/bizosaas/coredns:$COREDNS_VERSION"
TOOLBOX_IMAGE="docker.io/bizosaas/toolbox:$HARNESS_IMAGE_TAG"

COMPONENTS=(containerd kubelet kube-proxy kube-router)

kubectl_admin() { kubectl --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }
# ctr warns about cgroup v1 on every call; nothing else of its stderr is dropped.
ctr_node() {
  "$CONTAINERD_BIN_DIR/ctr" --address "$CONTAINERD_SOCK" --namespace k8s.io "$@" \
    2> >(grep -v 'support for cgroup v1 is deprecated' >&2)
}

running_pid() { pid_file_pid "$RUN/$1.pid"; }

# start NAME BINARY ARGS... : run detached (see spawn_detached), appending to its log.
start() {
  local name=$1 bin=$2; shift 2
  spawn_detached "$RUN/$name.pid" "$LOGS/$name.log" "$bin" "$@"
  wait_for 10 running_pid "$name" >/dev/null || fail "$name" "exited right after starting"
}

fail() {
  log "ERROR: $1 $2; last lines of $LOGS/$1.log:"
  tail -n 30 "$LOGS/$1.log" 2>/dev/null | sed 's/^/    /' >&2 || true
  exit 1
}

stop() { stop_pid_file "$RUN/$1.pid" "$1" "$STOP_TIMEOUT"; }

# ---------------------------------------------------------------- configuration

write_configs() {
  mkdir -p "$STATE/cni/net.d" "$STATE/wrap" "$STATE/kubelet" "$STATE/etc"
  # The shim runs the `runc` it finds first on its PATH: the oom clamp (see
  # go/tools/runc-oom-clamp), which then runs the real one.
  ln -sf "$TOOLS_BIN_DIR/runc-oom-clamp" "$STATE/wrap/runc"

  cat >"$STATE/etc/containerd.toml" <<EOF
version = 3
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$RUN/containerd-ttrpc.sock"
[debug]
  level = "warn"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$STATE/wrap/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$CNI_BIN_DIR"]
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
EOF

  # hairpinMode: a pod reaches its own Service. No ipMasq: nothing leaves the bridge.
  cat >"$STATE/cni/net.d/10-bizosaas.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "bizosaas",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR", "gateway": "$NODE_IP", "rangeStart": "${NODE_IP%.*}.10"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  # failCgroupV1: this host is cgroup v1, which kubelet 1.36 refuses unless told.
  # Evictions and image GC are off: the node holds images imported by hand that no
  # registry could give back.
  cat >"$STATE/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [$CLUSTER_DNS_IP]
failSwapOn: false
evictionHard: {memory.available: "1Mi", nodefs.available: "0%", imagefs.available: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
podPidsLimit: 4096
resolvConf: $STATE/etc/resolv.conf
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
# A test node restarts a crashed container within 2 s (the default backoff grows to 5 min):
# the durability tests kill the operator's process over and over.
crashLoopBackOff: {maxContainerRestartPeriod: 2s}
EOF
  # Pods with dnsPolicy Default get no upstream: nothing outside this machine answers.
  : >"$STATE/etc/resolv.conf"

  cat >"$STATE/etc/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $KCFG_DIR/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $NODE_POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
conntrack:
  maxPerCore: 0
EOF
}

# cgroup v1: kubelet wants its cgroup root to exist in every controller.
make_cgroup_root() {
  local controller
  for controller in /sys/fs/cgroup/*/; do
    [[ -L ${controller%/} || ${controller} == */unified/ ]] && continue
    mkdir -p "$controller$CGROUP_ROOT"
  done
}

# ---------------------------------------------------------------- images

# build_harness_image REF OUT ARGS... : a harness image, rebuilt when absent.
build_harness_image() {
  local ref=$1 out=$2; shift 2
  [[ -s $out ]] && return 0
  "$TOOLS_BIN_DIR/imagebuild" --ref "$ref" --output "$out" "$@" >/dev/null
}

harness_images() {
  local dir="$CACHE_DIR/images/harness-$(cat "$TOOLS_BIN_DIR/.stamp" | cut -c1-12)"
  mkdir -p "$dir"
  command -v busybox >/dev/null || [[ -x /bin/busybox ]] ||
    die "the toolbox image needs busybox (Debian's busybox-static)"
  local busybox; busybox=$(command -v busybox || echo /bin/busybox)
  file -b "$busybox" 2>/dev/null | grep -q 'statically linked' ||
    ldd "$busybox" 2>&1 | grep -q 'not a dynamic executable' ||
    die "$busybox is not statically linked: install Debian's busybox-static"
  build_harness_image "$PAUSE_IMAGE" "$dir/pause.tar" \
    --entrypoint /pause --file "$TOOLS_BIN_DIR/pause=/pause"
  build_harness_image "$COREDNS_IMAGE" "$dir/coredns-$COREDNS_VERSION.tar" \
    --entrypoint /coredns --cmd -conf --cmd /etc/coredns/Corefile \
    --file "$COREDNS_BIN_DIR/coredns=/coredns"
  # busybox's applets by name (sh, httpd, nc, ...) for test pods and the harness's
  # business-service stand-in, and netcheck as their network client (busybox's own
  # wget crashes in Debian's static build).
  local applets=() a
  for a in sh httpd nc cat echo sleep env ls nslookup id printf sed; do applets+=(--file "$busybox=/bin/$a"); done
  build_harness_image "$TOOLBOX_IMAGE" "$dir/toolbox.tar" \
    --entrypoint /bin/sh "${applets[@]}" --file "$TOOLS_BIN_DIR/netcheck=/bin/netcheck" \
    --dir tmp:1777 --env PATH=/bin
  printf '%s\n' "$dir"/*.tar
}

cmd_import() {
  (($#)) || die "usage: $0 import ARCHIVE..."
  local archive
  for archive; do
    [[ -s $archive ]] || die "no image archive at $archive"
    ctr_node images import --label io.cri-containerd.pinned=pinned "$archive" >/dev/null ||
      die "importing $archive failed"
    # Also by digest, so that `image: repo@sha256:...` resolves as it would after a pull.
    local index name digest
    index=$(tar -xOf "$archive" index.json)
    name=$(sed -n 's/.*"io.containerd.image.name": *"\([^"@:]*\)[:@][^"]*".*/\1/p' <<<"$index" | head -1)
    digest=$(sed -n 's/.*"digest": *"\(sha256:[0-9a-f]*\)".*/\1/p' <<<"$index" | head -1)
    if [[ -n $name && -n $digest ]]; then
      local stale
      for stale in $(ctr_node images list -q | grep "^$name@sha256:" || true); do
        ctr_node images rm "$stale" >/dev/null 2>&1 || true
      done
      ctr_node images tag "$(sed -n 's/.*"io.containerd.image.name": *"\([^"]*\)".*/\1/p' <<<"$index" | head -1)" \
        "$name@$digest" >/dev/null
      ctr_node images label "$name@$digest" io.cri-containerd.pinned=pinned >/dev/null
    fi
  done
}

# ---------------------------------------------------------------- cluster DNS

apply_coredns() {
  kubectl_admin apply --server-side --force-conflicts -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: bizosaas-harness:coredns}
rules:
- apiGroups: [""]
  resources: [services, namespaces, pods]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bizosaas-harness:coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: bizosaas-harness:coredns}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
        }
        cache 30
        loadbalance
    }
    # Nothing outside the cluster resolves: no traffic leaves this machine.
    .:53 {
        errors
        template ANY ANY {
            rcode NXDOMAIN
        }
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: Never
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10}
        resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 128Mi}}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: config, mountPath: /etc/coredns}
      volumes:
      - name: config
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $CLUSTER_DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
EOF
}

# ---------------------------------------------------------------- readiness

containerd_ready() { ctr_node version >/dev/null 2>&1; }

node_registered() { kubectl_admin get node "$NODE_NAME" >/dev/null 2>&1; }

node_ready() {
  [[ $(kubectl_admin get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

coredns_ready() {
  [[ $(kubectl_admin -n kube-system get deploy coredns -o 'jsonpath={.status.readyReplicas}' 2>/dev/null) == 1 ]]
}

healthz() { curl -fsS --max-time 2 "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; }

# kube-router's sync has run once when its pod firewall chain exists.
kube_router_synced() { iptables -S KUBE-ROUTER-FORWARD >/dev/null 2>&1; }

await() {
  local name=$1 what=$2; shift 2
  wait_for "$UP_TIMEOUT" "$@" || fail "$name" "not $what after ${UP_TIMEOUT}s"
  running_pid "$name" >/dev/null || fail "$name" "exited"
}

# ---------------------------------------------------------------- commands

check_host() {
  local tool
  for tool in iptables iptables-save iptables-restore ipset conntrack; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH (Debian: apt-get install iptables ipset conntrack)"
  done
  [[ -f $ADMIN_KUBECONFIG ]] || die "no control plane: run cluster.sh up first"
}

cmd_up() {
  local t0=$EPOCHREALTIME
  "$HARNESS_DIR/build.sh" cluster node
  check_host
  node_network_up
  mkdir -p "$RUN" "$LOGS"
  local name all=1
  for name in "${COMPONENTS[@]}"; do running_pid "$name" >/dev/null || all=0; done
  if ((all)) && node_ready && coredns_ready; then
    # shellcheck disable=SC2046 # one archive per line
    cmd_import $(harness_images)
    log "already up ($(elapsed_since "$t0")s)"
    return 0
  fi
  write_configs
  make_cgroup_root

  if ! running_pid containerd >/dev/null; then
    PATH="$STATE/wrap:$CONTAINERD_BIN_DIR:$PATH" BIZOSAAS_REAL_RUNC="$RUNC_BIN_DIR/runc" \
      start containerd "$CONTAINERD_BIN_DIR/containerd" --config "$STATE/etc/containerd.toml"
    await containerd ready containerd_ready
  fi
  # shellcheck disable=SC2046 # one archive per line
  cmd_import $(harness_images)

  if ! running_pid kubelet >/dev/null; then
    start kubelet "$K8S_BIN_DIR/kubelet" \
      --config="$STATE/etc/kubelet.yaml" \
      --kubeconfig="$KCFG_DIR/kubelet.kubeconfig" \
      --root-dir="$STATE/kubelet" \
      --hostname-override="$NODE_NAME" \
      --node-ip="$NODE_IP" \
      --node-labels=bizosaas.io/node=real \
      --v=1
  fi
  await kubelet "registering the node" node_registered
  running_pid kube-proxy >/dev/null || start kube-proxy "$K8S_BIN_DIR/kube-proxy" --config="$STATE/etc/kube-proxy.yaml"
  if ! running_pid kube-router >/dev/null; then
    start kube-router "$KUBE_ROUTER_BIN_DIR/kube-router" \
      --kubeconfig="$KCFG_DIR/kube-router.kubeconfig" \
      --hostname-override="$NODE_NAME" \
      --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
      --service-cluster-ip-range="$SERVICE_CIDR" \
      --health-port=0 --metrics-port=0
  fi
  await kubelet Ready node_ready
  await kube-proxy healthy healthz 10256
  await kube-router "syncing its firewall" kube_router_synced
  apply_coredns
  await kubelet "running CoreDNS" coredns_ready
  log "up in $(elapsed_since "$t0")s; node $NODE_NAME at $NODE_IP"
}

# Every mount under the node's state directory, deepest first.
node_mounts() { awk -v p="$STATE/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r; }

# Processes started by containerd (shims and, through them, every container).
node_processes() {
  local pid exe
  for pid in /proc/[0-9]*; do
    exe=$(readlink "$pid/exe" 2>/dev/null) || continue
    [[ $exe == "$CONTAINERD_BIN_DIR/containerd-shim-runc-v2" ]] && echo "${pid#/proc/}"
  done
  local procs
  for procs in /sys/fs/cgroup/pids/$CGROUP_ROOT; do
    [[ -d $procs ]] && find "$procs" -name cgroup.procs -exec cat {} + 2>/dev/null
  done
  return 0
}

remove_cgroups() {
  local controller
  for controller in /sys/fs/cgroup/*/; do
    [[ -d $controller$CGROUP_ROOT ]] || continue
    find "$controller$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

# Removes kube-proxy's, kube-router's and the CNI plugins' chains and sets.
remove_rules() {
  "$K8S_BIN_DIR/kube-proxy" --cleanup --config="$STATE/etc/kube-proxy.yaml" >/dev/null 2>&1 || true
  [[ -x $KUBE_ROUTER_BIN_DIR/kube-router ]] &&
    "$KUBE_ROUTER_BIN_DIR/kube-router" --cleanup-config >/dev/null 2>&1 || true
  local table
  for table in filter nat mangle raw; do
    local rules
    rules=$(iptables-save -t "$table" 2>/dev/null) || continue
    grep -Eq 'KUBE-|CNI-' <<<"$rules" || continue
    grep -Ev '(KUBE-|CNI-)' <<<"$rules" | iptables-restore -T "$table" 2>/dev/null ||
      grep -Ev '(KUBE-|CNI-)' <<<"$rules" | iptables-restore
  done
  local set
  for set in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router)' || true); do
    ipset destroy "$set" 2>/dev/null || true
  done
}

cmd_down() {
  stop kube-router
  stop kube-proxy
  stop kubelet
  stop containerd
  local pids
  pids=$(node_processes | sort -u)
  if [[ -n $pids ]]; then
    # shellcheck disable=SC2086 # a list of pids
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  fi
  local m
  for m in $(node_mounts); do umount -l "$m" 2>/dev/null || true; done
  remove_cgroups
  remove_rules
  rm -rf "$STATE/containerd/state" "$STATE/cni/ipam" "$RUN"
  # Leftover veths (their peers lived in the pods' namespaces).
  local veth
  for veth in $(ip -o link show master "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$veth" 2>/dev/null || true
  done
  log "down"
}

cmd_status() {
  local name pid
  for name in "${COMPONENTS[@]}"; do
    if pid=$(running_pid "$name"); then printf '%-14s running (pid %s)\n' "$name" "$pid"
    else printf '%-14s stopped\n' "$name"; fi
  done
  kubectl_admin get node "$NODE_NAME" -o wide 2>/dev/null || true
}

main() {
  case "${1:-}" in
    up) lock_dir "$STATE"; cmd_up ;;
    down) lock_dir "$STATE"; cmd_down ;;
    net-down) node_network_down ;;
    # Stops the network policy enforcer alone; the rules it wrote stay, `up` starts it again.
    firewall-stop) lock_dir "$STATE"; stop kube-router ;;
    status) cmd_status ;;
    import) shift; cmd_import "$@" ;;
    images) ctr_node images list -q ;;
    *) echo "usage: $0 up|down|net-down|firewall-stop|status|import ARCHIVE...|images" >&2; exit 2 ;;
  esac
}

main "$@"
