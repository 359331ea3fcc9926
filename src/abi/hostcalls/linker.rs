//! The linker assembly: the registration table that adds every host call to a wasmtime
//! [`Linker`] behind the filter's capability check, and the stubs for every other function a
//! module imports.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::{ExternType, IntoFunc, Linker, Module, Val, ValType};

use crate::abi::backend::Backend;
use crate::abi::capabilities::first_denial;
use crate::abi::state::HostState;
use crate::abi::types::{LogLevel, Status};

use super::caller::{Ctx, finish};
use super::{buffers, context, foreign, header_maps, http_calls, logging, metrics, properties};
use super::{shared_data, shared_queues, streams, time, wasi};

/// Registers host functions while remembering their names, so that the stubs for everything
/// else can be added afterwards without clashing.
struct Registrar<'a, B: Backend> {
    linker: &'a mut Linker<HostState<B>>,
    defined: HashSet<(&'static str, &'static str)>,
}

impl<B: Backend> Registrar<'_, B> {
    /// Defines `module.name` as `f`.
    fn def<P, R>(
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

/// Whether host function `name` is refused by the filter's `allowed_capabilities`; the first
/// refusal per filter and function is logged. While an initializer is recorded for a snapshot,
/// the call is noted in its journal (see [`crate::abi::snapshot`]).
fn denied<B: Backend>(c: &mut Ctx<'_, B>, name: &'static str) -> bool {
    let st = c.data_mut();
    if let Some(j) = st.journal.as_mut() {
        j.note(name);
    }
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

/// A function the module imports that ats-wasm does not implement: it is linked to a stub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stub {
    /// The import, `module.name`.
    pub import: String,
    /// What calling it does (`answers UNIMPLEMENTED (12)`, …).
    pub effect: String,
    /// Whether it is a function of the Proxy-Wasm ABI (`proxy_grpc_*`), which every Rust SDK
    /// module imports whether it uses it or not.
    pub in_abi: bool,
}

/// Builds a linker with every host function for `module`: the implemented ones, and stubs for
/// any other function it imports (`UNIMPLEMENTED` for `env`, `EBADF` for WASI `fd_*`, `ENOSYS`
/// for other WASI functions). Fails with a clear message when the module imports something
/// that is not a function (ats-wasm provides no memories, tables or globals).
pub fn linker_for<B: Backend>(module: &Module) -> wasmtime::Result<Linker<HostState<B>>> {
    link(module).map(|(linker, _)| linker)
}

/// [`linker_for`], and the imports it linked to stubs, in import order.
pub fn link<B: Backend>(module: &Module) -> wasmtime::Result<(Linker<HostState<B>>, Vec<Stub>)> {
    let mut linker = Linker::new(module.engine());
    let mut reg = Registrar { linker: &mut linker, defined: HashSet::new() };
    add_proxy_functions(&mut reg)?;
    add_wasi_functions(&mut reg, "wasi_snapshot_preview1")?;
    add_wasi_functions(&mut reg, "wasi_unstable")?;
    let defined = std::mem::take(&mut reg.defined);
    let mut stubs = Vec::new();
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
        let (code, code_name) = match (is_wasi, import.name().starts_with("fd_")) {
            (true, true) => (wasi::BADF, "EBADF"),
            (true, false) => (wasi::NOSYS, "ENOSYS"),
            (false, _) => (Status::Unimplemented as i32, "UNIMPLEMENTED"),
        };
        let name = format!("{}.{}", import.module(), import.name());
        stubs.push(Stub {
            import: name.clone(),
            effect: if ty.results().len() == 0 {
                "does nothing".into()
            } else {
                format!("answers {code_name} ({code})")
            },
            in_abi: import.module() == "env" && import.name().starts_with("proxy_grpc_"),
        });
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
    Ok((linker, stubs))
}

/// Defines `env.<name>` as `<section>::<name>` behind the capability check: a refused call
/// answers `INTERNAL_FAILURE`; otherwise the body's result becomes the status (or a trap).
macro_rules! proxy {
    ($reg:ident, $section:ident :: $name:ident ($($a:ident : $t:ty),*)) => {
        $reg.def("env", stringify!($name), |mut c: Ctx<'_, B>, $($a: $t),*| -> wasmtime::Result<i32> {
            if denied(&mut c, stringify!($name)) {
                return Ok(Status::InternalFailure as i32);
            }
            finish($section::$name(&mut c, $($a),*))
        })?
    };
}

