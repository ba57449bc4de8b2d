//! Usage export to Lago against the harness's real PostgreSQL and a local stand-in for Lago's
//! batch events API that checks every request against Lago's documented schema and behaves as
//! Lago does: a batch is atomic, and a transaction id it already holds refuses the whole batch
//! with `422 value_already_exist`. Usage events arrive exactly once, whatever fails on the way:
//! a 503, a batch Lago took whose answer was lost, a restart, a refusal, an open write.
//!
//! The admin URL comes from BIZOSAAS_TEST_DATABASE_URL (`./dev test` sets it); start the
//! server with `bash tests/harness/postgres.sh up`.

#[path = "../../tests/common/lago.rs"]
mod lago;
mod support;

use bizosaas_controllers::lago::{ApiKey, BATCH_LIMIT, End, ExportTarget, LagoClient, TARGET, export_once};
use bizosaas_controllers::postgres::{Admin, TenantNames};
use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy};
use lago::{Answer, LAGO_BATCH_LIMIT, Lago, serve};
use serde_json::Value;
use support::{admin_url, admin_url_for, connect};

const API_KEY: &str = "lago-test-key-0123456789";
const CODE: &str = "llm_tokens";
const SUBSCRIPTION: &str = "sub_export_a";
const SHARED_SUBSCRIPTION: &str = "sub_export_s";

/// Records `count` model calls as the tenant's app role; some report a cost, some do not.
async fn record_calls(app: &tokio_postgres::Client, tenant: &str, count: usize, first: usize) {
    for n in first..first + count {
        let cost = (n % 3 != 0).then(|| format!("0.{:06}", 37 * n + 1));
        let model = if n % 2 == 0 { "openai/gpt-4o-mini" } else { "anthropic/claude-haiku" };
        app.execute(
            "INSERT INTO usage_events (tenant_id, crew, agent, model, run_id, prompt_tokens, completion_tokens, cost_usd) \
             VALUES ($1, 'support', 'triage', $2, $3, $4, $5, $6::text::numeric)",
            &[&tenant, &model, &format!("run-{}", n / 10), &(100 + n as i64), &(n as i64 % 50), &cost],
        )
        .await
        .unwrap();
    }
}

/// The tenant's cursor as the database holds it.
async fn cursor(db: &tokio_postgres::Client, tenant: &str) -> i64 {
    db.query_opt("SELECT last_event_id FROM usage_exports WHERE tenant_id = $1 AND target = $2", &[&tenant, &TARGET])
        .await
        .unwrap()
        .map_or(0, |r| r.get(0))
}

