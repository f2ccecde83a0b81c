//! Rate limits (contract §2 `limits`, §5.4): requests and tokens per window and requests in
//! flight, per API key and per model, decided in the exchange's route step once the
//! resolved model is known, before any upstream attempt.
//!
//! Token limits reserve `prompt estimate + max_tokens` up front and settle to the actual
//! usage when the request ends, so concurrent requests cannot all squeeze under a limit
//! they will together exceed. Counters live in the process (`store: memory`, this file)
//! or in Redis shared by every instance (`redis.rs`); either way they outlive every config,
//! keyed by configured names, so a reload keeps the counts of unchanged keys and models.

pub mod budget;
mod redis;
mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::RateLimits;
pub use redis::RedisHold;
use redis::RedisLimiter;
pub use window::Window;

/// What a limit counts, for the 429's `type` and the metric's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
    Concurrency,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
            LimitKind::Concurrency => "concurrency",
        }
    }
}

/// A request the limits turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub kind: LimitKind,
    pub retry_after: Duration,
}

/// The `x-ratelimit-*` values of contract §3, from the request's key scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headroom {
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window has room again for one more (request or token).
    pub reset_s: u64,
}

/// Which counters a limit applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Key(String),
    Model(String),
    /// One key on one model.
    KeyModel(String, String),
}

#[derive(Debug)]
struct Counters {
    requests: Window,
    tokens: Window,
    in_flight: u64,
}

type Shared = Arc<Mutex<Counters>>;

fn lock(c: &Shared) -> MutexGuard<'_, Counters> {
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The limit step's state: rate-limit counters and budget spend. One per process.
#[derive(Debug, Default)]
pub struct Limits {
    pub rates: Limiter,
    pub budgets: Arc<budget::Budgets>,
}

/// The limit store the config chose, and what to do when it cannot answer.
#[derive(Debug)]
pub struct Limiter {
    store: Store,
    /// `rate_limits.fail_open`: admit (unlimited) while the shared store is down.
    fail_open: bool,
}

#[derive(Debug)]
enum Store {
    Memory(MemoryLimiter),
    Redis(Arc<RedisLimiter>),
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter {
            store: Store::Memory(MemoryLimiter::default()),
            fail_open: false,
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Limit(Rejection),
    /// The shared store did not answer and the config fails closed.
    StoreUnavailable,
}

/// A request's hold on its scopes, from either store.
#[derive(Debug)]
pub enum Hold {
    Memory(Admission),
    Redis(RedisHold),
}

impl Hold {
    /// Replaces the token reservation by what the request used; the concurrency slot
    /// frees when the hold is dropped.
    pub fn settle(&mut self, used_tokens: u64) {
        match self {
            Hold::Memory(a) => a.settle(used_tokens),
            Hold::Redis(r) => r.settle(used_tokens),
        }
    }
}

impl Limiter {
    /// The store of `rate_limits.store`: memory, or a Redis URL. A malformed URL is a
    /// config error already; should the client still refuse it, the memory store runs and
    /// the error is logged.
    pub fn new(redis_url: Option<&str>, fail_open: bool) -> Limiter {
        let store = match redis_url.map(RedisLimiter::new) {
            None => Store::Memory(MemoryLimiter::default()),
            Some(Ok(r)) => Store::Redis(Arc::new(r)),
            Some(Err(err)) => {
                tracing::error!(error = %err, "rate-limit store: falling back to memory");
                Store::Memory(MemoryLimiter::default())
            }
        };
        Limiter { store, fail_open }
    }

