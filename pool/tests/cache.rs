//! Module compilation: once per process, and a disk cache that is verified, never trusted.

use ats_wasm_pool::{CacheOutcome, EngineOptions, ModuleCompiler, new_engine};
use wasmtime::{Engine, Module};

const WAT: &str = r#"(module (memory (export "memory") 1) (func (export "answer") (result i32) (i32.const 42)))"#;

fn engine() -> Engine {
    new_engine(&EngineOptions { max_instances: 8, ..EngineOptions::default() }).unwrap()
}

fn answer(engine: &Engine, module: &Module) -> i32 {
    let mut store = wasmtime::Store::new(engine, ());
    store.set_epoch_deadline(u64::MAX);
    let instance = wasmtime::Instance::new(&mut store, module, &[]).unwrap();
    instance.get_typed_func::<(), i32>(&mut store, "answer").unwrap().call(&mut store, ()).unwrap()
}

#[test]
fn a_module_is_compiled_once_per_process() {
    let engine = engine();
    let c = ModuleCompiler::new(&engine, None);
    let a = c.compile(WAT.as_bytes()).unwrap();
    assert_eq!(a.cache, CacheOutcome::Disabled);
    let b = c.compile(WAT.as_bytes()).unwrap();
    assert_eq!(b.cache, CacheOutcome::InProcess);
    assert!(Module::same(&a.module, &b.module));
    assert_eq!(a.hash, b.hash);
    assert!(c.compile(b"(module (func $broken (result i32)))").is_err(), "an invalid module is an error");
}

#[test]
fn the_disk_cache_is_used_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine();
    let first = ModuleCompiler::new(&engine, Some(dir.path().join("cache"))).compile(WAT.as_bytes()).unwrap();
    let CacheOutcome::Compiled { path, rejected: None, write_error: None } = &first.cache else {
        panic!("expected a fresh compilation stored in the cache, got {:?}", first.cache);
    };
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with(&first.hash) && name.contains("wasmtime-48.0.8") && name.ends_with(".cwasm"), "{name}");
    assert!(first.cache.problem().is_none());

    // A new process (a new compiler) loads it.
    let again = ModuleCompiler::new(&engine, Some(dir.path().join("cache"))).compile(WAT.as_bytes()).unwrap();
    assert_eq!(again.cache, CacheOutcome::Loaded(path.clone()));
    assert_eq!(answer(&engine, &again.module), 42);

    let good = std::fs::read(path).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("checksum", {
            let mut b = good.clone();
            let last = b.len() - 100;
            b[last] ^= 0x55;
            b
        }),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("truncated", good[..10].to_vec()),
        ("magic", {
            let mut b = good.clone();
            b[0] ^= 1;
            b
        }),
    ];
    for (why, bytes) in cases {
        std::fs::write(path, &bytes).unwrap();
        let c = ModuleCompiler::new(&engine, Some(dir.path().join("cache"))).compile(WAT.as_bytes()).unwrap();
        match &c.cache {
            CacheOutcome::Compiled { rejected: Some(r), write_error: None, .. } => {
                assert!(r.contains(why), "{why}: {r}")
            }
            other => panic!("{why}: a bad cache file must be ignored, got {other:?}"),
        }
        assert!(c.cache.problem().unwrap().contains("ignored cache file"));
        assert_eq!(answer(&engine, &c.module), 42);
        assert_eq!(std::fs::read(path).unwrap(), good, "{why}: the file is rewritten");
    }
}

#[test]
fn a_stale_cache_file_is_rejected_by_wasmtime_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    // Code compiled for an engine with another configuration, under this engine's file name.
    let other = new_engine(&EngineOptions { signals_based_traps: false, max_instances: 8, ..EngineOptions::default() })
        .unwrap();
    let theirs = ModuleCompiler::new(&other, Some(dir.path().into())).compile(WAT.as_bytes()).unwrap();
    let CacheOutcome::Compiled { path: their_path, .. } = theirs.cache else { panic!("{:?}", theirs.cache) };

    let engine = engine();
    let mine = ModuleCompiler::new(&engine, Some(dir.path().into()));
    let key: [u8; 32] = (0..32)
        .map(|i| u8::from_str_radix(&theirs.hash[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let my_path = mine.cache_path(&key).unwrap();
    assert_ne!(my_path, their_path, "the engine configuration is part of the file name");
    std::fs::copy(&their_path, &my_path).unwrap();

    let c = mine.compile(WAT.as_bytes()).unwrap();
    match &c.cache {
        CacheOutcome::Compiled { rejected: Some(r), .. } => assert!(r.contains("stale or incompatible"), "{r}"),
        other => panic!("an incompatible file must be ignored, got {other:?}"),
    }
    assert_eq!(answer(&engine, &c.module), 42);
    assert_eq!(
        ModuleCompiler::new(&engine, Some(dir.path().into())).compile(WAT.as_bytes()).unwrap().cache,
        CacheOutcome::Loaded(my_path)
    );
}

#[test]
fn an_unwritable_cache_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let engine = engine();
    let c = ModuleCompiler::new(&engine, Some(blocker.join("cache"))).compile(WAT.as_bytes()).unwrap();
    assert!(matches!(&c.cache, CacheOutcome::Compiled { write_error: Some(_), rejected: None, .. }), "{:?}", c.cache);
    assert!(c.cache.problem().unwrap().contains("cannot write cache file"));
    assert_eq!(answer(&engine, &c.module), 42);
}
