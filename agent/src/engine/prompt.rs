//! The texts the agents see, after CrewAI's prompts, adapted to native tool calling.

use crate::config::MANAGER;
use crate::tools::delegation::Delegation;
use bizosaas_crds::crew_config::AgentConfig;

/// Separates earlier tasks' outputs in the context of a later task.
pub const CONTEXT_SEPARATOR: &str = "\n\n----------\n\n";

/// Sent on the last iteration of a tool loop.
pub const FINAL_ANSWER_NOW: &str = "You have used the tools as many times as you may for this task. Using what you \
     have found so far, give your best complete final answer now, without calling any tool.";

/// Sent when the model answered with nothing.
pub const EMPTY_ANSWER: &str = "Your last reply was empty. Give your complete final answer to the task now.";

/// The system message of an agent.
pub fn system(agent: &AgentConfig, has_tools: bool) -> String {
    let mut text = format!("You are {}.", agent.role.trim());
    if !agent.backstory.trim().is_empty() {
        text.push(' ');
        text.push_str(agent.backstory.trim());
    }
    text.push_str("\nYour personal goal is: ");
    text.push_str(agent.goal.trim());
    if has_tools {
        text.push_str(
            "\n\nYou may call the tools you are given when they help with the task. When you have everything you \
             need, reply with your final answer as plain text instead of calling a tool.",
        );
    }
    text
}

/// The user message that states a task.
pub fn task(description: &str, expected_output: &str, context: &str) -> String {
    let mut text = format!(
        "Current Task: {}\n\nThis is the expected criteria for your final answer: {}\nYou MUST return the actual \
         complete content as the final answer, not a summary.",
        description.trim(),
        expected_output.trim()
    );
    if !context.trim().is_empty() {
        text.push_str("\n\nThis is the context you're working with:\n");
        text.push_str(context.trim());
    }
    text.push_str("\n\nBegin! This is VERY important to you, give your best final answer.");
    text
}

/// What a coworker is asked when another agent delegates: (description, expected output).
/// The delegator's context goes in as the task's context.
pub fn delegated(d: &Delegation) -> (&str, &'static str) {
    (&d.request, "Your best answer to your coworker asking you this, accounting for the context shared.")
}

/// A note for the manager when the task names the agent that should do it.
pub fn assigned_to(agent: &str) -> String {
    format!("\n\nThis task is meant for your coworker {agent}: delegate it to them and check their result.")
}

/// The manager of a Hierarchical crew (CrewAI's manager agent).
pub fn manager_agent(max_iterations: u32) -> AgentConfig {
    AgentConfig {
        name: MANAGER.into(),
        role: "Crew Manager".into(),
        goal: "Manage the team to complete the task in the best way possible.".into(),
        backstory: "You are a seasoned manager with a knack for getting the best out of your team. You are also \
                    known for your ability to delegate work to the right people, and to ask the right questions \
                    to get the best out of your team. Even though you don't perform tasks by yourself, you have a \
                    lot of experience in the field, which allows you to properly evaluate the work of your team \
                    members. First make a short plan, then delegate each part to the most suitable coworker with \
                    all the context they need, check their results, and give the final answer yourself."
            .into(),
        tools: Vec::new(),
        allow_delegation: true,
        max_iterations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_prompt_carries_context_only_when_there_is_some() {
        let with = task("Write", "A post", "earlier output");
        assert!(
            with.contains("Current Task: Write") && with.contains("expected criteria for your final answer: A post")
        );
        assert!(with.contains("This is the context you're working with:\nearlier output"));
        assert!(!task("Write", "A post", " ").contains("context you're working with"));
    }
}
