//! The HTTP API of the runtime.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/runs` | start a run (a task's `agent` must be one of the crew's agents, else 422 `unknown_agent`; `Idempotency-Key` header: a retry, on any replica, returns the same run with 200 and `idempotent-replayed: true` and does not start it again; `?wait=<seconds>` answers once the run finished or the time passed) |
//! | `GET /v1/runs` | recent runs, newest first (summaries) |
//! | `GET /v1/runs/{id}` | status (`queued`, `running`, `succeeded`, `failed`, `cancelled`, `interrupted`), per-task outputs, token usage, error |
//! | `DELETE /v1/runs/{id}` | cancel a queued or running run: 202 with the run (`cancelRequested`; it becomes `cancelled` within a poll interval, `?wait=` waits for it); 409 `run_finished` when it already finished |
//! | `GET /v1/runs/{id}/events` | server-sent events of the run's steps, from the start (or after `Last-Event-ID` / `?after=`), until it ends; only on the replica that executes the run (elsewhere 404 `events_unavailable`) |
//! | `GET /v1/crew` | the crew as the runtime resolved it (no credentials) |
//! | `GET /healthz`, `/readyz`, `/metrics` | liveness, readiness, Prometheus metrics |
//!
//! Served by `bizosaas-agent serve`, every `/v1/` route needs a bearer token that [`crate::auth`]
//! admits (401 `unauthenticated`, 403 `forbidden`); the probes and metrics need none.
//!
//! With a tenant database (`DATABASE_URL`) runs are rows of `agent_runs`, so every replica
//! and a restarted pod finds them by id and Idempotency-Key; a run whose pod stopped while it
//! was in flight becomes `interrupted` and is not restarted (retry with a new key). Without
//! one, runs are kept in this process's memory only.

