//! Builds the Pingora `Server` from a config and runs it.
//!
//! Start-up only: derives `ServerConf`, registers the proxy service on every `listen`
//! address, and hands control to Pingora (signals, graceful upgrade, worker threads).

use std::path::PathBuf;
use std::sync::Arc;

use pingora::prelude::*;
use pingora::proxy::HttpProxy;
use pingora::server::RunArgs;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::listening::Service;

use crate::admin::stats::StatsApi;
use crate::auth::virtual_keys::{KeySync, VirtualKeys};
use crate::config::Config;
use crate::config::reload::{ReloadService, Reloader};
use crate::host::{HostLoad, HostSampler};
use crate::housekeeping::Housekeeping;
use crate::ledger;
use crate::limits::budget::BudgetService;
use crate::limits::{Limiter, Limits};
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::shutdown::{self, LateCleanup};
use crate::state::{self, LiveState};
use crate::upstream::UpstreamRegistry;
use crate::upstream::health::HealthService;

/// How `serve` was asked to run.
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    pub upgrade: bool,
    pub daemon: bool,
    /// The config file that was loaded (`None`: the embedded default), for reloads.
    pub config_path: Option<PathBuf>,
    /// Its content as loaded, so the file watch knows what is already live.
    pub config_bytes: Vec<u8>,
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
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        // What is left after the drain signal (`shutdown`) is dropped; the runtimes get this
        // long to wind down. Pingora sleeps grace *and* this (pingora#733): keep it short.
        graceful_shutdown_timeout_seconds: Some(2),
        upgrade_sock: config.server.upgrade_sock.clone(),
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
    let config_grace = config.server.grace_period;
    let usage_store = config.usage_store.clone();
    let host_load = Arc::new(HostLoad::default());
    let virtual_keys = Arc::new(VirtualKeys::new(&usage_store));
    virtual_keys.preload();
    let limits = Arc::new(Limits {
        rates: Limiter::new(
            config.rate_limits.redis.as_deref(),
            config.rate_limits.fail_open,
        ),
        budgets: Arc::default(),
    });
    let registry = Arc::new(UpstreamRegistry::default());
    let shared = state::shared(LiveState::build(config, &registry));
    let reloader = Arc::new(Reloader::new(
        opts.config_path,
        opts.config_bytes,
        shared.clone(),
        registry,
    ));
    let (drain_service, drain) = shutdown::drain(config_grace);
    let (ledger, ledger_service) = ledger::ledger(&usage_store);
    let mut app = HttpProxy::new(
        Gateway::new(
            shared.clone(),
            reloader.clone(),
            limits.clone(),
            ledger,
            Arc::new(StatsApi::new(&usage_store, host_load.clone())),
            virtual_keys.clone(),
            drain,
        ),
        server.configuration.clone(),
    );
    app.handle_init_modules();
    let mut proxy = Service::new("switchyard".to_owned(), LateCleanup::new(app, config_grace));
    for addr in &listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    let budgets = BudgetService::new(
        limits.budgets.clone(),
        shared.clone(),
        virtual_keys.clone(),
        &usage_store,
    );
    let housekeeping = Housekeeping::new()
        .with("health checks", HealthService::new(shared.clone()))
        .with("drain", drain_service)
        .with("ledger", ledger_service)
        .with("budgets", budgets)
        .with("host load", HostSampler::new(host_load))
        .with("virtual keys", KeySync::new(virtual_keys))
        .with("config reload", ReloadService::new(reloader));
    server.add_service(background_service("housekeeping", housekeeping));
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
