//! Modules from the other toolchains `examples/build.sh` builds: plain C against the ABI
//! (clang-22, wasm32-wasi reactor) and AssemblyScript (`@solo-io/proxy-runtime` 0.1.8, ABI
//! 0.2.0, which imports `wasi_unstable.proc_exit`), each running request and response headers.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use super::super::guest;
use super::super::{AbiVersion, Action, MapType};
use super::{PluginInfo, engine, vm_with};

/// A non-Rust module built by `examples/build.sh` into `examples/target/modules/`.
fn module(file: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/target/modules").join(file);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run `examples/build.sh` first)", p.display()))
}

type Fields = Vec<(String, String)>;

fn run_headers(wasm: &[u8], info: PluginInfo) -> (Fields, Fields, Option<AbiVersion>) {
    let mut vm = vm_with(&engine(), wasm, info, Arc::default(), Arc::default()).expect("the module starts");
    let b = &mut vm.store.data_mut().backend;
    b.set_map(1, MapType::RequestHeaders, &[(":method", "GET"), (":path", "/"), ("host", "h")]);
    b.set_map(1, MapType::ResponseHeaders, &[(":status", "204")]);
    let ctx = guest::create_stream_context(&mut vm, 1).unwrap();
    assert_eq!(guest::on_request_headers(&mut vm, ctx, 3, true).unwrap(), Action::Continue);
    assert_eq!(guest::on_response_headers(&mut vm, ctx, 1, true).unwrap(), Action::Continue);
    guest::finish_stream_context(&mut vm, ctx).unwrap();
    assert_eq!(vm.store.data().live_contexts(), 1);
    let b = &vm.store.data().backend;
    (b.map(1, MapType::RequestHeaders), b.map(1, MapType::ResponseHeaders), vm.store.data().abi_version())
}

fn pair(k: &str, v: &str) -> (String, String) {
    (k.into(), v.into())
}

#[test]
fn plain_c_module_reads_the_root_id_with_a_trailing_nul_and_edits_headers() {
    let info = PluginInfo { name: "c".into(), root_id: "c_root".into(), ..PluginInfo::default() };
    let (req, resp, abi) = run_headers(&module("c_headers.wasm"), info);
    assert_eq!(abi, Some(AbiVersion::V0_2_1));
    assert_eq!(req.last(), Some(&pair("x-c-filter", "c_root")), "{req:?}");
    assert_eq!(resp.last(), Some(&pair("x-c-response", "204")), "{resp:?}");
}

#[test]
fn assemblyscript_module_on_abi_0_2_0_reads_its_configuration_and_edits_headers() {
    let info = PluginInfo {
        name: "as".into(),
        root_id: "as_headers".into(),
        plugin_configuration: b"as-config".to_vec(),
        ..PluginInfo::default()
    };
    let (req, resp, abi) = run_headers(&module("as_headers.wasm"), info);
    assert_eq!(abi, Some(AbiVersion::V0_2_0));
    assert_eq!(req.last(), Some(&pair("x-as-filter", "as-config")), "{req:?}");
    assert_eq!(resp.last(), Some(&pair("x-as-response", "204")), "{resp:?}");
}

#[test]
fn assemblyscript_module_starts_with_an_empty_configuration() {
    let info = PluginInfo { name: "as".into(), root_id: "as_headers".into(), ..PluginInfo::default() };
    let (req, _, _) = run_headers(&module("as_headers.wasm"), info);
    assert_eq!(req.last(), Some(&pair("x-as-filter", "")), "{req:?}");
}
