//! What the gateway adds to a crew run request: the same read of a crew run sent straight to
//! the crew's Service and through the gateway (which authenticates the caller, asks RBAC,
//! takes a place in the tenant's audit log and passes the call on), with the same caller,
//! concurrency and count, in alternating rounds of the same run. Prints p50 and p99 of both,
//! what the gateway adds, and the gateway's requests per CPU-second.
//!
//! Needs the release installed in the cluster (gateway included) with a rate limit above the
//! load, and the LLM server for the one run that is read: `./dev bench gateway` does both.

use crate::proc_stats;
use crate::stats::percentile;
use anyhow::{Context as _, bail};
use bizosaas_crds::common::is_ready;
use bizosaas_crds::{AgentCrew, Integration, Tenant};
use futures::{StreamExt, stream};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::{Duration, Instant};

const TENANT: &str = "bench-gw";
const NS: &str = "tenant-bench-gw";
const CREW: &str = "writers";
const CALLER: &str = "bench-caller";
/// The gateway's process name as /proc shows it (15 characters).
const GATEWAY_COMM: &str = "bizosaas-gatewa";
const TIMEOUT: Duration = Duration::from_secs(240);

#[derive(clap::Args)]
pub struct Args {
    /// Requests through each path (split over alternating rounds).
    #[arg(long, default_value_t = 4000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Rounds per path; they alternate, so drift in the machine hits both alike.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// The OpenAI-compatible server the crew's one run calls.
    #[arg(long, env = "BIZOSAAS_BENCH_LLM_URL")]
    llm_url: String,
    #[arg(long, env = "BIZOSAAS_BENCH_LLM_MODEL", default_value = "gemma3-270m")]
    llm_model: String,
    /// The address this machine's traffic reaches the node's pods from.
    #[arg(long, env = "BIZOSAAS_NODE_IP", default_value = "10.244.0.1")]
    node_ip: String,
    /// Namespace of the release.
    #[arg(long, default_value = "bizosaas-system")]
    release_namespace: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.context("connecting to the cluster in KUBECONFIG")?;
    setup(&client, &args).await?;
    let (gateway_token, crew_token) =
        (token(&client, "bizosaas-gateway").await?, token(&client, "bizosaas-agent").await?);
    let crew_base = service_url(&client, NS, &format!("crew-{CREW}")).await?;
    let gateway_base = service_url(&client, &args.release_namespace, "bizosaas-gateway").await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).tcp_nodelay(true).build()?;

    // The policy that lets this machine in takes a moment to reach the node.
    wait(TIMEOUT, "the crew reachable from this machine", || async {
        Ok(http.get(format!("{crew_base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()))
    })
    .await?;
    // One real run to read: started on the crew as the caller, against the model.
    let started: serde_json::Value = http
        .post(format!("{crew_base}/v1/runs?wait=25"))
        .bearer_auth(&crew_token)
        .json(&serde_json::json!({"description": "Write one short line about spring.", "agent": "writer"}))
        .send()
        .await?
        .error_for_status()
        .context("starting the run to read")?
        .json()
        .await?;
    let id = started["id"].as_str().context("a run id")?.to_string();
    let direct = Path { url: format!("{crew_base}/v1/runs/{id}"), token: crew_token };
    let through =
        Path { url: format!("{gateway_base}/v1/tenants/{TENANT}/crews/{CREW}/runs/{id}"), token: gateway_token };

    // Warm both: connections, the gateway's review caches.
    direct.load(&http, 200, args.concurrency).await?;
    through.load(&http, 200, args.concurrency).await?;

    let per_round = (args.requests / args.rounds.max(1)).max(1);
    let (mut direct_ms, mut gateway_ms) = (Vec::new(), Vec::new());
    let (mut gateway_cpu, mut gateway_wall) = (0.0, 0.0);
    for _ in 0..args.rounds.max(1) {
        direct_ms.extend(direct.load(&http, per_round, args.concurrency).await?);
        let cpu_before = proc_stats::cpu_of(&[GATEWAY_COMM]);
        let started = Instant::now();
        gateway_ms.extend(through.load(&http, per_round, args.concurrency).await?);
        gateway_wall += started.elapsed().as_secs_f64();
        gateway_cpu += proc_stats::cpu_of(&[GATEWAY_COMM]) - cpu_before;
    }
    let (d50, d99) = (percentile(&direct_ms, 0.50), percentile(&direct_ms, 0.99));
    let (g50, g99) = (percentile(&gateway_ms, 0.50), percentile(&gateway_ms, 0.99));
    let replicas = proc_stats::pids_named(GATEWAY_COMM).len();
    println!(
        "gateway benchmark: {} reads of one crew run per path, {} in flight, {} rounds",
        gateway_ms.len(),
        args.concurrency,
        args.rounds
    );
    println!("{:<28} {:>10} {:>10}", "", "p50 ms", "p99 ms");
    println!("{:<28} {:>10.3} {:>10.3}", "crew directly", d50, d99);
    println!("{:<28} {:>10.3} {:>10.3}", "through the gateway", g50, g99);
    println!("{:<28} {:>10.3} {:>10.3}   (target: p50 <= 1 ms)", "added by the gateway", g50 - d50, g99 - d99);
    println!("{:<28} {:>10.2} {:>10.2}", "ratio gateway / direct", g50 / d50, g99 / d99);
    if gateway_cpu > 0.0 {
        println!(
            "gateway: {:.0} requests/s over {replicas} replicas, {:.0} requests per CPU-second (per core), {:.2} cores busy",
            gateway_ms.len() as f64 / gateway_wall,
            gateway_ms.len() as f64 / gateway_cpu,
            gateway_cpu / gateway_wall
        );
    } else {
        println!(
            "gateway CPU: no process named {GATEWAY_COMM} on this machine (a remote cluster?); requests per core not measured"
        );
    }
    Api::<Tenant>::all(client).delete(TENANT, &DeleteParams::default()).await.ok();
    Ok(())
}

/// One way to the run, with the caller's token for it.
struct Path {
    url: String,
    token: String,
}

impl Path {
    /// `count` reads, `concurrency` at once; the latency of each in milliseconds.
    async fn load(&self, http: &reqwest::Client, count: usize, concurrency: usize) -> anyhow::Result<Vec<f64>> {
        let results: Vec<anyhow::Result<f64>> = stream::iter(0..count)
            .map(|_| async move {
                let started = Instant::now();
                let response = http.get(&self.url).bearer_auth(&self.token).send().await?;
                let status = response.status();
                let _ = response.bytes().await?;
                if !status.is_success() {
                    bail!("{} answered {status}", self.url);
                }
                Ok(started.elapsed().as_secs_f64() * 1000.0)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }
}

/// The tenant, its model, a crew, and a caller that may read the crew's runs (the viewer role).
async fn setup(client: &Client, args: &Args) -> anyhow::Result<()> {
    let tenants: Api<Tenant> = Api::all(client.clone());
    if tenants.get_opt(TENANT).await?.is_some() {
        tenants.delete(TENANT, &DeleteParams::default()).await?;
        wait(TIMEOUT, "the old bench tenant to go", || async { Ok(tenants.get_opt(TENANT).await?.is_none()) }).await?;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        wait(TIMEOUT, "its namespace to go", || async { Ok(namespaces.get_opt(NS).await?.is_none()) }).await?;
    }
    let tenant: Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Tenant", "metadata": {"name": TENANT},
        "spec": {"displayName": "Gateway bench", "database": {"isolation": "Shared", "deletionPolicy": "Delete"}},
    }))?;
    tenants.create(&PostParams::default(), &tenant).await?;
    wait(TIMEOUT, "the bench tenant Ready", || async {
        Ok(tenants.get(TENANT).await?.status.is_some_and(|s| is_ready(&s.conditions)))
    })
    .await?;
    let create = PostParams::default();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-key", "namespace": NS},
        "stringData": {"apiKey": "bench"},
    }))?;
    Api::<Secret>::namespaced(client.clone(), NS).create(&create, &secret).await?;
    let integration: Integration = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "Integration", "metadata": {"name": "llm", "namespace": NS},
        "spec": {"type": "OpenAI", "endpoint": args.llm_url, "credentials": {"secretRef": {"name": "llm-key", "key": "apiKey"}}},
    }))?;
    Api::<Integration>::namespaced(client.clone(), NS).create(&create, &integration).await?;
    let crew: AgentCrew = serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1", "kind": "AgentCrew", "metadata": {"name": CREW, "namespace": NS},
        "spec": {"process": "Sequential", "model": {"integration": "llm", "name": args.llm_model, "maxTokens": 16},
                 "agents": [{"name": "writer", "template": "copywriting", "maxIterations": 1}]},
    }))?;
    let crews: Api<AgentCrew> = Api::namespaced(client.clone(), NS);
    crews.create(&create, &crew).await?;
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": CALLER, "namespace": NS},
    }))?;
    Api::<ServiceAccount>::namespaced(client.clone(), NS).create(&create, &account).await?;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": CALLER, "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "bizosaas-tenant-viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": CALLER, "namespace": NS}],
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), NS).create(&create, &binding).await?;
    // The tenant's policies admit no one outside the cluster; the direct path comes from this
    // machine, so the benchmark's own tenant lets it in (policies only add up).
    let from_host: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bench-from-host", "namespace": NS},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"ipBlock": {"cidr": format!("{}/32", args.node_ip)}}]}]},
    }))?;
    Api::<NetworkPolicy>::namespaced(client.clone(), NS).create(&create, &from_host).await?;
    wait(TIMEOUT, "the bench crew Ready", || async {
        Ok(crews.get(CREW).await?.status.is_some_and(|s| is_ready(&s.conditions)))
    })
    .await?;
    Ok(())
}

async fn token(client: &Client, audience: &str) -> anyhow::Result<String> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create_token_request(CALLER, &PostParams::default(), &request)
        .await?;
    Ok(issued.status.context("a TokenRequest answers with a status")?.token)
}

/// `http://<cluster IP>:<port>` of a Service, as this machine reaches it.
async fn service_url(client: &Client, namespace: &str, name: &str) -> anyhow::Result<String> {
    let service = Api::<Service>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("Service {namespace}/{name} (is the release installed with the gateway?)"))?;
    let spec = service.spec.context("a Service spec")?;
    let port = spec.ports.as_ref().and_then(|p| p.first()).map_or(80, |p| p.port);
    Ok(format!("http://{}:{port}", spec.cluster_ip.context("a cluster IP")?))
}

async fn wait<F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
