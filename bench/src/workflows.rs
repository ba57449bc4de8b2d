//! Workflow execution: 1,000 concurrent runs of a five-step HTTP workflow through the
//! operator, against a bare client doing the minimum a durable executor must (create the
//! run's record, then per step record the start, call, record the end) with the same
//! concurrency, in the same run and against the same endpoint.

use crate::operator_process::OperatorProcess;
use crate::proc_stats;
use crate::stats::percentile;
use anyhow::Context as _;
use bizosaas_crds::common::is_ready;
use bizosaas_crds::workflow::RunPhase;
use bizosaas_crds::{Integration, Tenant, Workflow, WorkflowRun};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TENANT: &str = "bench-wf";
const NS: &str = "tenant-bench-wf";
const WORKFLOW: &str = "bench-chain";
const BARE_LABEL: &str = "bizosaas.io/bench-bare-run";
const PLATFORM_DATABASE: &str = "bizosaas_platform_bench";

#[derive(clap::Args)]
pub struct Args {
    /// Runs in each half, all in flight at once.
    #[arg(long, default_value_t = 1000)]
    runs: usize,
    /// Steps of the chain.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Creates in flight at once while starting the runs.
    #[arg(long, default_value_t = 50)]
    create_concurrency: usize,
    /// Address the endpoint listens on: the node's, which the operator may dial.
    #[arg(long, env = "BIZOSAAS_NODE_IP", default_value = "10.244.0.1")]
    node_ip: String,
    /// PostgreSQL admin URL, as given to the operator.
    #[arg(long, env = "BIZOSAAS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The operator binary; defaults to the one next to this benchmark.
    #[arg(long)]
    operator_bin: Option<PathBuf>,
}

/// When the endpoint received and answered each `(run, step)`.
#[derive(Default)]
struct Timeline {
    arrived: BTreeMap<(String, usize), Instant>,
    answered: BTreeMap<(String, usize), Instant>,
}

impl Timeline {
    /// For every step after the first: its arrival minus the previous step's answer.
    fn delays(&self) -> Vec<f64> {
        self.arrived
            .iter()
            .filter(|((_, step), _)| *step > 1)
            .filter_map(|((run, step), at)| {
                let before = self.answered.get(&(run.clone(), step - 1))?;
                Some(at.saturating_duration_since(*before).as_secs_f64())
            })
            .collect()
    }
}

/// An endpoint on the node's address; each request names its run and step in the
/// Idempotency-Key (`<run>/s<step>/<attempt>`).
async fn endpoint(ip: &str, timeline: Arc<Mutex<Timeline>>) -> anyhow::Result<u16> {
    use axum::http::HeaderMap;
    let handler = move |headers: HeaderMap| {
        let timeline = timeline.clone();
        async move {
            let now = Instant::now();
            let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let mut parts = key.split('/');
            let (run, step) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default());
            let step: usize = step.trim_start_matches('s').parse().unwrap_or(0);
            let mut t = timeline.lock().unwrap();
            t.arrived.entry((run.clone(), step)).or_insert(now);
            t.answered.insert((run, step), Instant::now());
            "ok"
        }
    };
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.with_context(|| format!("cannot listen on {ip}"))?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
    Ok(port)
}

#[derive(Default)]
struct Half {
    seconds: f64,
    writes: f64,
    delays: Vec<f64>,
    rss_mib: f64,
    cpu_seconds: f64,
    control_plane_cpu_seconds: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.context("no cluster: set KUBECONFIG (./dev bench does)")?;
    let operator = OperatorProcess::start(
        args.operator_bin.as_ref(),
        &args.database_url,
        &["--platform-database", PLATFORM_DATABASE],
    )
    .await?;
    let bare_timeline = Arc::new(Mutex::new(Timeline::default()));
    let bare_port = endpoint(&args.node_ip, bare_timeline.clone()).await?;
    let op_timeline = Arc::new(Mutex::new(Timeline::default()));
    let op_port = endpoint(&args.node_ip, op_timeline.clone()).await?;
    eprintln!("setting up tenant {TENANT} and Integration hook");
    setup(&client, &args, op_port).await?;

    eprintln!("bare client: {} runs of {} steps, all at once", args.runs, args.steps);
    let mut bare = bare_client(&client, &args, bare_port).await?;
    bare.delays = bare_timeline.lock().unwrap().delays();

    eprintln!("operator: {} runs of {} steps, all at once", args.runs, args.steps);
    let mut op = through_operator(&client, &args, &operator).await?;
    op.delays = op_timeline.lock().unwrap().delays();

