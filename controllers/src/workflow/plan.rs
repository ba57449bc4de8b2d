//! The pure core of the WorkflowRun controller: given a run's snapshot, its recorded status
//! and the time, decide which steps start, which are skipped, which attempts timed out and
//! whether the run is over. Nothing here talks to a server; every timer is an absolute
//! timestamp read from the status, so a restarted operator decides the same.

use crate::duration;
use bizosaas_crds::workflow::{Attempt, RetryPolicy, RunPhase, StepStatus, WorkflowRunStatus, WorkflowSnapshot};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// Attempts kept per step in status; older ones are dropped (the numbers say how many ran).
pub const KEPT_ATTEMPTS: usize = 3;
/// Bytes of a step's output shown in its status; the whole output is in the outputs ConfigMap.
pub const PREVIEW_BYTES: usize = 512;
/// Longest message kept on an attempt or step.
const MAX_MESSAGE: usize = 256;

const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded { output: String, tokens: Option<i64> },
    Failed { message: String },
}

/// What one reconcile should do next.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Steps whose next attempt starts now, in workflow order.
    pub start: Vec<String>,
    /// Running steps whose attempt passed its timeout.
    pub timed_out: Vec<String>,
    /// Set when the run is over: its phase, reason and message.
    pub finish: Option<(RunPhase, &'static str, String)>,
    /// The earliest timer (retry, timeout, deadline) that needs a reconcile.
    pub wake_at: Option<Timestamp>,
}

/// Fresh status of every step of a run that just took its snapshot.
pub fn initial_steps(snapshot: &WorkflowSnapshot) -> Vec<StepStatus> {
    snapshot
        .steps
        .iter()
        .map(|s| StepStatus {
            name: s.name.clone(),
            phase: RunPhase::Pending,
            attempts: Vec::new(),
            next_attempt_at: None,
            output: None,
            output_bytes: None,
            message: None,
        })
        .collect()
}

