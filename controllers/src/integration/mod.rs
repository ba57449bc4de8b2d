//! The Integration controller: resolves credentials from a Secret or Vault, projects them
//! into `integration-<name>`, and checks the endpoint on an interval.

pub mod build;
pub mod defaults;
pub mod health;
pub mod vault_path;

use crate::apply::Applier;
use crate::conditions::{self, Observed};
use crate::context::Context;
use crate::duration;
use crate::egress::Target;
use crate::egress::dial::{DialError, Dialer};
use crate::egress::resolve::{OnBehalfOf, ResolveError, Resolver};
use crate::scaffold::Scaffold;
use crate::vault::VaultError;
use bizosaas_crds::common::READY;
use bizosaas_crds::integration::{IntegrationSpec, IntegrationStatus};
use bizosaas_crds::{Integration, LABEL_MANAGED_BY, LABEL_TENANT, MANAGED_BY};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Controller name used in metrics, logs and events.
pub const CONTROLLER: &str = "integration";
pub const CREDENTIALS_RESOLVED: &str = "CredentialsResolved";
pub const REACHABLE: &str = "Reachable";

const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Why a reconcile failed: an API call, or an object that no longer deserialises.
pub use crate::scaffold::Error;

/// State the Integration controller keeps between reconciles.
pub struct IntegrationContext {
    pub scaffold: Scaffold,
    /// Vets endpoints and keeps one pinned client per endpoint.
    dialer: Dialer,
    /// Consecutive failed checks per Integration, for backoff.
    failures: Mutex<HashMap<ObjectRef<Integration>, u32>>,
}

impl IntegrationContext {
    pub fn new(ctx: Arc<Context>) -> Self {
        let dialer = Dialer::new(ctx.client.clone());
        Self { scaffold: Scaffold::new(CONTROLLER, ctx), dialer, failures: Mutex::default() }
    }
}

/// Runs the Integration controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let ours = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let controller =
        Controller::new(Api::<DeserializeGuard<Integration>>::all(client.clone()), watcher::Config::default());
    let _census = crate::census::spawn(controller.store(), CONTROLLER, ctx.metrics.clone(), |_| {});
    controller
        .owns_stream(ctx.tenant_namespaces.watch::<Secret>(ours, None))
        .with_config(crate::scaffold::controller_config())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(IntegrationContext::new(ctx)))
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile(guard: Arc<DeserializeGuard<Integration>>, ictx: Arc<IntegrationContext>) -> Result<Action, Error> {
    ictx.scaffold.reconcile(&guard, |integration| apply(integration, &ictx)).await
}

fn error_policy(guard: Arc<DeserializeGuard<Integration>>, error: &Error, ictx: Arc<IntegrationContext>) -> Action {
    ictx.scaffold.error_policy(&guard, error)
}

/// The endpoint an Integration talks to: its own, or its type's default.
pub fn endpoint(spec: &IntegrationSpec) -> Option<String> {
    spec.endpoint.clone().or_else(|| defaults::defaults(spec.type_).0.map(str::to_string))
}

