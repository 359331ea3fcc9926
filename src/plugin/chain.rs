//! The filter chain runners: the request phase (`READ_REQUEST_HDR`, chain order), the response
//! phase (`SEND_RESPONSE_HDR`, reverse order) and the end (`TXN_CLOSE`). Each guest callback
//! is followed by [`Plugin::settle`] of its outbox; the runner then decides from the callback's
//! action and what the guest asked for its own transaction (a local response, a stream
//! control) how the transaction goes on.
#![forbid(unsafe_code)]

use ats_wasm_pool::PoolError;

use super::backend::{self, PendingLocalResponse};
use super::delivery;
use super::filter::Filter;
use super::generation::{self, Chain};
use super::live;
use super::stream::{Phase, StreamControl, TxnStream};
use super::{FilterCtx, Plugin, TxnState};
use crate::abi::{Action, MapType, guest};
use crate::ts::headers::{HeaderMap, WellKnownName};
use crate::ts::hooks::HttpHook;
use crate::ts::log;
use crate::ts::txn::{Resume, Txn};

/// Puts a guest's local-response headers on the response ATS built, before any response
/// callback sees it, replacing what ATS's error-page path adds (`Cache-Control: no-store`,
/// `Content-Language`, its own `Content-Type`): `Content-Type` and `Content-Length` say what
/// the client gets (`body`: the content type, empty for none, and the body's length). A 204
/// or 304 carries no body, so it loses the `Content-Length` ATS leaves there.
fn apply_local_response_headers(txn: Txn, h: &HeaderMap, extra: &[(Vec<u8>, Vec<u8>)], body: Option<(Vec<u8>, usize)>) {
    h.remove(b"cache-control");
    h.remove(b"content-language");
    if matches!(h.status(), 204 | 304) {
        h.remove(b"content-length");
    } else if let Some((content_type, len)) = body {
        if len == 0 {
            // ATS would send its own error page; without a body it sends `Content-Length: 0`.
            txn.clear_local_response_body();
        }
        h.remove(b"content-length");
        h.add(b"content-length", len.to_string().as_bytes());
        // ATS was given no type (see `answer_locally`): this header is what the client gets,
        // as the response callbacks leave it.
        h.remove(b"content-type");
        if !content_type.is_empty() {
            h.add(b"content-type", &content_type);
        }
    }
    for (k, v) in extra {
        h.add(k, v);
    }
}

/// `end_of_stream` for a header block: true when no body follows (no `Transfer-Encoding`, and
/// no `Content-Length` or only zero ones).
pub(super) fn no_body(h: &HeaderMap) -> bool {
    if h.for_each_well_known_value(WellKnownName::TransferEncoding, |_| {}) {
        return false;
    }
    let mut zero = true;
    let found = h.for_each_well_known_value(WellKnownName::ContentLength, |v| {
        zero &= v.iter().all(|&b| b == b'0' || b == b' ');
    });
    !found || zero
}

impl Plugin {
    /// A guest's local response in the request phase: ATS answers with it, without the
    /// origin, once the transaction goes on (its headers, `Content-Type` included, are set
    /// when ATS sends it). Its content type is the guest's, else `text/plain` for a body and
    /// none without one.
    pub(super) fn answer_locally(txn: Txn, state: &mut TxnState, local: &PendingLocalResponse) {
        let content_type = match (&local.content_type[..], local.body.is_empty()) {
            (b"", false) => b"text/plain".to_vec(),
            (t, _) => t.to_vec(),
        };
        // An empty type: ATS leaves the `Content-Type` header as the response callbacks left it.
        txn.set_local_response(local.status, &local.body, "");
        state.local_response_body = Some((content_type, local.body.len()));
        if state.remapped {
            state.local_response_status = Some(local.status);
        }
    }

    pub(super) fn request_headers(&self, txn: Txn) -> Resume {
        if txn.is_internal() {
            // Our own HTTP calls, and other plugins' internal requests: no filters.
            return Self::internal_request(txn, self.cont);
        }
        if !super::loops::arrival(txn) {
            // One of our HTTP calls that came back, as deep as `--call-depth` allows.
            if super::remap::rules_exist() {
                self.exempt(txn);
            }
            return Resume::Continue;
        }
        let Some(generation) = delivery::pin() else {
            return Resume::Continue;
        };
        let mut state = TxnState::new(Chain::global(generation));
        let resume = self.run_request_filters(txn, &mut state, 0);
        self.finish_request_phase(txn, state, resume)
    }

