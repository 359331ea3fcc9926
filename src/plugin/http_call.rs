//! `proxy_http_call` in ATS: resolving the upstream, sending the request (through
//! [`crate::ts::fetch`]), and delivering the response to the VM and context that made the call.
//!
//! Lifetimes. A call is recorded in its thread's [`PENDING`] table under a fresh id, with the
//! VM's process-unique id, the guest's token and — for a call from a stream context — the
//! transaction. The outcome always comes back on that thread (the fetch layer posts it
//! there), and is delivered only if the id is still in the table:
//! - `TXN_CLOSE` removes the transaction's entries ([`Plugin::forget_calls`]) and the tokens
//!   from its shared VMs, so a late response finds nothing and is dropped: nothing ever touches
//!   a closed transaction or a released lease. Transaction handles are never dereferenced from
//!   the table once their transaction closed, because the same thread removes them first.
//! - A stream call's VM is found through the transaction's own leases; a root call's VM among
//!   this thread's pooled VMs. A VM that was poisoned meanwhile is simply not found.
//! - The fetch itself always ends (complete, failed, or the call's timeout), and frees all its
//!   ATS objects then; an entry removed early just means its outcome is discarded.
//!
//! Internal requests. The fetch layer's requests are internal ATS transactions, so they reach
//! our own `READ_REQUEST_HDR` hook. [`internal_request`] handles every internal transaction:
//! filters never run on them (another plugin's internal fetches included); those carrying
//! [`CALL_MARKER`] (ours) lose the marker and skip remap and the cache, so they go exactly
//! to the upstream their absolute URL names, `remap_required` or not.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::backend::{Phase, TxnStream, take_stream_control};
use super::{PLUGIN, Plugin, one_line};
use crate::abi::types::HostResult;
use crate::abi::{HttpCallRequest, HttpCallResponse, Status, guest};
use crate::config::{Scheme, Upstream};
use crate::ts::fetch::{FetchHandler, FetchOutcome, FetchRequest, fetch};
use crate::ts::hooks::{EventThread, HttpHook, TxnCont};
use crate::ts::log;
use crate::ts::txn::{Resume, Txn};

/// The header that marks a request as one of our HTTP calls (removed before it leaves ATS).
pub(crate) const CALL_MARKER: &[u8] = b"x-ats-wasm-call";

/// A call in flight, as its thread remembers it.
struct Pending {
    /// The VM that made it ([`crate::abi::HostState::vm_uid`]).
    vm: u64,
    /// The guest's token.
    token: u32,
    /// The transaction of the stream context that made it; `None` for the root context.
    txn: Option<Txn>,
}

thread_local! {
    /// This thread's calls in flight, by call id.
    static PENDING: RefCell<HashMap<u64, Pending>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u64> = const { Cell::new(1) };
}

fn is_hop_by_hop(k: &[u8]) -> bool {
    [&b"host"[..], b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"upgrade", b"te"]
        .iter()
        .any(|h| k.eq_ignore_ascii_case(h))
        || k.eq_ignore_ascii_case(CALL_MARKER)
}

/// Where `upstream` goes: a cluster of the filter's `upstreams:`, else a literal `host:port` or
/// `http(s)://host[:port]`.
pub(crate) fn resolve(upstreams: &[(String, Upstream)], upstream: &[u8]) -> HostResult<Upstream> {
    let name = std::str::from_utf8(upstream).map_err(|_| Status::BadArgument)?;
    if let Some((_, u)) = upstreams.iter().find(|(n, _)| n == name) {
        return Ok(u.clone());
    }
    Upstream::parse(name).map_err(|_| Status::BadArgument)
}

/// A call's method, absolute URL and header fields.
pub(crate) type BuiltRequest<'a> = (&'a [u8], Vec<u8>, Vec<(&'a [u8], &'a [u8])>);

/// Builds the absolute URL and header list of a call: `:method` and `:path` make the request
/// line, `:authority` the `Host` header; the scheme is `https` when the upstream or `:scheme`
/// says so.
pub(crate) fn build_request<'a>(target: &Upstream, req: &'a HttpCallRequest<'a>) -> HostResult<BuiltRequest<'a>> {
    let pseudo = |name: &[u8]| req.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let method = pseudo(b":method").filter(|m| !m.is_empty()).ok_or(Status::BadArgument)?;
    let path = pseudo(b":path").filter(|p| p.first() == Some(&b'/')).ok_or(Status::BadArgument)?;
    let authority = pseudo(b":authority").ok_or(Status::BadArgument)?;
    if method.iter().chain(path).chain(authority).any(|&b| b <= b' ' || b == 0x7f) {
        return Err(Status::BadArgument);
    }
    let https = target.scheme == Scheme::Https || pseudo(b":scheme") == Some(b"https");
    let mut url = Vec::with_capacity(16 + path.len());
    url.extend_from_slice(if https { b"https://" } else { b"http://" });
    url.extend_from_slice(target.authority().as_bytes());
    url.extend_from_slice(path);
    let mut headers = Vec::with_capacity(req.headers.len() + 2);
    headers.push((&b"Host"[..], authority));
    for (k, v) in req.headers {
        if k.first() != Some(&b':') && !is_hop_by_hop(k) {
            headers.push((*k, *v));
        }
    }
    // The marker carries `:authority`, restored as `Host` before the request leaves ATS.
    headers.push((CALL_MARKER, authority));
    Ok((method, url, headers))
}

