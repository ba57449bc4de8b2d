//! The operator's own token for the crews' run API.
//!
//! Each crew's runtime admits the operator's ServiceAccount (and its own namespace's) when it
//! presents a token issued for the runtime's audience ([`RUNTIME_AUDIENCE`]). In a pod the
//! token is a projected ServiceAccount token with that audience, which the kubelet rotates:
//! the file is read again every minute. Outside a cluster (an operator on a workstation or in
//! tests) the operator asks the TokenRequest API for a short-lived token of the configured
//! ServiceAccount, and asks again before it expires.

pub use bizosaas_crds::crew_config::RUNTIME_AUDIENCE;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How often a projected token file is read again.
const FILE_REFRESH: Duration = Duration::from_secs(60);
/// Lifetime asked of the TokenRequest API; a token is replaced after half of it.
const REQUESTED_LIFETIME: Duration = Duration::from_secs(3600);

/// Where the token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// A projected ServiceAccount token with the runtime's audience.
    File(PathBuf),
    /// TokenRequest for `namespace/name`.
    Request { namespace: String, name: String },
    /// None configured: crews refuse the operator's calls, and steps say why.
    None,
}

/// Splits `namespace/name`.
pub fn service_account(reference: &str) -> Option<(String, String)> {
    let (namespace, name) = reference.trim().split_once('/')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then(|| (namespace.into(), name.into()))
}

/// Hands out a current token, fetching a new one when the old one is due.
pub struct RuntimeToken {
    client: Client,
    source: TokenSource,
    current: Mutex<Option<(String, Instant)>>,
}

impl RuntimeToken {
    pub fn new(client: Client, source: TokenSource) -> Self {
        Self { client, source, current: Mutex::new(None) }
    }

    /// The token to send as `Authorization: Bearer`.
    pub async fn get(&self) -> Result<String, String> {
        let mut current = self.current.lock().await;
        if let Some((token, until)) = current.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = match &self.source {
            TokenSource::None => {
                return Err("the operator has no token for crews' run API: configure its ServiceAccount \
                            (BIZOSAAS_OPERATOR_SERVICE_ACCOUNT) or a projected token file (BIZOSAAS_RUNTIME_TOKEN_FILE)"
                    .into());
            }
            TokenSource::File(path) => {
                let token = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("reading the runtime token {}: {e}", path.display()))?;
                (token.trim().to_string(), FILE_REFRESH)
            }
            TokenSource::Request { namespace, name } => {
                let request = TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: vec![RUNTIME_AUDIENCE.into()],
                        expiration_seconds: Some(REQUESTED_LIFETIME.as_secs() as i64),
                        bound_object_ref: None,
                    },
                    ..Default::default()
                };
                let issued = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace)
                    .create_token_request(name, &PostParams::default(), &request)
                    .await
                    .map_err(|e| format!("requesting a runtime token for ServiceAccount {namespace}/{name}: {e}"))?;
                let token = issued.status.map(|s| s.token).unwrap_or_default();
                (token, REQUESTED_LIFETIME / 2)
            }
        };
        if token.is_empty() {
            return Err("the runtime token is empty".into());
        }
        *current = Some((token.clone(), Instant::now() + lifetime));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts_are_namespace_slash_name() {
        assert_eq!(
            service_account("bizosaas-system/bizosaas-operator"),
            Some(("bizosaas-system".into(), "bizosaas-operator".into()))
        );
        for bad in ["", "x", "/x", "x/", "a/b/c"] {
            assert_eq!(service_account(bad), None, "{bad}");
        }
    }
}
