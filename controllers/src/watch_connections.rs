//! Connections for the watches the operator holds open in every tenant namespace. Over
//! HTTP/1.1 each watch is a connection of its own: a socket, TLS state and buffers in the
//! operator and in the API server, three per tenant. Over HTTP/2 up to
//! [`WATCHES_PER_CONNECTION`] watches share one connection as streams.
//!
//! These watches have connections of their own, apart from the main client's (also HTTP/2,
//! see [`connect`]): the main client's requests never wait for a stream the watches hold.

use crate::kube_requests::CountRequests;
use hyper_rustls::FixedServerNameResolver;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::ConfigExt;
use kube::{Client, Config};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{BoxError, ServiceBuilder};

/// Watches per HTTP/2 connection. The API server allows 1,000 concurrent streams per
/// connection by default and Go's HTTP/2 server 250 when unset; a stream beyond the limit
/// would wait for one to end, and a watch never ends, so this stays well below both.
pub const WATCHES_PER_CONNECTION: usize = 100;

/// HTTP/2 pings on an idle connection, so one the network dropped is noticed and its
/// watches reconnect.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// A pool of HTTP/2 API clients, each carrying at most [`WATCHES_PER_CONNECTION`] watches.
pub struct WatchConnections {
    config: Config,
    /// Counts the watches' requests with the main client's.
    counting: Option<CountRequests>,
    connections: Mutex<Vec<Connection>>,
}

/// One HTTP/2 client and its leases; the number of leases out is the count of clones of
/// `leases` beyond this one.
struct Connection {
    client: Client,
    leases: Arc<()>,
}

/// The right to run one watch on a connection; the slot is free again when this drops.
pub struct Lease {
    pub client: Client,
    _slot: Arc<()>,
}

impl WatchConnections {
    /// Checks that `config` yields an HTTP/2 client (its TLS settings and credentials) and
    /// opens the pool. A cluster served over plain HTTP gets HTTP/1.1 clients instead.
    pub fn new(config: Config, counting: Option<CountRequests>) -> Result<Self, kube::Error> {
        let first = Connection { client: connect(&config, counting.as_ref())?, leases: Arc::new(()) };
        Ok(Self { config, counting, connections: Mutex::new(vec![first]) })
    }

    /// A client with room for one more watch, opening a connection when all are full.
    pub fn lease(&self) -> Lease {
        let mut connections = self.connections.lock().expect("watch connections lock");
        let free = connections.iter().position(|c| Arc::strong_count(&c.leases) <= WATCHES_PER_CONNECTION);
        let index = match free {
            Some(index) => index,
            None => match connect(&self.config, self.counting.as_ref()) {
                Ok(client) => {
                    connections.push(Connection { client, leases: Arc::new(()) });
                    connections.len() - 1
                }
                Err(e) => {
                    // The same settings built the first client; share the least loaded one.
                    tracing::warn!(error = %e, "cannot open another watch connection");
                    let least = connections.iter().enumerate().min_by_key(|(_, c)| Arc::strong_count(&c.leases));
                    least.map_or(0, |(index, _)| index)
                }
            },
        };
        let connection = &connections[index];
        Lease { client: connection.client.clone(), _slot: connection.leases.clone() }
    }

    /// How many connections are open, for the metrics and tests.
    pub fn connections(&self) -> usize {
        self.connections.lock().expect("watch connections lock").len()
    }
}

/// An API client whose requests share one HTTP/2 connection (ALPN `h2`), as client-go's do,
/// with the credentials, TLS verification and impersonation in `config`. A cluster served
/// over plain HTTP gets an HTTP/1.1 client.
pub fn connect(config: &Config, counting: Option<&CountRequests>) -> Result<Client, kube::Error> {
    if config.cluster_url.scheme_str() != Some("https") {
        let builder = kube::client::ClientBuilder::try_from(config.clone())?;
        return Ok(match counting {
            Some(layer) => builder.with_layer(layer).build(),
            None => builder.build(),
        });
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let mut tls =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config.rustls_client_config()?).https_only();
    if let Some(name) = &config.tls_server_name {
        let name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| kube::Error::Service(format!("invalid TLS server name {name:?}: {e}").into()))?;
        tls = tls.with_server_name_resolver(FixedServerNameResolver::new(name));
    }
    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(KEEP_ALIVE)
        .http2_keep_alive_while_idle(true)
        .build(tls.enable_http2().wrap_connector(http));
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .option_layer(counting.cloned())
        .map_err(BoxError::from)
        .service(transport);
    Ok(Client::new(service, config.default_namespace.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local_config(url: &str) -> Config {
        Config::new(url.parse().expect("a URL"))
    }

    #[tokio::test]
    async fn watches_fill_a_connection_before_another_opens() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pool = WatchConnections::new(local_config("https://127.0.0.1:1"), None).expect("a pool");
        let leases: Vec<Lease> = (0..WATCHES_PER_CONNECTION).map(|_| pool.lease()).collect();
        assert_eq!(pool.connections(), 1);
        let one_more = pool.lease();
        assert_eq!(pool.connections(), 2);
        drop(one_more);
        drop(leases);
        // Freed slots are used again before anything new is opened.
        let _again: Vec<Lease> = (0..WATCHES_PER_CONNECTION + 1).map(|_| pool.lease()).collect();
        assert_eq!(pool.connections(), 2);
    }
}
