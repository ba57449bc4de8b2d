//! Counts every request the operator sends to the Kubernetes API, by verb and status code: a
//! tower layer under the kube client, so no call site can forget it.

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
        let verb = verb(request.method(), request.uri().path(), request.uri().query());
        let metrics = self.metrics.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            metrics.kube_request(verb, response.as_ref().ok().map(|r| r.status().as_u16()));
            response
        })
    }
}

/// The Kubernetes verb of a request: the HTTP method, with a GET told apart as a `watch`
/// (`watch=true`) or a `list` (a collection path: its last segment names a resource, which
/// is the segment after a group version or after a namespace name).
pub fn verb(method: &Method, path: &str, query: Option<&str>) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        Method::GET if query.is_some_and(|q| q.split('&').any(|pair| pair == "watch=true" || pair == "watch=1")) => {
            "watch"
        }
        Method::GET if is_collection(path) => "list",
        _ => "get",
    }
}

/// True when `path` names a collection: `/api/v1/<resource>`, `/apis/<group>/<version>/<resource>`,
/// or either with `namespaces/<namespace>/` before the resource.
fn is_collection(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    };
    matches!(rest.unwrap_or_default(), [_] | ["namespaces", _, _])
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
    fn writes_are_named_by_method() {
        let path = "/apis/bizosaas.io/v1alpha1/tenants/acme";
        assert_eq!(verb(&Method::PATCH, path, Some("fieldManager=bizosaas")), "patch");
        assert_eq!(verb(&Method::POST, "/api/v1/namespaces/x/events", None), "create");
        assert_eq!(verb(&Method::PUT, path, None), "update");
        assert_eq!(verb(&Method::DELETE, path, None), "delete");
    }
}
