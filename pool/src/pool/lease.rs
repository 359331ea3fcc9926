//! Leasing a VM, using it, and giving it back: the request path. On the owning thread none of
//! this takes a lock or does an atomic read-modify-write; a lease released on another thread
//! travels home through the owner's returns queue and is settled there.
#![forbid(unsafe_code)]

use super::VmPool;
use super::config::Isolation;
use super::error::PoolError;
use super::stats::{add, set, sub};
use super::thread::{ThreadId, ThreadPool};
use crate::template::Vm;

/// Names one `Shared`-mode VM of one thread's pool: which thread, which slot, and which VM
/// generation in that slot (a poisoned VM's replacement has a new generation, so stale
/// references to it fail instead of reaching the wrong VM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmRef {
    /// The owning thread's pool.
    pub thread: ThreadId,
    /// Slot within that pool.
    pub slot: u32,
    /// Generation of the VM in that slot.
    pub generation: u64,
}

pub(super) enum Held<T: 'static> {
    /// A `Shared`-mode VM staying in its thread's pool.
    Shared(VmRef),
    /// A `Transaction`-mode VM owned by the lease.
    Owned(Vm<T>),
}

/// A VM leased for one transaction. Get it with [`VmPool::lease`], use it with
/// [`VmPool::with_leased`], give it back with [`VmPool::release`] (on any thread).
///
/// In `Transaction` mode it owns its VM exclusively; in `Shared` mode it names a VM that stays
/// in its thread's pool. Either way no two threads can use one VM at once. Dropping a lease
/// without releasing it drops a `Transaction` VM on the spot but leaves the owner's `leased`
/// counter one too high: always release.
#[must_use = "release the lease with VmPool::release"]
pub struct LeasedVm<T: 'static> {
    home: ThreadId,
    pub(super) poisoned: bool,
    /// The poisoning was already applied (and counted) at home.
    pub(super) poison_applied: bool,
    pub(super) held: Held<T>,
}

impl<T: 'static> LeasedVm<T> {
    /// The thread whose pool the VM came from (and to which it returns).
    pub fn home(&self) -> ThreadId {
        self.home
    }

    /// The VM this lease names in `Shared` mode; `None` in `Transaction` mode.
    pub fn vm_ref(&self) -> Option<VmRef> {
        match &self.held {
            Held::Shared(r) => Some(*r),
            Held::Owned(_) => None,
        }
    }

    /// Whether [`VmPool::poison_leased`] was called on this lease.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }
}

/// What a lease sends home when released elsewhere.
pub(super) struct Returned<T: 'static> {
    pub(super) poisoned: bool,
    /// Released on another thread (not merely deferred by a re-entrant release at home).
    foreign: bool,
    pub(super) held: Held<T>,
}

