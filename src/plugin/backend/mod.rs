//! The ABI backend over ATS transactions — the plugin's lowest room: header maps (with
//! pseudo-headers), properties, the body buffer of a body callback, and logging are answered
//! at once; everything else a guest asks for during a callback (local responses, stream
//! controls, HTTP calls, queue notices) goes into the VM's [`Outbox`], which the plugin's
//! runner takes and applies after the callback returns.
#![forbid(unsafe_code)]

pub mod call_bounds;
pub mod call_request;
pub mod outbox;
pub mod validate;

use std::time::Duration;

use super::live::TxnId;
use super::properties;
use super::stream::{Phase, StreamControl, TxnStream};
use super::telemetry::FilterMetrics;
use crate::abi::buffers::apply_edit;
use crate::abi::types::HostResult;
use crate::abi::{Backend, BufferType, LocalResponse, LogLevel, MapType, QueueTarget, SharedBound, Status, StreamType};
use crate::ts::headers::HeaderMap;
use crate::ts::hooks::EventThread;
use crate::ts::log;
use crate::ts::txn::Txn;
pub use outbox::{Outbox, OutgoingCall, PendingLocalResponse};

/// The body chunk a body callback works on: everything the filter has buffered so far.
#[derive(Debug, Default)]
pub struct BodyBuffer {
    /// `HttpRequestBody` or `HttpResponseBody`.
    pub kind: Option<BufferType>,
    /// The bytes, as the guest may have changed them.
    pub bytes: Vec<u8>,
    /// The guest wrote to the buffer (`proxy_set_buffer_bytes`).
    pub edited: bool,
}

/// The ATS backend of one VM. Everything about a transaction lives in the transaction; the
/// backend only holds the outbox of what the guest asked for until the plugin takes it, the
/// body buffer while a body callback runs, and what HTTP calls need: the filter's
/// `upstreams:` and the VM's id.
#[derive(Default)]
pub struct AtsBackend {
    /// Allocated when a guest first asks for something; most callbacks ask for nothing, and
    /// then taking it after the callback is a null check.
    outbox: Option<Box<Outbox>>,
    /// Set by the plugin around a body callback ([`AtsBackend::lend_body`]).
    body: BodyBuffer,
    upstreams: std::sync::Arc<[(String, crate::config::Upstream)]>,
    vm: u64,
    /// Where refused writes are counted and reported.
    metrics: Option<std::sync::Arc<FilterMetrics>>,
}

impl AtsBackend {
    /// A backend for a VM of a filter with these `upstreams:`; the VM's id
    /// ([`crate::abi::HostState::vm_uid`]) is set with [`AtsBackend::set_vm`].
    pub fn new(
        upstreams: std::sync::Arc<[(String, crate::config::Upstream)]>,
        metrics: std::sync::Arc<FilterMetrics>,
    ) -> Self {
        AtsBackend { upstreams, metrics: Some(metrics), ..AtsBackend::default() }
    }

    /// `Ok` for a valid write; else the refusal is counted and reported, and the guest gets
    /// `BAD_ARGUMENT` ([`validate`]).
    fn check(&self, valid: Result<(), validate::Rejected>, what: &str) -> HostResult {
        valid.map_err(|r| {
            if let Some(m) = &self.metrics {
                m.rejected_write(r == validate::Rejected::Name, what);
            }
            Status::BadArgument
        })
    }

    /// Checks one header write of `map`: a pseudo-header's characters, or a field.
    fn check_write(&self, map: MapType, key: &[u8], value: &[u8]) -> HostResult {
        let what = if map == MapType::ResponseHeaders { "a response header" } else { "a request header" };
        if key.first() == Some(&b':') {
            self.check(pseudo_value(key, value), what)
        } else {
            self.check(validate::field(key, value), what)
        }
    }

    /// Records the id of the VM this backend belongs to (where call responses go).
    pub fn set_vm(&mut self, vm: u64) {
        self.vm = vm;
    }

    /// Lends `bytes` to the guest as the `kind` body buffer for the next callback.
    pub fn lend_body(&mut self, kind: BufferType, bytes: Vec<u8>) {
        self.body = BodyBuffer { kind: Some(kind), bytes, edited: false };
    }

    /// Takes the body buffer back after the callback (with the guest's changes), and whether
    /// the guest wrote to it.
    pub fn take_body(&mut self) -> (Vec<u8>, bool) {
        let b = std::mem::take(&mut self.body);
        (b.bytes, b.edited)
    }

    fn body_for(&mut self, buffer: BufferType) -> HostResult<&mut Vec<u8>> {
        match self.body.kind {
            Some(k) if k == buffer => Ok(&mut self.body.bytes),
            _ => Err(Status::NotFound),
        }
    }

