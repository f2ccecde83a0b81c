//! The usage ledger in a real SQLite database (contract §6, §5.7; issue 4): exactly one row
//! per authenticated request across success, upstream error, client cancel mid-stream and
//! rate-limit rejection; a database that survives `kill -9` under load; a dead database that
//! never blocks requests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard::ledger::Store;

use crate::support::client::{self, HttpClient};
use crate::support::gateway::{Gateway, Setup, free_port};
use crate::support::mock_upstream::{MockUpstream, Reply, numbered_tokens};
use crate::support::postgres::Postgres;
use crate::{bounded, chat_body};

const KEY: &str = "sk-ledger-canary-4417";

/// `request_id, status, http_status, key` of one row.
type LedgerRow = (String, String, i64, Option<String>);

fn setup(mock: &MockUpstream, extra: &str) -> Setup {
    Setup::new(format!(
        "providers:\n  mock:\n    type: openai\n    endpoints: [\"{}\"]\n\nmodels:\n  chat:\n    targets: [{{ provider: mock, model: m }}]\n    retry_on: [connect]\n\nkeys:\n  team:\n    key: {KEY}\n    limits: {{ rpm: 5 }}\n{extra}",
        mock.url()
    ))
}

/// The gateway's default SQLite ledger.
fn sqlite_of(gw: &Gateway) -> String {
    let db = gw.config_path.parent().unwrap().join("switchyard.db");
    format!("sqlite://{}", db.display())
}

async fn open(url: &str) -> Store {
    Store::connect(url).await.unwrap()
}

/// `request_id → (status, http_status, key)` of every row, once `n` rows are there.
async fn rows(store: &Store, n: usize) -> Vec<LedgerRow> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Until the gateway's writer has created the table, there is nothing to read.
        let rows: Vec<LedgerRow> = sqlx::query_as(
            "SELECT request_id, status, http_status, key FROM usage_ledger ORDER BY ts_start",
        )
        .fetch_all(store.pool())
        .await
        .unwrap_or_default();
        if rows.len() >= n || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(gw: &Gateway, id: &str, stream: bool) -> client::Response {
    let auth = format!("Bearer {KEY}");
    gw.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
            ("x-request-id", id),
        ],
        chat_body("chat", stream).to_string().as_bytes(),
    )
    .await
}

#[tokio::test]
async fn one_row_per_authenticated_request_whatever_the_outcome_sqlite() {
    bounded(60, one_row_each(None)).await;
}

#[tokio::test]
async fn one_row_per_authenticated_request_whatever_the_outcome_postgres() {
    let pg = Postgres::start();
    bounded(60, one_row_each(Some(pg.url()))).await;
}

/// The ledger in `store` (the default SQLite file when `None`).
async fn one_row_each(store: Option<String>) {
    {
        let mock = MockUpstream::start().await;
        mock.respond_with(|r| {
            let id = r.header("x-request-id").unwrap_or("").to_owned();
            match id.as_str() {
                "l-500" => Some(Reply::status(500)),
                "l-cancel" => Some(Reply::sse(numbered_tokens(50), Duration::from_millis(50))),
                _ => None,
            }
        });
        let usage = store.as_ref().map_or(String::new(), |url| {
            format!("usage: {{ store: \"{url}\" }}\n")
        });
        let gw = Gateway::start(setup(&mock, &usage)).await;
        let url = store.unwrap_or_else(|| sqlite_of(&gw));
        assert_eq!(post(&gw, "l-ok", false).await.status, 200);
        assert_eq!(post(&gw, "l-stream", true).await.status, 200);
        assert_eq!(post(&gw, "l-500", false).await.status, 502);
        // Cancel a stream after its first events.
        let auth = format!("Bearer {KEY}");
        let mut c = HttpClient::connect(gw.addr()).await.unwrap();
        c.send(
            "POST",
            "/v1/chat/completions",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &auth),
                ("x-request-id", "l-cancel"),
            ],
            chat_body("chat", true).to_string().as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(c.read_head().await.unwrap().status, 200);
        c.next_event().await.unwrap();
        c.rst();
        // Two more than the rpm of 5 allows: one 200, then 429s.
        assert_eq!(post(&gw, "l-ok-2", false).await.status, 200);
        assert_eq!(post(&gw, "l-limited", false).await.status, 429);
        // Not authenticated: no row.
        let r = gw
            .request(
                "POST",
                "/v1/chat/completions",
                &[
                    ("Content-Type", "application/json"),
                    ("x-request-id", "l-anon"),
                ],
                b"{}",
            )
            .await;
        assert_eq!(r.status, 401);

        let store = open(&url).await;
        let found = rows(&store, 6).await;
        let by_id: HashMap<&str, Vec<&LedgerRow>> =
            found.iter().fold(HashMap::new(), |mut m, r| {
                m.entry(r.0.as_str()).or_default().push(r);
                m
            });
        let expect = [
            ("l-ok", "ok", 200),
            ("l-stream", "ok", 200),
            ("l-500", "upstream_error", 502),
            ("l-cancel", "client_cancelled", 499),
            ("l-ok-2", "ok", 200),
            ("l-limited", "rejected_rate", 429),
        ];
        for (id, status, http) in expect {
            let rows = by_id
                .get(id)
                .unwrap_or_else(|| panic!("no row for {id}: {found:?}"));
            assert_eq!(rows.len(), 1, "exactly one row for {id}");
            assert_eq!((rows[0].1.as_str(), rows[0].2), (status, http), "{id}");
            assert_eq!(
                rows[0].3.as_deref(),
                Some("team"),
                "the key's name, never the key"
            );
        }
        // Nothing more arrives: 6 rows, no row for the unauthenticated request.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(rows(&store, 0).await.len(), expect.len());
        let dump: Vec<(String,)> = sqlx::query_as(
            "SELECT request_id || coalesce(key, '') || model_requested FROM usage_ledger",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert!(
            !format!("{dump:?}").contains("canary"),
            "no key in the ledger"
        );
    }
}

