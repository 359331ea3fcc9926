//! The failure policy: what a failed guest callback, a pool that cannot give a VM, or a pause
//! that timed out costs — one diags.log line, a counter, and under the filter's policy either
//! the filter (`fail_open`) or the transaction (`fail_closed`).
#![forbid(unsafe_code)]

use ats_wasm_pool::{LeasedVm, PoolError};

use super::backend::{AtsBackend, PendingLocalResponse};
use super::diags::one_line;
use super::filter::Filter;
use super::telemetry::FailureReason;
use super::{Plugin, TxnState};
use crate::abi::{HostState, InitError, guest};
use crate::ts::log;
use crate::ts::txn::{Resume, Txn};

/// The size of a VM's linear memory, and whether a `memory.grow` was refused in its current
/// callback.
fn memory_state(vm: &mut guest::ProxyVm<AtsBackend>) -> (Option<usize>, bool) {
    let refused = vm.store.data().memory_refused();
    let memory = vm.instance.get_memory(&mut vm.store, "memory").map(|m| m.data_size(&vm.store));
    (memory, refused)
}

/// Names why a guest callback failed: its deadline (epoch interrupt), the memory cap (a
/// `memory.grow` was refused in the callback — the trap is then the guest's allocator giving
/// up — or the memory is within one page of `--max-memory`), or a trap.
pub(super) fn failure_kind(err: &wasmtime::Error, refused: bool, memory: Option<usize>, cap: usize) -> FailureReason {
    if matches!(err.downcast_ref::<wasmtime::Trap>(), Some(wasmtime::Trap::Interrupt)) {
        FailureReason::Deadline
    } else if refused || memory.is_some_and(|m| m + 65536 > cap) {
        FailureReason::MemoryCap
    } else {
        FailureReason::Trap
    }
}

/// A VM that could not be created or started, in one line: the initializer step that failed
/// and why (`proxy_on_vm_start (deadline exceeded): …`, `proxy_on_configure returned false`),
/// or the instantiation error.
pub(super) fn init_failure(err: &wasmtime::Error, cap: usize) -> String {
    match err.downcast_ref::<InitError>() {
        Some(InitError { step, error: Some(e), memory_refused }) => {
            let why = failure_kind(e, *memory_refused, None, cap).describe();
            format!("{step} ({why}): {}", one_line(e))
        }
        Some(e @ InitError { error: None, .. }) => e.to_string(),
        None => one_line(err),
    }
}

impl Plugin {
    /// Applies a filter's failure policy after `what` failed: fail-open drops the filter for
    /// this transaction, fail-closed fails the transaction. One diags.log line says why (a few
    /// a minute per filter and reason, see [`failure_line`](super::telemetry::FilterMetrics::failure_line)).
    pub(super) fn failed(&self, f: &Filter, what: &str, err: &dyn std::fmt::Display) -> Resume {
        self.failed_for(f, None, what, err)
    }

