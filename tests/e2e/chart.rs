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

/// The rendered objects of `helm template` with `extra` arguments.
fn objects(extra: &[&str]) -> Vec<serde_json::Value> {
    let manifests = template(extra).unwrap_or_else(|e| panic!("the chart does not render: {e}"));
    manifests
        .split("\n---")
        .filter_map(|document| serde_saphyr::from_str::<serde_json::Value>(document).ok())
        .filter(|object| object.get("kind").is_some())
        .collect()
}

fn of_kind<'a>(objects: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The one object of `kind` named `name`.
fn named<'a>(objects: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    let found: Vec<_> = of_kind(objects, kind).into_iter().filter(|o| o["metadata"]["name"] == name).collect();
    let [object] = found[..] else { panic!("{} {kind} named {name}", found.len()) };
    object
}

/// `value` with every number as a float, so that `1` and `1.0` compare equal.
fn numbers_as_floats(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, numbers_as_floats(v))).collect()),
        other => other,
    }
}

#[test]
fn the_crds_are_released_with_the_chart_and_kept_on_uninstall() {
    let generated = bizosaas_crds::generate::crds();
    let rendered = objects(&[]);
    let crds = of_kind(&rendered, "CustomResourceDefinition");
    assert_eq!(crds.len(), generated.len(), "one CRD per kind");
    for crd in generated {
        let name = crd.metadata.name.clone().unwrap();
        let shipped =
            crds.iter().find(|c| c["metadata"]["name"] == name.as_str()).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(shipped["metadata"]["annotations"]["helm.sh/resource-policy"], "keep", "{name}");
        // Helm re-renders the YAML: `1.0` comes out as `1`, the same number to the API server.
        assert_eq!(
            numbers_as_floats(shipped["spec"].clone()),
            numbers_as_floats(serde_json::to_value(&crd.spec).unwrap()),
            "{name}: the schema differs from the types"
        );
    }
    let unkept = objects(&["--set", "crds.keep=false"]);
    let crds = of_kind(&unkept, "CustomResourceDefinition");
    assert!(
        !crds.is_empty() && crds.iter().all(|c| c["metadata"]["annotations"].get("helm.sh/resource-policy").is_none())
    );
    assert!(of_kind(&objects(&["--set", "crds.enabled=false"]), "CustomResourceDefinition").is_empty());
}

/// The env names the operator's `run` reads, from its own `--help`.
fn operator_env_names() -> std::collections::BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_bizosaas-operator")).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let names: std::collections::BTreeSet<String> =
        help.split("[env: ").skip(1).filter_map(|rest| rest.split(['=', ']']).next()).map(str::to_string).collect();
    assert!(names.len() > 20, "run --help lists the env of every flag: {help}");
    names
}

