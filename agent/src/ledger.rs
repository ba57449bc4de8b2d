//! The monthly token budgets of the tenant and of the crew, kept in the tenant database so
//! that every replica of every crew spends from one budget, and the usage events they are
//! counted from.
//!
//! Before a model call, [`TokenLedger::reserve`] admits it while the tokens used this calendar
//! month (UTC) plus those reserved by calls in flight are under each budget, and reserves the
//! most the call can spend (prompt estimate plus its completion bound). Admission runs under a
//! row lock on the tenant's budget row, so concurrent calls on any replica overshoot a budget
//! by at most one call. [`TokenLedger::settle`] then records the usage event, adds the tokens
//! to both budgets and gives the reservation back, in one transaction. A reservation whose
//! replica died stops counting when it expires.

use crate::db::{Db, DbError};
use crate::llm::Usage;
use crate::secret::Secret;
use crate::usage::BudgetError;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a reservation counts: longer than any model call with its retries.
pub const RESERVATION_TTL: Duration = Duration::from_secs(15 * 60);

/// Completion tokens reserved for a call that has no `maxTokens` of its own.
pub const DEFAULT_COMPLETION_RESERVE: u64 = 4096;

/// The budgets a ledger enforces; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// The tenant's `quota.monthlyTokens` (its plan's, or the override), across its crews.
    pub tenant: Option<u64>,
    /// The crew's own `budget.monthlyTokens`.
    pub crew: Option<u64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.tenant.is_some() || self.crew.is_some()
    }
}

/// This month's tokens of one budget: spent, and reserved by calls in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spent {
    pub used: u64,
    pub reserved: u64,
}

/// Whether a call may start: each budget must have room left once the calls in flight have
/// spent all they reserved. The tenant's budget speaks first.
pub fn admit(limits: Limits, tenant: Spent, crew: Spent) -> Result<(), BudgetError> {
    if let Some(limit) = limits.tenant
        && tenant.used + tenant.reserved >= limit
    {
        return Err(BudgetError::TenantMonthly { limit, used: tenant.used });
    }
    if let Some(limit) = limits.crew
        && crew.used + crew.reserved >= limit
    {
        return Err(BudgetError::Monthly { limit, used: crew.used });
    }
    Ok(())
}

/// Tokens held for one admitted call until it is settled.
#[derive(Debug)]
pub struct Reservation {
    id: i64,
    /// The month it was taken in (`YYYY-MM-01`), which its usage counts against.
    month: String,
}

/// One model call's usage, as recorded in `usage_events`.
#[derive(Debug, Clone)]
pub struct CallUsage<'a> {
    pub agent: &'a str,
    pub model: &'a str,
    pub run_id: &'a str,
    pub usage: &'a Usage,
}

/// The tenant database's budgets, as the crew's replica sees them. Its transactions run on
/// a connection of its own, one at a time.
pub struct TokenLedger {
    db: Db,
    lock: Mutex<()>,
    tenant: String,
    crew: String,
    limits: Limits,
}

impl std::fmt::Debug for TokenLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenLedger").field("crew", &self.crew).field("limits", &self.limits).finish_non_exhaustive()
    }
}

const THIS_MONTH: &str = "to_char(date_trunc('month', now() AT TIME ZONE 'UTC'), 'YYYY-MM-DD')";

impl TokenLedger {
    pub fn new(url: &Secret, tenant: &str, crew: &str, limits: Limits) -> Result<Self, DbError> {
        Ok(Self { db: Db::new(url)?, lock: Mutex::new(()), tenant: tenant.to_string(), crew: crew.to_string(), limits })
    }

    /// Runs `f`'s statements as one transaction on the ledger's connection.
    async fn transaction<T, F, Fut>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(std::sync::Arc<tokio_postgres::Client>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let _one_at_a_time = self.lock.lock().await;
        let result = self
            .db
            .with(|c| async move {
                c.batch_execute("BEGIN").await?;
                match f(c.clone()).await {
                    Ok(value) => {
                        c.batch_execute("COMMIT").await?;
                        Ok(value)
                    }
                    Err(e) => {
                        let _ = c.batch_execute("ROLLBACK").await;
                        Err(e)
                    }
                }
            })
            .await;
        if matches!(result, Err(DbError::Timeout(_))) {
            self.db.reset().await;
        }
        result
    }

    /// This month's spending of the tenant and of the crew.
    pub async fn spent(&self) -> Result<(Spent, Spent), DbError> {
        let (tenant, crew) = (self.tenant.clone(), self.crew.clone());
        self.db
            .with(|c| async move {
                let row = c.query_one(&spent_query(&format!("({THIS_MONTH})::date")), &[&tenant, &crew]).await?;
                Ok(spent_of(&row))
            })
            .await
    }

    /// Whether a new run could start now: the budgets' refusal if it could not.
    pub async fn check(&self) -> Result<(), BudgetError> {
        if !self.limits.any() {
            return Ok(());
        }
        let (tenant, crew) = self.spent().await.map_err(|e| BudgetError::Unavailable(e.to_string()))?;
        admit(self.limits, tenant, crew)
    }

