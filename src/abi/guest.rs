//! Calling into the guest: ABI version detection, export lookup, VM initialization and the
//! stream callbacks, each with the right context id and an epoch deadline.

use wasmtime::{Instance, Module, Store, TypedFunc, WasmParams, WasmResults};

use ats_wasm_pool::Vm;

use super::backend::Backend;
use super::hostcalls::register_context;
use super::state::{ContextKind, HostState};
use super::types::Action;

/// A VM running a Proxy-Wasm module over backend `B`.
pub type ProxyVm<B> = Vm<HostState<B>>;

/// The Proxy-Wasm ABI versions a module can declare by exporting `proxy_abi_version_X_Y_Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbiVersion {
    /// 0.1.0: header callbacks have no `end_of_stream` argument.
    V0_1_0,
    /// 0.2.0.
    V0_2_0,
    /// 0.2.1.
    V0_2_1,
}

/// Checks that `module` is a Proxy-Wasm module this host can run: it declares an ABI version,
/// exports its memory and an allocator. The error says exactly what is missing.
pub fn validate_module(module: &Module) -> Result<AbiVersion, String> {
    let has = |name: &str| module.get_export(name).is_some();
    let version = if has("proxy_abi_version_0_2_1") {
        AbiVersion::V0_2_1
    } else if has("proxy_abi_version_0_2_0") {
        AbiVersion::V0_2_0
    } else if has("proxy_abi_version_0_1_0") {
        AbiVersion::V0_1_0
    } else {
        return Err("not a Proxy-Wasm module: it exports none of proxy_abi_version_0_2_1, \
                    proxy_abi_version_0_2_0, proxy_abi_version_0_1_0"
            .into());
    };
    if !matches!(module.get_export("memory"), Some(wasmtime::ExternType::Memory(_))) {
        return Err("the module does not export its memory as \"memory\"".into());
    }
    if !has("proxy_on_memory_allocate") && !has("malloc") {
        return Err("the module exports no allocator (proxy_on_memory_allocate or malloc)".into());
    }
    Ok(version)
}

#[derive(Clone)]
enum HeadersFn {
    V1(TypedFunc<(i32, i32), i32>),
    V2(TypedFunc<(i32, i32, i32), i32>),
}

/// The guest's callbacks, looked up once per VM. Absent callbacks are `None` (all are optional).
#[derive(Clone, Default)]
pub(crate) struct GuestExports {
    on_context_create: Option<TypedFunc<(i32, i32), ()>>,
    on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    on_configure: Option<TypedFunc<(i32, i32), i32>>,
    on_request_headers: Option<HeadersFn>,
    on_response_headers: Option<HeadersFn>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_delete: Option<TypedFunc<i32, ()>>,
}

fn typed<T, P: WasmParams, R: WasmResults>(
    store: &mut Store<T>,
    instance: &Instance,
    name: &str,
) -> wasmtime::Result<Option<TypedFunc<P, R>>> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f
            .typed::<P, R>(&*store)
            .map(Some)
            .map_err(|e| wasmtime::Error::msg(format!("export {name} has the wrong type: {e}"))),
    }
}

fn headers_fn<T>(
    store: &mut Store<T>,
    instance: &Instance,
    name: &str,
    v: AbiVersion,
) -> wasmtime::Result<Option<HeadersFn>> {
    Ok(if v == AbiVersion::V0_1_0 {
        typed(store, instance, name)?.map(HeadersFn::V1)
    } else {
        typed(store, instance, name)?.map(HeadersFn::V2)
    })
}

/// Makes a freshly instantiated VM ready: finds its memory, allocator and callbacks, runs
/// `_initialize` (then `main`) or `_start`, creates the root context and runs
/// `proxy_on_vm_start` and `proxy_on_configure`. Fails if either answers `false`, or on a trap.
pub fn initialize<B: Backend>(vm: &mut ProxyVm<B>) -> wasmtime::Result<()> {
    let (store, instance) = (&mut vm.store, vm.instance);
    let version = validate_module(instance.module(&*store)).map_err(wasmtime::Error::msg)?;
    let memory = instance.get_memory(&mut *store, "memory").ok_or_else(|| wasmtime::Error::msg("no memory export"))?;
    let allocator = match typed::<_, i32, i32>(store, &instance, "proxy_on_memory_allocate")? {
        Some(f) => Some(f),
        None => typed(store, &instance, "malloc")?,
    };
    let exports = GuestExports {
        on_context_create: typed(store, &instance, "proxy_on_context_create")?,
        on_vm_start: typed(store, &instance, "proxy_on_vm_start")?,
        on_configure: typed(store, &instance, "proxy_on_configure")?,
        on_request_headers: headers_fn(store, &instance, "proxy_on_request_headers", version)?,
        on_response_headers: headers_fn(store, &instance, "proxy_on_response_headers", version)?,
        on_done: typed(store, &instance, "proxy_on_done")?,
        on_log: typed(store, &instance, "proxy_on_log")?,
        on_delete: typed(store, &instance, "proxy_on_delete")?,
    };
    {
        let st = store.data_mut();
        st.memory = Some(memory);
        st.allocator = allocator;
        st.exports = exports.clone();
    }

    if let Some(init) = typed::<_, (), ()>(store, &instance, "_initialize")? {
        init.call(&mut *store, ())?;
        if let Some(main) = typed::<_, (i32, i32), i32>(store, &instance, "main")? {
            main.call(&mut *store, (0, 0))?;
        }
    } else if let Some(start) = typed::<_, (), ()>(store, &instance, "_start")? {
        start.call(&mut *store, ())?;
    }

    let root = next_context_id(store.data_mut());
    {
        let st = store.data_mut();
        st.root_context_id = root;
        st.effective_context = root;
        register_context(st, root, ContextKind::Root);
    }
    if let Some(f) = exports.on_context_create {
        f.call(&mut *store, (root as i32, 0))?;
    }
    let plugin = store.data().plugin.clone();
    if let Some(f) = exports.on_vm_start {
        store.data_mut().effective_context = root;
        if f.call(&mut *store, (root as i32, plugin.vm_configuration.len() as i32))? == 0 {
            wasmtime::bail!("proxy_on_vm_start returned false");
        }
    }
    if let Some(f) = exports.on_configure {
        store.data_mut().effective_context = root;
        if f.call(&mut *store, (root as i32, plugin.plugin_configuration.len() as i32))? == 0 {
            wasmtime::bail!("proxy_on_configure returned false");
        }
    }
    Ok(())
}

