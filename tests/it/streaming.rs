//! Streaming (reliability.md F1, F3, F6, F7, H2, H3): events forwarded one by one as they
//! arrive, whatever the TCP write boundaries; the usage chunk handled per the client's ask;
//! a stream that fails after it started ends with one SSE error event and no `[DONE]`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::client::Event;
use crate::support::gateway::{Gateway, Setup, Timeouts, one_model};
use crate::support::mock_upstream::{
    Ending, Gate, MOCK_PROMPT_TOKENS, MockUpstream, Reply, numbered_tokens, sse_events,
};
use crate::{bounded, chat_body};

fn stream_body(model: &str, include_usage: Option<bool>) -> Value {
    let mut b = chat_body(model, true);
    if let Some(u) = include_usage {
        b["stream_options"] = json!({ "include_usage": u });
    }
    b
}

/// The content of a chunk's first delta, if any.
fn delta(e: &Event) -> Option<String> {
    e.json()["choices"][0]["delta"]["content"]
        .as_str()
        .map(str::to_string)
}

fn is_usage_chunk(e: &Event) -> bool {
    !e.is_done()
        && e.json().get("usage").is_some_and(|u| !u.is_null())
        && e.json()["choices"] == json!([])
}

/// Asserts the stream ended with exactly one SSE error event with `code`, and no `[DONE]`.
#[track_caller]
fn assert_error_end(events: &[Event], code: &str) {
    assert!(
        !events.iter().any(Event::is_done),
        "a failed stream must not end with [DONE]: {events:?}"
    );
    let last = events.last().expect("at least the error event");
    let v = last.json();
    assert_eq!(v["error"]["code"], code, "last event: {}", last.raw);
    assert_eq!(v["error"]["type"], "server_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    let errors = events
        .iter()
        .filter(|e| !e.is_done() && e.json().get("error").is_some())
        .count();
    assert_eq!(errors, 1, "exactly one error event");
}

#[tokio::test]
async fn stream_is_forwarded_event_by_event() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gate = Gate::new();
        mock.set_default(Reply::sse(numbered_tokens(4), Duration::ZERO).gated(&gate));
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;

        let (mut c, head) = gw
            .start_stream(
                "/v1/chat/completions",
                "ebe-1",
                &stream_body("gpt-3.5-turbo", None),
            )
            .await;
        assert_eq!(head.status, 200);
        assert!(
            head.header("content-type")
                .is_some_and(|v| v.starts_with("text/event-stream"))
        );
        assert_eq!(head.header("x-request-id"), Some("ebe-1"));
        assert_eq!(head.header("x-switchyard-model"), Some("chat"));
        assert_eq!(head.header("x-switchyard-provider"), Some("mock"));

        for i in 0..4 {
            if i > 0 {
                gate.open(1);
            }
            let ev = tokio::time::timeout(Duration::from_secs(10), c.next_event())
                .await
                .unwrap_or_else(|_| {
                    panic!("event {i} was not forwarded while the upstream waits for the client")
                })
                .unwrap()
                .expect("stream ended early");
            assert_eq!(
                delta(&ev),
                Some(numbered_tokens(4)[i].clone()),
                "event {i}: {}",
                ev.raw
            );
            assert_eq!(
                ev.json()["model"],
                "gpt-3.5-turbo",
                "model rewritten to the requested name"
            );
            // The gate holds event i+1 back: the client saw event i before it was sent.
            assert!(mock.wait_events_sent(i + 1, Duration::from_secs(2)).await);
            assert_eq!(
                mock.events_sent(),
                i + 1,
                "client saw event {i} before the upstream sent the next"
            );
        }
        gate.open_all();
        let rest = c.all_events().await.unwrap();
        assert_eq!(
            rest.len(),
            1,
            "only [DONE] remains (usage chunk stripped): {rest:?}"
        );
        assert!(rest[0].is_done());
        assert!(!c.truncated, "the chunked body ends cleanly");
    })
    .await;
}

