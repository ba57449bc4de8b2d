//! Health probes of integration endpoints, over connections pinned to addresses the caller
//! has vetted. The credential is sent as a bearer token only over HTTPS, never redirected,
//! and never appears in what a probe reports; neither does what an endpoint answers beyond
//! its status (a probe is no port scanner for the tenant).

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

/// Probes `endpoint` the way `probe` says, within `timeout`: HTTP through `http` (a client
/// pinned to the vetted addresses), SMTP at `address`.
pub async fn check(
    http: &reqwest::Client,
    address: std::net::SocketAddr,
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
            if let Some(credential) = credential.filter(|_| url.starts_with("https://")) {
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
        Probe::SmtpGreeting => smtp_greeting(address, timeout).await,
    };
    ProbeResult { reachable, latency: started.elapsed(), detail }
}

/// Connects to `address` and expects a `220` greeting; only the reply code is reported.
async fn smtp_greeting(address: std::net::SocketAddr, timeout: Duration) -> (bool, String) {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(address).await?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(line)) if line.starts_with("220") => (true, format!("{address} greeted with 220")),
        Ok(Ok(line)) => {
            let code: String = line.chars().take(3).filter(char::is_ascii_digit).collect();
            let code = if code.len() == 3 { code } else { "no reply code".into() };
            (false, format!("{address} greeted with {code} instead of 220"))
        }
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
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let ok = smtp_greeting(address, Duration::from_secs(2)).await;
        assert!(ok.0, "{ok:?}");
        let refused = smtp_greeting(address, Duration::from_secs(2)).await;
        assert!(!refused.0 && refused.1.contains("554"), "{refused:?}");
        assert!(!refused.1.contains("go away"), "the banner is not copied: {refused:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let r = smtp_greeting(std::net::SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2)).await;
        assert!(!r.0);
    }
}
