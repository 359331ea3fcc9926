//! Calling into the guest: VM initialization and every callback, each with the right context
//! id, the right effective context and a fresh epoch deadline. After each callback, contexts
//! that called `proxy_done` are finished. What the guest exports (its ABI version, its
//! callbacks) is looked up in [`super::exports`].

#![forbid(unsafe_code)]

use std::sync::Arc;

use wasmtime::Store;

use ats_wasm_pool::Vm;

use super::backend::Backend;
use super::exports::{AbiVersion, Callable, GuestExports, HeadersFn, Lazy, abi_version, typed};
use super::observe::Callback;
use super::state::{ContextKind, HostState, HttpCallResponse, register_context};
use super::types::{Action, PeerType};

/// A VM running a Proxy-Wasm module over backend `B`.
pub type ProxyVm<B> = Vm<HostState<B>>;

/// Why a VM could not be made ready: the step of [`initialize`] that failed (`_initialize`,
/// `proxy_on_vm_start`, …) and how. It travels inside the `wasmtime::Error` the initializer
/// returns (`err.downcast_ref::<InitError>()`).
#[derive(Debug)]
pub struct InitError {
    /// The step: `setup` (exports, memory, allocator), `_initialize`, `main`, `_start`,
    /// `proxy_on_context_create` (the root context), `proxy_on_vm_start`, `proxy_on_configure`.
    pub step: &'static str,
    /// The guest answered `false` (`proxy_on_vm_start`, `proxy_on_configure`); else it failed
    /// with `error`.
    pub error: Option<wasmtime::Error>,
    /// Whether a `memory.grow` was refused during initialization.
    pub memory_refused: bool,
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            None => write!(f, "{} returned false", self.step),
            Some(e) => write!(f, "{}: {e:#}", self.step),
        }
    }
}

impl std::error::Error for InitError {}

/// Makes a freshly instantiated VM ready: finds its memory, allocator and callbacks, runs
/// `_initialize` (then `main`) or `_start`, creates the root context and runs
/// `proxy_on_vm_start` and `proxy_on_configure`. Fails with an [`InitError`] naming the step if
/// either answers `false`, or on a trap. Also installs the store's resource limiter
/// ([`HostState::memory_refused`]).
pub fn initialize<B: Backend>(vm: &mut ProxyVm<B>) -> wasmtime::Result<()> {
    vm.store.limiter(|st| &mut st.grow_watch);
    let mut step = "setup";
    let error = match initialize_steps(vm, &mut step) {
        Ok(true) => return Ok(()),
        Ok(false) => None,
        Err(e) => Some(e),
    };
    let memory_refused = vm.store.data().memory_refused();
    Err(wasmtime::Error::new(InitError { step, error, memory_refused }))
}

