//! One export pass of a tenant: settled usage events after the cursor, batch by batch, to
//! Lago, moving the cursor after each batch Lago accepted.

use super::batch::{self, BATCH_LIMIT, Verdict};
use super::client::LagoClient;
use crate::postgres::{Admin, TenantNames, UsageBatch, UsageEvent};
use bizosaas_crds::tenant::DatabaseIsolation;

/// The cursor's `target` in `usage_exports`.
pub const TARGET: &str = "lago";

/// Batches one pass sends at most, so that one busy tenant does not hold the others up.
const BATCHES_PER_PASS: usize = 10;

/// The tenant whose usage is exported, and to which subscription.
#[derive(Clone, Copy, Debug)]
pub struct ExportTarget<'a> {
    pub names: &'a TenantNames,
    pub isolation: DatabaseIsolation,
    pub subscription: &'a str,
}

/// What one pass did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Usage events now known to be in Lago (accepted, or held from an earlier attempt).
    pub exported: u64,
    /// The cursor after the pass, when it moved.
    pub through: Option<i64>,
    pub end: End,
}

/// Why a pass ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every settled usage event is in Lago.
    UpToDate,
    /// The pass sent its share of batches; more are waiting.
    More,
    /// Lago refused a batch (4xx): its message. The cursor stays before the batch.
    Refused(String),
    /// Lago did not answer, or answered 5xx, 408 or 429.
    Unavailable(String),
    /// The tenant's database could not be read or the cursor not written.
    Database(String),
    /// A write of the tenant's usage is still open; nothing past it is sent yet.
    InFlight,
}

impl End {
    /// The stable failure category (a `reason` of the failure metric), `None` for success.
    pub fn failure(&self) -> Option<&'static str> {
        match self {
            End::UpToDate | End::More => None,
            End::Refused(_) => Some("refused"),
            End::Unavailable(_) => Some("unavailable"),
            End::Database(_) => Some("database"),
            End::InFlight => Some("in_flight"),
        }
    }
}

/// Runs one export pass of `tenant` to Lago as `code` events.
pub async fn export_once(admin: &Admin, lago: &LagoClient, code: &str, tenant: ExportTarget<'_>) -> Outcome {
    let mut outcome = Outcome { exported: 0, through: None, end: End::More };
    for _ in 0..BATCHES_PER_PASS {
        let read = admin.usage_to_export(tenant.names, tenant.isolation, TARGET, BATCH_LIMIT as i64).await;
        let events = match read {
            Ok(UsageBatch::Settled { events, .. }) => events,
            Ok(UsageBatch::InFlight) => return outcome.ended(End::InFlight),
            Err(e) => return outcome.ended(End::Database(e.to_string())),
        };
        let Some(last) = events.last().map(|e| e.id) else { return outcome.ended(End::UpToDate) };
        if let Err(end) = deliver(lago, code, &tenant, &events).await {
            return outcome.ended(end);
        }
        // Lago holds the batch; if this write fails, the next pass sends it again and Lago
        // recognises every transaction id.
        if let Err(e) = admin.record_export(tenant.names, tenant.isolation, TARGET, last).await {
            return outcome.ended(End::Database(e.to_string()));
        }
        outcome.exported += events.len() as u64;
        outcome.through = Some(last);
        if events.len() < BATCH_LIMIT {
            return outcome.ended(End::UpToDate);
        }
    }
    outcome
}

impl Outcome {
    fn ended(mut self, end: End) -> Self {
        self.end = end;
        self
    }
}

/// Sends `events` until Lago holds every one of them. A refusal naming only events it
/// already holds is answered by sending the rest (Lago persists nothing of a refused batch),
/// which ends: each round sends fewer.
async fn deliver(lago: &LagoClient, code: &str, tenant: &ExportTarget<'_>, events: &[UsageEvent]) -> Result<(), End> {
    let mut pending: Vec<UsageEvent> = events.to_vec();
    while !pending.is_empty() {
        let body = batch::build(&tenant.names.tenant_id, tenant.subscription, code, &pending);
        match lago.send(&body, pending.len()).await {
            Verdict::Accepted => return Ok(()),
            Verdict::AlreadyHeld(held) => {
                let mut position = 0;
                pending.retain(|_| {
                    let keep = held.binary_search(&position).is_err();
                    position += 1;
                    keep
                });
            }
            Verdict::Refused(message) => return Err(End::Refused(message)),
            Verdict::Unavailable(message) => return Err(End::Unavailable(message)),
        }
    }
    Ok(())
}
