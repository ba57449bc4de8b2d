//! `bizosaas-agent serve`: builds the runtime from the crew file and the environment and
//! serves the API until SIGTERM, then refuses new runs, lets active ones finish (up to the
//! grace period), stops the rest as `interrupted` (recorded in the tenant database when there
//! is one) and exits. The runtime writes no files.

use crate::api::AppState;
use crate::auth::{Authenticator, Policy};
use crate::config::{self, ConfigError, DATABASE_URL_ENV};
use crate::db::Db;
use crate::engine::{Accounting, Engine, EngineOptions};
use crate::executor::{Executor, watch::WatchTask};
use crate::ledger::{Limits, TokenLedger};
use crate::llm::{Attribution, ChatClient, ClientOptions, RetryPolicy};
use crate::metrics::{Metrics, Owner};
use crate::secret::{Redactor, Secret};
use crate::store::{RunRecords, RunStore, RunTiming, Runs};
use crate::telemetry::LogFormat;
use crate::tools::http::{HttpTool, Integration};
use crate::tools::memory::Memory;
use crate::usage::MonthlyLedger;
use bizosaas_crds::crew_config::CrewConfig;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// The rendered crew (`crew.json`).
    #[arg(long, env = "BIZOSAAS_CREW_CONFIG", default_value = "/etc/bizosaas/crew.json")]
    pub config: PathBuf,
    /// Address of the API, probes and metrics.
    #[arg(long, env = "BIZOSAAS_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    #[arg(long, env = "BIZOSAAS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Runs executing at the same time; more wait in `queued`.
    #[arg(long, env = "BIZOSAAS_MAX_CONCURRENT_RUNS", default_value_t = 4)]
    pub max_concurrent_runs: usize,
    /// Runs kept in memory (the oldest finished ones make room).
    #[arg(long, env = "BIZOSAAS_MAX_RUNS", default_value_t = 1000)]
    pub max_runs: usize,
    /// Timeout of one model request in seconds (with streaming: until the headers and between chunks).
    #[arg(long, env = "BIZOSAAS_LLM_TIMEOUT", default_value_t = 120.0)]
    pub llm_timeout: f64,
    /// Retries of a model request on 429, 5xx and timeouts.
    #[arg(long, env = "BIZOSAAS_LLM_MAX_RETRIES", default_value_t = 3)]
    pub llm_max_retries: u32,
    /// Ask the model gateway for streamed responses.
    #[arg(long, env = "BIZOSAAS_LLM_STREAM", default_value_t = false)]
    pub stream: bool,
    /// OpenRouter attribution: `HTTP-Referer`.
    #[arg(long, env = "BIZOSAAS_ATTRIBUTION_REFERER", default_value = "https://bizosaas.io")]
    pub referer: String,
    /// OpenRouter attribution: `X-Title`.
    #[arg(long, env = "BIZOSAAS_ATTRIBUTION_TITLE", default_value = "BizOSaaS")]
    pub title: String,
    /// `maxIterations` of the manager of a Hierarchical crew.
    #[arg(long, env = "BIZOSAAS_MANAGER_MAX_ITERATIONS", default_value_t = 15)]
    pub manager_max_iterations: u32,
    /// Timeout of one `http_request` tool call in seconds.
    #[arg(long, env = "BIZOSAAS_TOOL_TIMEOUT", default_value_t = 30.0)]
    pub tool_timeout: f64,
    /// Seconds active runs may take to finish after SIGTERM; then they are interrupted.
    #[arg(long, env = "BIZOSAAS_SHUTDOWN_GRACE", default_value_t = 25.0)]
    pub shutdown_grace: f64,
    /// Seconds between heartbeats of the runs this replica executes (with a tenant database).
    #[arg(long, env = "BIZOSAAS_RUN_HEARTBEAT_INTERVAL", default_value_t = 5.0)]
    pub run_heartbeat_interval: f64,
    /// Seconds without a heartbeat after which a queued or running run counts as interrupted
    /// (its pod was killed); at least twice the heartbeat interval.
    #[arg(long, env = "BIZOSAAS_RUN_STALE_AFTER", default_value_t = 30.0)]
    pub run_stale_after: f64,
    /// Seconds between checks for cancels of this replica's runs asked for on other replicas.
    #[arg(long, env = "BIZOSAAS_RUN_CANCEL_POLL", default_value_t = 1.0)]
    pub run_cancel_poll: f64,
    /// Recorded as the owner of the runs this replica executes; else `HOSTNAME`.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Audience the callers' ServiceAccount tokens must be issued for.
    #[arg(long, env = "BIZOSAAS_API_AUDIENCE", default_value = crate::auth::DEFAULT_AUDIENCE)]
    pub api_audience: String,
    /// The platform's ServiceAccounts (`namespace/name`, comma-separated: the operator's, the
    /// gateway's), admitted besides the ServiceAccounts of the crew's namespace.
    #[arg(long, env = "BIZOSAAS_API_PLATFORM", value_delimiter = ',')]
    pub api_platform: Vec<crate::auth::ServiceAccountRef>,
}

