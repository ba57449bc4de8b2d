//! The export of each Tenant's usage to Lago (`billing.lago`): a pass per tenant every 15 s,
//! backing off per tenant while Lago fails or refuses, reported on the Tenant as the
//! `UsageExported` condition, which is written only when it changes.

use crate::background::Background;
use crate::conditions::{self, Observed};
use crate::context::Context;
use crate::lago::{self, End, ExportTarget, LagoClient, Outcome};
use crate::metrics::{ReasonLabels, TenantLabels};
use crate::postgres::{Admin, TenantNames};
use bizosaas_crds::Tenant;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

pub const USAGE_EXPORTED: &str = "UsageExported";

/// How often due tenants are looked for.
const TICK: Duration = Duration::from_secs(5);
/// How long after a pass that caught up a tenant's next one starts: what Lago lags behind.
const INTERVAL: Duration = Duration::from_secs(15);
/// The first retry after a failure; it doubles per failure up to [`BACKOFF_CAP`].
const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Transient failures in a row before the Tenant shows them (one 503 is not news).
const FAILURES_SHOWN_AFTER: u32 = 3;
/// How long a tenant's open usage write may hold its export back before the Tenant shows it.
const IN_FLIGHT_SHOWN_AFTER: Duration = Duration::from_secs(300);
/// Tenants exported at once (each pass holds one admin connection at a time).
const CONCURRENT_EXPORTS: usize = 4;

/// What a pass needs.
struct Exporter {
    admin: Admin,
    lago: LagoClient,
    code: String,
}

/// What the operator can do for Tenants with `billing.lago`.
enum Mode {
    Export(Box<Exporter>),
    /// Nothing but say why.
    Off(String),
}

/// Starts exporting (or, without Lago or a database, reporting that usage is not exported).
pub fn spawn(ctx: Arc<Context>, tenants: Store<DeserializeGuard<Tenant>>) -> Background {
    let mode = mode(&ctx);
    Background::spawn(async move {
        let mut schedules = HashMap::new();
        loop {
            tokio::time::sleep(TICK).await;
            tick(&ctx, &mode, &tenants, &mut schedules).await;
        }
    })
}

fn mode(ctx: &Context) -> Mode {
    match (&ctx.config.lago, &ctx.postgres) {
        (None, _) => Mode::Off(
            "The operator has no Lago URL (--lago-url, the chart's billing.lago.url): usage is not exported".into(),
        ),
        (Some(_), None) => {
            Mode::Off("The operator has no database (--database-url): there is no usage to export".into())
        }
        (Some(config), Some(admin)) => match LagoClient::new(&config.url, &config.api_key) {
            Ok(lago) => {
                Mode::Export(Box::new(Exporter { admin: admin.clone(), lago, code: config.metric_code.clone() }))
            }
            Err(e) => Mode::Off(format!("The operator's Lago settings are unusable: {e}")),
        },
    }
}

/// When a tenant is exported next, and how its recent passes went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Schedule {
    next: Option<Instant>,
    /// Failed passes in a row.
    failures: u32,
    /// Since when open writes have held the export back.
    in_flight_since: Option<Instant>,
    /// The subscription the passes sent to: a new one (a refusal fixed in the Tenant) is
    /// tried at once.
    subscription: String,
}

/// The wait after the `failures`-th failure in a row: 10 s, doubling, at most 5 min.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_START.saturating_mul(1 << doublings).min(BACKOFF_CAP)
}

impl Schedule {
    /// Plans the next pass after `outcome`.
    fn after(&mut self, outcome: &Outcome, now: Instant) {
        if outcome.end == End::InFlight {
            self.in_flight_since.get_or_insert(now);
        } else {
            self.in_flight_since = None;
        }
        let wait = match &outcome.end {
            End::UpToDate => INTERVAL,
            // More is waiting, or the open write is likely to end within moments.
            End::More | End::InFlight => TICK,
            End::Refused(_) | End::Unavailable(_) | End::Database(_) => {
                self.failures += 1;
                backoff(self.failures)
            }
        };
        if outcome.end.failure().is_none() {
            self.failures = 0;
        }
        self.next = Some(now + wait);
    }
}

