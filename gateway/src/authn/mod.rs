//! Who is calling: an OIDC bearer token from the configured issuer ([`oidc`]), or a
//! Kubernetes ServiceAccount token for the gateway's audience ([`service_account`]). A token
//! whose unverified `iss` is the OIDC issuer goes to the OIDC verifier; every other token to
//! TokenReview. Either way the answer is an [`Identity`] the API server would give the same
//! caller, so the SubjectAccessReview that follows asks about the right subject.

pub mod oidc;
pub mod service_account;

use crate::error::ApiError;
use axum::http::{HeaderValue, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// Longest bearer token accepted.
const MAX_TOKEN: usize = 16 * 1024;

/// An authenticated caller, as the API server names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub username: String,
    pub groups: Vec<String>,
    pub uid: Option<String>,
}

/// Why a caller is not authenticated. Messages never hold the token.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AuthnError {
    #[error("this API needs an Authorization: Bearer <token> header")]
    Missing,
    #[error("the Authorization header is not a bearer token")]
    Malformed,
    #[error("{0}")]
    Invalid(String),
    #[error("the caller could not be authenticated now: {0}")]
    Unavailable(String),
}

impl AuthnError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Missing | Self::Malformed | Self::Invalid(_) => "unauthenticated",
            Self::Unavailable(_) => "auth_unavailable",
        }
    }
}

impl From<AuthnError> for ApiError {
    fn from(e: AuthnError) -> Self {
        let status = match e {
            AuthnError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, e.category(), e.to_string())
    }
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(value: Option<&HeaderValue>) -> Result<&str, AuthnError> {
    let value = value.ok_or(AuthnError::Missing)?.to_str().map_err(|_| AuthnError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > MAX_TOKEN {
        return Err(AuthnError::Malformed);
    }
    Ok(token)
}

/// The `iss` claim of a JWT, read without verifying anything: it only picks the verifier.
pub fn claimed_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// Both ways in.
pub struct Authenticator {
    pub oidc: Option<oidc::OidcVerifier>,
    pub service_accounts: service_account::Reviewer,
}

impl Authenticator {
    pub async fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Identity, AuthnError> {
        let token = bearer(authorization)?;
        if let Some(oidc) = &self.oidc
            && claimed_issuer(token).as_deref() == Some(oidc.issuer())
        {
            return oidc.verify(token).await;
        }
        self.service_accounts.review(token).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_tokens_of_sane_length_are_read() {
        assert_eq!(bearer(Some(&HeaderValue::from_static("Bearer abc"))), Ok("abc"));
        assert_eq!(bearer(Some(&HeaderValue::from_static("bearer  abc "))), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthnError::Missing));
        for bad in ["Basic abc", "Bearer", "Bearer  ", "abc"] {
            assert_eq!(bearer(Some(&HeaderValue::from_static(bad))), Err(AuthnError::Malformed), "{bad}");
        }
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN + 1));
        assert_eq!(bearer(Some(&HeaderValue::from_str(&long).unwrap())), Err(AuthnError::Malformed));
    }

    #[test]
    fn the_claimed_issuer_picks_the_verifier() {
        // {"alg":"RS256"} . {"iss":"https://sso.example","sub":"x"} . signature
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL3Nzby5leGFtcGxlIiwic3ViIjoieCJ9.c2ln";
        assert_eq!(claimed_issuer(token).as_deref(), Some("https://sso.example"));
        assert_eq!(claimed_issuer("not-a-jwt"), None);
        assert_eq!(claimed_issuer("a.!!!.c"), None);
    }
}
