//! Durable runs: several runtimes of one crew on one tenant database (provisioned by the
//! operator's code, see `pg`) share their runs through `agent_runs`. A run is found by id and
//! by Idempotency-Key on any replica and after a restart, is executed once, is cancelled from
//! any replica, and becomes `interrupted` (never lost, never restarted) when its pod is
//! killed or stops before it finished. Tenants never see each other's runs.
//!
//! Killed and stopped pods are real processes of the `bizosaas-agent` binary (SIGKILL and
//! SIGTERM), which review their callers' tokens with the local cluster's API server as in a
//! pod; the other replicas run in this process. The model is the scripted stub server,
//! which counts the model calls.

mod pg;
mod support;

use bizosaas_agent::auth::DEFAULT_AUDIENCE;
use bizosaas_agent::db::Db;
use bizosaas_agent::secret::Secret;
use bizosaas_agent::serve::RuntimeOptions;
use bizosaas_agent::store::{INTERRUPTED_MESSAGE, RunHandle, RunRecords, RunStatus, RunTiming};
use bizosaas_agent::stub::{Reply, StubServer};
use bizosaas_crds::crew_config::CrewConfig;
use bizosaas_crds::tenant::DatabaseIsolation;
use pg::TestTenant;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use support::{Api, App, LLM_KEY, app_with, cluster, crew, eventually, options};

/// The crews' namespace: the pods admit its ServiceAccounts' tokens.
const CREW_NAMESPACE: &str = "agent-durable-runs";

/// Short timings, so a killed pod's run is interrupted within about two seconds.
fn timing() -> RunTiming {
    RunTiming {
        heartbeat_interval: Duration::from_millis(300),
        stale_after: Duration::from_secs(2),
        cancel_poll: Duration::from_millis(100),
    }
}

fn replica_options(owner: &str) -> RuntimeOptions {
    RuntimeOptions { runs: timing(), owner: owner.into(), ..options() }
}

/// The test crew of `tenant` on the stub.
fn tenant_crew(stub: &StubServer, tenant: &TestTenant) -> CrewConfig {
    crew(&stub.base_url(), json!({"tenant": tenant.name, "namespace": CREW_NAMESPACE}))
}

/// A replica in this process.
async fn replica(crew: &CrewConfig, tenant: &TestTenant, owner: &str, o: Option<RuntimeOptions>) -> App {
    let o = o.unwrap_or_else(|| replica_options(owner));
    app_with(crew.clone(), &[("DATABASE_URL", &tenant.app_url)], o).await
}

/// The runs of the crew as the tenant's app role, outside any runtime: reading marks a
/// silent run interrupted.
fn records(tenant: &TestTenant, tenant_name: &str, stale_after: Duration) -> RunRecords {
    let db = Arc::new(Db::new(&Secret::new(tenant.app_url.clone())).unwrap());
    RunRecords::new(db, tenant_name, "growth-team", "test", RunTiming { stale_after, ..timing() })
}

/// Five tasks for the writer: as many model calls.
fn long_run() -> Value {
    json!({"tasks": (0..5).map(|i| json!({"description": format!("Step {i}"), "agent": "writer"})).collect::<Vec<_>>()})
}

