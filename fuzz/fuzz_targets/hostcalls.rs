//! Drives the host-call boundary: random sequences of the 38 `env.proxy_*` host calls, with
//! random pointers, lengths and values, from inside real callbacks of a real wasmtime instance
//! over the in-memory backend (`src/abi/testing.rs`).
//!
//! The guest is generated WAT: it imports every host call, and its callbacks
//! (`proxy_on_request_headers`, `proxy_on_response_headers`, then `proxy_on_http_call_response`
//! for a call it made, or `proxy_on_tick`) interpret a program the fuzzer writes into its
//! memory — records of (host call, up to 10 arguments) — calling each host function in turn.
//! After each call the guest checks the status against the spec's set (`OK`, `NOT_FOUND`,
//! `BAD_ARGUMENT`, `SERIALIZATION_FAILURE`, `PARSE_FAILURE`, `INVALID_MEMORY_ACCESS`, `EMPTY`,
//! `CAS_MISMATCH`, `INTERNAL_FAILURE`, `UNIMPLEMENTED`) and records a stranger one in globals,
//! which host calls cannot write. Arguments are drawn to hit the interesting places: small
//! numbers, the fuzzer's data area (keys, values, serialized maps), the heap, the last bytes
//! of memory, negative numbers and raw 32-bit values.
//!
//! Fails on: a panic anywhere in the host (a Rust out-of-bounds access is one), a status outside
//! the set, a trap the host did not cause (the guest's own loads stay in bounds), or an
//! initialization failure of the module. The host code is compiled in (`#[path]`), as the
//! plugin compiles it, so libFuzzer's coverage sees it.

#![no_main]

#[allow(dead_code, unused_imports, missing_docs)]
#[path = "../../src/abi/mod.rs"]
mod abi;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use abi::guest::{self, ProxyVm};
use abi::testing::MemoryBackend;
use abi::{BufferType, HostState, HttpCallResponse, MapType, Metrics, PluginInfo, Shared, SharedLimits, linker_for};
use ats_wasm_pool::{EngineOptions, Vm, new_engine};
use wasmtime::{Engine, Linker, Module, Store, Val};

/// The host calls: name and parameter types (`i`: i32, `I`: i64); each returns an i32 status.
const CALLS: &[(&str, &str)] = &[
    ("proxy_log", "iii"),
    ("proxy_get_log_level", "i"),
    ("proxy_get_current_time_nanoseconds", "i"),
    ("proxy_set_tick_period_milliseconds", "i"),
    ("proxy_get_buffer_status", "iii"),
    ("proxy_get_buffer_bytes", "iiiii"),
    ("proxy_set_buffer_bytes", "iiiii"),
    ("proxy_get_configuration", "ii"),
    ("proxy_get_header_map_value", "iiiii"),
    ("proxy_get_header_map_pairs", "iii"),
    ("proxy_get_header_map_size", "ii"),
    ("proxy_set_header_map_pairs", "iii"),
    ("proxy_add_header_map_value", "iiiii"),
    ("proxy_replace_header_map_value", "iiiii"),
    ("proxy_remove_header_map_value", "iii"),
    ("proxy_continue_stream", "i"),
    ("proxy_close_stream", "i"),
    ("proxy_continue_request", ""),
    ("proxy_continue_response", ""),
    ("proxy_clear_route_cache", ""),
    ("proxy_send_local_response", "iiiiiiii"),
    ("proxy_get_status", "iii"),
    ("proxy_http_call", "iiiiiiiiii"),
    ("proxy_get_shared_data", "iiiii"),
    ("proxy_set_shared_data", "iiiii"),
    ("proxy_register_shared_queue", "iii"),
    ("proxy_resolve_shared_queue", "iiiii"),
    ("proxy_enqueue_shared_queue", "iii"),
    ("proxy_dequeue_shared_queue", "iii"),
    ("proxy_define_metric", "iiii"),
    ("proxy_increment_metric", "iI"),
    ("proxy_record_metric", "iI"),
    ("proxy_get_metric", "ii"),
    ("proxy_get_property", "iiii"),
    ("proxy_set_property", "iiii"),
    ("proxy_set_effective_context", "i"),
    ("proxy_done", ""),
    ("proxy_call_foreign_function", "iiiiii"),
];

