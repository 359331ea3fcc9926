//! Why no VM could be used.
#![forbid(unsafe_code)]

use std::fmt;

/// Why no VM could be used.
#[derive(Debug)]
pub enum PoolError {
    /// Creating a VM failed (instantiation, e.g. a module over the memory cap, or the
    /// initializer). Returned for the first failure since the pool last created a VM
    /// successfully (on any thread), so it is reported once: log it. The thread backs off.
    Init(wasmtime::Error),
    /// VM creation failed recently and is backing off (or failed again; the failure is counted
    /// in [`ThreadStats::init_failures`](super::ThreadStats::init_failures) and not reported again).
    BackingOff,
    /// The VM belongs to another thread (a `Shared`-mode lease used off its thread).
    WrongThread,
    /// The VM no longer exists: it was poisoned (and possibly replaced).
    Gone,
    /// This thread's pool is already in use further up the stack (a re-entrant call).
    Busy,
    /// The call does not apply to this pool's [`Isolation`](super::Isolation) mode.
    WrongMode,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Init(e) => write!(f, "creating a VM failed: {e:#}"),
            PoolError::BackingOff => f.write_str("VM creation is backing off after a failure"),
            PoolError::WrongThread => f.write_str("the VM belongs to another thread"),
            PoolError::Gone => f.write_str("the VM was poisoned"),
            PoolError::Busy => f.write_str("the thread's pool is in use (re-entrant call)"),
            PoolError::WrongMode => f.write_str("not available in this isolation mode"),
        }
    }
}

impl std::error::Error for PoolError {}
