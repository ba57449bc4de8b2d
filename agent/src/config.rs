//! The crew definition: `crew.json` as the AgentCrew controller renders it
//! ([`CrewConfig`]), checked, with the credentials it names resolved from the environment.

use crate::secret::Secret;
use bizosaas_crds::agent_crew::Process;
use bizosaas_crds::catalog;
use bizosaas_crds::crew_config::{CrewConfig, ModelConfig};
use reqwest::Url;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Name under which the manager of a Hierarchical crew appears in usage and events.
pub const MANAGER: &str = "manager";

/// Environment variable with the tenant database URL (the tenant's app role).
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

/// Tool names of the runtime.
pub mod tool_names {
    pub const HTTP_REQUEST: &str = "http_request";
    pub const MEMORY_SAVE: &str = "memory_save";
    pub const MEMORY_SEARCH: &str = "memory_search";
    pub const DELEGATE_WORK: &str = "delegate_work";
    pub const ASK_QUESTION: &str = "ask_question";
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the crew file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the crew file {path} is not a valid crew: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid crew: {0}")]
    Invalid(String),
    #[error("environment variable {var} ({purpose}) is not set")]
    MissingEnv { var: String, purpose: String },
}

impl ConfigError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Read { .. } => "config_read",
            Self::Parse { .. } => "config_parse",
            Self::Invalid(_) => "config_invalid",
            Self::MissingEnv { .. } => "config_env",
        }
    }
}

/// Reads and checks a crew file.
pub fn load(path: &Path) -> Result<CrewConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    let crew: CrewConfig =
        serde_json::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
    validate(&crew)?;
    Ok(crew)
}

/// Checks what the schema cannot: unique names, known tools, a manager for Hierarchical
/// crews, usable URLs.
pub fn validate(crew: &CrewConfig) -> Result<(), ConfigError> {
    let invalid = |m: String| Err(ConfigError::Invalid(m));
    if crew.name.is_empty() || crew.tenant.is_empty() {
        return invalid("name and tenant must not be empty".into());
    }
    if crew.agents.is_empty() {
        return invalid("the crew has no agents".into());
    }
    let mut names = BTreeSet::new();
    for agent in &crew.agents {
        if agent.name.is_empty() {
            return invalid("an agent has an empty name".into());
        }
        if !names.insert(agent.name.as_str()) {
            return invalid(format!("agent name {:?} appears twice", agent.name));
        }
        if agent.max_iterations == 0 {
            return invalid(format!("agent {:?}: maxIterations must be at least 1", agent.name));
        }
        if agent.role.trim().is_empty() || agent.goal.trim().is_empty() {
            return invalid(format!("agent {:?}: role and goal must not be empty", agent.name));
        }
        if let Some(tool) = agent.tools.iter().find(|t| !catalog::TOOLS.contains(&t.as_str())) {
            return invalid(format!(
                "agent {:?}: unknown tool {tool:?} (known: {})",
                agent.name,
                catalog::TOOLS.join(", ")
            ));
        }
    }
    validate_model("model", &crew.model)?;
    match (&crew.process, &crew.manager) {
        (Process::Hierarchical, None) => {
            return invalid("a Hierarchical crew needs a manager model".into());
        }
        (Process::Hierarchical, Some(manager)) => {
            validate_model("manager", manager)?;
            if names.contains(MANAGER) {
                return invalid(format!("in a Hierarchical crew no agent may be named {MANAGER:?}"));
            }
        }
        (Process::Sequential, Some(manager)) => validate_model("manager", manager)?,
        (Process::Sequential, None) => {}
    }
    for budget in [crew.max_tokens_per_run, crew.monthly_tokens].into_iter().flatten() {
        if budget <= 0 {
            return invalid("token budgets must be positive".into());
        }
    }
    let mut integrations = BTreeSet::new();
    for integration in &crew.integrations {
        if !integrations.insert(integration.name.as_str()) {
            return invalid(format!("integration {:?} appears twice", integration.name));
        }
        parse_http_url(&integration.base_url)
            .map_err(|m| ConfigError::Invalid(format!("integration {:?}: {m}", integration.name)))?;
        if integration.credential_env.is_empty() {
            return invalid(format!("integration {:?}: credentialEnv must not be empty", integration.name));
        }
    }
    Ok(())
}

