//! Upstream endpoints per provider, resolved off the request path, and how one is picked.
//!
//! Built with each `LiveState` (start-up and every reload) and read by the exchange when it
//! picks where an attempt goes. Hostnames are resolved here, once per build, because
//! Pingora's `HttpPeer::new` resolves with a blocking call and unwraps the result
//! (pingora-core `upstreams/peer.rs`); the request path only ever sees `SocketAddr`s.
//!
//! Each provider's endpoints sit in a Pingora `LoadBalancer<RoundRobin>`: its selection
//! (`select_with`, skipping unhealthy, cooling and already-tried endpoints) and its active
//! health checks (`health.rs`). A reload reuses the whole `ProviderUpstream` of a provider
//! whose config did not change, so its health, balancer position and pooled connections
//! carry over; passive state (in flight, latency, cool-down) lives in `EndpointStates`,
//! which outlives every config.

pub mod circuit;
pub mod health;
pub mod peer;
pub mod pool;
pub mod request;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr;

use crate::config::{Config, OpenAiProvider, Provider, ProviderKind, SecretString};

pub use circuit::{EndpointState, EndpointStates, InFlightGuard, Verdict};
pub use peer::ResolvedEndpoint;
pub use pool::{SendError, UpstreamPool};

/// Which endpoint of its provider a Pingora `Backend` is (carried in `Backend.ext`).
#[derive(Debug, Clone, Copy)]
struct EndpointIndex(usize);

/// One provider's reachable endpoints (each carrying the provider's credential in its
/// request head template) and their balancer.
pub struct ProviderUpstream {
    pub name: String,
    pub endpoints: Vec<ResolvedEndpoint>,
    /// `backends[i]` is `endpoints[i]` as Pingora knows it.
    backends: Vec<Backend>,
    lb: LoadBalancer<RoundRobin>,
    /// The active check's schedule, when the provider has a `health_check`.
    pub probe: Option<health::ProbeSchedule>,
    /// The config this was built from: a reload reuses it while this stays the same.
    source: OpenAiProvider,
}

