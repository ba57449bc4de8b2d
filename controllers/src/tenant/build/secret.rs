//! The Secret holding the tenant app role's database credentials.

use super::{DATABASE_SECRET, Owner};
use crate::postgres::TenantCredentials;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use std::collections::BTreeMap;

/// The fields handed out: host, port, database, username, password and a ready-made `url`.
pub fn database_fields(creds: &TenantCredentials) -> BTreeMap<String, String> {
    [
        ("host", creds.host.clone()),
        ("port", creds.port.to_string()),
        ("database", creds.database.clone()),
        ("username", creds.username.clone()),
        ("password", creds.password.clone()),
        ("url", creds.url()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// `tenant-database` with the [`database_fields`].
pub fn database_secret(owner: &Owner, creds: &TenantCredentials) -> Secret {
    let data =
        database_fields(creds).into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect::<BTreeMap<_, _>>();
    Secret {
        metadata: owner.meta(DATABASE_SECRET, "database", true),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Owner, fixtures};
    use super::*;

    #[test]
    fn secret_carries_a_connection_url_for_the_app_role() {
        let owner = Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap();
        let creds = TenantCredentials {
            host: "db.bizosaas-system".into(),
            port: 5432,
            database: "tenant_acme".into(),
            username: "tenant_acme_app".into(),
            password: "s3cret".into(),
        };
        let secret = database_secret(&owner, &creds);
        let data = secret.data.unwrap();
        let url = String::from_utf8(data["url"].0.clone()).unwrap();
        assert_eq!(url, "postgres://tenant_acme_app:s3cret@db.bizosaas-system:5432/tenant_acme");
        assert_eq!(secret.metadata.name.as_deref(), Some("tenant-database"));
    }
}
