//! The runs of the crew as the API sees them: the live runs of this replica from memory, the
//! others (other replicas', earlier pods', evicted ones) from the tenant database when there
//! is one.

use super::persist::{Inserted, PersistError, RunRecords, StoredRun};
use super::{Created, RunHandle, RunStatus, RunStore, RunSummary, RunView, StopReason, StoreError, handle::new_run_id};
use crate::engine::task::RunRequest;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Persist(#[from] PersistError),
}

impl RunsError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Store(e) => e.category(),
            Self::Persist(e) => e.category(),
        }
    }
}

/// A run found by id or key.
#[derive(Clone, Debug)]
pub enum Found {
    /// Executed (or being executed) by this replica.
    Live(Arc<RunHandle>),
    /// Read from the tenant database.
    Stored(Box<StoredRun>),
}

impl Found {
    pub fn view(&self) -> RunView {
        match self {
            Self::Live(run) => run.view(),
            Self::Stored(run) => run.view(),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Live(run) => &run.id,
            Self::Stored(run) => &run.id,
        }
    }

    pub fn status(&self) -> RunStatus {
        match self {
            Self::Live(run) => run.status(),
            Self::Stored(run) => run.status,
        }
    }

    fn is_finished(&self) -> bool {
        self.status().is_finished()
    }
}

/// What `create` did.
pub enum Admitted {
    /// A new run, to be executed here.
    New(Arc<RunHandle>),
    /// The Idempotency-Key's earlier run with the same request; not executed again.
    Replayed(Found),
}

/// What `cancel` did.
pub enum CancelOutcome {
    /// The run is asked to stop (here at once, on another replica within its poll interval).
    Accepted(Found),
    /// Nothing left to stop: the run ended with this status.
    AlreadyFinished(RunStatus),
    Unknown,
}

/// Memory plus, with a tenant database, its `agent_runs` rows.
pub struct Runs {
    cache: Arc<RunStore>,
    records: Option<Arc<RunRecords>>,
    /// Most runs `GET /v1/runs` lists.
    list_limit: usize,
}

impl Runs {
    pub fn new(cache: Arc<RunStore>, records: Option<Arc<RunRecords>>, list_limit: usize) -> Self {
        Self { cache, records, list_limit: list_limit.max(1) }
    }

    pub fn records(&self) -> Option<&Arc<RunRecords>> {
        self.records.as_ref()
    }

    pub fn cache(&self) -> &Arc<RunStore> {
        &self.cache
    }

    /// Creates a run, or finds the earlier run of its Idempotency-Key (on any replica).
    pub async fn create(&self, request: RunRequest, key: Option<String>) -> Result<Admitted, RunsError> {
        let Some(records) = &self.records else {
            return Ok(match self.cache.create(request, key)? {
                Created::New(run) => Admitted::New(run),
                Created::Existing(run) => Admitted::Replayed(Found::Live(run)),
            });
        };
        if let Err(full) = self.cache.check_room() {
            // No room for a new run here, but a retry of an earlier one is still answered.
            return match key.as_deref() {
                Some(k) => match records.by_key(k, &request).await? {
                    Some((stored, true)) => Ok(Admitted::Replayed(self.prefer_live(stored))),
                    Some((_, false)) => Err(StoreError::KeyReused.into()),
                    None => Err(full.into()),
                },
                None => Err(full.into()),
            };
        }
        let run = Arc::new(RunHandle::new(new_run_id(), key, request));
        match records.insert(&run).await? {
            Inserted::New => {
                self.cache.admit(run.clone());
                Ok(Admitted::New(run))
            }
            Inserted::Existing { same_request: false, .. } => Err(StoreError::KeyReused.into()),
            Inserted::Existing { run: stored, .. } => Ok(Admitted::Replayed(self.prefer_live(*stored))),
        }
    }

    /// The live handle when this replica executes the run, else the row.
    fn prefer_live(&self, stored: StoredRun) -> Found {
        match self.cache.get(&stored.id) {
            Some(live) => Found::Live(live),
            None => Found::Stored(Box::new(stored)),
        }
    }

    pub async fn find(&self, id: &str) -> Result<Option<Found>, RunsError> {
        if let Some(run) = self.cache.get(id) {
            return Ok(Some(Found::Live(run)));
        }
        match &self.records {
            Some(records) => Ok(records.get(id).await?.map(|r| Found::Stored(Box::new(r)))),
            None => Ok(None),
        }
    }

    /// Waits until the run finished or `timeout` passed; a run of another replica is polled.
    pub async fn wait(&self, found: Found, timeout: Duration) -> Result<Found, RunsError> {
        let (records, mut current) = match (&self.records, found) {
            (_, Found::Live(run)) => {
                run.wait_finished(timeout).await;
                return Ok(Found::Live(run));
            }
            (None, stored) => return Ok(stored),
            (Some(records), stored) => (records, stored),
        };
        let poll = records.timing().cancel_poll.min(Duration::from_millis(250));
        let deadline = Instant::now() + timeout;
        while !current.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
            match self.find(current.id()).await? {
                Some(next) => current = next,
                None => break,
            }
        }
        Ok(current)
    }

    /// Stops a queued or running run: at once when it runs here, else through its row's
    /// `cancel_requested`, which the executing replica polls.
    pub async fn cancel(&self, id: &str) -> Result<CancelOutcome, RunsError> {
        let Some(found) = self.find(id).await? else { return Ok(CancelOutcome::Unknown) };
        if found.is_finished() {
            return Ok(CancelOutcome::AlreadyFinished(found.status()));
        }
        if let Found::Live(run) = &found {
            run.request_stop(StopReason::Cancelled);
            if let Some(records) = &self.records
                && let Err(e) = records.request_cancel(id).await
            {
                tracing::warn!(run = %id, error = %e, "could not record the cancel; the run stops here anyway");
            }
            return Ok(CancelOutcome::Accepted(found));
        }
        let Some(records) = &self.records else { return Ok(CancelOutcome::Unknown) };
        let asked = records.request_cancel(id).await?;
        // Read again: the view shows the cancel (perhaps done already), or that the run
        // finished (or went stale) between the read and the update.
        Ok(match self.find(id).await? {
            Some(f) if asked => CancelOutcome::Accepted(f),
            Some(f) => CancelOutcome::AlreadyFinished(f.status()),
            None => CancelOutcome::Unknown,
        })
    }

    /// The newest runs, newest first: live views for the runs of this replica.
    pub async fn list(&self) -> Result<Vec<RunSummary>, RunsError> {
        let Some(records) = &self.records else {
            return Ok(self.cache.list().iter().take(self.list_limit).map(|r| r.view().into()).collect());
        };
        let mut summaries = records.list(self.list_limit).await?;
        for s in &mut summaries {
            if let Some(live) = self.cache.get(&s.id) {
                *s = live.view().into();
            }
        }
        Ok(summaries)
    }
}
