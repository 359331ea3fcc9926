//! Making ready VMs: [`VmPool::refill`] off the request path, and the one creation routine a
//! lease that finds no ready VM (a miss) also uses, with its per-thread backoff and the
//! pool-wide "report a failure once" flag.
#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::VmPool;
use super::config::Isolation;
use super::error::PoolError;
use super::stats::{add, set};
use super::thread::ThreadPool;
use crate::template::Vm;

/// What [`VmPool::refill`] did.
#[derive(Debug)]
pub struct Refill {
    /// VMs created.
    pub created: usize,
    /// Ready VMs on this thread afterwards.
    pub ready: usize,
    /// Why it stopped before reaching the pool size, if creation failed or is backing off
    /// ([`PoolError::Init`] is reported once, as from [`VmPool::lease`]).
    pub error: Option<PoolError>,
}

impl<T: Send + 'static> VmPool<T> {
    /// Brings this thread's ready VMs back towards the pool size, creating at most `max`
    /// (`Shared`: fills empty or poisoned slots; `Transaction`: tops up the reserve). Call it
    /// off the request path (an idle point, a scheduled continuation). Also settles leases sent
    /// home. Respects the creation backoff.
    pub fn refill(&self, max: usize) -> Refill {
        let Ok(mut tp) = self.thread_pool().try_borrow_mut() else {
            return Refill { created: 0, ready: 0, error: Some(PoolError::Busy) };
        };
        let tp = &mut *tp;
        self.drain(tp);
        let mut created = 0;
        let mut error = None;
        while created < max {
            let r = match self.config.isolation {
                Isolation::Shared => match tp.slots.iter().position(|s| s.vm.is_none()) {
                    Some(i) => self.fill_slot(tp, i),
                    None => break,
                },
                Isolation::Transaction if tp.ready.len() < self.config.size => self.create(tp).map(|vm| {
                    tp.ready.push(vm);
                    set(&tp.home.counters.ready, tp.ready.len() as u64);
                }),
                Isolation::Transaction => break,
            };
            match r {
                Ok(()) => created += 1,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        Refill { created, ready: tp.ready_count(), error }
    }

    /// Puts a new VM (a new generation) into `Shared`-mode slot `i`.
    pub(super) fn fill_slot(&self, tp: &mut ThreadPool<T>, i: usize) -> Result<(), PoolError> {
        let vm = self.create(tp)?;
        let s = &mut tp.slots[i];
        s.generation += 1;
        s.vm = Some(vm);
        set(&tp.home.counters.ready, tp.ready_count() as u64);
        Ok(())
    }

    /// Creates a ready VM, honouring and updating this thread's backoff (used by refills and by
    /// leases that miss alike, so a failing filter is not retried per transaction).
    pub(super) fn create(&self, tp: &mut ThreadPool<T>) -> Result<Vm<T>, PoolError> {
        if let Some(at) = tp.retry_at
            && Instant::now() < at
        {
            return Err(PoolError::BackingOff);
        }
        let started = Instant::now();
        match self.template.instantiate() {
            Ok(vm) => {
                add(&tp.home.counters.instantiations, 1);
                tp.failures = 0;
                tp.retry_at = None;
                if self.failing.load(Ordering::Relaxed) {
                    self.failing.store(false, Ordering::Relaxed);
                }
                Ok(vm)
            }
            Err(e) => {
                add(&tp.home.counters.init_failures, 1);
                tp.failures = tp.failures.saturating_add(1);
                let doublings = tp.failures.saturating_sub(1).min(20);
                let exponential = self.config.backoff_min.saturating_mul(1 << doublings);
                let slow = started.elapsed().saturating_mul(self.config.backoff_factor);
                let backoff = exponential.max(slow).min(self.config.backoff_max);
                tp.retry_at = Some(Instant::now() + backoff);
                // Slow path: one swap per failure decides who reports it.
                if self.failing.swap(true, Ordering::Relaxed) {
                    Err(PoolError::BackingOff)
                } else {
                    Err(PoolError::Init(e))
                }
            }
        }
    }
}
