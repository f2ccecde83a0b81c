//! Hot reload (contract §2, §5.6; issue 3): file change (debounced), SIGHUP and
//! `POST /api/config/reload` apply a new config off the request path; an invalid file keeps
//! the old one serving; requests in flight finish on the config they started with.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::support::client;
use crate::support::gateway::{Gateway, Setup, TempDir};
use crate::support::mock_upstream::{MockUpstream, Reply};
use crate::{assert_envelope, bounded, chat_body};

/// Providers `pa` → `a` and `pb` → `b`; model `chat` → the provider named `to`.
fn routed_to(a: &MockUpstream, b: &MockUpstream, to: &str) -> Setup {
    Setup::new(format!(
        "providers:\n  pa:\n    type: openai\n    endpoints: [\"{}\"]\n  pb:\n    type: openai\n    endpoints: [\"{}\"]\n\nmodels:\n  chat:\n    targets:\n      - {{ provider: {to}, model: m }}\n",
        a.url(),
        b.url()
    ))
}

/// Which provider serves `chat` now (a fresh non-stream request).
async fn served_by(gw: &Gateway) -> String {
    let r = gw
        .request(
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            chat_body("chat", false).to_string().as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-switchyard-provider").unwrap_or("").to_owned()
}

/// Polls until `chat` is served by `provider`; returns how long that took.
async fn until_served_by(gw: &Gateway, provider: &str) -> Duration {
    let started = Instant::now();
    while served_by(gw).await != provider {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never switched to {provider}"
        );
    }
    started.elapsed()
}

fn reloads(text: &str, result: &str) -> u64 {
    let series = format!("switchyard_config_reloads_total{{result=\"{result}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_changed_file_is_applied_within_a_second() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let gw = Gateway::start(routed_to(&a, &b, "pa")).await;
        assert_eq!(served_by(&gw).await, "pa");
        gw.write_config(&routed_to(&a, &b, "pb"));
        let took = until_served_by(&gw, "pb").await;
        assert!(
            took < Duration::from_secs(1),
            "new config live after {took:?}"
        );
        let text = gw.metrics_until(|t| reloads(t, "ok") == 1).await;
        assert_eq!(reloads(&text, "error"), 0);
    })
    .await;
}

#[tokio::test]
async fn an_invalid_file_changes_nothing() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let gw = Gateway::start(routed_to(&a, &b, "pa")).await;
        // A dangling provider name: valid YAML, invalid config.
        gw.write_config(&routed_to(&a, &b, "nowhere"));
        gw.metrics_until(|t| reloads(t, "error") == 1).await;
        assert_eq!(served_by(&gw).await, "pa", "the old config keeps serving");
        let logged = gw.json_lines().into_iter().any(|v| {
            v["level"] == "ERROR"
                && v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("switchyard.yaml:") && e.contains("nowhere"))
        });
        assert!(
            logged,
            "the file's errors are logged:\n{}",
            gw.output_text()
        );
        // The API says the same, in the error envelope.
        let r = gw.request("POST", "/api/config/reload", &[], b"").await;
        assert_envelope(&r, 422, "invalid_request_error", "config_invalid", None);
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("nowhere")
        );
        assert_eq!(served_by(&gw).await, "pa");
        // Fixed: applied.
        gw.write_config(&routed_to(&a, &b, "pb"));
        until_served_by(&gw, "pb").await;
    })
    .await;
}

#[tokio::test]
async fn a_half_written_file_is_never_applied() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let gw = Gateway::start(routed_to(&a, &b, "pa")).await;
        // The full file adds a second model; its first half alone is a valid config too.
        let full = routed_to(&a, &b, "pb").yaml(gw.addr().port())
            + "  other:\n    targets:\n      - { provider: pa, model: o }\n";
        let cut = full.find("  other:").unwrap();
        let mut f = std::fs::File::create(&gw.config_path).unwrap();
        f.write_all(&full.as_bytes()[..cut]).unwrap();
        f.flush().unwrap();
        // A slow writer: the second half follows within the watch's settle time.
        tokio::time::sleep(Duration::from_millis(150)).await;
        f.write_all(&full.as_bytes()[cut..]).unwrap();
        drop(f);
        until_served_by(&gw, "pb").await;
        let r = gw.get("/v1/models/other").await;
        assert_eq!(r.status, 200, "the whole file is live");
        let text = gw.metrics_until(|t| reloads(t, "ok") >= 1).await;
        assert_eq!(
            reloads(&text, "ok"),
            1,
            "only the finished file was applied"
        );
    })
    .await;
}

