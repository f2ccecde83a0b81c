//! `GET /api/stats/usage`, `/api/stats/performance` (shapes of the multi-model LLM API
//! reference) and `/api/monitoring/performance` (the inference-service reference), computed
//! from the ledger.
//!
//! Admin only; never on the data path. The ledger database is connected on first use.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{Days, NaiveDate, TimeZone, Utc};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::error::GatewayError;
use crate::host::HostLoad;
use crate::ledger::Store;
use crate::ledger::stats::{Filter, quantile};

const DEFAULT_DAYS: u64 = 30;
const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 500;

/// The reports, over the ledger at `url`.
pub struct StatsApi {
    url: String,
    store: OnceCell<Store>,
    host: Arc<HostLoad>,
}

/// Which report a route asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Usage,
    Performance,
    Monitoring,
}

impl StatsApi {
    pub fn new(url: &str, host: Arc<HostLoad>) -> StatsApi {
        StatsApi {
            url: url.to_owned(),
            store: OnceCell::new(),
            host,
        }
    }

    async fn store(&self) -> Result<&Store, GatewayError> {
        self.store
            .get_or_try_init(|| Store::connect(&self.url))
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "stats: ledger database unavailable");
                GatewayError::LedgerUnavailable
            })
    }

    /// The JSON body of `report` for the query string `query`.
    pub async fn answer(
        &self,
        report: Report,
        query: Option<&str>,
    ) -> Result<Vec<u8>, GatewayError> {
        let params: BTreeMap<String, String> = query
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let body = match report {
            Report::Usage => self.usage(&params).await?,
            Report::Performance => self.performance(&params).await?,
            Report::Monitoring => self.monitoring(&params).await?,
        };
        serde_json::to_vec(&body).map_err(|_| GatewayError::Internal)
    }

    async fn usage(&self, p: &BTreeMap<String, String>) -> Result<Value, GatewayError> {
        let (filter, start, end) = dated_filter(p)?;
        let rows = self
            .store()
            .await?
            .usage_by_model(&filter)
            .await
            .map_err(query_failed)?;
        let by_model: serde_json::Map<String, Value> = rows
            .iter()
            .map(|r| {
                (
                    r.model.clone(),
                    json!({"requests": r.requests, "tokens": r.tokens, "cost": r.cost}),
                )
            })
            .collect();
        Ok(json!({
            "period": {"start": start.to_string(), "end": end.to_string()},
            "total_requests": rows.iter().map(|r| r.requests).sum::<i64>(),
            "total_tokens": rows.iter().map(|r| r.tokens).sum::<i64>(),
            "total_cost": rows.iter().map(|r| r.cost).sum::<f64>(),
            "by_model": by_model,
        }))
    }

    async fn performance(&self, p: &BTreeMap<String, String>) -> Result<Value, GatewayError> {
        let (filter, start, end) = dated_filter(p)?;
        let samples = self
            .store()
            .await?
            .samples(&filter)
            .await
            .map_err(query_failed)?;
        let mut durations: Vec<f64> = samples.iter().map(|s| s.duration_ms).collect();
        durations.sort_by(f64::total_cmp);
        let n = samples.len() as f64;
        let ok = samples.iter().filter(|s| s.ok).count() as f64;
        let tokens: i64 = samples.iter().map(|s| s.tokens).sum();
        // Per minute over the part of the range that has passed.
        let now_ms = Utc::now().timestamp_millis();
        let minutes = ((filter.to_ms.min(now_ms) - filter.from_ms) as f64 / 60_000.0).max(1.0);
        let rate = |x: f64| if n == 0.0 { 0.0 } else { x / n };
        Ok(json!({
            "period": {"start": start.to_string(), "end": end.to_string()},
            "response_times": {
                "average_ms": rate(durations.iter().sum()),
                "p50_ms": quantile(&durations, 0.50),
                "p95_ms": quantile(&durations, 0.95),
                "p99_ms": quantile(&durations, 0.99),
            },
            "success_rate": rate(ok),
            "error_rate": if n == 0.0 { 0.0 } else { 1.0 - ok / n },
            "throughput": {
                "requests_per_minute": n / minutes,
                "tokens_per_minute": tokens as f64 / minutes,
            },
            "samples": samples.len(),
        }))
    }

    async fn monitoring(&self, p: &BTreeMap<String, String>) -> Result<Value, GatewayError> {
        let range = p.get("time_range").map_or("24h", String::as_str);
        let span = match range {
            "1h" => Duration::from_secs(3600),
            "24h" => Duration::from_secs(86_400),
            "7d" => Duration::from_secs(7 * 86_400),
            "30d" => Duration::from_secs(30 * 86_400),
            _ => return Err(GatewayError::InvalidValue("time_range")),
        };
        let page = number(p, "page", 1)?.max(1);
        let page_size = number(p, "page_size", DEFAULT_PAGE_SIZE)?.clamp(1, MAX_PAGE_SIZE);
        let now_ms = Utc::now().timestamp_millis();
        let filter = Filter {
            from_ms: now_ms - span.as_millis() as i64,
            to_ms: now_ms + 1,
            model: p.get("model_id").cloned().unwrap_or_default(),
            key: String::new(),
        };
        let rows = self
            .store()
            .await?
            .performance_by_model(&filter, page_size, (page - 1) * page_size)
            .await
            .map_err(query_failed)?;
        let secs = span.as_secs_f64();
        let models: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "model_id": r.model,
                    "model_name": r.model,
                    "total_requests": r.requests,
                    "successful_requests": r.successful,
                    "failed_requests": r.requests - r.successful,
                    "avg_response_time": r.avg_ms / 1000.0,
                    "max_response_time": r.max_ms / 1000.0,
                    "min_response_time": r.min_ms / 1000.0,
                    "requests_per_second": r.requests as f64 / secs,
                    "error_rate": if r.requests == 0 { 0.0 } else { (r.requests - r.successful) as f64 / r.requests as f64 },
                })
            })
            .collect();
        let since_s = (now_ms - span.as_millis() as i64) / 1000;
        let host = self.host.average_since(since_s);
        Ok(json!({
            "time_range": range,
            "page": page,
            "page_size": page_size,
            "models": models,
            // `null` until the first sample; GPU sampling arrives with the NVML work.
            "system": {
                "avg_cpu_percent": host.map(|h| h.0),
                "avg_memory_percent": host.map(|h| h.1),
                "avg_gpu_utilization": null,
            },
        }))
    }
}

