//! The hot path: guest callback durations, per filter, callback and thread.
//!
//! A [`HookTimer`] is the [`CallbackObserver`] of one filter: a TSC clock read before and after
//! each callback, one bucket search and two owner-only relaxed stores (no read-modify-write
//! shared between threads). The scrape sums the threads ([`HookTimer::totals`]). (The `metrics`
//! crate's histogram handle measured 80 ns per callback on one thread and twice that with two
//! threads contending on its shared sample buffer; this path is several times cheaper.)
//!
//! Nothing here takes a lock, allocates after a thread's first callback, or knows about HTTP or
//! the text format.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use thread_local::ThreadLocal;

use crate::abi::{Callback, CallbackObserver};

/// The histogram of guest callback durations.
pub const HOOK_DURATION: &str = "ats_wasm_hook_duration_seconds";

/// Its buckets' upper bounds in nanoseconds: 1 µs to 1 s (a last bucket `+Inf` is implied).
pub const HOOK_BUCKETS_NS: [u64; 19] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// The same bounds in seconds, as the `le` labels show them.
pub(super) const HOOK_BUCKET_LABELS: [&str; 19] = [
    "0.000001",
    "0.0000025",
    "0.000005",
    "0.00001",
    "0.000025",
    "0.00005",
    "0.0001",
    "0.00025",
    "0.0005",
    "0.001",
    "0.0025",
    "0.005",
    "0.01",
    "0.025",
    "0.05",
    "0.1",
    "0.25",
    "0.5",
    "1",
];

/// One thread's callback histograms of one filter: per callback, the count in each bucket of
/// [`HOOK_BUCKETS_NS`] (then `+Inf`, not cumulative) and the sum in nanoseconds. Written only
/// by the owning thread (relaxed load + store), read by the scrape.
struct ThreadHooks {
    buckets: [[AtomicU64; HOOK_BUCKETS_NS.len() + 1]; Callback::ALL.len()],
    sum_ns: [AtomicU64; Callback::ALL.len()],
}

impl Default for ThreadHooks {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            sum_ns: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Adds `n` to a counter only the calling thread writes.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Per callback: the bucket counts over all threads (not cumulative, last one `+Inf`) and the
/// sum in nanoseconds.
pub(super) type CallbackTotals = (Callback, [u64; HOOK_BUCKETS_NS.len() + 1], u64);

/// Times one filter's callbacks into [`HOOK_DURATION`], per thread.
pub struct HookTimer {
    clock: quanta::Clock,
    threads: ThreadLocal<Box<ThreadHooks>>,
}

impl HookTimer {
    /// A timer reading `clock` (a clone of the exporter's, calibrated once).
    pub(super) fn new(clock: quanta::Clock) -> Self {
        HookTimer { clock, threads: ThreadLocal::new() }
    }

    /// Records one callback of `ns` nanoseconds on this thread.
    pub(super) fn record(&self, callback: Callback, ns: u64) {
        let t = self.threads.get_or(Box::default);
        let i = HOOK_BUCKETS_NS.iter().position(|&b| ns <= b).unwrap_or(HOOK_BUCKETS_NS.len());
        bump(&t.buckets[callback.index()][i], 1);
        bump(&t.sum_ns[callback.index()], ns);
    }

    /// Per callback: the bucket counts (not cumulative) and the sum in ns, over all threads.
    pub(super) fn totals(&self) -> Vec<CallbackTotals> {
        Callback::ALL
            .iter()
            .map(|&c| {
                let mut buckets = [0u64; HOOK_BUCKETS_NS.len() + 1];
                let mut sum = 0u64;
                for t in self.threads.iter() {
                    for (b, v) in buckets.iter_mut().zip(&t.buckets[c.index()]) {
                        *b = b.wrapping_add(v.load(Ordering::Relaxed));
                    }
                    sum = sum.wrapping_add(t.sum_ns[c.index()].load(Ordering::Relaxed));
                }
                (c, buckets, sum)
            })
            .collect()
    }
}

impl CallbackObserver for HookTimer {
    fn start(&self) -> u64 {
        self.clock.raw()
    }

    fn finish(&self, callback: Callback, started: u64) {
        let ns = self.clock.delta_as_nanos(started, self.clock.raw());
        self.record(callback, ns);
    }
}
