//! The host calls: every function a guest imports, one named Rust function per call, grouped
//! by section of the Proxy-Wasm ABI 0.2.1 specification (after proxy-wasm-cpp-host's
//! `exports.cc`).
//!
//! Each function checks every guest pointer and length (see [`crate::abi::memory`]), answers
//! the spec's status codes, and never panics. Every function of ABI 0.2.1 is defined, plus the
//! 0.1.0-only ones (`proxy_get_configuration`, `proxy_continue_request`,
//! `proxy_continue_response`, `proxy_clear_route_cache`); any other `env` import a module has
//! gets a stub answering `UNIMPLEMENTED` (and logging once per module), so every SDK's module
//! instantiates. Each function first checks the filter's `allowed_capabilities`
//! (see [`crate::abi::capabilities`]).
//!
//! Files: `linker` (the registration table, the capability check, the stubs: [`linker_for`]),
//! `caller` (the calling VM, its memory, copying values in and out, results), then one file per
//! spec section: `logging`, `time` (clocks and timers), `context` (context lifecycle),
//! `buffers`, `header_maps` (HTTP fields), `streams` (stream operations, local responses),
//! `http_calls` (HTTP and gRPC calls), `shared_data`, `shared_queues`, `metrics`, `properties`,
//! `foreign` (foreign functions) and `wasi` (WASI preview 1). Every section file imports
//! only `caller`; `linker` imports them all.
//!
//! The functions and their helpers are `#[inline]`: that puts each one's code in the codegen
//! unit of the registration closure that calls it, where it was inlined when all of them were
//! one file. Without it they were called out of line from other codegen units and a host call
//! cost up to ~110 more instructions (callgrind over `benches/abi.rs`'s `host_call` group).

#![forbid(unsafe_code)]

mod buffers;
mod caller;
mod context;
mod foreign;
mod header_maps;
mod http_calls;
mod linker;
mod logging;
mod metrics;
mod properties;
mod shared_data;
mod shared_queues;
mod streams;
mod time;
mod wasi;

pub use linker::{Stub, link, linker_for};
