//! The crew process, as in CrewAI:
//!
//! - **Sequential**: tasks run in order; every earlier task's output is context for the next.
//!   A task may name one of the crew's agents (and no other); a task without one goes to
//!   the crew's agents in turn, and a run of a single such task in a crew of several agents
//!   passes it through every agent in order (each sees the previous agent's output).
//! - **Hierarchical**: a manager (the crew's manager model) plans each task, delegates to the
//!   agents with `delegate_work` / `ask_question`, checks results and gives the answer.
//!
//! Each agent works in a tool loop ([`agent`]) bounded by its `maxIterations`; agents with
//! `allowDelegation` get the delegation tools too (up to [`EngineOptions::max_delegation_depth`]).

pub mod agent;
pub mod prompt;
pub mod task;

use crate::config::MANAGER;
use crate::ledger::TokenLedger;
use crate::llm::{ChatClient, LlmError};
use crate::metrics::Metrics;
use crate::secret::Redactor;
use crate::store::{RunErrorView, RunHandle, TaskOutput};
use crate::tools::http::HttpTool;
use crate::tools::memory::Memory;
use crate::usage::{BudgetError, MonthlyLedger, RunBudget};
use bizosaas_crds::agent_crew::Process;
use bizosaas_crds::crew_config::{AgentConfig, CrewConfig};
use std::sync::Arc;
use task::{RunRequest, Task};

/// Why a run stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunError {
    #[error("agent {agent}: {source}")]
    Llm { agent: String, source: LlmError },
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("agent {agent} reached maxIterations ({max}) without a final answer")]
    MaxIterations { agent: String, max: u32 },
    #[error("invalid task: {0}")]
    InvalidTask(String),
    /// A task names an agent the crew does not have: a runtime runs only its crew's agents.
    #[error("unknown agent {agent:?}: the crew's agents are {known}")]
    UnknownAgent { agent: String, known: String },
}

impl RunError {
    /// Stable category, shown in the run's error and used as a metric label.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Llm { source, .. } => source.category(),
            Self::Budget(b) => b.category(),
            Self::MaxIterations { .. } => "max_iterations",
            Self::InvalidTask(_) => "invalid_task",
            Self::UnknownAgent { .. } => "unknown_agent",
        }
    }

    pub fn view(&self) -> RunErrorView {
        RunErrorView { category: self.category().into(), message: self.to_string() }
    }
}

/// Tunables of the process.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// `maxIterations` of the manager of a Hierarchical crew.
    pub manager_max_iterations: u32,
    /// How deep delegation may nest: the manager (or a delegating agent) is depth 0; an agent
    /// at this depth gets no delegation tools.
    pub max_delegation_depth: u32,
    /// Characters of tool output returned to the model.
    pub tool_output_chars: usize,
    /// Characters of outputs and thoughts copied into events.
    pub event_text_chars: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { manager_max_iterations: 15, max_delegation_depth: 2, tool_output_chars: 16_000, event_text_chars: 4_000 }
    }
}

/// What a run will do: one step per task (or per agent, for a single unassigned task in a
/// Sequential crew), and the agents it may use.
#[derive(Clone, Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The crew's agents.
    pub agents: Vec<AgentConfig>,
}

#[derive(Clone, Debug)]
pub struct Step {
    pub task: Task,
    /// The agent doing the step (`manager` in a Hierarchical crew).
    pub agent: String,
}

impl Plan {
    pub fn agent(&self, name: &str) -> Option<&AgentConfig> {
        self.agents.iter().find(|a| a.name == name)
    }
}

/// Accounting sinks besides the run itself.
#[derive(Clone, Default)]
pub struct Accounting {
    pub metrics: Option<Arc<Metrics>>,
    /// The tenant database's budgets and `usage_events`, shared by every replica.
    pub ledger: Option<Arc<TokenLedger>>,
    /// The crew's month, counted in this process: only for a crew without a database.
    pub monthly: Option<Arc<MonthlyLedger>>,
}

