//! A stand-in for Lago's batch events API (`POST /api/v1/events/batch`) for the usage export
//! tests. It checks every request against Lago's documented schema and behaves as Lago does:
//! a batch is atomic (one invalid event refuses all of them and nothing is kept), an unknown
//! subscription is `422 subscription_not_found`, and a transaction id it already holds refuses
//! the whole batch with `422 value_already_exist`. A script of answers makes it fail on
//! purpose.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Events Lago takes in one batch request, as its API reference documents.
pub const LAGO_BATCH_LIMIT: usize = 100;

/// How the stand-in answers the next request.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// As Lago does.
    AsLago,
    /// 503 without looking at the batch.
    Unavailable,
    /// Ingests the batch, then answers 503, as when the answer is lost on the way back.
    IngestThenUnavailable,
}

/// What the stand-in was sent and holds.
#[derive(Clone)]
pub struct Lago {
    api_key: String,
    code: String,
    /// The subscriptions this Lago knows; events of any other are refused.
    subscriptions: BTreeSet<String>,
    /// Answers for the next requests; `AsLago` once it is empty.
    pub script: VecDeque<Answer>,
    /// Every ingested event by transaction id, and how often each was ingested.
    pub ingested: BTreeMap<String, (Value, u32)>,
    /// The transaction ids of every request, in order.
    pub requests: Vec<Vec<String>>,
    /// Requests that broke Lago's documented schema.
    pub violations: Vec<String>,
}

pub type Shared = Arc<Mutex<Lago>>;

impl Lago {
    /// A Lago that takes `api_key`, events of the billable metric `code`, and `subscriptions`.
    pub fn shared(api_key: &str, code: &str, subscriptions: &[&str]) -> Shared {
        Arc::new(Mutex::new(Lago {
            api_key: api_key.to_string(),
            code: code.to_string(),
            subscriptions: subscriptions.iter().map(|s| s.to_string()).collect(),
            script: VecDeque::new(),
            ingested: BTreeMap::new(),
            requests: Vec::new(),
            violations: Vec::new(),
        }))
    }

    /// Lago's view of a tenant: (events, tokens, micro-dollars) of what it ingested for it.
    pub fn totals(&self, tenant: &str) -> (usize, i64, i64) {
        let mine = self.events_of(tenant);
        let tokens = mine.iter().map(|e| e["properties"]["tokens"].as_i64().unwrap()).sum();
        let cost = mine.iter().filter_map(|e| e["properties"]["cost_usd"].as_str()).map(micros).sum();
        (mine.len(), tokens, cost)
    }

    /// The events ingested for `tenant`.
    pub fn events_of(&self, tenant: &str) -> Vec<&Value> {
        let prefix = format!("bizosaas:{tenant}:");
        self.ingested.iter().filter(|(id, _)| id.starts_with(&prefix)).map(|(_, (e, _))| e).collect()
    }

    /// Transaction ids ingested more than once (Lago would have billed them twice).
    pub fn ingested_twice(&self) -> Vec<&str> {
        self.ingested.iter().filter(|(_, (_, times))| *times > 1).map(|(id, _)| id.as_str()).collect()
    }

