//! Hand-written WAT modules for what SDKs never do: out-of-bounds pointers and lengths, lengths
//! that overflow, malformed header-map bytes, re-entrant calls from inside the allocator,
//! failing allocators, `proc_exit`, WASI outside the sandbox, capability restrictions, ABI
//! 0.1.0 callbacks and the L4 callbacks.

#![forbid(unsafe_code)]

use std::sync::Arc;

use super::super::guest::{self, ProxyVm};
use super::super::testing::MemoryBackend;
use super::super::{Action, BufferType, LogLevel, MapType, PeerType};
use super::{Metrics, PluginInfo, Shared, engine, read_i32, vm_with};

/// Every import the edge modules use.
const IMPORTS: &str = r#"
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $get_log_level (param i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $time (param i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $buffer_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $size (param i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_metric" (func $get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_configuration" (func $get_configuration (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes (param i32 i32) (result i32)))
  (import "wasi_unstable" "proc_exit" (func $proc_exit (param i32)))
"#;

/// A module whose `proxy_on_request_headers` runs `body` (which stores results at small
/// addresses), with `malloc` as given. Data: "host" at 16, "k" at 24, "abc" at 28, "vm"
/// at 40, a serialized 1-pair map {"k": "v"} at 64 (16 bytes).
fn module(body: &str, malloc: &str) -> String {
    format!(
        r#"(module {IMPORTS}
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "malloc") (param $n i32) (result i32) {malloc})
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            {body}
            (i32.const 0))
          (data (i32.const 16) "host")
          (data (i32.const 24) "k")
          (data (i32.const 28) "abc")
          (data (i32.const 40) "vm")
          (data (i32.const 64) "\01\00\00\00\01\00\00\00\01\00\00\00k\00v\00"))"#
    )
}

const MALLOC: &str = "(i32.const 4096)";

fn run_with(body: &str, malloc: &str, info: PluginInfo) -> (ProxyVm<MemoryBackend>, wasmtime::Result<Action>) {
    let mut vm =
        vm_with(&engine(), module(body, malloc).as_bytes(), info, Arc::default(), Arc::new(Metrics::default()))
            .expect("edge module starts");
    vm.store.data_mut().backend.set_map(1, MapType::RequestHeaders, &[("host", "h"), ("k", "v")]);
    vm.store.data_mut().backend.set_buffer(1, BufferType::HttpRequestBody, b"body");
    let ctx = guest::create_stream_context(&mut vm, 1).unwrap();
    let r = guest::on_request_headers(&mut vm, ctx, 2, true);
    (vm, r)
}

fn info() -> PluginInfo {
    PluginInfo {
        name: "edge".into(),
        vm_id: "vm".into(),
        plugin_configuration: b"cfg".to_vec(),
        environment: vec!["A=1".into(), "BB=22".into()],
        ..PluginInfo::default()
    }
}

/// Runs `calls` (each an expression producing an i32), stores result i at address 1024 + 4i,
/// and returns the results.
fn statuses(calls: &[&str]) -> Vec<i32> {
    let body: String =
        calls.iter().enumerate().map(|(i, c)| format!("(i32.store (i32.const {}) {c})\n", 1024 + 4 * i)).collect();
    let (mut vm, r) = run_with(&body, MALLOC, info());
    r.expect("the callback runs");
    (0..calls.len()).map(|i| read_i32(&mut vm, 1024 + 4 * i)).collect()
}

const OK: i32 = 0;
const INTERNAL_FAILURE: i32 = 10;
const IMA: i32 = 6;