/// The spec's statuses as a bit set: 0–4, 6–8, 10, 12.
const STATUS_SET: u32 =
    (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 12);

/// Guest memory layout: return slots below 1024, the program from 1024, the fuzzer's data
/// from 16384, the guest heap (its `malloc`) from 65536.
const PROG: usize = 1024;
const RECORD: usize = 4 + 10 * 8;
const MAX_RECORDS: usize = 180;
const DATA: usize = 16384;
const DATA_LEN: usize = 16384;
const HEAP: u32 = 65536;

fn guest_wat() -> String {
    let mut w = String::from("(module\n");
    for (i, (name, params)) in CALLS.iter().enumerate() {
        let ps: String = params.chars().map(|c| if c == 'I' { " i64" } else { " i32" }).collect();
        let _ = writeln!(w, r#"  (import "env" "{name}" (func $f{i} (param{ps}) (result i32)))"#);
    }
    let _ = write!(
        w,
        r#"
  (memory (export "memory") 2 64)
  (global $heap (mut i32) (i32.const {HEAP}))
  (global $prog (export "prog") (mut i32) (i32.const {PROG}))
  (global $count (export "count") (mut i32) (i32.const 0))
  (global $calls (export "calls") (mut i32) (i32.const 0))
  (global $bad_op (export "bad_op") (mut i32) (i32.const -1))
  (global $bad_status (export "bad_status") (mut i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  ;; A bump allocator; 0 (failure) past 1 MiB per request or when memory cannot grow.
  (func (export "malloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32)
    (if (i32.gt_u (local.get $n) (i32.const 1048576)) (then (return (i32.const 0))))
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (i32.shl (memory.size) (i32.const 16))) (i32.const 16)) (i32.const 1))) (i32.const -1))
        (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $run) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $run) (i32.const 0))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32) (call $run))
  (func (export "proxy_on_tick") (param i32) (call $run))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func $run (local $k i32) (local $r i32) (local $op i32)
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $k) (global.get $count)))
      (local.set $op (i32.load (i32.add (global.get $prog) (i32.mul (local.get $k) (i32.const {RECORD})))))
      (local.set $r (call $dispatch (i32.add (global.get $prog) (i32.mul (local.get $k) (i32.const {RECORD})))))
      (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
      (if (i32.or (i32.ge_u (local.get $r) (i32.const 32))
                  (i32.eqz (i32.and (i32.shr_u (i32.const {STATUS_SET}) (local.get $r)) (i32.const 1))))
        (then (global.set $bad_op (local.get $op)) (global.set $bad_status (local.get $r)) (return)))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br $next))))
  (func $dispatch (param $a i32) (result i32)
"#
    );
    // Nested blocks: `br_table` on the op jumps past block i's end to its call.
    let n = CALLS.len();
    for i in (0..n).rev() {
        let _ = writeln!(w, "    (block $b{i}");
    }
    let targets: String = (0..n).map(|i| format!(" $b{i}")).collect();
    let _ = writeln!(w, "      (br_table{targets} $b0 (i32.load (local.get $a))))");
    for (i, (_, params)) in CALLS.iter().enumerate() {
        let mut args = String::new();
        for (j, c) in params.chars().enumerate() {
            let off = 4 + 8 * j;
            if c == 'I' {
                let _ = write!(args, " (i64.load offset={off} (local.get $a))");
            } else {
                let _ = write!(args, " (i32.load offset={off} (local.get $a))");
            }
        }
        let close = if i + 1 < n { ")" } else { "" };
        let _ = writeln!(w, "    (return (call $f{i}{args})){close}");
    }
    w.push_str("  )\n)\n");
    w
}