/// The events a client should see for `tokens` (usage when asked) with `model` rewritten.
fn expected_events(tokens: &[String], client_model: &str, usage: bool) -> Vec<Value> {
    sse_events(tokens, "upstream-id", usage)
        .into_iter()
        .map(|e| {
            let mut v: Value = serde_json::from_str(&e).unwrap();
            v["model"] = json!(client_model);
            v
        })
        .collect()
}

fn multibyte_tokens() -> Vec<String> {
    ["Hé", "llo", " 世界", " 🚀", "!"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The SSE payload length the mock sends for these tokens with usage and `[DONE]`.
fn payload_len(tokens: &[String]) -> usize {
    sse_events(tokens, "upstream-id", true)
        .iter()
        .map(|e| format!("data: {e}\n\n").len())
        .sum::<usize>()
        + "data: [DONE]\n\n".len()
}

async fn check_split_stream(gw: &Gateway, tag: &str, want: &[Value]) {
    let mut body = stream_body("gpt-3.5-turbo", Some(true));
    body["user"] = json!(tag);
    let (mut c, head) = gw.start_stream("/v1/chat/completions", tag, &body).await;
    assert_eq!(head.status, 200, "{tag}");
    let events = c.all_events().await.unwrap();
    assert!(
        events.last().is_some_and(Event::is_done),
        "{tag}: ends with [DONE]: {events:?}"
    );
    let got: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    assert_eq!(got, want, "{tag}: events differ");
}

#[tokio::test]
async fn stream_split_at_every_byte_offset() {
    bounded(300, async {
        let mock = MockUpstream::start().await;
        let tokens = multibyte_tokens();
        let len = payload_len(&tokens);
        let t = tokens.clone();
        mock.respond_with(move |req| {
            let tag = req.json()["user"].as_str()?.to_string();
            let cuts: Vec<usize> = tag
                .strip_prefix("split-")?
                .split('.')
                .filter_map(|s| s.parse().ok())
                .collect();
            Some(Reply::sse(t.clone(), Duration::ZERO).split_at(cuts))
        });
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let want = expected_events(&tokens, "gpt-3.5-turbo", true);

        // Two writes, split at every offset; four clients at a time.
        let offsets: Vec<usize> = (1..len).collect();
        for group in offsets.chunks(4) {
            let futs = group.iter().map(|i| {
                let tag = format!("split-{i}");
                let want = &want;
                let gw = &gw;
                async move { check_split_stream(gw, &tag, want).await }
            });
            futures_join_all(futs).await;
        }

        // Random splits into 1–7 writes (a fixed xorshift seed, so failures reproduce).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..60 {
            let n = (next() % 7) as usize;
            let cuts: Vec<String> = (0..n)
                .map(|_| (1 + next() as usize % (len - 1)).to_string())
                .collect();
            let tag = format!("split-{}", cuts.join("."));
            check_split_stream(&gw, &tag, &want).await;
        }

        assert_eq!(mock.request_count(), len - 1 + 60);
        // Ledger: exact usage from the usage event.
        for tag in [
            "split-1",
            &format!("split-{}", len / 2),
            &format!("split-{}", len - 1),
        ] {
            let log = gw.access_log(tag).await;
            assert_eq!(log["usage_source"], "upstream", "{tag}");
            assert_eq!(log["completion_tokens"], tokens.len() as u64, "{tag}");
            assert_eq!(log["prompt_tokens"], MOCK_PROMPT_TOKENS, "{tag}");
            assert_eq!(log["status"], "ok", "{tag}");
        }
    })
    .await;
}

/// `join_all` without the futures crate: runs the futures concurrently on this task.
async fn futures_join_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

#[tokio::test]
async fn usage_chunk_is_stripped_when_the_client_did_not_ask() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(Reply::sse(numbered_tokens(3), Duration::ZERO));
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        for (id, ask) in [("nousage-1", None), ("nousage-2", Some(false))] {
            let (mut c, head) = gw
                .start_stream("/v1/chat/completions", id, &stream_body("chat", ask))
                .await;
            assert_eq!(head.status, 200);
            let events = c.all_events().await.unwrap();
            assert_eq!(events.len(), 4, "{id}: 3 deltas and [DONE]: {events:?}");
            assert!(events[3].is_done());
            assert!(
                !events.iter().any(is_usage_chunk),
                "{id}: usage chunk must be stripped"
            );
            let deltas: Vec<String> = events[..3].iter().filter_map(delta).collect();
            assert_eq!(deltas, numbered_tokens(3));

            let up = mock.requests().pop().unwrap();
            assert_eq!(
                up.json()["stream_options"]["include_usage"],
                true,
                "{id}: upstream always asked for usage"
            );
            let log = gw.access_log(id).await;
            assert_eq!(log["usage_source"], "upstream", "{id}");
            assert_eq!(log["completion_tokens"], 3);
            assert_eq!(log["prompt_tokens"], MOCK_PROMPT_TOKENS);
            assert_eq!(log["stream"], true);
        }
    })
    .await;
}

