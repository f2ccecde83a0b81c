//! Active health checks and the backend gauges: one background service that follows reloads.
//!
//! Runs beside the request path, never on it. Pingora cannot add services after start-up,
//! and providers come and go with reloads, so one `BackgroundService` walks the *current*
//! `LiveState` every tick: each provider with a `health_check` is probed when due through its
//! balancer's `run_health_check` (Pingora keeps the consecutive-success/failure counts, which
//! is the hysteresis: `healthy_after` / `unhealthy_after`), and every endpoint's
//! `switchyard_backend_up` and `switchyard_circuit_open` gauges are refreshed, since a
//! cool-down ends by the clock, not by an event.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::Backend;
use pingora::lb::health_check::HealthCheck as PingoraHealthCheck;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use super::{EndpointIndex, ProviderUpstream, ResolvedEndpoint};
use crate::config::HealthCheck;
use crate::metrics::Metrics;
use crate::state::SharedState;

/// How often the service looks at the current state (probe due dates, gauges).
const TICK: Duration = Duration::from_millis(200);
/// A probe gets this long to connect, and at most `PROBE_READ` (or its interval) to answer.
const PROBE_CONNECT: Duration = Duration::from_secs(2);
const PROBE_READ: Duration = Duration::from_secs(5);

/// One provider's probe: `GET {health_check.path}` to each endpoint with that endpoint's own
/// `Host` and TLS name, 2xx = pass. No credential is sent: health routes of vLLM and
/// llama-server need none, and a key should not travel where no request needs it.
pub struct EndpointProbe {
    provider: String,
    targets: Vec<ProbeTarget>,
    unhealthy_after: usize,
    healthy_after: usize,
    read_timeout: Duration,
    connector: Connector,
}

struct ProbeTarget {
    url: String,
    peer: HttpPeer,
    req: RequestHeader,
}

impl EndpointProbe {
    pub fn new(provider: &str, endpoints: &[ResolvedEndpoint], hc: &HealthCheck) -> EndpointProbe {
        let targets = endpoints
            .iter()
            .filter_map(|ep| {
                let mut peer = HttpPeer::new(ep.addr, ep.tls, ep.host.clone());
                peer.options.connection_timeout = Some(PROBE_CONNECT);
                peer.options.total_connection_timeout = Some(PROBE_CONNECT);
                let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None).ok()?;
                req.insert_header(http::header::HOST, &ep.authority).ok()?;
                req.insert_header(http::header::USER_AGENT, "switchyard-health")
                    .ok()?;
                Some(ProbeTarget {
                    url: ep.url.clone(),
                    peer,
                    req,
                })
            })
            .collect();
        EndpointProbe {
            provider: provider.to_owned(),
            targets,
            unhealthy_after: hc.unhealthy_after as usize,
            healthy_after: hc.healthy_after as usize,
            read_timeout: hc.interval.clamp(Duration::from_millis(100), PROBE_READ),
            connector: Connector::new(None),
        }
    }

    fn target(&self, backend: &Backend) -> Result<&ProbeTarget> {
        backend
            .ext
            .get::<EndpointIndex>()
            .and_then(|&EndpointIndex(i)| self.targets.get(i))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "unknown endpoint"))
    }
}

#[async_trait]
impl PingoraHealthCheck for EndpointProbe {
    async fn check(&self, backend: &Backend) -> Result<()> {
        let t = self.target(backend)?;
        let (mut session, _) = self.connector.get_http_session(&t.peer).await?;
        session.set_write_timeout(Some(PROBE_CONNECT));
        session.set_read_timeout(Some(self.read_timeout));
        session
            .write_request_header(Box::new(t.req.clone()))
            .await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let status = session.response_header().map(|h| h.status.as_u16());
        match status {
            Some(code) if (200..300).contains(&code) => Ok(()),
            Some(code) => Error::e_explain(
                ErrorType::CustomCode("health check status", code),
                "health check answered with a non-2xx status",
            ),
            None => Error::e_explain(ErrorType::InvalidHTTPHeader, "no response header"),
        }
    }

