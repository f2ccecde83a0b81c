//! Hot reload: the file watch (debounced), SIGHUP and `POST /api/config/reload`, all ending
//! in one `Reloader::reload` that builds the new `LiveState` off the request path and swaps
//! it in, or keeps the old one.
//!
//! Runs beside the request path: the watch and the signal in one Pingora background service,
//! the API call from request_filter (it only awaits the build). Requests in flight keep the
//! `Arc<LiveState>` they loaded in `early_request_filter` and finish on it. Unchanged
//! providers keep their balancer, health and endpoint state (`UpstreamRegistry`); pooled
//! connections are keyed by address and survive anyway.
//!
//! Why polling and not inotify: one `read` of a small file every `POLL` is cheap, works the
//! same on every filesystem (bind mounts, NFS, Kubernetes ConfigMaps swapped by symlink) and
//! needs no extra crate; a 100 ms poll keeps a change well inside the 1 s it must take effect in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{self, ConfigErrors};
use crate::metrics::Metrics;
use crate::state::{LiveState, SharedState};
use crate::upstream::UpstreamRegistry;

/// How often the watch reads the file.
const POLL: Duration = Duration::from_millis(100);
/// A changed file is applied once every read for this long found the same content, so a
/// file still being written is never applied; a change goes live 300–400 ms after its last
/// write.
const SETTLE: Duration = Duration::from_millis(300);

/// What asked for a reload (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    FileChange,
    Signal,
    Api,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::FileChange => "file_change",
            Trigger::Signal => "sighup",
            Trigger::Api => "api",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload: serving the embedded default")]
    NoFile,
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("the config build did not finish")]
    BuildFailed,
}

/// Turns the config file into a live state, one reload at a time.
pub struct Reloader {
    path: Option<PathBuf>,
    shared: SharedState,
    registry: Arc<UpstreamRegistry>,
    /// The file content last applied or rejected; held across a reload, so reloads never
    /// interleave.
    last: tokio::sync::Mutex<Vec<u8>>,
}

impl Reloader {
    /// `path` is the file `serve` loaded (`None` for the embedded default) and `loaded` the
    /// bytes it read.
    pub fn new(
        path: Option<PathBuf>,
        loaded: Vec<u8>,
        shared: SharedState,
        registry: Arc<UpstreamRegistry>,
    ) -> Reloader {
        Reloader {
            path,
            shared,
            registry,
            last: tokio::sync::Mutex::new(loaded),
        }
    }

    /// Reads the file and applies it, even when its content did not change: `env:` and
    /// `file:` secrets or DNS may have (SIGHUP and the API).
    pub async fn reload(&self, trigger: Trigger) -> Result<(), ReloadError> {
        let path = self.path.clone().ok_or(ReloadError::NoFile)?;
        let mut last = self.last.lock().await;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(err) => return Err(self.rejected(trigger, config::read_error(&path, &err))),
        };
        self.apply(path, bytes, trigger, &mut last).await
    }

    /// Builds a state from `bytes` off the workers and swaps it in, or logs why not.
    /// `last` is the held lock: reloads never interleave.
    async fn apply(
        &self,
        path: PathBuf,
        bytes: Vec<u8>,
        trigger: Trigger,
        last: &mut Vec<u8>,
    ) -> Result<(), ReloadError> {
        last.clone_from(&bytes);
        let registry = self.registry.clone();
        // Parsing, secret lookups and DNS resolution block: keep them off the workers.
        let built = tokio::task::spawn_blocking(move || {
            config::load_bytes(&path, &bytes).map(|c| LiveState::build(c, &registry))
        })
        .await
        .map_err(|_| ReloadError::BuildFailed)?;
        match built {
            Ok(state) => {
                self.swap(state, trigger);
                Ok(())
            }
            Err(errors) => Err(self.rejected(trigger, errors)),
        }
    }

    fn swap(&self, state: LiveState, trigger: Trigger) {
        let old = self.shared.load();
        let (was, now) = (&old.config.server, &state.config.server);
        if was.listen != now.listen
            || was.metrics_listen != now.metrics_listen
            || was.grace_period != now.grace_period
            || was.upgrade_sock != now.upgrade_sock
            || old.config.usage_store != state.config.usage_store
            || old.config.rate_limits.redis != state.config.rate_limits.redis
            || old.config.rate_limits.fail_open != state.config.rate_limits.fail_open
        {
            tracing::warn!(
                "server.listen, metrics_listen, grace_period, upgrade_sock, usage.store and rate_limits.store/fail_open change only on restart or graceful upgrade; the running values stay"
            );
        }
        self.shared.store(Arc::new(state));
        count(true);
        tracing::info!(trigger = trigger.as_str(), "config reloaded");
    }

    fn rejected(&self, trigger: Trigger, errors: ConfigErrors) -> ReloadError {
        count(false);
        for e in &errors.0 {
            tracing::error!(trigger = trigger.as_str(), error = %e, "config reload rejected; the old config keeps serving");
        }
        ReloadError::Invalid(errors)
    }

    /// The watch: a changed content is applied once it has stayed the same for `SETTLE`
    /// (the content that settled, not a later read). Content last applied or rejected is
    /// not looked at again.
    async fn poll_file(&self, pending: &mut Option<(Vec<u8>, Instant)>) {
        let Some(path) = &self.path else {
            return;
        };
        let Ok(bytes) = tokio::fs::read(path).await else {
            // Missing for a moment (an editor's rename): look again next poll.
            return;
        };
        let mut last = self.last.lock().await;
        if *last == bytes {
            *pending = None;
            return;
        }
        match pending.take() {
            Some((seen, since)) if seen == bytes && since.elapsed() >= SETTLE => {
                let _ = self
                    .apply(path.clone(), bytes, Trigger::FileChange, &mut last)
                    .await;
            }
            Some((seen, since)) if seen == bytes => *pending = Some((seen, since)),
            _ => *pending = Some((bytes, Instant::now())),
        }
    }
}

fn count(ok: bool) {
    if let Some(m) = Metrics::get() {
        let result = if ok { "ok" } else { "error" };
        m.config_reloads.with_label_values(&[result]).inc();
    }
}

/// The background service: the file watch and SIGHUP.
pub struct ReloadService {
    reloader: Arc<Reloader>,
}

impl ReloadService {
    pub fn new(reloader: Arc<Reloader>) -> ReloadService {
        ReloadService { reloader }
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::warn!(error = %err, "SIGHUP reload unavailable");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { hangup.as_mut()?.recv().await } => {
                    pending = None;
                    let _ = self.reloader.reload(Trigger::Signal).await;
                }
                _ = tick.tick() => self.reloader.poll_file(&mut pending).await,
            }
        }
    }
}
