//! Runs through the HTTP API against the scripted stub server: tool-call loops, the
//! http_request tool and its credential, sequential context passing, hierarchical delegation,
//! maxIterations, budgets, 402 and 429, idempotent POSTs, cancels, server-sent events, probes.
//! These runtimes have no tenant database: runs live in memory.

mod support;

use bizosaas_agent::stub::{Reply, StubServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use support::{App, LLM_KEY, app, app_with, content_of, crew, eventually, messages, options, tool_names};

const INTEGRATION_SECRET: &str = "cms-token-7f3a9c2e1b";

/// A crew whose `researcher` may call the stub (as Integration `cms`) through http_request.
async fn crew_with_integration(stub: &StubServer, patch: Value) -> App {
    let mut c = crew(
        &stub.base_url(),
        json!({"integrations": [{"name": "cms", "baseUrl": stub.url("/cms"), "credentialEnv": "CMS_TOKEN"}]}),
    );
    c.agents[0].tools = vec!["http_request".into(), "memory_search".into()];
    let mut value = serde_json::to_value(&c).unwrap();
    support::merge(&mut value, patch);
    let c = serde_json::from_value(value).unwrap();
    app_with(c, &[("CMS_TOKEN", INTEGRATION_SECRET)], options()).await
}

#[tokio::test]
async fn tool_call_loop_feeds_results_back_and_injects_the_credential_unseen() {
    let stub = StubServer::with_script([
        Reply::tool_calls(
            &[("call_1", "http_request", json!({"integration": "cms", "path": "/pages/", "query": {"q": "spring"}}))],
            50,
            10,
        ),
        Reply::text("There are pages about spring.", 80, 8),
    ])
    .await;
    let app = crew_with_integration(&stub, json!({})).await;
    let run = app
        .run(json!({"description": "Find pages about {topic}", "agent": "researcher", "inputs": {"topic": "spring"}}))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "There are pages about spring.");

    let all = stub.requests();
    // The integration got the credential, below its base URL, with the query.
    let call = all.iter().find(|r| r.path.starts_with("/cms")).expect("integration request");
    assert_eq!(
        (call.method.as_str(), call.path.as_str(), call.query.as_deref()),
        ("GET", "/cms/pages/", Some("q=spring"))
    );
    assert_eq!(call.header("authorization"), Some(format!("Bearer {INTEGRATION_SECRET}").as_str()));

    let chats = stub.chat_requests();
    assert_eq!(chats.len(), 2);
    // The first request offers http_request (memory is off, so memory_search is not offered).
    assert_eq!(tool_names(&chats[0].body), ["http_request"]);
    assert!(content_of(&chats[0].body, "user").contains("Find pages about spring"));
    // The second carries the assistant's tool call and the tool result.
    let history = messages(&chats[1].body);
    assert_eq!(history.len(), 4);
    assert_eq!(history[2]["role"], "assistant");
    assert_eq!(history[2]["tool_calls"][0]["id"], "call_1");
    assert_eq!(history[3]["role"], "tool");
    assert_eq!(history[3]["tool_call_id"], "call_1");
    let result: Value = serde_json::from_str(history[3]["content"].as_str().unwrap()).unwrap();
    assert_eq!(result["status"], 200);
    // The echo server sent the Authorization header back: the model sees it redacted.
    let echoed: Value = serde_json::from_str(result["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["headers"]["authorization"], "Bearer [REDACTED]");

    // The credential is nowhere the model, the API or the events could show it.
    for r in &chats {
        assert!(!r.body.to_string().contains(INTEGRATION_SECRET));
    }
    let (_, view) = app.get(&format!("/v1/runs/{}", run["id"].as_str().unwrap())).await;
    assert!(!view.to_string().contains(INTEGRATION_SECRET));
    let events = app.events(run["id"].as_str().unwrap(), None).await;
    let text = format!("{events:?}");
    assert!(!text.contains(INTEGRATION_SECRET) && !text.contains(LLM_KEY));
    let (_, metrics) = app.get("/metrics").await;
    assert!(!metrics.to_string().contains(INTEGRATION_SECRET));
    assert!(
        metrics.as_str().unwrap().contains(r#"bizosaas_agent_tool_calls_total{tool="http_request",outcome="ok"} 1"#)
    );

    // Usage per run and per agent.
    assert_eq!(run["usage"]["promptTokens"], 130);
    assert_eq!(run["usage"]["completionTokens"], 18);
    assert_eq!(run["usage"]["byAgent"]["researcher"]["llmCalls"], 2);
    assert_eq!(run["tasks"][0]["usage"]["totalTokens"], 148);
}

#[tokio::test]
async fn the_http_tool_refuses_paths_outside_the_integration_and_reports_bad_arguments() {
    let stub = StubServer::with_script([
        Reply::tool_calls(
            &[
                ("c1", "http_request", json!({"integration": "cms", "path": "/../admin"})),
                (
                    "c2",
                    "http_request",
                    json!({"integration": "cms", "path": "/x", "headers": {"Authorization": "Bearer mine"}}),
                ),
            ],
            10,
            5,
        ),
        Reply::Json {
            status: 200,
            body: json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "http_request", "arguments": "{\"path\": "}},
                {"id": "c4", "type": "function", "function": {"name": "shell", "arguments": "{}"}}
            ]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}),
            headers: vec![],
        },
        Reply::text("gave up", 10, 2),
    ])
    .await;
    let app = crew_with_integration(&stub, json!({})).await;
    let run = app.run(json!({"description": "Try things", "agent": "researcher"})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(stub.requests().iter().all(|r| !r.path.starts_with("/admin") && !r.path.starts_with("/cms")));
    let chats = stub.chat_requests();
    let results: Vec<String> = messages(&chats[2].body)
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(results.len(), 4);
    assert!(
        results[0].starts_with("Error:") && results[0].contains("leaves the integration's base URL"),
        "{}",
        results[0]
    );
    assert!(results[1].contains("may not be set by the agent"), "{}", results[1]);
    assert!(results[2].contains("not valid JSON"), "{}", results[2]);
    assert!(results[3].contains("unknown tool \"shell\""), "{}", results[3]);
}