/// Settings of a runtime, independent of the command line.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    pub client: ClientOptions,
    pub engine: EngineOptions,
    pub max_runs: usize,
    pub max_concurrent_runs: usize,
    pub tool_timeout: Duration,
    pub max_wait: Duration,
    /// Heartbeat, staleness and cancel polling of runs kept in the tenant database.
    pub runs: RunTiming,
    /// This replica's name on the runs it executes (the pod name).
    pub owner: String,
    /// Checks the run API's callers; `serve` always sets it.
    pub auth: Option<Arc<Authenticator>>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            client: ClientOptions::default(),
            engine: EngineOptions::default(),
            max_runs: 1000,
            max_concurrent_runs: 4,
            tool_timeout: Duration::from_secs(30),
            max_wait: Duration::from_secs(300),
            runs: RunTiming::default(),
            owner: DEFAULT_OWNER.into(),
            auth: None,
        }
    }
}

/// Owner name when neither `POD_NAME` nor `HOSTNAME` is set.
pub const DEFAULT_OWNER: &str = "bizosaas-agent";

/// The first non-empty of the pod name and the host name (which is the pod name in a pod).
pub fn owner_name(pod_name: Option<&str>, hostname: Option<&str>) -> String {
    [pod_name, hostname].into_iter().flatten().map(str::trim).find(|s| !s.is_empty()).unwrap_or(DEFAULT_OWNER).into()
}

fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

impl ServeArgs {
    pub fn runtime_options(&self) -> RuntimeOptions {
        RuntimeOptions {
            client: ClientOptions {
                request_timeout: Duration::from_secs_f64(self.llm_timeout.max(0.1)),
                retry: RetryPolicy { max_retries: self.llm_max_retries, ..RetryPolicy::default() },
                stream: self.stream,
                attribution: Attribution { referer: self.referer.clone(), title: self.title.clone() },
            },
            engine: EngineOptions { manager_max_iterations: self.manager_max_iterations.max(1), ..Default::default() },
            max_runs: self.max_runs,
            max_concurrent_runs: self.max_concurrent_runs,
            tool_timeout: Duration::from_secs_f64(self.tool_timeout.max(0.1)),
            max_wait: Duration::from_secs(300),
            runs: RunTiming {
                heartbeat_interval: seconds(self.run_heartbeat_interval),
                stale_after: seconds(self.run_stale_after),
                cancel_poll: seconds(self.run_cancel_poll),
            },
            owner: owner_name(self.pod_name.as_deref(), std::env::var("HOSTNAME").ok().as_deref()),
            auth: None,
        }
    }
}

/// A built runtime: the API state and its background tasks.
pub struct Runtime {
    pub state: Arc<AppState>,
    pub metrics: Arc<Metrics>,
    /// Heartbeats and cancel polling of the runs in the tenant database; stops when dropped.
    pub run_watch: Option<WatchTask>,
}

