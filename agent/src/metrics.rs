//! Prometheus metrics of the runtime, served at `/metrics`. Labels are bounded: models and
//! agents come from the crew file (and the catalog), outcomes are stable error categories.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `succeeded` or the stable error category.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelOutcomeLabels {
    pub model: String,
    /// `ok` or the error category.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub agent: String,
    pub model: String,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub tool: String,
    /// `ok` or the tool error category.
    pub outcome: &'static str,
}

/// Every metric of the runtime, registered under the `bizosaas_agent` prefix.
pub struct Metrics {
    pub runs: Family<OutcomeLabels, Counter>,
    pub runs_active: Gauge,
    pub run_duration: Histogram,
    pub llm_requests: Family<ModelOutcomeLabels, Counter>,
    pub llm_duration: Family<ModelLabels, Histogram>,
    pub llm_retries: Family<ModelOutcomeLabels, Counter>,
    pub llm_fallbacks: Family<ModelLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub tool_calls: Family<ToolLabels, Counter>,
    pub usage_write_errors: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            runs: Family::default(),
            runs_active: Gauge::default(),
            run_duration: Histogram::new([0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]),
            llm_requests: Family::default(),
            llm_duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0])
            }),
            llm_retries: Family::default(),
            llm_fallbacks: Family::default(),
            tokens: Family::default(),
            tool_calls: Family::default(),
            usage_write_errors: Counter::default(),
        };
        let sub = registry.sub_registry_with_prefix("bizosaas_agent");
        sub.register("runs", "Finished runs by outcome (succeeded or error category)", metrics.runs.clone());
        sub.register("runs_active", "Runs queued or executing", metrics.runs_active.clone());
        sub.register("run_duration_seconds", "Time from a run's start to its end", metrics.run_duration.clone());
        sub.register("llm_requests", "HTTP requests to the model gateway by outcome", metrics.llm_requests.clone());
        sub.register("llm_request_duration_seconds", "Duration of one model request", metrics.llm_duration.clone());
        sub.register("llm_retries", "Model requests retried, by the error that caused it", metrics.llm_retries.clone());
        sub.register("llm_fallbacks", "Models given up for the next fallback", metrics.llm_fallbacks.clone());
        sub.register("tokens", "Tokens used, by agent, model and kind", metrics.tokens.clone());
        sub.register("tool_calls", "Tool calls by tool and outcome", metrics.tool_calls.clone());
        sub.register(
            "usage_write_errors",
            "Usage events that could not be written to the tenant database",
            metrics.usage_write_errors.clone(),
        );
        metrics
    }

    pub fn llm_request(&self, model: &str, outcome: &'static str, took: Duration) {
        self.llm_requests.get_or_create(&ModelOutcomeLabels { model: model.into(), outcome }).inc();
        self.llm_duration.get_or_create(&ModelLabels { model: model.into() }).observe(took.as_secs_f64());
    }

    pub fn llm_retry(&self, model: &str, reason: &'static str) {
        self.llm_retries.get_or_create(&ModelOutcomeLabels { model: model.into(), outcome: reason }).inc();
    }

    pub fn llm_fallback(&self, model: &str) {
        self.llm_fallbacks.get_or_create(&ModelLabels { model: model.into() }).inc();
    }

    pub fn tokens(&self, agent: &str, model: &str, prompt: u64, completion: u64) {
        let labels = |kind| TokenLabels { agent: agent.into(), model: model.into(), kind };
        self.tokens.get_or_create(&labels("prompt")).inc_by(prompt);
        self.tokens.get_or_create(&labels("completion")).inc_by(completion);
    }

    pub fn tool_call(&self, tool: &str, outcome: &'static str) {
        self.tool_calls.get_or_create(&ToolLabels { tool: tool.into(), outcome }).inc();
    }

    pub fn run_finished(&self, outcome: &str, took: Duration) {
        self.runs.get_or_create(&OutcomeLabels { outcome: outcome.into() }).inc();
        self.run_duration.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_runtime_metrics() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.llm_request("m1", "ok", Duration::from_millis(3));
        m.tokens("writer", "m1", 10, 5);
        m.run_finished("succeeded", Duration::from_secs(1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"bizosaas_agent_llm_requests_total{model="m1",outcome="ok"} 1"#), "{text}");
        assert!(text.contains(r#"bizosaas_agent_tokens_total{agent="writer",model="m1",kind="prompt"} 10"#));
        assert!(text.contains(r#"bizosaas_agent_runs_total{outcome="succeeded"} 1"#));
    }
}
