//! Request and response bodies through ATS transforms: `proxy_on_request_body`,
//! `proxy_on_response_body`, the body buffers, and local responses from the response phase.
//!
//! A transform is installed only for transactions with a filter that gets bodies (`bodies:
//! request|response|both`, or `auto` for a module that exports the body callbacks), at
//! `READ_REQUEST_HDR` once the request filters ran (a response transform then applies to origin
//! responses and cache hits alike). Each transform runs the
//! body through the filters that want it, in flow order — request: chain order; response:
//! reverse chain order, like the header callbacks:
//!
//! - Every chunk ATS hands over is one callback per filter with `body_size` = the bytes that
//!   filter sees now and `end_of_stream` on the last one (a final call with the buffered bytes
//!   and `end_of_stream` = true when the input ends).
//! - `Continue` passes what the filter has (as it changed it with `proxy_set_buffer_bytes`) to
//!   the next filter; `Pause` (the SDKs' `StopIterationAndBuffer`) keeps it: the next call
//!   gets it plus the new chunk, so `body_size` grows, until `Continue` or the end (where a
//!   `Pause` counts as `Continue`).
//! - A response chunk every filter passed on as it came (`Continue`, nothing buffered, no
//!   `proxy_set_buffer_bytes`) goes out as ATS's own buffer blocks, not copied.
//! - A filter holding more than its `max_body_bytes` fails under its policy: `fail_open`
//!   passes its bytes through unfiltered from then on; `fail_closed` aborts the transaction.
//!
//! Response framing: the response transform's output length is unknown when ATS sends the
//! headers (the header callbacks run before any body callback), so the response loses its
//! `Content-Length` and goes chunked to HTTP/1.1 clients (ATS's own transform behaviour).
//! Request framing: ATS 9.2 needs a request transform's exact length before it sends the
//! request headers to the origin, so the filtered request body is held until its end and goes
//! out with an exact `Content-Length` (bounded by the largest `max_body_bytes` of the request
//! filters; a request whose `Content-Length` says more is answered 413 by a `fail_closed`
//! filter, and passes unfiltered when all request filters are `fail_open`).
//!
//! Caching: the untransformed response is cached and the transformed one is not, unless a
//! filter of the chain sets `cache_transformed: true`.
#![forbid(unsafe_code)]

mod dechunk;
mod local;
pub(super) mod state;

use std::sync::Arc;

use state::ResponseSignals;

use super::chain::no_body;
use super::generation::SharedChain;
use super::pause;
use super::stream::{Phase, TxnStream};
use super::telemetry::objects::{BODY_TRANSFORM, Counted};
use super::{FilterCtx, PLUGIN, Plugin, TxnState};
use crate::abi::{Action, BufferType, guest};
use crate::config::Bodies;
use crate::ts::hooks::HttpHook;
use crate::ts::log;
use crate::ts::transform::{self, Direction, Output, Transform, TransformEvent, TransformHandler, Upstream};
use crate::ts::txn::{Resume, Txn};
use dechunk::Dechunker;

/// One filter's place in a body flow.
struct Stage {
    filter: usize,
    /// What the filter buffered (it answered `Pause`).
    buf: Vec<u8>,
    /// The filter is out of this flow (failed open, or its context is gone).
    passthrough: bool,
}

/// One transform's state.
pub(crate) struct Flow {
    txn: Txn,
    /// The transaction's generation (`stages` index its filters); an `Arc`, since ATS may
    /// destroy a transform where the transaction's thread-local handle must not go.
    generation: SharedChain,
    /// Response transforms: shared with the transaction's hooks.
    signals: Arc<ResponseSignals>,
    direction: Direction,
    stages: Vec<Stage>,
    output: Option<Output>,
    written: u64,
    /// Request bodies: the filtered body, held until the input ends.
    held: Vec<u8>,
    held_limit: usize,
    /// Some input arrived (an empty body gets no body callback).
    seen_input: bool,
    /// The output is complete (or aborted): the rest of the input is drained.
    finished: bool,
    /// Decodes a chunked upload's framing.
    dechunk: Option<Dechunker>,
    /// The producer was told the input is complete.
    input_done: bool,
    /// Counted in `ats_wasm_live_objects{kind="body_transform"}`.
    _live: Counted<BODY_TRANSFORM>,
}

struct BodyTransform;

impl TransformHandler for BodyTransform {
    type State = Flow;

    fn on_event(t: Transform, flow: &mut Flow, event: TransformEvent) -> Upstream {
        if event == TransformEvent::OutputComplete {
            return Upstream::Quiet;
        }
        match PLUGIN.get() {
            Some(p) => p.body_event(t, flow),
            None => Upstream::Quiet,
        }
    }
}