    /// Admits a request (`None`: admitted without a hold, the store being down and the
    /// config failing open) or says why not.
    pub async fn admit(
        &self,
        checks: &[Check],
        reserve: u64,
        window: Duration,
    ) -> Result<Option<(Hold, Headroom)>, Denied> {
        match &self.store {
            Store::Memory(m) => m
                .admit(checks, reserve, window)
                .map(|(a, room)| Some((Hold::Memory(a), room)))
                .map_err(Denied::Limit),
            Store::Redis(r) => match r.admit(checks, reserve, window).await {
                Ok(Ok((hold, room))) => Ok(Some((Hold::Redis(hold), room))),
                Ok(Err(no)) => Err(Denied::Limit(no)),
                Err(err) => {
                    tracing::error!(error = %err, fail_open = self.fail_open, "rate-limit store unavailable");
                    if self.fail_open {
                        Ok(None)
                    } else {
                        Err(Denied::StoreUnavailable)
                    }
                }
            },
        }
    }
}

/// Every scope's counters in this process (`store: memory`).
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    scopes: Mutex<HashMap<Scope, Shared>>,
}

/// One limit check of a request: a scope and its configured limits.
#[derive(Debug, Clone)]
pub struct Check {
    pub scope: Scope,
    pub limits: RateLimits,
}

/// An admitted request's hold on its scopes: settles the token reservation to the actual
/// usage, and gives its concurrency slot back when dropped.
#[derive(Debug)]
pub struct Admission {
    held: Vec<(Shared, RateLimits)>,
    second: u64,
    reserved: u64,
    settled: bool,
}

impl MemoryLimiter {
    /// Admits a request that will use up to `reserve` tokens, or says which limit it hits
    /// first and when to retry. All scopes are checked before any is charged, so a request
    /// turned away by its model's limit does not use up its key's.
    pub fn admit(
        &self,
        checks: &[Check],
        reserve: u64,
        window: Duration,
    ) -> Result<(Admission, Headroom), Rejection> {
        let now = unix_seconds();
        let secs = window.as_secs().max(1);
        let shared: Vec<(Shared, RateLimits)> = checks
            .iter()
            .filter(|c| !c.limits.is_empty())
            .map(|c| (self.counters(&c.scope, secs), c.limits))
            .collect();
        // Locked in the order of `checks` (key, then model), the same for every request.
        let mut guards: Vec<MutexGuard<'_, Counters>> =
            shared.iter().map(|(c, _)| lock(c)).collect();
        for (g, (_, limits)) in guards.iter().zip(&shared) {
            refuse(g, limits, now, reserve)?;
        }
        let mut headroom = Headroom::default();
        for (i, (g, (_, limits))) in guards.iter_mut().zip(&shared).enumerate() {
            let reserve = limits.tpm.map_or(reserve, |tpm| reserve.min(tpm));
            g.requests.add(now, 1);
            g.tokens.add(now, reserve);
            g.in_flight += 1;
            if i == 0 {
                headroom = headroom_of(g, limits, now);
            }
        }
        drop(guards);
        Ok((
            Admission {
                held: shared,
                second: now,
                reserved: reserve,
                settled: false,
            },
            headroom,
        ))
    }

    /// The scope's counters, created on first use (and afresh when a reload changed the
    /// window's length, which makes the old counts meaningless).
    fn counters(&self, scope: &Scope, window_secs: u64) -> Shared {
        let mut scopes = self.scopes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = scopes.get(scope)
            && lock(c).requests.seconds() == window_secs
        {
            return c.clone();
        }
        let fresh = Arc::new(Mutex::new(Counters {
            requests: Window::new(window_secs),
            tokens: Window::new(window_secs),
            in_flight: 0,
        }));
        scopes.insert(scope.clone(), fresh.clone());
        fresh
    }
}

/// The first limit of one scope that `reserve` more tokens and one more request would break.
fn refuse(c: &Counters, limits: &RateLimits, now: u64, reserve: u64) -> Result<(), Rejection> {
    if let Some(max) = limits.concurrency
        && c.in_flight >= max
    {
        return Err(Rejection {
            kind: LimitKind::Concurrency,
            retry_after: Duration::from_secs(1),
        });
    }
    if let Some(rpm) = limits.rpm
        && c.requests.sum(now) + 1 > rpm
    {
        return Err(Rejection {
            kind: LimitKind::Requests,
            retry_after: Duration::from_secs(c.requests.wait_for(now, 1, rpm)),
        });
    }
    if let Some(tpm) = limits.tpm {
        // A reservation larger than the whole limit is capped to it: such a request can
        // still run in an empty window.
        let need = reserve.min(tpm);
        if c.tokens.sum(now) + need > tpm {
            return Err(Rejection {
                kind: LimitKind::Tokens,
                retry_after: Duration::from_secs(c.tokens.wait_for(now, need, tpm)),
            });
        }
    }
    Ok(())
}