/// The `proxy_*` host calls, by spec section. Every function of ABI 0.2.1 is here, plus the
/// 0.1.0-only ones; gRPC is not (its imports get the stubs of [`linker_for`]).
fn add_proxy_functions<B: Backend>(reg: &mut Registrar<'_, B>) -> wasmtime::Result<()> {
    // Logging, clocks, timers.
    proxy!(reg, logging::proxy_log(level: i32, ptr: i32, len: i32));
    proxy!(reg, logging::proxy_get_log_level(ret: i32));
    proxy!(reg, time::proxy_get_current_time_nanoseconds(ret: i32));
    proxy!(reg, time::proxy_set_tick_period_milliseconds(period: i32));

    // Buffers.
    proxy!(reg, buffers::proxy_get_buffer_status(buffer: i32, ret_size: i32, ret_flags: i32));
    proxy!(reg, buffers::proxy_get_buffer_bytes(buffer: i32, start: i32, max: i32, ret_ptr: i32, ret_len: i32));
    proxy!(reg, buffers::proxy_set_buffer_bytes(buffer: i32, start: i32, size: i32, vp: i32, vl: i32));
    proxy!(reg, buffers::proxy_get_configuration(ret_ptr: i32, ret_len: i32));

    // HTTP fields.
    proxy!(reg, header_maps::proxy_get_header_map_value(map: i32, kp: i32, kl: i32, ret_ptr: i32, ret_len: i32));
    proxy!(reg, header_maps::proxy_get_header_map_pairs(map: i32, ret_ptr: i32, ret_len: i32));
    proxy!(reg, header_maps::proxy_get_header_map_size(map: i32, ret_size: i32));
    proxy!(reg, header_maps::proxy_set_header_map_pairs(map: i32, ptr: i32, len: i32));
    proxy!(reg, header_maps::proxy_add_header_map_value(map: i32, kp: i32, kl: i32, vp: i32, vl: i32));
    proxy!(reg, header_maps::proxy_replace_header_map_value(map: i32, kp: i32, kl: i32, vp: i32, vl: i32));
    proxy!(reg, header_maps::proxy_remove_header_map_value(map: i32, kp: i32, kl: i32));

    // Stream operations.
    proxy!(reg, streams::proxy_continue_stream(which: i32));
    proxy!(reg, streams::proxy_close_stream(which: i32));
    proxy!(reg, streams::proxy_continue_request());
    proxy!(reg, streams::proxy_continue_response());
    proxy!(reg, streams::proxy_clear_route_cache());
    proxy!(reg, streams::proxy_send_local_response(
        code: i32, dp: i32, dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, grpc: i32
    ));
    proxy!(reg, streams::proxy_get_status(ret_code: i32, ret_ptr: i32, ret_len: i32));

    // HTTP calls.
    proxy!(reg, http_calls::proxy_http_call(
        up: i32, ul: i32, hp: i32, hl: i32, bp: i32, bl: i32, tp: i32, tl: i32, timeout: i32, ret: i32
    ));

    // Shared data and queues.
    proxy!(reg, shared_data::proxy_get_shared_data(kp: i32, kl: i32, ret_ptr: i32, ret_len: i32, ret_cas: i32));
    proxy!(reg, shared_data::proxy_set_shared_data(kp: i32, kl: i32, vp: i32, vl: i32, cas: i32));
    proxy!(reg, shared_queues::proxy_register_shared_queue(np: i32, nl: i32, ret: i32));
    proxy!(reg, shared_queues::proxy_resolve_shared_queue(vp: i32, vl: i32, np: i32, nl: i32, ret: i32));
    proxy!(reg, shared_queues::proxy_enqueue_shared_queue(id: i32, vp: i32, vl: i32));
    proxy!(reg, shared_queues::proxy_dequeue_shared_queue(id: i32, ret_ptr: i32, ret_len: i32));

    // Metrics.
    proxy!(reg, metrics::proxy_define_metric(kind: i32, np: i32, nl: i32, ret: i32));
    proxy!(reg, metrics::proxy_increment_metric(id: i32, delta: i64));
    proxy!(reg, metrics::proxy_record_metric(id: i32, value: i64));
    proxy!(reg, metrics::proxy_get_metric(id: i32, ret: i32));

    // Properties.
    proxy!(reg, properties::proxy_get_property(path_ptr: i32, path_len: i32, ret_ptr: i32, ret_len: i32));
    proxy!(reg, properties::proxy_set_property(pp: i32, pl: i32, vp: i32, vl: i32));

    // Context lifecycle.
    proxy!(reg, context::proxy_set_effective_context(id: i32));
    proxy!(reg, context::proxy_done());

    // Foreign functions.
    proxy!(reg, foreign::proxy_call_foreign_function(np: i32, nl: i32, ap: i32, al: i32, ret_ptr: i32, ret_len: i32));
    Ok(())
}

/// Defines `<module>.<name>` as `wasi::<name>` behind the capability check: a refused call
/// answers `ENOSYS`; otherwise the body's result becomes the errno.
macro_rules! wasi {
    ($reg:ident, $module:ident, $name:ident ($($a:ident : $t:ty),*)) => {
        $reg.def($module, stringify!($name), |mut c: Ctx<'_, B>, $($a: $t),*| -> wasmtime::Result<i32> {
            if denied(&mut c, stringify!($name)) {
                return Ok(wasi::NOSYS);
            }
            Ok(wasi::$name(&mut c, $($a),*).err().unwrap_or(wasi::SUCCESS))
        })?
    };
}

/// The WASI functions of import module `m` (see [`wasi`]).
fn add_wasi_functions<B: Backend>(reg: &mut Registrar<'_, B>, m: &'static str) -> wasmtime::Result<()> {
    wasi!(reg, m, fd_write(fd: i32, iovs: i32, iovs_len: i32, ret_written: i32));
    wasi!(reg, m, environ_sizes_get(ret_count: i32, ret_size: i32));
    wasi!(reg, m, environ_get(ret_array: i32, ret_buf: i32));
    wasi!(reg, m, args_sizes_get(ret_count: i32, ret_size: i32));
    wasi!(reg, m, args_get(argv: i32, buf: i32));
    wasi!(reg, m, clock_time_get(id: i32, precision: i64, ret: i32));
    wasi!(reg, m, random_get(buf: i32, len: i32));
    // `proc_exit` returns nothing: a refused call does nothing, otherwise it traps.
    reg.def(m, "proc_exit", |mut c: Ctx<'_, B>, code: i32| -> wasmtime::Result<()> {
        if denied(&mut c, "proc_exit") {
            return Ok(());
        }
        wasi::proc_exit(&mut c, code)
    })?;
    Ok(())
}
