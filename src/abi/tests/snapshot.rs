//! VMs made from a snapshot of an initialized VM answer exactly as freshly initialized ones,
//! for every example module (Rust SDK, plain C, AssemblyScript); a module whose initializer
//! makes a call a snapshot cannot replay is refused and still works the ordinary way.

#![forbid(unsafe_code)]

use std::sync::Arc;

use ats_wasm_pool::VmTemplate;

use super::super::snapshot::snapshot_template;
use super::super::testing::MemoryBackend;
use super::super::{HostState, MapType, Metrics, PluginInfo, Shared, guest, link};
use super::{engine, example};

/// Every example module with a configuration it starts with.
fn modules() -> Vec<(String, Vec<u8>, String)> {
    let rust = [
        ("add-headers", r#"{"request_headers": {"x-req": "1"}, "response_headers": {"x-resp": "2"}}"#),
        ("abi-probe", ""),
        ("deny", ""),
        ("echo-properties", ""),
        ("ticker", ""),
        ("body-rewrite", ""),
        ("auth-call", ""),
        ("call-probe", ""),
        ("replace-body", ""),
        ("config-header", "x-config: on"),
        ("call-gate", ""),
        ("background", ""),
        ("local-echo", ""),
        ("oob-trap", ""),
    ];
    let mut v: Vec<_> = rust.iter().map(|(n, c)| (n.to_string(), example(n), c.to_string())).collect();
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/target/modules");
    for (file, cfg) in [("c_headers.wasm", ""), ("as_headers.wasm", r#"{"x-as": "yes"}"#)] {
        v.push((file.into(), std::fs::read(dir.join(file)).expect("examples/build.sh"), cfg.into()));
    }
    v
}

type Template = Arc<VmTemplate<HostState<MemoryBackend>>>;

fn state_fn(cfg: &str) -> impl Fn() -> HostState<MemoryBackend> + Send + Sync + 'static {
    let info = Arc::new(PluginInfo {
        name: "t".into(),
        root_id: "root".into(),
        plugin_configuration: cfg.as_bytes().to_vec(),
        callback_deadline_ticks: 1000,
        ..PluginInfo::default()
    });
    // Each template has its own shared data and metrics, so the two kinds never see each other.
    let (shared, metrics) = (Arc::new(Shared::default()), Arc::new(Metrics::default()));
    move || HostState::with_registries(MemoryBackend::default(), info.clone(), shared.clone(), metrics.clone())
}

fn fresh_template(wasm: &[u8], cfg: &str) -> Template {
    let module = wasmtime::Module::new(&engine(), wasm).unwrap();
    let pre = link::<MemoryBackend>(&module).unwrap().0.instantiate_pre(&module).unwrap();
    VmTemplate::new(pre, state_fn(cfg), guest::initialize, 1000)
}

/// One transaction through a VM of `t`: everything the guest did and what the maps became.
fn transaction(t: &Template) -> Result<String, String> {
    let mut vm = t.instantiate().map_err(|e| format!("{e:#}"))?;
    transaction_in(&mut vm)
}

/// One transaction through `vm` (see [`transaction`]).
fn transaction_in(vm: &mut guest::ProxyVm<MemoryBackend>) -> Result<String, String> {
    let vm = &mut *vm;
    let st = vm.store.data_mut();
    let b = &mut st.backend;
    b.set_map(1, MapType::RequestHeaders, &[(":method", "GET"), (":path", "/admin/x"), ("user-agent", "curl/8")]);
    b.set_map(1, MapType::ResponseHeaders, &[(":status", "200"), ("content-length", "5")]);
    let tick = vm.store.data().tick_period();
    let (root, abi) = (vm.store.data().root_context_id(), vm.store.data().abi_version());
    // Errors by their cause: a trap's wasm backtrace names code offsets, which the rewritten
    // module shifts.
    let ctx = guest::create_stream_context(vm, 1).map_err(|e| e.root_cause().to_string());
    let req =
        ctx.as_ref().ok().map(|&c| guest::on_request_headers(vm, c, 3, false).map_err(|e| e.root_cause().to_string()));
    let resp =
        ctx.as_ref().ok().map(|&c| guest::on_response_headers(vm, c, 2, false).map_err(|e| e.root_cause().to_string()));
    let done = ctx.as_ref().ok().map(|&c| guest::finish_stream_context(vm, c).map_err(|e| e.root_cause().to_string()));
    let b = &vm.store.data().backend;
    Ok(format!(
        "root {root} abi {abi:?} tick {tick:?} ctx {ctx:?} req {req:?} resp {resp:?} done {done:?}\nreq map {:?}\nresp map {:?}\nlogs {:?}\nlocal {:?}\ncalls {:?}\ncontinued {:?}",
        b.map(1, MapType::RequestHeaders),
        b.map(1, MapType::ResponseHeaders),
        b.logs,
        b.local_responses,
        b.http_calls.len(),
        b.continued,
    ))
}

#[test]
fn a_snapshot_vm_answers_as_a_freshly_initialized_one_for_every_example_module() {
    let engine = engine();
    let (mut snapshotted, mut refused) = (0, Vec::new());
    for (name, wasm, cfg) in modules() {
        let fresh = fresh_template(&wasm, &cfg);
        let Ok(expected) = transaction(&fresh) else {
            // A module that does not start with this configuration is not snapshotted either.
            assert!(snapshot_template(&engine, &wasm, state_fn(&cfg), 1000).is_err(), "{name}");
            continue;
        };
        let snap = match snapshot_template(&engine, &wasm, state_fn(&cfg), 1000) {
            Ok(t) => t,
            Err(why) => {
                refused.push(format!("{name}: {why}"));
                continue;
            }
        };
        // Twice: every VM of the template starts from the same state.
        for _ in 0..2 {
            assert_eq!(transaction(&snap).expect(&name), expected, "{name}");
        }
        // A used VM put back into a ready VM's state answers as a fresh one, again and again.
        assert!(snap.recycles(), "{name}");
        let mut vm = snap.instantiate().expect(&name);
        for round in 0..3 {
            assert_eq!(transaction_in(&mut vm).expect(&name), expected, "{name}, round {round}");
            assert!(snap.recycle(&mut vm), "{name}: recycled");
        }
        snapshotted += 1;
    }
    // abi-probe exercises every host function from its initializer, header-map writes included.
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(refused[0].starts_with("abi-probe: the initializer called proxy_set_buffer_bytes"), "{refused:?}");
    assert!(snapshotted >= 10, "{snapshotted} modules snapshotted");
}

#[test]
fn an_initializer_that_makes_a_call_a_snapshot_cannot_replay_is_refused_and_the_module_still_works() {
    let wat = r#"(module
      (import "env" "proxy_done" (func $done (result i32)))
      (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 64) "started")
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (drop (call $log (i32.const 2) (i32.const 64) (i32.const 7)))
        (drop (call $done))
        (i32.const 1)))"#;
    let wasm = wat::parse_str(wat).unwrap();
    let why = snapshot_template(&engine(), &wasm, state_fn(""), 1000).err().expect("refused");
    assert!(why.contains("proxy_done"), "{why}");
    // The ordinary template still makes working VMs.
    let out = transaction(&fresh_template(&wasm, "")).expect("the module works");
    assert!(out.contains("\"started\""), "{out}");
}

