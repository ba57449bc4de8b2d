//! The run API's authentication against the real API server of the local cluster: tokens
//! are minted with the TokenRequest API and reviewed by the runtime with TokenReview, as in a
//! pod. A tenant owner's attacks are refused: no token, a made-up token, a token for another
//! audience (the API server's own, Vault's), another namespace's ServiceAccount; the crew's
//! namespace and the operator's ServiceAccount are admitted. Needs the cluster
//! (`tests/harness/cluster.sh up`; `BIZOSAAS_TEST_KUBECONFIG` overrides its kubeconfig).

mod support;

use bizosaas_agent::auth::{Authenticator, DEFAULT_AUDIENCE, Policy, ServiceAccountRef};
use bizosaas_agent::stub::{Reply, StubServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use support::cluster::{client, token};

const CREW_NS: &str = "agent-auth-crew";
const OTHER_NS: &str = "agent-auth-other";
const PLATFORM_NS: &str = "agent-auth-platform";

async fn post(app: &support::App, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
    let mut request = app.http.post(app.url("/v1/runs?wait=10")).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn only_the_crews_namespace_and_the_operator_may_use_the_run_api() {
    let client = client().await;
    let stub = StubServer::with_script([Reply::text("done", 3, 2), Reply::text("done again", 3, 2)]).await;
    let mut options = support::options();
    let policy = Policy {
        namespace: CREW_NS.into(),
        platform: vec![ServiceAccountRef { namespace: PLATFORM_NS.into(), name: "operator".into() }],
    };
    options.auth = Some(Arc::new(Authenticator::new(client.clone(), DEFAULT_AUDIENCE.into(), policy)));
    let crew = support::crew(&stub.base_url(), json!({"namespace": CREW_NS}));
    let app = support::app_with(crew, &[], options).await;
    let body = json!({"description": "Write one line.", "agent": "writer"});

    // Refused: no token, a made-up one, the crew's own ServiceAccount for other audiences.
    let own_for_api_server = token(&client, CREW_NS, "tenant-workload", "").await;
    let own_for_vault = token(&client, CREW_NS, "tenant-workload", "vault").await;
    for (what, t) in [
        ("no token", None),
        ("a made-up token", Some("eyJhbGciOiJSUzI1NiJ9.e30.c2ln")),
        ("the API server's audience", Some(own_for_api_server.as_str())),
        ("Vault's audience", Some(own_for_vault.as_str())),
    ] {
        let (status, err) = post(&app, t, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {err}");
        assert_eq!(err["error"]["category"], "unauthenticated", "{what}: {err}");
    }
    // Refused: valid tokens for the runtime's audience from any other namespace, including a
    // ServiceAccount named like the operator's in another namespace.
    for (namespace, name) in [(OTHER_NS, "tenant-workload"), (OTHER_NS, "operator"), (PLATFORM_NS, "default")] {
        let foreign = token(&client, namespace, name, DEFAULT_AUDIENCE).await;
        let (status, err) = post(&app, Some(&foreign), &body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{namespace}/{name}: {err}");
        assert_eq!(err["error"]["category"], "forbidden");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("system:serviceaccount:{namespace}:{name}")), "{message}");
        let response = app.http.get(app.url("/v1/runs")).bearer_auth(&foreign).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert!(stub.chat_requests().is_empty(), "a refused request reached the model");
    let response = app.http.get(app.url("/v1/crew")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    // The probes and metrics stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(app.http.get(app.url(path)).send().await.unwrap().status(), StatusCode::OK, "{path}");
    }

    // Admitted: the crew's namespace, and the operator.
    let own = token(&client, CREW_NS, "tenant-workload", DEFAULT_AUDIENCE).await;
    let (status, run) = post(&app, Some(&own), &body).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["status"], "succeeded", "{run}");
    // A second call with the same token comes from the review cache and is still admitted.
    let response = app.http.get(app.url(&format!("/v1/runs/{}", run["id"].as_str().unwrap()))).bearer_auth(&own);
    assert_eq!(response.send().await.unwrap().status(), StatusCode::OK);
    let operator = token(&client, PLATFORM_NS, "operator", DEFAULT_AUDIENCE).await;
    let (status, run) = post(&app, Some(&operator), &body).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    assert_eq!(run["status"], "succeeded", "{run}");
    // Even an admitted caller runs only the crew's agents.
    let (status, err) = post(&app, Some(&operator), &json!({"description": "x", "agent": "copywriting"})).await;
    assert_eq!((status, err["error"]["category"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_agent")));
}
