//! Every `switchyard_*` Prometheus metric (contract §7) and the label rule of contract §5.8.
//!
//! Written from the `logging` phase (one update per finished request) and from the exchange
//! (attempts, in-flight, time to first token); read by `GET /metrics`. Metrics live in the
//! process-wide default registry, the one Pingora's own metrics use, so one scrape shows both.

use std::sync::OnceLock;

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Label value for anything that is not a configured name (contract §5.8).
pub const OTHER: &str = "other";

pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub ttft: HistogramVec,
    pub tokens: IntCounterVec,
    pub cost: CounterVec,
    pub in_flight: IntGaugeVec,
    pub upstream_attempts: IntCounterVec,
    pub backend_up: IntGaugeVec,
    pub circuit_open: IntGaugeVec,
    pub fallbacks: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub ledger_dropped: IntCounter,
}

/// Latency buckets from 1 ms to 10 min: LLM requests span five orders of magnitude.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

impl Metrics {
    /// Registers every metric once in the default registry. Called at start-up, where a
    /// failure (only possible with a malformed metric name) stops the process with an error.
    pub fn init() -> prometheus::Result<&'static Metrics> {
        if let Some(m) = METRICS.get() {
            return Ok(m);
        }
        let m = Metrics::new(prometheus::default_registry())?;
        Ok(METRICS.get_or_init(|| m))
    }

    /// The registered instance; `None` only before `init`, so request paths skip recording.
    pub fn get() -> Option<&'static Metrics> {
        METRICS.get()
    }

    fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let latency = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &["model", "provider"],
            )
        };
        let m = Metrics {
            requests: IntCounterVec::new(
                Opts::new("switchyard_requests_total", "Finished requests"),
                &["model", "provider", "status"],
            )?,
            duration: latency(
                "switchyard_request_duration_seconds",
                "Request duration from request start to the last byte out",
            )?,
            ttft: latency(
                "switchyard_time_to_first_token_seconds",
                "Time from request start to the first streamed event",
            )?,
            tokens: IntCounterVec::new(
                Opts::new("switchyard_tokens_total", "Tokens by kind"),
                &["model", "provider", "kind"],
            )?,
            cost: CounterVec::new(
                Opts::new(
                    "switchyard_cost_usd_total",
                    "Cost in USD from model pricing",
                ),
                &["model", "key"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new("switchyard_in_flight_requests", "Requests in flight"),
                &["model"],
            )?,
            upstream_attempts: IntCounterVec::new(
                Opts::new(
                    "switchyard_upstream_attempts_total",
                    "Upstream attempts by outcome",
                ),
                &["provider", "outcome"],
            )?,
            backend_up: IntGaugeVec::new(
                Opts::new(
                    "switchyard_backend_up",
                    "1 while an endpoint may take requests (healthy and not cooling down)",
                ),
                &["provider", "endpoint"],
            )?,
            circuit_open: IntGaugeVec::new(
                Opts::new(
                    "switchyard_circuit_open",
                    "1 while an endpoint's circuit is open after failures",
                ),
                &["provider", "endpoint"],
            )?,
            fallbacks: IntCounterVec::new(
                Opts::new(
                    "switchyard_fallbacks_total",
                    "Requests served by a fallback model instead of the one resolved",
                ),
                &["model", "fallback"],
            )?,
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "switchyard_config_reloads_total",
                    "Config reloads by result",
                ),
                &["result"],
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "switchyard_rate_limited_total",
                    "Requests turned away by a rate limit, by key and limit kind",
                ),
                &["key", "kind"],
            )?,
            ledger_dropped: IntCounter::new(
                "switchyard_ledger_dropped_total",
                "Ledger rows that could not be written (queue full or database gone)",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.ttft.clone()))?;
        registry.register(Box::new(m.tokens.clone()))?;
        registry.register(Box::new(m.cost.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.upstream_attempts.clone()))?;
        registry.register(Box::new(m.backend_up.clone()))?;
        registry.register(Box::new(m.circuit_open.clone()))?;
        registry.register(Box::new(m.fallbacks.clone()))?;
        registry.register(Box::new(m.config_reloads.clone()))?;
        registry.register(Box::new(m.rate_limited.clone()))?;
        registry.register(Box::new(m.ledger_dropped.clone()))?;
        Ok(m)
    }

    /// The Prometheus text exposition of the default registry.
    pub fn encode() -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if TextEncoder::new()
            .encode(&prometheus::gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_encodes() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).unwrap();
        m.requests.with_label_values(&["chat", "p", "ok"]).inc();
        m.ttft.with_label_values(&["chat", "p"]).observe(0.01);
        let text = {
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(
            text.contains(
                "switchyard_requests_total{model=\"chat\",provider=\"p\",status=\"ok\"} 1"
            )
        );
        assert!(text.contains("switchyard_time_to_first_token_seconds_bucket"));
        assert_eq!(
            registry.gather().len(),
            3,
            "only touched vectors are gathered, and the plain ledger counter"
        );
    }
}
