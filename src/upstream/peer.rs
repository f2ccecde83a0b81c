//! `HttpPeer`s built from a resolved `SocketAddr` plus SNI, with the configured timeouts.
//!
//! Used in the exchange's pick step (≈ `upstream_peer`). Never passes a hostname to Pingora
//! on the request path: see the module note in `upstream/mod.rs`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use pingora::upstreams::peer::HttpPeer;

use crate::config::{Endpoint, Timeouts};
use crate::upstream::circuit::EndpointState;
use crate::upstream::request::HeadTemplate;

/// One endpoint of a provider, ready to connect to.
#[derive(Debug, Clone)]
pub struct ResolvedEndpoint {
    pub provider: String,
    /// The endpoint as configured (scheme, host, port, path): for logs and the ledger.
    pub url: String,
    pub addr: SocketAddr,
    pub tls: bool,
    /// Server name for TLS and the `Host` header.
    pub host: String,
    /// `host` or `host:port` when the port is not the scheme's default.
    pub authority: String,
    /// The checked, pre-serialised part of every request head to this endpoint.
    pub head: HeadTemplate,
    /// In flight, latency and cool-down; shared with every config that has this endpoint.
    pub state: Arc<EndpointState>,
}

impl ResolvedEndpoint {
    /// Resolves the endpoint's host and builds its request head template; runs at state
    /// build time, off the request path.
    pub fn resolve(
        provider: &str,
        e: &Endpoint,
        api_key: Option<&str>,
        state: Arc<EndpointState>,
    ) -> Option<ResolvedEndpoint> {
        let addr = match (e.host.as_str(), e.port).to_socket_addrs() {
            Ok(mut addrs) => addrs.next(),
            Err(err) => {
                tracing::warn!(provider, endpoint = %e.url, error = %err, "endpoint does not resolve");
                None
            }
        }?;
        let default_port = if e.tls { 443 } else { 80 };
        // IPv6 literals are stored without brackets; the Host header needs them back.
        let host = if e.host.contains(':') {
            format!("[{}]", e.host)
        } else {
            e.host.clone()
        };
        let authority = if e.port == default_port {
            host
        } else {
            format!("{host}:{}", e.port)
        };
        let head = match HeadTemplate::new(&authority, &e.base_path, api_key) {
            Ok(head) => head,
            Err(err) => {
                tracing::warn!(provider, endpoint = %e.url, error = %err, "endpoint left out");
                return None;
            }
        };
        Some(ResolvedEndpoint {
            provider: provider.to_string(),
            url: e.url.clone(),
            addr,
            tls: e.tls,
            host: e.host.clone(),
            authority,
            head,
            state,
        })
    }

    /// A peer with the connect and idle timeouts of contract §2. `first_byte` and `total`
    /// are deadlines the exchange keeps itself, since Pingora's read timeout resets on
    /// every read and cannot stop a trickling upstream.
    pub fn peer(&self, timeouts: &Timeouts) -> HttpPeer {
        let mut peer = HttpPeer::new(self.addr, self.tls, self.host.clone());
        peer.options.connection_timeout = Some(timeouts.connect);
        peer.options.total_connection_timeout = Some(timeouts.connect);
        peer.options.read_timeout = Some(timeouts.idle);
        peer.options.write_timeout = Some(timeouts.idle);
        // Below the 5 s keep-alive of vLLM and most servers, so a pooled connection is never
        // reused just as the upstream closes it (maximhq/bifrost#4496).
        peer.options.idle_timeout = Some(std::time::Duration::from_secs(4));
        peer
    }
}
