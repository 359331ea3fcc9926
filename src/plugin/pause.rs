//! The pause state machine. A filter that answers `Pause` from a header callback parks its
//! transaction ([`Paused`] in its state, a pause timer running); the transaction goes on when
//! a guest continues or closes the stream (applied after that guest's callback, here), when
//! its pausing filter fails (its policy decides, [`Plugin::fail_parked`]), or when the pause
//! timer goes off.
//!
//! Stream controls a guest issues for a transaction other than the one whose callback is
//! running (e.g. a root context on a tick continuing a stream it remembered) are deferred to
//! this thread's next safe point — the end of a tick, a queue delivery or a call delivery —
//! and kept as [`TxnId`]s meanwhile, so a transaction that closed first is simply skipped.
#![forbid(unsafe_code)]

use std::cell::RefCell;

use super::filter::Filter;
use super::live::TxnId;
use super::stream::{Phase, StreamControl};
use super::telemetry::FailureReason;
use super::{PLUGIN, Paused, Plugin, TxnState};
use crate::ts::hooks::{TxnTimer, TxnTimerHandler};
use crate::ts::log;
use crate::ts::txn::{Resume, Txn};

thread_local! {
    /// Stream controls for other transactions, waiting for this thread's next safe point.
    static DEFERRED: RefCell<Vec<(TxnId, StreamControl)>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `control` for `txn` (open now) until this thread's next safe point.
pub(super) fn defer(txn: Txn, control: StreamControl) {
    let id = TxnId::of(txn);
    DEFERRED.with(|d| d.borrow_mut().push((id, control)));
}

/// Runs when a transaction stayed parked for its pausing filter's pause timeout
/// (`pause_timeout_ms`, else `--pause-timeout-ms`).
struct PauseTimeout;

impl TxnTimerHandler for PauseTimeout {
    fn on_txn_timer(txn: Txn) {
        if let Some(p) = PLUGIN.get() {
            p.pause_timed_out(txn);
        }
    }
}

impl Plugin {
    /// A pause of `txn` by filter `f` in `phase` that goes on at `next` (see [`Paused`]), with
    /// its timer.
    pub(super) fn pause(txn: Txn, f: &Filter, phase: Phase, next: usize) -> Paused {
        let timer = f.pause_timeout.and_then(|d| {
            let t = TxnTimer::start::<PauseTimeout>(txn, d);
            if t.is_none() {
                log::debug(b"no pause timer (not on an event thread, or ATS refused)");
            }
            t
        });
        Paused { phase, next, _timer: timer }
    }

    /// Applies the stream controls deferred on this thread, in the order issued, to the
    /// transactions still open.
    pub(super) fn apply_deferred(&self) {
        while let Some((id, control)) = DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            if d.is_empty() { None } else { Some(d.remove(0)) }
        }) {
            if let Some(txn) = id.txn() {
                self.resume_txn(txn, control);
            }
        }
    }

    /// Applies a guest's `proxy_continue_stream` / `proxy_close_stream` to a parked
    /// transaction: runs the rest of its paused phase and re-enables it. Called only at a safe
    /// point on the transaction's thread, never inside a guest call.
    pub(super) fn resume_txn(&self, txn: Txn, control: StreamControl) {
        let Some(mut state) = self.slot.take(txn) else {
            return;
        };
        let Some(paused) = state.paused.take() else {
            // Not parked (e.g. continued before it paused): nothing to do.
            self.slot.put(txn, state);
            return;
        };
        let (phase, next) = (paused.phase, paused.next);
        // Cancels its timer.
        drop(paused);
        let resume = match (control, phase) {
            (StreamControl::Close, Phase::Request) => Resume::Error,
            (StreamControl::Close, _) => Self::close_response(txn, &mut state),
            (StreamControl::Continue, Phase::Request) => self.run_request_filters(txn, &mut state, next),
            (StreamControl::Continue, _) => self.run_response_filters(txn, &mut state, next),
        };
        let resume = match phase {
            Phase::Request => self.finish_request_phase(txn, state, resume),
            _ => {
                if resume == Resume::Continue {
                    Self::response_headers_done(&mut state);
                }
                self.slot.put(txn, state);
                resume
            }
        };
        // The state is stored again before this: re-enabling may run the next hook at once.
        txn.reenable(resume);
    }

    /// A filter kept `txn` parked for its pause timeout: counted as a failure of that
    /// filter (reason `pause_timeout`), and its policy decides, as for a failed callback.
    fn pause_timed_out(&self, txn: Txn) {
        let Some(state) = self.slot.take(txn) else { return };
        let Some(paused) = &state.paused else {
            self.slot.put(txn, state);
            return;
        };
        let what = if paused.phase == Phase::Request { "the paused request" } else { "the paused response" };
        let chain = state.chain.clone();
        let Some(f) = paused.filter(&state.contexts).and_then(|i| chain.get(i)) else {
            self.slot.put(txn, state);
            self.resume_txn(txn, StreamControl::Continue);
            return;
        };
        f.metrics.callback_failed(FailureReason::PauseTimeout);
        let ms = f.pause_timeout.map_or(0, |d| d.as_millis());
        self.failed_for(
            f,
            Some(FailureReason::PauseTimeout),
            what,
            &format!("not continued within {ms} ms (pause timeout)"),
        );
        self.fail_parked(txn, state, f.fail_open, &f.name);
    }

    /// Ends the pause of a parked transaction (`state.paused` set) whose pausing filter failed,
    /// under that filter's policy: fail-open runs the rest of the paused phase; fail-closed
    /// answers with a 503 local response in the request phase and fails the transaction with a
    /// 503 in the response phase.
    pub(super) fn fail_parked(&self, txn: Txn, mut state: TxnState, fail_open: bool, name: &str) {
        if !fail_open && state.paused.as_ref().is_some_and(|p| p.phase == Phase::Request) {
            state.paused = None;
            let resume = Self::fail_closed_local(txn, name);
            let resume = self.finish_request_phase(txn, state, resume);
            txn.reenable(resume);
        } else if fail_open {
            self.slot.put(txn, state);
            self.resume_txn(txn, StreamControl::Continue);
        } else {
            // The response phase: the 503 (see `Plugin::fail_closed_response`).
            state.paused = None;
            let resume = Self::fail_closed_response(txn, &mut state, name);
            if resume == Resume::Continue {
                Self::response_headers_done(&mut state);
            }
            self.slot.put(txn, state);
            txn.reenable(resume);
        }
    }
}
