//! Usage accounting and the ledger row (contract §5.2, §5.3, §6; reliability.md F4, F5,
//! G1–G4): usage from upstream when given, counted or estimated (and marked) when not,
//! and a client that leaves closes the upstream at once and is billed what it got.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::client::HttpClient;
use crate::support::gateway::{Gateway, Setup, one_model};
use crate::support::mock_upstream::{
    CloseKind, MOCK_PROMPT_TOKENS, MockUpstream, Reply, numbered_tokens,
};
use crate::{bounded, chat_body};

/// The ledger fields every access-log row carries (contract §6).
const LEDGER_FIELDS: &[&str] = &[
    "request_id",
    "model_requested",
    "model",
    "provider",
    "stream",
    "status",
    "http_status",
    "attempts",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "usage_source",
    "duration_ms",
];

#[track_caller]
fn assert_ledger_shape(log: &Value) {
    for f in LEDGER_FIELDS {
        assert!(
            log.get(*f).is_some_and(|v| !v.is_null()),
            "ledger field {f} missing: {log}"
        );
    }
    assert!(log["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
}

#[tokio::test]
async fn non_stream_usage_comes_from_upstream() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let r = gw
            .post_json(
                "/v1/chat/completions",
                "acct-ns-1",
                &chat_body("gpt-3.5-turbo", false),
            )
            .await;
        assert_eq!(r.status, 200);
        let log = gw.access_log("acct-ns-1").await;
        assert_ledger_shape(&log);
        assert_eq!(log["model_requested"], "gpt-3.5-turbo");
        assert_eq!(log["model"], "chat");
        assert_eq!(log["provider"], "mock");
        assert_eq!(log["stream"], false);
        assert_eq!(log["status"], "ok");
        assert_eq!(log["http_status"], 200);
        assert_eq!(log["attempts"], 1);
        assert_eq!(log["prompt_tokens"], MOCK_PROMPT_TOKENS);
        assert_eq!(log["completion_tokens"], 3);
        assert_eq!(log["cached_tokens"], 0);
        assert_eq!(log["usage_source"], "upstream");
        assert_eq!(gw.access_log_count("acct-ns-1"), 1, "exactly one row");
    })
    .await;
}

#[tokio::test]
async fn cached_tokens_are_taken_from_upstream_usage() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let body = json!({
            "id": "x", "object": "chat.completion", "created": 1, "model": "upstream-id",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
                      "prompt_tokens_details": {"cached_tokens": 64}},
        });
        mock.set_default(Reply::json(200, body.to_string()));
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let r = gw.post_json("/v1/chat/completions", "acct-cached", &chat_body("chat", false)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"], 64);
        let log = gw.access_log("acct-cached").await;
        assert_eq!(log["prompt_tokens"], 100);
        assert_eq!(log["completion_tokens"], 7);
        assert_eq!(log["cached_tokens"], 64);
        assert_eq!(log["usage_source"], "upstream");
    })
    .await;
}

#[tokio::test]
async fn stream_usage_comes_from_upstream_with_ttft() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(Reply::sse(numbered_tokens(6), Duration::from_millis(5)));
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let (mut c, _) = gw
            .start_stream("/v1/chat/completions", "acct-s-1", &chat_body("chat", true))
            .await;
        let events = c.all_events().await.unwrap();
        assert!(events.last().unwrap().is_done());
        let log = gw.access_log("acct-s-1").await;
        assert_ledger_shape(&log);
        assert_eq!(log["stream"], true);
        assert_eq!(log["status"], "ok");
        assert_eq!(log["http_status"], 200);
        assert_eq!(log["completion_tokens"], 6);
        assert_eq!(log["prompt_tokens"], MOCK_PROMPT_TOKENS);
        assert_eq!(log["usage_source"], "upstream");
        let ttft = log["ttft_ms"].as_f64().expect("ttft_ms on a stream");
        let total = log["duration_ms"].as_f64().unwrap();
        assert!(ttft > 0.0 && ttft <= total, "ttft {ttft} duration {total}");
    })
    .await;
}

#[tokio::test]
async fn stream_without_upstream_usage_counts_deltas() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(Reply::sse(numbered_tokens(37), Duration::ZERO).usage_chunk(false));
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        for (id, ask) in [("acct-count-1", false), ("acct-count-2", true)] {
            let mut body = chat_body("chat", true);
            if ask {
                body["stream_options"] = json!({"include_usage": true});
            }
            let (mut c, _) = gw.start_stream("/v1/chat/completions", id, &body).await;
            let events = c.all_events().await.unwrap();
            assert_eq!(events.len(), 38, "{id}: 37 deltas and [DONE]");
            let log = gw.access_log(id).await;
            assert_eq!(log["completion_tokens"], 37, "{id}: one token per delta");
            assert_eq!(log["usage_source"], "counted", "{id}");
            assert!(
                log["prompt_tokens"].as_u64().is_some_and(|n| n > 0),
                "{id}: prompt estimated, never a silent 0: {log}"
            );
            assert_eq!(log["status"], "ok");
        }
    })
    .await;
}

#[tokio::test]
async fn non_stream_without_usage_is_estimated_not_zero() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let body = json!({
            "id": "x", "object": "chat.completion", "created": 1, "model": "upstream-id",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "one two three four five"}, "finish_reason": "stop"}],
        });
        mock.set_default(Reply::json(200, body.to_string()));
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let r = gw.post_json("/v1/chat/completions", "acct-est-1", &chat_body("chat", false)).await;
        assert_eq!(r.status, 200);
        assert!(r.json().get("usage").is_none(), "the gateway does not invent a usage field");
        let log = gw.access_log("acct-est-1").await;
        let source = log["usage_source"].as_str().unwrap();
        assert!(source == "estimated" || source == "counted", "usage_source {source}");
        assert!(log["prompt_tokens"].as_u64().unwrap() > 0, "{log}");
        assert!(log["completion_tokens"].as_u64().unwrap() > 0, "{log}");
    })
    .await;
}

