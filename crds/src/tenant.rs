//! `Tenant`: one client business and its isolated slice of the cluster.

use crate::common::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A client business on the platform. The operator gives each Tenant its own
/// namespace `tenant-<name>`, quotas, network policies, RBAC, a PostgreSQL
/// database with row-level security, credentials and business services.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "bizosaas.io",
    version = "v1alpha1",
    kind = "Tenant",
    shortname = "tn",
    category = "bizosaas",
    status = "TenantStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A client business: an isolated namespace, quotas, network policies, RBAC, a PostgreSQL database with row-level security, credentials and business services.",
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.plan"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespace"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 40 && self.metadata.name.matches('^[a-z]([a-z0-9-]*[a-z0-9])?$')")
        .message("metadata.name must be at most 40 characters of lower-case letters, digits and '-', starting with a letter: it names the namespace tenant-<name> and the PostgreSQL database tenant_<name>"),
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Human-readable name of the business, shown on dashboards.
    #[schemars(length(min = 1, max = 128))]
    pub display_name: String,

    /// Subscription plan. It selects the default quotas from the operator's plan catalog;
    /// `quota` overrides single values.
    #[serde(default)]
    pub plan: Plan,

    /// People, groups and service accounts that administer the tenant. Each is bound to the
    /// `bizosaas-tenant-admin` ClusterRole inside the tenant namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub owners: Vec<Owner>,

    /// Overrides of the plan's quotas. Unset values come from the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaOverrides>,

    /// How the tenant's PostgreSQL data is held and what happens to it on deletion.
    #[serde(default)]
    pub database: DatabaseSpec,

    /// Where the tenant's credentials are stored.
    #[serde(default)]
    pub secrets: SecretsSpec,

    /// Business services from the service catalog to run for the tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t == s))").message("services must not repeat"))]
    pub services: Vec<BusinessService>,

    /// White-label settings for the tenant's business services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branding: Option<Branding>,

    /// `Strict` lets workloads reach only the tenant namespace, DNS and the platform;
    /// `Open` also allows HTTPS egress to public addresses.
    #[serde(default)]
    pub network_isolation: NetworkIsolation,

    /// A suspended tenant keeps its data but runs no workloads: deployments scale to zero and
    /// the pod quota drops to zero.
    #[serde(default)]
    pub suspended: bool,

    /// Where the tenant's usage is billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing: Option<BillingSpec>,
}

/// Billing of the tenant's usage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillingSpec {
    /// Sends every model call of the tenant's crews to Lago as a usage event of this
    /// subscription (the operator must be configured with Lago's URL and API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lago: Option<LagoBilling>,
}

/// The tenant's subscription in Lago.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LagoBilling {
    /// The subscription's `external_subscription_id` in Lago, which every usage event names.
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]*$"))]
    pub external_subscription_id: String,
}

/// Subscription plan.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// Small businesses: one crew, modest compute.
    #[default]
    Starter,
    /// Growing businesses: several crews and workflows.
    Growth,
    /// Large businesses: generous quotas.
    Enterprise,
}

impl Plan {
    /// The plan's name as written in a Tenant.
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Starter => "starter",
            Plan::Growth => "growth",
            Plan::Enterprise => "enterprise",
        }
    }
}

/// A subject that administers the tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.kind == 'ServiceAccount' ? has(self.__namespace__) : !has(self.__namespace__)")
    .message("owners[].namespace is required for kind ServiceAccount and not allowed otherwise"))]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// `User` and `Group` come from the cluster's SSO; `ServiceAccount` is a Kubernetes service account.
    pub kind: OwnerKind,
    /// User name (often an e-mail), group name or service-account name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of a `ServiceAccount` owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Kind of an owner subject.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum OwnerKind {
    User,
    Group,
    ServiceAccount,
}

/// Quota overrides. Quantities use Kubernetes notation (`500m`, `4`, `8Gi`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuotaOverrides {
    /// Total CPU the tenant's pods may request, e.g. `4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("quota.cpu must be a positive quantity such as 500m or 4"))]
    pub cpu: Option<String>,
    /// Total memory the tenant's pods may request, e.g. `8Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("quota.memory must be a positive quantity such as 512Mi or 8Gi"))]
    pub memory: Option<String>,
    /// Total persistent storage the tenant may claim, e.g. `50Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("quota.storage must be a positive quantity such as 10Gi"))]
    pub storage: Option<String>,
    /// Maximum number of pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub pods: Option<i32>,
    /// Maximum number of AgentCrews in the tenant namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub agent_crews: Option<i32>,
    /// Maximum number of Workflows in the tenant namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub workflows: Option<i32>,
    /// LLM tokens the tenant's crews may spend per calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub monthly_tokens: Option<i64>,
}

