//! Health probes of integration endpoints. The credential is sent as a bearer token where the
//! probe is HTTP, and never appears in what a probe reports.

use super::defaults::Probe;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub reachable: bool,
    pub latency: Duration,
    /// What was seen, for the `Reachable` condition's message.
    pub detail: String,
}

/// Probes `endpoint` the way `probe` says, within `timeout`.
pub async fn check(
    http: &reqwest::Client,
    endpoint: &str,
    probe: Probe,
    path_override: Option<&str>,
    credential: Option<&str>,
    timeout: Duration,
) -> ProbeResult {
    let started = Instant::now();
    let (reachable, detail) = match probe {
        Probe::Http { path } => {
            let url = format!("{}{}", endpoint.trim_end_matches('/'), path_override.unwrap_or(path));
            let mut request = http.get(&url).timeout(timeout);
            if let Some(credential) = credential {
                request = request.bearer_auth(credential);
            }
            match request.send().await {
                Ok(response) if response.status().as_u16() < 500 => {
                    (true, format!("GET {url} answered {}", response.status()))
                }
                Ok(response) => (false, format!("GET {url} answered {}", response.status())),
                Err(e) if e.is_timeout() => (false, format!("GET {url} timed out after {timeout:?}")),
                Err(e) if e.is_connect() => (false, format!("GET {url}: connection failed")),
                Err(_) => (false, format!("GET {url} failed")),
            }
        }
        Probe::SmtpGreeting => smtp_greeting(endpoint, timeout).await,
    };
    ProbeResult { reachable, latency: started.elapsed(), detail }
}

/// Connects to `smtp://host:port` and expects a `220` greeting.
async fn smtp_greeting(endpoint: &str, timeout: Duration) -> (bool, String) {
    let Some(address) = endpoint.split_once("://").map(|(_, rest)| rest.trim_end_matches('/')) else {
        return (false, format!("{endpoint} is not an smtp:// address"));
    };
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(address).await?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(line)) if line.starts_with("220") => (true, format!("{address} greeted with 220")),
        Ok(Ok(line)) => (false, format!("{address} greeted with {:?} instead of 220", line.trim())),
        Ok(Err(e)) => (false, format!("{address}: {}", e.kind())),
        Err(_) => (false, format!("{address} sent no greeting within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn smtp_greeting_is_required() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"220 mail.example ESMTP\r\n").await.unwrap();
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"554 go away\r\n").await.unwrap();
        });
        let endpoint = format!("smtp://127.0.0.1:{port}");
        let ok = smtp_greeting(&endpoint, Duration::from_secs(2)).await;
        assert!(ok.0, "{ok:?}");
        let refused = smtp_greeting(&endpoint, Duration::from_secs(2)).await;
        assert!(!refused.0 && refused.1.contains("554"), "{refused:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let r = smtp_greeting(&format!("smtp://127.0.0.1:{port}"), Duration::from_secs(2)).await;
        assert!(!r.0);
    }
}
