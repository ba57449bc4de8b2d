//! Each Tenant's token usage this calendar month, read from its database (where every crew
//! replica counts its model calls) and reported on the Tenant: `status.usage`, and a
//! `BudgetExhausted` condition that is True once the month's budget is spent.

use crate::background::Background;
use crate::conditions::{self, Observed};
use crate::context::Context;
use crate::postgres::{Admin, TenantNames};
use bizosaas_crds::Tenant;
use bizosaas_crds::tenant::{DatabaseIsolation, TenantUsage};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

pub const BUDGET_EXHAUSTED: &str = "BudgetExhausted";

/// How often usage is read: what a Tenant's status lags behind its crews' spending.
const INTERVAL: Duration = Duration::from_secs(15);

/// Dedicated databases read at once (each read holds one admin connection).
const CONCURRENT_READS: usize = 4;

/// Starts reporting, when the operator has a database.
pub fn spawn(ctx: Arc<Context>, tenants: Store<DeserializeGuard<Tenant>>) -> Option<Background> {
    let admin = ctx.postgres.clone()?;
    Some(Background::spawn(async move {
        loop {
            tokio::time::sleep(INTERVAL).await;
            report(&ctx, &admin, &tenants).await;
        }
    }))
}

/// The usage part of a Tenant's status: `usage` and the `BudgetExhausted` condition.
pub fn usage_status(month: &str, used: i64, budget: i64) -> (TenantUsage, Observed) {
    let usage =
        TenantUsage { month: month.to_string(), tokens_used: used, monthly_tokens: (budget > 0).then_some(budget) };
    let condition = if budget <= 0 {
        Observed::failed(
            BUDGET_EXHAUSTED,
            "Unlimited",
            format!("{used} tokens used in {month}; the plan sets no budget"),
        )
    } else if used >= budget {
        Observed::ok(
            BUDGET_EXHAUSTED,
            "MonthlyTokensUsed",
            format!(
                "{used} of {budget} tokens used in {month}: new crew runs are refused until the month ends \
                 or quota.monthlyTokens is raised"
            ),
        )
    } else {
        Observed::failed(BUDGET_EXHAUSTED, "WithinBudget", format!("{used} of {budget} tokens used in {month}"))
    };
    (usage, condition)
}

/// The Tenant's conditions with `BudgetExhausted` replaced by `observed` (keeping its
/// transition time while its status holds).
pub fn with_budget_condition(previous: &[Condition], observed: &Observed, generation: Option<i64>) -> Vec<Condition> {
    let mut next: Vec<Condition> = previous.iter().filter(|c| c.type_ != BUDGET_EXHAUSTED).cloned().collect();
    next.extend(conditions::merge(previous, std::slice::from_ref(observed), generation));
    next
}

