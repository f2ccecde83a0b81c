//! `LiveState`: the immutable snapshot a request runs on, behind one `ArcSwap`.
//!
//! `early_request_filter` loads one `Arc<LiveState>` per request and keeps it to the end, so
//! a request sees one config from start to finish (contract §5.6). A reload builds a new
//! state off the request path and swaps it in atomically.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::routing::Router;
use crate::upstream::{UpstreamRegistry, Upstreams};

pub struct LiveState {
    pub config: Arc<Config>,
    pub router: Router,
    pub upstreams: Upstreams,
    /// Unix seconds when this state was built: the `created` of `/v1/models`.
    pub built_at: u64,
}

impl LiveState {
    /// Builds the state for `config`, reusing the upstreams of unchanged providers from
    /// `registry`. Resolves hostnames (blocking): call off the request path.
    pub fn build(config: Config, registry: &UpstreamRegistry) -> LiveState {
        let config = Arc::new(config);
        LiveState {
            router: Router::new(&config),
            upstreams: registry.build(&config),
            built_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            config,
        }
    }

    /// Models with at least one reachable target endpoint (`/health`'s `running_models`).
    pub fn running_models(&self) -> usize {
        self.config
            .models
            .values()
            .filter(|m| {
                m.targets.iter().any(|t| {
                    self.upstreams
                        .provider(&t.provider)
                        .is_some_and(|p| !p.endpoints.is_empty())
                })
            })
            .count()
    }
}

/// The shared handle every service holds.
pub type SharedState = Arc<ArcSwap<LiveState>>;

pub fn shared(state: LiveState) -> SharedState {
    Arc::new(ArcSwap::from_pointee(state))
}
