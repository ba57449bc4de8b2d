//! `http_request` against a real local HTTP server whose bodies are large or endless: the tool
//! reads at most `MAX_RESPONSE_BYTES`, stops reading there, answers well before its timeout
//! and tells the agent that the body was cut.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::get;
use bizosaas_agent::secret::Redactor;
use bizosaas_agent::tools::http::{HttpTool, Integration, MAX_RESPONSE_BYTES};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;

/// Serves `/endless` (chunks forever, counting what it produced) and `/small`.
async fn server(produced: Arc<AtomicUsize>) -> String {
    let app = Router::new()
        .route(
            "/api/endless",
            get(move || {
                let produced = produced.clone();
                async move {
                    let stream = futures::stream::repeat_with(move || {
                        produced.fetch_add(CHUNK, Ordering::Relaxed);
                        Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; CHUNK]))
                    });
                    Body::from_stream(stream)
                }
            }),
        )
        .route("/api/small", get(|| async { "{\"ok\": true}" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}/api")
}

fn tool(base: &str, timeout: Duration) -> HttpTool {
    let integration = Integration { name: "cms".into(), base: base.parse().unwrap(), credential: None };
    HttpTool::new(vec![integration], Redactor::default(), timeout)
}

fn args(path: &str) -> Map<String, Value> {
    json!({"integration": "cms", "path": path}).as_object().unwrap().clone()
}

#[tokio::test]
async fn an_endless_body_is_read_up_to_the_bound_and_reported_as_truncated() {
    let produced = Arc::new(AtomicUsize::new(0));
    let base = server(produced.clone()).await;
    let timeout = Duration::from_secs(20);
    let started = Instant::now();
    let result = tool(&base, timeout).call(&args("/endless")).await.expect("a result, not an error");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "the call took {elapsed:?}: the body was not bounded");
    let result: Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["status"], 200);
    assert_eq!(result["truncated"], true, "{}", result["note"]);
    assert!(result["note"].as_str().unwrap().contains(&MAX_RESPONSE_BYTES.to_string()), "{}", result["note"]);
    // The server stops producing soon after the tool stopped reading (socket buffers aside).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = produced.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = produced.load(Ordering::Relaxed);
    assert_eq!(before, after, "the connection is still being read");
    assert!(after < 16 * MAX_RESPONSE_BYTES, "{after} bytes were produced for a 1 MiB bound");
}

#[tokio::test]
async fn a_small_body_is_whole_and_not_truncated() {
    let base = server(Arc::default()).await;
    let result = tool(&base, Duration::from_secs(5)).call(&args("/small")).await.unwrap();
    let result: Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["body"], "{\"ok\": true}");
    assert_eq!(result["truncated"], false);
    assert!(result.get("note").is_none());
}
