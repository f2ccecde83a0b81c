//! Retries and fallback (contract §5.1; reliability.md H1, H4, H6, H7, H8): only before
//! anything reached the client, only on connect failure, timeout before headers or a
//! `retry_on` status; one attempt per upstream; a client's 4xx never retried.

use std::time::{Duration, Instant};

use crate::support::gateway::{Gateway, Setup, Timeouts, free_port, one_model};
use crate::support::mock_upstream::{CloseKind, Ending, MockUpstream, Reply, numbered_tokens};
use crate::{assert_envelope, bounded, chat_body};

/// `chat` → primary (`up-a`), falling back to model `backup` → secondary (`up-b`).
fn fallback_config(primary_url: &str, secondary: &MockUpstream) -> String {
    format!(
        "providers:\n  primary:\n    type: openai\n    endpoints: [\"{primary_url}\"]\n  secondary:\n    type: openai\n    endpoints: [\"{}\"]\n\nmodels:\n  chat:\n    aliases: [gpt-3.5-turbo]\n    targets:\n      - {{ provider: primary, model: up-a }}\n    fallbacks: [backup]\n    retry_on: [connect, timeout, 429, 500, 502, 503, 504]\n  backup:\n    targets:\n      - {{ provider: secondary, model: up-b }}\n",
        secondary.url()
    )
}

async fn fallback_pair() -> (MockUpstream, MockUpstream) {
    (MockUpstream::start().await, MockUpstream::start().await)
}

async fn check_falls_back(primary_reply: Reply, stream: bool, id: &str) {
    let (a, b) = fallback_pair().await;
    a.set_default(primary_reply);
    let gw = Gateway::start(Setup::new(fallback_config(&a.url(), &b))).await;
    let body = chat_body("gpt-3.5-turbo", stream);
    if stream {
        let (mut c, head) = gw.start_stream("/v1/chat/completions", id, &body).await;
        assert_eq!(head.status, 200, "{id}");
        assert_eq!(head.header("x-switchyard-provider"), Some("secondary"));
        let events = c.all_events().await.unwrap();
        assert!(events.last().unwrap().is_done(), "{id}: {events:?}");
        assert_eq!(events[0].json()["model"], "gpt-3.5-turbo");
    } else {
        let r = gw.post_json("/v1/chat/completions", id, &body).await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(
            r.json()["model"],
            "gpt-3.5-turbo",
            "the requested name, even from a fallback"
        );
        assert_eq!(r.header("x-switchyard-provider"), Some("secondary"));
        assert_eq!(r.header("x-switchyard-model"), Some("backup"));
    }
    assert_eq!(a.request_count(), 1, "{id}: one attempt on the primary");
    assert_eq!(b.request_count(), 1, "{id}: one attempt on the fallback");
    assert_eq!(b.requests()[0].model().as_deref(), Some("up-b"));
    let log = gw.access_log(id).await;
    assert_eq!(log["attempts"], 2, "{log}");
    assert_eq!(log["provider"], "secondary");
    assert_eq!(log["model_requested"], "gpt-3.5-turbo");
    assert_eq!(log["status"], "ok");
    assert_eq!(log["usage_source"], "upstream");
    assert_eq!(log["completion_tokens"], 3);
}

#[tokio::test]
async fn primary_503_falls_back() {
    bounded(60, check_falls_back(Reply::status(503), false, "fb-503")).await;
}

#[tokio::test]
async fn primary_500_falls_back_for_a_stream() {
    bounded(
        60,
        check_falls_back(Reply::status(500), true, "fb-500-stream"),
    )
    .await;
}

#[tokio::test]
async fn primary_429_falls_back() {
    bounded(
        60,
        check_falls_back(Reply::status(429).retry_after(2), false, "fb-429"),
    )
    .await;
}

#[tokio::test]
async fn connect_refused_falls_back() {
    bounded(60, async {
        let b = MockUpstream::start().await;
        let dead = format!("http://127.0.0.1:{}/v1", free_port());
        let gw = Gateway::start(Setup::new(fallback_config(&dead, &b))).await;
        let started = Instant::now();
        let r = gw
            .post_json(
                "/v1/chat/completions",
                "fb-refused",
                &chat_body("chat", false),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a refused connect fails fast"
        );
        assert_eq!(b.request_count(), 1);
        let log = gw.access_log("fb-refused").await;
        assert_eq!(log["attempts"], 2);
        assert_eq!(log["provider"], "secondary");
    })
    .await;
}

