//! Self-tests of the harness: the mock upstream and the raw client against each other,
//! without the gateway, so a failure elsewhere is known to be the gateway's.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::bounded;
use crate::support::client::HttpClient;
use crate::support::mock_upstream::{
    CloseKind, Ending, Gate, MOCK_PROMPT_TOKENS, MockUpstream, Reply, UsageMode, numbered_tokens,
};

fn chat(stream: bool, usage: bool) -> Vec<u8> {
    let mut v = json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]});
    if stream {
        v["stream"] = json!(true);
    }
    if usage {
        v["stream_options"] = json!({"include_usage": true});
    }
    v.to_string().into_bytes()
}

#[tokio::test]
async fn mock_answers_like_openai_on_keep_alive() {
    bounded(30, async {
        let mock = MockUpstream::start().await;
        let mut c = HttpClient::connect(mock.addr()).await.unwrap();
        c.send(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            &chat(false, false),
        )
        .await
        .unwrap();
        let r = c.read_response().await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["choices"][0]["message"]["content"], "Hello world!");
        assert_eq!(r.json()["model"], "m1");

        // Same connection: a stream with usage.
        c.send("POST", "/v1/chat/completions", &[], &chat(true, true))
            .await
            .unwrap();
        let head = c.read_head().await.unwrap();
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        let events = c.all_events().await.unwrap();
        assert_eq!(events.len(), 5);
        assert_eq!(
            events[3].json()["usage"]["prompt_tokens"],
            MOCK_PROMPT_TOKENS
        );
        assert!(events[4].is_done());
        assert!(!c.truncated);

        // Embeddings.
        c.send(
            "POST",
            "/v1/embeddings",
            &[],
            br#"{"model":"e","input":"x"}"#,
        )
        .await
        .unwrap();
        let r = c.read_response().await.unwrap();
        assert_eq!(r.json()["data"][0]["object"], "embedding");

        let reqs = mock.requests();
        assert_eq!(reqs.len(), 3);
        assert!(
            reqs.iter().all(|r| r.conn == 0),
            "one keep-alive connection"
        );
        assert_eq!(reqs[1].json()["stream"], true);
        assert_eq!(reqs[2].path, "/v1/embeddings");
    })
    .await;
}

#[tokio::test]
async fn mock_rules_queue_model_and_usage_modes() {
    bounded(30, async {
        let mock = MockUpstream::start().await;
        mock.on_model("m1", Reply::status(503).retry_after(3));
        mock.push(Reply::auto().tokens(["a", "b"]));
        let r = crate::support::client::request(
            mock.addr(),
            "POST",
            "/v1/chat/completions",
            &[],
            &chat(false, false),
        )
        .await
        .unwrap();
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            "ab",
            "the queue comes first"
        );
        let r = crate::support::client::request(
            mock.addr(),
            "POST",
            "/v1/chat/completions",
            &[],
            &chat(false, false),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("3"));

        mock.on_model(
            "m1",
            Reply::sse(numbered_tokens(2), Duration::ZERO).usage_mode(UsageMode::Always),
        );
        let mut c = HttpClient::connect(mock.addr()).await.unwrap();
        c.send("POST", "/v1/chat/completions", &[], &chat(true, false))
            .await
            .unwrap();
        c.read_head().await.unwrap();
        let events = c.all_events().await.unwrap();
        assert_eq!(events.len(), 4, "usage sent although not asked: {events:?}");
    })
    .await;
}

#[tokio::test]
async fn mock_gates_splits_and_endings() {
    bounded(30, async {
        let mock = MockUpstream::start().await;
        let gate = Gate::new();
        mock.push(
            Reply::sse(numbered_tokens(3), Duration::ZERO)
                .gated(&gate)
                .split_at([5, 50, 51, 52]),
        );
        let mut c = HttpClient::connect(mock.addr()).await.unwrap();
        c.send("POST", "/v1/chat/completions", &[], &chat(true, false))
            .await
            .unwrap();
        c.read_head().await.unwrap();
        let e0 = c.next_event().await.unwrap().unwrap();
        assert_eq!(
            e0.json()["choices"][0]["delta"]["content"],
            numbered_tokens(1)[0].as_str()
        );
        assert!(mock.wait_events_sent(1, Duration::from_secs(2)).await);
        let blocked = tokio::time::timeout(Duration::from_millis(200), c.next_event()).await;
        assert!(blocked.is_err(), "the gate holds event 2");
        assert_eq!(mock.events_sent(), 1);
        gate.open_all();
        let rest = c.all_events().await.unwrap();
        assert_eq!(rest.len(), 3);

        mock.push(Reply::sse(numbered_tokens(2), Duration::ZERO).ending(Ending::Fin));
        let mut c = HttpClient::connect(mock.addr()).await.unwrap();
        c.send("POST", "/v1/chat/completions", &[], &chat(true, false))
            .await
            .unwrap();
        c.read_head().await.unwrap();
        let events = c.all_events().await.unwrap();
        assert_eq!(events.len(), 2);
        assert!(c.truncated, "FIN inside a chunked body is a cut body");
    })
    .await;
}

#[tokio::test]
async fn mock_records_when_the_peer_closes() {
    bounded(30, async {
        let mock = MockUpstream::start().await;
        mock.set_default(Reply::stall());
        let mut c = HttpClient::connect(mock.addr()).await.unwrap();
        c.send("POST", "/v1/chat/completions", &[], &chat(false, false))
            .await
            .unwrap();
        assert!(mock.wait_requests(1, Duration::from_secs(2)).await);
        let left = Instant::now();
        c.rst();
        let (at, how) = mock
            .wait_conn_closed(0, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(at.duration_since(left) < Duration::from_millis(500));
        assert!(matches!(how, CloseKind::PeerReset | CloseKind::PeerFin));
        assert_eq!(mock.open_conns(), 0);

        let mut c = HttpClient::connect(mock.addr()).await.unwrap();
        c.send("POST", "/v1/chat/completions", &[], &chat(false, false))
            .await
            .unwrap();
        assert!(mock.wait_requests(2, Duration::from_secs(2)).await);
        c.fin().await;
        let (_, how) = mock
            .wait_conn_closed(1, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(how, CloseKind::PeerFin);
        assert_eq!(mock.conns().len(), 2);
    })
    .await;
}
