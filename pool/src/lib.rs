//! Thread-per-core pools of pre-instantiated wasmtime VMs.
//!
//! This crate knows nothing of Apache Traffic Server or of the Proxy-Wasm ABI, and logs
//! nothing: every problem comes back to the caller as a value. It owns:
//! - engine setup in one place ([`EngineOptions`], [`WasmEngine`]): the pooling instance
//!   allocator with copy-on-write memory images, a per-VM memory cap, signal-based traps, epoch
//!   interruption driven by one ticker thread per engine ([`EpochTicker`]);
//! - compilation once per module per process, with an optional verified on-disk cache of
//!   compiled code ([`ModuleCompiler`], [`CacheOutcome`]);
//! - [`VmTemplate`]: a module pre-linked into an [`wasmtime::InstancePre`] (no import
//!   resolution per VM), plus the host state factory and the initializer that makes a fresh
//!   instance ready;
//! - [`Instrumented`]: snapshots of initialized VMs (`wasmtime-wizer`), so a fresh VM starts
//!   initialized without running guest code;
//! - [`Pristine`]: recycling a snapshot module's used VM in place (its written memory pages
//!   and mutable globals put back), instead of dropping it and instantiating another;
//! - [`VmPool`]: per-module pools with one pool per thread (a `thread_local::ThreadLocal`), in
//!   one of two [`Isolation`] modes, handing out [`LeasedVm`]s without locks on the owning
//!   thread, with poisoning, off-path refill, cross-thread returns and counters.
//!
//! Everything is generic over the host state `T` that the ABI layer keeps in the `Store`.
//!
//! The crate has no `unsafe` but the one `Module::deserialize` in `cache.rs`: every other
//! module forbids it (`#![forbid(unsafe_code)]`), and this root only denies it, because a
//! crate-wide `forbid` could not be lifted for that one call.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_code)]

mod cache;
mod engine;
mod pool;
mod recycle;
mod snapshot;
mod template;

pub use cache::{CacheOutcome, CompiledModule, ModuleCompiler, WASMTIME_VERSION};
pub use engine::{EngineError, EngineOptions, EpochTicker, WasmEngine, new_engine};
pub use pool::{Isolation, LeasedVm, PoolConfig, PoolError, PoolStats, Refill, ThreadId, ThreadStats, VmPool, VmRef};
pub use recycle::{Pristine, RecycleError, export_state};
pub use snapshot::Instrumented;
pub use template::{Vm, VmTemplate};
