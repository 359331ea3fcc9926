//! The ABI host driven without ATS: real SDK-built modules (from `examples/`, built by
//! `make build`) and hand-written WAT, over the in-memory backend.
//!
//! `probe` drives the Rust SDK `abi-probe` filter through every host function, `edges` runs
//! hand-written WAT for what SDKs never do, `toolchains` runs the C and AssemblyScript modules.

#![forbid(unsafe_code)]

mod edges;
mod probe;
mod snapshot;
mod toolchains;

use std::path::PathBuf;
use std::sync::Arc;

use ats_wasm_pool::{EngineOptions, Vm, new_engine};
use wasmtime::{Engine, Module, Store};

use super::guest::{self, ProxyVm};
use super::testing::MemoryBackend;
use super::{Action, HostState, LogLevel, MapType, Metrics, PluginInfo, Shared, linker_for, validate_module};

pub(super) fn engine() -> Engine {
    new_engine(&EngineOptions::default()).expect("engine")
}

/// A module built by `examples/build.sh`, by crate name (Rust) or file name.
pub(super) fn example(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/target/wasm32-unknown-unknown/release")
        .join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run `examples/build.sh` first)", p.display()))
}

/// A VM of `wasm` with `info`, its own shared data/queues and metrics, initialized.
pub(super) fn vm_with(
    engine: &Engine,
    wasm: &[u8],
    info: PluginInfo,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
) -> wasmtime::Result<ProxyVm<MemoryBackend>> {
    let module = Module::new(engine, wasm)?;
    // What the plugin checks once per module before it makes VMs.
    validate_module(&module).map_err(wasmtime::Error::msg)?;
    let linker = linker_for::<MemoryBackend>(&module)?;
    let info = Arc::new(PluginInfo { callback_deadline_ticks: 1000, ..info });
    let state = HostState::with_registries(MemoryBackend::default(), info, shared, metrics);
    let mut store = Store::new(engine, state);
    store.set_epoch_deadline(1000);
    let instance = linker.instantiate(&mut store, &module)?;
    let mut vm = Vm { store, instance };
    guest::initialize(&mut vm)?;
    Ok(vm)
}

pub(super) fn vm(engine: &Engine, wasm: &[u8], configuration: &str) -> wasmtime::Result<ProxyVm<MemoryBackend>> {
    let info = PluginInfo {
        name: "test".into(),
        root_id: "root".into(),
        plugin_configuration: configuration.as_bytes().to_vec(),
        ..PluginInfo::default()
    };
    vm_with(engine, wasm, info, Arc::default(), Arc::default())
}

/// The `i32` the guest stored at address `at`.
pub(super) fn read_i32(vm: &mut ProxyVm<MemoryBackend>, at: usize) -> i32 {
    let mem = vm.instance.get_memory(&mut vm.store, "memory").unwrap();
    let mut b = [0u8; 4];
    mem.read(&vm.store, at, &mut b).unwrap();
    i32::from_le_bytes(b)
}

#[test]
fn rust_sdk_add_headers_module_reads_config_and_edits_both_maps() {
    let engine = engine();
    let config = r#"{"request_headers": {"x-req": "1"}, "response_headers": {"x-resp": "2"}}"#;
    let mut vm = vm(&engine, &example("add-headers"), config).expect("the module starts");
    let stream = 7;
    {
        let b = &mut vm.store.data_mut().backend;
        b.set_map(stream, MapType::RequestHeaders, &[("host", "example.com"), ("x-req", "old")]);
        b.set_map(stream, MapType::ResponseHeaders, &[("content-type", "text/plain")]);
    }
    let ctx = guest::create_stream_context(&mut vm, stream).unwrap();
    assert_eq!(guest::on_request_headers(&mut vm, ctx, 2, true).unwrap(), Action::Continue);
    assert_eq!(guest::on_response_headers(&mut vm, ctx, 1, false).unwrap(), Action::Continue);
    let b = &vm.store.data().backend;
    // proxy_add_header_map_value appends; it does not overwrite (an upstream-plugin defect).
    assert_eq!(
        b.map(stream, MapType::RequestHeaders),
        vec![("host".into(), "example.com".into()), ("x-req".into(), "old".into()), ("x-req".into(), "1".into())]
    );
    assert_eq!(
        b.map(stream, MapType::ResponseHeaders),
        vec![("content-type".into(), "text/plain".into()), ("x-resp".into(), "2".into())]
    );
    assert!(b.logs.iter().any(|(_, l, m)| *l == LogLevel::Debug && m.contains("x-req")), "{:?}", b.logs);

    guest::finish_stream_context(&mut vm, ctx).unwrap();
    assert_eq!(vm.store.data().live_contexts(), 1, "only the root context remains");
}

