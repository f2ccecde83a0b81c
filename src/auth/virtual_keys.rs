//! Virtual keys: API keys created, updated and revoked at runtime through the management
//! API (issue 4), stored hashed in the ledger database next to the keys of the file.
//!
//! The auth step reads an in-memory map by digest (`lookup`), swapped whole on every
//! change: a key the API creates or revokes on this instance counts from the next request;
//! changes made through another instance arrive with the next sync (`KeySync`, every 2 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::OnceCell;

use crate::config::{ApiKey, Budget, BudgetPeriod, RateLimits, model_glob_set, sha256_hex};
use crate::error::GatewayError;
use crate::ledger::Store;
use crate::ledger::keys::KeyRecord;

/// How often keys changed through other instances are picked up.
const SYNC: Duration = Duration::from_secs(2);
/// Prefix of generated keys, so they are recognisable in a secret scanner.
const KEY_PREFIX: &str = "sk-sy-";

/// The live virtual keys, by digest, and their records for listing.
pub struct VirtualKeys {
    url: String,
    store: OnceCell<Store>,
    by_digest: ArcSwap<HashMap<String, Arc<ApiKey>>>,
    records: ArcSwap<Vec<KeyRecord>>,
}

impl VirtualKeys {
    pub fn new(url: &str) -> VirtualKeys {
        VirtualKeys {
            url: url.to_owned(),
            store: OnceCell::new(),
            by_digest: ArcSwap::default(),
            records: ArcSwap::default(),
        }
    }

    /// The key with this digest, if one is live.
    pub fn lookup(&self, digest: &str) -> Option<Arc<ApiKey>> {
        self.by_digest.load().get(digest).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.load().is_empty()
    }

    /// The live keys, by digest.
    pub fn keys(&self) -> Arc<HashMap<String, Arc<ApiKey>>> {
        self.by_digest.load_full()
    }

    pub fn records(&self) -> Arc<Vec<KeyRecord>> {
        self.records.load_full()
    }

    async fn store(&self) -> Result<&Store, GatewayError> {
        self.store
            .get_or_try_init(|| Store::open(&self.url))
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "virtual keys: database unavailable");
                GatewayError::LedgerUnavailable
            })
    }

    /// Re-reads every live key from the database.
    pub async fn sync(&self) -> Result<(), GatewayError> {
        let records = self.store().await?.active_keys().await.map_err(db_failed)?;
        self.set(records);
        Ok(())
    }

    fn set(&self, records: Vec<KeyRecord>) {
        let by_digest = records
            .iter()
            .filter_map(|r| Some((r.digest.clone(), Arc::new(api_key(r)?))))
            .collect();
        self.by_digest.store(Arc::new(by_digest));
        self.records.store(Arc::new(records));
    }

    /// Reads the keys once before the server starts, on a runtime of its own, so no
    /// request meets an empty set. A database that is down is logged; the sync service
    /// keeps trying (meanwhile only the file's keys authenticate).
    pub fn preload(&self) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            match Store::open(&self.url).await {
                Ok(store) => {
                    match store.active_keys().await {
                        Ok(records) => self.set(records),
                        Err(err) => {
                            tracing::error!(error = %err, "virtual keys: could not read them at start");
                        }
                    }
                    store.close().await;
                }
                Err(err) => {
                    tracing::error!(error = %err, "virtual keys: database unavailable at start");
                }
            }
        });
    }

    /// Creates a key; returns it in plain text, the only time it is ever shown.
    pub async fn create(&self, mut record: KeyRecord) -> Result<(String, KeyRecord), GatewayError> {
        let mut bytes = [0u8; 24];
        OsRng.fill_bytes(&mut bytes);
        let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
        record.digest = sha256_hex(&key);
        record.created_ms = chrono::Utc::now().timestamp_millis();
        match self.store().await?.insert_key(&record).await {
            Ok(()) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(GatewayError::Conflict("name"));
            }
            Err(err) => return Err(db_failed(err)),
        }
        self.sync().await?;
        Ok((key, record))
    }

    /// Replaces a key's models, limits and budget.
    pub async fn update(&self, record: &KeyRecord) -> Result<(), GatewayError> {
        let found = self
            .store()
            .await?
            .update_key(record)
            .await
            .map_err(db_failed)?;
        if !found {
            return Err(GatewayError::KeyNotFound);
        }
        self.sync().await
    }

    /// Revokes a key: from the next request on, it is refused like an unknown one.
    pub async fn revoke(&self, name: &str) -> Result<(), GatewayError> {
        let now = chrono::Utc::now().timestamp_millis();
        let found = self
            .store()
            .await?
            .revoke_key(name, now)
            .await
            .map_err(db_failed)?;
        if !found {
            return Err(GatewayError::KeyNotFound);
        }
        self.sync().await
    }
}

fn db_failed(err: sqlx::Error) -> GatewayError {
    tracing::error!(error = %err, "virtual keys: database error");
    GatewayError::LedgerUnavailable
}

/// The key a record describes; `None` for a record this build cannot read (logged).
fn api_key(r: &KeyRecord) -> Option<ApiKey> {
    let models = if r.models.is_empty() {
        None
    } else {
        Some(model_glob_set(&r.models).ok()?)
    };
    let positive = |v: Option<i64>| v.and_then(|n| u64::try_from(n).ok()).filter(|&n| n > 0);
    let budget = match (r.budget_usd, r.budget_period.as_deref()) {
        (Some(usd), Some(period)) => Some(Budget {
            usd,
            period: BudgetPeriod::from_name(period)?,
        }),
        _ => None,
    };
    Some(ApiKey {
        name: r.name.clone(),
        models,
        limits: RateLimits {
            rpm: positive(r.rpm),
            tpm: positive(r.tpm),
            concurrency: positive(r.concurrency),
        },
        budget,
        model_limits: std::collections::HashMap::new(),
    })
}

/// Picks up keys changed through other instances.
pub struct KeySync {
    keys: Arc<VirtualKeys>,
}

impl KeySync {
    pub fn new(keys: Arc<VirtualKeys>) -> KeySync {
        KeySync { keys }
    }
}

#[async_trait]
impl BackgroundService for KeySync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(SYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.keys.sync().await {
                tracing::debug!(error = %err, "virtual keys: sync skipped");
            }
        }
    }
}
