//! Spec section "Context lifecycle": `proxy_set_effective_context`, `proxy_done`.

#![forbid(unsafe_code)]

use crate::abi::backend::Backend;
use crate::abi::types::Status;

use super::caller::{Ctx, HostCallResult};

/// `proxy_set_effective_context(context_id)`: later host calls act for that context;
/// `BAD_ARGUMENT` when it is not alive.
#[inline]
pub(super) fn proxy_set_effective_context<B: Backend>(c: &mut Ctx<'_, B>, id: i32) -> HostCallResult {
    let st = c.data_mut();
    let id = id as u32;
    if !st.contexts.contains_key(&id) {
        return Err(Status::BadArgument.into());
    }
    st.effective_context = id;
    Ok(())
}

/// `proxy_done()`: the effective context, whose `proxy_on_done` answered `false`, is done now
/// (it is finished after the current callback); `NOT_FOUND` when it was not waiting.
#[inline]
pub(super) fn proxy_done<B: Backend>(c: &mut Ctx<'_, B>) -> HostCallResult {
    let st = c.data_mut();
    let id = st.effective_context;
    match st.pending_done.iter_mut().find(|(ctx, _)| *ctx == id) {
        Some(p) => {
            p.1 = true;
            Ok(())
        }
        None => Err(Status::NotFound.into()),
    }
}
