//! `bizosaas-gateway`: the tenants' front door. It authenticates callers (OIDC bearer tokens,
//! Kubernetes ServiceAccount tokens), asks RBAC whether they may act in the tenant's namespace,
//! rate limits per tenant, and passes crew runs to the crews' runtimes and workflow runs to the
//! API server as the caller, and keeps each tenant's audit log of what was asked.

pub mod api;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod cache;
pub mod crews;
pub mod error;
pub mod metrics;
pub mod rate_limit;
pub mod workflows;

/// An API client error as one line, without request bodies or headers.
pub fn kube_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}
