//! What a guest module exports, seen from the host: the ABI version it declares, the check
//! that its callbacks have the ABI's signatures ([`validate_module`], once per module), and its
//! callbacks, each looked up by name on its first use in a VM ([`GuestExports`]).

#![forbid(unsafe_code)]

use std::sync::OnceLock;

use wasmtime::{Instance, Module, Store, TypedFunc, WasmParams, WasmResults};

/// The Proxy-Wasm ABI versions a module can declare by exporting `proxy_abi_version_X_Y_Z`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbiVersion {
    /// 0.1.0: the header callbacks have no `end_of_stream` argument; the guest reads its
    /// configuration with `proxy_get_configuration` and resumes with `proxy_continue_request`
    /// / `proxy_continue_response` (all provided).
    V0_1_0,
    /// 0.2.0 (AssemblyScript's proxy-runtime): the same callbacks and functions as 0.2.1.
    V0_2_0,
    /// 0.2.1.
    V0_2_1,
}

/// Checks that `module` is a Proxy-Wasm module this host can run: it declares an ABI version,
/// exports its memory and an allocator, and every `proxy_on_*` callback it exports has the
/// ABI's signature. The error says exactly what is missing or wrong.
pub fn validate_module(module: &Module) -> Result<AbiVersion, String> {
    let version = abi_version(module)?;
    let headers_params = if version == AbiVersion::V0_1_0 { 2 } else { 3 };
    // (callback, number of i32 parameters, whether it returns an i32)
    let callbacks: [(&str, usize, bool); 21] = [
        ("proxy_on_context_create", 2, false),
        ("proxy_on_vm_start", 2, true),
        ("proxy_on_configure", 2, true),
        ("proxy_on_tick", 1, false),
        ("proxy_on_queue_ready", 2, false),
        ("proxy_on_request_headers", headers_params, true),
        ("proxy_on_request_body", 3, true),
        ("proxy_on_request_trailers", 2, true),
        ("proxy_on_response_headers", headers_params, true),
        ("proxy_on_response_body", 3, true),
        ("proxy_on_response_trailers", 2, true),
        ("proxy_on_http_call_response", 5, false),
        ("proxy_on_foreign_function", 3, false),
        ("proxy_on_new_connection", 1, true),
        ("proxy_on_downstream_data", 3, true),
        ("proxy_on_upstream_data", 3, true),
        ("proxy_on_downstream_connection_close", 2, false),
        ("proxy_on_upstream_connection_close", 2, false),
        ("proxy_on_done", 1, true),
        ("proxy_on_log", 1, false),
        ("proxy_on_delete", 1, false),
    ];
    for (name, params, returns) in callbacks {
        let Some(ty) = module.get_export(name) else { continue };
        let ok = match &ty {
            wasmtime::ExternType::Func(f) => {
                let is_i32 = |t: wasmtime::ValType| matches!(t, wasmtime::ValType::I32);
                f.params().len() == params
                    && f.params().all(is_i32)
                    && f.results().len() == usize::from(returns)
                    && f.results().all(is_i32)
            }
            _ => false,
        };
        if !ok {
            let want = format!("({}){}", vec!["i32"; params].join(", "), if returns { " -> i32" } else { "" });
            return Err(format!("export {name} has the wrong type: expected a function {want}"));
        }
    }
    Ok(version)
}

