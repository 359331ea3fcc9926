//! Spec section "HTTP fields": the `proxy_*_header_map_*` functions. Request and response
//! headers and trailers are the backend's; an HTTP call's response headers and trailers are
//! the host's own (read-only); gRPC metadata is absent (`NOT_FOUND`).

#![forbid(unsafe_code)]

use crate::abi::backend::Backend;
use crate::abi::memory::slice;
use crate::abi::serialization::decode_pairs;
use crate::abi::state::HostState;
use crate::abi::types::{HostResult, MapType, Status};

use super::caller::{Ctx, HostCallResult, HostError, copy_out_scratch, memory, put_u32, read_guest};

/// A guest's `proxy_map_type_t`; `BAD_ARGUMENT` when unknown.
#[inline]
fn map_type(raw: i32) -> HostResult<MapType> {
    MapType::from_raw(raw).ok_or(Status::BadArgument)
}

/// `proxy_get_header_map_value(map_type, key_data, key_size, return_value_data,
/// return_value_size)`: the value of a field (case-insensitive), repeated fields joined with
/// `", "`; `NOT_FOUND` when absent.
#[inline]
pub(super) fn proxy_get_header_map_value<B: Backend>(
    c: &mut Ctx<'_, B>,
    map: i32,
    kp: i32,
    kl: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> HostCallResult {
    let map = map_type(map)?;
    let mut key = std::mem::take(&mut c.data_mut().scratch2);
    key.clear();
    let r = read_guest(c, kp, kl, &mut key).map_err(HostError::from).and_then(|()| {
        copy_out_scratch(c, ret_ptr, ret_len, |st, out| {
            if map_get(st, map, &key, out)? { Ok(()) } else { Err(Status::NotFound.into()) }
        })
    });
    c.data_mut().scratch2 = key;
    r
}

/// `proxy_get_header_map_pairs(map_type, return_map_data, return_map_size)`: the whole map,
/// serialized (spec section "Serialization").
#[inline]
pub(super) fn proxy_get_header_map_pairs<B: Backend>(
    c: &mut Ctx<'_, B>,
    map: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> HostCallResult {
    let map = map_type(map)?;
    copy_out_scratch(c, ret_ptr, ret_len, |st, out| serialize_map(st, map, out))
}

/// `proxy_get_header_map_size(map_type, return_map_size)`: the size of the serialized map.
#[inline]
pub(super) fn proxy_get_header_map_size<B: Backend>(c: &mut Ctx<'_, B>, map: i32, ret_size: i32) -> HostCallResult {
    let map = map_type(map)?;
    let mut buf = std::mem::take(&mut c.data_mut().scratch);
    let r = serialize_map(c.data_mut(), map, &mut buf);
    let size = buf.len();
    c.data_mut().scratch = buf;
    r?;
    put_u32(c, ret_size, size as u32)?;
    Ok(())
}

/// `proxy_set_header_map_pairs(map_type, map_data, map_size)`: replaces a writable map with
/// the serialized pairs.
#[inline]
pub(super) fn proxy_set_header_map_pairs<B: Backend>(
    c: &mut Ctx<'_, B>,
    map: i32,
    ptr: i32,
    len: i32,
) -> HostCallResult {
    let map = map_type(map)?;
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let pairs = decode_pairs(slice(mem, ptr, len)?)?;
    let stream = writable_map(st, map)?;
    st.backend.map_set_pairs(stream, map, &pairs)?;
    Ok(())
}

/// `proxy_add_header_map_value(map_type, key_data, key_size, value_data, value_size)`: adds a
/// field, keeping existing fields of the same name.
#[inline]
pub(super) fn proxy_add_header_map_value<B: Backend>(
    c: &mut Ctx<'_, B>,
    map: i32,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
) -> HostCallResult {
    with_key_value(c, map, kp, kl, vp, vl, |b, s, m, k, v| b.map_add(s, m, k, v))
}

/// `proxy_replace_header_map_value(map_type, key_data, key_size, value_data, value_size)`:
/// sets a field, replacing every field of that name.
#[inline]
pub(super) fn proxy_replace_header_map_value<B: Backend>(
    c: &mut Ctx<'_, B>,
    map: i32,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
) -> HostCallResult {
    with_key_value(c, map, kp, kl, vp, vl, |b, s, m, k, v| b.map_replace(s, m, k, v))
}

/// `proxy_remove_header_map_value(map_type, key_data, key_size)`: removes every field of that
/// name.
#[inline]
pub(super) fn proxy_remove_header_map_value<B: Backend>(
    c: &mut Ctx<'_, B>,
    map: i32,
    kp: i32,
    kl: i32,
) -> HostCallResult {
    with_key_value(c, map, kp, kl, 0, 0, |b, s, m, k, _| b.map_remove(s, m, k))
}

/// The fields of an HTTP call response's map (`HTTP_CALL_RESPONSE_HEADERS` / `_TRAILERS`).
#[inline]
fn call_map<B: Backend>(st: &HostState<B>, map: MapType) -> HostResult<&[(Vec<u8>, Vec<u8>)]> {
    let r = st.call_response.as_ref().ok_or(Status::NotFound)?;
    Ok(if map == MapType::HttpCallResponseHeaders { &r.headers } else { &r.trailers })
}

/// The value of `key` in `map`, joined with `", "` when repeated; `Ok(false)` when absent.
#[inline]
fn map_get<B: Backend>(st: &mut HostState<B>, map: MapType, key: &[u8], out: &mut Vec<u8>) -> HostResult<bool> {
    match map {
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => {
            let mut found = false;
            for (k, v) in call_map(st, map)? {
                if k.eq_ignore_ascii_case(key) {
                    if found {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(v);
                    found = true;
                }
            }
            Ok(found)
        }
        MapType::GrpcInitialMetadata | MapType::GrpcTrailingMetadata => Err(Status::NotFound),
        _ => {
            let stream = st.effective_stream().ok_or(Status::NotFound)?;
            st.backend.map_get(stream, map, key, out)
        }
    }
}

/// Serializes `map` into `out` (cleared first), without allocating once the scratch buffers
/// have grown: sizes go to `out`, bytes to the second scratch buffer, then they are joined.
#[inline]
fn serialize_map<B: Backend>(st: &mut HostState<B>, map: MapType, out: &mut Vec<u8>) -> HostCallResult {
    out.clear();
    out.extend_from_slice(&[0; 4]);
    let mut data = std::mem::take(&mut st.scratch2);
    data.clear();
    let mut n: u32 = 0;
    let mut add = |k: &[u8], v: &[u8]| {
        n += 1;
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        data.extend_from_slice(k);
        data.push(0);
        data.extend_from_slice(v);
        data.push(0);
    };
    let r = match map {
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => call_map(st, map).map(|fields| {
            for (k, v) in fields {
                add(k, v);
            }
        }),
        MapType::GrpcInitialMetadata | MapType::GrpcTrailingMetadata => Err(Status::NotFound),
        _ => match st.effective_stream() {
            Some(stream) => st.backend.map_for_each(stream, map, &mut add),
            None => Err(Status::NotFound),
        },
    };
    out[..4].copy_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&data);
    st.scratch2 = data;
    r?;
    Ok(())
}

/// The stream whose `map` the guest may change now; `BAD_ARGUMENT` for read-only maps (HTTP
/// call responses, gRPC metadata) and when the effective context has no stream.
#[inline]
fn writable_map<B: Backend>(st: &HostState<B>, map: MapType) -> HostResult<B::Stream> {
    match map {
        MapType::RequestHeaders | MapType::RequestTrailers | MapType::ResponseHeaders | MapType::ResponseTrailers => {
            st.effective_stream().ok_or(Status::BadArgument)
        }
        _ => Err(Status::BadArgument),
    }
}

/// A backend operation on one field of a writable map: `(backend, stream, map, key, value)`.
type MapOp<B> = fn(&mut B, <B as Backend>::Stream, MapType, &[u8], &[u8]) -> HostResult;

/// Runs `op` with the key and value the guest passed, on the map if it is writable.
#[inline]
fn with_key_value<B: Backend>(
    c: &mut Ctx<'_, B>,
    map: i32,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
    op: MapOp<B>,
) -> HostCallResult {
    let map = map_type(map)?;
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let key = slice(mem, kp, kl)?;
    let value = slice(mem, vp, vl)?;
    let stream = writable_map(st, map)?;
    op(&mut st.backend, stream, map, key, value)?;
    Ok(())
}