async fn report(ctx: &Context, admin: &Admin, tenants: &Store<DeserializeGuard<Tenant>>) {
    // The store's shared copies: nothing is cloned until a Tenant has usage to write.
    let state = tenants.state();
    let provisioned: Vec<&Tenant> = state
        .iter()
        .filter_map(|guard| guard.0.as_ref().ok())
        .filter(|t| t.metadata.deletion_timestamp.is_none())
        .filter(|t| t.status.as_ref().is_some_and(|s| s.database.is_some()))
        .collect();
    let mut month = None;
    let mut used = BTreeMap::new();
    if provisioned.iter().any(|t| t.spec.database.isolation == DatabaseIsolation::Shared) {
        match admin.month_usage(None).await {
            Ok((m, by_tenant)) => {
                month = Some(m);
                used.extend(by_tenant);
            }
            Err(e) => warn!(error = %e, "cannot read the shared tenants' token usage"),
        }
    }
    let dedicated = provisioned.iter().filter(|t| t.spec.database.isolation == DatabaseIsolation::Dedicated);
    let reads: Vec<_> = dedicated
        .filter_map(|t| TenantNames::new(&t.name_any()).ok())
        .map(|names| {
            let admin = admin.clone();
            async move { (admin.month_usage(Some(&names)).await, names) }
        })
        .collect();
    let mut reads = futures::stream::iter(reads).buffer_unordered(CONCURRENT_READS);
    while let Some((read, names)) = reads.next().await {
        match read {
            Ok((m, by_tenant)) => {
                month = Some(m);
                used.extend(by_tenant.into_iter().filter(|(tenant, _)| *tenant == names.tenant_id));
            }
            // Provisioned by an older operator (no token_budgets yet) or not reachable now.
            Err(e) => debug!(tenant = %names.tenant_id, error = %e, "no token usage read"),
        }
    }
    let Some(month) = month else { return };
    let api = Api::<Tenant>::all(ctx.client.clone());
    for tenant in provisioned {
        let name = tenant.name_any();
        let budget = ctx.config.plans.effective(tenant.spec.plan, tenant.spec.quota.as_ref()).monthly_tokens;
        let tokens = used.get(&name).copied().unwrap_or(0);
        let Some(status) = tenant.status.as_ref() else { continue };
        // A tenant whose crews never spent a token has nothing to report (and costs no write).
        if tokens == 0 && status.usage.is_none() {
            continue;
        }
        let (usage, observed) = usage_status(&month, tokens, budget);
        let current = status.conditions.iter().find(|c| c.type_ == BUDGET_EXHAUSTED);
        let unchanged = status.usage.as_ref() == Some(&usage)
            && current.is_some_and(|c| (c.status == "True") == observed.status && c.message == observed.message);
        if unchanged {
            continue;
        }
        let conditions = with_budget_condition(&status.conditions, &observed, tenant.metadata.generation);
        // The resourceVersion makes it a compare-and-swap: a status the Tenant controller
        // wrote meanwhile is never overwritten with an older one (the next round retries).
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": tenant.resource_version()},
            "status": {"usage": usage, "conditions": conditions},
        });
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {
                ctx.metrics.write(super::CONTROLLER, "Tenant", "status");
                let exhausted_now = observed.status && current.is_none_or(|c| c.status != "True");
                if exhausted_now {
                    let event = Event {
                        type_: EventType::Warning,
                        reason: observed.reason.clone(),
                        note: Some(observed.message.clone()),
                        action: BUDGET_EXHAUSTED.into(),
                        secondary: None,
                    };
                    if let Err(e) = ctx.recorder.publish(&event, &tenant.object_ref(&())).await {
                        debug!(tenant = %name, error = %e, "cannot record the budget event");
                    }
                }
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                debug!(tenant = %name, "the Tenant changed meanwhile; its usage is reported next round")
            }
            Err(e) => warn!(tenant = %name, error = %e, "cannot report the Tenant's token usage"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_exhausted_once_the_month_is_spent() {
        let (usage, observed) = usage_status("2026-12", 1200, 1000);
        assert_eq!(usage, TenantUsage { month: "2026-12".into(), tokens_used: 1200, monthly_tokens: Some(1000) });
        assert!(observed.status);
        assert_eq!(observed.reason, "MonthlyTokensUsed");
        assert!(observed.message.contains("1200 of 1000 tokens used in 2026-12"), "{}", observed.message);
        let (_, within) = usage_status("2026-12", 999, 1000);
        assert_eq!((within.status, within.reason.as_str()), (false, "WithinBudget"));
        let (unlimited, observed) = usage_status("2026-12", 5, 0);
        assert_eq!((unlimited.monthly_tokens, observed.status, observed.reason.as_str()), (None, false, "Unlimited"));
    }

    #[test]
    fn only_the_budget_condition_is_replaced() {
        let ready = Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Provisioned".into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-01T00:00:00Z".parse().unwrap(),
            ),
            observed_generation: Some(1),
        };
        let (_, within) = usage_status("2026-12", 1, 10);
        let first = with_budget_condition(std::slice::from_ref(&ready), &within, Some(1));
        assert_eq!(first.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["Ready", BUDGET_EXHAUSTED]);
        assert_eq!(first[0], ready, "the Tenant controller's conditions are kept as they are");
        let (_, spent) = usage_status("2026-12", 10, 10);
        let second = with_budget_condition(&first, &spent, Some(1));
        assert_eq!(second.len(), 2);
        assert_eq!((second[1].status.as_str(), second[1].reason.as_str()), ("True", "MonthlyTokensUsed"));
    }
}