/// The module's ABI version, after checking it exports its memory and an allocator (what
/// every VM needs; [`validate_module`] checks the rest once per module).
pub(crate) fn abi_version(module: &Module) -> Result<AbiVersion, String> {
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

/// `proxy_on_request_headers` / `proxy_on_response_headers`, whose signature depends on the
/// ABI version.
#[derive(Clone)]
pub(crate) enum HeadersFn {
    /// 0.1.0: `(context_id, num_headers)`.
    V1(TypedFunc<(i32, i32), i32>),
    /// 0.2.x: `(context_id, num_headers, end_of_stream)`.
    V2(TypedFunc<(i32, i32, i32), i32>),
}

type F1 = TypedFunc<i32, ()>;
type F1R = TypedFunc<i32, i32>;
type F2 = TypedFunc<(i32, i32), ()>;
type F2R = TypedFunc<(i32, i32), i32>;
type F3 = TypedFunc<(i32, i32, i32), ()>;
type F3R = TypedFunc<(i32, i32, i32), i32>;
type F5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// The guest's callbacks, each looked up on its first use in this VM: a VM in `transaction`
/// isolation runs ~8 of the 21 (looking one up costs ~2,000 instructions). Absent callbacks
/// are `None` (all are optional). Their types are checked once per module, by
/// [`validate_module`].
pub(crate) struct GuestExports {
    /// The ABI version the module declared (how the header callbacks are called).
    pub(crate) abi: AbiVersion,
    pub(crate) on_context_create: Lazy<F2>,
    pub(crate) on_vm_start: Lazy<F2R>,
    pub(crate) on_configure: Lazy<F2R>,
    pub(crate) on_tick: Lazy<F1>,
    pub(crate) on_queue_ready: Lazy<F2>,
    pub(crate) on_request_headers: Lazy<HeadersFn>,
    pub(crate) on_request_body: Lazy<F3R>,
    pub(crate) on_request_trailers: Lazy<F2R>,
    pub(crate) on_response_headers: Lazy<HeadersFn>,
    pub(crate) on_response_body: Lazy<F3R>,
    pub(crate) on_response_trailers: Lazy<F2R>,
    pub(crate) on_http_call_response: Lazy<F5>,
    pub(crate) on_foreign_function: Lazy<F3>,
    pub(crate) on_new_connection: Lazy<F1R>,
    pub(crate) on_downstream_data: Lazy<F3R>,
    pub(crate) on_upstream_data: Lazy<F3R>,
    pub(crate) on_downstream_connection_close: Lazy<F2>,
    pub(crate) on_upstream_connection_close: Lazy<F2>,
    pub(crate) on_done: Lazy<F1R>,
    pub(crate) on_log: Lazy<F1>,
    pub(crate) on_delete: Lazy<F1>,
}

impl GuestExports {
    /// Every callback not looked up yet, for a module that declared `abi`.
    pub(crate) fn new(abi: AbiVersion) -> Self {
        GuestExports {
            abi,
            on_context_create: Lazy::new("proxy_on_context_create"),
            on_vm_start: Lazy::new("proxy_on_vm_start"),
            on_configure: Lazy::new("proxy_on_configure"),
            on_tick: Lazy::new("proxy_on_tick"),
            on_queue_ready: Lazy::new("proxy_on_queue_ready"),
            on_request_headers: Lazy::new("proxy_on_request_headers"),
            on_request_body: Lazy::new("proxy_on_request_body"),
            on_request_trailers: Lazy::new("proxy_on_request_trailers"),
            on_response_headers: Lazy::new("proxy_on_response_headers"),
            on_response_body: Lazy::new("proxy_on_response_body"),
            on_response_trailers: Lazy::new("proxy_on_response_trailers"),
            on_http_call_response: Lazy::new("proxy_on_http_call_response"),
            on_foreign_function: Lazy::new("proxy_on_foreign_function"),
            on_new_connection: Lazy::new("proxy_on_new_connection"),
            on_downstream_data: Lazy::new("proxy_on_downstream_data"),
            on_upstream_data: Lazy::new("proxy_on_upstream_data"),
            on_downstream_connection_close: Lazy::new("proxy_on_downstream_connection_close"),
            on_upstream_connection_close: Lazy::new("proxy_on_upstream_connection_close"),
            on_done: Lazy::new("proxy_on_done"),
            on_log: Lazy::new("proxy_on_log"),
            on_delete: Lazy::new("proxy_on_delete"),
        }
    }
}

impl Default for GuestExports {
    fn default() -> Self {
        Self::new(AbiVersion::V0_2_1)
    }
}

/// A guest callback looked up by name on first use.
pub(crate) struct Lazy<F> {
    name: &'static str,
    found: OnceLock<Option<F>>,
}

impl<F: Callable> Lazy<F> {
    fn new(name: &'static str) -> Self {
        Lazy { name, found: OnceLock::new() }
    }

    /// The callback, looked up in the VM's instance the first time.
    pub(crate) fn get<T: HasInstance>(&self, store: &mut Store<T>, abi: AbiVersion) -> wasmtime::Result<Option<&F>> {
        if let Some(f) = self.found.get() {
            return Ok(f.as_ref());
        }
        let instance = store.data().instance().ok_or_else(|| wasmtime::Error::msg("the VM is not initialized"))?;
        let f = F::lookup(store, &instance, self.name, abi)?;
        Ok(self.found.get_or_init(|| f).as_ref())
    }
}

/// A store's data that knows the VM's instance, where callbacks are looked up (the host state;
/// a trait so that this file needs not know it).
pub(crate) trait HasInstance {
    /// The instance, once the VM is initialized.
    fn instance(&self) -> Option<Instance>;
}

/// A callback type that can be looked up in an instance by name.
pub(crate) trait Callable: Sized {
    /// The export `name` of `instance` as this type; `None` when absent, an error when it has
    /// another type.
    fn lookup<T>(
        store: &mut Store<T>,
        instance: &Instance,
        name: &str,
        abi: AbiVersion,
    ) -> wasmtime::Result<Option<Self>>;
}

impl<P: WasmParams, R: WasmResults> Callable for TypedFunc<P, R> {
    fn lookup<T>(
        store: &mut Store<T>,
        instance: &Instance,
        name: &str,
        _: AbiVersion,
    ) -> wasmtime::Result<Option<Self>> {
        typed(store, instance, name)
    }
}

impl Callable for HeadersFn {
    fn lookup<T>(
        store: &mut Store<T>,
        instance: &Instance,
        name: &str,
        abi: AbiVersion,
    ) -> wasmtime::Result<Option<Self>> {
        headers_fn(store, instance, name, abi)
    }
}

/// The export `name` of `instance` as a function of type `P -> R`; `None` when absent, an error
/// naming the export when it has another type.
pub(crate) fn typed<T, P: WasmParams, R: WasmResults>(
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

/// A header callback, typed after the ABI version `v`.
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
