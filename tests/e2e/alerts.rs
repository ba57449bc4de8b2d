//! The alerts: charts/bizosaas/files/prometheus-rules.yaml is valid for Prometheus, its unit
//! tests (prometheus-rules.test.yaml next to it) pass, the chart's PrometheusRule and
//! manifests/monitoring/prometheusrule.yaml carry exactly its groups, and every alert has a
//! runbook section in docs/observability.md and a unit test where it fires.
//! Needs promtool (BIZOSAAS_TEST_PROMTOOL, see `promtool()`) and the Helm CLI, no cluster.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const RULES: &str = "charts/bizosaas/files/prometheus-rules.yaml";
const RULE_TESTS: &str = "charts/bizosaas/files/prometheus-rules.test.yaml";
const MANIFEST: &str = "manifests/monitoring/prometheusrule.yaml";

/// The promtool binary the harness built (BIZOSAAS_TEST_PROMTOOL).
fn promtool() -> PathBuf {
    const HOW: &str = "build it with `bash tests/harness/build.sh promtool` and set \
        BIZOSAAS_TEST_PROMTOOL=\"$(bash tests/harness/build.sh path promtool)\", or run the tests through ./dev test";
    let path = std::env::var_os("BIZOSAAS_TEST_PROMTOOL")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| panic!("BIZOSAAS_TEST_PROMTOOL is not set: {HOW}"));
    let path = PathBuf::from(path);
    assert!(path.is_file(), "BIZOSAAS_TEST_PROMTOOL={} is not a file: {HOW}", path.display());
    path
}

fn run_promtool(args: &[&Path]) -> Output {
    Command::new(promtool()).args(args).output().expect("promtool runs")
}

fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(text: &str, what: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{what} is not YAML ({e}):\n{text}"))
}

/// The `groups` of the rules' source file.
fn source_groups() -> Value {
    let rules = yaml(&read(&repo().join(RULES)), RULES);
    let groups = rules.get("groups").cloned().expect("the rules file holds a groups: list");
    assert!(groups.as_array().is_some_and(|g| !g.is_empty()), "no groups in {RULES}");
    groups
}

/// Every alerting rule of the source.
fn alert_rules() -> Vec<Value> {
    let groups = source_groups();
    let rules: Vec<Value> = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r.get("alert").is_some())
        .collect();
    assert!(!rules.is_empty(), "no alerting rules in {RULES}");
    rules
}

/// Checks a PrometheusRule object: its kind and that its groups are the source's.
fn assert_prometheus_rule(object: &Value, what: &str) {
    assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1", "{what}: {object}");
    assert_eq!(object["kind"], "PrometheusRule", "{what}: {object}");
    assert_eq!(object["metadata"]["name"], "bizosaas-operator", "{what}: {object}");
    assert!(
        object["spec"]["groups"] == source_groups(),
        "{what}'s groups differ from {RULES}:\n{}",
        serde_json::to_string_pretty(&object["spec"]["groups"]).unwrap()
    );
}

#[test]
fn the_rules_pass_promtool_check() {
    let out = run_promtool(&[Path::new("check"), Path::new("rules"), &repo().join(RULES)]);
    assert!(out.status.success(), "promtool check rules {RULES} failed:\n{}", output_text(&out));
}

#[test]
fn the_rule_unit_tests_pass() {
    let out = run_promtool(&[Path::new("test"), Path::new("rules"), &repo().join(RULE_TESTS)]);
    assert!(out.status.success(), "promtool test rules {RULE_TESTS} failed:\n{}", output_text(&out));
    assert!(output_text(&out).contains("SUCCESS"), "promtool reported no success:\n{}", output_text(&out));
}

