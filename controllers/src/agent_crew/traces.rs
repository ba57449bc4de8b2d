//! The trace collector of the crews' runtimes (`BIZOSAAS_CREW_OTLP_ENDPOINT`): resolved like
//! an Integration's endpoint, allowed by the crew's egress policy, and reported in
//! `TracesAllowed`.

use super::network;
use crate::conditions::Observed;
use crate::context::Context;
use crate::egress::resolve::{ResolveError, Resolver, ServiceKey};
use crate::egress::{self, ResolvedEndpoint, Target};
use crate::scaffold::Error;

/// Whether the crew's egress policy lets the runtime reach the trace collector; present only
/// with a crew OTLP endpoint configured. It reports and does not count towards `Ready`: a crew
/// whose traces cannot leave still runs.
pub const TRACES_ALLOWED: &str = "TracesAllowed";

/// The crews' OTLP endpoint after the dereference step.
pub(super) struct Collector {
    /// `host:port` (or the endpoint as configured, when it has none), for messages.
    pub target: String,
    /// The Service it names, if any: a change of its endpoints re-derives the policy.
    pub service: Option<ServiceKey>,
    /// Its sockets, or why it has none.
    pub resolved: Result<ResolvedEndpoint, String>,
}

/// Resolves the crews' OTLP endpoint (`BIZOSAAS_CREW_OTLP_ENDPOINT`) the way Integration
/// endpoints are: an IP literal as is, a Service through its EndpointSlices, another name
/// through DNS. It is the operator's own configuration, so a Service in any namespace counts.
/// `None` when no endpoint is configured.
pub(super) async fn resolve_collector(endpoint: Option<&str>, ctx: &Context) -> Result<Option<Collector>, Error> {
    let Some(endpoint) = endpoint.map(str::trim).filter(|e| !e.is_empty()) else { return Ok(None) };
    let target = match Target::from_url(endpoint) {
        Ok(target) => target,
        Err(e) => return Ok(Some(Collector { target: endpoint.into(), service: None, resolved: Err(e.to_string()) })),
    };
    let service = ServiceKey::of(&target);
    let resolved = match Resolver::new(ctx.client.clone()).resolve(&target, None).await {
        Ok(sockets) => Ok(ResolvedEndpoint { name: format!("the trace collector {target}"), sockets }),
        Err(ResolveError::Kube(e)) => return Err(e.into()),
        Err(e) => Err(e.to_string()),
    };
    Ok(Some(Collector { target: target.to_string(), service, resolved }))
}

/// `TracesAllowed`: the collector allowed, or why the runtime's traces cannot leave.
pub(super) fn traces_condition(crew: &str, collector: &Collector, refused: &[egress::Refused]) -> Observed {
    let policy = network::policy_name(crew);
    let target = &collector.target;
    let fix = "point the operator's crew OTLP endpoint (BIZOSAAS_CREW_OTLP_ENDPOINT, chart value \
               otel.crewEndpoint) at a collector the crews may reach";
    if let Err(e) = &collector.resolved {
        let message = format!(
            "The trace collector {target} is unresolved ({e}): NetworkPolicy {policy} does not allow it and the \
             runtime's traces are dropped until it resolves; {fix}"
        );
        return Observed::failed(TRACES_ALLOWED, "TracesEndpointUnresolved", message);
    }
    if !refused.is_empty() {
        let refusals = refused.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ");
        let message =
            format!("{refusals}: NetworkPolicy {policy} does not allow it and the runtime's traces are dropped; {fix}");
        return Observed::failed(TRACES_ALLOWED, "TracesEndpointRefused", message);
    }
    Observed::ok(TRACES_ALLOWED, "Allowed", format!("NetworkPolicy {policy} allows the trace collector {target}"))
}
