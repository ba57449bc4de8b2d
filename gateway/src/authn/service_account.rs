//! Kubernetes ServiceAccount tokens, for in-cluster callers: a TokenReview asks the API server
//! whether the token is valid for the gateway's audience (so a token minted for another
//! service, e.g. a crew's runtime, is not accepted here) and who it belongs to. Positive
//! answers are kept for [`CACHE_TTL`] under the token's SHA-256, never the token itself.

use super::{AuthnError, Identity};
use crate::cache::TtlCache;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use std::time::Duration;

/// How long a positive review is reused: a revoked token is refused at most this much later.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_ENTRIES: usize = 4096;

pub struct Reviewer {
    reviews: Api<TokenReview>,
    audience: String,
    cache: Mutex<TtlCache<[u8; 32], Identity>>,
}

impl Reviewer {
    pub fn new(client: kube::Client, audience: String) -> Self {
        Self { reviews: Api::all(client), audience, cache: Mutex::new(TtlCache::new(CACHE_TTL, CACHE_ENTRIES)) }
    }

    pub async fn review(&self, token: &str) -> Result<Identity, AuthnError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(identity) = self.cache.lock().expect("review cache lock").get(&key) {
            return Ok(identity);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![self.audience.clone()]) },
            ..Default::default()
        };
        let answer = self
            .reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthnError::Unavailable(format!("TokenReview failed: {}", crate::kube_reason(&e))))?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        let audience_ok = status.audiences.as_ref().is_none_or(|a| a.contains(&self.audience));
        let username = user.username.unwrap_or_default();
        if status.authenticated != Some(true) || !audience_ok || username.is_empty() {
            return Err(AuthnError::Invalid(format!(
                "the token is neither from the OIDC issuer nor a Kubernetes token for audience {:?}",
                self.audience
            )));
        }
        let identity = Identity { username, groups: user.groups.unwrap_or_default(), uid: user.uid };
        self.cache.lock().expect("review cache lock").put(key, identity.clone());
        Ok(identity)
    }
}