/// Content-Length of a header, if present and numeric.
fn content_length(h: &crate::ts::headers::HeaderMap) -> Option<u64> {
    let mut v = Vec::new();
    if !h.get(b"content-length", &mut v) {
        return None;
    }
    std::str::from_utf8(&v).ok()?.trim().parse().ok()
}

impl Plugin {
    /// Installs the transaction's body transforms (once, when the request phase is complete):
    /// a request transform when a filter wants request bodies and the request has one, a
    /// response transform when a filter wants response bodies.
    pub(super) fn install_body_transforms(&self, txn: Txn, state: &mut TxnState) {
        if state.bodies.installed || state.local_response_headers.is_some() {
            return;
        }
        state.bodies.installed = true;
        if state.chain.iter().all(|(_, f)| f.bodies == Bodies::None) {
            return;
        }
        let generation = state.chain.shared();
        let wants = |ctx: &&FilterCtx, request: bool| {
            let b = generation.filter(ctx.filter).bodies;
            if request { b.request() } else { b.response() }
        };
        let request: Vec<usize> = state.contexts.iter().filter(|c| wants(c, true)).map(|c| c.filter).collect();
        let response: Vec<usize> = state.contexts.iter().rev().filter(|c| wants(c, false)).map(|c| c.filter).collect();

        if !request.is_empty()
            && let Some(h) = txn.client_request()
            && !no_body(&h)
        {
            let limit = request.iter().map(|&f| generation.filter(f).max_body_bytes).max().unwrap_or(0);
            match content_length(&h) {
                Some(n) if n > limit as u64 => {
                    let closed = request.iter().map(|&f| generation.filter(f)).find(|f| !f.fail_open);
                    if let Some(f) = closed {
                        log::error(
                            format!(
                                "ats_wasm: filter \"{}\": request body of {n} bytes exceeds max_body_bytes ({limit}); fail_closed: 413",
                                f.name
                            )
                            .as_bytes(),
                        );
                        let body = format!("413 Content Too Large: the request body exceeds {limit} bytes\n");
                        txn.set_local_response(413, body.as_bytes(), "text/plain");
                        state.local_response_headers = Some(Vec::new());
                        return;
                    }
                    log::debug(
                        format!("request body of {n} bytes exceeds max_body_bytes ({limit}); passed unfiltered")
                            .as_bytes(),
                    );
                }
                _ => {
                    // ATS adds `Transfer-Encoding: chunked` to the origin request of a chunked
                    // upload before the transform gives the exact length; the body goes out
                    // unchunked with that length, so the header is removed when the request
                    // is sent.
                    let mut te = Vec::new();
                    let chunked = h.get(b"transfer-encoding", &mut te);
                    if chunked {
                        self.cont.add_to_txn(txn, HttpHook::SendRequestHdr);
                    }
                    let mut flow = Flow::new(txn, &generation, Direction::Request, &request, limit);
                    // ATS hands a request transform a chunked upload still chunk-encoded.
                    flow.dechunk = chunked.then(Dechunker::default);
                    if Transform::create::<BodyTransform>(txn, Direction::Request, flow).is_none() {
                        log::error(b"ats_wasm: cannot create a request body transform off an event thread");
                    }
                }
            }
        }
        if !response.is_empty() {
            let flow = Flow::new(txn, &generation, Direction::Response, &response, 0);
            state.bodies.signals = Some(Arc::clone(&flow.signals));
            state.bodies.response = Transform::create::<BodyTransform>(txn, Direction::Response, flow);
            let cache_transformed = response.iter().any(|&f| generation.filter(f).cache_transformed);
            transform::cache_transformed(txn, cache_transformed);
        }
    }

    /// `SEND_REQUEST_HDR` of a request with a request transform: the origin request carries the
    /// transform's exact `Content-Length`, so it loses the `Transfer-Encoding` ATS added.
    pub(super) fn send_request_headers(&self, txn: Txn) {
        if let Some(h) = txn.server_request() {
            let mut v = Vec::new();
            if h.get(b"content-length", &mut v) {
                h.remove(b"transfer-encoding");
            }
        }
    }

    /// The response header callbacks are done: let the response transform run body callbacks.
    pub(super) fn response_headers_done(state: &mut TxnState) {
        let Some(signals) = &state.bodies.signals else { return };
        signals.set_headers_done();
        if signals.output_open()
            && let Some(t) = state.bodies.response
        {
            t.wake();
        }
    }

