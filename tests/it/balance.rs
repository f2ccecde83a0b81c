//! Balancing, passive health (cool-down / circuit) and active health checks (issue 3):
//! splits between endpoints and targets, each `balance` strategy, a sick backend costing
//! no second attempt, and health-check hysteresis — all observed on the mocks' counters,
//! the access log and `/metrics`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;

use crate::support::client::{self, Response};
use crate::support::gateway::{Gateway, Setup, Timeouts, free_port};
use crate::support::mock_upstream::{Gate, MockUpstream, RecordedRequest, Reply, numbered_tokens};
use crate::{assert_envelope, bounded, chat_body};

/// `chat` → one provider `pool` with these endpoints.
fn pool_config(endpoints: &[String], health_check: Option<&str>) -> String {
    let list = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let hc = health_check.map_or(String::new(), |h| format!("    health_check: {h}\n"));
    format!(
        "providers:\n  pool:\n    type: openai\n    endpoints: [{list}]\n{hc}\nmodels:\n  chat:\n    targets:\n      - {{ provider: pool, model: m }}\n    retry_on: [connect, timeout, 429, 500, 502, 503, 504]\n"
    )
}

/// `chat` → targets on providers `pa` and `pb` (weights given), balanced by `balance`.
fn two_targets(a: &MockUpstream, b: &MockUpstream, weights: (u32, u32), balance: &str) -> String {
    format!(
        "providers:\n  pa:\n    type: openai\n    endpoints: [\"{}\"]\n  pb:\n    type: openai\n    endpoints: [\"{}\"]\n\nmodels:\n  chat:\n    targets:\n      - {{ provider: pa, model: up-a, weight: {} }}\n      - {{ provider: pb, model: up-b, weight: {} }}\n    balance: {balance}\n",
        a.url(),
        b.url(),
        weights.0,
        weights.1
    )
}

/// Sends `n` chat requests, `concurrency` at a time, each with `headers(i)`.
async fn fire(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    headers: impl Fn(usize) -> Vec<(String, String)>,
) -> Vec<Response> {
    let body = chat_body("chat", false).to_string();
    futures::stream::iter((0..n).map(|i| {
        let mut h = headers(i);
        h.push(("Content-Type".into(), "application/json".into()));
        let body = body.clone();
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client::request(addr, "POST", "/v1/chat/completions", &h, body.as_bytes())
                .await
                .unwrap()
        }
    }))
    .buffer_unordered(concurrency)
    .collect()
    .await
}

fn no_headers(_: usize) -> Vec<(String, String)> {
    Vec::new()
}

/// Requests the mock got other than health probes.
fn posts(m: &MockUpstream) -> usize {
    m.requests().iter().filter(|r| r.method == "POST").count()
}

fn health_probes(m: &MockUpstream) -> usize {
    m.requests().iter().filter(|r| r.path == "/health").count()
}

/// The value of one sample (`name{labels}`) in a `/metrics` text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn endpoint_series(metric: &str, mock_url: &str) -> String {
    format!("{metric}{{endpoint=\"{mock_url}\",provider=\"pool\"}}")
}

#[track_caller]
fn assert_within(got: usize, expected: usize, what: &str) {
    let slack = expected / 20;
    assert!(
        got.abs_diff(expected) <= slack,
        "{what}: {got}, expected {expected} ± {slack}"
    );
}

#[tokio::test]
async fn round_robin_splits_two_equal_endpoints_evenly() {
    bounded(120, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let gw = Gateway::start(Setup::new(pool_config(&[a.url(), b.url()], None))).await;
        let rs = fire(gw.addr(), 1000, 8, no_headers).await;
        assert!(rs.iter().all(|r| r.status == 200), "every request served");
        assert_within(posts(&a), 500, "endpoint a");
        assert_within(posts(&b), 500, "endpoint b");
        assert_eq!(posts(&a) + posts(&b), 1000, "one attempt per request");
    })
    .await;
}