#[tokio::test]
async fn sequential_crews_pass_context_forward() {
    let stub = StubServer::with_script([
        Reply::text("FACTS: garden sofas sell in spring.", 30, 9),
        Reply::text("Spring into comfort with our garden sofas!", 60, 11),
    ])
    .await;
    let app = app(crew(&stub.base_url(), json!({}))).await;
    // One task without an agent goes through every agent in order.
    let run = app.run(json!({"description": "A tagline for the spring sale", "expectedOutput": "One line"})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "Spring into comfort with our garden sofas!");
    let tasks = run["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!((tasks[0]["agent"].as_str(), tasks[1]["agent"].as_str()), (Some("researcher"), Some("writer")));
    assert_eq!(tasks[0]["output"], "FACTS: garden sofas sell in spring.");

    let chats = stub.chat_requests();
    assert!(
        content_of(&chats[0].body, "system")
            .starts_with("You are Market researcher. Careful.\nYour personal goal is: Find the facts")
    );
    assert!(!content_of(&chats[0].body, "user").contains("context you're working with"));
    assert!(content_of(&chats[1].body, "system").starts_with("You are Copywriter."));
    let second = content_of(&chats[1].body, "user");
    assert!(second.contains("expected criteria for your final answer: One line"), "{second}");
    assert!(
        second.contains("This is the context you're working with:\nFACTS: garden sofas sell in spring."),
        "{second}"
    );
    // Agents without tools are offered none.
    assert!(chats.iter().all(|c| c.body.get("tools").is_none()));

    assert_eq!(run["usage"]["byAgent"]["researcher"]["totalTokens"], 39);
    assert_eq!(run["usage"]["byAgent"]["writer"]["totalTokens"], 71);
    assert_eq!(run["usage"]["totalTokens"], 110);
}

#[tokio::test]
async fn task_lists_name_the_crews_agents_and_pass_context() {
    let stub = StubServer::with_script([Reply::text("one", 1, 1), Reply::text("two", 1, 1)]).await;
    let app = app(crew(&stub.base_url(), json!({}))).await;
    let run = app
        .run(json!({"tasks": [
            {"description": "Research {topic}", "agent": "researcher"},
            {"description": "Write the brief", "agent": "writer", "expectedOutput": "A brief"}
        ], "inputs": {"topic": "patios"}}))
        .await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["tasks"][1]["agent"], "writer");
    let chats = stub.chat_requests();
    assert!(content_of(&chats[0].body, "user").contains("Research patios"));
    assert!(content_of(&chats[1].body, "user").contains("one"), "the first task's output is context");
}

