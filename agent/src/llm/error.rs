//! Errors of the chat-completions client, with stable categories and retry semantics.

use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    /// The server answered with an error status (or an error body with a status code).
    #[error("{}", status_message(*status, model, message))]
    Status { status: u16, model: String, message: String, retry_after: Option<Duration> },
    #[error("the request for model {model} timed out after {after:?}")]
    Timeout { model: String, after: Duration },
    #[error("cannot reach the model gateway for model {model}: {message}")]
    Unreachable { model: String, message: String },
    /// The stream broke off or carried an error event.
    #[error("the response stream for model {model} failed: {message}")]
    Stream { model: String, message: String },
    #[error("the model gateway sent an invalid response for model {model}: {message}")]
    InvalidResponse { model: String, message: String },
}

fn status_message(status: u16, model: &str, message: &str) -> String {
    let what = match status {
        400 => "400 Bad Request",
        401 => "401 Unauthorized (check the API key)",
        402 => "402 Payment Required (the account is out of credits or over its limit)",
        403 => "403 Forbidden (the key may not use this model, or the input was refused by moderation)",
        404 => "404 Not Found",
        408 => "408 Request Timeout",
        429 => "429 Too Many Requests",
        500 => "500 Internal Server Error",
        502 => "502 Bad Gateway (the model provider failed)",
        503 => "503 Service Unavailable",
        504 => "504 Gateway Timeout",
        other => return format!("the model gateway answered HTTP {other} for model {model}: {message}"),
    };
    let retry = if is_retryable_status(status) { "" } else { "; not retried" };
    if message.is_empty() {
        format!("the model gateway answered {what} for model {model}{retry}")
    } else {
        format!("the model gateway answered {what} for model {model}: {message}{retry}")
    }
}

/// The categories of the errors a request is retried after (see [`LlmError::is_retryable`]):
/// the label values of `bizosaas_agent_llm_retries_total`.
pub const RETRYABLE_CATEGORIES: [&str; 6] =
    ["llm_timeout", "llm_client_error", "llm_rate_limited", "llm_server_error", "llm_unreachable", "llm_stream_error"];

fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 409 | 425 | 429) || status >= 500
}

impl LlmError {
    /// Stable category, used in run errors and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Status { status, .. } => match status {
                400 => "llm_bad_request",
                401 => "llm_unauthorized",
                402 => "llm_payment_required",
                403 => "llm_forbidden",
                404 => "llm_not_found",
                408 => "llm_timeout",
                429 => "llm_rate_limited",
                s if *s >= 500 => "llm_server_error",
                _ => "llm_client_error",
            },
            Self::Timeout { .. } => "llm_timeout",
            Self::Unreachable { .. } => "llm_unreachable",
            Self::Stream { .. } => "llm_stream_error",
            Self::InvalidResponse { .. } => "llm_invalid_response",
        }
    }

    /// Whether the same request may succeed when sent again: 429, 5xx, timeouts, broken
    /// connections and streams. Never 400/401/402/403.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => is_retryable_status(*status),
            Self::Timeout { .. } | Self::Unreachable { .. } | Self::Stream { .. } => true,
            Self::InvalidResponse { .. } => false,
        }
    }

    /// Whether another model may succeed where this one failed. Not for errors of the
    /// account (401, 402, 403), which every model shares.
    pub fn allows_fallback(&self) -> bool {
        !matches!(self, Self::Status { status: 401..=403, .. })
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> LlmError {
        LlmError::Status { status: s, model: "m".into(), message: "x".into(), retry_after: None }
    }

    #[test]
    fn retries_rate_limits_and_server_errors_only() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 402, 403, 404, 422] {
            assert!(!status(s).is_retryable(), "{s}");
        }
        assert!(!status(402).allows_fallback());
        assert!(status(404).allows_fallback());
    }

    #[test]
    fn every_retried_error_has_a_listed_category() {
        let transport = [
            LlmError::Timeout { model: "m".into(), after: Duration::from_secs(1) },
            LlmError::Unreachable { model: "m".into(), message: "x".into() },
            LlmError::Stream { model: "m".into(), message: "x".into() },
        ];
        let retried = (100..600).map(status).chain(transport).filter(LlmError::is_retryable);
        for error in retried {
            assert!(RETRYABLE_CATEGORIES.contains(&error.category()), "{} is missing", error.category());
        }
    }

    #[test]
    fn payment_required_is_explained() {
        let e = status(402);
        assert_eq!(e.category(), "llm_payment_required");
        let text = e.to_string();
        assert!(text.contains("402 Payment Required") && text.contains("not retried"), "{text}");
    }
}
