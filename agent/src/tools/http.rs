//! `http_request`: a request to one of the crew's Integrations. The model names the
//! integration and a path below its base URL; the runtime adds the credential
//! (`Authorization: Bearer`), which the model never sees: it is not in the tool's schema or
//! results, and any echo of it in a response is redacted.

use super::{ToolError, optional_str, required_str};
use crate::config::tool_names::HTTP_REQUEST;
use crate::llm::ToolDef;
use crate::llm::client::clip;
use crate::secret::{Redactor, Secret};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Headers the model may not set: credentials and connection management.
const FORBIDDEN_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "x-api-key",
    "forwarded",
];

/// Characters of a response body returned to the model.
pub const MAX_RESPONSE_CHARS: usize = 16_000;
/// Bytes of a response body read at most: the rest is never read, so a huge or endless body
/// costs neither memory nor the tool's whole timeout.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Largest request body accepted from the model.
const MAX_BODY_BYTES: usize = 1 << 20;

/// An Integration with its credential.
#[derive(Clone, Debug)]
pub struct Integration {
    pub name: String,
    pub base: Url,
    pub credential: Option<Secret>,
}

/// The `http_request` tool of a crew.
#[derive(Clone, Debug)]
pub struct HttpTool {
    client: reqwest::Client,
    integrations: Vec<Integration>,
    redactor: Redactor,
}

impl HttpTool {
    /// `redactor` should know every secret of the runtime, not only the integrations'.
    pub fn new(integrations: Vec<Integration>, redactor: Redactor, timeout: Duration) -> Self {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("bizosaas-agent/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .build()
            .expect("the HTTP client configuration is static");
        Self { client, integrations, redactor }
    }

    pub fn is_empty(&self) -> bool {
        self.integrations.is_empty()
    }

    /// The tool definition offered to the model.
    pub fn spec(&self) -> ToolDef {
        let names: Vec<&str> = self.integrations.iter().map(|i| i.name.as_str()).collect();
        ToolDef::function(
            HTTP_REQUEST,
            format!(
                "Make an HTTP request to one of the business's integrated services ({}). Authentication is added \
                 automatically; never send credentials. Returns the status and the response body.",
                names.join(", ")
            ),
            json!({
                "type": "object",
                "properties": {
                    "integration": {"type": "string", "enum": names, "description": "Which integrated service to call"},
                    "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"], "description": "HTTP method (default GET)"},
                    "path": {"type": "string", "description": "Path below the service's base URL, starting with /, e.g. /api/v2/pages/"},
                    "query": {"type": "object", "description": "Query parameters", "additionalProperties": {"type": ["string", "number", "boolean"]}},
                    "headers": {"type": "object", "description": "Extra request headers", "additionalProperties": {"type": "string"}},
                    "body": {"description": "Request body: a JSON value, or a string sent as is"}
                },
                "required": ["integration", "path"],
                "additionalProperties": false
            }),
        )
    }

    /// Executes a call. HTTP error statuses are results, not errors: the model sees them.
    pub async fn call(&self, args: &Map<String, Value>) -> Result<String, ToolError> {
        let integration = match optional_str(args, "integration")? {
            Some(name) => self.integrations.iter().find(|i| i.name == name).ok_or_else(|| {
                ToolError::InvalidArguments(format!(
                    "unknown integration {name:?}; available: {}",
                    self.integrations.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
                ))
            })?,
            None if self.integrations.len() == 1 => &self.integrations[0],
            None => return Err(ToolError::InvalidArguments("\"integration\" is required".into())),
        };
        let method = match optional_str(args, "method")?.unwrap_or("GET").to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            "HEAD" => Method::HEAD,
            other => return Err(ToolError::InvalidArguments(format!("unsupported method {other:?}"))),
        };
        let mut url = join_below(&integration.base, required_str(args, "path")?)?;
        if let Some(query) = args.get("query").filter(|q| !q.is_null()) {
            let Value::Object(query) = query else {
                return Err(ToolError::InvalidArguments("\"query\" must be an object".into()));
            };
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                match v {
                    Value::String(s) => pairs.append_pair(k, s),
                    Value::Number(_) | Value::Bool(_) => pairs.append_pair(k, &v.to_string()),
                    _ => return Err(ToolError::InvalidArguments(format!("query parameter {k:?} must be a scalar"))),
                };
            }
        }
        let mut headers = HeaderMap::new();
        if let Some(extra) = args.get("headers").filter(|h| !h.is_null()) {
            let Value::Object(extra) = extra else {
                return Err(ToolError::InvalidArguments("\"headers\" must be an object".into()));
            };
            for (k, v) in extra {
                let lower = k.to_ascii_lowercase();
                if FORBIDDEN_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
                    return Err(ToolError::NotAllowed(format!("the header {k:?} may not be set by the agent")));
                }
                let name = HeaderName::from_bytes(lower.as_bytes())
                    .map_err(|_| ToolError::InvalidArguments(format!("invalid header name {k:?}")))?;
                let value = v
                    .as_str()
                    .and_then(|s| HeaderValue::from_str(s).ok())
                    .ok_or_else(|| ToolError::InvalidArguments(format!("invalid value for header {k:?}")))?;
                headers.insert(name, value);
            }
        }
        if let Some(credential) = &integration.credential {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", credential.expose()))
                .map_err(|_| ToolError::Http("the integration's credential is not a valid header value".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut request = self.client.request(method, url).headers(headers);
        match args.get("body") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                if s.len() > MAX_BODY_BYTES {
                    return Err(ToolError::InvalidArguments("the body is larger than 1 MiB".into()));
                }
                request = request.body(s.clone());
            }
            Some(json) => {
                let bytes = serde_json::to_vec(json).map_err(|e| ToolError::InvalidArguments(e.to_string()))?;
                if bytes.len() > MAX_BODY_BYTES {
                    return Err(ToolError::InvalidArguments("the body is larger than 1 MiB".into()));
                }
                request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(bytes);
            }
        }
        let response = request.send().await.map_err(|e| self.http_error(e))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (body, mut truncated) = read_bounded(response, MAX_RESPONSE_BYTES).await.map_err(|e| self.http_error(e))?;
        let text = String::from_utf8_lossy(&body);
        let clipped = clip(&text, MAX_RESPONSE_CHARS);
        truncated |= clipped.len() != text.len();
        let mut result = json!({
            "status": status,
            "contentType": content_type,
            "body": clipped,
            "truncated": truncated,
        });
        if truncated {
            result["note"] = json!(format!(
                "the response body was cut: at most {MAX_RESPONSE_BYTES} bytes are read and {MAX_RESPONSE_CHARS} \
                 characters returned; ask for less (a narrower path, a page size or a filter)"
            ));
        }
        Ok(self.redactor.redact(&result.to_string()))
    }

    fn http_error(&self, e: reqwest::Error) -> ToolError {
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "failed"
        };
        let mut text = format!("the request {kind}");
        if let Some(source) = std::error::Error::source(&e) {
            text.push_str(&format!(": {source}"));
        }
        ToolError::Http(self.redactor.redact(&text))
    }
}

