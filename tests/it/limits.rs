//! Rate limits with the memory store (contract §2 `limits`, §3 headers, §4 429s, §5.4;
//! issue 4): requests and tokens per window (shortened by `rate_limits.window`, not by
//! mocking time), token reservations under concurrency, concurrency caps, model limits
//! across keys, and counters that survive a reload.

use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::support::client::{self, Response};
use crate::support::gateway::{Gateway, Setup, TempDir};
use crate::support::mock_upstream::{MockUpstream, Reply};
use crate::support::redis::RedisServer;
use crate::{assert_envelope, bounded, chat_body};

const KEY_A: &str = "sk-limits-a";
const KEY_B: &str = "sk-limits-b";

/// Model `chat` → `mock`; keys `a` and `b` with the given `limits:` lines (or none), the
/// model's own `limits:` line, and the window.
fn config(mock: &MockUpstream, a_limits: &str, model_limits: &str, window: &str) -> Setup {
    Setup::new(format!(
        "providers:\n  mock:\n    type: openai\n    endpoints: [\"{}\"]\n\nmodels:\n  chat:\n    targets: [{{ provider: mock, model: m }}]\n{model_limits}\nkeys:\n  a:\n    key: {KEY_A}\n{a_limits}\n  b:\n    key: {KEY_B}\n\nrate_limits: {{ window: {window} }}\n",
        mock.url()
    ))
}

async fn chat(addr: std::net::SocketAddr, key: &str, body: &serde_json::Value) -> Response {
    let auth = format!("Bearer {key}");
    client::request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        body.to_string().as_bytes(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn requests_per_window_then_429_then_room_again() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(config(&mock, "    limits: { rpm: 5 }", "", "2s")).await;
        let body = chat_body("chat", false);
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let r = chat(gw.addr(), KEY_A, &body).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.header("x-ratelimit-limit-requests"), Some("5"));
            remaining.push(
                r.header("x-ratelimit-remaining-requests")
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
        let r = chat(gw.addr(), KEY_A, &body).await;
        assert_envelope(&r, 429, "requests", "rate_limit_exceeded", None);
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=3).contains(&wait), "Retry-After {wait}");
        assert_eq!(
            mock.request_count(),
            5,
            "the 429 never reached the upstream"
        );
        // Key b has no limit of its own.
        assert_eq!(chat(gw.addr(), KEY_B, &body).await.status, 200);
        // Room again once the window moved on.
        let started = Instant::now();
        loop {
            let r = chat(gw.addr(), KEY_A, &body).await;
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 429);
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no room after the window"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rejected: Vec<_> = gw
            .access_lines()
            .into_iter()
            .filter(|v| v["status"] == "rejected_rate")
            .collect();
        assert!(!rejected.is_empty());
        assert!(
            rejected
                .iter()
                .all(|v| v["key"] == "a" && v["http_status"] == 429)
        );
    })
    .await;
}

/// Issue 4: TPM with reservation under 64 concurrent clients never exceeds the limit.
#[tokio::test]
async fn token_reservations_hold_under_64_concurrent_clients() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        // Slow answers, so the reservations of concurrent requests overlap.
        mock.set_default(Reply::auto().slow_headers(Duration::from_millis(300)));
        let gw = Gateway::start(config(&mock, "    limits: { tpm: 1000 }", "", "60s")).await;
        let mut body = chat_body("chat", false);
        body["max_tokens"] = 100.into();
        let reserve = 100 + body.to_string().len() as u64 / 4;
        let addr = gw.addr();
        let fire = |n: usize| {
            let body = body.clone();
            futures::stream::iter(0..n)
                .map(move |_| {
                    let body = body.clone();
                    async move { chat(addr, KEY_A, &body).await }
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
        };
        let first = fire(64).await;
        let ok = first.iter().filter(|r| r.status == 200).count() as u64;
        assert!(ok >= 1, "some admitted");
        assert!(
            ok <= 1000 / reserve,
            "{ok} admitted at once with {reserve} reserved each would pass 1000"
        );
        for r in first.iter().filter(|r| r.status != 200) {
            assert_envelope(r, 429, "tokens", "rate_limit_exceeded", None);
        }
        // Settled to what they used (the mock reports a few tokens each): room again.
        let used: u64 = gw
            .access_lines()
            .iter()
            .filter(|v| v["status"] == "ok")
            .map(|v| {
                v["prompt_tokens"].as_u64().unwrap() + v["completion_tokens"].as_u64().unwrap()
            })
            .sum();
        assert!(used < 1000);
        let second = fire(4).await;
        assert!(
            second.iter().any(|r| r.status == 200),
            "settling gave the unused reservations back"
        );
    })
    .await;
}

