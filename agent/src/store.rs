//! Runs kept in memory: a bounded map (the oldest finished runs make room), an index of
//! `Idempotency-Key`s, and per run its state, task outputs, usage and event log. Nothing
//! survives a restart.

use crate::engine::task::RunRequest;
use crate::events::{Event, EventKind};
use crate::usage::{RunUsage, TokenUsage};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Events kept per run; later ones (except the final event) are dropped and counted.
pub const MAX_EVENTS: usize = 10_000;

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl RunStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// The output of one finished task.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskOutput {
    pub index: usize,
    /// The agent that produced the output (`manager` in a Hierarchical crew).
    pub agent: String,
    pub description: String,
    pub output: String,
    /// Tokens spent on this task, delegations included.
    pub usage: TokenUsage,
}

/// Why a run failed.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RunErrorView {
    /// Stable: `llm_payment_required`, `budget_exceeded`, `max_iterations`, …
    pub category: String,
    pub message: String,
}

/// A run as `GET /v1/runs/{id}` shows it.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub id: String,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub request: RunRequest,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Outputs of the finished tasks, in order.
    pub tasks: Vec<TaskOutput>,
    /// The last task's output once the run succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub usage: RunUsage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RunErrorView>,
    /// Events recorded so far (see `/events`).
    pub events: u64,
}

#[derive(Debug)]
struct RunState {
    status: RunStatus,
    started_at: Option<String>,
    finished_at: Option<String>,
    tasks: Vec<TaskOutput>,
    usage: RunUsage,
    error: Option<RunErrorView>,
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
}

impl RunHandle {
    fn new(id: String, idempotency_key: Option<String>, request: RunRequest) -> Self {
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
            }),
            log: Mutex::new(EventLog { next_seq: 1, ..Default::default() }),
            progress: watch::Sender::new(Progress { events: 0, finished: false }),
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

    /// Marks the run finished and emits `run_finished`.
    pub fn finish(&self, error: Option<RunErrorView>) {
        let (status, usage) = {
            let mut s = self.state();
            s.status = if error.is_some() { RunStatus::Failed } else { RunStatus::Succeeded };
            s.finished_at = Some(crate::time::now());
            s.error = error.clone();
            (s.status, s.usage.clone())
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
            output: (s.status == RunStatus::Succeeded).then(|| s.tasks.last().map(|t| t.output.clone())).flatten(),
            usage: s.usage.clone(),
            error: s.error.clone(),
            events,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("the Idempotency-Key was already used for a different request")]
    KeyReused,
    #[error("{0} runs are queued or running; try again later")]
    Full(usize),
}

impl StoreError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::KeyReused => "idempotency_key_reused",
            Self::Full(_) => "too_many_runs",
        }
    }
}

/// What `create` did.
pub enum Created {
    New(Arc<RunHandle>),
    /// The same Idempotency-Key and request were seen before: the earlier run.
    Existing(Arc<RunHandle>),
}

#[derive(Default)]
struct Inner {
    runs: HashMap<String, Arc<RunHandle>>,
    /// Run ids, oldest first.
    order: VecDeque<String>,
    keys: HashMap<String, String>,
}

/// All runs of this process.
pub struct RunStore {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl RunStore {
    pub fn new(capacity: usize) -> Self {
        Self { inner: Mutex::default(), capacity: capacity.max(1) }
    }

    /// Creates a run, or returns the run created earlier with the same key and request.
    pub fn create(&self, request: RunRequest, key: Option<String>) -> Result<Created, StoreError> {
        let mut inner = self.inner.lock().expect("run store lock");
        if let Some(k) = &key
            && let Some(existing) = inner.keys.get(k).and_then(|id| inner.runs.get(id))
        {
            return if existing.request == request {
                Ok(Created::Existing(existing.clone()))
            } else {
                Err(StoreError::KeyReused)
            };
        }
        while inner.runs.len() >= self.capacity {
            let Some(pos) = inner.order.iter().position(|id| inner.runs[id].status().is_finished()) else {
                return Err(StoreError::Full(inner.runs.len()));
            };
            let id = inner.order.remove(pos).expect("position is in range");
            if let Some(old) = inner.runs.remove(&id)
                && let Some(k) = &old.idempotency_key
            {
                inner.keys.remove(k);
            }
        }
        let id = format!("run-{:016x}", rand::random::<u64>());
        let run = Arc::new(RunHandle::new(id.clone(), key.clone(), request));
        if let Some(k) = key {
            inner.keys.insert(k, id.clone());
        }
        inner.order.push_back(id.clone());
        inner.runs.insert(id, run.clone());
        Ok(Created::New(run))
    }

    pub fn get(&self, id: &str) -> Option<Arc<RunHandle>> {
        self.inner.lock().expect("run store lock").runs.get(id).cloned()
    }

    /// Runs, newest first.
    pub fn list(&self) -> Vec<Arc<RunHandle>> {
        let inner = self.inner.lock().expect("run store lock");
        inner.order.iter().rev().filter_map(|id| inner.runs.get(id).cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(d: &str) -> RunRequest {
        RunRequest { description: Some(d.into()), ..Default::default() }
    }

    #[test]
    fn idempotency_key_returns_the_same_run() {
        let store = RunStore::new(10);
        let Created::New(a) = store.create(request("x"), Some("k".into())).unwrap() else { panic!("new") };
        let Created::Existing(b) = store.create(request("x"), Some("k".into())).unwrap() else { panic!("existing") };
        assert_eq!(a.id, b.id);
        assert_eq!(store.create(request("y"), Some("k".into())).err(), Some(StoreError::KeyReused));
        assert!(matches!(store.create(request("x"), None).unwrap(), Created::New(_)));
    }

    #[test]
    fn evicts_the_oldest_finished_run_and_refuses_when_all_are_active() {
        let store = RunStore::new(2);
        let Created::New(a) = store.create(request("a"), Some("ka".into())).unwrap() else { panic!() };
        let Created::New(_b) = store.create(request("b"), None).unwrap() else { panic!() };
        assert_eq!(store.create(request("c"), None).err(), Some(StoreError::Full(2)));
        a.finish(None);
        let Created::New(c) = store.create(request("c"), None).unwrap() else { panic!() };
        assert!(store.get(&a.id).is_none());
        assert!(store.get(&c.id).is_some());
        // The evicted run's key is free again.
        assert!(matches!(store.create(request("other"), Some("ka".into())), Err(StoreError::Full(2))));
    }

    #[tokio::test]
    async fn events_are_numbered_and_wake_subscribers() {
        let store = RunStore::new(2);
        let Created::New(run) = store.create(request("a"), None).unwrap() else { panic!() };
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
}
