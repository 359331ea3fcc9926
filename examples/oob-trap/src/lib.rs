//! `oob-trap`: a Proxy-Wasm HTTP filter that misbehaves on demand, to test how
//! the host survives faulty guests.
//!
//! On request headers it reads the request header `x-trap`:
//!
//! | `x-trap`      | behaviour                                                  |
//! |---------------|------------------------------------------------------------|
//! | `oob`         | reads guest memory far out of bounds (traps)               |
//! | `unreachable` | executes `unreachable` (traps)                             |
//! | `loop`        | spins forever (needs the host's CPU limit to stop it)      |
//! | `alloc`       | allocates and touches 1 MiB blocks forever (memory bomb)   |
//! | `panic`       | panics: the SDK logs the (two-line) message, then traps    |
//! | `grow`        | asks for 256 MiB at once (one `memory.grow` past any cap)  |
//! | `arm-create`  | passes, and the next context creation in this VM traps     |
//! | `missing`     | calls `env.oob_trap_missing`, which no host provides; adds |
//! |               | request header `x-oob-trap: missing=<what it answered>`    |
//! | anything else | adds request header `x-oob-trap: passed`, continues        |
//!
//! On response headers it does the same for the request header `x-trap-response`, and
//! otherwise adds response header `x-oob-trap: alive`.
//! `x-oob-trap: alive` shows that the module (or a fresh instance of it) still
//! serves transactions.
//!
//! The plugin configuration is a comma-separated list of flags (empty: none):
//! - `tick_loop`: the root context asks for a tick every 100 ms and every tick spins forever;
//! - `restart_trap`: `proxy_on_configure` traps in every VM but the first of the process (so
//!   the filter loads, and every VM made later fails to start).

use core::cell::Cell;
use core::hint::black_box;
use core::ptr::{read_volatile, write_volatile};
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    // Installs the SDK's logger and its panic hook, which logs panic messages as Critical.
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(OobRoot));
}}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    /// Provided by no host: ats-wasm links it to a stub.
    fn oob_trap_missing(arg: i32) -> i32;
}

thread_local! {
    /// Set by `x-trap: arm-create`: the next context creation traps.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

/// Root context: reads the flags, makes HTTP contexts.
struct OobRoot;

impl Context for OobRoot {}

impl RootContext for OobRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let flags = String::from_utf8_lossy(&config).into_owned();
        let flag = |f: &str| flags.split(',').any(|x| x.trim() == f);
        if flag("restart_trap") {
            // Process-wide: the first VM finds the key missing and sets it.
            let (seen, _) = self.get_shared_data("oob-trap.started");
            if seen.is_some() {
                core::arch::wasm32::unreachable();
            }
            let _ = self.set_shared_data("oob-trap.started", Some(b"1"), None);
        }
        if flag("tick_loop") {
            self.set_tick_period(Duration::from_millis(100));
        }
        true
    }

    fn on_tick(&mut self) {
        spin_forever();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if ARMED.with(|a| a.replace(false)) {
            core::arch::wasm32::unreachable();
        }
        Some(Box::new(OobTrap))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// HTTP context; it has no state.
struct OobTrap;

impl Context for OobTrap {}

impl HttpContext for OobTrap {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.get_http_request_header("x-trap").as_deref() {
            Some("oob") => out_of_bounds_read(),
            Some("unreachable") => core::arch::wasm32::unreachable(),
            Some("loop") => spin_forever(),
            Some("alloc") => allocate_forever(),
            Some("grow") => allocate_at_once(),
            Some("panic") => panic!("oob-trap panics on purpose"),
            Some("arm-create") => {
                ARMED.with(|a| a.set(true));
                self.add_http_request_header("x-oob-trap", "armed");
                Action::Continue
            }
            Some("missing") => {
                let answer = unsafe { oob_trap_missing(1) };
                self.add_http_request_header("x-oob-trap", &format!("missing={answer}"));
                Action::Continue
            }
            _ => {
                self.add_http_request_header("x-oob-trap", "passed");
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The same failures on demand in the response phase, from `x-trap-response`.
        match self.get_http_request_header("x-trap-response").as_deref() {
            Some("oob") => out_of_bounds_read(),
            Some("unreachable") => core::arch::wasm32::unreachable(),
            Some("loop") => spin_forever(),
            Some("alloc") => allocate_forever(),
            _ => {
                self.add_http_response_header("x-oob-trap", "alive");
                Action::Continue
            }
        }
    }
}

/// Loads 8 bytes just below 4 GiB: far past any linear memory this module
/// gets, so the `i64.load` traps. Volatile, so it is not optimized away.
fn out_of_bounds_read() -> ! {
    let value = unsafe { read_volatile(0xFFFF_FFF0usize as *const u64) };
    black_box(value);
    core::arch::wasm32::unreachable()
}

/// Never changes; read with a volatile load each iteration so the loop stays.
static KEEP_SPINNING: u8 = 1;

/// An infinite loop the compiler cannot remove.
fn spin_forever() -> ! {
    while unsafe { read_volatile(&KEEP_SPINNING) } != 0 {}
    core::arch::wasm32::unreachable()
}

/// Asks for 256 MiB in one allocation: one `memory.grow` far past any cap, which the host
/// refuses; the allocator then aborts (traps) with the memory barely grown.
fn allocate_at_once() -> ! {
    let block = Vec::<u8>::with_capacity(256 << 20);
    black_box(&block);
    core::arch::wasm32::unreachable()
}

/// Allocates 1 MiB blocks, writes to every page of each and keeps them all,
/// until the allocator fails (which aborts, i.e. traps) or the host stops it.
fn allocate_forever() -> ! {
    const BLOCK: usize = 1 << 20;
    const PAGE: usize = 4096;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = Vec::<u8>::with_capacity(BLOCK);
        let ptr = block.as_mut_ptr();
        for offset in (0..BLOCK).step_by(PAGE) {
            unsafe { write_volatile(ptr.add(offset), 0xA5) };
        }
        hoard.push(black_box(block));
        black_box(&hoard);
    }
}
