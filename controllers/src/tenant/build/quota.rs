//! The tenant's ResourceQuota and LimitRange.

use super::Owner;
use crate::tenant::plans::Quota;
use k8s_openapi::api::core::v1::{LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;

pub const RESOURCE_QUOTA: &str = "tenant-quota";
pub const LIMIT_RANGE: &str = "tenant-limits";

/// Compute, storage, pod and object-count limits. A suspended tenant gets a pod limit of zero
/// so nothing can start while its data is kept.
pub fn resource_quota(owner: &Owner, quota: &Quota, suspended: bool) -> ResourceQuota {
    let pods = if suspended { 0 } else { quota.pods };
    let hard: BTreeMap<String, Quantity> = [
        ("requests.cpu", quota.cpu.clone()),
        ("requests.memory", quota.memory.clone()),
        ("requests.storage", quota.storage.clone()),
        ("pods", pods.to_string()),
        ("count/agentcrews.bizosaas.io", quota.agent_crews.to_string()),
        ("count/workflows.bizosaas.io", quota.workflows.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    ResourceQuota {
        metadata: owner.meta(RESOURCE_QUOTA, "quota", true),
        spec: Some(ResourceQuotaSpec { hard: Some(hard), ..Default::default() }),
        ..Default::default()
    }
}

/// Default requests and limits, so that pods without resources still count against the quota.
pub fn limit_range(owner: &Owner) -> LimitRange {
    let q = |cpu: &str, memory: &str| {
        BTreeMap::from([("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(memory.into()))])
    };
    LimitRange {
        metadata: owner.meta(LIMIT_RANGE, "quota", true),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default_request: Some(q("100m", "128Mi")),
                default: Some(q("500m", "512Mi")),
                ..Default::default()
            }],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Owner, fixtures};
    use super::*;
    use crate::tenant::plans::PlanCatalog;
    use bizosaas_crds::tenant::Plan;

    fn hard(rq: &ResourceQuota, key: &str) -> String {
        rq.spec.as_ref().unwrap().hard.as_ref().unwrap()[key].0.clone()
    }

    #[test]
    fn quota_follows_plan_and_overrides() {
        let tenant = fixtures::tenant(fixtures::MINIMAL);
        let owner = Owner::of(&tenant).unwrap();
        let plans = PlanCatalog::default();
        let rq = resource_quota(&owner, &plans.effective(Plan::Starter, None), false);
        assert_eq!(hard(&rq, "requests.cpu"), "2");
        assert_eq!(hard(&rq, "pods"), "20");
        assert_eq!(hard(&rq, "count/agentcrews.bizosaas.io"), "1");
        let rq = resource_quota(&owner, &plans.effective(Plan::Enterprise, None), false);
        assert_eq!(hard(&rq, "requests.memory"), "32Gi");
        assert_eq!(hard(&rq, "count/workflows.bizosaas.io"), "200");
    }

    #[test]
    fn a_suspended_tenant_may_run_no_pods() {
        let owner = Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap();
        let rq = resource_quota(&owner, &PlanCatalog::default().growth, true);
        assert_eq!(hard(&rq, "pods"), "0");
        assert_eq!(hard(&rq, "requests.cpu"), "4");
    }

    #[test]
    fn limit_range_sets_container_defaults() {
        let owner = Owner::of(&fixtures::tenant(fixtures::ACME)).unwrap();
        let lr = limit_range(&owner);
        let item = &lr.spec.unwrap().limits[0];
        assert_eq!(item.type_, "Container");
        assert_eq!(item.default_request.as_ref().unwrap()["cpu"].0, "100m");
    }
}
