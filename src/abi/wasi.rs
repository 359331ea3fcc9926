//! WASI preview 1 as a closed sandbox: what Proxy-Wasm SDKs import, and nothing that reaches
//! files or sockets. `fd_write` to stdout/stderr goes to the filter's log, the environment is
//! the configured `environment_variables`, `proc_exit` ends the VM (a trap), and every other
//! WASI function a module imports answers `ENOSYS` (a stub, see `hostcalls::linker_for`).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::backend::Backend;
use super::hostcalls::{Ctx, Registrar, denied, memory};
use super::memory::{read_u32, slice, slice_mut, write_u32, write_u64};
use super::types::{LogLevel, Status};

const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const NOSYS: i32 = 52;
const NOTSUP: i32 = 58;

/// The most bytes one `random_get` may ask for (`INVAL` beyond).
const MAX_RANDOM: i32 = 1 << 20;

fn errno(r: Result<(), i32>) -> wasmtime::Result<i32> {
    Ok(r.err().unwrap_or(SUCCESS))
}

fn fault(_: Status) -> i32 {
    FAULT
}

/// A monotonic origin shared by every VM of the process.
fn monotonic_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

pub(crate) fn add_wasi_functions<B: Backend>(reg: &mut Registrar<'_, B>, m: &'static str) -> wasmtime::Result<()> {
    reg.def(m, "fd_write", |mut c: Ctx<'_, B>, fd: i32, iovs: i32, iovs_len: i32, ret_written: i32| {
        if denied(&mut c, "fd_write") {
            return Ok(NOSYS);
        }
        errno((|| {
            let level = match fd {
                1 => LogLevel::Info,
                2 => LogLevel::Error,
                _ => return Err(BADF),
            };
            let memory = memory(&c).map_err(fault)?;
            let (mem, st) = memory.data_and_store_mut(&mut c);
            let mut text = Vec::new();
            for i in 0..iovs_len.max(0) {
                let at = iovs.wrapping_add(i.wrapping_mul(8));
                let ptr = read_u32(mem, at).map_err(fault)? as i32;
                let len = read_u32(mem, at.wrapping_add(4)).map_err(fault)? as i32;
                text.extend_from_slice(slice(mem, ptr, len).map_err(fault)?);
            }
            write_u32(mem, ret_written, text.len() as u32).map_err(fault)?;
            let line = text.strip_suffix(b"\n").unwrap_or(&text);
            if !line.is_empty() && level >= st.backend.log_level() {
                st.backend.log(&st.plugin.name, level, line);
            }
            Ok(())
        })())
    })?;

    reg.def(m, "environ_sizes_get", |mut c: Ctx<'_, B>, ret_count: i32, ret_size: i32| {
        if denied(&mut c, "environ_sizes_get") {
            return Ok(NOSYS);
        }
        errno((|| {
            let memory = memory(&c).map_err(fault)?;
            let (mem, st) = memory.data_and_store_mut(&mut c);
            let env = &st.plugin.environment;
            let size: usize = env.iter().map(|e| e.len() + 1).sum();
            write_u32(mem, ret_count, env.len() as u32).map_err(fault)?;
            write_u32(mem, ret_size, size as u32).map_err(fault)?;
            Ok(())
        })())
    })?;

    reg.def(m, "environ_get", |mut c: Ctx<'_, B>, ret_array: i32, ret_buf: i32| {
        if denied(&mut c, "environ_get") {
            return Ok(NOSYS);
        }
        errno((|| {
            let memory = memory(&c).map_err(fault)?;
            let (mem, st) = memory.data_and_store_mut(&mut c);
            let mut at = ret_buf as u32;
            for (i, e) in st.plugin.environment.iter().enumerate() {
                write_u32(mem, ret_array.wrapping_add(4 * i as i32), at).map_err(fault)?;
                let dst = slice_mut(mem, at as i32, e.len() as i32 + 1).map_err(fault)?;
                dst[..e.len()].copy_from_slice(e.as_bytes());
                dst[e.len()] = 0;
                at = at.wrapping_add(e.len() as u32 + 1);
            }
            Ok(())
        })())
    })?;

    reg.def(m, "args_sizes_get", |mut c: Ctx<'_, B>, ret_count: i32, ret_size: i32| {
        if denied(&mut c, "args_sizes_get") {
            return Ok(NOSYS);
        }
        errno((|| {
            let memory = memory(&c).map_err(fault)?;
            let mem = memory.data_mut(&mut c);
            write_u32(mem, ret_count, 0).map_err(fault)?;
            write_u32(mem, ret_size, 0).map_err(fault)?;
            Ok(())
        })())
    })?;

    reg.def(m, "args_get", |mut c: Ctx<'_, B>, _argv: i32, _buf: i32| {
        if denied(&mut c, "args_get") {
            return Ok(NOSYS);
        }
        Ok(SUCCESS)
    })?;

    reg.def(m, "clock_time_get", |mut c: Ctx<'_, B>, id: i32, _precision: i64, ret: i32| {
        if denied(&mut c, "clock_time_get") {
            return Ok(NOSYS);
        }
        errno((|| {
            let nanos = match id {
                0 => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
                1 => monotonic_origin().elapsed().as_nanos() as u64,
                _ => return Err(NOTSUP),
            };
            let memory = memory(&c).map_err(fault)?;
            write_u64(memory.data_mut(&mut c), ret, nanos).map_err(fault)
        })())
    })?;

    reg.def(m, "random_get", |mut c: Ctx<'_, B>, buf: i32, len: i32| {
        if denied(&mut c, "random_get") {
            return Ok(NOSYS);
        }
        errno((|| {
            if len as u32 > MAX_RANDOM as u32 {
                return Err(INVAL);
            }
            let memory = memory(&c).map_err(fault)?;
            let dst = slice_mut(memory.data_mut(&mut c), buf, len).map_err(fault)?;
            getrandom::fill(dst).map_err(|_| INVAL)
        })())
    })?;

    reg.def(m, "proc_exit", |mut c: Ctx<'_, B>, code: i32| -> wasmtime::Result<()> {
        if denied(&mut c, "proc_exit") {
            return Ok(());
        }
        c.data_mut().exit_code = Some(code);
        Err(wasmtime::Error::msg(format!("the guest called proc_exit({code})")))
    })?;
    Ok(())
}