/// Executes runs of one crew.
pub struct Engine {
    crew: Arc<CrewConfig>,
    llm: ChatClient,
    manager_llm: Option<ChatClient>,
    http: Option<HttpTool>,
    memory: Option<Memory>,
    accounting: Accounting,
    budget: RunBudget,
    redactor: Redactor,
    options: EngineOptions,
}

impl Engine {
    /// `manager_llm` is required for a Hierarchical crew (the config check ensures it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        crew: Arc<CrewConfig>,
        llm: ChatClient,
        manager_llm: Option<ChatClient>,
        http: Option<HttpTool>,
        memory: Option<Memory>,
        accounting: Accounting,
        redactor: Redactor,
        options: EngineOptions,
    ) -> Self {
        let budget = RunBudget { limit: crew.max_tokens_per_run.and_then(|t| u64::try_from(t).ok()) };
        Self {
            crew,
            llm,
            manager_llm,
            http: http.filter(|h| !h.is_empty()),
            memory,
            accounting,
            budget,
            redactor,
            options,
        }
    }

    pub fn crew(&self) -> &CrewConfig {
        &self.crew
    }

    /// Checks a request and decides the steps; errors are the caller's (HTTP 400).
    pub fn plan(&self, request: &RunRequest) -> Result<Plan, RunError> {
        let tasks = request.tasks().map_err(RunError::InvalidTask)?;
        // Only the crew's own agents: a catalog template that is not in the crew's spec is as
        // unknown as any other name (its tools and prompts were never reviewed for this crew).
        if let Some(name) =
            tasks.iter().filter_map(|t| t.agent.as_ref()).find(|n| !self.crew.agents.iter().any(|a| &a.name == *n))
        {
            return Err(RunError::UnknownAgent {
                agent: name.clone(),
                known: self.crew.agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        let agents = self.crew.agents.clone();
        let crew_agents: Vec<&str> = self.crew.agents.iter().map(|a| a.name.as_str()).collect();
        let steps = match self.crew.process {
            Process::Hierarchical => tasks.into_iter().map(|task| Step { task, agent: MANAGER.to_string() }).collect(),
            Process::Sequential if tasks.len() == 1 && tasks[0].agent.is_none() => {
                crew_agents.iter().map(|name| Step { task: tasks[0].clone(), agent: name.to_string() }).collect()
            }
            Process::Sequential => tasks
                .into_iter()
                .enumerate()
                .map(|(i, task)| {
                    let agent = task.agent.clone().unwrap_or_else(|| crew_agents[i % crew_agents.len()].to_string());
                    Step { task, agent }
                })
                .collect(),
        };
        Ok(Plan { steps, agents })
    }

    /// Runs a plan to its end, recording outputs and events on `run`.
    pub async fn execute(&self, run: &RunHandle, plan: &Plan) -> Result<(), RunError> {
        run.emit(crate::events::EventKind::RunStarted {
            process: format!("{:?}", self.crew.process),
            tasks: plan.steps.len(),
        });
        let mut outputs: Vec<String> = Vec::with_capacity(plan.steps.len());
        let manager = prompt::manager_agent(self.options.manager_max_iterations);
        for (index, step) in plan.steps.iter().enumerate() {
            run.emit(crate::events::EventKind::TaskStarted {
                task: index,
                agent: step.agent.clone(),
                description: crate::llm::client::clip(&step.task.description, self.options.event_text_chars),
            });
            let before = run.total_usage();
            let context = outputs.join(prompt::CONTEXT_SEPARATOR);
            let ctx = agent::Ctx { run, plan, task: index, depth: 0 };
            let output = if self.crew.process == Process::Hierarchical {
                let mut description = step.task.description.clone();
                if let Some(assigned) = &step.task.agent {
                    description.push_str(&prompt::assigned_to(assigned));
                }
                self.run_agent(&ctx, &manager, &description, &step.task.expected_output, &context).await?
            } else {
                let agent = plan.agent(&step.agent).expect("plan steps name agents of the plan");
                self.run_agent(&ctx, agent, &step.task.description, &step.task.expected_output, &context).await?
            };
            let usage = run.total_usage().since(&before);
            run.push_task(TaskOutput {
                index,
                agent: step.agent.clone(),
                description: step.task.description.clone(),
                output: output.clone(),
                usage,
            });
            run.emit(crate::events::EventKind::TaskFinished {
                task: index,
                agent: step.agent.clone(),
                output: crate::llm::client::clip(&output, self.options.event_text_chars),
                usage,
            });
            self.remember(run, index, &step.agent, &step.task.description, &output).await;
            outputs.push(output);
        }
        Ok(())
    }

    /// Long-term memory: with memory on, every finished task's output is kept in the tenant's
    /// `agent_memory`, so later runs find it with `memory_search`. A failed write costs the
    /// memory, not the run.
    async fn remember(&self, run: &RunHandle, task: usize, agent: &str, description: &str, output: &str) {
        let Some(memory) = &self.memory else { return };
        let metadata = serde_json::json!({
            "kind": "task_output",
            "run": run.id,
            "task": task,
            "description": crate::llm::client::clip(description, 500),
        });
        // Clipped by bytes' worth of characters: a character is at most 4 bytes.
        let content = crate::llm::client::clip(output, crate::tools::memory::MAX_CONTENT / 4 - 1);
        if let Err(e) = memory.save(agent, &content, &metadata).await {
            tracing::warn!(run = %run.id, task, error = %e, "could not keep the task's output in memory");
        }
    }

    /// The client an agent uses: the manager model for the manager of a Hierarchical crew.
    fn client_for(&self, agent: &AgentConfig) -> &ChatClient {
        match (&self.manager_llm, self.crew.process) {
            (Some(manager), Process::Hierarchical) if agent.name == MANAGER => manager,
            _ => &self.llm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ClientOptions, http_client};
    use serde_json::json;

    fn engine(process: Process) -> Engine {
        let mut crew = crate::config::tests::sample();
        crew.process = process;
        crew.manager = Some(crew.model.clone());
        let llm = ChatClient::new(http_client(), &crew.model, None, ClientOptions::default(), None).unwrap();
        Engine::new(
            Arc::new(crew),
            llm.clone(),
            Some(llm),
            None,
            None,
            Accounting::default(),
            Redactor::default(),
            EngineOptions::default(),
        )
    }

    fn request(v: serde_json::Value) -> RunRequest {
        serde_json::from_value(v).unwrap()
    }

    fn agents(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.agent.as_str()).collect()
    }

    #[test]
    fn sequential_plans() {
        let e = engine(Process::Sequential);
        // One unassigned task passes through every agent.
        assert_eq!(agents(&e.plan(&request(json!({"description": "d"}))).unwrap()), ["seo", "writer"]);
        // One assigned task runs once.
        assert_eq!(agents(&e.plan(&request(json!({"description": "d", "agent": "writer"}))).unwrap()), ["writer"]);
        // Unassigned tasks of a list take the agents in turn.
        let plan = e
            .plan(&request(
                json!({"tasks": [{"description": "a"}, {"description": "b"}, {"description": "c", "agent": "seo"}]}),
            ))
            .unwrap();
        assert_eq!(agents(&plan), ["seo", "writer", "seo"]);
        // Names outside the crew are refused, catalog templates included.
        for name in ["ceo", "copywriting"] {
            let err = e.plan(&request(json!({"description": "d", "agent": name}))).unwrap_err();
            assert_eq!(err.category(), "unknown_agent");
            assert_eq!(err.to_string(), format!("unknown agent {name:?}: the crew's agents are seo, writer"));
            let listed =
                request(json!({"tasks": [{"description": "a", "agent": "seo"}, {"description": "b", "agent": name}]}));
            assert_eq!(e.plan(&listed).unwrap_err().category(), "unknown_agent");
        }
    }

    #[test]
    fn hierarchical_plans_go_to_the_manager() {
        let e = engine(Process::Hierarchical);
        let plan = e.plan(&request(json!({"description": "d", "agent": "seo"}))).unwrap();
        assert_eq!(agents(&plan), [MANAGER]);
        assert_eq!(plan.agents.len(), 2);
    }
}