impl<T: Send + 'static> VmPool<T> {
    /// Leases a VM on this thread.
    ///
    /// `Shared`: the next ready VM round-robin (it stays in the pool). `Transaction`: a ready,
    /// never-used VM, moved into the lease. When none is ready, one is created on the spot and
    /// counted as a miss; that creation can fail ([`PoolError::Init`] once, then
    /// [`PoolError::BackingOff`]). First settles leases sent home by other threads.
    pub fn lease(&self) -> Result<LeasedVm<T>, PoolError> {
        let mut tp = self.thread_pool().try_borrow_mut().map_err(|_| PoolError::Busy)?;
        let tp = &mut *tp;
        if !tp.home.returns.is_empty() {
            self.drain(tp);
        }
        let home = tp.home.id;
        let held = match self.config.isolation {
            Isolation::Shared => {
                let n = tp.slots.len();
                let found = (0..n).map(|i| (tp.next + i) % n).find(|&i| tp.slots[i].vm.is_some());
                let slot = match found {
                    Some(i) => i,
                    None => {
                        let i = tp.next % n;
                        add(&tp.home.counters.misses, 1);
                        self.fill_slot(tp, i)?;
                        i
                    }
                };
                tp.next = (slot + 1) % n;
                Held::Shared(VmRef { thread: home, slot: slot as u32, generation: tp.slots[slot].generation })
            }
            Isolation::Transaction => match tp.ready.pop() {
                Some(vm) => {
                    set(&tp.home.counters.ready, tp.ready.len() as u64);
                    Held::Owned(vm)
                }
                None => {
                    add(&tp.home.counters.misses, 1);
                    Held::Owned(self.create(tp)?)
                }
            },
        };
        add(&tp.home.counters.leased, 1);
        Ok(LeasedVm { home, poisoned: false, poison_applied: false, held })
    }

    /// Runs `f` with the leased VM. `Transaction` leases work on any thread; `Shared` leases
    /// only on their home thread ([`PoolError::WrongThread`]). A poisoned VM is never handed
    /// out again: [`PoolError::Gone`].
    pub fn with_leased<R>(&self, lease: &mut LeasedVm<T>, f: impl FnOnce(&mut Vm<T>) -> R) -> Result<R, PoolError> {
        if lease.poisoned {
            return Err(PoolError::Gone);
        }
        match &mut lease.held {
            Held::Owned(vm) => Ok(f(vm)),
            Held::Shared(r) => self.with_vm(*r, f),
        }
    }

    /// Gives a lease back. On its home thread it is settled at once (a `Transaction` VM is
    /// dropped, which resets its pooling-allocator slot); on any other thread it is queued for
    /// its owner, who settles it later (counted as a cross-thread return).
    pub fn release(&self, lease: LeasedVm<T>) {
        let poisoned = lease.poisoned && !lease.poison_applied;
        let (home, held) = (lease.home, lease.held);
        match self.threads.get() {
            Some(local) if local.id == home => match local.pool.try_borrow_mut() {
                Ok(mut tp) => self.settle(&mut tp, Returned { poisoned, foreign: false, held }),
                // A re-entrant release at home: queue it for the owner (itself), not foreign.
                Err(_) => self.send_home(home, Returned { poisoned, foreign: false, held }),
            },
            _ => self.send_home(home, Returned { poisoned, foreign: true, held }),
        }
    }

    fn send_home(&self, home: ThreadId, back: Returned<T>) {
        let homes = self.homes.read().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = homes.get(home as usize) {
            h.returns.push(back);
        }
    }

    /// Settles the leases other threads sent home to this thread; returns how many.
    pub fn drain_returns(&self) -> usize {
        match self.thread_pool().try_borrow_mut() {
            Ok(mut tp) => self.drain(&mut tp),
            Err(_) => 0,
        }
    }

    /// Runs `f` with the `Shared`-mode VM named by `r`, if it still exists and belongs to this
    /// thread.
    pub fn with_vm<R>(&self, r: VmRef, f: impl FnOnce(&mut Vm<T>) -> R) -> Result<R, PoolError> {
        let local = self.threads.get().ok_or(PoolError::WrongThread)?;
        if local.id != r.thread {
            return Err(PoolError::WrongThread);
        }
        let mut tp = local.pool.try_borrow_mut().map_err(|_| PoolError::Busy)?;
        let slot = tp.slots.get_mut(r.slot as usize).ok_or(PoolError::Gone)?;
        match slot.vm.as_mut() {
            Some(vm) if slot.generation == r.generation => Ok(f(vm)),
            _ => Err(PoolError::Gone),
        }
    }

    /// Runs `f` with each of this thread's live `Shared`-mode VMs (for work that belongs to the
    /// VM rather than a transaction: timers, queue notifications). Returns how many it visited;
    /// 0 in `Transaction` mode or when the pool is in use further up the stack.
    pub fn for_each_local(&self, mut f: impl FnMut(VmRef, &mut Vm<T>)) -> usize {
        let Some(local) = self.threads.get() else { return 0 };
        let Ok(mut tp) = local.pool.try_borrow_mut() else { return 0 };
        let id = local.id;
        let mut n = 0;
        for (i, slot) in tp.slots.iter_mut().enumerate() {
            if let Some(vm) = slot.vm.as_mut() {
                f(VmRef { thread: id, slot: i as u32, generation: slot.generation }, vm);
                n += 1;
            }
        }
        n
    }

    pub(super) fn drain(&self, tp: &mut ThreadPool<T>) -> usize {
        let mut n = 0;
        while let Some(back) = tp.home.returns.pop() {
            self.settle(tp, back);
            n += 1;
        }
        n
    }

    /// Accounts for a returned lease on its home thread.
    fn settle(&self, tp: &mut ThreadPool<T>, back: Returned<T>) {
        let c = &tp.home.counters;
        sub(&c.leased, 1);
        if back.foreign {
            add(&c.cross_thread_returns, 1);
        }
        match back.held {
            // A VM of a recycling template goes back to the ready VMs when the reserve has room
            // and the recycler put it back into a ready VM's state; else dropping it returns its
            // slot to the pooling allocator, which resets it.
            Held::Owned(mut vm) => {
                if back.poisoned {
                    drop(vm);
                    add(&c.poisonings, 1);
                } else if tp.ready.len() < self.config.size && self.template.recycle(&mut vm) {
                    add(&c.recycled, 1);
                    tp.ready.push(vm);
                    set(&c.ready, tp.ready.len() as u64);
                } else {
                    drop(vm);
                }
            }
            Held::Shared(r) => {
                if back.poisoned
                    && let Some(slot) = tp.slots.get_mut(r.slot as usize)
                    && slot.generation == r.generation
                    && slot.vm.take().is_some()
                {
                    add(&tp.home.counters.poisonings, 1);
                    set(&tp.home.counters.ready, tp.ready_count() as u64);
                }
            }
        }
    }
}