/// The unit tests can fail: a copy of them with one wrong expectation, and a copy of the
/// rules with a changed threshold, are both reported as failures by promtool.
#[test]
fn a_wrong_expectation_or_a_changed_threshold_fails_the_unit_tests() {
    let dir = std::env::temp_dir().join(format!("bizosaas-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = read(&repo().join(RULES));
    let tests = read(&repo().join(RULE_TESTS));
    let run = |rules: &str, tests: &str| {
        std::fs::write(dir.join("prometheus-rules.yaml"), rules).unwrap();
        std::fs::write(dir.join("prometheus-rules.test.yaml"), tests).unwrap();
        run_promtool(&[Path::new("test"), Path::new("rules"), &dir.join("prometheus-rules.test.yaml")])
    };

    // The copies as they are pass: the failures below come from the one change each.
    let unchanged = run(&rules, &tests);
    assert!(unchanged.status.success(), "the copied unit tests fail:\n{}", output_text(&unchanged));

    let expected = "summary: Tenant acme used 95% of its token budget.";
    assert!(tests.contains(expected), "the unit tests no longer expect `{expected}`");
    let wrong = tests.replacen(expected, "summary: Tenant acme used 96% of its token budget.", 1);
    let out = run(&rules, &wrong);
    let text = output_text(&out);
    assert!(!out.status.success(), "promtool passed a wrong expectation:\n{text}");
    assert!(text.contains("FAILED") && text.contains("BizOSaaSTenantNearTokenBudget"), "{text}");

    // Near the budget from 70 % on: the tenant at 80 % must now fire, and the test that
    // expects it quiet must fail.
    let threshold = ") > 0.9 < 1";
    assert!(rules.contains(threshold), "the near-budget threshold is no longer `{threshold}`");
    let out = run(&rules.replacen(threshold, ") > 0.7 < 1", 1), &tests);
    let text = output_text(&out);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success(), "promtool passed a rule whose quiet case fires:\n{text}");
    assert!(text.contains("BizOSaaSTenantNearTokenBudget") && text.contains("corner-shop"), "{text}");
}

/// `operator.sh template` on the chart with its CI values and `extra` helm arguments.
fn template(extra: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo().join("tests/harness/operator.sh"))
        .arg("template")
        .arg("-f")
        .arg(repo().join("charts/bizosaas/ci/default-values.yaml"))
        .args(extra)
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "the chart does not render: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_chart_renders_the_source_groups_as_a_prometheus_rule() {
    let manifests = template(&[]);
    assert!(!manifests.contains("kind: PrometheusRule"), "a PrometheusRule renders by default:\n{manifests}");

    let manifests = template(&[
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.prometheusRule.labels.release=kps",
    ]);
    let objects: Vec<Value> = serde_saphyr::from_multiple(&manifests)
        .unwrap_or_else(|e| panic!("the rendered chart is not YAML ({e}):\n{manifests}"));
    let rules: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "PrometheusRule").collect();
    assert_eq!(rules.len(), 1, "not one PrometheusRule:\n{manifests}");
    assert_prometheus_rule(rules[0], "the chart's PrometheusRule");
    assert_eq!(rules[0]["metadata"]["namespace"], "bizosaas-system");
    assert_eq!(rules[0]["metadata"]["labels"]["release"], "kps", "metrics.prometheusRule.labels are not applied");
}

#[test]
fn the_kustomize_prometheus_rule_is_current() {
    let out = Command::new("bash")
        .arg(repo().join("manifests/monitoring/generate.sh"))
        .arg("--check")
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "{MANIFEST} is stale:\n{}", output_text(&out));
    assert_prometheus_rule(&yaml(&read(&repo().join(MANIFEST)), MANIFEST), MANIFEST);
}

/// Each alert: a severity, summary and description, a runbook_url whose anchor is a section
/// of docs/observability.md, and a unit test that expects it to fire.
#[test]
fn every_alert_has_a_severity_a_runbook_and_a_firing_test() {
    let docs = read(&repo().join("docs/observability.md"));
    let tests = yaml(&read(&repo().join(RULE_TESTS)), RULE_TESTS);
    let firing: Vec<&str> = tests["tests"]
        .as_array()
        .expect("the unit tests hold a tests: list")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|case| case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|case| case["alertname"].as_str())
        .collect();
    for rule in alert_rules() {
        let name = rule["alert"].as_str().expect("alert names are strings");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning", "info"].contains(&severity), "{name}: severity {severity:?}");
        for annotation in ["summary", "description"] {
            assert!(rule["annotations"][annotation].as_str().is_some_and(|s| !s.is_empty()), "{name}: no {annotation}");
        }
        let anchor = name.to_lowercase();
        assert_eq!(rule["annotations"]["runbook_url"], format!("docs/observability.md#{anchor}"), "{name}");
        // A `### <AlertName>` heading: its anchor is the lowercased name.
        assert!(
            docs.lines().any(|l| l.trim().to_lowercase() == format!("### {anchor}")),
            "docs/observability.md has no `### {name}` section for {name}'s runbook_url"
        );
        assert!(firing.contains(&name), "no unit test in {RULE_TESTS} expects {name} to fire");
        assert!(
            docs.contains(&format!("| [{name}](#{anchor}) |")),
            "the alert table in docs/observability.md lacks {name}"
        );
    }
}
