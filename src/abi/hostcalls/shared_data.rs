//! Spec section "Shared Key-Value Store": `proxy_get_shared_data`, `proxy_set_shared_data`, in
//! the filter's `vm_id` namespace of the process-wide [`crate::abi::shared::Shared`].

#![forbid(unsafe_code)]

use crate::abi::backend::Backend;
use crate::abi::memory::slice;

use super::caller::{
    Ctx, HostCallResult, HostError, check_ret, copy_out_scratch, memory, put_u32, read_guest, shared_status,
};

/// `proxy_get_shared_data(key_data, key_size, return_value_data, return_value_size,
/// return_cas)`: the value and its version (the CAS value); `NOT_FOUND` when absent.
#[inline]
pub(super) fn proxy_get_shared_data<B: Backend>(
    c: &mut Ctx<'_, B>,
    kp: i32,
    kl: i32,
    ret_ptr: i32,
    ret_len: i32,
    ret_cas: i32,
) -> HostCallResult {
    check_ret(c, ret_cas)?;
    let mut key = std::mem::take(&mut c.data_mut().scratch2);
    key.clear();
    let mut cas = 0;
    let r = read_guest(c, kp, kl, &mut key).map_err(HostError::from).and_then(|()| {
        copy_out_scratch(c, ret_ptr, ret_len, |st, out| {
            cas = st.shared.get(&st.plugin.vm_id, &key, out)?;
            Ok(())
        })
    });
    c.data_mut().scratch2 = key;
    r?;
    put_u32(c, ret_cas, cas)?;
    Ok(())
}

/// `proxy_set_shared_data(key_data, key_size, value_data, value_size, cas)`: sets the value
/// when `cas` is 0 or the key's current version; `CAS_MISMATCH` otherwise. Past the store's
/// bounds: `BAD_ARGUMENT` (key and value too large) or `INTERNAL_FAILURE` (the `vm_id` is
/// full), nothing stored ([`crate::abi::shared`]).
#[inline]
pub(super) fn proxy_set_shared_data<B: Backend>(
    c: &mut Ctx<'_, B>,
    kp: i32,
    kl: i32,
    vp: i32,
    vl: i32,
    cas: i32,
) -> HostCallResult {
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let key = slice(mem, kp, kl)?;
    let value = slice(mem, vp, vl)?;
    let r = st.shared.set(&st.plugin.vm_id, key, value, cas as u32);
    if let Some(j) = st.journal.as_mut() {
        match (cas, &r) {
            (0, Ok(())) => j.shared_sets.push((key.to_vec(), value.to_vec())),
            (0, Err(_)) => {}
            _ => j.refuse("proxy_set_shared_data with a CAS"),
        }
    }
    shared_status(st, r)?;
    Ok(())
}
