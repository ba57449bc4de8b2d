//! Integrations end to end: credentials from a Secret or Vault are projected with a content
//! hash, rotation reaches the projection, the health check follows an HTTP server and an SMTP
//! listener the test controls (break, repair), deletion removes the projection, and no
//! secret value ever shows up in the operator's output, events or status.

mod support;

use bizosaas_crds::Integration;
use bizosaas_crds::common::find_condition;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;

const TENANT: &str = "e2e-integrations";
const NS: &str = "tenant-e2e-integrations";
const TIMEOUT: Duration = Duration::from_secs(60);

/// A TCP listener greeting like an SMTP server.
async fn smtp_server() -> u16 {
    let listener = tokio::net::TcpListener::bind((node_ip(), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream.write_all(b"220 mail.test ESMTP ready\r\n").await;
        }
    });
    port
}

fn integration(name: &str, spec: serde_json::Value) -> Integration {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration",
        "metadata": {"name": name, "namespace": NS}, "spec": spec,
    }))
    .unwrap()
}

async fn condition(api: &Api<Integration>, name: &str, type_: &str) -> Option<(String, String, String)> {
    let i = api.get(name).await.ok()?;
    let c = find_condition(&i.status?.conditions, type_)?.clone();
    Some((c.status, c.reason, c.message))
}

async fn wait_condition(api: &Api<Integration>, name: &str, type_: &str, status: &str) -> (String, String) {
    wait_for(&format!("{name} {type_}={status}"), TIMEOUT, || async {
        let (s, reason, message) = condition(api, name, type_).await?;
        (s == status).then_some((reason, message))
    })
    .await
}

async fn projected(secrets: &Api<Secret>, name: &str) -> Option<(String, String)> {
    let s = secrets.get_opt(&format!("integration-{name}")).await.ok()??;
    let credential = String::from_utf8(s.data?.get("credential")?.0.clone()).ok()?;
    let hash = s.metadata.annotations?.get("bizosaas.io/content-hash")?.clone();
    Some((credential, hash))
}