/// [`initialize`]'s steps; `step` names the one running. `Ok(false)`: `proxy_on_vm_start` or
/// `proxy_on_configure` answered `false`.
fn initialize_steps<B: Backend>(vm: &mut ProxyVm<B>, step: &mut &'static str) -> wasmtime::Result<bool> {
    let (version, exports) = setup(vm)?;
    let (store, instance) = (&mut vm.store, vm.instance);
    if let Some(init) = typed::<_, (), ()>(store, &instance, "_initialize")? {
        *step = "_initialize";
        init.call(&mut *store, ())?;
        if let Some(main) = typed::<_, (i32, i32), i32>(store, &instance, "main")? {
            *step = "main";
            main.call(&mut *store, (0, 0))?;
        }
    } else if let Some(start) = typed::<_, (), ()>(store, &instance, "_start")? {
        *step = "_start";
        start.call(&mut *store, ())?;
    }

    let root = next_context_id(store.data_mut());
    {
        let st = store.data_mut();
        st.root_context_id = root;
        st.effective_context = root;
        register_context(st, root, ContextKind::Root);
    }
    *step = "proxy_on_context_create";
    if let Some(f) = exports.on_context_create.get(store, version)? {
        f.call(&mut *store, (root as i32, 0))?;
    }
    let plugin = store.data().plugin.clone();
    *step = "proxy_on_vm_start";
    if let Some(f) = exports.on_vm_start.get(store, version)? {
        store.data_mut().effective_context = root;
        store.data_mut().in_vm_start = true;
        let n = len_arg(plugin.vm_configuration.len());
        let r = timed(store, Callback::VmStart, |s| f.call(s, (root as i32, n)));
        store.data_mut().in_vm_start = false;
        if r? == 0 {
            return Ok(false);
        }
    }
    *step = "proxy_on_configure";
    if let Some(f) = exports.on_configure.get(store, version)? {
        store.data_mut().effective_context = root;
        let n = len_arg(plugin.plugin_configuration.len());
        if timed(store, Callback::Configure, |s| f.call(s, (root as i32, n)))? == 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The `setup` step: finds the VM's ABI version, memory, allocator and callbacks and keeps them
/// in its host state (also for VMs made from a snapshot: [`super::snapshot::restore`]).
pub(crate) fn setup<B: Backend>(vm: &mut ProxyVm<B>) -> wasmtime::Result<(AbiVersion, Arc<GuestExports>)> {
    let (store, instance) = (&mut vm.store, vm.instance);
    let version = abi_version(instance.module(&*store)).map_err(wasmtime::Error::msg)?;
    let memory = instance.get_memory(&mut *store, "memory").ok_or_else(|| wasmtime::Error::msg("no memory export"))?;
    let allocator = match typed::<_, i32, i32>(store, &instance, "proxy_on_memory_allocate")? {
        Some(f) => Some(f),
        None => typed(store, &instance, "malloc")?,
    };
    let exports = Arc::new(GuestExports::new(version));
    let st = store.data_mut();
    st.abi = Some(version);
    st.instance = Some(instance);
    st.memory = Some(memory);
    st.allocator = allocator.map(Arc::new);
    st.exports = Arc::clone(&exports);
    Ok((version, exports))
}

/// Runs `f` (one guest callback) between the filter's observer's `start` and `finish`, when it
/// has an observer (also when the callback fails). Without one no clock is read.
fn timed<B: Backend, R>(
    store: &mut Store<HostState<B>>,
    callback: Callback,
    f: impl FnOnce(&mut Store<HostState<B>>) -> R,
) -> R {
    let Some(started) = store.data().plugin.observer.0.as_ref().map(|o| o.start()) else {
        return f(store);
    };
    let r = f(store);
    if let Some(o) = &store.data().plugin.observer.0 {
        o.finish(callback, started);
    }
    r
}

/// A size as a guest `size_t` argument (saturating: the guest is 32-bit).
fn len_arg(n: usize) -> i32 {
    u32::try_from(n).unwrap_or(u32::MAX) as i32
}

fn next_context_id<B: Backend>(st: &mut HostState<B>) -> u32 {
    let mut id = st.next_context_id;
    while id == 0 || st.contexts.contains_key(&id) {
        id = id.wrapping_add(1);
    }
    st.next_context_id = id.wrapping_add(1);
    id
}

/// Prepares a callback into context `ctx`: it becomes the effective context and the callback
/// gets a fresh deadline.
fn enter<B: Backend>(store: &mut Store<HostState<B>>, ctx: u32) {
    let ticks = store.data().plugin.callback_deadline_ticks;
    store.set_epoch_deadline(ticks);
    let st = store.data_mut();
    st.effective_context = ctx;
    st.grow_watch.reset();
}

/// Runs callback `call` in context `ctx` (when the guest exports it), then finishes the
/// contexts that called `proxy_done`.
fn run<B: Backend, R: Callable>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    callback: Callback,
    get: impl FnOnce(&GuestExports) -> &Lazy<R>,
    call: impl FnOnce(&mut Store<HostState<B>>, &R) -> wasmtime::Result<i32>,
) -> wasmtime::Result<Option<i32>> {
    // A handle on the VM's exports that is not a borrow of the store (cloning a `TypedFunc`
    // instead would count references on the function type, shared by every thread's VMs).
    let exports = Arc::clone(&vm.store.data().exports);
    let store = &mut vm.store;
    let Some(f) = get(&exports).get(store, exports.abi)? else { return Ok(None) };
    enter(store, ctx);
    let r = timed(store, callback, |s| call(s, f))?;
    finish_pending(store)?;
    Ok(Some(r))
}

/// Like [`run`] for callbacks answering a `proxy_action_t` (absent: `Continue`).
fn run_action<B: Backend, R: Callable>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    callback: Callback,
    get: impl FnOnce(&GuestExports) -> &Lazy<R>,
    call: impl FnOnce(&mut Store<HostState<B>>, &R) -> wasmtime::Result<i32>,
) -> wasmtime::Result<Action> {
    Ok(run(vm, ctx, callback, get, call)?.map(Action::from_raw).unwrap_or(Action::Continue))
}

