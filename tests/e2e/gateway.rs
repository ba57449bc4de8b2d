//! The gateway as tenants use it, against the real parts: the chart's gateway pods on the
//! node, the harness's OIDC provider (Keycloak, `tests/harness/sso.sh`) whose tokens the API
//! server also trusts, a crew running against the llama.cpp server, and WorkflowRuns created
//! through impersonation.
//!
//! Real users log in with the password grant: alice (group `acme-admins`, a Group owner of the
//! acme tenant), bob (`globex-admins`, owner of globex) and carol (no group). alice starts and
//! reads acme's crew runs through the gateway and lists acme's AgentCrews with kubectl with the
//! same token; she is refused at both for globex. The front door is attacked as a tenant owner
//! or an outsider would: no token, a made-up one, a token of the same issuer for another
//! client, a token whose claims were edited, a ServiceAccount token for the crews' audience,
//! a caller without rights, an oversized body, a flood of requests. Each tenant's audit log
//! holds what was asked of it (refusals too), readable by its owners only, next to the
//! operator's actions on its data. When the issuer rotates its signing key, alice's next token
//! works at the gateway and at kubectl alike. No token appears in the gateway's logs.

mod support;

use bizosaas_crds::{Workflow, WorkflowRun};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use serde_json::{Value, json};
use std::time::Duration;
use support::*;

#[path = "../common/token_request.rs"]
mod token_request;
use token_request::token;

const ACME: &str = "e2e-gw-acme";
const ACME_NS: &str = "tenant-e2e-gw-acme";
const GLOBEX: &str = "e2e-gw-globex";
const TIMEOUT: Duration = Duration::from_secs(180);

fn sso_issuer() -> String {
    std::env::var("BIZOSAAS_TEST_SSO_ISSUER")
        .expect("no OIDC provider: start it with `tests/harness/sso.sh up` (or run `./dev test`)")
}

fn sso_http() -> reqwest::Client {
    let ca = std::env::var("BIZOSAAS_TEST_SSO_CA")
        .expect("BIZOSAAS_TEST_SSO_CA names the OIDC provider's CA (tests/harness/sso.sh ca)");
    let pem = std::fs::read(&ca).unwrap_or_else(|e| panic!("reading {ca}: {e}"));
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// An access token of `user` for `client_id`, by logging in with the user's password.
async fn login(user: &str, client_id: &str) -> String {
    let response = sso_http()
        .post(format!("{}/protocol/openid-connect/token", sso_issuer()))
        .form(&[
            ("grant_type", "password"),
            ("client_id", client_id),
            ("username", user),
            ("password", &format!("{user}-password")),
            ("scope", "openid"),
        ])
        .send()
        .await
        .expect("the OIDC provider answers");
    assert!(response.status().is_success(), "logging in as {user} failed: {}", response.status());
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().expect("an access token").to_string()
}

/// The key id a JWT's header names.
fn key_id(jwt: &str) -> String {
    use base64::Engine as _;
    let header = jwt.split('.').next().unwrap_or_default();
    let header: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().expect("the token names its key").to_string()
}

/// Gives the realm a new RSA signing key that outranks the ones it has (as the issuer's
/// administrators rotate keys), as the `key-rotator` client; returns a token of `user` signed
/// with it. `earlier` is one of the user's tokens from before.
async fn rotated_token(user: &str, earlier: &str) -> String {
    let issuer = sso_issuer();
    let (base, realm) = issuer.rsplit_once("/realms/").expect("a Keycloak issuer URL");
    let admin = format!("{base}/admin/realms/{realm}");
    let http = sso_http();
    let response = http
        .post(format!("{issuer}/protocol/openid-connect/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "key-rotator"),
            ("client_secret", "key-rotator-secret"),
        ])
        .send()
        .await
        .expect("the OIDC provider answers");
    assert!(response.status().is_success(), "the key-rotator client's login failed: {}", response.status());
    let admin_token = response.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let realm_id =
        http.get(&admin).bearer_auth(&admin_token).send().await.unwrap().json::<Value>().await.unwrap()["id"]
            .as_str()
            .expect("the realm's id")
            .to_string();
    let priority = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 1_000_000
        + 1_000)
        .to_string();
    let key = json!({
        "name": format!("rotated-{priority}"), "providerId": "rsa-generated",
        "providerType": "org.keycloak.keys.KeyProvider", "parentId": realm_id,
        "config": {"priority": [priority], "enabled": ["true"], "active": ["true"], "algorithm": ["RS256"], "keySize": ["2048"]},
    });
    let created = http.post(format!("{admin}/components")).bearer_auth(&admin_token).json(&key).send().await.unwrap();
    assert_eq!(created.status().as_u16(), 201, "adding a signing key: {}", created.text().await.unwrap_or_default());
    let token = login(user, "bizosaas").await;
    assert_ne!(key_id(&token), key_id(earlier), "the realm still signs with its old key");
    token
}