/// Reads at most `limit` bytes of a body, chunk by chunk, and whether there was more. The
/// connection is dropped with the rest unread.
pub async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let announced = response.content_length().and_then(|l| usize::try_from(l).ok());
    let mut body = Vec::with_capacity(announced.unwrap_or(0).min(limit));
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// `base` + `path`, refusing anything that leaves the base URL (other host, `..` above the
/// base path, a scheme-relative path).
pub fn join_below(base: &Url, path: &str) -> Result<Url, ToolError> {
    let refuse = |why: &str| ToolError::NotAllowed(format!("the path {path:?} is not allowed: {why}"));
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(refuse("it must start with a single /"));
    }
    if path.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\' || c == '#') {
        return Err(refuse("it contains whitespace, control characters, \\ or #"));
    }
    let joined = format!("{}{}", base.as_str().trim_end_matches('/'), path);
    let url = Url::parse(&joined).map_err(|_| refuse("it does not form a valid URL"))?;
    let base_path = base.path().trim_end_matches('/');
    let inside = url.path() == base_path || url.path().starts_with(&format!("{base_path}/"));
    if url.scheme() != base.scheme()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
        || !inside
    {
        return Err(refuse("it leaves the integration's base URL"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_below_the_base_url() {
        let base = Url::parse("https://cms.example/api").unwrap();
        assert_eq!(join_below(&base, "/v2/pages/?x=1").unwrap().as_str(), "https://cms.example/api/v2/pages/?x=1");
        let root = Url::parse("https://cms.example/").unwrap();
        assert_eq!(join_below(&root, "/a").unwrap().as_str(), "https://cms.example/a");
        for bad in ["v2", "//evil.example/x", "/../admin", "/%2e%2e/admin", "/a/../../admin", "/a b", "/a\\b", "/x#y"] {
            assert!(join_below(&base, bad).is_err(), "{bad}");
        }
        // `@` in a path is just a path character here.
        assert_eq!(join_below(&base, "/@evil.example").unwrap().host_str(), Some("cms.example"));
    }
}
