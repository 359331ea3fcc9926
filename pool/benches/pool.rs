//! VM pool benchmarks: `cargo bench -p ats-wasm-pool`.
//!
//! Before criterion runs, the resident memory per ready VM is measured (RSS delta from
//! /proc/self/statm over creating N ready VMs) and printed.

#[path = "common/stub_linker.rs"]
mod stub_linker;
use std::hint::black_box;
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};
use stub_linker::stub_linker;

use ats_wasm_pool::{EngineOptions, Isolation, LeasedVm, PoolConfig, Vm, VmPool, VmTemplate, new_engine};
use criterion::{BenchmarkId, Criterion};
use wasmtime::{Engine, Module};

const MINIMAL_WAT: &str = r#"(module (memory (export "memory") 1) (func (export "_initialize")))"#;
const ADD_HEADERS: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/target/wasm32-unknown-unknown/release/add_headers.wasm");

/// Host state stand-in: what the ABI layer would keep per VM.
#[derive(Default)]
struct Host {
    _contexts: Vec<u32>,
}

fn engine() -> Engine {
    new_engine(&EngineOptions { max_instances: 512, ..EngineOptions::default() }).expect("engine")
}

/// `initialize`: run `_initialize` (what the ABI initializer starts with), or nothing.
fn template(engine: &Engine, wasm: &[u8], initialize: bool) -> Arc<VmTemplate<Host>> {
    let module = Module::new(engine, wasm).expect("module");
    let pre = stub_linker(engine, &module).instantiate_pre(&module).expect("link");
    let init = move |vm: &mut Vm<Host>| {
        if initialize {
            let f = vm.instance.get_typed_func::<(), ()>(&mut vm.store, "_initialize")?;
            f.call(&mut vm.store, ())?;
        }
        Ok(())
    };
    VmTemplate::new(pre, Host::default, init, u64::MAX)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn report_rss(engine: &Engine, name: &str, t: &Arc<VmTemplate<Host>>) {
    const N: usize = 200;
    let pool = VmPool::with_config(t.clone(), PoolConfig::new(Isolation::Transaction, N));
    // Warm up allocator and code pages with one VM first.
    drop(t.instantiate().expect("vm"));
    let before = rss_bytes();
    let r = pool.refill(N);
    let after = rss_bytes();
    assert_eq!(r.ready, N, "{:?}", r.error);
    eprintln!(
        "RSS per ready VM ({name}, {N} VMs): {:.1} KiB ({} KiB total)",
        (after.saturating_sub(before)) as f64 / N as f64 / 1024.0,
        (after.saturating_sub(before)) / 1024
    );
    drop(pool);
    let _ = engine;
}

fn lease_release(c: &mut Criterion, engine: &Engine) {
    let t = template(engine, MINIMAL_WAT.as_bytes(), true);
    let mut g = c.benchmark_group("lease_release");

    let shared = VmPool::with_config(t.clone(), PoolConfig::new(Isolation::Shared, 4));
    shared.refill(usize::MAX);
    g.bench_function("shared", |b| {
        b.iter(|| {
            let l = shared.lease().expect("lease");
            shared.release(black_box(l));
        })
    });

    // Transaction mode: leasing pops a ready VM; releasing discards it (slot reset). Refill
    // happens off the measured path, as it would at an idle point.
    const SIZE: usize = 16;
    let tx = VmPool::with_config(t.clone(), PoolConfig::new(Isolation::Transaction, SIZE));
    let mut held: Vec<LeasedVm<Host>> = Vec::with_capacity(SIZE);
    g.bench_function("transaction_lease", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                tx.refill(usize::MAX);
                let n = (iters - done).min(SIZE as u64);
                let start = Instant::now();
                for _ in 0..n {
                    held.push(tx.lease().expect("lease"));
                }
                total += start.elapsed();
                held.drain(..).for_each(|l| tx.release(l));
                done += n;
            }
            total
        })
    });
    g.bench_function("transaction_release_discard", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                tx.refill(usize::MAX);
                let n = (iters - done).min(SIZE as u64);
                for _ in 0..n {
                    held.push(tx.lease().expect("lease"));
                }
                let start = Instant::now();
                held.drain(..).for_each(|l| tx.release(l));
                total += start.elapsed();
                done += n;
            }
            total
        })
    });
    g.bench_function("transaction_full_cycle", |b| {
        b.iter(|| {
            let l = tx.lease().expect("lease");
            tx.release(black_box(l));
            tx.refill(1);
        })
    });
    g.finish();
}

