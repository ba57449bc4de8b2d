//! Tenant provisioning: the operator against a bare client.

use crate::operator_process::OperatorProcess;
use crate::proc_stats;
use crate::stats::percentile;
use anyhow::Context as _;
use bizosaas_controllers::Config;
use bizosaas_controllers::egress::resolve::Resolver;
use bizosaas_controllers::egress::{ResolvedEndpoint, Target};
use bizosaas_controllers::postgres::{Admin, TenantNames};
use bizosaas_controllers::tenant::{build, quota_enforced};
use bizosaas_crds::Tenant;
use bizosaas_crds::common::is_ready;
use bizosaas_crds::tenant::{DatabaseIsolation, DeletionPolicy};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BENCH_LABEL: &str = "bizosaas.io/bench";
const PLATFORM_DATABASE: &str = "bizosaas_platform_bench";

#[derive(clap::Args)]
pub struct Args {
    /// Tenants to provision in each half of the run.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Tenants in flight at once, for both halves.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Database isolation of the benchmark tenants.
    #[arg(long, value_parser = ["Dedicated", "Shared"], default_value = "Shared")]
    isolation: String,
    /// PostgreSQL admin URL, as given to the operator.
    #[arg(long, env = "BIZOSAAS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// The operator binary; defaults to the one next to this benchmark.
    #[arg(long)]
    operator_bin: Option<PathBuf>,
}

fn isolation(args: &Args) -> DatabaseIsolation {
    if args.isolation == "Dedicated" { DatabaseIsolation::Dedicated } else { DatabaseIsolation::Shared }
}

/// A Tenant object for the benchmark; `uid` is filled in for the bare half, which never
/// sends it to the API server.
fn tenant(name: &str, args: &Args) -> Tenant {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "bizosaas.io/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name, "labels": {BENCH_LABEL: "operator"}, "uid": "00000000-0000-4000-8000-000000000000"},
        "spec": {"displayName": name, "owners": [{"kind": "User", "name": "bench@bizosaas.example"}],
                 "database": {"isolation": args.isolation, "deletionPolicy": "Delete"}},
    }))
    .expect("benchmark tenant is valid")
}

/// Name of the `i`-th tenant of a half (`bare` or `op`).
fn tenant_name(half: &str, i: usize) -> String {
    format!("bench-{half}-{i}")
}

#[derive(Default)]
struct Half {
    seconds: f64,
    latencies: Vec<f64>,
    /// From a tenant's start until the quota controller has recorded its quota, which the
    /// operator's Ready waits for; the bare half only.
    until_quota_recorded: Vec<f64>,
    writes: f64,
    /// Every request to the API server, reads and writes.
    requests: f64,
    reads: f64,
    reconciles: f64,
    /// Requests by verb and resource (`get secrets`), the operator half only.
    by_resource: BTreeMap<String, f64>,
    peak_rss_mib: f64,
    cpu_seconds: f64,
    control_plane_cpu_seconds: f64,
}

impl Half {
    fn per_second(&self, count: usize) -> f64 {
        count as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies, p)
    }
}

/// When the quota controller recorded each bare tenant's quota, from a watch that runs beside
/// the bare half without slowing it.
struct QuotasRecorded {
    started: Mutex<BTreeMap<String, Instant>>,
    recorded: Arc<Mutex<BTreeMap<String, Instant>>>,
    watch: tokio::task::JoinHandle<()>,
}