#[tokio::test]
async fn credentials_are_projected_rotated_and_checked() {
    let op = operator();
    op.wait_ready().await;
    let client = client().await;
    fresh_tenant(
        &client,
        TENANT,
        serde_json::json!({"displayName": "Integrations", "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
    )
    .await;
    let api: Api<Integration> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let root = vault_token();
    let planted = format!("planted-{}", std::process::id());
    let rotated = format!("rotated-{}", std::process::id());
    let vault_planted = format!("vault-planted-{}", std::process::id());
    let vault_rotated = format!("vault-rotated-{}", std::process::id());

    let status = Arc::new(AtomicU16::new(200));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let port = http_server(status.clone(), seen.clone()).await;
    kubectl_ok(&["create", "secret", "generic", "src", "-n", NS, &format!("--from-literal=apiKey={planted}")], None);
    let check = serde_json::json!({"interval": "1s", "timeout": "1s"});
    api.create(
        &PostParams::default(),
        &integration(
            "web",
            serde_json::json!({"type": "Webhook", "endpoint": format!("http://{}:{port}", node_ip()),
                               "credentials": {"secretRef": {"name": "src", "key": "apiKey"}}, "healthCheck": check}),
        ),
    )
    .await
    .unwrap();

    // Resolved, projected with a hash, reachable, Ready; the probe, over plain http, carried
    // no credential.
    wait_condition(&api, "web", "Ready", "True").await;
    let (credential, hash) = projected(&secrets, "web").await.expect("projected Secret");
    assert_eq!(credential, planted);
    let status_now = api.get("web").await.unwrap().status.unwrap();
    assert_eq!(status_now.content_hash.as_deref(), Some(hash.as_str()));
    assert_eq!(status_now.secret_name.as_deref(), Some("integration-web"));
    assert!(status_now.latency_ms.is_some() && status_now.last_check_time.is_some());
    assert!(!seen.lock().unwrap().iter().any(|h| h.contains(&planted)), "the credential went out over plain http");

    // Rotation in the source Secret reaches the projection with a new hash.
    let patch = serde_json::json!({"stringData": {"apiKey": rotated}});
    secrets.patch("src", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let new_hash = wait_for("rotation to reach the projection", TIMEOUT, || async {
        let (c, h) = projected(&secrets, "web").await?;
        (c == rotated).then_some(h)
    })
    .await;
    assert_ne!(new_hash, hash);

    // Break and repair the endpoint.
    status.store(503, Ordering::SeqCst);
    let (reason, message) = wait_condition(&api, "web", "Reachable", "False").await;
    assert_eq!(reason, "Unreachable");
    assert!(message.contains("503"), "{message}");
    assert_eq!(condition(&api, "web", "Ready").await.unwrap().0, "False");
    status.store(200, Ordering::SeqCst);
    wait_condition(&api, "web", "Ready", "True").await;

    // SMTP greeting.
    let smtp = smtp_server().await;
    api.create(
        &PostParams::default(),
        &integration(
            "mail",
            serde_json::json!({"type": "SMTP", "endpoint": format!("smtp://{}:{smtp}", node_ip()),
                               "credentials": {"secretRef": {"name": "src", "key": "apiKey"}}, "healthCheck": check}),
        ),
    )
    .await
    .unwrap();
    let (_, message) = wait_condition(&api, "mail", "Reachable", "True").await;
    assert!(message.contains("220"), "{message}");

    // A missing key is named, never shown.
    api.create(
        &PostParams::default(),
        &integration(
            "broken",
            serde_json::json!({"type": "Webhook", "endpoint": format!("http://{}:{port}", node_ip()),
                               "credentials": {"secretRef": {"name": "src", "key": "nope"}}, "healthCheck": check}),
        ),
    )
    .await
    .unwrap();
    let (reason, message) = wait_condition(&api, "broken", "CredentialsResolved", "False").await;
    assert_eq!(reason, "SecretKeyNotFound");
    assert!(message.contains("\"nope\""), "{message}");

    // Credentials from Vault, rotated in Vault; a missing path is reported.
    let write = |value: String| {
        let root = root.clone();
        async move {
            let (s, _) = vault(
                "POST",
                "secret/data/tenants/e2e-integrations/integ",
                &root,
                Some(serde_json::json!({"data": {"token": value}})),
            )
            .await;
            assert_eq!(s, 200);
        }
    };
    write(vault_planted.clone()).await;
    for (name, path) in [
        ("from-vault", "tenants/e2e-integrations/integ"),
        ("vault-missing", "tenants/e2e-integrations/absent"),
        // Another tenant's path, read with the operator's token, would land in this namespace.
        ("vault-stolen", "tenants/e2e-other/integ"),
        ("vault-escape", "tenants/e2e-integrations/../e2e-other/integ"),
    ] {
        api.create(
            &PostParams::default(),
            &integration(
                name,
                serde_json::json!({"type": "Webhook", "endpoint": format!("http://{}:{port}", node_ip()),
                                   "credentials": {"vault": {"path": path, "key": "token"}}, "healthCheck": check}),
            ),
        )
        .await
        .unwrap();
    }
    wait_condition(&api, "from-vault", "Ready", "True").await;
    assert_eq!(projected(&secrets, "from-vault").await.unwrap().0, vault_planted);
    write(vault_rotated.clone()).await;
    wait_for("Vault rotation to reach the projection", TIMEOUT, || async {
        (projected(&secrets, "from-vault").await?.0 == vault_rotated).then_some(())
    })
    .await;
    let (reason, message) = wait_condition(&api, "vault-missing", "CredentialsResolved", "False").await;
    assert_eq!(reason, "VaultPathNotFound");
    assert!(message.contains("tenants/e2e-integrations/absent"), "{message}");
    for name in ["vault-stolen", "vault-escape"] {
        let (reason, message) = wait_condition(&api, name, "CredentialsResolved", "False").await;
        assert_eq!(reason, "VaultPathForbidden", "{name}: {message}");
        assert!(secrets.get_opt(&format!("integration-{name}")).await.unwrap().is_none(), "{name} was projected");
    }

    // The operator's own credentials are no Integration's: the value would go to an endpoint
    // the owner chooses. The CRD refuses the names it writes...
    let endpoint = format!("http://{}:{port}", node_ip());
    for (name, credentials, expected) in [
        ("steal-db", serde_json::json!({"secretRef": {"name": "tenant-database", "key": "url"}}), "tenant-database"),
        (
            "steal-copy",
            serde_json::json!({"secretRef": {"name": "integration-web", "key": "credential"}}),
            "integration-*",
        ),
        (
            "steal-vault-db",
            serde_json::json!({"vault": {"path": "tenants/e2e-integrations/database", "key": "password"}}),
            "tenants/<tenant>/database",
        ),
    ] {
        let spec = serde_json::json!({"type": "Webhook", "endpoint": endpoint, "credentials": credentials});
        let refused = api.create(&PostParams::default(), &integration(name, spec)).await.expect_err(name);
        let kube::Error::Api(status) = refused else { panic!("{name}: {refused}") };
        assert_eq!(status.code, 422, "{name}: {}", status.message);
        assert!(status.message.contains(expected), "{name}: {}", status.message);
    }
    // ...and the controller any Secret the operator wrote, whatever its name.
    let manifest = kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "lookalike",
            "-n",
            NS,
            "--from-literal=url=x",
            "--dry-run=client",
            "-o",
            "yaml",
        ],
        None,
    );
    kubectl_ok(&["apply", "-f", "-"], Some(&manifest));
    kubectl_ok(&["label", "secret", "lookalike", "-n", NS, "app.kubernetes.io/managed-by=bizosaas-operator"], None);
    api.create(
        &PostParams::default(),
        &integration(
            "steal-labelled",
            serde_json::json!({"type": "Webhook", "endpoint": endpoint,
                               "credentials": {"secretRef": {"name": "lookalike", "key": "url"}}, "healthCheck": check}),
        ),
    )
    .await
    .unwrap();
    let (reason, message) = wait_condition(&api, "steal-labelled", "CredentialsResolved", "False").await;
    assert_eq!(reason, "SecretForbidden", "{message}");
    assert!(
        secrets.get_opt("integration-steal-labelled").await.unwrap().is_none(),
        "the operator's Secret was projected"
    );

    // The probe leaves from the operator's network position: as a tenant owner would, aim it
    // at the operator's own loopback, the API server and instance metadata. None is dialled.
    let api_server = api_server_address();
    for (name, url, why) in [
        ("probe-loopback", "http://127.0.0.1:8080".to_string(), "loopback"),
        ("probe-apiserver", format!("https://{}", api_server.trim()), "the Kubernetes API server"),
        ("probe-metadata", "http://169.254.169.254".to_string(), "link-local"),
    ] {
        api.create(
            &PostParams::default(),
            &integration(
                name,
                serde_json::json!({"type": "Webhook", "endpoint": url,
                                   "credentials": {"secretRef": {"name": "src", "key": "apiKey"}}, "healthCheck": check}),
            ),
        )
        .await
        .unwrap();
        let (reason, message) = wait_condition(&api, name, "Reachable", "False").await;
        assert_eq!(reason, "EndpointRefused", "{name}: {message}");
        assert!(message.contains(why), "{name}: {message}");
    }

    // Deleting an Integration removes its projection.
    api.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("the projected Secret to go", TIMEOUT, || async {
        secrets.get_opt("integration-web").await.ok()?.is_none().then_some(())
    })
    .await;

    // No secret value in logs, events or status.
    let values = [&planted, &rotated, &vault_planted, &vault_rotated];
    let logs = op.logs();
    let events: Vec<String> = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect();
    assert!(!events.is_empty(), "the operator records events");
    let statuses = serde_json::to_string(&api.list(&ListParams::default()).await.unwrap().items).unwrap();
    for value in values {
        assert!(!logs.contains(value.as_str()), "a secret value is in the operator's output");
        assert!(!events.iter().any(|e| e.contains(value.as_str())), "a secret value is in an event");
        assert!(!statuses.contains(value.as_str()), "a secret value is in a status");
    }
    Api::<bizosaas_crds::Tenant>::all(client.clone()).delete(TENANT, &DeleteParams::default()).await.unwrap();
}
