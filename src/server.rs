//! Builds the Pingora `Server` from a config and runs it.
//!
//! Start-up only: derives `ServerConf`, registers the proxy service on every `listen`
//! address, and hands control to Pingora (signals, graceful upgrade, worker threads).

use pingora::prelude::*;
use pingora::server::RunArgs;
use pingora::server::configuration::{Opt, ServerConf};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::state::{self, LiveState};
use crate::upstream::UpstreamRegistry;
use crate::upstream::health::HealthService;

/// How `serve` was asked to run.
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    pub upgrade: bool,
    pub daemon: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Runs the gateway until Pingora shuts it down (SIGTERM, SIGINT, or SIGQUIT after a graceful
/// upgrade) and returns once the services have drained, so the caller can flush its logs.
pub fn run(config: Config, opts: ServeOptions) -> Result<(), ServeError> {
    Metrics::init()?;
    let listen = config.server.listen.clone();
    let conf = ServerConf {
        // Two worker threads per core is Pingora's sweet spot for I/O-bound proxying.
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        grace_period_seconds: Some(5),
        graceful_shutdown_timeout_seconds: Some(10),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let metrics_listen = config.server.metrics_listen;
    let registry = std::sync::Arc::new(UpstreamRegistry::default());
    let shared = state::shared(LiveState::build(config, &registry));
    let mut proxy = http_proxy_service(&server.configuration, Gateway::new(shared.clone()));
    for addr in &listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "health checks",
        HealthService::new(shared.clone()),
    ));
    if let Some(addr) = metrics_listen {
        let mut metrics = http_proxy_service(&server.configuration, Gateway::metrics_only(shared));
        metrics.add_tcp(&addr.to_string());
        server.add_service(metrics);
    }
    tracing::info!(listen = ?listen, "switchyard serving");
    // `run`, not `run_forever`: the latter ends in `process::exit`, which would skip the log
    // writer's final flush.
    server.run(RunArgs::default());
    Ok(())
}