    /// One event of a body transform: moves what input there is through the filters.
    fn body_event(&self, t: Transform, flow: &mut Flow) -> Upstream {
        if flow.direction == Direction::Response && !flow.signals.headers_done() {
            if flow.output.is_none() {
                // Opening the output lets ATS send the response headers: SEND_RESPONSE_HDR runs
                // the header callbacks, then wakes this transform for the body.
                flow.output = Some(t.open_output(None));
                flow.signals.set_output_open();
            }
            return Upstream::Quiet;
        }
        // The state is lent in place (no take and put: they free and allocate its box): the
        // trampoline signals the producer, which may run ATS's next step, only after this returns.
        if let Some(r) = self.slot.with(flow.txn, |state| self.body_step(t, flow, state)) {
            return r;
        }
        // No filter state (cannot happen while the transaction is alive): drain unfiltered.
        flow.stages.iter_mut().for_each(|s| s.passthrough = true);
        flow.signals.set_headers_done();
        let mut empty = TxnState::new(flow.generation.to_chain());
        self.body_step(t, flow, &mut empty)
    }

    fn body_step(&self, t: Transform, flow: &mut Flow, state: &mut TxnState) -> Upstream {
        if flow.direction == Direction::Response && flow.output.is_none() {
            flow.output = Some(t.open_output(None));
            flow.signals.set_output_open();
        }
        let mut chunk = Vec::new();
        // Response input is consumed once the filters are done with it: a chunk none of them
        // changed goes out as ATS's own buffer blocks, uncopied.
        let input = match flow.direction {
            Direction::Response => t.peek_input(&mut chunk, usize::MAX),
            Direction::Request => t.read_input(&mut chunk, usize::MAX),
        };
        let peeked = if flow.direction == Direction::Response { input.bytes } else { 0 };
        if let Some(d) = flow.dechunk.as_mut() {
            let mut decoded = Vec::with_capacity(chunk.len());
            if d.feed(&chunk, &mut decoded).is_err() {
                log::error(b"ats_wasm: malformed chunked request body; the request is aborted");
                flow.finished = true;
                t.abort_output();
                return Upstream::Quiet;
            }
            chunk = decoded;
        }
        let complete = input.complete || input.no_buffer;
        let consumed = if complete {
            // Once: the producer is told it is done only the first time.
            if std::mem::replace(&mut flow.input_done, true) { Upstream::Quiet } else { Upstream::Complete }
        } else if input.bytes > 0 {
            Upstream::Ready
        } else {
            Upstream::Quiet
        };
        if flow.finished {
            t.consume_input(peeked);
            return consumed;
        }
        if let Some(body) = state.bodies.local_body.take()
            && let Some(out) = flow.output.as_mut()
        {
            t.consume_input(peeked);
            // A local response from the response phase: its body, whatever the input.
            out.write(&body);
            out.finish(body.len() as u64);
            out.reenable();
            flow.finished = true;
            return consumed;
        }
        flow.seen_input |= !chunk.is_empty();
        let (data, untouched) = if !chunk.is_empty() || (complete && flow.seen_input) {
            match self.run_body_chain(flow, state, chunk, complete) {
                Ok(d) => d,
                Err(()) => {
                    t.consume_input(peeked);
                    flow.finished = true;
                    t.abort_output();
                    return Upstream::Quiet;
                }
            }
        } else {
            (Vec::new(), true)
        };
        match flow.direction {
            Direction::Response => {
                let Some(out) = flow.output.as_mut() else {
                    t.consume_input(peeked);
                    return consumed;
                };
                if untouched && data.len() == peeked {
                    // Every filter passed the chunk on as it came: ATS's blocks go out as they are.
                    out.pass_input(t, peeked);
                } else {
                    t.consume_input(peeked);
                    out.write(&data);
                }
                flow.written += data.len() as u64;
                if complete {
                    out.finish(flow.written);
                    flow.finished = true;
                }
                out.reenable();
            }
            Direction::Request => {
                flow.held.extend_from_slice(&data);
                if flow.held.len() > flow.held_limit {
                    log::error(
                        format!(
                            "ats_wasm: request body exceeds max_body_bytes ({}) of its filters; the request is aborted",
                            flow.held_limit
                        )
                        .as_bytes(),
                    );
                    flow.finished = true;
                    flow.held = Vec::new();
                    t.abort_output();
                    return Upstream::Quiet;
                }
                if complete {
                    // ATS sends the request headers with this exact Content-Length.
                    let mut out = t.open_output(Some(flow.held.len() as u64));
                    out.write(&flow.held);
                    out.finish(flow.held.len() as u64);
                    out.reenable();
                    flow.held = Vec::new();
                    flow.output = Some(out);
                    flow.finished = true;
                }
            }
        }
        consumed
    }

