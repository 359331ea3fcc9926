//! How many HTTP calls may be in flight at once: per VM (`--max-calls-per-vm`, default 256)
//! and per transaction, all its filters together (`--max-calls-per-txn`, default 64). A call
//! holds a [`CallSlot`] from the moment the guest made it until its fetch ended (answered,
//! failed, timed out or cancelled) — or until it was dropped unsent; a call past a bound is
//! refused at once (the plugin answers the guest `INTERNAL_FAILURE`, see
//! `AtsBackend::http_call`).
//!
//! Counts are per thread: a VM and a transaction live on one thread, and their calls are made,
//! sent and ended there.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::plugin::live::TxnId;

static PER_VM: AtomicU32 = AtomicU32::new(256);
static PER_TXN: AtomicU32 = AtomicU32::new(64);

/// Sets the bounds (from the plugin's arguments, at start-up).
pub fn set_limits(per_vm: u32, per_txn: u32) {
    PER_VM.store(per_vm.max(1), Ordering::Relaxed);
    PER_TXN.store(per_txn.max(1), Ordering::Relaxed);
}

/// The bounds now in force: (per VM, per transaction).
pub fn limits() -> (u32, u32) {
    (PER_VM.load(Ordering::Relaxed), PER_TXN.load(Ordering::Relaxed))
}

#[derive(Default)]
struct Counts {
    vm: HashMap<u64, u32>,
    txn: HashMap<TxnId, u32>,
}

thread_local! {
    static IN_FLIGHT: RefCell<Counts> = RefCell::new(Counts::default());
}

/// Which bound refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The VM has `--max-calls-per-vm` calls in flight.
    Vm,
    /// The transaction has `--max-calls-per-txn` calls in flight.
    Transaction,
}

/// One call's place in its VM's and its transaction's counts; given back when dropped (on the
/// thread that took it: calls never leave their thread).
#[derive(Debug, PartialEq, Eq)]
pub struct CallSlot {
    vm: u64,
    txn: Option<TxnId>,
}

/// Takes a slot for a call of VM `vm` (from transaction `txn`, `None` for a root context), or
/// says which bound is reached.
pub fn acquire(vm: u64, txn: Option<TxnId>) -> Result<CallSlot, Refused> {
    let (per_vm, per_txn) = limits();
    IN_FLIGHT.with(|c| {
        let mut c = c.borrow_mut();
        if c.vm.get(&vm).copied().unwrap_or(0) >= per_vm {
            return Err(Refused::Vm);
        }
        if let Some(t) = txn
            && c.txn.get(&t).copied().unwrap_or(0) >= per_txn
        {
            return Err(Refused::Transaction);
        }
        *c.vm.entry(vm).or_insert(0) += 1;
        if let Some(t) = txn {
            *c.txn.entry(t).or_insert(0) += 1;
        }
        Ok(CallSlot { vm, txn })
    })
}

fn give_back<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        // `try_with`: a slot dropped while the thread's locals are torn down has nothing to
        // give back to.
        let _ = IN_FLIGHT.try_with(|c| {
            let mut c = c.borrow_mut();
            give_back(&mut c.vm, &self.vm);
            if let Some(t) = &self.txn {
                give_back(&mut c.txn, t);
            }
        });
    }
}

/// Calls in flight on this thread: (of VM `vm`, of transaction `txn`).
pub fn in_flight(vm: u64, txn: Option<TxnId>) -> (u32, u32) {
    IN_FLIGHT.with(|c| {
        let c = c.borrow();
        (c.vm.get(&vm).copied().unwrap_or(0), txn.and_then(|t| c.txn.get(&t).copied()).unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_vm_and_given_back_when_dropped() {
        // Root-context calls only (no transaction ids outside ATS).
        set_limits(2, 64);
        let a = acquire(7, None).unwrap();
        let b = acquire(7, None).unwrap();
        assert_eq!(acquire(7, None), Err(Refused::Vm));
        // Another VM has its own count.
        let other = acquire(8, None).unwrap();
        assert_eq!(in_flight(7, None), (2, 0));
        drop(a);
        assert_eq!(in_flight(7, None), (1, 0));
        let c = acquire(7, None).unwrap();
        drop((b, c, other));
        assert_eq!(in_flight(7, None), (0, 0));
        assert!(IN_FLIGHT.with(|c| c.borrow().vm.is_empty()), "no entry is left behind");
        set_limits(256, 64);
    }
}
