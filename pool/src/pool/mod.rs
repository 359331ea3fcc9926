//! Per-thread VM pools.
//!
//! One room per concern: the configuration ([`config`]: [`Isolation`], [`PoolConfig`]), what
//! can go wrong ([`error`]), the per-thread pool and how a thread gets one ([`thread`]),
//! leasing and returning ([`lease`]), making VMs ([`refill`]), discarding them ([`poison`]) and
//! the last look at them ([`retire`]),
//! and the counters ([`stats`]). [`VmPool`] itself, defined here, is what they all share.
//!
//! # Ownership
//!
//! Every VM is owned by exactly one place at a time, so no VM is ever reachable from two
//! threads and this module needs no `unsafe`:
//! - an idle VM (either mode) and every `shared`-mode VM is owned by its thread's pool
//!   inside a `RefCell` in a [`ThreadLocal`]: only that thread can reach it;
//! - a `transaction`-mode lease owns its [`Vm`](crate::Vm) outright while leased (the VM was moved out of
//!   the pool), so it may be used on whichever thread holds the lease;
//! - a lease released on a foreign thread is moved into its home thread's returns queue (a `SegQueue`) and
//!   settled by the owner on its next [`VmPool::lease`], [`VmPool::refill`] or
//!   [`VmPool::drain_returns`].
//!
//! # Counters
//!
//! Each thread's counters are `AtomicU64`s written only by the owning thread, with a relaxed
//! load followed by a relaxed store (no read-modify-write, so no locked instruction on the
//! lease path), and read by any thread (e.g. a metrics exporter) through [`VmPool::stats`]. A
//! reader may see a value a few operations old, never a torn one.
#![forbid(unsafe_code)]

mod config;
mod error;
mod lease;
mod poison;
mod refill;
mod retire;
mod stats;
mod thread;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use crossbeam_utils::CachePadded;
use thread_local::ThreadLocal;

use crate::template::VmTemplate;
use thread::{Home, Local};

pub use config::{Isolation, PoolConfig};
pub use error::PoolError;
pub use lease::{LeasedVm, VmRef};
pub use refill::Refill;
pub use stats::{PoolStats, ThreadStats};
pub use thread::ThreadId;

/// One module's VMs, kept per thread, in one [`Isolation`] mode.
///
/// Each thread has its own pool, created on first use; `lease`, `with_leased` and `release` on
/// the owning thread take no lock and do no atomic read-modify-write once it exists (the
/// returns queue is checked with plain loads). VMs are created only by [`VmPool::refill`] (off
/// the request path) or on demand when a lease finds none ready (a miss).
pub struct VmPool<T: Send + 'static> {
    template: Arc<VmTemplate<T>>,
    config: PoolConfig,
    /// Padded so that threads never write to one cache line (the `RefCell` flags).
    threads: ThreadLocal<CachePadded<Local<T>>>,
    homes: RwLock<Vec<Arc<Home<T>>>>,
    /// A creation failure was reported and none succeeded since.
    failing: AtomicBool,
}

impl<T: Send + 'static> VmPool<T> {
    /// A `Shared`-mode pool of `size` (at least 1) VMs per thread made from `template`.
    pub fn new(template: Arc<VmTemplate<T>>, size: usize) -> Self {
        Self::with_config(template, PoolConfig::new(Isolation::Shared, size))
    }

    /// A pool behaving as `config` says.
    pub fn with_config(template: Arc<VmTemplate<T>>, mut config: PoolConfig) -> Self {
        config.size = config.size.max(1);
        Self {
            template,
            config,
            threads: ThreadLocal::new(),
            homes: RwLock::new(Vec::new()),
            failing: AtomicBool::new(false),
        }
    }

    /// The template VMs are made from.
    pub fn template(&self) -> &Arc<VmTemplate<T>> {
        &self.template
    }

    /// The configuration the pool was made with (`size` at least 1).
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }
}
