//! The gateway's HTTP API (documented in `openapi.json`, served at `/openapi.json`):
//!
//! | route | needs (RBAC in `tenant-<tenant>`) |
//! |---|---|
//! | `POST /v1/tenants/{tenant}/crews/{crew}/runs` | `create agentcrews/runs` on the crew |
//! | `GET /v1/tenants/{tenant}/crews/{crew}/runs/{id}` | `get agentcrews/runs` on the crew |
//! | `GET /v1/tenants/{tenant}/crews/{crew}/runs/{id}/events` | `get agentcrews/runs` on the crew |
//! | `POST /v1/tenants/{tenant}/workflows/{workflow}/runs` | `create workflowruns` (as the caller) |
//! | `GET /v1/tenants/{tenant}/workflowruns/{name}` | `get workflowruns` (as the caller) |
//! | `GET /v1/tenants/{tenant}/usage` | `get usage` (a name for RBAC only) |
//! | `GET /v1/tenants/{tenant}/audit` | `get audit` (a name for RBAC only; owners) |
//!
//! Every `/v1/` request is authenticated first (401), then rate limited per tenant (429 with
//! `Retry-After`), then given its place in the tenant's audit log (503 without one), then
//! authorized (403), then passed on; how it ended goes to the audit log. Bodies are at most
//! [`MAX_BODY`]. Each answer carries the request's `X-Request-Id`.

use crate::audit::{self, AuditLog, Slot};
use crate::authn::{Authenticator, Identity};
use crate::authz::{Access, Authorizer};
use crate::crews::{self, CrewClient, Forward};
use crate::error::ApiError;
use crate::metrics::{CategoryLabels, Metrics, RequestLabels, RouteLabels};
use crate::rate_limit::RateLimiter;
use crate::workflows;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bizosaas_crds::tenant::TenantUsage;
use bizosaas_crds::{Tenant, WorkflowRun};
use kube::{Resource, ResourceExt};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");
/// The routes under `/v1`, as the router and the OpenAPI document name them.
/// The routes under `/v1`, as the router and the OpenAPI document name them, with the action
/// the audit log records for each.
pub const ROUTES: [(&str, &str, &str); 7] = [
    ("post", "/v1/tenants/{tenant}/crews/{crew}/runs", "crewrun.create"),
    ("get", "/v1/tenants/{tenant}/crews/{crew}/runs/{id}", "crewrun.get"),
    ("get", "/v1/tenants/{tenant}/crews/{crew}/runs/{id}/events", "crewrun.events"),
    ("post", "/v1/tenants/{tenant}/workflows/{workflow}/runs", "workflowrun.create"),
    ("get", "/v1/tenants/{tenant}/workflowruns/{name}", "workflowrun.get"),
    ("get", "/v1/tenants/{tenant}/usage", "usage.get"),
    ("get", "/v1/tenants/{tenant}/audit", "audit.get"),
];

pub struct AppState {
    pub kube: kube::Client,
    pub authn: Authenticator,
    pub authz: Authorizer,
    pub limiter: RateLimiter,
    pub crews: CrewClient,
    pub metrics: Metrics,
    pub registry: Registry,
    /// `None` without a database (`BIZOSAAS_GATEWAY_DATABASE_URL`): nothing is recorded and
    /// the audit route answers 503.
    pub audit: Option<AuditLog>,
    /// Set once the OIDC issuer's keys were read (always, without an issuer).
    pub ready: AtomicBool,
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route(ROUTES[0].1, post(start_crew_run))
        .route(ROUTES[1].1, get(get_crew_run))
        .route(ROUTES[2].1, get(crew_run_events))
        .route(ROUTES[3].1, post(start_workflow_run))
        .route(ROUTES[4].1, get(get_workflow_run))
        .route(ROUTES[5].1, get(tenant_usage))
        .route(ROUTES[6].1, get(tenant_audit))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), front_door))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), measure));
    api.route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route; see /openapi.json") })
        .with_state(state)
}

/// Counts and times every API request by its route template, and counts refusals by category.
async fn measure(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let started = Instant::now();
    let response = next.run(request).await;
    let code = response.status();
    state
        .metrics
        .duration
        .get_or_create(&RouteLabels { route: route.clone() })
        .observe(started.elapsed().as_secs_f64());
    state.metrics.requests.get_or_create(&RequestLabels { route, code: code.as_str().into() }).inc();
    if let Some(category) = response.extensions().get::<Refusal>() {
        state.metrics.refused.get_or_create(&CategoryLabels { category: category.0.into() }).inc();
    }
    response
}

