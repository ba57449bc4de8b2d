//! `http` steps: a request through an Integration, whose endpoint is the base address and
//! whose projected credential the operator injects as a bearer token. The credential never
//! reaches status, events or logs. Each attempt carries its `Idempotency-Key`; an attempt
//! whose outcome was lost in a restart is sent again with the same key.

use crate::egress::Target;
use crate::egress::dial::Dialer;
use crate::egress::resolve::{OnBehalfOf, Resolver};
use crate::integration;
use crate::workflow::plan::Outcome;
use bizosaas_crds::Integration;
use bizosaas_crds::workflow::HttpMethod;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest response body a step may return.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Timeout of an attempt whose step sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One request, with its templates already rendered.
#[derive(Clone, Debug)]
pub struct Call {
    pub namespace: String,
    pub tenant: String,
    pub integration: String,
    pub method: HttpMethod,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub idempotency_key: String,
    pub timeout: Duration,
}

/// Sends `call` and returns how the attempt ended.
pub async fn send(client: Client, dialer: Arc<Dialer>, call: Call) -> Outcome {
    match try_send(&client, &dialer, &call).await {
        Ok(outcome) => outcome,
        Err(message) => Outcome::Failed { message },
    }
}

async fn try_send(client: &Client, dialer: &Dialer, call: &Call) -> Result<Outcome, String> {
    let integrations = Api::<Integration>::namespaced(client.clone(), &call.namespace);
    let found = integrations.get_opt(&call.integration).await.map_err(|e| format!("reading the Integration: {e}"))?;
    let integration = found.ok_or_else(|| format!("Integration {} does not exist", call.integration))?;
    let endpoint = integration::endpoint(&integration.spec)
        .ok_or_else(|| format!("Integration {} has no endpoint", call.integration))?;
    let credential = credential(client, &call.namespace, &call.integration).await?;

    let url = format!("{}{}", endpoint.trim_end_matches('/'), call.path);
    let parsed = reqwest::Url::parse(&url).map_err(|_| format!("{url} is not a valid URL"))?;
    if parsed.scheme() != "https" && parsed.scheme() != "http" {
        return Err(format!("{url} is not an http(s) URL"));
    }
    let target = Target::from_url(&url).map_err(|e| e.to_string())?;
    let on_behalf_of = OnBehalfOf { namespace: &call.namespace, tenant: &call.tenant };
    let sockets = Resolver::new(client.clone())
        .resolve(&target, Some(on_behalf_of))
        .await
        .map_err(|e| format!("Integration {}: {e}", call.integration))?;
    dialer.vet(&call.namespace, &sockets).await.map_err(|e| format!("refused to connect: {e}"))?;

    let http = dialer
        .http_client(&target.host, sockets.into_iter().collect())
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let method = reqwest::Method::from_bytes(format!("{:?}", call.method).as_bytes()).expect("a known method");
    let mut request = http.request(method.clone(), parsed).timeout(call.timeout);
    for (name, value) in integration.spec.headers.iter().chain(&call.headers) {
        if is_reserved(name) {
            continue;
        }
        request = request.header(name, value);
    }
    if let Some(credential) = &credential {
        request = request.bearer_auth(credential);
    }
    request = request.header("Idempotency-Key", &call.idempotency_key);
    if let Some(body) = &call.body {
        request = request.body(body.clone());
    }
    let what = format!("{method} {url}");
    let mut response = request.send().await.map_err(|e| describe(&what, &e, call.timeout))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&what, &e, call.timeout))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok(Outcome::Failed {
                message: format!("{what} answered more than the {MAX_RESPONSE_BYTES} bytes a step may return"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    Ok(if status.is_success() {
        Outcome::Succeeded { output: text, tokens: None }
    } else {
        let start: String = text.chars().take(200).collect();
        Outcome::Failed { message: format!("{what} answered {status}: {start}") }
    })
}

/// The Integration's resolved credential, from the Secret its controller projects.
async fn credential(client: &Client, namespace: &str, integration: &str) -> Result<Option<String>, String> {
    let name = integration::build::secret_name(integration);
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&name)
        .await
        .map_err(|e| format!("reading the credentials of Integration {integration}: {e}"))?
        .ok_or_else(|| format!("Integration {integration} has no resolved credentials yet"))?;
    Ok(secret.data.and_then(|d| d.get("credential").map(|c| String::from_utf8_lossy(&c.0).into_owned())))
}

/// Headers only the operator sets.
fn is_reserved(name: &str) -> bool {
    ["authorization", "idempotency-key", "host", "cookie", "proxy-authorization"]
        .iter()
        .any(|r| name.eq_ignore_ascii_case(r))
}

fn describe(what: &str, e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("{what} timed out after {}s", timeout.as_secs())
    } else if e.is_connect() {
        format!("{what}: connection failed")
    } else {
        format!("{what} failed")
    }
}

#[cfg(test)]
mod tests {
    use super::is_reserved;

    #[test]
    fn a_step_cannot_set_the_credential_or_the_key() {
        for name in ["Authorization", "idempotency-key", "HOST", "Cookie"] {
            assert!(is_reserved(name), "{name}");
        }
        assert!(!is_reserved("X-Request-Source"));
    }
}