/// Sends a guest's call; the outcome comes back to this thread through [`Deliver`].
pub(crate) fn dispatch(
    upstreams: &[(String, Upstream)],
    vm: u64,
    stream: Option<TxnStream>,
    req: &HttpCallRequest<'_>,
) -> HostResult {
    let target = resolve(upstreams, req.upstream)?;
    let (method, url, headers) = build_request(&target, req)?;
    let home = EventThread::current().ok_or(Status::InternalFailure)?;
    let id = NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1).max(1));
        id
    });
    let pending = Pending { vm, token: req.token, txn: stream.map(|s| s.txn) };
    PENDING.with(|p| p.borrow_mut().insert(id, pending));
    let timeout = (!req.timeout.is_zero()).then_some(req.timeout);
    let fr = FetchRequest { method, url: &url, headers: &headers, body: req.body, timeout };
    if !fetch::<Deliver>(&fr, home, id) {
        PENDING.with(|p| p.borrow_mut().remove(&id));
        return Err(Status::InternalFailure);
    }
    Ok(())
}

/// An internal transaction reached `READ_REQUEST_HDR`: no filter runs on it; one of our calls
/// skips remap and cache, and gets a `SEND_REQUEST_HDR` hook ([`call_request_leaving`]).
pub(crate) fn internal_request(txn: Txn, cont: TxnCont) {
    let Some(h) = txn.client_request() else { return };
    let mut v = Vec::new();
    if h.get(CALL_MARKER, &mut v) {
        txn.set_up_as_plugin_call();
        cont.add_to_txn(txn, HttpHook::SendRequestHdr);
        cont.add_to_txn(txn, HttpHook::SendResponseHdr);
    }
}

/// One of our calls is about to leave ATS: the marker goes, and `Host` becomes the call's
/// `:authority` (the marker's value) — ATS set it from the absolute URL, which names the
/// upstream's address instead.
pub(crate) fn call_request_leaving(txn: Txn) {
    let Some(h) = txn.server_request() else { return };
    let mut authority = Vec::new();
    if h.get(CALL_MARKER, &mut authority) {
        h.remove(CALL_MARKER);
        if !authority.is_empty() {
            h.replace(b"host", &authority);
        }
    }
}

/// One of our calls' responses is about to leave ATS for the fetch SM. When ATS made it up
/// itself (no usable origin response: connection refused, DNS failure, origin timeout, a
/// response that is not HTTP), it is marked
/// with [`CALL_FAILED`], so the call fails (no headers) as the spec wants for a failed call,
/// instead of looking like an answer from the upstream.
pub(crate) fn call_response_leaving(txn: Txn) {
    let Some(h) = txn.client_response() else { return };
    let status = h.status();
    // The cache is off for calls, so an origin answer reaches the fetch SM with its own status;
    // a different (or no) origin status means ATS answered instead (e.g. 502 for a response
    // that did not parse).
    if txn.server_response_status() != Some(status) {
        h.replace(CALL_FAILED, status.to_string().as_bytes());
    }
}

