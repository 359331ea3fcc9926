//! Sending `proxy_http_call`s (through [`crate::ts::fetch`]) and delivering their responses
//! to the VM and context that made them. Checking and building a call is the backend's
//! ([`super::backend::call_request`]); it reaches here through the callback's outbox.
//!
//! Lifetimes. A call is recorded in its thread's [`PENDING`] table under a fresh id, with the
//! VM's process-unique id, the guest's token and — for a call from a stream context — the
//! transaction's [`TxnId`]. The outcome always comes back on that thread (the fetch layer posts
//! it there), and is delivered only if the id is still in the table:
//! - `TXN_CLOSE` removes the transaction's entries ([`Plugin::forget_calls`]) and the tokens
//!   from its shared VMs, so a late response finds nothing and is dropped: nothing ever touches
//!   a closed transaction or a released lease; and a [`TxnId`] no longer resolves once its
//!   transaction closed.
//! - A stream call's VM is found through the transaction's own leases; a root call's VM among
//!   this thread's pooled VMs. A VM that was poisoned meanwhile is simply not found.
//! - The fetch itself always ends (complete, failed, the call's timeout, or cancelled), and
//!   frees all its ATS objects then; an entry removed early just means its outcome is
//!   discarded. Until it ended, [`FLIGHTS`] keeps what the call holds: its place in the bounds
//!   on calls in flight ([`CallSlot`]), its registration against loops ([`Ticket`]) and the
//!   handle that cancels it — which `TXN_CLOSE` uses for the transaction's calls.
//!
//! Internal requests. The fetch layer's requests are internal ATS transactions, so they reach
//! our own `READ_REQUEST_HDR` hook. [`Plugin::internal_request`] handles every internal
//! transaction: filters never run on them (another plugin's internal fetches included); those
//! carrying [`CALL_MARKER`] with the nonce of one of our calls in flight skip remap and the
//! cache, so they go exactly to the upstream their absolute URL names, `remap_required` or not,
//! and end with the call (its timeout, or its fetch closing). The marker is removed before the
//! request leaves; a call to this host itself carries its nonce instead ([`super::loops`]).
#![forbid(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::backend::OutgoingCall;
use super::backend::call_bounds::CallSlot;
use super::backend::call_request::{CALL_FAILED, CALL_MARKER};
use super::diags::one_line;
use super::generation::{self, Pinned};
use super::live::TxnId;
use super::loops::{self, LOOP_MARKER, Ticket};
use super::stream::{Phase, TxnStream};
use super::telemetry::objects::{Counted, HTTP_CALL};
use super::{PLUGIN, Plugin};
use crate::abi::{HttpCallResponse, guest};
use crate::ts::fetch::{FetchHandle, FetchHandler, FetchOutcome, FetchRequest, fetch};
use crate::ts::hooks::{EventThread, HttpHook, TxnCont};
use crate::ts::log;
use crate::ts::txn::{Resume, Txn};

/// A call in flight, as its thread remembers it.
struct Pending {
    /// The VM that made it ([`crate::abi::HostState::vm_uid`]).
    vm: u64,
    /// The guest's token.
    token: u32,
    /// The transaction of the stream context that made it; `None` for the root context.
    txn: Option<TxnId>,
    /// A root context's call: the generation of its VM, kept alive until the answer (a stream
    /// context's transaction holds its own).
    generation: Option<Pinned>,
    /// Counted in `ats_wasm_live_objects{kind="http_call"}`.
    _live: Counted<HTTP_CALL>,
}

/// What a call holds until its fetch ended.
struct Flight {
    handle: FetchHandle,
    _ticket: Ticket,
    _slot: CallSlot,
}

thread_local! {
    /// This thread's calls in flight, by call id.
    static PENDING: RefCell<HashMap<u64, Pending>> = RefCell::new(HashMap::new());
    /// This thread's fetches not yet ended, by call id (also those whose outcome is no longer
    /// wanted).
    static FLIGHTS: RefCell<HashMap<u64, Flight>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

/// `CALL_MARKER`'s value: the call's nonce, a space, its `:authority`.
fn split_marker(v: &[u8]) -> (&[u8], &[u8]) {
    match v.iter().position(|&b| b == b' ') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, b""),
    }
}