use crate::auth::Authenticator;
use crate::db::Db;
use crate::engine::task::RunRequest;
use crate::engine::{Engine, RunError};
use crate::executor::Executor;
use crate::ledger::TokenLedger;
use crate::store::{Admitted, CancelOutcome, Found, RunHandle, Runs, RunsError, StoreError};
use crate::usage::{BudgetError, MonthlyLedger};
use axum::extract::rejection::JsonRejection;
use axum::extract::{MatchedPath, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument as _;

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Everything the handlers use.
pub struct AppState {
    pub engine: Arc<Engine>,
    /// The runs: this replica's in memory, with a tenant database every replica's.
    pub runs: Arc<Runs>,
    pub executor: Executor,
    pub registry: Arc<Registry>,
    /// The tenant database, checked by `/readyz` when set (memory and durable runs need it).
    pub db: Option<Arc<Db>>,
    /// The tenant's and the crew's monthly budgets in the tenant database.
    pub ledger: Option<Arc<TokenLedger>>,
    /// The crew's month without a tenant database.
    pub monthly: Option<Arc<MonthlyLedger>>,
    /// Set on shutdown: `/readyz` fails and new runs are refused.
    pub shutting_down: AtomicBool,
    /// Longest `?wait=` honoured.
    pub max_wait: Duration,
    /// Checks the callers of `/v1/`; `None` only where the runtime is embedded (tests, bench).
    pub auth: Option<Arc<Authenticator>>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let mut api = Router::new()
        .route("/v1/runs", get(list_runs).post(create_run))
        .route("/v1/runs/{id}", get(get_run).delete(cancel_run))
        .route("/v1/runs/{id}/events", get(run_events))
        .route("/v1/crew", get(crew));
    if let Some(auth) = state.auth.clone() {
        api = api.route_layer(axum::middleware::from_fn_with_state(auth, crate::auth::require));
    }
    // Outermost, so that refused requests are traced too; the probes and metrics are not.
    api = api.route_layer(axum::middleware::from_fn(trace_request));
    api.route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The server span of a `/v1/` request (OpenTelemetry's HTTP server conventions: method,
/// route template, status code; never headers, the path's values or the body), a child of the
/// caller's span when the request carries W3C trace context.
async fn trace_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    crate::telemetry::set_parent_from(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("error.type", status.as_str());
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// An error answer: `{"error": {"category": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub category: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, category: &'static str, message: impl Into<String>) -> Self {
        Self { status, category, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": {"category": self.category, "message": self.message}}))).into_response()
    }
}

#[derive(Deserialize)]
struct CreateQuery {
    /// Seconds to wait for the run to finish before answering.
    wait: Option<f64>,
}

async fn create_run(
    State(state): State<Arc<AppState>>,
    Query(query): Query<CreateQuery>,
    headers: HeaderMap,
    body: Result<Json<RunRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| {
        let status = match e.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "invalid_request", e.body_text())
    })?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k =
                v.to_str().ok().map(str::trim).filter(|k| {
                    !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.chars().all(|c| c.is_ascii_graphic())
                });
            Some(
                k.ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
                    )
                })?
                .to_string(),
            )
        }
    };
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the runtime is shutting down"));
    }
    // A run the budgets already refuse is not started (a replayed key still finds its run).
    if key.is_none() {
        budget_left(&state).await?;
    }
    let plan = state.engine.plan(&request).map_err(|e| match e {
        RunError::InvalidTask(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m),
        e @ RunError::UnknownAgent { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.category(), e.to_string())
        }
        other => ApiError::new(StatusCode::BAD_REQUEST, other.category(), other.to_string()),
    })?;
    // Stored and started in a task of its own: a client that goes away between the two
    // must not leave a stored run that never starts.
    let admit = {
        let state = state.clone();
        // In the request's span: the run's span is its child.
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                match state.runs.create(request, key).await? {
                    Admitted::New(run) => {
                        tracing::info!(run = %run.id, steps = plan.steps.len(), "run accepted");
                        state.executor.spawn(run.clone(), plan);
                        Ok((Found::Live(run), false))
                    }
                    Admitted::Replayed(found) => Ok((found, true)),
                }
            },
            span,
        ))
    };
    let (found, replayed) = admit
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the run could not be created"))?
        .map_err(runs_error)?;
    let found = wait(&state, found, query.wait).await?;
    let status = if replayed { StatusCode::OK } else { StatusCode::CREATED };
    let view = found.view();
    let mut response = (status, Json(&view)).into_response();
    let h = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/runs/{}", view.id)) {
        h.insert(header::LOCATION, location);
    }
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Refuses a new run when the tenant's or the crew's month is used up: 429 with the budget's
/// category (503 when the budget cannot be read).
async fn budget_left(state: &AppState) -> Result<(), ApiError> {
    let refused = match (&state.ledger, &state.monthly) {
        (Some(ledger), _) => ledger.check().await.err(),
        (None, Some(monthly)) => monthly.check().err(),
        (None, None) => None,
    };
    let Some(refused) = refused else { return Ok(()) };
    let status = match refused {
        BudgetError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::TOO_MANY_REQUESTS,
    };
    let message = refused.to_string().replacen("stopped: ", "refused: ", 1);
    Err(ApiError::new(status, refused.category(), message))
}

/// Honours `?wait=<seconds>` (up to `max_wait`).
async fn wait(state: &AppState, found: Found, wait: Option<f64>) -> Result<Found, ApiError> {
    match wait.filter(|w| w.is_finite() && *w > 0.0) {
        Some(w) => state.runs.wait(found, Duration::from_secs_f64(w).min(state.max_wait)).await.map_err(runs_error),
        None => Ok(found),
    }
}