/// A runtime runs only its crew's agents: a catalog template, or any other name, that is not
/// in the crew's spec is refused before anything is stored or sent to the model.
#[tokio::test]
async fn agents_outside_the_crew_are_refused_with_422() {
    let stub = StubServer::start().await;
    let app = app(crew(&stub.base_url(), json!({}))).await;
    for body in [
        json!({"description": "x", "agent": "design-brief"}),
        json!({"description": "x", "agent": "ceo"}),
        json!({"tasks": [{"description": "a", "agent": "writer"}, {"description": "b", "agent": "devops"}]}),
    ] {
        let (status, _, err) = app.post_run(&body, Some("outside-1"), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
        assert_eq!(err["error"]["category"], "unknown_agent", "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.ends_with("the crew's agents are researcher, writer"), "{message}");
    }
    let (_, list) = app.get("/v1/runs").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 0, "nothing was stored");
    assert!(stub.chat_requests().is_empty());
}

#[tokio::test]
async fn hierarchical_manager_delegates_to_agents() {
    let stub = StubServer::with_script([
        // The manager plans and delegates to the writer …
        Reply::tool_calls(
            &[("d1", "delegate_work", json!({"coworker": "writer", "task": "Write a tagline for the spring sale", "context": "Garden sofas, 20% off"}))],
            100,
            30,
        ),
        // … who answers …
        Reply::text("Spring into savings: 20% off garden sofas!", 40, 12),
        // … and asks the researcher a question …
        Reply::tool_calls(&[("q1", "ask_question", json!({"coworker": "Market researcher", "question": "Is 20% competitive?", "context": "garden sofas"}))], 150, 20),
        Reply::text("Yes, competitors offer 10-15%.", 30, 8),
        // … then answers.
        Reply::text("Final: Spring into savings: 20% off garden sofas!", 200, 15),
    ])
    .await;
    let c = crew(
        &stub.base_url(),
        json!({"process": "Hierarchical", "manager": {"baseUrl": stub.base_url(), "apiKeyEnv": "TEST_LLM_KEY", "model": "manager-model"}}),
    );
    let app = app(c).await;
    let run = app.run(json!({"description": "Create the spring sale tagline", "expectedOutput": "One line"})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], "Final: Spring into savings: 20% off garden sofas!");
    assert_eq!(run["tasks"][0]["agent"], "manager");

    let chats = stub.chat_requests();
    let models: Vec<&str> = chats.iter().map(|c| c.body["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["manager-model", "agent-model", "manager-model", "agent-model", "manager-model"]);
    // The manager gets the delegation tools with the coworkers' names.
    assert_eq!(tool_names(&chats[0].body), ["delegate_work", "ask_question"]);
    assert_eq!(
        chats[0].body["tools"][0]["function"]["parameters"]["properties"]["coworker"]["enum"],
        json!(["researcher", "writer"])
    );
    assert!(content_of(&chats[0].body, "system").starts_with("You are Crew Manager."));
    // The writer works on the delegated task with the manager's context, without tools.
    assert!(content_of(&chats[1].body, "system").starts_with("You are Copywriter."));
    let delegated = content_of(&chats[1].body, "user");
    assert!(delegated.contains("Current Task: Write a tagline for the spring sale"), "{delegated}");
    assert!(delegated.contains("Garden sofas, 20% off"), "{delegated}");
    assert!(chats[1].body.get("tools").is_none());
    // The writer's answer is the tool result the manager sees.
    let history = messages(&chats[2].body);
    assert_eq!(history.last().unwrap()["content"], "Spring into savings: 20% off garden sofas!");
    // ask_question found the researcher by role.
    assert!(content_of(&chats[3].body, "system").starts_with("You are Market researcher."));
    assert!(content_of(&chats[3].body, "user").contains("Is 20% competitive?"));

    let by_agent = &run["usage"]["byAgent"];
    assert_eq!(by_agent["manager"]["llmCalls"], 3);
    assert_eq!(by_agent["writer"]["totalTokens"], 52);
    assert_eq!(by_agent["researcher"]["totalTokens"], 38);

    let events = app.events(run["id"].as_str().unwrap(), None).await;
    let delegations: Vec<(&str, &str)> = events
        .iter()
        .filter(|(e, _, _)| e == "delegation_started")
        .map(|(_, _, d)| (d["to"].as_str().unwrap(), d["tool"].as_str().unwrap()))
        .collect();
    assert_eq!(delegations, [("writer", "delegate_work"), ("researcher", "ask_question")]);
}

#[tokio::test]
async fn agents_with_allow_delegation_ask_coworkers_but_not_in_circles() {
    let stub = StubServer::with_script([
        Reply::tool_calls(
            &[("q", "ask_question", json!({"coworker": "researcher", "question": "Best month?", "context": "sofas"}))],
            10,
            5,
        ),
        Reply::text("April.", 10, 2),
        Reply::text("Buy sofas in April!", 10, 4),
    ])
    .await;
    let mut c = crew(&stub.base_url(), json!({}));
    c.agents[0].allow_delegation = true;
    c.agents[1].allow_delegation = true;
    let app = app_with(c, &[], support::options()).await;
    let run = app.run(json!({"description": "Tagline", "agent": "writer"})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let chats = stub.chat_requests();
    assert_eq!(tool_names(&chats[0].body), ["delegate_work", "ask_question"]);
    assert_eq!(
        chats[0].body["tools"][0]["function"]["parameters"]["properties"]["coworker"]["enum"],
        json!(["researcher"])
    );
    // The researcher, itself allowed to delegate, may delegate one level deeper (to the writer).
    assert_eq!(tool_names(&chats[1].body), ["delegate_work", "ask_question"]);
}

#[tokio::test]
async fn max_iterations_bounds_the_tool_loop() {
    let stub = StubServer::start().await;
    stub.repeat(Reply::tool_calls(&[("c", "http_request", json!({"integration": "cms", "path": "/again"}))], 10, 5));
    let app = crew_with_integration(&stub, json!({})).await;
    // researcher has maxIterations 5 in the test crew; make it 3.
    let mut c = (*app.runtime.state.engine.crew()).clone();
    c.agents[0].max_iterations = 3;
    drop(app);
    let app = app_with(c, &[("CMS_TOKEN", INTEGRATION_SECRET)], options()).await;
    let run = app.run(json!({"description": "Loop forever", "agent": "researcher"})).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["category"], "max_iterations");
    assert_eq!(run["error"]["message"], "agent researcher reached maxIterations (3) without a final answer");
    let chats = stub.chat_requests();
    assert_eq!(chats.len(), 3, "maxIterations is the number of model calls");
    assert_eq!(
        stub.requests().iter().filter(|r| r.path.starts_with("/cms")).count(),
        2,
        "the last call may not use tools"
    );
    // The last call still lists the tools (providers need them for the history) but forbids them.
    assert_eq!(chats[2].body["tool_choice"], "none");
    assert_eq!(chats[1].body["tool_choice"], "auto");
    assert!(
        messages(&chats[2].body).last().unwrap()["content"]
            .as_str()
            .unwrap()
            .contains("give your best complete final answer now")
    );

    // A final answer on the last call completes the task.
    let stub2 = StubServer::with_script([
        Reply::tool_calls(&[("c", "http_request", json!({"integration": "cms", "path": "/a"}))], 10, 5),
        Reply::tool_calls(&[("c", "http_request", json!({"integration": "cms", "path": "/b"}))], 10, 5),
        Reply::text("done with what I had", 10, 5),
    ])
    .await;
    let mut c = crew(
        &stub2.base_url(),
        json!({"integrations": [{"name": "cms", "baseUrl": stub2.url("/cms"), "credentialEnv": "CMS_TOKEN"}]}),
    );
    c.agents[0].tools = vec!["http_request".into()];
    c.agents[0].max_iterations = 3;
    let app = app_with(c, &[("CMS_TOKEN", INTEGRATION_SECRET)], options()).await;
    let run = app.run(json!({"description": "Loop", "agent": "researcher"})).await;
    assert_eq!(run["output"], "done with what I had", "{run}");
}

#[tokio::test]
async fn budget_exhaustion_stops_the_run() {
    // 2,000 tokens per run: the first call reports 1,900, so the next prompt does not fit.
    let stub = StubServer::with_script([Reply::text("first", 1_500, 400), Reply::text("never", 1, 1)]).await;
    let first = app(crew(&stub.base_url(), json!({"maxTokensPerRun": 2000}))).await;
    let run = first.run(json!({"description": "Two agents, one task"})).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["category"], "budget_exceeded");
    let message = run["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("would exceed the run's token budget (maxTokensPerRun 2000): 1900 tokens used"),
        "{message}"
    );
    assert_eq!(stub.chat_requests().len(), 1, "the second call is not made");
    assert_eq!(stub.remaining(), 1);
    assert_eq!(run["tasks"].as_array().unwrap().len(), 1, "the first task's output is kept");
    // The first request's max_tokens was capped by what was left of the budget.
    let cap = stub.chat_requests()[0].body["max_tokens"].as_u64().unwrap();
    assert!(cap < 2000 && cap > 1500, "{cap}");

    // A call that reports more than what is left ends the run too.
    let stub = StubServer::with_script([Reply::text("too much", 500, 2_000)]).await;
    let second = app(crew(&stub.base_url(), json!({"maxTokensPerRun": 1000}))).await;
    let run = second.run(json!({"description": "x", "agent": "writer"})).await;
    assert_eq!(run["error"]["category"], "budget_exceeded");
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeded its token budget (maxTokensPerRun 1000) with 2500 tokens")
    );

    // An answer cut off at the cap ("length") would have exceeded it.
    let stub = StubServer::with_script([Reply::Json {
        status: 200,
        body: json!({"choices": [{"message": {"role": "assistant", "content": "cut"}, "finish_reason": "length"}],
                     "usage": {"prompt_tokens": 100, "completion_tokens": 850}}),
        headers: vec![],
    }])
    .await;
    let second = app(crew(&stub.base_url(), json!({"maxTokensPerRun": 1000}))).await;
    let run = second.run(json!({"description": "x", "agent": "writer"})).await;
    assert_eq!(run["error"]["category"], "budget_exceeded");
    assert!(run["error"]["message"].as_str().unwrap().contains("cut off"), "{run}");
}

