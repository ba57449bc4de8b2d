//! `agentTask` steps: a run on the crew's runtime API. The run is created with the attempt's
//! `Idempotency-Key` (a repeated create returns the same run, on any replica when the crew has
//! a database), its id is published for the status before waiting, and it is polled until it
//! finishes. Every call carries the operator's token for the runtime's audience
//! ([`crate::runtime_auth`]).

use super::inflight::Reporter;
use crate::agent_crew::build::object_name;
use crate::runtime_auth::RuntimeToken;
use crate::workflow::plan::Outcome;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::Api;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// What calls crews: an HTTP client and the operator's token for them.
#[derive(Clone)]
pub struct Caller {
    pub http: reqwest::Client,
    pub token: Arc<RuntimeToken>,
}

impl Caller {
    async fn request(&self, method: reqwest::Method, url: String) -> Result<reqwest::RequestBuilder, String> {
        let token = self.token.get().await?;
        Ok(self.http.request(method, url).bearer_auth(token))
    }
}

const POLL: Duration = Duration::from_secs(1);
/// Consecutive failed polls after which the runtime counts as gone for this attempt.
const MAX_POLL_FAILURES: u32 = 30;

/// One task, with its templates already rendered.
#[derive(Clone, Debug)]
pub struct Task {
    pub namespace: String,
    pub crew: String,
    pub agent: Option<String>,
    pub description: String,
    pub expected_output: Option<String>,
    pub idempotency_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunView {
    id: String,
    status: String,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<RunError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Usage {
    #[serde(default)]
    total_tokens: i64,
}

#[derive(Deserialize)]
struct RunError {
    category: String,
    message: String,
}

/// Creates (or finds) the crew run and waits for it.
pub async fn run(client: Client, caller: Caller, task: Task, reporter: Reporter) -> Outcome {
    let base = match base_url(&client, &task.namespace, &task.crew).await {
        Ok(base) => base,
        Err(message) => return Outcome::Failed { message },
    };
    let body = serde_json::json!({
        "description": task.description,
        "expectedOutput": task.expected_output,
        "agent": task.agent,
    });
    let created = match caller.request(reqwest::Method::POST, format!("{base}/v1/runs")).await {
        Ok(request) => {
            request
                // The step's trace context: the crew run joins the workflow's trace.
                .headers(crate::trace_context::current())
                .header("Idempotency-Key", &task.idempotency_key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .send()
                .await
        }
        Err(message) => return Outcome::Failed { message: format!("AgentCrew {}: {message}", task.crew) },
    };
    let mut view = match read(created).await {
        Ok(view) => view,
        Err(message) => return Outcome::Failed { message: format!("AgentCrew {}: {message}", task.crew) },
    };
    reporter.reference(view.id.clone());
    let mut failures = 0;
    loop {
        if let Some(outcome) = finished(&view) {
            return outcome;
        }
        tokio::time::sleep(POLL).await;
        let polled = match caller.request(reqwest::Method::GET, format!("{base}/v1/runs/{}", view.id)).await {
            Ok(request) => read(request.send().await).await,
            Err(message) => Err(message),
        };
        match polled {
            Ok(next) => {
                view = next;
                failures = 0;
            }
            Err(message) if failures + 1 >= MAX_POLL_FAILURES => {
                return Outcome::Failed { message: format!("AgentCrew {}: run {}: {message}", task.crew, view.id) };
            }
            Err(_) => failures += 1,
        }
    }
}

/// Cancels a crew run; one that already finished or is unknown counts as stopped.
pub async fn cancel(client: &Client, caller: &Caller, namespace: &str, crew: &str, run_id: &str) {
    let Ok(base) = base_url(client, namespace, crew).await else { return };
    let sent = match caller.request(reqwest::Method::DELETE, format!("{base}/v1/runs/{run_id}")).await {
        Ok(request) => request.send().await.map_err(|e| e.to_string()),
        Err(message) => Err(message),
    };
    if let Err(error) = sent {
        tracing::warn!(crew, run = run_id, %error, "could not cancel the crew run");
    }
}

fn finished(view: &RunView) -> Option<Outcome> {
    let tokens = view.usage.as_ref().map(|u| u.total_tokens);
    match view.status.as_str() {
        "succeeded" => Some(Outcome::Succeeded { output: view.output.clone().unwrap_or_default(), tokens }),
        "queued" | "running" => None,
        other => {
            let why = view.error.as_ref().map(|e| format!("{}: {}", e.category, e.message)).unwrap_or_default();
            Some(Outcome::Failed { message: format!("crew run {} {other}: {why}", view.id) })
        }
    }
}

async fn read(response: Result<reqwest::Response, reqwest::Error>) -> Result<RunView, String> {
    let response =
        response.map_err(|e| if e.is_connect() { "the runtime is unreachable".into() } else { e.to_string() })?;
    let status = response.status();
    if !status.is_success() {
        let text: String = response.text().await.unwrap_or_default().chars().take(300).collect();
        return Err(format!("the runtime answered {status}: {text}"));
    }
    let body = response.bytes().await.map_err(|e| format!("reading the runtime's answer: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("the runtime's answer is not a run: {e}"))
}

/// The crew's run API by its Service's cluster IP, which works from inside and outside the
/// cluster network alike.
async fn base_url(client: &Client, namespace: &str, crew: &str) -> Result<String, String> {
    let name = object_name(crew);
    let service = Api::<Service>::namespaced(client.clone(), namespace)
        .get_opt(&name)
        .await
        .map_err(|e| format!("reading Service {name}: {e}"))?
        .ok_or_else(|| format!("AgentCrew {crew} has no runtime Service {name}"))?;
    let spec = service.spec.unwrap_or_default();
    let ip = spec.cluster_ip.filter(|ip| ip != "None").ok_or_else(|| format!("Service {name} has no cluster IP"))?;
    let port = spec.ports.iter().flatten().next().map_or(80, |p| p.port);
    Ok(if ip.contains(':') { format!("http://[{ip}]:{port}") } else { format!("http://{ip}:{port}") })
}
