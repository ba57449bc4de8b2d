//! Shared helpers of the end-to-end tests: where the local control plane and PostgreSQL are,
//! a kube client, kubectl, waiting, the operator as the chart installs it in the cluster, and
//! the operator binary as a child process.
//!
//! Start the parts with `./dev test` (or `tests/harness/cluster.sh up` and
//! `tests/harness/postgres.sh up`). A missing part fails the test with that hint.

#![allow(dead_code)]

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn harness(script: &str, arg: &str) -> Option<String> {
    let out = Command::new("bash").arg(repo().join("tests/harness").join(script)).arg(arg).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Kubeconfig of the local control plane (`BIZOSAAS_TEST_KUBECONFIG` overrides).
pub fn kubeconfig() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::var_os("BIZOSAAS_TEST_KUBECONFIG")
            .map(PathBuf::from)
            .or_else(|| harness("cluster.sh", "kubeconfig").map(PathBuf::from))
            .filter(|p| p.exists());
        path.expect("no local control plane: start it with `tests/harness/cluster.sh up` (or run `./dev test`)")
    })
    .clone()
}

/// The local API server's audit log (JSON lines, under the chart's audit policy).
pub fn api_server_audit_log() -> PathBuf {
    harness("cluster.sh", "audit-log")
        .map(PathBuf::from)
        .expect("no local control plane: start it with `tests/harness/cluster.sh up` (or run `./dev test`)")
}

/// Admin URL of the test PostgreSQL (`BIZOSAAS_TEST_DATABASE_URL` overrides).
pub fn database_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("BIZOSAAS_TEST_DATABASE_URL")
            .ok()
            .or_else(|| harness("postgres.sh", "url"))
            .expect("no test PostgreSQL: start it with `tests/harness/postgres.sh up` (or run `./dev test`)")
    })
    .clone()
}

/// An HTTP client (the workspace's rustls has no built-in provider: ring is installed).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Address of the test OpenBao (`BIZOSAAS_TEST_VAULT_ADDR` overrides).
pub fn vault_addr() -> String {
    std::env::var("BIZOSAAS_TEST_VAULT_ADDR")
        .ok()
        .or_else(|| harness("openbao.sh", "addr"))
        .expect("no test OpenBao: start it with `tests/harness/openbao.sh up` (or run `./dev test`)")
}

/// Root token of the test OpenBao (`BIZOSAAS_TEST_VAULT_TOKEN` overrides).
pub fn vault_token() -> String {
    std::env::var("BIZOSAAS_TEST_VAULT_TOKEN")
        .ok()
        .or_else(|| harness("openbao.sh", "token"))
        .expect("no test OpenBao token: start it with `tests/harness/openbao.sh up` (or run `./dev test`)")
}

/// The Vault token the harness gives the operator: it holds only the shipped policy
/// `manifests/vault/operator-policy.hcl` (`tests/harness/openbao.sh operator-token`).
pub fn vault_operator_token() -> String {
    harness("openbao.sh", "operator-token")
        .expect("no operator token from the test OpenBao: start it with `tests/harness/openbao.sh up`")
}

