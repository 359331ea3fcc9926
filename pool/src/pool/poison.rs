//! Discarding a VM whose guest trapped, hit its deadline or its memory cap: it is never used
//! or leased again, and [`VmPool::refill`] (or the next lease that misses) replaces it.
#![forbid(unsafe_code)]

use super::VmPool;
use super::lease::{Held, LeasedVm, VmRef};
use super::stats::{add, set};

impl<T: Send + 'static> VmPool<T> {
    /// Marks the leased VM as poisoned (its guest trapped, hit its deadline or its memory
    /// cap): it is never used or leased again and will be replaced. In `Shared` mode on its
    /// home thread the VM is dropped at once, so every other context in it fails with
    /// [`PoolError::Gone`](super::PoolError::Gone); on another thread that happens when the
    /// lease gets home.
    pub fn poison_leased(&self, lease: &mut LeasedVm<T>) {
        if lease.poisoned {
            return;
        }
        lease.poisoned = true;
        if let Held::Shared(r) = lease.held {
            // On the home thread the VM goes at once; elsewhere when the lease gets home.
            lease.poison_applied = self.poison_shared(r);
        }
    }

    /// Discards the `Shared`-mode VM named by `r` (after a trap, a deadline or the memory
    /// cap): it is never used again and a fresh one takes its slot. A no-op if it is already
    /// gone or belongs to another thread.
    pub fn poison(&self, r: VmRef) {
        self.poison_shared(r);
    }

    /// Drops the VM named by `r` if this thread owns it; true if it did.
    fn poison_shared(&self, r: VmRef) -> bool {
        let Some(local) = self.threads.get() else { return false };
        if local.id != r.thread {
            return false;
        }
        let Ok(mut tp) = local.pool.try_borrow_mut() else { return false };
        let tp = &mut *tp;
        match tp.slots.get_mut(r.slot as usize) {
            Some(slot) if slot.generation == r.generation && slot.vm.is_some() => {
                slot.vm = None;
                add(&tp.home.counters.poisonings, 1);
                set(&tp.home.counters.ready, tp.ready_count() as u64);
                true
            }
            _ => false,
        }
    }
}
