//! The gateway's own database login: the operator lets the `bizosaas_gateway` role log in and
//! hands its credentials to the gateway in a Secret of the platform namespace. The role may
//! only append to and read tenants' audit logs (`postgres::schema::gateway_access`).

use crate::FIELD_MANAGER;
use crate::postgres::{Admin, DatabaseError, TenantCredentials};
use crate::tenant::build::database_fields;
use bizosaas_crds::{LABEL_MANAGED_BY, MANAGED_BY};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use std::time::Duration;
use tracing::{info, warn};

/// How often the login and the Secret are checked again once in place (a restored database
/// or a deleted Secret is repaired within this).
const RECHECK: Duration = Duration::from_secs(600);
/// How soon a failed attempt is retried.
const RETRY: Duration = Duration::from_secs(15);

/// The Secret `name` in `namespace` with the gateway's credentials.
pub fn build(namespace: &str, name: &str, creds: &TenantCredentials) -> Secret {
    let data = database_fields(creds).into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(
                [
                    (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                    ("app.kubernetes.io/component".to_string(), "gateway-database".to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Keeps the gateway's login and its Secret in place until the task is dropped.
pub fn spawn(client: kube::Client, admin: Admin, namespace: String, name: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let secrets: Api<Secret> = Api::namespaced(client, &namespace);
        let mut announced = false;
        loop {
            match ensure(&secrets, &admin, &namespace, &name).await {
                Ok(()) => {
                    if !announced {
                        info!(%namespace, %name, "the gateway's database login is in place");
                        announced = true;
                    }
                    tokio::time::sleep(RECHECK).await;
                }
                Err(e) => {
                    warn!(%namespace, %name, error = %e, "cannot set up the gateway's database login yet");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    })
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

async fn ensure(secrets: &Api<Secret>, admin: &Admin, namespace: &str, name: &str) -> Result<(), Error> {
    // The password already handed out, so a restart never changes it under running gateways.
    let handed_out = secrets
        .get_opt(name)
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get("password").cloned())
        .and_then(|p| String::from_utf8(p.0).ok());
    let creds = admin.ensure_gateway_login(handed_out.as_deref()).await?;
    if handed_out.as_deref() != Some(creds.password.as_str()) {
        let secret = build(namespace, name, &creds);
        secrets.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_holds_a_url_for_the_gateway_role() {
        let creds = TenantCredentials {
            host: "db".into(),
            port: 5432,
            database: "bizosaas_platform".into(),
            username: "bizosaas_gateway".into(),
            password: "p".into(),
        };
        let secret = build("bizosaas-system", "bizosaas-gateway-database", &creds);
        let data = secret.data.unwrap();
        assert_eq!(data["url"].0, b"postgres://bizosaas_gateway:p@db:5432/bizosaas_platform");
        assert_eq!(secret.metadata.namespace.as_deref(), Some("bizosaas-system"));
    }
}
