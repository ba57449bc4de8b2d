//! Full step outputs, kept outside the run's status in a ConfigMap the run owns (one key per
//! step), so status stays small however large the outputs are.

use crate::FIELD_MANAGER;
use bizosaas_crds::WorkflowRun;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Largest output one step may return.
pub const MAX_STEP_BYTES: usize = 256 * 1024;
/// Largest sum of a run's outputs (a ConfigMap holds at most 1 MiB).
pub const MAX_RUN_BYTES: usize = 900 * 1024;

/// Why an output cannot be kept.
pub fn too_large(step_bytes: usize, run_bytes_before: usize) -> Option<String> {
    if step_bytes > MAX_STEP_BYTES {
        Some(format!("the output is {step_bytes} bytes, more than the {MAX_STEP_BYTES} a step may return"))
    } else if run_bytes_before + step_bytes > MAX_RUN_BYTES {
        Some(format!("the run's outputs would exceed the {MAX_RUN_BYTES} bytes a run may keep"))
    } else {
        None
    }
}

/// Adds `outputs` to the run's ConfigMap, creating it on first use: one server-side apply
/// per step, each under a field manager of its own, so adding one step's output never
/// removes another's.
pub async fn store(
    api: &Api<ConfigMap>,
    run: &WorkflowRun,
    name: &str,
    outputs: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    for (step, output) in outputs {
        let config_map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: run.namespace(),
                labels: Some(BTreeMap::from([
                    (bizosaas_crds::LABEL_MANAGED_BY.to_string(), bizosaas_crds::MANAGED_BY.to_string()),
                    (super::steps::container::LABEL_RUN.to_string(), run.name_any()),
                ])),
                owner_references: run.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(step.clone(), output.clone())])),
            ..Default::default()
        };
        let manager = format!("{FIELD_MANAGER}/step-{step}");
        api.patch(name, &PatchParams::apply(&manager).force(), &Patch::Apply(&config_map)).await?;
    }
    Ok(())
}

/// Every output recorded so far.
pub async fn read(api: &Api<ConfigMap>, name: &str) -> Result<BTreeMap<String, String>, kube::Error> {
    Ok(api.get_opt(name).await?.and_then(|c| c.data).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_bounded_per_step_and_per_run() {
        assert_eq!(too_large(10, 0), None);
        assert!(too_large(MAX_STEP_BYTES + 1, 0).unwrap().contains("a step may return"));
        assert!(too_large(MAX_STEP_BYTES, MAX_RUN_BYTES - 10).unwrap().contains("a run may keep"));
    }
}
