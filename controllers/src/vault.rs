//! Vault (or OpenBao) access: the KV v2 paths, policies and Kubernetes-auth roles of
//! tenants, and reading Integration credentials. Errors name paths, never values.

use std::collections::BTreeMap;
use tokio::sync::RwLock;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

/// How the operator logs in to Vault.
#[derive(Clone)]
pub enum VaultAuth {
    /// A token, e.g. from a Secret.
    Token(String),
    /// Kubernetes auth with the operator's own service-account token.
    Kubernetes { role: String, jwt_path: String },
}

impl std::fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VaultAuth::Token(_) => f.write_str("Token(<redacted>)"),
            VaultAuth::Kubernetes { role, jwt_path } => {
                f.debug_struct("Kubernetes").field("role", role).field("jwt_path", jwt_path).finish()
            }
        }
    }
}

/// Where Vault is and how it is laid out.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    pub address: String,
    pub auth: VaultAuth,
    /// Mount of the KV v2 engine holding `tenants/<name>/...`.
    pub kv_mount: String,
    /// Mount of the Kubernetes auth method tenant roles are created in.
    pub kubernetes_mount: String,
}

/// Why a Vault operation failed. Messages carry paths and status codes only.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("Vault is unreachable: {0}")]
    Unreachable(String),
    #[error("Vault denied {0}")]
    Denied(String),
    #[error("nothing at Vault path {0}")]
    NotFound(String),
    #[error("key {key:?} is missing at Vault path {path}")]
    MissingKey { path: String, key: String },
    #[error("Vault failed at {what}: status {code}")]
    Status { what: String, code: u16 },
    #[error("Vault client: {0}")]
    Client(String),
}

impl VaultError {
    fn from_client(what: &str, e: ClientError) -> Self {
        match e {
            ClientError::APIError { code: 403, .. } => VaultError::Denied(what.to_string()),
            ClientError::APIError { code: 404, .. } => VaultError::NotFound(what.to_string()),
            ClientError::APIError { code, .. } => VaultError::Status { what: what.to_string(), code },
            ClientError::RestClientError { .. } => VaultError::Unreachable(what.to_string()),
            other => VaultError::Client(format!("{what}: {other}")),
        }
    }
}

/// Evaluates `$call` (an awaited call on `$vault`), and once more after a fresh login when
/// the token was refused.
macro_rules! relogin_once {
    ($vault:expr, $call:expr) => {{
        let first = $call;
        if $vault.relogin_after(&first).await? { $call } else { first }
    }};
}

/// The paths below `tenants/<name>/` the operator writes and so owns: each is a secret and
/// the subtree of the same name. Everything else under a tenant's prefix belongs to the
/// tenant's owners (their Integration credentials) and is never removed by the operator.
pub const OPERATOR_OWNED: &[&str] = &["database"];

/// The audience a tenant's Kubernetes-auth role requires of a service-account token: a
/// token minted for the API server (or anything else) does not log in.
pub const TENANT_AUDIENCE: &str = "bizosaas-vault";

/// Lifetime of a tenant's Vault token, and the most it can be renewed to.
pub const TENANT_TOKEN_TTL: &str = "1h";
pub const TENANT_TOKEN_MAX_TTL: &str = "4h";

/// A logged-in Vault client.
pub struct Vault {
    config: VaultConfig,
    client: RwLock<VaultClient>,
}

impl Vault {
    /// Builds the client. A token is used as given; Kubernetes auth logs in on first use, so
    /// an unreachable Vault surfaces in conditions instead of stopping the operator.
    pub fn new(config: VaultConfig) -> Result<Self, VaultError> {
        let settings = VaultClientSettingsBuilder::default()
            .address(&config.address)
            .timeout(Some(std::time::Duration::from_secs(10)))
            .token(match &config.auth {
                VaultAuth::Token(token) => token.clone(),
                VaultAuth::Kubernetes { .. } => String::new(),
            })
            .build()
            .map_err(|e| VaultError::Client(e.to_string()))?;
        let client = VaultClient::new(settings).map_err(|e| VaultError::Client(e.to_string()))?;
        Ok(Self { config, client: RwLock::new(client) })
    }

