//! Resolving an AgentCrew into the runtime's crew file: templates filled in, models and
//! integrations turned into endpoints and credential variable names.

use bizosaas_crds::agent_crew::{Agent, AgentCrewSpec, ModelRef};
use bizosaas_crds::crew_config::{AgentConfig, CrewConfig, IntegrationConfig, ModelConfig, credential_env};
use bizosaas_crds::integration::IntegrationType;
use std::collections::BTreeMap;

/// Upper bound of tool iterations when an agent sets none (CrewAI's default is 25; a
/// tighter bound keeps token spend predictable).
pub const DEFAULT_MAX_ITERATIONS: u32 = 15;

/// What the renderer needs to know of an Integration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegrationRef {
    pub type_: IntegrationType,
    pub endpoint: String,
}

/// A reference the crew makes that cannot be satisfied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("Integration {0:?} does not exist in this namespace")]
    MissingIntegration(String),
}

/// Fills an agent in from its template; inline fields win.
pub fn resolve_agent(agent: &Agent) -> AgentConfig {
    let template = agent.template.map(|t| t.definition());
    let pick =
        |inline: &Option<String>, from: Option<&str>| inline.clone().or(from.map(str::to_string)).unwrap_or_default();
    AgentConfig {
        name: agent.name.clone(),
        role: pick(&agent.role, template.map(|d| d.role)),
        goal: pick(&agent.goal, template.map(|d| d.goal)),
        backstory: pick(&agent.backstory, template.map(|d| d.backstory)),
        tools: agent
            .tools
            .clone()
            .unwrap_or_else(|| template.map(|d| d.tools.iter().map(|t| t.to_string()).collect()).unwrap_or_default()),
        allow_delegation: agent.allow_delegation.unwrap_or(false),
        max_iterations: agent.max_iterations.map(|m| m as u32).unwrap_or(DEFAULT_MAX_ITERATIONS),
    }
}

fn model(model: &ModelRef, integrations: &BTreeMap<String, IntegrationRef>) -> Result<ModelConfig, RenderError> {
    let integration = integrations
        .get(&model.integration)
        .ok_or_else(|| RenderError::MissingIntegration(model.integration.clone()))?;
    Ok(ModelConfig {
        base_url: integration.endpoint.clone(),
        api_key_env: credential_env(&model.integration),
        model: model.name.clone(),
        fallbacks: model.fallbacks.clone(),
        temperature: model.temperature,
        max_tokens: model.max_tokens,
        openrouter: integration.type_ == IntegrationType::OpenRouter,
    })
}

/// Renders the crew file. `integrations` holds the Integrations of the crew's namespace.
pub fn crew_config(
    name: &str,
    namespace: &str,
    tenant: &str,
    spec: &AgentCrewSpec,
    integrations: &BTreeMap<String, IntegrationRef>,
) -> Result<CrewConfig, RenderError> {
    let tools = spec.tools.as_ref().map(|t| t.integrations.clone()).unwrap_or_default();
    let integration_configs = tools
        .iter()
        .map(|i| {
            let found = integrations.get(i).ok_or_else(|| RenderError::MissingIntegration(i.clone()))?;
            Ok(IntegrationConfig {
                name: i.clone(),
                base_url: found.endpoint.clone(),
                credential_env: credential_env(i),
            })
        })
        .collect::<Result<Vec<_>, RenderError>>()?;
    Ok(CrewConfig {
        name: name.to_string(),
        namespace: namespace.to_string(),
        tenant: tenant.to_string(),
        process: spec.process,
        agents: spec.agents.iter().map(resolve_agent).collect(),
        model: model(&spec.model, integrations)?,
        manager: spec.manager.as_ref().map(|m| model(&m.model, integrations)).transpose()?,
        max_tokens_per_run: spec.budget.as_ref().and_then(|b| b.max_tokens_per_run),
        monthly_tokens: spec.budget.as_ref().and_then(|b| b.monthly_tokens),
        // The Tenant's, filled in by the controller.
        tenant_monthly_tokens: None,
        memory: spec.memory.as_ref().is_some_and(|m| m.enabled),
        integrations: integration_configs,
    })
}