/// The env names the operator container gets in a rendering.
fn deployment_env(objects: &[serde_json::Value]) -> std::collections::BTreeSet<String> {
    let deployment = named(objects, "Deployment", "bizosaas-operator");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn every_operator_flag_has_a_value() {
    let everything = [
        "--set",
        "vault.enabled=true",
        "--set",
        "vault.address=https://vault:8200",
        "--set",
        "vault.jwtPath=/var/run/secrets/tokens/vault",
        "--set",
        "database.tenantHost=db:5432",
        "--set",
        "database.caConfigMap=db-ca",
        "--set",
        "ingress.className=nginx",
        "--set",
        "ingress.clusterIssuer=letsencrypt",
        "--set",
        "metrics.scrapeNamespace=monitoring",
        "--set",
        "otel.endpoint=http://otel-collector.observability:4318",
        "--set",
        "billing.lago.url=https://lago.example",
        "--set",
        "billing.lago.apiKeySecret.name=lago-api",
    ];
    let mut set = deployment_env(&objects(&everything));
    let token =
        [&everything[..], &["--set", "vault.auth=token", "--set", "vault.tokenSecret.name=vault-token"]].concat();
    set.extend(deployment_env(&objects(&token)));
    let missing: Vec<String> = operator_env_names().difference(&set).cloned().collect();
    assert!(missing.is_empty(), "operator settings no chart value sets: {missing:?}");
}

#[test]
fn the_lago_api_key_comes_from_an_existing_secret() {
    let lago = ["--set", "billing.lago.url=https://lago.example", "--set", "billing.lago.apiKeySecret.name=lago-api"];
    let rendered = objects(&lago);
    let deployment = named(&rendered, "Deployment", "bizosaas-operator");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    let key = env.iter().find(|e| e["name"] == "BIZOSAAS_LAGO_API_KEY").expect("the key reaches the operator");
    assert_eq!(key["valueFrom"]["secretKeyRef"], serde_json::json!({"name": "lago-api", "key": "api-key"}));
    assert!(key.get("value").is_none(), "the key is never a plain value");
    let code = env.iter().find(|e| e["name"] == "BIZOSAAS_LAGO_METRIC_CODE").unwrap();
    assert_eq!(code["value"], "llm_tokens");
    let error = template(&lago[..2]).expect_err("a Lago URL without its key's Secret");
    assert!(error.contains("billing.lago.apiKeySecret.name is required"), "{error}");
    assert!(!deployment_env(&objects(&[])).contains("BIZOSAAS_LAGO_URL"), "no URL, no export");
}

#[test]
fn extra_args_volumes_and_mounts_reach_the_operator() {
    let rendered = objects(&[
        "--set",
        "extraArgs[0]=--lease-duration=30",
        "--set",
        "extraVolumes[0].name=spool",
        "--set",
        "extraVolumes[0].emptyDir.medium=Memory",
        "--set",
        "extraVolumeMounts[0].name=spool",
        "--set",
        "extraVolumeMounts[0].mountPath=/spool",
    ]);
    let deployment = named(&rendered, "Deployment", "bizosaas-operator");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["args"], serde_json::json!(["run", "--lease-duration=30"]));
    assert!(
        pod["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "spool" && v["emptyDir"]["medium"] == "Memory")
    );
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["name"] == "spool" && m["mountPath"] == "/spool"), "{mounts:?}");
    let error = template(&["--set", "extraVolumeMounts[0].name=spool"]).expect_err("a mount without a path");
    assert!(error.contains("mountPath"), "{error}");
}