    /// What Lago's docs require of a batch request; the violations found.
    fn check(&self, headers: &HeaderMap, body: &Value) -> Vec<String> {
        let mut wrong = Vec::new();
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {}", self.api_key)) {
            wrong.push("no Bearer API key".to_string());
        }
        if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
            wrong.push("not application/json".to_string());
        }
        let Some(events) = body.get("events").and_then(Value::as_array) else {
            return [wrong, vec!["no events array".to_string()]].concat();
        };
        if events.is_empty() || events.len() > LAGO_BATCH_LIMIT {
            wrong.push(format!("{} events in one batch", events.len()));
        }
        let mut seen = BTreeSet::new();
        for (i, event) in events.iter().enumerate() {
            let text = |field: &str| event.get(field).and_then(Value::as_str).filter(|s| !s.is_empty());
            match text("transaction_id") {
                Some(id) if seen.insert(id.to_string()) => {}
                Some(id) => wrong.push(format!("transaction_id {id} twice in one batch")),
                None => wrong.push(format!("event {i} has no transaction_id")),
            }
            if text("external_subscription_id").is_none() || text("code") != Some(self.code.as_str()) {
                wrong.push(format!("event {i} lacks its subscription or code"));
            }
            if !event.get("timestamp").is_some_and(Value::is_i64) {
                wrong.push(format!("event {i}'s timestamp is not Unix seconds"));
            }
            let properties = event.get("properties").and_then(Value::as_object);
            let integer = |key: &str| properties.and_then(|p| p.get(key)).is_some_and(Value::is_i64);
            if !(integer("tokens") && integer("prompt_tokens") && integer("completion_tokens")) {
                wrong.push(format!("event {i}'s token counts are not integers"));
            }
            if properties.and_then(|p| p.get("cost_usd")).is_some_and(|c| !c.is_string()) {
                wrong.push(format!("event {i}'s cost is not a decimal string"));
            }
            if properties.is_some_and(|p| p.values().any(Value::is_null)) {
                wrong.push(format!("event {i} has a null property"));
            }
        }
        wrong
    }
}

async fn batch(State(lago): State<Shared>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let mut lago = lago.lock().unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let events = body["events"].as_array().cloned().unwrap_or_default();
    let ids: Vec<String> =
        events.iter().map(|e| e["transaction_id"].as_str().unwrap_or_default().to_string()).collect();
    lago.requests.push(ids.clone());
    let wrong = lago.check(&headers, &body);
    if !wrong.is_empty() {
        lago.violations.extend(wrong);
        return (StatusCode::BAD_REQUEST, json!({"status": 400, "error": "BadRequest"}).to_string());
    }
    let answer = lago.script.pop_front().unwrap_or(Answer::AsLago);
    if let Answer::Unavailable = answer {
        return (StatusCode::SERVICE_UNAVAILABLE, "<html>upstream unavailable</html>".into());
    }
    let mut details = serde_json::Map::new();
    for (i, event) in events.iter().enumerate() {
        let subscription = event["external_subscription_id"].as_str().unwrap();
        if !lago.subscriptions.contains(subscription) {
            details.insert(i.to_string(), json!({"external_subscription_id": ["subscription_not_found"]}));
        } else if lago.ingested.contains_key(&ids[i]) {
            details.insert(i.to_string(), json!({"transaction_id": ["value_already_exist"]}));
        }
    }
    if !details.is_empty() {
        let error = json!({"status": 422, "error": "Unprocessable Entity", "code": "validation_errors", "error_details": details});
        return (StatusCode::UNPROCESSABLE_ENTITY, error.to_string());
    }
    for (id, event) in ids.iter().zip(&events) {
        lago.ingested.entry(id.clone()).or_insert_with(|| (event.clone(), 0)).1 += 1;
    }
    match answer {
        Answer::IngestThenUnavailable => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
        _ => (StatusCode::OK, json!({"events": events}).to_string()),
    }
}

/// Starts the stand-in on `ip` and a free port; its base URL (without `/api/v1`).
pub async fn serve(lago: Shared, ip: IpAddr) -> String {
    let app = axum::Router::new().route("/api/v1/events/batch", axum::routing::post(batch)).with_state(lago);
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("the Lago stand-in cannot listen on {ip}: {e}"));
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// Micro-dollars of a decimal string with at most six decimals.
pub fn micros(decimal: &str) -> i64 {
    let (whole, fraction) = decimal.split_once('.').unwrap_or((decimal, ""));
    let fraction = format!("{fraction:0<6}");
    whole.parse::<i64>().unwrap() * 1_000_000 + fraction[..6].parse::<i64>().unwrap()
}
