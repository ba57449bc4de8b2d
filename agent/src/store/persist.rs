//! Runs as rows of `agent_runs` in the tenant database, written as the tenant's app role (so
//! the table's row-level security applies) and naming tenant and crew in every statement.
//!
//! - A run is inserted with `ON CONFLICT (tenant_id, crew, idempotency_key) DO NOTHING`, so
//!   replicas racing on one key create one run; the loser reads the winner's row.
//! - The executing replica records its start, each finished task, the end, and a heartbeat
//!   (with its pod name as owner). A `DELETE` elsewhere sets `cancel_requested`, which the
//!   executing replica polls.
//! - An unfinished run whose heartbeat is older than [`RunTiming::stale_after`] lost its pod
//!   (killed, or stopped without finishing the write): it is marked `interrupted` (or
//!   `cancelled` when a cancel was asked for) when read, and by a periodic sweep. Only
//!   unfinished rows are ever updated, so a finished run never changes again.
//!
//! Heartbeats and staleness use the database's clock, never the pods'.

use super::{
    CANCELLED_MESSAGE, INTERRUPTED_MESSAGE, RunErrorView, RunHandle, RunStatus, RunSummary, RunView, StopReason,
    TaskOutput, final_output,
};
use crate::db::{Db, DbError};
use crate::engine::task::RunRequest;
use crate::usage::RunUsage;
use std::sync::Arc;
use std::time::Duration;

/// How often the executing replica proves it is alive, and when a silent run counts as lost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunTiming {
    /// Heartbeat of the runs this replica executes.
    pub heartbeat_interval: Duration,
    /// An unfinished run without a heartbeat for this long is interrupted.
    pub stale_after: Duration,
    /// How often this replica checks its runs for a cancel asked for elsewhere.
    pub cancel_poll: Duration,
}

impl Default for RunTiming {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            stale_after: Duration::from_secs(30),
            cancel_poll: Duration::from_secs(1),
        }
    }
}