#[tokio::test]
async fn slow_headers_time_out_and_fall_back() {
    bounded(60, async {
        let (a, b) = fallback_pair().await;
        a.set_default(Reply::auto().slow_headers(Duration::from_secs(10)));
        let t = Timeouts {
            first_byte: "1s",
            ..Timeouts::default()
        };
        let gw = Gateway::start(Setup::new(fallback_config(&a.url(), &b)).timeouts(t)).await;
        let started = Instant::now();
        let r = gw
            .post_json("/v1/chat/completions", "fb-slow", &chat_body("chat", false))
            .await;
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "took {took:?}"
        );
        assert_eq!((a.request_count(), b.request_count()), (1, 1));
        let conn = a.requests()[0].conn;
        assert!(
            a.wait_conn_closed(conn, Duration::from_secs(2))
                .await
                .is_some(),
            "the timed-out attempt is closed"
        );
    })
    .await;
}

#[tokio::test]
async fn failing_target_is_skipped_within_one_model() {
    bounded(60, async {
        let (a, b) = fallback_pair().await;
        a.set_default(Reply::status(503));
        let yaml = format!(
            "providers:\n  pa:\n    type: openai\n    endpoints: [\"{}\"]\n  pb:\n    type: openai\n    endpoints: [\"{}\"]\n\nmodels:\n  chat:\n    targets:\n      - {{ provider: pa, model: up-a }}\n      - {{ provider: pb, model: up-b }}\n    retry_on: [connect, timeout, 429, 500, 502, 503, 504]\n",
            a.url(),
            b.url()
        );
        let gw = Gateway::start(Setup::new(yaml)).await;
        let mut attempts = 0;
        for i in 0..4 {
            let id = format!("fb-targets-{i}");
            let r = gw.post_json("/v1/chat/completions", &id, &chat_body("chat", false)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.header("x-switchyard-provider"), Some("pb"));
            let log = gw.access_log(&id).await;
            assert_eq!(log["provider"], "pb");
            attempts += log["attempts"].as_u64().unwrap();
        }
        assert_eq!(b.request_count(), 4);
        assert!(a.request_count() <= 4, "at most one attempt per request on the failing target");
        assert_eq!(attempts as usize, a.request_count() + b.request_count(), "ledger attempts match upstream counts");
    })
    .await;
}

#[tokio::test]
async fn deterministic_400_is_not_retried() {
    bounded(60, async {
        let (a, b) = fallback_pair().await;
        a.set_default(Reply::json(
            400,
            r#"{"error":{"message":"Invalid 'temperature': sk-UPSTREAM-TEXT","type":"invalid_request_error","param":"temperature","code":null}}"#,
        ));
        let gw = Gateway::start(Setup::new(fallback_config(&a.url(), &b))).await;
        let r = gw.post_json("/v1/chat/completions", "fb-400", &chat_body("chat", false)).await;
        assert_eq!(r.status, 400, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(!r.text().contains("sk-UPSTREAM-TEXT"), "upstream text never reaches the client");
        assert_eq!(a.request_count(), 1);
        assert_eq!(b.request_count(), 0, "no fallback on a deterministic 400");
        let log = gw.access_log("fb-400").await;
        assert_eq!(log["attempts"], 1);
        assert_eq!(log["completion_tokens"], 0);
    })
    .await;
}

#[tokio::test]
async fn context_length_400_is_mapped_and_not_retried() {
    bounded(60, async {
        let (a, b) = fallback_pair().await;
        a.set_default(Reply::json(
            400,
            r#"{"error":{"message":"This model's maximum context length is 4096 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
        ));
        let gw = Gateway::start(Setup::new(fallback_config(&a.url(), &b))).await;
        let r = gw.post_json("/v1/chat/completions", "fb-ctx", &chat_body("chat", false)).await;
        assert_envelope(&r, 400, "invalid_request_error", "context_length_exceeded", None);
        assert_eq!((a.request_count(), b.request_count()), (1, 0));
    })
    .await;
}

#[tokio::test]
async fn without_fallback_503_is_backend_unavailable_with_retry_after() {
    bounded(60, async {
        let a = MockUpstream::start().await;
        a.set_default(Reply::status(503));
        let gw = Gateway::start(Setup::new(one_model(&a))).await;
        let r = gw
            .post_json(
                "/v1/chat/completions",
                "nofb-503",
                &chat_body("chat", false),
            )
            .await;
        assert_envelope(&r, 503, "server_error", "backend_unavailable", None);
        let ra: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(ra >= 1);
        assert_eq!(a.request_count(), 1, "one attempt, no retry storm");
        assert!(
            !r.text().contains("mock upstream status"),
            "upstream text never reaches the client"
        );
        let log = gw.access_log("nofb-503").await;
        assert_eq!(log["status"], "upstream_error");
        assert_eq!(log["http_status"], 503);
    })
    .await;
}

#[tokio::test]
async fn without_fallback_429_is_upstream_rate_limited_with_its_retry_after() {
    bounded(60, async {
        let a = MockUpstream::start().await;
        a.set_default(Reply::status(429).retry_after(2));
        let gw = Gateway::start(Setup::new(one_model(&a))).await;
        let r = gw
            .post_json(
                "/v1/chat/completions",
                "nofb-429",
                &chat_body("chat", false),
            )
            .await;
        assert_envelope(&r, 503, "server_error", "upstream_rate_limited", None);
        assert_eq!(
            r.header("retry-after"),
            Some("2"),
            "the upstream's Retry-After passed on"
        );
        assert_eq!(a.request_count(), 1);
    })
    .await;
}

#[tokio::test]
async fn without_fallback_500_is_bad_gateway() {
    bounded(60, async {
        let a = MockUpstream::start().await;
        a.set_default(Reply::status(500));
        let gw = Gateway::start(Setup::new(one_model(&a))).await;
        let r = gw
            .post_json("/v1/chat/completions", "nofb-500", &chat_body("chat", true))
            .await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error"]["type"], "server_error");
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "plain JSON, not SSE"
        );
        assert_eq!(a.request_count(), 1);
    })
    .await;
}

