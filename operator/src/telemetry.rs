//! Logging through `tracing`: human-readable text by default, JSON for log pipelines.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` filters, defaulting to `info`.
pub fn init(format: LogFormat) {
    let filter = filter(std::env::var(EnvFilter::DEFAULT_ENV).ok().as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

/// The log filter from `RUST_LOG` (`info` when unset or invalid). The PostgreSQL client is
/// capped at `warn` whatever `RUST_LOG` says: at `debug` it logs every statement's text, and
/// role statements carry password verifiers. The Vault client's own logs are off: it logs
/// every answer that is not a success as an error, a secret not written yet (404) included,
/// while the operator reports each failure itself, as a condition and a log line of its own.
fn filter(rust_log: Option<&str>) -> EnvFilter {
    let filter = rust_log.and_then(|s| EnvFilter::try_new(s).ok()).unwrap_or_else(|| EnvFilter::new("info"));
    ["tokio_postgres=warn", "vaultrs=off", "rustify=off"]
        .into_iter()
        .fold(filter, |filter, directive| filter.add_directive(directive.parse().expect("a valid directive")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_never_logged_even_at_debug() {
        for rust_log in
            [None, Some("debug"), Some("trace"), Some("tokio_postgres=trace"), Some("info,tokio_postgres=debug")]
        {
            let directives = filter(rust_log).to_string();
            let postgres: Vec<_> = directives.split(',').filter(|d| d.starts_with("tokio_postgres")).collect();
            assert_eq!(postgres, ["tokio_postgres=warn"], "RUST_LOG={rust_log:?} gives {directives}");
        }
    }

    #[test]
    fn the_vault_client_does_not_log_a_missing_secret_as_an_error() {
        for rust_log in [None, Some("debug"), Some("vaultrs=trace,rustify=error")] {
            let directives = filter(rust_log).to_string();
            for client in ["vaultrs", "rustify"] {
                let set: Vec<_> = directives.split(',').filter(|d| d.starts_with(client)).collect();
                assert_eq!(set, [format!("{client}=off")], "RUST_LOG={rust_log:?} gives {directives}");
            }
        }
    }
}