/// The condition a pass calls for, or `None` when the current one still says it.
fn observe(outcome: &Outcome, schedule: &Schedule, current: Option<&Condition>, now: Instant) -> Option<Observed> {
    let currently_true = current.is_some_and(|c| c.status == "True");
    match &outcome.end {
        End::UpToDate | End::More if outcome.exported > 0 => Some(Observed::ok(
            USAGE_EXPORTED,
            "Exported",
            format!(
                "{} usage events exported to Lago in the last pass, through usage event {}",
                outcome.exported,
                outcome.through.unwrap_or_default()
            ),
        )),
        End::UpToDate | End::More if currently_true => None,
        End::UpToDate | End::More => {
            Some(Observed::ok(USAGE_EXPORTED, "Exported", "Every usage event is exported to Lago"))
        }
        End::Refused(message) => Some(Observed::failed(
            USAGE_EXPORTED,
            "LagoRefused",
            format!("Lago refused the usage events: {message}. The export retries with backoff"),
        )),
        End::Unavailable(message) if schedule.failures >= FAILURES_SHOWN_AFTER => Some(Observed::failed(
            USAGE_EXPORTED,
            "LagoUnavailable",
            format!("Lago does not take the usage events: {message}. The export retries with backoff"),
        )),
        End::Database(message) if schedule.failures >= FAILURES_SHOWN_AFTER => {
            Some(Observed::failed(USAGE_EXPORTED, "UsageUnreadable", message.clone()))
        }
        End::InFlight if schedule.in_flight_since.is_some_and(|s| now.duration_since(s) >= IN_FLIGHT_SHOWN_AFTER) => {
            Some(Observed::failed(
                USAGE_EXPORTED,
                "UsageInFlight",
                "A transaction of the tenant's database role that records usage has been open for minutes: \
                 usage recorded after it is exported once it ends",
            ))
        }
        End::Unavailable(_) | End::Database(_) | End::InFlight => None,
    }
}

/// The Tenant's conditions with `UsageExported` replaced by `observed` (keeping its
/// transition time while its status holds).
fn with_export_condition(previous: &[Condition], observed: &Observed, generation: Option<i64>) -> Vec<Condition> {
    let mut next: Vec<Condition> = previous.iter().filter(|c| c.type_ != USAGE_EXPORTED).cloned().collect();
    next.extend(conditions::merge(previous, std::slice::from_ref(observed), generation));
    next
}

/// The Lago subscription of a Tenant that asks for the export.
fn subscription(tenant: &Tenant) -> Option<&str> {
    let lago = tenant.spec.billing.as_ref()?.lago.as_ref()?;
    Some(lago.external_subscription_id.as_str())
}