#[tokio::test]
async fn usage_chunk_arrives_exactly_once_when_asked() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(Reply::sse(numbered_tokens(3), Duration::ZERO));
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let mut body = stream_body("chat", Some(true));
        body["stream_options"]["x_other"] = json!("kept");
        let (mut c, _) = gw
            .start_stream("/v1/chat/completions", "usage-1", &body)
            .await;
        let events = c.all_events().await.unwrap();
        assert_eq!(events.len(), 5, "3 deltas, usage, [DONE]: {events:?}");
        let usage: Vec<&Event> = events.iter().filter(|e| is_usage_chunk(e)).collect();
        assert_eq!(usage.len(), 1, "exactly one usage chunk");
        assert!(events[4].is_done());
        assert!(
            is_usage_chunk(&events[3]),
            "the usage chunk comes right before [DONE]"
        );
        let u = &events[3].json()["usage"];
        assert_eq!(u["prompt_tokens"], MOCK_PROMPT_TOKENS);
        assert_eq!(u["completion_tokens"], 3);
        assert_eq!(u["total_tokens"], MOCK_PROMPT_TOKENS + 3);
        assert_eq!(events[3].json()["model"], "chat");

        let up = mock.requests().pop().unwrap();
        assert_eq!(
            up.json()["stream_options"],
            json!({"include_usage": true, "x_other": "kept"})
        );
        let log = gw.access_log("usage-1").await;
        assert_eq!(log["usage_source"], "upstream");
        assert_eq!(log["completion_tokens"], 3);
    })
    .await;
}

#[tokio::test]
async fn upstream_fin_mid_stream_ends_with_upstream_disconnected() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(
            Reply::sse(numbered_tokens(5), Duration::ZERO)
                .usage_chunk(false)
                .ending(Ending::Fin),
        );
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let (mut c, head) = gw
            .start_stream(
                "/v1/chat/completions",
                "fin-1",
                &stream_body("chat", Some(true)),
            )
            .await;
        assert_eq!(head.status, 200);
        let events = c.all_events().await.unwrap();
        assert_eq!(events.len(), 6, "5 deltas then the error event: {events:?}");
        let deltas: Vec<String> = events[..5].iter().filter_map(delta).collect();
        assert_eq!(deltas, numbered_tokens(5));
        assert_error_end(&events, "upstream_disconnected");
        assert!(
            !c.truncated,
            "the gateway ends its own body cleanly after the error event"
        );

        let log = gw.access_log("fin-1").await;
        assert_eq!(log["status"], "upstream_error");
        assert_eq!(log["completion_tokens"], 5);
        assert_eq!(log["usage_source"], "counted");
    })
    .await;
}

