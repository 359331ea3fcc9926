//! One configured filter: its compiled module and its per-thread VM pool.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use ats_wasm_pool::{
    CacheOutcome, Isolation as PoolIsolation, ModuleCompiler, PoolConfig, VmPool, VmTemplate, WasmEngine,
};

use super::backend::AtsBackend;
use super::diags::one_line;
use super::telemetry::FilterMetrics;
use crate::abi::{HostState, PluginInfo, guest, link, validate_module};
use crate::config::{Bodies, FilterConfig, Isolation, PluginArgs};
use crate::ts::log;

/// A loaded filter.
pub(crate) struct Filter {
    pub(crate) name: String,
    pub(crate) fail_open: bool,
    /// How long the filter may keep a transaction paused (`--pause-timeout-ms`, or the YAML's
    /// `pause_timeout_ms`); `None`: no limit of ours.
    pub(crate) pause_timeout: Option<Duration>,
    pub(crate) pool: VmPool<HostState<AtsBackend>>,
    /// Ready VMs per thread, the refill target.
    pub(crate) pool_size: usize,
    /// The tick period the module asked for when it started (`proxy_set_tick_period_milliseconds`
    /// in `proxy_on_vm_start` / `proxy_on_configure`), if any.
    pub(crate) tick_period: Option<Duration>,
    /// `transaction` isolation: one long-lived VM per thread that only runs the root context's
    /// timers (transaction VMs live too briefly to tick).
    pub(crate) tick_pool: Option<VmPool<HostState<AtsBackend>>>,
    /// `config.bodies` (`auto` resolved): which bodies its body callbacks see.
    pub(crate) bodies: Bodies,
    /// `config.max_body_bytes`: the most it may hold buffered.
    pub(crate) max_body_bytes: usize,
    /// `config.cache_transformed`: whether its transformed responses replace the cached copy.
    pub(crate) cache_transformed: bool,
    /// Its counters and callback timings (the same across reloads for one filter name).
    pub(crate) metrics: Arc<FilterMetrics>,
    /// The SHA-256 of its module's bytes, in lowercase hex.
    pub(crate) module_hash: String,
}

impl Filter {
    /// Compiles the filter's module once, links it, and proves it can start by creating one VM
    /// and running its initializer (`proxy_on_vm_start`, `proxy_on_configure`). `metrics` are
    /// its counters (kept across reloads by the caller). The error is one line saying what is
    /// wrong with the module.
    pub(crate) fn load(
        engine: &WasmEngine,
        compiler: &ModuleCompiler,
        cfg: FilterConfig,
        args: &PluginArgs,
        metrics: Arc<FilterMetrics>,
    ) -> Result<Self, String> {
        let isolation = match cfg.isolation.unwrap_or(args.isolation) {
            Isolation::Shared => PoolIsolation::Shared,
            Isolation::Transaction => PoolIsolation::Transaction,
        };
        let deadline_ms = cfg.callback_deadline_ms.unwrap_or(args.callback_deadline_ms);
        let deadline_ticks = engine.ticks_for(Duration::from_millis(deadline_ms));
        let pool_size = cfg.pool_size.unwrap_or(args.pool_size);
        let path = &cfg.wasm_path;
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read module {}: {e}", path.display()))?;
        let compiled =
            compiler.compile(&bytes).map_err(|e| format!("invalid module {}: {}", path.display(), one_line(&e)))?;
        // The module is usable in every case; a cache file that could not be used or written
        // is worth one WARNING line, a cache in use one NOTE line.
        let line = format!("ats_wasm: filter \"{}\": module {}", cfg.name, compiled.cache);
        match &compiled.cache {
            c if c.problem().is_some() => log::warning(line.as_bytes()),
            CacheOutcome::Loaded(_) | CacheOutcome::Compiled { .. } => log::note(line.as_bytes()),
            CacheOutcome::Disabled | CacheOutcome::InProcess => log::debug(line.as_bytes()),
        }
        let module = compiled.module;
        let module_hash = compiled.hash;
        validate_module(&module).map_err(|e| format!("invalid module {}: {e}", path.display()))?;
        let (linker, stubs) = link::<AtsBackend>(&module)
            .map_err(|e| format!("cannot link module {}: {}", path.display(), one_line(&e)))?;
        super::diags::warn_stubs(&cfg.name, &stubs);
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| format!("cannot link module {}: {}", path.display(), one_line(&e)))?;