/// The gateway's Service address, as the host reaches ClusterIPs.
async fn gateway_url(client: &kube::Client) -> String {
    let service = Api::<Service>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .get("bizosaas-gateway")
        .await
        .expect("the chart installs the gateway Service bizosaas-gateway");
    let spec = service.spec.unwrap();
    format!("http://{}:{}", spec.cluster_ip.unwrap(), spec.ports.unwrap()[0].port)
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn category(&self) -> &str {
        self.body["error"]["category"].as_str().unwrap_or_default()
    }
}

async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = http().request(method, url).timeout(Duration::from_secs(150));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("the gateway does not answer {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    Answer { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

fn refused(what: &str, answer: &Answer, status: u16, category: &str) {
    assert_eq!((answer.status, answer.category()), (status, category), "{what}: {}", answer.body);
}

/// A kubeconfig for the API server that carries only `token`: no client certificate that
/// would authenticate first.
fn token_kubeconfig(token: &str) -> std::path::PathBuf {
    let admin = kube::config::Kubeconfig::read_from(kubeconfig()).unwrap();
    let cluster = admin.clusters[0].cluster.clone().unwrap();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": cluster.server, "certificate-authority-data": cluster.certificate_authority_data}}],
        "users": [{"name": "sso", "user": {"token": token}}],
        "contexts": [{"name": "sso", "context": {"cluster": "local", "user": "sso"}}],
        "current-context": "sso",
    });
    let path = std::env::temp_dir().join(format!("bizosaas-e2e-gateway-{}.kubeconfig", std::process::id()));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

