//! Engine configuration: the one place where wasmtime is told how to run guests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How an [`Engine`] for Proxy-Wasm guests is built.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Largest linear memory one VM may grow to, in bytes. A `memory.grow` past it fails inside
    /// the guest (its allocator then aborts, which traps), so one VM can never take the host's
    /// memory.
    pub max_memory_bytes: usize,
    /// How many VMs may exist at once across all threads (slots of the pooling allocator).
    pub max_instances: u32,
    /// Period of the epoch ticker; deadlines are counted in these ticks.
    pub epoch_tick: Duration,
    /// Whether wasmtime may use signal handlers (guard pages) to catch out-of-bounds accesses.
    /// `true` is proven to coexist with the SIGSEGV/SIGBUS handlers ATS installs before plugins
    /// load (see the `guest_oob_trap` integration test).
    pub signals_based_traps: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_memory_bytes: 64 << 20,
            max_instances: 256,
            epoch_tick: Duration::from_millis(1),
            signals_based_traps: true,
        }
    }
}

/// Builds an engine with the pooling allocator, copy-on-write memory images, epoch
/// interruption and the memory cap of `opts`.
///
/// Fails (never panics) when wasmtime rejects the configuration, e.g. when the host cannot
/// reserve the virtual memory the pool needs.
pub fn new_engine(opts: &EngineOptions) -> wasmtime::Result<Engine> {
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_memories(opts.max_instances)
        .total_tables(opts.max_instances)
        .total_core_instances(opts.max_instances)
        .max_memory_size(opts.max_memory_bytes);

    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling))
        .memory_init_cow(true)
        .epoch_interruption(true)
        .signals_based_traps(opts.signals_based_traps);
    Engine::new(&config)
}

/// One background thread that advances an engine's epoch every `tick`, so that every store's
/// epoch deadline is a number of ticks. It holds only a weak reference: it ends by itself when
/// the ticker is dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`.
    pub fn start(engine: &Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak: Weak<AtomicBool> = Arc::downgrade(&stop);
        let engine = engine.weak();
        let handle = std::thread::Builder::new().name("ats-wasm-epoch".into()).spawn(move || {
            loop {
                std::thread::sleep(tick);
                let Some(stop) = weak.upgrade() else { return };
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })?;
        Ok(Self { stop, handle: Some(handle) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