#[test]
fn helm_test_checks_the_operator_through_its_service() {
    let rendered =
        objects(&["--set", "image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"]);
    let tests: Vec<_> = of_kind(&rendered, "Pod")
        .into_iter()
        .filter(|p| p["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .collect();
    let [test] = tests[..] else { panic!("one helm test Pod: {tests:?}") };
    let container = &test["spec"]["containers"][0];
    assert!(
        container["image"]
            .as_str()
            .unwrap()
            .ends_with("@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    );
    assert_eq!(container["args"], serde_json::json!(["check", "http://bizosaas-operator.bizosaas-system.svc:8080"]));
    assert_eq!(test["spec"]["automountServiceAccountToken"], false, "the test needs no API access");
    assert!(of_kind(&objects(&["--set", "tests.enabled=false"]), "Pod").is_empty());
}

#[test]
fn the_chart_metadata_is_complete() {
    let text = std::fs::read_to_string(repo().join("charts/bizosaas/Chart.yaml")).unwrap();
    let chart: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    for field in ["apiVersion", "name", "description", "type", "version", "appVersion", "kubeVersion", "home", "icon"] {
        assert!(chart.get(field).is_some_and(|v| !v.is_null()), "Chart.yaml has no {field}");
    }
    for list in ["sources", "maintainers", "keywords"] {
        assert!(chart[list].as_array().is_some_and(|l| !l.is_empty()), "Chart.yaml has no {list}");
    }
    assert!(chart["annotations"]["artifacthub.io/license"].is_string(), "Chart.yaml names no license");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(chart["appVersion"], version, "appVersion follows the workspace version");
}

#[test]
fn the_gateway_runs_restricted_replicated_and_reviews_its_callers() {
    let rendered = objects(&[
        "--set",
        "gateway.oidc.issuer=https://sso.example.com/realms/bizosaas",
        "--set",
        "gateway.oidc.caPEM=-----BEGIN CERTIFICATE-----",
    ]);
    let deployment = named(&rendered, "Deployment", "bizosaas-gateway");
    assert_eq!(deployment["spec"]["replicas"], 2, "stateless, and more than one");
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["bizosaas.io/tenant-facing"], "true", "tenant workloads may call it");
    assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/component"], "gateway");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let env: std::collections::BTreeMap<String, String> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(env["BIZOSAAS_OIDC_ISSUER"], "https://sso.example.com/realms/bizosaas");
    assert_eq!(env["BIZOSAAS_OIDC_CA_FILE"], "/etc/bizosaas/oidc-ca/ca.crt");
    let pdb = named(&rendered, "PodDisruptionBudget", "bizosaas-gateway");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], "gateway");
    // The operator's own Service and PDB do not select the gateway's pods.
    let operator = named(&rendered, "Deployment", "bizosaas-operator");
    assert_eq!(operator["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], "operator");
    let operator_env = deployment_env(&rendered);
    assert!(
        operator_env.contains("BIZOSAAS_GATEWAY_SERVICE_ACCOUNT"),
        "crews must admit the gateway: {operator_env:?}"
    );
    // Its database login (audit log only) comes from the Secret the operator keeps, and the
    // operator may touch that one Secret of the release namespace and create it.
    let url =
        container["env"].as_array().unwrap().iter().find(|e| e["name"] == "BIZOSAAS_GATEWAY_DATABASE_URL").unwrap();
    assert_eq!(
        url["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "bizosaas-gateway-database", "key": "url"})
    );
    let keeper = named(&rendered, "Role", "bizosaas-operator-gateway-database");
    assert_eq!(
        keeper["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["bizosaas-gateway-database"], "verbs": ["get", "patch"]},
        ])
    );
    let binding = named(&rendered, "RoleBinding", "bizosaas-operator-gateway-database");
    assert_eq!(binding["subjects"][0]["name"], "bizosaas-operator");
    let operator_container = &operator["spec"]["template"]["spec"]["containers"][0];
    let secret =
        operator_container["env"].as_array().unwrap().iter().find(|e| e["name"] == "BIZOSAAS_GATEWAY_DATABASE_SECRET");
    assert!(secret.is_some_and(|e| e["value"].as_str().unwrap().ends_with("/bizosaas-gateway-database")), "{secret:?}");

    // What it may do: review tokens and access, impersonate, and read Tenants (their usage);
    // no Secret, no workload.
    let role = named(&rendered, "ClusterRole", "bizosaas-gateway");
    let mut granted: Vec<String> = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    granted.push(format!(
                        "{}/{} {}",
                        group.as_str().unwrap(),
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap()
                    ));
                }
            }
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        [
            "/groups impersonate",
            "/serviceaccounts impersonate",
            "/users impersonate",
            "authentication.k8s.io/tokenreviews create",
            "authentication.k8s.io/uids impersonate",
            "authorization.k8s.io/subjectaccessreviews create",
            "bizosaas.io/tenants get",
        ]
    );

    // Keys are fetched from the issuer: plain http is refused before anything is installed.
    let error = template(&["--set", "gateway.oidc.issuer=http://sso.example.com"]).expect_err("an http issuer");
    assert!(error.contains("issuer"), "{error}");
    let off = objects(&["--set", "gateway.enabled=false"]);
    assert!(of_kind(&off, "Deployment").len() == 1, "gateway.enabled=false renders no gateway");
    assert!(!deployment_env(&off).contains("BIZOSAAS_GATEWAY_SERVICE_ACCOUNT"));
}
