//! Spec sections "HTTP calls" and "gRPC calls": `proxy_http_call`. gRPC is not implemented:
//! the `proxy_grpc_*` imports get the generic stubs of [`super::linker_for`], which answer
//! `UNIMPLEMENTED` and warn once per module.

#![forbid(unsafe_code)]

use std::time::Duration;

use crate::abi::backend::{Backend, HttpCallRequest};
use crate::abi::memory::{slice, write_u32};
use crate::abi::serialization::decode_pairs;
use crate::abi::types::Status;

use super::caller::{Ctx, HostCallResult, check_ret, memory};

/// `proxy_http_call(upstream_name_data, upstream_name_size, headers_data, headers_size,
/// body_data, body_size, trailers_data, trailers_size, timeout_milliseconds, return_token)`:
/// hands the call to the backend and returns a token unused by any outstanding call; the
/// response comes later to the calling context. `BAD_ARGUMENT` without `:method`, `:path` or
/// `:authority`.
#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
#[inline]
pub(super) fn proxy_http_call<B: Backend>(
    c: &mut Ctx<'_, B>,
    up: i32,
    ul: i32,
    hp: i32,
    hl: i32,
    bp: i32,
    bl: i32,
    tp: i32,
    tl: i32,
    timeout: i32,
    ret: i32,
) -> HostCallResult {
    check_ret(c, ret)?;
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let upstream = slice(mem, up, ul)?;
    let headers = decode_pairs(slice(mem, hp, hl)?)?;
    let body = slice(mem, bp, bl)?;
    let trailers = decode_pairs(slice(mem, tp, tl)?)?;
    for required in [&b":method"[..], b":path", b":authority"] {
        if !headers.iter().any(|(k, v)| *k == required && !v.is_empty()) {
            return Err(Status::BadArgument.into());
        }
    }
    let mut token = st.next_token;
    while token == 0 || st.http_calls.contains_key(&token) {
        token = token.wrapping_add(1);
    }
    let req = HttpCallRequest {
        token,
        upstream,
        headers: &headers,
        body,
        trailers: &trailers,
        timeout: Duration::from_millis(timeout as u32 as u64),
    };
    let stream = st.effective_stream();
    st.backend.http_call(stream, &req)?;
    st.next_token = token.wrapping_add(1);
    let ctx = st.effective_context;
    st.http_calls.insert(token, ctx);
    write_u32(mem, ret, token)?;
    Ok(())
}