#[tokio::test]
async fn without_fallback_connect_refused_is_503_quickly() {
    bounded(60, async {
        let dead = format!("http://127.0.0.1:{}/v1", free_port());
        let yaml = format!(
            "providers:\n  mock:\n    type: openai\n    endpoints: [\"{dead}\"]\n\nmodels:\n  chat:\n    targets:\n      - {{ provider: mock, model: upstream-id }}\n"
        );
        let gw = Gateway::start(Setup::new(yaml)).await;
        let started = Instant::now();
        let r = gw.post_json("/v1/chat/completions", "nofb-refused", &chat_body("chat", false)).await;
        assert_envelope(&r, 503, "server_error", "backend_unavailable", None);
        assert!(r.header("retry-after").is_some());
        assert!(started.elapsed() < Duration::from_millis(2200), "within connect + 0.2 s");
        assert!(!r.text().contains("127.0.0.1"), "no backend URL in the error");
    })
    .await;
}

/// H1: the upstream reads the request and never answers.
async fn first_byte_timeout(stream: bool) {
    let a = MockUpstream::start().await;
    a.set_default(Reply::stall());
    let t = Timeouts {
        first_byte: "1s",
        ..Timeouts::default()
    };
    let gw = Gateway::start(Setup::new(one_model(&a)).timeouts(t)).await;
    let id = format!("h1-{stream}");
    let started = Instant::now();
    let r = gw
        .post_json("/v1/chat/completions", &id, &chat_body("chat", stream))
        .await;
    let took = started.elapsed();
    assert_envelope(&r, 504, "server_error", "upstream_timeout", None);
    assert!(
        took >= Duration::from_millis(900) && took <= Duration::from_millis(2500),
        "504 after {took:?}, first_byte is 1 s"
    );
    let conn = a.requests()[0].conn;
    let closed = a.wait_conn_closed(conn, Duration::from_secs(2)).await;
    assert!(
        matches!(closed, Some((_, CloseKind::PeerFin | CloseKind::PeerReset))),
        "the gateway closes the silent upstream: {closed:?}"
    );
    let log = gw.access_log(&id).await;
    assert_eq!(log["status"], "upstream_timeout");
    assert_eq!(log["http_status"], 504);
    assert_eq!(log["completion_tokens"], 0);
}

#[tokio::test]
async fn first_byte_timeout_is_504_non_stream() {
    bounded(60, first_byte_timeout(false)).await;
}

#[tokio::test]
async fn first_byte_timeout_is_504_stream() {
    bounded(60, first_byte_timeout(true)).await;
}

/// H8a: output started, then the primary dies: no retry, no fallback.
#[tokio::test]
async fn no_retry_after_output_started() {
    bounded(60, async {
        let (a, b) = fallback_pair().await;
        a.set_default(
            Reply::sse(numbered_tokens(2), Duration::ZERO)
                .usage_chunk(false)
                .ending(Ending::Rst),
        );
        let gw = Gateway::start(Setup::new(fallback_config(&a.url(), &b))).await;
        let (mut c, head) = gw
            .start_stream("/v1/chat/completions", "h8a", &chat_body("chat", true))
            .await;
        assert_eq!(head.status, 200);
        let events = c.all_events().await.unwrap();
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(!events.iter().any(|e| e.is_done()));
        assert_eq!(events[2].json()["error"]["code"], "upstream_disconnected");
        assert_eq!(
            b.request_count(),
            0,
            "never retried after the first byte went out"
        );
        let log = gw.access_log("h8a").await;
        assert_eq!(log["attempts"], 1);
        assert_eq!(log["completion_tokens"], 2);
    })
    .await;
}
