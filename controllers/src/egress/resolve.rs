//! The dereference step of egress: a [`Target`] becomes the sockets its packets are finally
//! sent to. An IP literal is used as is; a Service name is looked up in the API and becomes its
//! EndpointSlices' addresses with their target ports, because kube-proxy rewrites the
//! ClusterIP before any NetworkPolicy sees the packet; any other name is looked up in DNS.

use super::{HostKind, Target};
use bizosaas_crds::LABEL_TENANT;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Label by which an EndpointSlice names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// How long one DNS lookup may take before the endpoint counts as unresolved.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// A Service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl ServiceKey {
    /// The Service a target names, if it names one.
    pub fn of(target: &Target) -> Option<Self> {
        match target.kind() {
            HostKind::Service { namespace, name } => Some(Self { namespace: namespace.into(), name: name.into() }),
            _ => None,
        }
    }

    /// The Service an EndpointSlice belongs to.
    pub fn of_slice(slice: &impl Resource) -> Option<Self> {
        let name = slice.meta().labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        Some(Self { namespace: slice.meta().namespace.clone()?, name: name.clone() })
    }
}

/// Why a target has no addresses (yet). Everything but [`ResolveError::Kube`] is a fact about
/// the endpoint, for a condition; an API failure is retried like any other.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("the Kubernetes API could not be read: {0}")]
    Kube(#[from] kube::Error),
    #[error("Service {0} does not exist")]
    ServiceNotFound(ServiceKey),
    #[error("Service {0} is of type ExternalName: name the external host in the endpoint instead")]
    ExternalName(ServiceKey),
    #[error("Service {service} has no TCP port {port}")]
    NoServicePort { service: ServiceKey, port: u16 },
    #[error("Service {0} has no endpoints")]
    NoEndpoints(ServiceKey),
    #[error("namespace {0} belongs to another tenant")]
    ForeignNamespace(String),
    #[error("{host} does not resolve: {reason}")]
    Dns { host: String, reason: String },
}

/// On whose behalf a target is resolved: a tenant reads Services only in its own namespace
/// and in namespaces that belong to no other tenant.
#[derive(Clone, Copy, Debug)]
pub struct OnBehalfOf<'a> {
    pub namespace: &'a str,
    pub tenant: &'a str,
}

/// Resolves targets with the operator's client and DNS.
pub struct Resolver {
    client: Client,
}

impl Resolver {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The sockets `target` leads to. `on_behalf_of` is `None` only for the operator's own
    /// configuration (the tenant database host).
    pub async fn resolve(
        &self,
        target: &Target,
        on_behalf_of: Option<OnBehalfOf<'_>>,
    ) -> Result<BTreeSet<SocketAddr>, ResolveError> {
        match target.kind() {
            HostKind::Ip(ip) => Ok(BTreeSet::from([SocketAddr::new(ip, target.port)])),
            HostKind::Service { namespace, name } => {
                let key = ServiceKey { namespace: namespace.into(), name: name.into() };
                self.service(&key, target.port, on_behalf_of).await
            }
            HostKind::Dns(host) => dns(host, target.port).await,
        }
    }

    async fn service(
        &self,
        key: &ServiceKey,
        port: u16,
        on_behalf_of: Option<OnBehalfOf<'_>>,
    ) -> Result<BTreeSet<SocketAddr>, ResolveError> {
        if let Some(owner) = on_behalf_of
            && owner.namespace != key.namespace
        {
            let namespace = Api::<Namespace>::all(self.client.clone()).get_opt(&key.namespace).await?;
            let tenant = namespace.as_ref().and_then(|n| n.labels().get(LABEL_TENANT));
            if tenant.is_some_and(|t| t != owner.tenant) {
                return Err(ResolveError::ForeignNamespace(key.namespace.clone()));
            }
        }
        let service = Api::<Service>::namespaced(self.client.clone(), &key.namespace)
            .get_opt(&key.name)
            .await?
            .ok_or_else(|| ResolveError::ServiceNotFound(key.clone()))?;
        let port_name = service_port_name(&service, key, port)?;
        let selector = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={}", key.name));
        let slices = Api::<EndpointSlice>::namespaced(self.client.clone(), &key.namespace).list(&selector).await?;
        let sockets = slice_sockets(&slices.items, &port_name);
        if sockets.is_empty() { Err(ResolveError::NoEndpoints(key.clone())) } else { Ok(sockets) }
    }
}

/// The name of the Service's TCP port `port` (empty for a single unnamed port): the
/// EndpointSlices name their target ports the same way.
pub fn service_port_name(service: &Service, key: &ServiceKey, port: u16) -> Result<String, ResolveError> {
    let spec = service.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err(ResolveError::ExternalName(key.clone()));
    }
    spec.ports
        .iter()
        .flatten()
        .find(|p| p.port == i32::from(port) && p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| p.name.clone().unwrap_or_default())
        .ok_or_else(|| ResolveError::NoServicePort { service: key.clone(), port })
}

