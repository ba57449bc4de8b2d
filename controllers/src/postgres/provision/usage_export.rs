//! Reading a tenant's usage events for export and keeping the export's cursor, in the
//! tenant's database.
//!
//! Ids of `usage_events` are drawn when a row is inserted, not when its transaction commits:
//! while a model call's transaction is open, later calls may already be visible with higher
//! ids. A cursor moved past them would skip the open call's row for good, so a batch ends at
//! the highest id that existed before every write of the tenant then open had ended.

use super::Admin;
use crate::postgres::{DatabaseError, TenantNames};
use bizosaas_crds::tenant::DatabaseIsolation;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// How long one read waits for the tenant's open writes to end; model calls are recorded in
/// transactions of a few statements.
const SETTLE_WAIT: Duration = Duration::from_secs(1);
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// One model call, as recorded in `usage_events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageEvent {
    pub id: i64,
    pub crew: Option<String>,
    pub agent: Option<String>,
    pub model: Option<String>,
    pub run_id: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// `cost_usd` as PostgreSQL prints the numeric: exact, never a float.
    pub cost_usd: Option<String>,
    /// `created_at` in Unix seconds.
    pub timestamp: i64,
}

/// What the next export of a tenant starts from.
#[derive(Debug, PartialEq, Eq)]
pub enum UsageBatch {
    /// Events after the cursor, in id order; empty when nothing new is settled.
    Settled { cursor: i64, events: Vec<UsageEvent> },
    /// A write of the tenant's database role is still open: events after the cursor may
    /// still be joined by one with a lower id.
    InFlight,
}

impl Admin {
    /// The database holding the tenant's rows.
    fn tenant_database<'a>(&'a self, names: &'a TenantNames, isolation: DatabaseIsolation) -> &'a str {
        match isolation {
            DatabaseIsolation::Dedicated => names.database.as_str(),
            DatabaseIsolation::Shared => self.platform_database.as_str(),
        }
    }

    /// Up to `limit` of the tenant's usage events after its cursor for `target`, none of
    /// which a write still open could precede.
    pub async fn usage_to_export(
        &self,
        names: &TenantNames,
        isolation: DatabaseIsolation,
        target: &str,
        limit: i64,
    ) -> Result<UsageBatch, DatabaseError> {
        let _slot = self.slot().await;
        let client = self.connect(Some(self.tenant_database(names, isolation))).await?;
        // First the highest id drawn by a committed write, then the writes still open: an id
        // below it that is not visible belongs to one of them.
        let horizon: i64 = client
            .query_one("SELECT coalesce(max(id), 0) FROM usage_events", &[])
            .await
            .map_err(DatabaseError::statement("reading the latest usage event"))?
            .get(0);
        if !open_writes_end(&client, &names.app_role).await? {
            return Ok(UsageBatch::InFlight);
        }
        let cursor: i64 = client
            .query_one(
                "SELECT coalesce((SELECT last_event_id FROM usage_exports WHERE tenant_id = $1 AND target = $2), 0)",
                &[&names.tenant_id, &target],
            )
            .await
            .map_err(DatabaseError::statement("reading the usage export cursor"))?
            .get(0);
        let rows = client
            .query(
                "SELECT id, crew, agent, model, run_id, prompt_tokens, completion_tokens, cost_usd::text, \
                        floor(extract(epoch FROM created_at))::bigint \
                 FROM usage_events WHERE tenant_id = $1 AND id > $2 AND id <= $3 ORDER BY id LIMIT $4",
                &[&names.tenant_id, &cursor, &horizon, &limit],
            )
            .await
            .map_err(DatabaseError::statement("reading usage events"))?;
        let events = rows
            .iter()
            .map(|r| UsageEvent {
                id: r.get(0),
                crew: r.get(1),
                agent: r.get(2),
                model: r.get(3),
                run_id: r.get(4),
                prompt_tokens: r.get(5),
                completion_tokens: r.get(6),
                cost_usd: r.get(7),
                timestamp: r.get(8),
            })
            .collect();
        Ok(UsageBatch::Settled { cursor, events })
    }

    /// Moves the tenant's cursor for `target` to `last_event_id`, never back.
    pub async fn record_export(
        &self,
        names: &TenantNames,
        isolation: DatabaseIsolation,
        target: &str,
        last_event_id: i64,
    ) -> Result<(), DatabaseError> {
        let _slot = self.slot().await;
        let client = self.connect(Some(self.tenant_database(names, isolation))).await?;
        client
            .execute(
                "INSERT INTO usage_exports (tenant_id, target, last_event_id, updated_at) VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (tenant_id, target) DO UPDATE \
                 SET last_event_id = GREATEST(usage_exports.last_event_id, EXCLUDED.last_event_id), updated_at = now()",
                &[&names.tenant_id, &target, &last_event_id],
            )
            .await
            .map_err(DatabaseError::statement("recording the usage export cursor"))?;
        Ok(())
    }
}

/// Waits (briefly) until every transaction that holds a write lock on `usage_events` and may
/// add the tenant's rows has ended: its app role's, a superuser's, or a prepared one's. `false`
/// when one is still open. Transactions that start meanwhile do not matter: they draw higher ids.
async fn open_writes_end(client: &Client, app_role: &str) -> Result<bool, DatabaseError> {
    let writers = async || -> Result<BTreeSet<String>, DatabaseError> {
        let rows = client
            .query(
                "SELECT l.virtualtransaction FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'relation' AND l.mode = 'RowExclusiveLock' \
                   AND l.relation = 'usage_events'::regclass \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                   AND l.pid IS DISTINCT FROM pg_backend_pid() \
                   AND (a.usesysid IS NULL OR a.usename = $1 \
                        OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.oid = a.usesysid AND r.rolsuper))",
                &[&app_role],
            )
            .await
            .map_err(DatabaseError::statement("looking for open usage writes"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    };
    let open = writers().await?;
    let started = Instant::now();
    let mut still = open.clone();
    while !still.is_empty() {
        if started.elapsed() >= SETTLE_WAIT {
            return Ok(false);
        }
        tokio::time::sleep(SETTLE_POLL).await;
        still = writers().await?.intersection(&open).cloned().collect();
    }
    Ok(true)
}
