//! Prometheus metrics of the runtime, served at `/metrics`. Labels are bounded: models and
//! agents come from the crew file (and the catalog), outcomes are stable error categories.

use crate::llm::error::RETRYABLE_CATEGORIES;
use crate::llm::types::Usage;
use bizosaas_crds::crew_config::CrewConfig;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
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

/// The tenant and crew this runtime serves: labels of the usage series, so that dashboards
/// and budget alerts can sum by tenant whatever the scrape configuration adds.
#[derive(Clone, Debug, Default)]
pub struct Owner {
    pub tenant: String,
    pub crew: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub tenant: String,
    pub crew: String,
    pub agent: String,
    pub model: String,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub tenant: String,
    pub crew: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: &'static str,
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
    pub cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    owner: Owner,
    pub tool_calls: Family<ToolLabels, Counter>,
    pub usage_write_errors: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry, owner: Owner) -> Self {
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
            cost: Family::default(),
            owner,
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
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info.get_or_create(&VersionLabels { version: env!("CARGO_PKG_VERSION") }).set(1);
        sub.register("build_info", "The runtime's version; always 1", build_info);
        sub.register("tokens", "Tokens used, by tenant, crew, agent, model and kind", metrics.tokens.clone());
        sub.register(
            "cost_usd",
            "Cost of the model calls as the gateway reported it, by tenant, crew and model",
            metrics.cost.clone(),
        );
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

    /// Creates, at zero, every series `crew` can produce whose labels are known before it
    /// runs: dashboards show 0 rather than no data, and an `increase()` over a counter born
    /// at its first event would miss that event.
    pub fn prepare(&self, crew: &CrewConfig) {
        let models: BTreeSet<&str> = std::iter::once(&crew.model)
            .chain(crew.manager.iter())
            .flat_map(|m| std::iter::once(m.model.as_str()).chain(m.fallbacks.iter().map(String::as_str)))
            .collect();
        let _ = self.runs.get_or_create(&OutcomeLabels { outcome: "succeeded".into() });
        let Owner { tenant, crew: crew_name } = &self.owner;
        for &model in &models {
            let _ = self.llm_requests.get_or_create(&ModelOutcomeLabels { model: model.into(), outcome: "ok" });
            let _ = self.llm_duration.get_or_create(&ModelLabels { model: model.into() });
            let _ = self.llm_fallbacks.get_or_create(&ModelLabels { model: model.into() });
            for outcome in RETRYABLE_CATEGORIES {
                let _ = self.llm_retries.get_or_create(&ModelOutcomeLabels { model: model.into(), outcome });
            }
            let cost = CostLabels { tenant: tenant.clone(), crew: crew_name.clone(), model: model.into() };
            let _ = self.cost.get_or_create(&cost);
            for agent in &crew.agents {
                for kind in ["prompt", "completion"] {
                    let _ = self.tokens.get_or_create(&TokenLabels {
                        tenant: tenant.clone(),
                        crew: crew_name.clone(),
                        agent: agent.name.clone(),
                        model: model.into(),
                        kind,
                    });
                }
            }
        }
        for tool in crew.agents.iter().flat_map(|a| &a.tools) {
            let _ = self.tool_calls.get_or_create(&ToolLabels { tool: tool.clone(), outcome: "ok" });
        }
    }

    /// Counts one model call's tokens, and its cost when the gateway reported one.
    pub fn usage(&self, agent: &str, model: &str, usage: &Usage) {
        let Owner { tenant, crew } = &self.owner;
        let labels = |kind| TokenLabels {
            tenant: tenant.clone(),
            crew: crew.clone(),
            agent: agent.into(),
            model: model.into(),
            kind,
        };
        self.tokens.get_or_create(&labels("prompt")).inc_by(usage.prompt_tokens);
        self.tokens.get_or_create(&labels("completion")).inc_by(usage.completion_tokens);
        if let Some(cost) = usage.cost.filter(|c| c.is_finite() && *c >= 0.0) {
            let labels = CostLabels { tenant: tenant.clone(), crew: crew.clone(), model: model.into() };
            self.cost.get_or_create(&labels).inc_by(cost);
        }
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
        let m = Metrics::new(&mut registry, Owner { tenant: "acme".into(), crew: "sales".into() });
        m.llm_request("m1", "ok", Duration::from_millis(3));
        m.usage("writer", "m1", &Usage { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15, cost: None });
        m.usage("writer", "m2", &Usage { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2, cost: Some(0.25) });
        m.run_finished("succeeded", Duration::from_secs(1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"bizosaas_agent_llm_requests_total{model="m1",outcome="ok"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"bizosaas_agent_tokens_total{tenant="acme",crew="sales",agent="writer",model="m1",kind="prompt"} 10"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"bizosaas_agent_cost_usd_total{tenant="acme",crew="sales",model="m2"} 0.25"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"bizosaas_agent_cost_usd_total{tenant="acme",crew="sales",model="m1"}"#),
            "no cost series for a model that reported none: {text}"
        );
        assert!(text.contains(&format!(r#"bizosaas_agent_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION"))));
        assert!(text.contains(r#"bizosaas_agent_runs_total{outcome="succeeded"} 1"#));
    }

    #[test]
    fn a_crews_series_exist_at_zero_before_it_runs() {
        let crew: CrewConfig = serde_json::from_value(serde_json::json!({
            "name": "sales", "namespace": "tenant-acme", "tenant": "acme", "process": "Sequential",
            "agents": [{"name": "writer", "role": "r", "goal": "g", "maxIterations": 1, "tools": ["http_request"]}],
            "model": {"baseUrl": "http://llm", "apiKeyEnv": "", "model": "m1", "fallbacks": ["m2"]},
        }))
        .unwrap();
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry, Owner { tenant: "acme".into(), crew: "sales".into() });
        m.prepare(&crew);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            r#"bizosaas_agent_runs_total{outcome="succeeded"} 0"#,
            r#"bizosaas_agent_llm_requests_total{model="m2",outcome="ok"} 0"#,
            r#"bizosaas_agent_llm_retries_total{model="m1",outcome="llm_rate_limited"} 0"#,
            r#"bizosaas_agent_llm_fallbacks_total{model="m1"} 0"#,
            r#"bizosaas_agent_tokens_total{tenant="acme",crew="sales",agent="writer",model="m2",kind="completion"} 0"#,
            r#"bizosaas_agent_cost_usd_total{tenant="acme",crew="sales",model="m1"} 0"#,
            r#"bizosaas_agent_tool_calls_total{tool="http_request",outcome="ok"} 0"#,
        ] {
            assert!(text.contains(expected), "{expected} missing in\n{text}");
        }
    }
}
