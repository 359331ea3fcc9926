//! The `proxy_*` host functions, registered in a wasmtime [`Linker`].
//!
//! Each function checks every guest pointer and length (see [`super::memory`]), answers the
//! spec's status codes, and never panics. Functions not implemented yet still exist: any
//! `env.proxy_*` import a module has that is not defined here gets a stub answering
//! `UNIMPLEMENTED` (and logging once per module), so every SDK's module instantiates.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, ExternType, IntoFunc, Linker, Memory, Module, Val, ValType};

use super::backend::Backend;
use super::memory::{check_u32, slice, write_u32, write_u64};
use super::serialization::{decode_pairs, encode_pairs};
use super::state::{ContextKind, HostState};
use super::types::{BufferType, HostResult, LogLevel, MapType, Status};
use super::wasi;

/// How a host call ends: with a status for the guest, or with a trap (e.g. the guest's
/// allocator trapped while the host was calling it).
pub(crate) enum HostError {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for HostError {
    fn from(s: Status) -> Self {
        HostError::Status(s)
    }
}

pub(crate) type HostCallResult<T = ()> = Result<T, HostError>;

/// Turns a host call body's result into what the guest sees.
pub(crate) fn finish(r: HostCallResult) -> wasmtime::Result<i32> {
    match r {
        Ok(()) => Ok(Status::Ok as i32),
        Err(HostError::Status(s)) => Ok(s as i32),
        Err(HostError::Trap(e)) => Err(e),
    }
}

pub(crate) type Ctx<'a, B> = Caller<'a, HostState<B>>;

pub(crate) fn memory<B: Backend>(caller: &Ctx<'_, B>) -> HostResult<Memory> {
    caller.data().memory.ok_or(Status::InternalFailure)
}

/// Copies `data` into a fresh allocation made by the guest's allocator and writes its address
/// and length to `ret_ptr` and `ret_len`. Empty data is returned as a null pointer and size 0
/// (no allocation), which every SDK reads as an empty value.
pub(crate) fn copy_out<B: Backend>(caller: &mut Ctx<'_, B>, data: &[u8], ret_ptr: i32, ret_len: i32) -> HostCallResult {
    let memory = memory(caller)?;
    let mem_len = memory.data_size(&*caller);
    check_u32(mem_len, ret_ptr)?;
    check_u32(mem_len, ret_len)?;
    let len = i32::try_from(data.len()).map_err(|_| Status::BadArgument)?;
    let guest_ptr = if data.is_empty() {
        0
    } else {
        let alloc = caller.data().allocator.clone().ok_or(Status::InternalFailure)?;
        let p = alloc.call(&mut *caller, len).map_err(HostError::Trap)?;
        if p == 0 {
            return Err(Status::InvalidMemoryAccess.into());
        }
        p
    };
    let mem = memory.data_mut(&mut *caller);
    if !data.is_empty() {
        super::memory::slice_mut(mem, guest_ptr, len)?.copy_from_slice(data);
    }
    write_u32(mem, ret_ptr, guest_ptr as u32)?;
    write_u32(mem, ret_len, data.len() as u32)?;
    Ok(())
}

/// Like [`copy_out`] for bytes the host builds in its reusable scratch buffer: `fill` writes
/// them into the (cleared) buffer.
fn copy_out_scratch<B: Backend>(
    caller: &mut Ctx<'_, B>,
    ret_ptr: i32,
    ret_len: i32,
    fill: impl FnOnce(&mut HostState<B>, &mut Vec<u8>) -> HostCallResult,
) -> HostCallResult {
    let mut buf = std::mem::take(&mut caller.data_mut().scratch);
    buf.clear();
    let r = fill(caller.data_mut(), &mut buf).and_then(|()| copy_out(caller, &buf, ret_ptr, ret_len));
    caller.data_mut().scratch = buf;
    r
}

/// Copies `[ptr, ptr+len)` of guest memory into the host (so the guest memory borrow ends).
pub(crate) fn read_guest<B: Backend>(caller: &Ctx<'_, B>, ptr: i32, len: i32, out: &mut Vec<u8>) -> HostResult {
    let memory = memory(caller)?;
    out.extend_from_slice(slice(memory.data(caller), ptr, len)?);
    Ok(())
}

/// Registers host functions while remembering their names, so that the stubs for everything
/// else can be added afterwards without clashing.
pub(crate) struct Registrar<'a, B: Backend> {
    pub(crate) linker: &'a mut Linker<HostState<B>>,
    pub(crate) defined: HashSet<(&'static str, &'static str)>,
}

