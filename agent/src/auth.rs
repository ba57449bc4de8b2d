//! Who may use the run API (`/v1/...`; the probes and `/metrics` stay open).
//!
//! A caller sends `Authorization: Bearer <token>`: a Kubernetes ServiceAccount token issued
//! for this runtime's audience (`bizosaas-agent` unless configured otherwise), e.g. a projected
//! token or one from the TokenRequest API. The runtime asks the API server with a TokenReview
//! whether the token is valid for that audience, and then admits exactly:
//!
//! - the platform's ServiceAccounts (`BIZOSAAS_API_PLATFORM`, `namespace/name`, comma-separated):
//!   the operator's, which runs the tenant's workflow steps on this crew, and the gateway's,
//!   which has asked RBAC about its own caller before it calls;
//! - any ServiceAccount of the crew's own namespace: the tenant's own workloads. Tenant owners
//!   cannot create ServiceAccounts or tokens there; the ones that exist are the operator's.
//!
//! Everything else is refused: no or a malformed header, an invalid or expired token, a token
//! for another audience (401 `unauthenticated`), a user or ServiceAccount of any other
//! namespace, another tenant's included (403 `forbidden`). When the API server cannot answer,
//! 503 `auth_unavailable`. Positive reviews are cached for [`CACHE_TTL`] in a map of at most
//! [`CACHE_ENTRIES`] entries keyed by the token's SHA-256; tokens are never logged or stored.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Audience a caller's token must be issued for, unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = bizosaas_crds::crew_config::RUNTIME_AUDIENCE;
/// How long a positive TokenReview is reused: a revoked token (its pod or ServiceAccount
/// deleted) is refused at most this much later.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// Most tokens remembered at once.
pub const CACHE_ENTRIES: usize = 1024;
/// Longest bearer token accepted (ServiceAccount JWTs are about 1 KiB).
const MAX_TOKEN: usize = 16 * 1024;
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// A ServiceAccount as `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountRef {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for ServiceAccountRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self { namespace: namespace.into(), name: name.into() })
            }
            _ => Err(format!("{s:?} is not a ServiceAccount as namespace/name")),
        }
    }
}

impl std::fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whom the runtime admits once a token is valid.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The crew's namespace: its ServiceAccounts are admitted.
    pub namespace: String,
    /// The platform's ServiceAccounts: the operator's, and the gateway's when there is one.
    pub platform: Vec<ServiceAccountRef>,
}

/// Why a request was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("the run API needs an Authorization: Bearer <token> header with a ServiceAccount token")]
    Missing,
    #[error("the Authorization header is not a bearer token")]
    Malformed,
    #[error("the token is not valid for audience {audience:?}")]
    Invalid { audience: String },
    #[error(
        "{user} may not use this crew's runtime: only ServiceAccounts of namespace {namespace} and the platform's may"
    )]
    Forbidden { user: String, namespace: String },
    #[error("the token could not be reviewed: {0}")]
    Unavailable(String),
}

impl AuthError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Missing | Self::Malformed | Self::Invalid { .. } => "unauthenticated",
            Self::Forbidden { .. } => "forbidden",
            Self::Unavailable(_) => "auth_unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::Malformed | Self::Invalid { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let mut response = crate::api::ApiError::new(self.status(), self.category(), self.to_string()).into_response();
        if self.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The token of an `Authorization` header value.