#[test]
fn out_of_bounds_and_overflowing_pointers_are_invalid_memory_access() {
    let got = statuses(&[
        // Return pointers outside memory (one page: 65536 bytes), at the edge, and negative.
        "(call $get_buffer (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 65533) (i32.const 8))",
        "(call $get_buffer (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 8) (i32.const -4))",
        "(call $get_log_level (i32.const 65533))",
        "(call $time (i32.const 65529))",
        "(call $buffer_status (i32.const 0) (i32.const 8) (i32.const 65536))",
        "(call $size (i32.const 0) (i32.const -1))",
        "(call $pairs (i32.const 0) (i32.const 8) (i32.const 70000))",
        "(call $get_status (i32.const 65535) (i32.const 8) (i32.const 12))",
        "(call $get_metric (i32.const 1) (i32.const 65533))",
        // Input ranges past the end or whose end overflows 32 bits.
        "(call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 65000) (i32.const 1000))",
        "(call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 16) (i32.const -1))",
        "(call $replace (i32.const 0) (i32.const -16) (i32.const 32) (i32.const 16) (i32.const 4))",
        "(call $remove (i32.const 0) (i32.const 16) (i32.const 2147483647))",
        "(call $get_property (i32.const 65535) (i32.const 2) (i32.const 8) (i32.const 12))",
        "(call $set_property (i32.const 16) (i32.const 4) (i32.const 16) (i32.const -2))",
        "(call $set_shared (i32.const 24) (i32.const 1) (i32.const -1) (i32.const 1) (i32.const 0))",
        "(call $get_shared (i32.const 24) (i32.const 1) (i32.const 8) (i32.const 12) (i32.const 65534))",
        "(call $define (i32.const 0) (i32.const 28) (i32.const 3) (i32.const 65534))",
        "(call $register (i32.const 28) (i32.const 3) (i32.const -3))",
        "(call $foreign (i32.const 28) (i32.const 70000) (i32.const 0) (i32.const 0) (i32.const 8) (i32.const 12))",
        "(call $local (i32.const 200) (i32.const 0) (i32.const 0) (i32.const 65530) (i32.const 7) (i32.const 0) (i32.const 0) (i32.const 0))",
        "(call $http_call (i32.const 28) (i32.const 3) (i32.const 64) (i32.const 16) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 65535))",
        "(call $log (i32.const 2) (i32.const -100) (i32.const 200))",
    ]);
    assert!(got.iter().all(|&s| s == IMA), "{got:?}");
}

#[test]
fn a_bad_return_pointer_does_not_lose_a_dequeued_item() {
    let body = r#"
      (drop (call $register (i32.const 28) (i32.const 3) (i32.const 0)))
      (drop (call $enqueue (i32.load (i32.const 0)) (i32.const 16) (i32.const 4)))
      (i32.store (i32.const 1024) (call $dequeue (i32.load (i32.const 0)) (i32.const 65535) (i32.const 12)))
      (i32.store (i32.const 1028) (call $dequeue (i32.load (i32.const 0)) (i32.const 8) (i32.const 12)))
      (i32.store (i32.const 1032) (i32.load (i32.const 12)))"#;
    let (mut vm, r) = run_with(body, MALLOC, info());
    r.unwrap();
    assert_eq!([read_i32(&mut vm, 1024), read_i32(&mut vm, 1028), read_i32(&mut vm, 1032)], [IMA, OK, 4]);
}

#[test]
fn malformed_serialized_maps_are_bad_argument_everywhere() {
    // At 100: count 1, key length 1, value length 5 (past the end): malformed.
    let bad = r#"(i32.store (i32.const 100) (i32.const 1)) (i32.store (i32.const 104) (i32.const 1))
                 (i32.store (i32.const 108) (i32.const 5)) (i32.store (i32.const 112) (i32.const 0x0076006b))"#;
    let calls = [
        "(call $set_pairs (i32.const 0) (i32.const 100) (i32.const 16))",
        "(call $set_pairs (i32.const 0) (i32.const 100) (i32.const 3))",
        // The good map with one trailing byte, and without its last NUL.
        "(call $set_pairs (i32.const 0) (i32.const 64) (i32.const 17))",
        "(call $set_pairs (i32.const 0) (i32.const 64) (i32.const 15))",
        "(call $local (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 16) (i32.const -1))",
        "(call $http_call (i32.const 28) (i32.const 3) (i32.const 100) (i32.const 16) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 8))",
        "(call $http_call (i32.const 28) (i32.const 3) (i32.const 64) (i32.const 16) (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 16) (i32.const 100) (i32.const 8))",
        // The well-formed map: OK.
        "(call $set_pairs (i32.const 0) (i32.const 64) (i32.const 16))",
    ];
    let body: String =
        calls.iter().enumerate().map(|(i, c)| format!("(i32.store (i32.const {}) {c})\n", 1024 + 4 * i)).collect();
    let (mut vm, r) = run_with(&format!("{bad}\n{body}"), MALLOC, info());
    r.unwrap();
    let got: Vec<i32> = (0..calls.len()).map(|i| read_i32(&mut vm, 1024 + 4 * i)).collect();
    assert_eq!(got, [2, 2, 2, 2, 2, 2, 2, 0]);
    let b = &vm.store.data().backend;
    assert!(b.local_responses.is_empty() && b.http_calls.is_empty());
    assert_eq!(b.map(1, MapType::RequestHeaders), vec![("k".into(), "v".into())]);
}