#[tokio::test]
async fn concurrency_cap_and_model_limits_across_keys() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(Reply::auto().slow_headers(Duration::from_millis(500)));
        let gw = Gateway::start(config(
            &mock,
            "    limits: { concurrency: 2 }",
            "    limits: { rpm: 4 }",
            "60s",
        ))
        .await;
        let addr = gw.addr();
        let body = chat_body("chat", false);
        let three: Vec<Response> = futures::stream::iter(0..3)
            .map(|_| chat(addr, KEY_A, &body))
            .buffer_unordered(3)
            .collect()
            .await;
        let mut statuses: Vec<u16> = three.iter().map(|r| r.status).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 200, 429], "two in flight at once");
        let refused = three.iter().find(|r| r.status == 429).unwrap();
        assert_envelope(refused, 429, "requests", "rate_limit_exceeded", None);
        // The model allows 4 a minute whoever asks: 2 used by a, 2 more by b, then none.
        assert_eq!(chat(addr, KEY_B, &body).await.status, 200);
        assert_eq!(chat(addr, KEY_B, &body).await.status, 200);
        let r = chat(addr, KEY_B, &body).await;
        assert_envelope(&r, 429, "requests", "rate_limit_exceeded", None);
        assert!(
            r.header("x-ratelimit-limit-requests").is_none(),
            "b has no limits of its own"
        );
    })
    .await;
}

#[tokio::test]
async fn counters_survive_a_reload() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let setup = config(&mock, "    limits: { rpm: 3 }", "", "60s");
        let gw = Gateway::start(setup.clone()).await;
        let body = chat_body("chat", false);
        for _ in 0..3 {
            assert_eq!(chat(gw.addr(), KEY_A, &body).await.status, 200);
        }
        // Same limits, another change: a new model.
        let mut changed = setup.clone();
        changed.body.push_str("\nroutes: []\n");
        gw.write_config(&changed);
        let started = Instant::now();
        while !gw.output_text().contains("config reloaded") {
            assert!(started.elapsed() < Duration::from_secs(10), "no reload");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = chat(gw.addr(), KEY_A, &body).await;
        assert_envelope(&r, 429, "requests", "rate_limit_exceeded", None);
    })
    .await;
}

