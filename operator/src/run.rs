//! `bizosaas-operator run`: connect, check the CRDs, serve the HTTP endpoints, take the
//! leader Lease when asked, run the controllers, and stop cleanly on SIGTERM or SIGINT.

use crate::http::{self, Shared};
use crate::telemetry::{self, LogFormat};
use anyhow::Context as _;
use bizosaas_controllers::kube_requests::CountRequests;
use bizosaas_controllers::lago::{ApiKey, LagoClient, LagoConfig};
use bizosaas_controllers::metrics::Metrics;
use bizosaas_controllers::postgres::Admin;
use bizosaas_controllers::tenant::plans::PlanCatalog;
use bizosaas_controllers::tenant::service_catalog::ServiceCatalog;
use bizosaas_controllers::vault::{Vault, VaultAuth, VaultConfig};
use bizosaas_controllers::watch_connections::WatchConnections;
use bizosaas_controllers::{Config, Context, agent_crew, gateway_database, integration, tenant, workflow};
use bizosaas_crds::Tenant;
use kube::Client;
use kube::api::{Api, ListParams};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// How long reconciles in flight may finish after SIGTERM (pods get 30 s by default).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Lease held by the active replica.
const LEASE_NAME: &str = "bizosaas-operator";

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Address of the /healthz, /readyz and /metrics endpoints.
    #[arg(long, env = "BIZOSAAS_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "BIZOSAAS_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Namespace the operator runs in; tenant workloads may talk to it.
    #[arg(long, env = "BIZOSAAS_PLATFORM_NAMESPACE", default_value = "bizosaas-system")]
    platform_namespace: String,
    /// Namespace of the ingress controller.
    #[arg(long, env = "BIZOSAAS_INGRESS_NAMESPACE", default_value = "ingress-nginx")]
    ingress_namespace: String,
    /// Namespace of the Prometheus that scrapes the agent runtimes: tenant NetworkPolicies
    /// let it reach the runtimes' port (the platform namespace always may).
    #[arg(long, env = "BIZOSAAS_SCRAPE_NAMESPACE")]
    scrape_namespace: Option<String>,
    /// Domain under which tenant services get their hosts.
    #[arg(long, env = "BIZOSAAS_BASE_DOMAIN", default_value = "bizosaas.local")]
    base_domain: String,
    /// `ingressClassName` of tenant Ingresses; the cluster's default IngressClass without it.
    #[arg(long, env = "BIZOSAAS_INGRESS_CLASS")]
    ingress_class: Option<String>,
    /// cert-manager ClusterIssuer for the certificate of each tenant host (the Ingress
    /// annotation `cert-manager.io/cluster-issuer`); without it `<service>-tls` is expected to
    /// be provided some other way.
    #[arg(long, env = "BIZOSAAS_INGRESS_CLUSTER_ISSUER")]
    ingress_cluster_issuer: Option<String>,
    /// YAML plan catalog; built-in defaults without it.
    #[arg(long, env = "BIZOSAAS_PLANS_FILE")]
    plans_file: Option<PathBuf>,
    /// YAML service catalog: image, port and probes of each business service. Built-in
    /// defaults (`bizosaas/<service>:<version>` on 8080) without it; with it, only the
    /// services it lists are offered.
    #[arg(long, env = "BIZOSAAS_SERVICES_FILE")]
    services_file: Option<PathBuf>,
    /// Admin connection URL of PostgreSQL. Without it tenants report DatabaseNotConfigured.
    #[arg(long, env = "BIZOSAAS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// PEM bundle of the CA that signed PostgreSQL's certificate, for `sslmode=verify-ca` or
    /// `verify-full` in the admin URL (the system's roots without it).
    #[arg(long, env = "BIZOSAAS_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
    /// `host:port` tenant workloads use to reach PostgreSQL, when it differs from the admin URL.
    #[arg(long, env = "BIZOSAAS_DATABASE_TENANT_HOST")]
    database_tenant_host: Option<String>,
    /// Database holding Shared tenants' rows.
    #[arg(long, env = "BIZOSAAS_PLATFORM_DATABASE", default_value = "bizosaas_platform")]
    platform_database: String,
    /// Image of the `bizosaas-agent` runtime that AgentCrews run.
    #[arg(long, env = "BIZOSAAS_AGENT_IMAGE", default_value = concat!("bizosaas/bizosaas-agent:", env!("CARGO_PKG_VERSION")))]
    agent_image: String,
    /// The operator's own ServiceAccount (`namespace/name`). Each tenant namespace binds it to
    /// `bizosaas-operator-tenant`; crews' runtimes admit it on their run API; without a token
    /// file the operator asks the TokenRequest API for its tokens.
    #[arg(long, env = "BIZOSAAS_OPERATOR_SERVICE_ACCOUNT")]
    operator_service_account: Option<String>,
    /// The gateway's ServiceAccount (`namespace/name`), which crews' runtimes admit on their
    /// run API besides the operator's.
    #[arg(long, env = "BIZOSAAS_GATEWAY_SERVICE_ACCOUNT")]
    gateway_service_account: Option<String>,
    /// The Secret (`namespace/name`) the operator keeps the gateway's database login in; the
    /// gateway appends its requests to tenants' audit logs with it. Without it the gateway's
    /// role exists but cannot log in.
    #[arg(long, env = "BIZOSAAS_GATEWAY_DATABASE_SECRET")]
    gateway_database_secret: Option<String>,
    /// Projected ServiceAccount token with the runtime audience (`bizosaas-agent`), sent to
    /// crews' run API; the kubelet rotates it.
    #[arg(long, env = "BIZOSAAS_RUNTIME_TOKEN_FILE")]
    runtime_token_file: Option<PathBuf>,
    /// OTLP/HTTP endpoint of the OpenTelemetry Collector the crews' runtimes send their traces
    /// to (their `OTEL_EXPORTER_OTLP_ENDPOINT`); without it they export none. The operator's
    /// own traces follow `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[arg(long, env = "BIZOSAAS_CREW_OTLP_ENDPOINT")]
    crew_otlp_endpoint: Option<String>,
    /// Lago's API (`https://api.getlago.com`, or a self-hosted Lago's API URL, without
    /// `/api/v1`): the usage of Tenants with `billing.lago` is sent there as usage events.
    /// Without it those Tenants report UsageExported=False (ExportNotConfigured).
    #[arg(long, env = "BIZOSAAS_LAGO_URL")]
    lago_url: Option<String>,
    /// Lago API key, sent as a Bearer token; required with --lago-url.
    #[arg(long, env = "BIZOSAAS_LAGO_API_KEY", hide_env_values = true)]
    lago_api_key: Option<String>,
    /// Code of the Lago billable metric the usage events count towards.
    #[arg(long, env = "BIZOSAAS_LAGO_METRIC_CODE", default_value = "llm_tokens")]
    lago_metric_code: String,
    /// Take the `bizosaas-operator` Lease before reconciling (needed with more than one replica).
    #[arg(long, env = "BIZOSAAS_LEADER_ELECTION", action = clap::ArgAction::Set, default_value_t = false)]
    leader_election: bool,
    /// Seconds a leader's Lease lasts without renewal: how long a standby waits after the
    /// leader died before it takes over.
    #[arg(long, env = "BIZOSAAS_LEASE_DURATION", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    lease_duration: u64,
    /// Address of Vault or OpenBao; without it Vault-backed tenants and credentials report
    /// VaultNotConfigured.
    #[arg(long, env = "BIZOSAAS_VAULT_ADDR")]
    vault_addr: Option<String>,
    /// How the operator logs in to Vault.
    #[arg(long, env = "BIZOSAAS_VAULT_AUTH", value_enum, default_value = "token")]
    vault_auth: VaultAuthMethod,
    /// Vault token, for `--vault-auth token`.
    #[arg(long, env = "BIZOSAAS_VAULT_TOKEN", hide_env_values = true)]
    vault_token: Option<String>,
    /// Kubernetes-auth role of the operator, for `--vault-auth kubernetes`.
    #[arg(long, env = "BIZOSAAS_VAULT_ROLE", default_value = "bizosaas-operator")]
    vault_role: String,
    /// Service-account token file used for Kubernetes auth.
    #[arg(
        long,
        env = "BIZOSAAS_VAULT_JWT_PATH",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    vault_jwt_path: String,
    /// Mount of the KV v2 engine holding `tenants/<name>/...`.
    #[arg(long, env = "BIZOSAAS_VAULT_KV_MOUNT", default_value = "secret")]
    vault_kv_mount: String,
    /// Mount of the Kubernetes auth method where tenant roles are created.
    #[arg(long, env = "BIZOSAAS_VAULT_KUBERNETES_MOUNT", default_value = "kubernetes")]
    vault_kubernetes_mount: String,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "bizosaas-system")]
    pod_namespace: String,
    /// Identity in the leader Lease.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum VaultAuthMethod {
    Token,
    Kubernetes,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // Flushes the remaining spans when `run` returns.
    let _telemetry = telemetry::init(args.log_format);
    // One TLS provider for every client (kube, Vault, health checks): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = config(&args)?;
    let kube_config =
        kube::Config::infer().await.context("no Kubernetes configuration found: set KUBECONFIG or run in a pod")?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(
        &mut registry,
        &[
            tenant::CONTROLLER,
            integration::CONTROLLER,
            agent_crew::CONTROLLER,
            workflow::scheduler::CONTROLLER,
            workflow::run::CONTROLLER,
        ],
    ));
    let counting = CountRequests(metrics.clone());
    // One HTTP/2 connection carries every request and the cluster-wide watches: a burst of
    // reconciles opens no new connections (no TLS handshakes, no buffers per connection).
    let client = bizosaas_controllers::watch_connections::connect(&kube_config, Some(&counting))
        .context("cannot build the Kubernetes client")?;
    let watch_connections = WatchConnections::new(kube_config, Some(counting))
        .context("cannot build the client for the tenant-namespace watches")?;
    let shared = Arc::new(Shared { registry, ready: false.into() });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    info!(address = %args.listen, "serving /healthz, /readyz and /metrics");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(stop_on_signal(stop_tx.clone()));
    let http = tokio::spawn({
        let mut stop = stop_rx.clone();
        axum::serve(listener, http::router(shared.clone()))
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .into_future()
    });

    Api::<Tenant>::all(client.clone()).list(&ListParams::default().limit(1)).await.context(
        "cannot list Tenants: are the CRDs installed? (`bizosaas-operator crd | kubectl apply --server-side -f -`)",
    )?;
    let postgres = match &args.database_url {
        Some(url) => {
            let mut admin = Admin::new(url, args.database_tenant_host.as_deref(), &args.platform_database)?;
            if let Some(ca) = &args.database_ca_file {
                admin = admin.with_ca_file(ca)?;
            }
            if let Err(e) = admin.ping().await {
                warn!(error = %e, "PostgreSQL is not reachable yet; tenants will report it until it is");
            }
            Some(admin)
        }
        None => {
            warn!("no --database-url: tenants will report DatabaseNotConfigured");
            None
        }
    };
    let vault = match &args.vault_addr {
        Some(address) => Some(Arc::new(connect_vault(&args, address).await?)),
        None => None,
    };
    shared.ready.store(true, Ordering::Relaxed);

    if args.leader_election {
        wait_for_leadership(&client, &args, stop_tx.clone(), stop_rx.clone()).await?;
    }
    // Only the replica that runs the controllers reports itself as the leader.
    metrics.leader.set(i64::from(!*stop_rx.borrow()));
    if !*stop_rx.borrow() {
        info!("controllers starting");
        let _gateway_login = match (&postgres, args.gateway_database_secret.as_deref().filter(|s| !s.is_empty())) {
            (Some(admin), Some(secret)) => {
                let (namespace, name) =
                    bizosaas_controllers::runtime_auth::service_account(secret).with_context(|| {
                        format!("BIZOSAAS_GATEWAY_DATABASE_SECRET must be namespace/name, not {secret:?}")
                    })?;
                Some(gateway_database::spawn(client.clone(), admin.clone(), namespace, name))
            }
            _ => None,
        };
        let ctx = Arc::new(Context::new(client, config, metrics, postgres, vault, watch_connections));
        let stopped = |mut stop: watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let controllers = async {
            tokio::join!(
                tenant::run(ctx.clone(), stopped(stop_rx.clone())),
                integration::run(ctx.clone(), stopped(stop_rx.clone())),
                agent_crew::run(ctx.clone(), stopped(stop_rx.clone())),
                workflow::scheduler::run(ctx.clone(), stopped(stop_rx.clone())),
                workflow::run::run(ctx, stopped(stop_rx.clone())),
            )
        };
        // Reconciles in flight get a grace period after a stop; the process exits regardless.
        let grace = async {
            stopped(stop_rx.clone()).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            _ = controllers => {}
            _ = grace => warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running after the grace period; stopping anyway"),
        }
    }
    let _ = stop_tx.send(true);
    // Scrapers keep connections open; do not let them hold the shutdown up for long.
    match tokio::time::timeout(std::time::Duration::from_secs(5), http).await {
        Ok(served) => served??,
        Err(_) => warn!("HTTP connections still open after 5s; closing them"),
    }
    info!("stopped");
    Ok(())
}