pub fn bearer(value: Option<&HeaderValue>) -> Result<&str, AuthError> {
    let value = value.ok_or(AuthError::Missing)?.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > MAX_TOKEN {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// Whether an authenticated user may use the runtime.
pub fn decide(policy: &Policy, user: &str) -> Result<(), AuthError> {
    let forbidden = || Err(AuthError::Forbidden { user: user.to_string(), namespace: policy.namespace.clone() });
    let Some((namespace, name)) = user.strip_prefix(SERVICE_ACCOUNT_PREFIX).and_then(|r| r.split_once(':')) else {
        return forbidden();
    };
    let platform = policy.platform.iter().any(|o| o.namespace == namespace && o.name == name);
    if platform || (namespace == policy.namespace && !name.is_empty()) { Ok(()) } else { forbidden() }
}

/// Usernames of recently reviewed tokens, by the tokens' SHA-256.
#[derive(Debug)]
pub struct ReviewCache {
    entries: HashMap<[u8; 32], (String, Instant)>,
    ttl: Duration,
    capacity: usize,
}

impl ReviewCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { entries: HashMap::new(), ttl, capacity: capacity.max(1) }
    }

    pub fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    pub fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<String> {
        match self.entries.get(key) {
            Some((user, at)) if now.duration_since(*at) < self.ttl => Some(user.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers a user; when full, expired entries go first, then the oldest.
    pub fn put(&mut self, key: [u8; 32], user: String, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries.retain(|_, (_, at)| now.duration_since(*at) < ttl);
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self.entries.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (user, now));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reviews tokens with the API server and applies the [`Policy`].
#[derive(Debug)]
pub struct Authenticator {
    reviews: Api<TokenReview>,
    audience: String,
    policy: Policy,
    cache: Mutex<ReviewCache>,
}

impl Authenticator {
    pub fn new(client: kube::Client, audience: String, policy: Policy) -> Self {
        Self {
            reviews: Api::all(client),
            audience,
            policy,
            cache: Mutex::new(ReviewCache::new(CACHE_TTL, CACHE_ENTRIES)),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The user a request's token belongs to, if it may use the runtime.
    pub async fn authorize(&self, authorization: Option<&HeaderValue>) -> Result<String, AuthError> {
        let token = bearer(authorization)?;
        let key = ReviewCache::key(token);
        let cached = self.cache.lock().expect("review cache lock").get(&key, Instant::now());
        let user = match cached {
            Some(user) => user,
            None => {
                let user = self.review(token).await?;
                self.cache.lock().expect("review cache lock").put(key, user.clone(), Instant::now());
                user
            }
        };
        decide(&self.policy, &user)?;
        Ok(user)
    }

    async fn review(&self, token: &str) -> Result<String, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let reviewed = self.reviews.create(&PostParams::default(), &review).await.map_err(|e| {
            let message = match &e {
                kube::Error::Api(s) => format!("the API server answered {} {}", s.code, s.reason),
                _ => "the API server is unreachable".to_string(),
            };
            tracing::warn!(error = %message, "TokenReview failed");
            AuthError::Unavailable(message)
        })?;
        let status = reviewed.status.unwrap_or_default();
        let for_us = status.audiences.as_ref().is_some_and(|a| a.iter().any(|a| a == &self.audience));
        match (status.authenticated, status.user.and_then(|u| u.username)) {
            (Some(true), Some(user)) if for_us => Ok(user),
            _ => Err(AuthError::Invalid { audience: self.audience.clone() }),
        }
    }
}

/// Middleware of the run API: refuses requests the [`Authenticator`] does not admit.
pub async fn require(State(auth): State<Arc<Authenticator>>, request: Request, next: Next) -> Response {
    match auth.authorize(request.headers().get(header::AUTHORIZATION)).await {
        Ok(user) => {
            tracing::debug!(%user, path = request.uri().path(), "caller admitted");
            next.run(request).await
        }
        Err(e) => {
            tracing::info!(category = e.category(), path = request.uri().path(), reason = %e, "caller refused");
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            namespace: "tenant-acme".into(),
            platform: vec![
                ServiceAccountRef { namespace: "bizosaas-system".into(), name: "bizosaas-operator".into() },
                ServiceAccountRef { namespace: "bizosaas-system".into(), name: "bizosaas-gateway".into() },
            ],
        }
    }

    #[test]
    fn the_platform_and_the_crews_namespace_are_admitted_nobody_else() {
        let p = policy();
        for ok in [
            "system:serviceaccount:bizosaas-system:bizosaas-operator",
            "system:serviceaccount:bizosaas-system:bizosaas-gateway",
            "system:serviceaccount:tenant-acme:tenant-workload",
            "system:serviceaccount:tenant-acme:default",
        ] {
            assert_eq!(decide(&p, ok), Ok(()), "{ok}");
        }
        for refused in [
            "system:serviceaccount:tenant-evil:tenant-workload",
            "system:serviceaccount:bizosaas-system:default",
            "system:serviceaccount:tenant-acme-2:x",
            "system:serviceaccount:tenant-acme:",
            "system:serviceaccount:tenant-acme",
            "acme-owner",
            "system:admin",
            "system:node:tenant-acme",
        ] {
            let err = decide(&p, refused).unwrap_err();
            assert_eq!((err.category(), err.status()), ("forbidden", StatusCode::FORBIDDEN), "{refused}");
        }
        let without_operator = Policy { platform: Vec::new(), ..policy() };
        assert!(decide(&without_operator, "system:serviceaccount:bizosaas-system:bizosaas-operator").is_err());
    }

    #[test]
    fn only_bearer_headers_carry_a_token() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(Some(&h("Bearer abc.def"))), Ok("abc.def"));
        assert_eq!(bearer(Some(&h("bearer  abc "))), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        for bad in ["Basic dXNlcjpwdw==", "Bearer", "Bearer ", "abc", &format!("Bearer {}", "x".repeat(MAX_TOKEN + 1))]
        {
            assert_eq!(bearer(Some(&h(bad))), Err(AuthError::Malformed), "{bad}");
        }
        for e in [AuthError::Missing, AuthError::Malformed, AuthError::Invalid { audience: "a".into() }] {
            assert_eq!((e.category(), e.status()), ("unauthenticated", StatusCode::UNAUTHORIZED));
        }
        assert_eq!(AuthError::Unavailable("x".into()).status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_cache_is_bounded_expires_and_is_keyed_by_a_hash() {
        let start = Instant::now();
        let mut cache = ReviewCache::new(Duration::from_secs(30), 2);
        let (a, b, c) = (ReviewCache::key("token-a"), ReviewCache::key("token-b"), ReviewCache::key("token-c"));
        assert_ne!(a, b);
        cache.put(a, "user-a".into(), start);
        cache.put(b, "user-b".into(), start + Duration::from_secs(1));
        assert_eq!(cache.get(&a, start + Duration::from_secs(29)).as_deref(), Some("user-a"));
        // Full: the oldest makes room.
        cache.put(c, "user-c".into(), start + Duration::from_secs(2));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&a, start + Duration::from_secs(2)).is_none());
        assert_eq!(cache.get(&c, start + Duration::from_secs(2)).as_deref(), Some("user-c"));
        // Expired entries are not used and are dropped.
        assert!(cache.get(&b, start + Duration::from_secs(31)).is_none());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn service_accounts_parse_as_namespace_slash_name() {
        let sa: ServiceAccountRef = "bizosaas-system/bizosaas-operator".parse().unwrap();
        assert_eq!(sa.to_string(), "bizosaas-system/bizosaas-operator");
        for bad in ["", "x", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<ServiceAccountRef>().is_err(), "{bad}");
        }
    }
}