/// Creates a stream context attached to `stream` (`proxy_on_context_create(id, root_id)`).
/// For L4 connections too (then call [`on_new_connection`]).
pub fn create_stream_context<B: Backend>(vm: &mut ProxyVm<B>, stream: B::Stream) -> wasmtime::Result<u32> {
    let id = next_context_id(vm.store.data_mut());
    let root = vm.store.data().root_context_id;
    register_context(vm.store.data_mut(), id, ContextKind::Stream(Some(stream)));
    run(
        vm,
        id,
        Callback::ContextCreate,
        |e| &e.on_context_create,
        |s, f| f.call(s, (id as i32, root as i32)).map(|()| 0),
    )?;
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
    response: bool,
    num_headers: usize,
    end_of_stream: bool,
) -> wasmtime::Result<Action> {
    let n = len_arg(num_headers);
    fn pick(e: &GuestExports, response: bool) -> &Lazy<HeadersFn> {
        if response { &e.on_response_headers } else { &e.on_request_headers }
    }
    let callback = if response { Callback::ResponseHeaders } else { Callback::RequestHeaders };
    run_action(
        vm,
        ctx,
        callback,
        |e| pick(e, response),
        |s, f| match f {
            HeadersFn::V1(f) => f.call(s, (ctx as i32, n)),
            HeadersFn::V2(f) => f.call(s, (ctx as i32, n, end_of_stream as i32)),
        },
    )
}

/// `proxy_on_request_headers(ctx, num_headers, end_of_stream)` (0.1.0: without `end_of_stream`).
pub fn on_request_headers<B: Backend>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    num_headers: usize,
    end_of_stream: bool,
) -> wasmtime::Result<Action> {
    call_headers(vm, ctx, false, num_headers, end_of_stream)
}

/// `proxy_on_response_headers(ctx, num_headers, end_of_stream)` (0.1.0: without `end_of_stream`).
pub fn on_response_headers<B: Backend>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    num_headers: usize,
    end_of_stream: bool,
) -> wasmtime::Result<Action> {
    call_headers(vm, ctx, true, num_headers, end_of_stream)
}

/// `proxy_on_request_body(ctx, body_size, end_of_stream)`: `body_size` is everything buffered
/// so far, not the last chunk.
pub fn on_request_body<B: Backend>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    body_size: usize,
    eos: bool,
) -> wasmtime::Result<Action> {
    let n = len_arg(body_size);
    run_action(vm, ctx, Callback::RequestBody, |e| &e.on_request_body, |s, f| f.call(s, (ctx as i32, n, eos as i32)))
}

/// `proxy_on_response_body(ctx, body_size, end_of_stream)`.
pub fn on_response_body<B: Backend>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    body_size: usize,
    eos: bool,
) -> wasmtime::Result<Action> {
    let n = len_arg(body_size);
    run_action(vm, ctx, Callback::ResponseBody, |e| &e.on_response_body, |s, f| f.call(s, (ctx as i32, n, eos as i32)))
}

/// `proxy_on_request_trailers(ctx, num_trailers)`.
pub fn on_request_trailers<B: Backend>(vm: &mut ProxyVm<B>, ctx: u32, num_trailers: usize) -> wasmtime::Result<Action> {
    let n = len_arg(num_trailers);
    run_action(vm, ctx, Callback::RequestTrailers, |e| &e.on_request_trailers, |s, f| f.call(s, (ctx as i32, n)))
}