fn config(args: &RunArgs) -> anyhow::Result<Config> {
    let plans = match &args.plans_file {
        Some(path) => PlanCatalog::from_yaml(&read(path)?).with_context(|| format!("loading {}", path.display()))?,
        None => PlanCatalog::default(),
    };
    let services = match &args.services_file {
        Some(path) => ServiceCatalog::from_yaml(&read(path)?).with_context(|| format!("loading {}", path.display()))?,
        None => ServiceCatalog::default(),
    };
    match &args.operator_service_account {
        Some(account) => anyhow::ensure!(
            bizosaas_controllers::runtime_auth::service_account(account).is_some(),
            "BIZOSAAS_OPERATOR_SERVICE_ACCOUNT must be namespace/name, not {account:?}"
        ),
        None => warn!("no BIZOSAAS_OPERATOR_SERVICE_ACCOUNT: crews refuse the operator, so agentTask steps fail"),
    }
    if let Some(account) = &args.gateway_service_account {
        anyhow::ensure!(
            bizosaas_controllers::runtime_auth::service_account(account).is_some(),
            "BIZOSAAS_GATEWAY_SERVICE_ACCOUNT must be namespace/name, not {account:?}"
        );
    }
    let missing = services.missing();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        warn!(services = %names.join(", "), "not in the service catalog: Tenants naming them report ServiceNotInCatalog");
    }
    Ok(Config {
        platform_namespace: args.platform_namespace.clone(),
        ingress_namespace: args.ingress_namespace.clone(),
        scrape_namespace: args.scrape_namespace.clone().filter(|ns| !ns.is_empty()),
        base_domain: args.base_domain.clone(),
        ingress_class: args.ingress_class.clone(),
        ingress_cluster_issuer: args.ingress_cluster_issuer.clone(),
        plans,
        services,
        database_tenant_host: args.database_tenant_host.clone(),
        vault_kv_mount: args.vault_kv_mount.clone(),
        agent_image: args.agent_image.clone(),
        operator_service_account: args.operator_service_account.clone(),
        gateway_service_account: args.gateway_service_account.clone().filter(|a| !a.is_empty()),
        runtime_token_file: args.runtime_token_file.clone(),
        crew_otlp_endpoint: args.crew_otlp_endpoint.clone().filter(|e| !e.trim().is_empty()),
        lago: lago(args)?,
    })
}