/// The category of a refused request, for the metrics.
#[derive(Clone, Copy)]
struct Refusal(&'static str);

/// An error answer that the metrics can count.
struct Refused(ApiError);

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let category = self.0.category;
        let mut response = self.0.into_response();
        response.extensions_mut().insert(Refusal(category));
        response
    }
}

/// A DNS-1123 label of at most `max` characters (tenants, crews, workflows, runs).
fn name(value: &str, what: &str, max: usize) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok { Ok(()) } else { Err(ApiError::bad_request(format!("{what} {value:?} is not a valid name"))) }
}

/// The caller of a `/v1/` request, as [`front_door`] admitted it.
#[derive(Clone)]
struct Caller {
    namespace: String,
    who: Identity,
}

/// What a handler adds to the audit entry's target (the run it created).
#[derive(Clone)]
struct Created(String);

/// Admits `/v1/` requests: authenticates the caller, takes one request from the tenant's
/// rate and a place in its audit log, then records how the request ended.
async fn front_door(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let arrived = k8s_openapi::jiff::Timestamp::now();
    let request_id = audit::request_id(request.headers().get("x-request-id").and_then(|v| v.to_str().ok()));
    let (mut parts, body) = request.into_parts();
    let params: Vec<(String, String)> = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(raw) => raw.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        Err(_) => Vec::new(),
    };
    let route = parts.extensions.get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let action = ROUTES.iter().find(|r| r.1 == route).map_or("unknown", |r| r.2);
    let tenant = params.iter().find(|(k, _)| k == "tenant").map(|(_, v)| v.clone()).unwrap_or_default();
    let admitted = admit(&state, &parts.headers, &tenant).await;
    let (caller, slot) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => return with_request_id(Refused(e).into_response(), &request_id),
    };
    parts.extensions.insert(caller.clone());
    let method = parts.method.to_string();
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if let Some(slot) = slot {
        let mut target = target_of(&route, &params);
        if let Some(Created(name)) = response.extensions_mut().remove::<Created>() {
            target = format!("{target}/{name}");
        }
        let status = response.status();
        let category = response.extensions().get::<Refusal>().map(|r| r.0);
        slot.record(audit::Entry {
            tenant,
            actor: caller.who.username.clone(),
            groups: caller.who.groups.clone(),
            action,
            target,
            outcome: audit::outcome(status),
            request_id: request_id.clone(),
            detail: serde_json::json!({"method": method, "status": status.as_u16(), "category": category}),
            time: arrived.to_string(),
        });
    }
    with_request_id(response, &request_id)
}

fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The object a route acts on, from its path parameters: `agentcrews/writers/runs/7f3a`.
fn target_of(route: &str, params: &[(String, String)]) -> String {
    let value = |key: &str| params.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v.as_str());
    let path = route.trim_start_matches("/v1/tenants/{tenant}/");
    let mut target = Vec::new();
    for segment in path.split('/') {
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(key) => target.push(value(key).to_string()),
            None if segment == "crews" => target.push("agentcrews".to_string()),
            None => target.push(segment.to_string()),
        }
    }
    target.join("/")
}

/// Authenticates the caller, takes one request from the tenant's rate and a place in its
/// audit log.
async fn admit(state: &AppState, headers: &HeaderMap, tenant: &str) -> Result<(Caller, Option<Slot>), ApiError> {
    name(tenant, "tenant", 40)?;
    let who = state.authn.authenticate(headers.get(header::AUTHORIZATION)).await?;
    if let Err(wait) = state.limiter.take(tenant) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("tenant {tenant} is over its request rate; retry later"),
        );
        e.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        return Err(e);
    }
    let slot = match &state.audit {
        Some(audit) => Some(audit.slot(tenant)?),
        None => None,
    };
    Ok((Caller { namespace: format!("tenant-{tenant}"), who }, slot))
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<f64>,
}

