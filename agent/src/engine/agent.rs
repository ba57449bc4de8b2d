//! One agent working on one task: the loop of model calls and tool calls, bounded by
//! `maxIterations` (model calls per task; the last one may not call tools).

use super::{Engine, Plan, RunError, prompt};
use crate::config::tool_names::{ASK_QUESTION, DELEGATE_WORK, HTTP_REQUEST, MEMORY_SAVE, MEMORY_SEARCH};
use crate::events::EventKind;
use crate::ledger::{CallUsage, DEFAULT_COMPLETION_RESERVE};
use crate::llm::client::clip;
use crate::llm::{ChatInput, Completion, Message, ToolCall, ToolChoice, ToolDef};
use crate::store::RunHandle;
use crate::tools::delegation::{self, Coworker};
use crate::tools::memory::Memory;
use crate::tools::{ToolError, parse_arguments};
use crate::usage::{BudgetError, TokenUsage, estimate_tokens};
use bizosaas_crds::crew_config::AgentConfig;
use futures::future::BoxFuture;
use std::time::Instant;
use tracing::Instrument as _;

/// Where an agent works: the run, its plan, the task index and the delegation depth.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub run: &'a RunHandle,
    pub plan: &'a Plan,
    pub task: usize,
    pub depth: u32,
}

/// The tools offered to one agent.
struct Toolset {
    defs: Vec<ToolDef>,
    coworkers: Vec<Coworker>,
    /// Bytes of the definitions as JSON, for the prompt estimate.
    json_len: usize,
}

impl Toolset {
    fn offers(&self, name: &str) -> bool {
        self.defs.iter().any(|d| d.function.name == name)
    }
}

impl Engine {
    fn toolset(&self, ctx: &Ctx<'_>, agent: &AgentConfig) -> Toolset {
        let mut defs = Vec::new();
        for tool in &agent.tools {
            match tool.as_str() {
                HTTP_REQUEST => {
                    if let Some(http) = &self.http {
                        defs.push(http.spec());
                    }
                }
                MEMORY_SAVE if self.memory.is_some() => defs.push(Memory::save_spec()),
                MEMORY_SEARCH if self.memory.is_some() => defs.push(Memory::search_spec()),
                _ => {}
            }
        }
        let mut coworkers = Vec::new();
        if agent.allow_delegation && ctx.depth < self.options.max_delegation_depth {
            coworkers = ctx
                .plan
                .agents
                .iter()
                .filter(|a| a.name != agent.name)
                .map(|a| Coworker { name: a.name.clone(), role: a.role.clone() })
                .collect();
            if !coworkers.is_empty() {
                defs.extend(delegation::specs(&coworkers));
            }
        }
        let json_len = if defs.is_empty() { 0 } else { serde_json::to_vec(&defs).map_or(0, |v| v.len()) };
        Toolset { defs, coworkers, json_len }
    }

