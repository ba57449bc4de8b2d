//! Crew runs through the gateway: `POST/GET .../crews/{crew}/runs[/{id}[/events]]` are passed
//! to the crew's runtime API (`/v1/runs...` on Service `crew-<crew>` in the tenant namespace)
//! once the caller may `create` or `get` `agentcrews/runs` of that crew. The gateway calls the
//! runtime as itself (a ServiceAccount token for the runtime's audience): the runtime admits the
//! platform's callers, the gateway has already asked RBAC about the real caller.
//!
//! A caller's `Idempotency-Key` is scoped to the caller before it reaches the runtime
//! (`gw-<caller hash>-<key>`): two users of a tenant, or a user and a workflow step, never
//! replay each other's runs with the same key.

use crate::authn::Identity;
use crate::error::ApiError;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bizosaas_controllers::agent_crew::build::object_name;
use bizosaas_controllers::runtime_auth::RuntimeToken;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Longest `Idempotency-Key` a caller may send (the runtime allows 255 in all).
pub const MAX_IDEMPOTENCY_KEY: usize = 200;
/// Longest `?wait=` passed on: the request time limit bounds it anyway.
const MAX_WAIT_SECONDS: f64 = 25.0;
/// Headers passed back from the runtime.
const PASSED_BACK: [&str; 4] = ["content-type", "idempotent-replayed", "cache-control", "location"];

/// Calls crews' runtimes.
#[derive(Clone)]
pub struct CrewClient {
    pub http: reqwest::Client,
    pub token: Arc<RuntimeToken>,
    /// The request time limit of non-streaming calls.
    pub timeout: Duration,
}

/// The runtime's base URL of `crew` in `namespace`: its Service, by cluster DNS.
pub fn crew_url(namespace: &str, crew: &str) -> String {
    format!("http://{}.{namespace}.svc", object_name(crew))
}

/// The key the runtime sees for a caller's key: bound to the caller, bounded, visible ASCII.
pub fn scoped_idempotency_key(who: &Identity, key: &str) -> Result<String, ApiError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    let caller: String = Sha256::digest(who.username.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    Ok(format!("gw-{caller}-{key}"))
}

/// A W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`) worth passing on; anything else is
/// dropped rather than forwarded.
pub fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

/// What a call to the runtime carries besides the body.
pub struct Forward<'a> {
    pub method: reqwest::Method,
    pub namespace: &'a str,
    pub crew: &'a str,
    /// Path under `/v1/runs`, e.g. `""`, `/<id>`, `/<id>/events`.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub headers: &'a HeaderMap,
    pub idempotency_key: Option<String>,
    pub body: Option<bytes::Bytes>,
    pub stream: bool,
}

impl CrewClient {
    pub async fn forward(&self, call: Forward<'_>) -> Result<Response, ApiError> {
        let token = self.token.get().await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "gateway_misconfigured",
                format!("no token for the crews: {e}"),
            )
        })?;
        let url = format!("{}/v1/runs{}", crew_url(call.namespace, call.crew), call.path);
        let mut request = self.http.request(call.method, url).bearer_auth(token).query(&call.query);
        if !call.stream {
            request = request.timeout(self.timeout);
        }
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = call.headers.get(name).and_then(|v| v.to_str().ok())
                && (name != "traceparent" || valid_traceparent(value))
                && value.len() <= 512
            {
                request = request.header(name, value);
            }
        }
        if let Some(last) = call.headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
            request = request.header("last-event-id", last);
        }
        if let Some(key) = call.idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = call.body {
            request = request.header(header::CONTENT_TYPE, "application/json").body(body);
        }
        let answer = request.send().await.map_err(|e| {
            if e.is_timeout() {
                ApiError::timeout(format!("crew {} did not answer in time", call.crew))
            } else {
                ApiError::upstream(format!(
                    "crew {} in namespace {} could not be reached: is the AgentCrew there and Ready?",
                    call.crew, call.namespace
                ))
            }
        })?;
        let mut response = Response::builder().status(answer.status().as_u16());
        for name in PASSED_BACK {
            if let Some(value) = answer.headers().get(name) {
                response = response.header(HeaderName::from_static(name), value.clone());
            }
        }
        let body = if call.stream {
            Body::from_stream(answer.bytes_stream())
        } else {
            let bytes = answer
                .bytes()
                .await
                .map_err(|_| ApiError::upstream(format!("crew {} broke off its answer", call.crew)))?;
            Body::from(bytes)
        };
        response.body(body).map_err(|_| ApiError::upstream("the crew's answer could not be passed on"))
    }
}

/// `?wait=` as the runtime reads it, bounded.
pub fn wait_query(wait: Option<f64>) -> Vec<(&'static str, String)> {
    wait.filter(|w| w.is_finite() && *w > 0.0)
        .map(|w| vec![("wait", w.min(MAX_WAIT_SECONDS).to_string())])
        .unwrap_or_default()
}

/// `Content-Type: application/json` or nothing else.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if json {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request", "the body must be application/json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity { username: "oidc:alice".into(), groups: vec![], uid: None }
    }

    #[test]
    fn keys_are_bound_to_their_caller() {
        let bob = Identity { username: "oidc:bob".into(), ..alice() };
        let a = scoped_idempotency_key(&alice(), "order-17").unwrap();
        assert!(a.starts_with("gw-") && a.ends_with("-order-17"), "{a}");
        assert_ne!(a, scoped_idempotency_key(&bob, "order-17").unwrap());
        assert_eq!(a, scoped_idempotency_key(&alice(), "order-17").unwrap());
        assert!(a.len() <= 255);
        for bad in ["", "has space", "naïve", &"k".repeat(MAX_IDEMPOTENCY_KEY + 1)] {
            assert_eq!(scoped_idempotency_key(&alice(), bad).unwrap_err().status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn only_well_formed_traceparents_pass() {
        assert!(valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y",
        ] {
            assert!(!valid_traceparent(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_crew_is_reached_through_its_service() {
        assert_eq!(crew_url("tenant-acme", "growth-team"), "http://crew-growth-team.tenant-acme.svc");
        assert_eq!(wait_query(Some(600.0)), vec![("wait", "25".to_string())]);
        assert!(wait_query(Some(f64::NAN)).is_empty());
    }
}
