//! The `proxy_*` host functions, registered in a wasmtime [`Linker`].
//!
//! Each function checks every guest pointer and length (see [`super::memory`]), answers the
//! spec's status codes, and never panics. Every function of ABI 0.2.1 is defined, plus the
//! 0.1.0-only ones (`proxy_get_configuration`, `proxy_continue_request`,
//! `proxy_continue_response`, `proxy_clear_route_cache`); any other `env` import a module has
//! gets a stub answering `UNIMPLEMENTED` (and logging once per module), so every SDK's module
//! instantiates. Each function first checks the filter's `allowed_capabilities`
//! (see [`super::capabilities`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, ExternType, IntoFunc, Linker, Memory, Module, Val, ValType};

use super::backend::{Backend, HttpCallRequest, LocalResponse, QueueTarget};
use super::buffers::read_range;
use super::capabilities::first_denial;
use super::memory::{check_u32, slice, write_u32, write_u64};
use super::properties::parse_path;
use super::serialization::decode_pairs;
use super::state::HostState;
use super::types::{BufferType, HostResult, LogLevel, MapType, MetricType, Status, StreamType};
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

/// Whether host function `name` is refused by the filter's `allowed_capabilities`; the first
/// refusal per filter and function is logged.
pub(crate) fn denied<B: Backend>(c: &mut Ctx<'_, B>, name: &'static str) -> bool {
    let st = c.data_mut();
    if st.capabilities.allows(name) {
        return false;
    }
    if first_denial(&st.plugin.name, &st.plugin.vm_id, name) {
        let msg = format!("{name} is not in allowed_capabilities; the call is refused");
        let filter = st.plugin.name.clone();
        st.backend.log(&filter, LogLevel::Warn, msg.as_bytes());
    }
    true
}

/// Copies `data` into a fresh allocation made by the guest's allocator and writes its address
/// and length to `ret_ptr` and `ret_len`. Empty data is allocated too (a zero-byte
/// allocation): AssemblyScript's proxy-runtime 0.1.8 dereferences the returned pointer even
/// for size 0, and the Rust and C++ SDKs read a non-null empty allocation as an empty value;
/// an allocator that answers 0 for a zero-byte request gives a null pointer and size 0. An
/// allocator that fails otherwise (returns 0, or a pointer whose range is outside memory) gives
/// `INVALID_MEMORY_ACCESS`; a host call made from inside the allocator that needs to allocate
/// gives `INTERNAL_FAILURE` (or a null pointer, for empty data).
pub(crate) fn copy_out<B: Backend>(caller: &mut Ctx<'_, B>, data: &[u8], ret_ptr: i32, ret_len: i32) -> HostCallResult {
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
    super::memory::slice_mut(mem, guest_ptr, len)?.copy_from_slice(data);
    write_u32(mem, ret_ptr, guest_ptr as u32)?;
    write_u32(mem, ret_len, data.len() as u32)?;
    Ok(())
}

