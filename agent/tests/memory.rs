//! memory_save / memory_search and usage events against the harness's real PostgreSQL, as a
//! tenant app role (LOGIN, NOBYPASSRLS, not the owner) under forced row-level security, in a
//! tenant database provisioned by the operator's code (see `pg`).

mod pg;
mod support;

use bizosaas_agent::db::Db;
use bizosaas_agent::secret::Secret;
use bizosaas_agent::stub::{Reply, StubServer};
use bizosaas_agent::tools::memory::Memory;
use bizosaas_crds::tenant::DatabaseIsolation;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use support::{app_with, crew, messages, options};

#[tokio::test]
async fn memory_and_usage_in_the_tenant_database_under_row_level_security() {
    pg::with_tenants(DatabaseIsolation::Dedicated, &["mem"], async |tenants| {
        let tenant = &tenants[0];
        let acme = tenant.name.as_str();
        let password = tenant.credentials.password.clone();
        let db_admin = tenant.admin().await;
        // Another tenant's rows, written by the admin: the app role must never see them.
        db_admin
            .batch_execute(&format!(
                "INSERT INTO agent_memory (tenant_id, crew, agent, content) VALUES ('globex', 'growth-team', 'spy', 'globex garden sofas plan');
                 INSERT INTO token_budgets (tenant_id, scope, month, used) VALUES ('globex', 'growth-team', date_trunc('month', now() AT TIME ZONE 'UTC')::date, 1998);
                 INSERT INTO token_budgets (tenant_id, scope, month, used) VALUES ('{acme}', 'growth-team', date_trunc('month', now() AT TIME ZONE 'UTC')::date, 150);",
            ))
            .await
            .unwrap();
        let app_url = tenant.app_url.clone();

        // ---- The tools directly, as the app role.
        let db = Arc::new(Db::new(&Secret::new(app_url.clone())).unwrap());
        let memory = Memory::new(db.clone(), acme, "growth-team");
        let id =
            memory.save("writer", "Spring sale: garden sofas 20% off", &json!({"topic": "pricing"})).await.unwrap();
        assert!(id > 0);
        Memory::new(db.clone(), acme, "other-crew")
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
        let app = tenant.app().await;
        let visible: i64 = app.query_one("SELECT count(*) FROM agent_memory", &[]).await.unwrap().get(0);
        assert_eq!(visible, 2);
        // Usage is append-only for the app role: what is billed cannot be rewritten.
        let refused = app.execute("DELETE FROM usage_events", &[]).await.unwrap_err();
        assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{refused:?}");
        let refused = app.execute("UPDATE audit_log SET action = 'nothing'", &[]).await.unwrap_err();
        assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{refused:?}");

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
        let mut c = crew(&stub.base_url(), json!({"tenant": acme, "memory": true, "monthlyTokens": 100000}));
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

        // Each call's usage event is written before the run goes on: by the time it succeeded,
        // all three are there, with the agent and the run.
        let rows = db_admin
            .query(
                "SELECT tenant_id, crew, agent, model, run_id, prompt_tokens, completion_tokens FROM usage_events \
                 WHERE tenant_id = $1 AND model = 'stub-model' ORDER BY id",
                &[&acme],
            )
            .await
            .unwrap();
        let run_id = run["id"].as_str().unwrap().to_string();
        let rows: Vec<(String, String, String, String, String, i64, i64)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6))).collect();
        let row = |p, c| (acme.into(), "growth-team".into(), "writer".into(), "stub-model".into(), run_id.clone(), p, c);
        assert_eq!(rows, [row(40, 10), row(60, 8), row(80, 9)]);
        // The crew's month in the database (150 before the run) counts on; another tenant's
        // row of the same crew name is never counted.
        let budget = app_runtime.get("/v1/crew").await.1["budget"].clone();
        assert_eq!(budget["monthlyUsed"], 357, "150 from the database + 207 of the run: {budget}");
        assert_eq!(budget["tenantMonthlyUsed"], 207, "{budget}");
    })
    .await;
}
