//! Executes runs in the background, at most `concurrency` at a time, and keeps their rows in
//! the tenant database current (start, each finished task, end). A run stops early when asked
//! ([`RunHandle::request_stop`]): its future is dropped, which aborts the model request in
//! flight, so no further model calls are made.
//!
//! [`watch`] is the loop that heartbeats this replica's runs and picks up cancels asked for
//! on other replicas.

pub mod watch;

use crate::engine::{Engine, Plan};
use crate::metrics::Metrics;
use crate::store::{RunErrorView, RunHandle, RunRecords, RunStatus, StopReason};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch as signal};

/// The runs this replica executes right now, by id.
#[derive(Clone, Default)]
pub struct ActiveRuns(Arc<Mutex<HashMap<String, Arc<RunHandle>>>>);

impl ActiveRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<RunHandle>>> {
        self.0.lock().expect("active runs lock")
    }

    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<RunHandle>> {
        self.lock().get(id).cloned()
    }

    pub fn all(&self) -> Vec<Arc<RunHandle>> {
        self.lock().values().cloned().collect()
    }
}

/// How a run ended.
#[derive(Debug)]
enum Outcome {
    Done(Result<(), crate::engine::RunError>),
    Stopped(StopReason),
}

impl Outcome {
    fn status_and_error(self) -> (RunStatus, Option<RunErrorView>) {
        match self {
            Self::Done(Ok(())) => (RunStatus::Succeeded, None),
            Self::Done(Err(e)) => (RunStatus::Failed, Some(e.view())),
            Self::Stopped(reason) => (reason.status(), Some(reason.error())),
        }
    }
}

pub struct Executor {
    engine: Arc<Engine>,
    slots: Arc<Semaphore>,
    active: ActiveRuns,
    count: Arc<signal::Sender<usize>>,
    metrics: Option<Arc<Metrics>>,
    records: Option<Arc<RunRecords>>,
}

impl Executor {
    pub fn new(
        engine: Arc<Engine>,
        concurrency: usize,
        metrics: Option<Arc<Metrics>>,
        records: Option<Arc<RunRecords>>,
    ) -> Self {
        Self {
            engine,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            active: ActiveRuns::default(),
            count: Arc::new(signal::Sender::new(0)),
            metrics,
            records,
        }
    }

    /// The runs executing (or queued) here.
    pub fn active_runs(&self) -> ActiveRuns {
        self.active.clone()
    }

    /// Starts a run in the background.
    pub fn spawn(&self, run: Arc<RunHandle>, plan: Plan) {
        self.active.lock().insert(run.id.clone(), run.clone());
        self.count.send_modify(|n| *n += 1);
        if let Some(m) = &self.metrics {
            m.runs_active.inc();
        }
        let (engine, slots, records) = (self.engine.clone(), self.slots.clone(), self.records.clone());
        let guard = RunGuard {
            run: run.clone(),
            active: self.active.clone(),
            count: self.count.clone(),
            metrics: self.metrics.clone(),
            records: self.records.clone(),
            started: Instant::now(),
        };
        let crew = engine.crew();
        // The crew run; a child of the request's span, when there is one.
        let span = tracing::info_span!(
            "run",
            id = %run.id,
            otel.name = %format!("crew_run {}", crew.name),
            bizosaas.run.id = %run.id,
            bizosaas.crew.name = %crew.name,
            bizosaas.crew.namespace = %crew.namespace,
            bizosaas.crew.process = ?crew.process,
            bizosaas.run.tasks = crate::telemetry::int(plan.steps.len()),
            bizosaas.run.status = tracing::field::Empty,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let task = async move {
            let work = async {
                let _permit = slots.acquire_owned().await;
                run.set_running();
                if let Some(records) = &records
                    && let Err(e) = records.started(&run).await
                {
                    tracing::warn!(run = %run.id, error = %e, "could not record the run's start");
                }
                engine.execute(&run, &plan).await
            };
            let outcome = tokio::select! {
                biased;
                reason = run.stopped() => Outcome::Stopped(reason),
                result = work => Outcome::Done(result),
                _ = keep_progress(&run, records.as_deref()) => unreachable!("keep_progress never ends"),
            };
            match &outcome {
                Outcome::Done(Ok(())) => {
                    tracing::info!(run = %run.id, tokens = run.total_usage().total_tokens, "run succeeded")
                }
                Outcome::Done(Err(e)) => {
                    tracing::warn!(run = %run.id, category = e.category(), error = %e, "run failed")
                }
                Outcome::Stopped(reason) => tracing::info!(run = %run.id, ?reason, "run stopped"),
            }
            let (status, error) = outcome.status_and_error();
            let span = tracing::Span::current();
            let usage = run.total_usage();
            span.record("bizosaas.run.status", status.as_str());
            span.record("gen_ai.usage.input_tokens", crate::telemetry::int(usage.prompt_tokens));
            span.record("gen_ai.usage.output_tokens", crate::telemetry::int(usage.completion_tokens));
            if let Some(e) = &error {
                span.record("error.type", e.category.as_str());
                span.record("otel.status_code", "ERROR");
            }
            guard.finish(status, error).await;
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }

    /// Stops every run of this replica as interrupted (its pod is going away).
    pub fn interrupt_all(&self) -> usize {
        self.active.all().iter().filter(|r| r.request_stop(StopReason::Interrupted)).count()
    }

    /// Waits until no run is active, at most `timeout`; true when none is.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await.is_ok()
    }

    pub fn active(&self) -> usize {
        *self.count.borrow()
    }
}

/// Writes the tasks finished so far whenever one more finished. Never returns.
async fn keep_progress(run: &RunHandle, records: Option<&RunRecords>) {
    let Some(records) = records else { return std::future::pending().await };
    let mut rx = run.subscribe();
    let mut written = 0;
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        let tasks = run.task_count();
        if tasks > written {
            written = tasks;
            if let Err(e) = records.progress(run).await {
                tracing::warn!(run = %run.id, error = %e, "could not record the run's progress");
            }
        }
    }
}