#[tokio::test]
async fn the_database_survives_kill_9_under_load() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        // A key without limits, so nothing but the kill stops the load.
        let gw = Gateway::start(Setup::new(format!(
            "providers:\n  mock:\n    type: openai\n    endpoints: [\"{}\"]\n\nmodels:\n  chat:\n    targets: [{{ provider: mock, model: m }}]\n\nkeys:\n  team:\n    key: {KEY}\n",
            mock.url()
        )))
        .await;
        let addr = gw.addr();
        let load = tokio::spawn(async move {
            futures::stream::iter(0..100_000)
                .map(|_| async move {
                    let auth = format!("Bearer {KEY}");
                    let _ = client::request(
                        addr,
                        "POST",
                        "/v1/chat/completions",
                        &[("Content-Type", "application/json"), ("Authorization", &auth)],
                        chat_body("chat", false).to_string().as_bytes(),
                    )
                    .await;
                })
                .buffer_unordered(32)
                .collect::<Vec<_>>()
                .await
        });
        let store = open(&sqlite_of(&gw)).await;
        // Under load: rows are being written when the process dies.
        assert!(rows(&store, 200).await.len() >= 200, "the ledger fills under load");
        gw.signal("KILL");
        load.abort();
        let check: (String,) = sqlx::query_as("PRAGMA integrity_check")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(check.0, "ok");
    })
    .await;
}

#[tokio::test]
async fn a_dead_database_never_blocks_requests() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let dead = format!(
            "  store: postgres://switchyard@127.0.0.1:{}/ledger\n",
            free_port()
        );
        let gw = Gateway::start(setup(&mock, &format!("usage:\n{dead}"))).await;
        let started = Instant::now();
        for i in 0..5 {
            let r = post(&gw, &format!("dead-{i}"), false).await;
            assert_eq!(r.status, 200);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "requests never wait on the ledger"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gw.output_text().contains("ledger database unavailable") {
            assert!(Instant::now() < deadline, "the dead database is reported");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// The same insert with and without a time to first token, in either order, on PostgreSQL
/// (a cached prepared statement would keep the types of its first use).
#[tokio::test]
async fn postgres_takes_rows_with_and_without_optional_fields() {
    let pg = Postgres::start();
    bounded(60, async {
        let store = Store::open(&pg.url()).await.unwrap();
        let row = |id: &str, ttft: Option<f64>, key: Option<&str>| switchyard::ledger::Row {
            request_id: id.to_owned(),
            ts_start_ms: 1,
            ts_end_ms: 2,
            key: key.map(str::to_owned),
            model_requested: "chat".into(),
            model: "chat".into(),
            provider: "mock".into(),
            endpoint: "http://127.0.0.1:1/v1".into(),
            stream: ttft.is_some(),
            status: "ok",
            http_status: 200,
            attempts: 1,
            prompt_tokens: 11,
            completion_tokens: 3,
            cached_tokens: 0,
            usage_source: "upstream",
            cost_usd: 0.5,
            ttft_ms: ttft,
            duration_ms: 3.5,
        };
        // Every connection of the pool sees both shapes, in both orders.
        let shapes = [
            (None, None),
            (Some(1.5), Some("k")),
            (None, Some("k")),
            (Some(2.0), None),
        ];
        for round in 0..4 {
            for (i, (ttft, key)) in shapes.into_iter().enumerate() {
                let ttft = ttft.map(|t: f64| t + f64::from(round));
                let r = row(&format!("r{round}-{i}"), ttft, key);
                store.insert(&[r]).await.unwrap();
            }
        }
        store
            .insert(&[row("r4", None, None), row("r5", Some(9.0), Some("k"))])
            .await
            .unwrap();
        assert_eq!(store.spent("k", 0).await.unwrap(), 0.5 * 9.0);
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM usage_ledger")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(n, 18);
    })
    .await;
}