/// Lago's settings, checked now so that a wrong URL or key stops the start instead of every
/// export.
fn lago(args: &RunArgs) -> anyhow::Result<Option<LagoConfig>> {
    let Some(url) = args.lago_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let key = args.lago_api_key.as_deref().map(str::trim).unwrap_or_default();
    anyhow::ensure!(!key.is_empty(), "--lago-url needs BIZOSAAS_LAGO_API_KEY");
    let code = args.lago_metric_code.trim();
    anyhow::ensure!(
        !code.is_empty() && code.len() <= 255 && !code.chars().any(char::is_whitespace),
        "--lago-metric-code must be a billable metric's code, not {code:?}"
    );
    let config = LagoConfig { url: url.to_string(), api_key: ApiKey::new(key), metric_code: code.to_string() };
    LagoClient::new(&config.url, &config.api_key)?;
    info!(url, metric = code, "exporting usage to Lago");
    Ok(Some(config))
}

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

async fn connect_vault(args: &RunArgs, address: &str) -> anyhow::Result<Vault> {
    let auth = match args.vault_auth {
        VaultAuthMethod::Token => {
            // A token read from a file or a Secret often ends in a newline, which is not valid
            // in a header.
            let token = args.vault_token.as_deref().map(str::trim).unwrap_or_default();
            anyhow::ensure!(!token.is_empty(), "--vault-auth token needs BIZOSAAS_VAULT_TOKEN");
            anyhow::ensure!(
                token.bytes().all(|b| b.is_ascii_graphic()),
                "BIZOSAAS_VAULT_TOKEN holds characters a token cannot have"
            );
            VaultAuth::Token(token.to_string())
        }
        VaultAuthMethod::Kubernetes => {
            VaultAuth::Kubernetes { role: args.vault_role.clone(), jwt_path: args.vault_jwt_path.clone() }
        }
    };
    let config = VaultConfig {
        address: address.to_string(),
        auth,
        kv_mount: args.vault_kv_mount.clone(),
        kubernetes_mount: args.vault_kubernetes_mount.clone(),
    };
    let vault = Vault::new(config)?;
    match vault.ping().await {
        Ok(()) => info!(address, "connected to Vault"),
        Err(e) => warn!(address, error = %e, "Vault is not usable yet; Vault-backed resources will report it"),
    }
    Ok(vault)
}

async fn stop_on_signal(stop: watch::Sender<bool>) {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received, shutting down"),
    }
    let _ = stop.send(true);
}

/// Blocks until this replica holds the Lease (or a stop is asked for); losing the Lease later
/// stops the operator so that its pod restarts as a follower.
async fn wait_for_leadership(
    client: &Client,
    args: &RunArgs,
    stop_tx: watch::Sender<bool>,
    mut stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut builder = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(&args.pod_namespace)
        .with_duration(args.lease_duration)
        .with_grace((args.lease_duration / 3).max(1));
    if let Some(name) = &args.pod_name {
        builder = builder.with_identity(name);
    }
    let (mut leader, _task) = builder.build().await?.watch().await;
    info!(lease = LEASE_NAME, namespace = %args.pod_namespace, "waiting for leadership");
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => changed.context("leader election stopped")?,
            _ = stop_rx.wait_for(|s| *s) => return Ok(()),
        }
    }
    info!("leadership acquired");
    tokio::spawn(async move {
        while leader.changed().await.is_ok() {
            if !*leader.borrow() {
                error!("leadership lost, stopping");
                let _ = stop_tx.send(true);
                return;
            }
        }
    });
    Ok(())
}