/// One request to the test OpenBao's HTTP API; returns the status and the JSON body.
pub async fn vault(method: &str, path: &str, token: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let client = http();
    let url = format!("{}/v1/{path}", vault_addr());
    let mut request = client.request(method.parse().unwrap(), url).header("X-Vault-Token", token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("OpenBao answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// The address of the real node's bridge: where the host's services listen for pods, and
/// where a test's own servers must listen for the operator and crews (in pods) to reach them.
pub fn node_ip() -> String {
    std::env::var("BIZOSAAS_TEST_NODE_IP").unwrap_or_else(|_| "10.244.0.1".into())
}

/// The operator as the chart runs it in the local cluster: two replicas under the chart's
/// ServiceAccount and ClusterRole, connected to the test PostgreSQL and OpenBao. Installed
/// (or upgraded) once per test binary by `tests/harness/operator.sh install`.
pub fn operator() -> &'static InCluster {
    static OPERATOR: OnceLock<InCluster> = OnceLock::new();
    OPERATOR.get_or_init(|| {
        install_crds();
        InCluster::install(&[]);
        InCluster
    })
}

/// Handle on the in-cluster operator (release `bizosaas` in `bizosaas-system`).
pub struct InCluster;

pub const OPERATOR_NAMESPACE: &str = "bizosaas-system";
pub const OPERATOR_DEPLOYMENT: &str = "bizosaas-operator";

impl InCluster {
    /// `helm upgrade --install` with the harness's settings and `extra` helm arguments; waits
    /// for the rollout.
    pub fn install(extra: &[&str]) {
        let out = Command::new("bash")
            .arg(repo().join("tests/harness/operator.sh"))
            .arg("install")
            .args(extra)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "installing the operator chart failed (build and import its image first: `./dev images`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The pod holding the leader Lease and its IP, once that pod is Ready.
    pub async fn leader(&self) -> Option<(String, String)> {
        use k8s_openapi::api::coordination::v1::Lease;
        use k8s_openapi::api::core::v1::Pod;
        let client = client().await;
        let lease = kube::Api::<Lease>::namespaced(client.clone(), OPERATOR_NAMESPACE)
            .get_opt(OPERATOR_DEPLOYMENT)
            .await
            .ok()??;
        let holder = lease.spec?.holder_identity?;
        let pod = kube::Api::<Pod>::namespaced(client, OPERATOR_NAMESPACE).get_opt(&holder).await.ok()??;
        let status = pod.status?;
        let ready = status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some((holder, status.pod_ip?))
    }

    /// Waits until the Deployment is rolled out and a Ready pod leads.
    pub async fn wait_ready(&self) {
        wait_for("the in-cluster operator to lead", Duration::from_secs(120), || async {
            self.leader().await.map(|_| ())
        })
        .await;
    }

    /// GET on the leader's HTTP port; `None` while there is no leader or it does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let (_, ip) = self.leader().await?;
        get_pod(&ip, path).await
    }

    /// Sum of a metric's samples on the leader whose line contains every filter.
    pub async fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        let (_, text) = self.get("/metrics").await.expect("the leader serves metrics");
        sum_metric(&text, name, filters)
    }

    /// The logs of every operator pod, current and previous containers.
    pub fn logs(&self) -> String {
        let out = Command::new("bash").arg(repo().join("tests/harness/operator.sh")).arg("logs").output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// GET on an operator pod's HTTP port (8080).
pub async fn get_pod(ip: &str, path: &str) -> Option<(u16, String)> {
    let response = http().get(format!("http://{ip}:8080{path}")).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Sum of the samples in OpenMetrics `text` of `name` whose line contains every filter.
pub fn sum_metric(text: &str, name: &str, filters: &[&str]) -> f64 {
    // A series not seen yet counts 0; a metric the operator does not export at all is a
    // broken test (a renamed metric would otherwise read as "no writes").
    let family = name.trim_end_matches("_total").trim_end_matches("_count").trim_end_matches("_sum");
    let family = family.trim_end_matches("_bucket");
    assert!(text.lines().any(|l| l.starts_with(&format!("# TYPE {family} "))), "the operator exports no metric {name}");
    text.lines()
        .filter(|l| l.starts_with(name) && filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A client for the local control plane.
pub async fn client() -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig()).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kube config");
    Client::try_from(config).expect("kube client")
}

/// A client for the local control plane acting as `user` (impersonation), to attack the API
/// the way a tenant owner would.
pub async fn client_as(user: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig()).expect("kubeconfig parses");
    let mut config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kube config");
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).expect("kube client")
}

/// Runs kubectl against the local control plane with `stdin` as input.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is installed");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// kubectl that must succeed; returns stdout.
pub fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(args, stdin);
    assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs the generated CRDs and waits until they are served. (The tenant ClusterRoles
/// come with the chart: see [`operator`].)
pub fn install_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crds = repo().join("manifests/crds");
        kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-k", crds.to_str().unwrap()], None);
        let names: Vec<String> = bizosaas_crds::generate::crds()
            .into_iter()
            .map(|c| format!("crd/{}", c.metadata.name.unwrap_or_default()))
            .collect();
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(names.iter().map(String::as_str));
        kubectl_ok(&args, None);
    });
}