    /// Marks `txn` as one no filter runs on, so a remap rule's filters leave it alone too.
    fn exempt(&self, txn: Txn) {
        let Some(generation) = delivery::pin() else { return };
        let mut state = TxnState::new(Chain::global(generation));
        state.exempt = true;
        state.hooks_added = true;
        self.cont.add_to_txn(txn, HttpHook::TxnClose);
        self.slot.put(txn, state);
    }

    /// `POST_REMAP` of a transaction a remap rule with filters matched (or whose body
    /// transforms waited for remap): the rule's filters' `proxy_on_request_headers`, in
    /// `@pparam` order, on the request as remap left it; then the request phase is complete.
    pub(super) fn rule_request_headers(&self, txn: Txn) -> Resume {
        let Some(mut state) = self.slot.take(txn) else { return Resume::Continue };
        if state.local_response_headers.is_some() || txn.answer_status() != 0 {
            // A global filter answered at `READ_REQUEST_HDR` (ATS answers it after remap).
            self.slot.put(txn, state);
            return Resume::Continue;
        }
        state.remapped = true;
        let resume = if state.chain.rule.is_some() && !state.exempt {
            let from = state.chain.global.filters.len();
            self.run_request_filters(txn, &mut state, from)
        } else {
            Resume::Continue
        };
        self.finish_request_phase(txn, state, resume)
    }

    /// Whether a filter with a context in the transaction gets bodies.
    pub(super) fn contexts_want_bodies(&self, state: &TxnState) -> bool {
        state.contexts.iter().any(|c| state.chain.filter(c.filter).bodies != crate::config::Bodies::None)
    }

    /// Stores the transaction's state and adds its later hooks (once), unless no filter has a
    /// context in it.
    pub(super) fn finish_request_phase(&self, txn: Txn, mut state: TxnState, resume: Resume) -> Resume {
        // After remap ATS no longer looks at the status a plugin set: a local response from a
        // rule's filter (or its fail-closed 503) goes through ATS's error path.
        let resume = if state.remapped && resume == Resume::Continue && txn.answer_status() != 0 {
            Resume::Error
        } else {
            resume
        };
        if state.contexts.is_empty() && state.paused.is_none() {
            self.refill_chain(&state.chain);
            return resume;
        }
        if !state.hooks_added {
            state.hooks_added = true;
            self.cont.add_to_txn(txn, HttpHook::SendResponseHdr);
            self.cont.add_to_txn(txn, HttpHook::TxnClose);
        }
        // With remap rules, body transforms are chosen once the rule's filters are known.
        let wait =
            !state.remapped && (state.post_remap || (super::remap::rules_exist() && self.contexts_want_bodies(&state)));
        if wait && !state.post_remap {
            state.post_remap = true;
            self.cont.add_to_txn(txn, HttpHook::PostRemap);
        }
        if resume == Resume::Continue && !wait {
            self.install_body_transforms(txn, &mut state);
        }
        if state.contexts.iter().any(|c| state.chain.filter(c.filter).owns_vms()) {
            delivery::own_vms_opened(txn);
        }
        self.slot.put(txn, state);
        resume
    }

