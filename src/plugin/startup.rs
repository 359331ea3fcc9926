//! Start-up: `TSPluginInit`'s work — registration, arguments, filter files, the engine, the
//! filters (generation 1), the metrics endpoint, the global hook and the reload triggers —
//! and the [`Loader`] that builds filters again for each reload.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ats_wasm_pool::{EngineOptions, ModuleCompiler, WasmEngine};

use super::diags::one_line;
use super::filter::Filter;
use super::generation::{self, GLOBAL_SCOPE, Generation};
use super::reload;
use super::telemetry::{self, Exporter, FilterMetrics};
use super::{Hooks, PLUGIN, Plugin};
use crate::config::{self, FilterConfig, PluginArgs};
use crate::ts::hooks::{HttpHook, TxnCont};
use crate::ts::log;
use crate::ts::txn::TxnSlot;

/// The epoch tick for callback deadlines as short as `shortest_deadline_ms`: a tenth of it,
/// from 1 ms to 10 ms. Every tick wakes the ticker thread, which on a loaded proxy takes the
/// CPU from a net thread; a tenth keeps a deadline within 10 % of its value.
fn epoch_tick_for(shortest_deadline_ms: u64) -> Duration {
    Duration::from_micros((shortest_deadline_ms * 100).clamp(1_000, 10_000))
}

/// Plugin entry: registers, parses arguments and filter files, loads modules, publishes
/// generation 1, installs hooks and the reload triggers. Every problem is one `TSError` line;
/// the plugin then runs without the broken part (or, for bad arguments or no usable filter,
/// without hooks) and ATS keeps serving.
pub fn init(args: &[String]) {
    if !crate::ts::plugin::register(c"ats_wasm", c"ats-wasm", c"ats-wasm@users.noreply.invalid") {
        log::error(b"ats_wasm: plugin registration failed; the plugin is disabled");
        return;
    }
    // Remap rules naming this library then use this very copy (one engine, one endpoint).
    if !crate::ts::plugin::keep_one_dso_for_remap() {
        log::warning(b"ats_wasm: ATS refused TSPluginDSOReloadEnable(0): remap rules may load a copy of the plugin");
    }
    let config_dir = crate::ts::plugin::config_dir();
    let parsed = match config::parse_args(args, &config_dir) {
        Ok(a) => a,
        Err(e) => {
            log::error(format!("ats_wasm: bad plugin argument: {e}; the plugin is disabled").as_bytes());
            return;
        }
    };
    let Ok(configs) = read_configs(&parsed.yaml_files, &config_dir, false) else { return };
    boot(parsed, args.to_vec(), config_dir, Some(configs));
}

/// Start-up when the plugin is loaded only by remap rules (`TSRemapInit`, no `plugin.config`
/// line): the process-wide options take their defaults, there are no global filters (an empty
/// generation 1), and the global hook still runs so HTTP calls and loop marks work.
pub fn init_for_remap() {
    let config_dir = crate::ts::plugin::config_dir();
    log::note(b"ats_wasm: loaded by remap rules only: process-wide options take their defaults");
    boot(PluginArgs::default(), Vec::new(), config_dir, None);
}

