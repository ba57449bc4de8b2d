#!/usr/bin/env bash
# The operator in the local cluster: the Helm chart installed from this checkout with
# the locally built images (images/build.sh --import), the harness's PostgreSQL and
# OpenBao, under the chart's own ServiceAccount and ClusterRole.
#
# Usage: operator.sh install [HELM ARGS...]|template [HELM ARGS...]|notes [HELM ARGS...]|test|uninstall|status|logs
#   install    helm upgrade --install the release `bizosaas` in bizosaas-system and wait
#              until the operator Deployment is rolled out; extra arguments go to helm
#              (e.g. --set replicaCount=2). Settings: BIZOSAAS_OPERATOR_REPLICAS (2).
#   template   helm template the chart from this checkout (no cluster needed); extra
#              arguments go to helm
#   notes      the chart's NOTES as an install would print them (no cluster needed)
#   test       helm test the release, printing the test Pod's log
#   uninstall  helm uninstall (Tenants, their finalizers and their data stay)
#   logs       the logs of every operator pod
set -euo pipefail
LOG_PREFIX=operator
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(cd "$HARNESS_DIR/../.." && pwd)"

NAMESPACE=bizosaas-system
RELEASE=bizosaas
KUBECONFIG="$(bash "$HARNESS_DIR/cluster.sh" kubeconfig)"
export KUBECONFIG
HELM="$HELM_BIN_DIR/helm"
IMAGES_ENV="$CACHE_DIR/images/images.env"
REPLICAS="${BIZOSAAS_OPERATOR_REPLICAS:-2}"

# secret NAME KEY VALUE : applies a one-key Secret; the value goes through stdin.
secret() {
  kubectl -n "$NAMESPACE" create secret generic "$1" --from-file="$2=/dev/stdin" --dry-run=client -o yaml \
    < <(printf '%s' "$3") | kubectl apply --server-side --force-conflicts -f - >/dev/null
}

