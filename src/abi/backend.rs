//! What the ABI host needs from the proxy it runs in.
//!
//! The ATS plugin implements [`Backend`] over real transactions; [`super::testing`] implements
//! it in memory so the host can be tested with real guest modules and no ATS.
//!
//! Everything that is the same in every proxy lives in the ABI layer, not here: checked guest
//! memory, serialization, contexts, the configuration buffers, the `plugin_*` properties, the
//! process-wide shared data, shared queues and metrics, HTTP-call responses while they are
//! delivered, foreign-function arguments and the built-in foreign functions. A backend provides
//! only what lives in the proxy: header maps, bodies, stream control, properties of the
//! transaction, outgoing HTTP calls, timers and cross-VM notifications.
//!
//! Every method added after the first slice has a default implementation that answers the
//! spec's status for "not available" (`NOT_FOUND`) or `UNIMPLEMENTED`, so a backend implements
//! only what it supports.

#![forbid(unsafe_code)]

use std::time::Duration;

use super::types::{BufferType, HostResult, LogLevel, MapType, SharedBound, Status, StreamType};

/// A response the guest asked the host to send instead of forwarding (`proxy_send_local_response`).
#[derive(Debug)]
pub struct LocalResponse<'a> {
    /// HTTP status code (the spec does not restrict it; 2xx/3xx are valid too).
    pub status_code: u32,
    /// `status_code_details` (free text for logs).
    pub details: &'a [u8],
    /// Response body.
    pub body: &'a [u8],
    /// Extra response headers, decoded from the spec's serialization.
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// `grpc_status`; `-1` (as the SDKs pass it) when not a gRPC response.
    pub grpc_status: i32,
}

/// An outgoing HTTP call (`proxy_http_call`), already validated by the ABI layer: `headers`
/// contain `:method`, `:path` and `:authority`.
#[derive(Debug)]
pub struct HttpCallRequest<'a> {
    /// The token the guest got back; pass it to [`super::guest::on_http_call_response`].
    pub token: u32,
    /// Upstream (cluster) name, as the guest wrote it.
    pub upstream: &'a [u8],
    /// Request headers, pseudo-headers included.
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// Request body.
    pub body: &'a [u8],
    /// Request trailers.
    pub trailers: &'a [(&'a [u8], &'a [u8])],
    /// How long to wait for the response.
    pub timeout: Duration,
}

/// Where a shared-queue notification must go: the root context of the VM that registered the
/// queue. `vm` is that VM's process-unique id ([`super::HostState::vm_uid`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueTarget {
    /// The process-unique id of the VM that registered the queue.
    pub vm: u64,
    /// Its root context id (`plugin_context_id` of `proxy_on_queue_ready`).
    pub context_id: u32,
    /// The queue that has a new item.
    pub queue_id: u32,
}

