//! Per-thread delivery: the work a net thread does for its own VMs outside any one
//! transaction's hooks — adopting a new generation ([`pin`], [`adopt_everywhere`]), tick
//! timers, the shared-queue mailbox, and the list of transactions that own VMs
//! (`transaction` isolation), through which queue notices reach those VMs.
//!
//! Ticks: each thread runs one timer per filter of its generation that asked for ticks, as a
//! chain of one-shot timers, so each next delay can be chosen: the period after a tick that
//! succeeded, an exponential backoff (1 s, 2 s, 4 s … 60 s, never less than the period) after
//! ticks that failed in a row. A timer whose generation is no longer the thread's stops.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ats_wasm_pool::VmPool;

use super::backend::AtsBackend;
use super::diags::one_line;
use super::failure::failure_kind;
use super::filter::Filter;
use super::generation::{self, Generation, Pinned};
use super::live::TxnId;
use super::{PLUGIN, Plugin};
use crate::abi::{HostState, QueueTarget, guest};
use crate::ts::control::run_on_task_thread;
use crate::ts::hooks::{EventThread, TimerHandler, net_thread_count, run_on_net_pool, when_task_threads_ready};
use crate::ts::log;
use crate::ts::txn::Txn;

/// One running tick timer of this thread: its generation and filter, and how many of its
/// ticks in a row failed.
#[derive(Clone, Copy)]
struct Ticker {
    generation: u64,
    filter: usize,
    failures: u32,
}

/// The longest wait between ticks of a filter whose ticks keep failing.
const MAX_TICK_BACKOFF: Duration = Duration::from_secs(60);

/// The delay before the next tick after `failures` failed ticks in a row: the period, or
/// 1 s doubled per further failure up to [`MAX_TICK_BACKOFF`] (never less than the period).
fn tick_delay(period: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return period;
    }
    let backoff = Duration::from_secs(1u64 << (failures - 1).min(6)).min(MAX_TICK_BACKOFF);
    backoff.max(period)
}