cmd_install() {
  "$HARNESS_DIR/build.sh" helm
  [[ -s $IMAGES_ENV ]] || die "no operator image: build it with images/build.sh --import (or ./dev images)"
  # shellcheck disable=SC1090
  source "$IMAGES_ENV"
  # The images of the last build, whatever the node held before.
  bash "$HARNESS_DIR/node.sh" import "$OPERATOR_ARCHIVE" "$AGENT_ARCHIVE" "$GATEWAY_ARCHIVE"
  local db_url db_ca vault_addr vault_token
  # verify-full against the harness's CA: the operator's TLS path is exercised by every test.
  db_url=$(bash "$HARNESS_DIR/postgres.sh" tls-url) || die "PostgreSQL is not up (tests/harness/postgres.sh up)"
  db_ca=$(bash "$HARNESS_DIR/postgres.sh" ca) || die "PostgreSQL has no CA (tests/harness/postgres.sh up)"
  vault_addr=$(bash "$HARNESS_DIR/openbao.sh" addr) || die "OpenBao is not up (tests/harness/openbao.sh up)"
  # Never the root token: a token holding only the operator's shipped policy.
  vault_token=$(bash "$HARNESS_DIR/openbao.sh" operator-token) || die "no operator token from OpenBao"

  kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply --server-side -f - >/dev/null
  # Credentials go in through stdin, never on a command line.
  secret bizosaas-database url "$db_url"
  secret bizosaas-vault-token token "$vault_token"
  kubectl -n "$NAMESPACE" create configmap bizosaas-database-ca --from-file=ca.crt="$db_ca" \
    --dry-run=client -o yaml | kubectl apply --server-side --force-conflicts -f - >/dev/null

  # ClusterRoles applied from manifests/rbac (e.g. by the benchmark) are adopted by the
  # release, as Helm documents, instead of failing the install.
  local role
  for role in bizosaas-tenant-admin bizosaas-tenant-viewer; do
    if kubectl get clusterrole "$role" >/dev/null 2>&1 &&
      [[ -z $(kubectl get clusterrole "$role" -o jsonpath='{.metadata.annotations.meta\.helm\.sh/release-name}') ]]; then
      kubectl annotate clusterrole "$role" --overwrite meta.helm.sh/release-name="$RELEASE" \
        meta.helm.sh/release-namespace="$NAMESPACE" >/dev/null
      kubectl label clusterrole "$role" --overwrite app.kubernetes.io/managed-by=Helm >/dev/null
    fi
  done

  # The gateway trusts the harness's OIDC provider (sso.sh) when it has been prepared.
  local sso_args=()
  if [[ -s $(bash "$HARNESS_DIR/sso.sh" ca) ]]; then
    sso_args=(--set gateway.oidc.issuer="$(bash "$HARNESS_DIR/sso.sh" issuer)"
      --set-file gateway.oidc.caPEM="$(bash "$HARNESS_DIR/sso.sh" ca)")
  fi
  local t0=$EPOCHREALTIME
  "$HELM" upgrade --install "$RELEASE" "$ROOT/charts/bizosaas" -n "$NAMESPACE" \
    -f "$HARNESS_DIR/chart-values.yaml" \
    --set replicaCount="$REPLICAS" \
    --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
    --set image.digest="$OPERATOR_DIGEST" --set image.pullPolicy=IfNotPresent \
    --set agent.image.repository="${AGENT_IMAGE%:*}" --set agent.image.tag="${AGENT_IMAGE##*:}" \
    --set agent.image.digest="$AGENT_DIGEST" \
    --set gateway.image.repository="${GATEWAY_IMAGE%:*}" --set gateway.image.tag="${GATEWAY_IMAGE##*:}" \
    --set gateway.image.digest="$GATEWAY_DIGEST" \
    "${sso_args[@]}" \
    --set database.existingSecret=bizosaas-database --set database.caConfigMap=bizosaas-database-ca \
    --set vault.enabled=true --set vault.address="$vault_addr" --set vault.auth=token \
    --set vault.tokenSecret.name=bizosaas-vault-token \
    --set logLevel='info\,bizosaas_controllers=debug\,tokio_postgres=warn' \
    --wait --timeout 180s "$@" >/dev/null ||
    { kubectl -n "$NAMESPACE" get pods -o wide >&2 || true; cmd_logs | tail -n 30 >&2; die "helm install failed"; }
  kubectl -n "$NAMESPACE" rollout status deployment/"$RELEASE-operator" --timeout=180s >/dev/null
  log "installed in $(elapsed_since "$t0")s ($(kubectl -n "$NAMESPACE" get deploy "$RELEASE-operator" -o jsonpath='{.status.readyReplicas}') ready replicas)"
}

cmd_uninstall() {
  "$HARNESS_DIR/build.sh" helm
  "$HELM" uninstall "$RELEASE" -n "$NAMESPACE" --wait --ignore-not-found >/dev/null
  log "uninstalled"
}

cmd_logs() {
  local pod
  for pod in $(kubectl -n "$NAMESPACE" get pods -l app.kubernetes.io/instance="$RELEASE",app.kubernetes.io/component=operator -o name 2>/dev/null); do
    kubectl -n "$NAMESPACE" logs "$pod" --all-containers --prefix 2>/dev/null || true
  done
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  template) shift; "$HARNESS_DIR/build.sh" helm; "$HELM" template "$RELEASE" "$ROOT/charts/bizosaas" -n "$NAMESPACE" "$@" ;;
  notes) shift; "$HARNESS_DIR/build.sh" helm
    "$HELM" install "$RELEASE" "$ROOT/charts/bizosaas" -n "$NAMESPACE" --dry-run=client "$@" | sed -n '/^NOTES:$/,$p' ;;
  test) "$HARNESS_DIR/build.sh" helm; "$HELM" test "$RELEASE" -n "$NAMESPACE" --logs --timeout 120s ;;
  uninstall) cmd_uninstall ;;
  status) "$HELM" status "$RELEASE" -n "$NAMESPACE"; kubectl -n "$NAMESPACE" get pods -o wide ;;
  logs) cmd_logs ;;
  *) echo "usage: $0 install [HELM ARGS...]|template [HELM ARGS...]|notes [HELM ARGS...]|test|uninstall|status|logs" >&2; exit 2 ;;
esac