/// `bizosaas-agent serve` as a child process: a pod that can be killed.
struct Pod {
    api: Api,
    child: tokio::process::Child,
    /// Holds the crew file and the logs; removed with the pod.
    dir: PathBuf,
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pod {
    async fn start(crew: &CrewConfig, tenant: &TestTenant, name: &str, extra: &[(&str, &str)]) -> Pod {
        let dir = std::env::temp_dir().join(format!("bizosaas-agent-test-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("crew.json");
        std::fs::write(&config, serde_json::to_vec(crew).unwrap()).unwrap();

        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let t = timing();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_bizosaas-agent"));
        cmd.arg("serve")
            .env("BIZOSAAS_CREW_CONFIG", &config)
            .env("BIZOSAAS_LISTEN", format!("127.0.0.1:{port}"))
            .env("BIZOSAAS_LLM_MAX_RETRIES", "0")
            .env("BIZOSAAS_RUN_HEARTBEAT_INTERVAL", t.heartbeat_interval.as_secs_f64().to_string())
            .env("BIZOSAAS_RUN_STALE_AFTER", t.stale_after.as_secs_f64().to_string())
            .env("BIZOSAAS_RUN_CANCEL_POLL", t.cancel_poll.as_secs_f64().to_string())
            .env("POD_NAME", name)
            .env("TEST_LLM_KEY", LLM_KEY)
            .env("DATABASE_URL", &tenant.app_url)
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(dir.join("agent.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("agent.err")).unwrap())
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        // As in a pod: the runtime reviews its callers' tokens with the API server.
        cmd.env("KUBECONFIG", cluster::kubeconfig());
        let token = cluster::token(&cluster::client().await, CREW_NAMESPACE, "tenant-workload", DEFAULT_AUDIENCE).await;
        let child = cmd.spawn().expect("the bizosaas-agent binary starts");
        let pod = Pod { api: Api::with_token(format!("http://127.0.0.1:{port}"), &token), child, dir };
        let up = async {
            loop {
                if let Ok(r) = pod.api.http.get(pod.api.url("/healthz")).send().await
                    && r.status().is_success()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(20), up).await.is_err() {
            panic!("{name} did not come up:\n{}", pod.logs());
        }
        pod
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("agent.log"), read("agent.err"))
    }

    /// SIGKILL: nothing runs after it, no row is updated.
    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then waits for the process to exit; its exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the pod did not stop after SIGTERM:\n{}", self.logs()),
        }
    }
}

impl std::ops::Deref for Pod {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_runs_by_id_and_idempotency_key_across_restarts() {
    pg::with_tenants(DatabaseIsolation::Dedicated, &["runs"], async |tenants| {
        let tenant = &tenants[0];
        let stub = StubServer::start().await;
        stub.repeat(Reply::text("Spring into comfort.", 5, 3).delayed(Duration::from_millis(800)));
        let c = tenant_crew(&stub, tenant);
        let (a, b) = (replica(&c, tenant, "pod-a", None).await, replica(&c, tenant, "pod-b", None).await);
        let body = json!({"description": "Draft the tagline", "agent": "writer"});

        // Created on A, found by id on B while it runs.
        let (status, headers, created) = a.post_run(&body, Some("wf-7-draft"), None).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(headers["location"], format!("/v1/runs/{id}"));
        let (status, on_b) = b.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{on_b}");
        assert!(matches!(on_b["status"].as_str(), Some("queued" | "running")), "{on_b}");
        assert_eq!(on_b["idempotencyKey"], "wf-7-draft");
        assert_eq!(on_b["request"], body);
        assert!(on_b.get("events").is_none(), "B does not execute the run");
        let (status, err) = b.get(&format!("/v1/runs/{id}/events")).await;
        assert_eq!((status, err["error"]["category"].as_str()), (StatusCode::NOT_FOUND, Some("events_unavailable")));

        // The key replayed on B: the same run, not started again; `?wait=` follows it to its end.
        let (status, headers, replay) = b.post_run(&body, Some("wf-7-draft"), None).await;
        assert_eq!((status, replay["id"].as_str()), (StatusCode::OK, Some(id.as_str())), "{replay}");
        assert_eq!(headers["idempotent-replayed"], "true");
        let (status, _, done) = b.post_run(&body, Some("wf-7-draft"), Some(10.0)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["output"], "Spring into comfort.");
        assert_eq!(done["tasks"][0]["agent"], "writer");
        assert_eq!(done["usage"]["totalTokens"], 8);
        assert_eq!(done["usage"]["byAgent"]["writer"]["llmCalls"], 1);
        assert_eq!(stub.chat_requests().len(), 1, "one execution for three POSTs");
        let (status, _, err) = b.post_run(&json!({"description": "Something else"}), Some("wf-7-draft"), None).await;
        assert_eq!(
            (status, err["error"]["category"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("idempotency_key_reused"))
        );

        // Two replicas racing on a new key create one run.
        let (ra, rb) =
            futures::join!(a.post_run(&body, Some("wf-8-race"), None), b.post_run(&body, Some("wf-8-race"), None));
        assert_eq!(ra.2["id"], rb.2["id"], "{} {}", ra.2, rb.2);
        let mut statuses = [ra.0, rb.0];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::CREATED]);
        let raced = ra.2["id"].as_str().unwrap().to_string();
        let view = a.wait_for(&raced, Duration::from_secs(10), |v| v["status"] == "succeeded").await;
        assert_eq!(view["status"], "succeeded", "{view}");
        assert_eq!(stub.chat_requests().len(), 2);
        let admin = tenant.admin().await;
        let rows: i64 = admin
            .query_one("SELECT count(*) FROM agent_runs WHERE idempotency_key = 'wf-8-race'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 1);

        // Every replica lists every run, newest first.
        let (_, list) = b.get("/v1/runs").await;
        let ids: Vec<&str> = list["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [raced.as_str(), id.as_str()], "{list}");
        assert_eq!(list["runs"][1]["totalTokens"], 8);

        // After both pods are gone a new one still has the runs, outputs and usage included.
        drop((a, b));
        let c2 = replica(&c, tenant, "pod-c", None).await;
        let (status, after) = c2.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{after}");
        for field in ["status", "output", "tasks", "usage", "createdAt", "startedAt", "finishedAt", "request"] {
            assert_eq!(after[field], done[field], "{field}");
        }
        let (status, headers, replay) = c2.post_run(&body, Some("wf-7-draft"), None).await;
        assert_eq!((status, replay["id"].as_str()), (StatusCode::OK, Some(id.as_str())));
        assert_eq!(headers["idempotent-replayed"], "true");
        assert_eq!(stub.chat_requests().len(), 2, "a replay after a restart does not execute again");
        let owner: String =
            admin.query_one("SELECT owner FROM agent_runs WHERE run_id = $1", &[&id]).await.unwrap().get(0);
        assert_eq!(owner, "pod-a");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_on_one_replica_stops_the_run_on_another() {
    pg::with_tenants(DatabaseIsolation::Dedicated, &["cancel"], async |tenants| {
        let tenant = &tenants[0];
        let stub = StubServer::start().await;
        stub.repeat(Reply::text("ok", 3, 2).delayed(Duration::from_millis(500)));
        let c = tenant_crew(&stub, tenant);
        let mut one_at_a_time = replica_options("pod-a");
        (one_at_a_time.max_concurrent_runs, one_at_a_time.max_runs) = (1, 2);
        let a = replica(&c, tenant, "pod-a", Some(one_at_a_time)).await;
        let b = replica(&c, tenant, "pod-b", None).await;

        // On A: a running run, and a queued one behind it.
        let (_, _, running) = a.post_run(&long_run(), Some("wf-9-long"), None).await;
        let (_, _, queued) = a.post_run(&long_run(), Some("wf-9-queued"), None).await;
        let (running, queued) = (running["id"].as_str().unwrap(), queued["id"].as_str().unwrap());
        assert!(eventually(Duration::from_secs(5), || !stub.chat_requests().is_empty()).await);
        // A is full: a new run is refused there, a retry of an earlier one is still answered.
        let (status, _, err) = a.post_run(&long_run(), Some("wf-9-more"), None).await;
        assert_eq!((status, err["error"]["category"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("too_many_runs")));
        let (status, _, replay) = a.post_run(&long_run(), Some("wf-9-long"), None).await;
        assert_eq!((status, replay["id"].as_str()), (StatusCode::OK, Some(running)), "{replay}");

        // Cancelled through B: A stops them within its poll interval.
        let (status, view) = b.delete(&format!("/v1/runs/{queued}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{view}");
        assert_eq!((view["id"].as_str(), view["cancelRequested"].as_bool()), (Some(queued), Some(true)));
        let view = b.wait_for(queued, Duration::from_secs(5), |v| v["status"] == "cancelled").await;
        assert_eq!(view["status"], "cancelled", "{view}");
        assert!(view.get("startedAt").is_none(), "it never started: {view}");

        let (status, view) = b.delete(&format!("/v1/runs/{running}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{view}");
        let view = b.wait_for(running, Duration::from_secs(5), |v| v["status"] == "cancelled").await;
        assert_eq!(view["status"], "cancelled", "{view}");
        assert_eq!(view["error"]["category"], "cancelled");
        let calls = stub.chat_requests().len();
        assert!(calls <= 3, "the run was stopped within a poll interval: {calls} calls");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(stub.chat_requests().len(), calls, "no model call after the cancel");
        // A shows the same; its event stream ended with the cancel.
        let (_, on_a) = a.get(&format!("/v1/runs/{running}")).await;
        assert_eq!((on_a["status"].as_str(), on_a["cancelRequested"].as_bool()), (Some("cancelled"), Some(true)));
        let events = a.events(running, None).await;
        assert_eq!(events.last().unwrap().2["status"], "cancelled");
        assert_eq!(view["tasks"], on_a["tasks"], "the finished tasks are kept");

        // Cancelled on the replica that executes it: at once.
        let (_, _, local) = a.post_run(&long_run(), Some("wf-9-local"), None).await;
        let local = local["id"].as_str().unwrap();
        let resp = a.http.delete(a.url(&format!("/v1/runs/{local}?wait=5"))).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        assert_eq!(resp.json::<Value>().await.unwrap()["status"], "cancelled");
        let (_, on_b) = b.get(&format!("/v1/runs/{local}")).await;
        assert_eq!(on_b["status"], "cancelled", "stored before A answered: {on_b}");

        // Nothing to cancel: finished (409) or unknown (404), on either replica.
        for api in [&*a, &*b] {
            let (status, err) = api.delete(&format!("/v1/runs/{running}")).await;
            assert_eq!((status, err["error"]["category"].as_str()), (StatusCode::CONFLICT, Some("run_finished")));
            let (status, err) = api.delete("/v1/runs/run-0000000000000000").await;
            assert_eq!((status, err["error"]["category"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        }
        // A replay of a cancelled run's key returns it as it is.
        let (status, _, replay) = b.post_run(&long_run(), Some("wf-9-long"), None).await;
        assert_eq!((status, replay["status"].as_str()), (StatusCode::OK, Some("cancelled")));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_pod_leaves_its_run_interrupted_with_what_it_had_done() {
    pg::with_tenants(DatabaseIsolation::Dedicated, &["killed"], async |tenants| {
        let tenant = &tenants[0];
        // The first task answers at once, the second never in time.
        let stub = StubServer::with_script([Reply::text("FACTS: sofas sell in spring.", 10, 5)]).await;
        stub.repeat(Reply::text("late", 1, 1).delayed(Duration::from_secs(60)));
        let c = tenant_crew(&stub, tenant);
        let body = json!({"description": "Tagline for the spring sale"});

        let pod = Pod::start(&c, tenant, "pod-1", &[]).await;
        let (status, _, created) = pod.post_run(&body, Some("wf-10"), None).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        let view =
            pod.wait_for(&id, Duration::from_secs(10), |v| v["tasks"].as_array().is_some_and(|t| t.len() == 1)).await;
        assert_eq!(view["tasks"][0]["output"], "FACTS: sofas sell in spring.", "{view}");
        assert!(eventually(Duration::from_secs(5), || stub.chat_requests().len() == 2).await);
        pod.kill().await;

        // Nobody is left to notice: the row says running, also after the stale time.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let admin = tenant.admin().await;
        let status_of = async |id: &str| -> String {
            admin.query_one("SELECT status FROM agent_runs WHERE run_id = $1", &[&id]).await.unwrap().get(0)
        };
        assert_eq!(status_of(&id).await, "running");

        // The restarted pod marks it interrupted on startup, keeping the first task's output.
        let pod = Pod::start(&c, tenant, "pod-1", &[]).await;
        let swept = async {
            while status_of(&id).await != "interrupted" {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), swept).await.is_err() {
            panic!("not marked interrupted on startup:\n{}", pod.logs());
        }
        let (_, view) = pod.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(view["status"], "interrupted", "{view}");
        assert_eq!(view["error"], json!({"category": "interrupted", "message": INTERRUPTED_MESSAGE}));
        assert_eq!(view["tasks"].as_array().unwrap().len(), 1);
        assert_eq!(view["tasks"][0]["agent"], "researcher");
        assert_eq!(view["usage"]["totalTokens"], 15);
        assert!(view.get("output").is_none());
        // Not restarted, neither by itself nor by a replay of its key.
        let (status, _, replay) = pod.post_run(&body, Some("wf-10"), Some(1.0)).await;
        assert_eq!(
            (status, replay["id"].as_str(), replay["status"].as_str()),
            (StatusCode::OK, Some(id.as_str()), Some("interrupted"))
        );
        assert_eq!(stub.chat_requests().len(), 2);

        // Killed again mid-run: reading the run after the stale time shows it interrupted.
        let (_, _, second) =
            pod.post_run(&json!({"description": "Again", "agent": "writer"}), Some("wf-11"), None).await;
        let second = second["id"].as_str().unwrap().to_string();
        assert!(eventually(Duration::from_secs(5), || stub.chat_requests().len() == 3).await);
        pod.kill().await;
        let reader = records(tenant, &tenant.name, timing().stale_after);
        assert_eq!(reader.get(&second).await.unwrap().unwrap().status, RunStatus::Running, "fresh heartbeat");
        let mut run = None;
        for _ in 0..100 {
            run = reader.get(&second).await.unwrap();
            if run.as_ref().is_some_and(|r| r.status == RunStatus::Interrupted) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let run = run.unwrap();
        assert_eq!(run.status, RunStatus::Interrupted, "{run:?}");
        assert_eq!(run.error.unwrap().message, INTERRUPTED_MESSAGE);
        assert!(run.finished_at.is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_interrupts_the_runs_still_in_flight_after_the_grace_period() {
    pg::with_tenants(DatabaseIsolation::Dedicated, &["sigterm"], async |tenants| {
        let tenant = &tenants[0];
        let stub = StubServer::start().await;
        stub.repeat(Reply::text("late", 1, 1).delayed(Duration::from_secs(60)));
        let c = tenant_crew(&stub, tenant);
        let pod = Pod::start(&c, tenant, "pod-term", &[("BIZOSAAS_SHUTDOWN_GRACE", "0.5")]).await;
        let (_, _, created) = pod.post_run(&json!({"description": "x", "agent": "writer"}), Some("wf-12"), None).await;
        let id = created["id"].as_str().unwrap().to_string();
        assert!(eventually(Duration::from_secs(5), || stub.chat_requests().len() == 1).await);
        let exit = pod.terminate().await;
        assert!(exit.success(), "{exit}");
        // Recorded by the pod itself on its way out: a reader that would wait a minute before
        // taking the run for lost sees it interrupted already.
        let run = records(tenant, &tenant.name, Duration::from_secs(60)).get(&id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Interrupted, "{run:?}");
        assert_eq!(run.error.unwrap().message, INTERRUPTED_MESSAGE);
        assert_eq!(stub.chat_requests().len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_of_one_tenant_are_invisible_to_another() {
    // Both tenants in one shared platform database: only row-level security separates them.
    pg::with_tenants(DatabaseIsolation::Shared, &["iso-a", "iso-b"], async |tenants| {
        let (ta, tb) = (&tenants[0], &tenants[1]);
        let stub = StubServer::start().await;
        stub.repeat(Reply::text("ok", 2, 2));
        let a = replica(&tenant_crew(&stub, ta), ta, "pod-a", None).await;
        let b = replica(&tenant_crew(&stub, tb), tb, "pod-b", None).await;
        let body = json!({"description": "x", "agent": "writer"});
        let (status, _, run_a) = a.post_run(&body, Some("shared-key"), Some(10.0)).await;
        assert_eq!((status, run_a["status"].as_str()), (StatusCode::CREATED, Some("succeeded")), "{run_a}");
        let id_a = run_a["id"].as_str().unwrap();

        // B's crew (same crew name) neither finds A's run nor replays A's key.
        let (status, _) = b.get(&format!("/v1/runs/{id_a}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, err) = b.delete(&format!("/v1/runs/{id_a}")).await;
        assert_eq!((status, err["error"]["category"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
        let (status, headers, run_b) = b.post_run(&body, Some("shared-key"), Some(10.0)).await;
        assert_eq!(status, StatusCode::CREATED, "{run_b}");
        assert!(headers.get("idempotent-replayed").is_none());
        assert_ne!(run_b["id"], run_a["id"]);
        let (_, list) = b.get("/v1/runs").await;
        assert_eq!(list["runs"].as_array().unwrap().len(), 1, "{list}");

        // As B's app role: B's row only, whatever the query asks for.
        let b_db = tb.app().await;
        let tenants_seen: Vec<String> =
            b_db.query("SELECT tenant_id FROM agent_runs", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(tenants_seen, std::slice::from_ref(&tb.name));
        let hidden: i64 =
            b_db.query_one("SELECT count(*) FROM agent_runs WHERE run_id = $1", &[&id_a]).await.unwrap().get(0);
        assert_eq!(hidden, 0);
        let changed = b_db
            .execute("UPDATE agent_runs SET cancel_requested = true WHERE tenant_id = $1", &[&ta.name])
            .await
            .unwrap();
        assert_eq!(changed, 0);
        // A runtime on B's role that claims to be A can neither read nor write A's runs.
        let forged = records(tb, &ta.name, timing().stale_after);
        assert!(forged.get(id_a).await.unwrap().is_none());
        let run = RunHandle::new("run-forged".into(), None, serde_json::from_value(body.clone()).unwrap());
        let err = forged.insert(&run).await.unwrap_err();
        assert!(err.to_string().contains("row-level security"), "{err}");
        assert_eq!(err.category(), "db_query");

        // The admin sees both, A's untouched.
        let admin = ta.admin().await;
        let rows =
            admin.query("SELECT tenant_id, cancel_requested FROM agent_runs ORDER BY tenant_id", &[]).await.unwrap();
        let rows: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut expected = vec![(ta.name.clone(), false), (tb.name.clone(), false)];
        expected.sort();
        assert_eq!(rows, expected);
    })
    .await;
}