fn validate_model(what: &str, model: &ModelConfig) -> Result<(), ConfigError> {
    if model.model.is_empty() {
        return Err(ConfigError::Invalid(format!("{what}: the model name must not be empty")));
    }
    parse_http_url(&model.base_url).map_err(|m| ConfigError::Invalid(format!("{what}: {m}")))?;
    if model.max_tokens.is_some_and(|t| t <= 0) {
        return Err(ConfigError::Invalid(format!("{what}: maxTokens must be positive")));
    }
    if model.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(ConfigError::Invalid(format!("{what}: temperature must be between 0 and 2")));
    }
    Ok(())
}

/// Parses an http(s) URL without user info (credentials never live in URLs here).
pub fn parse_http_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("base URL is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("base URL must be an http(s) URL with a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("base URL must not contain credentials".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("base URL must not have a query or fragment".into());
    }
    Ok(url)
}

/// Reads an environment variable named by the crew. An empty name means none is needed.
pub fn secret_from_env(
    var: &str,
    purpose: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    if var.is_empty() {
        return Ok(None);
    }
    match env(var) {
        Some(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
        _ => Err(ConfigError::MissingEnv { var: var.into(), purpose: purpose.into() }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bizosaas_crds::crew_config::IntegrationConfig;

    pub(crate) fn sample() -> CrewConfig {
        serde_json::from_value(serde_json::json!({
            "name": "growth-team",
            "namespace": "tenant-acme",
            "tenant": "acme",
            "process": "Sequential",
            "agents": [
                {"name": "seo", "role": "SEO", "goal": "rank", "tools": ["memory_search"], "maxIterations": 3},
                {"name": "writer", "role": "Writer", "goal": "write", "allowDelegation": true, "maxIterations": 5}
            ],
            "model": {"baseUrl": "https://gateway.example/api/v1", "apiKeyEnv": "KEY", "model": "m1", "openrouter": true},
        }))
        .unwrap()
    }

    #[test]
    fn the_sample_is_valid() {
        validate(&sample()).unwrap();
    }

    #[test]
    fn rejects_what_the_runtime_cannot_run() {
        type Mutation = Box<dyn Fn(&mut CrewConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("no agents", Box::new(|c| c.agents.clear())),
            ("appears twice", Box::new(|c| c.agents[1].name = "seo".into())),
            ("maxIterations", Box::new(|c| c.agents[0].max_iterations = 0)),
            ("unknown tool", Box::new(|c| c.agents[0].tools.push("shell".into()))),
            ("manager model", Box::new(|c| c.process = Process::Hierarchical)),
            (
                "named \"manager\"",
                Box::new(|c| {
                    c.process = Process::Hierarchical;
                    c.manager = Some(c.model.clone());
                    c.agents[0].name = "manager".into();
                }),
            ),
            ("not a URL", Box::new(|c| c.model.base_url = "gateway".into())),
            ("credentials", Box::new(|c| c.model.base_url = "https://u:p@gateway.example/v1".into())),
            ("budgets", Box::new(|c| c.max_tokens_per_run = Some(0))),
            (
                "credentialEnv",
                Box::new(|c| {
                    c.integrations.push(IntegrationConfig {
                        name: "w".into(),
                        base_url: "http://w.example".into(),
                        credential_env: String::new(),
                    })
                }),
            ),
        ];
        for (expected, mutate) in cases {
            let mut crew = sample();
            mutate(&mut crew);
            let err = validate(&crew).expect_err(expected).to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn missing_env_names_the_variable_not_a_value() {
        let env = |_: &str| None;
        let err = secret_from_env("OPENROUTER_KEY", "API key of model m1", &env).unwrap_err();
        assert_eq!(err.to_string(), "environment variable OPENROUTER_KEY (API key of model m1) is not set");
        assert!(secret_from_env("", "none", &env).unwrap().is_none());
    }
}