struct Fixture {
    engine: Engine,
    module: Module,
    linker: Linker<HostState<MemoryBackend>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let engine = new_engine(&EngineOptions::default()).expect("engine");
        let module = Module::new(&engine, guest_wat()).expect("the generated guest compiles");
        abi::validate_module(&module).expect("the generated guest is a Proxy-Wasm module");
        let linker = linker_for::<MemoryBackend>(&module).expect("linker");
        Fixture { engine, module, linker }
    })
}

/// Reads the fuzzer's bytes; zeros once they run out.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u32 {
        u32::from(self.byte()) | (u32::from(self.byte()) << 8)
    }
    fn u32(&mut self) -> u32 {
        self.u16() | (self.u16() << 16)
    }
    /// One argument, drawn to land on interesting values.
    fn arg(&mut self, mem_size: u32) -> i64 {
        let v = match self.byte() % 8 {
            0 => u32::from(self.byte()),
            1 => DATA as u32 + self.u16() % DATA_LEN as u32,
            2 => self.u16(),
            3 => HEAP + self.u16(),
            4 => mem_size.wrapping_sub(u32::from(self.byte())),
            5 => self.u32(),
            6 => 0u32.wrapping_sub(u32::from(self.byte())),
            _ => self.u16() % PROG as u32,
        };
        v as i32 as i64
    }
}

static RUNS: AtomicU64 = AtomicU64::new(0);
static HOST_CALLS: AtomicU64 = AtomicU64::new(0);

fn set_i32(vm: &mut ProxyVm<MemoryBackend>, name: &str, v: i32) {
    let g = vm.instance.get_global(&mut vm.store, name).expect("global");
    g.set(&mut vm.store, Val::I32(v)).expect("set global");
}

fn get_i32(vm: &mut ProxyVm<MemoryBackend>, name: &str) -> i32 {
    let g = vm.instance.get_global(&mut vm.store, name).expect("global");
    g.get(&mut vm.store).i32().expect("i32 global")
}

/// Writes `records` program records at PROG and points the guest at them.
fn load_program(vm: &mut ProxyVm<MemoryBackend>, records: &[(u32, [i64; 10])]) {
    let mut bytes = Vec::with_capacity(records.len() * RECORD);
    for (op, args) in records {
        bytes.extend_from_slice(&op.to_le_bytes());
        for a in args {
            bytes.extend_from_slice(&a.to_le_bytes());
        }
    }
    let mem = vm.instance.get_memory(&mut vm.store, "memory").expect("memory");
    mem.write(&mut vm.store, PROG, &bytes).expect("program fits");
    set_i32(vm, "prog", PROG as i32);
    set_i32(vm, "count", records.len() as i32);
}