/// The common start-up: `configs` are the global filter files (`None` when loaded by remap
/// rules only).
fn boot(args: PluginArgs, raw_args: Vec<String>, config_dir: PathBuf, configs: Option<Vec<(PathBuf, FilterConfig)>>) {
    let global = configs.is_some();
    let configs = configs.unwrap_or_default();

    // Shared data is process-wide (namespaced by vm_id): its bounds are the plugin's.
    let (max_bytes, max_value_bytes) = (args.max_shared_data_bytes, args.max_shared_value_bytes);
    crate::abi::Shared::global().set_limits(crate::abi::SharedLimits { max_bytes, max_value_bytes });

    let shortest_deadline_ms = configs
        .iter()
        .map(|(_, c)| c.callback_deadline_ms.unwrap_or(args.callback_deadline_ms))
        .min()
        .unwrap_or(args.callback_deadline_ms);
    let opts = EngineOptions {
        max_memory_bytes: args.max_memory_bytes,
        // VMs (pool slots) at once: net threads × filters × (ready VMs + VMs leased by
        // concurrent transactions in `transaction` isolation).
        max_instances: args.max_vms,
        epoch_tick: epoch_tick_for(shortest_deadline_ms),
        ..EngineOptions::default()
    };
    let engine = match WasmEngine::new(&opts) {
        Ok(e) => e,
        Err(e) => {
            log::error(format!("ats_wasm: {}; the plugin is disabled", one_line(&e)).as_bytes());
            return;
        }
    };
    let endpoint = telemetry::prepare(args.metrics_listen);
    // Compiles each distinct module once per process (and, with --module-cache, once per
    // machine and wasmtime version).
    let compiler = ModuleCompiler::new(engine.engine(), args.module_cache.clone());
    super::backend::call_bounds::set_limits(args.max_calls_per_vm, args.max_calls_per_txn);
    super::loops::set_max_depth(args.call_depth);
    let loader = Loader {
        max_memory_bytes: args.max_memory_bytes,
        args,
        raw_args,
        config_dir,
        compiler,
        exporter: endpoint.as_ref().map(|(_, e)| e.clone()),
        metrics: Mutex::new(HashMap::new()),
        engine,
    };
    let Ok(filters) = loader.load_filters(GLOBAL_SCOPE, configs, &loader.args, false) else { return };
    if global && filters.is_empty() {
        log::error(b"ats_wasm: no filter could be loaded; the plugin installs no hooks");
        return;
    }
    let Some(slot) = TxnSlot::reserve("ats_wasm", "ats-wasm per-transaction filter contexts") else {
        log::error(b"ats_wasm: no transaction user argument slot is free; the plugin installs no hooks");
        return;
    };
    let cont = TxnCont::new::<Hooks>();
    let plugin = Plugin { slot, cont, loader };
    if PLUGIN.set(plugin).is_err() {
        log::error(b"ats_wasm: the plugin was initialized twice; the second configuration is ignored");
        return;
    }
    generation::publish(Generation::new(1, filters));
    cont.add_global(HttpHook::ReadRequestHdr);
    if global {
        reload::register();
    }
    super::delivery::reach_net_threads();
    telemetry::start(endpoint, filter_snapshots);
}

/// Reads every filter file of `files` (the ones named in `plugin.config`), in order. At start-up (`strict` false) a
/// bad file is one ERROR line and is skipped; for a reload (`strict`) the first bad file is
/// the error. Unknown keys and ignored documents are WARNING lines either way.
pub(super) fn read_configs(
    files: &[PathBuf],
    config_dir: &Path,
    strict: bool,
) -> Result<Vec<(PathBuf, FilterConfig)>, String> {
    let mut configs = Vec::new();
    for path in files {
        let cfg = match config::load_filter(path, config_dir, &|k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(e) if strict => return Err(e.to_string()),
            Err(e) => {
                log::error(format!("ats_wasm: {e}; this filter is skipped").as_bytes());
                continue;
            }
        };
        for w in cfg.warnings() {
            log::warning(format!("ats_wasm: {w}").as_bytes());
        }
        configs.push((path.clone(), cfg));
    }
    Ok(configs)
}

/// What building filters needs, kept for reloads: the plugin arguments as ATS loaded them,
/// the compiler (and its module cache), the exporter, and every filter name's counters (so a
/// reloaded filter's counters go on instead of starting again).
pub(super) struct Loader {
    pub(super) args: PluginArgs,
    /// The plugin's arguments as ATS gave them, its own path first.
    raw_args: Vec<String>,
    pub(super) config_dir: PathBuf,
    /// The per-VM memory cap (`--max-memory`).
    pub(super) max_memory_bytes: usize,
    compiler: ModuleCompiler,
    exporter: Option<Exporter>,
    /// By scope and filter name.
    metrics: Mutex<HashMap<(String, String), Arc<FilterMetrics>>>,
    /// Last: its ticker drives every VM's deadline.
    engine: WasmEngine,
}

impl Loader {
    /// Builds the filters of `configs` in `scope` (`global` or a remap rule's), in order, with
    /// `args` as their defaults. At start-up (`strict` false) a filter that fails is one ERROR
    /// line and is skipped; for a reload or a remap rule (`strict`) the first failure is the
    /// error, naming the file.
    pub(super) fn load_filters(
        &self,
        scope: &str,
        configs: Vec<(PathBuf, FilterConfig)>,
        args: &PluginArgs,
        strict: bool,
    ) -> Result<Vec<Filter>, String> {
        let mut filters = Vec::new();
        for (path, cfg) in configs {
            let metrics = self.metrics_for(scope, &cfg.name);
            match Filter::load(&self.engine, &self.compiler, cfg, args, metrics) {
                Ok(f) => {
                    log::note(format!("ats_wasm: filter \"{}\" loaded from {}", f.name, path.display()).as_bytes());
                    filters.push(f);
                }
                Err(e) if strict => return Err(format!("{}: {e}", path.display())),
                Err(e) => log::error(format!("ats_wasm: {}: {e}; this filter is skipped", path.display()).as_bytes()),
            }
        }
        Ok(filters)
    }

