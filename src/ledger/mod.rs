//! The usage ledger (contract §6, §5.7): one row per authenticated LLM request, written to
//! SQLite (WAL) or PostgreSQL off the request path.
//!
//! The `logging` phase hands each row to `Ledger::record`, which never waits: a bounded
//! queue takes it, or — queue full because the database is slow or gone — the row is
//! counted in `switchyard_ledger_dropped_total` and logged as an error, never silently lost.
//! `LedgerService`, a Pingora background service, drains the queue in batches (one
//! transaction per batch), retries a failed batch while new rows queue behind it, and
//! flushes what is queued when the server stops. Both databases go through sqlx's `Any`
//! driver, so they share every statement (`store.rs`).

pub mod keys;
pub mod stats;
mod store;

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
pub use store::Store;

/// Rows that may wait for the writer; beyond this the database is not keeping up.
const QUEUE_ROWS: usize = 50_000;
/// Rows per transaction.
const BATCH_ROWS: usize = 512;
/// Wait before retrying a failed batch or connection, doubling up to `MAX_BACKOFF`.
const BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One ledger row: the fields of contract §6.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub request_id: String,
    pub ts_start_ms: i64,
    pub ts_end_ms: i64,
    /// The key's config name; `None` while auth is off.
    pub key: Option<String>,
    pub model_requested: String,
    pub model: String,
    pub provider: String,
    pub endpoint: String,
    pub stream: bool,
    pub status: &'static str,
    pub http_status: i64,
    pub attempts: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub usage_source: &'static str,
    pub cost_usd: f64,
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
}

/// The request path's side: a handle that queues rows.
#[derive(Debug, Clone)]
pub struct Ledger {
    tx: Option<mpsc::Sender<Row>>,
}

impl Ledger {
    /// A ledger that records nothing (the metrics-only listener).
    pub fn disabled() -> Ledger {
        Ledger { tx: None }
    }

    /// Queues a row; never waits. A row that cannot be queued is counted and logged.
    pub fn record(&self, row: Row) {
        let Some(tx) = &self.tx else { return };
        if let Err(err) = tx.try_send(row) {
            let row = match &err {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            dropped(1);
            tracing::error!(request_id = %row.request_id, "ledger row dropped: the ledger queue is full");
        }
    }
}

fn dropped(n: u64) {
    if let Some(m) = Metrics::get() {
        m.ledger_dropped.inc_by(n);
    }
}

/// The ledger for a `usage.store` URL: the request-path handle and the writer service.
pub fn ledger(url: &str) -> (Ledger, LedgerService) {
    let (tx, rx) = mpsc::channel(QUEUE_ROWS);
    (
        Ledger { tx: Some(tx) },
        LedgerService {
            url: url.to_owned(),
            rx: Mutex::new(Some(rx)),
        },
    )
}

/// The writer: connects (and migrates), then drains the queue in batches.
pub struct LedgerService {
    url: String,
    rx: Mutex<Option<mpsc::Receiver<Row>>>,
}

#[async_trait]
impl BackgroundService for LedgerService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut rx) = self
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let Some(store) = connect(&self.url, &mut shutdown).await else {
            flush_lost(&mut rx);
            return;
        };
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        while !*shutdown.borrow() {
            tokio::select! {
                _ = shutdown.changed() => break,
                n = rx.recv_many(&mut batch, BATCH_ROWS) => if n == 0 { break },
            }
            write_with_retry(&store, &mut batch, &mut shutdown).await;
        }
        // Stopping: what is queued still goes in, one try each (the grace period bounds
        // this); what cannot be written is counted.
        rx.close();
        loop {
            if !batch.is_empty() {
                if let Err(err) = store.insert(&batch).await {
                    tracing::error!(error = %err, rows = batch.len(), "ledger rows lost at shutdown");
                    dropped(batch.len() as u64);
                }
                batch.clear();
            }
            if rx.recv_many(&mut batch, BATCH_ROWS).await == 0 {
                break;
            }
        }
        store.close().await;
    }
}

/// Connects and migrates, retrying until it works or the server stops.
async fn connect(url: &str, shutdown: &mut ShutdownWatch) -> Option<Store> {
    let mut wait = BACKOFF;
    loop {
        match Store::open(url).await {
            Ok(store) => return Some(store),
            Err(err) => {
                tracing::error!(error = %err, "ledger database unavailable; rows queue meanwhile")
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(MAX_BACKOFF);
    }
}

/// Writes `batch`, retrying while the database is down (rows keep queueing behind it, and
/// are dropped — counted — only once the queue is full). Clears `batch` when written.
async fn write_with_retry(store: &Store, batch: &mut Vec<Row>, shutdown: &mut ShutdownWatch) {
    let mut wait = BACKOFF;
    loop {
        match store.insert(batch).await {
            Ok(()) => {
                batch.clear();
                return;
            }
            Err(err) => {
                tracing::error!(error = %err, rows = batch.len(), "ledger write failed; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(MAX_BACKOFF);
    }
}

/// The database never came up and the server is stopping: count what was queued.
fn flush_lost(rx: &mut mpsc::Receiver<Row>) {
    rx.close();
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    if n > 0 {
        tracing::error!(
            rows = n,
            "ledger rows lost: the database never became available"
        );
        dropped(n);
    }
}
