//! How a pool is configured: its isolation mode, size and creation backoff.
#![forbid(unsafe_code)]

use std::time::Duration;

/// How VMs are shared between transactions; chosen per module when its pool is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Envoy's semantics: each thread keeps `size` long-lived VMs and every transaction gets a
    /// stream context in one of them (round-robin). In-VM state persists across transactions on
    /// that thread. A lease is a reference to a VM that stays in the thread's pool; it can be
    /// used only on that thread.
    Shared,
    /// Each transaction gets a whole VM of its own, initialized and never used before, and
    /// discarded after. The lease owns the VM, so it can be used on any thread.
    Transaction,
}

/// How a [`VmPool`](super::VmPool) behaves.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// See [`Isolation`].
    pub isolation: Isolation,
    /// VMs per thread (at least 1): long-lived VMs in `Shared` mode, ready VMs kept in reserve
    /// in `Transaction` mode.
    pub size: usize,
    /// Wait after the first failed VM creation on a thread; doubles on each further failure.
    pub backoff_min: Duration,
    /// The longest wait between creation attempts on a thread.
    pub backoff_max: Duration,
    /// The wait after a failed creation is also at least this many times as long as that
    /// attempt took, so an initializer that fails slowly (e.g. at its deadline) keeps its
    /// thread busy at most about 1/(factor + 1) of the time.
    pub backoff_factor: u32,
}

impl PoolConfig {
    /// `size` VMs per thread in `isolation` mode, backing off 100 ms to 30 s after failures,
    /// and at least 10 times as long as the failed attempt took.
    pub fn new(isolation: Isolation, size: usize) -> Self {
        Self {
            isolation,
            size: size.max(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            backoff_factor: 10,
        }
    }
}