    let steps = (args.runs * args.steps) as f64;
    println!("workflow execution: {} concurrent runs of a {}-step HTTP chain", args.runs, args.steps);
    println!("{:<40} {:>12} {:>12} {:>8}", "figure", "operator", "bare client", "ratio");
    let row = |name: &str, o: f64, b: f64| println!("{name:<40} {o:>12.3} {b:>12.3} {:>8.2}", o / b);
    row("steps per second", steps / op.seconds, steps / bare.seconds);
    row("API writes per step", op.writes / steps, bare.writes / steps);
    row("step to dependent p50 (ms)", 1000.0 * percentile(&op.delays, 0.5), 1000.0 * percentile(&bare.delays, 0.5));
    row("step to dependent p99 (ms)", 1000.0 * percentile(&op.delays, 0.99), 1000.0 * percentile(&bare.delays, 0.99));
    row("peak RSS (MiB)", op.rss_mib, bare.rss_mib);
    row("CPU (s)", op.cpu_seconds, bare.cpu_seconds);
    println!(
        "{:<40} {:>11.1}% {:>11.1}% {:>8}",
        "CPU / API server+etcd CPU",
        100.0 * op.cpu_seconds / op.control_plane_cpu_seconds,
        100.0 * bare.cpu_seconds / bare.control_plane_cpu_seconds,
        "-"
    );
    println!("target: at most 3 API writes per step (the run's create counts as the bench's, not the operator's)");
    teardown(&client).await?;
    operator.stop().await;
    Ok(())
}

/// The tenant, its Integration to the endpoint and the workflow, through the operator.
async fn setup(client: &Client, args: &Args, port: u16) -> anyhow::Result<()> {
    teardown(client).await?;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let tenant: Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Tenant", "metadata": {"name": TENANT},
        "spec": {"displayName": "Workflow bench", "plan": "enterprise",
                 "quota": {"workflows": 10},
                 "database": {"isolation": "Shared", "deletionPolicy": "Delete"}},
    }))?;
    tenants.create(&PostParams::default(), &tenant).await?;
    wait("the bench tenant Ready", || async {
        Ok(tenants.get(TENANT).await?.status.is_some_and(|s| is_ready(&s.conditions)))
    })
    .await?;
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook-token", "namespace": NS},
        "stringData": {"token": "bench"},
    }))?;
    Api::<Secret>::namespaced(client.clone(), NS).create(&PostParams::default(), &secret).await?;
    let integrations: Api<Integration> = Api::namespaced(client.clone(), NS);
    let integration: Integration = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "hook", "namespace": NS},
        "spec": {"type": "Webhook", "endpoint": format!("http://{}:{port}", args.node_ip),
                 "credentials": {"secretRef": {"name": "hook-token", "key": "token"}}},
    }))?;
    integrations.create(&PostParams::default(), &integration).await?;
    wait("the Integration's credential projected", || async {
        Ok(integrations.get("hook").await?.status.is_some_and(|s| s.content_hash.is_some()))
    })
    .await?;
    let steps: Vec<serde_json::Value> = (1..=args.steps)
        .map(|i| {
            let deps: Vec<String> = if i == 1 { vec![] } else { vec![format!("s{}", i - 1)] };
            serde_json::json!({"name": format!("s{i}"), "dependsOn": deps,
                               "http": {"integration": "hook", "method": "POST", "path": "/step"}})
        })
        .collect();
    let workflow: Workflow = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Workflow", "metadata": {"name": WORKFLOW, "namespace": NS},
        "spec": {"steps": steps, "parallelism": 1},
    }))?;
    Api::<Workflow>::namespaced(client.clone(), NS).create(&PostParams::default(), &workflow).await?;
    Ok(())
}

