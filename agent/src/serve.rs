//! `bizosaas-agent serve`: builds the runtime from the crew file and the environment and
//! serves the API until SIGTERM, then refuses new runs, lets active ones finish (up to the
//! grace period) and exits. The runtime writes no files.

use crate::api::{AppState, Executor};
use crate::config::{self, ConfigError, DATABASE_URL_ENV};
use crate::db::{Db, UsageRecorder};
use crate::engine::{Accounting, Engine, EngineOptions};
use crate::llm::{Attribution, ChatClient, ClientOptions, RetryPolicy};
use crate::metrics::Metrics;
use crate::secret::{Redactor, Secret};
use crate::store::RunStore;
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
    /// Seconds active runs may take to finish after SIGTERM.
    #[arg(long, env = "BIZOSAAS_SHUTDOWN_GRACE", default_value_t = 25.0)]
    pub shutdown_grace: f64,
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
        }
    }
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
        }
    }
}

/// A built runtime: the API state and its background tasks.
pub struct Runtime {
    pub state: Arc<AppState>,
    pub metrics: Arc<Metrics>,
    pub usage_writer: Option<tokio::task::JoinHandle<()>>,
}

/// Builds the runtime for a crew. `env` reads the environment (credentials, `DATABASE_URL`).
pub fn build(
    crew: CrewConfig,
    env: &dyn Fn(&str) -> Option<String>,
    options: RuntimeOptions,
) -> Result<Runtime, ConfigError> {
    config::validate(&crew)?;
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
    let metrics = Arc::new(Metrics::new(&mut registry));
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
    let monthly = crew.monthly_tokens.and_then(|t| u64::try_from(t).ok()).map(|t| Arc::new(MonthlyLedger::new(t)));
    let (recorder, usage_writer) = match &db {
        Some(db) => {
            let (r, task) = UsageRecorder::start(
                db.clone(),
                crew.tenant.clone(),
                crew.name.clone(),
                monthly.clone(),
                Some(metrics.clone()),
            );
            (Some(r), Some(task))
        }
        None => (None, None),
    };
    let accounting = Accounting { metrics: Some(metrics.clone()), recorder, monthly: monthly.clone() };
    let memory_db = db.filter(|_| crew.memory);
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
    let executor = Executor::new(engine.clone(), options.max_concurrent_runs, Some(metrics.clone()));
    let state = Arc::new(AppState {
        engine,
        store: Arc::new(RunStore::new(options.max_runs)),
        executor,
        registry: Arc::new(registry),
        db: memory_db,
        monthly,
        shutting_down: Default::default(),
        max_wait: options.max_wait,
    });
    Ok(Runtime { state, metrics, usage_writer })
}

/// `bizosaas-agent serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let crew = config::load(&args.config)?;
    let (name, namespace, process, agents) =
        (crew.name.clone(), crew.namespace.clone(), crew.process, crew.agents.len());
    let Runtime { state, usage_writer, .. } = build(crew, &|k| std::env::var(k).ok(), args.runtime_options())?;
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
                tracing::warn!(active = state.executor.active(), "runs still active after the grace period");
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
    // With the last reference to the engine gone, the usage writer drains its queue and ends.
    drop(state);
    if let Some(writer) = usage_writer
        && tokio::time::timeout(Duration::from_secs(5), writer).await.is_err()
    {
        tracing::warn!("usage events still unwritten at exit");
    }
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