#[tokio::test]
async fn monthly_budget_is_enforced() {
    let stub = StubServer::start().await;
    stub.repeat(Reply::text("ok", 300, 300));
    let app = app(crew(&stub.base_url(), json!({"monthlyTokens": 1000}))).await;
    assert_eq!(app.run(json!({"description": "x", "agent": "writer"})).await["status"], "succeeded");
    let run = app.run(json!({"description": "x"})).await;
    assert_eq!(run["error"]["category"], "monthly_budget_exceeded", "{run}");
    assert_eq!(stub.chat_requests().len(), 2);
    let (_, crew) = app.get("/v1/crew").await;
    assert_eq!(crew["budget"]["monthlyUsed"], 1200);
}

#[tokio::test]
async fn payment_required_stops_the_run_without_retry() {
    let stub = StubServer::with_script([
        Reply::error(402, "This request requires more credits, or fewer max_tokens."),
        Reply::text("never", 1, 1),
    ])
    .await;
    let app = app(crew(&stub.base_url(), json!({"model": {"openrouter": true, "fallbacks": ["other/model"]}}))).await;
    let run = app.run(json!({"description": "x"})).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["category"], "llm_payment_required");
    let message = run["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("agent researcher: the model gateway answered 402 Payment Required"), "{message}");
    assert!(message.contains("requires more credits") && message.ends_with("not retried"), "{message}");
    assert_eq!(stub.chat_requests().len(), 1);
    let (_, metrics) = app.get("/metrics").await;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains(r#"bizosaas_agent_runs_total{outcome="llm_payment_required"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"bizosaas_agent_llm_requests_total{model="agent-model",outcome="llm_payment_required"} 1"#)
    );
}

