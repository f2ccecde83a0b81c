//! Per-endpoint live state: requests in flight, latency, and passive health (a cool-down that
//! works as a circuit breaker).
//!
//! Read in the exchange's pick step (which endpoints may take an attempt, and in which order)
//! and written after every attempt (its outcome and time to response header). The states live
//! in a registry keyed by provider and endpoint URL that outlives every `LiveState`, so a
//! reload keeps the counters and health of endpoints that did not change.
//!
//! Policy (contract §5.1 and issue 3): a refused connection, a 429 or a 503 cools the
//! endpoint at once, for the upstream's `Retry-After` when it gives one; timeouts and other
//! 5xx open the circuit after `TRIP_AFTER` in a row. A cool-down doubles with each failure in
//! a row (from `BASE_COOL_DOWN` up to `MAX_COOL_DOWN`). When it ends, exactly one request
//! is let through (half-open, see `admit`); its success closes the circuit, its failure opens
//! it again for twice as long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Timeouts and 5xx other than 503 trip the circuit after this many in a row.
pub const TRIP_AFTER: u32 = 3;
const BASE_COOL_DOWN: Duration = Duration::from_secs(1);
const MAX_COOL_DOWN: Duration = Duration::from_secs(30);
/// An upstream's `Retry-After` is honoured up to this long, so one odd header cannot take an
/// endpoint out for a day.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Weight of a new sample in the latency EWMA.
const EWMA_ALPHA: f64 = 0.3;

/// What one attempt on an endpoint came to, for its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx response header.
    Ok { latency: Duration },
    /// A failure that sidelines the endpoint at once (connect refused, 429, 503).
    CoolNow { retry_after: Option<Duration> },
    /// A failure that counts towards the circuit (timeout, other 5xx).
    Strike,
    /// The upstream answered: the failure says nothing about its health (a client 4xx).
    Neutral,
}

/// One endpoint's live state.
#[derive(Debug)]
pub struct EndpointState {
    provider: String,
    endpoint: String,
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Time to response header, microseconds, smoothed; 0 before the first sample.
    latency_us: AtomicU64,
    failures: AtomicU32,
    /// Milliseconds after `epoch` until which the endpoint takes no attempts; 0 for none.
    cool_until_ms: AtomicU64,
}

