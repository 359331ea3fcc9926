//! What every host call works with: the calling VM ([`Ctx`]), its memory, copying values in
//! and out of it, and how a call's result reaches the guest ([`HostError`], [`finish`]).

#![forbid(unsafe_code)]

use wasmtime::{Caller, Memory};

use crate::abi::backend::Backend;
use crate::abi::memory::{check_u32, slice, slice_mut, write_u32};
use crate::abi::shared::{SharedError, SharedResult};
use crate::abi::state::HostState;
use crate::abi::types::{HostResult, Status};

/// How a host call ends: with a status for the guest, or with a trap (e.g. the guest's
/// allocator trapped while the host was calling it).
pub(super) enum HostError {
    /// The call answers this status.
    Status(Status),
    /// The call traps with this error.
    Trap(wasmtime::Error),
}

impl From<Status> for HostError {
    fn from(s: Status) -> Self {
        HostError::Status(s)
    }
}

/// The result of a host call's body: `Ok` answers `OK`.
pub(super) type HostCallResult<T = ()> = Result<T, HostError>;

/// Turns a host call body's result into what the guest sees.
#[inline]
pub(super) fn finish(r: HostCallResult) -> wasmtime::Result<i32> {
    match r {
        Ok(()) => Ok(Status::Ok as i32),
        Err(HostError::Status(s)) => Ok(s as i32),
        Err(HostError::Trap(e)) => Err(e),
    }
}

/// The VM a host call came from: its store data ([`HostState`]) and its exports.
pub(super) type Ctx<'a, B> = Caller<'a, HostState<B>>;

/// The guest's memory; `INTERNAL_FAILURE` before the VM is initialized.
#[inline]
pub(super) fn memory<B: Backend>(caller: &Ctx<'_, B>) -> HostResult<Memory> {
    caller.data().memory.ok_or(Status::InternalFailure)
}

/// Copies `data` into a fresh allocation made by the guest's allocator and writes its address
/// and length to `ret_ptr` and `ret_len`. Empty data is allocated too (a zero-byte
/// allocation): AssemblyScript's proxy-runtime 0.1.8 dereferences the returned pointer even
/// for size 0, and the Rust and C++ SDKs read a non-null empty allocation as an empty value;
/// an allocator that answers 0 for a zero-byte request gives a null pointer and size 0. An
/// allocator that fails otherwise (returns 0, or a pointer whose range is outside memory) gives
/// `INVALID_MEMORY_ACCESS`; a host call made from inside the allocator that needs to allocate
/// gives `INTERNAL_FAILURE` (or a null pointer, for empty data).
#[inline]
pub(super) fn copy_out<B: Backend>(caller: &mut Ctx<'_, B>, data: &[u8], ret_ptr: i32, ret_len: i32) -> HostCallResult {
    let memory = memory(caller)?;
    let mem_len = memory.data_size(&*caller);
    check_u32(mem_len, ret_ptr)?;
    check_u32(mem_len, ret_len)?;
    let len = i32::try_from(data.len()).map_err(|_| Status::BadArgument)?;
    let guest_ptr = if caller.data().in_allocator {
        if !data.is_empty() {
            return Err(Status::InternalFailure.into());
        }
        0
    } else {
        let alloc = caller.data().allocator.clone().ok_or(Status::InternalFailure)?;
        caller.data_mut().in_allocator = true;
        let p = alloc.call(&mut *caller, len);
        caller.data_mut().in_allocator = false;
        let p = p.map_err(HostError::Trap)?;
        if p == 0 && !data.is_empty() {
            return Err(Status::InvalidMemoryAccess.into());
        }
        p
    };
    let mem = memory.data_mut(&mut *caller);
    slice_mut(mem, guest_ptr, len)?.copy_from_slice(data);
    write_u32(mem, ret_ptr, guest_ptr as u32)?;
    write_u32(mem, ret_len, data.len() as u32)?;
    Ok(())
}

/// Like [`copy_out`] for bytes the host builds in its reusable scratch buffer: `fill` writes
/// them into the (cleared) buffer. The return pointers are checked before `fill` runs, so a
/// call with side effects (a dequeue) does not lose data to a bad pointer.
#[inline]
pub(super) fn copy_out_scratch<B: Backend>(
    caller: &mut Ctx<'_, B>,
    ret_ptr: i32,
    ret_len: i32,
    fill: impl FnOnce(&mut HostState<B>, &mut Vec<u8>) -> HostCallResult,
) -> HostCallResult {
    let mem_len = memory(caller)?.data_size(&*caller);
    check_u32(mem_len, ret_ptr)?;
    check_u32(mem_len, ret_len)?;
    let mut buf = std::mem::take(&mut caller.data_mut().scratch);
    buf.clear();
    let r = fill(caller.data_mut(), &mut buf).and_then(|()| copy_out(caller, &buf, ret_ptr, ret_len));
    caller.data_mut().scratch = buf;
    r
}

/// Copies `[ptr, ptr+len)` of guest memory into the host (so the guest memory borrow ends).
#[inline]
pub(super) fn read_guest<B: Backend>(caller: &Ctx<'_, B>, ptr: i32, len: i32, out: &mut Vec<u8>) -> HostResult {
    let memory = memory(caller)?;
    out.extend_from_slice(slice(memory.data(caller), ptr, len)?);
    Ok(())
}

/// Checks that `ptr` can hold a `u32` in the caller's memory.
#[inline]
pub(super) fn check_ret<B: Backend>(c: &Ctx<'_, B>, ptr: i32) -> HostResult {
    check_u32(memory(c)?.data_size(c), ptr)
}

/// Writes a `u32` result.
#[inline]
pub(super) fn put_u32<B: Backend>(c: &mut Ctx<'_, B>, ptr: i32, v: u32) -> HostResult {
    let memory = memory(c)?;
    write_u32(memory.data_mut(c), ptr, v)
}

/// A shared-data or queue write's result as the guest sees it; a refusal by one of the
/// store's bounds is told to the backend ([`Backend::shared_refused`]) first.
#[inline]
pub(super) fn shared_status<B: Backend, T>(st: &mut HostState<B>, r: SharedResult<T>) -> HostResult<T> {
    r.map_err(|e| {
        if let SharedError::Refused(bound) = e {
            st.backend.shared_refused(bound);
        }
        e.status()
    })
}
