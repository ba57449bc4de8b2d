//! `AgentCrew`: a team of LLM agents run by the `bizosaas-agent` runtime.

use crate::catalog::AgentTemplate;
use crate::common::Condition;
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A team of LLM agents that works on tasks together, as in CrewAI. The operator runs it as a
/// Deployment of the `bizosaas-agent` runtime in the tenant namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bizosaas.io",
    version = "v1alpha1",
    kind = "AgentCrew",
    namespaced,
    shortname = "crew",
    category = "bizosaas",
    status = "AgentCrewStatus",
    derive = "PartialEq",
    doc = "A team of LLM agents (CrewAI-style) run as a managed workload of the bizosaas-agent runtime.",
    printcolumn(name = "Process", type_ = "string", json_path = ".spec.process"),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model.name"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.process != 'Hierarchical' || has(self.manager)")
    .message("a Hierarchical crew needs spec.manager: the manager model plans and delegates"))]
#[x_kube(validation = Rule::new("self.process != 'Hierarchical' || self.agents.all(a, a.name != 'manager')")
    .message("in a Hierarchical crew no agent may be named manager: the manager's usage and events go by that name"))]
#[serde(rename_all = "camelCase")]
pub struct AgentCrewSpec {
    /// `Sequential` runs tasks in order and passes each output forward as context;
    /// `Hierarchical` lets a manager model plan the work and delegate to the agents.
    #[serde(default)]
    pub process: Process,

    /// The agents of the crew, each from a catalog `template` or described inline.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub agents: Vec<Agent>,

    /// The LLM every agent uses unless it names its own.
    pub model: ModelRef,

    /// The manager of a Hierarchical crew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<Manager>,

    /// Tools shared by the crew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<CrewTools>,

    /// Long-term memory in the tenant's PostgreSQL database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,

    /// Token limits; a run that would exceed them stops with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,

    /// Number of runtime pods. More than one adds a PodDisruptionBudget.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 20))]
    pub replicas: i32,

    /// Compute resources of each runtime pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_replicas() -> i32 {
    1
}

/// How a crew organises its work.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum Process {
    /// Tasks run one after another; each output is context for the next.
    #[default]
    Sequential,
    /// A manager plans, delegates to agents and checks their results.
    Hierarchical,
}

/// One agent of a crew.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.template) || (has(self.role) && has(self.goal))")
    .message("an agent needs either a catalog template or an inline role and goal"))]
#[x_kube(validation = Rule::new("!has(self.tools) || self.tools.all(t, t in ['http_request', 'memory_search', 'memory_save'])")
    .message("unknown tool: the runtime provides http_request, memory_search and memory_save"))]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// Name of the agent within the crew; tasks address agents by it.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$"))]
    pub name: String,
    /// A built-in specialist from the agent catalog (`bizosaas-operator catalog` lists them).
    /// Inline `role`, `goal`, `backstory` and `tools` override the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<AgentTemplate>,
    /// What the agent is, e.g. "Senior SEO strategist".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub role: Option<String>,
    /// What the agent is trying to achieve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub goal: Option<String>,
    /// Background that shapes the agent's behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub backstory: Option<String>,
    /// Tools the agent may call, e.g. `http_request`, `memory_search`, `memory_save`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub tools: Option<Vec<String>>,
    /// Lets the agent delegate work to and ask questions of its coworkers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_delegation: Option<bool>,
    /// Upper bound of LLM/tool iterations for one task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_iterations: Option<i32>,
}

/// An LLM served through an Integration (an OpenAI-compatible gateway such as OpenRouter).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRef {
    /// Name of an Integration in the same namespace that serves the model.
    #[schemars(length(min = 1, max = 253))]
    pub integration: String,
    /// Model name as the gateway knows it, e.g. `anthropic/claude-sonnet-4`.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Models tried in order when the first one fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub fallbacks: Vec<String>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
    /// Upper bound of tokens per completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_tokens: Option<i32>,
}

/// The manager of a Hierarchical crew.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Manager {
    /// The model that plans and delegates.
    pub model: ModelRef,
}

/// Tools shared by the whole crew.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CrewTools {
    /// Integrations the agents may call through the `http_request` tool. Credentials are
    /// injected by the runtime and never shown to the model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub integrations: Vec<String>,
}

/// Long-term memory settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// Gives the agents `memory_save` and `memory_search`, stored in the tenant's database
    /// under row-level security.
    #[serde(default)]
    pub enabled: bool,
}

/// Token limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Tokens one run may spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens_per_run: Option<i64>,
    /// Tokens the crew may spend per calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub monthly_tokens: Option<i64>,
}

/// Observed state of an AgentCrew.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentCrewStatus {
    /// Runtime pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// In-cluster address of the crew's run API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The agents after templates were resolved: `name (role)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// Tokens spent this month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_used_this_month: Option<i64>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and the reasons it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    /// The CRD's tool rule lists exactly the tools the runtime provides.
    #[test]
    fn the_tool_rule_names_every_runtime_tool() {
        let crd = serde_json::to_string(&super::AgentCrew::crd()).unwrap();
        let rule = crd.split("self.tools.all(t, t in [").nth(1).and_then(|r| r.split(']').next()).expect("the rule");
        let listed: Vec<String> = rule.split(',').map(|t| t.trim().trim_matches('\'').to_string()).collect();
        assert_eq!(listed, crate::catalog::TOOLS.map(String::from));
    }
}
