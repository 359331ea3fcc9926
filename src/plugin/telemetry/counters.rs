//! What each filter records besides callback durations: failures and failure-policy outcomes
//! as Prometheus counters (`metrics` crate handles in a [`PrometheusRecorder`], registered once
//! per filter) and as ATS stats (`proxy.plugin.ats_wasm.<filter>.*`), and its pool's totals
//! copied into ATS stats. [`FilterMetrics`] bundles them with the filter's [`HookTimer`].
//!
//! Everything is registered in `TSPluginInit`, so a transaction only increments handles that
//! already exist (no lookup by name, no registration on the request path).

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::timing::HookTimer;
use crate::abi::{CallbackObserver, Observer, SharedBound};
use crate::ts::log;
use crate::ts::stats::Stat;

/// Guest callbacks that failed, by `reason` (`trap`, `deadline`, `memory_cap`).
pub const CALLBACK_FAILURES: &str = "ats_wasm_callback_failures_total";

/// Transactions a failure-policy decision applied to, by `outcome` (`fail_open`,
/// `fail_closed`).
pub const FAILURE_OUTCOMES: &str = "ats_wasm_failure_outcomes_total";

/// Header writes refused because a guest wrote an invalid name or value, by `reason`
/// (`invalid_name`, `invalid_value`).
pub const REJECTED_WRITES: &str = "ats_wasm_rejected_writes_total";

/// Shared-data and shared-queue writes refused by a bound, by `reason` (`value_size`,
/// `total_size`, `queue_items`).
pub const SHARED_DATA_REFUSED: &str = "ats_wasm_shared_data_refused_total";

/// diags.log lines about refused writes: at most this many per filter and minute.
pub(super) const REJECT_LINES_PER_MINUTE: u64 = 5;

/// HTTP calls refused because too many were in flight, by `reason` (`vm`: the VM's
/// `--max-calls-per-vm`; `transaction`: the transaction's `--max-calls-per-txn`).
pub const HTTP_CALLS_REFUSED: &str = "ats_wasm_http_calls_refused_total";

/// diags.log lines about refused calls: at most this many per filter and minute.
pub(super) const REFUSED_CALL_LINES_PER_MINUTE: u64 = 5;

/// diags.log lines about failures: at most this many per filter, reason and minute.
pub const FAILURE_LINES_PER_MINUTE: u64 = 5;

/// How often, at most, one line says how many lines of one kind were left out.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Why a guest callback failed (see `failure_kind` in the plugin).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// A trap (out-of-bounds access, `unreachable`, `proc_exit`…).
    Trap,
    /// The callback ran past its deadline.
    Deadline,
    /// The VM's memory reached `--max-memory`.
    MemoryCap,
    /// A filter kept a transaction paused past `--pause-timeout-ms`.
    PauseTimeout,
}

impl FailureReason {
    const ALL: [FailureReason; 4] =
        [FailureReason::Trap, FailureReason::Deadline, FailureReason::MemoryCap, FailureReason::PauseTimeout];

    fn label(self) -> &'static str {
        match self {
            FailureReason::Trap => "trap",
            FailureReason::Deadline => "deadline",
            FailureReason::MemoryCap => "memory_cap",
            FailureReason::PauseTimeout => "pause_timeout",
        }
    }

    /// How failure lines name the reason: `trap`, `deadline exceeded`, …
    pub fn describe(self) -> &'static str {
        match self {
            FailureReason::Trap => "trap",
            FailureReason::Deadline => "deadline exceeded",
            FailureReason::MemoryCap => "memory cap reached",
            FailureReason::PauseTimeout => "pause timeout",
        }
    }

    fn ats_stat(self) -> &'static str {
        match self {
            FailureReason::Trap => "traps",
            FailureReason::Deadline => "deadline_hits",
            FailureReason::MemoryCap => "memory_cap_hits",
            FailureReason::PauseTimeout => "pause_timeouts",
        }
    }
}

/// The Prometheus side, when the endpoint is on. Clones share the recorder.
#[derive(Clone)]
pub struct Exporter {
    recorder: Arc<PrometheusRecorder>,
    pub(super) handle: PrometheusHandle,
    clock: quanta::Clock,
}

