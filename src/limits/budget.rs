//! Budgets per key and calendar period (contract §2 `budget`, §4 `insufficient_quota`):
//! checked in the exchange's limit step, charged in the `logging` phase with each
//! request's cost.
//!
//! What a key spent this period comes from the ledger (the source of truth, shared by every
//! instance that writes to the same database), re-read every `SYNC` by `BudgetService`,
//! plus what this process charged since that read. A key over budget is refused until the
//! period turns. Across instances the figure lags by at most one sync and the ledger's
//! queue; a single instance never lets spend past the budget by more than the requests
//! already in flight when it was reached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Duration as Days, TimeZone, Utc};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;

use crate::auth::virtual_keys::VirtualKeys;
use crate::config::{ApiKey, Budget, BudgetPeriod};
use crate::ledger::Store;
use crate::state::SharedState;

/// How often spend is re-read from the ledger.
const SYNC: Duration = Duration::from_secs(2);
/// How soon a failed read is tried again.
const RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, Default, Clone, Copy)]
struct Spend {
    /// Unix seconds when the period this spend belongs to began.
    period_start: i64,
    /// The ledger's total at the last sync.
    ledger: f64,
    /// Charged here since then.
    since_sync: f64,
}

/// Every key's spend in its current period. One per process.
#[derive(Debug)]
pub struct Budgets {
    spend: Mutex<HashMap<String, Spend>>,
    /// Set once the ledger has been read: until then a budgeted key's spend is unknown.
    synced_once: watch::Sender<bool>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            spend: Mutex::new(HashMap::new()),
            synced_once: watch::channel(false).0,
        }
    }
}

/// How long a budgeted request waits for the first read of the ledger after start-up
/// before it goes ahead on this process's own figures.
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(3);

impl Budgets {
    /// Waits (once, after start-up) until the ledger's spend is known, so a restart does
    /// not hand a spent key a fresh budget.
    pub async fn ready(&self) {
        let mut rx = self.synced_once.subscribe();
        let _ = tokio::time::timeout(FIRST_SYNC_WAIT, rx.wait_for(|&done| done)).await;
    }

    /// The limit step: what to charge the request's cost to once it is known, or `Err`
    /// with the time until the period turns when `key` has spent its budget.
    pub fn check(
        self: &Arc<Self>,
        key: &ApiKey,
        now: DateTime<Utc>,
    ) -> Result<Option<BudgetCharge>, Duration> {
        let Some(budget) = key.budget else {
            return Ok(None);
        };
        if !self.allows(&key.name, &budget, now) {
            let next = period_end(budget.period, now);
            return Err(Duration::from_secs((next - now.timestamp()).max(1) as u64));
        }
        Ok(Some(BudgetCharge {
            budgets: self.clone(),
            key: key.name.clone(),
            budget,
        }))
    }

    /// Whether `key` may spend more under `budget` at `now`.
    pub fn allows(&self, key: &str, budget: &Budget, now: DateTime<Utc>) -> bool {
        let start = period_start(budget.period, now);
        let spend = self
            .spend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match spend.get(key) {
            Some(s) if s.period_start == start => s.ledger + s.since_sync < budget.usd,
            _ => true,
        }
    }

    /// Charges `usd` to `key`'s current period.
    pub fn charge(&self, key: &str, budget: &Budget, usd: f64, now: DateTime<Utc>) {
        if usd <= 0.0 {
            return;
        }
        let start = period_start(budget.period, now);
        let mut spend = self
            .spend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = spend.entry(key.to_owned()).or_default();
        if s.period_start != start {
            *s = Spend {
                period_start: start,
                ..Spend::default()
            };
        }
        s.since_sync += usd;
    }

    /// The ledger's total for `key` in the period starting at `start`.
    fn synced(&self, key: &str, start: i64, ledger_usd: f64) {
        let mut spend = self
            .spend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        spend.insert(
            key.to_owned(),
            Spend {
                period_start: start,
                ledger: ledger_usd,
                since_sync: 0.0,
            },
        );
    }
}

/// Where an admitted request's cost goes once the usage is counted.
#[derive(Debug)]
pub struct BudgetCharge {
    budgets: Arc<Budgets>,
    key: String,
    budget: Budget,
}

impl BudgetCharge {
    pub fn charge(self, usd: f64) {
        self.budgets
            .charge(&self.key, &self.budget, usd, Utc::now());
    }
}

