//! WASI preview 1 as a closed sandbox: what Proxy-Wasm SDKs import, and nothing that reaches
//! files or sockets. `fd_write` to stdout/stderr goes to the filter's log, the environment is
//! the configured `environment_variables`, `proc_exit` ends the VM (a trap), and every other
//! WASI function a module imports answers `ENOSYS` (a stub, see [`super::linker_for`]). The
//! same functions serve `wasi_snapshot_preview1` and `wasi_unstable`.

#![forbid(unsafe_code)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::abi::backend::Backend;
use crate::abi::memory::{read_u32, slice, slice_mut, write_u32, write_u64};
use crate::abi::types::{LogLevel, Status};

use super::caller::{Ctx, memory};

/// `wasi_errno_t` success.
pub(super) const SUCCESS: i32 = 0;
/// `wasi_errno_t` "bad file descriptor".
pub(super) const BADF: i32 = 8;
/// `wasi_errno_t` "bad address".
const FAULT: i32 = 21;
/// `wasi_errno_t` "invalid argument".
const INVAL: i32 = 28;
/// `wasi_errno_t` "function not supported".
pub(super) const NOSYS: i32 = 52;
/// `wasi_errno_t` "not supported" (e.g. an unknown clock).
const NOTSUP: i32 = 58;

/// The most bytes one `random_get` may ask for (`INVAL` beyond).
const MAX_RANDOM: i32 = 1 << 20;

/// The result of a WASI function's body: `Err(errno)` ends the call with that errno.
pub(super) type WasiResult = Result<(), i32>;

/// A guest memory error as WASI's `FAULT`.
#[inline]
fn fault(_: Status) -> i32 {
    FAULT
}

/// A monotonic origin shared by every VM of the process.
fn monotonic_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// `fd_write(fd, iovs, iovs_len, return_written)`: stdout logs at `info`, stderr at `error`
/// (one message per call, a final newline dropped); other descriptors are `BADF`.
#[inline]
pub(super) fn fd_write<B: Backend>(
    c: &mut Ctx<'_, B>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    ret_written: i32,
) -> WasiResult {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return Err(BADF),
    };
    let memory = memory(c).map_err(fault)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let mut text = Vec::new();
    for i in 0..iovs_len.max(0) {
        let at = iovs.wrapping_add(i.wrapping_mul(8));
        let ptr = read_u32(mem, at).map_err(fault)? as i32;
        let len = read_u32(mem, at.wrapping_add(4)).map_err(fault)? as i32;
        text.extend_from_slice(slice(mem, ptr, len).map_err(fault)?);
    }
    write_u32(mem, ret_written, text.len() as u32).map_err(fault)?;
    let line = text.strip_suffix(b"\n").unwrap_or(&text);
    if let Some(j) = st.journal.as_mut().filter(|_| !line.is_empty()) {
        j.logs.push((level, line.to_vec()));
    }
    if !line.is_empty() && level >= st.backend.log_level() {
        st.backend.log(&st.plugin.name, level, line);
    }
    Ok(())
}

/// `environ_sizes_get(return_count, return_buffer_size)`: the number of configured
/// environment variables and the bytes `environ_get` needs for them.
#[inline]
pub(super) fn environ_sizes_get<B: Backend>(c: &mut Ctx<'_, B>, ret_count: i32, ret_size: i32) -> WasiResult {
    let memory = memory(c).map_err(fault)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let env = &st.plugin.environment;
    let size: usize = env.iter().map(|e| e.len() + 1).sum();
    write_u32(mem, ret_count, env.len() as u32).map_err(fault)?;
    write_u32(mem, ret_size, size as u32).map_err(fault)?;
    Ok(())
}

/// `environ_get(return_array, return_buffer)`: the configured environment as NUL-terminated
/// `KEY=VALUE` strings.
#[inline]
pub(super) fn environ_get<B: Backend>(c: &mut Ctx<'_, B>, ret_array: i32, ret_buf: i32) -> WasiResult {
    let memory = memory(c).map_err(fault)?;
    let (mem, st) = memory.data_and_store_mut(&mut *c);
    let mut at = ret_buf as u32;
    for (i, e) in st.plugin.environment.iter().enumerate() {
        write_u32(mem, ret_array.wrapping_add(4 * i as i32), at).map_err(fault)?;
        let dst = slice_mut(mem, at as i32, e.len() as i32 + 1).map_err(fault)?;
        dst[..e.len()].copy_from_slice(e.as_bytes());
        dst[e.len()] = 0;
        at = at.wrapping_add(e.len() as u32 + 1);
    }
    Ok(())
}

/// `args_sizes_get(return_count, return_buffer_size)`: no arguments.
#[inline]
pub(super) fn args_sizes_get<B: Backend>(c: &mut Ctx<'_, B>, ret_count: i32, ret_size: i32) -> WasiResult {
    let memory = memory(c).map_err(fault)?;
    let mem = memory.data_mut(&mut *c);
    write_u32(mem, ret_count, 0).map_err(fault)?;
    write_u32(mem, ret_size, 0).map_err(fault)?;
    Ok(())
}

/// `args_get(return_argv, return_buffer)`: nothing to write (there are no arguments).
#[inline]
pub(super) fn args_get<B: Backend>(_: &mut Ctx<'_, B>, _argv: i32, _buf: i32) -> WasiResult {
    Ok(())
}

/// `clock_time_get(clock_id, precision, return_time)`: realtime (0) or monotonic (1) nanoseconds;
/// other clocks are `NOTSUP`.
#[inline]
pub(super) fn clock_time_get<B: Backend>(c: &mut Ctx<'_, B>, id: i32, _precision: i64, ret: i32) -> WasiResult {
    let nanos = match id {
        0 => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
        1 => monotonic_origin().elapsed().as_nanos() as u64,
        _ => return Err(NOTSUP),
    };
    let memory = memory(c).map_err(fault)?;
    write_u64(memory.data_mut(&mut *c), ret, nanos).map_err(fault)
}

/// `random_get(buffer, buffer_size)`: fills the buffer from the OS's random source; `INVAL`
/// beyond [`MAX_RANDOM`] bytes.
#[inline]
pub(super) fn random_get<B: Backend>(c: &mut Ctx<'_, B>, buf: i32, len: i32) -> WasiResult {
    if len as u32 > MAX_RANDOM as u32 {
        return Err(INVAL);
    }
    let memory = memory(c).map_err(fault)?;
    let dst = slice_mut(memory.data_mut(&mut *c), buf, len).map_err(fault)?;
    getrandom::fill(dst).map_err(|_| INVAL)
}

/// `proc_exit(code)`: remembers the code (for the error report) and ends the VM with a trap.
#[inline]
pub(super) fn proc_exit<B: Backend>(c: &mut Ctx<'_, B>, code: i32) -> wasmtime::Result<()> {
    c.data_mut().exit_code = Some(code);
    Err(wasmtime::Error::msg(format!("the guest called proc_exit({code})")))
}
