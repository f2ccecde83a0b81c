//! Switchyard's one integration-test binary (architecture.md §6): the real `switchyard`
//! binary against a scriptable mock upstream, over raw loopback TCP.
//!
//! Each test starts its own mock(s) and its own gateway process on its own ports, so the
//! suite runs in parallel. Each test is bounded by `bounded` (tokio timeout); readiness and
//! conditions are awaited with deadlines, never fixed sleeps. The catalogue the tests come
//! from is reliability.md §4; the names in test docs (F1, G1, H6 …) refer to it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The harness is a toolkit: not every helper is used by every test.
#[allow(dead_code)]
mod support;

mod accounting;
mod auth;
mod balance;
mod cli;
mod errors;
mod fallback;
mod harness;
mod ledger;
mod lifecycle;
mod limits;
mod metrics;
mod reload;
mod routing;
mod stats;
mod streaming;

use std::future::Future;
use std::time::Duration;

/// Runs a test body under a hard time limit.
pub async fn bounded<T>(secs: u64, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), body).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {secs} s"),
    }
}

/// A chat request body.
pub fn chat_body(model: &str, stream: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
    });
    if stream {
        v["stream"] = serde_json::Value::Bool(true);
    }
    v
}

/// Asserts the contract's error envelope (reliability.md §4.0): JSON content type, an
/// `x-request-id`, and exactly `type`, `code`, `param`, with a non-empty message.
#[track_caller]
pub fn assert_envelope(
    r: &support::client::Response,
    status: u16,
    ty: &str,
    code: &str,
    param: Option<&str>,
) {
    assert_eq!(r.status, status, "status; body: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "content-type of an error: {:?}",
        r.header("content-type")
    );
    assert!(
        r.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "x-request-id on an error"
    );
    let v = r.json();
    let e = &v["error"];
    assert_eq!(e["type"], ty, "type; body: {v}");
    assert_eq!(e["code"], code, "code; body: {v}");
    match param {
        Some(p) => assert_eq!(e["param"], p, "param; body: {v}"),
        None => assert!(e["param"].is_null(), "param should be null; body: {v}"),
    }
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message; body: {v}"
    );
    assert_eq!(
        e.as_object().map(|o| o.len()),
        Some(4),
        "the envelope has exactly message, type, param, code: {v}"
    );
}