#[tokio::test]
async fn rate_limits_are_retried_within_a_run() {
    let stub =
        StubServer::with_script([Reply::rate_limited("0"), Reply::error(503, "busy"), Reply::text("ok", 3, 1)]).await;
    let app = app(crew(&stub.base_url(), json!({}))).await;
    let run = app.run(json!({"description": "x", "agent": "writer"})).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let events = app.events(run["id"].as_str().unwrap(), None).await;
    let call = events.iter().find(|(e, _, _)| e == "llm_call").unwrap();
    assert_eq!(call.2["attempts"], 3);
    assert_eq!(run["usage"]["llmCalls"], 1, "retries are not calls");
}

#[tokio::test]
async fn streamed_tool_calls_run_through_the_engine() {
    let args = json!({"integration": "cms", "path": "/pages/", "query": {"lang": "en"}});
    let stub = StubServer::with_script([
        Reply::stream_tool_call("s1", "http_request", &args, 6, 5, 20, 10),
        Reply::stream_text("Streamed answer.", 4, 30, 5),
    ])
    .await;
    let mut c = crew(
        &stub.base_url(),
        json!({"integrations": [{"name": "cms", "baseUrl": stub.url("/cms"), "credentialEnv": "CMS_TOKEN"}]}),
    );
    c.agents[0].tools = vec!["http_request".into()];
    let mut o = options();
    o.client.stream = true;
    let app = app_with(c, &[("CMS_TOKEN", INTEGRATION_SECRET)], o).await;
    let run = app.run(json!({"description": "x", "agent": "researcher"})).await;
    assert_eq!(run["output"], "Streamed answer.", "{run}");
    assert_eq!(run["usage"]["totalTokens"], 65);
    let hit = stub.requests().into_iter().find(|r| r.path == "/cms/pages/").expect("tool request");
    assert_eq!(hit.query.as_deref(), Some("lang=en"));
    let chats = stub.chat_requests();
    assert_eq!(messages(&chats[1].body)[2]["tool_calls"][0]["function"]["arguments"], args.to_string());
}

