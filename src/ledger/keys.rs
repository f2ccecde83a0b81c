//! The `virtual_keys` table of the ledger database: API keys created through the
//! management API, stored as their SHA-256 digest only.
//!
//! Used by `auth::virtual_keys` (load and sync) and the key routes of the management API;
//! never on the request path, which reads the in-memory copy.

use sqlx::AssertSqlSafe;

use super::Store;

/// One stored key, as the management API shows it (never the key itself).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub name: String,
    pub digest: String,
    /// Globs over model names; empty for every model.
    pub models: Vec<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub concurrency: Option<i64>,
    pub budget_usd: Option<f64>,
    /// `day`, `week` or `month` when `budget_usd` is set.
    pub budget_period: Option<String>,
    pub created_ms: i64,
}

type KeyTuple = (
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<f64>,
    Option<String>,
    i64,
);

impl Store {
    /// Every key not revoked.
    pub async fn active_keys(&self) -> Result<Vec<KeyRecord>, sqlx::Error> {
        let rows: Vec<KeyTuple> = sqlx::query_as(
            "SELECT name, digest, models, rpm, tpm, concurrency, budget_usd, budget_period, created_ms \
             FROM virtual_keys WHERE revoked_ms IS NULL ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    name,
                    digest,
                    models,
                    rpm,
                    tpm,
                    concurrency,
                    budget_usd,
                    budget_period,
                    created_ms,
                )| {
                    KeyRecord {
                        name,
                        digest,
                        models: serde_json::from_str(&models).unwrap_or_default(),
                        rpm,
                        tpm,
                        concurrency,
                        budget_usd,
                        budget_period,
                        created_ms,
                    }
                },
            )
            .collect())
    }

    /// Stores a new key; fails if the name (even a revoked one) or the digest exists.
    pub async fn insert_key(&self, k: &KeyRecord) -> Result<(), sqlx::Error> {
        // Not cached as a prepared statement: NULL and non-NULL limits alternate (see
        // `store.rs`).
        sqlx::query(AssertSqlSafe(
            "INSERT INTO virtual_keys (name, digest, models, rpm, tpm, concurrency, budget_usd, budget_period, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        ))
        .persistent(false)
        .bind(&k.name)
        .bind(&k.digest)
        .bind(serde_json::to_string(&k.models).unwrap_or_else(|_| "[]".into()))
        .bind(k.rpm)
        .bind(k.tpm)
        .bind(k.concurrency)
        .bind(k.budget_usd)
        .bind(k.budget_period.clone())
        .bind(k.created_ms)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Replaces a live key's models, limits and budget; `false` if there is none.
    pub async fn update_key(&self, k: &KeyRecord) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(AssertSqlSafe(
            "UPDATE virtual_keys SET models = $2, rpm = $3, tpm = $4, concurrency = $5, budget_usd = $6, budget_period = $7 \
             WHERE name = $1 AND revoked_ms IS NULL",
        ))
        .persistent(false)
        .bind(&k.name)
        .bind(serde_json::to_string(&k.models).unwrap_or_else(|_| "[]".into()))
        .bind(k.rpm)
        .bind(k.tpm)
        .bind(k.concurrency)
        .bind(k.budget_usd)
        .bind(k.budget_period.clone())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Revokes a live key; `false` if there is none.
    pub async fn revoke_key(&self, name: &str, now_ms: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE virtual_keys SET revoked_ms = $2 WHERE name = $1 AND revoked_ms IS NULL",
        )
        .bind(name)
        .bind(now_ms)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }
}