async fn apply(integration: &Integration, ictx: &IntegrationContext) -> Result<Action, Error> {
    if integration.metadata.deletion_timestamp.is_some() {
        // The projected Secret is owned by the Integration; the garbage collector removes it.
        return Ok(Action::await_change());
    }
    let ctx = &ictx.scaffold.ctx;
    let spec = &integration.spec;
    let namespace = integration.namespace().unwrap_or_default();
    let health = spec.health_check.clone().unwrap_or_default();
    // The CRD refuses shorter intervals; an object stored before that rule still may not spin.
    let interval = health.interval.as_deref().and_then(duration::parse).unwrap_or(DEFAULT_INTERVAL).max(MIN_INTERVAL);
    let timeout = health.timeout.as_deref().and_then(duration::parse).unwrap_or(DEFAULT_TIMEOUT);
    let Some(endpoint) = endpoint(spec) else {
        return finish(
            integration,
            ictx,
            vec![Observed::failed(CREDENTIALS_RESOLVED, "NoEndpoint", "spec.endpoint is required for this type")],
            None,
            None,
            interval,
            interval,
        )
        .await;
    };

    let tenant = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&namespace)
        .await?
        .and_then(|n| n.labels().get(LABEL_TENANT).cloned());
    if tenant.is_none() {
        // The operator writes Secrets only in tenant namespaces (that is all its RBAC allows).
        let message = format!(
            "Namespace {namespace} belongs to no tenant: Integrations work only in a Tenant's namespace (tenant-<name>)"
        );
        let observed = vec![Observed::failed(CREDENTIALS_RESOLVED, "NoTenantNamespace", message)];
        return finish(integration, ictx, observed, None, None, DEFAULT_INTERVAL, interval).await;
    }
    let mut observed = Vec::new();
    let mut hash = None;
    let credential = match resolve(spec, &namespace, tenant.as_deref(), ctx).await? {
        Ok(credential) => {
            let secret = build::projected_secret(integration, &endpoint, &credential);
            hash = secret.metadata.annotations.as_ref().and_then(|a| a.get(build::CONTENT_HASH).cloned());
            let applier = Applier { metrics: &ctx.metrics, controller: CONTROLLER, compare: true, known: None };
            applier.ensure(&Api::<Secret>::namespaced(ctx.client.clone(), &namespace), &secret).await?;
            observed.push(Observed::ok(
                CREDENTIALS_RESOLVED,
                "Resolved",
                format!("Credentials are projected into Secret {}", build::secret_name(&integration.name_any())),
            ));
            Some(credential)
        }
        Err((reason, message)) => {
            observed.push(Observed::failed(CREDENTIALS_RESOLVED, reason, message));
            None
        }
    };

    let (_, probe) = defaults::defaults(spec.type_);
    let result = if health.disabled {
        None
    } else {
        match vetted(&endpoint, &namespace, tenant.as_deref(), ictx).await? {
            Ok((host, addresses)) => {
                let http = ictx
                    .dialer
                    .http_client(&host, addresses.clone())
                    .map_err(|e| Error::InvalidObject(format!("building the health-check client for {host}: {e}")))?;
                let path = health.path.as_deref();
                Some(health::check(&http, addresses[0], &endpoint, probe, path, credential.as_deref(), timeout).await)
            }
            Err(refused) => {
                observed.push(Observed::failed(REACHABLE, "EndpointRefused", refused));
                None
            }
        }
    };
    match &result {
        None if !health.disabled => {}
        None => observed.push(Observed {
            type_: REACHABLE,
            status: true,
            reason: "CheckDisabled".into(),
            message: "healthCheck.disabled is set".into(),
        }),
        Some(r) if r.reachable => observed.push(Observed::ok(REACHABLE, "Reachable", r.detail.clone())),
        Some(r) => observed.push(Observed::failed(REACHABLE, "Unreachable", r.detail.clone())),
    }

    // Failing checks back off from one second up to the interval; success resets it.
    let key = ObjectRef::from(integration);
    let healthy = observed.iter().all(|o| o.status);
    let next = {
        let mut failures = ictx.failures.lock().expect("failure map lock");
        if healthy {
            failures.remove(&key);
            interval
        } else {
            let n = failures.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            Duration::from_secs(1u64 << (*n).min(16)).min(interval)
        }
    };
    finish(integration, ictx, observed, hash, result.map(|r| r.latency), next, interval).await
}

/// The endpoint's host and the addresses a probe may connect to, or why it may not: the
/// operator probes from its own network position, so only what the Integration's namespace
/// could reach is dialled (never loopback, link-local, the API server or another namespace's
/// pods and cluster IPs).
async fn vetted(
    endpoint: &str,
    namespace: &str,
    tenant: Option<&str>,
    ictx: &IntegrationContext,
) -> Result<Result<(String, Vec<std::net::SocketAddr>), String>, Error> {
    let client = &ictx.scaffold.ctx.client;
    let target = match Target::from_url(endpoint) {
        Ok(target) => target,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let on_behalf_of = OnBehalfOf { namespace, tenant: tenant.unwrap_or_default() };
    let sockets = match Resolver::new(client.clone()).resolve(&target, Some(on_behalf_of)).await {
        Ok(sockets) => sockets,
        Err(ResolveError::Kube(e)) => return Err(e.into()),
        Err(e) => return Ok(Err(format!("{endpoint}: {e}"))),
    };
    match ictx.dialer.vet(namespace, &sockets).await {
        Ok(()) => Ok(Ok((target.host, sockets.into_iter().collect()))),
        Err(DialError::Kube(e)) => Err(e.into()),
        Err(refused) => Ok(Err(format!("the operator does not probe {endpoint}: {refused}"))),
    }
}

/// Resolves the credential value. The outer error is a failed API call; the inner one a
/// missing source, reported in `CredentialsResolved` (naming what is missing, never a value).
async fn resolve(
    spec: &IntegrationSpec,
    namespace: &str,
    tenant: Option<&str>,
    ctx: &Context,
) -> Result<Result<String, (&'static str, String)>, Error> {
    let creds = &spec.credentials;
    if let Some(secret_ref) = &creds.secret_ref {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        let Some(secret) = secrets.get_opt(&secret_ref.name).await? else {
            return Ok(Err(("SecretNotFound", format!("Secret {} does not exist in {namespace}", secret_ref.name))));
        };
        if let Some(why) = forbidden_secret(&secret) {
            return Ok(Err(("SecretForbidden", format!("Secret {} {why}", secret_ref.name))));
        }
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&secret_ref.key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned());
        return Ok(match value {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(("SecretKeyNotFound", format!("Secret {} has no key {:?}", secret_ref.name, secret_ref.key))),
        });
    }
    if let Some(vault_ref) = &creds.vault {
        if let Some(why) = vault_path::refusal(&vault_ref.path, tenant) {
            return Ok(Err(("VaultPathForbidden", why)));
        }
        let Some(vault) = &ctx.vault else {
            return Ok(Err((
                "VaultNotConfigured",
                "credentials.vault needs the operator's Vault connection (--vault-addr)".into(),
            )));
        };
        return Ok(match vault.read_key(&vault_ref.path, &vault_ref.key).await {
            Ok(v) => Ok(v),
            Err(e @ VaultError::NotFound(_)) => Err(("VaultPathNotFound", e.to_string())),
            Err(e @ VaultError::MissingKey { .. }) => Err(("VaultKeyNotFound", e.to_string())),
            Err(e @ VaultError::Denied(_)) => Err(("VaultDenied", e.to_string())),
            Err(e) => Err(("VaultUnavailable", e.to_string())),
        });
    }
    Ok(Err(("NoCredentials", "credentials need secretRef or vault".into())))
}