    /// Runs `proxy_on_request_headers` of the filters from `from` on, in chain order. Returns
    /// `Parked` (with `state.paused` set) when a filter paused the request.
    pub(super) fn run_request_filters(&self, txn: Txn, state: &mut TxnState, from: usize) -> Resume {
        let (num_headers, eos) = match txn.client_request() {
            Some(h) => (backend::visible_len(MapType::RequestHeaders, &h), no_body(&h)),
            None => (0, true),
        };
        let stream = TxnStream { txn, phase: Phase::Request };
        let chain = state.chain.clone();
        for (i, f) in chain.iter().skip(from) {
            let mut lease = match f.pool.lease() {
                Ok(l) => {
                    f.metrics.request();
                    l
                }
                Err(e) => {
                    if self.pool_failed(f, "getting a VM", &e) == Resume::Error {
                        return Self::fail_closed_local(txn, &f.name);
                    }
                    continue;
                }
            };
            let r = f.pool.with_leased(&mut lease, |vm| {
                let result = guest::create_stream_context(vm, stream)
                    .map_err(|e| ("proxy_on_context_create", e))
                    .and_then(|ctx| match guest::on_request_headers(vm, ctx, num_headers, eos) {
                        Ok(action) => Ok((ctx, action)),
                        Err(e) => Err(("proxy_on_request_headers", e)),
                    });
                (result, vm.store.data_mut().backend.take_outbox())
            });
            let resume = match r {
                Ok((result, outbox)) => {
                    let asked = self.settle(Some(txn), outbox);
                    if let Some(local) = &asked.local {
                        // Also when the callback then failed: the guest had answered.
                        Self::answer_locally(txn, state, local);
                    }
                    match (result, asked.local) {
                        (Ok((ctx, _)), Some(local)) => {
                            // A local response: ATS answers without the origin, and the later
                            // filters' request callbacks do not run. Response callbacks still
                            // see the response.
                            state.contexts.push(FilterCtx { filter: i, lease, ctx });
                            state.local_response_headers = Some(local.headers);
                            return Resume::Continue;
                        }
                        (Ok((ctx, action)), None) => {
                            state.contexts.push(FilterCtx { filter: i, lease, ctx });
                            if action == Action::Pause {
                                match asked.control {
                                    // Continued within the same callback.
                                    Some(StreamControl::Continue) => {}
                                    Some(StreamControl::Close) => return Resume::Error,
                                    None => {
                                        state.paused = Some(Self::pause(txn, f, Phase::Request, i + 1));
                                        return Resume::Parked;
                                    }
                                }
                            }
                            Resume::Continue
                        }
                        (Err((what, e)), _) => self.guest_failed(f, lease, what, &e),
                    }
                }
                Err(e) => {
                    f.pool.release(lease);
                    self.pool_failed(f, "reaching its VM", &e)
                }
            };
            if resume == Resume::Error {
                return Self::fail_closed_local(txn, &f.name);
            }
        }
        Resume::Continue
    }

    pub(super) fn response_headers(&self, txn: Txn) -> Resume {
        if txn.is_internal() {
            // Only our HTTP calls' transactions get this hook while internal.
            Self::call_response_leaving(txn);
            return Resume::Continue;
        }
        // In place: the hook returns before the transaction is re-enabled.
        self.slot
            .with(txn, |state| {
                if state.response_failed {
                    // ATS's 503 for a filter that failed closed: no filter runs on it.
                    return Resume::Continue;
                }
                if let Some(extra) = state.local_response_headers.take()
                    && let Some(h) = txn.client_response()
                {
                    if let Some(status) = state.local_response_status.take() {
                        h.set_status(status);
                    }
                    apply_local_response_headers(txn, &h, &extra, state.local_response_body.take());
                }
                let n = state.contexts.len();
                let resume = self.run_response_filters(txn, state, n);
                if resume == Resume::Continue {
                    // Schedules (never runs) the response body transform.
                    Self::response_headers_done(state);
                }
                resume
            })
            .unwrap_or(Resume::Continue)
    }

    /// Runs `proxy_on_response_headers` of the contexts below index `from`, in reverse chain
    /// order. Returns `Parked` (with `state.paused` set) when a filter paused the response.
    pub(super) fn run_response_filters(&self, txn: Txn, state: &mut TxnState, from: usize) -> Resume {
        let (num_headers, eos) = match txn.client_response() {
            Some(h) => {
                (backend::visible_len(MapType::ResponseHeaders, &h), no_body(&h) || matches!(h.status(), 204 | 304))
            }
            None => (0, true),
        };
        let phase = if state.bodies.has_response_transform() { Phase::ResponseTransformed } else { Phase::Response };
        let stream = TxnStream { txn, phase };
        let chain = state.chain.clone();
        let mut i = from.min(state.contexts.len());
        while i > 0 {
            i -= 1;
            let fc = &mut state.contexts[i];
            let f = chain.filter(fc.filter);
            let ctx = fc.ctx;
            let r = f.pool.with_leased(&mut fc.lease, |vm| {
                guest::attach_stream(vm, ctx, stream);
                let action = guest::on_response_headers(vm, ctx, num_headers, eos);
                (action, vm.store.data_mut().backend.take_outbox())
            });
            let resume = match r {
                Ok((action, outbox)) => {
                    let asked = self.settle(Some(txn), outbox);
                    match (action, asked.local) {
                        (Ok(_), Some(local)) => {
                            // A local response (only accepted with a response transform): the
                            // later response filters do not run.
                            Self::apply_response_local(txn, state, local);
                            return Resume::Continue;
                        }
                        (Ok(Action::Pause), None) => match asked.control {
                            Some(StreamControl::Continue) => Resume::Continue,
                            Some(StreamControl::Close) => return Self::close_response(txn, state),
                            None => {
                                state.paused = Some(Self::pause(txn, f, Phase::Response, i));
                                return Resume::Parked;
                            }
                        },
                        (Ok(Action::Continue), None) => Resume::Continue,
                        (Err(e), _) => {
                            let fc = state.contexts.remove(i);
                            self.guest_failed(f, fc.lease, "proxy_on_response_headers", &e)
                        }
                    }
                }
                Err(e) => {
                    // E.g. the shared VM was poisoned by another transaction meanwhile.
                    let fc = state.contexts.remove(i);
                    f.pool.release(fc.lease);
                    self.pool_failed(f, "reaching its VM for the response", &e)
                }
            };
            if resume == Resume::Error {
                return Self::fail_closed_response(txn, state, &f.name);
            }
        }
        Resume::Continue
    }