/// The proxy side of the ABI.
///
/// `Stream` names one HTTP (or L4) stream (in ATS: a transaction and the phase it is in). The
/// host passes the stream of the effective context to each call; calls about a map or buffer
/// the stream does not have right now answer `NOT_FOUND` (reads) or `BAD_ARGUMENT` (writes),
/// as Envoy does. Calls made from the root context, which has no stream, get `None` where a
/// stream is optional.
///
/// Pseudo-headers: the request header map must carry `:method`, `:path`, `:authority` and
/// `:scheme`, the response header map `:status`, as fields of the map (first, in that order, in
/// [`Backend::map_for_each`]); `map_get`/`map_replace` on them read and change the request line
/// or status line. [`super::testing::MemoryBackend`] simply stores them as fields.
pub trait Backend: Send + 'static {
    /// A handle on one HTTP stream; cheap to copy.
    type Stream: Copy + Send + 'static;

    /// Writes a guest log line (`filter` is the configured filter name).
    fn log(&mut self, filter: &str, level: LogLevel, msg: &[u8]);

    /// The lowest level that [`Backend::log`] does not discard.
    fn log_level(&self) -> LogLevel;

    /// Appends the value of `key` in `map` to `out`; `Ok(false)` when the key is absent.
    /// Several fields of the same name are joined with `", "` (RFC 9110, 5.3).
    fn map_get(&mut self, s: Self::Stream, map: MapType, key: &[u8], out: &mut Vec<u8>) -> HostResult<bool>;

    /// Calls `f` with every field of `map`, in order (pseudo-headers first).
    fn map_for_each(&mut self, s: Self::Stream, map: MapType, f: &mut dyn FnMut(&[u8], &[u8])) -> HostResult;

    /// Adds a field (keeps existing fields of the same name).
    fn map_add(&mut self, s: Self::Stream, map: MapType, key: &[u8], value: &[u8]) -> HostResult;

    /// Sets `key` to exactly one field with `value`, adding it when missing.
    fn map_replace(&mut self, s: Self::Stream, map: MapType, key: &[u8], value: &[u8]) -> HostResult;

    /// Removes every field named `key`; OK when there is none.
    fn map_remove(&mut self, s: Self::Stream, map: MapType, key: &[u8]) -> HostResult;

    /// Replaces the whole map with `pairs` (fields absent from `pairs` are removed).
    fn map_set_pairs(&mut self, s: Self::Stream, map: MapType, pairs: &[(&[u8], &[u8])]) -> HostResult;

    /// The size of a stream buffer (`HTTP_REQUEST_BODY`, `HTTP_RESPONSE_BODY`,
    /// `DOWNSTREAM_DATA`, `UPSTREAM_DATA`): everything buffered so far. `NOT_FOUND` when the
    /// stream has no such buffer now.
    fn buffer_size(&mut self, s: Self::Stream, buffer: BufferType) -> HostResult<usize> {
        let _ = (s, buffer);
        Err(Status::NotFound)
    }

    /// Appends bytes `[start, start + len)` of a stream buffer to `out`. The ABI layer has
    /// checked the range against [`Backend::buffer_size`].
    fn buffer_get(
        &mut self,
        s: Self::Stream,
        buffer: BufferType,
        start: usize,
        len: usize,
        out: &mut Vec<u8>,
    ) -> HostResult {
        let _ = (s, buffer, start, len, out);
        Err(Status::NotFound)
    }

    /// Replaces `size` bytes at `start` of a stream buffer with `value`: `start >= len` appends,
    /// `start == 0 && size == 0` prepends, otherwise `[start, min(start + size, len))` is
    /// replaced (see [`super::buffers::apply_edit`]).
    fn buffer_set(
        &mut self,
        s: Self::Stream,
        buffer: BufferType,
        start: usize,
        size: usize,
        value: &[u8],
    ) -> HostResult {
        let _ = (s, buffer, start, size, value);
        Err(Status::NotFound)
    }

    /// Resumes a paused direction of the stream (`proxy_continue_stream`).
    fn continue_stream(&mut self, s: Self::Stream, which: StreamType) -> HostResult {
        let _ = (s, which);
        Err(Status::Unimplemented)
    }

    /// Closes or resets a direction of the stream (`proxy_close_stream`).
    fn close_stream(&mut self, s: Self::Stream, which: StreamType) -> HostResult {
        let _ = (s, which);
        Err(Status::Unimplemented)
    }

    /// Sends `response` instead of the upstream's (`proxy_send_local_response`).
    fn send_local_response(&mut self, s: Self::Stream, response: &LocalResponse<'_>) -> HostResult {
        let _ = (s, response);
        Err(Status::Unimplemented)
    }

    /// Appends the value of the property at `path` (already split into its parts) to `out`,
    /// encoded after Envoy's conventions (see [`super::properties`]). `NOT_FOUND` for unknown
    /// paths. The `plugin_*` properties never reach the backend.
    fn get_property(&mut self, s: Option<Self::Stream>, path: &[&[u8]], out: &mut Vec<u8>) -> HostResult {
        let _ = (s, path, out);
        Err(Status::NotFound)
    }

    /// Sets the property at `path`. `NOT_FOUND` for paths that cannot be set.
    fn set_property(&mut self, s: Option<Self::Stream>, path: &[&[u8]], value: &[u8]) -> HostResult {
        let _ = (s, path, value);
        Err(Status::NotFound)
    }

    /// Starts (`Some`) or stops (`None`) calling [`super::guest::on_tick`] on this VM every
    /// period (`proxy_set_tick_period_milliseconds`).
    fn set_tick_period(&mut self, period: Option<Duration>) -> HostResult {
        let _ = period;
        Err(Status::Unimplemented)
    }

    /// Sends an HTTP call; the response (or a failure, with no headers) must later be delivered
    /// to this VM with [`super::guest::on_http_call_response`] and `req.token`.
    /// `BAD_ARGUMENT` for an unknown upstream, `INTERNAL_FAILURE` when it cannot be sent.
    fn http_call(&mut self, s: Option<Self::Stream>, req: &HttpCallRequest<'_>) -> HostResult {
        let _ = (s, req);
        Err(Status::Unimplemented)
    }

    /// An item was enqueued on a shared queue: arrange for [`super::guest::on_queue_ready`] to
    /// run on the VM `target.vm` (possibly on another thread) with `target.context_id` and
    /// `target.queue_id`. Called on the backend of the VM that enqueued, after the item is in
    /// the queue. The default drops the notification (the item stays queued).
    fn queue_ready(&mut self, target: QueueTarget) {
        let _ = target;
    }

    /// A shared-data or shared-queue write of this VM was refused by `bound`: nothing was
    /// stored and the guest got [`SharedBound::status`]. For counting; the default ignores it.
    fn shared_refused(&mut self, bound: SharedBound) {
        let _ = bound;
    }

    /// Appends a description of the current thread and VM pool to `out` (the `thread_info`
    /// foreign function), e.g. `thread=3 pool_size=2`.
    fn thread_info(&mut self, out: &mut Vec<u8>) -> HostResult {
        let _ = out;
        Err(Status::Unimplemented)
    }

    /// A foreign function the ABI layer does not implement itself: append its result to `out`.
    /// `NOT_FOUND` for unknown names.
    fn foreign_function(&mut self, s: Option<Self::Stream>, name: &[u8], args: &[u8], out: &mut Vec<u8>) -> HostResult {
        let _ = (s, name, args, out);
        Err(Status::NotFound)
    }
}