#[test]
fn bad_plugin_configuration_fails_initialization() {
    let err = vm(&engine(), &example("add-headers"), "{not json").err().expect("must fail");
    assert!(err.to_string().contains("proxy_on_configure returned false"), "{err:#}");
}

#[test]
fn module_without_abi_export_is_rejected_with_a_clear_error() {
    let module = Module::new(&engine(), "(module (memory (export \"memory\") 1))").unwrap();
    let err = validate_module(&module).unwrap_err();
    assert!(err.starts_with("not a Proxy-Wasm module"), "{err}");
}

/// A minimal module whose request-header callback calls one host function with raw arguments
/// and stores the status it got at address 0, so tests can check what the host answered.
fn probe(call: &str) -> String {
    format!(
        r#"(module
          (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
          (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "malloc") (param i32) (result i32) (i32.const 1024))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (i32.store (i32.const 0) {call})
            (i32.const 0))
          (data (i32.const 16) "host"))"#
    )
}

fn probe_status(call: &str) -> i32 {
    let engine = engine();
    let mut vm = vm(&engine, probe(call).as_bytes(), "").expect("probe starts");
    vm.store.data_mut().backend.set_map(1, MapType::RequestHeaders, &[("host", "h")]);
    let ctx = guest::create_stream_context(&mut vm, 1).unwrap();
    guest::on_request_headers(&mut vm, ctx, 1, true).unwrap();
    let mem = vm.instance.get_memory(&mut vm.store, "memory").unwrap();
    let mut b = [0u8; 4];
    mem.read(&vm.store, 0, &mut b).unwrap();
    i32::from_le_bytes(b)
}

#[test]
fn host_calls_answer_spec_statuses_for_bad_pointers_and_ids() {
    // get "host" into (ptr@32, len@36): OK.
    assert_eq!(probe_status("(call $get (i32.const 0) (i32.const 16) (i32.const 4) (i32.const 32) (i32.const 36))"), 0);
    // Missing key ("ho", "ost"): NOT_FOUND.
    assert_eq!(probe_status("(call $get (i32.const 0) (i32.const 16) (i32.const 2) (i32.const 32) (i32.const 36))"), 1);
    assert_eq!(probe_status("(call $get (i32.const 0) (i32.const 17) (i32.const 3) (i32.const 32) (i32.const 36))"), 1);
    // Unknown map type: BAD_ARGUMENT.
    assert_eq!(
        probe_status("(call $get (i32.const 99) (i32.const 16) (i32.const 4) (i32.const 32) (i32.const 36))"),
        2
    );
    // Key outside memory, length overflowing, return pointer outside memory: INVALID_MEMORY_ACCESS.
    assert_eq!(
        probe_status("(call $get (i32.const 0) (i32.const 65535) (i32.const 4) (i32.const 32) (i32.const 36))"),
        6
    );
    assert_eq!(
        probe_status("(call $get (i32.const 0) (i32.const 16) (i32.const -1) (i32.const 32) (i32.const 36))"),
        6
    );
    assert_eq!(
        probe_status("(call $get (i32.const 0) (i32.const 16) (i32.const 4) (i32.const 65534) (i32.const 36))"),
        6
    );
    assert_eq!(probe_status("(call $add (i32.const 0) (i32.const 16) (i32.const 4) (i32.const -8) (i32.const 16))"), 6);
    // Unknown log level: BAD_ARGUMENT; a log message outside memory: INVALID_MEMORY_ACCESS.
    assert_eq!(probe_status("(call $log (i32.const 9) (i32.const 16) (i32.const 4))"), 2);
    assert_eq!(probe_status("(call $log (i32.const 2) (i32.const 65530) (i32.const 100))"), 6);
    // Malformed serialized map: BAD_ARGUMENT (4 bytes "host" read as a huge pair count).
    assert_eq!(probe_status("(call $set_pairs (i32.const 0) (i32.const 16) (i32.const 4))"), 2);
}