/// Sends a guest's call (from the outbox of the callback that made it, on the same thread);
/// the outcome comes back to this thread through [`Deliver`]. A call ATS refuses to start is
/// one diags.log line, and its guest gets no response (its pause timeout applies).
pub(super) fn send(call: OutgoingCall) {
    let Some(home) = EventThread::current() else {
        log::error(b"ats_wasm: an HTTP call made off an event thread is dropped");
        return;
    };
    let OutgoingCall { vm, token, txn, method, url, mut headers, body, timeout, slot } = call;
    // A call is one level deeper than the request that made it (a root context's: level 1).
    let Some(ticket) = loops::register(txn.map_or(0, loops::depth) + 1, timeout) else {
        log::error(b"ats_wasm: no random nonce for an HTTP call; it is dropped");
        return;
    };
    if let Some((_, v)) = headers.iter_mut().find(|(k, _)| k[..] == *CALL_MARKER) {
        let mut named = ticket.hex().into_bytes();
        named.push(b' ');
        named.extend_from_slice(v);
        *v = named;
    }
    let id = NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1).max(1));
        id
    });
    let generation = if txn.is_none() { generation::adopted() } else { None };
    let pending = Pending { vm, token, txn: txn.map(TxnId::of), generation, _live: Counted::new() };
    PENDING.with(|p| p.borrow_mut().insert(id, pending));
    let headers: Vec<(&[u8], &[u8])> = headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let fr = FetchRequest { method: &method, url: &url, headers: &headers, body: &body, timeout };
    match fetch::<Deliver>(&fr, home, id) {
        Some(handle) => {
            FLIGHTS.with(|f| f.borrow_mut().insert(id, Flight { handle, _ticket: ticket, _slot: slot }));
        }
        None => {
            PENDING.with(|p| p.borrow_mut().remove(&id));
            log::error(b"ats_wasm: ATS refused to start an HTTP call; it is dropped");
        }
    }
}

impl Plugin {
    /// An internal transaction reached `READ_REQUEST_HDR`: no filter runs on it; one of our calls
    /// in flight skips remap and cache, ends with the call, and gets a `SEND_REQUEST_HDR` hook
    /// ([`Plugin::call_request_leaving`]). A marker naming no call in flight (a call that
    /// ended before ATS read its request, or another plugin's request) is answered by ATS
    /// itself with an error, without any upstream.
    pub(super) fn internal_request(txn: Txn, cont: TxnCont) -> Resume {
        let Some(h) = txn.client_request() else { return Resume::Continue };
        let mut v = Vec::new();
        if !h.get(CALL_MARKER, &mut v) {
            return Resume::Continue;
        }
        match loops::call_timeout(split_marker(&v).0) {
            Some(timeout) => {
                txn.set_up_as_plugin_call(timeout);
                cont.add_to_txn(txn, HttpHook::SendRequestHdr);
                cont.add_to_txn(txn, HttpHook::SendResponseHdr);
                Resume::Continue
            }
            None => {
                h.remove(CALL_MARKER);
                Resume::Error
            }
        }
    }

    /// One of our calls is about to leave ATS: the marker goes, and `Host` becomes the call's
    /// `:authority` (from the marker) — ATS set it from the absolute URL, which names the
    /// upstream's address instead. A call to this host itself carries its nonce
    /// ([`LOOP_MARKER`]), and no call carries a `LOOP_MARKER` of anyone else's.
    pub(super) fn call_request_leaving(txn: Txn) {
        let Some(h) = txn.server_request() else { return };
        let mut marker = Vec::new();
        if h.get(CALL_MARKER, &mut marker) {
            h.remove(CALL_MARKER);
            h.remove(LOOP_MARKER);
            let (nonce, authority) = split_marker(&marker);
            if !authority.is_empty() {
                h.replace(b"host", authority);
            }
            if loops::leaving(nonce, txn.outgoing_addr(), txn.server_addr()) {
                h.replace(LOOP_MARKER, nonce);
            }
        }
    }

    /// One of our calls' responses is about to leave ATS for the fetch SM. When ATS made it up
    /// itself (no usable origin response: connection refused, DNS failure, origin timeout, a
    /// response that is not HTTP), it is marked
    /// with [`CALL_FAILED`], so the call fails (no headers) as the spec wants for a failed call,
    /// instead of looking like an answer from the upstream.
    pub(super) fn call_response_leaving(txn: Txn) {
        let Some(h) = txn.client_response() else { return };
        let status = h.status();
        // The cache is off for calls, so an origin answer reaches the fetch SM with its own status;
        // a different (or no) origin status means ATS answered instead (e.g. 502 for a response
        // that did not parse).
        if txn.server_response_status() != Some(status) {
            h.replace(CALL_FAILED, status.to_string().as_bytes());
        }
    }
}