impl QuotasRecorded {
    /// Starts the watch and returns once its first list is done, so no quota is seen late.
    async fn watch(client: &Client, args: &Args) -> anyhow::Result<Self> {
        let desired = build::children(&tenant("bench-probe", args), &Config::default())?.resource_quota;
        let recorded: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
        let api: Api<ResourceQuota> = Api::all(client.clone());
        let config = watcher::Config::default().labels(&format!("{BENCH_LABEL}=bare"));
        let (listed, is_listed) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn({
            let recorded = recorded.clone();
            async move {
                let mut listed = Some(listed);
                let stream = watcher(api, config).default_backoff();
                futures::pin_mut!(stream);
                while let Some(Ok(event)) = stream.next().await {
                    let quota = match event {
                        watcher::Event::Apply(quota) | watcher::Event::InitApply(quota) => quota,
                        watcher::Event::InitDone => {
                            listed.take().map(|l| l.send(()));
                            continue;
                        }
                        _ => continue,
                    };
                    if quota_enforced(&quota, &desired) {
                        let at = Instant::now();
                        recorded.lock().unwrap().entry(quota.namespace().unwrap_or_default()).or_insert(at);
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), is_listed).await??;
        Ok(Self { started: Mutex::default(), recorded, watch })
    }

    fn started(&self, namespace: &str, at: Instant) {
        self.started.lock().unwrap().insert(namespace.to_string(), at);
    }

    /// Each tenant's time from its start to its quota recorded, once all `count` are (or 30 s
    /// have passed: the ones missing are left out, and say so).
    async fn latencies(&self, count: usize) -> Vec<f64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.recorded.lock().unwrap().len() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.watch.abort();
        let (started, recorded) = (self.started.lock().unwrap(), self.recorded.lock().unwrap());
        if recorded.len() < count {
            eprintln!("{} of {count} bare quotas were not recorded within 30 s", count - recorded.len());
        }
        started
            .iter()
            .filter_map(|(ns, at)| Some(recorded.get(ns)?.saturating_duration_since(*at).as_secs_f64()))
            .collect()
    }
}

/// How idle the machine must be before a half starts, and how long that is waited for.
const SETTLED: f64 = 0.10;
const SETTLE_LIMIT: Duration = Duration::from_secs(180);

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::try_default().await.context("no cluster: set KUBECONFIG (./dev bench does)")?;
    let admin = Admin::new(&args.database_url, None, PLATFORM_DATABASE)?;
    admin.ping().await?;
    cleanup(&client, &admin, &args).await?;
    namespaces_gone(&client).await?;
    quota_controller_counts_crds(&client, &args).await?;
    proc_stats::settle(SETTLED, SETTLE_LIMIT).await;

    eprintln!("bare client: provisioning {} tenants, {} at a time", args.count, args.concurrency);
    let bare = bare_client(&client, &admin, &args).await?;
    // The operator starts on a cluster as empty as the bare client's: what the cluster does
    // per object (the network policy enforcer's rule sync, above all) grows with the objects
    // already there, and would otherwise count against whichever half runs second.
    cleanup(&client, &admin, &args).await?;
    namespaces_gone(&client).await?;
    proc_stats::settle(SETTLED, SETTLE_LIMIT).await;
    eprintln!("operator: provisioning {} tenants, {} at a time", args.count, args.concurrency);
    let (operator, idle_writes, minimum) = through_operator(&client, &admin, &args).await?;

    let n = args.count;
    println!("tenant provisioning: {n} tenants, concurrency {}, isolation {}", args.concurrency, args.isolation);
    println!("{:<34} {:>12} {:>12} {:>8}", "figure", "operator", "bare client", "ratio");
    let row = |name: &str, op: f64, base: f64| {
        println!("{name:<34} {op:>12.2} {base:>12.2} {:>8.2}", op / base);
    };
    row("tenants per second", operator.per_second(n), bare.per_second(n));
    row("time to Ready p50 (s)", operator.percentile(0.5), bare.percentile(0.5));
    row("time to Ready p99 (s)", operator.percentile(0.99), bare.percentile(0.99));
    row(
        "  bare until its quota is recorded p50",
        operator.percentile(0.5),
        percentile(&bare.until_quota_recorded, 0.5),
    );
    row("API writes per tenant", operator.writes / n as f64, bare.writes / n as f64);
    row("  against the minimum", operator.writes / n as f64, minimum);
    row("API requests per tenant", operator.requests / n as f64, bare.requests / n as f64);
    row("  of which reads (get, list)", operator.reads / n as f64, bare.reads / n as f64);
    println!("{:<34} {:>12.2} {:>12} {:>8}", "reconciles per tenant", operator.reconciles / n as f64, "-", "-");
    println!("{:<34} {:>12} {:>12} {:>8}", "writes during an idle resync", idle_writes, 0, "-");
    row("peak RSS (MiB)", operator.peak_rss_mib, bare.peak_rss_mib);
    row("client CPU (s)", operator.cpu_seconds, bare.cpu_seconds);
    println!(
        "{:<34} {:>11.1}% {:>11.1}% {:>8}",
        "client CPU / API server+etcd CPU",
        100.0 * operator.cpu_seconds / operator.control_plane_cpu_seconds,
        100.0 * bare.cpu_seconds / bare.control_plane_cpu_seconds,
        "-"
    );
    println!(
        "minimum writes per tenant = one create per child the builders produce ({}, the operator's own \
         RoleBinding among them) + the finalizer + one status write",
        minimum - 2.0
    );
    println!("operator requests per tenant, by verb and resource (watches excluded):");
    for (request, count) in &operator.by_resource {
        println!("  {request:<40} {:>8.2}", count / n as f64);
    }
    cleanup(&client, &admin, &args).await
}

/// The bare half: a plain client creates what the builders produce, with the same
/// concurrency, plus the same database provisioning.
async fn bare_client(client: &Client, admin: &Admin, args: &Args) -> anyhow::Result<Half> {
    let writes = Arc::new(Mutex::new(0.0));
    let config = Config::default();
    let cpu_before = proc_stats::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let cp_before = proc_stats::cpu_of(&["kube-apiserver", "etcd"]);
    let recorded = QuotasRecorded::watch(client, args).await?;
    let started = Instant::now();
    let latencies: Vec<f64> = stream::iter(0..args.count)
        .map(|i| {
            let (client, writes, config, recorded) = (client.clone(), writes.clone(), config.clone(), &recorded);
            async move {
                let t0 = Instant::now();
                let name = tenant_name("bare", i);
                recorded.started(&build::namespace_name(&name), t0);
                let t = tenant(&name, args);
                let children = build::children(&t, &config)?;
                let owner = build::Owner::of(&t)?;
                let ns = owner.namespace.clone();
                let mut n = 0.0;
                create(&Api::<Namespace>::all(client.clone()), bare(children.namespace)).await?;
                create(&Api::<ResourceQuota>::namespaced(client.clone(), &ns), bare(children.resource_quota)).await?;
                create(&Api::<LimitRange>::namespaced(client.clone(), &ns), bare(children.limit_range)).await?;
                n += 3.0;
                let database = database_policy(&client, admin, &owner).await?;
                for p in children.network_policies.into_iter().chain(database) {
                    create(&Api::<NetworkPolicy>::namespaced(client.clone(), &ns), bare(p)).await?;
                    n += 1.0;
                }
                create(&Api::<ServiceAccount>::namespaced(client.clone(), &ns), bare(children.service_account)).await?;
                n += 1.0;
                for rb in children.role_bindings {
                    create(&Api::<RoleBinding>::namespaced(client.clone(), &ns), bare(rb)).await?;
                    n += 1.0;
                }
                let creds = admin.ensure_tenant(&TenantNames::new(&name)?, isolation(args), None).await?;
                create(&Api::<Secret>::namespaced(client.clone(), &ns), bare(build::database_secret(&owner, &creds)))
                    .await?;
                n += 1.0;
                *writes.lock().unwrap() += n;
                anyhow::Ok(t0.elapsed().as_secs_f64())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let writes = *writes.lock().unwrap();
    let until_quota_recorded = recorded.latencies(args.count).await;
    Ok(Half {
        seconds,
        latencies,
        until_quota_recorded,
        writes,
        requests: writes,
        reads: 0.0,
        reconciles: 0.0,
        by_resource: BTreeMap::new(),
        peak_rss_mib: proc_stats::peak_rss_mib(std::process::id()).unwrap_or(f64::NAN),
        cpu_seconds: proc_stats::cpu_seconds(std::process::id()).unwrap_or(0.0) - cpu_before,
        control_plane_cpu_seconds: proc_stats::cpu_of(&["kube-apiserver", "etcd"]) - cp_before,
    })
}

/// `allow-database` as the operator builds it for the benchmark's database.
async fn database_policy(
    client: &Client,
    admin: &Admin,
    owner: &build::Owner,
) -> anyhow::Result<Option<NetworkPolicy>> {
    let (host, port) = admin.tenant_address();
    let target = Target { host: host.to_string(), port };
    let sockets = Resolver::new(client.clone()).resolve(&target, None).await?;
    Ok(build::database_policy(owner, &ResolvedEndpoint { name: target.to_string(), sockets }).0)
}

/// Strips what ties an object to a Tenant, so neither the operator nor the garbage
/// collector acts on the bare half.
fn bare<K: Resource>(mut obj: K) -> K {
    let meta: &mut ObjectMeta = obj.meta_mut();
    meta.owner_references = None;
    meta.labels = Some(BTreeMap::from([(BENCH_LABEL.to_string(), "bare".to_string())]));
    obj
}

async fn create<K>(api: &Api<K>, obj: K) -> anyhow::Result<()>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    api.create(&PostParams::default(), &obj).await?;
    Ok(())
}

/// The operator half: Tenant objects reconciled by the operator binary.
async fn through_operator(client: &Client, admin: &Admin, args: &Args) -> anyhow::Result<(Half, f64, f64)> {
    let operator = OperatorProcess::start(
        args.operator_bin.as_ref(),
        &args.database_url,
        &["--platform-database", PLATFORM_DATABASE],
    )
    .await?;
    let pid = operator.pid;
    let metrics = &operator;

    let api: Api<Tenant> = Api::all(client.clone());
    let ready_at: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    // Wakes the tenants' waits when one more is Ready, so none is seen Ready late.
    let became_ready = Arc::new(tokio::sync::Notify::new());
    let watch = {
        let (api, ready_at, became_ready) = (api.clone(), ready_at.clone(), became_ready.clone());
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default().labels(&format!("{BENCH_LABEL}=operator")));
            futures::pin_mut!(stream);
            while let Some(Ok(event)) = stream.next().await {
                if let watcher::Event::Apply(t) | watcher::Event::InitApply(t) = event
                    && t.status.as_ref().is_some_and(|s| is_ready(&s.conditions))
                {
                    ready_at.lock().unwrap().entry(t.name_any()).or_insert_with(Instant::now);
                    became_ready.notify_waiters();
                }
            }
        })
    };