#[test]
fn unimplemented_imports_answer_unimplemented_and_warn_once() {
    let wat = r#"(module
      (import "env" "proxy_made_up_function" (func $cancel (param i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "malloc") (param i32) (result i32) (i32.const 1024))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (i32.store (i32.const 0) (call $cancel (i32.const 1)))
        (drop (call $cancel (i32.const 1)))
        (i32.const 0)))"#;
    let engine = engine();
    let mut vm = vm(&engine, wat.as_bytes(), "").unwrap();
    let ctx = guest::create_stream_context(&mut vm, 1).unwrap();
    guest::on_request_headers(&mut vm, ctx, 0, true).unwrap();
    let mem = vm.instance.get_memory(&mut vm.store, "memory").unwrap();
    let mut b = [0u8; 4];
    mem.read(&vm.store, 0, &mut b).unwrap();
    assert_eq!(i32::from_le_bytes(b), 12, "UNIMPLEMENTED");
    let warnings: Vec<_> = vm.store.data().backend.logs.iter().filter(|(_, l, _)| *l == LogLevel::Warn).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].2.contains("env.proxy_made_up_function is not implemented"));
}

#[test]
fn a_trapping_callback_is_an_error_not_a_panic() {
    let wat = r#"(module
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "malloc") (param i32) (result i32) (i32.const 1024))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (i32.load (i32.const 70000))))"#;
    let engine = engine();
    let mut vm = vm(&engine, wat.as_bytes(), "").unwrap();
    let ctx = guest::create_stream_context(&mut vm, 1).unwrap();
    let err = guest::on_request_headers(&mut vm, ctx, 0, true).unwrap_err();
    assert!(format!("{err:#}").contains("out of bounds memory access"), "{err:#}");
}

/// Records every callback it is told about.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<super::Callback>>);

impl super::CallbackObserver for Recorder {
    fn start(&self) -> u64 {
        42
    }

    fn finish(&self, callback: super::Callback, started: u64) {
        assert_eq!(started, 42, "finish gets what start returned");
        self.0.lock().unwrap().push(callback);
    }
}

#[test]
fn an_observer_is_told_of_every_callback_the_guest_exports() {
    use super::Callback::*;
    let engine = engine();
    let rec = Arc::new(Recorder::default());
    let info = PluginInfo {
        name: "timed".into(),
        plugin_configuration: br#"{"request_headers": {"x-req": "1"}}"#.to_vec(),
        observer: super::Observer(Some(rec.clone())),
        ..PluginInfo::default()
    };
    let mut vm = vm_with(&engine, &example("add-headers"), info, Arc::default(), Arc::default()).unwrap();
    {
        let b = &mut vm.store.data_mut().backend;
        b.set_map(3, MapType::RequestHeaders, &[("host", "example.com")]);
        b.set_map(3, MapType::ResponseHeaders, &[("content-type", "text/plain")]);
    }
    let ctx = guest::create_stream_context(&mut vm, 3).unwrap();
    guest::on_request_headers(&mut vm, ctx, 0, true).unwrap();
    guest::on_response_headers(&mut vm, ctx, 0, true).unwrap();
    guest::finish_stream_context(&mut vm, ctx).unwrap();
    let seen = rec.0.lock().unwrap().clone();
    // The Rust SDK exports every callback.
    assert_eq!(
        seen,
        vec![VmStart, Configure, ContextCreate, RequestHeaders, ResponseHeaders, Done, Log, Delete],
        "in dispatch order"
    );
}

#[test]
fn link_lists_the_imports_it_stubs_and_what_calling_them_does() {
    let wat = r#"(module
      (import "env" "proxy_made_up_function" (func (param i32) (result i32)))
      (import "env" "proxy_grpc_cancel" (func (param i32) (result i32)))
      (import "env" "made_up_void" (func))
      (import "wasi_snapshot_preview1" "fd_close" (func (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "sched_yield" (func (result i32)))
      (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "malloc") (param i32) (result i32) (i32.const 1024)))"#;
    let module = Module::new(&engine(), wat).unwrap();
    let (_, stubs) = super::link::<MemoryBackend>(&module).unwrap();
    let got: Vec<(&str, &str, bool)> = stubs.iter().map(|s| (s.import.as_str(), s.effect.as_str(), s.in_abi)).collect();
    assert_eq!(
        got,
        [
            ("env.proxy_made_up_function", "answers UNIMPLEMENTED (12)", false),
            ("env.proxy_grpc_cancel", "answers UNIMPLEMENTED (12)", true),
            ("env.made_up_void", "does nothing", false),
            ("wasi_snapshot_preview1.fd_close", "answers EBADF (8)", false),
            ("wasi_snapshot_preview1.sched_yield", "answers ENOSYS (52)", false),
        ],
        "proxy_log is provided"
    );
}