/// The spec's view of an outcome: headers with `:status` first, body, no trailers (ATS 9.2
/// does not pass trailers through); a failure has no headers and says why in the message.
fn to_call_response(outcome: FetchOutcome) -> HttpCallResponse {
    match outcome {
        FetchOutcome::Response(r) if r.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(CALL_FAILED)) => {
            HttpCallResponse {
                message: format!("upstream unreachable (ATS answered {})", r.status).into_bytes(),
                ..Default::default()
            }
        }
        FetchOutcome::Response(r) => {
            let mut headers = Vec::with_capacity(r.headers.len() + 1);
            headers.push((b":status".to_vec(), r.status.to_string().into_bytes()));
            headers.extend(r.headers);
            HttpCallResponse { headers, body: r.body, trailers: Vec::new(), message: Vec::new() }
        }
        FetchOutcome::Failed(why) => HttpCallResponse { message: why.as_bytes().to_vec(), ..Default::default() },
    }
}

/// Receives call outcomes on the calling thread.
struct Deliver;

impl FetchHandler for Deliver {
    fn on_fetch_done(id: u64, outcome: FetchOutcome) {
        // The fetch ended: its slot and its registration go (before the guest may call again).
        let flight = FLIGHTS.with(|f| f.borrow_mut().remove(&id));
        drop(flight);
        let Some(pending) = PENDING.with(|p| p.borrow_mut().remove(&id)) else {
            // The transaction closed first: dropped.
            return;
        };
        if let Some(p) = PLUGIN.get() {
            p.deliver_call(pending, to_call_response(outcome));
        }
    }
}

