//! Spec section "Foreign function interface (FFI)": `proxy_call_foreign_function`. `vm_id` and
//! `thread_info` are answered here; other names go to the backend.

#![forbid(unsafe_code)]

use crate::abi::backend::Backend;

use super::caller::{Ctx, HostCallResult, copy_out_scratch, read_guest};

/// `proxy_call_foreign_function(function_name_data, function_name_size, arguments_data,
/// arguments_size, return_results_data, return_results_size)`: `vm_id` returns this VM's
/// process-unique id (8 bytes, little-endian), `thread_info` a description of the thread and
/// pool; other names are the backend's (`NOT_FOUND` when unknown).
#[inline]
pub(super) fn proxy_call_foreign_function<B: Backend>(
    c: &mut Ctx<'_, B>,
    np: i32,
    nl: i32,
    ap: i32,
    al: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> HostCallResult {
    let mut name_args = Vec::new();
    read_guest(c, np, nl, &mut name_args)?;
    read_guest(c, ap, al, &mut name_args)?;
    let split = nl as u32 as usize;
    copy_out_scratch(c, ret_ptr, ret_len, |st, out| {
        let (name, args) = name_args.split_at(split);
        match name {
            b"vm_id" => out.extend_from_slice(&st.vm_uid.to_le_bytes()),
            b"thread_info" => st.backend.thread_info(out)?,
            _ => {
                let stream = st.effective_stream();
                st.backend.foreign_function(stream, name, args, out)?
            }
        }
        Ok(())
    })
}
