//! Upstream endpoints per provider, resolved off the request path.
//!
//! Built with each `LiveState` (start-up and every reload) and read by the exchange when it
//! picks where an attempt goes. Hostnames are resolved here, once per build, because
//! Pingora's `HttpPeer::new` resolves with a blocking call and unwraps the result
//! (pingora-core `upstreams/peer.rs`); the request path only ever sees `SocketAddr`s.

pub mod peer;
pub mod pool;
pub mod request;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::{Config, ProviderKind, SecretString};

pub use peer::ResolvedEndpoint;
pub use pool::{SendError, UpstreamPool};

/// One provider's reachable endpoints (each carrying the provider's credential in its
/// request head template).
#[derive(Debug)]
pub struct ProviderUpstream {
    pub name: String,
    pub endpoints: Vec<ResolvedEndpoint>,
    next: AtomicUsize,
}

impl ProviderUpstream {
    /// Endpoints in the order this request should try them: rotated round robin so that
    /// consecutive requests start at consecutive endpoints.
    pub fn endpoints_in_turn(&self) -> impl Iterator<Item = &ResolvedEndpoint> {
        let n = self.endpoints.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        self.endpoints
            .iter()
            .cycle()
            .skip(start)
            .take(self.endpoints.len())
    }
}

/// Every provider's upstream, keyed by provider name.
#[derive(Debug, Default)]
pub struct Upstreams {
    providers: HashMap<String, ProviderUpstream>,
}

impl Upstreams {
    /// Resolves every endpoint of every provider. An endpoint whose host does not resolve is
    /// left out with a warning: requests to a provider with none left get 503.
    pub fn build(config: &Config) -> Upstreams {
        let providers = config
            .providers
            .values()
            .map(|p| {
                let endpoints = match &p.kind {
                    ProviderKind::OpenAi(o) => {
                        let key = o.api_key.as_ref().map(SecretString::expose);
                        o.endpoints
                            .iter()
                            .filter_map(|e| ResolvedEndpoint::resolve(&p.name, e, key))
                            .collect()
                    }
                };
                let upstream = ProviderUpstream {
                    name: p.name.clone(),
                    endpoints,
                    next: AtomicUsize::new(0),
                };
                (p.name.clone(), upstream)
            })
            .collect();
        Upstreams { providers }
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderUpstream> {
        self.providers.get(name)
    }
}
