//! The chart's values are checked by its schema before anything is rendered: a misspelt key
//! at any depth or a value of the wrong type is an error naming it, never silently ignored.
//! Needs only the Helm CLI (`tests/harness/build.sh helm`), no cluster.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `operator.sh <command>` (`template` or `notes`) on the chart with its CI values and
/// `extra` helm arguments.
fn chart(command: &str, extra: &[&str]) -> std::process::Output {
    // Built (or found in the cache) once, before the tests call it side by side.
    static HELM: std::sync::Once = std::sync::Once::new();
    HELM.call_once(|| {
        let built = Command::new("bash").arg(repo().join("tests/harness/build.sh")).arg("helm").status();
        assert!(built.is_ok_and(|s| s.success()), "building the Helm CLI failed: `bash tests/harness/build.sh helm`");
    });
    Command::new("bash")
        .arg(repo().join("tests/harness/operator.sh"))
        .arg(command)
        .arg("-f")
        .arg(repo().join("charts/bizosaas/ci/default-values.yaml"))
        .args(extra)
        .output()
        .expect("bash runs")
}

/// `helm template` with `extra` arguments: the rendered manifests, or the error.
fn template(extra: &[&str]) -> Result<String, String> {
    let out = chart("template", extra);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
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

/// The chart's NOTES as `helm install` prints them.
fn notes() -> String {
    let out = chart("notes", &[]);
    assert!(out.status.success(), "no NOTES: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_first_tenant_in_the_notes_can_be_pasted_into_a_shell() {
    let notes = notes();
    let start = notes.find("kubectl apply -f - <<").expect("the NOTES show how to create a tenant");
    let end = start + notes[start..].find("--timeout=5m").expect("and how to wait for it") + "--timeout=5m".len();
    let snippet = &notes[start..end];
    // The snippet as a user pastes it, with kubectl recording what it is given.
    let dir = std::env::temp_dir().join(format!("bizosaas-notes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "set -eu\ncd {dir:?}\nkubectl() {{ if [ \"$1\" = apply ]; then cat > applied.yaml; else echo \"$*\" >> called; fi; }}\n{snippet}\n"
    );
    let out = Command::new("bash").arg("-c").arg(&script).output().expect("bash runs");
    assert!(out.status.success(), "the snippet fails in bash: {}\n{snippet}", String::from_utf8_lossy(&out.stderr));
    let applied = std::fs::read_to_string(dir.join("applied.yaml")).expect("kubectl apply was given the Tenant");
    let called = std::fs::read_to_string(dir.join("called")).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    let tenant: bizosaas_crds::Tenant =
        serde_saphyr::from_str(&applied).unwrap_or_else(|e| panic!("not a Tenant ({e}):\n{applied}"));
    assert_eq!(tenant.metadata.name.as_deref(), Some("acme"));
    assert!(called.contains("wait --for=condition=Ready tenant/acme"), "the wait ran as its own command: {called:?}");
}