/// Errors of the run store: a reused key 422, too many runs 429, the tenant database 503.
fn runs_error(e: RunsError) -> ApiError {
    let status = match &e {
        RunsError::Store(StoreError::KeyReused) => StatusCode::UNPROCESSABLE_ENTITY,
        RunsError::Store(StoreError::Full(_)) => StatusCode::TOO_MANY_REQUESTS,
        RunsError::Persist(crate::store::PersistError::Unreadable { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
        RunsError::Persist(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    if status.is_server_error() {
        tracing::warn!(category = e.category(), error = %e, "run store unavailable");
    }
    ApiError::new(status, e.category(), e.to_string())
}

async fn list_runs(State(state): State<Arc<AppState>>) -> Result<Json<serde_json::Value>, ApiError> {
    let runs = state.runs.list().await.map_err(runs_error)?;
    Ok(Json(json!({ "runs": runs })))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no run {id:?}"))
}

async fn find(state: &AppState, id: &str) -> Result<Found, ApiError> {
    state.runs.find(id).await.map_err(runs_error)?.ok_or_else(|| not_found(id))
}

async fn get_run(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(find(&state, &id).await?.view()).into_response())
}

#[derive(Deserialize)]
struct CancelQuery {
    /// Seconds to wait for the run to stop before answering.
    wait: Option<f64>,
}

async fn cancel_run(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<CancelQuery>,
) -> Result<Response, ApiError> {
    match state.runs.cancel(&id).await.map_err(runs_error)? {
        CancelOutcome::Unknown => Err(not_found(&id)),
        CancelOutcome::AlreadyFinished(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "run_finished",
            format!("run {id:?} already finished ({}); only queued or running runs can be cancelled", status.as_str()),
        )),
        CancelOutcome::Accepted(found) => {
            tracing::info!(run = %id, "cancel requested");
            let found = wait(&state, found, query.wait).await?;
            Ok((StatusCode::ACCEPTED, Json(found.view())).into_response())
        }
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Only events with a greater `seq`.
    after: Option<u64>,
}

struct Follow {
    run: Arc<RunHandle>,
    rx: watch::Receiver<crate::store::Progress>,
    after: u64,
    buffer: VecDeque<crate::events::Event>,
}

async fn run_events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let run = match find(&state, &id).await? {
        Found::Live(run) => run,
        Found::Stored(_) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "events_unavailable",
                format!(
                    "the events of run {id:?} are kept only by the replica that executes it; GET /v1/runs/{id} shows its state"
                ),
            ));
        }
    };
    let last_event_id =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let after = last_event_id.or(query.after).unwrap_or(0);
    let rx = run.subscribe();
    let follow = Follow { run, rx, after, buffer: VecDeque::new() };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(event) = f.buffer.pop_front() {
                let data = serde_json::to_string(&event).unwrap_or_else(|_| "{}".into());
                let sse = SseEvent::default().event(event.kind.name()).id(event.seq.to_string()).data(data);
                return Some((Ok::<_, Infallible>(sse), f));
            }
            let finished = f.rx.borrow_and_update().finished;
            let events = f.run.events_after(f.after);
            if let Some(last) = events.last() {
                f.after = last.seq;
                f.buffer.extend(events);
                continue;
            }
            if finished || f.rx.changed().await.is_err() {
                return None;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

async fn crew(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let crew = state.engine.crew();
    let agents: Vec<_> = crew
        .agents
        .iter()
        .map(|a| {
            json!({
                "name": a.name, "role": a.role, "goal": a.goal, "tools": a.tools,
                "allowDelegation": a.allow_delegation, "maxIterations": a.max_iterations,
            })
        })
        .collect();
    let (tenant_used, crew_used) = match (&state.ledger, &state.monthly) {
        (Some(ledger), _) => match ledger.spent().await {
            Ok((tenant, crew)) => (Some(tenant.used), Some(crew.used)),
            Err(_) => (None, None),
        },
        (None, Some(monthly)) => (None, Some(monthly.used())),
        (None, None) => (None, None),
    };
    Json(json!({
        "name": crew.name,
        "namespace": crew.namespace,
        "tenant": crew.tenant,
        "process": crew.process,
        "model": {"model": crew.model.model, "fallbacks": crew.model.fallbacks},
        "manager": crew.manager.as_ref().map(|m| json!({"model": m.model, "fallbacks": m.fallbacks})),
        "agents": agents,
        "memory": crew.memory,
        "integrations": crew.integrations.iter().map(|i| &i.name).collect::<Vec<_>>(),
        "budget": {
            "maxTokensPerRun": crew.max_tokens_per_run,
            "monthlyTokens": crew.monthly_tokens,
            "monthlyUsed": crew_used,
            "tenantMonthlyTokens": crew.tenant_monthly_tokens,
            "tenantMonthlyUsed": tenant_used,
        },
    }))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    if let Some(db) = &state.db {
        match tokio::time::timeout(Duration::from_secs(2), db.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (StatusCode::SERVICE_UNAVAILABLE, format!("tenant database: {e}")).into_response(),
            Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "tenant database: no answer").into_response(),
        }
    }
    (StatusCode::OK, "ready").into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