#[tokio::test]
async fn idempotency_key_returns_the_same_run() {
    let stub = StubServer::start().await;
    stub.repeat(Reply::text("ok", 1, 1).delayed(Duration::from_millis(100)));
    let app = app(crew(&stub.base_url(), json!({}))).await;
    let body = json!({"description": "Once only", "agent": "writer"});

    // Concurrent retries of the same request make one run.
    let posts = (0..4).map(|_| app.post_run(&body, Some("wf-run-7-step-draft"), None));
    let answers = futures::future::join_all(posts).await;
    let ids: Vec<&str> = answers.iter().map(|(_, _, v)| v["id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(answers.iter().filter(|(s, _, _)| *s == StatusCode::CREATED).count(), 1);
    let replay = answers.iter().find(|(s, _, _)| *s == StatusCode::OK).unwrap();
    assert_eq!(replay.1["idempotent-replayed"], "true");
    assert_eq!(replay.1["location"], format!("/v1/runs/{}", ids[0]));

    // A later retry, after the run finished, gets the finished run.
    let (status, _, view) = app.post_run(&body, Some("wf-run-7-step-draft"), Some(10.0)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((view["id"].as_str().unwrap(), view["status"].as_str().unwrap()), (ids[0], "succeeded"));
    assert_eq!(view["idempotencyKey"], "wf-run-7-step-draft");
    assert_eq!(stub.chat_requests().len(), 1, "the model was called for one run only");

    // The same key with another request is refused.
    let (status, _, err) =
        app.post_run(&json!({"description": "Something else"}), Some("wf-run-7-step-draft"), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["category"], "idempotency_key_reused");

    // Without a key every POST is a new run.
    let (_, _, a) = app.post_run(&body, None, Some(10.0)).await;
    let (_, _, b) = app.post_run(&body, None, Some(10.0)).await;
    assert_ne!(a["id"], b["id"]);
}

/// Five tasks whose model calls take `delay` each.
fn slow_run() -> Value {
    json!({"tasks": (0..5).map(|i| json!({"description": format!("Step {i}"), "agent": "writer"})).collect::<Vec<_>>()})
}

#[tokio::test]
async fn delete_cancels_a_run_and_no_more_model_calls_are_made() {
    let stub = StubServer::start().await;
    stub.repeat(Reply::text("ok", 3, 2).delayed(Duration::from_millis(400)));
    let mut o = options();
    o.max_concurrent_runs = 1;
    let app = app_with(crew(&stub.base_url(), json!({})), &[], o).await;

    // A running run (its first model call in flight) and one queued behind it.
    let (_, _, running) = app.post_run(&slow_run(), None, None).await;
    let (_, _, queued) = app.post_run(&slow_run(), None, None).await;
    let (running, queued) = (running["id"].as_str().unwrap(), queued["id"].as_str().unwrap());
    assert!(eventually(Duration::from_secs(5), || !stub.chat_requests().is_empty()).await);

    let (status, view) = app.delete(&format!("/v1/runs/{queued}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{view}");
    assert_eq!(view["cancelRequested"], true);
    let view = app.wait_for(queued, Duration::from_secs(5), |v| v["status"] == "cancelled").await;
    assert_eq!(view["status"], "cancelled", "{view}");
    assert!(view.get("startedAt").is_none(), "the queued run never started: {view}");

    let resp = app.http.delete(app.url(&format!("/v1/runs/{running}?wait=5"))).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["status"], "cancelled", "?wait= waits for the stop: {view}");
    assert_eq!(view["error"]["category"], "cancelled");
    assert!(view["finishedAt"].is_string());
    assert!(view.get("output").is_none());
    let calls = stub.chat_requests().len();
    assert!(calls <= 2, "{calls} model calls");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(stub.chat_requests().len(), calls, "no model call after the cancel");

    // The event stream ends with the cancel.
    let events = app.events(running, None).await;
    let last = events.last().unwrap();
    assert_eq!((last.0.as_str(), last.2["status"].as_str()), ("run_finished", Some("cancelled")));

    // A finished run cannot be cancelled; an unknown one is not found.
    let (status, err) = app.delete(&format!("/v1/runs/{running}")).await;
    assert_eq!((status, err["error"]["category"].as_str()), (StatusCode::CONFLICT, Some("run_finished")));
    assert!(err["error"]["message"].as_str().unwrap().contains("already finished (cancelled)"), "{err}");
    let (status, err) = app.delete("/v1/runs/run-0000000000000000").await;
    assert_eq!((status, err["error"]["category"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));

    let (_, metrics) = app.get("/metrics").await;
    assert!(metrics.as_str().unwrap().contains(r#"bizosaas_agent_runs_total{outcome="cancelled"} 2"#), "{metrics}");
    assert!(metrics.as_str().unwrap().contains("bizosaas_agent_runs_active 0"));
}

#[tokio::test]
async fn runs_still_active_at_shutdown_are_interrupted() {
    let stub = StubServer::start().await;
    stub.repeat(Reply::text("ok", 3, 2).delayed(Duration::from_secs(30)));
    let app = app(crew(&stub.base_url(), json!({}))).await;
    let (_, _, run) = app.post_run(&json!({"description": "x", "agent": "writer"}), None, None).await;
    let id = run["id"].as_str().unwrap();
    assert!(eventually(Duration::from_secs(5), || !stub.chat_requests().is_empty()).await);
    let executor = &app.runtime.state.executor;
    assert!(!executor.drain(Duration::from_millis(100)).await);
    assert_eq!(executor.interrupt_all(), 1);
    assert!(executor.drain(Duration::from_secs(5)).await);
    let (_, view) = app.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(view["status"], "interrupted", "{view}");
    assert_eq!(view["error"]["message"], bizosaas_agent::store::INTERRUPTED_MESSAGE);
}

#[tokio::test]
async fn events_stream_the_steps_as_server_sent_events() {
    let stub = StubServer::with_script([
        Reply::tool_calls(&[("c1", "http_request", json!({"integration": "cms", "path": "/p"}))], 10, 5)
            .delayed(Duration::from_millis(150)),
        Reply::text("done", 10, 5).delayed(Duration::from_millis(150)),
    ])
    .await;
    let app = crew_with_integration(&stub, json!({})).await;
    let (status, headers, view) = app.post_run(&json!({"description": "x", "agent": "researcher"}), None, None).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(matches!(view["status"].as_str(), Some("queued" | "running")), "{view}");
    let id = view["id"].as_str().unwrap();
    assert_eq!(headers["location"], format!("/v1/runs/{id}"));
    // Follow live from the start.
    let events = app.events(id, None).await;
    let kinds: Vec<&str> = events.iter().map(|(e, _, _)| e.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "task_started",
            "llm_call",
            "tool_started",
            "tool_finished",
            "llm_call",
            "task_finished",
            "run_finished"
        ]
    );
    let ids: Vec<u64> = events.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids, (1..=8).collect::<Vec<_>>());
    assert_eq!(events[2].2["toolCalls"], json!(["http_request"]));
    assert_eq!(events[3].2["arguments"], json!({"integration": "cms", "path": "/p"}));
    assert_eq!(events[4].2["ok"], true);
    assert_eq!(events[7].2["status"], "succeeded");
    assert_eq!(events[7].2["usage"]["totalTokens"], 30);
    for (kind, _, data) in &events {
        assert_eq!(data["type"], kind.as_str());
    }
    // Resuming after an event id replays only what came later.
    let rest = app.events(id, Some(6)).await;
    assert_eq!(rest.iter().map(|(_, id, _)| *id).collect::<Vec<_>>(), [7, 8]);
    let (_, run) = app.get(&format!("/v1/runs/{id}")).await;
    assert_eq!((run["status"].as_str(), run["events"].as_u64()), (Some("succeeded"), Some(8)));
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_category() {
    let stub = StubServer::start().await;
    let app = app(crew(&stub.base_url(), json!({}))).await;
    let cases = [
        (json!({}), "a run needs a description or tasks"),
        (json!({"description": "  "}), "the description is empty"),
        (json!({"description": "x", "expected_output": "y"}), "unknown field `expected_output`"),
    ];
    for (body, expected) in cases {
        let (status, _, err) = app.post_run(&body, None, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(err["error"]["category"], "invalid_request");
        assert!(err["error"]["message"].as_str().unwrap().contains(expected), "{err}");
    }
    let resp =
        app.http.post(app.url("/v1/runs")).header("content-type", "application/json").body("{").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (status, err) = app.get("/v1/runs/run-0000000000000000").await;
    assert_eq!((status, err["error"]["category"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, _, err) = app.post_run(&json!({"description": "x"}), Some("has space"), None).await;
    assert_eq!((status, err["error"]["category"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
    assert!(stub.chat_requests().is_empty());
}

#[tokio::test]
async fn probes_metrics_crew_and_run_list() {
    let stub = StubServer::with_script([Reply::text("ok", 5, 5)]).await;
    let app = app(crew(&stub.base_url(), json!({}))).await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, Some("ok")));
    assert_eq!(app.get("/readyz").await.0, StatusCode::OK);
    let run = app.run(json!({"description": "x", "agent": "writer"})).await;
    let (_, list) = app.get("/v1/runs").await;
    assert_eq!(list["runs"][0]["id"], run["id"]);
    assert_eq!(list["runs"][0]["totalTokens"], 10);
    let (_, crew) = app.get("/v1/crew").await;
    assert_eq!(crew["agents"][1]["name"], "writer");
    assert!(!crew.to_string().contains(LLM_KEY));
    let resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    for expected in [
        r#"bizosaas_agent_runs_total{outcome="succeeded"} 1"#,
        r#"bizosaas_agent_tokens_total{tenant="acme",crew="growth-team",agent="writer",model="agent-model",kind="prompt"} 5"#,
        r#"bizosaas_agent_llm_requests_total{model="agent-model",outcome="ok"} 1"#,
        "bizosaas_agent_runs_active 0",
    ] {
        assert!(text.contains(expected), "{expected} missing in\n{text}");
    }
    assert!(!text.contains(LLM_KEY));
}

#[tokio::test]
async fn missing_credentials_fail_at_startup_naming_the_variable() {
    let stub = StubServer::start().await;
    let c = crew(&stub.base_url(), json!({}));
    let err = bizosaas_agent::serve::build(c.clone(), &|_| None, options()).err().unwrap();
    assert_eq!(err.to_string(), "environment variable TEST_LLM_KEY (API key of model agent-model) is not set");
    let mut with_memory = c.clone();
    with_memory.memory = true;
    let err = bizosaas_agent::serve::build(with_memory, &|k| (k == "TEST_LLM_KEY").then(|| "k".into()), options())
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "environment variable DATABASE_URL (tenant database for memory) is not set");
    // A stale time that a live run's heartbeat could miss is refused.
    let mut o = options();
    o.runs.stale_after = o.runs.heartbeat_interval;
    let err = bizosaas_agent::serve::build(c, &|_| Some("k".into()), o).err().unwrap();
    assert!(err.to_string().contains("at least twice the heartbeat interval"), "{err}");
}
