//! HTTP transactions.

use std::ffi::c_void;

use super::headers::HeaderMap;
use super::sys;

/// A handle on a live HTTP transaction (`TSHttpTxn`).
///
/// It is only valid between the transaction's start and the return of its `TXN_CLOSE` hook;
/// holders must not keep it past that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Txn(sys::TSHttpTxn);

// SAFETY: a TSHttpTxn is an opaque handle. ATS runs each transaction's hooks one at a time, so
// moving the handle between threads cannot cause concurrent use through it.
unsafe impl Send for Txn {}

/// How to go on after a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// `TSHttpTxnReenable(txn, TS_EVENT_HTTP_CONTINUE)`.
    Continue,
    /// `TSHttpTxnReenable(txn, TS_EVENT_HTTP_ERROR)`: ATS answers with an error response.
    Error,
}

impl Txn {
    /// Wraps a raw transaction pointer received as hook data.
    ///
    /// # Safety
    /// `raw` must be a live transaction (the `edata` of an HTTP transaction hook event).
    pub unsafe fn from_raw(raw: *mut c_void) -> Self {
        Txn(raw as sys::TSHttpTxn)
    }

    /// Lets the transaction go on. ATS may run the next hook synchronously inside this call,
    /// so callers must hold no borrow of state that hook may need.
    pub fn reenable(self, how: Resume) {
        let ev = match how {
            Resume::Continue => sys::TS_EVENT_HTTP_CONTINUE,
            Resume::Error => sys::TS_EVENT_HTTP_ERROR,
        };
        // SAFETY: self is a live transaction (type invariant).
        unsafe { sys::TSHttpTxnReenable(self.0, ev) }
    }

    /// The client's request headers.
    pub fn client_request(self) -> Option<HeaderMap> {
        // SAFETY: live transaction; the getter fills the out-params on success.
        unsafe { HeaderMap::from_getter(|b, l| sys::TSHttpTxnClientReqGet(self.0, b, l)) }
    }

    /// The response that will be sent to the client (valid from `SEND_RESPONSE_HDR`).
    pub fn client_response(self) -> Option<HeaderMap> {
        // SAFETY: as above.
        unsafe { HeaderMap::from_getter(|b, l| sys::TSHttpTxnClientRespGet(self.0, b, l)) }
    }

    /// The value in transaction user argument slot `idx`.
    fn user_arg(self, idx: i32) -> *mut c_void {
        // SAFETY: live transaction; idx was reserved with TSUserArgIndexReserve.
        unsafe { sys::TSUserArgGet(self.0 as *mut c_void, idx) }
    }

    /// Stores `value` in transaction user argument slot `idx`.
    fn set_user_arg(self, idx: i32, value: *mut c_void) {
        // SAFETY: as above; ATS stores the pointer without dereferencing it.
        unsafe { sys::TSUserArgSet(self.0 as *mut c_void, idx, value) }
    }

    pub(crate) fn raw(self) -> sys::TSHttpTxn {
        self.0
    }
}

/// A transaction user-argument slot holding a `Box<T>` per transaction.
///
/// All access goes through this type, so the slot only ever holds a `T` put there by
/// [`TxnSlot::put`]; [`TxnSlot::take`] hands ownership back exactly once.
pub struct TxnSlot<T> {
    idx: i32,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: 'static> TxnSlot<T> {
    /// Reserves a slot named `name` (`TSUserArgIndexReserve`); `None` if ATS has none left.
    pub fn reserve(name: &str, description: &str) -> Option<Self> {
        super::plugin::reserve_txn_arg(name, description).map(|idx| TxnSlot { idx, _t: std::marker::PhantomData })
    }

    /// Stores `value` for `txn`, returning any value that was there.
    pub fn put(&self, txn: Txn, value: Box<T>) -> Option<Box<T>> {
        let old = self.take(txn);
        txn.set_user_arg(self.idx, Box::into_raw(value) as *mut c_void);
        old
    }

    /// Takes the value stored for `txn`, leaving the slot empty.
    pub fn take(&self, txn: Txn) -> Option<Box<T>> {
        let p = txn.user_arg(self.idx) as *mut T;
        if p.is_null() {
            return None;
        }
        txn.set_user_arg(self.idx, std::ptr::null_mut());
        // SAFETY: non-null values in this slot only come from Box::into_raw in `put` (type
        // invariant), and the slot is cleared before returning, so ownership moves back once.
        Some(unsafe { Box::from_raw(p) })
    }
}
