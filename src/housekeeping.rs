//! One Pingora background service that runs the gateway's own background tasks together:
//! health checks, the ledger writer, budget and virtual-key syncs, host sampling, the config
//! watch and the drain signal.
//!
//! Why together: Pingora gives every service a runtime and a thread of its own; seven mostly
//! idle tasks cost seven threads and their allocator heaps (measured: +15 MiB of idle RSS).
//! Each task stays its own `BackgroundService`, so it can still be run (and tested) alone.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// The tasks, run concurrently on one runtime until the server stops.
pub struct Housekeeping {
    tasks: Vec<(&'static str, Box<dyn BackgroundService + Send + Sync>)>,
}

impl Housekeeping {
    pub fn new() -> Housekeeping {
        Housekeeping { tasks: Vec::new() }
    }

    pub fn with(
        mut self,
        name: &'static str,
        task: impl BackgroundService + Send + Sync + 'static,
    ) -> Housekeeping {
        self.tasks.push((name, Box::new(task)));
        self
    }
}

impl Default for Housekeeping {
    fn default() -> Self {
        Housekeeping::new()
    }
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, shutdown: ShutdownWatch) {
        let runs = self.tasks.iter().map(|(name, task)| {
            let shutdown = shutdown.clone();
            async move {
                task.start(shutdown).await;
                tracing::debug!(task = name, "background task ended");
            }
        });
        futures::future::join_all(runs).await;
    }
}
