use anyhow::Context as _;
use bizosaas_controllers::runtime_auth::{RuntimeToken, TokenSource};
use bizosaas_gateway::api::{self, AppState};
use bizosaas_gateway::audit::AuditLog;
use bizosaas_gateway::authn::oidc::{OidcSettings, OidcVerifier};
use bizosaas_gateway::authn::{Authenticator, service_account};
use bizosaas_gateway::authz::Authorizer;
use bizosaas_gateway::crews::CrewClient;
use bizosaas_gateway::metrics::Metrics;
use bizosaas_gateway::rate_limit::RateLimiter;
use clap::Parser;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The BizOSaaS gateway.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address of the API, the probes and /metrics.
    #[arg(long, env = "BIZOSAAS_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// OIDC issuer URL (`iss` exactly); without it only ServiceAccount tokens are accepted.
    #[arg(long, env = "BIZOSAAS_OIDC_ISSUER")]
    oidc_issuer: Option<String>,
    /// Audiences (client ids) an OIDC token's `aud` must hold one of, comma-separated.
    #[arg(long, env = "BIZOSAAS_OIDC_AUDIENCES", value_delimiter = ',', default_value = "bizosaas")]
    oidc_audiences: Vec<String>,
    #[arg(long, env = "BIZOSAAS_OIDC_USERNAME_CLAIM", default_value = "preferred_username")]
    oidc_username_claim: String,
    /// Prefix of OIDC usernames: keep it the API server's, so RBAC names the same subjects.
    #[arg(long, env = "BIZOSAAS_OIDC_USERNAME_PREFIX", default_value = "oidc:")]
    oidc_username_prefix: String,
    #[arg(long, env = "BIZOSAAS_OIDC_GROUPS_CLAIM", default_value = "groups")]
    oidc_groups_claim: String,
    #[arg(long, env = "BIZOSAAS_OIDC_GROUPS_PREFIX", default_value = "oidc:")]
    oidc_groups_prefix: String,
    /// PEM bundle that the issuer's certificate chains to, besides the system's roots.
    #[arg(long, env = "BIZOSAAS_OIDC_CA_FILE")]
    oidc_ca_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "BIZOSAAS_OIDC_MAX_SKEW_SECONDS", default_value_t = 30)]
    oidc_max_skew_seconds: u64,
    /// Audience that ServiceAccount tokens must be issued for.
    #[arg(long, env = "BIZOSAAS_GATEWAY_AUDIENCE", default_value = "bizosaas-gateway")]
    audience: String,
    /// Requests per second per tenant (per replica).
    #[arg(long, env = "BIZOSAAS_GATEWAY_RATE", default_value_t = 20.0)]
    rate: f64,
    /// Requests a tenant may send at once above its rate.
    #[arg(long, env = "BIZOSAAS_GATEWAY_BURST", default_value_t = 40)]
    burst: u32,
    /// Time limit of a call to a crew (streams excepted), in seconds.
    #[arg(long, env = "BIZOSAAS_GATEWAY_UPSTREAM_TIMEOUT_SECONDS", default_value_t = 30)]
    upstream_timeout_seconds: u64,
    /// Projected ServiceAccount token for the crews' audience (in a pod).
    #[arg(long, env = "BIZOSAAS_RUNTIME_TOKEN_FILE")]
    runtime_token_file: Option<PathBuf>,
    /// Outside a pod: the ServiceAccount (`namespace/name`) whose token calls the crews.
    #[arg(long, env = "BIZOSAAS_GATEWAY_SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// The gateway's database login (the `url` of the Secret the operator keeps), for the
    /// tenants' audit logs; without it nothing is recorded.
    #[arg(long, env = "BIZOSAAS_GATEWAY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;

    let mut http = reqwest::Client::builder()
        .user_agent(concat!("bizosaas-gateway/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &args.oidc_ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for cert in
            reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("parsing {}", path.display()))?
        {
            http = http.add_root_certificate(cert);
        }
    }
    let oidc_http = http.build().context("building the OIDC client")?;
    let oidc = args.oidc_issuer.clone().map(|issuer| {
        OidcVerifier::new(
            OidcSettings {
                issuer,
                audiences: args.oidc_audiences.clone(),
                username_claim: args.oidc_username_claim.clone(),
                username_prefix: args.oidc_username_prefix.clone(),
                groups_claim: args.oidc_groups_claim.clone(),
                groups_prefix: args.oidc_groups_prefix.clone(),
                max_skew: Duration::from_secs(args.oidc_max_skew_seconds),
            },
            oidc_http,
        )
    });
    let has_oidc = oidc.is_some();

    let token_source = match (&args.runtime_token_file, args.service_account.as_deref()) {
        (Some(path), _) => TokenSource::File(path.clone()),
        (None, Some(sa)) => {
            let (namespace, name) = bizosaas_controllers::runtime_auth::service_account(sa)
                .with_context(|| format!("{sa:?} is not a ServiceAccount as namespace/name"))?;
            TokenSource::Request { namespace, name }
        }
        (None, None) => TokenSource::None,
    };
    let crews = CrewClient {
        http: reqwest::Client::builder()
            .user_agent(concat!("bizosaas-gateway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the crews' client")?,
        token: Arc::new(RuntimeToken::new(kube.clone(), token_source)),
        timeout: Duration::from_secs(args.upstream_timeout_seconds),
    };

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let (audit, audit_writer) = match args.database_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => {
            let (audit, writer) = AuditLog::start(url, kube.clone(), &mut registry).map_err(|e| anyhow::anyhow!(e))?;
            (Some(audit), Some(writer))
        }
        None => {
            tracing::warn!("no BIZOSAAS_GATEWAY_DATABASE_URL: requests are not recorded in the tenants' audit logs");
            (None, None)
        }
    };
    let state = Arc::new(AppState {
        kube: kube.clone(),
        authn: Authenticator {
            oidc,
            service_accounts: service_account::Reviewer::new(kube.clone(), args.audience.clone()),
        },
        authz: Authorizer::new(kube),
        limiter: RateLimiter::new(args.rate, args.burst),
        crews,
        metrics,
        registry,
        audit,
        ready: (!has_oidc).into(),
    });
    if has_oidc {
        // Ready once the issuer's keys are read; retried until they are.
        let state = state.clone();
        tokio::spawn(async move {
            let oidc = state.authn.oidc.as_ref().expect("configured");
            loop {
                match oidc.refresh().await {
                    Ok(keys) => {
                        tracing::info!(issuer = oidc.issuer(), keys, "read the OIDC issuer's signing keys");
                        state.ready.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(issuer = oidc.issuer(), error = %e, "the OIDC issuer is not answering yet")
                    }
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }

    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, oidc = has_oidc, "gateway serving");
    axum::serve(listener, api::router(state)).with_graceful_shutdown(shutdown()).await?;
    // The router (and with it the last handle on the queue) is gone: what is queued is written.
    if let Some(writer) = audit_writer {
        match tokio::time::timeout(Duration::from_secs(20), writer).await {
            Ok(_) => tracing::info!("audit entries written"),
            Err(_) => tracing::error!("audit entries still unwritten after 20s; stopping anyway"),
        }
    }
    Ok(())
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
