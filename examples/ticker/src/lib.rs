//! `ticker`: a Proxy-Wasm filter whose root context asks for a tick every `period_ms`
//! (default 100) and counts ticks in process-wide shared data (`ticker.count`, an 8-byte
//! little-endian counter updated with compare-and-swap); every response gets `x-ticks: <count>`.
//!
//! ```json
//! {"period_ms": 100}
//! ```

use std::time::Duration;

use log::{error, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
use serde::Deserialize;

const KEY: &str = "ticker.count";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(TickerRoot));
}}

fn default_period() -> u64 {
    100
}

#[derive(Deserialize)]
struct Config {
    #[serde(default = "default_period")]
    period_ms: u64,
}

struct TickerRoot;

impl Context for TickerRoot {}

fn read_count(ctx: &dyn Context) -> (u64, Option<u32>) {
    match ctx.get_shared_data(KEY) {
        (Some(v), cas) if v.len() == 8 => (u64::from_le_bytes(v.try_into().unwrap_or_default()), cas),
        (_, cas) => (0, cas),
    }
}

impl RootContext for TickerRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_else(|| b"{}".to_vec());
        let raw = if raw.is_empty() { b"{}".to_vec() } else { raw };
        match serde_json::from_slice::<Config>(&raw) {
            Ok(c) => {
                self.set_tick_period(Duration::from_millis(c.period_ms));
                true
            }
            Err(e) => {
                error!("ticker: invalid configuration: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        // Several VMs tick concurrently: retry on CAS mismatch.
        for _ in 0..16 {
            let (n, cas) = read_count(self);
            match self.set_shared_data(KEY, Some(&(n + 1).to_le_bytes()), cas) {
                Ok(()) => return,
                Err(Status::CasMismatch) => continue,
                Err(e) => {
                    warn!("ticker: set_shared_data failed: {e:?}");
                    return;
                }
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TickerHttp))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TickerHttp;

impl Context for TickerHttp {}

impl HttpContext for TickerHttp {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (n, _) = read_count(self);
        self.add_http_response_header("x-ticks", &n.to_string());
        Action::Continue
    }
}
