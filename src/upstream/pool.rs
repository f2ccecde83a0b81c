//! Pooled upstream connections: take one, send a request on it, give it back.
//!
//! Used in the exchange's attempt step (≈ `connected_to_upstream`) and once a response has
//! been read to its end (≈ Pingora releasing the upstream session). Connections and their
//! keep-alive pool are Pingora's `TransportConnector`; responses are parsed by Pingora's
//! HTTP/1 `HttpSession`. Only the request write is ours: head and body leave in one write
//! (see `upstream::request`), which Pingora's `HttpSession` cannot do.

use std::time::Duration;

use pingora::connectors::TransportConnector;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::upstreams::peer::{HttpPeer, Peer};
use tokio::io::AsyncWriteExt;

/// How sending a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No connection could be made.
    Connect,
    /// The write failed. On a pooled connection this means the upstream closed it while it
    /// sat idle, so the request never ran.
    Write { reused: bool },
}

pub struct UpstreamPool {
    transport: TransportConnector,
}

impl Default for UpstreamPool {
    fn default() -> Self {
        UpstreamPool::new()
    }
}

impl UpstreamPool {
    pub fn new() -> UpstreamPool {
        UpstreamPool {
            transport: TransportConnector::new(None),
        }
    }

    /// Takes a pooled connection to `peer` (or opens one), writes `request` on it, and hands
    /// back the session to read the response from, with whether the connection was reused.
    pub async fn send(
        &self,
        peer: &HttpPeer,
        request: &[u8],
        write_timeout: Duration,
    ) -> Result<(HttpSession, bool), SendError> {
        let (mut stream, reused) = self
            .transport
            .get_stream(peer)
            .await
            .map_err(|_| SendError::Connect)?;
        let write = async {
            stream.write_all(request).await?;
            stream.flush().await
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Err(SendError::Write { reused }),
        }
        let session = Http1Session::new_with_options(stream, peer);
        Ok((HttpSession::H1(session), reused))
    }

    /// Returns the connection to the pool when its response was read to the end and both
    /// sides allow keep-alive; closes it otherwise.
    pub async fn release(&self, session: HttpSession, peer: &HttpPeer) {
        let HttpSession::H1(mut session) = session else {
            // Only HTTP/1 sessions are made here; anything else is closed by its drop.
            return;
        };
        session.respect_keepalive();
        if let Some(stream) = session.reuse().await {
            self.transport
                .release_stream(stream, peer.reuse_hash(), peer.options.idle_timeout);
        }
    }
}
