//! The plan catalog: default quotas of each plan, overridable by the operator's configuration
//! file and by a Tenant's `spec.quota`.

use bizosaas_crds::tenant::{Plan, QuotaOverrides};
use serde::{Deserialize, Serialize};

/// The quotas of one plan, or a tenant's effective quotas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    pub cpu: String,
    pub memory: String,
    pub storage: String,
    pub pods: i32,
    pub agent_crews: i32,
    pub workflows: i32,
    pub monthly_tokens: i64,
}

/// Default quotas per plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanCatalog {
    pub starter: Quota,
    pub growth: Quota,
    pub enterprise: Quota,
}

impl Default for PlanCatalog {
    fn default() -> Self {
        let quota = |cpu: &str, memory: &str, storage: &str, pods, agent_crews, workflows, monthly_tokens| Quota {
            cpu: cpu.into(),
            memory: memory.into(),
            storage: storage.into(),
            pods,
            agent_crews,
            workflows,
            monthly_tokens,
        };
        Self {
            starter: quota("2", "4Gi", "10Gi", 20, 1, 5, 500_000),
            growth: quota("4", "8Gi", "50Gi", 40, 5, 20, 2_000_000),
            enterprise: quota("16", "32Gi", "500Gi", 200, 25, 200, 20_000_000),
        }
    }
}

/// A plan catalog file that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid plan catalog: {0}")]
pub struct PlanCatalogError(String);

impl PlanCatalog {
    /// Parses a plan catalog from YAML (the `plans.yaml` of the Helm chart).
    pub fn from_yaml(text: &str) -> Result<Self, PlanCatalogError> {
        serde_saphyr::from_str(text).map_err(|e| PlanCatalogError(e.to_string()))
    }

    /// The plan's default quotas.
    pub fn plan(&self, plan: Plan) -> &Quota {
        match plan {
            Plan::Starter => &self.starter,
            Plan::Growth => &self.growth,
            Plan::Enterprise => &self.enterprise,
        }
    }

    /// The plan's quotas with a tenant's overrides applied.
    pub fn effective(&self, plan: Plan, overrides: Option<&QuotaOverrides>) -> Quota {
        let mut quota = self.plan(plan).clone();
        if let Some(o) = overrides {
            if let Some(v) = &o.cpu {
                quota.cpu = v.clone();
            }
            if let Some(v) = &o.memory {
                quota.memory = v.clone();
            }
            if let Some(v) = &o.storage {
                quota.storage = v.clone();
            }
            quota.pods = o.pods.unwrap_or(quota.pods);
            quota.agent_crews = o.agent_crews.unwrap_or(quota.agent_crews);
            quota.workflows = o.workflows.unwrap_or(quota.workflows);
            quota.monthly_tokens = o.monthly_tokens.unwrap_or(quota.monthly_tokens);
        }
        quota
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_they_set() {
        let catalog = PlanCatalog::default();
        let overrides = QuotaOverrides { cpu: Some("3".into()), pods: Some(7), ..Default::default() };
        let q = catalog.effective(Plan::Growth, Some(&overrides));
        assert_eq!(q.cpu, "3");
        assert_eq!(q.pods, 7);
        assert_eq!(q.memory, "8Gi");
        assert_eq!(q.agent_crews, 5);
    }

    #[test]
    fn a_catalog_file_round_trips_and_rejects_unknown_fields() {
        let yaml = serde_saphyr::to_string(&PlanCatalog::default()).unwrap();
        assert_eq!(PlanCatalog::from_yaml(&yaml).unwrap(), PlanCatalog::default());
        let bad = yaml.replace("agentCrews", "agentCrewz");
        assert!(PlanCatalog::from_yaml(&bad).is_err());
    }
}
