//! Start-up: `TSPluginInit`'s work — registration, arguments, filter files, the engine, the
//! filters, the metrics endpoint and the global hook.
#![forbid(unsafe_code)]

use std::time::Duration;

use ats_wasm_pool::{EngineOptions, ModuleCompiler, WasmEngine};

use super::diags::one_line;
use super::filter::Filter;
use super::telemetry;
use super::{Hooks, PLUGIN, Plugin};
use crate::config;
use crate::ts::hooks::{HttpHook, TxnCont};
use crate::ts::log;
use crate::ts::txn::TxnSlot;

/// The epoch tick for callback deadlines as short as `shortest_deadline_ms`: a tenth of it,
/// from 1 ms to 10 ms. Every tick wakes the ticker thread, which on a loaded proxy takes the
/// CPU from a net thread; a tenth keeps a deadline within 10 % of its value.
fn epoch_tick_for(shortest_deadline_ms: u64) -> Duration {
    Duration::from_micros((shortest_deadline_ms * 100).clamp(1_000, 10_000))
}

/// Plugin entry: registers, parses arguments and filter files, loads modules, installs hooks.
/// Every problem is one `TSError` line; the plugin then runs without the broken part (or, for
/// bad arguments or no usable filter, without hooks) and ATS keeps serving.
pub fn init(args: &[String]) {
    if !crate::ts::plugin::register(c"ats_wasm", c"ats-wasm", c"ats-wasm@users.noreply.invalid") {
        log::error(b"ats_wasm: plugin registration failed; the plugin is disabled");
        return;
    }
    let config_dir = crate::ts::plugin::config_dir();
    let args = match config::parse_args(args, &config_dir) {
        Ok(a) => a,
        Err(e) => {
            log::error(format!("ats_wasm: bad plugin argument: {e}; the plugin is disabled").as_bytes());
            return;
        }
    };

    let mut configs = Vec::new();
    for path in &args.yaml_files {
        let cfg = match config::load_filter(path, &config_dir, &|k| std::env::var(k).ok()) {
            Ok(c) => c,
            Err(e) => {
                log::error(format!("ats_wasm: {e}; this filter is skipped").as_bytes());
                continue;
            }
        };
        for w in cfg.warnings() {
            log::warning(format!("ats_wasm: {w}").as_bytes());
        }
        configs.push((path, cfg));
    }

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

    let mut filters = Vec::new();
    for (path, cfg) in configs {
        match Filter::load(&engine, &compiler, cfg, &args, endpoint.as_ref().map(|(_, e)| e)) {
            Ok(f) => {
                log::note(format!("ats_wasm: filter \"{}\" loaded from {}", f.name, path.display()).as_bytes());
                filters.push(f);
            }
            Err(e) => log::error(format!("ats_wasm: {}: {e}; this filter is skipped", path.display()).as_bytes()),
        }
    }
    if filters.is_empty() {
        log::error(b"ats_wasm: no filter could be loaded; the plugin installs no hooks");
        return;
    }
    let Some(slot) = TxnSlot::reserve("ats_wasm", "ats-wasm per-transaction filter contexts") else {
        log::error(b"ats_wasm: no transaction user argument slot is free; the plugin installs no hooks");
        return;
    };
    let cont = TxnCont::new::<Hooks>();
    let plugin = Plugin { filters, max_memory_bytes: args.max_memory_bytes, slot, cont, _engine: engine };
    if PLUGIN.set(plugin).is_err() {
        log::error(b"ats_wasm: the plugin was initialized twice; the second configuration is ignored");
        return;
    }
    cont.add_global(HttpHook::ReadRequestHdr);
    telemetry::start(endpoint, filter_snapshots);
}

/// Every filter's name, pool counters and metrics (for the metrics threads).
fn filter_snapshots() -> Vec<telemetry::FilterSnapshot> {
    let filters = PLUGIN.get().map(|p| &p.filters[..]).unwrap_or_default();
    filters
        .iter()
        .map(|f| telemetry::FilterSnapshot { name: f.name.clone(), pool: f.pool.stats(), metrics: f.metrics.clone() })
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