#[test]
fn host_calls_from_inside_the_allocator_do_not_recurse() {
    // The allocator itself asks for the plugin configuration (which needs the allocator):
    // that inner call answers INTERNAL_FAILURE; logging from inside works; the outer call
    // gets its memory.
    let malloc = r#"
      (i32.store (i32.const 2000) (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 10) (i32.const 2008) (i32.const 2012)))
      (i32.store (i32.const 2004) (call $log (i32.const 2) (i32.const 28) (i32.const 3)))
      (i32.const 4096)"#;
    let body = r#"(i32.store (i32.const 1024)
        (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 10) (i32.const 8) (i32.const 12)))"#;
    let (mut vm, r) = run_with(body, malloc, info());
    r.unwrap();
    assert_eq!(read_i32(&mut vm, 1024), OK);
    assert_eq!(read_i32(&mut vm, 8), 4096);
    assert_eq!(read_i32(&mut vm, 12), 3);
    assert_eq!(read_i32(&mut vm, 2000), INTERNAL_FAILURE);
    assert_eq!(read_i32(&mut vm, 2004), OK);
    assert!(vm.store.data().backend.logs.iter().any(|(_, _, m)| m == "abc"));
    // The host is usable afterwards.
    let ctx = guest::create_stream_context(&mut vm, 1).unwrap();
    guest::on_request_headers(&mut vm, ctx, 2, true).unwrap();
    assert_eq!(read_i32(&mut vm, 1024), OK);
}

#[test]
fn failing_allocators_are_statuses_and_a_trapping_one_is_an_error() {
    let body = r#"(i32.store (i32.const 1024)
        (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 10) (i32.const 8) (i32.const 12)))"#;
    for malloc in ["(i32.const 0)", "(i32.const 65534)", "(i32.const -8)"] {
        let (mut vm, r) = run_with(body, malloc, info());
        r.unwrap();
        assert_eq!(read_i32(&mut vm, 1024), IMA, "malloc {malloc}");
    }
    let (_vm, r) = run_with(body, "(unreachable)", info());
    assert!(format!("{:#}", r.unwrap_err()).contains("unreachable"));
}

#[test]
fn proc_exit_ends_the_vm_with_its_code() {
    let (vm, r) = run_with("(call $proc_exit (i32.const 3))", MALLOC, info());
    let err = r.unwrap_err();
    assert!(format!("{err:#}").contains("proc_exit(3)"), "{err:#}");
    assert_eq!(vm.store.data().exit_code(), Some(3));
}

