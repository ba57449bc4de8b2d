//! OIDC bearer tokens (Authentik, Keycloak, Dex...): a JWT signed by one of the issuer's keys.
//!
//! The issuer's discovery document names its JWKS; keys are fetched once and again when a
//! token names a key id not seen yet (the issuer rotated its keys), at most every
//! [`REFETCH_INTERVAL`], and after [`KEYS_MAX_AGE`] so a retired key stops working. A token
//! passes when its signature verifies with the key its header names, its `alg` is that key's
//! (asymmetric only: never `none` or an HMAC the client could forge with a public value), its
//! `iss` is the issuer, its `aud` holds one of the configured audiences, and `exp`/`nbf` hold
//! within the allowed clock skew. The username and groups come from configurable claims, with
//! prefixes, as the API server's own JWT authenticator maps them, so an identity means the same
//! at the gateway and at `kubectl`.

use super::{AuthnError, Identity};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};

/// Shortest time between two fetches of the JWKS prompted by unknown key ids: a flood of
/// tokens with made-up key ids cannot turn into a flood of requests to the issuer.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Keys older than this are fetched again before use.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);

/// How tokens of one issuer are checked and mapped.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    /// `iss` exactly, and where `/.well-known/openid-configuration` is.
    pub issuer: String,
    /// A token's `aud` must hold one of these (the client id).
    pub audiences: Vec<String>,
    pub username_claim: String,
    pub username_prefix: String,
    pub groups_claim: String,
    pub groups_prefix: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub max_skew: Duration,
}

#[derive(Clone)]
struct Key {
    key: DecodingKey,
    algorithm: Algorithm,
}

#[derive(Default)]
struct KeySet {
    by_id: HashMap<String, Key>,
    fetched: Option<Instant>,
}

/// Verifies one issuer's tokens.
pub struct OidcVerifier {
    settings: OidcSettings,
    http: reqwest::Client,
    keys: RwLock<KeySet>,
    /// When the JWKS was last asked for (held while fetching, so one fetch runs at a time).
    last_fetch: Mutex<Option<Instant>>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl OidcVerifier {
    pub fn new(settings: OidcSettings, http: reqwest::Client) -> Self {
        Self { settings, http, keys: RwLock::new(KeySet::default()), last_fetch: Mutex::new(None) }
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Fetches the keys now (at start, so readiness reflects whether the issuer answers).
    pub async fn refresh(&self) -> Result<usize, AuthnError> {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        let keys = self.fetch().await?;
        let count = keys.len();
        *self.keys.write().await = KeySet { by_id: keys, fetched: Some(Instant::now()) };
        Ok(count)
    }

    async fn fetch(&self) -> Result<HashMap<String, Key>, AuthnError> {
        let issuer = self.settings.issuer.trim_end_matches('/');
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            AuthnError::Unavailable(format!("the OIDC issuer's {what} could not be read: {e}"))
        };
        let discovery: Discovery = self
            .http
            .get(format!("{issuer}/.well-known/openid-configuration"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable("discovery document", &e))?
            .json()
            .await
            .map_err(|e| unavailable("discovery document", &e))?;
        if discovery.issuer != self.settings.issuer {
            return Err(AuthnError::Unavailable(format!(
                "the discovery document names issuer {:?}, not the configured {:?}",
                discovery.issuer, self.settings.issuer
            )));
        }
        let set: JwkSet = self
            .http
            .get(&discovery.jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable("JWKS", &e))?
            .json()
            .await
            .map_err(|e| unavailable("JWKS", &e))?;
        Ok(usable_keys(&set))
    }

    async fn key(&self, id: &str) -> Result<Key, AuthnError> {
        {
            let keys = self.keys.read().await;
            let fresh = keys.fetched.is_some_and(|at| at.elapsed() < KEYS_MAX_AGE);
            if fresh && let Some(key) = keys.by_id.get(id) {
                return Ok(key.clone());
            }
        }
        let mut last = self.last_fetch.lock().await;
        // Another request may have fetched while this one waited.
        {
            let keys = self.keys.read().await;
            if keys.fetched.is_some_and(|at| at.elapsed() < KEYS_MAX_AGE)
                && let Some(key) = keys.by_id.get(id)
            {
                return Ok(key.clone());
            }
        }
        if last.is_some_and(|at| at.elapsed() < REFETCH_INTERVAL) {
            return Err(AuthnError::Invalid("the token is signed with a key the issuer does not publish".into()));
        }
        *last = Some(Instant::now());
        let fetched = self.fetch().await?;
        let found = fetched.get(id).cloned();
        *self.keys.write().await = KeySet { by_id: fetched, fetched: Some(Instant::now()) };
        found.ok_or_else(|| AuthnError::Invalid("the token is signed with a key the issuer does not publish".into()))
    }

    /// The caller a token proves, or why it proves nothing.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthnError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthnError::Invalid("the token is not a JWT".into()))?;
        let kid = header.kid.ok_or_else(|| AuthnError::Invalid("the token names no signing key (kid)".into()))?;
        let key = self.key(&kid).await?;
        if header.alg != key.algorithm {
            return Err(AuthnError::Invalid(format!(
                "the token's algorithm {:?} is not its key's {:?}",
                header.alg, key.algorithm
            )));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&self.settings.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.max_skew.as_secs();
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| AuthnError::Invalid(format!("the token was refused: {}", describe(e.kind()))))?;
        identity(&self.settings, &data.claims)
    }
}

/// What a JWT error says, without the token.
fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind::*;
    match kind {
        ExpiredSignature => "it expired",
        ImmatureSignature => "it is not valid yet (nbf)",
        InvalidIssuer => "it is from another issuer",
        InvalidAudience => "it is for another audience",
        InvalidSignature => "its signature does not verify",
        MissingRequiredClaim(_) => "it lacks exp, iss or aud",
        InvalidAlgorithm => "its algorithm is not its key's",
        _ => "it is malformed",
    }
}

