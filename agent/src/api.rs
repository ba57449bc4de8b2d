//! The HTTP API of the runtime.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/runs` | start a run (`Idempotency-Key` header: a retry returns the same run; `?wait=<seconds>` answers once the run finished or the time passed) |
//! | `GET /v1/runs` | recent runs, newest first (summaries) |
//! | `GET /v1/runs/{id}` | status, per-task outputs, token usage, error |
//! | `GET /v1/runs/{id}/events` | server-sent events of the run's steps, from the start (or after `Last-Event-ID` / `?after=`), until it ends |
//! | `GET /v1/crew` | the crew as the runtime resolved it (no credentials) |
//! | `GET /healthz`, `/readyz`, `/metrics` | liveness, readiness, Prometheus metrics |

use crate::db::Db;
use crate::engine::task::RunRequest;
use crate::engine::{Engine, Plan, RunError};
use crate::metrics::Metrics;
use crate::store::{Created, RunErrorView, RunHandle, RunStatus, RunStore, StoreError};
use crate::usage::MonthlyLedger;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// Longest accepted `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Everything the handlers use.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub store: Arc<RunStore>,
    pub executor: Executor,
    pub registry: Arc<Registry>,
    /// Checked by `/readyz` when set.
    pub db: Option<Arc<Db>>,
    pub monthly: Option<Arc<MonthlyLedger>>,
    /// Set on shutdown: `/readyz` fails and new runs are refused.
    pub shutting_down: AtomicBool,
    /// Longest `?wait=` honoured.
    pub max_wait: Duration,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/runs", get(list_runs).post(create_run))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/runs/{id}/events", get(run_events))
        .route("/v1/crew", get(crew))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// An error answer: `{"error": {"category": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub category: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, category: &'static str, message: impl Into<String>) -> Self {
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
    let plan = state.engine.plan(&request).map_err(|e| match e {
        RunError::InvalidTask(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m),
        other => ApiError::new(StatusCode::BAD_REQUEST, other.category(), other.to_string()),
    })?;
    let created = state.store.create(request, key).map_err(|e| match e {
        StoreError::KeyReused => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.category(), e.to_string()),
        StoreError::Full(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.category(), e.to_string()),
    })?;
    let (run, replayed) = match created {
        Created::New(run) => {
            tracing::info!(run = %run.id, steps = plan.steps.len(), "run accepted");
            state.executor.spawn(run.clone(), plan);
            (run, false)
        }
        Created::Existing(run) => (run, true),
    };
    if let Some(wait) = query.wait.filter(|w| w.is_finite() && *w > 0.0) {
        run.wait_finished(Duration::from_secs_f64(wait).min(state.max_wait)).await;
    }
    let status = if replayed { StatusCode::OK } else { StatusCode::CREATED };
    let mut response = (status, Json(run.view())).into_response();
    let h = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/runs/{}", run.id)) {
        h.insert(header::LOCATION, location);
    }
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A run in the list.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RunSummary {
    id: String,
    status: RunStatus,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RunErrorView>,
}

async fn list_runs(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let runs: Vec<RunSummary> = state
        .store
        .list()
        .iter()
        .map(|r| {
            let v = r.view();
            RunSummary {
                id: v.id,
                status: v.status,
                created_at: v.created_at,
                finished_at: v.finished_at,
                total_tokens: v.usage.total.total_tokens,
                error: v.error,
            }
        })
        .collect();
    Json(json!({ "runs": runs }))
}

fn find(state: &AppState, id: &str) -> Result<Arc<RunHandle>, ApiError> {
    state.store.get(id).ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no run {id:?}")))
}

async fn get_run(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(find(&state, &id)?.view()).into_response())
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
    let run = find(&state, &id)?;
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
            "monthlyUsed": state.monthly.as_ref().map(|m| m.used()),
        },
        "templates": bizosaas_crds::catalog::TEMPLATE_NAMES,
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

/// Runs runs in the background, at most `concurrency` at a time.
pub struct Executor {
    engine: Arc<Engine>,
    slots: Arc<Semaphore>,
    active: Arc<watch::Sender<usize>>,
    metrics: Option<Arc<Metrics>>,
}

impl Executor {
    pub fn new(engine: Arc<Engine>, concurrency: usize, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            engine,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            active: Arc::new(watch::Sender::new(0)),
            metrics,
        }
    }

    /// Starts a run in the background.
    pub fn spawn(&self, run: Arc<RunHandle>, plan: Plan) {
        self.active.send_modify(|n| *n += 1);
        if let Some(m) = &self.metrics {
            m.runs_active.inc();
        }
        let guard = RunGuard {
            run: run.clone(),
            active: self.active.clone(),
            metrics: self.metrics.clone(),
            started: Instant::now(),
        };
        let (engine, slots) = (self.engine.clone(), self.slots.clone());
        let span = tracing::info_span!("run", id = %run.id);
        let task = async move {
            let _permit = slots.acquire_owned().await;
            run.set_running();
            let result = engine.execute(&run, &plan).await;
            match &result {
                Ok(()) => tracing::info!(run = %run.id, tokens = run.total_usage().total_tokens, "run succeeded"),
                Err(e) => tracing::warn!(run = %run.id, category = e.category(), error = %e, "run failed"),
            }
            guard.finish(result.err().map(|e| e.view()));
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }

    /// Waits until no run is active, at most `timeout`; true when none is.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let mut rx = self.active.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await.is_ok()
    }

    pub fn active(&self) -> usize {
        *self.active.borrow()
    }
}

/// Finishes a run exactly once, also when its task panicked.
struct RunGuard {
    run: Arc<RunHandle>,
    active: Arc<watch::Sender<usize>>,
    metrics: Option<Arc<Metrics>>,
    started: Instant,
}

impl RunGuard {
    fn finish(self, error: Option<RunErrorView>) {
        let outcome = error.as_ref().map_or("succeeded".to_string(), |e| e.category.clone());
        self.run.finish(error);
        if let Some(m) = &self.metrics {
            m.run_finished(&outcome, self.started.elapsed());
        }
        // Drop does the counting.
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if !self.run.status().is_finished() {
            self.run.finish(Some(RunErrorView {
                category: "internal".into(),
                message: "the run stopped unexpectedly (internal error)".into(),
            }));
            if let Some(m) = &self.metrics {
                m.run_finished("internal", self.started.elapsed());
            }
        }
        if let Some(m) = &self.metrics {
            m.runs_active.dec();
        }
        self.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}
