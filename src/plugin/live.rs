//! Transactions named beyond one hook. A [`Txn`] handle is valid only while ATS keeps its
//! transaction open; a handle kept past one hook (a call in flight, a deferred resume, a
//! transaction owning VMs) is kept as a [`TxnId`] instead, which resolves to the handle only
//! while the transaction is open on this thread: [`forget`] runs at `TXN_CLOSE`.
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::ts::txn::Txn;

/// A transaction of this thread, as kept beyond one hook: [`TxnId::txn`] gives its handle back
/// only while it is open. Two ids are equal when they name the same registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxnId {
    txn: Txn,
    serial: u64,
}

thread_local! {
    /// The open transactions of this thread that have an id, with their id's serial number (a
    /// new transaction at a reused address gets a new serial, so an old id does not find it).
    static LIVE: RefCell<HashMap<Txn, u64>> = RefCell::new(HashMap::new());
    static NEXT_SERIAL: Cell<u64> = const { Cell::new(1) };
}

impl TxnId {
    /// The id of `txn`, an open transaction of this thread (the same id on every call until
    /// it closes).
    pub fn of(txn: Txn) -> TxnId {
        LIVE.with(|live| {
            let serial = *live.borrow_mut().entry(txn).or_insert_with(|| {
                let s = NEXT_SERIAL.with(Cell::get);
                NEXT_SERIAL.with(|n| n.set(s + 1));
                s
            });
            TxnId { txn, serial }
        })
    }

    /// The transaction's handle, if it is still open (on this thread).
    pub fn txn(self) -> Option<Txn> {
        LIVE.with(|live| (live.borrow().get(&self.txn) == Some(&self.serial)).then_some(self.txn))
    }

    /// Whether this id was given to `txn` (whether or not it is still open).
    pub fn names(self, txn: Txn) -> bool {
        self.txn == txn
    }
}

/// `txn` is closing: every id given to it stops resolving. Cheap when no id was given out.
pub fn forget(txn: Txn) {
    LIVE.with(|live| {
        let mut live = live.borrow_mut();
        if !live.is_empty() {
            live.remove(&txn);
        }
    });
}
