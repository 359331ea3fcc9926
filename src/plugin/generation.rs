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

pub(crate) use super::telemetry::GLOBAL_SCOPE;

/// One configuration's filters, built and proven to start; never changed once published.
/// The global filters form one (replaced by reloads); each remap rule's instance holds one of
/// its own (replaced by remap.config reloads, which make new instances).
pub(crate) struct Generation {
    /// 1 at start-up, one more for each successful reload; 0 for a remap rule's filters.
    pub(crate) number: u64,
    /// [`GLOBAL_SCOPE`], or `remap:<from URL>` for a rule's filters (the `scope` label).
    pub(crate) scope: String,
    /// The filters in chain order.
    pub(crate) filters: Vec<Filter>,
}

/// A transaction's filter chain: its thread's global generation, then the filters of the
/// remap rule that matched it, if any. Filter indices run over both, global ones first.
#[derive(Clone)]
pub(crate) struct Chain {
    /// The global filters, pinned at `READ_REQUEST_HDR`.
    pub(crate) global: Pinned,
    /// The matched rule's filters, set by `TSRemapDoRemap`.
    pub(crate) rule: Option<Arc<Generation>>,
}

/// A [`Chain`] that may be dropped on any thread (held by body transforms).
#[derive(Clone)]
pub(crate) struct SharedChain {
    global: Arc<Generation>,
    rule: Option<Arc<Generation>>,
}

/// Filter `i` of `global` followed by `rule`.
fn pick<'a>(global: &'a Generation, rule: Option<&'a Generation>, i: usize) -> Option<&'a Filter> {
    match global.filters.get(i) {
        Some(f) => Some(f),
        None => rule?.filters.get(i - global.filters.len()),
    }
}

impl Chain {
    /// The chain of a transaction no rule has matched (yet).
    pub(crate) fn global(global: Pinned) -> Self {
        Chain { global, rule: None }
    }

    /// Filter `i` (global filters first, then the rule's). Panics on an index not made from
    /// this chain.
    pub(crate) fn filter(&self, i: usize) -> &Filter {
        pick(&self.global, self.rule.as_deref(), i).expect("a filter index of this chain")
    }

    /// Filter `i`, if the chain has one.
    pub(crate) fn get(&self, i: usize) -> Option<&Filter> {
        pick(&self.global, self.rule.as_deref(), i)
    }

    /// How many filters the chain has.
    pub(crate) fn len(&self) -> usize {
        self.global.filters.len() + self.rule.as_ref().map_or(0, |r| r.filters.len())
    }

    /// The filters with their indices, in chain order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Filter)> {
        let rule = self.rule.iter().flat_map(|r| r.filters.iter());
        self.global.filters.iter().chain(rule).enumerate()
    }

    /// The same chain, to be held off this thread.
    pub(crate) fn shared(&self) -> SharedChain {
        SharedChain { global: Arc::clone(&self.global), rule: self.rule.clone() }
    }
}

impl SharedChain {
    /// Filter `i`, as [`Chain::filter`].
    pub(crate) fn filter(&self, i: usize) -> &Filter {
        pick(&self.global, self.rule.as_deref(), i).expect("a filter index of this chain")
    }

    /// Back to a thread's chain (a handle of its own, for a transaction's state made here).
    pub(crate) fn to_chain(&self) -> Chain {
        Chain { global: Rc::new(Arc::clone(&self.global)), rule: self.rule.clone() }
    }
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
        Generation { number, scope: GLOBAL_SCOPE.to_string(), filters }
    }

    /// The filters of one remap rule (`scope`: `remap:<from URL>`), counted live until retired.
    pub(crate) fn rule(scope: String, filters: Vec<Filter>) -> Self {
        GENERATIONS.remap_live.fetch_add(1, Ordering::Relaxed);
        Generation { number: 0, scope, filters }
    }

    /// Whether this is a remap rule's chain.
    pub(crate) fn is_rule(&self) -> bool {
        self.scope != GLOBAL_SCOPE
    }
}

impl Drop for Generation {
    /// Retires the generation: ends every VM's root context, then the VMs go (with the pools).
    fn drop(&mut self) {
        let ended: usize = self.filters.iter_mut().map(Filter::retire).sum();
        if self.is_rule() {
            GENERATIONS.remap_live.fetch_sub(1, Ordering::Relaxed);
            log::note(format!("ats_wasm: filters of {} retired ({ended} VMs ended)", self.scope).as_bytes());
            return;
        }
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
