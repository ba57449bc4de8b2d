//! May the caller do this? The API server decides, through a SubjectAccessReview for the
//! caller's username, groups and uid, so RBAC in the tenant namespace is the one source of
//! truth: a tenant owner bound to `bizosaas-tenant-admin` in `tenant-acme` may
//! `create agentcrews/runs` there, and nowhere else. Answers are kept for [`CACHE_TTL`].

use crate::authn::Identity;
use crate::cache::TtlCache;
use crate::error::ApiError;
use axum::http::StatusCode;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use std::sync::Mutex;
use std::time::Duration;

/// How long an answer is reused: a revoked binding takes effect at most this much later.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_ENTRIES: usize = 8192;

/// One action on one object of the `bizosaas.io` API group.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    pub namespace: String,
    pub verb: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    pub name: Option<String>,
}

impl Access {
    /// `verb` on `resource[/subresource]` named `name` in `namespace`.
    pub fn new(
        verb: &'static str,
        resource: &'static str,
        subresource: Option<&'static str>,
        namespace: &str,
        name: &str,
    ) -> Self {
        Self { namespace: namespace.into(), verb, resource, subresource, name: Some(name.into()) }
    }

    fn describe(&self) -> String {
        let resource = match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_string(),
        };
        match &self.name {
            Some(name) => format!("{} {resource} {name:?} in namespace {}", self.verb, self.namespace),
            None => format!("{} {resource} in namespace {}", self.verb, self.namespace),
        }
    }
}

pub struct Authorizer {
    reviews: Api<SubjectAccessReview>,
    cache: Mutex<TtlCache<(Identity, Access), Result<(), String>>>,
}

impl Authorizer {
    pub fn new(client: kube::Client) -> Self {
        Self { reviews: Api::all(client), cache: Mutex::new(TtlCache::new(CACHE_TTL, CACHE_ENTRIES)) }
    }

    /// Ok when RBAC allows it; 403 `forbidden` with the API server's reason otherwise.
    pub async fn check(&self, who: &Identity, access: &Access) -> Result<(), ApiError> {
        let key = (who.clone(), access.clone());
        let cached = self.cache.lock().expect("access cache lock").get(&key);
        let decision = match cached {
            Some(decision) => decision,
            None => {
                let decision = self.review(who, access).await?;
                self.cache.lock().expect("access cache lock").put(key, decision.clone());
                decision
            }
        };
        decision.map_err(|reason| {
            let mut message = format!("{} may not {}", who.username, access.describe());
            if !reason.is_empty() {
                message.push_str(&format!(": {reason}"));
            }
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
        })
    }

    async fn review(&self, who: &Identity, access: &Access) -> Result<Result<(), String>, ApiError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.username.clone()),
                groups: Some(who.groups.clone()),
                uid: who.uid.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(bizosaas_crds::GROUP.into()),
                    namespace: Some(access.namespace.clone()),
                    verb: Some(access.verb.into()),
                    resource: Some(access.resource.into()),
                    subresource: access.subresource.map(str::to_string),
                    name: access.name.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = self.reviews.create(&PostParams::default(), &review).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                format!("SubjectAccessReview failed: {}", crate::kube_reason(&e)),
            )
        })?;
        let status = answer.status.unwrap_or_default();
        Ok(if status.allowed { Ok(()) } else { Err(status.reason.unwrap_or_default()) })
    }
}
