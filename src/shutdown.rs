//! Graceful stop: tells exchanges still running that the grace period is about to end.
//!
//! On SIGTERM (and on SIGQUIT once the listeners are handed over) Pingora stops accepting,
//! sleeps `grace_period` while requests in flight go on, then drops whatever still runs
//! (pingora-core `server/mod.rs`). A dropped exchange would cut its client's stream without a
//! word, so this background service fires the `Drain` signal just before that: a stream
//! still running gets the SSE `server_shutdown` error event, a request still waiting for its
//! upstream gets 503 `server_shutdown` (contract §4) — never a silent cut (reliability.md J6).
//!
//! `LateCleanup` wraps the proxy service for the other end of a stop: see its note.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;

/// Time left between the drain signal and Pingora dropping the runtimes, for the error
/// events to be written.
const MARGIN: Duration = Duration::from_millis(500);

/// A request's view of the drain signal; the default never fires.
#[derive(Debug, Clone, Default)]
pub struct Drain(Option<watch::Receiver<bool>>);

impl Drain {
    /// Resolves once the grace period is about to end; never, if the server keeps running.
    pub async fn expired(&mut self) {
        if let Some(rx) = &mut self.0
            && rx.wait_for(|&fired| fired).await.is_ok()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// Fires the drain `grace_period - MARGIN` after the server starts stopping.
pub struct DrainService {
    tx: watch::Sender<bool>,
    grace: Duration,
}

/// The service and the `Drain` every request clones.
pub fn drain(grace: Duration) -> (DrainService, Drain) {
    let (tx, rx) = watch::channel(false);
    (DrainService { tx, grace }, Drain(Some(rx)))
}

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        tracing::info!(
            grace_period_s = self.grace.as_secs(),
            "stopping: no new connections; requests in flight may finish within the grace period"
        );
        tokio::time::sleep(self.grace.saturating_sub(MARGIN)).await;
        tracing::info!("grace period ending: requests still in flight get server_shutdown");
        let _ = self.tx.send(true);
    }
}

/// The proxy service with its clean-up delayed by `delay` after the listener stops.
///
/// Why: when a stop begins, Pingora ends the accept loop and at once calls the app's clean-up,
/// which drops every connection still waiting for its first request (pingora-proxy
/// `handle_new_request`). A connection accepted a moment before — the client's request bytes
/// still on the way — is closed with its data unread, and the client sees a reset, even
/// during a graceful upgrade where the new process would have served it. Waiting a moment
/// before the clean-up lets those requests arrive and be served; the listening socket is
/// already the new process's (upgrade) or closed (SIGTERM), so nothing new comes in.
pub struct LateCleanup<A> {
    inner: Arc<A>,
    delay: Duration,
}

impl<A> LateCleanup<A> {
    /// `delay` is capped at half the grace period, so requests it lets in can still finish.
    pub fn new(inner: A, grace: Duration) -> LateCleanup<A> {
        LateCleanup {
            inner: Arc::new(inner),
            delay: (grace / 2).min(Duration::from_secs(1)),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for LateCleanup<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        tokio::time::sleep(self.delay).await;
        self.inner.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_default_drain_never_fires_and_a_sent_one_does() {
        let mut never = Drain::default();
        let idle = tokio::time::timeout(Duration::from_millis(20), never.expired()).await;
        assert!(idle.is_err());
        let (service, mut d) = drain(Duration::from_secs(1));
        service.tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), d.expired())
            .await
            .expect("fires");
    }
}
