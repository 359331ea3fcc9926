//! Spec section "Shared Queues": `proxy_register_shared_queue`, `proxy_resolve_shared_queue`,
//! `proxy_enqueue_shared_queue`, `proxy_dequeue_shared_queue`, over the process-wide
//! [`crate::abi::shared::Shared`]. An enqueue tells the backend, which arranges for
//! `proxy_on_queue_ready` on the queue owner's VM.

#![forbid(unsafe_code)]

use crate::abi::backend::{Backend, QueueTarget};
use crate::abi::memory::{slice, write_u32};

use super::caller::{Ctx, HostCallResult, check_ret, copy_out_scratch, memory, shared_status};

/// `proxy_register_shared_queue(queue_name_data, queue_name_size, return_queue_id)`: the
/// queue of that name in the filter's `vm_id`, owned by this VM's root context from now on
/// (`INTERNAL_FAILURE` when a new queue would not fit in the `vm_id`'s bound).
#[inline]
pub(super) fn proxy_register_shared_queue<B: Backend>(
    c: &mut Ctx<'_, B>,
    np: i32,
    nl: i32,
    ret: i32,
) -> HostCallResult {
    check_ret(c, ret)?;
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let name = slice(mem, np, nl)?;
    let owner = QueueTarget { vm: st.vm_uid, context_id: st.root_context_id, queue_id: 0 };
    let r = st.shared.register_queue(&st.plugin.vm_id, name, owner);
    let id = shared_status(st, r)?;
    if let Some(j) = st.journal.as_mut() {
        j.queues.push((name.to_vec(), id));
    }
    write_u32(mem, ret, id)?;
    Ok(())
}

/// `proxy_resolve_shared_queue(vm_id_data, vm_id_size, queue_name_data, queue_name_size,
/// return_queue_id)`: the id of a registered queue; `NOT_FOUND` when there is none.
#[inline]
pub(super) fn proxy_resolve_shared_queue<B: Backend>(
    c: &mut Ctx<'_, B>,
    vp: i32,
    vl: i32,
    np: i32,
    nl: i32,
    ret: i32,
) -> HostCallResult {
    check_ret(c, ret)?;
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let vm_id = slice(mem, vp, vl)?;
    let name = slice(mem, np, nl)?;
    let id = st.shared.resolve_queue(vm_id, name)?;
    write_u32(mem, ret, id)?;
    Ok(())
}

/// `proxy_enqueue_shared_queue(queue_id, value_data, value_size)`: appends the value and tells
/// the backend that the queue's owner has an item to read. A full queue or `vm_id`
/// (`INTERNAL_FAILURE`) or an item over the value bound (`BAD_ARGUMENT`) stores nothing.
#[inline]
pub(super) fn proxy_enqueue_shared_queue<B: Backend>(c: &mut Ctx<'_, B>, id: i32, vp: i32, vl: i32) -> HostCallResult {
    let memory = memory(c)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let value = slice(mem, vp, vl)?;
    let r = st.shared.enqueue(id as u32, value);
    let target = shared_status(st, r)?;
    st.backend.queue_ready(target);
    Ok(())
}

/// `proxy_dequeue_shared_queue(queue_id, return_value_data, return_value_size)`: the oldest
/// item; `EMPTY` when there is none.
#[inline]
pub(super) fn proxy_dequeue_shared_queue<B: Backend>(
    c: &mut Ctx<'_, B>,
    id: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> HostCallResult {
    copy_out_scratch(c, ret_ptr, ret_len, |st, out| Ok(st.shared.dequeue(id as u32, out)?))
}