    async fn health_status_change(&self, backend: &Backend, healthy: bool) {
        let url = self.target(backend).map(|t| t.url.as_str()).unwrap_or("?");
        if healthy {
            tracing::info!(provider = %self.provider, endpoint = %url, "health check: endpoint up");
        } else {
            tracing::warn!(provider = %self.provider, endpoint = %url, "health check: endpoint down");
        }
    }

    /// What Pingora's own health log line names: the endpoint URL, never a credential.
    fn backend_summary(&self, backend: &Backend) -> String {
        let url = self.target(backend).map(|t| t.url.as_str()).unwrap_or("?");
        format!("provider {} endpoint {url}", self.provider)
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_after
        } else {
            self.unhealthy_after
        }
    }
}

/// When a provider's next probe is due, and whether one is running (a slow pass is never
/// overlapped by the next).
#[derive(Debug)]
pub struct ProbeSchedule {
    interval: Duration,
    next_due: Mutex<Instant>,
    running: AtomicBool,
}

impl ProbeSchedule {
    pub fn new(interval: Duration) -> ProbeSchedule {
        ProbeSchedule {
            interval: interval.max(Duration::from_millis(100)),
            next_due: Mutex::new(Instant::now()),
            running: AtomicBool::new(false),
        }
    }

    /// Claims the next pass if it is due and none is running.
    fn claim(&self, now: Instant) -> bool {
        let mut due = self
            .next_due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now < *due || self.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        *due = now + self.interval;
        true
    }

    fn finished(&self) {
        self.running.store(false, Ordering::Release);
    }
}

/// The background service: probes and gauges for whatever config is live.
pub struct HealthService {
    state: SharedState,
}

impl HealthService {
    pub fn new(state: SharedState) -> HealthService {
        HealthService { state }
    }

    fn start_due_probes(&self, now: Instant) {
        let state = self.state.load();
        for provider in state.upstreams.providers.values() {
            if provider.probe.as_ref().is_some_and(|p| p.claim(now)) {
                let provider = Arc::clone(provider);
                tokio::spawn(async move {
                    provider.lb.backends().run_health_check(true).await;
                    if let Some(p) = &provider.probe {
                        p.finished();
                    }
                });
            }
        }
    }
}

#[async_trait]
impl BackgroundService for HealthService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut published = HashSet::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            self.start_due_probes(now);
            let state = self.state.load();
            published = publish_gauges(state.upstreams.iter(), published, now);
        }
    }
}

/// Sets both gauges for every configured endpoint and removes those of endpoints a reload
/// took away (so `/metrics` does not report a backend that no longer exists).
fn publish_gauges<'a>(
    providers: impl Iterator<Item = &'a ProviderUpstream>,
    before: HashSet<(String, String)>,
    now: Instant,
) -> HashSet<(String, String)> {
    let Some(m) = Metrics::get() else {
        return before;
    };
    let mut now_set = HashSet::with_capacity(before.len());
    for p in providers {
        for (i, ep) in p.endpoints.iter().enumerate() {
            let labels = [p.name.as_str(), ep.url.as_str()];
            let up = p.healthy(i) && ep.state.cooling_for(now).is_none();
            m.backend_up.with_label_values(&labels).set(i64::from(up));
            m.circuit_open
                .with_label_values(&labels)
                .set(i64::from(ep.state.circuit_open()));
            now_set.insert((p.name.clone(), ep.url.clone()));
        }
    }
    for gone in before.difference(&now_set) {
        let labels = [gone.0.as_str(), gone.1.as_str()];
        let _ = m.backend_up.remove_label_values(&labels);
        let _ = m.circuit_open.remove_label_values(&labels);
    }
    now_set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_claimed_once_per_interval_and_never_twice_at_once() {
        let s = ProbeSchedule::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(s.claim(t0));
        assert!(!s.claim(t0), "running");
        s.finished();
        assert!(!s.claim(t0 + Duration::from_secs(1)), "not due yet");
        assert!(s.claim(t0 + Duration::from_secs(6)));
    }
}