/// Like [`copy_out`] for bytes the host builds in its reusable scratch buffer: `fill` writes
/// them into the (cleared) buffer. The return pointers are checked before `fill` runs, so a
/// call with side effects (a dequeue) does not lose data to a bad pointer.
fn copy_out_scratch<B: Backend>(
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
pub(crate) fn read_guest<B: Backend>(caller: &Ctx<'_, B>, ptr: i32, len: i32, out: &mut Vec<u8>) -> HostResult {
    let memory = memory(caller)?;
    out.extend_from_slice(slice(memory.data(caller), ptr, len)?);
    Ok(())
}

/// Checks that `ptr` can hold a `u32` in the caller's memory.
fn check_ret<B: Backend>(c: &Ctx<'_, B>, ptr: i32) -> HostResult {
    check_u32(memory(c)?.data_size(c), ptr)
}

/// Writes a `u32` result.
fn put_u32<B: Backend>(c: &mut Ctx<'_, B>, ptr: i32, v: u32) -> HostResult {
    let memory = memory(c)?;
    write_u32(memory.data_mut(c), ptr, v)
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

/// WASI's `ENOSYS` and `BADF`.
const WASI_ENOSYS: i32 = 52;
const WASI_BADF: i32 = 8;

/// Builds a linker with every host function for `module`: the implemented ones, and stubs for
/// any other function it imports (`UNIMPLEMENTED` for `env`, `EBADF` for WASI `fd_*`, `ENOSYS`
/// for other WASI functions). Fails with a clear message when the module imports something
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
        let code = match (is_wasi, import.name().starts_with("fd_")) {
            (true, true) => WASI_BADF,
            (true, false) => WASI_ENOSYS,
            (false, _) => Status::Unimplemented as i32,
        };
        let name = format!("{}.{}", import.module(), import.name());
        let warned = Arc::new(AtomicBool::new(false));
        let results: Vec<ValType> = ty.results().collect();
        linker.func_new(import.module(), import.name(), ty.clone(), move |mut caller: Ctx<'_, B>, _params, out| {
            if !is_wasi && !warned.swap(true, Ordering::Relaxed) {
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

fn buffer_type(raw: i32) -> HostResult<BufferType> {
    BufferType::from_raw(raw).ok_or(Status::BadArgument)
}

fn stream_type(raw: i32) -> HostResult<StreamType> {
    StreamType::from_raw(raw).ok_or(Status::BadArgument)
}

/// Defines `env.$name` with a capability check first; `$body` is a [`HostCallResult`].
macro_rules! proxy {
    ($reg:expr, $name:literal, |$c:ident $(, $a:ident : $t:ty)*| $body:expr) => {
        $reg.def("env", $name, |mut $c: Ctx<'_, B>, $($a: $t),*| -> wasmtime::Result<i32> {
            if denied(&mut $c, $name) {
                return Ok(Status::InternalFailure as i32);
            }
            #[allow(clippy::redundant_closure_call)]
            finish((|| -> HostCallResult { $body })())
        })?
    };
}

fn add_proxy_functions<B: Backend>(reg: &mut Registrar<'_, B>) -> wasmtime::Result<()> {
    // --- Logging, time, timers -------------------------------------------------------------
    proxy!(reg, "proxy_log", |c, level: i32, ptr: i32, len: i32| {
        let level = LogLevel::from_raw(level).ok_or(Status::BadArgument)?;
        let memory = memory(&c)?;
        let (mem, st) = memory.data_and_store_mut(&mut c);
        let msg = slice(mem, ptr, len)?;
        if level >= st.backend.log_level() {
            st.backend.log(&st.plugin.name, level, msg);
        }
        Ok(())
    });

    proxy!(reg, "proxy_get_log_level", |c, ret: i32| {
        let level = c.data().backend.log_level();
        put_u32(&mut c, ret, level as u32)?;
        Ok(())
    });

    proxy!(reg, "proxy_get_current_time_nanoseconds", |c, ret: i32| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let memory = memory(&c)?;
        write_u64(memory.data_mut(&mut c), ret, now)?;
        Ok(())
    });

    proxy!(reg, "proxy_set_tick_period_milliseconds", |c, period: i32| {
        let period = match period as u32 {
            0 => None,
            ms => Some(Duration::from_millis(ms as u64)),
        };
        let st = c.data_mut();
        st.backend.set_tick_period(period)?;
        st.tick_period = period;
        Ok(())
    });

    // --- Buffers ----------------------------------------------------------------------------
    proxy!(reg, "proxy_get_buffer_status", |c, buffer: i32, ret_size: i32, ret_flags: i32| {
        let buffer = buffer_type(buffer)?;
        let size = buffer_size(c.data_mut(), buffer)?;
        let memory = memory(&c)?;
        let mem = memory.data_mut(&mut c);
        check_u32(mem.len(), ret_size)?;
        check_u32(mem.len(), ret_flags)?;
        write_u32(mem, ret_size, u32::try_from(size).unwrap_or(u32::MAX))?;
        write_u32(mem, ret_flags, 0)?;
        Ok(())
    });

    proxy!(reg, "proxy_get_buffer_bytes", |c, buffer: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32| {
        let buffer = buffer_type(buffer)?;
        copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| read_buffer(st, buffer, start as u32, max as u32, out))
    });

    proxy!(reg, "proxy_set_buffer_bytes", |c, buffer: i32, start: i32, size: i32, vp: i32, vl: i32| {
        let buffer = buffer_type(buffer)?;
        let memory = memory(&c)?;
        let (mem, st) = memory.data_and_store_mut(&mut c);
        let value = slice(mem, vp, vl)?;
        match buffer {
            BufferType::HttpRequestBody
            | BufferType::HttpResponseBody
            | BufferType::DownstreamData
            | BufferType::UpstreamData => {
                let stream = st.effective_stream().ok_or(Status::NotFound)?;
                st.backend.buffer_set(stream, buffer, start as u32 as usize, size as u32 as usize, value)?;
                Ok(())
            }
            // Read-only buffers.
            BufferType::VmConfiguration
            | BufferType::PluginConfiguration
            | BufferType::HttpCallResponseBody
            | BufferType::ForeignFunctionArguments => Err(Status::BadArgument.into()),
            BufferType::GrpcCallMessage => Err(Status::NotFound.into()),
        }
    });

    // 0.1.0: the configuration of the current phase.
    proxy!(reg, "proxy_get_configuration", |c, ret_ptr: i32, ret_len: i32| {
        copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| {
            let p = &st.plugin;
            out.extend_from_slice(if st.in_vm_start { &p.vm_configuration } else { &p.plugin_configuration });
            Ok(())
        })
    });

    // --- Header maps ------------------------------------------------------------------------
    proxy!(reg, "proxy_get_header_map_value", |c, map: i32, kp: i32, kl: i32, ret_ptr: i32, ret_len: i32| {
        let map = map_type(map)?;
        let mut key = std::mem::take(&mut c.data_mut().scratch2);
        key.clear();
        let r = read_guest(&c, kp, kl, &mut key).map_err(HostError::from).and_then(|()| {
            copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| {
                if map_get(st, map, &key, out)? { Ok(()) } else { Err(Status::NotFound.into()) }
            })
        });
        c.data_mut().scratch2 = key;
        r
    });

    proxy!(reg, "proxy_get_header_map_pairs", |c, map: i32, ret_ptr: i32, ret_len: i32| {
        let map = map_type(map)?;
        copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| serialize_map(st, map, out))
    });

    proxy!(reg, "proxy_get_header_map_size", |c, map: i32, ret_size: i32| {
        let map = map_type(map)?;
        let mut buf = std::mem::take(&mut c.data_mut().scratch);
        let r = serialize_map(c.data_mut(), map, &mut buf);
        let size = buf.len();
        c.data_mut().scratch = buf;
        r?;
        put_u32(&mut c, ret_size, size as u32)?;
        Ok(())
    });

    proxy!(reg, "proxy_set_header_map_pairs", |c, map: i32, ptr: i32, len: i32| {
        let map = map_type(map)?;
        let memory = memory(&c)?;
        let (mem, st) = memory.data_and_store_mut(&mut c);
        let pairs = decode_pairs(slice(mem, ptr, len)?)?;
        let stream = writable_map(st, map)?;
        st.backend.map_set_pairs(stream, map, &pairs)?;
        Ok(())
    });

    proxy!(reg, "proxy_add_header_map_value", |c, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
        with_key_value(&mut c, map, kp, kl, vp, vl, |b, s, m, k, v| b.map_add(s, m, k, v))
    });

    proxy!(reg, "proxy_replace_header_map_value", |c, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
        with_key_value(&mut c, map, kp, kl, vp, vl, |b, s, m, k, v| b.map_replace(s, m, k, v))
    });

    proxy!(reg, "proxy_remove_header_map_value", |c, map: i32, kp: i32, kl: i32| {
        with_key_value(&mut c, map, kp, kl, 0, 0, |b, s, m, k, _| b.map_remove(s, m, k))
    });

    // --- Stream control ---------------------------------------------------------------------
    proxy!(reg, "proxy_continue_stream", |c, which: i32| {
        let which = stream_type(which)?;
        stream_op(c.data_mut(), |b, s| b.continue_stream(s, which))
    });

    proxy!(reg, "proxy_close_stream", |c, which: i32| {
        let which = stream_type(which)?;
        stream_op(c.data_mut(), |b, s| b.close_stream(s, which))
    });

    proxy!(reg, "proxy_continue_request", |c| stream_op(c.data_mut(), |b, s| b
        .continue_stream(s, StreamType::HttpRequest)));

    proxy!(reg, "proxy_continue_response", |c| stream_op(c.data_mut(), |b, s| b
        .continue_stream(s, StreamType::HttpResponse)));

    // 0.1.0: ATS routes (remaps) after the request headers; there is no cache to clear.
    proxy!(reg, "proxy_clear_route_cache", |c| {
        let _ = &mut c;
        Ok(())
    });

    proxy!(reg, "proxy_send_local_response", |c,
                                              code: i32,
                                              dp: i32,
                                              dl: i32,
                                              bp: i32,
                                              bl: i32,
                                              hp: i32,
                                              hl: i32,
                                              grpc: i32| {
        let memory = memory(&c)?;
        let (mem, st) = memory.data_and_store_mut(&mut c);
        let details = slice(mem, dp, dl)?;
        let body = slice(mem, bp, bl)?;
        let headers = decode_pairs(slice(mem, hp, hl)?)?;
        let stream = st.effective_stream().ok_or(Status::BadArgument)?;
        let resp = LocalResponse { status_code: code as u32, details, body, headers: &headers, grpc_status: grpc };
        st.backend.send_local_response(stream, &resp)?;
        Ok(())
    });

    proxy!(reg, "proxy_get_status", |c, ret_code: i32, ret_ptr: i32, ret_len: i32| {
        check_ret(&c, ret_code)?;
        let code = c.data().call_response.as_ref().map(|r| r.status_code()).unwrap_or(0);
        copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| {
            if let Some(r) = &st.call_response {
                out.extend_from_slice(&r.message);
            }
            Ok(())
        })?;
        put_u32(&mut c, ret_code, code)?;
        Ok(())
    });

    // --- HTTP and gRPC calls ----------------------------------------------------------------
    proxy!(reg, "proxy_http_call", |c,
                                    up: i32,
                                    ul: i32,
                                    hp: i32,
                                    hl: i32,
                                    bp: i32,
                                    bl: i32,
                                    tp: i32,
                                    tl: i32,
                                    timeout: i32,
                                    ret: i32| {
        check_ret(&c, ret)?;
        let memory = memory(&c)?;
        let (mem, st) = memory.data_and_store_mut(&mut c);
        let upstream = slice(mem, up, ul)?;
        let headers = decode_pairs(slice(mem, hp, hl)?)?;
        let body = slice(mem, bp, bl)?;
        let trailers = decode_pairs(slice(mem, tp, tl)?)?;
        for required in [&b":method"[..], b":path", b":authority"] {
            if !headers.iter().any(|(k, v)| *k == required && !v.is_empty()) {
                return Err(Status::BadArgument.into());
            }
        }
        let mut token = st.next_token;
        while token == 0 || st.http_calls.contains_key(&token) {
            token = token.wrapping_add(1);
        }
        let req = HttpCallRequest {
            token,
            upstream,
            headers: &headers,
            body,
            trailers: &trailers,
            timeout: Duration::from_millis(timeout as u32 as u64),
        };
        let stream = st.effective_stream();
        st.backend.http_call(stream, &req)?;
        st.next_token = token.wrapping_add(1);
        let ctx = st.effective_context;
        st.http_calls.insert(token, ctx);
        write_u32(mem, ret, token)?;
        Ok(())
    });

    // gRPC is not implemented: the proxy_grpc_* imports get the generic stubs of
    // `linker_for`, which answer UNIMPLEMENTED and warn once per module.

    // --- Shared data and queues -------------------------------------------------------------
    proxy!(reg, "proxy_get_shared_data", |c, kp: i32, kl: i32, ret_ptr: i32, ret_len: i32, ret_cas: i32| {
        check_ret(&c, ret_cas)?;
        let mut key = std::mem::take(&mut c.data_mut().scratch2);
        key.clear();
        let mut cas = 0;
        let r = read_guest(&c, kp, kl, &mut key).map_err(HostError::from).and_then(|()| {
            copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| {
                cas = st.shared.get(&st.plugin.vm_id, &key, out)?;
                Ok(())
            })
        });
        c.data_mut().scratch2 = key;
        r?;
        put_u32(&mut c, ret_cas, cas)?;
        Ok(())
    });

    proxy!(reg, "proxy_set_shared_data", |c, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| {
        let memory = memory(&c)?;
        let (mem, st) = memory.data_and_store_mut(&mut c);
        let key = slice(mem, kp, kl)?;
        let value = slice(mem, vp, vl)?;
        st.shared.set(&st.plugin.vm_id, key, value, cas as u32)?;
        Ok(())
    });

    proxy!(reg, "proxy_register_shared_queue", |c, np: i32, nl: i32, ret: i32| {
        check_ret(&c, ret)?;
        let memory = memory(&c)?;
        let (mem, st) = memory.data_and_store_mut(&mut c);
        let name = slice(mem, np, nl)?;
        let owner = QueueTarget { vm: st.vm_uid, context_id: st.root_context_id, queue_id: 0 };
        let id = st.shared.register_queue(&st.plugin.vm_id, name, owner)?;
        write_u32(mem, ret, id)?;
        Ok(())
    });

    proxy!(reg, "proxy_resolve_shared_queue", |c, vp: i32, vl: i32, np: i32, nl: i32, ret: i32| {
        check_ret(&c, ret)?;
        let memory = memory(&c)?;
        let (mem, st) = memory.data_and_store_mut(&mut c);
        let vm_id = slice(mem, vp, vl)?;
        let name = slice(mem, np, nl)?;
        let id = st.shared.resolve_queue(vm_id, name)?;
        write_u32(mem, ret, id)?;
        Ok(())
    });

    proxy!(reg, "proxy_enqueue_shared_queue", |c, id: i32, vp: i32, vl: i32| {
        let memory = memory(&c)?;
        let (mem, st) = memory.data_and_store_mut(&mut c);
        let value = slice(mem, vp, vl)?;
        let target = st.shared.enqueue(id as u32, value)?;
        st.backend.queue_ready(target);
        Ok(())
    });

    proxy!(reg, "proxy_dequeue_shared_queue", |c, id: i32, ret_ptr: i32, ret_len: i32| {
        copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| Ok(st.shared.dequeue(id as u32, out)?))
    });

    // --- Metrics ----------------------------------------------------------------------------
    proxy!(reg, "proxy_define_metric", |c, kind: i32, np: i32, nl: i32, ret: i32| {
        let kind = MetricType::from_raw(kind).ok_or(Status::BadArgument)?;
        check_ret(&c, ret)?;
        let memory = memory(&c)?;
        let (mem, st) = memory.data_and_store_mut(&mut c);
        let id = st.metrics.define(kind, slice(mem, np, nl)?)?;
        write_u32(mem, ret, id)?;
        Ok(())
    });

    proxy!(reg, "proxy_increment_metric", |c, id: i32, delta: i64| {
        c.data().metrics.increment(id as u32, delta)?;
        Ok(())
    });

    proxy!(reg, "proxy_record_metric", |c, id: i32, value: i64| {
        c.data().metrics.record(id as u32, value as u64)?;
        Ok(())
    });

    proxy!(reg, "proxy_get_metric", |c, id: i32, ret: i32| {
        check_ret(&c, ret)?;
        let value = c.data().metrics.get(id as u32)?;
        let memory = memory(&c)?;
        write_u64(memory.data_mut(&mut c), ret, value)?;
        Ok(())
    });

    // --- Properties -------------------------------------------------------------------------
    proxy!(reg, "proxy_get_property", |c, path_ptr: i32, path_len: i32, ret_ptr: i32, ret_len: i32| {
        let mut path = Vec::new();
        read_guest(&c, path_ptr, path_len, &mut path)?;
        copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| {
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
    });

    proxy!(reg, "proxy_set_property", |c, pp: i32, pl: i32, vp: i32, vl: i32| {
        let memory = memory(&c)?;
        let (mem, st) = memory.data_and_store_mut(&mut c);
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
    });

    // --- Contexts ---------------------------------------------------------------------------
    proxy!(reg, "proxy_set_effective_context", |c, id: i32| {
        let st = c.data_mut();
        let id = id as u32;
        if !st.contexts.contains_key(&id) {
            return Err(Status::BadArgument.into());
        }
        st.effective_context = id;
        Ok(())
    });

    proxy!(reg, "proxy_done", |c| {
        let st = c.data_mut();
        let id = st.effective_context;
        match st.pending_done.iter_mut().find(|(ctx, _)| *ctx == id) {
            Some(p) => {
                p.1 = true;
                Ok(())
            }
            None => Err(Status::NotFound.into()),
        }
    });

    // --- Foreign functions ------------------------------------------------------------------
    proxy!(reg, "proxy_call_foreign_function", |c, np: i32, nl: i32, ap: i32, al: i32, ret_ptr: i32, ret_len: i32| {
        let mut name_args = Vec::new();
        read_guest(&c, np, nl, &mut name_args)?;
        read_guest(&c, ap, al, &mut name_args)?;
        let split = nl as u32 as usize;
        copy_out_scratch(&mut c, ret_ptr, ret_len, |st, out| {
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
    });
    Ok(())
}

/// The size of a buffer (`proxy_get_buffer_status`).
fn buffer_size<B: Backend>(st: &mut HostState<B>, buffer: BufferType) -> HostResult<usize> {
    match buffer {
        BufferType::VmConfiguration => Ok(st.plugin.vm_configuration.len()),
        BufferType::PluginConfiguration => Ok(st.plugin.plugin_configuration.len()),
        BufferType::HttpCallResponseBody => Ok(st.call_response.as_ref().ok_or(Status::NotFound)?.body.len()),
        BufferType::ForeignFunctionArguments => Ok(st.foreign_args.as_ref().ok_or(Status::NotFound)?.len()),
        BufferType::GrpcCallMessage => Err(Status::NotFound),
        _ => {
            let stream = st.effective_stream().ok_or(Status::NotFound)?;
            st.backend.buffer_size(stream, buffer)
        }
    }
}

/// Reads `[start, start + max)` (clamped) of a buffer into `out` (`proxy_get_buffer_bytes`).
fn read_buffer<B: Backend>(
    st: &mut HostState<B>,
    buffer: BufferType,
    start: u32,
    max: u32,
    out: &mut Vec<u8>,
) -> HostCallResult {
    let own: &[u8] = match buffer {
        BufferType::VmConfiguration => &st.plugin.vm_configuration,
        BufferType::PluginConfiguration => &st.plugin.plugin_configuration,
        BufferType::HttpCallResponseBody => &st.call_response.as_ref().ok_or(Status::NotFound)?.body,
        BufferType::ForeignFunctionArguments => st.foreign_args.as_deref().ok_or(Status::NotFound)?,
        BufferType::GrpcCallMessage => return Err(Status::NotFound.into()),
        _ => {
            let stream = st.effective_stream().ok_or(Status::NotFound)?;
            let size = st.backend.buffer_size(stream, buffer)?;
            let r = read_range(size, start, max)?;
            st.backend.buffer_get(stream, buffer, r.start, r.len(), out)?;
            return Ok(());
        }
    };
    out.extend_from_slice(&own[read_range(own.len(), start, max)?]);
    Ok(())
}

/// The fields of an HTTP call response's map (`HTTP_CALL_RESPONSE_HEADERS` / `_TRAILERS`).
fn call_map<B: Backend>(st: &HostState<B>, map: MapType) -> HostResult<&[(Vec<u8>, Vec<u8>)]> {
    let r = st.call_response.as_ref().ok_or(Status::NotFound)?;
    Ok(if map == MapType::HttpCallResponseHeaders { &r.headers } else { &r.trailers })
}

/// The value of `key` in `map`, joined with `", "` when repeated; `Ok(false)` when absent.
fn map_get<B: Backend>(st: &mut HostState<B>, map: MapType, key: &[u8], out: &mut Vec<u8>) -> HostResult<bool> {
    match map {
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => {
            let mut found = false;
            for (k, v) in call_map(st, map)? {
                if k.eq_ignore_ascii_case(key) {
                    if found {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(v);
                    found = true;
                }
            }
            Ok(found)
        }
        MapType::GrpcInitialMetadata | MapType::GrpcTrailingMetadata => Err(Status::NotFound),
        _ => {
            let stream = st.effective_stream().ok_or(Status::NotFound)?;
            st.backend.map_get(stream, map, key, out)
        }
    }
}

/// Serializes `map` into `out` (cleared first), without allocating once the scratch buffers
/// have grown: sizes go to `out`, bytes to the second scratch buffer, then they are joined.
fn serialize_map<B: Backend>(st: &mut HostState<B>, map: MapType, out: &mut Vec<u8>) -> HostCallResult {
    out.clear();
    out.extend_from_slice(&[0; 4]);
    let mut data = std::mem::take(&mut st.scratch2);
    data.clear();
    let mut n: u32 = 0;
    let mut add = |k: &[u8], v: &[u8]| {
        n += 1;
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        data.extend_from_slice(k);
        data.push(0);
        data.extend_from_slice(v);
        data.push(0);
    };
    let r = match map {
        MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers => call_map(st, map).map(|fields| {
            for (k, v) in fields {
                add(k, v);
            }
        }),
        MapType::GrpcInitialMetadata | MapType::GrpcTrailingMetadata => Err(Status::NotFound),
        _ => match st.effective_stream() {
            Some(stream) => st.backend.map_for_each(stream, map, &mut add),
            None => Err(Status::NotFound),
        },
    };
    out[..4].copy_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&data);
    st.scratch2 = data;
    r?;
    Ok(())
}

/// The stream whose `map` the guest may change now; `BAD_ARGUMENT` for read-only maps (HTTP
/// call responses, gRPC metadata) and when the effective context has no stream.
fn writable_map<B: Backend>(st: &HostState<B>, map: MapType) -> HostResult<B::Stream> {
    match map {
        MapType::RequestHeaders | MapType::RequestTrailers | MapType::ResponseHeaders | MapType::ResponseTrailers => {
            st.effective_stream().ok_or(Status::BadArgument)
        }
        _ => Err(Status::BadArgument),
    }
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
    let stream = writable_map(st, map)?;
    op(&mut st.backend, stream, map, key, value)?;
    Ok(())
}

/// Runs a stream-control operation on the effective context's stream; `BAD_ARGUMENT` when the
/// effective context has none (the root context).
fn stream_op<B: Backend>(st: &mut HostState<B>, op: impl FnOnce(&mut B, B::Stream) -> HostResult) -> HostCallResult {
    let stream = st.effective_stream().ok_or(Status::BadArgument)?;
    op(&mut st.backend, stream)?;
    Ok(())
}