/// SIGHUP and the API rebuild even when the file did not change: a `file:` secret did.
#[tokio::test]
async fn sighup_and_the_api_reload_a_changed_secret() {
    bounded(60, async {
        let a = MockUpstream::start().await;
        let secrets = TempDir::new();
        let key_file = secrets.write("key.txt", "sk-first\n");
        let setup = Setup::new(format!(
            "providers:\n  pa:\n    type: openai\n    endpoints: [\"{}\"]\n    api_key: file:{}\n\nmodels:\n  chat:\n    targets:\n      - {{ provider: pa, model: m }}\n",
            a.url(),
            key_file.display()
        ));
        let gw = Gateway::start(setup).await;
        let seen = |key: &str| {
            let want = format!("Bearer {key}");
            a.requests()
                .last()
                .and_then(|r| r.header("authorization").map(|h| h == want))
                .unwrap_or(false)
        };
        let _ = served_by(&gw).await;
        assert!(seen("sk-first"));
        // The file watch reads the config file only: a changed secret needs SIGHUP or the API.
        std::fs::write(&key_file, "sk-second\n").unwrap();
        gw.signal("HUP");
        let started = Instant::now();
        loop {
            let _ = served_by(&gw).await;
            if seen("sk-second") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "SIGHUP never applied");
        }
        std::fs::write(&key_file, "sk-third\n").unwrap();
        let r = gw.request("POST", "/api/config/reload", &[], b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["status"], "reloaded");
        let _ = served_by(&gw).await;
        assert!(seen("sk-third"), "the API reload applied at once");
        assert!(!gw.output_text().contains("sk-"), "keys never in logs");
    })
    .await;
}

