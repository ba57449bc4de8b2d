//! `Integration`: an external service a tenant uses, with its credentials and health.

use crate::common::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An external service the tenant uses: an LLM gateway, payments, e-mail, SMS, storage,
/// billing, CMS, social media or a webhook. The operator projects its credentials into a
/// Secret `integration-<name>` and checks that the endpoint answers.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bizosaas.io",
    version = "v1alpha1",
    kind = "Integration",
    namespaced,
    shortname = "integ",
    category = "bizosaas",
    status = "IntegrationStatus",
    derive = "PartialEq",
    doc = "An external service (LLM gateway, payments, e-mail, SMS, storage, CMS, webhook) with its credentials and a health check.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(
        name = "Reachable",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Reachable\")].status"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Latency", type_ = "integer", json_path = ".status.latencyMs", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self.type != 'Webhook' || has(self.endpoint)").message("a Webhook integration needs spec.endpoint"))]
#[x_kube(validation = Rule::new("!has(self.endpoint) || ((self.type == 'SMTP') == self.endpoint.startsWith('smtp'))")
    .message("spec.endpoint of an SMTP integration is smtp:// or smtps://, and only SMTP uses those schemes"))]
#[serde(rename_all = "camelCase")]
pub struct IntegrationSpec {
    /// Kind of service; it sets the default endpoint and health check.
    #[serde(rename = "type")]
    pub type_: IntegrationType,
    /// Base address of the service; each type has a default. `smtp://host:port` for SMTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^(https?|smtps?)://\S+$"))]
    pub endpoint: Option<String>,
    /// Where the credentials come from: exactly one of `secretRef` or `vault`.
    pub credentials: Credentials,
    /// Periodic health check of the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Extra headers sent with every request (no secrets: use `credentials`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Supported external services.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum IntegrationType {
    OpenRouter,
    OpenAI,
    Anthropic,
    Stripe,
    SendGrid,
    SMTP,
    Twilio,
    S3,
    Lago,
    Wagtail,
    Postiz,
    Slack,
    Webhook,
}

/// Credential source: exactly one of `secretRef` or `vault`. Never one the operator writes:
/// the value goes to an endpoint the owner chooses, so naming the tenant's database
/// credentials (or another Integration's projected copy) would hand them out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.vault)")
    .message("credentials need exactly one source: secretRef or vault"))]
#[x_kube(validation = Rule::new(
    "!has(self.secretRef) || (self.secretRef.name != 'tenant-database' && !self.secretRef.name.startsWith('integration-'))"
).message("credentials.secretRef may not name a Secret the operator writes (tenant-database, integration-*)"))]
#[x_kube(validation = Rule::new("!has(self.vault) || !self.vault.path.matches('^tenants/[^/]+/database(/.*)?$')")
    .message("credentials.vault.path may not name tenants/<tenant>/database, the operator's database credentials"))]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// A key of a Secret in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    /// A key at a KV v2 path in Vault, e.g. `tenants/acme/openrouter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultKeyRef>,
}

/// A key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A key at a Vault KV v2 path.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct VaultKeyRef {
    /// Path below the KV mount, e.g. `tenants/acme/openrouter`.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"))]
    pub path: String,
    /// Key within the secret at that path.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Health-check settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Time between checks, e.g. `5m`; at least `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("healthCheck.interval must be a duration such as 30s or 5m"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || duration(self) >= duration('1s')").message("healthCheck.interval must be at least 1s"))]
    pub interval: Option<String>,
    /// Time a check may take, e.g. `5s`; from `100ms` to `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("healthCheck.timeout must be a duration such as 500ms or 5s"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ms|s|m|h))+$') || (duration(self) >= duration('100ms') && duration(self) <= duration('60s'))").message("healthCheck.timeout must be between 100ms and 60s"))]
    pub timeout: Option<String>,
    /// Path probed instead of the type's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Turns the check off; `Reachable` is then `True` with reason `CheckDisabled`: the endpoint
    /// is taken on trust.
    #[serde(default)]
    pub disabled: bool,
}

/// Observed state of an Integration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationStatus {
    /// The projected Secret holding the resolved credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Hash of the projected credentials; consumers roll when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// When the endpoint was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
    /// Latency of the last check in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i64>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `CredentialsResolved`, `Reachable` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