/// Every endpoint address of the slices with the target port named `port_name`. Endpoints
/// that are not ready (starting, terminating) are included: they are the Service's backends
/// all the same, and allowing them keeps the policy unchanged while pods come and go ready.
pub fn slice_sockets(slices: &[EndpointSlice], port_name: &str) -> BTreeSet<SocketAddr> {
    let mut sockets = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == "IPv4" || s.address_type == "IPv6") {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name && p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for address in slice.endpoints.iter().flat_map(|e| &e.addresses) {
            if let Ok(ip) = address.parse::<IpAddr>() {
                sockets.insert(SocketAddr::new(ip, port));
            }
        }
    }
    sockets
}

/// The DNS answers for `host`, within [`DNS_TIMEOUT`].
async fn dns(host: &str, port: u16) -> Result<BTreeSet<SocketAddr>, ResolveError> {
    let failed = |reason: String| ResolveError::Dns { host: host.to_string(), reason };
    let answers = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| failed(format!("no answer within {DNS_TIMEOUT:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    let sockets: BTreeSet<SocketAddr> = answers.collect();
    if sockets.is_empty() { Err(failed("no addresses".into())) } else { Ok(sockets) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The Service `wagtail` in `tenant-acme`: port 80 (`http`) in front of target port 8000,
    /// with two pods in one slice and one in another.
    pub const WAGTAIL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: wagtail, namespace: tenant-acme}
spec:
  selector: {app: wagtail}
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: admin, port: 9000, protocol: TCP}
"#;

    pub const WAGTAIL_SLICES: &str = r#"
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: wagtail-abc, namespace: tenant-acme, labels: {kubernetes.io/service-name: wagtail}}
  addressType: IPv4
  ports: [{name: http, port: 8000, protocol: TCP}, {name: admin, port: 9000}]
  endpoints:
  - addresses: [10.244.1.7]
    conditions: {ready: true}
  - addresses: [10.244.2.9]
    conditions: {ready: false, terminating: true}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: wagtail-def, namespace: tenant-acme, labels: {kubernetes.io/service-name: wagtail}}
  addressType: IPv4
  ports: [{name: http, port: 8001}]
  endpoints:
  - addresses: [10.244.3.4]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: wagtail-fqdn, namespace: tenant-acme, labels: {kubernetes.io/service-name: wagtail}}
  addressType: FQDN
  ports: [{name: http, port: 8000}]
  endpoints:
  - addresses: [wagtail.example]
"#;

    pub fn wagtail() -> (Service, Vec<EndpointSlice>) {
        (serde_saphyr::from_str(WAGTAIL).unwrap(), serde_saphyr::from_str(WAGTAIL_SLICES).unwrap())
    }

    fn key() -> ServiceKey {
        ServiceKey { namespace: "tenant-acme".into(), name: "wagtail".into() }
    }

    #[test]
    fn a_service_port_leads_to_its_endpoints_target_ports() {
        let (service, slices) = wagtail();
        let name = service_port_name(&service, &key(), 80).unwrap();
        assert_eq!(name, "http");
        let sockets: Vec<String> = slice_sockets(&slices, &name).iter().map(|s| s.to_string()).collect();
        assert_eq!(sockets, ["10.244.1.7:8000", "10.244.2.9:8000", "10.244.3.4:8001"]);
        assert_eq!(service_port_name(&service, &key(), 9000).unwrap(), "admin");
        let admin: Vec<String> = slice_sockets(&slices, "admin").iter().map(|s| s.to_string()).collect();
        assert_eq!(admin, ["10.244.1.7:9000", "10.244.2.9:9000"]);
    }

    #[test]
    fn unknown_ports_and_external_names_are_named() {
        let (mut service, _) = wagtail();
        let err = service_port_name(&service, &key(), 8080).unwrap_err();
        assert_eq!(err.to_string(), "Service tenant-acme/wagtail has no TCP port 8080");
        service.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        assert!(matches!(service_port_name(&service, &key(), 80), Err(ResolveError::ExternalName(_))));
    }

    #[test]
    fn slices_name_their_service() {
        let (_, slices) = wagtail();
        assert_eq!(ServiceKey::of_slice(&slices[0]), Some(key()));
        let target = Target::from_url("http://wagtail.tenant-acme.svc.cluster.local/api/v2").unwrap();
        assert_eq!(ServiceKey::of(&target), Some(key()));
        assert_eq!(ServiceKey::of(&Target::from_url("https://openrouter.ai/api/v1").unwrap()), None);
    }

    #[tokio::test]
    async fn lookups_keep_the_target_port() {
        let sockets = dns("127.0.0.1", 5432).await.unwrap();
        assert_eq!(sockets, BTreeSet::from(["127.0.0.1:5432".parse().unwrap()]));
    }
}