    async fn login(&self) -> Result<(), VaultError> {
        let token = match &self.config.auth {
            VaultAuth::Token(token) => token.clone(),
            VaultAuth::Kubernetes { role, jwt_path } => {
                let jwt = tokio::fs::read_to_string(jwt_path)
                    .await
                    .map_err(|e| VaultError::Client(format!("cannot read {jwt_path}: {e}")))?;
                let client = self.client.read().await;
                let auth = vaultrs::auth::kubernetes::login(&*client, &self.config.kubernetes_mount, role, jwt.trim())
                    .await
                    .map_err(|e| VaultError::from_client("the operator's Kubernetes login", e))?;
                auth.client_token
            }
        };
        self.client.write().await.settings.token = token;
        Ok(())
    }

    /// With Kubernetes auth a refused token has most likely expired: log in again once.
    async fn relogin_after(&self, result: &Result<impl Sized, VaultError>) -> Result<bool, VaultError> {
        if matches!(result, Err(VaultError::Denied(_))) && matches!(self.config.auth, VaultAuth::Kubernetes { .. }) {
            self.login().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Checks that Vault answers and the operator's token is valid.
    pub async fn ping(&self) -> Result<(), VaultError> {
        relogin_once!(self, self.ping_once().await)
    }

    async fn ping_once(&self) -> Result<(), VaultError> {
        let c = self.client.read().await;
        vaultrs::token::lookup_self(&*c).await.map(|_| ()).map_err(|e| VaultError::from_client("token lookup", e))
    }

    /// The KV path of a tenant's database credentials, below the mount.
    pub fn tenant_database_path(tenant: &str) -> String {
        format!("tenants/{tenant}/{}", OPERATOR_OWNED[0])
    }

    /// The least-privilege policy of the operator itself, for a KV v2 engine at `kv_mount`
    /// and Kubernetes auth at `kubernetes_mount`: exactly the paths it uses, nothing else.
    /// The policy shipped in the chart and in `manifests/vault/` is this text for the
    /// default mounts (a unit test keeps them equal).
    pub fn operator_policy_text(kv_mount: &str, kubernetes_mount: &str) -> String {
        format!(
            "# Policy of the BizOSaaS operator (Vault or OpenBao). Generated by the operator's\n\
             # `Vault::operator_policy_text`; KV v2 at `{kv_mount}/`, Kubernetes auth at `auth/{kubernetes_mount}/`.\n\
             \n\
             # Tenants' credentials: written at tenants/<tenant>/database, Integration credentials\n\
             # read at tenants/<tenant>/<path>, operator-owned paths listed and removed on deletion.\n\
             path \"{kv_mount}/data/tenants/*\" {{\n  capabilities = [\"create\", \"read\", \"update\"]\n}}\n\
             path \"{kv_mount}/metadata/tenants/*\" {{\n  capabilities = [\"list\", \"delete\"]\n}}\n\
             \n\
             # Each tenant's read-only policy (the client writes ACL policies through sys/policy/) and the Kubernetes-auth role that grants it.\n\
             path \"sys/policy/tenant-*\" {{\n  capabilities = [\"create\", \"update\", \"delete\"]\n}}\n\
             path \"auth/{kubernetes_mount}/role/tenant-*\" {{\n  capabilities = [\"create\", \"update\", \"delete\"]\n}}\n\
             \n\
             # The readiness check: the operator's own token is valid.\n\
             path \"auth/token/lookup-self\" {{\n  capabilities = [\"read\"]\n}}\n"
        )
    }

    /// Policy and Kubernetes-auth role name of a tenant.
    pub fn tenant_policy(tenant: &str) -> String {
        format!("tenant-{tenant}")
    }

    /// The policy text: read of everything under `tenants/<name>/` of the KV `mount`, nothing else.
    pub fn tenant_policy_text(mount: &str, tenant: &str) -> String {
        format!(
            "path \"{mount}/data/tenants/{tenant}/*\" {{\n  capabilities = [\"read\"]\n}}\n\
             path \"{mount}/metadata/tenants/{tenant}/*\" {{\n  capabilities = [\"read\", \"list\"]\n}}\n"
        )
    }

    /// Reads a KV v2 secret's data, `None` when nothing is stored there.
    pub async fn read(&self, path: &str) -> Result<Option<BTreeMap<String, String>>, VaultError> {
        relogin_once!(self, self.read_once(path).await)
    }

    async fn read_once(&self, path: &str) -> Result<Option<BTreeMap<String, String>>, VaultError> {
        let c = self.client.read().await;
        match vaultrs::kv2::read::<BTreeMap<String, serde_json::Value>>(&*c, &self.config.kv_mount, path).await {
            Ok(data) => Ok(Some(
                data.into_iter()
                    .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                    .collect(),
            )),
            Err(ClientError::APIError { code: 404, .. }) => Ok(None),
            Err(e) => Err(VaultError::from_client(path, e)),
        }
    }

    /// Reads one key of a KV v2 secret.
    pub async fn read_key(&self, path: &str, key: &str) -> Result<String, VaultError> {
        let data =
            self.read(path).await?.ok_or_else(|| VaultError::NotFound(format!("{}/{path}", self.config.kv_mount)))?;
        data.get(key)
            .cloned()
            .ok_or_else(|| VaultError::MissingKey { path: format!("{}/{path}", self.config.kv_mount), key: key.into() })
    }

    /// Writes a KV v2 secret, unless it already holds exactly `data` (no new version then).
    pub async fn write(&self, path: &str, data: &BTreeMap<String, String>) -> Result<bool, VaultError> {
        if self.read(path).await?.as_ref() == Some(data) {
            return Ok(false);
        }
        relogin_once!(self, self.write_once(path, data).await)?;
        Ok(true)
    }

    async fn write_once(&self, path: &str, data: &BTreeMap<String, String>) -> Result<(), VaultError> {
        let c = self.client.read().await;
        vaultrs::kv2::set(&*c, &self.config.kv_mount, path, data)
            .await
            .map(|_| ())
            .map_err(|e| VaultError::from_client(path, e))
    }

    /// Creates or updates the tenant's policy and its Kubernetes-auth role bound to
    /// `service_account` in `namespace`.
    pub async fn ensure_tenant_access(
        &self,
        tenant: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<(), VaultError> {
        relogin_once!(self, self.ensure_tenant_access_once(tenant, namespace, service_account).await)
    }

    async fn ensure_tenant_access_once(
        &self,
        tenant: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<(), VaultError> {
        let c = self.client.read().await;
        let name = Self::tenant_policy(tenant);
        vaultrs::sys::policy::set(&*c, &name, &Self::tenant_policy_text(&self.config.kv_mount, tenant))
            .await
            .map_err(|e| VaultError::from_client("writing the policy", e))?;
        let mut role = vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder();
        role.bound_service_account_names(vec![service_account.to_string()])
            .bound_service_account_namespaces(vec![namespace.to_string()])
            .token_policies(vec![name.clone()])
            .audience(TENANT_AUDIENCE)
            .token_ttl(TENANT_TOKEN_TTL)
            .token_max_ttl(TENANT_TOKEN_MAX_TTL);
        vaultrs::auth::kubernetes::role::create(&*c, &self.config.kubernetes_mount, &name, Some(&mut role))
            .await
            .map_err(|e| VaultError::from_client("writing the Kubernetes-auth role", e))
    }

    /// Removes what the operator owns under `tenants/<name>/` (each [`OPERATOR_OWNED`]
    /// secret and its subtree, recursively), the tenant's policy and its role. The owners'
    /// own secrets under the prefix stay.
    pub async fn remove_tenant(&self, tenant: &str) -> Result<(), VaultError> {
        relogin_once!(self, self.remove_tenant_once(tenant).await)
    }

    async fn remove_tenant_once(&self, tenant: &str) -> Result<(), VaultError> {
        let c = self.client.read().await;
        let name = Self::tenant_policy(tenant);
        for owned in OPERATOR_OWNED {
            self.delete_tree(&c, &format!("tenants/{tenant}/{owned}")).await?;
        }
        match vaultrs::auth::kubernetes::role::delete(&*c, &self.config.kubernetes_mount, &name).await {
            Ok(()) | Err(ClientError::APIError { code: 404, .. }) => {}
            Err(e) => return Err(VaultError::from_client("deleting the role", e)),
        }
        match vaultrs::sys::policy::delete(&*c, &name).await {
            Ok(()) | Err(ClientError::APIError { code: 404, .. }) => Ok(()),
            Err(e) => Err(VaultError::from_client("deleting the policy", e)),
        }
    }

    /// Deletes the secret at `root` (all its versions) and every secret below `root/`.
    async fn delete_tree(&self, c: &VaultClient, root: &str) -> Result<(), VaultError> {
        let kv = &self.config.kv_mount;
        let mut folders = vec![root.to_string()];
        while let Some(folder) = folders.pop() {
            let keys = match vaultrs::kv2::list(c, kv, &folder).await {
                Ok(keys) => keys,
                Err(ClientError::APIError { code: 404, .. }) => Vec::new(),
                Err(e) => return Err(VaultError::from_client(&folder, e)),
            };
            for key in keys {
                match key.strip_suffix('/') {
                    Some(sub) => folders.push(format!("{folder}/{sub}")),
                    None => delete_metadata(c, kv, &format!("{folder}/{key}")).await?,
                }
            }
        }
        delete_metadata(c, kv, root).await
    }
}

/// Deletes a KV v2 secret with all its versions; nothing there counts as done.
async fn delete_metadata(c: &VaultClient, kv: &str, path: &str) -> Result<(), VaultError> {
    match vaultrs::kv2::delete_metadata(c, kv, path).await {
        Ok(()) | Err(ClientError::APIError { code: 404, .. }) => Ok(()),
        Err(e) => Err(VaultError::from_client(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_policy_reads_only_its_own_path() {
        let text = Vault::tenant_policy_text("secret", "acme");
        assert!(text.contains("path \"secret/data/tenants/acme/*\""));
        assert!(!text.contains("create") && !text.contains("update") && !text.contains("delete"));
        assert_eq!(Vault::tenant_database_path("acme"), "tenants/acme/database");
    }

    #[test]
    fn the_shipped_operator_policy_is_the_generated_one() {
        let text = Vault::operator_policy_text("secret", "kubernetes");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for shipped in ["manifests/vault/operator-policy.hcl", "charts/bizosaas/files/vault-operator-policy.hcl"] {
            let file = std::fs::read_to_string(root.join(shipped)).unwrap_or_default();
            assert_eq!(file, text, "{shipped} is stale: write it from Vault::operator_policy_text");
        }
        assert!(!text.contains("sys/*") && !text.contains("\"sudo\"") && !text.contains("path \"*\""));
        assert!(text.contains("path \"sys/policy/tenant-*\""));
        assert!(text.contains("path \"auth/kubernetes/role/tenant-*\""));
    }

    #[test]
    fn the_database_path_is_operator_owned() {
        assert!(Vault::tenant_database_path("acme").ends_with(&format!("/{}", OPERATOR_OWNED[0])));
    }

    #[test]
    fn tokens_are_redacted_in_debug_output() {
        assert_eq!(format!("{:?}", VaultAuth::Token("hunter2".into())), "Token(<redacted>)");
    }
}