/// `proxy_on_response_trailers(ctx, num_trailers)`.
pub fn on_response_trailers<B: Backend>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    num_trailers: usize,
) -> wasmtime::Result<Action> {
    let n = len_arg(num_trailers);
    run_action(vm, ctx, Callback::ResponseTrailers, |e| &e.on_response_trailers, |s, f| f.call(s, (ctx as i32, n)))
}

/// `proxy_on_new_connection(ctx)` for an L4 stream context.
pub fn on_new_connection<B: Backend>(vm: &mut ProxyVm<B>, ctx: u32) -> wasmtime::Result<Action> {
    run_action(vm, ctx, Callback::NewConnection, |e| &e.on_new_connection, |s, f| f.call(s, ctx as i32))
}

/// `proxy_on_downstream_data(ctx, data_size, end_of_stream)`.
pub fn on_downstream_data<B: Backend>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    size: usize,
    eos: bool,
) -> wasmtime::Result<Action> {
    let n = len_arg(size);
    run_action(
        vm,
        ctx,
        Callback::DownstreamData,
        |e| &e.on_downstream_data,
        |s, f| f.call(s, (ctx as i32, n, eos as i32)),
    )
}

/// `proxy_on_upstream_data(ctx, data_size, end_of_stream)`.
pub fn on_upstream_data<B: Backend>(vm: &mut ProxyVm<B>, ctx: u32, size: usize, eos: bool) -> wasmtime::Result<Action> {
    let n = len_arg(size);
    run_action(vm, ctx, Callback::UpstreamData, |e| &e.on_upstream_data, |s, f| f.call(s, (ctx as i32, n, eos as i32)))
}

/// `proxy_on_downstream_connection_close(ctx, peer_type)`.
pub fn on_downstream_connection_close<B: Backend>(
    vm: &mut ProxyVm<B>,
    ctx: u32,
    peer: PeerType,
) -> wasmtime::Result<()> {
    run(
        vm,
        ctx,
        Callback::DownstreamConnectionClose,
        |e| &e.on_downstream_connection_close,
        |s, f| f.call(s, (ctx as i32, peer as i32)).map(|()| 0),
    )?;
    Ok(())
}

/// `proxy_on_upstream_connection_close(ctx, peer_type)`.
pub fn on_upstream_connection_close<B: Backend>(vm: &mut ProxyVm<B>, ctx: u32, peer: PeerType) -> wasmtime::Result<()> {
    run(
        vm,
        ctx,
        Callback::UpstreamConnectionClose,
        |e| &e.on_upstream_connection_close,
        |s, f| f.call(s, (ctx as i32, peer as i32)).map(|()| 0),
    )?;
    Ok(())
}

/// `proxy_on_tick(root_context_id)`: the timer set with `proxy_set_tick_period_milliseconds`.
pub fn on_tick<B: Backend>(vm: &mut ProxyVm<B>) -> wasmtime::Result<()> {
    let root = vm.store.data().root_context_id;
    run(vm, root, Callback::Tick, |e| &e.on_tick, |s, f| f.call(s, root as i32).map(|()| 0))?;
    Ok(())
}

/// `proxy_on_queue_ready(context_id, queue_id)`, as a [`super::backend::QueueTarget`] asks.
/// Nothing happens when the context is gone.
pub fn on_queue_ready<B: Backend>(vm: &mut ProxyVm<B>, context_id: u32, queue_id: u32) -> wasmtime::Result<()> {
    if !vm.store.data().contexts.contains_key(&context_id) {
        return Ok(());
    }
    run(
        vm,
        context_id,
        Callback::QueueReady,
        |e| &e.on_queue_ready,
        |s, f| f.call(s, (context_id as i32, queue_id as i32)).map(|()| 0),
    )?;
    Ok(())
}

