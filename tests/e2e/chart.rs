//! The chart's values are checked by its schema before anything is rendered: a misspelt key
//! at any depth or a value of the wrong type is an error naming it, never silently ignored.
//! Needs only the Helm CLI (`tests/harness/build.sh helm`), no cluster.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `helm template` of the chart with its CI values and `extra` arguments: success and the
/// rendered manifests, or the error.
fn template(extra: &[&str]) -> Result<String, String> {
    // Built (or found in the cache) once, before the tests call it side by side.
    static HELM: std::sync::Once = std::sync::Once::new();
    HELM.call_once(|| {
        let built = Command::new("bash").arg(repo().join("tests/harness/build.sh")).arg("helm").status();
        assert!(built.is_ok_and(|s| s.success()), "building the Helm CLI failed: `bash tests/harness/build.sh helm`");
    });
    let out = Command::new("bash")
        .arg(repo().join("tests/harness/operator.sh"))
        .arg("template")
        .arg("-f")
        .arg(repo().join("charts/bizosaas/ci/default-values.yaml"))
        .args(extra)
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() { Ok(String::from_utf8_lossy(&out.stdout).into_owned()) } else { Err(stderr) }
}

#[test]
fn the_ci_values_render_the_operator() {
    let manifests = template(&[]).unwrap_or_else(|e| panic!("the chart does not render: {e}"));
    assert!(manifests.contains("kind: Deployment"), "{manifests}");
    assert!(manifests.contains("name: bizosaas-operator"), "{manifests}");
}

#[test]
fn a_misspelt_top_level_value_is_refused() {
    let error = template(&["--set", "replicaCont=3"]).expect_err("replicaCont was accepted");
    assert!(error.contains("'replicaCont' not allowed"), "{error}");
}

#[test]
fn a_misspelt_nested_value_is_refused() {
    let error = template(&["--set", "vault.tokenSecret.nmae=token"]).expect_err("vault.tokenSecret.nmae was accepted");
    assert!(error.contains("/vault/tokenSecret") && error.contains("'nmae' not allowed"), "{error}");
    let error =
        template(&["--set", "metrics.serviceMonitor.enable=true"]).expect_err("serviceMonitor.enable was accepted");
    assert!(error.contains("'enable' not allowed"), "{error}");
}

#[test]
fn a_value_of_the_wrong_type_is_refused() {
    let error = template(&["--set-string", "replicaCount=two"]).expect_err("a string replicaCount was accepted");
    assert!(error.contains("/replicaCount") && error.contains("want integer"), "{error}");
    let error = template(&["--set", "podLabels.team=1"]).expect_err("a numeric label was accepted");
    assert!(error.contains("/podLabels/team") && error.contains("want string"), "{error}");
    let error =
        template(&["--set", "terminationGracePeriodSeconds=-1"]).expect_err("a negative grace period was accepted");
    assert!(error.contains("/terminationGracePeriodSeconds"), "{error}");
}