/// A module whose `proxy_on_request_headers` asks for `pages` more pages and traps when the
/// header count is 1 (the guest's allocator giving up), or just traps when it is 2.
fn grow_then_trap(pages: u32) -> String {
    format!(
        r#"(module
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "malloc") (param i32) (result i32) (i32.const 1024))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (if (i32.eq (local.get 1) (i32.const 1))
          (then (drop (memory.grow (i32.const {pages}))) unreachable))
        (if (i32.eq (local.get 1) (i32.const 2)) (then unreachable))
        (i32.const 0)))"#
    )
}

#[test]
fn a_refused_memory_grow_is_remembered_for_the_callback_only() {
    let engine = engine();
    // 64 MiB is the engine's cap: 2,000 pages (125 MiB) at once are refused.
    let mut vm = vm(&engine, grow_then_trap(2_000).as_bytes(), "").unwrap();
    let ctx = guest::create_stream_context(&mut vm, 1).unwrap();
    assert!(guest::on_request_headers(&mut vm, ctx, 1, true).is_err());
    assert!(vm.store.data().memory_refused(), "the refusal is remembered");
    let size = vm.instance.get_memory(&mut vm.store, "memory").unwrap().data_size(&vm.store);
    assert_eq!(size, 65536, "the memory did not grow at all");

    // The next callback starts afresh.
    let ctx = guest::create_stream_context(&mut vm, 1).unwrap();
    assert!(guest::on_request_headers(&mut vm, ctx, 0, true).is_ok());
    assert!(!vm.store.data().memory_refused(), "reset when a callback starts");

    // A plain trap is not the memory cap.
    let mut vm2 = vm_fresh(&engine, &grow_then_trap(2_000));
    let ctx = guest::create_stream_context(&mut vm2, 1).unwrap();
    assert!(guest::on_request_headers(&mut vm2, ctx, 2, true).is_err());
    assert!(!vm2.store.data().memory_refused());

    // A grow within the cap is no refusal.
    let mut vm3 = vm_fresh(&engine, &grow_then_trap(10));
    let ctx = guest::create_stream_context(&mut vm3, 1).unwrap();
    assert!(guest::on_request_headers(&mut vm3, ctx, 1, true).is_err());
    assert!(!vm3.store.data().memory_refused());
}

fn vm_fresh(engine: &Engine, wat: &str) -> ProxyVm<MemoryBackend> {
    vm(engine, wat.as_bytes(), "").unwrap()
}

#[test]
fn an_initialization_failure_names_its_step() {
    let module = |body: &str| {
        format!(
            r#"(module
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "malloc") (param i32) (result i32) (i32.const 1024))
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32) {body}))"#
        )
    };
    let engine = engine();
    let init_error = |body: &str| {
        let err = vm(&engine, module(body).as_bytes(), "").err().expect("must fail");
        let e = err.downcast_ref::<super::InitError>().expect("an InitError");
        (e.step, e.error.as_ref().map(|e| format!("{e:#}")), e.memory_refused, err.to_string())
    };
    let (step, error, refused, text) = init_error("(i32.const 0)");
    assert_eq!((step, error, refused), ("proxy_on_configure", None, false));
    assert_eq!(text, "proxy_on_configure returned false");
    let (step, error, refused, text) = init_error("unreachable");
    assert_eq!((step, refused), ("proxy_on_configure", false));
    assert!(error.unwrap().contains("unreachable"), "{text}");
    assert!(text.starts_with("proxy_on_configure: "), "{text}");
    let (step, _, refused, _) = init_error("(drop (memory.grow (i32.const 2000))) unreachable");
    assert_eq!((step, refused), ("proxy_on_configure", true));
}