impl<B: Backend> Registrar<'_, B> {
    pub(crate) fn def<P, R>(
        &mut self,
        module: &'static str,
        name: &'static str,
        f: impl IntoFunc<HostState<B>, P, R>,
    ) -> wasmtime::Result<()> {
        self.linker.func_wrap(module, name, f)?;
        self.defined.insert((module, name));
        Ok(())
    }
}

/// Builds a linker with every host function for `module`: the implemented ones, and stubs for
/// any other function it imports. Fails with a clear message when the module imports something
/// that is not a function (ats-wasm provides no memories, tables or globals).
pub fn linker_for<B: Backend>(module: &Module) -> wasmtime::Result<Linker<HostState<B>>> {
    let mut linker = Linker::new(module.engine());
    let mut reg = Registrar { linker: &mut linker, defined: HashSet::new() };
    add_proxy_functions(&mut reg)?;
    wasi::add_wasi_functions(&mut reg, "wasi_snapshot_preview1")?;
    wasi::add_wasi_functions(&mut reg, "wasi_unstable")?;
    let defined = std::mem::take(&mut reg.defined);
    for import in module.imports() {
        if defined.contains(&(import.module(), import.name())) {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else {
            wasmtime::bail!(
                "the module imports {}.{}, which is not a function; ats-wasm provides only functions",
                import.module(),
                import.name()
            );
        };
        let is_wasi = import.module().starts_with("wasi");
        // WASI's ENOSYS; the ABI's UNIMPLEMENTED.
        let code = if is_wasi { 52 } else { Status::Unimplemented as i32 };
        let name = format!("{}.{}", import.module(), import.name());
        let warned = Arc::new(AtomicBool::new(false));
        let results: Vec<ValType> = ty.results().collect();
        linker.func_new(import.module(), import.name(), ty.clone(), move |mut caller: Ctx<'_, B>, _params, out| {
            if !warned.swap(true, Ordering::Relaxed) {
                let st = caller.data_mut();
                let filter = st.plugin.name.clone();
                let msg = format!("{name} is not implemented by ats-wasm; it answers {code}");
                st.backend.log(&filter, LogLevel::Warn, msg.as_bytes());
            }
            for (slot, ty) in out.iter_mut().zip(&results) {
                *slot = match ty {
                    ValType::I64 => Val::I64(code as i64),
                    ValType::F32 => Val::F32(0),
                    ValType::F64 => Val::F64(0),
                    _ => Val::I32(code),
                };
            }
            Ok(())
        })?;
    }
    Ok(linker)
}

fn map_type(raw: i32) -> HostResult<MapType> {
    MapType::from_raw(raw).ok_or(Status::BadArgument)
}

