//! The dereference step of the tenant's database egress: the PostgreSQL `host:port` tenant
//! workloads use, resolved once per reconcile into the `allow-database` policy. Only the host
//! and port are read; the credentials stay in the Secret or Vault.

use super::build::{self, Owner};
use super::status::NETWORK_READY;
use crate::conditions::Observed;
use crate::context::Context;
use crate::egress::resolve::{ResolveError, Resolver, ServiceKey};
use crate::egress::{ResolvedEndpoint, Target};
use k8s_openapi::api::networking::v1::NetworkPolicy;

/// What the tenant's database egress comes to in one reconcile.
#[derive(Debug, Default)]
pub struct DatabaseEgress {
    /// `allow-database` to apply; `None` without a database or with nothing to allow.
    pub policy: Option<NetworkPolicy>,
    /// The host did not resolve this time: the live policy is left as it is, so a DNS hiccup
    /// does not cut the tenant's workloads off their database.
    pub keep_live: bool,
    /// The `NetworkReady` condition when the egress is not (entirely) in place.
    pub failure: Option<Observed>,
}

/// The database target tenant workloads connect to, if the operator has a database.
pub fn database_target(ctx: &Context) -> Option<Target> {
    let (host, port) = ctx.postgres.as_ref()?.tenant_address();
    Some(Target { host: host.to_string(), port })
}

/// The Service the database target names, if any: its EndpointSlices are watched so that the
/// policy follows the database's pods.
pub fn database_service(ctx: &Context) -> Option<ServiceKey> {
    ServiceKey::of(&database_target(ctx)?)
}

/// Resolves the database host and builds `allow-database` from it.
pub async fn database_egress(owner: &Owner, ctx: &Context) -> Result<DatabaseEgress, kube::Error> {
    let Some(target) = database_target(ctx) else { return Ok(DatabaseEgress::default()) };
    let sockets = match Resolver::new(ctx.client.clone()).resolve(&target, None).await {
        Ok(sockets) => sockets,
        Err(ResolveError::Kube(e)) => return Err(e),
        Err(e) => {
            let message = format!("The tenant database {target} is unresolved: {e}");
            let failure = Observed::failed(NETWORK_READY, "DatabaseEndpointUnresolved", message);
            return Ok(DatabaseEgress { policy: None, keep_live: true, failure: Some(failure) });
        }
    };
    let name = format!("The tenant database {target}");
    let (policy, refused) = build::database_policy(owner, &ResolvedEndpoint { name, sockets });
    let failure = (!refused.is_empty()).then(|| {
        let message = refused.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ");
        Observed::failed(NETWORK_READY, "DatabaseEndpointRefused", message)
    });
    Ok(DatabaseEgress { policy, keep_live: false, failure })
}