impl Exporter {
    /// The recorder of the counters, and the callback clock (calibrated here, once).
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Exporter { recorder: Arc::new(recorder), handle, clock: quanta::Clock::new() }
    }

    /// Gives the counters their `# HELP` texts.
    pub(super) fn describe(&self) {
        self.recorder.describe_counter(
            CALLBACK_FAILURES.into(),
            None,
            "Guest callbacks that failed, by filter and reason (trap, deadline, memory_cap).".into(),
        );
        self.recorder.describe_counter(
            REJECTED_WRITES.into(),
            None,
            "Header writes refused (BAD_ARGUMENT), by filter and reason (invalid_name, invalid_value).".into(),
        );
        self.recorder.describe_counter(
            HTTP_CALLS_REFUSED.into(),
            None,
            "HTTP calls refused (INTERNAL_FAILURE) because too many were in flight, by filter and reason (vm, transaction).".into(),
        );
        self.recorder.describe_counter(
            SHARED_DATA_REFUSED.into(),
            None,
            "Shared-data and queue writes refused by a bound, by filter and reason (value_size, total_size, \
             queue_items)."
                .into(),
        );
        self.recorder.describe_counter(
            FAILURE_OUTCOMES.into(),
            None,
            "Failure-policy decisions, by filter and outcome (fail_open, fail_closed).".into(),
        );
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
    }
}

impl Default for Exporter {
    fn default() -> Self {
        Self::new()
    }
}

/// The `scope` label of the global filters (`plugin.config`); a remap rule's filters have
/// `remap:<from URL>`.
pub const GLOBAL_SCOPE: &str = "global";

/// One filter's counters: Prometheus handles (when the endpoint is on) and ATS stats.
pub struct FilterMetrics {
    pub(super) timer: Option<Arc<HookTimer>>,
    observer: Observer,
    failures: Option<[Counter; FailureReason::ALL.len()]>,
    outcomes: Option<[Counter; 2]>,
    pub(super) rejected: Option<[Counter; 2]>,
    pub(super) reject_lines: LineBudget,
    pub(super) refused_calls: Option<[Counter; 2]>,
    pub(super) refused_call_lines: LineBudget,
    pub(super) shared_refused: Option<[Counter; SharedBound::ALL.len()]>,
    pub(super) shared_lines: LineBudget,
    /// One per [`FailureReason`], then one for other failures (no VM, a bad body…).
    failure_lines: [LineBudget; FailureReason::ALL.len() + 1],
    ats: AtsStats,
    pub(super) name: String,
}

/// A per-minute budget of diags.log lines, so a guest cannot flood diags.log; what it
/// suppressed is counted and said in a summary line ([`LineBudget::summary`], at most every
/// [`SUMMARY_INTERVAL`]) or in the next line it allows, whichever comes first.
pub(super) struct LineBudget {
    start: Instant,
    minute: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
    /// When the last summary was written, in seconds since `start`.
    summarized: AtomicU64,
}

