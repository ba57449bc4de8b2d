//! The Grafana dashboards and the alert rules ask only for series the binaries export.
//!
//! Every PromQL expression in the dashboards (panel queries and variable queries) and in the
//! alert rules is parsed with a PromQL parser, and every metric it names must be one that
//! the operator (the in-cluster leader) or an agent runtime (a crew's pod on the real node)
//! really serves at `/metrics`. A renamed metric, a typo or a query for a series nobody
//! exports fails here instead of drawing an empty panel or an alert that can never fire.
//! The chart's dashboard ConfigMaps carry the files unchanged.

mod support;

use bizosaas_crds::AgentCrew;
use bizosaas_crds::common::is_ready;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use promql_parser::parser::{self, Expr};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use support::*;

const TENANT: &str = "e2e-dashboards";
const NS: &str = "tenant-e2e-dashboards";
const TIMEOUT: Duration = Duration::from_secs(120);

fn dashboards_dir() -> PathBuf {
    repo().join("charts/bizosaas/files/dashboards")
}

/// Every dashboard file by name, parsed.
fn dashboards() -> BTreeMap<String, serde_json::Value> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(dashboards_dir()).expect("the dashboards directory") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            all.insert(path.file_name().unwrap().to_string_lossy().into_owned(), value);
        }
    }
    assert!(all.len() >= 4, "expected the four dashboards, found {:?}", all.keys());
    all
}

/// Grafana's variables replaced by values of the right type, so the text is plain PromQL.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "6h")
        .replace("${datasource}", "prometheus")
        .replace("$tenant", "acme")
        .replace("$namespace", "tenant-acme")
}

/// `(where, PromQL)` of every query in a dashboard: panel targets (rows included) and
/// `label_values(<selector>, <label>)` variable queries, whose selector is PromQL.
fn queries(name: &str, dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn panels<'a>(list: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            panels(&panel["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    let mut found = Vec::new();
    for panel in all {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                found.push((format!("{name}: panel {:?}", panel["title"].as_str().unwrap_or("?")), expr.to_string()));
            }
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).unwrap_or_default();
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector.trim().to_string())
            .unwrap_or_else(|| panic!("{name}: variable {} is not a label_values query: {query}", variable["name"]));
        found.push((format!("{name}: variable {}", variable["name"]), selector));
    }
    found
}

/// The metric names a PromQL expression selects.
fn metric_names(expr: &Expr, out: &mut BTreeSet<String>) -> Result<(), String> {
    match expr {
        Expr::VectorSelector(vs) => {
            out.insert(vs.name.clone().ok_or("a selector without a metric name")?);
        }
        Expr::MatrixSelector(ms) => {
            out.insert(ms.vs.name.clone().ok_or("a selector without a metric name")?);
        }
        Expr::Aggregate(a) => {
            metric_names(&a.expr, out)?;
            if let Some(param) = &a.param {
                metric_names(param, out)?;
            }
        }
        Expr::Unary(u) => metric_names(&u.expr, out)?,
        Expr::Binary(b) => {
            metric_names(&b.lhs, out)?;
            metric_names(&b.rhs, out)?;
        }
        Expr::Paren(p) => metric_names(&p.expr, out)?,
        Expr::Subquery(s) => metric_names(&s.expr, out)?,
        Expr::Call(call) => {
            for arg in &call.args.args {
                metric_names(arg, out)?;
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
    Ok(())
}

/// Parses every query and returns the metrics each names, by where it is used; the error
/// lists every query that does not parse.
fn metrics_named(queries: &[(String, String)]) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let mut named: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut errors = Vec::new();
    for (place, query) in queries {
        let text = substitute(query);
        match parser::parse(&text).map_err(|e| e.to_string()).and_then(|expr| {
            let mut names = BTreeSet::new();
            metric_names(&expr, &mut names).map(|()| names)
        }) {
            Ok(names) => {
                for name in names {
                    named.entry(name).or_default().insert(place.clone());
                }
            }
            Err(e) => errors.push(format!("{place}: {e}\n    {text}")),
        }
    }
    if errors.is_empty() { Ok(named) } else { Err(errors.join("\n")) }
}

/// The alert rules' expressions, from the rules' single source.
fn alert_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("charts/bizosaas/files/prometheus-rules.yaml")).unwrap();
    let rules: serde_json::Value = serde_saphyr::from_str(&text).expect("the rules are YAML");
    let mut found = Vec::new();
    for group in rules["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or("?");
            found.push((format!("rule {name}"), rule["expr"].as_str().expect("an expr").to_string()));
        }
    }
    found
}

/// The series names an OpenMetrics text exposes, from its `# TYPE` lines, so that a family
/// without samples yet (no run has happened, no error has occurred) still counts: a counter
/// is `<name>_total`, a histogram its `_bucket`, `_sum` and `_count`, a gauge its name.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

#[test]
fn every_dashboard_query_parses_and_dashboards_are_well_formed() {
    let mut uids = BTreeSet::new();
    for (name, dashboard) in dashboards() {
        let uid = dashboard["uid"].as_str().unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} is used twice");
        assert!(dashboard["title"].as_str().is_some_and(|t| t.starts_with("BizOSaaS / ")), "{name}: title");
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        assert!(variables.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource"), "{name}: datasource");
        let found = queries(&name, &dashboard);
        assert!(found.len() >= 8, "{name}: only {} queries", found.len());
        let named = metrics_named(&found).unwrap_or_else(|e| panic!("queries that do not parse:\n{e}"));
        assert!(named.keys().all(|m| m.starts_with("bizosaas_")), "{name}: {:?}", named.keys());
    }
}