        let exports = |name| module.get_export(name).is_some();
        let bodies = cfg.bodies.resolve(exports("proxy_on_request_body"), exports("proxy_on_response_body"));
        if let Some(note) = bodies.auto_note().filter(|_| cfg.bodies == Bodies::Auto) {
            log::note(format!("ats_wasm: filter \"{}\": {note}", cfg.name).as_bytes());
        }
        let info = Arc::new(PluginInfo {
            name: cfg.name.clone(),
            root_id: cfg.root_id.clone(),
            vm_id: cfg.vm_id.clone(),
            plugin_configuration: cfg.configuration.clone().into_bytes(),
            vm_configuration: cfg.vm_configuration.clone().into_bytes(),
            environment: cfg.environment.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            callback_deadline_ticks: deadline_ticks,
            allowed_capabilities: cfg.allowed_capabilities.clone(),
            observer: metrics.observer(),
        });
        // Every run of the initializer (start-up, a thread's first VM, a replacement, a fresh
        // `transaction` VM) has its own deadline: `--init-deadline-ms`, or in `transaction`
        // isolation, where a transaction waits for it, the callback deadline.
        let init_ticks = match isolation {
            PoolIsolation::Shared => engine.ticks_for(Duration::from_millis(args.init_deadline_ms)),
            PoolIsolation::Transaction => deadline_ticks,
        };
        let upstreams: Arc<[(String, crate::config::Upstream)]> = cfg.upstreams.clone().into();
        let filter_metrics = metrics.clone();
        let new_state = Arc::new(move || {
            let mut st = HostState::new(AtsBackend::new(upstreams.clone(), filter_metrics.clone()), info.clone());
            let uid = st.vm_uid();
            st.backend.set_vm(uid);
            st
        });
        let state = new_state.clone();
        let template = VmTemplate::new(pre, move || state(), guest::initialize, init_ticks);
        // Prove the module starts before taking traffic.
        let probe = template.instantiate().map_err(|e| {
            let why = super::failure::init_failure(&e, args.max_memory_bytes);
            format!("module {} failed to start: {why}", path.display())
        })?;
        let tick_period = probe.store.data().tick_period();
        drop(probe);
        let tick_pool = (tick_period.is_some() && isolation == PoolIsolation::Transaction)
            .then(|| VmPool::with_config(template.clone(), PoolConfig::new(PoolIsolation::Shared, 1)));
        let template = match isolation {
            PoolIsolation::Transaction if cfg.snapshot => {
                // Recorded once at load, like the probe: the start-up deadline.
                let ticks = engine.ticks_for(Duration::from_millis(args.init_deadline_ms));
                snapshot_or_not(&cfg.name, engine, &bytes, move || new_state(), ticks, template.clone())
            }
            _ => template,
        };
        let pool = VmPool::with_config(template, PoolConfig::new(isolation, pool_size));
        Ok(Filter {
            name: cfg.name,
            fail_open: cfg.fail_open,
            pause_timeout: cfg.pause_timeout_ms.unwrap_or(args.pause_timeout_ms).map(Duration::from_millis),
            pool,
            pool_size,
            tick_period,
            tick_pool,
            bodies,
            max_body_bytes: cfg.max_body_bytes,
            cache_transformed: cfg.cache_transformed,
            metrics,
            module_hash,
        })
    }

    /// Ends the root context of every VM its pools still hold (`proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete`, as the spec orders them) when its generation retires; returns how many
    /// VMs it reached. A guest that fails here is only logged: the VM goes either way.
    pub(crate) fn retire(&mut self) -> usize {
        let name = &self.name;
        let mut end = |vm: &mut guest::ProxyVm<AtsBackend>| {
            if let Err(e) = guest::shutdown(vm) {
                log::debug(format!("[{name}] ending the root context failed: {}", one_line(&e)).as_bytes());
            }
        };
        let mut n = self.pool.retire(&mut end);
        if let Some(p) = self.tick_pool.as_mut() {
            n += p.retire(&mut end);
        }
        n
    }

    /// The isolation its pool runs in, as the YAML spells it.
    pub(crate) fn isolation(&self) -> &'static str {
        match self.pool.config().isolation {
            PoolIsolation::Shared => "shared",
            PoolIsolation::Transaction => "transaction",
        }
    }

    /// Whether the filter's contexts live in VMs of their transaction's own (`transaction`
    /// isolation).
    pub(crate) fn owns_vms(&self) -> bool {
        self.pool.config().isolation == PoolIsolation::Transaction
    }
}

/// The template of a `transaction`-isolation filter's VMs: one whose VMs start from a snapshot
/// of an initialized VM and are recycled after each transaction (one NOTE line), or, when the
/// module cannot be snapshotted, `fallback` (its VMs run the initializer; one NOTE line saying
/// why).
fn snapshot_or_not(
    name: &str,
    engine: &WasmEngine,
    bytes: &[u8],
    new_state: impl Fn() -> HostState<AtsBackend> + Send + Sync + 'static,
    init_ticks: u64,
    fallback: Arc<VmTemplate<HostState<AtsBackend>>>,
) -> Arc<VmTemplate<HostState<AtsBackend>>> {
    match crate::abi::snapshot::snapshot_template(engine.engine(), bytes, new_state, init_ticks) {
        Ok(t) => {
            let reuse = if t.recycles() {
                "and are recycled after each transaction"
            } else {
                "(each dropped after its transaction: it cannot be recycled here)"
            };
            log::note(
                format!(
                    "ats_wasm: filter \"{name}\": transaction VMs start from a snapshot of an initialized VM {reuse}"
                )
                .as_bytes(),
            );
            t
        }
        Err(why) => {
            let why = one_line(&why);
            log::note(
                format!("ats_wasm: filter \"{name}\": transaction VMs run the initializer each time: {why}").as_bytes(),
            );
            fallback
        }
    }
}
