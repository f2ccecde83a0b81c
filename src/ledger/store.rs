//! The ledger's database: connection, migrations and the batched insert, the same
//! statements for SQLite and PostgreSQL through sqlx's `Any` driver.
//!
//! Used only by the ledger writer and the usage queries, never on the request path.
//! Placeholders are written as `$N`, which both databases accept (sqlx's `QueryBuilder`
//! would write `?` for `Any`, which PostgreSQL rejects).

use std::fmt::Write as _;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, AssertSqlSafe, Executor};

use super::Row;

/// Columns of `usage_ledger`, in insert order (contract §6).
const COLUMNS: &[&str] = &[
    "request_id",
    "ts_start",
    "ts_end",
    "key",
    "model_requested",
    "model",
    "provider",
    "endpoint",
    "stream",
    "status",
    "http_status",
    "attempts",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "usage_source",
    "cost_usd",
    "ttft_ms",
    "duration_ms",
];

/// Rows per INSERT statement: far below either database's limit on bound parameters.
const ROWS_PER_STATEMENT: usize = 200;

/// Schema versions, applied in order, each once. Types both databases accept.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS usage_ledger (
        request_id TEXT NOT NULL,
        ts_start BIGINT NOT NULL,
        ts_end BIGINT NOT NULL,
        key TEXT,
        model_requested TEXT NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        stream INTEGER NOT NULL,
        status TEXT NOT NULL,
        http_status INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        usage_source TEXT NOT NULL,
        cost_usd DOUBLE PRECISION NOT NULL,
        ttft_ms DOUBLE PRECISION,
        duration_ms DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX IF NOT EXISTS usage_ledger_ts_start ON usage_ledger (ts_start);",
    ),
    (
        2,
        "CREATE TABLE IF NOT EXISTS virtual_keys (
        name TEXT PRIMARY KEY,
        digest TEXT NOT NULL UNIQUE,
        models TEXT NOT NULL,
        rpm BIGINT,
        tpm BIGINT,
        concurrency BIGINT,
        budget_usd DOUBLE PRECISION,
        budget_period TEXT,
        created_ms BIGINT NOT NULL,
        revoked_ms BIGINT
    )",
    ),
];

/// An open ledger database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// SQLite binds the batch insert's parameters positionally (see `insert_sql`).
    sqlite: bool,
}

impl Store {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and brings the schema up to date.
    /// SQLite runs in WAL mode with `synchronous=NORMAL`: a crash loses at most the last
    /// transactions, never the file's integrity.
    pub async fn open(url: &str) -> Result<Store, sqlx::Error> {
        let store = Store::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without touching the schema (readers: the writer migrates).
    pub async fn connect(url: &str) -> Result<Store, sqlx::Error> {
        install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            // SQLite takes one writer at a time anyway.
            .max_connections(if sqlite { 1 } else { 4 })
            // sqlx retries a refused connection until this passes: report a dead database
            // soon (the writer retries on its own schedule).
            .acquire_timeout(std::time::Duration::from_secs(3))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA synchronous=NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout=5000").await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(Store { pool, sqlite })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), sqlx::Error> {
        self.pool
            .execute(
                "CREATE TABLE IF NOT EXISTS switchyard_migrations (version BIGINT PRIMARY KEY)",
            )
            .await?;
        for (version, sql) in MIGRATIONS {
            let done: Option<(i64,)> =
                sqlx::query_as("SELECT version FROM switchyard_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&self.pool)
                    .await?;
            if done.is_some() {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                tx.execute(statement).await?;
            }
            sqlx::query("INSERT INTO switchyard_migrations (version) VALUES ($1)")
                .bind(*version)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Inserts `rows` in one transaction: all of them or none.
    pub async fn insert(&self, rows: &[Row]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            // Built from the constant column list and numbered placeholders only: every value
            // is bound, none is spliced in.
            let sql = AssertSqlSafe(insert_sql(chunk.len(), self.sqlite));
            // Not a cached prepared statement: PostgreSQL would keep the parameter types of
            // its first use, and a NULL `ttft_ms` there makes a later float fail to bind.
            let mut q = sqlx::query(sql).persistent(false);
            for r in chunk {
                q = q
                    .bind(r.request_id.clone())
                    .bind(r.ts_start_ms)
                    .bind(r.ts_end_ms)
                    .bind(r.key.clone())
                    .bind(r.model_requested.clone())
                    .bind(r.model.clone())
                    .bind(r.provider.clone())
                    .bind(r.endpoint.clone())
                    .bind(i32::from(r.stream))
                    .bind(r.status)
                    .bind(r.http_status)
                    .bind(r.attempts)
                    .bind(r.prompt_tokens)
                    .bind(r.completion_tokens)
                    .bind(r.cached_tokens)
                    .bind(r.usage_source)
                    .bind(r.cost_usd)
                    .bind(r.ttft_ms)
                    .bind(r.duration_ms);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// What `key` spent from `since_ms` (Unix milliseconds) on, in USD.
    pub async fn spent(&self, key: &str, since_ms: i64) -> Result<f64, sqlx::Error> {
        let (usd,): (f64,) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) FROM usage_ledger WHERE key = $1 AND ts_start >= $2",
        )
        .bind(key)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(usd)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `INSERT INTO usage_ledger (…) VALUES ($1, …), (…)` for `rows` rows. For SQLite the
/// placeholders are plain `?`: a `$N` is a named parameter there, and binding thousands of
/// them by name costs a linear search each (measured: 3,000 rows/s against 50,000+).
fn insert_sql(rows: usize, sqlite: bool) -> String {
    let mut sql = format!("INSERT INTO usage_ledger ({}) VALUES ", COLUMNS.join(", "));
    let mut n = 0;
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..COLUMNS.len() {
            n += 1;
            let sep = if c == 0 { "" } else { ", " };
            let _ = if sqlite {
                write!(sql, "{sep}?")
            } else {
                write!(sql, "{sep}${n}")
            };
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_run_on_across_rows() {
        let sql = insert_sql(2, false);
        assert!(sql.contains("($1, $2,"));
        assert!(sql.ends_with(&format!("${})", 2 * COLUMNS.len())));
        assert!(sql.contains(&format!("${}), (${}", COLUMNS.len(), COLUMNS.len() + 1)));
        let sqlite = insert_sql(2, true);
        assert_eq!(sqlite.matches('?').count(), 2 * COLUMNS.len());
        assert!(!sqlite.contains('$'));
    }
}
