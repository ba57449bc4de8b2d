//! ServiceAccount tokens minted with TokenRequest, for the tests of two crates (the agent
//! runtime's and the operator's end-to-end tests), which include this file by path.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

/// A 10-minute token of ServiceAccount `namespace/name` for `audience`; an empty audience
/// means the API server's own.
pub async fn token(client: &kube::Client, namespace: &str, name: &str, audience: &str) -> String {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: if audience.is_empty() { vec![] } else { vec![audience.into()] },
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"));
    issued.status.expect("a TokenRequest answers with a status").token
}