/// Issue 4: three instances share one Redis; 64 concurrent clients spread over them. In any
/// rolling window the three together admit the limit, within 1 %, never more.
#[tokio::test]
async fn three_instances_share_one_limit_through_redis() {
    bounded(90, async {
        const LIMIT: usize = 150;
        const WINDOW_S: u64 = 3;
        let redis = RedisServer::start().await;
        let mock = MockUpstream::start().await;
        let shared = |gw_mock: &MockUpstream| {
            let mut s = config(
                gw_mock,
                &format!("    limits: {{ rpm: {LIMIT} }}"),
                "",
                &format!("{WINDOW_S}s"),
            );
            s.body = s.body.replace(
                &format!("rate_limits: {{ window: {WINDOW_S}s }}"),
                &format!(
                    "rate_limits: {{ window: {WINDOW_S}s, store: \"{}\" }}",
                    redis.url()
                ),
            );
            s
        };
        let gws = [
            Gateway::start(shared(&mock)).await,
            Gateway::start(shared(&mock)).await,
            Gateway::start(shared(&mock)).await,
        ];
        let addrs: Vec<_> = gws.iter().map(Gateway::addr).collect();
        let started = Instant::now();
        let run_for = Duration::from_secs(2 * WINDOW_S + 1);
        let body = chat_body("chat", false);
        let admitted: Vec<Duration> = futures::stream::iter(0..64)
            .map(|client| {
                let addr = addrs[client % addrs.len()];
                let body = body.clone();
                async move {
                    let mut at = Vec::new();
                    while started.elapsed() < run_for {
                        let r = chat(addr, KEY_A, &body).await;
                        match r.status {
                            200 => at.push(started.elapsed()),
                            429 => {}
                            other => panic!("unexpected {other}: {}", r.text()),
                        }
                    }
                    at
                }
            })
            .buffer_unordered(64)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        let mut at = admitted;
        at.sort_unstable();
        // The most admitted in any rolling window (by response time).
        let window = Duration::from_secs(WINDOW_S);
        let busiest = (0..at.len())
            .map(|i| at[i..].iter().take_while(|t| **t < at[i] + window).count())
            .max()
            .unwrap_or(0);
        eprintln!(
            "redis shared limit: busiest window {busiest} of {LIMIT}, {} admitted in all",
            at.len()
        );
        let slack = LIMIT / 100 + 1;
        assert!(
            busiest <= LIMIT + slack,
            "{busiest} admitted within one window, limit {LIMIT}"
        );
        assert!(
            busiest + slack >= LIMIT,
            "only {busiest} admitted within the busiest window"
        );
        let per_instance: Vec<usize> = gws
            .iter()
            .map(|g| {
                g.access_lines()
                    .iter()
                    .filter(|v| v["status"] == "ok")
                    .count()
            })
            .collect();
        assert!(
            per_instance.iter().all(|&n| n > 0),
            "every instance admitted some: {per_instance:?}"
        );
        assert_eq!(
            mock.request_count(),
            at.len(),
            "every admitted request, and no other, went upstream"
        );
    })
    .await;
}

#[tokio::test]
async fn a_dead_redis_fails_closed_or_open_as_configured() {
    bounded(60, async {
        let mut redis = RedisServer::start().await;
        let mock = MockUpstream::start().await;
        let with = |fail_open: bool| {
            let mut s = config(&mock, "    limits: { rpm: 100 }", "", "60s");
            s.body = s.body.replace(
                "rate_limits: { window: 60s }",
                &format!(
                    "rate_limits: {{ store: \"{}\", fail_open: {fail_open} }}",
                    redis.url()
                ),
            );
            s
        };
        let closed = Gateway::start(with(false)).await;
        let open = Gateway::start(with(true)).await;
        let body = chat_body("chat", false);
        assert_eq!(
            chat(closed.addr(), KEY_A, &body).await.status,
            200,
            "Redis up"
        );
        redis.stop();
        let r = chat(closed.addr(), KEY_A, &body).await;
        assert_envelope(&r, 503, "server_error", "rate_limiter_unavailable", None);
        assert!(r.header("retry-after").is_some());
        assert_eq!(
            chat(open.addr(), KEY_A, &body).await.status,
            200,
            "fail_open admits"
        );
        // Keys without limits never ask the store.
        assert_eq!(chat(closed.addr(), KEY_B, &body).await.status, 200);
    })
    .await;
}