/// Integrations the crew references (model, manager, tools), deduplicated and sorted.
pub fn referenced_integrations(spec: &AgentCrewSpec) -> Vec<String> {
    let mut names: Vec<String> = std::iter::once(spec.model.integration.clone())
        .chain(spec.manager.as_ref().map(|m| m.model.integration.clone()))
        .chain(spec.tools.iter().flat_map(|t| t.integrations.clone()))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bizosaas_crds::AgentCrew;
    use bizosaas_crds::agent_crew::Process;

    pub const GROWTH_TEAM: &str = r#"
apiVersion: bizosaas.io/v1alpha1
kind: AgentCrew
metadata: {name: growth-team, namespace: tenant-acme, uid: 11111111-0000-4000-8000-000000000000}
spec:
  process: Hierarchical
  model: {integration: openrouter, name: anthropic/claude-sonnet-4, fallbacks: [openai/gpt-4o-mini], temperature: 0.3, maxTokens: 2048}
  manager: {model: {integration: openrouter, name: openai/gpt-4o}}
  agents:
  - {name: seo, template: seo-optimization}
  - {name: writer, template: copywriting, allowDelegation: true, maxIterations: 8}
  - name: brand-voice
    role: Brand voice guardian
    goal: Keep every text in Acme's voice
    backstory: Ten years editing Acme's catalogue.
    tools: [memory_search]
  tools:
    integrations: [wagtail]
  memory: {enabled: true}
  budget: {maxTokensPerRun: 50000, monthlyTokens: 1000000}
  replicas: 2
"#;

    pub fn crew() -> AgentCrew {
        serde_saphyr::from_str(GROWTH_TEAM).unwrap()
    }

    pub fn integrations() -> BTreeMap<String, IntegrationRef> {
        BTreeMap::from([
            (
                "openrouter".into(),
                IntegrationRef { type_: IntegrationType::OpenRouter, endpoint: "https://openrouter.ai/api/v1".into() },
            ),
            (
                "wagtail".into(),
                IntegrationRef { type_: IntegrationType::Wagtail, endpoint: "https://cms.example/api/v2".into() },
            ),
        ])
    }

    #[test]
    fn templates_fill_in_and_inline_fields_win() {
        let crew = crew();
        let config = crew_config("growth-team", "tenant-acme", "acme", &crew.spec, &integrations()).unwrap();
        assert_eq!(config.process, Process::Hierarchical);
        let seo = &config.agents[0];
        assert_eq!(seo.role, "Senior SEO strategist");
        assert_eq!(seo.tools, ["http_request", "memory_search", "memory_save"]);
        assert_eq!(seo.max_iterations, DEFAULT_MAX_ITERATIONS);
        let writer = &config.agents[1];
        assert!(writer.allow_delegation);
        assert_eq!(writer.max_iterations, 8);
        let inline = &config.agents[2];
        assert_eq!(inline.role, "Brand voice guardian");
        assert_eq!(inline.tools, ["memory_search"]);
    }

    #[test]
    fn models_and_tools_point_at_integrations_by_variable_name() {
        let config = crew_config("growth-team", "tenant-acme", "acme", &crew().spec, &integrations()).unwrap();
        assert_eq!(config.model.base_url, "https://openrouter.ai/api/v1");
        assert_eq!(config.model.api_key_env, "BIZOSAAS_INTEGRATION_OPENROUTER");
        assert!(config.model.openrouter);
        assert_eq!(config.model.fallbacks, ["openai/gpt-4o-mini"]);
        assert_eq!(config.manager.as_ref().unwrap().model, "openai/gpt-4o");
        assert_eq!(config.integrations[0].credential_env, "BIZOSAAS_INTEGRATION_WAGTAIL");
        assert_eq!(config.max_tokens_per_run, Some(50000));
        assert!(config.memory);
    }

    #[test]
    fn a_missing_integration_is_named() {
        let mut only_openrouter = integrations();
        only_openrouter.remove("wagtail");
        let err = crew_config("growth-team", "tenant-acme", "acme", &crew().spec, &only_openrouter).unwrap_err();
        assert_eq!(err, RenderError::MissingIntegration("wagtail".into()));
        assert_eq!(referenced_integrations(&crew().spec), ["openrouter", "wagtail"]);
    }
}