fn headroom_of(c: &Counters, limits: &RateLimits, now: u64) -> Headroom {
    let quota = |w: &Window, limit: Option<u64>| {
        limit.map(|limit| {
            let used = w.sum(now);
            Quota {
                limit,
                remaining: limit.saturating_sub(used),
                reset_s: if used < limit {
                    0
                } else {
                    w.wait_for(now, 1, limit)
                },
            }
        })
    };
    Headroom {
        requests: quota(&c.requests, limits.rpm),
        tokens: quota(&c.tokens, limits.tpm),
    }
}

impl Admission {
    /// Replaces the reservation by what the request used.
    pub fn settle(&mut self, used_tokens: u64) {
        if self.settled {
            return;
        }
        self.settled = true;
        for (c, limits) in &self.held {
            let reserved = limits
                .tpm
                .map_or(self.reserved, |tpm| self.reserved.min(tpm));
            let delta = used_tokens as i64 - reserved as i64;
            lock(c).tokens.adjust(self.second, delta);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for (c, _) in &self.held {
            let mut g = lock(c);
            g.in_flight = g.in_flight.saturating_sub(1);
        }
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<u64>, tpm: Option<u64>, concurrency: Option<u64>) -> Check {
        Check {
            scope: Scope::Key("k".into()),
            limits: RateLimits {
                rpm,
                tpm,
                concurrency,
            },
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn requests_per_window_are_exact() {
        let l = MemoryLimiter::default();
        let check = [key(Some(3), None, None)];
        let held: Vec<_> = (0..3)
            .map(|_| l.admit(&check, 0, MINUTE).unwrap())
            .collect();
        let no = l.admit(&check, 0, MINUTE).unwrap_err();
        assert_eq!(no.kind, LimitKind::Requests);
        assert!(no.retry_after >= Duration::from_secs(1));
        assert_eq!(held[2].1.requests.unwrap().remaining, 0);
    }

    #[test]
    fn tokens_are_reserved_then_settled() {
        let l = MemoryLimiter::default();
        let check = [key(None, Some(1000), None)];
        let (mut a, _) = l.admit(&check, 600, MINUTE).unwrap();
        assert_eq!(
            l.admit(&check, 600, MINUTE).unwrap_err().kind,
            LimitKind::Tokens,
            "600 + 600 would pass 1000"
        );
        a.settle(100);
        let (_b, room) = l.admit(&check, 600, MINUTE).unwrap();
        assert_eq!(room.tokens.unwrap().remaining, 300);
    }

    #[test]
    fn concurrency_comes_back_when_a_request_ends() {
        let l = MemoryLimiter::default();
        let check = [key(None, None, Some(1))];
        let a = l.admit(&check, 0, MINUTE).unwrap();
        assert_eq!(
            l.admit(&check, 0, MINUTE).unwrap_err().kind,
            LimitKind::Concurrency
        );
        drop(a);
        assert!(l.admit(&check, 0, MINUTE).is_ok());
    }

    #[test]
    fn a_scope_that_refuses_charges_no_other() {
        let l = MemoryLimiter::default();
        let model = Check {
            scope: Scope::Model("m".into()),
            limits: RateLimits {
                rpm: Some(1),
                ..RateLimits::default()
            },
        };
        let both = [key(Some(10), None, None), model];
        let _first = l.admit(&both, 0, MINUTE).unwrap();
        for _ in 0..5 {
            assert!(l.admit(&both, 0, MINUTE).is_err());
        }
        let (_, room) = l.admit(&both[..1], 0, MINUTE).unwrap();
        assert_eq!(
            room.requests.unwrap().remaining,
            8,
            "only two admitted on the key"
        );
    }
}
