//! `bizosaas-agent bench`: what the runtime adds on top of calling the model server directly.
//!
//! A scripted stub server runs in-process on loopback. Per LLM call, the same chat request is
//! sent N times directly (reqwest: serialize, POST, read and parse the JSON) and N times
//! through the runtime's [`ChatClient`], interleaved so both see the same conditions. Per run,
//! a two-agent sequential crew is run through the HTTP API (`POST /v1/runs?wait=`) and
//! compared with making its two chat calls directly. Reported: mean, p50 and p99 of both,
//! the added latency, the ratio, and the process's peak RSS (VmHWM). A benchmark, not a test:
//! nothing here asserts a time.

use crate::llm::{ChatClient, ChatInput, ClientOptions, Message, http_client};
use crate::serve::{RuntimeOptions, build};
use crate::stub::{Reply, StubServer};
use anyhow::{Context, bail};
use bizosaas_crds::crew_config::CrewConfig;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// LLM calls measured each way.
    #[arg(long, default_value_t = 2000)]
    pub calls: usize,
    /// Runs measured each way.
    #[arg(long, default_value_t = 300)]
    pub runs: usize,
    /// Unmeasured calls and runs first (connection setup, allocator warm-up).
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Use streamed responses (SSE) for the LLM-call comparison.
    #[arg(long)]
    pub stream: bool,
}

/// Latency statistics of one series.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub mean: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl Stats {
    pub fn of(samples: &mut [Duration]) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        let total: Duration = samples.iter().sum();
        let pick = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
        Self { mean: total / samples.len() as u32, p50: pick(0.50), p99: pick(0.99) }
    }
}

/// Direct and runtime series of one comparison.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    pub direct: Stats,
    pub runtime: Stats,
}

impl Comparison {
    fn added(&self) -> [f64; 3] {
        let d = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1e3;
        [
            d(self.runtime.mean, self.direct.mean),
            d(self.runtime.p50, self.direct.p50),
            d(self.runtime.p99, self.direct.p99),
        ]
    }

    fn ratio(&self) -> f64 {
        self.runtime.mean.as_secs_f64() / self.direct.mean.as_secs_f64()
    }

    fn print(&self, title: &str) {
        let ms = |d: Duration| format!("{:>9.3}", d.as_secs_f64() * 1e3);
        println!("{title:<34}{:>10}{:>10}{:>10}", "mean ms", "p50 ms", "p99 ms");
        println!("  {:<32}{} {} {}", "direct", ms(self.direct.mean), ms(self.direct.p50), ms(self.direct.p99));
        println!(
            "  {:<32}{} {} {}",
            "through the runtime",
            ms(self.runtime.mean),
            ms(self.runtime.p50),
            ms(self.runtime.p99)
        );
        let [mean, p50, p99] = self.added();
        println!("  {:<32}{mean:>+9.3} {p50:>+9.3} {p99:>+9.3}   (ratio {:.2}x)", "added by the runtime", self.ratio());
    }
}

/// Peak and current resident set size of this process, in KiB (Linux).
pub fn rss_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

fn messages() -> Vec<Message> {
    vec![
        Message::system("You are Senior SEO strategist. Your personal goal is: find keywords."),
        Message::user("Current Task: List three keywords for a spring sale of garden furniture.\n\nBegin!"),
    ]
}

fn crew(base_url: &str) -> CrewConfig {
    serde_json::from_value(json!({
        "name": "bench", "namespace": "tenant-bench", "tenant": "bench", "process": "Sequential",
        "agents": [
            {"name": "researcher", "role": "Researcher", "goal": "Find facts", "maxIterations": 3},
            {"name": "writer", "role": "Writer", "goal": "Write it up", "maxIterations": 3}
        ],
        "model": {"baseUrl": base_url, "apiKeyEnv": "", "model": "stub-model"}
    }))
    .expect("static crew")
}