    /// [`Plugin::failed`] for a failure of `reason` (`None`: not the guest's callback).
    pub(super) fn failed_for(
        &self,
        f: &Filter,
        reason: Option<FailureReason>,
        what: &str,
        err: &dyn std::fmt::Display,
    ) -> Resume {
        let policy = if f.fail_open {
            "fail_open: the transaction continues without it"
        } else {
            "fail_closed: the transaction fails"
        };
        f.metrics.outcome(f.fail_open);
        if let Some(more) = f.metrics.failure_line(reason) {
            log::error(
                format!("ats_wasm: filter \"{}\": {what} failed: {}; {policy}{more}", f.name, one_line(err)).as_bytes(),
            );
        }
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
        let (memory, refused) = f.pool.with_leased(&mut lease, memory_state).unwrap_or_default();
        f.pool.poison_leased(&mut lease);
        f.pool.release(lease);
        let reason = failure_kind(err, refused, memory, self.loader.max_memory_bytes);
        f.metrics.callback_failed(reason);
        self.failed_for(f, Some(reason), &format!("{what} ({})", reason.describe()), err)
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
            // Said here, not by the pool error's text, so the line has one "creating a VM".
            PoolError::Init(e) => self.failed(f, "creating a VM", &init_failure(e, self.loader.max_memory_bytes)),
            _ => self.failed(f, what, err),
        }
    }

    /// Fail-closed in the request phase: the client gets a 503 local response and the origin is
    /// not contacted.
    pub(super) fn fail_closed_local(txn: Txn, filter: &str) -> Resume {
        txn.set_local_response(503, &fail_closed_body(filter), "text/plain");
        Resume::Continue
    }

    /// Fail-closed in the response phase, at `SEND_RESPONSE_HDR` (before any byte of the
    /// response left): the client gets the same 503 as in the request phase instead of the
    /// origin's response.
    ///
    /// Without an open response transform the hook fails: ATS 9.2 answers a failed hook with
    /// the status set on the transaction when it is 400 or more (else "500 INKApi Error"), and
    /// runs `SEND_RESPONSE_HDR` again for that answer: `state.response_failed` keeps the filters
    /// off it, as Envoy sends a failed filter's local reply past the encoder filters.
    ///
    /// With a response transform ATS opened (the origin or cache is already feeding it), the
    /// 503 goes out through the transform, as a response-phase local response does, and the
    /// hook continues: failing the hook there makes ATS 9.2 leak the transform. Its error path
    /// (`HttpSM::setup_internal_transfer`) calls `HttpTunnel::reset()`, which forgets the
    /// running producer → transform tunnel without closing its vconnections or freeing its
    /// buffer, and `kill_this` then closes no VC still marked `in_tunnel` (`HttpVCTable::
    /// cleanup_entry`) nor an opened transform (`transform_cleanup` closes only unopened ones).
    /// The transform's state, holding the transaction's generation, would never be freed.
    pub(super) fn fail_closed_response(txn: Txn, state: &mut TxnState, filter: &str) -> Resume {
        if Self::answer_through_transform(txn, state, 503, fail_closed_body(filter)) {
            return Resume::Continue;
        }
        Self::fail_closed_local(txn, filter);
        state.response_failed = true;
        Resume::Error
    }

    /// A guest closed the stream (`proxy_close_stream`) in the response phase: the hook fails
    /// and ATS answers 500, or, with an open response transform (see
    /// [`Plugin::fail_closed_response`]), a 500 without a body goes out through it.
    pub(super) fn close_response(txn: Txn, state: &mut TxnState) -> Resume {
        if Self::answer_through_transform(txn, state, 500, Vec::new()) { Resume::Continue } else { Resume::Error }
    }

    /// Puts `status` and `body` (`text/plain`) in place of the response when ATS opened a
    /// response transform; false (nothing done) when it did not.
    fn answer_through_transform(txn: Txn, state: &mut TxnState, status: u16, body: Vec<u8>) -> bool {
        if !state.bodies.response_transform_open() {
            return false;
        }
        let content_type = if body.is_empty() { Vec::new() } else { b"text/plain".to_vec() };
        let local = PendingLocalResponse { txn, status, body, content_type, headers: Vec::new() };
        Self::apply_response_local(txn, state, local);
        true
    }
}

/// The body of a fail-closed 503.
fn fail_closed_body(filter: &str) -> Vec<u8> {
    format!("503 Service Unavailable: filter \"{filter}\" failed\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_lines_name_the_limit_and_the_step_once() {
        let interrupt = || wasmtime::Error::new(wasmtime::Trap::Interrupt);
        let trap = || wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        assert_eq!(failure_kind(&interrupt(), true, None, 1 << 20), FailureReason::Deadline);
        assert_eq!(failure_kind(&trap(), true, None, 1 << 20), FailureReason::MemoryCap, "after a refused grow");
        assert_eq!(failure_kind(&trap(), false, Some(65536), 1 << 20), FailureReason::Trap);
        assert_eq!(failure_kind(&trap(), false, Some(1 << 20), 1 << 20), FailureReason::MemoryCap, "at the cap");

        let init = |step, error, memory_refused| wasmtime::Error::new(InitError { step, error, memory_refused });
        let line = init_failure(&init("proxy_on_vm_start", Some(interrupt()), false), 1 << 20);
        assert!(line.starts_with("proxy_on_vm_start (deadline exceeded): "), "{line}");
        assert!(line.contains("interrupt"), "{line}");
        let line = init_failure(&init("_initialize", Some(trap()), true), 1 << 20);
        assert!(line.starts_with("_initialize (memory cap reached): "), "{line}");
        assert_eq!(
            init_failure(&init("proxy_on_configure", None, false), 1 << 20),
            "proxy_on_configure returned false"
        );
        let other = wasmtime::Error::msg("instance limit reached");
        assert_eq!(init_failure(&other, 1 << 20), "instance limit reached");
        // The pool's own text says "creating a VM failed" once; the plugin does not add it.
        let pooled = PoolError::Init(init("proxy_on_configure", None, false)).to_string();
        assert_eq!(pooled.matches("creating a VM failed").count(), 1, "{pooled}");
    }
}
