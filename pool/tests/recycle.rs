//! Recycling `transaction`-mode VMs: a released VM of a recycling template goes back to the
//! ready VMs with the memory and globals it was instantiated with; a poisoned one, or one whose
//! memory grew, is dropped.

use std::sync::Arc;

use ats_wasm_pool::{EngineOptions, Isolation, PoolConfig, Pristine, Vm, VmPool, VmTemplate, export_state, new_engine};
use wasmtime::{Linker, Module, Store};

const WAT: &str = r#"
(module
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 5))
  (data (i32.const 16) "\2a")
  (func (export "mark") (param i32)
    (i32.store (i32.const 0) (local.get 0))
    (i32.store (i32.const 16) (local.get 0))
    (i32.store (i32.const 40000) (local.get 0))
    (global.set $g (local.get 0)))
  (func (export "read") (result i32)
    (i32.add (i32.add (i32.load (i32.const 0)) (i32.load (i32.const 16)))
             (i32.add (i32.load (i32.const 40000)) (global.get $g))))
  (func (export "grow") (result i32) (memory.grow (i32.const 1)))
)"#;

fn call(vm: &mut Vm<()>, name: &str, arg: Option<i32>) -> i32 {
    match arg {
        Some(a) => {
            vm.instance.get_typed_func::<i32, ()>(&mut vm.store, name).unwrap().call(&mut vm.store, a).map(|()| 0)
        }
        None => vm.instance.get_typed_func::<(), i32>(&mut vm.store, name).unwrap().call(&mut vm.store, ()),
    }
    .unwrap()
}

fn recycling_pool() -> VmPool<()> {
    let engine = new_engine(&EngineOptions { max_instances: 16, ..EngineOptions::default() }).unwrap();
    let wasm = export_state(&wat::parse_str(WAT).unwrap()).unwrap();
    let module = Module::new(&engine, &wasm).unwrap();
    let pre = Linker::new(&engine).instantiate_pre(&module).unwrap();
    let mut store = Store::new(&engine, ());
    let instance = pre.instantiate(&mut store).unwrap();
    let pristine = Pristine::read(&module, &mut Vm { store, instance }).unwrap();
    assert_eq!(pristine.kept_bytes(), 4096, "one page is not all zeros");
    let template = VmTemplate::recycling(
        pre,
        || (),
        |_| Ok(()),
        1000,
        move |vm| pristine.reset(&mut vm.store, vm.instance).map(|_| ()).map_err(wasmtime::Error::new),
    );
    VmPool::with_config(Arc::clone(&template), PoolConfig::new(Isolation::Transaction, 1))
}

#[test]
fn a_released_vm_comes_back_with_its_first_memory_and_globals_and_a_poisoned_or_grown_one_does_not() {
    let pool = recycling_pool();
    pool.refill(1);
    let fresh = 42 + 5;
    for round in 1..=3 {
        let mut lease = pool.lease().unwrap();
        pool.with_leased(&mut lease, |vm| {
            assert_eq!(call(vm, "read", None), fresh, "round {round} starts pristine");
            call(vm, "mark", Some(1000 + round));
        })
        .unwrap();
        pool.release(lease);
        let t = pool.stats().total();
        assert_eq!((t.instantiations, t.recycled, t.ready), (1, round as u64, 1), "round {round}");
    }
    // Poisoned: dropped, a new VM is made on the next lease.
    let mut lease = pool.lease().unwrap();
    pool.poison_leased(&mut lease);
    pool.release(lease);
    assert_eq!(pool.stats().total().ready, 0);
    // Its memory grew: dropped too.
    let mut lease = pool.lease().unwrap();
    pool.with_leased(&mut lease, |vm| assert_eq!(call(vm, "grow", None), 1)).unwrap();
    pool.release(lease);
    let t = pool.stats().total();
    assert_eq!((t.instantiations, t.recycled, t.ready), (2, 3, 0));
}
