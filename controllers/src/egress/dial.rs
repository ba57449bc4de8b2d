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
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why an address may not be dialled for a tenant.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0} is {1}")]
    Refused(SocketAddr, String),
    #[error("the Kubernetes API could not be read: {0}")]
    Kube(#[from] kube::Error),
}

/// How long a verdict on an address (and the API server's addresses) is reused: pods come
/// and go, so briefly.
const VERDICT_TTL: Duration = Duration::from_secs(10);
/// HTTP clients kept, one per pinned host; beyond this the cache starts afresh.
const MAX_CLIENTS: usize = 256;

/// Whether an address belonged to another namespace (and why), and when that was checked.
type Verdict = (Instant, Option<String>);

/// Vets and dials addresses for tenants, reusing recent verdicts and one HTTP client (and
/// its connections) per pinned host.
pub struct Dialer {
    client: Client,
    api_server: Mutex<Option<(Instant, Arc<BTreeSet<SocketAddr>>)>>,
    verdicts: Mutex<HashMap<(IpAddr, String), Verdict>>,
    clients: Mutex<HashMap<(String, Vec<SocketAddr>), reqwest::Client>>,
    /// One lookup at a time: a thousand calls to one new address ask the API server once.
    lookups: tokio::sync::Mutex<()>,
}

impl Dialer {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            api_server: Mutex::default(),
            verdicts: Mutex::default(),
            clients: Mutex::default(),
            lookups: tokio::sync::Mutex::new(()),
        }
    }

    /// Checks every socket in `sockets` for a call made on behalf of the tenant namespace
    /// `namespace`: no special-purpose address, not the API server, no pod or Service
    /// cluster IP of another namespace.
    pub async fn vet(&self, namespace: &str, sockets: &BTreeSet<SocketAddr>) -> Result<(), DialError> {
        let api_server = self.api_server().await?;
        for socket in sockets {
            let ip = socket.ip().to_canonical();
            if let Some(reason) = never_dialled(ip) {
                return Err(DialError::Refused(*socket, reason.to_string()));
            }
            if api_server.contains(&SocketAddr::new(ip, socket.port())) {
                return Err(DialError::Refused(*socket, "the Kubernetes API server".into()));
            }
            if let Some(reason) = self.owner_elsewhere(ip, namespace).await? {
                return Err(DialError::Refused(*socket, reason));
            }
        }
        Ok(())
    }

    /// An HTTP client that connects `host` only to `addresses`, with no redirects.
    pub fn http_client(&self, host: &str, addresses: Vec<SocketAddr>) -> Result<reqwest::Client, reqwest::Error> {
        let key = (host.to_string(), addresses);
        let mut clients = self.clients.lock().expect("clients lock");
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("bizosaas-operator/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(host, &key.1)
            .build()?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Why `ip` belongs to another namespace (a pod's IP or a Service's cluster IP), if it does.
    async fn owner_elsewhere(&self, ip: IpAddr, namespace: &str) -> Result<Option<String>, kube::Error> {
        let key = (ip, namespace.to_string());
        let cached = || {
            let verdicts = self.verdicts.lock().expect("verdicts lock");
            verdicts.get(&key).filter(|(at, _)| at.elapsed() < VERDICT_TTL).map(|(_, v)| v.clone())
        };
        if let Some(verdict) = cached() {
            return Ok(verdict);
        }
        let _one_at_a_time = self.lookups.lock().await;
        if let Some(verdict) = cached() {
            return Ok(verdict);
        }
        // From the API server's watch cache: recent enough for a verdict kept seconds anyway.
        let mut verdict = None;
        let by_ip = ListParams::default().match_any().fields(&format!("status.podIP={ip}"));
        for pod in Api::<Pod>::all(self.client.clone()).list_metadata(&by_ip).await? {
            let ns = pod.namespace().unwrap_or_default();
            if ns != namespace {
                verdict = Some(format!("a pod of namespace {ns}"));
            }
        }
        let by_cluster_ip = ListParams::default().match_any().fields(&format!("spec.clusterIP={ip}"));
        for service in Api::<Service>::all(self.client.clone()).list_metadata(&by_cluster_ip).await? {
            let ns = service.namespace().unwrap_or_default();
            if ns != namespace {
                verdict = Some(format!("the cluster IP of Service {ns}/{}", service.name_any()));
            }
        }
        let mut verdicts = self.verdicts.lock().expect("verdicts lock");
        verdicts.retain(|_, (at, _)| at.elapsed() < VERDICT_TTL);
        verdicts.insert(key, (Instant::now(), verdict.clone()));
        Ok(verdict)
    }

    async fn api_server(&self) -> Result<Arc<BTreeSet<SocketAddr>>, kube::Error> {
        let cached = || {
            let known = self.api_server.lock().expect("api server lock");
            known.as_ref().filter(|(at, _)| at.elapsed() < VERDICT_TTL).map(|(_, s)| s.clone())
        };
        if let Some(sockets) = cached() {
            return Ok(sockets);
        }
        let _one_at_a_time = self.lookups.lock().await;
        if let Some(sockets) = cached() {
            return Ok(sockets);
        }
        let sockets = Arc::new(api_server_sockets(&self.client).await?);
        *self.api_server.lock().expect("api server lock") = Some((Instant::now(), sockets.clone()));
        Ok(sockets)
    }
}

/// Addresses the operator never dials for a tenant, whatever the cluster holds: those no
/// policy allows ([`refusal`]) and loopback, which from the operator is the operator itself.
pub fn never_dialled(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if ip.is_loopback() {
        return Some("loopback (the operator's own host)");
    }
    refusal(ip)
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

#[cfg(test)]
mod tests {
    use super::never_dialled;

    #[test]
    fn loopback_and_metadata_are_never_dialled() {
        for ip in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1"] {
            assert!(never_dialled(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["203.0.113.10", "10.244.0.1", "2001:db8::1"] {
            assert_eq!(never_dialled(ip.parse().unwrap()), None, "{ip}");
        }
    }
}
