//! memory_save / memory_search and usage events against the harness's real PostgreSQL, as a
//! tenant app role (LOGIN, NOBYPASSRLS, not the owner) under forced row-level security.
//!
//! The admin URL comes from BIZOSAAS_TEST_DATABASE_URL, else from
//! `bash tests/harness/postgres.sh url`; start the server with `bash tests/harness/postgres.sh up`.

mod support;

use bizosaas_agent::db::Db;
use bizosaas_agent::secret::Secret;
use bizosaas_agent::stub::{Reply, StubServer};
use bizosaas_agent::tools::memory::Memory;
use futures::FutureExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::{app_with, crew, messages, options};
use tokio_postgres::{Client, NoTls};

const HOW: &str =
    "start it with `bash tests/harness/postgres.sh up` (or set BIZOSAAS_TEST_DATABASE_URL to an admin URL)";

fn admin_url() -> String {
    if let Ok(url) = std::env::var("BIZOSAAS_TEST_DATABASE_URL")
        && !url.is_empty()
    {
        return url;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/harness/postgres.sh");
    let out = std::process::Command::new("bash")
        .args([script, "url"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}; {HOW}"));
    assert!(
        out.status.success(),
        "the PostgreSQL harness has no URL ({}); {HOW}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}; {HOW}"));
    tokio::spawn(connection);
    client
}

/// `url` with another user, password and database.
fn url_for(admin: &str, user: &str, password: &str, database: &str) -> String {
    let mut url = reqwest::Url::parse(admin).expect("admin URL");
    url.set_username(user).unwrap();
    url.set_password(Some(password)).unwrap();
    url.set_path(&format!("/{database}"));
    url.to_string()
}

const SCHEMA: &str = "
CREATE TABLE agent_memory (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    crew text NOT NULL,
    agent text,
    content text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE usage_events (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    crew text,
    model text,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE agent_memory ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_memory FORCE ROW LEVEL SECURITY;
ALTER TABLE usage_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_events FORCE ROW LEVEL SECURITY;
";

fn grants(app: &str) -> String {
    let mut sql = format!("GRANT USAGE ON SCHEMA public TO {app};\n");
    for table in ["agent_memory", "usage_events"] {
        sql.push_str(&format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {app};
GRANT USAGE ON SEQUENCE {table}_id_seq TO {app};
CREATE POLICY tenant_acme_isolation ON {table} AS PERMISSIVE FOR ALL TO {app}
    USING (tenant_id = 'acme') WITH CHECK (tenant_id = 'acme');
"
        ));
    }
    sql
}

#[tokio::test]
async fn memory_and_usage_in_the_tenant_database_under_row_level_security() {
    let admin_url = admin_url();
    let admin = connect(&admin_url).await;
    let suffix = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
    let (database, role, password) = (
        format!("agent_mem_test_{suffix}"),
        format!("agent_mem_app_{suffix}"),
        format!("pw{:016x}", rand::random::<u64>()),
    );
    admin.batch_execute(&format!("CREATE DATABASE {database}")).await.unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD '{password}'"
        ))
        .await
        .unwrap();

    let scenario = async {
        let db_admin_url = {
            let mut url = reqwest::Url::parse(&admin_url).unwrap();
            url.set_path(&format!("/{database}"));
            url.to_string()
        };
        let db_admin = connect(&db_admin_url).await;
        db_admin.batch_execute(SCHEMA).await.unwrap();
        db_admin.batch_execute(&grants(&role)).await.unwrap();
        // Another tenant's rows, written by the admin: the app role must never see them.
        db_admin
            .batch_execute(
                "INSERT INTO agent_memory (tenant_id, crew, agent, content) VALUES ('globex', 'growth-team', 'spy', 'globex garden sofas plan');
                 INSERT INTO usage_events (tenant_id, crew, model, prompt_tokens, completion_tokens) VALUES ('globex', 'growth-team', 'm', 999, 999);
                 INSERT INTO usage_events (tenant_id, crew, model, prompt_tokens, completion_tokens) VALUES ('acme', 'growth-team', 'm', 100, 50);",
            )
            .await
            .unwrap();
        let app_url = url_for(&admin_url, &role, &password, &database);

        // ---- The tools directly, as the app role.
        let db = Arc::new(Db::new(&Secret::new(app_url.clone())).unwrap());
        let memory = Memory::new(db.clone(), "acme", "growth-team");
        let id =
            memory.save("writer", "Spring sale: garden sofas 20% off", &json!({"topic": "pricing"})).await.unwrap();
        assert!(id > 0);
        Memory::new(db.clone(), "acme", "other-crew")
            .save("seo", "Keyword: garden sofa sale", &json!({}))
            .await
            .unwrap();
        let found = memory.search("garden sofas", 5, false).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].id, found[0].content.as_str()), (id, "Spring sale: garden sofas 20% off"));
        assert_eq!(found[0].agent.as_deref(), Some("writer"));
        assert_eq!(found[0].metadata, json!({"topic": "pricing"}));
        assert!(found[0].created_at.ends_with('Z'));
        // The tenant scope finds the other crew's memory, never another tenant's.
        let tenant_wide = memory.search("garden sofa", 10, true).await.unwrap();
        assert_eq!(tenant_wide.len(), 2, "{tenant_wide:?}");
        assert!(tenant_wide.iter().all(|f| !f.content.contains("globex")));
        assert!(memory.search("globex", 10, true).await.unwrap().is_empty());
        // Substring matches and LIKE metacharacters.
        assert_eq!(memory.search("20%", 5, false).await.unwrap().len(), 1);
        assert!(memory.search("_", 5, false).await.unwrap().is_empty(), "_ is no wildcard");

        // Row-level security, not only the WHERE clause: as the app role a runtime configured
        // with another tenant's name can neither write nor read that tenant's rows.
        let wrong = Memory::new(db.clone(), "globex", "growth-team");
        let err = wrong.save("spy", "x", &json!({})).await.unwrap_err();
        assert_eq!(err.category(), "database_error");
        assert!(err.to_string().contains("row-level security"), "{err}");
        assert!(wrong.search("globex", 10, true).await.unwrap().is_empty(), "RLS hides the other tenant's row");
        let app = connect(&app_url).await;
        let visible: i64 = app.query_one("SELECT count(*) FROM agent_memory", &[]).await.unwrap().get(0);
        assert_eq!(visible, 2);
        // This month's usage as the app role counts only the tenant's own rows.
        assert_eq!(db.month_usage("growth-team").await.unwrap(), 150);

        // ---- Through the runtime: tool calls, usage events, readiness, the monthly seed.
        let stub = StubServer::with_script([
            Reply::tool_calls(
                &[(
                    "s1",
                    "memory_save",
                    json!({"content": "Tagline chosen: Spring into comfort", "metadata": {"kind": "decision"}}),
                )],
                40,
                10,
            ),
            Reply::tool_calls(&[("q1", "memory_search", json!({"query": "tagline"}))], 60, 8),
            Reply::text("The tagline is Spring into comfort.", 80, 9),
        ])
        .await;
        let mut c = crew(&stub.base_url(), json!({"memory": true, "monthlyTokens": 100000}));
        c.agents[1].tools = vec!["memory_save".into(), "memory_search".into()];
        let app_runtime = app_with(c, &[("DATABASE_URL", &app_url)], options()).await;
        assert_eq!(app_runtime.get("/readyz").await.0, StatusCode::OK);
        let run = app_runtime.run(json!({"description": "Decide the tagline", "agent": "writer"})).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let chats = stub.chat_requests();
        assert_eq!(support::tool_names(&chats[0].body), ["memory_save", "memory_search"]);
        let saved: Value = serde_json::from_str(messages(&chats[1].body)[3]["content"].as_str().unwrap()).unwrap();
        assert_eq!(saved["saved"], true);
        let results: Value = serde_json::from_str(messages(&chats[2].body)[5]["content"].as_str().unwrap()).unwrap();
        assert_eq!(results["results"][0]["content"], "Tagline chosen: Spring into comfort");
        assert_eq!(results["results"][0]["agent"], "writer");
        assert_eq!(results["results"][0]["metadata"], json!({"kind": "decision"}));
        // The DATABASE_URL (and its password) never reaches the model or the API.
        for r in &chats {
            assert!(!r.body.to_string().contains(&password));
        }

        // Usage events are written in the background: wait for the three calls.
        let mut rows = Vec::new();
        for _ in 0..100 {
            rows = db_admin
                .query(
                    "SELECT tenant_id, crew, model, prompt_tokens, completion_tokens FROM usage_events \
                     WHERE tenant_id = 'acme' AND model = 'stub-model' ORDER BY id",
                    &[],
                )
                .await
                .unwrap();
            if rows.len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rows: Vec<(String, String, String, i64, i64)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
        assert_eq!(
            rows,
            [
                ("acme".into(), "growth-team".into(), "stub-model".into(), 40, 10),
                ("acme".into(), "growth-team".into(), "stub-model".into(), 60, 8),
                ("acme".into(), "growth-team".into(), "stub-model".into(), 80, 9),
            ]
        );
        // The monthly ledger was seeded from the database (150 before the run) and counts on.
        let mut used = Value::Null;
        for _ in 0..100 {
            used = app_runtime.get("/v1/crew").await.1["budget"]["monthlyUsed"].clone();
            if used == 357 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(used, 357, "150 from the database + 207 of the run");
    };
    let outcome = std::panic::AssertUnwindSafe(scenario).catch_unwind().await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await.unwrap();
    admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}")).await.unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
