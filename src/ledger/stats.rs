//! Aggregates over the ledger for the management API's usage and performance queries
//! (`GET /api/stats/usage`, `/api/stats/performance`, `/api/monitoring/performance`).
//!
//! Off the request path: admin calls only. One static statement per query; optional
//! filters are `($n = '' OR column = $n)`, so no SQL is ever assembled from input.
//! Percentiles are computed here from the durations, since SQLite has no percentile
//! function and the two databases must answer alike.

use sqlx::AssertSqlSafe;

use super::Store;

/// Which rows a query covers: `[from_ms, to_ms)` and optional model and key filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub from_ms: i64,
    pub to_ms: i64,
    pub model: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelUsage {
    pub model: String,
    pub requests: i64,
    pub tokens: i64,
    pub cost: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelPerformance {
    pub model: String,
    pub requests: i64,
    pub successful: i64,
    pub avg_ms: f64,
    pub max_ms: f64,
    pub min_ms: f64,
}

/// One row's duration, outcome and tokens, for percentiles and rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub duration_ms: f64,
    pub ok: bool,
    pub tokens: i64,
}

/// At most this many rows feed the percentiles (the most recent in the range).
pub const MAX_SAMPLES: i64 = 100_000;

const WHERE: &str =
    "ts_start >= $1 AND ts_start < $2 AND ($3 = '' OR model = $3) AND ($4 = '' OR key = $4)";

impl Store {
    /// Requests, tokens and cost per model.
    pub async fn usage_by_model(&self, f: &Filter) -> Result<Vec<ModelUsage>, sqlx::Error> {
        let sql = format!(
            "SELECT model, CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT), \
             CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) FROM usage_ledger WHERE {WHERE} GROUP BY model ORDER BY model"
        );
        let rows: Vec<(String, i64, i64, f64)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(f.from_ms)
            .bind(f.to_ms)
            .bind(f.model.clone())
            .bind(f.key.clone())
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(model, requests, tokens, cost)| ModelUsage {
                model,
                requests,
                tokens,
                cost,
            })
            .collect())
    }

    /// Durations and outcomes of the most recent rows in range.
    pub async fn samples(&self, f: &Filter) -> Result<Vec<Sample>, sqlx::Error> {
        let sql = format!(
            "SELECT CAST(duration_ms AS DOUBLE PRECISION), status, CAST(prompt_tokens + completion_tokens AS BIGINT) \
             FROM usage_ledger WHERE {WHERE} ORDER BY ts_start DESC LIMIT {MAX_SAMPLES}"
        );
        let rows: Vec<(f64, String, i64)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(f.from_ms)
            .bind(f.to_ms)
            .bind(f.model.clone())
            .bind(f.key.clone())
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(duration_ms, status, tokens)| Sample {
                duration_ms,
                ok: status == "ok",
                tokens,
            })
            .collect())
    }

    /// Per-model request counts and response times, a page at a time.
    pub async fn performance_by_model(
        &self,
        f: &Filter,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<ModelPerformance>, sqlx::Error> {
        let sql = format!(
            "SELECT model, CAST(COUNT(*) AS BIGINT), CAST(SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(AVG(duration_ms) AS DOUBLE PRECISION), CAST(MAX(duration_ms) AS DOUBLE PRECISION), \
             CAST(MIN(duration_ms) AS DOUBLE PRECISION) FROM usage_ledger WHERE {WHERE} \
             GROUP BY model ORDER BY model LIMIT $5 OFFSET $6"
        );
        let rows: Vec<(String, i64, i64, f64, f64, f64)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(f.from_ms)
            .bind(f.to_ms)
            .bind(f.model.clone())
            .bind(f.key.clone())
            .bind(limit)
            .bind(offset)
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(model, requests, successful, avg_ms, max_ms, min_ms)| ModelPerformance {
                    model,
                    requests,
                    successful,
                    avg_ms,
                    max_ms,
                    min_ms,
                },
            )
            .collect())
    }
}

/// The `q`-quantile (0..=1) of `sorted` by nearest rank; 0 for none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.95), 95.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
