//! The operator binary as a child process of a benchmark, and its `/metrics` read over
//! loopback.

use anyhow::Context as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A running operator; killed when dropped.
pub struct OperatorProcess {
    child: tokio::process::Child,
    pub pid: u32,
    metrics_url: String,
}

impl OperatorProcess {
    /// Starts `bin` (or the operator next to this benchmark) with `args` after `run`, and
    /// waits until it serves metrics.
    pub async fn start(bin: Option<&PathBuf>, database_url: &str, args: &[&str]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let bin = match bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("bizosaas-operator"),
        };
        let child = tokio::process::Command::new(&bin)
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("BIZOSAAS_DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("operator pid")?;
        let operator = Self { child, pid, metrics_url: format!("http://127.0.0.1:{port}/metrics") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while operator.sample("bizosaas_reconciles_total").await.is_none() {
            anyhow::ensure!(Instant::now() < deadline, "the operator did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(operator)
    }

    /// The sum of the samples of metric `name` whose line contains every one of `filters`.
    pub async fn sample_where(&self, name: &str, filters: &[&str]) -> Option<f64> {
        let body = http_get(&self.metrics_url).await?;
        let mut found = false;
        let total = body
            .lines()
            .filter(|l| l.starts_with(name) && filters.iter().all(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .inspect(|_| found = true)
            .sum();
        found.then_some(total)
    }

    /// Every series of metric `name`, by its label set (`{verb="get",...}`).
    pub async fn series(&self, name: &str) -> std::collections::BTreeMap<String, f64> {
        let body = http_get(&self.metrics_url).await.unwrap_or_default();
        body.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
            .filter_map(|l| {
                let (labels, value) = l.rsplit_once(' ')?;
                Some((labels.trim_end_matches('}').to_string(), value.parse::<f64>().ok()?))
            })
            .collect()
    }

    pub async fn sample(&self, name: &str) -> Option<f64> {
        self.sample_where(name, &[]).await
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A minimal HTTP/1.1 GET for loopback metrics.
async fn http_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/')?;
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    stream
        .write_all(format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response.split_once("\r\n\r\n")?.1.to_string())
}