impl RunTiming {
    /// A live run must never look stale: the stale time has to cover two heartbeats.
    pub fn check(&self) -> Result<(), String> {
        if self.heartbeat_interval.is_zero() || self.cancel_poll.is_zero() {
            return Err("the run heartbeat interval and cancel poll interval must be positive".into());
        }
        if self.stale_after < self.heartbeat_interval * 2 {
            return Err(format!(
                "the run stale-after time ({:?}) must be at least twice the heartbeat interval ({:?})",
                self.stale_after, self.heartbeat_interval
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the stored run {id} cannot be read: {reason}")]
    Unreadable { id: String, reason: String },
}

impl PersistError {
    pub fn category(&self) -> &'static str {
        match self {
            Self::Db(e) => e.category(),
            Self::Unreadable { .. } => "run_record_unreadable",
        }
    }
}

/// A run as its row holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRun {
    pub id: String,
    pub idempotency_key: Option<String>,
    pub request: RunRequest,
    pub status: RunStatus,
    pub tasks: Vec<TaskOutput>,
    pub usage: RunUsage,
    pub error: Option<RunErrorView>,
    pub cancel_requested: bool,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl StoredRun {
    pub fn view(&self) -> RunView {
        RunView {
            id: self.id.clone(),
            status: self.status,
            idempotency_key: self.idempotency_key.clone(),
            request: self.request.clone(),
            created_at: self.created_at.clone(),
            started_at: self.started_at.clone(),
            finished_at: self.finished_at.clone(),
            tasks: self.tasks.clone(),
            output: final_output(self.status, &self.tasks),
            usage: self.usage.clone(),
            error: self.error.clone(),
            cancel_requested: self.cancel_requested,
            events: None,
        }
    }
}

/// The columns of a row as text, before decoding.
#[derive(Clone, Debug, Default)]
pub struct RawRun {
    pub id: String,
    pub idempotency_key: Option<String>,
    pub request: String,
    pub status: String,
    pub tasks: String,
    pub usage: String,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl RawRun {
    pub fn decode(self) -> Result<StoredRun, PersistError> {
        let id = self.id;
        let bad = |what: &str, e: &dyn std::fmt::Display| PersistError::Unreadable {
            id: id.clone(),
            reason: format!("{what}: {e}"),
        };
        let status = RunStatus::parse(&self.status).ok_or_else(|| bad("status", &self.status))?;
        let request = serde_json::from_str(&self.request).map_err(|e| bad("request", &e))?;
        let tasks = serde_json::from_str(&self.tasks).map_err(|e| bad("tasks", &e))?;
        let usage = serde_json::from_str(&self.usage).map_err(|e| bad("usage", &e))?;
        let error = match &self.error {
            None => None,
            Some(e) => Some(serde_json::from_str(e).map_err(|e| bad("error", &e))?),
        };
        Ok(StoredRun {
            id,
            idempotency_key: self.idempotency_key,
            request,
            status,
            tasks,
            usage,
            error,
            cancel_requested: self.cancel_requested,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        })
    }
}

/// What a run's row says about stopping it on the replica that executes it.
pub fn stop_for(status: RunStatus, cancel_requested: bool) -> Option<StopReason> {
    match (status, cancel_requested) {
        (RunStatus::Cancelled, _) | (RunStatus::Queued | RunStatus::Running, true) => Some(StopReason::Cancelled),
        (RunStatus::Queued | RunStatus::Running, false) => None,
        // Finished by another replica (marked interrupted while this one was silent).
        _ => Some(StopReason::Interrupted),
    }
}

/// What `insert` found.
#[derive(Debug)]
pub enum Inserted {
    New,
    /// The key belongs to an earlier run; `same_request` compares the requests as JSON
    /// values (so `1e2` equals `100`).
    Existing {
        run: Box<StoredRun>,
        same_request: bool,
    },
}

/// How a row is looked up.
#[derive(Clone, Copy, Debug)]
enum Lookup<'a> {
    Id(&'a str),
    Key(&'a str),
}

impl Lookup<'_> {
    fn column(&self) -> &'static str {
        match self {
            Self::Id(_) => "run_id",
            Self::Key(_) => "idempotency_key",
        }
    }

    fn value(&self) -> String {
        match self {
            Self::Id(v) | Self::Key(v) => v.to_string(),
        }
    }
}

const UNFINISHED: &str = "status IN ('queued', 'running')";

fn ts(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

fn columns() -> String {
    format!(
        "run_id, idempotency_key, request::text, status, tasks::text, usage::text, error::text, cancel_requested, \
         {}, {}, {}",
        ts("created_at"),
        ts("started_at"),
        ts("finished_at")
    )
}

/// Unfinished and silent for more than `$n` seconds.
fn stale(n: usize) -> String {
    format!("{UNFINISHED} AND (heartbeat_at IS NULL OR heartbeat_at < now() - make_interval(secs => ${n}))")
}

fn raw(row: &tokio_postgres::Row) -> RawRun {
    RawRun {
        id: row.get(0),
        idempotency_key: row.get(1),
        request: row.get(2),
        status: row.get(3),
        tasks: row.get(4),
        usage: row.get(5),
        error: row.get(6),
        cancel_requested: row.get(7),
        created_at: row.get(8),
        started_at: row.get(9),
        finished_at: row.get(10),
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// The `agent_runs` rows of one crew of one tenant.
pub struct RunRecords {
    db: Arc<Db>,
    tenant: String,
    crew: String,
    /// Pod name of this replica, recorded on the runs it executes.
    owner: String,
    timing: RunTiming,
}

impl std::fmt::Debug for RunRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRecords").field("crew", &self.crew).field("owner", &self.owner).finish_non_exhaustive()
    }
}

impl RunRecords {
    pub fn new(db: Arc<Db>, tenant: &str, crew: &str, owner: &str, timing: RunTiming) -> Self {
        Self { db, tenant: tenant.into(), crew: crew.into(), owner: owner.into(), timing }
    }

    pub fn timing(&self) -> RunTiming {
        self.timing
    }

    fn stale_secs(&self) -> f64 {
        self.timing.stale_after.as_secs_f64()
    }

    /// Stores a new queued run owned by this replica, unless its Idempotency-Key is taken.
    pub async fn insert(&self, run: &RunHandle) -> Result<Inserted, PersistError> {
        let view = run.view();
        let request = json(&run.request);
        let (tenant, crew, owner) = (self.tenant.clone(), self.crew.clone(), self.owner.clone());
        let (id, key, created) = (run.id.clone(), run.idempotency_key.clone(), view.created_at);
        let body = request.clone();
        let inserted = self
            .db
            .with(|c| async move {
                let rows = c
                    .query(
                        "INSERT INTO agent_runs (tenant_id, crew, run_id, idempotency_key, request, status, owner, \
                                                 heartbeat_at, created_at) \
                         VALUES ($1, $2, $3, $4, ($5::text)::jsonb, 'queued', $6, now(), ($7::text)::timestamptz) \
                         ON CONFLICT (tenant_id, crew, idempotency_key) DO NOTHING RETURNING run_id",
                        &[&tenant, &crew, &id, &key, &body, &owner, &created],
                    )
                    .await?;
                Ok(!rows.is_empty())
            })
            .await?;
        if inserted {
            return Ok(Inserted::New);
        }
        let key = run.idempotency_key.as_deref().expect("only a key conflicts");
        // The conflicting row is committed (the insert waited for it); it can only be gone
        // if it was deleted since, and then the key is free again.
        match self.fetch(Lookup::Key(key), Some(request)).await? {
            Some((run, same_request)) => {
                Ok(Inserted::Existing { run: Box::new(run), same_request: same_request.unwrap_or(false) })
            }
            None => Box::pin(self.insert(run)).await,
        }
    }

    /// The run of an Idempotency-Key, and whether it was made for `request`.
    pub async fn by_key(&self, key: &str, request: &RunRequest) -> Result<Option<(StoredRun, bool)>, PersistError> {
        Ok(self.fetch(Lookup::Key(key), Some(json(request))).await?.map(|(r, same)| (r, same.unwrap_or(false))))
    }

    /// The run with `id`, marked interrupted first if its pod went silent.
    pub async fn get(&self, id: &str) -> Result<Option<StoredRun>, PersistError> {
        Ok(self.fetch(Lookup::Id(id), None).await?.map(|(r, _)| r))
    }

    /// Reads a row; a stale one is marked interrupted and read again.
    async fn fetch(
        &self,
        lookup: Lookup<'_>,
        compare: Option<String>,
    ) -> Result<Option<(StoredRun, Option<bool>)>, PersistError> {
        let sql = format!(
            "SELECT {}, request = ($4::text)::jsonb, ({}) FROM agent_runs \
             WHERE tenant_id = $1 AND crew = $2 AND {} = $3",
            columns(),
            stale(5),
            lookup.column()
        );
        for _ in 0..2 {
            let (tenant, crew, value, compare, secs) =
                (self.tenant.clone(), self.crew.clone(), lookup.value(), compare.clone(), self.stale_secs());
            let sql = sql.clone();
            let row = self
                .db
                .with(|c| async move {
                    let row = c.query_opt(&sql, &[&tenant, &crew, &value, &compare, &secs]).await?;
                    Ok(row.map(|r| (raw(&r), r.get::<_, Option<bool>>(11), r.get::<_, bool>(12))))
                })
                .await?;
            let Some((raw, same, is_stale)) = row else { return Ok(None) };
            if !is_stale {
                return Ok(Some((raw.decode()?, same)));
            }
            let n = self.interrupt_stale(Some(&raw.id)).await?;
            tracing::warn!(run = %raw.id, marked = n, "the run's pod went silent while it was in flight");
        }
        Err(PersistError::Unreadable { id: lookup.value(), reason: "it stays stale after being marked".into() })
    }

    /// Marks stale runs (all of the crew's, or the one with `id`) interrupted, or cancelled
    /// when a cancel was asked for; returns how many.
    async fn interrupt_stale(&self, id: Option<&str>) -> Result<u64, PersistError> {
        let sql = format!(
            "UPDATE agent_runs SET \
                status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'interrupted' END, \
                error = CASE WHEN cancel_requested THEN ($4::text)::jsonb ELSE ($5::text)::jsonb END, \
                finished_at = now() \
             WHERE tenant_id = $1 AND crew = $2 AND ({}) AND ($6::text IS NULL OR run_id = $6)",
            stale(3)
        );
        let (tenant, crew, secs, id) =
            (self.tenant.clone(), self.crew.clone(), self.stale_secs(), id.map(String::from));
        let cancelled = json(&RunErrorView { category: "cancelled".into(), message: CANCELLED_MESSAGE.into() });
        let interrupted = json(&RunErrorView { category: "interrupted".into(), message: INTERRUPTED_MESSAGE.into() });
        Ok(self
            .db
            .with(|c| async move { c.execute(&sql, &[&tenant, &crew, &secs, &cancelled, &interrupted, &id]).await })
            .await?)
    }

    /// Marks every stale run of the crew interrupted (on startup and now and then).
    pub async fn sweep(&self) -> Result<u64, PersistError> {
        self.interrupt_stale(None).await
    }

    /// The run started executing here.
    pub async fn started(&self, run: &RunHandle) -> Result<bool, PersistError> {
        let started = run.view().started_at;
        let (tenant, crew, id, owner) = (self.tenant.clone(), self.crew.clone(), run.id.clone(), self.owner.clone());
        let n = self
            .db
            .with(|c| async move {
                c.execute(
                    &format!(
                        "UPDATE agent_runs SET status = 'running', started_at = ($4::text)::timestamptz, owner = $5, \
                         heartbeat_at = now() WHERE tenant_id = $1 AND crew = $2 AND run_id = $3 AND {UNFINISHED}"
                    ),
                    &[&tenant, &crew, &id, &started, &owner],
                )
                .await
            })
            .await?;
        Ok(n > 0)
    }

    /// The tasks finished so far and the usage, while the run goes on.
    pub async fn progress(&self, run: &RunHandle) -> Result<bool, PersistError> {
        let view = run.view();
        let (tenant, crew, id) = (self.tenant.clone(), self.crew.clone(), run.id.clone());
        let (tasks, usage) = (json(&view.tasks), json(&view.usage));
        let n = self
            .db
            .with(|c| async move {
                c.execute(
                    &format!(
                        "UPDATE agent_runs SET tasks = ($4::text)::jsonb, usage = ($5::text)::jsonb, heartbeat_at = now() \
                         WHERE tenant_id = $1 AND crew = $2 AND run_id = $3 AND {UNFINISHED}"
                    ),
                    &[&tenant, &crew, &id, &tasks, &usage],
                )
                .await
            })
            .await?;
        Ok(n > 0)
    }

    /// The run's end. False when the row was already finished (by another replica).
    pub async fn finish(&self, view: &RunView) -> Result<bool, PersistError> {
        let (tenant, crew, id) = (self.tenant.clone(), self.crew.clone(), view.id.clone());
        let status = view.status.as_str().to_string();
        let (tasks, usage, output) = (json(&view.tasks), json(&view.usage), view.output.clone());
        let error = view.error.as_ref().map(json);
        let (started, finished) = (view.started_at.clone(), view.finished_at.clone());
        let n = self
            .db
            .with(|c| async move {
                c.execute(
                    &format!(
                        "UPDATE agent_runs SET status = $4, tasks = ($5::text)::jsonb, usage = ($6::text)::jsonb, \
                         output = $7, error = ($8::text)::jsonb, \
                         started_at = COALESCE(started_at, ($9::text)::timestamptz), \
                         finished_at = COALESCE(($10::text)::timestamptz, now()), heartbeat_at = now() \
                         WHERE tenant_id = $1 AND crew = $2 AND run_id = $3 AND {UNFINISHED}"
                    ),
                    &[&tenant, &crew, &id, &status, &tasks, &usage, &output, &error, &started, &finished],
                )
                .await
            })
            .await?;
        Ok(n > 0)
    }

    /// Asks the replica executing the run to stop it. False when the run is unknown or
    /// already finished.
    pub async fn request_cancel(&self, id: &str) -> Result<bool, PersistError> {
        let (tenant, crew, id) = (self.tenant.clone(), self.crew.clone(), id.to_string());
        let n = self
            .db
            .with(|c| async move {
                c.execute(
                    &format!(
                        "UPDATE agent_runs SET cancel_requested = true \
                         WHERE tenant_id = $1 AND crew = $2 AND run_id = $3 AND {UNFINISHED}"
                    ),
                    &[&tenant, &crew, &id],
                )
                .await
            })
            .await?;
        Ok(n > 0)
    }

    /// The heartbeat of the runs this replica executes.
    pub async fn heartbeat(&self, ids: &[String]) -> Result<u64, PersistError> {
        let (tenant, crew, owner, ids) = (self.tenant.clone(), self.crew.clone(), self.owner.clone(), ids.to_vec());
        Ok(self
            .db
            .with(|c| async move {
                c.execute(
                    &format!(
                        "UPDATE agent_runs SET heartbeat_at = now(), owner = $3 \
                         WHERE tenant_id = $1 AND crew = $2 AND run_id = ANY($4) AND {UNFINISHED}"
                    ),
                    &[&tenant, &crew, &owner, &ids],
                )
                .await
            })
            .await?)
    }

    /// Of these runs, the ones that must stop: cancelled through another replica, or marked
    /// finished there.
    pub async fn stop_requests(&self, ids: &[String]) -> Result<Vec<(String, StopReason)>, PersistError> {
        let (tenant, crew, ids) = (self.tenant.clone(), self.crew.clone(), ids.to_vec());
        let rows = self
            .db
            .with(|c| async move {
                let rows = c
                    .query(
                        &format!(
                            "SELECT run_id, status, cancel_requested FROM agent_runs \
                             WHERE tenant_id = $1 AND crew = $2 AND run_id = ANY($3) \
                               AND (cancel_requested OR NOT ({UNFINISHED}))"
                        ),
                        &[&tenant, &crew, &ids],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, bool>(2)))
                    .collect::<Vec<_>>())
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, status, cancel)| {
                let status = RunStatus::parse(&status).unwrap_or(RunStatus::Interrupted);
                stop_for(status, cancel).map(|reason| (id, reason))
            })
            .collect())
    }

    /// The crew's newest runs, stale ones marked first.
    pub async fn list(&self, limit: usize) -> Result<Vec<RunSummary>, PersistError> {
        self.sweep().await?;
        let (tenant, crew, limit) = (self.tenant.clone(), self.crew.clone(), limit.min(i64::MAX as usize) as i64);
        let sql = format!(
            "SELECT run_id, status, {}, {}, COALESCE((usage->>'totalTokens')::bigint, 0), error::text \
             FROM agent_runs WHERE tenant_id = $1 AND crew = $2 ORDER BY created_at DESC, id DESC LIMIT $3",
            ts("created_at"),
            ts("finished_at")
        );
        let rows = self
            .db
            .with(|c| async move {
                let rows = c.query(&sql, &[&tenant, &crew, &limit]).await?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        (
                            r.get::<_, String>(0),
                            r.get::<_, String>(1),
                            r.get::<_, String>(2),
                            r.get::<_, Option<String>>(3),
                            r.get::<_, i64>(4),
                            r.get::<_, Option<String>>(5),
                        )
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        rows.into_iter()
            .map(|(id, status, created_at, finished_at, tokens, error)| {
                let status = RunStatus::parse(&status)
                    .ok_or_else(|| PersistError::Unreadable { id: id.clone(), reason: format!("status {status:?}") })?;
                let error = match error {
                    None => None,
                    Some(e) => Some(
                        serde_json::from_str(&e)
                            .map_err(|e| PersistError::Unreadable { id: id.clone(), reason: format!("error: {e}") })?,
                    ),
                };
                Ok(RunSummary { id, status, created_at, finished_at, total_tokens: tokens.max(0) as u64, error })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw() -> RawRun {
        RawRun {
            id: "run-1".into(),
            idempotency_key: Some("k".into()),
            request: json!({"description": "d"}).to_string(),
            status: "succeeded".into(),
            tasks: json!([{"index": 0, "agent": "writer", "description": "d", "output": "done",
                           "usage": {"promptTokens": 1, "completionTokens": 2, "totalTokens": 3, "llmCalls": 1}}])
            .to_string(),
            usage: json!({"promptTokens": 1, "completionTokens": 2, "totalTokens": 3, "llmCalls": 1,
                          "byAgent": {"writer": {"promptTokens": 1, "completionTokens": 2, "totalTokens": 3, "llmCalls": 1}}})
            .to_string(),
            error: None,
            cancel_requested: false,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            started_at: Some("2026-01-01T00:00:00.100Z".into()),
            finished_at: Some("2026-01-01T00:00:01.000Z".into()),
        }
    }

    #[test]
    fn a_row_decodes_into_the_api_view() {
        let view = raw().decode().unwrap().view();
        assert_eq!(view.status, RunStatus::Succeeded);
        assert_eq!(view.output.as_deref(), Some("done"));
        assert_eq!(view.usage.total.total_tokens, 3);
        assert_eq!(view.usage.by_agent["writer"].llm_calls, 1);
        let json = serde_json::to_value(&view).unwrap();
        assert!(json.get("events").is_none(), "events live on the executing replica only");
        assert!(json.get("cancelRequested").is_none());
        assert_eq!(json["idempotencyKey"], "k");
    }

    #[test]
    fn an_interrupted_row_keeps_its_outputs_but_shows_none() {
        let mut r = raw();
        r.status = "interrupted".into();
        r.error = Some(json!({"category": "interrupted", "message": INTERRUPTED_MESSAGE}).to_string());
        let view = r.decode().unwrap().view();
        assert_eq!(view.tasks.len(), 1);
        assert_eq!(view.output, None);
        assert_eq!(view.error.unwrap().message, INTERRUPTED_MESSAGE);
    }

    #[test]
    fn a_new_row_reads_as_no_usage() {
        let mut r = raw();
        (r.status, r.tasks, r.usage) = ("queued".into(), "[]".into(), "{}".into());
        let run = r.decode().unwrap();
        assert_eq!(run.usage, RunUsage::default());
        assert!(run.tasks.is_empty());
    }

    #[test]
    fn unreadable_rows_name_the_column() {
        let mut r = raw();
        r.status = "lost".into();
        let e = r.decode().unwrap_err();
        assert_eq!(e.category(), "run_record_unreadable");
        assert!(e.to_string().contains("status"), "{e}");
        let mut r = raw();
        r.tasks = "{".into();
        assert!(r.decode().unwrap_err().to_string().contains("run-1 cannot be read: tasks"));
    }

    #[test]
    fn rows_tell_the_executing_replica_when_to_stop() {
        assert_eq!(stop_for(RunStatus::Running, false), None);
        assert_eq!(stop_for(RunStatus::Queued, true), Some(StopReason::Cancelled));
        assert_eq!(stop_for(RunStatus::Running, true), Some(StopReason::Cancelled));
        assert_eq!(stop_for(RunStatus::Cancelled, true), Some(StopReason::Cancelled));
        assert_eq!(stop_for(RunStatus::Interrupted, false), Some(StopReason::Interrupted));
    }

    #[test]
    fn timing_keeps_live_runs_from_looking_stale() {
        assert!(RunTiming::default().check().is_ok());
        let t = RunTiming {
            heartbeat_interval: Duration::from_secs(5),
            stale_after: Duration::from_secs(8),
            ..Default::default()
        };
        assert!(t.check().unwrap_err().contains("at least twice"));
        let t = RunTiming { cancel_poll: Duration::ZERO, ..Default::default() };
        assert!(t.check().is_err());
    }

    #[test]
    fn statements_only_touch_unfinished_rows_when_stale() {
        let s = stale(3);
        assert!(s.starts_with("status IN ('queued', 'running') AND"));
        assert!(s.contains("make_interval(secs => $3)"));
        assert!(columns().contains("to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"));
    }
}