    /// Runs `agent` on a task until it gives a final answer.
    pub fn run_agent<'a>(
        &'a self,
        ctx: &'a Ctx<'a>,
        agent: &'a AgentConfig,
        description: &'a str,
        expected_output: &'a str,
        context: &'a str,
    ) -> BoxFuture<'a, Result<String, RunError>> {
        // One agent's work on a task (delegated work nests under the delegating tool call).
        let span = tracing::info_span!(
            "agent",
            otel.name = %format!("invoke_agent {}", agent.name),
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %agent.name,
            bizosaas.task.index = crate::telemetry::int(ctx.task),
            bizosaas.delegation.depth = i64::from(ctx.depth),
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let work = async move {
            let tools = self.toolset(ctx, agent);
            let mut messages = vec![
                Message::system(prompt::system(agent, !tools.defs.is_empty())),
                Message::user(prompt::task(description, expected_output, context)),
            ];
            let max = agent.max_iterations.max(1);
            for iteration in 1..=max {
                let last = iteration == max;
                if last && iteration > 1 && !tools.defs.is_empty() {
                    messages.push(Message::user(prompt::FINAL_ANSWER_NOW));
                }
                let choice = if last { ToolChoice::None } else { ToolChoice::Auto };
                let completion = self.call_model(ctx, agent, &messages, &tools, choice, iteration).await?;
                let calls: Vec<ToolCall> = if last { Vec::new() } else { completion.tool_calls };
                if !calls.is_empty() {
                    let thought = Some(completion.content).filter(|c| !c.trim().is_empty());
                    messages.push(Message::Assistant { content: thought, tool_calls: calls.clone() });
                    for call in &calls {
                        let result = self.call_tool(ctx, agent, &tools, call).await?;
                        messages.push(Message::tool(call.id.clone(), result));
                    }
                    continue;
                }
                let answer = completion.content.trim();
                if !answer.is_empty() {
                    return Ok(answer.to_string());
                }
                if !last {
                    messages.push(Message::Assistant { content: Some(String::new()), tool_calls: Vec::new() });
                    messages.push(Message::user(prompt::EMPTY_ANSWER));
                }
            }
            Err(RunError::MaxIterations { agent: agent.name.clone(), max })
        };
        Box::pin(async move {
            let result = work.instrument(span.clone()).await;
            if let Err(e) = &result {
                span.record("error.type", e.category());
                span.record("otel.status_code", "ERROR");
            }
            result
        })
    }

    /// One model call with the budget checks and the accounting around it.
    async fn call_model(
        &self,
        ctx: &Ctx<'_>,
        agent: &AgentConfig,
        messages: &[Message],
        tools: &Toolset,
        choice: ToolChoice,
        iteration: u32,
    ) -> Result<Completion, RunError> {
        if let Some(monthly) = &self.accounting.monthly {
            monthly.check()?;
        }
        let prompt_chars = messages.iter().map(Message::text_len).sum::<usize>() + tools.json_len;
        let used = ctx.run.total_usage().total_tokens;
        let prompt_estimate = estimate_tokens(prompt_chars);
        let cap = self.budget.before_call(used, prompt_estimate)?;
        let client = self.client_for(agent);
        // The most this call can spend is held against the tenant's and the crew's months.
        let completion_bound = match (client.max_tokens(), cap) {
            (Some(model), Some(cap)) => Some(model.min(cap)),
            (model, cap) => model.or(cap),
        };
        let reservation = match &self.accounting.ledger {
            Some(ledger) => {
                let most = prompt_estimate + completion_bound.map(u64::from).unwrap_or(DEFAULT_COMPLETION_RESERVE);
                ledger.reserve(most).await?
            }
            None => None,
        };
        let started = Instant::now();
        let input = ChatInput { messages, tools: &tools.defs, tool_choice: Some(choice), max_tokens_cap: cap };
        let completion = match client.chat(input).await {
            Ok(completion) => completion,
            Err(source) => {
                if let (Some(ledger), Some(reservation)) = (&self.accounting.ledger, reservation) {
                    ledger.release(reservation).await;
                }
                return Err(RunError::Llm { agent: agent.name.clone(), source });
            }
        };
        tracing::debug!(
            agent = %agent.name,
            task = ctx.task,
            iteration,
            model = %completion.model,
            tool_calls = completion.tool_calls.len(),
            prompt_tokens = completion.usage.prompt_tokens,
            completion_tokens = completion.usage.completion_tokens,
            "model call"
        );
        let total = ctx.run.add_usage(&agent.name, &completion.usage);
        let u = completion.usage;
        if let Some(m) = &self.accounting.metrics {
            m.usage(&agent.name, client.model(), &u);
        }
        if let Some(monthly) = &self.accounting.monthly {
            monthly.add(u.prompt_tokens + u.completion_tokens);
        }
        if let Some(ledger) = &self.accounting.ledger {
            let call = CallUsage { agent: &agent.name, model: &completion.model, run_id: &ctx.run.id, usage: &u };
            if let Err(e) = ledger.settle(reservation, call).await {
                // The call happened and its answer is used; its reservation expires on its own.
                tracing::warn!(error = %e, "could not record a model call's usage");
                if let Some(m) = &self.accounting.metrics {
                    m.usage_write_errors.inc();
                }
            }
        }
        let mut call_usage = TokenUsage::default();
        call_usage.add(&u);
        ctx.run.emit(EventKind::LlmCall {
            task: ctx.task,
            agent: agent.name.clone(),
            iteration,
            model: completion.model.clone(),
            usage: call_usage,
            tool_calls: completion.tool_calls.iter().map(|c| c.function.name.clone()).collect(),
            attempts: completion.attempts,
            duration_ms: started.elapsed().as_millis() as u64,
            thought: (!completion.tool_calls.is_empty() && !completion.content.trim().is_empty())
                .then(|| clip(&self.redactor.redact(&completion.content), self.options.event_text_chars)),
        });
        self.budget.after_call(total.total_tokens)?;
        // An answer cut off at the budget's cap would have exceeded the budget.
        let cap_binding = cap.is_some_and(|c| client.max_tokens().is_none_or(|m| c < m));
        if cap_binding && completion.finish_reason.as_deref() == Some("length") {
            return Err(BudgetError::RunCutOff {
                limit: self.budget.limit.unwrap_or_default(),
                used: total.total_tokens,
            }
            .into());
        }
        Ok(completion)
    }

    /// Executes one tool call. Tool errors become the result text; only run errors of a
    /// delegated agent (model failures, budget) stop the run.
    async fn call_tool(
        &self,
        ctx: &Ctx<'_>,
        agent: &AgentConfig,
        tools: &Toolset,
        call: &ToolCall,
    ) -> Result<String, RunError> {
        let name = call.function.name.as_str();
        // The tool's name and call id only: arguments and results may carry data and
        // credentials, and stay out of the trace.
        let span = tracing::info_span!(
            "tool",
            otel.name = %format!("execute_tool {name}"),
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = %name,
            gen_ai.tool.call.id = %call.id,
            gen_ai.tool.type = "function",
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let outcome = self.call_tool_in_span(ctx, agent, tools, call).instrument(span.clone()).await;
        match &outcome {
            Ok((false, _)) => {
                span.record("error.type", "tool_error");
                span.record("otel.status_code", "ERROR");
            }
            Err(e) => {
                span.record("error.type", e.category());
                span.record("otel.status_code", "ERROR");
            }
            Ok(_) => {}
        }
        outcome.map(|(_, text)| text)
    }

    async fn call_tool_in_span(
        &self,
        ctx: &Ctx<'_>,
        agent: &AgentConfig,
        tools: &Toolset,
        call: &ToolCall,
    ) -> Result<(bool, String), RunError> {
        let name = call.function.name.as_str();
        let parsed = parse_arguments(&call.function.arguments);
        ctx.run.emit(EventKind::ToolStarted {
            task: ctx.task,
            agent: agent.name.clone(),
            tool: name.to_string(),
            call_id: call.id.clone(),
            arguments: match &parsed {
                Ok(map) => serde_json::Value::Object(map.clone()),
                Err(_) => serde_json::Value::String(clip(&call.function.arguments, self.options.event_text_chars)),
            },
        });
        let result: Result<String, ToolError> = match parsed {
            Err(e) => Err(e),
            Ok(_) if !tools.offers(name) => Err(ToolError::UnknownTool(name.to_string())),
            Ok(args) => match name {
                HTTP_REQUEST => match &self.http {
                    Some(http) => http.call(&args).await,
                    None => Err(ToolError::UnknownTool(name.into())),
                },
                MEMORY_SAVE | MEMORY_SEARCH => match &self.memory {
                    Some(memory) if name == MEMORY_SAVE => memory.save_tool(&agent.name, &args).await,
                    Some(memory) => memory.search_tool(&args).await,
                    None => Err(ToolError::UnknownTool(name.into())),
                },
                DELEGATE_WORK | ASK_QUESTION => match delegation::parse(name, &args, &tools.coworkers) {
                    Err(e) => Err(e),
                    Ok(d) => self.delegate(ctx, agent, name, &d).await?,
                },
                _ => Err(ToolError::UnknownTool(name.into())),
            },
        };
        let (ok, text) = match result {
            Ok(text) => (true, clip(&self.redactor.redact(&text), self.options.tool_output_chars)),
            Err(e) => (false, format!("Error: {}", self.redactor.redact(&e.to_string()))),
        };
        tracing::debug!(agent = %agent.name, task = ctx.task, tool = name, ok, "tool call");
        if let Some(m) = &self.accounting.metrics {
            m.tool_call(name, if ok { "ok" } else { "error" });
        }
        ctx.run.emit(EventKind::ToolFinished {
            task: ctx.task,
            agent: agent.name.clone(),
            tool: name.to_string(),
            call_id: call.id.clone(),
            ok,
            output: clip(&text, self.options.event_text_chars),
        });
        Ok((ok, text))
    }

    /// Runs the coworker of a delegation one level deeper.
    async fn delegate(
        &self,
        ctx: &Ctx<'_>,
        from: &AgentConfig,
        tool: &str,
        d: &delegation::Delegation,
    ) -> Result<Result<String, ToolError>, RunError> {
        let coworker = ctx.plan.agent(&d.coworker).expect("delegation::parse only names agents of the plan");
        ctx.run.emit(EventKind::DelegationStarted {
            task: ctx.task,
            from: from.name.clone(),
            to: coworker.name.clone(),
            tool: tool.to_string(),
            request: clip(&d.request, self.options.event_text_chars),
        });
        let deeper = Ctx { depth: ctx.depth + 1, ..*ctx };
        let (description, expected) = prompt::delegated(d);
        let outcome = self.run_agent(&deeper, coworker, description, expected, &d.context).await;
        ctx.run.emit(EventKind::DelegationFinished {
            task: ctx.task,
            from: from.name.clone(),
            to: coworker.name.clone(),
            ok: outcome.is_ok(),
        });
        match outcome {
            Ok(answer) => Ok(Ok(answer)),
            // The coworker gave no answer: the delegator may try something else.
            Err(e @ RunError::MaxIterations { .. }) => {
                Ok(Err(ToolError::NotAllowed(format!("{} could not finish: {e}", coworker.name))))
            }
            Err(e) => Err(e),
        }
    }
}
