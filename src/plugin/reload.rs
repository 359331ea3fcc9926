//! Reloads and status, on the operator's request: `traffic_ctl config reload` and
//! `traffic_ctl plugin msg ats_wasm reload` build a new generation on an ATS task thread —
//! every filter file named in `plugin.config` read again, each module read (and compiled,
//! unless unchanged or in `--module-cache`), each filter's initializer run once — and publish
//! it with one swap. The plugin arguments stay as ATS loaded them.
//!
//! A reload is all or nothing: if any file or module fails, one ERROR line names it and the
//! current generation keeps serving. Requests that arrive while a reload is being built are
//! coalesced into one more reload after it, never run beside it.
//!
//! `traffic_ctl plugin msg ats_wasm status` writes one NOTE line per filter of the current
//! generation (number, module SHA-256 prefix, isolation, VMs ready and leased).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::PLUGIN;
use super::delivery;
use super::generation::{self, Generation};
use super::telemetry::GENERATIONS;
use crate::ts::control::{ControlHandler, register_control, run_on_task_thread};
use crate::ts::hooks::TimerHandler;
use crate::ts::log;

/// A reload was asked for and has not started yet.
static WANTED: AtomicBool = AtomicBool::new(false);
/// A task thread is building reloads.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// The tag `traffic_ctl plugin msg` addresses the plugin by.
const TAG: &[u8] = b"ats_wasm";

/// Registers for `traffic_ctl config reload` and `traffic_ctl plugin msg ats_wasm …`.
pub(super) fn register() {
    register_control::<Control>(c"ats_wasm");
}

struct Control;

impl ControlHandler for Control {
    fn on_config_reload() {
        request();
    }

    fn on_message(tag: &[u8], data: &[u8]) {
        if tag != TAG {
            return;
        }
        match data.trim_ascii() {
            b"reload" => request(),
            b"status" => status(),
            other => log::warning(
                format!(
                    "ats_wasm: unknown message \"{}\" (known: reload, status)",
                    String::from_utf8_lossy(other).escape_debug()
                )
                .as_bytes(),
            ),
        }
    }
}

/// Asks for a reload: starts a builder on a task thread unless one is running (which then
/// builds once more).
fn request() {
    WANTED.store(true, Ordering::SeqCst);
    if !RUNNING.swap(true, Ordering::SeqCst) && !run_on_task_thread::<Build>(0) {
        RUNNING.store(false, Ordering::SeqCst);
        log::error(b"ats_wasm: reload failed: ATS refused to schedule it on a task thread; nothing changed");
    }
}

/// Builds reloads on a task thread until none is wanted.
struct Build;

impl TimerHandler for Build {
    fn on_timer(_: usize) {
        loop {
            while WANTED.swap(false, Ordering::SeqCst) {
                reload_once();
            }
            RUNNING.store(false, Ordering::SeqCst);
            // A request that came after the last check found RUNNING set and left the work to
            // this thread: take it, unless another builder already did.
            if !WANTED.load(Ordering::SeqCst) || RUNNING.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }
}

/// Builds the next generation from the files as they are now and publishes it, or reports
/// why not and changes nothing.
fn reload_once() {
    let (Some(p), Some(old)) = (PLUGIN.get(), generation::current()) else { return };
    let started = Instant::now();
    let filters = match p.loader.rebuild() {
        Ok(f) => f,
        Err(e) => {
            GENERATIONS.reloads_failed.fetch_add(1, Ordering::Relaxed);
            log::error(
                format!("ats_wasm: reload failed: {e}; nothing changed, generation {} keeps serving", old.number)
                    .as_bytes(),
            );
            return;
        }
    };
    let g = Generation::new(old.number + 1, filters);
    let (number, names) = (g.number, g.filters.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", "));
    p.loader.keep_modules_of(&g);
    let replaced = generation::publish(g);
    GENERATIONS.reloads_ok.fetch_add(1, Ordering::Relaxed);
    log::note(
        format!(
            "ats_wasm: reload: generation {number} ({names}) serves new transactions, built in {} ms; generation {} retires when its last transaction ends",
            started.elapsed().as_millis(),
            old.number
        )
        .as_bytes(),
    );
    delivery::adopt_everywhere();
    // Not held here any more: it retires wherever its last holder lets go.
    drop((old, replaced));
}

/// One NOTE line per filter of the current generation, and one for the generations alive.
fn status() {
    let Some(g) = generation::current() else {
        log::note(b"ats_wasm: status: no generation (the plugin did not start)");
        return;
    };
    log::note(
        format!(
            "ats_wasm: status: generation {} serves new transactions; generations alive: {}; reloads ok {}, failed {}",
            g.number,
            GENERATIONS.live.load(Ordering::Relaxed),
            GENERATIONS.reloads_ok.load(Ordering::Relaxed),
            GENERATIONS.reloads_failed.load(Ordering::Relaxed),
        )
        .as_bytes(),
    );
    for f in &g.filters {
        let pools = [Some(&f.pool), f.tick_pool.as_ref()];
        let (ready, leased) = pools
            .into_iter()
            .flatten()
            .map(|p| p.stats().total())
            .fold((0, 0), |(r, l), t| (r + t.ready, l + t.leased));
        log::note(
            format!(
                "ats_wasm: status: generation {}, filter \"{}\": module {}, isolation {}, VMs ready {ready}, leased {leased}",
                g.number,
                f.name,
                &f.module_hash[..f.module_hash.len().min(12)],
                f.isolation(),
            )
            .as_bytes(),
        );
    }
}