fn add_proxy_functions<B: Backend>(reg: &mut Registrar<'_, B>) -> wasmtime::Result<()> {
    reg.def("env", "proxy_log", |mut c: Ctx<'_, B>, level: i32, ptr: i32, len: i32| {
        finish((|| {
            let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
            let memory = memory(&c)?;
            let (mem, st) = memory.data_and_store_mut(&mut c);
            let msg = slice(mem, ptr, len)?;
            if level >= st.backend.log_level() {
                st.backend.log(&st.plugin.name, level, msg);
            }
            Ok(())
        })())
    })?;

    reg.def("env", "proxy_get_log_level", |mut c: Ctx<'_, B>, ret: i32| {
        finish((|| {
            let memory = memory(&c)?;
            let (mem, st) = memory.data_and_store_mut(&mut c);
            write_u32(mem, ret, st.backend.log_level() as u32)?;
            Ok(())
        })())
    })?;

    reg.def("env", "proxy_get_current_time_nanoseconds", |mut c: Ctx<'_, B>, ret: i32| {
        finish((|| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            let memory = memory(&c)?;
            write_u64(memory.data_mut(&mut c), ret, now)?;
            Ok(())
        })())
    })?;

    reg.def("env", "proxy_get_buffer_status", |mut c: Ctx<'_, B>, buffer: i32, ret_size: i32, ret_flags: i32| {
        finish((|| {
            let buffer = BufferType::from_raw(buffer).ok_or(Status::BadArgument)?;
            let size = config_buffer(c.data(), buffer)?.len();
            let memory = memory(&c)?;
            let mem = memory.data_mut(&mut c);
            check_u32(mem.len(), ret_flags)?;
            write_u32(mem, ret_size, size as u32)?;
            write_u32(mem, ret_flags, 0)?;
            Ok(())
        })())
    })?;

    reg.def(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_, B>, buffer: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32| {
            finish((|| {
                let buffer = BufferType::from_raw(buffer).ok_or(Status::BadArgument)?;
                let (start, max) = (start as u32 as usize, max as u32 as usize);
                copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| {
                    let data = config_buffer(st, buffer)?;
                    if start > data.len() {
                        return Err(Status::BadArgument.into());
                    }
                    let end = start.saturating_add(max).min(data.len());
                    out.extend_from_slice(&data[start..end]);
                    Ok(())
                })
            })())
        },
    )?;

    reg.def(
        "env",
        "proxy_get_header_map_value",
        |mut c: Ctx<'_, B>, map: i32, kp: i32, kl: i32, ret_ptr: i32, ret_len: i32| {
            finish((|| {
                let map = map_type(map)?;
                let mut key = Vec::new();
                read_guest(&c, kp, kl, &mut key)?;
                copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| {
                    let stream = st.effective_stream().ok_or(Status::NotFound)?;
                    if st.backend.map_get(stream, map, &key, out)? { Ok(()) } else { Err(Status::NotFound.into()) }
                })
            })())
        },
    )?;

    reg.def("env", "proxy_get_header_map_pairs", |mut c: Ctx<'_, B>, map: i32, ret_ptr: i32, ret_len: i32| {
        finish((|| {
            let map = map_type(map)?;
            copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| {
                serialize_map(st, map, out)?;
                Ok(())
            })
        })())
    })?;

    reg.def("env", "proxy_get_header_map_size", |mut c: Ctx<'_, B>, map: i32, ret_size: i32| {
        finish((|| {
            let map = map_type(map)?;
            let mut buf = std::mem::take(&mut c.data_mut().scratch);
            let r = serialize_map(c.data_mut(), map, &mut buf);
            let size = buf.len();
            c.data_mut().scratch = buf;
            r?;
            let memory = memory(&c)?;
            write_u32(memory.data_mut(&mut c), ret_size, size as u32)?;
            Ok(())
        })())
    })?;

    reg.def("env", "proxy_set_header_map_pairs", |mut c: Ctx<'_, B>, map: i32, ptr: i32, len: i32| {
        finish((|| {
            let map = map_type(map)?;
            let mut data = Vec::new();
            read_guest(&c, ptr, len, &mut data)?;
            let pairs = decode_pairs(&data)?;
            let st = c.data_mut();
            let stream = st.effective_stream().ok_or(Status::BadArgument)?;
            st.backend.map_set_pairs(stream, map, &pairs)?;
            Ok(())
        })())
    })?;

    reg.def("env", "proxy_add_header_map_value", |mut c: Ctx<'_, B>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
        finish(with_key_value(&mut c, map, kp, kl, vp, vl, |b, s, m, k, v| b.map_add(s, m, k, v)))
    })?;

    reg.def(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Ctx<'_, B>, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            finish(with_key_value(&mut c, map, kp, kl, vp, vl, |b, s, m, k, v| b.map_replace(s, m, k, v)))
        },
    )?;

    reg.def("env", "proxy_remove_header_map_value", |mut c: Ctx<'_, B>, map: i32, kp: i32, kl: i32| {
        finish(with_key_value(&mut c, map, kp, kl, 0, 0, |b, s, m, k, _| b.map_remove(s, m, k)))
    })?;

    reg.def("env", "proxy_set_effective_context", |mut c: Ctx<'_, B>, id: i32| {
        let st = c.data_mut();
        let id = id as u32;
        Ok(if st.contexts.contains_key(&id) {
            st.effective_context = id;
            Status::Ok as i32
        } else {
            Status::BadArgument as i32
        })
    })?;

    reg.def("env", "proxy_done", |mut c: Ctx<'_, B>| {
        let st = c.data_mut();
        let id = st.effective_context;
        Ok(match st.pending_done.iter_mut().find(|(ctx, _)| *ctx == id) {
            Some(p) => {
                p.1 = true;
                Status::Ok as i32
            }
            None => Status::NotFound as i32,
        })
    })?;

    reg.def(
        "env",
        "proxy_get_property",
        |mut c: Ctx<'_, B>, path_ptr: i32, path_len: i32, ret_ptr: i32, ret_len: i32| {
            finish((|| {
                let mut path = Vec::new();
                read_guest(&c, path_ptr, path_len, &mut path)?;
                copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| {
                    // Rust SDK: parts joined by NUL; C++ SDK: the same with a trailing NUL.
                    let path = path.strip_suffix(b"\0").unwrap_or(&path);
                    let value = match path {
                        b"plugin_name" => st.plugin.name.as_bytes(),
                        b"plugin_root_id" => st.plugin.root_id.as_bytes(),
                        b"plugin_vm_id" => st.plugin.vm_id.as_bytes(),
                        _ => return Err(Status::NotFound.into()),
                    };
                    out.extend_from_slice(value);
                    Ok(())
                })
            })())
        },
    )?;
    Ok(())
}