#[tokio::test]
async fn weighted_targets_split_three_to_one() {
    bounded(120, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let gw = Gateway::start(Setup::new(two_targets(&a, &b, (3, 1), "weighted"))).await;
        let rs = fire(gw.addr(), 1000, 8, no_headers).await;
        assert!(rs.iter().all(|r| r.status == 200));
        assert_within(posts(&a), 750, "weight 3");
        assert_within(posts(&b), 250, "weight 1");
        assert!(
            a.requests()
                .iter()
                .all(|r| r.model().as_deref() == Some("up-a"))
        );
        assert!(
            b.requests()
                .iter()
                .all(|r| r.model().as_deref() == Some("up-b"))
        );
    })
    .await;
}

#[tokio::test]
async fn least_pending_sends_past_a_busy_target() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let gate = Gate::new();
        a.set_default(Reply::sse(numbered_tokens(3), Duration::ZERO).gated(&gate));
        let gw = Gateway::start(Setup::new(two_targets(&a, &b, (1, 1), "least_pending"))).await;
        // Start streams until one is held on `a` (those on `b` run to the end at once).
        let mut held = None;
        for i in 0..4 {
            let (mut c, head) = gw
                .start_stream(
                    "/v1/chat/completions",
                    &format!("lp-{i}"),
                    &chat_body("chat", true),
                )
                .await;
            assert_eq!(head.status, 200);
            if head.header("x-switchyard-provider") == Some("pa") {
                held = Some(c);
                break;
            }
            c.all_events().await.unwrap();
        }
        let mut held = held.expect("a stream landed on the first target");
        let on_b = posts(&b);
        let rs = fire(gw.addr(), 20, 1, no_headers).await;
        assert!(rs.iter().all(|r| r.status == 200));
        assert_eq!(posts(&a), 1, "the busy target got nothing more");
        assert_eq!(posts(&b), on_b + 20);
        gate.open_all();
        let events = held.all_events().await.unwrap();
        assert!(events.last().unwrap().is_done());
    })
    .await;
}

#[tokio::test]
async fn latency_prefers_the_faster_target() {
    bounded(60, async {
        let (slow, fast) = (MockUpstream::start().await, MockUpstream::start().await);
        slow.set_default(Reply::auto().slow_headers(Duration::from_millis(40)));
        let gw = Gateway::start(Setup::new(two_targets(&slow, &fast, (1, 1), "latency"))).await;
        let rs = fire(gw.addr(), 40, 1, no_headers).await;
        assert!(rs.iter().all(|r| r.status == 200));
        assert!(
            posts(&slow) <= 2,
            "the slow target is measured, then avoided: {} of 40",
            posts(&slow)
        );
        assert_eq!(posts(&slow) + posts(&fast), 40);
    })
    .await;
}

#[tokio::test]
async fn hash_key_keeps_each_api_key_on_one_target() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let gw = Gateway::start(Setup::new(two_targets(&a, &b, (1, 1), "hash_key"))).await;
        let keys = 8;
        let rs = fire(gw.addr(), keys * 6, 4, |i| {
            vec![(
                "Authorization".into(),
                format!("Bearer sk-team-{}", i % keys),
            )]
        })
        .await;
        assert!(rs.iter().all(|r| r.status == 200));
        // `buffer_unordered` loses the order: ask again, one key at a time.
        let mut placed: HashMap<usize, Vec<String>> = HashMap::new();
        for k in 0..keys {
            let rs = fire(gw.addr(), 4, 1, |_| {
                vec![("Authorization".into(), format!("Bearer sk-team-{k}"))]
            })
            .await;
            placed.insert(
                k,
                rs.iter()
                    .map(|r| r.header("x-switchyard-provider").unwrap_or("").to_owned())
                    .collect(),
            );
        }
        for (k, providers) in &placed {
            assert!(
                providers.iter().all(|p| p == &providers[0]),
                "key {k} moved between targets: {providers:?}"
            );
        }
        let used: std::collections::HashSet<&String> = placed.values().map(|p| &p[0]).collect();
        assert_eq!(used.len(), 2, "keys spread over both targets: {placed:?}");
    })
    .await;
}

