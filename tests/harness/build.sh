#!/usr/bin/env bash
# Builds the pinned local-cluster binaries from source (Go modules under go/)
# into the cache, once:
#   $BIZOSAAS_CACHE_DIR/bin/kubernetes-<ver>/{kube-apiserver,kube-controller-manager,kube-scheduler}
#   $BIZOSAAS_CACHE_DIR/bin/etcd-<ver>/etcd
#   $BIZOSAAS_CACHE_DIR/bin/kwok-<ver>/{kwok,kwok.yaml}
# A set counts as cached only if its directory holds a .stamp matching the
# module's go.mod/go.sum and build flags; sets are built in a temp directory and
# renamed into place, so an interrupted build is never mistaken for a cached one.
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
    k8s.io/kubernetes/cmd/kube-scheduler
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

# ensure NAME DIR LDFLAGS BUILDFN FILE... : build the set unless cached.
ensure() {
  local name=$1 dir=$2 flags=$3 fn=$4; shift 4
  local stamp
  stamp=$(stamp_of "${name%%-*}" "$flags")
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

main() {
  check_pins
  command -v go >/dev/null || die "go is not on PATH"
  ensure "kubernetes-$KUBERNETES_VERSION" "$K8S_BIN_DIR" "$K8S_LDFLAGS" build_kubernetes \
    kube-apiserver kube-controller-manager kube-scheduler
  ensure "etcd-$ETCD_VERSION" "$ETCD_BIN_DIR" "$PLAIN_LDFLAGS" build_etcd etcd
  ensure "kwok-$KWOK_VERSION" "$KWOK_BIN_DIR" "$PLAIN_LDFLAGS" build_kwok kwok kwok.yaml
}

main "$@"
