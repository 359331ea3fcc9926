//! VM pool behaviour with small WAT modules and closure initializers (no Proxy-Wasm ABI).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::time::{Duration, Instant};

use ats_wasm_pool::{
    EngineOptions, Isolation, LeasedVm, PoolConfig, PoolError, ThreadStats, Vm, VmPool, VmTemplate, WasmEngine,
    new_engine,
};
use wasmtime::{Engine, Linker, Module, Trap};

/// Host state: a unique id per VM, and where it was dropped.
struct Host {
    id: u64,
    drops: Arc<Mutex<Vec<(u64, std::thread::ThreadId)>>>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.drops.lock().unwrap().push((self.id, std::thread::current().id()));
    }
}

const WAT: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "spin") (loop br 0))
  (func (export "mark") (param i32) (i32.store (i32.const 0) (local.get 0)))
  (func (export "read") (result i32) (i32.load (i32.const 0)))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
)"#;

type Init = Box<dyn Fn(&mut Vm<Host>) -> wasmtime::Result<()> + Send + Sync>;

struct Fixture {
    template: Arc<VmTemplate<Host>>,
    drops: Arc<Mutex<Vec<(u64, std::thread::ThreadId)>>>,
}

fn opts() -> EngineOptions {
    EngineOptions { max_instances: 64, ..EngineOptions::default() }
}

fn fixture(engine: &Engine, wat: &str, init: Init) -> wasmtime::Result<Fixture> {
    let module = Module::new(engine, wat)?;
    let pre = Linker::new(engine).instantiate_pre(&module)?;
    let ids = Arc::new(AtomicU64::new(1));
    let drops = Arc::new(Mutex::new(Vec::new()));
    let d = drops.clone();
    let template =
        VmTemplate::new(pre, move || Host { id: ids.fetch_add(1, Ordering::Relaxed), drops: d.clone() }, init, 10_000);
    Ok(Fixture { template, drops })
}

fn ok_init() -> Init {
    Box::new(|_| Ok(()))
}

fn pool(f: &Fixture, isolation: Isolation, size: usize) -> VmPool<Host> {
    VmPool::with_config(f.template.clone(), PoolConfig::new(isolation, size))
}

fn id(pool: &VmPool<Host>, lease: &mut LeasedVm<Host>) -> u64 {
    pool.with_leased(lease, |vm| vm.store.data().id).expect("usable lease")
}

fn call_i32(vm: &mut Vm<Host>, name: &str, arg: i32) -> wasmtime::Result<i32> {
    let f = vm.instance.get_typed_func::<i32, i32>(&mut vm.store, name)?;
    f.call(&mut vm.store, arg)
}

fn mark(vm: &mut Vm<Host>, v: i32) -> wasmtime::Result<()> {
    let f = vm.instance.get_typed_func::<i32, ()>(&mut vm.store, "mark")?;
    f.call(&mut vm.store, v)
}

fn read(vm: &mut Vm<Host>) -> wasmtime::Result<i32> {
    let f = vm.instance.get_typed_func::<(), i32>(&mut vm.store, "read")?;
    f.call(&mut vm.store, ())
}

fn mine(pool: &VmPool<Host>) -> ThreadStats {
    let me = pool.current_thread();
    pool.stats().threads.into_iter().find(|t| t.thread == me).expect("this thread's stats")
}