async fn start_crew_run(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((_, crew)): Path<(String, String)>,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, Refused> {
    let Caller { namespace, who } = caller;
    name(&crew, "crew", 63)?;
    state.authz.check(&who, &Access::new("create", "agentcrews", Some("runs"), &namespace, &crew)).await?;
    crews::require_json(&headers)?;
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(crews::scoped_idempotency_key(
            &who,
            v.to_str().map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?,
        )?),
        None => None,
    };
    let call = Forward {
        method: reqwest::Method::POST,
        namespace: &namespace,
        crew: &crew,
        path: String::new(),
        query: crews::wait_query(query.wait),
        headers: &headers,
        idempotency_key: key,
        body: Some(body),
        stream: false,
    };
    let mut response = state.crews.forward(call).await?;
    let run = response.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()).and_then(|l| l.rsplit('/').next());
    if let Some(run) = run.map(str::to_owned) {
        response.extensions_mut().insert(Created(run));
    }
    Ok(response)
}

/// A crew run id as the runtime hands them out.
fn run_id(id: &str) -> Result<(), ApiError> {
    let ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(ApiError::bad_request(format!("{id:?} is not a run id"))) }
}

async fn get_crew_run(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((_, crew, id)): Path<(String, String, String)>,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let Caller { namespace, who } = caller;
    name(&crew, "crew", 63)?;
    run_id(&id)?;
    state.authz.check(&who, &Access::new("get", "agentcrews", Some("runs"), &namespace, &crew)).await?;
    let call = Forward {
        method: reqwest::Method::GET,
        namespace: &namespace,
        crew: &crew,
        path: format!("/{id}"),
        query: crews::wait_query(query.wait),
        headers: &headers,
        idempotency_key: None,
        body: None,
        stream: false,
    };
    Ok(state.crews.forward(call).await?)
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<u64>,
}

async fn crew_run_events(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((_, crew, id)): Path<(String, String, String)>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let Caller { namespace, who } = caller;
    name(&crew, "crew", 63)?;
    run_id(&id)?;
    state.authz.check(&who, &Access::new("get", "agentcrews", Some("runs"), &namespace, &crew)).await?;
    let call = Forward {
        method: reqwest::Method::GET,
        namespace: &namespace,
        crew: &crew,
        path: format!("/{id}/events"),
        query: query.after.map(|a| vec![("after", a.to_string())]).unwrap_or_default(),
        headers: &headers,
        idempotency_key: None,
        body: None,
        stream: true,
    };
    Ok(state.crews.forward(call).await?)
}

/// The tenant's token usage this month, from the Tenant's status (which the operator reads
/// from the tenant database): what its crews spent, its budget and whether it is used up.
async fn tenant_usage(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
) -> Result<Response, Refused> {
    let Caller { namespace, who } = caller;
    state.authz.check(&who, &Access::new("get", "usage", None, &namespace, "")).await?;
    let found = kube::Api::<Tenant>::all(state.kube.clone()).get_opt(&tenant).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot read a Tenant");
        ApiError::new(StatusCode::BAD_GATEWAY, "upstream_unavailable", "the API server did not answer")
    })?;
    let Some(found) = found else {
        return Err(ApiError::not_found(format!("no Tenant {tenant}")).into());
    };
    let status = found.status.unwrap_or_default();
    let month = k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m").to_string();
    let usage = status.usage.filter(|u| u.month == month).unwrap_or(TenantUsage { month, ..Default::default() });
    let exhausted = status.conditions.iter().any(|c| c.type_ == "BudgetExhausted" && c.status == "True");
    let body = serde_json::json!({
        "tenant": tenant,
        "month": usage.month,
        "tokensUsed": usage.tokens_used,
        "monthlyTokens": usage.monthly_tokens,
        "budgetExhausted": exhausted,
    });
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