/// Delivers the response of HTTP call `token`: `proxy_on_http_call_response(root_context_id,
/// token, num_headers, body_size, num_trailers)`, with the context that made the call as the
/// effective context (the root context when that one is gone). While it runs, the response is
/// readable as `HTTP_CALL_RESPONSE_HEADERS`/`_TRAILERS`, `HTTP_CALL_RESPONSE_BODY` and through
/// `proxy_get_status`. Answers `false` (and calls nothing) for an unknown token.
pub fn on_http_call_response<B: Backend>(
    vm: &mut ProxyVm<B>,
    token: u32,
    response: HttpCallResponse,
) -> wasmtime::Result<bool> {
    let st = vm.store.data_mut();
    let Some(caller) = st.http_calls.remove(&token) else { return Ok(false) };
    let root = st.root_context_id;
    let effective = if st.contexts.contains_key(&caller) { caller } else { root };
    let (nh, nb, nt) =
        (len_arg(response.headers.len()), len_arg(response.body.len()), len_arg(response.trailers.len()));
    st.call_response = Some(response);
    let r = run(
        vm,
        effective,
        Callback::HttpCallResponse,
        |e| &e.on_http_call_response,
        |s, f| f.call(s, (root as i32, token as i32, nh, nb, nt)).map(|()| 0),
    );
    vm.store.data_mut().call_response = None;
    r?;
    Ok(true)
}

/// `proxy_on_foreign_function(root_context_id, function_id, arguments_size)`, with `args`
/// readable as `FOREIGN_FUNCTION_ARGUMENTS` while it runs.
pub fn on_foreign_function<B: Backend>(vm: &mut ProxyVm<B>, function_id: u32, args: &[u8]) -> wasmtime::Result<()> {
    let root = vm.store.data().root_context_id;
    let n = len_arg(args.len());
    vm.store.data_mut().foreign_args = Some(args.to_vec());
    let r = run(
        vm,
        root,
        Callback::ForeignFunction,
        |e| &e.on_foreign_function,
        |s, f| f.call(s, (root as i32, function_id as i32, n)).map(|()| 0),
    );
    vm.store.data_mut().foreign_args = None;
    r?;
    Ok(())
}

/// Ends stream context `ctx` in the spec's order: `proxy_on_done`; when it answers `true`,
/// `proxy_on_log` then `proxy_on_delete`. When it answers `false` the context stays (detached
/// from its stream) until the guest calls `proxy_done`.
pub fn finish_stream_context<B: Backend>(vm: &mut ProxyVm<B>, ctx: u32) -> wasmtime::Result<()> {
    finish_context(vm, ctx, true)
}

/// Ends the root context when the VM is retired: `proxy_on_done`, then (when it answers `true`
/// or the guest calls `proxy_done`) `proxy_on_log` and `proxy_on_delete`.
pub fn shutdown<B: Backend>(vm: &mut ProxyVm<B>) -> wasmtime::Result<()> {
    let root = vm.store.data().root_context_id;
    if vm.store.data().contexts.contains_key(&root) { finish_context(vm, root, false) } else { Ok(()) }
}

fn finish_context<B: Backend>(vm: &mut ProxyVm<B>, ctx: u32, detach: bool) -> wasmtime::Result<()> {
    let store = &mut vm.store;
    let exports = Arc::clone(&store.data().exports);
    let done = match exports.on_done.get(store, exports.abi)? {
        Some(f) => {
            enter(store, ctx);
            timed(store, Callback::Done, |s| f.call(s, ctx as i32))? != 0
        }
        None => true,
    };
    let st = store.data_mut();
    if done {
        // A `proxy_done` from inside `proxy_on_done` is moot.
        st.pending_done.retain(|(c, _)| *c != ctx);
        log_and_delete(store, ctx)?;
    } else if !st.pending_done.iter().any(|(c, _)| *c == ctx) {
        st.pending_done.push((ctx, false));
        if detach && let Some(ContextKind::Stream(s)) = st.contexts.get_mut(&ctx) {
            *s = None;
        }
    }
    finish_pending(store)
}

fn log_and_delete<B: Backend>(store: &mut Store<HostState<B>>, ctx: u32) -> wasmtime::Result<()> {
    let exports = Arc::clone(&store.data().exports);
    if let Some(f) = exports.on_log.get(store, exports.abi)? {
        enter(store, ctx);
        timed(store, Callback::Log, |s| f.call(s, ctx as i32))?;
    }
    if let Some(f) = exports.on_delete.get(store, exports.abi)? {
        enter(store, ctx);
        timed(store, Callback::Delete, |s| f.call(s, ctx as i32))?;
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
