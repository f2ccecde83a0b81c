//! Graceful shutdown and upgrade (contract §1; reliability.md J6, J7): SIGTERM lets requests
//! in flight finish within `grace_period` and tells the rest `server_shutdown`; `--upgrade` +
//! SIGQUIT hands the listeners to a new process without refusing or resetting a connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;

use crate::support::client::{self, HttpClient};
use crate::support::gateway::{Gateway, Setup, TempDir, one_model};
use crate::support::mock_upstream::{MockUpstream, Reply};
use crate::{bounded, chat_body};

fn tokens(n: usize) -> Vec<String> {
    (0..n).map(|i| format!(" w{i}")).collect()
}

/// Starts a stream and reads its head.
async fn open_stream(gw: &Gateway) -> HttpClient {
    let mut c = HttpClient::connect(gw.addr()).await.unwrap();
    c.send(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        chat_body("chat", true).to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(c.read_head().await.unwrap().status, 200);
    c
}

#[tokio::test]
async fn sigterm_finishes_short_streams_and_tells_long_ones() {
    bounded(60, async {
        let a = MockUpstream::start().await;
        let short = tokens(10);
        let long = tokens(400);
        let (s, l) = (short.clone(), long.clone());
        // 10 events × 50 ms fits the 2 s grace period; 400 × 50 ms does not.
        a.respond_with(move |r| {
            let n = r.json()["max_tokens"].as_u64();
            let t = if n == Some(1) { s.clone() } else { l.clone() };
            Some(Reply::sse(t, Duration::from_millis(50)))
        });
        let setup = Setup::new(one_model(&a)).server_extra("  grace_period: 2s");
        let mut gw = Gateway::start(setup).await;
        let mut short_body = chat_body("chat", true);
        short_body["max_tokens"] = 1.into();
        let mut short_stream = HttpClient::connect(gw.addr()).await.unwrap();
        short_stream
            .send(
                "POST",
                "/v1/chat/completions",
                &[("Content-Type", "application/json")],
                short_body.to_string().as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(short_stream.read_head().await.unwrap().status, 200);
        let mut long_stream = open_stream(&gw).await;
        gw.signal("TERM");

        let events = short_stream.all_events().await.unwrap();
        assert_eq!(events.len(), short.len() + 1, "{events:?}");
        assert!(
            events.last().unwrap().is_done(),
            "the short stream completes"
        );

        let events = long_stream.all_events().await.unwrap();
        let last = events.last().unwrap();
        assert!(!last.is_done());
        assert_eq!(
            last.json()["error"]["code"],
            "server_shutdown",
            "the long stream is told, not cut"
        );
        assert!(events.len() > 2 && events.len() < long.len());

        let status = gw.wait_exit(Duration::from_secs(15)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "clean exit: {status:?}"
        );
        assert!(
            HttpClient::connect(gw.addr()).await.is_err(),
            "nothing listens after the exit"
        );
    })
    .await;
}

/// Issue 3 / J6: in-flight streams and a steady flow of new connections across an upgrade.
#[tokio::test]
async fn graceful_upgrade_refuses_and_resets_nothing() {
    bounded(90, async {
        let a = MockUpstream::start().await;
        let stream_tokens = tokens(30);
        let t = stream_tokens.clone();
        a.respond_with(move |r| {
            r.is_stream()
                .then(|| Reply::sse(t.clone(), Duration::from_millis(50)))
        });
        let sock_dir = TempDir::new();
        let sock = sock_dir.path().join("upgrade.sock");
        let setup = Setup::new(one_model(&a)).server_extra(&format!(
            "  grace_period: 3s\n  upgrade_sock: {}",
            sock.display()
        ));
        let mut old = Gateway::start(setup).await;
        let addr = old.addr();

        // Steady new connections, one request each, from 4 clients.
        let stop = Arc::new(AtomicBool::new(false));
        let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut load = Vec::new();
        for _ in 0..4 {
            let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
            load.push(tokio::spawn(async move {
                let body = chat_body("chat", false).to_string();
                let mut errors = Vec::new();
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
                        Ok(r) if r.status == 200 => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            errors.push(format!("{:?}", other.map(|r| r.status)));
                        }
                    }
                }
                errors
            }));
        }
        // 20 streams of 1.5 s in flight when the upgrade starts.
        let streams = tokio::spawn(async move {
            futures::stream::iter(0..20)
                .map(|_| async move {
                    let mut c = HttpClient::connect(addr).await.unwrap();
                    c.send(
                        "POST",
                        "/v1/chat/completions",
                        &[("Content-Type", "application/json")],
                        chat_body("chat", true).to_string().as_bytes(),
                    )
                    .await
                    .unwrap();
                    assert_eq!(c.read_head().await.unwrap().status, 200);
                    c.all_events().await.unwrap()
                })
                .buffer_unordered(20)
                .collect::<Vec<_>>()
                .await
        });
        assert!(a.wait_requests(20, Duration::from_secs(10)).await);

        let mut new = old.spawn_upgrade();
        old.signal("QUIT");
        let status = old.wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "the old process exits cleanly: {status:?}"
        );
        // The new process alone now: keep the load on it for a moment.
        let after = served.load(Ordering::SeqCst);
        while served.load(Ordering::SeqCst) < after + 50 {
            assert!(
                new.wait_exit(Duration::from_millis(10)).await.is_none(),
                "the new process runs:\n{}",
                new.output_text()
            );
        }
        stop.store(true, Ordering::SeqCst);
        let mut errors = Vec::new();
        for l in load {
            errors.extend(l.await.unwrap());
        }
        assert_eq!(
            failed.load(Ordering::SeqCst),
            0,
            "refused or reset: {errors:?}"
        );
        for events in streams.await.unwrap() {
            assert_eq!(events.len(), stream_tokens.len() + 1);
            assert!(
                events.last().unwrap().is_done(),
                "every in-flight stream completes"
            );
        }
        assert!(
            !new.access_lines().is_empty(),
            "the new process served requests"
        );
        assert!(!old.access_lines().is_empty());
    })
    .await;
}
