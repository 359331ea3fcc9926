//! Per-thread VM pools.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use thread_local::ThreadLocal;

use crate::template::{Vm, VmTemplate};

/// A small number naming one thread's pool, unique within a [`VmPool`].
pub type ThreadId = u32;

/// Names one VM of one thread's pool: which thread, which slot, and which VM generation in
/// that slot (a poisoned VM's replacement has a new generation, so stale references to it fail
/// instead of reaching the wrong VM).
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
    /// Creating a VM failed (instantiation or initializer); the error says why. The pool backs
    /// off before it tries again.
    Init(wasmtime::Error),
    /// A recent creation failed and the pool is waiting before trying again.
    BackingOff,
    /// The VM named by a [`VmRef`] belongs to another thread.
    WrongThread,
    /// The VM named by a [`VmRef`] no longer exists (it was poisoned and replaced).
    Gone,
    /// This thread's pool is already in use further up the stack (a re-entrant call).
    Busy,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Init(e) => write!(f, "creating a VM failed: {e:#}"),
            PoolError::BackingOff => f.write_str("VM creation is backing off after a failure"),
            PoolError::WrongThread => f.write_str("the VM belongs to another thread"),
            PoolError::Gone => f.write_str("the VM was replaced"),
            PoolError::Busy => f.write_str("the thread's pool is in use (re-entrant call)"),
        }
    }
}

impl std::error::Error for PoolError {}

struct Slot<T: 'static> {
    generation: u64,
    vm: Option<Vm<T>>,
}

struct ThreadPool<T: 'static> {
    thread: ThreadId,
    slots: Vec<Slot<T>>,
    next: usize,
    failures: u32,
    retry_at: Option<Instant>,
}

/// One module's VMs, `size` per thread, each thread's VMs reachable only from that thread.
///
/// VMs are created lazily on the thread that first needs them. [`VmPool::with_any`] spreads
/// work across a thread's VMs round-robin; [`VmPool::with_vm`] returns to a VM named by a
/// [`VmRef`]. Neither takes a lock or an atomic read-modify-write once the thread's pool exists.
pub struct VmPool<T: Send + 'static> {
    template: Arc<VmTemplate<T>>,
    size: usize,
    threads: ThreadLocal<RefCell<ThreadPool<T>>>,
    next_thread: AtomicU32,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl<T: Send + 'static> VmPool<T> {
    /// A pool of `size` (at least 1) VMs per thread made from `template`.
    pub fn new(template: Arc<VmTemplate<T>>, size: usize) -> Self {
        Self { template, size: size.max(1), threads: ThreadLocal::new(), next_thread: AtomicU32::new(0) }
    }

    /// The template VMs are made from.
    pub fn template(&self) -> &Arc<VmTemplate<T>> {
        &self.template
    }

    fn thread_pool(&self) -> &RefCell<ThreadPool<T>> {
        self.threads.get_or(|| {
            RefCell::new(ThreadPool {
                thread: self.next_thread.fetch_add(1, Ordering::Relaxed),
                slots: (0..self.size).map(|_| Slot { generation: 0, vm: None }).collect(),
                next: 0,
                failures: 0,
                retry_at: None,
            })
        })
    }

    /// Runs `f` with one of this thread's VMs (the next one round-robin), creating it first if
    /// needed.
    pub fn with_any<R>(&self, f: impl FnOnce(VmRef, &mut Vm<T>) -> R) -> Result<R, PoolError> {
        let cell = self.thread_pool();
        let mut tp = cell.try_borrow_mut().map_err(|_| PoolError::Busy)?;
        let slot = tp.next;
        tp.next = (slot + 1) % tp.slots.len();
        if tp.slots[slot].vm.is_none() {
            self.fill(&mut tp, slot)?;
        }
        let r = VmRef { thread: tp.thread, slot: slot as u32, generation: tp.slots[slot].generation };
        let vm = tp.slots[slot].vm.as_mut().expect("filled above");
        Ok(f(r, vm))
    }

    /// Runs `f` with the VM named by `r`, if it still exists and belongs to this thread.
    pub fn with_vm<R>(&self, r: VmRef, f: impl FnOnce(&mut Vm<T>) -> R) -> Result<R, PoolError> {
        let cell = self.thread_pool();
        let mut tp = cell.try_borrow_mut().map_err(|_| PoolError::Busy)?;
        if tp.thread != r.thread {
            return Err(PoolError::WrongThread);
        }
        let slot = tp.slots.get_mut(r.slot as usize).ok_or(PoolError::Gone)?;
        match slot.vm.as_mut() {
            Some(vm) if slot.generation == r.generation => Ok(f(vm)),
            _ => Err(PoolError::Gone),
        }
    }

    /// Discards the VM named by `r` (after a trap, a deadline or the memory cap): it is never
    /// used again and a fresh one takes its slot on next use. A no-op if it is already gone or
    /// belongs to another thread.
    pub fn poison(&self, r: VmRef) {
        let cell = self.thread_pool();
        let Ok(mut tp) = cell.try_borrow_mut() else {
            return;
        };
        if tp.thread != r.thread {
            return;
        }
        if let Some(slot) = tp.slots.get_mut(r.slot as usize)
            && slot.generation == r.generation
        {
            slot.vm = None;
        }
    }

    /// This thread's pool id (creating the pool if needed).
    pub fn current_thread(&self) -> ThreadId {
        self.thread_pool().borrow().thread
    }

    fn fill(&self, tp: &mut ThreadPool<T>, slot: usize) -> Result<(), PoolError> {
        if let Some(at) = tp.retry_at
            && Instant::now() < at
        {
            return Err(PoolError::BackingOff);
        }
        match self.template.instantiate() {
            Ok(vm) => {
                let s = &mut tp.slots[slot];
                s.generation += 1;
                s.vm = Some(vm);
                tp.failures = 0;
                tp.retry_at = None;
                Ok(())
            }
            Err(e) => {
                tp.failures = tp.failures.saturating_add(1);
                let backoff = BACKOFF_MIN.saturating_mul(1 << tp.failures.min(16).saturating_sub(1)).min(BACKOFF_MAX);
                tp.retry_at = Some(Instant::now() + backoff);
                Err(PoolError::Init(e))
            }
        }
    }
}
