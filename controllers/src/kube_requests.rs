//! Counts every request the operator sends to the Kubernetes API, by verb, resource and
//! status code: a tower layer under the kube client, so no call site can forget it.

use crate::metrics::Metrics;
use futures::future::BoxFuture;
use http::{Method, Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The layer that wraps a client's service in a [`Counted`] one.
#[derive(Clone)]
pub struct CountRequests(pub Arc<Metrics>);

impl<S> Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, metrics: self.0.clone() }
    }
}

/// A service that counts its requests and their responses' status codes.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Counted<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The path is split once, for both labels.
        let segments = from_resource(request.uri().path());
        let verb = verb_of(request.method(), segments.as_deref(), request.uri().query());
        let resource = resource_of(segments.as_deref());
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            metrics.kube_request(verb, resource, response.as_ref().ok().map(|r| r.status().as_u16()));
            response
        })
    }
}

/// The Kubernetes verb of a request: the HTTP method, with a GET told apart as a `watch`
/// (`watch=true`) or a `list` (a collection path: its last segment names a resource, which
/// is the segment after a group version or after a namespace name).
pub fn verb(method: &Method, path: &str, query: Option<&str>) -> &'static str {
    verb_of(method, from_resource(path).as_deref(), query)
}

/// [`verb`] of a path already split by [`from_resource`].
fn verb_of(method: &Method, segments: Option<&[&str]>, query: Option<&str>) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::GET if query.is_some_and(|q| q.split('&').any(|pair| pair == "watch=true" || pair == "watch=1")) => {
            "watch"
        }
        // A collection: its path ends at the resource.
        Method::GET if segments.is_some_and(|rest| rest.len() == 1) => "list",
        _ => "get",
    }
}

/// The segments of `path` after its API group version (`/api/v1` or `/apis/<group>/<version>`),
/// or `None` for a path outside the resource API (discovery, `/version`).
fn after_group_version(path: &str) -> Option<Vec<&str>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .map(<[&str]>::to_vec)
}

/// The segments from the resource on: a namespaced path loses its `namespaces/<namespace>/`
/// prefix. A Namespace's own subresources (`status`, `finalize`) keep it, as they name one.
fn from_resource(path: &str) -> Option<Vec<&str>> {
    let rest = after_group_version(path)?;
    Some(match rest.as_slice() {
        ["namespaces", _, resource, ..] if !matches!(*resource, "status" | "finalize") => rest[2..].to_vec(),
        _ => rest,
    })
}

/// The resource a request is about (`secrets`, `tenants/status`), for telling the requests of
/// one kind apart in the metrics; `other` outside the resource API. Bounded: the operator
/// talks to a fixed set of resources.
pub fn resource(path: &str) -> String {
    resource_of(from_resource(path).as_deref())
}

/// [`resource`] of a path already split by [`from_resource`].
fn resource_of(segments: Option<&[&str]>) -> String {
    match segments {
        Some([resource]) | Some([resource, _]) => resource.to_string(),
        Some([resource, _, subresource, ..]) => format!("{resource}/{subresource}"),
        _ => "other".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_told_apart_as_get_list_and_watch() {
        let get = |path, query| verb(&Method::GET, path, query);
        assert_eq!(get("/api/v1/namespaces/tenant-acme", None), "get");
        assert_eq!(get("/api/v1/namespaces", None), "list");
        assert_eq!(get("/api/v1/namespaces/tenant-acme/secrets", Some("labelSelector=a%3Db")), "list");
        assert_eq!(get("/api/v1/namespaces/tenant-acme/secrets/tenant-database", None), "get");
        assert_eq!(get("/apis/bizosaas.io/v1alpha1/tenants", Some("watch=true&resourceVersion=1")), "watch");
        assert_eq!(get("/apis/bizosaas.io/v1alpha1/tenants", None), "list");
        assert_eq!(get("/apis/bizosaas.io/v1alpha1/tenants/acme", None), "get");
        assert_eq!(get("/apis/apps/v1/namespaces/tenant-acme/deployments", None), "list");
        assert_eq!(get("/apis/apps/v1/namespaces/tenant-acme/deployments/crm", None), "get");
        assert_eq!(get("/apis/apps/v1/namespaces/tenant-acme/deployments/crm/status", None), "get");
    }

    #[test]
    fn resources_are_named_without_namespace_or_object() {
        assert_eq!(resource("/api/v1/namespaces"), "namespaces");
        assert_eq!(resource("/api/v1/namespaces/tenant-acme"), "namespaces");
        assert_eq!(resource("/api/v1/namespaces/tenant-acme/finalize"), "namespaces/finalize");
        assert_eq!(resource("/api/v1/namespaces/tenant-acme/secrets"), "secrets");
        assert_eq!(resource("/api/v1/namespaces/tenant-acme/secrets/tenant-database"), "secrets");
        assert_eq!(resource("/apis/bizosaas.io/v1alpha1/tenants/acme/status"), "tenants/status");
        assert_eq!(resource("/apis/apps/v1/namespaces/tenant-acme/deployments/crm/scale"), "deployments/scale");
        assert_eq!(resource("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"), "selfsubjectaccessreviews");
        assert_eq!(resource("/version"), "other");
        assert_eq!(resource("/apis"), "other");
    }

    #[test]
    fn writes_are_named_by_method() {
        let path = "/apis/bizosaas.io/v1alpha1/tenants/acme";
        assert_eq!(verb(&Method::PATCH, path, Some("fieldManager=bizosaas")), "patch");
        assert_eq!(verb(&Method::POST, "/api/v1/namespaces/x/events", None), "create");
        assert_eq!(verb(&Method::PUT, path, None), "update");
        assert_eq!(verb(&Method::DELETE, path, None), "delete");
    }
}