    /// A reload's filters: every file named in `plugin.config` read again and built, all or
    /// nothing (the error names the first file that failed).
    pub(super) fn rebuild(&self) -> Result<Vec<Filter>, String> {
        let configs = read_configs(&self.filter_files()?, &self.config_dir, true)?;
        self.load_filters(GLOBAL_SCOPE, configs, &self.args, true)
    }

    /// The filter files named on the plugin's line of `plugin.config` as the file is now (so a
    /// reload adds and removes filters); the options on that line keep the values ATS loaded
    /// (a change is one WARNING line). When the line cannot be found again, the files loaded
    /// at start-up (one WARNING line); a bad argument on it fails the reload.
    fn filter_files(&self) -> Result<Vec<PathBuf>, String> {
        let path = self.config_dir.join("plugin.config");
        let plugin = self.raw_args.first().map(String::as_str).unwrap_or_default();
        let line = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read it: {e}"))
            .and_then(|text| config::plugin_line(&text, plugin));
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                log::warning(
                    format!(
                        "ats_wasm: reload: {}: {e}; the filter files loaded at start-up are read again",
                        path.display()
                    )
                    .as_bytes(),
                );
                return Ok(self.args.yaml_files.clone());
            }
        };
        let now = config::parse_args(&line, &self.config_dir)
            .map_err(|e| format!("{}: bad plugin argument: {e}", path.display()))?;
        let same_options = PluginArgs { yaml_files: self.args.yaml_files.clone(), ..now.clone() };
        if same_options != self.args {
            log::warning(
                format!(
                    "ats_wasm: reload: {}: the options on the plugin's line changed; they take effect at the next restart (the filter files are taken from the line as it is now)",
                    path.display()
                )
                .as_bytes(),
            );
        }
        Ok(now.yaml_files)
    }

    /// The counters of the filter named `name` in `scope`: made on first use, the same ever
    /// after (across reloads, and across remap.config reloads for one rule).
    fn metrics_for(&self, scope: &str, name: &str) -> Arc<FilterMetrics> {
        let mut all = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        all.entry((scope.to_string(), name.to_string()))
            .or_insert_with(|| FilterMetrics::new(name, scope, self.exporter.as_ref()))
            .clone()
    }

    /// Forgets compiled modules that neither `g` nor a live remap rule uses (modules of
    /// retiring generations stay alive in their templates until those retire).
    pub(super) fn keep_modules_of(&self, g: &Generation) {
        let rules = super::remap::live_rules();
        let hashes: Vec<&str> = g
            .filters
            .iter()
            .chain(rules.iter().flat_map(|r| r.filters.iter()))
            .map(|f| f.module_hash.as_str())
            .collect();
        self.compiler.retain(|h| hashes.contains(&h));
    }
}

/// The current generation's filters: names, pool counters and metrics (for the metrics
/// threads).
fn filter_snapshots() -> Vec<telemetry::FilterSnapshot> {
    let rules = super::remap::live_rules();
    let global = generation::current();
    global
        .iter()
        .chain(rules.iter())
        .flat_map(|g| g.filters.iter().map(|f| (g.scope.clone(), f)))
        .map(|(scope, f)| telemetry::FilterSnapshot {
            name: f.name.clone(),
            scope,
            pool: f.pool.stats(),
            metrics: f.metrics.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_tick_is_a_tenth_of_the_shortest_deadline_within_1_to_10_ms() {
        assert_eq!(epoch_tick_for(100), Duration::from_millis(10));
        assert_eq!(epoch_tick_for(60_000), Duration::from_millis(10));
        assert_eq!(epoch_tick_for(25), Duration::from_micros(2_500));
        assert_eq!(epoch_tick_for(5), Duration::from_millis(1));
        assert_eq!(epoch_tick_for(1), Duration::from_millis(1));
    }
}