    pub(super) fn close(&self, txn: Txn) {
        delivery::own_vms_closed(txn);
        // Calls still in flight: their responses will be dropped.
        let calls = Self::forget_calls(txn);
        let Some(state) = self.slot.take(txn) else {
            live::forget(txn);
            return;
        };
        let stream = TxnStream { txn, phase: Phase::Close };
        let chain = state.chain;
        for mut fc in state.contexts {
            let f = chain.filter(fc.filter);
            let ctx = fc.ctx;
            let r = f.pool.with_leased(&mut fc.lease, |vm| {
                let st = vm.store.data_mut();
                let uid = st.vm_uid();
                for (_, token) in calls.iter().filter(|(vm, _)| *vm == uid) {
                    st.cancel_http_call(*token);
                }
                guest::attach_stream(vm, ctx, stream);
                let result = guest::finish_stream_context(vm, ctx);
                let mut outbox = vm.store.data_mut().backend.take_outbox();
                // The transaction is ending: no answer to a call it makes now could reach it.
                if let Some(o) = outbox.as_mut() {
                    let before = o.calls.len();
                    o.calls.retain(|c| c.txn != Some(txn));
                    if o.calls.len() != before {
                        log::debug(
                            format!("[{}] HTTP calls made while the transaction closes are dropped", f.name).as_bytes(),
                        );
                    }
                }
                (result, outbox)
            });
            match r {
                Ok((result, outbox)) => {
                    self.settle(Some(txn), outbox);
                    match result {
                        Ok(()) => f.pool.release(fc.lease),
                        Err(e) => {
                            self.guest_failed(f, fc.lease, "ending the stream context", &e);
                        }
                    }
                }
                Err(e) => {
                    f.pool.release(fc.lease);
                    log::debug(format!("[{}] context lost before close: {e}", f.name).as_bytes());
                }
            }
        }
        live::forget(txn);
        // The pools new transactions of this thread will lease from (the transaction's own
        // generation may be retiring).
        if let Some(current) = generation::adopted() {
            self.refill(&current.filters);
        }
        if let Some(rule) = &chain.rule {
            self.refill(&rule.filters);
        }
        // Last: when this was the last holder of a retired generation (or of a deleted remap
        // rule's filters), it retires here.
        drop(chain);
    }

    /// [`Plugin::refill`] for every filter of `chain`.
    pub(super) fn refill_chain(&self, chain: &Chain) {
        self.refill(&chain.global.filters);
        if let Some(rule) = &chain.rule {
            self.refill(&rule.filters);
        }
    }

    /// Tops this thread's pools back up to their size (fresh VMs for `transaction` isolation,
    /// replacements for poisoned `shared` VMs). Runs after a transaction's response, so the
    /// cost is off every request path.
    pub(super) fn refill(&self, filters: &[Filter]) {
        for f in filters {
            let r = f.pool.refill(f.pool_size);
            if let Some(PoolError::Init(e)) = &r.error {
                let why = super::failure::init_failure(e, self.loader.max_memory_bytes);
                log::error(format!("ats_wasm: filter \"{}\": creating a VM failed: {why}", f.name).as_bytes());
            }
        }
    }
}
