//! Balancing benchmark (issue 3's bar): what the route step's balancing decision and the
//! attempt loop's endpoint pick cost per request, for each `balance` strategy over 4 targets
//! × 4 endpoints, against the single-target, single-endpoint path.
//!
//! Run with `cargo bench --bench balance`. It links the crate and times exactly the code a
//! request runs between "body parsed" and "bytes to the upstream": `Router::plan` (route,
//! balance order over live load), then per attempt `ProviderUpstream::pick` (Pingora's
//! `select_with` over health, cool-down and tried endpoints), the in-flight guard and the
//! outcome record. No I/O: the upstream exchange itself is what `benches/overhead.rs`
//! measures. Prints a markdown table: median ns per request over several batches, and the
//! difference to the single-target path.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use switchyard::config::{self, Config};
use switchyard::routing::{Caller, HeaderLookup, Router};
use switchyard::upstream::{UpstreamRegistry, Upstreams, Verdict};

const BATCHES: usize = 15;
const PER_BATCH: usize = 20_000;
/// The bar from issue 3: balancing and the attempt loop add at most this per request.
const BAR_NS: f64 = 20_000.0;

struct Headers;

impl HeaderLookup for Headers {
    fn header(&self, name: &http::HeaderName) -> Option<&[u8]> {
        (name == http::header::AUTHORIZATION).then_some(b"Bearer sk-bench-key".as_slice())
    }
}

fn single() -> String {
    "providers:\n  p0:\n    type: openai\n    endpoints: [\"http://127.0.0.1:9000/v1\"]\n\nmodels:\n  chat:\n    targets:\n      - { provider: p0, model: m }\n".to_owned()
}

/// Four providers of four endpoints each; `chat` has a target on each.
fn wide(balance: &str) -> String {
    let mut s = String::from("providers:\n");
    for p in 0..4 {
        let eps: Vec<String> = (0..4)
            .map(|e| format!("\"http://127.0.0.1:{}/v1\"", 9100 + p * 10 + e))
            .collect();
        s += &format!(
            "  p{p}:\n    type: openai\n    endpoints: [{}]\n    health_check: {{ path: /health }}\n",
            eps.join(", ")
        );
    }
    s += &format!("\nmodels:\n  chat:\n    balance: {balance}\n    targets:\n");
    for p in 0..4 {
        s += &format!(
            "      - {{ provider: p{p}, model: m{p}, weight: {} }}\n",
            p + 1
        );
    }
    s
}

/// One request's balancing work: plan, then the first attempt's pick, guard and record.
fn one_request(config: &Config, router: &Router, upstreams: &Upstreams) -> usize {
    let now = Instant::now();
    let caller = Caller {
        headers: &Headers,
        may_use: &|_: &str| true,
    };
    let plan = router
        .plan(config, "chat", &caller, upstreams, now)
        .unwrap();
    let candidate = plan.candidates[0];
    let provider = upstreams.provider(&candidate.target.provider).unwrap();
    let mut tried = Vec::new();
    let ep = provider.pick(&mut tried, now).unwrap();
    let _guard = ep.state.start();
    ep.state.record(Verdict::Ok {
        latency: Duration::from_micros(800),
    });
    plan.candidates.len() + tried.len()
}

/// Median ns per request over `BATCHES` batches.
fn measure(yaml: &str) -> f64 {
    let config = config::load_str(yaml, "bench.yaml").unwrap();
    let registry = UpstreamRegistry::default();
    let upstreams = registry.build(&config);
    let router = Router::new(&config);
    for _ in 0..PER_BATCH {
        black_box(one_request(&config, &router, &upstreams));
    }
    let mut batches: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..PER_BATCH {
                black_box(one_request(&config, &router, &upstreams));
            }
            started.elapsed().as_nanos() as f64 / PER_BATCH as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[BATCHES / 2]
}

fn main() -> ExitCode {
    let base = measure(&single());
    println!("| path | ns per request (median) | over single target |");
    println!("|---|---:|---:|");
    println!("| single target, one endpoint | {base:.0} | — |");
    let mut worst: f64 = 0.0;
    for balance in [
        "round_robin",
        "weighted",
        "least_pending",
        "latency",
        "hash_key",
    ] {
        let ns = measure(&wide(balance));
        worst = worst.max(ns - base);
        println!(
            "| {balance}, 4 targets × 4 endpoints | {ns:.0} | {:+.0} |",
            ns - base
        );
    }
    println!(
        "\nworst added cost {worst:.0} ns per request; bar {BAR_NS:.0} ns: {}",
        if worst <= BAR_NS { "met" } else { "NOT met" }
    );
    if worst <= BAR_NS {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
