//! Live-object gauges: how many per-transaction states, body transforms and HTTP calls in
//! flight the plugin holds right now. Each of them can hold a generation (and with it its
//! VMs), so a count that does not return to its idle value after the traffic stopped is a
//! leak: `ats_wasm_live_objects{kind}`.
#![forbid(unsafe_code)]

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds counted, by index into [`LIVE`].
pub const KINDS: [&str; 3] = ["transaction_state", "body_transform", "http_call"];
/// A transaction's state (`TxnState`): from its first filter context to `TXN_CLOSE`.
pub const TXN_STATE: usize = 0;
/// A body transform's state (`Flow`): until ATS closes the transform.
pub const BODY_TRANSFORM: usize = 1;
/// An HTTP call's entry in its thread's table: until its outcome is delivered or dropped.
pub const HTTP_CALL: usize = 2;

static LIVE: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// A field that counts its owner alive in [`LIVE`]`[K]` (no bytes: one relaxed add when made,
/// one when dropped).
pub struct Counted<const K: usize>(());

impl<const K: usize> Counted<K> {
    /// Counts one more object of kind `K`.
    pub fn new() -> Self {
        LIVE[K].fetch_add(1, Ordering::Relaxed);
        Counted(())
    }
}

impl<const K: usize> Default for Counted<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const K: usize> Drop for Counted<K> {
    fn drop(&mut self) {
        LIVE[K].fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many objects of kind `k` are alive.
pub fn live(k: usize) -> u64 {
    LIVE[k].load(Ordering::Relaxed)
}

/// `ats_wasm_live_objects{kind}`.
pub fn render_objects(out: &mut String) {
    out.push_str(
        "# HELP ats_wasm_live_objects Per-transaction objects alive (transaction_state: transactions with a filter context; body_transform: body transforms ATS has not closed; http_call: calls in flight); each returns to 0 when traffic stops.\n\
         # TYPE ats_wasm_live_objects gauge\n",
    );
    for (k, kind) in KINDS.iter().enumerate() {
        let _ = writeln!(out, "ats_wasm_live_objects{{kind=\"{kind}\"}} {}", live(k));
    }
}