/// Builds the runtime for a crew. `env` reads the environment (credentials, `DATABASE_URL`).
pub fn build(
    crew: CrewConfig,
    env: &dyn Fn(&str) -> Option<String>,
    options: RuntimeOptions,
) -> Result<Runtime, ConfigError> {
    config::validate(&crew)?;
    options.runs.check().map_err(ConfigError::Invalid)?;
    let mut secrets: Vec<Secret> = Vec::new();
    let model_key =
        config::secret_from_env(&crew.model.api_key_env, &format!("API key of model {}", crew.model.model), env)?;
    secrets.extend(model_key.clone());
    let manager_key = match &crew.manager {
        Some(m) => config::secret_from_env(&m.api_key_env, &format!("API key of manager model {}", m.model), env)?,
        None => None,
    };
    secrets.extend(manager_key.clone());
    let mut integrations = Vec::new();
    for i in &crew.integrations {
        let credential =
            config::secret_from_env(&i.credential_env, &format!("credential of integration {}", i.name), env)?;
        secrets.extend(credential.clone());
        let base = config::parse_http_url(&i.base_url).map_err(ConfigError::Invalid)?;
        integrations.push(Integration { name: i.name.clone(), base, credential });
    }
    let database_url = match env(DATABASE_URL_ENV).filter(|v| !v.is_empty()) {
        Some(url) => Some(Secret::new(url)),
        None if crew.memory => {
            return Err(ConfigError::MissingEnv {
                var: DATABASE_URL_ENV.into(),
                purpose: "tenant database for memory".into(),
            });
        }
        None => None,
    };
    let db = match &database_url {
        Some(url) => {
            secrets.push(url.clone());
            let db = Db::new(url).map_err(|e| ConfigError::Invalid(e.to_string()))?;
            Some(Arc::new(db))
        }
        None => None,
    };
    let redactor = Redactor::new(secrets);

    let mut registry = Registry::default();
    let owner = Owner { tenant: crew.tenant.clone(), crew: crew.name.clone() };
    let metrics = Arc::new(Metrics::new(&mut registry, owner));
    metrics.prepare(&crew);
    let http = crate::llm::http_client();
    let client = |model: &bizosaas_crds::crew_config::ModelConfig, key: Option<Secret>| {
        ChatClient::new(http.clone(), model, key, options.client.clone(), Some(metrics.clone()))
            .map_err(|m| ConfigError::Invalid(format!("model {}: {m}", model.model)))
    };
    let llm = client(&crew.model, model_key)?;
    let manager_llm = match &crew.manager {
        Some(m) => Some(client(m, manager_key)?),
        None => None,
    };
    let http_tool =
        (!integrations.is_empty()).then(|| HttpTool::new(integrations, redactor.clone(), options.tool_timeout));
    let memory = match (&db, crew.memory) {
        (Some(db), true) => Some(Memory::new(db.clone(), &crew.tenant, &crew.name)),
        _ => None,
    };
    let positive = |t: Option<i64>| t.and_then(|t| u64::try_from(t).ok());
    let limits = Limits { tenant: positive(crew.tenant_monthly_tokens), crew: positive(crew.monthly_tokens) };
    // With a tenant database every replica of every crew spends from the same months; without
    // one the crew counts its own month here, and the tenant's budget cannot be shared.
    let ledger = match &database_url {
        Some(url) => Some(Arc::new(
            TokenLedger::new(url, &crew.tenant, &crew.name, limits).map_err(|e| ConfigError::Invalid(e.to_string()))?,
        )),
        None => {
            if limits.tenant.is_some() {
                tracing::warn!("the tenant's monthly token budget needs the tenant database; this crew has none");
            }
            None
        }
    };
    let monthly = match (&ledger, limits.crew) {
        (None, Some(limit)) => Some(Arc::new(MonthlyLedger::new(limit))),
        _ => None,
    };
    let accounting = Accounting { metrics: Some(metrics.clone()), ledger: ledger.clone(), monthly: monthly.clone() };
    // With a tenant database runs are durable; without one they live in memory only.
    let records = db
        .as_ref()
        .map(|db| Arc::new(RunRecords::new(db.clone(), &crew.tenant, &crew.name, &options.owner, options.runs)));
    let engine = Arc::new(Engine::new(
        Arc::new(crew),
        llm,
        manager_llm,
        http_tool,
        memory,
        accounting,
        redactor,
        options.engine.clone(),
    ));
    let executor = Executor::new(engine.clone(), options.max_concurrent_runs, Some(metrics.clone()), records.clone());
    let run_watch = records.clone().map(|r| crate::executor::watch::spawn(r, executor.active_runs()));
    let runs = Runs::new(Arc::new(RunStore::new(options.max_runs)), records, options.max_runs);
    let state = Arc::new(AppState {
        engine,
        runs: Arc::new(runs),
        executor,
        registry: Arc::new(registry),
        db,
        ledger,
        monthly,
        shutting_down: Default::default(),
        max_wait: options.max_wait,
        auth: options.auth.clone(),
    });
    Ok(Runtime { state, metrics, run_watch })
}

