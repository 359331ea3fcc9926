//! Per-thread delivery: the work a net thread does for its own VMs outside any one
//! transaction's hooks — tick timers, the shared-queue mailbox, and the list of transactions
//! that own VMs (`transaction` isolation), through which queue notices reach those VMs.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::sync::Mutex;

use ats_wasm_pool::VmPool;

use super::backend::AtsBackend;
use super::diags::one_line;
use super::failure::failure_kind;
use super::filter::Filter;
use super::live::TxnId;
use super::{PLUGIN, Plugin};
use crate::abi::{HostState, QueueTarget, guest};
use crate::ts::hooks::{EventThread, TimerHandler, every_on_this_thread};
use crate::ts::log;
use crate::ts::txn::Txn;

thread_local! {
    /// Which filters' timers run on this thread.
    static TIMERS_STARTED: RefCell<Vec<bool>> = const { RefCell::new(Vec::new()) };
    /// This thread's index in [`THREADS`], once registered.
    static THREAD_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
    /// Open transactions of this thread with contexts in VMs of their own (`transaction`
    /// isolation): queue notifications for those VMs are delivered through them.
    static OWN_VM_TXNS: RefCell<Vec<TxnId>> = const { RefCell::new(Vec::new()) };
}

/// The net threads that have run transactions (and so may own VMs), each with its mailbox of
/// shared-queue notifications not yet delivered.
static THREADS: Mutex<Vec<(EventThread, Vec<QueueTarget>)>> = Mutex::new(Vec::new());

fn threads() -> std::sync::MutexGuard<'static, Vec<(EventThread, Vec<QueueTarget>)>> {
    THREADS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records the current net thread (once) so shared-queue notifications can reach its VMs.
fn register_thread() {
    if THREAD_INDEX.with(Cell::get).is_some() {
        return;
    }
    if let Some(t) = EventThread::current() {
        let mut all = threads();
        all.push((t, Vec::new()));
        THREAD_INDEX.with(|i| i.set(Some(all.len() - 1)));
    }
}

/// An item was enqueued on a shared queue: the VM that registered it may live on any thread,
/// so the notification goes to every known net thread's mailbox, and each thread delivers it
/// to its own VMs (the registering VM is on exactly one of them).
pub(super) fn notify_queue(target: QueueTarget) {
    let mut all = threads();
    for (i, (thread, mailbox)) in all.iter_mut().enumerate() {
        let was_empty = mailbox.is_empty();
        mailbox.push(target);
        if was_empty && !thread.run_once::<QueueDelivery>(i) {
            mailbox.clear();
        }
    }
}

/// `txn` has contexts in VMs of its own: queue notices for them go through it while it is open.
pub(super) fn own_vms_opened(txn: Txn) {
    let id = TxnId::of(txn);
    OWN_VM_TXNS.with(|t| {
        let mut t = t.borrow_mut();
        if !t.contains(&id) {
            t.push(id);
        }
    });
}

/// `txn` is closing: it no longer reaches VMs.
pub(super) fn own_vms_closed(txn: Txn) {
    OWN_VM_TXNS.with(|t| {
        let mut t = t.borrow_mut();
        if let Some(i) = t.iter().position(|x| x.names(txn)) {
            t.swap_remove(i);
        }
    });
}

/// Delivers a thread's mailbox of shared-queue notifications; the data is the thread index.
struct QueueDelivery;

impl TimerHandler for QueueDelivery {
    fn on_timer(thread: usize) {
        let targets = match threads().get_mut(thread) {
            Some((_, mailbox)) => std::mem::take(mailbox),
            None => return,
        };
        if let Some(p) = PLUGIN.get() {
            p.deliver_queue_ready(&targets);
        }
    }
}

/// The per-thread tick timers; the timer data is the filter's index.
struct Timers;

impl TimerHandler for Timers {
    fn on_timer(filter: usize) {
        if let Some(p) = PLUGIN.get() {
            p.tick(filter);
        }
    }
}

/// Runs `proxy_on_queue_ready` in `vm` for each of `targets` that names it; stops at the first
/// failure.
fn queue_ready_in(vm: &mut guest::ProxyVm<AtsBackend>, targets: &[QueueTarget]) -> wasmtime::Result<()> {
    let uid = vm.store.data().vm_uid();
    for t in targets.iter().filter(|t| t.vm == uid) {
        guest::on_queue_ready(vm, t.context_id, t.queue_id)?;
    }
    Ok(())
}

