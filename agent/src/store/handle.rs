//! One run that this replica executes: its state, task outputs, usage and event log, and the
//! signal that stops it (a cancel, or the pod going away).

use super::{RunErrorView, RunStatus, RunView, StopReason, TaskOutput, final_output};
use crate::engine::task::RunRequest;
use crate::events::{Event, EventKind};
use crate::usage::{RunUsage, TokenUsage};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// Events kept per run; later ones (except the final event) are dropped and counted.
pub const MAX_EVENTS: usize = 10_000;

#[derive(Debug)]
struct RunState {
    status: RunStatus,
    started_at: Option<String>,
    finished_at: Option<String>,
    tasks: Vec<TaskOutput>,
    usage: RunUsage,
    error: Option<RunErrorView>,
    cancel_requested: bool,
}

#[derive(Debug, Default)]
struct EventLog {
    events: Vec<Event>,
    next_seq: u64,
    dropped: u64,
}

/// Progress signal for event subscribers: events recorded, and whether the run finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub events: u64,
    pub finished: bool,
}

/// One run.
#[derive(Debug)]
pub struct RunHandle {
    pub id: String,
    pub idempotency_key: Option<String>,
    pub request: RunRequest,
    created_at: String,
    state: Mutex<RunState>,
    log: Mutex<EventLog>,
    progress: watch::Sender<Progress>,
    stop: watch::Sender<Option<StopReason>>,
}

/// A new random run id.
pub fn new_run_id() -> String {
    format!("run-{:016x}", rand::random::<u64>())
}

impl RunHandle {
    /// A queued run, created now.
    pub fn new(id: String, idempotency_key: Option<String>, request: RunRequest) -> Self {
        Self {
            id,
            idempotency_key,
            request,
            created_at: crate::time::now(),
            state: Mutex::new(RunState {
                status: RunStatus::Queued,
                started_at: None,
                finished_at: None,
                tasks: Vec::new(),
                usage: RunUsage::default(),
                error: None,
                cancel_requested: false,
            }),
            log: Mutex::new(EventLog { next_seq: 1, ..Default::default() }),
            progress: watch::Sender::new(Progress { events: 0, finished: false }),
            stop: watch::Sender::new(None),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().expect("run state lock")
    }

    /// Records an event and wakes subscribers.
    pub fn emit(&self, kind: EventKind) {
        let finished = matches!(kind, EventKind::RunFinished { .. });
        let count = {
            let mut log = self.log.lock().expect("event log lock");
            if log.events.len() >= MAX_EVENTS && !finished {
                log.dropped += 1;
                return;
            }
            let seq = log.next_seq;
            log.next_seq += 1;
            log.events.push(Event { seq, time: crate::time::now(), kind });
            log.events.len() as u64
        };
        self.progress.send_modify(|p| {
            p.events = count;
            p.finished |= finished;
        });
    }

    /// Events with `seq > after`.
    pub fn events_after(&self, after: u64) -> Vec<Event> {
        let log = self.log.lock().expect("event log lock");
        let start = log.events.partition_point(|e| e.seq <= after);
        log.events[start..].to_vec()
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn status(&self) -> RunStatus {
        self.state().status
    }

    pub fn set_running(&self) {
        let mut s = self.state();
        s.status = RunStatus::Running;
        s.started_at = Some(crate::time::now());
    }

    /// Adds a call's usage; returns the run's total afterwards.
    pub fn add_usage(&self, agent: &str, usage: &crate::llm::Usage) -> TokenUsage {
        let mut s = self.state();
        s.usage.add(agent, usage);
        s.usage.total
    }

    pub fn usage(&self) -> RunUsage {
        self.state().usage.clone()
    }

    pub fn total_usage(&self) -> TokenUsage {
        self.state().usage.total
    }

    pub fn push_task(&self, output: TaskOutput) {
        self.state().tasks.push(output);
    }

    /// Finished tasks so far.
    pub fn task_count(&self) -> usize {
        self.state().tasks.len()
    }

    /// Asks the run to stop; the first reason wins. True when this call set it.
    pub fn request_stop(&self, reason: StopReason) -> bool {
        if reason == StopReason::Cancelled {
            self.state().cancel_requested = true;
        }
        self.stop.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(reason);
            true
        })
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        *self.stop.borrow()
    }

