//! Proxy-Wasm host benchmarks without ATS: `cargo bench -p ats-wasm --bench abi`.
//!
//! - `hook_dispatch/<module>`: one HTTP stream through a real SDK-built module over the
//!   in-memory backend — create the stream context, `proxy_on_request_headers`,
//!   `proxy_on_response_headers`, then `proxy_on_done`/`proxy_on_log`/`proxy_on_delete` — for the
//!   Rust SDK (`add-headers`), plain C (`c-headers`) and AssemblyScript (`as-headers`) modules.
//! - `host_call/<function>`: the round trip of one host call from guest code (a hand-written
//!   module calls the function 1,000 times from one callback; criterion reports per call).
//!
//! - `fresh_vm/<module>/{initializer,snapshot}`: one `transaction`-isolation VM made ready
//!   and dropped — instantiated and initialized (`_initialize`, `proxy_on_vm_start`,
//!   `proxy_on_configure`), or instantiated from a snapshot of an initialized VM and restored
//!   without guest code; `recycled`: a used VM of the snapshot put back into a ready VM's
//!   state (its written memory pages and mutable globals) instead.
//!
//! The modules come from `examples/build.sh` (`make build`).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ats_wasm::abi::guest::{self, ProxyVm};
use ats_wasm::abi::snapshot::snapshot_template;
use ats_wasm::abi::testing::MemoryBackend;
use ats_wasm::abi::{BufferType, HostState, LogLevel, MapType, PluginInfo, linker_for};
use ats_wasm_pool::{EngineOptions, Vm, VmTemplate, new_engine};
use criterion::{BenchmarkId, Criterion, Throughput};
use wasmtime::{Engine, Module, Store};

fn module_path(file: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/target");
    match file {
        "c_headers.wasm" | "as_headers.wasm" => root.join("modules").join(file),
        _ => root.join("wasm32-unknown-unknown/release").join(file),
    }
}

/// An initialized VM of `wasm` with root id `root_id` and plugin configuration `configuration`.
fn vm(engine: &Engine, wasm: &[u8], root_id: &str, configuration: &str) -> ProxyVm<MemoryBackend> {
    let module = Module::new(engine, wasm).expect("module compiles");
    let linker = linker_for::<MemoryBackend>(&module).expect("module links");
    let info = Arc::new(PluginInfo {
        name: "bench".into(),
        root_id: root_id.into(),
        plugin_configuration: configuration.as_bytes().to_vec(),
        callback_deadline_ticks: u64::MAX / 2,
        ..PluginInfo::default()
    });
    // Warn and above: the guests' per-request debug lines are filtered by the host, as in ATS
    // with the debug tag off.
    let backend = MemoryBackend { level: Some(LogLevel::Warn), ..MemoryBackend::default() };
    let mut store = Store::new(engine, HostState::new(backend, info));
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = linker.instantiate(&mut store, &module).expect("module instantiates");
    let mut vm = Vm { store, instance };
    guest::initialize(&mut vm).expect("module starts");
    vm
}

/// Request and response headers of a typical proxied GET.
fn set_stream_maps(b: &mut MemoryBackend, stream: u32) {
    b.set_map(
        stream,
        MapType::RequestHeaders,
        &[
            (":method", "GET"),
            (":path", "/index.html?x=1"),
            (":authority", "example.com"),
            (":scheme", "http"),
            ("user-agent", "bench/1.0"),
            ("accept", "*/*"),
        ],
    );
    b.set_map(
        stream,
        MapType::ResponseHeaders,
        &[
            (":status", "200"),
            ("content-type", "text/html"),
            ("content-length", "1024"),
            ("cache-control", "max-age=60"),
        ],
    );
}

fn hook_dispatch(c: &mut Criterion, engine: &Engine) {
    let config = r#"{"request_headers": {"x-added-by": "ats-wasm"}, "response_headers": {"x-served-by": "ats-wasm"}}"#;
    let mut g = c.benchmark_group("hook_dispatch");
    for (name, file) in
        [("rust-sdk", "add_headers.wasm"), ("c", "c_headers.wasm"), ("assemblyscript", "as_headers.wasm")]
    {
        let path = module_path(file);
        let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `make build`)", path.display()));
        let mut vm = vm(engine, &wasm, file.trim_end_matches(".wasm"), config);
        let stream = 1;
        g.bench_function(BenchmarkId::new("stream", name), |b| {
            b.iter(|| {
                set_stream_maps(&mut vm.store.data_mut().backend, stream);
                let ctx = guest::create_stream_context(&mut vm, stream).expect("context");
                black_box(guest::on_request_headers(&mut vm, ctx, 6, true).expect("request headers"));
                black_box(guest::on_response_headers(&mut vm, ctx, 4, false).expect("response headers"));
                guest::finish_stream_context(&mut vm, ctx).expect("done, log, delete");
            })
        });
    }
    g.finish();
}