/// The header marking a call response ATS generated itself (value: its status).
pub(crate) const CALL_FAILED: &[u8] = b"x-ats-wasm-call-failed";

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
    /// Forgets the calls `txn` has in flight (it is closing): their responses will be dropped.
    /// Returns `(vm, token)` of each, for the caller to cancel in the VMs it still holds.
    pub(super) fn forget_calls(txn: Txn) -> Vec<(u64, u32)> {
        PENDING.with(|p| {
            let mut p = p.borrow_mut();
            let ids: Vec<u64> = p.iter().filter(|(_, c)| c.txn == Some(txn)).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| p.remove(&id)).map(|c| (c.vm, c.token)).collect()
        })
    }

    fn deliver_call(&self, pending: Pending, response: HttpCallResponse) {
        match pending.txn {
            Some(txn) => self.deliver_stream_call(txn, &pending, response),
            None => self.deliver_root_call(&pending, response),
        }
        self.apply_stream_controls();
    }

    /// A root context's call: its VM is one of this thread's pooled VMs (shared VMs, or the
    /// tick VM of a `transaction`-isolation filter).
    fn deliver_root_call(&self, pending: &Pending, response: HttpCallResponse) {
        let mut response = Some(response);
        for f in &self.filters {
            for pool in [Some(&f.pool), f.tick_pool.as_ref()].into_iter().flatten() {
                let mut failed = None;
                pool.for_each_local(|r, vm| {
                    if vm.store.data().vm_uid() == pending.vm
                        && let Some(resp) = response.take()
                        && let Err(e) = guest::on_http_call_response(vm, pending.token, resp)
                    {
                        failed = Some((r, e));
                    }
                });
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

    /// A stream context's call: its VM is leased by the (live) transaction. A local response or
    /// a stream control from the callback resumes the parked transaction.
    fn deliver_stream_call(&self, txn: Txn, pending: &Pending, response: HttpCallResponse) {
        let Some(mut state) = self.slot.take(txn) else { return };
        // A parked transaction is in its paused phase; one that went on without waiting is
        // somewhere ATS is running it, so the guest only reads (as from `proxy_on_log`).
        let phase = state.paused.as_ref().map_or(Phase::Close, |p| p.phase);
        let stream = TxnStream { txn, phase };
        let mut found = None;
        for (i, fc) in state.contexts.iter_mut().enumerate() {
            let f = &self.filters[fc.filter];
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
        let f = &self.filters[fc.filter];
        let ctx = fc.ctx;
        let r = f.pool.with_leased(&mut fc.lease, |vm| {
            guest::attach_stream(vm, ctx, stream);
            guest::on_http_call_response(vm, pending.token, response)?;
            Ok::<_, wasmtime::Error>(vm.store.data_mut().backend.take_local_response(txn))
        });
        let parked_in = state.paused.as_ref().map(|p| p.phase);
        match r {
            Ok(Ok(Some(local))) if parked_in == Some(Phase::Request) => {
                // Answered locally: later filters' request callbacks do not run.
                take_stream_control(txn);
                state.paused = None;
                state.local_response_headers = Some(local.headers);
                let resume = self.finish_request_phase(txn, state, Resume::Continue);
                txn.reenable(resume);
            }
            Ok(Ok(_)) => {
                self.slot.put(txn, state);
            }
            Ok(Err(e)) => {
                let fc = state.contexts.remove(i);
                let fail_open = f.fail_open;
                let name = f.name.clone();
                self.guest_failed(f, fc.lease, "proxy_on_http_call_response", &e);
                take_stream_control(txn);
                if parked_in.is_some() {
                    self.fail_parked(txn, state, fail_open, &name);
                } else {
                    self.slot.put(txn, state);
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
    use std::time::Duration;

    use super::*;

    fn req<'a>(headers: &'a [(&'a [u8], &'a [u8])]) -> HttpCallRequest<'a> {
        HttpCallRequest { token: 1, upstream: b"auth", headers, body: b"", trailers: &[], timeout: Duration::ZERO }
    }

    #[test]
    fn upstreams_resolve_by_cluster_name_then_as_literals() {
        let ups = vec![("auth".to_string(), Upstream::parse("https://127.0.0.1:9443").unwrap())];
        assert_eq!(resolve(&ups, b"auth").unwrap().port, 9443);
        let lit = resolve(&ups, b"localhost:8080").unwrap();
        assert_eq!((lit.host.as_str(), lit.port, lit.scheme), ("localhost", 8080, Scheme::Http));
        assert_eq!(resolve(&ups, b"other"), Err(Status::BadArgument));
        assert_eq!(resolve(&ups, b"\xff:80"), Err(Status::BadArgument));
    }

    #[test]
    fn requests_are_built_from_pseudo_headers() {
        let h: &[(&[u8], &[u8])] = &[
            (b":method", b"POST"),
            (b":path", b"/check?x=1"),
            (b":authority", b"auth.example"),
            (b"authorization", b"Bearer t"),
            (b"content-length", b"99"),
            (b"x-ats-wasm-call", b"spoof"),
        ];
        let r = req(h);
        let up = Upstream::parse("127.0.0.1:9000").unwrap();
        let (method, url, headers) = build_request(&up, &r).unwrap();
        assert_eq!(method, b"POST");
        assert_eq!(url, b"http://127.0.0.1:9000/check?x=1");
        let want: Vec<(&[u8], &[u8])> =
            vec![(b"Host", b"auth.example"), (b"authorization", b"Bearer t"), (CALL_MARKER, b"auth.example")];
        assert_eq!(headers, want);

        let tls: &[(&[u8], &[u8])] =
            &[(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a"), (b":scheme", b"https")];
        let r = req(tls);
        assert_eq!(build_request(&up, &r).unwrap().1, b"https://127.0.0.1:9000/");
        let v6 = Upstream::parse("[::1]:81").unwrap();
        assert_eq!(build_request(&v6, &r).unwrap().1, b"https://[::1]:81/");

        for bad in [
            &[(&b":method"[..], &b"GET"[..]), (b":path", b"nope"), (b":authority", b"a")][..],
            &[(b":method", b"G T"), (b":path", b"/"), (b":authority", b"a")],
            &[(b":path", b"/"), (b":authority", b"a")],
        ] {
            let r = req(bad);
            assert_eq!(build_request(&up, &r).err(), Some(Status::BadArgument));
        }
    }

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
