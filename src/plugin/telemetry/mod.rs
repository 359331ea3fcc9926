//! Observability: the Prometheus endpoint (`--metrics-listen`) and ATS's own stats.
//!
//! - `timing`: guest callback durations go into `ats_wasm_hook_duration_seconds{filter,hook}`
//!   histograms kept per thread ([`HookTimer`]: a TSC clock read before and after, one bucket
//!   search and two owner-only relaxed stores, no read-modify-write shared between threads),
//!   summed when Prometheus scrapes. This is the only part that runs around every callback.
//! - `counters`: failures and failure-policy outcomes are counters (`metrics` crate handles
//!   in a [`PrometheusRecorder`](metrics_exporter_prometheus::PrometheusRecorder), registered
//!   once per filter) and ATS stats (`proxy.plugin.ats_wasm.<filter>.*`); [`FilterMetrics`]
//!   bundles a filter's counters and timer.
//! - `render`: pool state ([`VmPool::stats`](ats_wasm_pool::VmPool::stats)) and the guests'
//!   own metrics ([`Metrics::snapshot`](crate::abi::Metrics::snapshot)) are read when
//!   Prometheus scrapes, and rendered next to the recorder's text (the exporter cannot carry
//!   pre-bucketed guest histograms, so it does not serve HTTP itself).
//! - `endpoint`: a small blocking HTTP server on its own thread serves that text (why not an
//!   HTTP server crate: see the module doc of `endpoint.rs`).
//!
//! - `reloads`: reload results and generation gauges ([`GENERATIONS`]), plain atomics;
//!   [`objects`]: live per-transaction objects (`ats_wasm_live_objects`), the same.
//!
//! ATS stats of the pools are refreshed (and left-out diags.log lines summarized) every
//! [`REFRESH`] by a second thread. None of these
//! threads is an ATS thread, calls into a guest or holds a lock a hook takes; all are detached,
//! so they never keep `traffic_server` from exiting. With `--metrics-listen=off` (or a port that cannot
//! be bound) there is no recorder, callbacks are not timed and only the ATS stats are kept.

#![forbid(unsafe_code)]

mod counters;
mod endpoint;
pub mod objects;
mod refusals;
mod reloads;
mod render;
mod timing;

use std::net::TcpListener;
use std::time::Duration;

use crate::ts::log;

pub use counters::{
    CALLBACK_FAILURES, Exporter, FAILURE_LINES_PER_MINUTE, FAILURE_OUTCOMES, FailureReason, FilterMetrics,
    FilterSnapshot, GLOBAL_SCOPE, HTTP_CALLS_REFUSED, REJECTED_WRITES, SUMMARY_INTERVAL, ats_stat_name,
};
pub use endpoint::prepare;
pub use reloads::{GENERATIONS, GenerationCounters, render_generations};
pub use render::{GUEST_PREFIX, guest_metric_name, render, render_guest, render_hooks, render_pools};
pub use timing::{HOOK_BUCKETS_NS, HOOK_DURATION, HookTimer};

/// How often the pools' ATS stats are refreshed and the recorder's upkeep runs.
pub const REFRESH: Duration = Duration::from_secs(2);

/// Starts the endpoint's thread (serving `listener`) and the refresh thread. `filters` reads
/// the filters' names, pool counters and metrics.
pub fn start(listener: Option<(TcpListener, Exporter)>, filters: fn() -> Vec<FilterSnapshot>) {
    let handle = listener.as_ref().map(|(_, e)| e.handle.clone());
    if let Some((listener, exporter)) = listener {
        exporter.describe();
        endpoint::serve_in_background(listener, exporter, filters);
    }
    let spawned = std::thread::Builder::new().name("ats_wasm-stats".into()).spawn(move || {
        loop {
            std::thread::sleep(REFRESH);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for f in filters() {
                    f.metrics.refresh_ats(&f.pool);
                    f.metrics.summarize();
                }
                if let Some(h) = &handle {
                    h.run_upkeep();
                }
            }));
        }
    });
    if let Err(e) = spawned {
        log::error(format!("ats_wasm: cannot start the stats thread: {e}; pool stats stay 0").as_bytes());
    }
}