impl std::fmt::Debug for ProviderUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderUpstream")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl ProviderUpstream {
    fn build(name: &str, cfg: &OpenAiProvider, states: &EndpointStates) -> ProviderUpstream {
        let key = cfg.api_key.as_ref().map(SecretString::expose);
        let mut endpoints: Vec<ResolvedEndpoint> = Vec::new();
        for e in &cfg.endpoints {
            let Some(ep) = ResolvedEndpoint::resolve(name, e, key, states.state(name, &e.url))
            else {
                continue;
            };
            // Pingora's balancer knows a backend by its address: two URLs that resolve to
            // one address would be one backend.
            if endpoints.iter().any(|o| o.addr == ep.addr) {
                tracing::warn!(provider = name, endpoint = %ep.url, addr = %ep.addr, "endpoint left out: same address as another endpoint of the provider");
                continue;
            }
            endpoints.push(ep);
        }
        let backends: Vec<Backend> = endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| {
                let mut b = Backend {
                    addr: SocketAddr::Inet(ep.addr),
                    weight: 1,
                    ext: http::Extensions::new(),
                };
                b.ext.insert(EndpointIndex(i));
                b
            })
            .collect();
        let discovery = Static::new(backends.iter().cloned().collect::<BTreeSet<_>>());
        let mut view = Backends::new(discovery);
        let probe = cfg.health_check.as_ref().map(|hc| {
            view.set_health_check(Box::new(health::EndpointProbe::new(name, &endpoints, hc)));
            health::ProbeSchedule::new(hc.interval)
        });
        let lb = LoadBalancer::from_backends(view);
        // Static discovery answers at once; this fills the balancer's backend set.
        if !matches!(lb.update().now_or_never(), Some(Ok(()))) {
            tracing::warn!(provider = name, "balancer did not take the endpoint list");
        }
        ProviderUpstream {
            name: name.to_owned(),
            endpoints,
            backends,
            lb,
            probe,
            source: cfg.clone(),
        }
    }

    /// The next endpoint for an attempt: round robin over those the active check calls
    /// healthy, that are not cooling down and not yet tried by this request. Taking a
    /// half-open endpoint's single trial slot happens here (see `EndpointState::admit`).
    pub fn pick(&self, tried: &mut Vec<usize>, now: Instant) -> Option<&ResolvedEndpoint> {
        let n = self.endpoints.len();
        // Round robin advances a shared counter, so concurrent requests may skip ahead:
        // a few laps are enough to see every endpoint.
        let b = self.lb.select_with(b"", 4 * n + 4, |b, healthy| {
            let Some(&EndpointIndex(i)) = b.ext.get::<EndpointIndex>() else {
                return false;
            };
            healthy && !tried.contains(&i) && self.endpoints[i].state.admit(now)
        })?;
        let &EndpointIndex(i) = b.ext.get::<EndpointIndex>()?;
        tried.push(i);
        self.endpoints.get(i)
    }

    /// Whether the active check calls endpoint `i` healthy.
    pub fn healthy(&self, i: usize) -> bool {
        self.backends
            .get(i)
            .is_some_and(|b| self.lb.backends().ready(b))
    }

    /// Whether endpoint `i` could take an attempt now.
    fn available(&self, i: usize, now: Instant) -> bool {
        self.healthy(i) && self.endpoints[i].state.cooling_for(now).is_none()
    }

    /// The provider as a balancing target: in flight over all endpoints, the best latency
    /// among the available ones, and whether any is available.
    pub fn load(&self, now: Instant) -> (usize, u64, bool) {
        let mut in_flight = 0;
        let mut latency: Option<u64> = None;
        let mut available = false;
        for (i, ep) in self.endpoints.iter().enumerate() {
            in_flight += ep.state.in_flight();
            if self.available(i, now) {
                available = true;
                let l = ep.state.latency_us();
                latency = Some(latency.map_or(l, |m| m.min(l)));
            }
        }
        (in_flight, latency.unwrap_or(0), available)
    }

    /// When the first cooling endpoint comes back, if every endpoint sits out only because
    /// of a cool-down (for `Retry-After` on the 503).
    pub fn soonest_back(&self, now: Instant) -> Option<Duration> {
        self.endpoints
            .iter()
            .filter_map(|ep| ep.state.cooling_for(now))
            .min()
    }
}

/// Every provider's upstream, keyed by provider name.
#[derive(Debug, Default)]
pub struct Upstreams {
    providers: HashMap<String, Arc<ProviderUpstream>>,
}

impl Upstreams {
    pub fn provider(&self, name: &str) -> Option<&ProviderUpstream> {
        self.providers.get(name).map(Arc::as_ref)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ProviderUpstream> {
        self.providers.values().map(Arc::as_ref)
    }
}

/// What outlives a config: endpoint states and the last built provider upstreams (for
/// reuse). One per process, held by the server and the reloader.
#[derive(Debug, Default)]
pub struct UpstreamRegistry {
    states: EndpointStates,
    last: Mutex<HashMap<String, Arc<ProviderUpstream>>>,
}

impl UpstreamRegistry {
    /// Builds the upstreams of `config`, reusing those of providers that did not change.
    /// Resolves hostnames (blocking): call off the request path.
    pub fn build(&self, config: &Config) -> Upstreams {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let providers: HashMap<String, Arc<ProviderUpstream>> = config
            .providers
            .values()
            .map(|p| (p.name.clone(), self.provider(p, &last)))
            .collect();
        self.states.retain(|provider, url| {
            providers
                .get(provider)
                .is_some_and(|p| p.endpoints.iter().any(|e| e.url == url))
        });
        last.clone_from(&providers);
        Upstreams { providers }
    }

    fn provider(
        &self,
        p: &Provider,
        last: &HashMap<String, Arc<ProviderUpstream>>,
    ) -> Arc<ProviderUpstream> {
        let ProviderKind::OpenAi(cfg) = &p.kind;
        match last.get(&p.name) {
            Some(old) if old.source == *cfg => old.clone(),
            _ => Arc::new(ProviderUpstream::build(&p.name, cfg, &self.states)),
        }
    }
}