/// Database placement and lifecycle.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// `Dedicated` gives the tenant its own database `tenant_<name>`; `Shared` keeps its rows
    /// in the platform database behind row-level security. Immutable once set.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("database.isolation is immutable: moving a tenant between Dedicated and Shared needs a data migration"))]
    pub isolation: DatabaseIsolation,
    /// `Retain` keeps the data and disables login when the Tenant is deleted; `Delete` drops
    /// the database and roles.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Take over a database and roles of this tenant's name that this Tenant did not create:
    /// data kept by an earlier Tenant of the same name (`deletionPolicy: Retain`) or made
    /// outside the operator. Without it such data is left untouched and `DatabaseReady` is
    /// False with reason `DatabaseConflict`, so a new tenant is never silently handed someone
    /// else's data. Adopting sets a new password for the app role and enables its login.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_retained: bool,
}

/// Database isolation level.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum DatabaseIsolation {
    /// A database of its own, reachable only by the tenant's roles.
    #[default]
    Dedicated,
    /// Rows in the platform database, guarded by row-level security policies.
    Shared,
}

/// What happens to tenant data when the Tenant is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the data; the tenant's login role is disabled.
    #[default]
    Retain,
    /// Drop the data and the roles.
    Delete,
}

/// Secret storage settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsSpec {
    /// `Kubernetes` stores credentials as Secrets in the tenant namespace; `Vault` stores them
    /// under `tenants/<name>/` in Vault's KV v2 engine.
    #[serde(default)]
    pub backend: SecretsBackend,
}

/// Where credentials are kept.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum SecretsBackend {
    /// Kubernetes Secrets in the tenant namespace.
    #[default]
    Kubernetes,
    /// HashiCorp Vault or OpenBao, KV version 2.
    Vault,
}

/// A business service from the service catalog.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BusinessService {
    /// Customer relationship management.
    Crm,
    /// Content management.
    Cms,
    /// Subscriptions and invoices.
    Billing,
    /// Campaigns and social publishing.
    Marketing,
    /// Business directory listings.
    Directory,
    /// Engagement, achievements and leaderboards.
    Gaming,
}

impl BusinessService {
    /// Every service in the catalog.
    pub const ALL: [BusinessService; 6] = [
        BusinessService::Crm,
        BusinessService::Cms,
        BusinessService::Billing,
        BusinessService::Marketing,
        BusinessService::Directory,
        BusinessService::Gaming,
    ];

    /// The service's name as written in a Tenant; also its Deployment name and host label.
    pub fn as_str(self) -> &'static str {
        match self {
            BusinessService::Crm => "crm",
            BusinessService::Cms => "cms",
            BusinessService::Billing => "billing",
            BusinessService::Marketing => "marketing",
            BusinessService::Directory => "directory",
            BusinessService::Gaming => "gaming",
        }
    }
}

/// White-label settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Branding {
    /// Name shown in the services' UI; defaults to `spec.displayName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,
    /// HTTPS address of the logo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https://\S+$"))]
    pub logo_url: Option<String>,
    /// Primary colour as `#rrggbb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^#[0-9a-fA-F]{6}$"))]
    pub primary_color: Option<String>,
    /// A domain of the tenant's own; services are served at `<service>.<customDomain>`
    /// instead of `<service>.<tenant>.<baseDomain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200), regex(pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,63}$"))]
    pub custom_domain: Option<String>,
}

/// Network isolation level.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum NetworkIsolation {
    /// Egress only to the tenant namespace, DNS and the platform namespace.
    #[default]
    Strict,
    /// Additionally HTTPS egress to public addresses.
    Open,
}

/// Observed state of a Tenant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// `Provisioning`, `Ready`, `Suspended`, `Failed` or `Terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TenantPhase>,
    /// The tenant namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The PostgreSQL database holding the tenant's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// LLM tokens the tenant's crews spent this calendar month (UTC), read from its database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TenantUsage>,
    /// `NamespaceReady`, `QuotaReady`, `NetworkReady`, `RBACReady`, `DatabaseReady`,
    /// `SecretsReady`, `ServicesReady` and `Ready`; `BudgetExhausted` once the month's token
    /// budget is spent; `UsageExported` when usage is billed in Lago (`billing.lago`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The tenant's token usage in one calendar month (UTC).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantUsage {
    /// The month, `YYYY-MM`.
    pub month: String,
    /// Prompt and completion tokens of every model call of the tenant's crews in the month.
    pub tokens_used: i64,
    /// The month's budget (`quota.monthlyTokens`, from the plan or the override); absent when
    /// unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_tokens: Option<i64>,
}

/// Lifecycle phase of a Tenant.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum TenantPhase {
    Provisioning,
    Ready,
    Suspended,
    Failed,
    Terminating,
}
