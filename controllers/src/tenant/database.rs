//! A Tenant's PostgreSQL database and where its credentials are handed out: the
//! `tenant-database` Secret or the tenant's Vault path.

use super::CONTROLLER;
use super::apply::{Granted, RESYNC};
use super::build::{self, DATABASE_SECRET, Owner};
use super::controller::Error;
use super::status::{DATABASE_READY, SECRETS_READY};
use crate::apply::Applier;
use crate::conditions::Observed;
use crate::context::Context;
use crate::postgres::{Admin, Claim, DatabaseError, TenantCredentials, TenantNames};
use crate::vault::{Vault, VaultError};
use bizosaas_crds::Tenant;
use bizosaas_crds::tenant::{DatabaseIsolation, SecretsBackend, TenantPhase};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use tracing::info;

/// Provisions the database and stores the app role's credentials (Secret or Vault). Problems
/// outside the cluster become conditions (and a retry), not reconcile errors, so the status
/// always says what is wrong. In a `fresh_namespace` no Secret was handed out before; the
/// Secret is read and written once the operator is `granted` access to the namespace.
pub(super) async fn ensure(
    tenant: &Tenant,
    owner: &Owner,
    fresh_namespace: bool,
    granted: &Granted,
    applier: Applier<'_>,
    ctx: &Context,
) -> Result<((Observed, Observed), Option<String>), Error> {
    let failed = |reason: &str, msg: String| {
        Ok((
            (Observed::failed(DATABASE_READY, reason, msg.clone()), Observed::failed(SECRETS_READY, reason, msg)),
            None,
        ))
    };
    let Some(admin) = &ctx.postgres else {
        return failed("DatabaseNotConfigured", "The operator has no database configured (--database-url)".into());
    };
    let store = match tenant.spec.secrets.backend {
        SecretsBackend::Kubernetes => {
            CredentialStore::Secret(Box::new(Api::namespaced(ctx.client.clone(), &owner.namespace)))
        }
        SecretsBackend::Vault => match &ctx.vault {
            Some(vault) => CredentialStore::Vault(vault),
            None => {
                let msg = "secrets.backend Vault needs the operator's Vault connection (--vault-addr), which is not configured";
                return failed("VaultNotConfigured", msg.into());
            }
        },
    };
    let names = TenantNames::new(&owner.name)?;
    let HandedOut { password, secret } =
        match store.handed_out(&owner.name, fresh_namespace, granted, &ctx.metrics).await {
            Ok(handed_out) => handed_out,
            Err(StoreError::Vault(e)) => return failed(vault_reason(&e), e.to_string()),
            Err(StoreError::Kube(e)) => return Err(e.into()),
        };
    let new_password = password.is_none();
    if new_password {
        info!(role = %names.app_role, "no credentials handed out yet: a new password will be set");
    }
    let uid = tenant.metadata.uid.clone().unwrap_or_default();
    let recently_provisioned = {
        let provisioned = ctx.provisioned_databases.lock().expect("provisioned databases lock");
        provisioned
            .get(&uid)
            .is_some_and(|(generation, at)| *generation == tenant.metadata.generation && at.elapsed() < RESYNC)
    };
    let ensured = match password {
        Some(password) if recently_provisioned => {
            Ok(admin.credentials(&names, tenant.spec.database.isolation, password))
        }
        password => {
            let claim = claim(tenant);
            admin.ensure_claimed_tenant(&names, tenant.spec.database.isolation, password.as_deref(), &claim).await
        }
    };
    let creds = match ensured {
        Ok(creds) => {
            if !recently_provisioned {
                let mut provisioned = ctx.provisioned_databases.lock().expect("provisioned databases lock");
                provisioned.insert(uid, (tenant.metadata.generation, std::time::Instant::now()));
            }
            creds
        }
        Err(e) => {
            let reason = match e {
                DatabaseError::Connect(_) => "DatabaseUnavailable",
                DatabaseError::Conflict(_) => "DatabaseConflict",
                _ => "DatabaseProvisioningFailed",
            };
            let msg = e.to_string();
            return Ok((
                (
                    Observed::failed(DATABASE_READY, reason, msg.clone()),
                    Observed::failed(SECRETS_READY, "WaitingForDatabase", msg),
                ),
                None,
            ));
        }
    };
    if new_password {
        // Recorded before the credentials are stored: if storing fails, the next reconcile
        // sets a password again and records that too.
        record_new_password(tenant, &names, admin).await?;
    }
    record_suspension(tenant, &names, admin).await?;
    let database = creds.database.clone();
    let db_msg = match tenant.spec.database.isolation {
        DatabaseIsolation::Dedicated => {
            format!("Database {database} with roles {} and {}", names.owner_role, names.app_role)
        }
        DatabaseIsolation::Shared => {
            format!("Rows in {database} behind row-level security for role {}", names.app_role)
        }
    };
    let database_ok = Observed::ok(DATABASE_READY, "Provisioned", db_msg);
    let secrets_ok = match store.store(owner, &creds, secret.as_ref(), granted, applier, &ctx.config).await {
        Ok(message) => Observed::ok(SECRETS_READY, "Stored", message),
        Err(StoreError::Vault(e)) => Observed::failed(SECRETS_READY, vault_reason(&e), e.to_string()),
        Err(StoreError::Kube(e)) => return Err(e.into()),
    };
    Ok(((database_ok, secrets_ok), Some(database)))
}