    /// Takes what the guest asked for since the last time (see [`Outbox`]); `None` when it
    /// asked for nothing.
    pub fn take_outbox(&mut self) -> Option<Box<Outbox>> {
        self.outbox.take()
    }

    fn asked(&mut self) -> &mut Outbox {
        self.outbox.get_or_insert_with(Box::default)
    }
}

const REQUEST_PSEUDO: [&[u8]; 4] = [b":method", b":path", b":authority", b":scheme"];

fn header(s: TxnStream, map: MapType, write: bool) -> HostResult<HeaderMap> {
    let unavailable = if write { Status::BadArgument } else { Status::NotFound };
    if write && s.phase == Phase::Close {
        return Err(unavailable);
    }
    match map {
        MapType::RequestHeaders => s.txn.client_request().ok_or(unavailable),
        MapType::ResponseHeaders if s.phase.has_response() => s.txn.client_response().ok_or(unavailable),
        _ => Err(unavailable),
    }
}

/// The character rules of pseudo-header `key`'s value (its meaning is checked when set).
fn pseudo_value(key: &[u8], value: &[u8]) -> Result<(), validate::Rejected> {
    match key {
        b":method" => validate::token(value),
        _ => validate::request_line_part(value),
    }
}

fn is_tls(txn: Txn) -> bool {
    txn.client_protocol_stack().iter().any(|t| t.starts_with("tls"))
}

/// Appends the value of pseudo-header `key` of `h` to `out`; `false` when it has none.
fn pseudo_get(s: TxnStream, map: MapType, h: &HeaderMap, key: &[u8], out: &mut Vec<u8>) -> bool {
    match (map, key) {
        (MapType::RequestHeaders, b":method") => out.extend_from_slice(&h.method()),
        (MapType::RequestHeaders, b":path") => {
            let Some(url) = h.url_parts() else { return false };
            out.push(b'/');
            out.extend_from_slice(&url.path);
            if !url.query.is_empty() {
                out.push(b'?');
                out.extend_from_slice(&url.query);
            }
        }
        (MapType::RequestHeaders, b":authority") => {
            if !h.get(b"host", out) {
                match h.url_parts() {
                    Some(u) if !u.host.is_empty() => out.extend_from_slice(&u.host),
                    _ => return false,
                }
            }
        }
        (MapType::RequestHeaders, b":scheme") => match h.url_parts() {
            Some(u) if !u.scheme.is_empty() => out.extend_from_slice(&u.scheme),
            _ => out.extend_from_slice(if is_tls(s.txn) { b"https" } else { b"http" }),
        },
        (MapType::ResponseHeaders, b":status") => out.extend_from_slice(h.status().to_string().as_bytes()),
        _ => return false,
    }
    true
}

/// Sets pseudo-header `key` (the request line or status line).
fn pseudo_set(map: MapType, h: &HeaderMap, key: &[u8], value: &[u8]) -> HostResult {
    let ok = match (map, key) {
        (MapType::RequestHeaders, b":method") => !value.is_empty() && h.set_method(value),
        (MapType::RequestHeaders, b":path") => value.first() == Some(&b'/') && h.set_path_and_query(value),
        (MapType::RequestHeaders, b":authority") => h.replace(b"host", value),
        (MapType::ResponseHeaders, b":status") => {
            match std::str::from_utf8(value).ok().and_then(|v| v.parse::<u16>().ok()) {
                Some(code @ 100..=999) => h.set_status(code),
                _ => false,
            }
        }
        // `:scheme` is fixed by the client connection.
        _ => false,
    };
    if ok { Ok(()) } else { Err(Status::BadArgument) }
}

/// Number of fields of `map` as the guest sees it (pseudo-headers included).
pub fn visible_len(map: MapType, h: &HeaderMap) -> usize {
    h.len()
        + match map {
            MapType::RequestHeaders => REQUEST_PSEUDO.len(),
            MapType::ResponseHeaders => 1,
            _ => 0,
        }
}

impl Backend for AtsBackend {
    type Stream = TxnStream;

    fn log(&mut self, filter: &str, level: LogLevel, msg: &[u8]) {
        let mut line = Vec::with_capacity(filter.len() + msg.len() + 16);
        line.extend_from_slice(b"ats_wasm: [");
        line.extend_from_slice(filter.as_bytes());
        line.extend_from_slice(b"] ");
        // One diags.log line per guest message: a Rust SDK panic message spans lines.
        for part in msg.trim_ascii_end().split(|&b| b == b'\n').filter(|p| !p.trim_ascii().is_empty()) {
            if !line.ends_with(b"] ") {
                line.extend_from_slice(b" | ");
            }
            line.extend_from_slice(part.trim_ascii_end());
        }
        match level {
            LogLevel::Trace | LogLevel::Debug | LogLevel::Info => log::debug(&line),
            LogLevel::Warn => log::warning(&line),
            LogLevel::Error | LogLevel::Critical => log::error(&line),
        }
    }