/// After a callback: every status was in the set; the callback ended normally or by a trap the
/// host raised (a host call may end the guest, e.g. on a failing allocator).
fn check(vm: &mut ProxyVm<MemoryBackend>, phase: &str, r: wasmtime::Result<()>) -> bool {
    let bad = get_i32(vm, "bad_op");
    if bad >= 0 {
        let name = CALLS[bad as usize % CALLS.len()].0;
        panic!("{phase}: {name} answered status {} (not in the spec's set)", get_i32(vm, "bad_status"));
    }
    match r {
        Ok(()) => true,
        Err(e) => {
            let text = format!("{e:?}");
            // The guest itself only loads from its program area: any trap must come from a host
            // call. wasmtime reports a guest fault as "wasm trap: …" with no host error.
            assert!(!text.contains("out of bounds memory access"), "{phase}: the guest faulted: {text}");
            false
        }
    }
}

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    let f = fixture();
    let info = Arc::new(PluginInfo {
        name: "fuzz".into(),
        vm_id: "fuzz".into(),
        root_id: "fuzz".into(),
        plugin_configuration: b"{\"k\": \"v\"}".to_vec(),
        callback_deadline_ticks: 1000,
        ..PluginInfo::default()
    });
    // Small bounds, so that the fuzzer reaches them.
    let shared = Arc::new(Shared::with_limits(SharedLimits { max_bytes: 64 << 10, max_value_bytes: 4 << 10 }));
    let mut backend = MemoryBackend::default();
    backend.set_map(1, MapType::RequestHeaders, &[(":method", "GET"), (":path", "/a"), ("host", "h"), ("k", "v")]);
    backend.set_map(1, MapType::ResponseHeaders, &[(":status", "200"), ("content-type", "text/plain")]);
    backend.set_buffer(1, BufferType::HttpRequestBody, b"request body");
    backend.set_buffer(1, BufferType::HttpResponseBody, b"response body");
    backend.set_property_value(None, "request.path", b"/a");
    backend.set_property_value(Some(1), "source.port", &1234i64.to_le_bytes());
    let state = HostState::with_registries(backend, info, shared, Arc::new(Metrics::default()));
    let mut store = Store::new(&f.engine, state);
    store.set_epoch_deadline(1000);
    let instance = f.linker.instantiate(&mut store, &f.module).expect("instantiate");
    let mut vm: ProxyVm<MemoryBackend> = Vm { store, instance };
    guest::initialize(&mut vm).expect("the guest initializes");

    // The data area: the input itself (keys, values, serialized maps, property paths).
    let data = &input[..input.len().min(DATA_LEN)];
    let mem = vm.instance.get_memory(&mut vm.store, "memory").expect("memory");
    mem.write(&mut vm.store, DATA, data).expect("data fits");
    let mem_size = mem.data_size(&vm.store) as u32;

    let mut cur = Cursor(input);
    let mut records = Vec::new();
    while !cur.0.is_empty() && records.len() < MAX_RECORDS {
        let op = u32::from(cur.byte()) % CALLS.len() as u32;
        let mut args = [0i64; 10];
        for a in args.iter_mut().take(CALLS[op as usize].1.len()) {
            *a = cur.arg(mem_size);
        }
        records.push((op, args));
    }
    let third = records.len().div_ceil(3);
    let mut parts = records.chunks(third.max(1));

    let ctx = guest::create_stream_context(&mut vm, 1).expect("context");
    load_program(&mut vm, parts.next().unwrap_or(&[]));
    let r = guest::on_request_headers(&mut vm, ctx, 4, true).map(drop);
    let mut ok = check(&mut vm, "proxy_on_request_headers", r);
    if ok {
        load_program(&mut vm, parts.next().unwrap_or(&[]));
        let r = guest::on_response_headers(&mut vm, ctx, 2, false).map(drop);
        ok = check(&mut vm, "proxy_on_response_headers", r);
    }
    if ok {
        load_program(&mut vm, parts.next().unwrap_or(&[]));
        let token = vm.store.data().backend.http_calls.first().map(|c| c.token);
        let r = match token {
            Some(token) => {
                let response = HttpCallResponse {
                    headers: vec![(b":status".to_vec(), b"200".to_vec()), (b"x".to_vec(), data.to_vec())],
                    body: data.to_vec(),
                    trailers: vec![],
                    message: vec![],
                };
                guest::on_http_call_response(&mut vm, token, response).map(drop)
            }
            None => guest::on_tick(&mut vm),
        };
        ok = check(&mut vm, "proxy_on_http_call_response/proxy_on_tick", r);
    }
    if ok {
        let _ = guest::finish_stream_context(&mut vm, ctx);
    }
    let calls = get_i32(&mut vm, "calls") as u64;
    let total = HOST_CALLS.fetch_add(calls, Ordering::Relaxed) + calls;
    let runs = RUNS.fetch_add(1, Ordering::Relaxed) + 1;
    if runs.is_power_of_two() && runs >= 1024 {
        eprintln!("hostcalls: {runs} inputs, {total} host calls");
    }
});