    /// Runs `chunk` through the flow's filters; returns what comes out of the last one and
    /// whether that is `chunk` untouched (every filter passed exactly what it was given, with
    /// no buffered bytes and no edit), or `Err` when the transaction must be aborted (a
    /// fail-closed failure, or a local response after the headers were sent).
    fn run_body_chain(
        &self,
        flow: &mut Flow,
        state: &mut TxnState,
        chunk: Vec<u8>,
        eos: bool,
    ) -> Result<(Vec<u8>, bool), ()> {
        let (kind, phase, what) = match flow.direction {
            Direction::Request => (BufferType::HttpRequestBody, Phase::RequestBody, "proxy_on_request_body"),
            Direction::Response => (BufferType::HttpResponseBody, Phase::ResponseBody, "proxy_on_response_body"),
        };
        let txn = flow.txn;
        let direction = flow.direction;
        let generation = flow.generation.clone();
        let stream = TxnStream { txn, phase };
        let mut data = chunk;
        let mut untouched = true;
        for stage in &mut flow.stages {
            if stage.passthrough {
                continue;
            }
            if data.is_empty() && !eos {
                // An earlier filter buffered everything: nothing reaches the later ones now.
                return Ok((data, false));
            }
            let f = generation.filter(stage.filter);
            let mut buf = std::mem::take(&mut stage.buf);
            untouched &= buf.is_empty();
            if buf.is_empty() {
                buf = data;
            } else {
                buf.extend_from_slice(&data);
            }
            if buf.len() > f.max_body_bytes {
                let err = format!("{} bytes buffered, more than max_body_bytes ({})", buf.len(), f.max_body_bytes);
                let resume = self.failed(f, what, &err);
                stage.passthrough = true;
                if resume == Resume::Error {
                    return Err(());
                }
                data = buf;
                untouched = false;
                continue;
            }
            let Some(pos) = state.contexts.iter().position(|c| c.filter == stage.filter) else {
                stage.passthrough = true;
                data = buf;
                continue;
            };
            let fc = &mut state.contexts[pos];
            let ctx = fc.ctx;
            let len = buf.len();
            let mut lent = Some(buf);
            let r = f.pool.with_leased(&mut fc.lease, |vm| {
                guest::attach_stream(vm, ctx, stream);
                vm.store.data_mut().backend.lend_body(kind, lent.take().unwrap_or_default());
                let action = match direction {
                    Direction::Request => guest::on_request_body(vm, ctx, len, eos),
                    Direction::Response => guest::on_response_body(vm, ctx, len, eos),
                };
                let backend = &mut vm.store.data_mut().backend;
                let (bytes, edited) = backend.take_body();
                untouched &= !edited;
                (action, bytes, backend.take_outbox())
            });
            let r = r.map(|(action, bytes, outbox)| {
                let asked = self.settle(Some(txn), outbox);
                if let Some(control) = asked.control {
                    // Body callbacks do not pause: a control is applied at the next safe point.
                    pause::defer(txn, control);
                }
                (action, bytes, asked.local)
            });
            match r {
                Ok((Ok(action), bytes, local)) => {
                    if local.is_some() {
                        // The headers are on their way: the only honest answer is to abort.
                        log::error(
                            format!(
                                "ats_wasm: filter \"{}\": local response from {what} after the headers were sent; the response is aborted",
                                f.name
                            )
                            .as_bytes(),
                        );
                        return Err(());
                    }
                    if action == Action::Pause && !eos {
                        stage.buf = bytes;
                        data = Vec::new();
                        untouched = false;
                    } else {
                        data = bytes;
                    }
                }
                Ok((Err(e), bytes, _)) => {
                    let fc = state.contexts.remove(pos);
                    stage.passthrough = true;
                    if self.guest_failed(f, fc.lease, what, &e) == Resume::Error {
                        return Err(());
                    }
                    // Fail open: the bytes as the failed callback left them go on.
                    data = bytes;
                    untouched = false;
                }
                Err(e) => {
                    let fc = state.contexts.remove(pos);
                    f.pool.release(fc.lease);
                    stage.passthrough = true;
                    if self.pool_failed(f, "reaching its VM for a body", &e) == Resume::Error {
                        return Err(());
                    }
                    data = lent.take().unwrap_or_default();
                    untouched = false;
                }
            }
        }
        Ok((data, untouched))
    }
}

impl Flow {
    fn new(txn: Txn, generation: &SharedChain, direction: Direction, filters: &[usize], held_limit: usize) -> Self {
        Flow {
            txn,
            generation: generation.clone(),
            signals: Arc::default(),
            direction,
            stages: filters.iter().map(|&filter| Stage { filter, buf: Vec::new(), passthrough: false }).collect(),
            output: None,
            written: 0,
            held: Vec::new(),
            held_limit,
            seen_input: false,
            finished: false,
            dechunk: None,
            input_done: false,
            _live: Counted::new(),
        }
    }
}
