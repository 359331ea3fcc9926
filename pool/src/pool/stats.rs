//! Counters: each thread's live counters ([`Counters`], written only by that thread with a
//! relaxed load and store, never a read-modify-write) and the snapshots any thread can take
//! ([`ThreadStats`], [`PoolStats`]).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use super::VmPool;
use super::thread::ThreadId;

/// One thread's counters: written only by the owning thread (relaxed load + store), readable
/// by any.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) ready: AtomicU64,
    pub(super) leased: AtomicU64,
    pub(super) instantiations: AtomicU64,
    pub(super) init_failures: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) poisonings: AtomicU64,
    pub(super) cross_thread_returns: AtomicU64,
    pub(super) recycled: AtomicU64,
}

/// Sets an owner-written counter.
pub(super) fn set(c: &AtomicU64, v: u64) {
    c.store(v, Ordering::Relaxed);
}

/// Adds to an owner-written counter (a load and a store: only the owner writes it).
pub(super) fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Subtracts from an owner-written counter, stopping at 0.
pub(super) fn sub(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).saturating_sub(n), Ordering::Relaxed);
}

/// A snapshot of one thread's counters (see [`VmPool::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStats {
    /// The thread's pool.
    pub thread: ThreadId,
    /// VMs ready to lease: live VMs in `Shared` mode, unused reserve VMs in `Transaction` mode.
    pub ready: u64,
    /// Leases out (not yet settled at home; a lease released on another thread counts until
    /// the owner drains its queue).
    pub leased: u64,
    /// VMs created successfully (instantiated and initialized).
    pub instantiations: u64,
    /// Failed VM creations (instantiation or initializer).
    pub init_failures: u64,
    /// Leases that found no ready VM and created one on the request path.
    pub misses: u64,
    /// VMs poisoned (trap, deadline, memory cap) and never leased again.
    pub poisonings: u64,
    /// Leases released on another thread and sent home.
    pub cross_thread_returns: u64,
    /// `Transaction`-mode VMs put back into a ready VM's state after their transaction
    /// instead of being dropped (a recycling template, see [`crate::recycle`]).
    pub recycled: u64,
}

/// Counters of every thread of a pool.
#[derive(Clone, Debug, Default)]
pub struct PoolStats {
    /// One entry per thread that has used the pool, by [`ThreadId`].
    pub threads: Vec<ThreadStats>,
}

impl PoolStats {
    /// The sum over all threads (`thread` is 0).
    pub fn total(&self) -> ThreadStats {
        self.threads.iter().fold(ThreadStats::default(), |a, t| ThreadStats {
            thread: 0,
            ready: a.ready + t.ready,
            leased: a.leased + t.leased,
            instantiations: a.instantiations + t.instantiations,
            init_failures: a.init_failures + t.init_failures,
            misses: a.misses + t.misses,
            poisonings: a.poisonings + t.poisonings,
            cross_thread_returns: a.cross_thread_returns + t.cross_thread_returns,
            recycled: a.recycled + t.recycled,
        })
    }
}

impl<T: Send + 'static> VmPool<T> {
    /// Counters of every thread that has used this pool; callable from any thread.
    pub fn stats(&self) -> PoolStats {
        let homes = self.homes.read().unwrap_or_else(|e| e.into_inner());
        PoolStats {
            threads: homes
                .iter()
                .map(|h| {
                    let c = &h.counters;
                    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                    ThreadStats {
                        thread: h.id,
                        ready: l(&c.ready),
                        leased: l(&c.leased),
                        instantiations: l(&c.instantiations),
                        init_failures: l(&c.init_failures),
                        misses: l(&c.misses),
                        poisonings: l(&c.poisonings),
                        cross_thread_returns: l(&c.cross_thread_returns),
                        recycled: l(&c.recycled),
                    }
                })
                .collect(),
        }
    }
}
