//! The usage and performance reports over the ledger (issue 4): `GET /api/stats/usage`,
//! `/api/stats/performance` and `/api/monitoring/performance`, admin only, filtered and
//! paginated, against SQLite and PostgreSQL.

use std::time::{Duration, Instant};

use crate::support::client::Response;
use crate::support::gateway::{Gateway, Setup};
use crate::support::mock_upstream::{MockUpstream, Reply};
use crate::support::postgres::Postgres;
use crate::{assert_envelope, bounded, chat_body};

const KEY: &str = "sk-stats-team";
const ADMIN: &str = "stats-admin-token";

fn setup(mock: &MockUpstream, usage: &str) -> Setup {
    Setup::new(format!(
        "providers:\n  mock:\n    type: openai\n    endpoints: [\"{}\"]\n\nmodels:\n  chat:\n    targets: [{{ provider: mock, model: m }}]\n    pricing: {{ input: 1000, output: 1000, per: 1M }}\n  other:\n    targets: [{{ provider: mock, model: o }}]\n    retry_on: [connect]\n\nkeys:\n  team:\n    key: {KEY}\n{usage}",
        mock.url()
    ))
    .server_extra(&format!("  admin_token: {ADMIN}"))
}

async fn chat(gw: &Gateway, model: &str, stream: bool) -> Response {
    let auth = format!("Bearer {KEY}");
    gw.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        chat_body(model, stream).to_string().as_bytes(),
    )
    .await
}

async fn admin_get(gw: &Gateway, path: &str) -> Response {
    let auth = format!("Bearer {ADMIN}");
    gw.request("GET", path, &[("Authorization", &auth)], b"")
        .await
}