#[tokio::test]
async fn upstream_clean_end_without_done_is_a_cut_stream() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(
            Reply::sse(numbered_tokens(2), Duration::ZERO)
                .usage_chunk(false)
                .ending(Ending::EndWithoutDone),
        );
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let (mut c, _) = gw
            .start_stream(
                "/v1/chat/completions",
                "nodone-1",
                &stream_body("chat", None),
            )
            .await;
        let events = c.all_events().await.unwrap();
        assert_eq!(events.len(), 3, "{events:?}");
        assert_error_end(&events, "upstream_disconnected");
    })
    .await;
}

#[tokio::test]
async fn upstream_rst_mid_event_drops_the_partial_event() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(
            Reply::sse(numbered_tokens(5), Duration::ZERO)
                .usage_chunk(false)
                .ending(Ending::DropMidEvent),
        );
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let (mut c, _) = gw
            .start_stream("/v1/chat/completions", "rst-1", &stream_body("chat", None))
            .await;
        let events = c.all_events().await.unwrap();
        assert_eq!(events.len(), 6, "5 deltas then the error event: {events:?}");
        assert!(
            !events.iter().any(|e| e.raw.contains("cut")),
            "the partial event is not forwarded"
        );
        for e in &events {
            let _ = e.json(); // every event is whole JSON
        }
        assert_error_end(&events, "upstream_disconnected");
        let log = gw.access_log("rst-1").await;
        assert_eq!(log["status"], "upstream_error");
        assert_eq!(log["completion_tokens"], 5);
    })
    .await;
}

#[tokio::test]
async fn stall_mid_stream_ends_with_upstream_timeout_at_idle() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(
            Reply::sse(numbered_tokens(3), Duration::ZERO)
                .usage_chunk(false)
                .ending(Ending::Stall),
        );
        let timeouts = Timeouts {
            idle: "1s",
            ..Timeouts::default()
        };
        let gw = Gateway::start(Setup::new(one_model(&mock)).timeouts(timeouts)).await;
        let (mut c, _) = gw
            .start_stream(
                "/v1/chat/completions",
                "stall-1",
                &stream_body("chat", None),
            )
            .await;
        let mut events = Vec::new();
        for _ in 0..3 {
            events.push(c.next_event().await.unwrap().unwrap());
        }
        let last_data = Instant::now();
        events.extend(c.all_events().await.unwrap());
        let waited = last_data.elapsed();
        assert!(
            waited >= Duration::from_millis(800) && waited <= Duration::from_secs(4),
            "error after {waited:?}, idle is 1 s"
        );
        assert_eq!(events.len(), 4, "{events:?}");
        assert_error_end(&events, "upstream_timeout");
        let conn = mock.requests()[0].conn;
        assert!(
            mock.wait_conn_closed(conn, Duration::from_secs(2))
                .await
                .is_some(),
            "the stalled upstream connection is closed"
        );
        let log = gw.access_log("stall-1").await;
        assert_eq!(log["status"], "upstream_timeout");
        assert_eq!(log["completion_tokens"], 3);
    })
    .await;
}

#[tokio::test]
async fn trickling_stream_is_cut_at_the_total_deadline() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        // One token every 200 ms resets any per-read timer; only `total` stops it.
        mock.set_default(
            Reply::sse(numbered_tokens(100), Duration::from_millis(200)).usage_chunk(false),
        );
        let timeouts = Timeouts {
            idle: "1s",
            total: "2s",
            ..Timeouts::default()
        };
        let gw = Gateway::start(Setup::new(one_model(&mock)).timeouts(timeouts)).await;
        let started = Instant::now();
        let (mut c, _) = gw
            .start_stream(
                "/v1/chat/completions",
                "trickle-1",
                &stream_body("chat", None),
            )
            .await;
        let events = c.all_events().await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1800) && took <= Duration::from_secs(5),
            "ended after {took:?}, total is 2 s"
        );
        assert!(
            events.len() > 3 && events.len() < 30,
            "{} events",
            events.len()
        );
        assert_error_end(&events, "upstream_timeout");
        let conn = mock.requests()[0].conn;
        assert!(
            mock.wait_conn_closed(conn, Duration::from_secs(2))
                .await
                .is_some()
        );
    })
    .await;
}