/// `start_date` / `end_date` (YYYY-MM-DD, inclusive, UTC; default the last 30 days), `model`
/// and `key`.
fn dated_filter(
    p: &BTreeMap<String, String>,
) -> Result<(Filter, NaiveDate, NaiveDate), GatewayError> {
    let today = Utc::now().date_naive();
    let end = date(p, "end_date")?.unwrap_or(today);
    let start = date(p, "start_date")?
        .unwrap_or_else(|| end.checked_sub_days(Days::new(DEFAULT_DAYS)).unwrap_or(end));
    if start > end {
        return Err(GatewayError::InvalidValue("start_date"));
    }
    let ms = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .map_or(0, |t| Utc.from_utc_datetime(&t).timestamp_millis())
    };
    let after_end = end.checked_add_days(Days::new(1)).unwrap_or(end);
    Ok((
        Filter {
            from_ms: ms(start),
            to_ms: ms(after_end),
            model: p.get("model").cloned().unwrap_or_default(),
            key: p.get("key").cloned().unwrap_or_default(),
        },
        start,
        end,
    ))
}

fn date(
    p: &BTreeMap<String, String>,
    name: &'static str,
) -> Result<Option<NaiveDate>, GatewayError> {
    p.get(name)
        .map(|v| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| GatewayError::InvalidValue(name))
        })
        .transpose()
}

fn number(
    p: &BTreeMap<String, String>,
    name: &'static str,
    default: i64,
) -> Result<i64, GatewayError> {
    p.get(name).map_or(Ok(default), |v| {
        v.parse().map_err(|_| GatewayError::InvalidValue(name))
    })
}

fn query_failed(err: sqlx::Error) -> GatewayError {
    tracing::error!(error = %err, "stats query failed");
    GatewayError::LedgerUnavailable
}