#[test]
fn a_query_that_is_not_promql_is_reported() {
    let broken = [("test: panel \"x\"".to_string(), "sum by (kind (bizosaas_objects)".to_string())];
    let error = metrics_named(&broken).expect_err("an unbalanced parenthesis parsed");
    assert!(error.contains("panel \"x\""), "{error}");
    let unnamed = [("test: panel \"y\"".to_string(), r#"{kind="Tenant"}"#.to_string())];
    assert!(metrics_named(&unnamed).is_err(), "a selector without a metric name passed");
}

#[test]
fn the_chart_ships_the_dashboards_unchanged() {
    let built = Command::new("bash").arg(repo().join("tests/harness/build.sh")).arg("helm").status();
    assert!(built.is_ok_and(|s| s.success()), "building the Helm CLI failed: `bash tests/harness/build.sh helm`");
    let out = Command::new("bash")
        .arg(repo().join("tests/harness/operator.sh"))
        .args(["template", "-f"])
        .arg(repo().join("charts/bizosaas/ci/default-values.yaml"))
        .args(["--set", "dashboards.enabled=true", "--set", "dashboards.annotations.grafana_folder=BizOSaaS"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8_lossy(&out.stdout);
    let mut shipped = BTreeMap::new();
    for document in rendered.split("\n---") {
        let Ok(object) = serde_saphyr::from_str::<serde_json::Value>(document) else { continue };
        if object["kind"] != "ConfigMap" || !object["metadata"]["name"].as_str().unwrap_or("").contains("-dashboard-") {
            continue;
        }
        assert_eq!(object["metadata"]["labels"]["grafana_dashboard"], "1", "the sidecar's label");
        assert_eq!(object["metadata"]["annotations"]["grafana_folder"], "BizOSaaS");
        for (file, json) in object["data"].as_object().unwrap() {
            shipped.insert(file.clone(), serde_json::from_str::<serde_json::Value>(json.as_str().unwrap()).unwrap());
        }
    }
    assert_eq!(shipped, dashboards(), "the ConfigMaps differ from files/dashboards");
}

#[test]
fn the_kustomize_manifests_ship_every_dashboard() {
    let check =
        Command::new("bash").arg(repo().join("manifests/monitoring/generate.sh")).arg("--check").output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let out = Command::new("kubectl").args(["kustomize"]).arg(repo().join("manifests/monitoring")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut shipped = BTreeMap::new();
    for document in String::from_utf8_lossy(&out.stdout).split("\n---") {
        let object: serde_json::Value = serde_saphyr::from_str(document).unwrap();
        if object["kind"] == "ConfigMap" {
            assert_eq!(object["metadata"]["labels"]["grafana_dashboard"], "1");
            for (file, json) in object["data"].as_object().unwrap() {
                shipped
                    .insert(file.clone(), serde_json::from_str::<serde_json::Value>(json.as_str().unwrap()).unwrap());
            }
        }
    }
    assert_eq!(shipped, dashboards(), "manifests/monitoring/kustomization.yaml does not ship every dashboard");
}

/// A crew whose runtime pod runs on the real node, for its `/metrics`.
async fn runtime_metrics(client: &kube::Client) -> String {
    let (llm, model) = llm_server();
    fresh_tenant(
        client,
        TENANT,
        serde_json::json!({"displayName": "Dashboards", "database": {"isolation": "Shared", "deletionPolicy": "Delete"}}),
    )
    .await;
    kubectl_ok(&["create", "secret", "generic", "llm-key", "-n", NS, "--from-literal=apiKey=llm-key"], None);
    let _: bizosaas_crds::Integration = create_in(client, NS, serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "llm", "namespace": NS},
        "spec": {"type": "OpenAI", "endpoint": llm, "credentials": {"secretRef": {"name": "llm-key", "key": "apiKey"}}},
    }))
    .await;
    create_writer_crew(client, NS, "watchers", &model).await;
    let crews: Api<AgentCrew> = Api::namespaced(client.clone(), NS);
    wait_for("the crew Ready", TIMEOUT, || async {
        is_ready(&crews.get("watchers").await.ok()?.status?.conditions).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_for("the runtime's /metrics", TIMEOUT, || async {
        let list = pods.list(&ListParams::default().labels("bizosaas.io/crew=watchers")).await.ok()?;
        let ip = list.items.iter().find_map(|p| p.status.as_ref()?.pod_ip.clone())?;
        let (status, text) = get_pod(&ip, "/metrics").await?;
        (status == 200).then_some(text)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboards_and_alerts_name_is_exported() {
    operator().wait_ready().await;
    let client = client().await;
    // The crew first: by then the leader has reconciled it and counted every kind.
    let runtime_text = runtime_metrics(&client).await;
    let (_, operator_text) = operator().get("/metrics").await.expect("the leader serves /metrics");
    let operator_series = exported(&operator_text);
    let runtime_series = exported(&runtime_text);
    assert!(operator_series.contains("bizosaas_reconciles_total"), "{operator_text}");
    assert!(runtime_series.contains("bizosaas_agent_runs_total"), "{runtime_text}");

    let mut all = Vec::new();
    for (name, dashboard) in dashboards() {
        all.extend(queries(&name, &dashboard));
    }
    all.extend(alert_queries());
    let named = metrics_named(&all).unwrap_or_else(|e| panic!("queries that do not parse:\n{e}"));
    // `up` is Prometheus's own series of each scrape target.
    let missing: Vec<String> = named
        .iter()
        .filter(|(metric, _)| {
            metric.as_str() != "up" && !operator_series.contains(*metric) && !runtime_series.contains(*metric)
        })
        .map(|(metric, places)| format!("{metric} (used by {})", places.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(missing.is_empty(), "metrics no binary exports:\n{}", missing.join("\n"));
}