/// `bizosaas-agent serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let crew = config::load(&args.config)?;
    let (name, namespace, process, agents) =
        (crew.name.clone(), crew.namespace.clone(), crew.process, crew.agents.len());
    let mut options = args.runtime_options();
    // The run API admits only callers whose tokens the API server vouches for.
    crate::install_crypto_provider();
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("the run API reviews its callers' tokens with the API server, which is not configured: {e}")
    })?;
    let policy = Policy { namespace: namespace.clone(), platform: args.api_platform.clone() };
    if policy.platform.is_empty() {
        tracing::warn!("no BIZOSAAS_API_PLATFORM: only ServiceAccounts of the crew's namespace may start runs");
    }
    options.auth = Some(Arc::new(Authenticator::new(client, args.api_audience.clone(), policy)));
    let Runtime { state, run_watch, .. } = build(crew, &|k| std::env::var(k).ok(), options)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(crew = %name, %namespace, ?process, agents, listen = %args.listen, "serving the agent runtime");
    let grace = Duration::from_secs_f64(args.shutdown_grace.max(0.0));
    let stopped = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let (state, stopped) = (state.clone(), stopped.clone());
        async move {
            shutdown_signal().await;
            state.shutting_down.store(true, Ordering::Relaxed);
            let active = state.executor.active();
            tracing::info!(active, "shutting down: refusing new runs, waiting for active ones");
            if !state.executor.drain(grace).await {
                let interrupted = state.executor.interrupt_all();
                tracing::warn!(interrupted, "runs still active after the grace period: stopping them as interrupted");
                if !state.executor.drain(Duration::from_secs(5)).await {
                    tracing::warn!(active = state.executor.active(), "interrupted runs not recorded in time");
                }
            }
            stopped.notify_one();
        }
    };
    let server = axum::serve(listener, crate::api::router(state.clone())).with_graceful_shutdown(signal);
    let mut server = tokio::spawn(async move { server.await });
    tokio::select! {
        result = &mut server => result??,
        _ = async { stopped.notified().await; tokio::time::sleep(Duration::from_secs(3)).await } => {
            tracing::info!("closing the connections that are still open");
            server.abort();
        }
    }
    drop(run_watch);
    drop(state);
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_owner_is_the_pod_name_else_the_host_name() {
        assert_eq!(owner_name(Some("crew-7d9f-abcde"), Some("host")), "crew-7d9f-abcde");
        assert_eq!(owner_name(Some(" "), Some("crew-7d9f-x")), "crew-7d9f-x");
        assert_eq!(owner_name(None, None), DEFAULT_OWNER);
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn run_timing_comes_from_the_command_line() {
        let cli = Cli::parse_from([
            "x",
            "--run-heartbeat-interval",
            "0.5",
            "--run-stale-after",
            "2",
            "--run-cancel-poll",
            "0.2",
            "--pod-name",
            "p-1",
        ]);
        let o = cli.serve.runtime_options();
        assert_eq!(o.runs.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(o.runs.stale_after, Duration::from_secs(2));
        assert_eq!(o.runs.cancel_poll, Duration::from_millis(200));
        assert_eq!(o.owner, "p-1");
        assert!(o.runs.check().is_ok());
        assert_eq!(seconds(-1.0), Duration::ZERO);
    }
}