#[tokio::test]
async fn malformed_upstream_usage_passes_through_and_is_estimated() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        for (i, bad) in [json!(-5), json!(1e30), json!("12"), Value::Null].into_iter().enumerate() {
            let body = json!({
                "id": "x", "object": "chat.completion", "created": 1, "model": "upstream-id",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "a b c"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": bad, "total_tokens": 3},
            });
            mock.push(Reply::json(200, body.to_string()));
            let id = format!("acct-bad-usage-{i}");
            let r = gw.post_json("/v1/chat/completions", &id, &chat_body("chat", false)).await;
            assert_eq!(r.status, 200, "{id}: {}", r.text());
            assert_eq!(r.json()["choices"][0]["message"]["content"], "a b c");
            let log = gw.access_log(&id).await;
            assert_ne!(log["usage_source"], "upstream", "{id}: {log}");
            assert_ne!(log["usage_source"], "none", "{id}: {log}");
            let c = log["completion_tokens"].as_u64().unwrap_or(u64::MAX);
            assert!(c < 1000, "{id}: completion_tokens {c}");
        }
    })
    .await;
}

/// G1: the client reads 10 events, then leaves; the upstream connection must close within
/// 1 s, and the row says `client_cancelled` with the counted tokens.
async fn disconnect_mid_stream(rst: bool) {
    let mock = MockUpstream::start().await;
    mock.set_default(Reply::sse(numbered_tokens(2000), Duration::from_millis(20)));
    let gw = Gateway::start(Setup::new(one_model(&mock))).await;
    let id = if rst { "g1-rst" } else { "g1-fin" };
    let (mut c, head) = gw
        .start_stream("/v1/chat/completions", id, &chat_body("chat", true))
        .await;
    assert_eq!(head.status, 200);
    for _ in 0..10 {
        c.next_event().await.unwrap().unwrap();
    }
    let left = Instant::now();
    let keep_alive;
    if rst {
        c.rst();
        keep_alive = None;
    } else {
        c.fin().await;
        keep_alive = Some(c);
    }
    let conn = mock.requests()[0].conn;
    let (closed_at, how) = mock
        .wait_conn_closed(conn, Duration::from_secs(5))
        .await
        .expect("the upstream connection was not closed within 5 s of the client leaving");
    let after = closed_at.saturating_duration_since(left);
    assert!(
        after <= Duration::from_secs(1),
        "upstream closed {after:?} after the client left"
    );
    assert_ne!(how, CloseKind::Mock, "the gateway closed it, not the mock");
    drop(keep_alive);

    let log = gw.access_log(id).await;
    assert_eq!(log["status"], "client_cancelled", "{log}");
    assert_eq!(log["usage_source"], "counted", "{log}");
    let n = log["completion_tokens"].as_u64().unwrap();
    assert!((10..=60).contains(&n), "completion tokens {n}");
    assert!(
        log["prompt_tokens"].as_u64().unwrap() > 0,
        "prompt estimated: {log}"
    );
    assert_eq!(gw.access_log_count(id), 1);
    assert!(mock.events_sent() < 200, "the upstream stopped producing");
}

#[tokio::test]
async fn client_fin_mid_stream_closes_upstream_within_1s() {
    bounded(60, disconnect_mid_stream(false)).await;
}

#[tokio::test]
async fn client_rst_mid_stream_closes_upstream_within_1s() {
    bounded(60, disconnect_mid_stream(true)).await;
}

/// G2/G3/G4: the client leaves before the first response byte, while the upstream holds its
/// headers back.
async fn disconnect_before_first_byte(stream: bool, rst: bool) {
    let mock = MockUpstream::start().await;
    mock.set_default(Reply::auto().slow_headers(Duration::from_secs(5)));
    let gw = Gateway::start(Setup::new(one_model(&mock))).await;
    let id = format!("g2-{stream}-{rst}");
    let mut c = HttpClient::connect(gw.addr()).await.unwrap();
    let body = chat_body("chat", stream).to_string();
    c.send(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json"), ("x-request-id", &id)],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert!(
        mock.wait_requests(1, Duration::from_secs(5)).await,
        "the request reached the upstream"
    );
    let left = Instant::now();
    let _keep = if rst {
        c.rst();
        None
    } else {
        c.fin().await;
        Some(c)
    };
    let conn = mock.requests()[0].conn;
    let (closed_at, _) = mock
        .wait_conn_closed(conn, Duration::from_secs(4))
        .await
        .expect("the upstream request was not aborted after the client left");
    let after = closed_at.saturating_duration_since(left);
    assert!(
        after <= Duration::from_secs(1),
        "upstream closed {after:?} after the client left"
    );
    let log = gw.access_log(&id).await;
    assert_eq!(log["status"], "client_cancelled", "{log}");
    assert_eq!(log["completion_tokens"], 0);
}

#[tokio::test]
async fn client_rst_before_first_byte_aborts_upstream_non_stream() {
    bounded(60, disconnect_before_first_byte(false, true)).await;
}

#[tokio::test]
async fn client_rst_before_first_byte_aborts_upstream_stream() {
    bounded(60, disconnect_before_first_byte(true, true)).await;
}

/// Contract §5.2: a FIN (half-close) before the response is complete counts as gone.
#[tokio::test]
async fn client_half_close_before_first_byte_aborts_upstream() {
    bounded(60, disconnect_before_first_byte(true, false)).await;
}
