//! Per-thread VM pools.
//!
//! # Ownership
//!
//! Every VM is owned by exactly one place at a time, so no VM is ever reachable from two
//! threads and this module needs no `unsafe`:
//! - an idle VM (either mode) and every `shared`-mode VM is owned by its thread's pool
//!   inside a `RefCell` in a [`ThreadLocal`]: only that thread can reach it;
//! - a `transaction`-mode lease owns its [`Vm`] outright while leased (the VM was moved out of
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

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;
use thread_local::ThreadLocal;

use crate::template::{Vm, VmTemplate};

/// A small number naming one thread's pool, unique within a [`VmPool`] (a thread that exits
/// leaves its pool, VMs and number to the next thread that reuses its slot).
pub type ThreadId = u32;

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

/// How a [`VmPool`] behaves.
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
}

impl PoolConfig {
    /// `size` VMs per thread in `isolation` mode, backing off 100 ms to 30 s after failures.
    pub fn new(isolation: Isolation, size: usize) -> Self {
        Self {
            isolation,
            size: size.max(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}

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

/// Why no VM could be used.
#[derive(Debug)]
pub enum PoolError {
    /// Creating a VM failed (instantiation, e.g. a module over the memory cap, or the
    /// initializer). Returned for the first failure since the pool last created a VM
    /// successfully (on any thread), so it is reported once: log it. The thread backs off.
    Init(wasmtime::Error),
    /// VM creation failed recently and is backing off (or failed again; the failure is counted
    /// in [`ThreadStats::init_failures`] and not reported again).
    BackingOff,
    /// The VM belongs to another thread (a `Shared`-mode lease used off its thread).
    WrongThread,
    /// The VM no longer exists: it was poisoned (and possibly replaced).
    Gone,
    /// This thread's pool is already in use further up the stack (a re-entrant call).
    Busy,
    /// The call does not apply to this pool's [`Isolation`] mode.
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

enum Held<T: 'static> {
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
    poisoned: bool,
    /// The poisoning was already applied (and counted) at home.
    poison_applied: bool,
    held: Held<T>,
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
struct Returned<T: 'static> {
    poisoned: bool,
    /// Released on another thread (not merely deferred by a re-entrant release at home).
    foreign: bool,
    held: Held<T>,
}

/// One thread's counters: written only by the owning thread (relaxed load + store), readable
/// by any.
#[derive(Default)]
struct Counters {
    ready: AtomicU64,
    leased: AtomicU64,
    instantiations: AtomicU64,
    init_failures: AtomicU64,
    misses: AtomicU64,
    poisonings: AtomicU64,
    cross_thread_returns: AtomicU64,
}

fn set(c: &AtomicU64, v: u64) {
    c.store(v, Ordering::Relaxed);
}

fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

fn sub(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).saturating_sub(n), Ordering::Relaxed);
}

/// The part of a thread's pool other threads may reach: its returns queue and counters.
struct Home<T: 'static> {
    id: ThreadId,
    returns: SegQueue<Returned<T>>,
    counters: CachePadded<Counters>,
}

struct Slot<T: 'static> {
    generation: u64,
    vm: Option<Vm<T>>,
}

/// A thread's entry in the `ThreadLocal`: its id (readable while the pool is borrowed) and its
/// pool.
struct Local<T: 'static> {
    id: ThreadId,
    pool: RefCell<ThreadPool<T>>,
}

/// The part of a thread's pool only that thread reaches.
struct ThreadPool<T: 'static> {
    home: Arc<Home<T>>,
    /// `Shared` mode: the long-lived VMs.
    slots: Vec<Slot<T>>,
    next: usize,
    /// `Transaction` mode: ready VMs, never used.
    ready: Vec<Vm<T>>,
    failures: u32,
    retry_at: Option<Instant>,
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
        })
    }
}

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

    fn thread_pool(&self) -> &RefCell<ThreadPool<T>> {
        &self.local().pool
    }

    fn local(&self) -> &Local<T> {
        self.threads.get_or(|| {
            let mut homes = self.homes.write().unwrap_or_else(|e| e.into_inner());
            let home = Arc::new(Home {
                id: homes.len() as ThreadId,
                returns: SegQueue::new(),
                counters: CachePadded::new(Counters::default()),
            });
            homes.push(home.clone());
            let slots = match self.config.isolation {
                Isolation::Shared => (0..self.config.size).map(|_| Slot { generation: 0, vm: None }).collect(),
                Isolation::Transaction => Vec::new(),
            };
            CachePadded::new(Local {
                id: home.id,
                pool: RefCell::new(ThreadPool {
                    home,
                    slots,
                    next: 0,
                    ready: Vec::with_capacity(self.config.size),
                    failures: 0,
                    retry_at: None,
                }),
            })
        })
    }

    /// This thread's pool id (creating the pool if needed).
    pub fn current_thread(&self) -> ThreadId {
        self.local().id
    }

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

    /// Marks the leased VM as poisoned (its guest trapped, hit its deadline or its memory
    /// cap): it is never used or leased again and will be replaced. In `Shared` mode on its
    /// home thread the VM is dropped at once, so every other context in it fails with
    /// [`PoolError::Gone`]; on another thread that happens when the lease gets home.
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
        Refill { created, ready: Self::ready_count(tp), error }
    }

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
                    }
                })
                .collect(),
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
                set(&tp.home.counters.ready, Self::ready_count(tp) as u64);
                true
            }
            _ => false,
        }
    }

    fn ready_count(tp: &ThreadPool<T>) -> usize {
        match tp.slots.is_empty() {
            true => tp.ready.len(),
            false => tp.slots.iter().filter(|s| s.vm.is_some()).count(),
        }
    }

    fn drain(&self, tp: &mut ThreadPool<T>) -> usize {
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
            // Dropping the VM returns its slot to the pooling allocator, which resets it.
            Held::Owned(vm) => {
                drop(vm);
                if back.poisoned {
                    add(&c.poisonings, 1);
                }
            }
            Held::Shared(r) => {
                if back.poisoned
                    && let Some(slot) = tp.slots.get_mut(r.slot as usize)
                    && slot.generation == r.generation
                    && slot.vm.take().is_some()
                {
                    add(&tp.home.counters.poisonings, 1);
                    set(&tp.home.counters.ready, Self::ready_count(tp) as u64);
                }
            }
        }
    }

    fn fill_slot(&self, tp: &mut ThreadPool<T>, i: usize) -> Result<(), PoolError> {
        let vm = self.create(tp)?;
        let s = &mut tp.slots[i];
        s.generation += 1;
        s.vm = Some(vm);
        set(&tp.home.counters.ready, Self::ready_count(tp) as u64);
        Ok(())
    }

    /// Creates a ready VM, honouring and updating this thread's backoff.
    fn create(&self, tp: &mut ThreadPool<T>) -> Result<Vm<T>, PoolError> {
        if let Some(at) = tp.retry_at
            && Instant::now() < at
        {
            return Err(PoolError::BackingOff);
        }
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
                let backoff = self.config.backoff_min.saturating_mul(1 << doublings).min(self.config.backoff_max);
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
