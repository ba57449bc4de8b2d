#!/usr/bin/env bash
# Builds the OCI images of bizosaas-operator, bizosaas-agent and bizosaas-gateway without a container
# daemon or a registry: the Rust binaries, the shared libraries they link (glibc,
# libgcc) and the CA bundle, in one layer, run as uid 65532. The same commit, toolchain
# and profile give the same bytes (sorted entries, root-owned, stamped with the commit
# time; stripped binaries).
#
# Usage: images/build.sh [--profile release|dev] [--import]
#   --profile  cargo profile of the binaries (release; dev builds faster, for tests)
#   --import   import the archives into the local node's containerd (tests/harness/node.sh)
#
# Archives go to ${BIZOSAAS_CACHE_DIR:-$HOME/.cache/bizosaas}/images/, and
# images.env there records each image's reference and manifest digest. Images are
# named bizosaas/<binary>:<workspace version>; push them to a registry with any OCI
# tool, e.g. `skopeo copy oci-archive:<archive> docker://registry.example/bizosaas/bizosaas-agent:0.1.0`,
# or build them from images/Containerfile with docker, podman or buildah.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tests/harness/lib.sh"
LOG_PREFIX=images

profile=release import=false
while (($#)); do
  case $1 in
    --profile) profile=$2; shift 2 ;;
    --import) import=true; shift ;;
    *) echo "usage: $0 [--profile release|dev] [--import]" >&2; exit 2 ;;
  esac
done
BINARIES=(bizosaas-operator bizosaas-agent bizosaas-gateway)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
"$HARNESS_DIR/build.sh" node   # the image writer
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
source_url=$(sed -n 's/^repository = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then revision="$revision-dirty"; fi
SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH

log "building ${BINARIES[*]} ($profile)"
packages=(); for b in "${BINARIES[@]}"; do packages+=(-p "$b"); done
cargo build --quiet --locked --profile "$profile" "${packages[@]}"
out_dir="$CARGO_TARGET_DIR/$([[ $profile == dev ]] && echo debug || echo "$profile")"

images="$CACHE_DIR/images"
mkdir -p "$images" "$images/stage"
env_file="$images/images.env.tmp"
: >"$env_file"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -s $ca_bundle ]] || die "no CA bundle at $ca_bundle (Debian: apt-get install ca-certificates)"

for bin in "${BINARIES[@]}"; do
  staged="$images/stage/$bin"
  # Stripped: no symbol table or debug info, which would carry build paths.
  objcopy --strip-all "$out_dir/$bin" "$staged"
  files=(--file "$staged=/usr/local/bin/$bin:0755" --file "$ca_bundle=/etc/ssl/certs/ca-certificates.crt:0644")
  # Every shared library the binary loads, at the path the loader looks for it.
  while read -r lib; do
    files+=(--file "$(readlink -f "$lib")=$lib:0755")
  done < <(ldd "$staged" | awk '/=> \// { print $3 } /^[ \t]*\/lib/ { print $1 }')
  ref="bizosaas/$bin:$version"
  archive="$images/$bin-$version.tar"
  digest=$("$TOOLS_BIN_DIR/imagebuild" --ref "$ref" --output "$archive" \
    --user 65532:65532 --entrypoint "/usr/local/bin/$bin" --dir tmp:1777 \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --annotation "org.opencontainers.image.title=$bin" \
    --annotation "org.opencontainers.image.version=$version" \
    --annotation "org.opencontainers.image.revision=$revision" \
    --annotation "org.opencontainers.image.source=$source_url" \
    --annotation "org.opencontainers.image.licenses=Apache-2.0" \
    "${files[@]}")
  key=$(tr '[:lower:]-' '[:upper:]_' <<<"${bin#bizosaas-}")
  printf '%s_IMAGE=docker.io/%s\n%s_DIGEST=%s\n%s_ARCHIVE=%s\n' "$key" "$ref" "$key" "$digest" "$key" "$archive" >>"$env_file"
  log "$ref $digest ($(du -h "$archive" | cut -f1))"
done
mv -f "$env_file" "$images/images.env"

if $import; then
  # shellcheck disable=SC1091
  source "$images/images.env"
  bash "$HARNESS_DIR/node.sh" import "$OPERATOR_ARCHIVE" "$AGENT_ARCHIVE" "$GATEWAY_ARCHIVE"
  log "imported into the node's containerd"
fi