/// Marks steps that can never run as Skipped (a dependency failed, was skipped or cancelled)
/// and plans the rest.
pub fn plan(snapshot: &WorkflowSnapshot, status: &mut WorkflowRunStatus, now: Timestamp, cancel: bool) -> Plan {
    let mut plan = Plan::default();
    if cancel {
        plan.finish = Some((RunPhase::Cancelled, "Cancelled", "spec.cancel is true: the run was cancelled".into()));
        return plan;
    }
    if let Some(deadline) = &status.deadline {
        if now >= deadline.0 {
            let message = format!("the run passed its deadline {}", deadline.0);
            plan.finish = Some((RunPhase::Failed, "DeadlineExceeded", message));
            return plan;
        }
        plan.wake_at = Some(deadline.0);
    }
    skip_unreachable(snapshot, &mut status.steps);

    let running = status.steps.iter().filter(|s| s.phase == RunPhase::Running).count();
    let mut free = (snapshot.parallelism.max(1) as usize).saturating_sub(running);
    for step in &snapshot.steps {
        let Some(state) = status.steps.iter().find(|s| s.name == step.name) else { continue };
        match state.phase {
            RunPhase::Running => {
                let started = state.attempts.last().and_then(|a| a.started_at.as_ref());
                if let (Some(timeout), Some(started)) = (step.timeout_seconds, started) {
                    let due = started.0 + SignedDuration::from_secs(timeout);
                    if now >= due {
                        plan.timed_out.push(step.name.clone());
                    } else {
                        plan.wake_at = earliest(plan.wake_at, due);
                    }
                }
            }
            RunPhase::Pending => {
                let deps_done = step.depends_on.iter().all(|d| phase_of(&status.steps, d) == Some(RunPhase::Succeeded));
                if !deps_done {
                    continue;
                }
                match state.next_attempt_at.as_ref() {
                    Some(at) if now < at.0 => plan.wake_at = earliest(plan.wake_at, at.0),
                    _ if free > 0 => {
                        plan.start.push(step.name.clone());
                        free -= 1;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if plan.start.is_empty() && status.steps.iter().all(|s| s.phase.is_finished()) {
        plan.wake_at = None;
        plan.finish = Some(match status.steps.iter().find(|s| s.phase != RunPhase::Succeeded) {
            None => (RunPhase::Succeeded, "Succeeded", format!("All {} steps succeeded", status.steps.len())),
            Some(_) => {
                let failed: Vec<&str> =
                    status.steps.iter().filter(|s| s.phase == RunPhase::Failed).map(|s| s.name.as_str()).collect();
                (RunPhase::Failed, "StepFailed", format!("Step {} failed", failed.join(", ")))
            }
        });
    }
    plan
}

/// Records a new attempt of `step` as Running, before its side effect starts. Returns it.
pub fn begin_attempt(status: &mut WorkflowRunStatus, step: &str, run_uid: &str, run: &str, now: Timestamp) -> Attempt {
    let state = step_mut(status, step);
    let number = state.attempts.last().map_or(1, |a| a.number + 1);
    let attempt = Attempt {
        number,
        name: super::names::attempt_object(run, step, number),
        idempotency_key: super::names::idempotency_key(run_uid, step, number),
        phase: RunPhase::Running,
        started_at: Some(Time(now)),
        finished_at: None,
        reference: None,
        tokens: None,
        message: None,
    };
    state.phase = RunPhase::Running;
    state.next_attempt_at = None;
    state.message = None;
    state.attempts.push(attempt.clone());
    if state.attempts.len() > KEPT_ATTEMPTS {
        state.attempts.remove(0);
    }
    attempt
}

/// Records how the current attempt of `step` ended: the step succeeds, waits for a retry at
/// an absolute time, or fails for good.
pub fn finish_attempt(
    status: &mut WorkflowRunStatus,
    retry: Option<&RetryPolicy>,
    step: &str,
    outcome: Outcome,
    now: Timestamp,
) {
    let state = step_mut(status, step);
    let Some(attempt) = state.attempts.last_mut() else { return };
    attempt.finished_at = Some(Time(now));
    match outcome {
        Outcome::Succeeded { output, tokens } => {
            attempt.phase = RunPhase::Succeeded;
            attempt.tokens = tokens;
            state.phase = RunPhase::Succeeded;
            state.output_bytes = Some(output.len() as i64);
            state.output = Some(preview(&output));
            state.message = None;
        }
        Outcome::Failed { message } => {
            let message = truncate(&message, MAX_MESSAGE);
            attempt.phase = RunPhase::Failed;
            attempt.message = Some(message.clone());
            let number = attempt.number;
            let limit = retry.map_or(0, |r| r.limit.max(0));
            if number <= limit {
                let wait = backoff(retry, number);
                let at = now + SignedDuration::try_from(wait).unwrap_or(SignedDuration::from_secs(300));
                state.phase = RunPhase::Pending;
                state.next_attempt_at = Some(Time(at));
                state.message =
                    Some(truncate(&format!("attempt {number} failed; retrying at {at}: {message}"), MAX_MESSAGE));
            } else {
                state.phase = RunPhase::Failed;
                state.message = Some(message);
            }
        }
    }
}

/// Ends the run: running attempts and steps are cancelled, pending steps skipped.
pub fn finish_run(status: &mut WorkflowRunStatus, phase: RunPhase, message: &str, now: Timestamp) {
    for step in &mut status.steps {
        match step.phase {
            RunPhase::Running => {
                step.phase = RunPhase::Cancelled;
                step.message = Some(message.to_string());
                if let Some(a) = step.attempts.last_mut().filter(|a| !a.phase.is_finished()) {
                    a.phase = RunPhase::Cancelled;
                    a.finished_at = Some(Time(now));
                }
            }
            RunPhase::Pending => {
                step.phase = RunPhase::Skipped;
                step.next_attempt_at = None;
                step.message = Some(message.to_string());
            }
            _ => {}
        }
    }
    status.phase = Some(phase);
    status.finished_at = Some(Time(now));
}

/// The wait after failed attempt `number`: `duration × factor^(number-1)`, at most
/// `maxDuration`.
pub fn backoff(retry: Option<&RetryPolicy>, number: i32) -> Duration {
    let backoff = retry.and_then(|r| r.backoff.as_ref());
    let first = backoff.and_then(|b| duration::parse(&b.duration)).unwrap_or(DEFAULT_BACKOFF);
    let factor = backoff.and_then(|b| b.factor).unwrap_or(2.0).max(1.0);
    let max = backoff.and_then(|b| b.max_duration.as_deref()).and_then(duration::parse).unwrap_or(DEFAULT_MAX_BACKOFF);
    let wait = first.as_secs_f64() * factor.powi((number - 1).clamp(0, 60));
    Duration::from_secs_f64(wait.min(max.as_secs_f64()))
}

/// The first [`PREVIEW_BYTES`] of an output, cut at a character boundary.
pub fn preview(output: &str) -> String {
    truncate(output, PREVIEW_BYTES)
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn skip_unreachable(snapshot: &WorkflowSnapshot, steps: &mut [StepStatus]) {
    loop {
        let mut changed = false;
        for step in &snapshot.steps {
            if phase_of(steps, &step.name) != Some(RunPhase::Pending) {
                continue;
            }
            let blocked = step.depends_on.iter().find(|d| {
                matches!(phase_of(steps, d), Some(RunPhase::Failed | RunPhase::Skipped | RunPhase::Cancelled))
            });
            if let Some(dep) = blocked {
                let why = match phase_of(steps, dep) {
                    Some(RunPhase::Failed) => format!("step {dep} failed"),
                    Some(RunPhase::Cancelled) => format!("step {dep} was cancelled"),
                    _ => format!("step {dep} was skipped"),
                };
                let state = step_mut_in(steps, &step.name);
                state.phase = RunPhase::Skipped;
                state.next_attempt_at = None;
                state.message = Some(why);
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

fn phase_of(steps: &[StepStatus], name: &str) -> Option<RunPhase> {
    steps.iter().find(|s| s.name == name).map(|s| s.phase)
}

fn step_mut<'a>(status: &'a mut WorkflowRunStatus, name: &str) -> &'a mut StepStatus {
    step_mut_in(&mut status.steps, name)
}

fn step_mut_in<'a>(steps: &'a mut [StepStatus], name: &str) -> &'a mut StepStatus {
    steps.iter_mut().find(|s| s.name == name).expect("every snapshot step has a status")
}

fn earliest(a: Option<Timestamp>, b: Timestamp) -> Option<Timestamp> {
    Some(a.map_or(b, |a| a.min(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bizosaas_crds::workflow::{Backoff, Step};

    fn step(name: &str, deps: &[&str]) -> Step {
        serde_json::from_value(serde_json::json!({
            "name": name, "dependsOn": deps,
            "http": {"integration": "hook", "path": "/"}
        }))
        .unwrap()
    }

    fn snapshot(steps: Vec<Step>, parallelism: i32, retry: Option<RetryPolicy>) -> WorkflowSnapshot {
        WorkflowSnapshot { generation: 1, parameters: vec![], retry, active_deadline_seconds: None, parallelism, steps }
    }

    fn started(snapshot: &WorkflowSnapshot) -> WorkflowRunStatus {
        WorkflowRunStatus { steps: initial_steps(snapshot), phase: Some(RunPhase::Running), ..Default::default() }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn ok(output: &str) -> Outcome {
        Outcome::Succeeded { output: output.into(), tokens: None }
    }

    #[test]
    fn independent_steps_start_together_within_the_parallelism() {
        let s = snapshot(vec![step("a", &[]), step("b", &[]), step("c", &[]), step("d", &["a"])], 2, None);
        let mut status = started(&s);
        let p = plan(&s, &mut status, t(0), false);
        assert_eq!(p.start, ["a", "b"]);
        begin_attempt(&mut status, "a", "uid", "run", t(0));
        begin_attempt(&mut status, "b", "uid", "run", t(0));
        assert!(plan(&s, &mut status, t(1), false).start.is_empty(), "both slots are taken");
        finish_attempt(&mut status, None, "a", ok("A"), t(2));
        assert_eq!(plan(&s, &mut status, t(2), false).start, ["c"], "c comes first in workflow order, then d");
    }

    #[test]
    fn a_failed_step_skips_its_dependents_transitively_and_fails_the_run() {
        let s = snapshot(vec![step("a", &[]), step("b", &["a"]), step("c", &["b"]), step("x", &[])], 4, None);
        let mut status = started(&s);
        begin_attempt(&mut status, "a", "uid", "run", t(0));
        begin_attempt(&mut status, "x", "uid", "run", t(0));
        finish_attempt(&mut status, None, "a", Outcome::Failed { message: "HTTP 500".into() }, t(1));
        finish_attempt(&mut status, None, "x", ok("X"), t(1));
        let p = plan(&s, &mut status, t(1), false);
        let phases: Vec<RunPhase> = status.steps.iter().map(|s| s.phase).collect();
        assert_eq!(phases, [RunPhase::Failed, RunPhase::Skipped, RunPhase::Skipped, RunPhase::Succeeded]);
        assert_eq!(status.steps[2].message.as_deref(), Some("step b was skipped"));
        assert_eq!(p.finish.map(|f| (f.0, f.2)), Some((RunPhase::Failed, "Step a failed".to_string())));
    }

    #[test]
    fn retries_wait_until_an_absolute_time_with_exponential_backoff() {
        let retry = RetryPolicy {
            limit: 2,
            backoff: Some(Backoff { duration: "10s".into(), factor: Some(3.0), max_duration: Some("20s".into()) }),
        };
        let s = snapshot(vec![step("a", &[])], 1, Some(retry.clone()));
        let mut status = started(&s);
        let first = begin_attempt(&mut status, "a", "uid", "run", t(0));
        assert_eq!((first.number, first.idempotency_key.as_str(), first.name.as_str()), (1, "uid/a/1", "run-a-1"));
        finish_attempt(&mut status, Some(&retry), "a", Outcome::Failed { message: "boom".into() }, t(5));
        assert_eq!(status.steps[0].phase, RunPhase::Pending);
        assert_eq!(status.steps[0].next_attempt_at.as_ref().map(|a| a.0), Some(t(15)));
        let waiting = plan(&s, &mut status, t(14), false);
        assert!(waiting.start.is_empty());
        assert_eq!(waiting.wake_at, Some(t(15)));
        assert_eq!(plan(&s, &mut status, t(15), false).start, ["a"]);
        assert_eq!(begin_attempt(&mut status, "a", "uid", "run", t(15)).number, 2);
        finish_attempt(&mut status, Some(&retry), "a", Outcome::Failed { message: "boom".into() }, t(16));
        assert_eq!(status.steps[0].next_attempt_at.as_ref().map(|a| a.0), Some(t(36)), "30s capped at 20s");
        begin_attempt(&mut status, "a", "uid", "run", t(36));
        finish_attempt(&mut status, Some(&retry), "a", Outcome::Failed { message: "boom".into() }, t(37));
        assert_eq!(status.steps[0].phase, RunPhase::Failed, "limit 2 means three attempts in all");
    }

    #[test]
    fn timeouts_and_deadlines_come_from_status_timestamps() {
        let mut a = step("a", &[]);
        a.timeout_seconds = Some(30);
        let s = snapshot(vec![a], 1, None);
        let mut status = started(&s);
        status.deadline = Some(Time(t(100)));
        begin_attempt(&mut status, "a", "uid", "run", t(0));
        let p = plan(&s, &mut status, t(10), false);
        assert_eq!((p.timed_out.len(), p.wake_at), (0, Some(t(30))));
        assert_eq!(plan(&s, &mut status, t(30), false).timed_out, ["a"]);
        let late = plan(&s, &mut status, t(100), false);
        assert_eq!(late.finish.map(|f| f.1), Some("DeadlineExceeded"));
        finish_run(&mut status, RunPhase::Failed, "deadline", t(100));
        assert_eq!(status.steps[0].phase, RunPhase::Cancelled);
        assert_eq!(status.steps[0].attempts[0].phase, RunPhase::Cancelled);
    }

    #[test]
    fn a_cancelled_run_finishes_and_a_finished_dag_succeeds() {
        let s = snapshot(vec![step("a", &[])], 1, None);
        let mut status = started(&s);
        assert_eq!(plan(&s, &mut status, t(0), true).finish.map(|f| f.0), Some(RunPhase::Cancelled));
        begin_attempt(&mut status, "a", "uid", "run", t(0));
        finish_attempt(&mut status, None, "a", ok(&"é".repeat(600)), t(1));
        assert_eq!(status.steps[0].output_bytes, Some(1200));
        assert!(status.steps[0].output.as_ref().unwrap().len() <= PREVIEW_BYTES + 3);
        assert_eq!(plan(&s, &mut status, t(1), false).finish.map(|f| f.0), Some(RunPhase::Succeeded));
    }

    #[test]
    fn a_32_step_run_at_every_limit_stays_well_under_the_object_size_limit() {
        use crate::workflow::snapshot::MAX_SNAPSHOT_BYTES;
        let name = |i: usize| format!("{i:02}{}", "s".repeat(61));
        let mut steps: Vec<Step> = (0..32).map(|i| step(&name(i), &[])).collect();
        // Bodies that fill the largest snapshot a run may take.
        let body = "b".repeat(MAX_SNAPSHOT_BYTES / 32 - 400);
        for s in &mut steps {
            s.http.as_mut().unwrap().body = Some(body.clone());
        }
        let retry = RetryPolicy { limit: 20, backoff: None };
        let s = snapshot(steps, 32, Some(retry.clone()));
        assert!(serde_json::to_vec(&s).unwrap().len() <= MAX_SNAPSHOT_BYTES);
        let mut status = started(&s);
        status.snapshot = Some(s.clone());
        let uid = "3f2a4b5c-6d7e-4f80-9a1b-2c3d4e5f6a7b";
        for i in 0..32 {
            for n in 0..10 {
                begin_attempt(&mut status, &name(i), uid, &"r".repeat(253), t(n));
                set_reference(&mut status, &name(i));
                finish_attempt(
                    &mut status,
                    Some(&retry),
                    &name(i),
                    Outcome::Failed { message: "m".repeat(5000) },
                    t(n),
                );
            }
            begin_attempt(&mut status, &name(i), uid, &"r".repeat(253), t(10));
            finish_attempt(&mut status, Some(&retry), &name(i), ok(&"o".repeat(100_000)), t(11));
        }
        let bytes = serde_json::to_vec(&status).unwrap().len();
        assert!(bytes < 192 * 1024, "a run's status is {bytes} bytes");
    }

    fn set_reference(status: &mut WorkflowRunStatus, step: &str) {
        let a = status.steps.iter_mut().find(|s| s.name == step).unwrap().attempts.last_mut().unwrap();
        a.reference = Some("run-0123456789abcdef".into());
    }

    #[test]
    fn only_the_latest_attempts_are_kept() {
        let retry = RetryPolicy { limit: 20, backoff: None };
        let s = snapshot(vec![step("a", &[])], 1, Some(retry.clone()));
        let mut status = started(&s);
        for i in 0..8 {
            begin_attempt(&mut status, "a", "uid", "run", t(i));
            finish_attempt(&mut status, Some(&retry), "a", Outcome::Failed { message: "x".repeat(2000) }, t(i));
        }
        let numbers: Vec<i32> = status.steps[0].attempts.iter().map(|a| a.number).collect();
        assert_eq!(numbers, [6, 7, 8]);
        assert!(status.steps[0].attempts[0].message.as_ref().unwrap().len() <= MAX_MESSAGE + 3);
        assert_eq!(backoff(Some(&retry), 1), DEFAULT_BACKOFF);
        assert_eq!(backoff(Some(&retry), 30), DEFAULT_MAX_BACKOFF);
    }
}
