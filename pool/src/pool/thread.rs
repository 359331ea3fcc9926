//! One thread's pool: the part only that thread reaches ([`ThreadPool`], in a `RefCell` in the
//! pool's `ThreadLocal`) and the part other threads may reach ([`Home`]: returns queue and
//! counters), created on the thread's first use of the pool.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;

use super::VmPool;
use super::config::Isolation;
use super::lease::Returned;
use super::stats::Counters;
use crate::template::Vm;

/// A small number naming one thread's pool, unique within a [`VmPool`] (a thread that exits
/// leaves its pool, VMs and number to the next thread that reuses its slot).
pub type ThreadId = u32;

/// The part of a thread's pool other threads may reach: its returns queue and counters.
pub(super) struct Home<T: 'static> {
    pub(super) id: ThreadId,
    pub(super) returns: SegQueue<Returned<T>>,
    pub(super) counters: CachePadded<Counters>,
}

/// One `Shared`-mode VM place; `generation` counts the VMs that have filled it.
pub(super) struct Slot<T: 'static> {
    pub(super) generation: u64,
    pub(super) vm: Option<Vm<T>>,
}

/// A thread's entry in the `ThreadLocal`: its id (readable while the pool is borrowed) and its
/// pool.
pub(super) struct Local<T: 'static> {
    pub(super) id: ThreadId,
    pub(super) pool: RefCell<ThreadPool<T>>,
}

/// The part of a thread's pool only that thread reaches.
pub(super) struct ThreadPool<T: 'static> {
    pub(super) home: Arc<Home<T>>,
    /// `Shared` mode: the long-lived VMs.
    pub(super) slots: Vec<Slot<T>>,
    pub(super) next: usize,
    /// `Transaction` mode: ready VMs, never used.
    pub(super) ready: Vec<Vm<T>>,
    pub(super) failures: u32,
    pub(super) retry_at: Option<Instant>,
}

impl<T: 'static> ThreadPool<T> {
    /// VMs ready to lease: live slots in `Shared` mode, the reserve in `Transaction` mode.
    pub(super) fn ready_count(&self) -> usize {
        match self.slots.is_empty() {
            true => self.ready.len(),
            false => self.slots.iter().filter(|s| s.vm.is_some()).count(),
        }
    }
}

impl<T: Send + 'static> VmPool<T> {
    pub(super) fn thread_pool(&self) -> &RefCell<ThreadPool<T>> {
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
}
