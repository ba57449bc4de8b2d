//! The tenant-wide monthly token budget against the harness's real PostgreSQL, as the tenants'
//! app roles under row-level security: several "replicas" (ledgers with connections of their
//! own) spend concurrently from one tenant's month, and the overshoot stays within one call.

mod pg;

use bizosaas_agent::ledger::{CallUsage, Limits, TokenLedger};
use bizosaas_agent::llm::Usage;
use bizosaas_agent::secret::Secret;
use bizosaas_agent::usage::BudgetError;
use bizosaas_crds::tenant::DatabaseIsolation;
use std::sync::Arc;
use std::time::Duration;

/// What each simulated call reserves, and what it then spends.
const RESERVE: u64 = 600;
const PROMPT: u64 = 400;
const COMPLETION: u64 = 100;

#[tokio::test]
async fn concurrent_calls_on_several_replicas_overshoot_the_tenant_budget_by_at_most_one_call() {
    pg::with_tenants(DatabaseIsolation::Shared, &["spend", "other"], async |tenants| {
        let (spender, other) = (&tenants[0], &tenants[1]);
        let limit = 20_000u64;
        let limits = Limits { tenant: Some(limit), crew: None };
        let replicas: Vec<Arc<TokenLedger>> = (0..3)
            .map(|i| {
                let crew = if i == 2 { "researchers" } else { "writers" };
                Arc::new(TokenLedger::new(&Secret::new(spender.app_url.clone()), &spender.name, crew, limits).unwrap())
            })
            .collect();
        let mut workers = Vec::new();
        for (replica, ledger) in replicas.iter().enumerate() {
            for worker in 0..8 {
                let ledger = ledger.clone();
                workers.push(tokio::spawn(async move {
                    let mut calls = 0u64;
                    loop {
                        match ledger.reserve(RESERVE).await {
                            Ok(reservation) => {
                                // The model call.
                                tokio::time::sleep(Duration::from_millis(3 + (replica * 8 + worker) as u64 % 7)).await;
                                let usage = Usage {
                                    prompt_tokens: PROMPT,
                                    completion_tokens: COMPLETION,
                                    total_tokens: PROMPT + COMPLETION,
                                    cost: Some(0.000125),
                                };
                                let call = CallUsage { agent: "writer", model: "m", run_id: "run-1", usage: &usage };
                                ledger.settle(reservation, call).await.expect("usage recorded");
                                calls += 1;
                            }
                            Err(refused) => return (calls, refused),
                        }
                    }
                }));
            }
        }
        let mut calls = 0;
        for w in workers {
            let (n, refused) = w.await.unwrap();
            calls += n;
            assert!(matches!(refused, BudgetError::TenantMonthly { limit: 20_000, .. }), "{refused:?}");
            assert_eq!(refused.category(), "tenant_budget_exhausted");
        }

        let admin = spender.admin().await;
        let events: i64 = admin
            .query_one(
                "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0)::bigint FROM usage_events WHERE tenant_id = $1",
                &[&spender.name],
            )
            .await
            .unwrap()
            .get(0);
        let used = events as u64;
        eprintln!("{calls} calls admitted on 3 replicas x 8 workers, {used} of {limit} tokens spent");
        assert_eq!(used, calls * (PROMPT + COMPLETION), "every admitted call is one usage event");
        assert!(used <= limit + RESERVE, "{used} tokens spent of {limit}: more than one call over");
        assert!(used + 24 * RESERVE >= limit, "{used} tokens spent of {limit}: calls were refused too early");
        let (tenant, writers) = replicas[0].spent().await.unwrap();
        assert_eq!((tenant.used, tenant.reserved), (used, 0), "the month counts every event; nothing stays reserved");
        let (_, researchers) = replicas[2].spent().await.unwrap();
        assert_eq!(writers.used + researchers.used, used, "the crews' months add up to the tenant's");
        let cost: f64 = admin
            .query_one("SELECT SUM(cost_usd)::float8 FROM usage_events WHERE tenant_id = $1", &[&spender.name])
            .await
            .unwrap()
            .get(0);
        assert!((cost - calls as f64 * 0.000125).abs() < 1e-9, "cost {cost} over {calls} calls");
        // A new run is refused before it starts.
        assert!(matches!(replicas[1].check().await, Err(BudgetError::TenantMonthly { .. })));

        // The other tenant shares the database and none of this: its month is untouched.
        let other_limit = Limits { tenant: Some(1000), crew: None };
        let other_ledger = TokenLedger::new(&Secret::new(other.app_url.clone()), &other.name, "writers", other_limit).unwrap();
        assert_eq!(other_ledger.spent().await.unwrap().0.used, 0, "row-level security keeps the months apart");
        // A call in flight holds its reservation: the next is refused while it counts...
        let held = other_ledger.reserve(1000).await.unwrap();
        assert!(held.is_some());
        let refused = other_ledger.reserve(10).await.unwrap_err();
        assert_eq!(refused, BudgetError::TenantMonthly { limit: 1000, used: 0 });
        // ...and a reservation whose replica died stops counting once it expires.
        other
            .admin()
            .await
            .execute("UPDATE token_reservations SET expires_at = now() - interval '1 second' WHERE tenant_id = $1", &[
                &other.name,
            ])
            .await
            .unwrap();
        assert!(other_ledger.reserve(10).await.unwrap().is_some(), "the expired reservation no longer counts");

        // The app role cannot rewrite what was spent: the month can only be counted up.
        let app = other.app().await;
        let err = app.execute("DELETE FROM token_budgets", &[]).await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{err:?}");
        let err = app.execute("DELETE FROM usage_events", &[]).await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn the_crews_own_month_is_shared_by_its_replicas_too() {
    pg::with_tenants(DatabaseIsolation::Dedicated, &["crewmonth"], async |tenants| {
        let t = &tenants[0];
        let limits = Limits { tenant: None, crew: Some(1500) };
        let a = TokenLedger::new(&Secret::new(t.app_url.clone()), &t.name, "writers", limits).unwrap();
        let b = TokenLedger::new(&Secret::new(t.app_url.clone()), &t.name, "writers", limits).unwrap();
        let usage = Usage { prompt_tokens: 700, completion_tokens: 100, total_tokens: 800, cost: None };
        for ledger in [&a, &b] {
            let r = ledger.reserve(RESERVE).await.unwrap();
            ledger.settle(r, CallUsage { agent: "writer", model: "m", run_id: "r", usage: &usage }).await.unwrap();
        }
        // 1600 spent across the two replicas: each would have allowed another call on its own.
        assert_eq!(b.reserve(RESERVE).await.unwrap_err(), BudgetError::Monthly { limit: 1500, used: 1600 });
        assert_eq!(a.check().await.unwrap_err().category(), "monthly_budget_exceeded");
        // Another crew of the tenant has a month of its own.
        let c = TokenLedger::new(&Secret::new(t.app_url.clone()), &t.name, "researchers", limits).unwrap();
        assert!(c.reserve(RESERVE).await.unwrap().is_some());
    })
    .await;
}
