//! Governance benchmark (issue 4's bars): the auth + rate-limit decision with the memory
//! store per request, and the ledger's insert throughput on SQLite.
//!
//! Run with `cargo bench --bench governance`. It links the crate and times exactly what a
//! request runs in the auth and limit steps (`auth::authenticate`, the key lookup,
//! `Limiter::admit` with a key and a model scope, settling and releasing the hold), and
//! what the ledger writer runs per batch (`Store::insert`, 512 rows a transaction, WAL).
//! Prints a markdown table; exits non-zero when a bar is missed.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use http::HeaderMap;
use switchyard::auth;
use switchyard::auth::virtual_keys::VirtualKeys;
use switchyard::config::{self, Config};
use switchyard::ledger::{Row, Store};
use switchyard::limits::{Check, Limiter, Scope};

const DECISIONS: usize = 200_000;
const BATCHES: usize = 7;
const LEDGER_ROWS: usize = 100_000;
const BATCH_ROWS: usize = 512;
/// Issue 4's bars.
const DECISION_BAR_NS: f64 = 5_000.0;
const LEDGER_BAR_ROWS_S: f64 = 5_000.0;

fn config() -> Config {
    let yaml = format!(
        "providers:\n  p:\n    type: openai\n    endpoints: [\"http://127.0.0.1:9/v1\"]\nmodels:\n  chat:\n    targets: [{{ provider: p, model: m }}]\n    limits: {{ rpm: 1000000000, tpm: 1000000000000 }}\nkeys:\n{}",
        (0..100)
            .map(|i| format!("  k{i}: {{ key: sk-bench-{i}, limits: {{ rpm: 1000000000, tpm: 1000000000000, concurrency: 1000 }} }}\n"))
            .collect::<String>()
    );
    config::load_str(&yaml, "bench.yaml").unwrap()
}

/// Median ns per auth + limit decision over `BATCHES` runs.
fn decisions(rt: &tokio::runtime::Runtime) -> f64 {
    let config = config();
    let limiter = Limiter::default();
    let virtual_keys = VirtualKeys::new("sqlite://unused.db");
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer sk-bench-42".parse().unwrap());
    let model = &config.models["chat"];
    let window = config.rate_limits.window;
    let one = || async {
        let who = auth::authenticate(&config, &virtual_keys, &headers)
            .unwrap()
            .unwrap();
        let key = who.key().unwrap();
        let checks = [
            Check {
                scope: Scope::Key(key.name.clone()),
                limits: key.limits,
            },
            Check {
                scope: Scope::Model(model.name.clone()),
                limits: model.limits,
            },
        ];
        let (mut hold, room) = limiter.admit(&checks, 1200, window).await.unwrap().unwrap();
        black_box(room);
        hold.settle(300);
    };
    let mut runs: Vec<f64> = (0..BATCHES)
        .map(|_| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..DECISIONS {
                    one().await;
                }
                started.elapsed().as_nanos() as f64 / DECISIONS as f64
            })
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[BATCHES / 2]
}

fn row(i: usize) -> Row {
    Row {
        request_id: format!("01a2-bench-{i:08}"),
        ts_start_ms: 1_796_000_000_000 + i as i64,
        ts_end_ms: 1_796_000_000_900 + i as i64,
        key: Some("team-a".into()),
        model_requested: "gpt-3.5-turbo".into(),
        model: "chat".into(),
        provider: "vllm-pool".into(),
        endpoint: "http://10.0.0.5:8000/v1".into(),
        stream: i.is_multiple_of(2),
        status: "ok",
        http_status: 200,
        attempts: 1,
        prompt_tokens: 812,
        completion_tokens: 245,
        cached_tokens: 0,
        usage_source: "upstream",
        cost_usd: 0.000_27,
        ttft_ms: i.is_multiple_of(2).then_some(180.5),
        duration_ms: 2400.0,
    }
}

/// Rows per second the SQLite store takes in the writer's batches.
fn ledger(rt: &tokio::runtime::Runtime) -> f64 {
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("ledger.db").display());
    let rate = rt.block_on(async {
        let store = Store::open(&url).await.unwrap();
        let rows: Vec<Row> = (0..LEDGER_ROWS).map(row).collect();
        let started = Instant::now();
        for batch in rows.chunks(BATCH_ROWS) {
            store.insert(batch).await.unwrap();
        }
        let took = started.elapsed().max(Duration::from_nanos(1));
        store.close().await;
        LEDGER_ROWS as f64 / took.as_secs_f64()
    });
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

fn main() -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ns = decisions(&rt);
    let rows_s = ledger(&rt);
    println!("| measure | result | bar |");
    println!("|---|---:|---:|");
    println!(
        "| auth + rate-limit decision, memory store (key + model scope) | {ns:.0} ns | ≤ {DECISION_BAR_NS:.0} ns |"
    );
    println!(
        "| ledger inserts, SQLite WAL, {BATCH_ROWS}-row transactions | {rows_s:.0} rows/s | ≥ {LEDGER_BAR_ROWS_S:.0} rows/s |"
    );
    let met = ns <= DECISION_BAR_NS && rows_s >= LEDGER_BAR_ROWS_S;
    println!("\nbars {}", if met { "met" } else { "NOT met" });
    if met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