fn kubectl_as(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("kubectl").arg("--kubeconfig").arg(kubeconfig).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn ready_crew(client: &kube::Client) {
    let (llm, model) = llm_server();
    llm_integration(client, ACME_NS, &llm, "gateway-test-key").await;
    create_writer_crew(client, ACME_NS, "writers", &model).await;
    wait_crew_ready(client, ACME_NS, "writers", TIMEOUT).await;
}

// Multi-threaded: requests run concurrently in the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_use_their_crews_and_workflows_through_the_gateway_with_single_sign_on() {
    let issuer = sso_issuer();
    operator().wait_ready().await;
    let client = client().await;
    let database = json!({"isolation": "Shared", "deletionPolicy": "Delete"});
    fresh_tenant(
        &client,
        ACME,
        json!({"displayName": "Acme", "database": database,
        "owners": [{"kind": "Group", "name": "oidc:acme-admins"}]}),
    )
    .await;
    fresh_tenant(
        &client,
        GLOBEX,
        json!({"displayName": "Globex", "database": database,
        "owners": [{"kind": "Group", "name": "oidc:globex-admins"}]}),
    )
    .await;
    ready_crew(&client).await;
    let gateway = gateway_url(&client).await;
    wait_for("the gateway ready", TIMEOUT, || async {
        http().get(format!("{gateway}/readyz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;

    let alice = login("alice", "bizosaas").await;
    let bob = login("bob", "bizosaas").await;
    let carol = login("carol", "bizosaas").await;
    let runs = format!("{gateway}/v1/tenants/{ACME}/crews/writers/runs");
    let task = json!({"description": "Write one short line about spring.", "agent": "writer"});
    use reqwest::Method as M;

    // Refused before anything happens: who is calling is not established.
    refused("no token", &call(M::POST, &runs, None, None, Some(task.clone())).await, 401, "unauthenticated");
    refused(
        "a made-up token",
        &call(M::POST, &runs, Some("not-a-token"), None, Some(task.clone())).await,
        401,
        "unauthenticated",
    );
    let other_app = login("alice", "other-app").await;
    refused(
        "the issuer's token for another client",
        &call(M::POST, &runs, Some(&other_app), None, Some(task.clone())).await,
        401,
        "unauthenticated",
    );
    // alice's token with bob's name in it: the signature no longer verifies.
    let forged = {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        let parts: Vec<&str> = alice.split('.').collect();
        let mut claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], issuer.as_str());
        claims["preferred_username"] = json!("bob");
        claims["groups"] = json!(["globex-admins", "acme-admins"]);
        format!("{}.{}.{}", parts[0], B64.encode(claims.to_string()), parts[2])
    };
    refused(
        "edited claims",
        &call(M::POST, &runs, Some(&forged), None, Some(task.clone())).await,
        401,
        "unauthenticated",
    );
    // A ServiceAccount token for the crews' audience is not one for the gateway.
    let crew_audience = token(&client, ACME_NS, "tenant-workload", "bizosaas-agent").await;
    refused(
        "a token for the crews' audience",
        &call(M::POST, &runs, Some(&crew_audience), None, Some(task.clone())).await,
        401,
        "unauthenticated",
    );
    // Authenticated, but RBAC gives them nothing here.
    refused("carol (no group)", &call(M::POST, &runs, Some(&carol), None, Some(task.clone())).await, 403, "forbidden");
    refused(
        "bob (globex) on acme",
        &call(M::POST, &runs, Some(&bob), None, Some(task.clone())).await,
        403,
        "forbidden",
    );
    let workload = token(&client, ACME_NS, "tenant-workload", "bizosaas-gateway").await;
    refused(
        "acme's workload ServiceAccount",
        &call(M::POST, &runs, Some(&workload), None, Some(task.clone())).await,
        403,
        "forbidden",
    );
    let globex_runs = format!("{gateway}/v1/tenants/{GLOBEX}/crews/writers/runs");
    refused(
        "alice on globex",
        &call(M::POST, &globex_runs, Some(&alice), None, Some(task.clone())).await,
        403,
        "forbidden",
    );
    let big = json!({"description": "x".repeat(100 * 1024)});
    assert_eq!(call(M::POST, &runs, Some(&alice), None, Some(big)).await.status, 413, "a body over 64 KiB");

    // alice runs acme's crew: the run really completes on the crew's pod against the model.
    let started = call(M::POST, &format!("{runs}?wait=25"), Some(&alice), Some("spring-1"), Some(task.clone())).await;
    assert!(matches!(started.status, 200 | 201), "starting a run: {} {}", started.status, started.body);
    let id = started.body["id"].as_str().expect("a run id").to_string();
    let run = wait_for("the crew run to finish", TIMEOUT, || async {
        let answer = call(M::GET, &format!("{runs}/{id}?wait=20"), Some(&alice), None, None).await;
        assert_eq!(answer.status, 200, "reading the run: {}", answer.body);
        matches!(answer.body["status"].as_str(), Some("succeeded" | "failed")).then_some(answer.body)
    })
    .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(run["usage"]["totalTokens"].as_u64().unwrap_or(0) > 0, "the model was called: {run}");
    // The same key again: the same run, not a second one.
    let again = call(M::POST, &runs, Some(&alice), Some("spring-1"), Some(task.clone())).await;
    assert_eq!((again.status, again.body["id"].as_str()), (200, Some(id.as_str())), "{}", again.body);
    assert_eq!(again.headers.get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    // Reading it is RBAC's call too.
    refused(
        "bob reads acme's run",
        &call(M::GET, &format!("{runs}/{id}"), Some(&bob), None, None).await,
        403,
        "forbidden",
    );
    // The tenant's usage this month: what the crew spent is on the Tenant (the operator reads
    // it from the tenant database), readable by acme's owners only.
    let usage_url = format!("{gateway}/v1/tenants/{ACME}/usage");
    let spent = run["usage"]["totalTokens"].as_i64().unwrap();
    let usage = wait_for("acme's usage through the gateway", Duration::from_secs(60), || async {
        let answer = call(M::GET, &usage_url, Some(&alice), None, None).await;
        assert_eq!(answer.status, 200, "reading the usage: {}", answer.body);
        (answer.body["tokensUsed"].as_i64() >= Some(spent)).then_some(answer.body)
    })
    .await;
    assert_eq!((usage["tenant"].as_str(), usage["budgetExhausted"].as_bool()), (Some(ACME), Some(false)), "{usage}");
    assert_eq!(usage["month"].as_str().map(str::len), Some(7), "{usage}");
    assert!(usage["monthlyTokens"].as_i64().is_some_and(|b| b > 0), "the plan's budget: {usage}");
    refused("bob reads acme's usage", &call(M::GET, &usage_url, Some(&bob), None, None).await, 403, "forbidden");
    refused("carol reads acme's usage", &call(M::GET, &usage_url, Some(&carol), None, None).await, 403, "forbidden");
    // The run's events stream through the gateway (or, from a replica that did not run it,
    // the runtime's events_unavailable).
    let events = http().get(format!("{runs}/{id}/events")).bearer_auth(&alice).send().await.unwrap();
    let ct = events.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(
        (events.status() == 200 && ct.starts_with("text/event-stream")) || events.status() == 404,
        "events: {} {ct}",
        events.status()
    );

    // The same identity at the API server: kubectl with alice's token.
    let alice_kubeconfig = token_kubeconfig(&alice);
    let (ok, out) = kubectl_as(&alice_kubeconfig, &["get", "agentcrews", "-n", ACME_NS, "-o", "name"]);
    assert!(ok && out.contains("agentcrew.bizosaas.io/writers"), "alice lists acme's crews: {out}");
    let (ok, out) = kubectl_as(&alice_kubeconfig, &["get", "agentcrews", "-n", &format!("tenant-{GLOBEX}")]);
    assert!(!ok && out.contains("Forbidden"), "alice is refused globex's crews: {out}");
    let (ok, out) = kubectl_as(&alice_kubeconfig, &["auth", "whoami", "-o", "json"]);
    assert!(ok && out.contains("\"oidc:alice\"") && out.contains("\"oidc:acme-admins\""), "{out}");
    let _ = std::fs::remove_file(&alice_kubeconfig);

    // A workflow run started through the gateway is created as alice: the gateway's own
    // ServiceAccount may not create WorkflowRuns at all.
    let (ok, out) = kubectl_as(
        &kubeconfig(),
        &[
            "auth",
            "can-i",
            "create",
            "workflowruns.bizosaas.io",
            "-n",
            ACME_NS,
            &format!("--as=system:serviceaccount:{OPERATOR_NAMESPACE}:bizosaas-gateway"),
        ],
    );
    assert!(!ok && out.trim() == "no", "the gateway itself must not create WorkflowRuns: {out}");
    let _: Workflow = create_in(&client, ACME_NS, json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Workflow", "metadata": {"name": "hello", "namespace": ACME_NS},
        "spec": {"parameters": [{"name": "who", "value": "world"}],
                 "steps": [{"name": "greet", "container": {"image": "docker.io/bizosaas/toolbox:harness",
                            "command": ["/bin/echo"], "args": ["hello {{ params.who }}"]}}]},
    }))
    .await;
    let start = format!("{gateway}/v1/tenants/{ACME}/workflows/hello/runs");
    let body = json!({"parameters": [{"name": "who", "value": "gateway"}]});
    refused(
        "bob starts acme's workflow",
        &call(M::POST, &start, Some(&bob), None, Some(body.clone())).await,
        403,
        "forbidden",
    );
    let created = call(M::POST, &start, Some(&alice), Some("hello-1"), Some(body.clone())).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let name = created.body["name"].as_str().unwrap().to_string();
    assert_eq!(created.body["requestedBy"], "oidc:alice");
    let replay = call(M::POST, &start, Some(&alice), Some("hello-1"), Some(body.clone())).await;
    assert_eq!((replay.status, replay.body["name"].as_str()), (200, Some(name.as_str())), "{}", replay.body);
    let all: Api<WorkflowRun> = Api::namespaced(client.clone(), ACME_NS);
    assert_eq!(all.list(&Default::default()).await.unwrap().items.len(), 1, "a replay starts nothing");
    let bad =
        call(M::POST, &start, Some(&alice), None, Some(json!({"paramters": [{"name": "who", "value": "x"}]}))).await;
    assert_eq!((bad.status, bad.category()), (400, "invalid_request"), "a misspelt run request: {}", bad.body);
    assert_eq!(all.list(&Default::default()).await.unwrap().items.len(), 1, "a refused request starts nothing");
    let read = format!("{gateway}/v1/tenants/{ACME}/workflowruns/{name}");
    refused("bob reads acme's workflow run", &call(M::GET, &read, Some(&bob), None, None).await, 403, "forbidden");
    let finished = wait_for("the workflow run to succeed", TIMEOUT, || async {
        let answer = call(M::GET, &read, Some(&alice), None, None).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        matches!(answer.body["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(answer.body)
    })
    .await;
    assert_eq!(finished["status"]["phase"], "Succeeded", "{finished}");
    api_server_recorded_the_run(&name).await;

    // The audit logs: what was done in each tenant, readable by its owners only.
    audit_trail(&gateway, &alice, &bob, &carol, &id, &started).await;

    // The issuer rotates its signing key: alice's next token names a key neither the gateway
    // nor the API server has seen; both fetch the issuer's keys again and let her in.
    let rotated = rotated_token("alice", &alice).await;
    let read_run = format!("{runs}/{id}");
    let mut answer = call(M::GET, &read_run, Some(&rotated), None, None).await;
    for _ in 0..30 {
        // A fetch prompted by an unknown key waits out the gateway's refetch interval (10 s).
        if answer.status != 401 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        answer = call(M::GET, &read_run, Some(&rotated), None, None).await;
    }
    assert_eq!(answer.status, 200, "a token of the rotated key: {}", answer.body);
    let rotated_kubeconfig = token_kubeconfig(&rotated);
    let (ok, out) = kubectl_as(&rotated_kubeconfig, &["get", "agentcrews", "-n", ACME_NS, "-o", "name"]);
    assert!(ok && out.contains("agentcrew.bizosaas.io/writers"), "kubectl with the rotated key: {out}");
    let _ = std::fs::remove_file(&rotated_kubeconfig);

    // A flood from one tenant meets its rate limit with Retry-After; another tenant's owner
    // is not slowed by it.
    let flood: Vec<_> = (0..240)
        .map(|_| {
            let (url, alice) = (format!("{runs}/{id}"), alice.clone());
            tokio::spawn(async move { call(M::GET, &url, Some(&alice), None, None).await })
        })
        .collect();
    let mut limited = 0;
    for answer in flood {
        let answer = answer.await.unwrap();
        if answer.status == 429 {
            assert_eq!(answer.category(), "rate_limited");
            assert!(answer.headers.get("retry-after").is_some(), "429 without Retry-After");
            limited += 1;
        } else {
            assert_eq!(answer.status, 200, "{}", answer.body);
        }
    }
    assert!(limited > 0, "240 requests at once met no rate limit");
    let globex_read = format!("{gateway}/v1/tenants/{GLOBEX}/crews/writers/runs/{id}");
    // Bob may read globex's runs; globex has no crew, so the gateway says the crew is not there.
    let other = call(M::GET, &globex_read, Some(&bob), None, None).await;
    refused("bob on globex during acme's flood", &other, 502, "upstream_unavailable");

    // Never a token in the gateway's logs.
    let logs = kubectl_ok(
        &["logs", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/component=gateway", "--tail=-1", "--prefix"],
        None,
    );
    for (who, secret) in [
        ("alice", &alice),
        ("alice's rotated", &rotated),
        ("bob", &bob),
        ("the workload", &workload),
        ("the forged", &forged),
    ] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "{who}'s token is in the gateway's logs");
    }
    assert!(!logs.to_lowercase().contains("bearer "), "a bearer header is in the gateway's logs");
}

/// The entries of `tenant`'s audit log as `token` reads them, all pages.
async fn audit_entries(gateway: &str, tenant: &str, token: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("{gateway}/v1/tenants/{tenant}/audit?after={after}&limit=1000");
        let page = call(reqwest::Method::GET, &url, Some(token), None, None).await;
        if page.status == 429 {
            // A client that pages quickly meets the tenant's rate: it waits as told.
            let wait = page.headers.get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        assert_eq!(page.status, 200, "reading {tenant}'s audit log: {}", page.body);
        let got = page.body["entries"].as_array().unwrap().clone();
        let next = page.body["next"].as_i64().unwrap();
        if got.is_empty() {
            assert_eq!(next, after, "an empty page keeps the cursor");
            return entries;
        }
        assert!(got.iter().all(|e| e["id"].as_i64().unwrap() > after), "a page holds only entries after {after}");
        assert_eq!(got.last().unwrap()["id"].as_i64(), Some(next));
        after = next;
        // Each read is itself recorded: a page that is not full is the end for now.
        let last_page = got.len() < 1000;
        entries.extend(got);
        if last_page {
            let beyond = call(
                reqwest::Method::GET,
                &format!("{gateway}/v1/tenants/{tenant}/audit?after={}", after + 1_000_000),
                Some(token),
                None,
                None,
            )
            .await;
            if beyond.status == 200 {
                assert_eq!(beyond.body["entries"], json!([]), "nothing after the end");
                assert_eq!(beyond.body["next"].as_i64(), Some(after + 1_000_000), "an empty page keeps the cursor");
            }
            return entries;
        }
    }
}

fn find<'a>(entries: &'a [Value], actor: &str, action: &str, outcome: &str) -> Option<&'a Value> {
    entries.iter().find(|e| e["actor"] == actor && e["action"] == action && e["outcome"] == outcome)
}