#[test]
fn wasi_is_a_closed_sandbox_that_never_traps() {
    // iovec at 200: {ptr 28, len 3}; a bad iovec at 208: {ptr 65535, len 9}.
    let setup = r#"(i32.store (i32.const 200) (i32.const 28)) (i32.store (i32.const 204) (i32.const 3))
                   (i32.store (i32.const 208) (i32.const 65535)) (i32.store (i32.const 212) (i32.const 9))"#;
    let calls = [
        "(call $fd_write (i32.const 1) (i32.const 200) (i32.const 1) (i32.const 300))",
        "(call $fd_write (i32.const 2) (i32.const 200) (i32.const 1) (i32.const 300))",
        "(call $fd_write (i32.const 3) (i32.const 200) (i32.const 1) (i32.const 300))",
        "(call $fd_write (i32.const 1) (i32.const 208) (i32.const 1) (i32.const 300))",
        "(call $fd_read (i32.const 0) (i32.const 200) (i32.const 1) (i32.const 300))",
        "(call $path_open (i32.const 3) (i32.const 0) (i32.const 28) (i32.const 3) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 300))",
        "(call $clock (i32.const 0) (i64.const 0) (i32.const 304))",
        "(call $clock (i32.const 1) (i64.const 0) (i32.const 304))",
        "(call $clock (i32.const 9) (i64.const 0) (i32.const 304))",
        "(call $clock (i32.const 0) (i64.const 0) (i32.const 65532))",
        "(call $random (i32.const 400) (i32.const 32))",
        "(call $random (i32.const 65530) (i32.const 32))",
        "(call $random (i32.const 0) (i32.const 2000000))",
        "(call $environ_sizes (i32.const 500) (i32.const 504))",
    ];
    let body: String =
        calls.iter().enumerate().map(|(i, c)| format!("(i32.store (i32.const {}) {c})\n", 1024 + 4 * i)).collect();
    let (mut vm, r) = run_with(&format!("{setup}\n{body}"), MALLOC, info());
    r.unwrap();
    let got: Vec<i32> = (0..calls.len()).map(|i| read_i32(&mut vm, 1024 + 4 * i)).collect();
    assert_eq!(got, [0, 0, 8, 21, 8, 52, 0, 0, 58, 21, 0, 21, 28, 0]);
    assert_eq!([read_i32(&mut vm, 500), read_i32(&mut vm, 504)], [2, 10], "A=1\\0BB=22\\0");
    let logs = &vm.store.data().backend.logs;
    assert!(logs.contains(&("edge".into(), LogLevel::Info, "abc".into())), "{logs:?}");
    assert!(logs.contains(&("edge".into(), LogLevel::Error, "abc".into())), "{logs:?}");
}

#[test]
fn allowed_capabilities_refuse_other_functions_with_a_status_and_one_warning() {
    let info = PluginInfo { allowed_capabilities: Some(vec!["proxy_log".into(), "fd_write".into()]), ..info() };
    let info = PluginInfo { name: "edge-caps".into(), ..info };
    let body = r#"
      (i32.store (i32.const 1024) (call $log (i32.const 2) (i32.const 28) (i32.const 3)))
      (i32.store (i32.const 1028) (call $get (i32.const 0) (i32.const 16) (i32.const 4) (i32.const 8) (i32.const 12)))
      (i32.store (i32.const 1032) (call $get (i32.const 0) (i32.const 16) (i32.const 4) (i32.const 8) (i32.const 12)))
      (i32.store (i32.const 1036) (call $random (i32.const 400) (i32.const 4)))
      (call $proc_exit (i32.const 1))"#;
    let (mut vm, r) = run_with(body, MALLOC, info);
    r.expect("a refused proc_exit does nothing");
    assert_eq!(
        [read_i32(&mut vm, 1024), read_i32(&mut vm, 1028), read_i32(&mut vm, 1032), read_i32(&mut vm, 1036)],
        [OK, INTERNAL_FAILURE, INTERNAL_FAILURE, 52]
    );
    let warnings: Vec<_> = vm.store.data().backend.logs.iter().filter(|(_, l, _)| *l == LogLevel::Warn).collect();
    assert_eq!(warnings.len(), 3, "one per refused function: {warnings:?}");
    assert!(warnings[0].2.contains("proxy_get_header_map_value is not in allowed_capabilities"));
}