fn fresh_vm(c: &mut Criterion, engine: &Engine) {
    let wasm = std::fs::read(ADD_HEADERS).unwrap_or_else(|e| panic!("{ADD_HEADERS}: {e} (run `make build`)"));
    let mut g = c.benchmark_group("fresh_vm");
    for (name, bytes) in [("minimal_wat", MINIMAL_WAT.as_bytes()), ("add_headers", &wasm[..])] {
        for (phase, init) in [("instantiate", false), ("instantiate+_initialize", true)] {
            let t = template(engine, bytes, init);
            let mut batch = Vec::with_capacity(64);
            g.bench_function(BenchmarkId::new(name, phase), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let n = (iters - done).min(64);
                        let start = Instant::now();
                        for _ in 0..n {
                            batch.push(t.instantiate().expect("vm"));
                        }
                        total += start.elapsed();
                        batch.clear();
                        done += n;
                    }
                    total
                })
            });
        }
        let t = template(engine, bytes, true);
        g.bench_function(BenchmarkId::new(name, "discard"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let n = (iters - done).min(64);
                    let vms: Vec<_> = (0..n).map(|_| t.instantiate().expect("vm")).collect();
                    let start = Instant::now();
                    drop(black_box(vms));
                    total += start.elapsed();
                    done += n;
                }
                total
            })
        });
    }
    g.finish();
}

/// A lease taken on an owner thread, released on this thread (pushed home), then drained by
/// the owner: the sum of both halves per lease.
fn cross_thread(c: &mut Criterion, engine: &Engine) {
    let t = template(engine, MINIMAL_WAT.as_bytes(), true);
    let pool = Arc::new(VmPool::with_config(t, PoolConfig::new(Isolation::Shared, 4)));
    let (cmd_tx, cmd_rx) = mpsc::channel::<Option<u64>>();
    let (lease_tx, lease_rx) = mpsc::channel::<Vec<LeasedVm<Host>>>();
    let (drain_tx, drain_rx) = mpsc::channel::<Duration>();
    let p = pool.clone();
    let owner = std::thread::spawn(move || {
        p.refill(usize::MAX);
        while let Ok(cmd) = cmd_rx.recv() {
            match cmd {
                Some(n) => {
                    let v = (0..n).map(|_| p.lease().expect("lease")).collect();
                    if lease_tx.send(v).is_err() {
                        return;
                    }
                }
                None => {
                    let start = Instant::now();
                    p.drain_returns();
                    if drain_tx.send(start.elapsed()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    c.bench_function("cross_thread_return", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(4096);
                cmd_tx.send(Some(n)).expect("owner");
                let leases = lease_rx.recv().expect("leases");
                let start = Instant::now();
                for l in leases {
                    pool.release(l);
                }
                total += start.elapsed();
                cmd_tx.send(None).expect("owner");
                total += drain_rx.recv().expect("drained");
                done += n;
            }
            total
        })
    });
    drop(cmd_tx);
    let _ = owner.join();
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_THREAD_CPUTIME_ID is a valid clock;
    // clock_gettime writes only into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// K threads lease + return at once, each from its own pool. Reported time is the mean of the
/// threads' CPU time (not wall time: 8 threads on 2 cores wait for a core, which is not a cost
/// of the pool).
fn threads(c: &mut Criterion, engine: &Engine) {
    let t = template(engine, MINIMAL_WAT.as_bytes(), true);
    let pool = VmPool::with_config(t, PoolConfig::new(Isolation::Shared, 2));
    let mut g = c.benchmark_group("lease_release_threads");
    for k in [1usize, 2, 4, 8] {
        g.bench_function(BenchmarkId::from_parameter(k), |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(k);
                let times: Vec<Duration> = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..k)
                        .map(|_| {
                            let (pool, barrier) = (&pool, &barrier);
                            s.spawn(move || {
                                pool.refill(usize::MAX);
                                barrier.wait();
                                let start = thread_cpu_time();
                                for _ in 0..iters {
                                    let l = pool.lease().expect("lease");
                                    pool.release(black_box(l));
                                }
                                thread_cpu_time().saturating_sub(start)
                            })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().expect("bench thread")).collect()
                });
                times.iter().sum::<Duration>() / k as u32
            })
        });
    }
    g.finish();
}

fn main() {
    let engine = engine();
    let wasm = std::fs::read(ADD_HEADERS).unwrap_or_else(|e| panic!("{ADD_HEADERS}: {e} (run `make build`)"));
    report_rss(&engine, "minimal WAT, initialized", &template(&engine, MINIMAL_WAT.as_bytes(), true));
    report_rss(&engine, "add_headers, _initialize run", &template(&engine, &wasm, true));

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    lease_release(&mut c, &engine);
    fresh_vm(&mut c, &engine);
    cross_thread(&mut c, &engine);
    threads(&mut c, &engine);
    c.final_summary();
}