async fn audit_trail(gateway: &str, alice: &str, bob: &str, carol: &str, run: &str, started: &Answer) {
    let request_id = started.headers.get("x-request-id").and_then(|v| v.to_str().ok()).expect("an X-Request-Id");
    assert_eq!(request_id.len(), 32, "a request id made by the gateway: {request_id}");
    // A caller's own request id is kept (and one that is not a plain token is replaced).
    let traced = http()
        .get(format!("{gateway}/v1/tenants/{ACME}/usage"))
        .bearer_auth(alice)
        .header("x-request-id", "e2e-audit-7")
        .send()
        .await
        .unwrap();
    assert_eq!(traced.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("e2e-audit-7"));
    let injected = http()
        .get(format!("{gateway}/v1/tenants/{ACME}/usage"))
        .bearer_auth(alice)
        .header("x-request-id", "x', 'forged")
        .send()
        .await
        .unwrap();
    assert_ne!(injected.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("x', 'forged"));

    // Owners only: bob (globex), carol (nobody's) are refused, and their tries are recorded.
    let url = format!("{gateway}/v1/tenants/{ACME}/audit");
    refused(
        "bob reads acme's audit log",
        &call(reqwest::Method::GET, &url, Some(bob), None, None).await,
        403,
        "forbidden",
    );
    refused(
        "carol reads acme's audit log",
        &call(reqwest::Method::GET, &url, Some(carol), None, None).await,
        403,
        "forbidden",
    );

    let entries = wait_for("acme's audit log to hold the requests", Duration::from_secs(30), || async {
        let entries = audit_entries(gateway, ACME, alice).await;
        find(&entries, "oidc:bob", "audit.get", "denied").is_some().then_some(entries)
    })
    .await;
    let created = entries
        .iter()
        .find(|e| e["requestId"] == request_id)
        .unwrap_or_else(|| panic!("alice's run start {request_id} is not in acme's audit log"));
    assert_eq!(created["source"], "gateway");
    assert_eq!((created["actor"].as_str(), created["action"].as_str()), (Some("oidc:alice"), Some("crewrun.create")));
    assert!(created["groups"].as_array().unwrap().iter().any(|g| g == "oidc:acme-admins"), "{created}");
    assert_eq!(created["target"].as_str(), Some(format!("agentcrews/writers/runs/{run}").as_str()), "{created}");
    assert_eq!(created["outcome"], "success");
    assert!(created["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{created}");
    let denied = find(&entries, "oidc:bob", "crewrun.create", "denied").expect("bob's refused run start is recorded");
    assert_eq!(denied["detail"]["status"], 403, "{denied}");
    assert_eq!(denied["detail"]["category"], "forbidden", "{denied}");
    assert!(find(&entries, "oidc:carol", "audit.get", "denied").is_some(), "carol's try is recorded");
    assert!(entries.iter().any(|e| e["requestId"] == "e2e-audit-7"), "the caller's request id is recorded");
    assert!(find(&entries, "oidc:alice", "workflowrun.create", "success").is_some(), "the workflow run is recorded");
    let provisioned = entries
        .iter()
        .find(|e| e["source"] == "operator" && e["action"] == "database.provisioned")
        .expect("the operator recorded provisioning acme's database");
    assert_eq!(provisioned["actor"], "bizosaas-operator");
    // Nothing of acme's in globex's log: alice's refused try on globex is there instead.
    let globex = audit_entries(gateway, GLOBEX, bob).await;
    assert!(globex.iter().all(|e| e["requestId"] != request_id), "acme's entry is in globex's log");
    assert!(find(&globex, "oidc:alice", "crewrun.create", "denied").is_some(), "alice's try on globex is globex's");
    assert!(
        globex.iter().all(|e| !e["target"].as_str().unwrap_or_default().contains(ACME)),
        "globex's log names acme: {globex:?}"
    );
}

/// The API server's own audit log (the chart's policy) has the WorkflowRun's creation as
/// alice, through the gateway's impersonation, with the object it created.
async fn api_server_recorded_the_run(name: &str) {
    let log = api_server_audit_log();
    let event = wait_for("the API server's audit event of the run", Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|e| {
            e["verb"] == "create"
                && e["objectRef"]["resource"] == "workflowruns"
                && e["objectRef"]["namespace"] == ACME_NS
                && e["responseObject"]["metadata"]["name"] == name
        })
    })
    .await;
    assert_eq!(event["level"], "RequestResponse", "{event}");
    assert_eq!(event["impersonatedUser"]["username"], "oidc:alice", "{event}");
    assert_eq!(
        event["user"]["username"],
        format!("system:serviceaccount:{OPERATOR_NAMESPACE}:bizosaas-gateway"),
        "the gateway made the call: {event}"
    );
    assert_eq!(event["responseStatus"]["code"], 201, "{event}");
    // Secrets are recorded without their bodies.
    let text = std::fs::read_to_string(&log).unwrap();
    let secret_bodies = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["objectRef"]["resource"] == "secrets")
        .filter(|e| e.get("requestObject").is_some() || e.get("responseObject").is_some())
        .count();
    assert_eq!(secret_bodies, 0, "a Secret's body is in the API server's audit log");
}
