//! The projected Secret `integration-<name>`: the resolved credential and endpoint, with a
//! content hash that consumers put in their pod templates so they roll on rotation.

use bizosaas_crds::{Integration, LABEL_MANAGED_BY, MANAGED_BY};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Annotation carrying the content hash of the projected credentials.
pub const CONTENT_HASH: &str = "bizosaas.io/content-hash";
/// Label naming the Integration a projected Secret belongs to.
pub const LABEL_INTEGRATION: &str = "bizosaas.io/integration";

/// Name of the projected Secret.
pub fn secret_name(integration: &str) -> String {
    format!("integration-{integration}")
}

/// First 16 hex digits of SHA-256 over the projected fields.
pub fn content_hash(endpoint: &str, credential: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(endpoint.as_bytes());
    hasher.update([0]);
    hasher.update(credential.as_bytes());
    hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The projected Secret, owned by the Integration so it goes with it.
pub fn projected_secret(integration: &Integration, endpoint: &str, credential: &str) -> Secret {
    let name = integration.name_any();
    let hash = content_hash(endpoint, credential);
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&name)),
            namespace: integration.namespace(),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                (LABEL_INTEGRATION.to_string(), name.clone()),
            ])),
            annotations: Some(BTreeMap::from([(CONTENT_HASH.to_string(), hash)])),
            owner_references: integration.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            ("credential".to_string(), ByteString(credential.as_bytes().to_vec())),
            ("endpoint".to_string(), ByteString(endpoint.as_bytes().to_vec())),
        ])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn integration() -> Integration {
        let mut i: Integration = serde_saphyr::from_str(
            "apiVersion: bizosaas.io/v1alpha1\nkind: Integration\nmetadata: {name: openrouter, namespace: tenant-acme}\n\
             spec: {type: OpenRouter, credentials: {secretRef: {name: k, key: apiKey}}}\n",
        )
        .unwrap();
        i.metadata.uid = Some("uid-1".into());
        i
    }

    #[test]
    fn projection_is_owned_labelled_and_hashed() {
        let s = projected_secret(&integration(), "https://openrouter.ai/api/v1", "sk-1");
        assert_eq!(s.metadata.name.as_deref(), Some("integration-openrouter"));
        assert_eq!(s.metadata.owner_references.as_ref().unwrap()[0].kind, "Integration");
        let hash = &s.metadata.annotations.as_ref().unwrap()[CONTENT_HASH];
        assert_eq!(hash.len(), 16);
        assert_eq!(s.data.as_ref().unwrap()["credential"].0, b"sk-1");
    }

    #[test]
    fn the_hash_follows_rotation_and_hides_the_value() {
        let a = content_hash("https://x", "sk-1");
        assert_eq!(a, content_hash("https://x", "sk-1"));
        assert_ne!(a, content_hash("https://x", "sk-2"));
        assert_ne!(a, content_hash("https://y", "sk-1"));
        assert!(!a.contains("sk-1"));
    }
}
