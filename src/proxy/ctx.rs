//! `RequestCtx`: everything one request carries from `early_request_filter` to `logging`.
//!
//! Grouped by concern: identity and timing, the config snapshot, what was routed where, and
//! the outcome (status, usage) that the access log, metrics and ledger row are written from.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::accounting::{Usage, UsageSource};
use crate::config::ApiKey;
use crate::error::{GatewayError, LedgerStatus};
use crate::limits::budget::BudgetCharge;
use crate::limits::{Headroom, Hold};
use crate::shutdown::Drain;
use crate::state::LiveState;

pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    pub ts_start: SystemTime,
    /// The config snapshot this request runs on, loaded once in `early_request_filter`.
    pub state: Option<Arc<LiveState>>,
    /// Whether this was an LLM exchange (the requests that get an access-log row).
    pub exchange: bool,
    /// Who the request runs as (a key's name, or `user:NAME`); `None` while auth is off.
    pub key: Option<String>,
    /// The key's allowlist, limits and budget, when a key authenticated the request.
    pub api_key: Option<Arc<ApiKey>>,
    pub model_requested: Option<String>,
    /// The resolved model and target; only configured names ever land here.
    pub model: Option<String>,
    pub provider: Option<String>,
    pub endpoint: Option<String>,
    pub stream: bool,
    pub attempts: u32,
    pub status: LedgerStatus,
    pub http_status: u16,
    pub error_code: Option<&'static str>,
    pub usage: Usage,
    pub usage_source: UsageSource,
    pub cost_usd: f64,
    pub ttft: Option<Duration>,
    /// Set once any response byte went downstream: no retry, no second header after this.
    pub bytes_sent: bool,
    /// Fires when a graceful stop's grace period is about to end.
    pub drain: Drain,
    /// The key's rate-limit headroom, sent as `x-ratelimit-*` (contract §3).
    pub headroom: Option<Headroom>,
    /// The request's hold on its rate-limit scopes, settled when it ends.
    pub admission: Option<Hold>,
    /// The key's budget, charged with the cost once the usage is counted.
    pub budget_charge: Option<BudgetCharge>,
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx {
            request_id: String::new(),
            started: Instant::now(),
            ts_start: SystemTime::now(),
            state: None,
            exchange: false,
            key: None,
            api_key: None,
            model_requested: None,
            model: None,
            provider: None,
            endpoint: None,
            stream: false,
            attempts: 0,
            status: LedgerStatus::Ok,
            http_status: 0,
            error_code: None,
            usage: Usage::default(),
            usage_source: UsageSource::None,
            cost_usd: 0.0,
            ttft: None,
            bytes_sent: false,
            drain: Drain::default(),
            headroom: None,
            admission: None,
            budget_charge: None,
        }
    }
}

impl RequestCtx {
    pub fn set_error(&mut self, err: GatewayError) {
        self.status = err.ledger_status();
        self.error_code = Some(err.code());
    }
}

/// The client's `x-request-id` if it is 1–128 chars of `[A-Za-z0-9._-]`, else a new UUIDv7
/// (contract §3). Anything else is replaced, so it can never inject into logs or headers.
pub fn request_id(client: Option<&[u8]>) -> String {
    match client {
        Some(v)
            if (1..=128).contains(&v.len())
                && v.iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) =>
        {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => uuid::Uuid::now_v7().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_keeps_valid_client_values_only() {
        assert_eq!(request_id(Some(b"abc-123_X.y")), "abc-123_X.y");
        for bad in [&b""[..], b"a b", b"a\r\nb", b"\x1b[2J", &[b'a'; 129]] {
            let id = request_id(Some(bad));
            assert_ne!(id.as_bytes(), bad);
            assert_eq!(id.len(), 36, "a generated UUID");
        }
        assert_ne!(request_id(None), request_id(None));
    }
}
