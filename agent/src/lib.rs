//! `bizosaas-agent`: the runtime that executes an AgentCrew.
//!
//! It reads the rendered crew ([`bizosaas_crds::crew_config::CrewConfig`]), serves the run API
//! ([`api`]) and executes runs with CrewAI's process semantics ([`engine`]) against an
//! OpenAI-compatible chat-completions endpoint such as OpenRouter ([`llm`]).
//!
//! | module | job |
//! |---|---|
//! | [`config`] | load and validate `crew.json`, resolve credentials from the environment |
//! | [`secret`] | a credential type that never prints, and redaction of tool output |
//! | [`llm`] | chat-completions client: tool calling, streaming, retries, fallbacks |
//! | [`usage`] | token accounting per run and agent; run and monthly budgets |
//! | [`engine`] | agents' tool loops, sequential and hierarchical processes, delegation |
//! | [`tools`] | `http_request` through an Integration, `memory_save` / `memory_search` |
//! | [`db`] | the tenant's PostgreSQL (app role): the connection |
//! | [`ledger`] | usage events and the tenant's and crew's monthly budgets, shared by every replica |
//! | [`store`] | runs: live in memory, durable in the tenant database's `agent_runs` when there is one |
//! | [`executor`] | runs in the background: concurrency, cancel, heartbeat, interrupted runs |
//! | [`events`] | the run events streamed as server-sent events |
//! | [`api`] | the HTTP API (`/v1/runs`, probes, metrics) |
//! | [`auth`] | who may call the run API: ServiceAccount tokens checked with TokenReview |
//! | [`metrics`] | Prometheus metrics |
//! | [`serve`] | wiring for `bizosaas-agent serve` |
//! | [`bench`] | `bizosaas-agent bench`: the runtime's overhead against direct calls |
//! | [`stub`] | a scripted OpenAI-compatible server for tests and the benchmark |

pub mod api;
pub mod auth;
pub mod bench;
pub mod config;
pub mod db;
pub mod engine;
pub mod events;
pub mod executor;
pub mod ledger;
pub mod llm;
pub mod metrics;
pub mod secret;
pub mod serve;
pub mod store;
pub mod stub;
pub mod telemetry;
pub mod time;
pub mod tools;
pub mod usage;

/// Installs ring as the process-wide rustls crypto provider (reqwest is built without one, so
/// that aws-lc-sys is not compiled). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
