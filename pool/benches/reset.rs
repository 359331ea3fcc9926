//! What a `transaction`-isolation VM's reset costs under each of wasmtime's pooling-allocator
//! options, and when it is recycled in place instead: `cargo bench -p ats-wasm-pool --bench
//! reset`.
//!
//! One cycle is the VM's life without the Proxy-Wasm host: `examples/add-headers` (imports
//! stubbed) instantiated, `_initialize` run (it writes the pages a fresh VM's initializer
//! writes), and the VM dropped (its pooling-allocator slot reset); `recycled` instead runs
//! `_initialize` again in one VM of a module from [`export_state`] and puts it back with
//! [`Pristine::reset`]. The engines are built as `new_engine` builds them, plus one option.

#[path = "common/stub_linker.rs"]
mod stub_linker;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use stub_linker::stub_linker;

use ats_wasm_pool::{Pristine, Vm, VmTemplate, export_state};
use criterion::{BenchmarkId, Criterion};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

const ADD_HEADERS: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/target/wasm32-unknown-unknown/release/add_headers.wasm");

/// `new_engine`'s configuration with `tweak` applied.
fn engine(tweak: impl FnOnce(&mut PoolingAllocationConfig, &mut Config)) -> Engine {
    let mut pooling = PoolingAllocationConfig::default();
    pooling.total_memories(64).total_tables(64).total_core_instances(64).max_memory_size(64 << 20);
    let mut config = Config::new();
    config.memory_init_cow(true).epoch_interruption(true).signals_based_traps(true);
    tweak(&mut pooling, &mut config);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    Engine::new(&config).expect("engine")
}

fn initialize(vm: &mut Vm<()>) -> wasmtime::Result<()> {
    let f = vm.instance.get_typed_func::<(), ()>(&mut vm.store, "_initialize")?;
    f.call(&mut vm.store, ())
}

fn template(engine: &Engine, wasm: &[u8]) -> Arc<VmTemplate<()>> {
    let module = Module::new(engine, wasm).expect("module");
    let pre = stub_linker(engine, &module).instantiate_pre(&module).expect("link");
    VmTemplate::new(pre, || (), initialize, u64::MAX)
}

fn main() {
    let wasm = std::fs::read(ADD_HEADERS).unwrap_or_else(|e| panic!("{ADD_HEADERS}: {e} (run `make build`)"));
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    let mut g = c.benchmark_group("reset");
    type Tweak = fn(&mut PoolingAllocationConfig, &mut Config);
    let options: [(&str, Tweak); 6] = [
        ("default (madvise)", |_, _| {}),
        ("linear_memory_keep_resident 2 MiB (memset)", |p, _| {
            p.linear_memory_keep_resident(2 << 20);
        }),
        ("keep_resident 2 MiB + pagemap_scan", |p, _| {
            p.linear_memory_keep_resident(2 << 20).pagemap_scan(Enabled::Yes);
        }),
        ("table_keep_resident 64 KiB", |p, _| {
            p.table_keep_resident(64 << 10);
        }),
        ("decommit_batch_size 16", |p, _| {
            p.decommit_batch_size(16);
        }),
        ("table_lazy_init false", |_, c| {
            c.table_lazy_init(false);
        }),
    ];
    for (name, tweak) in options {
        let t = template(&engine(tweak), &wasm);
        g.bench_function(BenchmarkId::new("instantiate+_initialize+drop", name), |b| {
            b.iter(|| drop(black_box(t.instantiate().expect("VM"))))
        });
    }
    // Recycled in place: one VM, `_initialize` run again, then its pages and globals put back.
    let engine = engine(|_, _| {});
    let module = Module::new(&engine, export_state(&wasm).expect("exports")).expect("module");
    let pre = stub_linker(&engine, &module).instantiate_pre(&module).expect("link");
    let new_vm = || {
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_epoch_deadline(u64::MAX);
        let instance = pre.instantiate(&mut store).expect("instance");
        Vm { store, instance }
    };
    // Read from a VM of its own, as `snapshot_template` does: reading a memory maps the zero
    // page under every untouched page, which a reset would then count as written.
    let pristine = Pristine::read(&module, &mut new_vm()).expect("pagemap");
    let mut vm = new_vm();
    initialize(&mut vm).expect("_initialize");
    let written = pristine.reset(&mut vm.store, vm.instance).expect("reset");
    println!(
        "add_headers: linear memory {} KiB, of which _initialize wrote {written} host pages; recycling keeps {} KiB \
         (the pages that are not all zeros)",
        vm.instance.get_memory(&mut vm.store, "memory").map_or(0, |m| m.data_size(&vm.store)) >> 10,
        pristine.kept_bytes() >> 10
    );
    g.bench_function(BenchmarkId::new("_initialize+reset", "recycled"), |b| {
        b.iter(|| {
            initialize(&mut vm).expect("_initialize");
            black_box(pristine.reset(&mut vm.store, vm.instance).expect("reset"))
        })
    });
    g.finish();
    c.final_summary();
}