/// Polls `check` until it returns `Some` or `timeout` passes; panics with `what` then.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_or_explain(what, timeout, check, String::new).await
}

/// [`wait_for`], and on timeout panics with `explain()` as well: what the object and the
/// operator said, so a failure in CI can be diagnosed from its output alone.
pub async fn wait_for_or_explain<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
    explain: impl FnOnce() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            let explanation = explain();
            let sep = if explanation.is_empty() { "" } else { "\n" };
            panic!("timed out after {timeout:?} waiting for {what}{sep}{explanation}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The lines of `logs` that mention `needle`, at most the last `max`.
pub fn lines_mentioning(logs: &str, needle: &str, max: usize) -> String {
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains(needle)).collect();
    lines[lines.len().saturating_sub(max)..].join("\n")
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The operator binary running as a child process. It gets SIGTERM when the test process
/// exits, so no operator outlives its tests.
pub struct Operator {
    pub pid: u32,
    pub port: u16,
    pub log: PathBuf,
}

impl Operator {
    /// Starts `bizosaas-operator run` with extra arguments, logging into a temp file.
    pub fn start(extra: &[&str]) -> Operator {
        Self::start_with_env(extra, &[])
    }

    /// Like [`Operator::start`], with extra environment (secrets go here, not in arguments).
    pub fn start_with_env(extra: &[&str], env: &[(&str, String)]) -> Operator {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("bizosaas-operator-{}-{port}.log", std::process::id()));
        let mut args: Vec<String> = vec!["run".into(), "--listen".into(), format!("127.0.0.1:{port}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log_file = std::fs::File::create(&log).unwrap();
        let kubeconfig = kubeconfig();
        // Spawned from a thread that lives as long as the process: PDEATHSIG follows the
        // spawning thread, not the process.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut command = Command::new(env!("CARGO_BIN_EXE_bizosaas-operator"));
            command
                .args(&args)
                .envs(env)
                .env("KUBECONFIG", kubeconfig)
                .env("RUST_LOG", "info,tokio_postgres=warn,bizosaas_controllers=debug")
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file);
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let mut child = command.spawn().expect("operator binary starts");
            tx.send(child.id()).unwrap();
            let _ = child.wait();
            std::thread::park();
        });
        let pid = rx.recv().unwrap();
        Operator { pid, port, log }
    }

    /// The operator's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the operator's HTTP port; `None` while it does not answer.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = http().get(format!("http://127.0.0.1:{}{path}", self.port)).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        wait_for("operator /readyz", Duration::from_secs(60), || async {
            matches!(self.get("/readyz").await, Some((200, _))).then_some(())
        })
        .await;
    }

    /// Sum of a metric's samples whose line contains every filter.
    pub async fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        let (_, text) = self.get("/metrics").await.expect("metrics answer");
        sum_metric(&text, name, filters)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
    }

    /// True while the process exists.
    pub fn is_running(&self) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // A zombie (state Z) has exited.
        !status.is_empty() && status.split(' ').nth(2).is_none_or(|s| s != "Z")
    }
}

