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
//! | anything else | adds request header `x-oob-trap: passed`, continues        |
//!
//! On response headers it does the same for the request header `x-trap-response`, and
//! otherwise adds response header `x-oob-trap: alive`.
//! `x-oob-trap: alive` shows that the module (or a fresh instance of it) still
//! serves transactions.

use core::hint::black_box;
use core::ptr::{read_volatile, write_volatile};

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    // Installs the SDK's logger and its panic hook, which logs panic messages as Critical.
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_http_context(|_, _| Box::new(OobTrap));
}}

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
            Some("panic") => panic!("oob-trap panics on purpose"),
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
