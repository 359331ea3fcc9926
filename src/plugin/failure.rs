//! The failure policy: what a failed guest callback, a pool that cannot give a VM, or a pause
//! that timed out costs — one diags.log line, a counter, and under the filter's policy either
//! the filter (`fail_open`) or the transaction (`fail_closed`).
#![forbid(unsafe_code)]

use ats_wasm_pool::{LeasedVm, PoolError};

use super::backend::AtsBackend;
use super::diags::one_line;
use super::filter::Filter;
use super::telemetry::FailureReason;
use super::{Plugin, TxnState};
use crate::abi::{HostState, guest};
use crate::ts::log;
use crate::ts::txn::{Resume, Txn};

/// The size of a VM's linear memory.
fn memory_size(vm: &mut guest::ProxyVm<AtsBackend>) -> Option<usize> {
    let memory = vm.instance.get_memory(&mut vm.store, "memory")?;
    Some(memory.data_size(&vm.store))
}

/// Names why a guest callback failed: its deadline (epoch interrupt), the memory cap (the
/// guest's memory is within one page of `--max-memory`, so its allocator failed and it
/// aborted), or a trap.
pub(super) fn failure_kind(err: &wasmtime::Error, memory: Option<usize>, cap: usize) -> (&'static str, FailureReason) {
    if matches!(err.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
        ("deadline exceeded", FailureReason::Deadline)
    } else if memory.is_some_and(|m| m + 65536 > cap) {
        ("memory cap reached", FailureReason::MemoryCap)
    } else {
        ("trap", FailureReason::Trap)
    }
}

impl Plugin {
    /// Applies a filter's failure policy after `what` failed: fail-open drops the filter for
    /// this transaction, fail-closed fails the transaction. One diags.log line says why.
    pub(super) fn failed(&self, f: &Filter, what: &str, err: &dyn std::fmt::Display) -> Resume {
        let policy = if f.fail_open {
            "fail_open: the transaction continues without it"
        } else {
            "fail_closed: the transaction fails"
        };
        log::error(format!("ats_wasm: filter \"{}\": {what} failed: {}; {policy}", f.name, one_line(err)).as_bytes());
        f.metrics.outcome(f.fail_open);
        if f.fail_open { Resume::Continue } else { Resume::Error }
    }

    /// A guest callback failed (trap, deadline, memory cap): the VM is poisoned — never used
    /// again, replaced on refill — and the lease goes back.
    pub(super) fn guest_failed(
        &self,
        f: &Filter,
        mut lease: LeasedVm<HostState<AtsBackend>>,
        what: &str,
        err: &wasmtime::Error,
    ) -> Resume {
        let memory = f.pool.with_leased(&mut lease, memory_size).ok().flatten();
        f.pool.poison_leased(&mut lease);
        f.pool.release(lease);
        let (why, reason) = failure_kind(err, memory, self.max_memory_bytes);
        f.metrics.callback_failed(reason);
        self.failed(f, &format!("{what} ({why})"), err)
    }

    /// The pool could not give or reach a VM.
    pub(super) fn pool_failed(&self, f: &Filter, what: &str, err: &PoolError) -> Resume {
        match err {
            // Reported once when creation first failed; the back-off itself is not news.
            PoolError::BackingOff => {
                log::debug(format!("[{}] {what}: {err}", f.name).as_bytes());
                f.metrics.outcome(f.fail_open);
                if f.fail_open { Resume::Continue } else { Resume::Error }
            }
            _ => self.failed(f, what, err),
        }
    }

    /// Fail-closed in the request phase: the client gets a 503 local response and the origin is
    /// not contacted.
    pub(super) fn fail_closed_local(txn: Txn, filter: &str) -> Resume {
        let body = format!("503 Service Unavailable: filter \"{filter}\" failed\n");
        txn.set_local_response(503, body.as_bytes(), "text/plain");
        Resume::Continue
    }

    /// Fail-closed in the response phase, at `SEND_RESPONSE_HDR` (before any byte of the
    /// response left): the transaction fails with the same 503 as in the request phase instead
    /// of the origin's response. ATS 9.2 answers a failed hook with the status set on the
    /// transaction when it is 400 or more (else "500 INKApi Error"), and runs
    /// `SEND_RESPONSE_HDR` again for that answer: `state.response_failed` keeps the filters off
    /// it, as Envoy sends a failed filter's local reply past the encoder filters.
    pub(super) fn fail_closed_response(txn: Txn, state: &mut TxnState, filter: &str) -> Resume {
        Self::fail_closed_local(txn, filter);
        state.response_failed = true;
        Resume::Error
    }
}
