//! Generations: everything built from the configuration — the filters in order, their
//! compiled modules, templates, per-thread pools and tick VMs, upstreams and capability sets —
//! as one immutable value. Start-up publishes generation 1; each successful reload publishes
//! the next one with one swap.
//!
//! A transaction pins the generation its thread had adopted at `READ_REQUEST_HDR` (a clone of
//! the thread's [`Pinned`] handle: no lock, no atomic read-modify-write) and uses only it
//! until `TXN_CLOSE`. A thread adopts a newer generation at its next transaction, or sooner
//! when the reload asks every known net thread to (`delivery::adopt_everywhere`). A generation lives
//! while the current slot, a thread or a transaction still holds it; when the last holder lets
//! go it is retired on that thread: each VM's root context ends in the spec's order
//! (`proxy_on_done`, `proxy_on_log`, `proxy_on_delete`) and the VMs go back to the engine.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::filter::Filter;
use super::telemetry::GENERATIONS;
use crate::ts::log;

/// One configuration's filters, built and proven to start; never changed once published.
pub(crate) struct Generation {
    /// 1 at start-up, one more for each successful reload.
    pub(crate) number: u64,
    /// The filters in chain order.
    pub(crate) filters: Vec<Filter>,
}

/// A net thread's handle on a generation. Cloning it is a plain (non-atomic) count, so a
/// transaction pins its generation at no cost; the `Arc` inside is counted once per thread.
pub(crate) type Pinned = Rc<Arc<Generation>>;

/// The generation new transactions use; its number is mirrored in `GENERATIONS.current` so a
/// thread can see, with one load, that it must adopt a newer one.
static CURRENT: Mutex<Option<Arc<Generation>>> = Mutex::new(None);

thread_local! {
    /// The generation this thread gives its new transactions.
    static PINNED: RefCell<Option<Pinned>> = const { RefCell::new(None) };
}

fn current_slot() -> std::sync::MutexGuard<'static, Option<Arc<Generation>>> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

impl Generation {
    /// A generation of `filters`, counted live until it is retired.
    pub(crate) fn new(number: u64, filters: Vec<Filter>) -> Self {
        GENERATIONS.live.fetch_add(1, Ordering::Relaxed);
        Generation { number, filters }
    }
}

impl Drop for Generation {
    /// Retires the generation: ends every VM's root context, then the VMs go (with the pools).
    fn drop(&mut self) {
        let ended: usize = self.filters.iter_mut().map(Filter::retire).sum();
        GENERATIONS.live.fetch_sub(1, Ordering::Relaxed);
        log::note(format!("ats_wasm: generation {} retired ({ended} VMs ended)", self.number).as_bytes());
    }
}

/// Makes `g` the generation for new transactions and returns the one it replaces (the caller
/// drops it outside any lock; it retires when its last holder lets go).
pub(crate) fn publish(g: Generation) -> Option<Arc<Generation>> {
    let number = g.number;
    let old = current_slot().replace(Arc::new(g));
    GENERATIONS.current.store(number, Ordering::Release);
    old
}

/// The generation for new transactions (for reloads, status and the metrics threads).
pub(crate) fn current() -> Option<Arc<Generation>> {
    current_slot().clone()
}

/// This thread's generation for a new transaction, and whether the thread adopted it just now
/// (then its timers for that generation must start). The fast path is one load and a
/// non-atomic count.
pub(crate) fn pinned() -> Option<(Pinned, bool)> {
    let number = GENERATIONS.current.load(Ordering::Acquire);
    let held = PINNED.with(|p| p.borrow().clone());
    if let Some(g) = &held
        && g.number == number
    {
        return held.map(|g| (g, false));
    }
    let fresh: Pinned = Rc::new(current()?);
    // Swapped out of the cell before the old handle drops: dropping it may retire a
    // generation, which runs guest code.
    let old = PINNED.with(|p| p.borrow_mut().replace(fresh.clone()));
    drop(held);
    drop(old);
    Some((fresh, true))
}

/// The generation this thread has adopted, without adopting a newer one (for timers that
/// belong to one generation).
pub(crate) fn adopted() -> Option<Pinned> {
    PINNED.with(|p| p.borrow().clone())
}