/// What the database holds for a tenant: (events, tokens, micro-dollars).
async fn recorded_totals(db: &tokio_postgres::Client, tenant: &str) -> (usize, i64, i64) {
    let row = db
        .query_one(
            "SELECT count(*), sum(prompt_tokens + completion_tokens)::bigint, \
                    coalesce(round(sum(cost_usd) * 1000000), 0)::bigint FROM usage_events WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap();
    (row.get::<_, i64>(0) as usize, row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reaches_lago_exactly_once_through_failures_restarts_and_refusals() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = admin_url();
    let platform = "bizosaas_platform_usage_export";
    let admin = Admin::new(&url, None, platform).unwrap();
    let (a, s) = (TenantNames::new("export-a").unwrap(), TenantNames::new("export-s").unwrap());
    admin.retire_tenant(&a, DatabaseIsolation::Dedicated, DeletionPolicy::Delete).await.unwrap();
    admin.retire_tenant(&s, DatabaseIsolation::Shared, DeletionPolicy::Delete).await.unwrap();
    let creds = admin.ensure_tenant(&a, DatabaseIsolation::Dedicated, None).await.unwrap();
    let shared_creds = admin.ensure_tenant(&s, DatabaseIsolation::Shared, None).await.unwrap();
    let app = connect(&creds.url()).await;
    let db = connect(&admin_url_for(&a.database)).await;

    assert_eq!(BATCH_LIMIT, LAGO_BATCH_LIMIT, "batches as large as Lago takes");
    let lago = Lago::shared(API_KEY, CODE, &[SUBSCRIPTION, SHARED_SUBSCRIPTION]);
    let base = serve(lago.clone(), [127, 0, 0, 1].into()).await;
    let client = LagoClient::new(&base, &ApiKey::new(API_KEY)).unwrap();
    let target = ExportTarget { names: &a, isolation: DatabaseIsolation::Dedicated, subscription: SUBSCRIPTION };

    // Nothing recorded yet: nothing sent.
    let idle = export_once(&admin, &client, CODE, target).await;
    assert_eq!((idle.exported, &idle.end), (0, &End::UpToDate));
    assert!(lago.lock().unwrap().requests.is_empty());

    // Lago is down: nothing moves.
    record_calls(&app, &a.tenant_id, 150, 0).await;
    lago.lock().unwrap().script.push_back(Answer::Unavailable);
    let down = export_once(&admin, &client, CODE, target).await;
    assert!(matches!(&down.end, End::Unavailable(m) if m.contains("HTTP 503")), "{down:?}");
    assert_eq!((down.exported, cursor(&db, &a.tenant_id).await), (0, 0));

    // The first batch is accepted; Lago takes the second but its answer is lost.
    lago.lock().unwrap().script.extend([Answer::AsLago, Answer::IngestThenUnavailable]);
    let lost = export_once(&admin, &client, CODE, target).await;
    assert_eq!(lost.exported, BATCH_LIMIT as u64, "{lost:?}");
    assert!(matches!(lost.end, End::Unavailable(_)), "{lost:?}");
    let before_restart = cursor(&db, &a.tenant_id).await;
    assert_eq!(Some(before_restart), lost.through);

    // A new exporter (the operator restarted) picks up at the cursor: the lost batch goes
    // again, Lago refuses it as held, and the rest goes without it.
    record_calls(&app, &a.tenant_id, 60, 150).await;
    let sent_before_restart = lago.lock().unwrap().requests.len();
    let admin = Admin::new(&url, None, platform).unwrap();
    let client = LagoClient::new(&base, &ApiKey::new(API_KEY)).unwrap();
    let resumed = export_once(&admin, &client, CODE, target).await;
    assert_eq!((resumed.exported, &resumed.end), (110, &End::UpToDate), "{resumed:?}");
    {
        let lago = lago.lock().unwrap();
        let again: Vec<&String> = lago.requests[sent_before_restart..].iter().flatten().collect();
        let first_again: i64 =
            again.iter().map(|id| id.rsplit(':').next().unwrap().parse::<i64>().unwrap()).min().unwrap();
        assert!(first_again > before_restart, "nothing the cursor had passed is sent again");
        let sizes: Vec<usize> = lago.requests[sent_before_restart..].iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 50, 10], "the batch Lago partly held, again without what it held, then the rest");
    }

    // Caught up: no request at all.
    let requests = lago.lock().unwrap().requests.len();
    let caught_up = export_once(&admin, &client, CODE, target).await;
    assert_eq!((caught_up.exported, &caught_up.end), (0, &End::UpToDate));
    assert_eq!(lago.lock().unwrap().requests.len(), requests);

    // A subscription Lago does not know: refused with Lago's words (never the key), the
    // cursor stays, and once the Tenant names the right one the events go.
    record_calls(&app, &a.tenant_id, 5, 210).await;
    let held_at = cursor(&db, &a.tenant_id).await;
    let wrong = ExportTarget { subscription: "sub_unknown", ..target };
    let refused = export_once(&admin, &client, CODE, wrong).await;
    let End::Refused(message) = &refused.end else { panic!("not refused: {refused:?}") };
    assert!(message.starts_with("HTTP 422 Unprocessable Entity (validation_errors)"), "{message}");
    assert!(message.contains("subscription_not_found") && !message.contains(API_KEY), "{message}");
    assert_eq!((refused.exported, cursor(&db, &a.tenant_id).await), (0, held_at));
    let fixed = export_once(&admin, &client, CODE, target).await;
    assert_eq!((fixed.exported, &fixed.end), (5, &End::UpToDate));

    // A model call whose transaction is still open holds the export back, though a later
    // call is already visible: moving past it would lose it for good.
    let open = connect(&creds.url()).await;
    open.batch_execute("BEGIN").await.unwrap();
    record_calls(&open, &a.tenant_id, 1, 215).await;
    record_calls(&app, &a.tenant_id, 1, 216).await;
    let requests = lago.lock().unwrap().requests.len();
    let waiting = export_once(&admin, &client, CODE, target).await;
    assert_eq!((waiting.exported, &waiting.end), (0, &End::InFlight));
    assert_eq!(lago.lock().unwrap().requests.len(), requests);
    open.batch_execute("COMMIT").await.unwrap();
    let settled = export_once(&admin, &client, CODE, target).await;
    assert_eq!((settled.exported, &settled.end), (2, &End::UpToDate));

    // A Shared tenant: its own cursor and transaction ids in the platform database.
    let shared_app = connect(&shared_creds.url()).await;
    record_calls(&shared_app, &s.tenant_id, 3, 0).await;
    let shared = ExportTarget { names: &s, isolation: DatabaseIsolation::Shared, subscription: SHARED_SUBSCRIPTION };
    let exported = export_once(&admin, &client, CODE, shared).await;
    assert_eq!((exported.exported, &exported.end), (3, &End::UpToDate));

    // Every usage event is in Lago exactly once, as recorded, and the totals agree.
    let lago = lago.lock().unwrap().clone();
    assert!(lago.violations.is_empty(), "requests Lago would refuse: {:?}", lago.violations);
    assert!(lago.ingested_twice().is_empty(), "ingested twice: {:?}", lago.ingested_twice());
    assert_eq!(lago.totals(&a.tenant_id), recorded_totals(&db, &a.tenant_id).await);
    assert_eq!(recorded_totals(&db, &a.tenant_id).await.0, 217);
    let platform_db = connect(&admin_url_for(platform)).await;
    assert_eq!(lago.totals(&s.tenant_id), recorded_totals(&platform_db, &s.tenant_id).await);
    let rows = db
        .query(
            "SELECT id, model, crew, agent, run_id, cost_usd::text, floor(extract(epoch FROM created_at))::bigint \
             FROM usage_events WHERE tenant_id = $1",
            &[&a.tenant_id],
        )
        .await
        .unwrap();
    for row in rows {
        let id: i64 = row.get(0);
        let (event, _) = &lago.ingested[&format!("bizosaas:export-a:{id}")];
        assert_eq!(event["external_subscription_id"], SUBSCRIPTION);
        assert_eq!(event["timestamp"], row.get::<_, i64>(6));
        let properties = &event["properties"];
        for (key, column) in [("model", 1), ("crew", 2), ("agent", 3), ("run_id", 4)] {
            assert_eq!(properties[key], row.get::<_, String>(column), "{key} of {id}");
        }
        assert_eq!(properties.get("cost_usd").and_then(Value::as_str), row.get::<_, Option<String>>(5).as_deref());
    }

    // The tenant may read how far it is billed, never move it.
    let seen: i64 =
        app.query_one("SELECT last_event_id FROM usage_exports WHERE target = $1", &[&TARGET]).await.unwrap().get(0);
    assert_eq!(seen, cursor(&db, &a.tenant_id).await);
    let moved = app.execute("UPDATE usage_exports SET last_event_id = 0", &[]).await;
    assert!(moved.is_err(), "the app role moved the export cursor");
    let other = shared_app.query("SELECT 1 FROM usage_exports WHERE tenant_id <> $1", &[&s.tenant_id]).await.unwrap();
    assert!(other.is_empty(), "a Shared tenant sees another tenant's cursor");

    drop((app, open, shared_app));
    admin.retire_tenant(&a, DatabaseIsolation::Dedicated, DeletionPolicy::Delete).await.unwrap();
    admin.retire_tenant(&s, DatabaseIsolation::Shared, DeletionPolicy::Delete).await.unwrap();
}