/// An HTTP server on the node's address answering every request with the status in
/// `status`, recording the Authorization headers it saw.
pub async fn http_server(status: Arc<AtomicU16>, seen: Arc<std::sync::Mutex<Vec<String>>>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind((node_ip(), 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (status, seen) = (status.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(auth) = head.lines().find(|l| l.to_ascii_lowercase().starts_with("authorization:")) {
                    seen.lock().unwrap().push(auth.to_string());
                }
                let code = status.load(Ordering::SeqCst);
                let response = format!("HTTP/1.1 {code} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

/// A restricted pod in `ns` running `sleep` from the harness's toolbox image (busybox and
/// `netcheck`), with `labels`; waits until it is Ready.
pub async fn toolbox_pod(client: &Client, ns: &str, name: &str, labels: serde_json::Value) {
    use k8s_openapi::api::core::v1::Pod;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "toolbox", "image": "docker.io/bizosaas/toolbox:harness",
                            "command": ["/bin/sleep", "3600"],
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                                "capabilities": {"drop": ["ALL"]}}}],
        },
    }))
    .unwrap();
    kube::Api::<Pod>::namespaced(client.clone(), ns).create(&Default::default(), &pod).await.unwrap();
    kubectl_ok(&["wait", "-n", ns, "--for=condition=Ready", &format!("pod/{name}"), "--timeout=90s"], None);
}

/// `netcheck ARGS...` in a toolbox pod: Ok(stdout) when it connected, Err(stderr) otherwise.
pub fn netcheck(ns: &str, pod: &str, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["exec", "-n", ns, pod, "--", "netcheck"];
    argv.extend_from_slice(args);
    let out = kubectl(&argv, None);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Waits until `pod` in `ns` gets an HTTP answer (any status) from `url`: the network policy
/// rules that let a new pod's traffic through are programmed a moment after it is Ready.
pub async fn wait_reachable(ns: &str, pod: &str, url: &str, timeout: Duration) {
    let last = std::sync::Mutex::new(String::new());
    wait_for_or_explain(
        &format!("{pod} in {ns} to reach {url}"),
        timeout,
        || async {
            let answer = netcheck(ns, pod, &["http", "-t", "5s", url]);
            answer.map_err(|e| *last.lock().unwrap() = e).ok().map(|_| ())
        },
        || format!("last attempt: {}", last.lock().unwrap()),
    )
    .await;
}

/// Creates a Tenant from `spec` after deleting a leftover of an earlier run; waits until Ready.
pub async fn fresh_tenant(client: &Client, name: &str, spec: serde_json::Value) {
    use bizosaas_crds::Tenant;
    let tenants: kube::Api<Tenant> = kube::Api::all(client.clone());
    let timeout = Duration::from_secs(120);
    if tenants.get_opt(name).await.unwrap().is_some() {
        let _ = tenants.delete(name, &Default::default()).await;
        wait_for(&format!("the old {name} to go"), timeout, || async {
            tenants.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
        let ns = format!("tenant-{name}");
        wait_for(&format!("namespace {ns} to go"), timeout, || async {
            (!kubectl(&["get", "namespace", &ns], None).status.success()).then_some(())
        })
        .await;
    }
    let tenant: Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Tenant", "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    tenants.create(&Default::default(), &tenant).await.unwrap();
    wait_for(&format!("Tenant {name} Ready"), timeout, || async {
        bizosaas_crds::common::is_ready(&tenants.get(name).await.ok()?.status?.conditions).then_some(())
    })
    .await;
}

/// Drops the database and roles a Tenant of this name left behind (an earlier run's, kept by
/// `deletionPolicy: Retain`), which a new Tenant of the name would meet as a DatabaseConflict.
pub async fn drop_tenant_data(tenant: &str) {
    use bizosaas_controllers::postgres::{Admin, TenantNames};
    use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy};
    // The operator's own retirement, for either isolation the earlier Tenant had.
    let admin = Admin::new(&database_url(), None, "bizosaas_platform").expect("a valid database URL");
    let names = TenantNames::new(tenant).expect("a valid tenant name");
    for isolation in [DatabaseIsolation::Dedicated, DatabaseIsolation::Shared] {
        admin.retire_tenant(&names, isolation, DeletionPolicy::Delete).await.expect("retiring the old tenant's data");
    }
}

/// The LLM server's URL and model (`BIZOSAAS_TEST_LLM_URL`, `BIZOSAAS_TEST_LLM_MODEL`).
pub fn llm_server() -> (String, String) {
    let url = std::env::var("BIZOSAAS_TEST_LLM_URL")
        .expect("no LLM server: start it with `tests/harness/llm.sh up` (or run `./dev test`)");
    let model = std::env::var("BIZOSAAS_TEST_LLM_MODEL").unwrap_or_else(|_| "gemma3-270m".into());
    (url, model)
}

/// Gives the crews of `ns` a model: the `llm-key` Secret holding `api_key` and the `llm`
/// Integration of type OpenAI that points at `endpoint`.
pub async fn llm_integration(client: &Client, ns: &str, endpoint: &str, api_key: &str) {
    kubectl_ok(
        &["create", "secret", "generic", "llm-key", "-n", ns, &format!("--from-literal=apiKey={api_key}")],
        None,
    );
    let _: bizosaas_crds::Integration = create_in(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "llm", "namespace": ns},
            "spec": {"type": "OpenAI", "endpoint": endpoint,
                     "credentials": {"secretRef": {"name": "llm-key", "key": "apiKey"}},
                     "healthCheck": {"interval": "5s", "timeout": "2s"}},
        }),
    )
    .await;
}