impl Plugin {
    /// Forgets the calls `txn` has in flight (it is closing): their fetches are cancelled and
    /// their outcomes dropped. Returns `(vm, token)` of each, for the caller to cancel in the
    /// VMs it still holds.
    pub(super) fn forget_calls(txn: Txn) -> Vec<(u64, u32)> {
        loops::forget(txn);
        let forgotten: Vec<(u64, Pending)> = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            if p.is_empty() {
                return Vec::new();
            }
            let ids: Vec<u64> =
                p.iter().filter(|(_, c)| c.txn.is_some_and(|id| id.names(txn))).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| p.remove(&id).map(|c| (id, c))).collect()
        });
        if !forgotten.is_empty() {
            FLIGHTS.with(|f| {
                let f = f.borrow();
                for (id, _) in &forgotten {
                    if let Some(flight) = f.get(id) {
                        flight.handle.cancel();
                    }
                }
            });
        }
        forgotten.into_iter().map(|(_, c)| (c.vm, c.token)).collect()
    }

    fn deliver_call(&self, pending: Pending, response: HttpCallResponse) {
        match pending.txn {
            Some(id) => {
                if let Some(txn) = id.txn() {
                    self.deliver_stream_call(txn, &pending, response);
                }
            }
            None => self.deliver_root_call(&pending, response),
        }
        self.apply_deferred();
    }

    /// A root context's call: its VM is one of this thread's pooled VMs (shared VMs, or the
    /// tick VM of a `transaction`-isolation filter).
    fn deliver_root_call(&self, pending: &Pending, response: HttpCallResponse) {
        let mut response = Some(response);
        let Some(generation) = pending.generation.clone().or_else(generation::adopted) else { return };
        for f in &generation.filters {
            for pool in [Some(&f.pool), f.tick_pool.as_ref()].into_iter().flatten() {
                let mut failed = None;
                let mut asked = None;
                pool.for_each_local(|r, vm| {
                    if vm.store.data().vm_uid() == pending.vm
                        && let Some(resp) = response.take()
                    {
                        let result = guest::on_http_call_response(vm, pending.token, resp);
                        asked = Some(vm.store.data_mut().backend.take_outbox());
                        if let Err(e) = result {
                            failed = Some((r, e));
                        }
                    }
                });
                if let Some(outbox) = asked {
                    self.settle(None, outbox);
                }
                if let Some((r, e)) = failed {
                    pool.poison(r);
                    log::error(
                        format!(
                            "ats_wasm: filter \"{}\": proxy_on_http_call_response failed: {}; the VM is replaced",
                            f.name,
                            one_line(&e)
                        )
                        .as_bytes(),
                    );
                }
                if response.is_none() {
                    return;
                }
            }
        }
    }

    /// A stream context's call: its VM is leased by the (open) transaction. A local response or
    /// a stream control from the callback resumes the parked transaction.
    fn deliver_stream_call(&self, txn: Txn, pending: &Pending, response: HttpCallResponse) {
        let Some(mut state) = self.slot.take(txn) else { return };
        // A parked transaction is in its paused phase; one that went on without waiting is
        // somewhere ATS is running it, so the guest only reads (as from `proxy_on_log`).
        let phase = state.paused.as_ref().map_or(Phase::Close, |p| p.phase);
        let stream = TxnStream { txn, phase };
        let chain = state.chain.clone();
        let mut found = None;
        for (i, fc) in state.contexts.iter_mut().enumerate() {
            let f = chain.filter(fc.filter);
            if f.pool.with_leased(&mut fc.lease, |vm| vm.store.data().vm_uid()).ok() == Some(pending.vm) {
                found = Some(i);
                break;
            }
        }
        let Some(i) = found else {
            // Its VM failed meanwhile.
            self.slot.put(txn, state);
            return;
        };
        let fc = &mut state.contexts[i];
        let f = chain.filter(fc.filter);
        let ctx = fc.ctx;
        let r = f.pool.with_leased(&mut fc.lease, |vm| {
            guest::attach_stream(vm, ctx, stream);
            let result = guest::on_http_call_response(vm, pending.token, response);
            (result, vm.store.data_mut().backend.take_outbox())
        });
        let parked_in = state.paused.as_ref().map(|p| p.phase);
        match r {
            Ok((result, outbox)) => {
                let asked = self.settle(Some(txn), outbox);
                match (result, asked.local) {
                    (Ok(_), Some(local)) if parked_in == Some(Phase::Request) => {
                        // Answered locally: later filters' request callbacks do not run.
                        state.paused = None;
                        Self::answer_locally(txn, &mut state, &local);
                        state.local_response_headers = Some(local.headers);
                        let resume = self.finish_request_phase(txn, state, Resume::Continue);
                        txn.reenable(resume);
                    }
                    (Ok(_), _) => {
                        self.slot.put(txn, state);
                        if let Some(control) = asked.control {
                            self.resume_txn(txn, control);
                        }
                    }
                    (Err(e), local) => {
                        if let Some(local) = local.filter(|_| phase == Phase::Request) {
                            // As when a request callback fails after answering locally.
                            Self::answer_locally(txn, &mut state, &local);
                        }
                        let fc = state.contexts.remove(i);
                        let fail_open = f.fail_open;
                        let name = f.name.clone();
                        self.guest_failed(f, fc.lease, "proxy_on_http_call_response", &e);
                        if parked_in.is_some() {
                            self.fail_parked(txn, state, fail_open, &name);
                        } else {
                            self.slot.put(txn, state);
                        }
                    }
                }
            }
            Err(e) => {
                let fc = state.contexts.remove(i);
                f.pool.release(fc.lease);
                log::debug(format!("[{}] call response for a lost VM: {e}", f.name).as_bytes());
                self.slot.put(txn, state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_have_no_headers_and_responses_start_with_status() {
        let ok = to_call_response(FetchOutcome::Response(crate::ts::fetch::FetchResponse {
            status: 201,
            headers: vec![(b"a".to_vec(), b"b".to_vec())],
            body: b"hi".to_vec(),
        }));
        assert_eq!(ok.status_code(), 201);
        assert_eq!(ok.headers[0].0, b":status");
        assert_eq!(ok.headers.len(), 2);
        assert_eq!(ok.body, b"hi");
        let made_up = to_call_response(FetchOutcome::Response(crate::ts::fetch::FetchResponse {
            status: 502,
            headers: vec![(CALL_FAILED.to_vec(), b"502".to_vec())],
            body: b"error page".to_vec(),
        }));
        assert!(made_up.headers.is_empty() && made_up.body.is_empty());
        assert_eq!(made_up.message, b"upstream unreachable (ATS answered 502)");
        let failed = to_call_response(FetchOutcome::Failed("timeout"));
        assert!(failed.headers.is_empty() && failed.body.is_empty());
        assert_eq!(failed.message, b"timeout");
    }
}