/// Issue 3's reload under load: 200 streams (one event every 50 ms for 10 s) and steady
/// non-stream traffic through 20 reloads alternating two configs, with an invalid file in
/// the middle. Zero failures, every stream whole and in order, each switch live within 1 s.
#[tokio::test]
async fn reload_under_load_loses_nothing() {
    bounded(120, async {
        const STREAMS: usize = 200;
        const EVENTS: usize = 200;
        let tokens: Vec<String> = (0..EVENTS).map(|i| format!(" w{i}")).collect();
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        for m in [&a, &b] {
            let tokens = tokens.clone();
            m.respond_with(move |r| {
                r.is_stream()
                    .then(|| Reply::sse(tokens.clone(), Duration::from_millis(50)))
            });
        }
        let gw = Gateway::start(routed_to(&a, &b, "pa")).await;
        let addr = gw.addr();

        let streams = tokio::spawn(async move {
            futures::stream::iter(0..STREAMS)
                .map(|i| async move {
                    let mut c = client::HttpClient::connect(addr).await.unwrap();
                    let body = chat_body("chat", true).to_string();
                    c.send(
                        "POST",
                        "/v1/chat/completions",
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    )
                    .await
                    .unwrap();
                    let head = c.read_head().await.unwrap();
                    assert_eq!(head.status, 200, "stream {i}");
                    c.all_events().await.unwrap()
                })
                .buffer_unordered(STREAMS)
                .collect::<Vec<_>>()
                .await
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let steady = {
            let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
            tokio::spawn(async move {
                let body = chat_body("chat", false).to_string();
                while !stop.load(Ordering::SeqCst) {
                    let r = client::request(
                        addr,
                        "POST",
                        "/v1/chat/completions",
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    )
                    .await;
                    match r {
                        Ok(r) if r.status == 200 => served.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        };

        // All streams running before the first reload.
        let stream_requests =
            |m: &MockUpstream| m.requests().iter().filter(|r| r.is_stream()).count();
        while stream_requests(&a) < STREAMS {
            assert!(
                a.wait_requests(a.request_count() + 1, Duration::from_secs(10))
                    .await
            );
        }
        let mut slowest = Duration::ZERO;
        for i in 0..20 {
            let to = if i % 2 == 0 { "pb" } else { "pa" };
            gw.write_config(&routed_to(&a, &b, to));
            let took = until_served_by(&gw, to).await;
            slowest = slowest.max(took);
            assert!(
                took < Duration::from_secs(1),
                "reload {i} live after {took:?}"
            );
            if i == 10 {
                gw.write_config(&routed_to(&a, &b, "nowhere"));
                gw.metrics_until(|t| reloads(t, "error") == 1).await;
                assert_eq!(served_by(&gw).await, to, "the invalid file changed nothing");
            }
        }

        eprintln!("reload under load: slowest switch {slowest:?}");
        let all = streams.await.unwrap();
        stop.store(true, Ordering::SeqCst);
        steady.await.unwrap();
        assert_eq!(all.len(), STREAMS);
        for (n, events) in all.iter().enumerate() {
            assert_eq!(events.len(), EVENTS + 1, "stream {n} whole");
            assert!(events[EVENTS].is_done(), "stream {n} ends with [DONE]");
            for (i, e) in events[..EVENTS].iter().enumerate() {
                let content = &e.json()["choices"][0]["delta"]["content"];
                assert_eq!(content, &tokens[i], "stream {n} event {i} in order");
            }
        }
        assert_eq!(failed.load(Ordering::SeqCst), 0, "no failed request");
        assert!(served.load(Ordering::SeqCst) > 20);
        assert_eq!(
            a.requests().iter().filter(|r| r.is_stream()).count()
                + b.requests().iter().filter(|r| r.is_stream()).count(),
            STREAMS
        );
    })
    .await;
}

/// A reload keeps what it did not change: a cooling endpoint stays out, and a provider that
/// gained a `health_check` is probed from then on (the health service follows reloads).
#[tokio::test]
async fn unchanged_backends_keep_their_state_across_a_reload() {
    bounded(60, async {
        let (sick, good, c) = (
            MockUpstream::start().await,
            MockUpstream::start().await,
            MockUpstream::start().await,
        );
        sick.set_default(Reply::status(503).retry_after(60));
        c.respond_with(|r| (r.path == "/health").then(|| Reply::status(500)));
        let config = |health: &str| {
            Setup::new(format!(
                "providers:\n  pool:\n    type: openai\n    endpoints: [\"{}\", \"{}\"]\n  pc:\n    type: openai\n    endpoints: [\"{}\"]\n{health}\nmodels:\n  chat:\n    targets:\n      - {{ provider: pool, model: m }}\n  extra:\n    targets:\n      - {{ provider: pc, model: x }}\n",
                sick.url(),
                good.url(),
                c.url()
            ))
        };
        let gw = Gateway::start(config("")).await;
        let _ = served_by(&gw).await;
        let _ = served_by(&gw).await;
        let sick_posts = || sick.requests().iter().filter(|r| r.method == "POST").count();
        assert_eq!(sick_posts(), 1, "cooling after its 503");

        gw.write_config(&config(
            "    health_check: { path: /health, interval: 100ms, unhealthy_after: 1, healthy_after: 1 }\n",
        ));
        let c_up = format!(
            "switchyard_backend_up{{endpoint=\"{}\",provider=\"pc\"}} 0",
            c.url()
        );
        gw.metrics_until(|t| t.contains(&c_up)).await;
        for _ in 0..10 {
            assert_eq!(served_by(&gw).await, "pool");
        }
        assert_eq!(sick_posts(), 1, "the cool-down survived the reload");
        let sick_open = format!(
            "switchyard_circuit_open{{endpoint=\"{}\",provider=\"pool\"}} 1",
            sick.url()
        );
        gw.metrics_until(|t| t.contains(&sick_open)).await;
    })
    .await;
}

/// With `server.admin_token`, the reload route needs it: byte-identical 401s otherwise.
#[tokio::test]
async fn the_reload_api_needs_the_admin_token_when_one_is_set() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let setup = routed_to(&a, &b, "pa")
            .server_extra("  admin_token: env:SY_ADMIN_TOKEN")
            .env("SY_ADMIN_TOKEN", "adm-canary-7731");
        let gw = Gateway::start(setup).await;
        let missing = gw.request("POST", "/api/config/reload", &[], b"").await;
        let wrong = gw
            .request(
                "POST",
                "/api/config/reload",
                &[("Authorization", "Bearer adm-canary-7730")],
                b"",
            )
            .await;
        for r in [&missing, &wrong] {
            assert_envelope(r, 401, "invalid_request_error", "invalid_api_key", None);
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
        assert_eq!(missing.body, wrong.body, "byte-identical 401s");
        for headers in [
            [("Authorization", "Bearer adm-canary-7731")],
            [("X-API-Key", "adm-canary-7731")],
        ] {
            let r = gw
                .request("POST", "/api/config/reload", &headers, b"")
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        // Log lines reach the test through a pipe: wait for them.
        let reloaded = || {
            gw.json_lines()
                .iter()
                .filter(|v| v["message"] == "config reloaded" && v["trigger"] == "api")
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloaded() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            reloaded(),
            2,
            "the two authorised calls reloaded, no other did"
        );
        assert!(
            !gw.output_text().contains("adm-canary"),
            "the token is never logged"
        );
    })
    .await;
}