/// Finishes a run exactly once, also when its task panicked.
struct RunGuard {
    run: Arc<RunHandle>,
    active: ActiveRuns,
    count: Arc<signal::Sender<usize>>,
    metrics: Option<Arc<Metrics>>,
    records: Option<Arc<RunRecords>>,
    started: Instant,
}

impl RunGuard {
    /// Stores the end first, then shows it here: no replica sees the run finished before its
    /// row says so, and a pod shutting down waits for the write.
    async fn finish(self, status: RunStatus, error: Option<RunErrorView>) {
        let finished_at = crate::time::now();
        let (mut status, mut error) = (status, error);
        if let Some(records) = &self.records {
            let view = self.run.final_view(status, error.clone(), &finished_at);
            match finish_with_retries(records, &view).await {
                Ok(true) => {}
                Ok(false) => {
                    // Another replica took the run for lost and finished its row: show that.
                    if let Ok(Some(stored)) = records.get(&self.run.id).await {
                        tracing::warn!(run = %self.run.id, status = stored.status.as_str(), "the run's row was finished elsewhere");
                        (status, error) = (stored.status, stored.error);
                    }
                }
                Err(e) => tracing::error!(run = %self.run.id, error = %e, "could not record the run's end"),
            }
        }
        let outcome = error.as_ref().map_or("succeeded".to_string(), |e| e.category.clone());
        self.run.finish_as(status, error, finished_at);
        if let Some(m) = &self.metrics {
            m.run_finished(&outcome, self.started.elapsed());
        }
        // Drop does the counting.
    }
}

async fn finish_with_retries(
    records: &RunRecords,
    view: &crate::store::RunView,
) -> Result<bool, crate::store::PersistError> {
    let mut delay = Duration::from_millis(200);
    for _ in 0..3 {
        match records.finish(view).await {
            Err(e) => {
                tracing::warn!(run = %view.id, error = %e, "recording the run's end failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            done => return done,
        }
    }
    records.finish(view).await
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if !self.run.status().is_finished() {
            let error = RunErrorView {
                category: "internal".into(),
                message: "the run stopped unexpectedly (internal error)".into(),
            };
            let finished_at = crate::time::now();
            if let Some(records) = self.records.clone()
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                let view = self.run.final_view(RunStatus::Failed, Some(error.clone()), &finished_at);
                rt.spawn(async move {
                    let _ = records.finish(&view).await;
                });
            }
            self.run.finish_as(RunStatus::Failed, Some(error), finished_at);
            if let Some(m) = &self.metrics {
                m.run_finished("internal", self.started.elapsed());
            }
        }
        if let Some(m) = &self.metrics {
            m.runs_active.dec();
        }
        self.active.lock().remove(&self.run.id);
        self.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_statuses() {
        assert_eq!(Outcome::Done(Ok(())).status_and_error(), (RunStatus::Succeeded, None));
        let (status, error) = Outcome::Stopped(StopReason::Cancelled).status_and_error();
        assert_eq!((status, error.unwrap().category.as_str()), (RunStatus::Cancelled, "cancelled"));
        let err = crate::engine::RunError::MaxIterations { agent: "a".into(), max: 1 };
        let (status, error) = Outcome::Done(Err(err)).status_and_error();
        assert_eq!((status, error.unwrap().category.as_str()), (RunStatus::Failed, "max_iterations"));
    }
}