/// Budgets (contract §2 `budget`): a key that spent its period's budget gets 429
/// `insufficient_quota` until the period turns — also in a new process reading the same
/// ledger.
#[tokio::test]
async fn a_spent_budget_is_refused_and_stays_spent_across_restarts() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let ledger_dir = TempDir::new();
        let store = format!(
            "\nusage: {{ store: \"sqlite://{}\" }}\n",
            ledger_dir.path().join("ledger.db").display()
        );
        let mut setup = config(
            &mock,
            "    budget: { usd: 0.02, period: day }",
            "    pricing: { input: 1000, output: 1000, per: 1M }",
            "60s",
        );
        setup.body.push_str(&store);
        let setup = setup.server_extra("  grace_period: 1s");
        let body = chat_body("chat", false);
        {
            let mut gw = Gateway::start(setup.clone()).await;
            // Each request costs (11 + 3) tokens × $1000 / 1M = $0.014.
            assert_eq!(chat(gw.addr(), KEY_A, &body).await.status, 200);
            assert_eq!(
                chat(gw.addr(), KEY_A, &body).await.status,
                200,
                "$0.014 < $0.02"
            );
            let r = chat(gw.addr(), KEY_A, &body).await;
            assert_envelope(&r, 429, "insufficient_quota", "insufficient_quota", None);
            let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!(
                (1..=86_400).contains(&wait),
                "until the next UTC day: {wait}"
            );
            assert_eq!(
                chat(gw.addr(), KEY_B, &body).await.status,
                200,
                "b has no budget"
            );
            assert_eq!(mock.request_count(), 3);
            // A graceful stop: the ledger writes what it holds before the process goes.
            gw.signal("TERM");
            assert!(gw.wait_exit(Duration::from_secs(15)).await.is_some());
        }
        let gw = Gateway::start(setup).await;
        let started = Instant::now();
        let mut admitted = 0;
        loop {
            let r = chat(gw.addr(), KEY_A, &body).await;
            if r.status == 429 {
                assert_envelope(&r, 429, "insufficient_quota", "insufficient_quota", None);
                break;
            }
            admitted += 1;
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the ledger's spend never applied"
            );
        }
        assert_eq!(
            admitted, 0,
            "the restart knows the key's spend from the ledger"
        );
    })
    .await;
}

/// `model_limits` on a key: a limit of that key on one model only.
#[tokio::test]
async fn a_key_can_be_limited_on_one_model() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let mut setup = config(&mock, "    model_limits: { chat: { rpm: 2 } }", "", "60s");
        setup.body = setup.body.replace(
            "models:\n  chat:\n",
            "models:\n  other:\n    targets: [{ provider: mock, model: o }]\n  chat:\n",
        );
        let gw = Gateway::start(setup).await;
        let chat_body_for = |m: &str| chat_body(m, false);
        for _ in 0..2 {
            assert_eq!(
                chat(gw.addr(), KEY_A, &chat_body_for("chat")).await.status,
                200
            );
        }
        let r = chat(gw.addr(), KEY_A, &chat_body_for("chat")).await;
        assert_envelope(&r, 429, "requests", "rate_limit_exceeded", None);
        assert_eq!(
            chat(gw.addr(), KEY_A, &chat_body_for("other")).await.status,
            200,
            "other models are not limited"
        );
        assert_eq!(
            chat(gw.addr(), KEY_B, &chat_body_for("chat")).await.status,
            200,
            "other keys are not limited"
        );
    })
    .await;
}

/// TPM reservations shared through Redis: two instances together never admit more
/// reserved tokens than the limit.
#[tokio::test]
async fn token_reservations_hold_across_instances_through_redis() {
    bounded(60, async {
        let redis = RedisServer::start().await;
        let mock = MockUpstream::start().await;
        mock.set_default(Reply::auto().slow_headers(Duration::from_millis(300)));
        let mut setup = config(&mock, "    limits: { tpm: 1000 }", "", "60s");
        setup.body = setup.body.replace(
            "rate_limits: { window: 60s }",
            &format!("rate_limits: {{ store: \"{}\" }}", redis.url()),
        );
        let gws = [
            Gateway::start(setup.clone()).await,
            Gateway::start(setup).await,
        ];
        let addrs: Vec<_> = gws.iter().map(Gateway::addr).collect();
        let mut body = chat_body("chat", false);
        body["max_tokens"] = 100.into();
        let reserve = 100 + body.to_string().len() as u64 / 4;
        let all: Vec<Response> = futures::stream::iter(0..32)
            .map(|i| {
                let body = body.clone();
                let addr = addrs[i % 2];
                async move { chat(addr, KEY_A, &body).await }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let ok = all.iter().filter(|r| r.status == 200).count() as u64;
        assert!(ok >= 1);
        assert!(
            ok <= 1000 / reserve,
            "{ok} admitted × {reserve} reserved would pass 1000"
        );
        for r in all.iter().filter(|r| r.status != 200) {
            assert_envelope(r, 429, "tokens", "rate_limit_exceeded", None);
        }
    })
    .await;
}
