//! Connections the operator makes on a tenant's behalf (a workflow's `http` step). The
//! operator sits where tenants do not: it reaches the API server, the platform's own pods and,
//! through their `allow-platform` rule, every tenant's pods. So before it connects, each
//! resolved address is checked against what the tenant itself could reach, and the
//! connection is then pinned to the checked addresses (no second DNS answer).

use super::refusal;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// Why an address may not be dialled for a tenant.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0} is {1}")]
    Refused(SocketAddr, String),
    #[error("the Kubernetes API could not be read: {0}")]
    Kube(#[from] kube::Error),
}

/// Checks every socket in `sockets` for a call made on behalf of the tenant namespace
/// `namespace`: no special-purpose address, not the API server, no pod or Service cluster IP
/// of another namespace.
pub async fn vet(client: &Client, namespace: &str, sockets: &BTreeSet<SocketAddr>) -> Result<(), DialError> {
    let api_server = api_server_sockets(client).await?;
    for socket in sockets {
        let ip = socket.ip().to_canonical();
        if let Some(reason) = refusal(ip) {
            return Err(DialError::Refused(*socket, reason.to_string()));
        }
        if api_server.contains(&SocketAddr::new(ip, socket.port())) {
            return Err(DialError::Refused(*socket, "the Kubernetes API server".into()));
        }
        let by_ip = ListParams::default().fields(&format!("status.podIP={ip}"));
        for pod in Api::<Pod>::all(client.clone()).list_metadata(&by_ip).await? {
            let ns = pod.namespace().unwrap_or_default();
            if ns != namespace {
                return Err(DialError::Refused(*socket, format!("a pod of namespace {ns}")));
            }
        }
        let by_cluster_ip = ListParams::default().fields(&format!("spec.clusterIP={ip}"));
        for service in Api::<Service>::all(client.clone()).list_metadata(&by_cluster_ip).await? {
            let ns = service.namespace().unwrap_or_default();
            if ns != namespace {
                return Err(DialError::Refused(
                    *socket,
                    format!("the cluster IP of Service {ns}/{}", service.name_any()),
                ));
            }
        }
    }
    Ok(())
}

/// The API server's own addresses: the `kubernetes` Service's cluster IP and endpoints.
async fn api_server_sockets(client: &Client) -> Result<BTreeSet<SocketAddr>, kube::Error> {
    let mut sockets = BTreeSet::new();
    if let Some(service) = Api::<Service>::namespaced(client.clone(), "default").get_opt("kubernetes").await? {
        let spec = service.spec.unwrap_or_default();
        for ip in spec.cluster_ips.into_iter().flatten() {
            for port in spec.ports.iter().flatten() {
                if let Ok(ip) = ip.parse() {
                    sockets.insert(SocketAddr::new(ip, port.port as u16));
                }
            }
        }
    }
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await?;
    for slice in slices {
        let ports: Vec<u16> = slice.ports.iter().flatten().filter_map(|p| p.port).map(|p| p as u16).collect();
        for endpoint in slice.endpoints {
            for address in endpoint.addresses {
                if let Ok(ip) = address.parse() {
                    sockets.extend(ports.iter().map(|p| SocketAddr::new(ip, *p)));
                }
            }
        }
    }
    Ok(sockets)
}
