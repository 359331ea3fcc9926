//! Request and response bodies through ATS transforms: `proxy_on_request_body`,
//! `proxy_on_response_body`, the body buffers, and local responses from the response phase.
//!
//! A transform is installed only for transactions with a filter whose YAML says `bodies:
//! request|response|both`, at `READ_REQUEST_HDR` once the request filters ran (a response
//! transform then applies to origin responses and cache hits alike). Each transform runs the
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
pub(super) mod state;

use super::backend::PendingLocalResponse;
use super::chain::no_body;
use super::generation::SharedChain;
use super::pause;
use super::stream::{Phase, TxnStream};
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

/// Response fields a local response keeps from ATS's response: the framing ATS chose and the
/// fields it always sends.
const LOCAL_KEEPS: [&[u8]; 3] = [b"transfer-encoding", b"connection", b"date"];

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
        state.bodies.response_headers_done = true;
        if state.bodies.response_output_open
            && let Some(t) = state.bodies.response
        {
            t.wake();
        }
    }

    /// A filter sent a local response from `proxy_on_response_headers` (a response transform
    /// exists): the client gets exactly its status, headers and body.
    pub(super) fn apply_response_local(txn: Txn, state: &mut TxnState, local: PendingLocalResponse) {
        if let Some(h) = txn.client_response() {
            let mut names = Vec::new();
            h.for_each(&mut |k, _| {
                if !LOCAL_KEEPS.iter().any(|keep| keep.eq_ignore_ascii_case(k))
                    && !names.iter().any(|n: &Vec<u8>| n.eq_ignore_ascii_case(k))
                {
                    names.push(k.to_vec());
                }
            });
            for n in names {
                h.remove(&n);
            }
            h.set_status(local.status);
            match (&local.content_type[..], local.body.is_empty()) {
                (b"", true) => {}
                (b"", false) => {
                    h.add(b"content-type", b"text/plain");
                }
                (t, _) => {
                    h.add(b"content-type", t);
                }
            }
            for (k, v) in &local.headers {
                h.add(k, v);
            }
        }
        state.bodies.local_body = Some(local.body);
    }

    /// One event of a body transform: moves what input there is through the filters.
    fn body_event(&self, t: Transform, flow: &mut Flow) -> Upstream {
        let Some(mut state) = self.slot.take(flow.txn) else {
            // No filter state (cannot happen while the transaction is alive): drain unfiltered.
            flow.stages.iter_mut().for_each(|s| s.passthrough = true);
            let mut empty = TxnState::new(flow.generation.to_chain());
            empty.bodies.response_headers_done = true;
            return self.body_step(t, flow, &mut empty);
        };
        let r = self.body_step(t, flow, &mut state);
        self.slot.put(flow.txn, state);
        r
    }

    fn body_step(&self, t: Transform, flow: &mut Flow, state: &mut TxnState) -> Upstream {
        if flow.direction == Direction::Response {
            if flow.output.is_none() {
                // Opening the output lets ATS send the response headers: SEND_RESPONSE_HDR runs
                // the header callbacks, then wakes this transform for the body.
                flow.output = Some(t.open_output(None));
                state.bodies.response_output_open = true;
            }
            if !state.bodies.response_headers_done {
                return Upstream::Quiet;
            }
        }
        let mut chunk = Vec::new();
        let input = t.read_input(&mut chunk, usize::MAX);
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
            return consumed;
        }
        if let Some(body) = state.bodies.local_body.take()
            && let Some(out) = flow.output.as_mut()
        {
            // A local response from the response phase: its body, whatever the input.
            out.write(&body);
            out.finish(body.len() as u64);
            out.reenable();
            flow.finished = true;
            return consumed;
        }
        flow.seen_input |= !chunk.is_empty();
        let data = if !chunk.is_empty() || (complete && flow.seen_input) {
            match self.run_body_chain(flow, state, chunk, complete) {
                Ok(d) => d,
                Err(()) => {
                    flow.finished = true;
                    t.abort_output();
                    return Upstream::Quiet;
                }
            }
        } else {
            Vec::new()
        };
        match flow.direction {
            Direction::Response => {
                let Some(out) = flow.output.as_mut() else { return consumed };
                out.write(&data);
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

    /// Runs `chunk` through the flow's filters; returns what comes out of the last one, or
    /// `Err` when the transaction must be aborted (a fail-closed failure, or a local response
    /// after the headers were sent).
    fn run_body_chain(&self, flow: &mut Flow, state: &mut TxnState, chunk: Vec<u8>, eos: bool) -> Result<Vec<u8>, ()> {
        let (kind, phase, what) = match flow.direction {
            Direction::Request => (BufferType::HttpRequestBody, Phase::RequestBody, "proxy_on_request_body"),
            Direction::Response => (BufferType::HttpResponseBody, Phase::ResponseBody, "proxy_on_response_body"),
        };
        let txn = flow.txn;
        let direction = flow.direction;
        let generation = flow.generation.clone();
        let stream = TxnStream { txn, phase };
        let mut data = chunk;
        for stage in &mut flow.stages {
            if stage.passthrough {
                continue;
            }
            if data.is_empty() && !eos {
                // An earlier filter buffered everything: nothing reaches the later ones now.
                return Ok(data);
            }
            let f = generation.filter(stage.filter);
            let mut buf = std::mem::take(&mut stage.buf);
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
                (action, backend.take_body(), backend.take_outbox())
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
                }
                Err(e) => {
                    let fc = state.contexts.remove(pos);
                    f.pool.release(fc.lease);
                    stage.passthrough = true;
                    if self.pool_failed(f, "reaching its VM for a body", &e) == Resume::Error {
                        return Err(());
                    }
                    data = lent.take().unwrap_or_default();
                }
            }
        }
        Ok(data)
    }
}

impl Flow {
    fn new(txn: Txn, generation: &SharedChain, direction: Direction, filters: &[usize], held_limit: usize) -> Self {
        Flow {
            txn,
            generation: generation.clone(),
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
        }
    }
}