/// The bare half: each run is a ConfigMap created, then per step patched (started), called,
/// patched (finished): the least a durable executor writes.
async fn bare_client(client: &Client, args: &Args, port: u16) -> anyhow::Result<Half> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let http = reqwest::Client::new();
    let url = format!("http://{}:{port}/step", args.node_ip);
    let cpu_before = proc_stats::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let cp_before = proc_stats::cpu_of(&["kube-apiserver", "etcd"]);
    let writes = Arc::new(Mutex::new(0.0));
    let started = Instant::now();
    stream::iter(0..args.runs)
        .map(|i| {
            let (api, http, url, writes) = (api.clone(), http.clone(), url.clone(), writes.clone());
            async move {
                let name = format!("bare-{i}");
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": NS, "labels": {BARE_LABEL: "true"}},
                }))?;
                api.create(&PostParams::default(), &cm).await?;
                let count = |n: f64| *writes.lock().unwrap() += n;
                count(1.0);
                for step in 1..=args.steps {
                    let record = |phase: &str| Patch::Merge(serde_json::json!({"data": {format!("s{step}"): phase}}));
                    api.patch(&name, &PatchParams::default(), &record("Running")).await?;
                    let response =
                        http.post(&url).header("Idempotency-Key", format!("{name}/s{step}/1")).send().await?;
                    anyhow::ensure!(response.status().is_success(), "the endpoint answered {}", response.status());
                    api.patch(&name, &PatchParams::default(), &record("Succeeded")).await?;
                    count(2.0);
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.runs)
        .try_collect::<Vec<()>>()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Half {
        seconds,
        writes: *writes.lock().unwrap(),
        delays: vec![],
        rss_mib: proc_stats::peak_rss_mib(std::process::id()).unwrap_or(f64::NAN),
        cpu_seconds: proc_stats::cpu_seconds(std::process::id()).unwrap_or(0.0) - cpu_before,
        control_plane_cpu_seconds: proc_stats::cpu_of(&["kube-apiserver", "etcd"]) - cp_before,
    })
}

/// The operator half: the runs are created (as fast as the bare half's creates) and the
/// operator executes them; its writes are read from its metrics.
async fn through_operator(client: &Client, args: &Args, operator: &OperatorProcess) -> anyhow::Result<Half> {
    let runs: Api<WorkflowRun> = Api::namespaced(client.clone(), NS);
    let filter = ["controller=\"workflowrun\""];
    let writes_before = operator.sample_where("bizosaas_api_writes_total", &filter).await.unwrap_or(0.0);
    let cpu_before = proc_stats::cpu_seconds(operator.pid).unwrap_or(0.0);
    let cp_before = proc_stats::cpu_of(&["kube-apiserver", "etcd"]);
    // Finished runs, from a watch rather than lists: polling a thousand runs would load the
    // control plane the operator is measured against.
    let finished: Arc<Mutex<BTreeMap<String, bool>>> = Arc::default();
    let watch = {
        let (runs, finished) = (runs.clone(), finished.clone());
        tokio::spawn(async move {
            let stream = kube::runtime::watcher(runs, kube::runtime::watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(Ok(event)) = stream.next().await {
                if let kube::runtime::watcher::Event::Apply(r) | kube::runtime::watcher::Event::InitApply(r) = event
                    && let Some(phase) = r.status.as_ref().and_then(|s| s.phase).filter(|p| p.is_finished())
                {
                    finished.lock().unwrap().insert(r.name_any(), phase == RunPhase::Succeeded);
                }
            }
        })
    };
    let started = Instant::now();
    stream::iter(0..args.runs)
        .map(|i| {
            let runs = runs.clone();
            async move {
                let run: WorkflowRun = serde_json::from_value(serde_json::json!({
                    "apiVersion": "bizosaas.io/v1alpha1", "kind": "WorkflowRun",
                    "metadata": {"name": format!("op-{i}"), "namespace": NS},
                    "spec": {"workflow": WORKFLOW},
                }))?;
                runs.create(&PostParams::default(), &run).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.create_concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    wait("every run to finish", || async {
        let (done, failed) =
            finished.lock().unwrap().iter().fold((0, 0), |(d, f), (_, ok)| (d + 1, f + usize::from(!ok)));
        anyhow::ensure!(failed == 0, "{failed} runs failed");
        Ok(done == args.runs)
    })
    .await?;
    watch.abort();
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes = operator.sample_where("bizosaas_api_writes_total", &filter).await.unwrap_or(0.0) - writes_before;
    Ok(Half {
        seconds,
        // The run's create is the user's write in this half; the bare half counts its own.
        writes: writes + args.runs as f64,
        delays: vec![],
        rss_mib: proc_stats::peak_rss_mib(operator.pid).unwrap_or(f64::NAN),
        cpu_seconds: proc_stats::cpu_seconds(operator.pid).unwrap_or(0.0) - cpu_before,
        control_plane_cpu_seconds: proc_stats::cpu_of(&["kube-apiserver", "etcd"]) - cp_before,
    })
}

async fn teardown(client: &Client) -> anyhow::Result<()> {
    let tenants: Api<Tenant> = Api::all(client.clone());
    if tenants.get_opt(TENANT).await?.is_some() {
        let _ = tenants.delete(TENANT, &DeleteParams::default()).await;
        wait("the bench tenant to go", || async { Ok(tenants.get_opt(TENANT).await?.is_none()) }).await?;
    }
    Ok(())
}

async fn wait<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(300);
    while !check().await? {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
