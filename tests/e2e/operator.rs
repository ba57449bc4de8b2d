//! The operator binary against the local control plane: it serves health, readiness and
//! Prometheus metrics, logs JSON when asked, stays a standby while another replica holds the
//! Lease, and stops cleanly on SIGTERM.

mod support;

use std::time::Duration;
use support::*;

/// The binary as a standby replica: the chart's operator holds the Lease, so this one serves
/// its endpoints, waits for leadership without reconciling anything, and stops on SIGTERM.
#[tokio::test]
async fn serves_health_readiness_and_metrics_then_stops_on_sigterm() {
    operator().wait_ready().await;
    let operator = Operator::start(&[
        "--log-format",
        "json",
        "--leader-election",
        "true",
        "--pod-namespace",
        OPERATOR_NAMESPACE,
        "--pod-name",
        "e2e-standby",
    ]);
    operator.wait_ready().await;

    let (status, body) = operator.get("/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, metrics) = operator.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    for family in ["bizosaas_reconciles", "bizosaas_reconcile_duration_seconds"] {
        assert!(metrics.contains(&format!("# TYPE {family} ")), "{family} missing from:\n{metrics}");
    }
    assert!(metrics.trim_end().ends_with("# EOF"), "not OpenMetrics text");
    wait_for("the standby to wait for the Lease", Duration::from_secs(30), || async {
        operator.logs().contains("waiting for leadership").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, metrics) = operator.get("/metrics").await.unwrap();
    assert_eq!(sum_metric(&metrics, "bizosaas_reconciles_total", &[]), 0.0, "a standby reconciled:\n{metrics}");
    assert!(!operator.logs().contains("controllers starting"), "a standby started its controllers");

    let logs = operator.logs();
    let first = logs.lines().next().expect("the operator logs");
    let line: serde_json::Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("not JSON ({e}): {first}"));
    assert!(line.get("level").is_some() && line.get("timestamp").is_some(), "{first}");

    operator.terminate();
    wait_for("the operator to exit after SIGTERM", Duration::from_secs(30), || async {
        (!operator.is_running()).then_some(())
    })
    .await;
    let logs = operator.logs();
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(logs.contains("\"stopped\""), "no clean stop in:\n{logs}");
}

#[tokio::test]
async fn refuses_to_start_without_crds_on_a_wrong_cluster() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bizosaas-operator"))
        .args(["run", "--listen", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no Kubernetes configuration found"), "{stderr}");
}

#[test]
fn crd_command_prints_every_crd_and_catalog_lists_25_agents() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bizosaas-operator")).arg("crd").output().unwrap();
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(yaml.matches("kind: CustomResourceDefinition").count(), 5);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bizosaas-operator")).arg("catalog").output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), 26, "{table}");
    assert!(table.contains("seo-optimization") && table.contains("leaderboard"));
}
