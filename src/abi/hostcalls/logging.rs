//! Spec section "Logging": `proxy_log`, `proxy_get_log_level` (WASI `fd_write` to stdout and
//! stderr logs too; see [`super::wasi`]).

#![forbid(unsafe_code)]

use crate::abi::backend::Backend;
use crate::abi::memory::slice;
use crate::abi::types::{LogLevel, Status};

use super::caller::{Ctx, HostCallResult, memory, put_u32};

/// `proxy_log(level, message_data, message_size)`: logs the message as the filter when `level`
/// reaches the proxy's log level; `BAD_ARGUMENT` for an unknown level.
#[inline]
pub(super) fn proxy_log<B: Backend>(c: &mut Ctx<'_, B>, level: i32, ptr: i32, len: i32) -> HostCallResult {
    let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let msg = slice(mem, ptr, len)?;
    if let Some(j) = st.journal.as_mut() {
        j.logs.push((level, msg.to_vec()));
    }
    if level >= st.backend.log_level() {
        st.backend.log(&st.plugin.name, level, msg);
    }
    Ok(())
}

/// `proxy_get_log_level(return_log_level)`: the proxy's current log level.
#[inline]
pub(super) fn proxy_get_log_level<B: Backend>(c: &mut Ctx<'_, B>, ret: i32) -> HostCallResult {
    let level = c.data().backend.log_level();
    put_u32(c, ret, level as u32)?;
    Ok(())
}