/// Unix seconds at which the period containing `now` began (UTC).
pub fn period_start(period: BudgetPeriod, now: DateTime<Utc>) -> i64 {
    let day = now.date_naive();
    let first = match period {
        BudgetPeriod::Day => day,
        BudgetPeriod::Week => day - Days::days(i64::from(day.weekday().num_days_from_monday())),
        BudgetPeriod::Month => day.with_day(1).unwrap_or(day),
    };
    first
        .and_hms_opt(0, 0, 0)
        .map_or(0, |t| Utc.from_utc_datetime(&t).timestamp())
}

/// Unix seconds at which the period containing `now` ends.
fn period_end(period: BudgetPeriod, now: DateTime<Utc>) -> i64 {
    let start = period_start(period, now);
    let next_day = now.date_naive() + Days::days(1);
    match period {
        BudgetPeriod::Day => start + 86_400,
        BudgetPeriod::Week => start + 7 * 86_400,
        BudgetPeriod::Month => {
            // The first of the month after `now`'s.
            let mut d = next_day;
            while d.day() != 1 {
                d += Days::days(1);
            }
            d.and_hms_opt(0, 0, 0).map_or(start + 31 * 86_400, |t| {
                Utc.from_utc_datetime(&t).timestamp()
            })
        }
    }
}

/// Re-reads every budgeted key's spend from the ledger every `SYNC`.
pub struct BudgetService {
    budgets: Arc<Budgets>,
    state: SharedState,
    virtual_keys: Arc<VirtualKeys>,
    url: String,
}

impl BudgetService {
    pub fn new(
        budgets: Arc<Budgets>,
        state: SharedState,
        virtual_keys: Arc<VirtualKeys>,
        url: &str,
    ) -> BudgetService {
        BudgetService {
            budgets,
            state,
            virtual_keys,
            url: url.to_owned(),
        }
    }

    /// Every key with a budget: the file's and the virtual ones.
    fn budgeted(&self) -> Vec<(String, Budget)> {
        let state = self.state.load();
        let virtual_keys = self.virtual_keys.keys();
        state
            .config
            .keys
            .values()
            .chain(virtual_keys.values())
            .filter_map(|k| Some((k.name.clone(), k.budget?)))
            .collect()
    }

    /// Re-reads every budgeted key's spend; `false` if the ledger could not be read.
    async fn sync(&self, store: &Store) -> bool {
        let now = Utc::now();
        for (name, budget) in self.budgeted() {
            let start = period_start(budget.period, now);
            match store.spent(&name, start * 1000).await {
                Ok(usd) => self.budgets.synced(&name, start, usd),
                Err(err) => {
                    tracing::warn!(error = %err, key = %name, "budget: could not read spend from the ledger");
                    return false;
                }
            }
        }
        self.budgets.synced_once.send_replace(true);
        true
    }
}

#[async_trait]
impl BackgroundService for BudgetService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut store = None;
        // Soon at start-up (requests of budgeted keys wait for the first read), then every
        // `SYNC`; a failed read is retried soon.
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = RETRY;
            if !self
                .state
                .load()
                .config
                .keys
                .values()
                .any(|k| k.budget.is_some())
            {
                self.budgets.synced_once.send_replace(true);
                wait = SYNC;
                continue;
            }
            if store.is_none() {
                store = Store::connect(&self.url).await.ok();
            }
            if let Some(s) = &store
                && self.sync(s).await
            {
                wait = SYNC;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn periods_start_at_utc_midnight_monday_and_the_first() {
        let now = at("2026-12-03T15:04:05Z"); // a Thursday
        assert_eq!(
            period_start(BudgetPeriod::Day, now),
            at("2026-12-03T00:00:00Z").timestamp()
        );
        assert_eq!(
            period_start(BudgetPeriod::Week, now),
            at("2026-11-30T00:00:00Z").timestamp()
        );
        assert_eq!(
            period_start(BudgetPeriod::Month, now),
            at("2026-12-01T00:00:00Z").timestamp()
        );
        assert_eq!(
            period_end(BudgetPeriod::Month, now),
            at("2027-01-01T00:00:00Z").timestamp()
        );
        assert_eq!(
            period_end(BudgetPeriod::Week, now),
            at("2026-12-07T00:00:00Z").timestamp()
        );
    }

    #[test]
    fn spend_counts_within_the_period_and_resets_with_it() {
        let b = Budgets::default();
        let budget = Budget {
            usd: 1.0,
            period: BudgetPeriod::Day,
        };
        let today = at("2026-12-03T10:00:00Z");
        b.synced("k", period_start(BudgetPeriod::Day, today), 0.6);
        assert!(b.allows("k", &budget, today));
        b.charge("k", &budget, 0.5, today);
        assert!(!b.allows("k", &budget, today), "0.6 + 0.5 is over 1.0");
        assert!(
            b.allows("k", &budget, at("2026-12-04T00:00:01Z")),
            "a new day"
        );
    }
}