/// The VM or plugin configuration; other buffers are not available in this host yet.
fn config_buffer<B: Backend>(st: &HostState<B>, buffer: BufferType) -> HostResult<&[u8]> {
    match buffer {
        BufferType::VmConfiguration => Ok(&st.plugin.vm_configuration),
        BufferType::PluginConfiguration => Ok(&st.plugin.plugin_configuration),
        _ => Err(Status::NotFound),
    }
}

fn serialize_map<B: Backend>(st: &mut HostState<B>, map: MapType, out: &mut Vec<u8>) -> HostCallResult {
    let stream = st.effective_stream().ok_or(Status::NotFound)?;
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    st.backend.map_for_each(stream, map, &mut |k, v| pairs.push((k.to_vec(), v.to_vec())))?;
    encode_pairs(pairs.iter().map(|(k, v)| (&k[..], &v[..])), out);
    Ok(())
}

type MapOp<B> = fn(&mut B, <B as Backend>::Stream, MapType, &[u8], &[u8]) -> HostResult;

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
    let stream = st.effective_stream().ok_or(Status::BadArgument)?;
    op(&mut st.backend, stream, map, key, value)?;
    Ok(())
}

/// Marks a context alive in `st` (used by the callback side when it creates contexts).
pub(crate) fn register_context<B: Backend>(st: &mut HostState<B>, id: u32, kind: ContextKind<B::Stream>) {
    st.contexts.insert(id, kind);
}
