//! `hostile-bounds`: a hostile test filter (never shipped) for ats-wasm's bounds on guest
//! resources and on VM initialization.
//!
//! Initialization: every run of `proxy_on_configure` counts itself in shared data
//! (`hostile-bounds.starts`, compare-and-swap) and learns its start number `n` (1, 2, …).
//! With `{"loop_after_starts": N}` a start with `n > N` spins forever (only the host's
//! initializer deadline stops it): `0` loops in every VM, `2` lets the first two VMs (the
//! start-up probe and one thread's VM) configure and loops in every later one (a
//! replacement, a fresh `transaction` VM).
//!
//! Requests:
//! - `x-trap: 1` traps (`unreachable`), so the host poisons the VM and makes a replacement;
//! - `x-shared-mib: M` with `x-shared-key: K` writes a value of `M` MiB under key `K` with the
//!   raw host call (not the SDK's, which would trap on a refusal) and reports its status as
//!   response header `x-shared-status` (0 `OK`, 2 `BAD_ARGUMENT`, 10 `INTERNAL_FAILURE`);
//! - every response gets `x-hostile-bounds: <start number of the VM that served it>`.

use core::hint::black_box;
use core::ptr::read_volatile;
use std::cell::Cell;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
use serde::Deserialize;

const STARTS: &str = "hostile-bounds.starts";

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    /// The host call itself, so that a refusal comes back as a status instead of the SDK's
    /// panic.
    #[link_name = "proxy_set_shared_data"]
    fn raw_set_shared_data(key: *const u8, key_len: usize, value: *const u8, value_len: usize, cas: u32) -> u32;
}

thread_local! {
    /// This VM's start number, once configured.
    static START: Cell<u64> = const { Cell::new(0) };
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

#[derive(Deserialize, Default)]
struct Config {
    loop_after_starts: Option<u64>,
}

struct Root;

impl Context for Root {}

/// Adds one to the start counter; returns the new value.
fn count_start(ctx: &dyn Context) -> u64 {
    loop {
        let (n, cas) = match ctx.get_shared_data(STARTS) {
            (Some(v), cas) if v.len() == 8 => (u64::from_le_bytes(v.try_into().unwrap_or_default()), cas),
            (_, cas) => (0, cas),
        };
        match ctx.set_shared_data(STARTS, Some(&(n + 1).to_le_bytes()), cas) {
            Ok(()) => return n + 1,
            Err(Status::CasMismatch) => continue,
            Err(_) => return n + 1,
        }
    }
}

/// Never changes; read with a volatile load each iteration so the loop stays.
static KEEP_SPINNING: u8 = 1;

fn spin_forever() -> ! {
    while unsafe { read_volatile(&KEEP_SPINNING) } != 0 {}
    core::arch::wasm32::unreachable()
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let config: Config = if raw.is_empty() { Config::default() } else { serde_json::from_slice(&raw).unwrap_or_default() };
        let n = count_start(self);
        START.with(|s| s.set(n));
        if config.loop_after_starts.is_some_and(|after| n > after) {
            spin_forever();
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { shared_status: None }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    shared_status: Option<u32>,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header("x-trap").is_some() {
            core::arch::wasm32::unreachable();
        }
        let mib = self.get_http_request_header("x-shared-mib").and_then(|v| v.parse::<usize>().ok());
        if let (Some(mib), Some(key)) = (mib, self.get_http_request_header("x-shared-key")) {
            let value = black_box(vec![b'v'; mib << 20]);
            let status = unsafe { raw_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), 0) };
            self.shared_status = Some(status);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(status) = self.shared_status {
            self.add_http_response_header("x-shared-status", &status.to_string());
        }
        let start = START.with(Cell::get);
        self.add_http_response_header("x-hostile-bounds", &start.to_string());
        Action::Continue
    }
}