    fn log_level(&self) -> LogLevel {
        if log::debug_enabled() { LogLevel::Trace } else { LogLevel::Warn }
    }

    fn map_get(&mut self, s: TxnStream, map: MapType, key: &[u8], out: &mut Vec<u8>) -> HostResult<bool> {
        let h = header(s, map, false)?;
        if key.first() == Some(&b':') {
            return Ok(pseudo_get(s, map, &h, key, out));
        }
        Ok(h.get(key, out))
    }

    fn map_for_each(&mut self, s: TxnStream, map: MapType, f: &mut dyn FnMut(&[u8], &[u8])) -> HostResult {
        let h = header(s, map, false)?;
        let pseudo: &[&[u8]] = match map {
            MapType::RequestHeaders => &REQUEST_PSEUDO,
            MapType::ResponseHeaders => &[b":status"],
            _ => &[],
        };
        let mut v = Vec::new();
        for key in pseudo {
            v.clear();
            if pseudo_get(s, map, &h, key, &mut v) {
                f(key, &v);
            }
        }
        h.for_each(f);
        Ok(())
    }

    fn map_add(&mut self, s: TxnStream, map: MapType, key: &[u8], value: &[u8]) -> HostResult {
        let h = header(s, map, true)?;
        self.check_write(map, key, value)?;
        if key.first() == Some(&b':') {
            return pseudo_set(map, &h, key, value);
        }
        if h.add(key, value) { Ok(()) } else { Err(Status::InternalFailure) }
    }

    fn map_replace(&mut self, s: TxnStream, map: MapType, key: &[u8], value: &[u8]) -> HostResult {
        let h = header(s, map, true)?;
        self.check_write(map, key, value)?;
        if key.first() == Some(&b':') {
            return pseudo_set(map, &h, key, value);
        }
        if h.replace(key, value) { Ok(()) } else { Err(Status::InternalFailure) }
    }

    fn map_remove(&mut self, s: TxnStream, map: MapType, key: &[u8]) -> HostResult {
        let h = header(s, map, true)?;
        // Pseudo-headers cannot be removed (the request and status lines always exist).
        if key.first() != Some(&b':') {
            h.remove(key);
        }
        Ok(())
    }

    fn map_set_pairs(&mut self, s: TxnStream, map: MapType, pairs: &[(&[u8], &[u8])]) -> HostResult {
        let h = header(s, map, true)?;
        // All or nothing: every pair is checked before the map is cleared.
        for (k, v) in pairs {
            self.check_write(map, k, v)?;
        }
        h.clear();
        for (k, v) in pairs {
            if k.first() == Some(&b':') {
                pseudo_set(map, &h, k, v)?;
            } else if !h.add(k, v) {
                return Err(Status::InternalFailure);
            }
        }
        Ok(())
    }

    fn get_property(&mut self, s: Option<TxnStream>, path: &[&[u8]], out: &mut Vec<u8>) -> HostResult {
        let value = s.and_then(|s| properties::resolve(s, path)).ok_or(Status::NotFound)?;
        value.encode(out);
        Ok(())
    }

    fn continue_stream(&mut self, s: TxnStream, which: StreamType) -> HostResult {
        match which {
            StreamType::HttpRequest | StreamType::HttpResponse => {
                self.asked().stream_controls.push((s.txn, StreamControl::Continue));
                Ok(())
            }
            _ => Err(Status::Unimplemented),
        }
    }

    fn close_stream(&mut self, s: TxnStream, which: StreamType) -> HostResult {
        match which {
            StreamType::HttpRequest | StreamType::HttpResponse => {
                self.asked().stream_controls.push((s.txn, StreamControl::Close));
                Ok(())
            }
            _ => Err(Status::Unimplemented),
        }
    }

    fn queue_ready(&mut self, target: QueueTarget) {
        self.asked().queue_notices.push(target);
    }

    fn shared_refused(&mut self, bound: SharedBound) {
        if let Some(m) = &self.metrics {
            m.shared_refused(bound);
        }
    }

    fn set_tick_period(&mut self, _period: Option<Duration>) -> HostResult {
        // The period is kept in the VM's host state; the plugin's per-thread timer reads it.
        Ok(())
    }

