//! Host load for the monitoring report (`GET /api/monitoring/performance`'s `system`): CPU
//! and memory use sampled by a background service, kept as per-minute averages for 30 days.
//!
//! Off the request path entirely. GPU utilisation joins it with the NVML work.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sysinfo::System;

/// How often the host is sampled (also spaces sysinfo's CPU readings, which need two).
const SAMPLE: Duration = Duration::from_secs(10);
/// The first sample after start.
const FIRST_SAMPLE: Duration = Duration::from_secs(1);
/// Minutes kept: the longest `time_range` of the report.
const KEEP_MINUTES: usize = 30 * 24 * 60;

#[derive(Debug, Clone, Copy)]
struct Minute {
    /// Unix minute.
    at: i64,
    cpu_sum: f64,
    mem_sum: f64,
    n: u32,
}

/// Per-minute CPU and memory use. One per process.
#[derive(Debug, Default)]
pub struct HostLoad {
    minutes: Mutex<VecDeque<Minute>>,
}

impl HostLoad {
    fn record(&self, unix_s: i64, cpu_percent: f64, mem_percent: f64) {
        let at = unix_s / 60;
        let mut m = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        match m.back_mut() {
            Some(last) if last.at == at => {
                last.cpu_sum += cpu_percent;
                last.mem_sum += mem_percent;
                last.n += 1;
            }
            _ => m.push_back(Minute {
                at,
                cpu_sum: cpu_percent,
                mem_sum: mem_percent,
                n: 1,
            }),
        }
        while m.len() > KEEP_MINUTES {
            m.pop_front();
        }
    }

    /// Average CPU and memory use (percent) since `since_unix_s`; `None` before any sample.
    pub fn average_since(&self, since_unix_s: i64) -> Option<(f64, f64)> {
        let m = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        let (cpu, mem, n) = m
            .iter()
            .filter(|x| x.at >= since_unix_s / 60)
            .fold((0.0, 0.0, 0u64), |(c, r, n), x| {
                (c + x.cpu_sum, r + x.mem_sum, n + u64::from(x.n))
            });
        (n > 0).then(|| (cpu / n as f64, mem / n as f64))
    }
}

/// Samples the host every `SAMPLE`.
pub struct HostSampler {
    load: Arc<HostLoad>,
}

impl HostSampler {
    pub fn new(load: Arc<HostLoad>) -> HostSampler {
        HostSampler { load }
    }
}

#[async_trait]
impl BackgroundService for HostSampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut sys = match System::new() {
            Ok(sys) => sys,
            Err(err) => {
                tracing::warn!(error = %err, "host load: no system information on this host");
                return;
            }
        };
        sys.refresh_cpu_usage();
        // The first reading soon after start (CPU use needs two readings apart), then every
        // `SAMPLE`.
        let mut wait = FIRST_SAMPLE;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = SAMPLE;
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            let total = sys.total_memory();
            let mem = if total == 0 {
                0.0
            } else {
                sys.used_memory() as f64 * 100.0 / total as f64
            };
            let now = chrono::Utc::now().timestamp();
            self.load
                .record(now, f64::from(sys.global_cpu_usage()), mem);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_over_the_minutes_in_range() {
        let h = HostLoad::default();
        assert_eq!(h.average_since(0), None);
        h.record(600, 10.0, 50.0);
        h.record(610, 30.0, 50.0);
        h.record(7200, 80.0, 70.0);
        assert_eq!(h.average_since(0), Some((40.0, 170.0 / 3.0)));
        assert_eq!(h.average_since(7200), Some((80.0, 70.0)));
    }
}
