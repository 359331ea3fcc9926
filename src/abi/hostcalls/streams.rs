//! Spec sections "Common HTTP and TCP stream operations" and "HTTP streams":
//! `proxy_continue_stream`, `proxy_close_stream`, `proxy_send_local_response`,
//! `proxy_get_status`, and 0.1.0's `proxy_continue_request`, `proxy_continue_response` and
//! `proxy_clear_route_cache`. Each acts on the effective context's stream.

#![forbid(unsafe_code)]

use crate::abi::backend::{Backend, LocalResponse};
use crate::abi::memory::slice;
use crate::abi::serialization::decode_pairs;
use crate::abi::state::HostState;
use crate::abi::types::{HostResult, Status, StreamType};

use super::caller::{Ctx, HostCallResult, check_ret, copy_out_scratch, memory, put_u32};

/// A guest's `proxy_stream_type_t`; `BAD_ARGUMENT` when unknown.
#[inline]
fn stream_type(raw: i32) -> HostResult<StreamType> {
    StreamType::from_raw(raw).ok_or(Status::BadArgument)
}

/// Runs a stream-control operation on the effective context's stream; `BAD_ARGUMENT` when the
/// effective context has none (the root context).
#[inline]
fn stream_op<B: Backend>(st: &mut HostState<B>, op: impl FnOnce(&mut B, B::Stream) -> HostResult) -> HostCallResult {
    let stream = st.effective_stream().ok_or(Status::BadArgument)?;
    op(&mut st.backend, stream)?;
    Ok(())
}

/// `proxy_continue_stream(stream_type)`: resumes a paused direction of the stream.
#[inline]
pub(super) fn proxy_continue_stream<B: Backend>(c: &mut Ctx<'_, B>, which: i32) -> HostCallResult {
    let which = stream_type(which)?;
    stream_op(c.data_mut(), |b, s| b.continue_stream(s, which))
}

/// `proxy_close_stream(stream_type)`: closes or resets a direction of the stream.
#[inline]
pub(super) fn proxy_close_stream<B: Backend>(c: &mut Ctx<'_, B>, which: i32) -> HostCallResult {
    let which = stream_type(which)?;
    stream_op(c.data_mut(), |b, s| b.close_stream(s, which))
}

/// 0.1.0's `proxy_continue_request()`: `proxy_continue_stream(HTTP_REQUEST)`.
#[inline]
pub(super) fn proxy_continue_request<B: Backend>(c: &mut Ctx<'_, B>) -> HostCallResult {
    stream_op(c.data_mut(), |b, s| b.continue_stream(s, StreamType::HttpRequest))
}

/// 0.1.0's `proxy_continue_response()`: `proxy_continue_stream(HTTP_RESPONSE)`.
#[inline]
pub(super) fn proxy_continue_response<B: Backend>(c: &mut Ctx<'_, B>) -> HostCallResult {
    stream_op(c.data_mut(), |b, s| b.continue_stream(s, StreamType::HttpResponse))
}

/// 0.1.0's `proxy_clear_route_cache()`: `OK` and nothing else — ATS routes (remaps) after the
/// request headers; there is no cache to clear.
#[inline]
pub(super) fn proxy_clear_route_cache<B: Backend>(_: &mut Ctx<'_, B>) -> HostCallResult {
    Ok(())
}

/// `proxy_send_local_response(status_code, status_code_details_data, status_code_details_size,
/// body_data, body_size, headers_data, headers_size, grpc_status)`: the stream is answered
/// with this response instead of the upstream's; `BAD_ARGUMENT` from the root context.
#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
#[inline]
pub(super) fn proxy_send_local_response<B: Backend>(
    c: &mut Ctx<'_, B>,
    code: i32,
    dp: i32,
    dl: i32,
    bp: i32,
    bl: i32,
    hp: i32,
    hl: i32,
    grpc: i32,
) -> HostCallResult {
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let details = slice(mem, dp, dl)?;
    let body = slice(mem, bp, bl)?;
    let headers = decode_pairs(slice(mem, hp, hl)?)?;
    let stream = st.effective_stream().ok_or(Status::BadArgument)?;
    let resp = LocalResponse { status_code: code as u32, details, body, headers: &headers, grpc_status: grpc };
    st.backend.send_local_response(stream, &resp)?;
    Ok(())
}

/// `proxy_get_status(return_status_code, return_status_message_data,
/// return_status_message_size)`: during `proxy_on_http_call_response`, the response's
/// `:status` and the failure message (empty on success); code 0 and an empty message
/// otherwise.
#[inline]
pub(super) fn proxy_get_status<B: Backend>(
    c: &mut Ctx<'_, B>,
    ret_code: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> HostCallResult {
    check_ret(c, ret_code)?;
    let code = c.data().call_response.as_ref().map(|r| r.status_code()).unwrap_or(0);
    copy_out_scratch(c, ret_ptr, ret_len, |st, out| {
        if let Some(r) = &st.call_response {
            out.extend_from_slice(&r.message);
        }
        Ok(())
    })?;
    put_u32(c, ret_code, code)?;
    Ok(())
}
