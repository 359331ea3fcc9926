//! Spec section "Buffers": `proxy_get_buffer_status`, `proxy_get_buffer_bytes`,
//! `proxy_set_buffer_bytes`, and 0.1.0's `proxy_get_configuration`. The configurations, an
//! HTTP call's response body and a foreign function's arguments are the host's own buffers;
//! the stream buffers (bodies, TCP data) are the backend's.

#![forbid(unsafe_code)]

use crate::abi::backend::Backend;
use crate::abi::buffers::read_range;
use crate::abi::memory::{check_u32, slice, write_u32};
use crate::abi::state::HostState;
use crate::abi::types::{BufferType, HostResult, Status};

use super::caller::{Ctx, HostCallResult, copy_out_scratch, memory};

/// A guest's `proxy_buffer_type_t`; `BAD_ARGUMENT` when unknown.
#[inline]
fn buffer_type(raw: i32) -> HostResult<BufferType> {
    BufferType::from_raw(raw).ok_or(Status::BadArgument)
}

/// `proxy_get_buffer_status(buffer_type, return_buffer_size, return_unused)`: the buffer's
/// size (saturated to `u32`) and flags 0.
#[inline]
pub(super) fn proxy_get_buffer_status<B: Backend>(
    c: &mut Ctx<'_, B>,
    buffer: i32,
    ret_size: i32,
    ret_flags: i32,
) -> HostCallResult {
    let buffer = buffer_type(buffer)?;
    let size = buffer_size(c.data_mut(), buffer)?;
    let memory = memory(c)?;
    let mem = memory.data_mut(&mut *c);
    check_u32(mem.len(), ret_size)?;
    check_u32(mem.len(), ret_flags)?;
    write_u32(mem, ret_size, u32::try_from(size).unwrap_or(u32::MAX))?;
    write_u32(mem, ret_flags, 0)?;
    Ok(())
}

/// `proxy_get_buffer_bytes(buffer_type, start, max_size, return_data, return_size)`: a copy of
/// `[start, start + max_size)` of the buffer, clamped to its end.
#[inline]
pub(super) fn proxy_get_buffer_bytes<B: Backend>(
    c: &mut Ctx<'_, B>,
    buffer: i32,
    start: i32,
    max: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> HostCallResult {
    let buffer = buffer_type(buffer)?;
    copy_out_scratch(c, ret_ptr, ret_len, |st, out| read_buffer(st, buffer, start as u32, max as u32, out))
}

/// `proxy_set_buffer_bytes(buffer_type, start, size, data, data_size)`: replaces
/// `[start, start + size)` of a stream buffer; the host's own buffers are read-only
/// (`BAD_ARGUMENT`), gRPC messages absent (`NOT_FOUND`).
#[inline]
pub(super) fn proxy_set_buffer_bytes<B: Backend>(
    c: &mut Ctx<'_, B>,
    buffer: i32,
    start: i32,
    size: i32,
    vp: i32,
    vl: i32,
) -> HostCallResult {
    let buffer = buffer_type(buffer)?;
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let value = slice(mem, vp, vl)?;
    match buffer {
        BufferType::HttpRequestBody
        | BufferType::HttpResponseBody
        | BufferType::DownstreamData
        | BufferType::UpstreamData => {
            let stream = st.effective_stream().ok_or(Status::NotFound)?;
            st.backend.buffer_set(stream, buffer, start as u32 as usize, size as u32 as usize, value)?;
            Ok(())
        }
        // Read-only buffers.
        BufferType::VmConfiguration
        | BufferType::PluginConfiguration
        | BufferType::HttpCallResponseBody
        | BufferType::ForeignFunctionArguments => Err(Status::BadArgument.into()),
        BufferType::GrpcCallMessage => Err(Status::NotFound.into()),
    }
}

/// 0.1.0's `proxy_get_configuration(return_data, return_size)`: the configuration of the
/// current phase (the VM configuration during `proxy_on_vm_start`, else the plugin's).
#[inline]
pub(super) fn proxy_get_configuration<B: Backend>(c: &mut Ctx<'_, B>, ret_ptr: i32, ret_len: i32) -> HostCallResult {
    copy_out_scratch(c, ret_ptr, ret_len, |st, out| {
        let p = &st.plugin;
        out.extend_from_slice(if st.in_vm_start { &p.vm_configuration } else { &p.plugin_configuration });
        Ok(())
    })
}

/// The size of a buffer (`proxy_get_buffer_status`).
#[inline]
fn buffer_size<B: Backend>(st: &mut HostState<B>, buffer: BufferType) -> HostResult<usize> {
    match buffer {
        BufferType::VmConfiguration => Ok(st.plugin.vm_configuration.len()),
        BufferType::PluginConfiguration => Ok(st.plugin.plugin_configuration.len()),
        BufferType::HttpCallResponseBody => Ok(st.call_response.as_ref().ok_or(Status::NotFound)?.body.len()),
        BufferType::ForeignFunctionArguments => Ok(st.foreign_args.as_ref().ok_or(Status::NotFound)?.len()),
        BufferType::GrpcCallMessage => Err(Status::NotFound),
        _ => {
            let stream = st.effective_stream().ok_or(Status::NotFound)?;
            st.backend.buffer_size(stream, buffer)
        }
    }
}

/// Reads `[start, start + max)` (clamped) of a buffer into `out` (`proxy_get_buffer_bytes`).
#[inline]
fn read_buffer<B: Backend>(
    st: &mut HostState<B>,
    buffer: BufferType,
    start: u32,
    max: u32,
    out: &mut Vec<u8>,
) -> HostCallResult {
    let own: &[u8] = match buffer {
        BufferType::VmConfiguration => &st.plugin.vm_configuration,
        BufferType::PluginConfiguration => &st.plugin.plugin_configuration,
        BufferType::HttpCallResponseBody => &st.call_response.as_ref().ok_or(Status::NotFound)?.body,
        BufferType::ForeignFunctionArguments => st.foreign_args.as_deref().ok_or(Status::NotFound)?,
        BufferType::GrpcCallMessage => return Err(Status::NotFound.into()),
        _ => {
            let stream = st.effective_stream().ok_or(Status::NotFound)?;
            let size = st.backend.buffer_size(stream, buffer)?;
            let r = read_range(size, start, max)?;
            st.backend.buffer_get(stream, buffer, r.start, r.len(), out)?;
            return Ok(());
        }
    };
    out.extend_from_slice(&own[read_range(own.len(), start, max)?]);
    Ok(())
}
