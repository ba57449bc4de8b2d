//! The rendered crew: what the AgentCrew controller writes into the crew's ConfigMap
//! (`crew.json`) and the `bizosaas-agent` runtime reads. Templates are already resolved and
//! credentials are referenced by environment variable names, never included.

use crate::agent_crew::Process;
use serde::{Deserialize, Serialize};

/// File name of the rendered crew inside the ConfigMap and the mounted directory.
pub const CREW_FILE: &str = "crew.json";

/// Audience of the ServiceAccount tokens that callers of a crew's run API present.
pub const RUNTIME_AUDIENCE: &str = "bizosaas-agent";
/// Environment variable naming the platform's ServiceAccounts (`namespace/name`,
/// comma-separated: the operator's, the gateway's) to a runtime, which admits them besides the
/// ServiceAccounts of the crew's namespace.
pub const API_PLATFORM_ENV: &str = "BIZOSAAS_API_PLATFORM";

/// A crew ready to run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CrewConfig {
    /// AgentCrew name.
    pub name: String,
    /// Namespace of the AgentCrew (the tenant namespace).
    pub namespace: String,
    /// Tenant name; the `tenant_id` of memory rows and usage events.
    pub tenant: String,
    pub process: Process,
    /// Agents with templates resolved.
    pub agents: Vec<AgentConfig>,
    /// The model every agent uses.
    pub model: ModelConfig,
    /// The manager model of a Hierarchical crew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<ModelConfig>,
    /// Tokens one run may spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_run: Option<i64>,
    /// Tokens the crew may spend per calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_tokens: Option<i64>,
    /// Tokens the tenant's crews together may spend per calendar month (the Tenant's
    /// `quota.monthlyTokens`, from its plan or its override).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_monthly_tokens: Option<i64>,
    /// Long-term memory in the tenant database (`DATABASE_URL`).
    #[serde(default)]
    pub memory: bool,
    /// Integrations reachable through the `http_request` tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub integrations: Vec<IntegrationConfig>,
}

/// One agent, template resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    pub name: String,
    pub role: String,
    pub goal: String,
    #[serde(default)]
    pub backstory: String,
    /// Tool names: `http_request`, `memory_search`, `memory_save`.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Adds the delegation tools (`delegate_work`, `ask_question`).
    #[serde(default)]
    pub allow_delegation: bool,
    /// Bound of the LLM/tool loop for one task.
    pub max_iterations: u32,
}

/// An OpenAI-compatible chat-completions endpoint and model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelConfig {
    /// Base URL up to and including `/v1`, e.g. `https://openrouter.ai/api/v1`.
    pub base_url: String,
    /// Environment variable holding the API key (empty when the server needs none).
    pub api_key_env: String,
    /// Model name as the gateway knows it.
    pub model: String,
    /// Models tried in order when the first fails (sent as OpenRouter's `models`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i32>,
    /// True for OpenRouter: attribution headers and the `models` fallback list.
    #[serde(default)]
    pub openrouter: bool,
}

/// An Integration callable through `http_request`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationConfig {
    pub name: String,
    /// Base URL requests are made against; the tool only takes paths below it.
    pub base_url: String,
    /// Environment variable holding the credential, sent as `Authorization: Bearer`.
    pub credential_env: String,
}

/// The environment variable name for an Integration's credential, e.g.
/// `BIZOSAAS_INTEGRATION_OPENROUTER` for `openrouter`.
pub fn credential_env(integration: &str) -> String {
    let upper: String =
        integration.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("BIZOSAAS_INTEGRATION_{upper}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_env_names_are_shell_safe() {
        assert_eq!(credential_env("open-router.v2"), "BIZOSAAS_INTEGRATION_OPEN_ROUTER_V2");
    }
}
