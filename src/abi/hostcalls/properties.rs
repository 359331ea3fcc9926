//! Spec section "Properties": `proxy_get_property`, `proxy_set_property`. The `plugin_*`
//! properties are answered here (and are read-only); every other path goes to the backend.

#![forbid(unsafe_code)]

use crate::abi::backend::Backend;
use crate::abi::memory::slice;
use crate::abi::properties::parse_path;
use crate::abi::types::Status;

use super::caller::{Ctx, HostCallResult, copy_out_scratch, memory, read_guest};

/// `proxy_get_property(path_data, path_size, return_value_data, return_value_size)`: the value
/// of the property at the serialized path; `NOT_FOUND` for unknown paths.
#[inline]
pub(super) fn proxy_get_property<B: Backend>(
    c: &mut Ctx<'_, B>,
    path_ptr: i32,
    path_len: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> HostCallResult {
    let mut path = Vec::new();
    read_guest(c, path_ptr, path_len, &mut path)?;
    copy_out_scratch(c, ret_ptr, ret_len, |st, out| {
        let mut parts = Vec::with_capacity(4);
        parse_path(&path, &mut parts)?;
        if let [name] = parts[..] {
            let p = &st.plugin;
            let own = match name {
                b"plugin_name" => Some(p.name.as_bytes()),
                b"plugin_root_id" => Some(p.root_id.as_bytes()),
                b"plugin_vm_id" => Some(p.vm_id.as_bytes()),
                _ => None,
            };
            if let Some(v) = own {
                out.extend_from_slice(v);
                return Ok(());
            }
        }
        let stream = st.effective_stream();
        st.backend.get_property(stream, &parts, out)?;
        Ok(())
    })
}

/// `proxy_set_property(path_data, path_size, value_data, value_size)`: sets the property at
/// the serialized path; `BAD_ARGUMENT` for the `plugin_*` properties.
#[inline]
pub(super) fn proxy_set_property<B: Backend>(c: &mut Ctx<'_, B>, pp: i32, pl: i32, vp: i32, vl: i32) -> HostCallResult {
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let path = slice(mem, pp, pl)?;
    let value = slice(mem, vp, vl)?;
    let mut parts = Vec::with_capacity(4);
    parse_path(path, &mut parts)?;
    if let [b"plugin_name" | b"plugin_root_id" | b"plugin_vm_id"] = parts[..] {
        return Err(Status::BadArgument.into());
    }
    let stream = st.effective_stream();
    st.backend.set_property(stream, &parts, value)?;
    Ok(())
}