/// The tenant's audit log, oldest first, from after the id `after`: the gateway's requests
/// and the operator's actions on the tenant's data. Its owners' alone (`get audit`).
async fn tenant_audit(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(tenant): Path<String>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, Refused> {
    let Caller { namespace, who } = caller;
    state.authz.check(&who, &Access::new("get", "audit", None, &namespace, "")).await?;
    let Some(audit) = &state.audit else {
        return Err(audit::unavailable("this gateway keeps no audit log (it has no database)").into());
    };
    let after = query.after.unwrap_or(0).max(0);
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries = audit.read(&tenant, after, limit).await?;
    let next = entries.as_array().and_then(|e| e.last()).and_then(|e| e["id"].as_i64()).unwrap_or(after);
    Ok(Json(serde_json::json!({"tenant": tenant, "entries": entries, "next": next})).into_response())
}

/// Sends `request` to the API server as the caller.
async fn as_caller<T: serde::de::DeserializeOwned>(
    client: &kube::Client,
    who: &Identity,
    mut request: http::Request<Vec<u8>>,
) -> Result<T, ApiError> {
    let header = |v: &str| {
        HeaderValue::from_str(v)
            .map_err(|_| ApiError::bad_request("the caller's name cannot be passed to the API server"))
    };
    let headers = request.headers_mut();
    headers.insert("impersonate-user", header(&who.username)?);
    for group in &who.groups {
        headers.append("impersonate-group", header(group)?);
    }
    if let Some(uid) = &who.uid {
        headers.insert("impersonate-uid", header(uid)?);
    }
    client.request::<T>(request).await.map_err(workflows::api_error)
}

async fn start_workflow_run(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((_, workflow)): Path<(String, String)>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, Refused> {
    let Caller { namespace, who } = caller;
    name(&workflow, "workflow", 63)?;
    let start: workflows::StartRequest = if body.is_empty() {
        Default::default()
    } else {
        crews::require_json(&headers)?;
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not a run request: {e}")))?
    };
    let key = match headers.get("idempotency-key") {
        Some(v) => {
            let v = v.to_str().map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
            crews::scoped_idempotency_key(&who, v)?;
            Some(v.to_string())
        }
        None => None,
    };
    let run_name = workflows::run_name(&workflow, &who, key.as_deref());
    let run = workflows::build_run(&namespace, &workflow, &who, run_name.clone(), start);
    let url = WorkflowRun::url_path(&(), Some(&namespace));
    let request = kube::core::Request::new(url)
        .create(&Default::default(), serde_json::to_vec(&run).expect("a WorkflowRun serialises"))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    match as_caller::<WorkflowRun>(&state.kube, &who, request).await {
        Ok(created) => {
            let mut response = (StatusCode::CREATED, Json(workflows::view(&created))).into_response();
            response.extensions_mut().insert(Created(created.name_any()));
            Ok(response)
        }
        Err(e) if e.status == StatusCode::CONFLICT && run_name.is_some() => {
            // The same caller and key started it before: answer with that run.
            let name = run_name.expect("checked");
            let request = kube::core::Request::new(WorkflowRun::url_path(&(), Some(&namespace)))
                .get(&name, &Default::default())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let found: WorkflowRun = as_caller(&state.kube, &who, request).await?;
            let mut response = Json(workflows::view(&found)).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
        Err(e) => Err(e.into()),
    }
}

async fn get_workflow_run(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path((_, run)): Path<(String, String)>,
) -> Result<Response, Refused> {
    let Caller { namespace, who } = caller;
    name(&run, "workflow run", 253)?;
    let request = kube::core::Request::new(WorkflowRun::url_path(&(), Some(&namespace)))
        .get(&run, &Default::default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let found: WorkflowRun = as_caller(&state.kube, &who, request).await?;
    Ok(Json(workflows::view(&found)).into_response())
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the OIDC issuer's keys have not been read yet").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        for (method, path, _) in ROUTES {
            let op = &paths.get(path).unwrap_or_else(|| panic!("{path} is not in openapi.json"))[method];
            assert!(op.is_object(), "{method} {path} is not in openapi.json");
            for code in ["401", "403", "429"] {
                assert!(op["responses"][code].is_object(), "{method} {path} documents no {code}");
            }
        }
        let documented: usize =
            paths.iter().filter(|(p, _)| p.starts_with("/v1/")).map(|(_, ops)| ops.as_object().unwrap().len()).sum();
        assert_eq!(documented, ROUTES.len(), "openapi.json documents a route the gateway does not serve");
    }

    #[test]
    fn names_are_dns_labels() {
        for good in ["acme", "a-1", "x"] {
            assert!(name(good, "tenant", 40).is_ok(), "{good}");
        }
        for bad in ["", "Acme", "a_b", "-a", "a-", "a/b", "..", &"a".repeat(41)] {
            assert!(name(bad, "tenant", 40).is_err(), "{bad}");
        }
        assert!(run_id("3f2a-9c_1").is_ok());
        assert!(run_id("../x").is_err());
    }
}
