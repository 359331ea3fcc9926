//! `background` (pattern (d) of the SDKs' examples, a "background service"): a root context
//! with no HTTP context type that ticks every second, counting its ticks in the guest counter
//! `background.ticks` and logging each. A stream context asked of it makes the SDK trap
//! (the root context names no context type); its ticks must go on regardless.

use log::info;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::{LogLevel, MetricType};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(Background { ticks: 0, metric: None }));
}}

struct Background {
    ticks: u64,
    metric: Option<u32>,
}

impl Context for Background {}

impl RootContext for Background {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.metric = hostcalls::define_metric(MetricType::Counter, "background.ticks").ok();
        self.set_tick_period(Duration::from_secs(1));
        true
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        if let Some(m) = self.metric {
            let _ = hostcalls::increment_metric(m, 1);
        }
        info!("background: tick {}", self.ticks);
    }
}
