//! `bizosaas-operator check <URL>`: what `helm test` runs against the installed operator.
//! It passes when the operator at URL is ready (`/readyz` answers 200) and serves its
//! metrics (`/metrics` carries `bizosaas_build_info`), and says which failed otherwise.

use anyhow::{Context as _, bail};
use std::time::Duration;

/// Checks the operator served at `base` (`http://host:port`).
pub async fn check(base: &str) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let base = base.trim_end_matches('/');
    let ready = http.get(format!("{base}/readyz")).send().await.with_context(|| format!("{base}/readyz"))?;
    if !ready.status().is_success() {
        bail!("{base}/readyz answered {}: the operator is not ready", ready.status());
    }
    let metrics = http.get(format!("{base}/metrics")).send().await.with_context(|| format!("{base}/metrics"))?;
    let status = metrics.status();
    let text = metrics.text().await?;
    if !status.is_success() || !serves_build_info(&text) {
        bail!("{base}/metrics answered {status} without bizosaas_build_info");
    }
    println!("{base}: ready, metrics served");
    Ok(())
}

fn serves_build_info(text: &str) -> bool {
    text.lines().any(|line| line.starts_with("bizosaas_build_info{"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_info_sample_is_what_counts() {
        assert!(serves_build_info("# TYPE bizosaas_build_info gauge\nbizosaas_build_info{version=\"0.1.0\"} 1\n"));
        assert!(!serves_build_info("# HELP bizosaas_build_info The operator's version\n"));
    }
}