/// The keys of a JWKS that can verify signatures, by key id: RSA and EC public keys meant for
/// signing. Keys without an id, for encryption, or symmetric are left out.
fn usable_keys(set: &JwkSet) -> HashMap<String, Key> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(id) = jwk.common.key_id.clone() else { continue };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(named), _) => match algorithm_of(*named) {
                Some(a) => a,
                None => continue,
            },
            (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (None, AlgorithmParameters::EllipticCurve(ec)) => match ec.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => continue,
            },
            (None, _) => continue,
        };
        if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_)) {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.insert(id, Key { key, algorithm });
        }
    }
    keys
}

/// The signature algorithms a JWKS may name (asymmetric only).
fn algorithm_of(named: KeyAlgorithm) -> Option<Algorithm> {
    Some(match named {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        _ => return None,
    })
}

/// The caller named by verified claims: the username claim (a non-empty string) and the groups
/// claim (a list of strings, or one string), each with its prefix. Names in the API server's
/// reserved `system:` space are refused: no issuer speaks for those.
pub fn identity(settings: &OidcSettings, claims: &serde_json::Map<String, Value>) -> Result<Identity, AuthnError> {
    let username = match claims.get(&settings.username_claim) {
        Some(Value::String(name)) if !name.is_empty() => format!("{}{name}", settings.username_prefix),
        _ => {
            return Err(AuthnError::Invalid(format!(
                "the token has no {:?} claim to name its user",
                settings.username_claim
            )));
        }
    };
    let groups: Vec<String> = match claims.get(&settings.groups_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(group)) => vec![group.clone()],
        Some(Value::Array(items)) => items.iter().filter_map(|g| g.as_str()).map(str::to_string).collect(),
        Some(_) => {
            return Err(AuthnError::Invalid(format!(
                "the token's {:?} claim is not a list of names",
                settings.groups_claim
            )));
        }
    };
    let groups: Vec<String> =
        groups.into_iter().filter(|g| !g.is_empty()).map(|g| format!("{}{g}", settings.groups_prefix)).collect();
    if username.starts_with("system:") || groups.iter().any(|g| g.starts_with("system:")) {
        return Err(AuthnError::Invalid("the token names a user or group in the reserved system: space".into()));
    }
    let uid = claims.get("sub").and_then(Value::as_str).map(str::to_string);
    Ok(Identity { username, groups, uid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> OidcSettings {
        OidcSettings {
            issuer: "https://sso.example/realms/bizosaas".into(),
            audiences: vec!["bizosaas".into()],
            username_claim: "preferred_username".into(),
            username_prefix: "oidc:".into(),
            groups_claim: "groups".into(),
            groups_prefix: "oidc:".into(),
            max_skew: Duration::from_secs(30),
        }
    }

    fn claims(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn users_and_groups_get_their_prefixes() {
        let id = identity(
            &settings(),
            &claims(json!({"preferred_username": "alice", "groups": ["acme-admins"], "sub": "42"})),
        )
        .unwrap();
        assert_eq!(id.username, "oidc:alice");
        assert_eq!(id.groups, ["oidc:acme-admins"]);
        assert_eq!(id.uid.as_deref(), Some("42"));
        let single = identity(&settings(), &claims(json!({"preferred_username": "bob", "groups": "ops"}))).unwrap();
        assert_eq!(single.groups, ["oidc:ops"]);
    }

    #[test]
    fn a_token_without_a_username_or_with_odd_groups_is_refused() {
        for bad in [json!({}), json!({"preferred_username": ""}), json!({"preferred_username": 7})] {
            assert!(matches!(identity(&settings(), &claims(bad)), Err(AuthnError::Invalid(_))));
        }
        let odd = json!({"preferred_username": "alice", "groups": {"a": 1}});
        assert!(matches!(identity(&settings(), &claims(odd)), Err(AuthnError::Invalid(_))));
    }

    #[test]
    fn without_prefixes_the_reserved_system_names_are_refused() {
        let bare = OidcSettings { username_prefix: String::new(), groups_prefix: String::new(), ..settings() };
        for bad in [
            json!({"preferred_username": "system:admin"}),
            json!({"preferred_username": "mallory", "groups": ["system:masters"]}),
        ] {
            assert!(matches!(identity(&bare, &claims(bad)), Err(AuthnError::Invalid(_))), "accepted");
        }
    }

    #[test]
    fn only_signing_keys_with_ids_are_kept() {
        let set: JwkSet = serde_json::from_value(json!({"keys": [
            {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
             "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
             "e": "AQAB"},
            {"kty": "RSA", "use": "sig",
             "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
             "e": "AQAB"},
            {"kty": "RSA", "kid": "enc-1", "use": "enc",
             "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
             "e": "AQAB"},
            {"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0"}
        ]}))
        .unwrap();
        let keys = usable_keys(&set);
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["rsa-1"]);
        assert_eq!(keys["rsa-1"].algorithm, Algorithm::RS256);
    }
}
