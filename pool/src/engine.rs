//! Engine configuration: the one place where wasmtime is told how to run guests.
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How an [`Engine`] for Proxy-Wasm guests is built.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Largest linear memory one VM may grow to, in bytes (the per-VM memory cap). A
    /// `memory.grow` past it fails inside the guest (answers -1; a guest allocator then usually
    /// aborts, which traps), and a module whose initial memory is larger fails to instantiate,
    /// so one VM can never take the host's memory.
    pub max_memory_bytes: usize,
    /// How many VMs may exist at once across all threads and modules of this engine (slots of
    /// the pooling allocator). Creating one more fails with an error, never blocks.
    pub max_instances: u32,
    /// Period of the epoch ticker; deadlines are counted in these ticks.
    pub epoch_tick: Duration,
    /// Whether wasmtime may use signal handlers (guard pages) to catch out-of-bounds accesses.
    /// `true` is proven to coexist with the SIGSEGV/SIGBUS handlers ATS installs before plugins
    /// load (see the `guest_oob_trap` integration test); keep it.
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
/// reserve the virtual memory the pool needs. Prefer [`WasmEngine::new`], which also starts the
/// engine's one epoch ticker.
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
/// epoch deadline is a number of ticks. Start exactly one per engine (never one per call). It
/// holds only weak references: it ends when the ticker is dropped (the drop waits for it) or
/// when the engine is gone.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the ticker thread for `engine`. Fails only if the thread cannot be spawned.
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

/// Why a [`WasmEngine`] could not be set up.
#[derive(Debug)]
pub enum EngineError {
    /// wasmtime rejected the configuration (e.g. not enough virtual memory for the pool).
    Config(wasmtime::Error),
    /// The epoch ticker thread could not be spawned.
    Ticker(std::io::Error),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Config(e) => write!(f, "cannot create the wasm engine: {e:#}"),
            EngineError::Ticker(e) => write!(f, "cannot start the epoch ticker thread: {e}"),
        }
    }
}

impl std::error::Error for EngineError {}

/// An engine built by [`new_engine`] together with its one [`EpochTicker`]: everything about
/// how guests run, set up in one place. Dropping it stops the ticker (VMs still alive then no
/// longer reach their deadlines, so drop it last).
pub struct WasmEngine {
    engine: Engine,
    tick: Duration,
    _ticker: EpochTicker,
}

impl WasmEngine {
    /// Builds the engine of `opts` and starts its ticker thread.
    pub fn new(opts: &EngineOptions) -> Result<Self, EngineError> {
        let engine = new_engine(opts).map_err(EngineError::Config)?;
        let ticker = EpochTicker::start(&engine, opts.epoch_tick).map_err(EngineError::Ticker)?;
        Ok(Self { engine, tick: opts.epoch_tick, _ticker: ticker })
    }

    /// The wasmtime engine (cheap to clone).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The number of epoch ticks (at least 1) that covers `d`: a deadline of this many ticks
    /// fires no earlier than `d` minus one tick and, with a live ticker, not much later than `d`.
    pub fn ticks_for(&self, d: Duration) -> u64 {
        let tick = self.tick.as_nanos().max(1);
        u64::try_from(d.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX).max(1)
    }
}