thread_local! {
    /// This thread's tick timers, by timer data (a freed entry is reused).
    static TICKERS: RefCell<Vec<Option<Ticker>>> = const { RefCell::new(Vec::new()) };
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

/// This thread's generation for a new transaction. A thread that adopts a newer generation
/// (its first, or after a reload) registers for queue notices and starts that generation's
/// tick timers here.
pub(super) fn pin() -> Option<Pinned> {
    let (g, adopted) = generation::pinned()?;
    if adopted {
        register_thread();
        start_tickers(&g);
    }
    Some(g)
}

/// A reload published a generation: every known net thread adopts it soon, transactions or
/// not, so its ticks start and the old one's stop.
pub(super) fn adopt_everywhere() {
    for (thread, _) in threads().iter() {
        thread.run_once::<Adopt>(0);
    }
}

/// Start-up: once ATS's task threads are up, every net thread adopts the generation and starts
/// its tick timers, with no client traffic: a task thread schedules one hop per net thread
/// onto the net pool (ATS hands them out in turn); when the last hop ran and fewer threads than
/// ATS's configured count registered, the next round goes out, at most [`SPREAD_ROUNDS`] in
/// all. A thread still not reached adopts at its first transaction, as before.
pub(super) fn reach_net_threads() {
    when_task_threads_ready::<Spread>();
}

/// Rounds of hops at start-up before the remaining net threads are left to their first
/// transaction.
const SPREAD_ROUNDS: usize = 4;

/// Hops of the current start-up round still to run.
static HOPS_LEFT: AtomicUsize = AtomicUsize::new(0);

/// One start-up round, on a task thread; the data is the round number.
struct Spread;

impl TimerHandler for Spread {
    fn on_timer(round: usize) {
        let want = net_thread_count();
        let have = threads().len();
        if have >= want || round >= SPREAD_ROUNDS {
            log::debug(format!("start-up: {have} of {want} net threads adopted the generation").as_bytes());
            return;
        }
        HOPS_LEFT.store(want, Ordering::Release);
        for _ in 0..want {
            if !run_on_net_pool::<Hop>(round) {
                HOPS_LEFT.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// One start-up hop on a net thread: adopts the generation there (once per thread).
struct Hop;

impl TimerHandler for Hop {
    fn on_timer(round: usize) {
        pin();
        if HOPS_LEFT.fetch_sub(1, Ordering::AcqRel) == 1 && !run_on_task_thread::<Spread>(round + 1) {
            log::debug(b"start-up: cannot schedule the next round onto a task thread");
        }
    }
}

/// Adopts the current generation on this thread (see [`adopt_everywhere`]).
struct Adopt;

impl TimerHandler for Adopt {
    fn on_timer(_: usize) {
        pin();
    }
}

/// Starts this thread's tick timers for the filters of `g` that asked for ticks.
fn start_tickers(g: &Generation) {
    let Some(thread) = EventThread::current() else { return };
    for (i, f) in g.filters.iter().enumerate() {
        let Some(period) = f.tick_period else { continue };
        let ticker = Ticker { generation: g.number, filter: i, failures: 0 };
        let slot = TICKERS.with(|t| {
            let mut t = t.borrow_mut();
            match t.iter().position(Option::is_none) {
                Some(free) => {
                    t[free] = Some(ticker);
                    free
                }
                None => {
                    t.push(Some(ticker));
                    t.len() - 1
                }
            }
        });
        if !thread.run_after::<Tick>(period, slot) {
            TICKERS.with(|t| t.borrow_mut()[slot] = None);
            log::error(format!("ats_wasm: filter \"{}\": cannot start its timer", f.name).as_bytes());
        }
    }
}

/// One tick timer went off; the timer data is its entry in [`TICKERS`].
struct Tick;

impl TimerHandler for Tick {
    fn on_timer(slot: usize) {
        let Some(ticker) = TICKERS.with(|t| t.borrow().get(slot).copied().flatten()) else { return };
        let stop = || TICKERS.with(|t| t.borrow_mut()[slot] = None);
        // Adopts a newer generation first (starting its timers): this one then stops.
        let (Some(g), Some(p)) = (pin(), PLUGIN.get()) else { return stop() };
        let Some(f) = g.filters.get(ticker.filter).filter(|_| g.number == ticker.generation) else {
            return stop();
        };
        let Some(period) = f.tick_period else { return stop() };
        if log::debug_enabled() {
            log::debug(format!("[{}] proxy_on_tick (tick of generation {})", f.name, g.number).as_bytes());
        }
        let failures = if p.tick(&g, ticker.filter) { 0 } else { ticker.failures.saturating_add(1) };
        let delay = tick_delay(period, failures);
        if failures > 0 && delay > period {
            log::warning(
                format!(
                    "ats_wasm: filter \"{}\": {failures} ticks in a row failed; backing off, the next proxy_on_tick in {} s",
                    f.name,
                    delay.as_secs()
                )
                .as_bytes(),
            );
        }
        TICKERS.with(|t| t.borrow_mut()[slot] = Some(Ticker { failures, ..ticker }));
        match EventThread::current() {
            Some(thread) if thread.run_after::<Tick>(delay, slot) => {}
            _ => stop(),
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
    /// One tick of filter `i` of `g` on this thread: `proxy_on_tick` of every VM of this
    /// thread that asked for ticks, then what those ticks asked for. False when a VM's tick
    /// failed.
    fn tick(&self, g: &Generation, i: usize) -> bool {
        let Some(f) = g.filters.get(i) else { return true };
        let pool = f.tick_pool.as_ref().unwrap_or(&f.pool);
        // Replaces VMs that failed (a failed tick poisons its VM), so an idle thread keeps its
        // root contexts ticking; failing ticks are spaced by the caller's backoff.
        pool.refill(if f.tick_pool.is_some() { 1 } else { f.pool_size });
        let failed = self.run_in_local_vms(f, pool, "proxy_on_tick", |vm| {
            if vm.store.data().tick_period().is_some() { guest::on_tick(vm) } else { Ok(()) }
        });
        self.apply_deferred();
        failed == 0
    }

    /// Runs `callback` (named `what` for diags.log) in each of this thread's VMs of `pool`, a
    /// pool of filter `f`, and applies what each asked for; a VM where it fails is poisoned
    /// (replaced on refill), counted and reported in one line. Returns how many failed.
    pub(super) fn run_in_local_vms(
        &self,
        f: &Filter,
        pool: &VmPool<HostState<AtsBackend>>,
        what: &str,
        mut callback: impl FnMut(&mut guest::ProxyVm<AtsBackend>) -> wasmtime::Result<()>,
    ) -> usize {
        let mut failed = Vec::new();
        let mut asked = Vec::new();
        pool.for_each_local(|r, vm| {
            let result = callback(vm);
            asked.push(vm.store.data_mut().backend.take_outbox());
            if let Err(e) = result {
                failed.push((
                    r,
                    failure_kind(&e, vm.store.data().memory_refused(), None, self.loader.max_memory_bytes),
                    e,
                ));
            }
        });
        for outbox in asked {
            self.settle(None, outbox);
        }
        let n = failed.len();
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
        n
    }

    /// Runs `proxy_on_queue_ready` in this thread's VMs that registered the queues of
    /// `targets` (shared VMs and per-thread root VMs; a VM that is gone misses it, and the
    /// item stays queued).
    fn deliver_queue_ready(&self, targets: &[QueueTarget]) {
        // This thread's generation: VMs of a retiring one that registered a queue miss the
        // notice (the item stays queued for the current generation's VMs).
        let generation = generation::adopted();
        for f in generation.iter().flat_map(|g| g.filters.iter()) {
            for pool in [Some(&f.pool), f.tick_pool.as_ref()].into_iter().flatten() {
                self.run_in_local_vms(f, pool, "proxy_on_queue_ready", |vm| queue_ready_in(vm, targets));
            }
        }
        // VMs that belong to a transaction (`transaction` isolation) are in no pool.
        let txns: Vec<Txn> = OWN_VM_TXNS.with(|t| t.borrow().iter().filter_map(|id| id.txn()).collect());
        for txn in txns {
            self.slot.with(txn, |state| {
                let chain = state.chain.clone();
                let mut i = 0;
                while i < state.contexts.len() {
                    let fc = &mut state.contexts[i];
                    let f = chain.filter(fc.filter);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_ticks_back_off_from_1_s_doubling_to_60_s_never_below_the_period() {
        let p = Duration::from_millis(100);
        let delays: Vec<u64> = (0..10).map(|n| tick_delay(p, n).as_millis() as u64).collect();
        assert_eq!(delays, [100, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]);
        assert_eq!(tick_delay(p, u32::MAX), MAX_TICK_BACKOFF);
        // A slow period stays the floor.
        assert_eq!(tick_delay(Duration::from_secs(5), 2), Duration::from_secs(5));
        assert_eq!(tick_delay(Duration::from_secs(5), 4), Duration::from_secs(8));
    }
}