async fn reports(usage: String) {
    let mock = MockUpstream::start().await;
    mock.on_model("o", Reply::status(500));
    let gw = Gateway::start(setup(&mock, &usage)).await;
    for stream in [false, true, false, true] {
        assert_eq!(chat(&gw, "chat", stream).await.status, 200);
    }
    assert_eq!(chat(&gw, "other", false).await.status, 502);
    // The ledger is written in the background: wait until the report shows all five.
    let started = Instant::now();
    let usage = loop {
        let r = admin_get(&gw, "/api/stats/usage").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if v["total_requests"] == 5 {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ledger rows never arrived: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(usage["by_model"]["chat"]["requests"], 4);
    assert_eq!(usage["by_model"]["other"]["requests"], 1);
    // 4 × (11 prompt + 3 completion) tokens at $1000 / 1M each.
    assert_eq!(usage["by_model"]["chat"]["tokens"], 56);
    let cost = usage["by_model"]["chat"]["cost"].as_f64().unwrap();
    assert!((cost - 0.056).abs() < 1e-9, "{cost}");
    assert!((usage["total_cost"].as_f64().unwrap() - 0.056).abs() < 1e-9);

    let only_chat = admin_get(&gw, "/api/stats/usage?model=chat&key=team")
        .await
        .json();
    assert_eq!(only_chat["total_requests"], 4);
    let nobody = admin_get(&gw, "/api/stats/usage?key=someone-else")
        .await
        .json();
    assert_eq!(nobody["total_requests"], 0);
    let past = admin_get(
        &gw,
        "/api/stats/usage?start_date=2020-01-01&end_date=2020-01-31",
    )
    .await
    .json();
    assert_eq!(past["total_requests"], 0);
    assert_eq!(past["period"]["start"], "2020-01-01");
    let bad = admin_get(&gw, "/api/stats/usage?start_date=yesterday").await;
    assert_envelope(
        &bad,
        400,
        "invalid_request_error",
        "invalid_value",
        Some("start_date"),
    );

    let perf = admin_get(&gw, "/api/stats/performance").await.json();
    assert_eq!(perf["success_rate"], 0.8);
    assert!((perf["error_rate"].as_f64().unwrap() - 0.2).abs() < 1e-9);
    let rt = &perf["response_times"];
    assert!(rt["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(rt["p50_ms"].as_f64() <= rt["p99_ms"].as_f64());
    assert!(perf["throughput"]["requests_per_minute"].as_f64().unwrap() > 0.0);

    let mon = admin_get(&gw, "/api/monitoring/performance?time_range=1h")
        .await
        .json();
    let models = mon["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let other = models.iter().find(|m| m["model_id"] == "other").unwrap();
    assert_eq!(other["failed_requests"], 1);
    assert_eq!(other["error_rate"], 1.0);
    let page2 = admin_get(
        &gw,
        "/api/monitoring/performance?time_range=1h&page=2&page_size=1",
    )
    .await
    .json();
    assert_eq!(page2["models"].as_array().unwrap().len(), 1);
    assert_eq!(
        page2["models"][0]["model_id"], "other",
        "sorted by model, second page"
    );
    // Host load: sampled in the background, there within seconds of start.
    let started = Instant::now();
    loop {
        let sys = admin_get(&gw, "/api/monitoring/performance?time_range=1h")
            .await
            .json()["system"]
            .clone();
        assert!(
            sys["avg_gpu_utilization"].is_null(),
            "no GPU sampling yet: {sys}"
        );
        if let (Some(cpu), Some(mem)) = (
            sys["avg_cpu_percent"].as_f64(),
            sys["avg_memory_percent"].as_f64(),
        ) {
            assert!(
                (0.0..=100.0).contains(&cpu) && mem > 0.0 && mem <= 100.0,
                "{sys}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no host sample: {sys}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bad = admin_get(&gw, "/api/monitoring/performance?time_range=2h").await;
    assert_envelope(
        &bad,
        400,
        "invalid_request_error",
        "invalid_value",
        Some("time_range"),
    );
    // Admin only.
    let auth = format!("Bearer {KEY}");
    let r = gw
        .request("GET", "/api/stats/usage", &[("Authorization", &auth)], b"")
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn reports_over_the_sqlite_ledger() {
    bounded(60, reports(String::new())).await;
}

#[tokio::test]
async fn reports_over_the_postgres_ledger() {
    let pg = Postgres::start();
    bounded(
        60,
        reports(format!("usage: {{ store: \"{}\" }}\n", pg.url())),
    )
    .await;
}

/// `x-switchyard-cost: true` adds the reference API's `cost` block to a response.
#[tokio::test]
async fn the_cost_block_comes_on_request() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(setup(&mock, "")).await;
        let auth = format!("Bearer {KEY}");
        let body = chat_body("chat", false).to_string();
        let with = gw
            .request(
                "POST",
                "/v1/chat/completions",
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", &auth),
                    ("x-switchyard-cost", "true"),
                ],
                body.as_bytes(),
            )
            .await;
        let v = with.json();
        // 11 prompt and 3 completion tokens at $1000 / 1M each.
        let close = |x: &serde_json::Value, want: f64| (x.as_f64().unwrap() - want).abs() < 1e-12;
        assert!(close(&v["cost"]["input_cost"], 0.011), "{v}");
        assert!(close(&v["cost"]["output_cost"], 0.003), "{v}");
        assert!(close(&v["cost"]["total_cost"], 0.014), "{v}");
        assert_eq!(v["usage"]["total_tokens"], 14);
        let without = chat(&gw, "chat", false).await.json();
        assert!(without.get("cost").is_none(), "only when asked: {without}");
        // A stream carries it in the usage chunk (so the client asks for that too).
        let mut body = chat_body("chat", true);
        body["stream_options"] = serde_json::json!({"include_usage": true});
        let mut c = crate::support::client::HttpClient::connect(gw.addr())
            .await
            .unwrap();
        c.send(
            "POST",
            "/v1/chat/completions",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
                ("x-switchyard-cost", "true"),
            ],
            body.to_string().as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 200);
        let events = c.all_events().await.unwrap();
        let usage_chunk = events
            .iter()
            .filter(|e| !e.is_done())
            .map(|e| e.json())
            .find(|v| v["usage"].is_object())
            .expect("the usage chunk");
        assert!(
            close(&usage_chunk["cost"]["total_cost"], 0.014),
            "{usage_chunk}"
        );
        let content_chunks_with_cost = events
            .iter()
            .filter(|e| !e.is_done())
            .filter(|e| {
                e.json()["choices"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
            })
            .filter(|e| e.json().get("cost").is_some())
            .count();
        assert_eq!(content_chunks_with_cost, 0, "only the usage chunk has it");
    })
    .await;
}
