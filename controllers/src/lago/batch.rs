//! The body of Lago's batch events request (`POST /api/v1/events/batch`) and what its
//! answers mean. Pure: no I/O.

use crate::postgres::UsageEvent;
use serde_json::{Map, Value, json};

/// Events Lago takes in one batch request.
pub const BATCH_LIMIT: usize = 100;

/// How long a refusal message on the Tenant may get.
const MESSAGE_LIMIT: usize = 600;

/// The Lago `transaction_id` of a tenant's usage event: the same on every attempt, so Lago
/// ingests the event once however often it is sent.
pub fn transaction_id(tenant: &str, usage_event_id: i64) -> String {
    format!("bizosaas:{tenant}:{usage_event_id}")
}

/// The request body for `events` (at most [`BATCH_LIMIT`]): one Lago event per usage event,
/// in their order.
pub fn build(tenant: &str, subscription: &str, code: &str, events: &[UsageEvent]) -> Value {
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut properties = Map::new();
            properties.insert("tokens".into(), json!(e.prompt_tokens + e.completion_tokens));
            properties.insert("prompt_tokens".into(), json!(e.prompt_tokens));
            properties.insert("completion_tokens".into(), json!(e.completion_tokens));
            for (key, value) in [("model", &e.model), ("crew", &e.crew), ("agent", &e.agent), ("run_id", &e.run_id)] {
                if let Some(value) = value {
                    properties.insert(key.into(), json!(value));
                }
            }
            // A decimal string, as Lago takes amounts, so no float rounds the cost.
            if let Some(cost) = &e.cost_usd {
                properties.insert("cost_usd".into(), json!(cost));
            }
            json!({
                "transaction_id": transaction_id(tenant, e.id),
                "external_subscription_id": subscription,
                "code": code,
                "timestamp": e.timestamp,
                "properties": properties,
            })
        })
        .collect();
    json!({ "events": events })
}

/// What Lago's answer to a batch means for the export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: every event of the batch is ingested.
    Accepted,
    /// 422 naming only events whose `transaction_id` Lago already holds (a batch sent before
    /// whose acceptance was not recorded): their positions in the batch. Lago persisted
    /// nothing of this request; the others must be sent again.
    AlreadyHeld(Vec<usize>),
    /// Any other 4xx: Lago refuses the batch until something changes there or in the Tenant
    /// (an unknown subscription, a wrong API key). Lago's own words.
    Refused(String),
    /// 5xx, 408, 429 or no answer at all: worth retrying as it is.
    Unavailable(String),
}

/// Classifies Lago's answer (`status`, `body`) to a batch of `sent` events.
pub fn classify(status: u16, body: &[u8], sent: usize) -> Verdict {
    if (200..300).contains(&status) {
        return Verdict::Accepted;
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if status == 422
        && let Some(held) = parsed.as_ref().and_then(|b| already_held(b, sent))
    {
        return Verdict::AlreadyHeld(held);
    }
    let message = describe(status, parsed.as_ref(), body);
    if status >= 500 || status == 408 || status == 429 {
        Verdict::Unavailable(message)
    } else {
        Verdict::Refused(message)
    }
}

/// The positions of a 422's `error_details` when every one of them names only an existing
/// `transaction_id` (`value_already_exist`), and each is a position of the batch.
fn already_held(body: &Value, sent: usize) -> Option<Vec<usize>> {
    let details = body.get("error_details")?.as_object()?;
    let mut held = Vec::with_capacity(details.len());
    for (index, errors) in details {
        let index: usize = index.parse().ok().filter(|i| *i < sent)?;
        let errors = errors.as_object()?;
        let only_duplicate = errors.len() == 1
            && errors.get("transaction_id").and_then(Value::as_array).is_some_and(|codes| {
                !codes.is_empty() && codes.iter().all(|c| c.as_str() == Some("value_already_exist"))
            });
        if !only_duplicate {
            return None;
        }
        held.push(index);
    }
    held.sort_unstable();
    (!held.is_empty()).then_some(held)
}

/// `HTTP <status> <error> (<code>): <error_details>` from Lago's error body, or the start of
/// a body that is not one.
fn describe(status: u16, parsed: Option<&Value>, body: &[u8]) -> String {
    let mut message = format!("HTTP {status}");
    match parsed.and_then(Value::as_object) {
        Some(error) => {
            if let Some(text) = error.get("error").and_then(Value::as_str) {
                message.push_str(&format!(" {text}"));
            }
            if let Some(code) = error.get("code").and_then(Value::as_str) {
                message.push_str(&format!(" ({code})"));
            }
            if let Some(details) = error.get("error_details").filter(|d| !d.is_null()) {
                message.push_str(&format!(": {details}"));
            }
        }
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if !text.is_empty() {
                message.push_str(&format!(": {text}"));
            }
        }
    }
    truncate(message)
}

