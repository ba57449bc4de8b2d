//! The HTTP client of Lago's batch events endpoint.

use super::batch::{self, Verdict};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use std::time::Duration;

/// How long one batch request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Lago API key. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where usage goes, from the operator's flags.
#[derive(Clone, Debug)]
pub struct LagoConfig {
    /// Lago's API, without `/api/v1`: `https://api.getlago.com` or a self-hosted Lago's.
    pub url: String,
    pub api_key: ApiKey,
    /// Code of the billable metric the events count towards.
    pub metric_code: String,
}

/// Why a Lago client cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum LagoError {
    #[error("the Lago URL {0:?} is not an http(s) URL")]
    InvalidUrl(String),
    #[error("the Lago API key is empty or holds characters a header cannot")]
    InvalidApiKey,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Sends batches to `POST {url}/api/v1/events/batch`.
#[derive(Clone)]
pub struct LagoClient {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    authorization: HeaderValue,
    api_key: ApiKey,
}

impl std::fmt::Debug for LagoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagoClient").field("endpoint", &self.endpoint.as_str()).finish_non_exhaustive()
    }
}

impl LagoClient {
    /// Needs a rustls crypto provider installed for `https` URLs.
    pub fn new(url: &str, api_key: &ApiKey) -> Result<Self, LagoError> {
        let invalid = || LagoError::InvalidUrl(url.to_string());
        let base = reqwest::Url::parse(url.trim()).map_err(|_| invalid())?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(invalid());
        }
        let endpoint = reqwest::Url::parse(&format!("{}/api/v1/events/batch", base.as_str().trim_end_matches('/')))
            .map_err(|_| invalid())?;
        let key = api_key.0.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(LagoError::InvalidApiKey);
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| LagoError::InvalidApiKey)?;
        authorization.set_sensitive(true);
        let http = reqwest::Client::builder()
            .user_agent(concat!("bizosaas-operator/", env!("CARGO_PKG_VERSION")))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| LagoError::Client(e.to_string()))?;
        Ok(Self { http, endpoint, authorization, api_key: ApiKey(key.to_string()) })
    }

    /// Posts one batch body of `sent` events and classifies the answer; a request that gets
    /// none (connection refused, timeout) is [`Verdict::Unavailable`].
    pub async fn send(&self, body: &serde_json::Value, sent: usize) -> Verdict {
        let request = self
            .http
            .post(self.endpoint.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string());
        let verdict = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(bytes) => batch::classify(status, &bytes, sent),
                    // A 2xx whose body broke off was still accepted; anything else is retried.
                    Err(_) if (200..300).contains(&status) => Verdict::Accepted,
                    Err(e) => Verdict::Unavailable(format!("HTTP {status}, body unreadable: {}", describe(&e))),
                }
            }
            Err(e) => Verdict::Unavailable(describe(&e)),
        };
        self.redacted(verdict)
    }

    /// Lago's words never carry the key back, but a proxy's might: they go to the Tenant.
    fn redacted(&self, verdict: Verdict) -> Verdict {
        let clean = |m: String| m.replace(&self.api_key.0, "<redacted>");
        match verdict {
            Verdict::Refused(m) => Verdict::Refused(clean(m)),
            Verdict::Unavailable(m) => Verdict::Unavailable(clean(m)),
            other => other,
        }
    }
}

/// The error and its causes, which reqwest's Display leaves out (the refused connection).
fn describe(e: &reqwest::Error) -> String {
    let mut message = if e.is_timeout() { "timed out".to_string() } else { e.to_string() };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_the_batch_events_api_under_the_url() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = ApiKey::new("lago_key_1");
        for url in ["https://api.getlago.com", "https://api.getlago.com/"] {
            let client = LagoClient::new(url, &key).unwrap();
            assert_eq!(client.endpoint.as_str(), "https://api.getlago.com/api/v1/events/batch");
        }
        let client = LagoClient::new("http://lago-api.billing:3000/lago", &key).unwrap();
        assert_eq!(client.endpoint.as_str(), "http://lago-api.billing:3000/lago/api/v1/events/batch");
        assert!(matches!(LagoClient::new("ftp://lago", &key), Err(LagoError::InvalidUrl(_))));
        assert!(matches!(LagoClient::new("https://lago", &ApiKey::new(" ")), Err(LagoError::InvalidApiKey)));
    }

    #[test]
    fn the_key_is_never_shown() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = ApiKey::new("lago_secret_key");
        let client = LagoClient::new("https://lago.example", &key).unwrap();
        assert!(!format!("{key:?} {client:?}").contains("lago_secret_key"));
        let config = LagoConfig { url: "https://lago.example".into(), api_key: key, metric_code: "llm_tokens".into() };
        assert!(!format!("{config:?}").contains("lago_secret_key"));
        let echoed = client.redacted(Verdict::Refused("proxy says: Bearer lago_secret_key".into()));
        assert_eq!(echoed, Verdict::Refused("proxy says: Bearer <redacted>".into()));
    }
}
