//! The `logging` phase: per LLM request one ledger row (contract §6, queued for the
//! database by `ledger`), the same fields as one structured access-log line (target
//! `switchyard::access`), and the request metrics of contract §7.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::LedgerStatus;
use crate::ledger::{Ledger, Row};
use crate::metrics::{Metrics, OTHER};
use crate::proxy::ctx::RequestCtx;

/// User-supplied strings are cut to this many bytes in logs (reliability.md D4).
const MAX_LOGGED: usize = 256;

pub fn record(ctx: &mut RequestCtx, e: Option<&pingora::Error>, ledger: &Ledger) {
    if !ctx.exchange {
        return;
    }
    if e.is_some() && ctx.status == LedgerStatus::Ok && !ctx.bytes_sent {
        ctx.status = LedgerStatus::InternalError;
    }
    let duration = ctx.started.elapsed();
    let ts_end = SystemTime::now();
    record_metrics(ctx, duration.as_secs_f64());
    ledger.record(row(ctx, ts_end, duration.as_secs_f64() * 1000.0));
    tracing::info!(
        target: "switchyard::access",
        request_id = %ctx.request_id,
        ts_start = unix_ms(ctx.ts_start),
        ts_end = unix_ms(ts_end),
        key = ctx.key.as_deref().unwrap_or(""),
        model_requested = %clip(ctx.model_requested.as_deref().unwrap_or("")),
        model = ctx.model.as_deref().unwrap_or(""),
        provider = ctx.provider.as_deref().unwrap_or(""),
        endpoint = ctx.endpoint.as_deref().unwrap_or(""),
        stream = ctx.stream,
        status = ctx.status.as_str(),
        http_status = ctx.http_status,
        error_code = ctx.error_code.unwrap_or(""),
        attempts = ctx.attempts,
        prompt_tokens = ctx.usage.prompt_tokens,
        completion_tokens = ctx.usage.completion_tokens,
        cached_tokens = ctx.usage.cached_tokens,
        usage_source = ctx.usage_source.as_str(),
        cost_usd = ctx.cost_usd,
        ttft_ms = ctx.ttft.map(|d| d.as_secs_f64() * 1000.0),
        duration_ms = duration.as_secs_f64() * 1000.0,
        "request"
    );
}

fn row(ctx: &RequestCtx, ts_end: SystemTime, duration_ms: f64) -> Row {
    Row {
        request_id: ctx.request_id.clone(),
        ts_start_ms: unix_ms(ctx.ts_start) as i64,
        ts_end_ms: unix_ms(ts_end) as i64,
        key: ctx.key.clone(),
        model_requested: clip(ctx.model_requested.as_deref().unwrap_or("")).to_owned(),
        model: ctx.model.clone().unwrap_or_default(),
        provider: ctx.provider.clone().unwrap_or_default(),
        endpoint: ctx.endpoint.clone().unwrap_or_default(),
        stream: ctx.stream,
        status: ctx.status.as_str(),
        http_status: i64::from(ctx.http_status),
        attempts: i64::from(ctx.attempts),
        prompt_tokens: ctx.usage.prompt_tokens as i64,
        completion_tokens: ctx.usage.completion_tokens as i64,
        cached_tokens: ctx.usage.cached_tokens as i64,
        usage_source: ctx.usage_source.as_str(),
        cost_usd: ctx.cost_usd,
        ttft_ms: ctx.ttft.map(|d| d.as_secs_f64() * 1000.0),
        duration_ms,
    }
}

fn record_metrics(ctx: &RequestCtx, duration: f64) {
    let Some(m) = Metrics::get() else { return };
    // Only configured names reach labels: `ctx.model` and `ctx.provider` are set from the
    // config, never from the request (contract §5.8).
    let model = ctx.model.as_deref().unwrap_or(OTHER);
    let provider = ctx.provider.as_deref().unwrap_or(OTHER);
    m.requests
        .with_label_values(&[model, provider, ctx.status.as_str()])
        .inc();
    m.duration
        .with_label_values(&[model, provider])
        .observe(duration);
    if let Some(ttft) = ctx.ttft {
        m.ttft
            .with_label_values(&[model, provider])
            .observe(ttft.as_secs_f64());
    }
    for (kind, n) in [
        ("prompt", ctx.usage.prompt_tokens),
        ("completion", ctx.usage.completion_tokens),
        ("cached", ctx.usage.cached_tokens),
    ] {
        if n > 0 {
            m.tokens
                .with_label_values(&[model, provider, kind])
                .inc_by(n);
        }
    }
    if ctx.cost_usd > 0.0 {
        // Keys by their config name; requests while auth is off are `anonymous`.
        let key = ctx.key.as_deref().unwrap_or("anonymous");
        m.cost.with_label_values(&[model, key]).inc_by(ctx.cost_usd);
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The first `MAX_LOGGED` bytes, cut at a character boundary.
fn clip(s: &str) -> &str {
    if s.len() <= MAX_LOGGED {
        return s;
    }
    let mut end = MAX_LOGGED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