impl EndpointState {
    fn new(provider: &str, endpoint: &str) -> EndpointState {
        EndpointState {
            provider: provider.to_owned(),
            endpoint: endpoint.to_owned(),
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            latency_us: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            cool_until_ms: AtomicU64::new(0),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }

    /// How long the endpoint still sits out, if it is cooling down.
    pub fn cooling_for(&self, now: Instant) -> Option<Duration> {
        let until = self.cool_until_ms.load(Ordering::Relaxed);
        let now_ms = self.millis(now);
        (until > now_ms).then(|| Duration::from_millis(until - now_ms))
    }

    /// Whether the circuit is open or half-open (a cool-down was set and no success since).
    pub fn circuit_open(&self) -> bool {
        self.cool_until_ms.load(Ordering::Relaxed) != 0
    }

    /// Whether an attempt may go to this endpoint now, taking the half-open slot if the
    /// cool-down just ended: of all requests racing for it, exactly one wins, and the
    /// endpoint is closed to the others for another back-off until that trial reports.
    pub fn admit(&self, now: Instant) -> bool {
        let until = self.cool_until_ms.load(Ordering::Relaxed);
        let now_ms = self.millis(now);
        if until == 0 {
            return true;
        }
        if until > now_ms {
            return false;
        }
        let trial_window = backoff(self.failures.load(Ordering::Relaxed)).as_millis() as u64;
        self.cool_until_ms
            .compare_exchange(
                until,
                now_ms + trial_window.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Counts a request on this endpoint until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    /// Records one attempt's outcome.
    pub fn record(&self, verdict: Verdict) {
        match verdict {
            Verdict::Ok { latency } => {
                self.observe_latency(latency);
                self.failures.store(0, Ordering::Relaxed);
                if self.cool_until_ms.swap(0, Ordering::Relaxed) != 0 {
                    tracing::info!(provider = %self.provider, endpoint = %self.endpoint, "endpoint recovered");
                }
            }
            Verdict::CoolNow { retry_after } => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let wait = retry_after.map_or_else(|| backoff(n), |d| d.min(MAX_RETRY_AFTER));
                self.cool_down(wait);
            }
            Verdict::Strike => {
                let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= TRIP_AFTER {
                    self.cool_down(backoff(n + 1 - TRIP_AFTER));
                }
            }
            Verdict::Neutral => {}
        }
    }

    fn cool_down(&self, d: Duration) {
        let until = self.millis(Instant::now()) + d.as_millis().max(1) as u64;
        self.cool_until_ms.fetch_max(until, Ordering::Relaxed);
        tracing::warn!(
            provider = %self.provider,
            endpoint = %self.endpoint,
            cool_down_ms = d.as_millis() as u64,
            failures_in_a_row = self.failures.load(Ordering::Relaxed),
            "endpoint cooling down"
        );
    }

    fn observe_latency(&self, latency: Duration) {
        let sample = latency.as_micros().max(1) as u64;
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (EWMA_ALPHA * sample as f64 + (1.0 - EWMA_ALPHA) * old as f64) as u64
        };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }

    fn millis(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

/// `BASE_COOL_DOWN` doubled per failure in a row after the first, capped.
fn backoff(failures_in_a_row: u32) -> Duration {
    let doublings = failures_in_a_row.saturating_sub(1).min(16);
    (BASE_COOL_DOWN * 2u32.pow(doublings)).min(MAX_COOL_DOWN)
}

/// Keeps `in_flight` up for as long as a request uses the endpoint.
#[derive(Debug)]
pub struct InFlightGuard(Arc<EndpointState>);

impl InFlightGuard {
    /// The endpoint this request runs on (to record how its stream ended).
    pub fn state(&self) -> &EndpointState {
        &self.0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every endpoint's state, by provider and endpoint URL. Shared by all config generations.
#[derive(Debug, Default)]
pub struct EndpointStates {
    states: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
}

impl EndpointStates {
    /// The state of `endpoint` of `provider`, created on first use. Called when a state is
    /// built, never on the request path.
    pub fn state(&self, provider: &str, endpoint: &str) -> Arc<EndpointState> {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        states
            .entry((provider.to_owned(), endpoint.to_owned()))
            .or_insert_with(|| Arc::new(EndpointState::new(provider, endpoint)))
            .clone()
    }

    /// Forgets endpoints no longer configured (after a reload). Requests still running on
    /// an older config keep their `Arc`s; only the registry lets go.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        states.retain(|(provider, endpoint), _| keep(provider, endpoint));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Arc<EndpointState> {
        EndpointStates::default().state("p", "http://127.0.0.1:1")
    }

    #[test]
    fn connect_refusal_cools_at_once_and_success_clears_it() {
        let s = state();
        let now = Instant::now();
        assert!(s.cooling_for(now).is_none());
        s.record(Verdict::CoolNow { retry_after: None });
        let left = s.cooling_for(Instant::now()).expect("cooling");
        assert!(left <= BASE_COOL_DOWN && left > Duration::from_millis(500));
        s.record(Verdict::Ok {
            latency: Duration::from_millis(3),
        });
        assert!(s.cooling_for(Instant::now()).is_none());
    }

    #[test]
    fn retry_after_sets_the_cool_down() {
        let s = state();
        s.record(Verdict::CoolNow {
            retry_after: Some(Duration::from_secs(7)),
        });
        let left = s.cooling_for(Instant::now()).unwrap();
        assert!(left > Duration::from_secs(6) && left <= Duration::from_secs(7));
    }

    #[test]
    fn strikes_trip_the_circuit_only_in_a_row() {
        let s = state();
        for _ in 0..TRIP_AFTER - 1 {
            s.record(Verdict::Strike);
        }
        assert!(s.cooling_for(Instant::now()).is_none());
        s.record(Verdict::Ok {
            latency: Duration::from_millis(1),
        });
        for _ in 0..TRIP_AFTER - 1 {
            s.record(Verdict::Strike);
        }
        assert!(
            s.cooling_for(Instant::now()).is_none(),
            "the success reset the count"
        );
        s.record(Verdict::Strike);
        assert!(s.cooling_for(Instant::now()).is_some());
        s.record(Verdict::Neutral);
        assert!(
            s.cooling_for(Instant::now()).is_some(),
            "a 4xx changes nothing"
        );
    }

    #[test]
    fn half_open_lets_exactly_one_trial_through() {
        let s = state();
        assert!(s.admit(Instant::now()));
        s.record(Verdict::CoolNow {
            retry_after: Some(Duration::from_millis(1)),
        });
        assert!(s.circuit_open());
        let later = Instant::now() + Duration::from_millis(20);
        assert!(s.cooling_for(later).is_none(), "the cool-down is over");
        assert!(s.admit(later), "the first request is the trial");
        assert!(!s.admit(later), "everyone else waits for the trial");
        s.record(Verdict::Ok {
            latency: Duration::from_millis(2),
        });
        assert!(!s.circuit_open());
        assert!(s.admit(later) && s.admit(later), "closed again");
    }

    #[test]
    fn retry_after_is_capped() {
        let s = state();
        s.record(Verdict::CoolNow {
            retry_after: Some(Duration::from_secs(86_400)),
        });
        assert!(s.cooling_for(Instant::now()).unwrap() <= MAX_RETRY_AFTER);
    }

    #[test]
    fn cool_down_doubles_and_is_capped() {
        assert_eq!(backoff(1), BASE_COOL_DOWN);
        assert_eq!(backoff(2), BASE_COOL_DOWN * 2);
        assert_eq!(backoff(3), BASE_COOL_DOWN * 4);
        assert_eq!(backoff(40), MAX_COOL_DOWN);
    }

    #[test]
    fn in_flight_follows_guards_and_latency_is_smoothed() {
        let s = state();
        let a = s.start();
        let b = s.start();
        assert_eq!(s.in_flight(), 2);
        drop(a);
        assert_eq!(s.in_flight(), 1);
        drop(b);
        assert_eq!(s.in_flight(), 0);
        s.record(Verdict::Ok {
            latency: Duration::from_micros(1000),
        });
        assert_eq!(s.latency_us(), 1000);
        s.record(Verdict::Ok {
            latency: Duration::from_micros(2000),
        });
        assert_eq!(s.latency_us(), 1300);
    }

    #[test]
    fn the_registry_hands_out_one_state_per_endpoint() {
        let r = EndpointStates::default();
        let a = r.state("p", "http://a");
        let b = r.state("p", "http://a");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &r.state("q", "http://a")));
    }
}
