//! Reload and generation counters: written by the plugin's reload and generation rooms, read
//! by the metrics endpoint.
#![forbid(unsafe_code)]

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Process-wide generation counters (plain atomics: written a few times per reload).
pub struct GenerationCounters {
    /// The number of the generation new transactions use (0 before start-up published one).
    pub current: AtomicU64,
    /// Generations alive: the current one and those still held by transactions or calls.
    pub live: AtomicU64,
    /// Reloads that published a new generation.
    pub reloads_ok: AtomicU64,
    /// Reloads that failed and changed nothing.
    pub reloads_failed: AtomicU64,
    /// Remap rule instances alive: those of the current remap.config and deleted ones still
    /// held by transactions in flight.
    pub remap_live: AtomicU64,
    /// Remap rule instances that could not be created (a bad `@pparam`, YAML or module).
    pub remap_failed: AtomicU64,
}

/// The one set of generation counters.
pub static GENERATIONS: GenerationCounters = GenerationCounters {
    current: AtomicU64::new(0),
    live: AtomicU64::new(0),
    reloads_ok: AtomicU64::new(0),
    reloads_failed: AtomicU64::new(0),
    remap_live: AtomicU64::new(0),
    remap_failed: AtomicU64::new(0),
};

/// `ats_wasm_reloads_total{result}`, `ats_wasm_generation` and `ats_wasm_generations_live`.
pub fn render_generations(out: &mut String) {
    let g = &GENERATIONS;
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = write!(
        out,
        "# HELP ats_wasm_reloads_total Reloads of the filter configuration, by result (ok: a new generation serves; failed: nothing changed).\n\
         # TYPE ats_wasm_reloads_total counter\n\
         ats_wasm_reloads_total{{result=\"ok\"}} {}\n\
         ats_wasm_reloads_total{{result=\"failed\"}} {}\n\
         # HELP ats_wasm_generation The configuration generation new transactions use (1 at start-up, +1 per successful reload).\n\
         # TYPE ats_wasm_generation gauge\n\
         ats_wasm_generation {}\n\
         # HELP ats_wasm_generations_live Generations alive: the current one and those still held by transactions in flight.\n\
         # TYPE ats_wasm_generations_live gauge\n\
         ats_wasm_generations_live {}\n\
         # HELP ats_wasm_remap_instances_live Remap rules' filter chains alive: the current remap.config's and deleted ones still held by transactions in flight.\n\
         # TYPE ats_wasm_remap_instances_live gauge\n\
         ats_wasm_remap_instances_live {}\n\
         # HELP ats_wasm_remap_instances_failed_total Remap rules whose filter chain could not be created (bad @pparam, YAML or module).\n\
         # TYPE ats_wasm_remap_instances_failed_total counter\n\
         ats_wasm_remap_instances_failed_total {}\n",
        l(&g.reloads_ok),
        l(&g.reloads_failed),
        l(&g.current),
        l(&g.live),
        l(&g.remap_live),
        l(&g.remap_failed),
    );
}
