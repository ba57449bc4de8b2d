//! The local cluster's API server, for tests whose runtime reviews its callers' tokens as in
//! a pod: a kubeconfig, a client, and ServiceAccount tokens minted with TokenRequest.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;
use std::path::PathBuf;

/// The local cluster's kubeconfig (`BIZOSAAS_TEST_KUBECONFIG` overrides it).
pub fn kubeconfig() -> PathBuf {
    if let Some(path) = std::env::var_os("BIZOSAAS_TEST_KUBECONFIG") {
        return path.into();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/harness/cluster.sh");
    let out = std::process::Command::new("bash").arg(script).arg("kubeconfig").output().expect("bash runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && std::path::Path::new(&path).exists(),
        "these tests need the local cluster: run `tests/harness/cluster.sh up` (or set BIZOSAAS_TEST_KUBECONFIG)"
    );
    path.into()
}

pub async fn client() -> kube::Client {
    bizosaas_agent::install_crypto_provider();
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig()).expect("the kubeconfig reads");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("kube config");
    kube::Client::try_from(config).expect("kube client")
}

/// Creates the namespace and ServiceAccount if they do not exist yet.
pub async fn service_account(client: &kube::Client, namespace: &str, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
    let _ = Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await;
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": namespace}})).unwrap();
    let _ = Api::<ServiceAccount>::namespaced(client.clone(), namespace).create(&PostParams::default(), &sa).await;
}

#[path = "../../../tests/common/token_request.rs"]
mod token_request;

/// A 10-minute token of `namespace/name` (created first if missing); an empty audience means
/// the API server's own.
pub async fn token(client: &kube::Client, namespace: &str, name: &str, audience: &str) -> String {
    service_account(client, namespace, name).await;
    token_request::token(client, namespace, name, audience).await
}