/// Creates the AgentCrew `name` in `ns` the LLM tests share: one `writer` agent (the
/// copywriting template, one iteration) on `model` of the `llm` Integration, 16 tokens a call.
pub async fn create_writer_crew(client: &Client, ns: &str, name: &str, model: &str) {
    let _: bizosaas_crds::AgentCrew = create_in(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "bizosaas.io/v1alpha1", "kind": "AgentCrew", "metadata": {"name": name, "namespace": ns},
            "spec": {"process": "Sequential", "model": {"integration": "llm", "name": model, "maxTokens": 16},
                     "agents": [{"name": "writer", "template": "copywriting", "maxIterations": 1}]},
        }),
    )
    .await;
}

/// The tenant app role's connection to the database of the tenant namespace `ns`, from the
/// `tenant-database` Secret the operator keeps there.
pub async fn tenant_database(client: &Client, ns: &str) -> tokio_postgres::Client {
    use k8s_openapi::api::core::v1::Secret;
    let secret = kube::Api::<Secret>::namespaced(client.clone(), ns).get("tenant-database").await.unwrap();
    let url = String::from_utf8(secret.data.unwrap()["url"].0.clone()).unwrap();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    db
}

/// Waits until the AgentCrew `name` in `ns` is Ready, which it is once its runtime pods are.
pub async fn wait_crew_ready(client: &Client, ns: &str, name: &str, timeout: Duration) {
    let crews: kube::Api<bizosaas_crds::AgentCrew> = kube::Api::namespaced(client.clone(), ns);
    wait_for(&format!("the crew {name} Ready"), timeout, || async {
        bizosaas_crds::common::is_ready(&crews.get(name).await.ok()?.status?.conditions).then_some(())
    })
    .await;
}

/// Creates the namespaced object `value` (JSON) in `ns` and returns it as the server has it.
pub async fn create_in<K>(client: &Client, ns: &str, value: serde_json::Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).unwrap();
    kube::Api::<K>::namespaced(client.clone(), ns).create(&Default::default(), &object).await.unwrap()
}

/// The API server's `ip:port` as pods reach it (the endpoints of `default/kubernetes`): what
/// a tenant owner would aim a probe or a step at.
pub fn api_server_address() -> String {
    let out = kubectl_ok(
        &[
            "get",
            "endpointslices",
            "-n",
            "default",
            "-l",
            "kubernetes.io/service-name=kubernetes",
            "-o",
            "jsonpath={.items[0].endpoints[0].addresses[0]}:{.items[0].ports[0].port}",
        ],
        None,
    );
    out.trim().to_string()
}