#[test]
fn transaction_leases_from_two_threads_never_share_a_vm() {
    let engine = new_engine(&opts()).unwrap();
    let f = fixture(&engine, WAT, ok_init()).unwrap();
    let pool = pool(&f, Isolation::Transaction, 2);
    let barrier = Barrier::new(2);
    let seen: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=2)
            .map(|t| {
                let (pool, barrier) = (&pool, &barrier);
                s.spawn(move || {
                    pool.refill(usize::MAX);
                    barrier.wait();
                    let mut ids = Vec::new();
                    for i in 0..30 {
                        // Hold two leases at once half of the time.
                        let mut a = pool.lease().unwrap();
                        let mut b = (i % 2 == 0).then(|| pool.lease().unwrap());
                        for l in std::iter::once(&mut a).chain(b.as_mut()) {
                            let before = pool
                                .with_leased(l, |vm| {
                                    let v = read(vm).unwrap();
                                    mark(vm, t).unwrap();
                                    v
                                })
                                .unwrap();
                            assert_eq!(before, 0, "a transaction VM is never used before");
                            ids.push(id(pool, l));
                        }
                        pool.release(a);
                        if let Some(b) = b {
                            pool.release(b);
                        }
                        if i % 3 == 0 {
                            pool.refill(usize::MAX);
                        }
                    }
                    ids
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<u64> = seen.iter().flatten().copied().collect();
    assert_eq!(all.len(), 90);
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "every transaction lease got a VM of its own");
    let total = pool.stats().total();
    assert_eq!(total.leased, 0);
    assert!(total.instantiations >= 90, "{total:?}");
}

#[test]
fn shared_mode_spreads_leases_and_keeps_state() {
    let engine = new_engine(&opts()).unwrap();
    let f = fixture(&engine, WAT, ok_init()).unwrap();
    let pool = pool(&f, Isolation::Shared, 3);
    assert_eq!(pool.refill(usize::MAX).created, 3);
    let mut leases: Vec<_> = (0..6).map(|_| pool.lease().unwrap()).collect();
    let ids: Vec<u64> = leases.iter_mut().map(|l| id(&pool, l)).collect();
    assert_eq!(HashSet::<u64>::from_iter(ids.iter().copied()).len(), 3, "spread over the 3 VMs: {ids:?}");
    assert_eq!(ids[0..3], ids[3..6], "round-robin");
    assert_eq!(mine(&pool).leased, 6);
    // State written through one lease is seen by a later lease of the same VM.
    pool.with_leased(&mut leases[0], |vm| mark(vm, 42)).unwrap().unwrap();
    assert_eq!(pool.with_leased(&mut leases[3], read).unwrap().unwrap(), 42);
    for l in leases {
        pool.release(l);
    }
    let st = mine(&pool);
    assert_eq!((st.leased, st.ready, st.instantiations, st.misses), (0, 3, 3, 0));
}

#[test]
fn poisoned_vm_is_never_leased_again() {
    let engine = new_engine(&opts()).unwrap();
    let f = fixture(&engine, WAT, ok_init()).unwrap();
    for isolation in [Isolation::Shared, Isolation::Transaction] {
        let pool = pool(&f, isolation, 2);
        pool.refill(usize::MAX);
        let mut bad = pool.lease().unwrap();
        let bad_id = id(&pool, &mut bad);
        // In shared mode a second context in the same VM exists at the same time.
        let mut other = pool.lease().unwrap();
        let mut sibling = pool.lease().unwrap();
        pool.poison_leased(&mut bad);
        assert!(matches!(pool.with_leased(&mut bad, |_| ()), Err(PoolError::Gone)));
        if isolation == Isolation::Shared {
            assert!(pool.with_leased(&mut other, |_| ()).is_ok(), "the other VM is unaffected");
            assert!(
                matches!(pool.with_leased(&mut sibling, |_| ()), Err(PoolError::Gone)),
                "another context in the poisoned VM fails"
            );
        }
        pool.release(bad);
        pool.release(other);
        pool.release(sibling);
        for _ in 0..3 {
            pool.refill(usize::MAX);
            for _ in 0..4 {
                let mut l = pool.lease().unwrap();
                assert_ne!(id(&pool, &mut l), bad_id, "{isolation:?}: the poisoned VM came back");
                pool.release(l);
            }
        }
        let st = mine(&pool);
        assert_eq!(st.poisonings, 1, "{isolation:?}: {st:?}");
        assert!(f.drops.lock().unwrap().iter().any(|(i, _)| *i == bad_id), "the poisoned VM was dropped");
    }
}

#[test]
fn refill_restores_pool_size() {
    let engine = new_engine(&opts()).unwrap();
    let f = fixture(&engine, WAT, ok_init()).unwrap();
    let pool = pool(&f, Isolation::Transaction, 3);
    assert_eq!(mine(&pool).ready, 0);
    let r = pool.refill(usize::MAX);
    assert_eq!((r.created, r.ready), (3, 3));
    assert!(r.error.is_none());
    let leases: Vec<_> = (0..3).map(|_| pool.lease().unwrap()).collect();
    let st = mine(&pool);
    assert_eq!((st.ready, st.leased, st.misses), (0, 3, 0));
    for l in leases {
        pool.release(l);
    }
    assert_eq!(mine(&pool).ready, 0, "released transaction VMs are discarded, not reused");
    assert_eq!(pool.refill(1).ready, 1);
    let r = pool.refill(usize::MAX);
    assert_eq!((r.created, r.ready), (2, 3));
    assert_eq!(pool.refill(usize::MAX).created, 0, "never beyond the pool size");
    let st = mine(&pool);
    assert_eq!((st.ready, st.leased, st.instantiations), (3, 0, 6));
    // An empty pool creates on demand and counts the miss.
    let leases: Vec<_> = (0..4).map(|_| pool.lease().unwrap()).collect();
    assert_eq!(mine(&pool).misses, 1);
    leases.into_iter().for_each(|l| pool.release(l));

    let shared = self::pool(&f, Isolation::Shared, 3);
    assert_eq!(shared.refill(usize::MAX).ready, 3);
    let mut l = shared.lease().unwrap();
    shared.poison_leased(&mut l);
    shared.release(l);
    assert_eq!(mine(&shared).ready, 2);
    let r = shared.refill(usize::MAX);
    assert_eq!((r.created, r.ready), (1, 3));
}

#[test]
fn cross_thread_return_reaches_its_owner() {
    let engine = new_engine(&opts()).unwrap();
    let f = fixture(&engine, WAT, ok_init()).unwrap();
    for isolation in [Isolation::Transaction, Isolation::Shared] {
        let pool = Arc::new(pool(&f, isolation, 1));
        let (to_owner, owner_rx) = mpsc::channel::<&'static str>();
        let (lease_tx, lease_rx) = mpsc::channel::<LeasedVm<Host>>();
        let (stats_tx, stats_rx) = mpsc::channel::<(ThreadStats, usize)>();
        let p = pool.clone();
        let owner = std::thread::spawn(move || {
            let me = std::thread::current().id();
            for cmd in owner_rx {
                match cmd {
                    "lease" => lease_tx.send(p.lease().unwrap()).unwrap(),
                    _ => {
                        let drained = p.drain_returns();
                        stats_tx.send((mine(&p), drained)).unwrap();
                    }
                }
            }
            me
        });
        to_owner.send("lease").unwrap();
        let mut lease = lease_rx.recv().unwrap();
        let vm_id = match isolation {
            // The lease owns its VM: usable here, never by the owner at the same time.
            Isolation::Transaction => id(&pool, &mut lease),
            Isolation::Shared => {
                assert!(matches!(pool.with_leased(&mut lease, |_| ()), Err(PoolError::WrongThread)));
                // Poisoned away from home: applied when the lease gets there.
                pool.poison_leased(&mut lease);
                0
            }
        };
        pool.release(lease);
        to_owner.send("stats").unwrap();
        let (st, drained) = stats_rx.recv().unwrap();
        assert_eq!(drained, 1, "{isolation:?}");
        assert_eq!((st.cross_thread_returns, st.leased), (1, 0), "{isolation:?}: {st:?}");
        if isolation == Isolation::Shared {
            assert_eq!((st.poisonings, st.ready), (1, 0), "the poisoning reached the owner: {st:?}");
        }
        drop(to_owner);
        let owner_thread = owner.join().unwrap();
        if isolation == Isolation::Transaction {
            let drops = f.drops.lock().unwrap();
            assert!(drops.contains(&(vm_id, owner_thread)), "the VM was discarded by its owner thread");
        }
    }
}

#[test]
fn failing_initializer_is_reported_once_and_backs_off() {
    let engine = new_engine(&opts()).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(true));
    let (c, fl) = (calls.clone(), failing.clone());
    let init: Init = Box::new(move |_| {
        c.fetch_add(1, Ordering::SeqCst);
        if fl.load(Ordering::SeqCst) { Err(wasmtime::Error::msg("proxy_on_configure answered false")) } else { Ok(()) }
    });
    let f = fixture(&engine, WAT, init).unwrap();

    // A long backoff: after the first failure nothing is retried.
    let mut cfg = PoolConfig::new(Isolation::Shared, 2);
    cfg.backoff_min = Duration::from_secs(3600);
    let pool = VmPool::with_config(f.template.clone(), cfg);
    match pool.lease() {
        Err(PoolError::Init(e)) => assert!(format!("{e:#}").contains("proxy_on_configure answered false"), "{e:#}"),
        other => panic!("expected the first failure with its cause, got {:?}", other.map(|_| ())),
    }
    for _ in 0..5 {
        assert!(matches!(pool.lease(), Err(PoolError::BackingOff)));
    }
    assert!(matches!(pool.refill(usize::MAX).error, Some(PoolError::BackingOff)));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the pool backs off instead of spinning");
    // Another thread tries once; the failure is counted, not reported again.
    std::thread::scope(|s| {
        s.spawn(|| assert!(matches!(pool.lease(), Err(PoolError::BackingOff)))).join().unwrap();
    });
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(pool.stats().total().init_failures, 2);
    assert_eq!(pool.stats().total().instantiations, 0);

    // No backoff: every attempt runs, only the first of a streak is reported.
    let mut cfg = PoolConfig::new(Isolation::Transaction, 1);
    cfg.backoff_min = Duration::ZERO;
    cfg.backoff_factor = 0;
    let pool = VmPool::with_config(f.template.clone(), cfg);
    let before = calls.load(Ordering::SeqCst);
    assert!(matches!(pool.lease(), Err(PoolError::Init(_))));
    assert!(matches!(pool.lease(), Err(PoolError::BackingOff)));
    assert!(matches!(pool.lease(), Err(PoolError::BackingOff)));
    assert_eq!(calls.load(Ordering::SeqCst) - before, 3);
    failing.store(false, Ordering::SeqCst);
    let l = pool.lease().expect("recovers once the initializer succeeds");
    pool.release(l);
    failing.store(true, Ordering::SeqCst);
    assert!(matches!(pool.lease(), Err(PoolError::Init(_))), "a new streak is reported again");
    let st = mine(&pool);
    assert_eq!((st.init_failures, st.instantiations, st.ready, st.leased), (4, 1, 0, 0));
}

#[test]
fn a_looping_initializer_stops_at_its_deadline_and_its_thread_backs_off_by_ten_times_that() {
    let engine = WasmEngine::new(&opts()).unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let init: Init = Box::new(move |vm| {
        c.fetch_add(1, Ordering::SeqCst);
        let spin = vm.instance.get_typed_func::<(), ()>(&mut vm.store, "spin")?;
        spin.call(&mut vm.store, ())
    });
    let module = Module::new(engine.engine(), WAT).unwrap();
    let pre = Linker::new(engine.engine()).instantiate_pre(&module).unwrap();
    let drops = Arc::new(Mutex::new(Vec::new()));
    let deadline = engine.ticks_for(Duration::from_millis(100));
    let template = VmTemplate::new(pre, move || Host { id: 1, drops: drops.clone() }, init, deadline);
    // A short exponential backoff: the wait comes from how long the attempt took.
    let mut cfg = PoolConfig::new(Isolation::Shared, 1);
    cfg.backoff_min = Duration::from_millis(1);
    let pool = VmPool::with_config(template, cfg);

    let start = Instant::now();
    match pool.lease() {
        Err(PoolError::Init(e)) => {
            assert_eq!(e.downcast_ref::<Trap>(), Some(&Trap::Interrupt), "{e:#}");
            assert!(format!("{e:#}").starts_with("the initializer ran past its deadline"), "{e:#}");
        }
        other => panic!("expected the initializer's interrupt, got {:?}", other.map(|_| ())),
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(80) && took < Duration::from_millis(600), "interrupted after {took:?}");
    // For the next ten times that, leases (misses) and refills do not run the initializer.
    let quiet = start + took * 9;
    while Instant::now() < quiet {
        let t = Instant::now();
        assert!(matches!(pool.lease(), Err(PoolError::BackingOff)));
        assert!(matches!(pool.refill(1).error, Some(PoolError::BackingOff)));
        assert!(t.elapsed() < Duration::from_millis(20), "a backing-off lease blocks nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt, not one per lease");
    std::thread::sleep(took * 2 + Duration::from_millis(100));
    assert!(matches!(pool.lease(), Err(PoolError::BackingOff)), "reported once per streak");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "retried after the backoff");
}

#[test]
fn module_over_the_memory_cap_fails_cleanly() {
    let engine = new_engine(&EngineOptions { max_memory_bytes: 1 << 20, ..opts() }).unwrap();
    // 32 pages = 2 MiB > 1 MiB cap: the pooling allocator refuses the module when it is
    // compiled, before any VM exists, with an error naming the limit.
    let over = r#"(module (memory (export "memory") 32))"#;
    match fixture(&engine, over, ok_init()) {
        Err(e) => assert!(format!("{e:#}").contains("exceeds the limit"), "{e:#}"),
        Ok(_) => panic!("a module over the memory cap must not load"),
    }
    let compiled = ats_wasm_pool::ModuleCompiler::new(&engine, None).compile(over.as_bytes());
    assert!(compiled.is_err(), "the compiler reports it too");

    // Growing past the cap fails inside the guest (-1), the VM stays usable.
    let f = fixture(&engine, WAT, ok_init()).unwrap();
    let pool = self::pool(&f, Isolation::Shared, 1);
    let mut l = pool.lease().unwrap();
    let (grown, regrown) =
        pool.with_leased(&mut l, |vm| (call_i32(vm, "grow", 100).unwrap(), call_i32(vm, "grow", 1).unwrap())).unwrap();
    assert_eq!(grown, -1, "a grow to 101 pages (> 16) is refused");
    assert_eq!(regrown, 1, "a grow within the cap still works (old size 1 page)");
    pool.release(l);
}

#[test]
fn infinite_loop_is_interrupted_by_the_epoch_deadline() {
    let engine = WasmEngine::new(&opts()).unwrap();
    let f = fixture(engine.engine(), WAT, ok_init()).unwrap();
    let pool = pool(&f, Isolation::Shared, 1);
    let mut l = pool.lease().unwrap();
    let looping = id(&pool, &mut l);
    let ticks = engine.ticks_for(Duration::from_millis(50));
    let start = Instant::now();
    let r = pool
        .with_leased(&mut l, |vm| {
            vm.store.set_epoch_deadline(ticks);
            let spin = vm.instance.get_typed_func::<(), ()>(&mut vm.store, "spin")?;
            spin.call(&mut vm.store, ())
        })
        .unwrap();
    let took = start.elapsed();
    let err = r.expect_err("the loop must not finish");
    assert_eq!(err.downcast_ref::<Trap>(), Some(&Trap::Interrupt), "{err:#}");
    assert!(took < Duration::from_secs(10), "interrupted after {took:?}");
    pool.poison_leased(&mut l);
    pool.release(l);
    let mut next = pool.lease().unwrap();
    assert_ne!(id(&pool, &mut next), looping);
    pool.release(next);
}

#[test]
fn re_entrant_use_is_refused_not_deadlocked() {
    let engine = new_engine(&opts()).unwrap();
    let f = fixture(&engine, WAT, ok_init()).unwrap();
    let pool = pool(&f, Isolation::Shared, 1);
    let mut l = pool.lease().unwrap();
    let inner = pool.with_leased(&mut l, |_| pool.lease().map(|_| ())).unwrap();
    assert!(matches!(inner, Err(PoolError::Busy)));
    // A release inside a callback at home is deferred, not lost, and not a cross-thread one.
    let other = pool.lease().unwrap();
    pool.with_leased(&mut l, |_| pool.release(other)).unwrap();
    assert_eq!(mine(&pool).leased, 2);
    assert_eq!(pool.drain_returns(), 1);
    pool.release(l);
    let st = mine(&pool);
    assert_eq!((st.leased, st.cross_thread_returns), (0, 0), "{st:?}");
}

#[test]
fn for_each_local_visits_only_this_threads_live_shared_vms() {
    let engine = new_engine(&opts()).unwrap();
    let f = fixture(&engine, WAT, ok_init()).unwrap();
    let pool = Arc::new(pool(&f, Isolation::Shared, 3));
    assert_eq!(pool.for_each_local(|_, _| {}), 0, "nothing created yet");
    assert_eq!(pool.refill(3).created, 3);
    let mut seen = Vec::new();
    assert_eq!(pool.for_each_local(|r, _| seen.push(r)), 3);
    pool.poison(seen[1]);
    assert_eq!(pool.for_each_local(|_, _| {}), 2, "a poisoned VM is not visited");
    let other = Arc::clone(&pool);
    let n = std::thread::spawn(move || other.for_each_local(|_, _| {})).join().unwrap();
    assert_eq!(n, 0, "another thread sees only its own (empty) pool");
}

#[test]
fn retire_visits_every_vm_the_pool_holds_on_every_thread_once() {
    let engine = new_engine(&opts()).unwrap();
    let f = fixture(&engine, WAT, ok_init()).unwrap();
    // Shared: two threads with two VMs each.
    let mut shared = pool(&f, Isolation::Shared, 2);
    // Both threads alive at once: a thread that exited leaves its pool to the next one.
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                shared.refill(usize::MAX);
                barrier.wait();
            });
        }
    });
    let mut seen = 0;
    assert_eq!(shared.retire(|vm| seen += usize::from(read(vm).is_ok())), 4);
    assert_eq!(seen, 4);

    // Transaction: this thread's two ready VMs, plus one leased here and released on another
    // thread (waiting in the returns queue); a lease still out is not reached.
    let mut txn = pool(&f, Isolation::Transaction, 2);
    txn.refill(usize::MAX);
    let sent_home = txn.lease().unwrap();
    let kept = txn.lease().unwrap();
    txn.refill(usize::MAX);
    std::thread::scope(|s| {
        s.spawn(|| txn.release(sent_home));
    });
    assert_eq!(txn.retire(|vm| mark(vm, 7).unwrap()), 3);
    drop(kept);
}