#[test]
fn initializer_log_lines_shared_data_and_queues_are_replayed_in_each_snapshot_vm() {
    let wat = r#"(module
      (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
      (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_register_shared_queue" (func $reg (param i32 i32 i32) (result i32)))
      (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
      (memory (export "memory") 1)
      (global $g (mut i32) (i32.const 0))
      (data (i32.const 64) "configured")
      (data (i32.const 80) "k")
      (data (i32.const 96) "q")
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (global.set $g (i32.const 41))
        (drop (call $log (i32.const 2) (i32.const 64) (i32.const 10)))
        (drop (call $set (i32.const 80) (i32.const 1) (i32.const 64) (i32.const 10) (i32.const 0)))
        (drop (call $reg (i32.const 96) (i32.const 1) (i32.const 200)))
        (drop (call $tick (i32.const 250)))
        (i32.const 1))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (global.set $g (i32.add (global.get $g) (i32.const 1)))
        (drop (call $log (i32.const 2) (i32.const 64) (global.get $g)))
        (i32.const 0)))"#;
    let wasm = wat::parse_str(wat).unwrap();
    let fresh = transaction(&fresh_template(&wasm, "")).unwrap();
    let snap = snapshot_template(&engine(), &wasm, state_fn(""), 1000).expect("snapshotted");
    for _ in 0..2 {
        let vm = snap.instantiate().unwrap();
        let st = vm.store.data();
        assert_eq!(st.backend.logs.len(), 1, "the initializer's log line, once per VM");
        assert_eq!(st.tick_period(), Some(std::time::Duration::from_millis(250)));
        let mut out = Vec::new();
        assert!(st.shared.get("", b"k", &mut out).is_ok());
        assert_eq!(out, b"configured");
        // The queue belongs to the newest VM.
        let target = st.shared.enqueue(1, b"x").expect("queue registered");
        assert_eq!(target.vm, st.vm_uid());
        assert_eq!(transaction(&snap).unwrap(), fresh);
    }
}

#[test]
fn a_recycled_vm_has_the_memory_and_globals_of_a_fresh_one_and_one_whose_memory_grew_is_not_recycled() {
    // Each request logs what it finds (a data string, a zero page far from the data, a global)
    // and then changes all three; the third request header grows the memory.
    let wat = r#"(module
      (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
      (memory (export "memory") 2)
      (global $g (mut i32) (i32.const 7))
      (data (i32.const 64) "configured")
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (global.set $g (i32.const 41))
        (i32.const 1))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (drop (call $log (i32.const 2) (i32.const 64) (i32.const 10)))
        (drop (call $log (i32.const 2) (i32.const 100000) (i32.const 4)))
        (drop (call $log (i32.const 2) (i32.const 64) (global.get $g)))
        (i32.store (i32.const 64) (i32.const 0x21212121))
        (i32.store (i32.const 100000) (i32.const 0x41414141))
        (global.set $g (i32.const 3))
        (if (i32.eq (local.get 1) (i32.const 99)) (then (drop (memory.grow (i32.const 1)))))
        (i32.const 0)))"#;
    let wasm = wat::parse_str(wat).unwrap();
    let fresh = transaction(&fresh_template(&wasm, "")).unwrap();
    assert!(fresh.contains(r#""configured""#), "{fresh}");
    assert!(fresh.contains(r#""\0\0\0\0""#), "{fresh}");
    let snap = snapshot_template(&engine(), &wasm, state_fn(""), 1000).expect("snapshotted");
    assert!(snap.recycles());
    let mut vm = snap.instantiate().unwrap();
    for _ in 0..3 {
        assert_eq!(transaction_in(&mut vm).unwrap(), fresh);
        assert!(snap.recycle(&mut vm));
    }
    // A request that grows the memory: the VM cannot be put back.
    let ctx = guest::create_stream_context(&mut vm, 1).unwrap();
    guest::on_request_headers(&mut vm, ctx, 99, false).unwrap();
    assert!(!snap.recycle(&mut vm), "a memory cannot shrink");
}