async fn tick(
    ctx: &Context,
    mode: &Mode,
    tenants: &Store<DeserializeGuard<Tenant>>,
    schedules: &mut HashMap<String, Schedule>,
) {
    let subscribers: Vec<Tenant> = tenants
        .state()
        .iter()
        .filter_map(|guard| guard.0.as_ref().ok())
        .filter(|t| t.metadata.deletion_timestamp.is_none() && subscription(t).is_some())
        .cloned()
        .collect();
    let (admin, lago, code) = match mode {
        Mode::Export(exporter) => (&exporter.admin, &exporter.lago, exporter.code.as_str()),
        Mode::Off(message) => {
            for tenant in &subscribers {
                let observed = Observed::failed(USAGE_EXPORTED, "ExportNotConfigured", message.clone());
                report(ctx, tenant, observed).await;
            }
            return;
        }
    };
    let gone: Vec<String> =
        schedules.keys().filter(|name| !subscribers.iter().any(|t| t.name_any() == **name)).cloned().collect();
    for name in gone {
        schedules.remove(&name);
        ctx.metrics.usage_exported.remove(&TenantLabels { tenant: name });
    }
    for tenant in &subscribers {
        if let Some(schedule) = schedules.get_mut(&tenant.name_any())
            && Some(schedule.subscription.as_str()) != subscription(tenant)
        {
            *schedule = Schedule::default();
        }
    }
    let now = Instant::now();
    // Provisioned tenants whose next pass is due.
    let due: Vec<(&Tenant, TenantNames)> = subscribers
        .iter()
        .filter(|t| t.status.as_ref().is_some_and(|s| s.database.is_some()))
        .filter(|t| schedules.get(&t.name_any()).and_then(|s| s.next).is_none_or(|next| next <= now))
        .filter_map(|t| Some((t, TenantNames::new(&t.name_any()).ok()?)))
        .collect();
    let passes: Vec<_> = due
        .into_iter()
        .map(|(tenant, names)| async move {
            let target = ExportTarget {
                names: &names,
                isolation: tenant.spec.database.isolation,
                subscription: subscription(tenant).unwrap_or_default(),
            };
            let outcome = lago::export_once(admin, lago, code, target).await;
            (tenant, outcome)
        })
        .collect();
    // Every pass first, so that no status write holds up a request to Lago.
    let outcomes: Vec<_> = futures::stream::iter(passes).buffer_unordered(CONCURRENT_EXPORTS).collect().await;
    for (tenant, outcome) in outcomes {
        let name = tenant.name_any();
        let now = Instant::now();
        let schedule = schedules.entry(name.clone()).or_default();
        schedule.after(&outcome, now);
        schedule.subscription = subscription(tenant).unwrap_or_default().to_string();
        if outcome.exported > 0 {
            ctx.metrics.usage_exported.get_or_create(&TenantLabels { tenant: name.clone() }).inc_by(outcome.exported);
        }
        if let Some(reason) = outcome.end.failure() {
            ctx.metrics.usage_export_failures.get_or_create(&ReasonLabels { reason }).inc();
        }
        match &outcome.end {
            End::Refused(message) => warn!(tenant = %name, %message, "Lago refused the usage events"),
            End::Unavailable(message) | End::Database(message) => {
                debug!(tenant = %name, %message, failures = schedule.failures, "usage export failed")
            }
            _ => {}
        }
        let current = tenant.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == USAGE_EXPORTED));
        if let Some(observed) = observe(&outcome, schedule, current, now) {
            report(ctx, tenant, observed).await;
        }
    }
}