    let writes_before = metrics.sample("bizosaas_api_writes_total").await.unwrap_or(0.0);
    let requests = || metrics.sample("bizosaas_kube_requests_total");
    let reads = || async {
        let get = metrics.sample_where("bizosaas_kube_requests_total", &[r#"verb="get""#]).await.unwrap_or(0.0);
        get + metrics.sample_where("bizosaas_kube_requests_total", &[r#"verb="list""#]).await.unwrap_or(0.0)
    };
    let reconciles = || metrics.sample("bizosaas_reconciles_total");
    let by_resource_before = requests_by_resource(metrics).await;
    let (requests_before, reads_before) = (requests().await.unwrap_or(0.0), reads().await);
    let reconciles_before = reconciles().await.unwrap_or(0.0);
    let cpu_before = proc_stats::cpu_seconds(pid).unwrap_or(0.0);
    let cp_before = proc_stats::cpu_of(&["kube-apiserver", "etcd"]);
    let started = Instant::now();
    // The same concurrency as the bare half: at most `concurrency` tenants in flight, each
    // from its create until it is Ready.
    let latencies: Vec<f64> = stream::iter(0..args.count)
        .map(|i| {
            let (api, ready_at, became_ready) = (api.clone(), ready_at.clone(), became_ready.clone());
            async move {
                let name = tenant_name("op", i);
                let mut t = tenant(&name, args);
                t.metadata.uid = None;
                let at = Instant::now();
                api.create(&PostParams::default(), &t).await?;
                let deadline = at + Duration::from_secs(120);
                loop {
                    let woken = became_ready.notified();
                    futures::pin_mut!(woken);
                    woken.as_mut().enable();
                    if let Some(ready) = ready_at.lock().unwrap().get(&name) {
                        return anyhow::Ok(ready.duration_since(at).as_secs_f64());
                    }
                    anyhow::ensure!(Instant::now() < deadline, "{name} did not become Ready");
                    let _ = tokio::time::timeout(Duration::from_secs(1), woken).await;
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    // Let the last status writes and watch events settle before reading the counters.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = metrics.sample("bizosaas_api_writes_total").await.unwrap_or(0.0) - writes_before;
    let requests = requests().await.unwrap_or(0.0) - requests_before;
    let reads = reads().await - reads_before;
    let reconciles = reconciles().await.unwrap_or(0.0) - reconciles_before;
    let mut by_resource = requests_by_resource(metrics).await;
    for (key, count) in &mut by_resource {
        *count -= by_resource_before.get(key).copied().unwrap_or(0.0);
    }
    by_resource.retain(|_, count| *count > 0.0);
    let cpu_seconds = proc_stats::cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let control_plane_cpu_seconds = proc_stats::cpu_of(&["kube-apiserver", "etcd"]) - cp_before;

    // Idle resync: touch every Tenant (a metadata change, no spec change) and count what the
    // operator writes while reconciling them again.
    let idle_reconciles_before = metrics.sample("bizosaas_reconciles_total").await.unwrap_or(0.0);
    let writes_idle_before = metrics.sample("bizosaas_api_writes_total").await.unwrap_or(0.0);
    for i in 0..args.count {
        let patch = serde_json::json!({"metadata": {"annotations": {"bizosaas.io/bench-touch": "1"}}});
        api.patch(&tenant_name("op", i), &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    // Two minutes, plus a second per ten tenants: a large run's resync queues behind itself.
    let deadline = Instant::now() + Duration::from_secs(120 + args.count as u64 / 10);
    while metrics.sample("bizosaas_reconciles_total").await.unwrap_or(0.0) < idle_reconciles_before + args.count as f64
    {
        anyhow::ensure!(Instant::now() < deadline, "the touched tenants were not reconciled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle_writes = metrics.sample("bizosaas_api_writes_total").await.unwrap_or(0.0) - writes_idle_before;
    let peak_rss_mib = proc_stats::peak_rss_mib(pid).unwrap_or(f64::NAN);

    // The minimum: one create per child the builders produce (the RoleBinding that lets the
    // operator write Secrets there included: the bare client needs none), plus the finalizer
    // that holds the Tenant until its data is retired, plus one status write.
    let probe = tenant("bench-probe", args);
    let c = build::children(&probe, &Config::default())?;
    let database = database_policy(client, admin, &build::Owner::of(&probe)?).await?;
    let operator_binding = 1;
    let children =
        4 + c.network_policies.len() + usize::from(database.is_some()) + c.role_bindings.len() + operator_binding + 1;
    watch.abort();
    // Delete while the operator runs, so the finalizer path is the real one.
    cleanup(client, admin, args).await?;
    operator.stop().await;
    let half = Half {
        seconds,
        latencies,
        until_quota_recorded: Vec::new(),
        writes,
        requests,
        reads,
        reconciles,
        by_resource,
        peak_rss_mib,
        cpu_seconds,
        control_plane_cpu_seconds,
    };
    let finalizer_and_status = 2.0;
    Ok((half, idle_writes, children as f64 + finalizer_and_status))
}

/// The operator's requests by verb and resource so far, summed over status codes; watches
/// are left out, as they are held open rather than sent per tenant.
async fn requests_by_resource(operator: &OperatorProcess) -> BTreeMap<String, f64> {
    let label = |labels: &str, name: &str| {
        let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
        labels[start..].split('"').next().map(str::to_string)
    };
    let mut sums = BTreeMap::new();
    for (labels, count) in operator.series("bizosaas_kube_requests_total").await {
        let (Some(verb), Some(resource)) = (label(&labels, "verb"), label(&labels, "resource")) else { continue };
        if verb != "watch" {
            *sums.entry(format!("{verb} {resource}")).or_insert(0.0) += count;
        }
    }
    sums
}

/// Waits until the cluster's quota controller counts the BizOSaaS kinds, as it does on any
/// cluster that has run for a minute. It discovers CRDs installed a moment ago only at its next
/// discovery pass (every 30 s), and records no quota that counts them before that: the
/// operator's Tenants would wait for it (Ready needs an enforced quota), the bare client's not.
async fn quota_controller_counts_crds(client: &Client, args: &Args) -> anyhow::Result<()> {
    let name = format!("bench-quota-probe-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some(name.clone());
    namespaces.create(&PostParams::default(), &bare(namespace)).await?;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &name);
    let mut quota = build::children(&tenant("bench-probe", args), &Config::default())?.resource_quota;
    quota.metadata.namespace = Some(name.clone());
    let quota = quotas.create(&PostParams::default(), &bare(quota)).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let counted = loop {
        // What the operator waits for before a Tenant is Ready.
        if quota_enforced(&quotas.get(&quota.name_any()).await?, &quota) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    namespaces.delete(&name, &DeleteParams::background()).await?;
    anyhow::ensure!(counted, "the cluster's quota controller did not record quota {} within 120 s", quota.name_any());
    Ok(())
}

/// Waits until no namespace of an earlier run is left (the names are reused), however many
/// the namespace controller still has to empty.
async fn namespaces_gone(client: &Client) -> anyhow::Result<()> {
    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let left = namespaces.list_metadata(&ListParams::default()).await?;
        let left = left.items.iter().filter(|ns| ns.name_any().starts_with("tenant-bench-")).count();
        if left == 0 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{left} namespaces of an earlier run are still being deleted");
        eprintln!("waiting for {left} namespaces of an earlier run to be deleted");
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Removes the benchmark's tenants, namespaces and database objects of both halves. Tenants
/// that no operator finalizes (leftovers of an interrupted run) lose their finalizer and have
/// their database objects dropped here.
async fn cleanup(client: &Client, admin: &Admin, args: &Args) -> anyhow::Result<()> {
    let tenants: Api<Tenant> = Api::all(client.clone());
    let lp = ListParams::default().labels(&format!("{BENCH_LABEL}=operator"));
    for t in tenants.list(&lp).await? {
        let _ = tenants.delete(&t.name_any(), &DeleteParams::default()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30 + args.count as u64 / 2);
    while !tenants.list(&lp).await?.items.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for t in tenants.list(&lp).await? {
        let patch = serde_json::json!({"metadata": {"finalizers": null}});
        tenants.patch(&t.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
        admin.retire_tenant(&TenantNames::new(&t.name_any())?, isolation(args), DeletionPolicy::Delete).await?;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let bare_lp = ListParams::default().labels(&format!("{BENCH_LABEL}=bare"));
    for ns in namespaces.list(&bare_lp).await? {
        let _ = namespaces.delete(&ns.name_any(), &DeleteParams::background()).await;
    }
    for i in 0..args.count {
        let names = TenantNames::new(&tenant_name("bare", i))?;
        admin.retire_tenant(&names, isolation(args), DeletionPolicy::Delete).await?;
    }
    Ok(())
}