/// Why an Integration may not use `secret` as its credential: the operator's own Secrets
/// (the tenant's database credentials, other Integrations' projected copies) and
/// ServiceAccount tokens would be sent to an endpoint the owner chooses. The CRD refuses the
/// known names; this catches the rest, whatever their name.
fn forbidden_secret(secret: &Secret) -> Option<&'static str> {
    let labels = secret.metadata.labels.as_ref();
    if labels.and_then(|l| l.get(LABEL_MANAGED_BY)).is_some_and(|v| v == MANAGED_BY) {
        return Some("is written by the operator and may not be used as an Integration's credential");
    }
    if secret.type_.as_deref() == Some("kubernetes.io/service-account-token") {
        return Some("holds a ServiceAccount token and may not be used as an Integration's credential");
    }
    None
}

/// Failures only a change of the spec, of what it references or of the operator's
/// configuration can fix; an unreachable endpoint or Vault may recover by itself.
fn is_permanent(reason: &str) -> bool {
    matches!(
        reason,
        "NoEndpoint"
            | "NoTenantNamespace"
            | "NoCredentials"
            | "EndpointRefused"
            | "SecretNotFound"
            | "SecretForbidden"
            | "SecretKeyNotFound"
            | "VaultNotConfigured"
            | "VaultPathForbidden"
            | "VaultPathNotFound"
            | "VaultKeyNotFound"
            | "VaultDenied"
    )
}

/// Writes the status (when it changed) and events for conditions that flipped.
async fn finish(
    integration: &Integration,
    ictx: &IntegrationContext,
    mut observed: Vec<Observed>,
    content_hash: Option<String>,
    latency: Option<Duration>,
    requeue: Duration,
    heartbeat: Duration,
) -> Result<Action, Error> {
    let ctx = &ictx.scaffold.ctx;
    let ready = Observed::ok(READY, "Ready", "Credentials are resolved and the endpoint answers");
    conditions::summarize(&mut observed, ready, is_permanent, |_| false);
    let previous = integration.status.clone().unwrap_or_default();
    let generation = integration.metadata.generation;
    let next = IntegrationStatus {
        secret_name: content_hash
            .as_ref()
            .map(|_| build::secret_name(&integration.name_any()))
            .or(previous.secret_name.clone()),
        content_hash: content_hash.or(previous.content_hash.clone()),
        last_check_time: latency.map(|_| Time(Timestamp::now())).or(previous.last_check_time.clone()),
        latency_ms: latency.map(|l| l.as_millis() as i64).or(previous.latency_ms),
        observed_generation: generation,
        conditions: conditions::merge(&previous.conditions, &observed, generation),
    };
    // A check that changes nothing but the time and latency is written at most once per
    // interval, so a failing endpoint retried with backoff does not write on every try.
    let only_timing = IntegrationStatus {
        last_check_time: previous.last_check_time.clone(),
        latency_ms: previous.latency_ms,
        ..next.clone()
    } == previous;
    let heartbeat_due = previous
        .last_check_time
        .as_ref()
        .is_none_or(|t| Timestamp::now().duration_since(t.0).unsigned_abs() >= heartbeat);
    if next != previous && (!only_timing || heartbeat_due) {
        let api: Api<Integration> = Api::namespaced(ctx.client.clone(), &integration.namespace().unwrap_or_default());
        ictx.scaffold.patch_status(&api, integration, &next, &previous.conditions, &next.conditions).await?;
    }
    Ok(Action::requeue(requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(labels: &[(&str, &str)], type_: Option<&str>) -> Secret {
        let mut secret = Secret { type_: type_.map(str::to_string), ..Secret::default() };
        secret.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        secret
    }

    #[test]
    fn the_operators_secrets_and_service_account_tokens_are_no_credential() {
        assert!(forbidden_secret(&secret(&[(LABEL_MANAGED_BY, MANAGED_BY)], Some("Opaque"))).is_some());
        assert!(forbidden_secret(&secret(&[], Some("kubernetes.io/service-account-token"))).is_some());
        assert_eq!(forbidden_secret(&secret(&[("app", "billing")], Some("Opaque"))), None);
        assert_eq!(forbidden_secret(&secret(&[(LABEL_MANAGED_BY, "Helm")], None)), None);
    }
}