    /// Admits a call that may spend up to `tokens`, or says which budget is used up. Without
    /// budgets nothing is reserved.
    pub async fn reserve(&self, tokens: u64) -> Result<Option<Reservation>, BudgetError> {
        if !self.limits.any() {
            return Ok(None);
        }
        let (tenant, crew, limits) = (self.tenant.clone(), self.crew.clone(), self.limits);
        let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
        let ttl = format!("{} seconds", RESERVATION_TTL.as_secs());
        let decided = self
            .transaction(|c| async move {
                let month: String = c.query_one(&format!("SELECT {THIS_MONTH}"), &[]).await?.get(0);
                c.execute(
                    "INSERT INTO token_budgets (tenant_id, scope, month) VALUES ($1, '', $2::text::date) \
                     ON CONFLICT (tenant_id, scope, month) DO NOTHING",
                    &[&tenant, &month],
                )
                .await?;
                // The lock that serialises every admission of the tenant, on any replica.
                c.execute(
                    "SELECT 1 FROM token_budgets WHERE tenant_id = $1 AND scope = '' AND month = $2::text::date FOR UPDATE",
                    &[&tenant, &month],
                )
                .await?;
                c.execute("DELETE FROM token_reservations WHERE tenant_id = $1 AND expires_at < now()", &[&tenant])
                    .await?;
                let row = c.query_one(&spent_query("$3::text::date"), &[&tenant, &crew, &month]).await?;
                let (tenant_spent, crew_spent) = spent_of(&row);
                if let Err(refused) = admit(limits, tenant_spent, crew_spent) {
                    return Ok(Err(refused));
                }
                let id: i64 = c
                    .query_one(
                        "INSERT INTO token_reservations (tenant_id, crew, tokens, expires_at) \
                         VALUES ($1, $2, $3, now() + $4::text::interval) RETURNING id",
                        &[&tenant, &crew, &tokens, &ttl],
                    )
                    .await?
                    .get(0);
                Ok(Ok(Reservation { id, month }))
            })
            .await
            .map_err(|e| BudgetError::Unavailable(e.to_string()))?;
        decided.map(Some)
    }

    /// Gives back a reservation whose call spent nothing (it failed).
    pub async fn release(&self, reservation: Reservation) {
        let id = reservation.id;
        let released = self
            .db
            .with(|c| async move { c.execute("DELETE FROM token_reservations WHERE id = $1", &[&id]).await })
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not give back a token reservation; it expires on its own");
        }
    }

    /// Records a call's usage and counts it against both budgets, giving its reservation back.
    pub async fn settle(&self, reservation: Option<Reservation>, call: CallUsage<'_>) -> Result<(), DbError> {
        let (tenant, crew) = (self.tenant.clone(), self.crew.clone());
        let (agent, model, run_id) = (call.agent.to_string(), call.model.to_string(), call.run_id.to_string());
        let prompt = clamp(call.usage.prompt_tokens);
        let completion = clamp(call.usage.completion_tokens);
        let cost = call.usage.cost;
        let (id, month) = match reservation {
            Some(r) => (Some(r.id), Some(r.month)),
            None => (None, None),
        };
        self.transaction(|c| async move {
            if let Some(id) = id {
                c.execute("DELETE FROM token_reservations WHERE id = $1", &[&id]).await?;
            }
            let month: String = match month {
                Some(m) => m,
                None => c.query_one(&format!("SELECT {THIS_MONTH}"), &[]).await?.get(0),
            };
            c.execute(
                "INSERT INTO usage_events \
                   (tenant_id, crew, agent, model, run_id, prompt_tokens, completion_tokens, cost_usd, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::float8::numeric, now())",
                &[&tenant, &crew, &agent, &model, &run_id, &prompt, &completion, &cost],
            )
            .await?;
            // The tenant's row first, then the crew's: the order every transaction locks them in.
            c.execute(
                "INSERT INTO token_budgets (tenant_id, scope, month, used) \
                 VALUES ($1, '', $3::text::date, $4), ($1, $2, $3::text::date, $4) \
                 ON CONFLICT (tenant_id, scope, month) DO UPDATE SET used = token_budgets.used + EXCLUDED.used",
                &[&tenant, &crew, &month, &(prompt + completion)],
            )
            .await?;
            Ok(())
        })
        .await
    }
}

/// The month's tokens of the tenant (`$1`) and of the crew (`$2`), and what their calls in flight
/// have reserved, in the order [`spent_of`] reads them.
fn spent_query(month: &str) -> String {
    format!(
        "SELECT \
           COALESCE((SELECT used FROM token_budgets WHERE tenant_id = $1 AND scope = '' AND month = {month}), 0)::bigint, \
           COALESCE((SELECT used FROM token_budgets WHERE tenant_id = $1 AND scope = $2 AND month = {month}), 0)::bigint, \
           COALESCE((SELECT SUM(tokens) FROM token_reservations WHERE tenant_id = $1 AND expires_at > now()), 0)::bigint, \
           COALESCE((SELECT SUM(tokens) FROM token_reservations WHERE tenant_id = $1 AND crew = $2 AND expires_at > now()), 0)::bigint"
    )
}

fn clamp(tokens: u64) -> i64 {
    i64::try_from(tokens).unwrap_or(i64::MAX)
}

fn spent_of(row: &tokio_postgres::Row) -> (Spent, Spent) {
    let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    (Spent { used: n(0), reserved: n(2) }, Spent { used: n(1), reserved: n(3) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_admitted_while_spent_and_reserved_are_under_each_budget() {
        let limits = Limits { tenant: Some(1000), crew: Some(300) };
        let s = |used, reserved| Spent { used, reserved };
        assert!(admit(limits, s(500, 400), s(100, 100)).is_ok());
        assert_eq!(
            admit(limits, s(600, 400), s(0, 0)),
            Err(BudgetError::TenantMonthly { limit: 1000, used: 600 }),
            "calls in flight count"
        );
        assert_eq!(admit(limits, s(0, 0), s(200, 100)), Err(BudgetError::Monthly { limit: 300, used: 200 }));
        assert_eq!(
            admit(limits, s(1000, 0), s(300, 0)).unwrap_err().category(),
            "tenant_budget_exhausted",
            "the tenant's budget speaks first"
        );
        assert!(admit(Limits::default(), s(u64::MAX / 2, u64::MAX / 2), s(0, 0)).is_ok());
        assert!(!Limits::default().any());
    }
}