#[test]
fn abi_0_1_0_callbacks_get_their_arguments_and_functions() {
    let wat = r#"(module
      (import "env" "proxy_get_configuration" (func $cfg (param i32 i32) (result i32)))
      (import "env" "proxy_continue_request" (func $cont (result i32)))
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_1_0"))
      (func (export "malloc") (param i32) (result i32) (i32.const 4096))
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (i32.store (i32.const 100) (call $cfg (i32.const 104) (i32.const 108)))
        (i32.const 1))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (i32.store (i32.const 200) (call $cfg (i32.const 204) (i32.const 208)))
        (i32.store (i32.const 212) (i32.load8_u (i32.load (i32.const 204))))
        (i32.const 1))
      (func (export "proxy_on_request_headers") (param i32 i32) (result i32)
        (i32.store (i32.const 0) (local.get 0))
        (i32.store (i32.const 4) (local.get 1))
        (i32.store (i32.const 8) (call $cont))
        (i32.const 1)))"#;
    let info = PluginInfo { vm_configuration: b"vmcfg".to_vec(), plugin_configuration: b"P".to_vec(), ..info() };
    let mut vm = vm_with(&engine(), wat.as_bytes(), info, Arc::default(), Arc::default()).unwrap();
    assert_eq!(vm.store.data().abi_version(), Some(super::super::AbiVersion::V0_1_0));
    assert_eq!([read_i32(&mut vm, 100), read_i32(&mut vm, 108)], [OK, 5], "VM configuration in on_vm_start");
    assert_eq!([read_i32(&mut vm, 200), read_i32(&mut vm, 208), read_i32(&mut vm, 212)], [OK, 1, b'P' as i32]);
    vm.store.data_mut().backend.set_map(1, MapType::RequestHeaders, &[]);
    let ctx = guest::create_stream_context(&mut vm, 1).unwrap();
    assert_eq!(guest::on_request_headers(&mut vm, ctx, 3, true).unwrap(), Action::Pause);
    assert_eq!([read_i32(&mut vm, 0), read_i32(&mut vm, 4), read_i32(&mut vm, 8)], [ctx as i32, 3, OK]);
}

#[test]
fn l4_callbacks_get_their_context_and_arguments() {
    let wat = r#"(module
      (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "malloc") (param i32) (result i32) (i32.const 4096))
      (func (export "proxy_on_new_connection") (param i32) (result i32)
        (i32.store (i32.const 0) (local.get 0)) (i32.const 0))
      (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32)
        (i32.store (i32.const 4) (local.get 1)) (i32.store (i32.const 8) (local.get 2))
        (i32.store (i32.const 12) (call $get_buffer (i32.const 2) (i32.const 0) (i32.const 100) (i32.const 16) (i32.const 20)))
        (i32.const 1))
      (func (export "proxy_on_upstream_data") (param i32 i32 i32) (result i32)
        (i32.store (i32.const 24) (local.get 1)) (i32.const 0))
      (func (export "proxy_on_downstream_connection_close") (param i32 i32)
        (i32.store (i32.const 28) (local.get 1)))
      (func (export "proxy_on_upstream_connection_close") (param i32 i32)
        (i32.store (i32.const 32) (local.get 1))))"#;
    let mut vm = vm_with(&engine(), wat.as_bytes(), info(), Arc::new(Shared::default()), Arc::default()).unwrap();
    vm.store.data_mut().backend.set_buffer(9, BufferType::DownstreamData, b"tcp!");
    let ctx = guest::create_stream_context(&mut vm, 9).unwrap();
    assert_eq!(guest::on_new_connection(&mut vm, ctx).unwrap(), Action::Continue);
    assert_eq!(guest::on_downstream_data(&mut vm, ctx, 4, true).unwrap(), Action::Pause);
    assert_eq!(guest::on_upstream_data(&mut vm, ctx, 77, false).unwrap(), Action::Continue);
    guest::on_downstream_connection_close(&mut vm, ctx, PeerType::Remote).unwrap();
    guest::on_upstream_connection_close(&mut vm, ctx, PeerType::Local).unwrap();
    let got: Vec<i32> = [0, 4, 8, 12, 20, 24, 28, 32].iter().map(|&a| read_i32(&mut vm, a)).collect();
    assert_eq!(got, [ctx as i32, 4, 1, OK, 4, 77, 2, 1]);
}

#[test]
fn a_module_with_a_callback_of_the_wrong_type_fails_to_start_with_a_clear_error() {
    let wat = r#"(module (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "malloc") (param i32) (result i32) (i32.const 0))
      (func (export "proxy_on_tick") (param i64)))"#;
    let err = vm_with(&engine(), wat.as_bytes(), info(), Arc::default(), Arc::default()).err().expect("must fail");
    assert!(format!("{err:#}").contains("export proxy_on_tick has the wrong type"), "{err:#}");
}
