//! Shapes shared by every kind: conditions and the status fields that
//! `kubectl wait` and dashboards read.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Condition type every kind reports; `kubectl wait --for=condition=Ready` uses it.
pub const READY: &str = "Ready";

/// A `name`/`value` pair, used for workflow parameters.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub struct NameValue {
    /// Parameter name, referenced as `{{ params.<name> }}`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"))]
    pub name: String,
    /// Parameter value.
    #[serde(default)]
    pub value: String,
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the `Ready` condition is `True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    find_condition(conditions, READY).is_some_and(|c| c.status == "True")
}
