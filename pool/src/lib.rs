//! Thread-per-core pools of pre-instantiated wasmtime VMs.
//!
//! This crate knows nothing of Apache Traffic Server or of the Proxy-Wasm ABI. It owns:
//! - engine setup in one place ([`EngineOptions`], [`new_engine`]): the pooling instance
//!   allocator with copy-on-write memory images, a per-VM memory cap, epoch interruption
//!   driven by one ticker thread per engine ([`EpochTicker`]);
//! - [`VmTemplate`]: a module compiled once, pre-linked into an [`wasmtime::InstancePre`], plus
//!   the host state factory and the initializer that makes a fresh instance ready;
//! - [`VmPool`]: one pool per thread (a `thread_local::ThreadLocal`), so a thread uses its own
//!   VMs without locks. The caller's closure runs with a `&mut Vm<T>` that no other thread can
//!   reach.
//!
//! Everything is generic over the host state `T` that the ABI layer keeps in the `Store`.

mod engine;
mod pool;
mod template;

pub use engine::{EngineOptions, EpochTicker, new_engine};
pub use pool::{PoolError, ThreadId, VmPool, VmRef};
pub use template::{Vm, VmTemplate};