/// Runs the benchmark and prints the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.calls == 0 || args.runs == 0 {
        bail!("--calls and --runs must be at least 1");
    }
    let stub = StubServer::start().await;
    stub.set_recording(false);
    stub.repeat(if args.stream {
        Reply::stream_text("spring sale garden furniture, outdoor sofa deals, patio set discount", 8, 48, 16)
    } else {
        Reply::text("spring sale garden furniture, outdoor sofa deals, patio set discount", 48, 16)
    });
    let endpoint = format!("{}/chat/completions", stub.base_url());
    println!(
        "bizosaas-agent bench: {} LLM calls and {} runs each way, {} warm-up; stub server in-process on {}{}",
        args.calls,
        args.runs,
        args.warmup,
        stub.addr(),
        if args.stream { "; streamed responses" } else { "" }
    );

    // ---- LLM calls
    let direct_http = http_client();
    let msgs = messages();
    let direct_body = serde_json::to_vec(&json!({"model": "stub-model", "messages": msgs, "stream": args.stream}))?;
    let client_options = ClientOptions { stream: args.stream, ..ClientOptions::default() };
    let model_config = crew(&stub.base_url()).model;
    let client =
        ChatClient::new(http_client(), &model_config, None, client_options, None).map_err(anyhow::Error::msg)?;
    let direct_call = || async {
        let response = direct_http
            .post(&endpoint)
            .header("content-type", "application/json")
            .body(direct_body.clone())
            .send()
            .await?
            .error_for_status()?;
        let bytes = response.bytes().await?;
        if !args.stream {
            let parsed: Value = serde_json::from_slice(&bytes)?;
            anyhow::ensure!(parsed["choices"][0]["message"]["content"].is_string(), "unexpected response");
        }
        anyhow::Ok(())
    };
    let runtime_call = || async {
        let completion = client.chat(ChatInput::new(&msgs)).await?;
        anyhow::ensure!(!completion.content.is_empty(), "empty completion");
        anyhow::Ok(())
    };
    for _ in 0..args.warmup {
        direct_call().await?;
        runtime_call().await?;
    }
    let (mut direct, mut through) = (Vec::with_capacity(args.calls), Vec::with_capacity(args.calls));
    for i in 0..args.calls {
        // Alternate the order so neither side always goes first.
        for side in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            let t = Instant::now();
            if side == 0 {
                direct_call().await?;
                direct.push(t.elapsed());
            } else {
                runtime_call().await?;
                through.push(t.elapsed());
            }
        }
    }
    let calls = Comparison { direct: Stats::of(&mut direct), runtime: Stats::of(&mut through) };

    // ---- Runs through the HTTP API
    stub.repeat(Reply::text("spring sale garden furniture, outdoor sofa deals, patio set discount", 48, 16));
    let runtime = build(crew(&stub.base_url()), &|_| None, RuntimeOptions::default())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(axum::serve(listener, crate::api::router(runtime.state.clone())).into_future());
    let api_http = http_client();
    let run_url = format!("{api}/v1/runs?wait=30");
    let run_body = serde_json::to_vec(&json!({"description": "Three keywords for a spring sale of garden furniture"}))?;
    let direct_run = || async {
        // The same two calls a caller would make for a two-agent sequential crew.
        let first = direct_http
            .post(&endpoint)
            .header("content-type", "application/json")
            .body(direct_body.clone())
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        let first: Value = serde_json::from_slice(&first)?;
        let context = first["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
        let second = json!({"model": "stub-model", "messages": [
            {"role": "system", "content": "You are Writer."},
            {"role": "user", "content": format!("Current Task: write it up\n\nContext:\n{context}")}
        ]});
        let second = direct_http.post(&endpoint).json(&second).send().await?.error_for_status()?.bytes().await?;
        let _: Value = serde_json::from_slice(&second)?;
        anyhow::Ok(())
    };
    let runtime_run = || async {
        let response = api_http
            .post(&run_url)
            .header("content-type", "application/json")
            .body(run_body.clone())
            .send()
            .await?
            .error_for_status()?;
        let view: Value = serde_json::from_slice(&response.bytes().await?)?;
        anyhow::ensure!(view["status"] == "succeeded", "run did not succeed: {view}");
        anyhow::Ok(())
    };
    for _ in 0..args.warmup.min(args.runs) {
        direct_run().await?;
        runtime_run().await.context("warm-up run")?;
    }
    let (mut direct, mut through) = (Vec::with_capacity(args.runs), Vec::with_capacity(args.runs));
    for i in 0..args.runs {
        for side in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            let t = Instant::now();
            if side == 0 {
                direct_run().await?;
                direct.push(t.elapsed());
            } else {
                runtime_run().await?;
                through.push(t.elapsed());
            }
        }
    }
    let runs = Comparison { direct: Stats::of(&mut direct), runtime: Stats::of(&mut through) };
    server.abort();

    println!();
    calls.print("LLM call (one chat completion)");
    println!();
    runs.print("Run (2 agents, sequential, via API)");
    println!();
    match rss_kib() {
        Some((hwm, rss)) => println!(
            "RSS: VmHWM {:.1} MiB, VmRSS {:.1} MiB (the whole bench process: runtime, API server with {} runs kept, stub server and direct client)",
            hwm as f64 / 1024.0,
            rss as f64 / 1024.0,
            args.runs + args.warmup.min(args.runs),
        ),
        None => println!("RSS: /proc/self/status is not available on this system"),
    }
    let per_call = calls.added()[0];
    println!(
        "target: added latency per LLM call <= 1 ms: {:+.3} ms mean ({})",
        per_call,
        if per_call <= 1.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Stats::of(&mut samples);
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.mean, Duration::from_micros(50_500));
    }
}