fn next_context_id<B: Backend>(st: &mut HostState<B>) -> u32 {
    let id = st.next_context_id;
    st.next_context_id = st.next_context_id.wrapping_add(1).max(1);
    id
}

/// Prepares a callback into context `ctx`: it becomes the effective context and the callback
/// gets a fresh deadline.
fn enter<B: Backend>(store: &mut Store<HostState<B>>, ctx: u32) {
    let ticks = store.data().plugin.callback_deadline_ticks;
    store.set_epoch_deadline(ticks);
    store.data_mut().effective_context = ctx;
}

/// Creates a stream context attached to `stream` (`proxy_on_context_create(id, root_id)`).
pub fn create_stream_context<B: Backend>(vm: &mut ProxyVm<B>, stream: B::Stream) -> wasmtime::Result<u32> {
    let store = &mut vm.store;
    let id = next_context_id(store.data_mut());
    let root = store.data().root_context_id;
    register_context(store.data_mut(), id, ContextKind::Stream(Some(stream)));
    if let Some(f) = store.data().exports.on_context_create.clone() {
        enter(store, id);
        f.call(&mut *store, (id as i32, root as i32))?;
    }
    Ok(id)
}

/// Points context `ctx` at `stream` (e.g. the same transaction in a later phase).
pub fn attach_stream<B: Backend>(vm: &mut ProxyVm<B>, ctx: u32, stream: B::Stream) {
    if let Some(ContextKind::Stream(s)) = vm.store.data_mut().contexts.get_mut(&ctx) {
        *s = Some(stream);
    }
}

fn call_headers<B: Backend>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    f: Option<HeadersFn>,
    num_headers: usize,
    end_of_stream: bool,
) -> wasmtime::Result<Action> {
    let Some(f) = f else { return Ok(Action::Continue) };
    let store = &mut vm.store;
    enter(store, ctx);
    let n = num_headers.min(i32::MAX as usize) as i32;
    let r = match f {
        HeadersFn::V1(f) => f.call(&mut *store, (ctx as i32, n))?,
        HeadersFn::V2(f) => f.call(&mut *store, (ctx as i32, n, end_of_stream as i32))?,
    };
    finish_pending(store)?;
    Ok(Action::from_raw(r))
}

/// `proxy_on_request_headers(ctx, num_headers, end_of_stream)`.
pub fn on_request_headers<B: Backend>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    num_headers: usize,
    end_of_stream: bool,
) -> wasmtime::Result<Action> {
    let f = vm.store.data().exports.on_request_headers.clone();
    call_headers(vm, ctx, f, num_headers, end_of_stream)
}

/// `proxy_on_response_headers(ctx, num_headers, end_of_stream)`.
pub fn on_response_headers<B: Backend>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    num_headers: usize,
    end_of_stream: bool,
) -> wasmtime::Result<Action> {
    let f = vm.store.data().exports.on_response_headers.clone();
    call_headers(vm, ctx, f, num_headers, end_of_stream)
}

/// Ends stream context `ctx` in the spec's order: `proxy_on_done`; when it answers `true`,
/// `proxy_on_log` then `proxy_on_delete`. When it answers `false` the context stays (detached
/// from its stream) until the guest calls `proxy_done`.
pub fn finish_stream_context<B: Backend>(vm: &mut ProxyVm<B>, ctx: u32) -> wasmtime::Result<()> {
    let store = &mut vm.store;
    let done = match store.data().exports.on_done.clone() {
        Some(f) => {
            enter(store, ctx);
            f.call(&mut *store, ctx as i32)? != 0
        }
        None => true,
    };
    if done {
        log_and_delete(store, ctx)?;
    } else {
        let st = store.data_mut();
        st.pending_done.push((ctx, false));
        if let Some(ContextKind::Stream(s)) = st.contexts.get_mut(&ctx) {
            *s = None;
        }
    }
    finish_pending(store)
}

fn log_and_delete<B: Backend>(store: &mut Store<HostState<B>>, ctx: u32) -> wasmtime::Result<()> {
    if let Some(f) = store.data().exports.on_log.clone() {
        enter(store, ctx);
        f.call(&mut *store, ctx as i32)?;
    }
    if let Some(f) = store.data().exports.on_delete.clone() {
        enter(store, ctx);
        f.call(&mut *store, ctx as i32)?;
    }
    store.data_mut().contexts.remove(&ctx);
    Ok(())
}

/// Finishes the contexts that called `proxy_done` since their `proxy_on_done` answered `false`.
fn finish_pending<B: Backend>(store: &mut Store<HostState<B>>) -> wasmtime::Result<()> {
    while let Some(i) = store.data().pending_done.iter().position(|(_, done)| *done) {
        let (ctx, _) = store.data_mut().pending_done.swap_remove(i);
        log_and_delete(store, ctx)?;
    }
    Ok(())
}