/// Appends to the tenant's audit log that its database was provisioned (once per Tenant uid)
/// or, when it had been before, that its app role's credentials were replaced.
async fn record_new_password(tenant: &Tenant, names: &TenantNames, admin: &Admin) -> Result<(), Error> {
    let isolation = tenant.spec.database.isolation;
    let uid = tenant.metadata.uid.clone().unwrap_or_default();
    let detail = serde_json::json!({"isolation": isolation, "role": names.app_role});
    if claim(tenant).provisioned_before {
        let key = format!(
            "{uid}/{}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
        );
        admin.record_action(names, isolation, "database.credentials_rotated", &key, detail).await?;
    } else {
        admin.record_action(names, isolation, "database.provisioned", &uid, detail).await?;
    }
    Ok(())
}

/// Appends a suspension or a resumption to the tenant's audit log, once per generation, while
/// the Tenant's spec and its last reported phase disagree about it.
async fn record_suspension(tenant: &Tenant, names: &TenantNames, admin: &Admin) -> Result<(), Error> {
    let reported = tenant.status.as_ref().and_then(|s| s.phase) == Some(TenantPhase::Suspended);
    if tenant.spec.suspended == reported {
        return Ok(());
    }
    let action = if tenant.spec.suspended { "tenant.suspended" } else { "tenant.resumed" };
    let key =
        format!("{}/{}", tenant.metadata.uid.as_deref().unwrap_or_default(), tenant.metadata.generation.unwrap_or(0));
    let detail = serde_json::json!({"generation": tenant.metadata.generation});
    admin.record_action(names, tenant.spec.database.isolation, action, &key, detail).await?;
    Ok(())
}

/// The Tenant whose database this is: its uid, whether it asks to adopt retained data, and
/// whether its own status already says the database was provisioned for it.
pub(super) fn claim(tenant: &Tenant) -> Claim {
    let provisioned_before = tenant
        .status
        .as_ref()
        .and_then(|s| bizosaas_crds::common::find_condition(&s.conditions, DATABASE_READY))
        .is_some_and(|c| c.status == "True");
    Claim {
        uid: tenant.metadata.uid.clone().unwrap_or_default(),
        adopt: tenant.spec.database.adopt_retained,
        provisioned_before,
    }
}

fn vault_reason(e: &VaultError) -> &'static str {
    match e {
        VaultError::Unreachable(_) => "VaultUnavailable",
        VaultError::Denied(_) => "VaultDenied",
        _ => "VaultFailed",
    }
}

/// Where a tenant's database credentials are handed out.
enum CredentialStore<'a> {
    /// The Secret `tenant-database` in the tenant namespace.
    Secret(Box<Api<Secret>>),
    /// `tenants/<name>/database` in Vault, read by the tenant's Kubernetes-auth role.
    Vault(&'a Vault),
}

/// What a [`CredentialStore`] holds for the tenant before this reconcile.
struct HandedOut {
    /// The password already handed out, if any.
    password: Option<String>,
    /// The `tenant-database` Secret it was read from: what the Secret is compared with
    /// before it is written, instead of reading it again.
    secret: Option<Secret>,
}

enum StoreError {
    Kube(kube::Error),
    Vault(VaultError),
}

impl CredentialStore<'_> {
    /// What was handed out already, so reconciles never rotate the password by accident.
    async fn handed_out(
        &self,
        tenant: &str,
        fresh_namespace: bool,
        granted: &Granted,
        metrics: &crate::metrics::Metrics,
    ) -> Result<HandedOut, StoreError> {
        match self {
            CredentialStore::Secret(_) if fresh_namespace => Ok(HandedOut { password: None, secret: None }),
            CredentialStore::Secret(api) => {
                metrics.child_read(CONTROLLER, "Secret");
                let secret = granted.when(|| api.get_opt(DATABASE_SECRET)).await.map_err(StoreError::Kube)?;
                let password = secret
                    .as_ref()
                    .and_then(|s| s.data.as_ref())
                    .and_then(|d| d.get("password"))
                    .and_then(|p| String::from_utf8(p.0.clone()).ok());
                Ok(HandedOut { password, secret })
            }
            CredentialStore::Vault(vault) => {
                let data = vault.read(&Vault::tenant_database_path(tenant)).await.map_err(StoreError::Vault)?;
                Ok(HandedOut { password: data.and_then(|d| d.get("password").cloned()), secret: None })
            }
        }
    }

    /// Stores the credentials, comparing with the `live` Secret [`CredentialStore::handed_out`]
    /// read (none in a fresh namespace); returns what the `SecretsReady` condition says.
    async fn store(
        &self,
        owner: &Owner,
        creds: &TenantCredentials,
        live: Option<&Secret>,
        granted: &Granted,
        applier: Applier<'_>,
        config: &crate::Config,
    ) -> Result<String, StoreError> {
        match self {
            CredentialStore::Secret(api) => {
                let desired = build::database_secret(owner, creds);
                granted.when(|| applier.ensure_against(api, &desired, live)).await.map_err(StoreError::Kube)?;
                Ok(format!("Secret {DATABASE_SECRET} holds the credentials of {}", creds.username))
            }
            CredentialStore::Vault(vault) => {
                let path = Vault::tenant_database_path(&owner.name);
                vault.write(&path, &build::database_fields(creds)).await.map_err(StoreError::Vault)?;
                vault
                    .ensure_tenant_access(&owner.name, &owner.namespace, build::WORKLOAD_SERVICE_ACCOUNT)
                    .await
                    .map_err(StoreError::Vault)?;
                Ok(format!(
                    "Vault path {}/{path} holds the credentials of {}; role and policy {} let {} read it",
                    config.vault_kv_mount,
                    creds.username,
                    Vault::tenant_policy(&owner.name),
                    build::WORKLOAD_SERVICE_ACCOUNT
                ))
            }
        }
    }
}