fn truncate(mut message: String) -> String {
    if message.len() > MESSAGE_LIMIT {
        let mut end = MESSAGE_LIMIT;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: i64, cost: Option<&str>) -> UsageEvent {
        UsageEvent {
            id,
            crew: Some("support".into()),
            agent: Some("triage".into()),
            model: Some("openai/gpt-4o-mini".into()),
            run_id: Some("run-1".into()),
            prompt_tokens: 120,
            completion_tokens: 30,
            cost_usd: cost.map(str::to_string),
            timestamp: 1_767_225_600,
        }
    }

    #[test]
    fn each_usage_event_is_one_lago_event_with_a_stable_transaction_id() {
        let body = build("acme", "sub_acme_1", "llm_tokens", &[event(7, Some("0.000123")), event(8, None)]);
        assert_eq!(
            body["events"][0],
            json!({
                "transaction_id": "bizosaas:acme:7",
                "external_subscription_id": "sub_acme_1",
                "code": "llm_tokens",
                "timestamp": 1_767_225_600,
                "properties": {
                    "tokens": 150, "prompt_tokens": 120, "completion_tokens": 30,
                    "model": "openai/gpt-4o-mini", "crew": "support", "agent": "triage", "run_id": "run-1",
                    "cost_usd": "0.000123",
                },
            })
        );
        assert!(body["events"][1]["properties"].get("cost_usd").is_none(), "no cost reported, none sent");
        assert_eq!(body, build("acme", "sub_acme_1", "llm_tokens", &[event(7, Some("0.000123")), event(8, None)]));
    }

    #[test]
    fn missing_attributes_are_left_out_not_null() {
        let bare = UsageEvent { crew: None, agent: None, model: None, run_id: None, ..event(1, None) };
        let properties = &build("acme", "s", "c", &[bare])["events"][0]["properties"];
        assert_eq!(properties, &json!({"tokens": 150, "prompt_tokens": 120, "completion_tokens": 30}));
    }

    #[test]
    fn answers_are_classified() {
        assert_eq!(classify(200, br#"{"events":[]}"#, 1), Verdict::Accepted);
        let unknown = br#"{"status":422,"error":"Unprocessable Entity","code":"validation_errors","error_details":{"0":{"external_subscription_id":["subscription_not_found"]}}}"#;
        let Verdict::Refused(message) = classify(422, unknown, 1) else { panic!("an unknown subscription is refused") };
        assert_eq!(
            message,
            r#"HTTP 422 Unprocessable Entity (validation_errors): {"0":{"external_subscription_id":["subscription_not_found"]}}"#
        );
        assert_eq!(
            classify(401, br#"{"status":401,"error":"Unauthorized"}"#, 1),
            Verdict::Refused("HTTP 401 Unauthorized".into())
        );
        assert!(
            matches!(classify(503, b"<html>\n upstream down </html>", 1), Verdict::Unavailable(m) if m == "HTTP 503: <html> upstream down </html>")
        );
        assert!(matches!(classify(429, b"", 1), Verdict::Unavailable(_)));
    }

    #[test]
    fn a_batch_lago_partly_holds_names_the_events_to_drop() {
        let held = br#"{"status":422,"error":"Unprocessable Entity","code":"validation_errors","error_details":{"2":{"transaction_id":["value_already_exist"]},"0":{"transaction_id":["value_already_exist"]}}}"#;
        assert_eq!(classify(422, held, 3), Verdict::AlreadyHeld(vec![0, 2]));
        // A position outside the batch, or another error next to the duplicate: refused.
        assert!(matches!(classify(422, held, 2), Verdict::Refused(_)));
        let mixed = br#"{"status":422,"error":"Unprocessable Entity","code":"validation_errors","error_details":{"0":{"transaction_id":["value_already_exist"]},"1":{"code":["value_is_mandatory"]}}}"#;
        assert!(matches!(classify(422, mixed, 2), Verdict::Refused(_)));
    }

    #[test]
    fn long_refusals_are_cut_on_a_character() {
        let body = format!(r#"{{"status":400,"error":"{}"}}"#, "é".repeat(1000));
        let Verdict::Refused(message) = classify(400, body.as_bytes(), 1) else { panic!() };
        assert!(message.len() <= MESSAGE_LIMIT + '…'.len_utf8() && message.ends_with('…'));
    }
}