/// Writes `observed` as the Tenant's `UsageExported` condition unless it already says so, and
/// records an event when the export starts failing or fails differently.
async fn report(ctx: &Context, tenant: &Tenant, observed: Observed) {
    let status = tenant.status.clone().unwrap_or_default();
    let current = status.conditions.iter().find(|c| c.type_ == USAGE_EXPORTED);
    let unchanged = current.is_some_and(|c| {
        (c.status == "True") == observed.status && c.reason == observed.reason && c.message == observed.message
    });
    if unchanged {
        return;
    }
    let conditions = with_export_condition(&status.conditions, &observed, tenant.metadata.generation);
    // The resourceVersion makes it a compare-and-swap: a status the Tenant controller wrote
    // meanwhile is never overwritten with an older one (the next pass reports again).
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": tenant.resource_version()},
        "status": {"conditions": conditions},
    });
    let name = tenant.name_any();
    let api = Api::<Tenant>::all(ctx.client.clone());
    match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            ctx.metrics.write(super::CONTROLLER, "Tenant", "status");
            ctx.record_transitions(&tenant.object_ref(&()), &status.conditions, &conditions).await;
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            debug!(tenant = %name, "the Tenant changed meanwhile; its usage export is reported next pass")
        }
        Err(e) => warn!(tenant = %name, error = %e, "cannot report the Tenant's usage export"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(exported: u64, end: End) -> Outcome {
        Outcome { exported, through: (exported > 0).then_some(41 + exported as i64), end }
    }

    fn condition(observed: &Observed) -> Condition {
        conditions::merge(&[], std::slice::from_ref(observed), Some(1)).remove(0)
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn failures_back_off_and_success_resets_them() {
        let now = Instant::now();
        let mut schedule = Schedule::default();
        for _ in 0..3 {
            schedule.after(&outcome(0, End::Unavailable("HTTP 503".into())), now);
        }
        assert_eq!((schedule.failures, schedule.next), (3, Some(now + Duration::from_secs(40))));
        schedule.after(&outcome(0, End::Refused("HTTP 422".into())), now);
        assert_eq!(schedule.next, Some(now + Duration::from_secs(80)), "a refusal is retried later too");
        schedule.after(&outcome(100, End::More), now);
        assert_eq!((schedule.failures, schedule.next), (0, Some(now + TICK)));
        schedule.after(&outcome(3, End::UpToDate), now);
        assert_eq!(schedule.next, Some(now + INTERVAL));
    }

    #[test]
    fn an_idle_tenant_costs_no_write() {
        let now = Instant::now();
        let schedule = Schedule::default();
        let exported = observe(&outcome(3, End::UpToDate), &schedule, None, now).unwrap();
        assert_eq!((exported.status, exported.reason.as_str()), (true, "Exported"));
        assert_eq!(exported.message, "3 usage events exported to Lago in the last pass, through usage event 44");
        let current = condition(&exported);
        assert_eq!(observe(&outcome(0, End::UpToDate), &schedule, Some(&current), now), None);
        let first = observe(&outcome(0, End::UpToDate), &schedule, None, now).unwrap();
        assert_eq!((first.status, first.message.as_str()), (true, "Every usage event is exported to Lago"));
    }

    #[test]
    fn a_refusal_shows_at_once_and_an_outage_after_some_failures() {
        let now = Instant::now();
        let mut schedule = Schedule::default();
        let refused = outcome(0, End::Refused("HTTP 422 Unprocessable Entity (validation_errors)".into()));
        schedule.after(&refused, now);
        let observed = observe(&refused, &schedule, None, now).unwrap();
        assert_eq!((observed.status, observed.reason.as_str()), (false, "LagoRefused"));
        assert!(observed.message.contains("HTTP 422 Unprocessable Entity (validation_errors)"), "{}", observed.message);

        let mut schedule = Schedule::default();
        let down = outcome(0, End::Unavailable("timed out".into()));
        for _ in 1..FAILURES_SHOWN_AFTER {
            schedule.after(&down, now);
            assert_eq!(observe(&down, &schedule, None, now), None, "one failure is not news");
        }
        schedule.after(&down, now);
        assert_eq!(observe(&down, &schedule, None, now).unwrap().reason, "LagoUnavailable");
    }

    #[test]
    fn an_open_write_shows_only_when_it_stays_open() {
        let start = Instant::now();
        let mut schedule = Schedule::default();
        let held = outcome(0, End::InFlight);
        schedule.after(&held, start);
        assert_eq!(observe(&held, &schedule, None, start + Duration::from_secs(60)), None);
        let later = start + IN_FLIGHT_SHOWN_AFTER;
        schedule.after(&held, later);
        assert_eq!(schedule.in_flight_since, Some(start));
        assert_eq!(observe(&held, &schedule, None, later).unwrap().reason, "UsageInFlight");
        schedule.after(&outcome(1, End::UpToDate), later);
        assert_eq!(schedule.in_flight_since, None);
    }

    #[test]
    fn only_the_export_condition_is_replaced() {
        let ready = condition(&Observed::ok("Ready", "Provisioned", ""));
        let exported = Observed::ok(USAGE_EXPORTED, "Exported", "1 usage events exported");
        let first = with_export_condition(std::slice::from_ref(&ready), &exported, Some(1));
        assert_eq!(first.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["Ready", USAGE_EXPORTED]);
        assert_eq!(first[0], ready);
        let refused = Observed::failed(USAGE_EXPORTED, "LagoRefused", "HTTP 401 Unauthorized");
        let second = with_export_condition(&first, &refused, Some(1));
        assert_eq!(second.len(), 2);
        assert_eq!((second[1].status.as_str(), second[1].reason.as_str()), ("False", "LagoRefused"));
    }
}