/// A primary endpoint that fails in a way that cools it down: the first request finds out
/// (one attempt there, then the second endpoint), later requests do not try it again.
async fn cooled_endpoint_costs_one_attempt(bad: Reply, id: &str) {
    let (a, good) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_default(bad);
    let gw = Gateway::start(Setup::new(pool_config(&[a.url(), good.url()], None))).await;
    for i in 0..10 {
        let rid = format!("{id}-{i}");
        let r = gw
            .post_json("/v1/chat/completions", &rid, &chat_body("chat", false))
            .await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
    }
    assert_eq!(
        posts(&a),
        1,
        "{id}: the cooling endpoint got one attempt only"
    );
    assert_eq!(posts(&good), 10);
    let series = endpoint_series("switchyard_circuit_open", &a.url());
    let text = gw.metrics_until(|t| sample(t, &series) == Some(1.0)).await;
    assert_eq!(
        sample(&text, &endpoint_series("switchyard_backend_up", &a.url())),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            &endpoint_series("switchyard_backend_up", &good.url())
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn endpoint_answering_503_with_retry_after_cools_down() {
    bounded(
        60,
        cooled_endpoint_costs_one_attempt(Reply::status(503).retry_after(30), "cool-503"),
    )
    .await;
}

#[tokio::test]
async fn endpoint_answering_429_with_retry_after_cools_down() {
    bounded(
        60,
        cooled_endpoint_costs_one_attempt(Reply::status(429).retry_after(30), "cool-429"),
    )
    .await;
}

#[tokio::test]
async fn refused_endpoint_costs_no_attempt_while_cooling() {
    bounded(60, async {
        let good = MockUpstream::start().await;
        let dead = format!("http://127.0.0.1:{}/v1", free_port());
        let gw = Gateway::start(Setup::new(pool_config(&[dead.clone(), good.url()], None))).await;
        let mut attempts = 0;
        for i in 0..10 {
            let rid = format!("cool-refused-{i}");
            let r = gw
                .post_json("/v1/chat/completions", &rid, &chat_body("chat", false))
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            attempts += gw.access_log(&rid).await["attempts"].as_u64().unwrap();
        }
        assert_eq!(posts(&good), 10);
        assert!(
            attempts <= 11,
            "at most one attempt on the refusing endpoint: {attempts}"
        );
        let series = endpoint_series("switchyard_backend_up", &dead);
        gw.metrics_until(|t| sample(t, &series) == Some(0.0)).await;
    })
    .await;
}

#[tokio::test]
async fn stalling_endpoint_trips_the_circuit() {
    bounded(60, async {
        let (a, good) = (MockUpstream::start().await, MockUpstream::start().await);
        a.set_default(Reply::stall());
        let t = Timeouts {
            first_byte: "300ms",
            ..Timeouts::default()
        };
        let gw =
            Gateway::start(Setup::new(pool_config(&[a.url(), good.url()], None)).timeouts(t)).await;
        let rs = fire(gw.addr(), 12, 1, no_headers).await;
        assert!(rs.iter().all(|r| r.status == 200));
        assert_eq!(
            posts(&a),
            3,
            "three timeouts in a row open the circuit, then no more attempts"
        );
        let series = endpoint_series("switchyard_circuit_open", &a.url());
        gw.metrics_until(|t| sample(t, &series) == Some(1.0)).await;
    })
    .await;
}

#[tokio::test]
async fn everything_cooling_is_503_without_an_attempt_then_one_trial() {
    bounded(60, async {
        let a = MockUpstream::start().await;
        a.push(Reply::status(503).retry_after(1));
        let gw = Gateway::start(Setup::new(pool_config(&[a.url()], None))).await;
        let r = gw
            .post_json(
                "/v1/chat/completions",
                "all-cool-0",
                &chat_body("chat", false),
            )
            .await;
        assert_envelope(&r, 503, "server_error", "backend_unavailable", None);
        let r = gw
            .post_json(
                "/v1/chat/completions",
                "all-cool-1",
                &chat_body("chat", false),
            )
            .await;
        assert_envelope(&r, 503, "server_error", "backend_unavailable", None);
        assert_eq!(
            r.header("retry-after"),
            Some("1"),
            "when the endpoint is back"
        );
        assert_eq!(gw.access_log("all-cool-1").await["attempts"], 0);
        assert_eq!(posts(&a), 1, "no attempt while cooling");
        // Poll until the cool-down is over: the first request after it is the trial.
        let mut served = None;
        for i in 0..100 {
            let rid = format!("all-cool-poll-{i}");
            let r = gw
                .post_json("/v1/chat/completions", &rid, &chat_body("chat", false))
                .await;
            if r.status == 200 {
                served = Some(i);
                break;
            }
            assert_eq!(r.status, 503);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            served.is_some(),
            "the endpoint came back after its Retry-After"
        );
        assert_eq!(posts(&a), 2, "one 503, then the one trial that succeeded");
    })
    .await;
}

/// A `/health` responder: `healthy()` decides each probe's status; POSTs fall through.
fn health_by(m: &MockUpstream, healthy: impl Fn() -> bool + Send + Sync + 'static) {
    m.respond_with(move |r: &RecordedRequest| {
        (r.path == "/health").then(|| {
            if healthy() {
                Reply::json(200, "{\"status\":\"ok\"}")
            } else {
                Reply::status(500)
            }
        })
    });
}

const FAST_CHECK: &str = "{ path: /health, interval: 100ms, unhealthy_after: 2, healthy_after: 2 }";

#[tokio::test]
async fn endpoint_marked_down_gets_zero_requests_until_it_is_back() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let a_ok = Arc::new(AtomicBool::new(false));
        let flag = a_ok.clone();
        health_by(&a, move || flag.load(Ordering::SeqCst));
        health_by(&b, || true);
        let gw = Gateway::start(Setup::new(pool_config(
            &[a.url(), b.url()],
            Some(FAST_CHECK),
        )))
        .await;
        let a_up = endpoint_series("switchyard_backend_up", &a.url());
        gw.metrics_until(|t| sample(t, &a_up) == Some(0.0)).await;
        let before = posts(&a);
        let rs = fire(gw.addr(), 50, 4, no_headers).await;
        assert!(rs.iter().all(|r| r.status == 200));
        assert_eq!(
            posts(&a),
            before,
            "a backend marked down gets zero requests"
        );
        assert!(health_probes(&a) >= 2, "it was probed");
        for r in a.requests().iter().filter(|r| r.path == "/health") {
            assert_eq!(r.method, "GET");
            assert!(
                r.header("authorization").is_none(),
                "no credential on probes"
            );
        }
        a_ok.store(true, Ordering::SeqCst);
        gw.metrics_until(|t| sample(t, &a_up) == Some(1.0)).await;
        let rs = fire(gw.addr(), 20, 1, no_headers).await;
        assert!(rs.iter().all(|r| r.status == 200));
        assert_eq!(posts(&a) - before, 10, "back in the rotation");
    })
    .await;
}

#[tokio::test]
async fn flapping_backend_does_not_flap_the_pool() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let n = Arc::new(AtomicUsize::new(0));
        let probes = n.clone();
        // Pass, fail, pass, fail …: never two failures in a row.
        health_by(&a, move || {
            probes.fetch_add(1, Ordering::SeqCst).is_multiple_of(2)
        });
        health_by(&b, || true);
        let gw = Gateway::start(Setup::new(pool_config(
            &[a.url(), b.url()],
            Some(FAST_CHECK),
        )))
        .await;
        let a_up = endpoint_series("switchyard_backend_up", &a.url());
        // Watch the gauge through 20 probes of the flapping backend.
        while n.load(Ordering::SeqCst) < 20 {
            let text = gw.metrics_until(|t| sample(t, &a_up).is_some()).await;
            assert_eq!(
                sample(&text, &a_up),
                Some(1.0),
                "after {} probes",
                n.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rs = fire(gw.addr(), 20, 1, no_headers).await;
        assert!(rs.iter().all(|r| r.status == 200));
        assert_eq!(posts(&a), 10, "still takes its share");
    })
    .await;
}