impl Plugin {
    /// Starts this thread's timers for the filters whose modules asked for ticks (once per
    /// thread and filter).
    pub(super) fn ensure_timers(&self) {
        register_thread();
        TIMERS_STARTED.with(|started| {
            let mut started = started.borrow_mut();
            if started.len() == self.filters.len() {
                return;
            }
            started.resize(self.filters.len(), false);
            for (i, f) in self.filters.iter().enumerate() {
                if let Some(period) = f.tick_period
                    && !started[i]
                {
                    started[i] = true;
                    if !every_on_this_thread::<Timers>(period, i) {
                        log::error(format!("ats_wasm: filter \"{}\": cannot start its timer", f.name).as_bytes());
                    }
                }
            }
        });
    }

    /// One tick of filter `i` on this thread: `proxy_on_tick` of every VM of this thread that
    /// asked for ticks, then what those ticks asked for.
    fn tick(&self, i: usize) {
        let Some(f) = self.filters.get(i) else { return };
        let pool = f.tick_pool.as_ref().unwrap_or(&f.pool);
        if f.tick_pool.is_some() {
            pool.refill(1);
        }
        self.run_in_local_vms(f, pool, "proxy_on_tick", |vm| {
            if vm.store.data().tick_period().is_some() { guest::on_tick(vm) } else { Ok(()) }
        });
        self.apply_deferred();
    }

    /// Runs `callback` (named `what` for diags.log) in each of this thread's VMs of `pool`, a
    /// pool of filter `f`, and applies what each asked for; a VM where it fails is poisoned
    /// (replaced on refill), counted and reported in one line.
    pub(super) fn run_in_local_vms(
        &self,
        f: &Filter,
        pool: &VmPool<HostState<AtsBackend>>,
        what: &str,
        mut callback: impl FnMut(&mut guest::ProxyVm<AtsBackend>) -> wasmtime::Result<()>,
    ) {
        let mut failed = Vec::new();
        let mut asked = Vec::new();
        pool.for_each_local(|r, vm| {
            let result = callback(vm);
            asked.push(vm.store.data_mut().backend.take_outbox());
            if let Err(e) = result {
                failed.push((r, failure_kind(&e, vm.store.data().memory_refused(), None, self.max_memory_bytes), e));
            }
        });
        for outbox in asked {
            self.settle(None, outbox);
        }
        for (r, reason, e) in failed {
            pool.poison(r);
            f.metrics.callback_failed(reason);
            if let Some(more) = f.metrics.failure_line(Some(reason)) {
                let (why, e) = (reason.describe(), one_line(&e));
                let line =
                    format!("ats_wasm: filter \"{}\": {what} ({why}) failed: {e}; the VM is replaced{more}", f.name);
                log::error(line.as_bytes());
            }
        }
    }

    /// Runs `proxy_on_queue_ready` in this thread's VMs that registered the queues of
    /// `targets` (shared VMs and per-thread root VMs; a VM that is gone misses it, and the
    /// item stays queued).
    fn deliver_queue_ready(&self, targets: &[QueueTarget]) {
        for f in &self.filters {
            for pool in [Some(&f.pool), f.tick_pool.as_ref()].into_iter().flatten() {
                self.run_in_local_vms(f, pool, "proxy_on_queue_ready", |vm| queue_ready_in(vm, targets));
            }
        }
        // VMs that belong to a transaction (`transaction` isolation) are in no pool.
        let txns: Vec<Txn> = OWN_VM_TXNS.with(|t| t.borrow().iter().filter_map(|id| id.txn()).collect());
        for txn in txns {
            self.slot.with(txn, |state| {
                let mut i = 0;
                while i < state.contexts.len() {
                    let fc = &mut state.contexts[i];
                    let f = &self.filters[fc.filter];
                    if !f.owns_vms() {
                        // A shared VM: reached through its pool above.
                        i += 1;
                        continue;
                    }
                    let r = f.pool.with_leased(&mut fc.lease, |vm| {
                        (queue_ready_in(vm, targets), vm.store.data_mut().backend.take_outbox())
                    });
                    match r {
                        Ok((result, outbox)) => {
                            self.settle(None, outbox);
                            if let Err(e) = result {
                                let fc = state.contexts.remove(i);
                                self.guest_failed(f, fc.lease, "proxy_on_queue_ready", &e);
                            } else {
                                i += 1;
                            }
                        }
                        Err(_) => i += 1,
                    }
                }
            });
        }
        self.apply_deferred();
    }
}