    fn http_call(&mut self, s: Option<TxnStream>, req: &crate::abi::HttpCallRequest<'_>) -> HostResult {
        for (k, v) in req.headers {
            let valid = if k.first() == Some(&b':') { pseudo_value(k, v) } else { validate::field(k, v) };
            self.check(valid, "an HTTP call header")?;
        }
        let target = call_request::resolve(&self.upstreams, req.upstream)?;
        let (method, url, headers) = call_request::build_request(&target, req)?;
        // Calls are sent from, and answered on, an event thread.
        EventThread::current().ok_or(Status::InternalFailure)?;
        let vm = self.vm;
        // A call past a bound is refused like one ATS could not send: the spec's status for
        // "the host failed to send the requested HTTP call", which SDKs hand back as an error.
        let slot = call_bounds::acquire(vm, s.map(|s| TxnId::of(s.txn))).map_err(|refused| {
            if let Some(m) = &self.metrics {
                m.refused_call(refused == call_bounds::Refused::Vm, call_bounds::limits());
            }
            Status::InternalFailure
        })?;
        self.asked().calls.push(OutgoingCall {
            vm,
            token: req.token,
            txn: s.map(|s| s.txn),
            method: method.to_vec(),
            url,
            headers: headers.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
            body: req.body.to_vec(),
            timeout: (!req.timeout.is_zero()).then_some(req.timeout),
            slot,
        });
        Ok(())
    }

    fn set_property(&mut self, s: Option<TxnStream>, path: &[&[u8]], value: &[u8]) -> HostResult {
        let s = s.ok_or(Status::NotFound)?;
        let (map, key): (MapType, &[u8]) = match path {
            [b"request", b"path"] => (MapType::RequestHeaders, b":path"),
            [b"request", b"method"] => (MapType::RequestHeaders, b":method"),
            [b"request", b"host"] => (MapType::RequestHeaders, b":authority"),
            [b"request", b"headers", name] => (MapType::RequestHeaders, name),
            [b"response", b"code"] => {
                // An integer property: 8-byte little-endian, or its decimal text.
                let code = match <[u8; 8]>::try_from(value) {
                    Ok(b) => i64::from_le_bytes(b).to_string(),
                    Err(_) => String::from_utf8_lossy(value).into_owned(),
                };
                return self.map_replace(s, MapType::ResponseHeaders, b":status", code.as_bytes());
            }
            [b"response", b"headers", name] => (MapType::ResponseHeaders, name),
            _ => return Err(Status::NotFound),
        };
        self.map_replace(s, map, key, value)
    }

    fn buffer_size(&mut self, _s: TxnStream, buffer: BufferType) -> HostResult<usize> {
        Ok(self.body_for(buffer)?.len())
    }

    fn buffer_get(
        &mut self,
        _s: TxnStream,
        buffer: BufferType,
        start: usize,
        len: usize,
        out: &mut Vec<u8>,
    ) -> HostResult {
        let body = self.body_for(buffer)?;
        let end = start.saturating_add(len).min(body.len());
        out.extend_from_slice(body.get(start..end).ok_or(Status::BadArgument)?);
        Ok(())
    }

    fn buffer_set(&mut self, _s: TxnStream, buffer: BufferType, start: usize, size: usize, value: &[u8]) -> HostResult {
        let body = match self.body_for(buffer) {
            Ok(b) => b,
            // Writing a buffer the stream does not have now.
            Err(_) => return Err(Status::BadArgument),
        };
        apply_edit(body, start, size, value);
        self.body.edited = true;
        Ok(())
    }

    fn send_local_response(&mut self, s: TxnStream, response: &LocalResponse<'_>) -> HostResult {
        // From the request phase ATS builds the response itself (the origin is not contacted).
        // From the response phase the body can only be replaced through the response
        // transform (`bodies: response|both`); without one the call is unimplemented.
        if !matches!(s.phase, Phase::Request | Phase::ResponseTransformed | Phase::ResponseBody) {
            return Err(Status::Unimplemented);
        }
        let status =
            u16::try_from(response.status_code).ok().filter(|c| (100..=999).contains(c)).ok_or(Status::BadArgument)?;
        // Empty when the guest gives none (`text/plain` is the default for a body).
        let mut content_type = Vec::new();
        let mut headers = Vec::with_capacity(response.headers.len());
        for (k, v) in response.headers {
            self.check(validate::field(k, v), "a local response header")?;
            if k.eq_ignore_ascii_case(b"content-type") {
                content_type = v.to_vec();
            } else {
                headers.push((k.to_vec(), v.to_vec()));
            }
        }
        self.asked().local_response(PendingLocalResponse {
            txn: s.txn,
            status,
            body: response.body.to_vec(),
            content_type,
            headers,
        });
        Ok(())
    }
}