    /// Resolves once the run was asked to stop.
    pub async fn stopped(&self) -> StopReason {
        let mut rx = self.stop.subscribe();
        let reason = rx.wait_for(Option::is_some).await.map(|r| *r).ok().flatten();
        match reason {
            Some(reason) => reason,
            // The sender lives as long as `self`.
            None => std::future::pending().await,
        }
    }

    /// Marks the run finished now: failed with `error`, else succeeded.
    pub fn finish(&self, error: Option<RunErrorView>) {
        let status = if error.is_some() { RunStatus::Failed } else { RunStatus::Succeeded };
        self.finish_as(status, error, crate::time::now());
    }

    /// Marks the run finished with `status` and emits `run_finished`.
    pub fn finish_as(&self, status: RunStatus, error: Option<RunErrorView>, finished_at: String) {
        let usage = {
            let mut s = self.state();
            s.status = status;
            s.finished_at = Some(finished_at);
            s.error = error.clone();
            s.usage.clone()
        };
        self.emit(EventKind::RunFinished { status: status.as_str().into(), usage, error });
    }

    /// Waits until the run finished or `timeout` passed.
    pub async fn wait_finished(&self, timeout: Duration) {
        let mut rx = self.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|p| p.finished)).await;
    }

    pub fn view(&self) -> RunView {
        let events = self.log.lock().expect("event log lock").events.len() as u64;
        let s = self.state();
        RunView {
            id: self.id.clone(),
            status: s.status,
            idempotency_key: self.idempotency_key.clone(),
            request: self.request.clone(),
            created_at: self.created_at.clone(),
            started_at: s.started_at.clone(),
            finished_at: s.finished_at.clone(),
            tasks: s.tasks.clone(),
            output: final_output(s.status, &s.tasks),
            usage: s.usage.clone(),
            error: s.error.clone(),
            cancel_requested: s.cancel_requested,
            events: Some(events),
        }
    }

    /// The view the run will have once finished like this (written to the database before
    /// the run is marked finished here, so no replica sees it finished before it is stored).
    pub fn final_view(&self, status: RunStatus, error: Option<RunErrorView>, finished_at: &str) -> RunView {
        let mut v = self.view();
        v.status = status;
        v.output = final_output(status, &v.tasks);
        v.error = error;
        v.finished_at = Some(finished_at.to_string());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunHandle {
        RunHandle::new(new_run_id(), None, RunRequest { description: Some("d".into()), ..Default::default() })
    }

    #[tokio::test]
    async fn events_are_numbered_and_wake_subscribers() {
        let run = run();
        let mut rx = run.subscribe();
        run.emit(EventKind::RunStarted { process: "Sequential".into(), tasks: 1 });
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().events, 1);
        run.finish(Some(RunErrorView { category: "c".into(), message: "m".into() }));
        let events = run.events_after(0);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(run.events_after(1).len(), 1);
        assert!(rx.borrow_and_update().finished);
        let view = run.view();
        assert_eq!(view.status, RunStatus::Failed);
        assert_eq!(view.error.unwrap().category, "c");
    }

    #[tokio::test]
    async fn the_first_stop_reason_wins_and_a_cancel_shows() {
        let run = run();
        assert!(!run.view().cancel_requested);
        assert!(run.request_stop(StopReason::Cancelled));
        assert!(!run.request_stop(StopReason::Interrupted));
        assert_eq!(run.stopped().await, StopReason::Cancelled);
        assert!(run.view().cancel_requested);
        let json = serde_json::to_value(run.view()).unwrap();
        assert_eq!(json["cancelRequested"], true);
        assert_eq!(json["events"], 0);
    }

    #[test]
    fn the_final_view_is_the_view_after_finishing() {
        let run = run();
        run.push_task(TaskOutput {
            index: 0,
            agent: "a".into(),
            description: "d".into(),
            output: "done".into(),
            usage: TokenUsage::default(),
        });
        let planned = run.final_view(RunStatus::Succeeded, None, "2026-01-01T00:00:00.000Z");
        assert_eq!(run.status(), RunStatus::Queued, "only a view");
        run.finish_as(RunStatus::Succeeded, None, "2026-01-01T00:00:00.000Z".into());
        let actual = run.view();
        assert_eq!(
            (planned.status, planned.output, planned.finished_at),
            (actual.status, actual.output.clone(), actual.finished_at)
        );
        assert_eq!(actual.output.as_deref(), Some("done"));
    }
}