impl LineBudget {
    fn new() -> Self {
        LineBudget {
            start: Instant::now(),
            minute: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            summarized: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last line about them)` when some were and the last
    /// summary is at least `interval` old.
    fn summary(&self, interval: Duration) -> Option<u64> {
        let now = self.start.elapsed().as_secs();
        if self.suppressed.load(Ordering::Relaxed) == 0
            || now.saturating_sub(self.summarized.load(Ordering::Relaxed)) < interval.as_secs()
        {
            return None;
        }
        self.summarized.store(now, Ordering::Relaxed);
        Some(self.suppressed.swap(0, Ordering::Relaxed)).filter(|n| *n > 0)
    }

    /// `Some(lines suppressed since the last allowed one)` when a line may be written now.
    pub(super) fn allow(&self, per_minute: u64) -> Option<u64> {
        let minute = self.start.elapsed().as_secs() / 60;
        if self.minute.swap(minute, Ordering::Relaxed) != minute {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < per_minute {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// A filter's ATS stats (`proxy.plugin.ats_wasm.<filter>.<stat>`); each is `None` when ATS
/// refused to create it.
struct AtsStats {
    requests: Option<Stat>,
    failures: [Option<Stat>; FailureReason::ALL.len()],
    fail_open: Option<Stat>,
    fail_closed: Option<Stat>,
    pool_misses: Option<Stat>,
    pool_instantiations: Option<Stat>,
    pool_poisonings: Option<Stat>,
}

/// The ATS stat name of `stat` of filter `filter` (characters other than ASCII letters,
/// digits, `_` and `-` in the filter name become `_`).
pub fn ats_stat_name(filter: &str, stat: &str) -> String {
    let f: String =
        filter.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    format!("proxy.plugin.ats_wasm.{f}.{stat}")
}

impl FilterMetrics {
    /// Creates the ATS stats of filter `name` in `scope` (`global`, or `remap:<from URL>`) and,
    /// with an exporter, its Prometheus handles (labelled `filter` and `scope`). A rule's
    /// filter's ATS stats are named after the scope too.
    pub fn new(name: &str, scope: &str, exporter: Option<&Exporter>) -> Arc<Self> {
        let stat_prefix = if scope == GLOBAL_SCOPE { name.to_string() } else { format!("{scope}.{name}") };
        let stat = |s: &str| {
            let n = ats_stat_name(&stat_prefix, s);
            let st = Stat::create(&n);
            if st.is_none() {
                log::warning(format!("ats_wasm: cannot create the ATS stat {n}").as_bytes());
            }
            st
        };
        let ats = AtsStats {
            requests: stat("requests"),
            failures: FailureReason::ALL.map(|r| stat(r.ats_stat())),
            fail_open: stat("fail_open"),
            fail_closed: stat("fail_closed"),
            pool_misses: stat("pool_misses"),
            pool_instantiations: stat("pool_instantiations"),
            pool_poisonings: stat("pool_poisonings"),
        };
        let filter = || Label::new("filter", name.to_string());
        let scope_label = || Label::new("scope", scope.to_string());
        let failures = exporter.map(|e| {
            FailureReason::ALL
                .map(|r| e.counter(CALLBACK_FAILURES, vec![filter(), Label::new("reason", r.label()), scope_label()]))
        });
        let outcomes = exporter.map(|e| {
            ["fail_open", "fail_closed"]
                .map(|o| e.counter(FAILURE_OUTCOMES, vec![filter(), Label::new("outcome", o), scope_label()]))
        });
        let rejected = exporter.map(|e| {
            ["invalid_name", "invalid_value"]
                .map(|r| e.counter(REJECTED_WRITES, vec![filter(), Label::new("reason", r), scope_label()]))
        });
        let refused_calls = exporter.map(|e| {
            ["vm", "transaction"]
                .map(|r| e.counter(HTTP_CALLS_REFUSED, vec![filter(), Label::new("reason", r), scope_label()]))
        });
        let shared_refused = exporter.map(|e| {
            SharedBound::ALL
                .map(|b| e.counter(SHARED_DATA_REFUSED, vec![filter(), Label::new("reason", b.label()), scope_label()]))
        });
        let timer = exporter.map(|e| Arc::new(HookTimer::new(e.clock.clone())));
        let observer = Observer(timer.clone().map(|t| t as Arc<dyn CallbackObserver>));
        Arc::new(FilterMetrics {
            timer,
            observer,
            failures,
            outcomes,
            rejected,
            reject_lines: LineBudget::new(),
            refused_calls,
            refused_call_lines: LineBudget::new(),
            shared_refused,
            shared_lines: LineBudget::new(),
            failure_lines: std::array::from_fn(|_| LineBudget::new()),
            ats,
            name: name.to_string(),
        })
    }

    /// Without ATS stats (unit tests: they cannot call ATS).
    #[cfg(test)]
    pub(super) fn new_untracked(e: &Exporter) -> Arc<Self> {
        let timer = Some(Arc::new(HookTimer::new(e.clock.clone())));
        Arc::new(FilterMetrics {
            observer: Observer(timer.clone().map(|t| t as Arc<dyn CallbackObserver>)),
            timer,
            failures: None,
            outcomes: None,
            rejected: None,
            reject_lines: LineBudget::new(),
            refused_calls: None,
            refused_call_lines: LineBudget::new(),
            shared_refused: None,
            shared_lines: LineBudget::new(),
            failure_lines: std::array::from_fn(|_| LineBudget::new()),
            name: "test".to_string(),
            ats: AtsStats {
                requests: None,
                failures: [None; FailureReason::ALL.len()],
                fail_open: None,
                fail_closed: None,
                pool_misses: None,
                pool_instantiations: None,
                pool_poisonings: None,
            },
        })
    }

    /// The observer to put in the filter's `PluginInfo` (empty when the endpoint is off).
    pub fn observer(&self) -> Observer {
        self.observer.clone()
    }

    /// A transaction reached the filter (its request callback is about to run). ATS threads
    /// only.
    pub fn request(&self) {
        if let Some(s) = self.ats.requests {
            s.increment(1);
        }
    }

    /// A guest callback failed for `reason`. ATS threads only.
    pub fn callback_failed(&self, reason: FailureReason) {
        let i = FailureReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        if let Some(c) = &self.failures {
            c[i].increment(1);
        }
        if let Some(s) = self.ats.failures[i] {
            s.increment(1);
        }
    }

    /// The failure policy decided a transaction's fate: continue without the filter
    /// (`fail_open`) or fail it. ATS threads only.
    pub fn outcome(&self, fail_open: bool) {
        if let Some(c) = &self.outcomes {
            c[usize::from(!fail_open)].increment(1);
        }
        if let Some(s) = if fail_open { self.ats.fail_open } else { self.ats.fail_closed } {
            s.increment(1);
        }
    }

    /// Whether a failure line for `reason` (`None`: a failure that is not the guest's, such as
    /// no VM) may be written now — at most [`FAILURE_LINES_PER_MINUTE`] a minute per filter and
    /// reason — and then what to append to it: how many such lines were left out since the
    /// last line about them. The counters count every failure either way.
    pub fn failure_line(&self, reason: Option<FailureReason>) -> Option<String> {
        let budget = &self.failure_lines[failure_index(reason)];
        budget.allow(FAILURE_LINES_PER_MINUTE).map(left_out)
    }

    /// Writes one line per kind of line that was left out since [`SUMMARY_INTERVAL`] (or
    /// since the last such line), saying how many. Any thread (the stats thread calls it).
    pub(super) fn summarize(&self) {
        let kinds = FailureReason::ALL.iter().map(|r| Some(*r)).chain([None]);
        for (reason, budget) in kinds.zip(&self.failure_lines) {
            if let Some(n) = budget.summary(SUMMARY_INTERVAL) {
                let what = reason.map_or("other", FailureReason::describe);
                log::error(
                    format!(
                        "ats_wasm: filter \"{}\": {n} more failure lines ({what}) left out (at most {FAILURE_LINES_PER_MINUTE} a minute; the counters count every failure)",
                        self.name
                    )
                    .as_bytes(),
                );
            }
        }
        if let Some(n) = self.reject_lines.summary(SUMMARY_INTERVAL) {
            log::warning(
                format!(
                    "ats_wasm: filter \"{}\": {n} more lines about refused header writes left out (at most {REJECT_LINES_PER_MINUTE} a minute; {REJECTED_WRITES} counts every one)",
                    self.name
                )
                .as_bytes(),
            );
        }
    }

    /// Copies the pool's totals into the ATS stats (any thread).
    pub(super) fn refresh_ats(&self, pool: &ats_wasm_pool::PoolStats) {
        let t = pool.total();
        for (stat, v) in [
            (self.ats.pool_misses, t.misses),
            (self.ats.pool_instantiations, t.instantiations),
            (self.ats.pool_poisonings, t.poisonings),
        ] {
            if let Some(s) = stat {
                s.set(v.min(i64::MAX as u64) as i64);
            }
        }
    }
}

/// The index of `reason`'s line budget (`None`: the last).
fn failure_index(reason: Option<FailureReason>) -> usize {
    reason.and_then(|r| FailureReason::ALL.iter().position(|x| *x == r)).unwrap_or(FailureReason::ALL.len())
}

/// What a line that is allowed again appends: how many like it were left out before it.
pub(super) fn left_out(suppressed: u64) -> String {
    if suppressed > 0 { format!(" ({suppressed} more such lines left out)") } else { String::new() }
}

/// What the scrape renders about each filter: its name, its pool's counters, its metrics.
pub struct FilterSnapshot {
    /// The filter's name.
    pub name: String,
    /// `global`, or `remap:<from URL>` for a remap rule's filter.
    pub scope: String,
    /// Its pool's counters.
    pub pool: ats_wasm_pool::PoolStats,
    /// Its counters and callback histograms.
    pub metrics: Arc<FilterMetrics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_budget_allows_a_few_lines_a_minute_and_counts_the_rest() {
        let b = LineBudget::new();
        assert_eq!((0..3).map(|_| b.allow(3)).collect::<Vec<_>>(), [Some(0), Some(0), Some(0)]);
        assert_eq!(b.allow(3), None);
        assert_eq!(b.allow(3), None);
        // A new minute: the first line says how many were left out.
        b.minute.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(b.allow(3), Some(2));
        assert_eq!(b.allow(3), Some(0));
    }

    #[test]
    fn suppressed_lines_are_summarized_at_most_once_an_interval() {
        let b = LineBudget::new();
        assert_eq!(b.allow(1), Some(0));
        assert_eq!(b.summary(Duration::ZERO), None, "nothing was left out");
        assert_eq!((b.allow(1), b.allow(1)), (None, None));
        assert_eq!(b.summary(Duration::from_secs(3600)), None, "the last summary is too recent");
        assert_eq!(b.summary(Duration::ZERO), Some(2));
        assert_eq!(b.summary(Duration::ZERO), None, "said once");
        assert_eq!(b.allow(1), None);
        // A new minute: the next allowed line says what no summary said yet.
        b.minute.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(b.allow(1), Some(1));
        assert_eq!(failure_index(None), FailureReason::ALL.len());
        assert_eq!(failure_index(Some(FailureReason::Deadline)), 1);
    }

    #[test]
    fn ats_stat_names_keep_safe_characters() {
        assert_eq!(ats_stat_name("add-headers", "requests"), "proxy.plugin.ats_wasm.add-headers.requests");
        assert_eq!(ats_stat_name("my filter.v2", "traps"), "proxy.plugin.ats_wasm.my_filter_v2.traps");
    }
}