/// A module whose `proxy_on_request_headers` runs `call` (leaving nothing on the stack) 1,000
/// times. Data: "user-agent" at 16 (10 bytes), "request" at 32, "path" at 40 (property path
/// `request\0path` at 32, 12 bytes), "x-bench" at 48, "1" at 56. Results go to 1024/1028.
fn host_call_module(call: &str) -> String {
    format!(
        r#"(module
          (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
          (import "env" "proxy_get_current_time_nanoseconds" (func $time (param i32) (result i32)))
          (memory (export "memory") 1)
          (global $heap (mut i32) (i32.const 4096))
          (func (export "proxy_abi_version_0_2_1"))
          ;; A bump allocator that starts over at every callback: enough for a bench.
          (func (export "malloc") (param $n i32) (result i32) (global.get $heap))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (local $i i32)
            (loop $again
              {call}
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $again (i32.lt_u (local.get $i) (i32.const 1000))))
            (i32.const 0))
          (data (i32.const 16) "user-agent")
          (data (i32.const 32) "request\00path")
          (data (i32.const 48) "x-bench")
          (data (i32.const 56) "1"))"#
    )
}

fn host_calls(c: &mut Criterion, engine: &Engine) {
    let calls = [
        (
            "get_header_map_value",
            "(drop (call $get (i32.const 0) (i32.const 16) (i32.const 10) (i32.const 1024) (i32.const 1028)))",
        ),
        (
            "replace_header_map_value",
            "(drop (call $replace (i32.const 0) (i32.const 48) (i32.const 7) (i32.const 56) (i32.const 1)))",
        ),
        ("get_property", "(drop (call $get_property (i32.const 32) (i32.const 12) (i32.const 1024) (i32.const 1028)))"),
        (
            "get_buffer_bytes",
            "(drop (call $get_buffer (i32.const 0) (i32.const 0) (i32.const 16) (i32.const 1024) (i32.const 1028)))",
        ),
        ("log_filtered", "(drop (call $log (i32.const 0) (i32.const 16) (i32.const 10)))"),
        ("get_current_time", "(drop (call $time (i32.const 1024)))"),
    ];
    let mut g = c.benchmark_group("host_call");
    g.throughput(Throughput::Elements(1000));
    for (name, call) in calls {
        let mut vm = vm(engine, host_call_module(call).as_bytes(), "bench", "");
        let stream = 1;
        let b = &mut vm.store.data_mut().backend;
        set_stream_maps(b, stream);
        b.set_buffer(stream, BufferType::HttpRequestBody, b"0123456789abcdef");
        b.set_property_value(Some(stream), "request\0path", b"/index.html?x=1");
        let ctx = guest::create_stream_context(&mut vm, stream).expect("context");
        g.bench_function(name, |b| {
            b.iter(|| black_box(guest::on_request_headers(&mut vm, ctx, 6, true).expect("calls")))
        });
    }
    g.finish();
}

fn fresh_vms(c: &mut Criterion, engine: &Engine) {
    let mut g = c.benchmark_group("fresh_vm");
    let config =
        r#"{"request_headers": {"x-added-by": "ats-wasm"}, "response_headers": {"x-wasm-filter": "add-headers"}}"#;
    for (name, file) in [("add-headers", "add_headers.wasm"), ("c-headers", "c_headers.wasm")] {
        let wasm = std::fs::read(module_path(file)).expect("examples/build.sh");
        let info = Arc::new(PluginInfo {
            name: "bench".into(),
            root_id: "add-headers".into(),
            plugin_configuration: config.as_bytes().to_vec(),
            callback_deadline_ticks: 1 << 30,
            ..PluginInfo::default()
        });
        let state = move || HostState::new(MemoryBackend::default(), info.clone());
        let module = Module::new(engine, &wasm).expect("module compiles");
        let pre = linker_for::<MemoryBackend>(&module).and_then(|l| l.instantiate_pre(&module)).expect("links");
        let fresh = VmTemplate::new(pre, state.clone(), guest::initialize, 1 << 30);
        let snap = snapshot_template(engine, &wasm, state, 1 << 30).expect("snapshotted");
        for (kind, t) in [("initializer", &fresh), ("snapshot", &snap)] {
            g.bench_function(BenchmarkId::new(name, kind), |b| {
                b.iter(|| drop(black_box(t.instantiate().expect("VM"))))
            });
        }
        // A used VM put back into a ready VM's state (what `transaction` isolation does after
        // each transaction): the pages a transaction wrote stay the process's, so every round
        // copies them back.
        let mut vm = snap.instantiate().expect("VM");
        set_stream_maps(&mut vm.store.data_mut().backend, 1);
        let ctx = guest::create_stream_context(&mut vm, 1).expect("context");
        guest::on_request_headers(&mut vm, ctx, 0, true).expect("request headers");
        guest::finish_stream_context(&mut vm, ctx).expect("done");
        g.bench_function(BenchmarkId::new(name, "recycled"), |b| b.iter(|| assert!(snap.recycle(black_box(&mut vm)))));
    }
    g.finish();
}

fn main() {
    let engine = new_engine(&EngineOptions::default()).expect("engine");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    hook_dispatch(&mut c, &engine);
    host_calls(&mut c, &engine);
    fresh_vms(&mut c, &engine);
    c.final_summary();
}
