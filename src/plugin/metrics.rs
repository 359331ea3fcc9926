//! Observability: the Prometheus endpoint (`--metrics-listen`) and ATS's own stats.
//!
//! - Guest callback durations go into `ats_wasm_hook_duration_seconds{filter,hook}` histograms
//!   kept per thread ([`HookTimer`]: a TSC clock read before and after, one bucket search and
//!   two owner-only relaxed stores, no read-modify-write shared between threads), summed when
//!   Prometheus scrapes. (The `metrics` crate's histogram handle measured 80 ns per callback on
//!   one thread and twice that with two threads contending on its shared sample buffer; this
//!   path is several times cheaper.)
//! - Failures and failure-policy outcomes are counters (`metrics` crate handles in a
//!   [`PrometheusRecorder`], registered once per filter) and ATS stats
//!   (`proxy.plugin.ats_wasm.<filter>.*`).
//! - Pool state ([`VmPool::stats`](ats_wasm_pool::VmPool::stats)) and the guests' own metrics
//!   ([`Metrics::snapshot`]) are read when Prometheus scrapes, and rendered here next to the
//!   recorder's text (the exporter cannot carry pre-bucketed guest histograms, so it does not
//!   serve HTTP itself: a small blocking server on its own thread does). ATS stats of the
//!   pools are refreshed every [`REFRESH`] by a second thread.
//!
//! Neither thread is an ATS thread, calls into a guest or holds a lock a hook takes; both are
//! detached, so they never keep `traffic_server` from exiting. With `--metrics-listen=off`
//! (or a port that cannot be bound) there is no recorder, callbacks are not timed and only
//! the ATS stats are kept.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{Counter, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use thread_local::ThreadLocal;

use crate::abi::guest_metrics::HISTOGRAM_BUCKETS;
use crate::abi::{Callback, CallbackObserver, MetricSnapshot, MetricType, Metrics, Observer};
use crate::ts::log;
use crate::ts::stats::Stat;

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
const HOOK_BUCKET_LABELS: [&str; 19] = [
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

/// Guest callbacks that failed, by `reason` (`trap`, `deadline`, `memory_cap`).
pub const CALLBACK_FAILURES: &str = "ats_wasm_callback_failures_total";

/// Transactions a failure-policy decision applied to, by `outcome` (`fail_open`,
/// `fail_closed`).
pub const FAILURE_OUTCOMES: &str = "ats_wasm_failure_outcomes_total";

/// How often the pools' ATS stats are refreshed and the recorder's upkeep runs.
pub const REFRESH: Duration = Duration::from_secs(2);

/// The prefix of guest metric names.
pub const GUEST_PREFIX: &str = "ats_wasm_guest_";

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

    fn ats_stat(self) -> &'static str {
        match self {
            FailureReason::Trap => "traps",
            FailureReason::Deadline => "deadline_hits",
            FailureReason::MemoryCap => "memory_cap_hits",
            FailureReason::PauseTimeout => "pause_timeouts",
        }
    }
}

/// The Prometheus side, when the endpoint is on.
pub struct Exporter {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    clock: quanta::Clock,
}

impl Exporter {
    /// The recorder of the counters, and the callback clock (calibrated here, once).
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        Exporter { recorder: Arc::new(recorder), handle, clock: quanta::Clock::new() }
    }

    fn describe(&self) {
        self.recorder.describe_counter(
            CALLBACK_FAILURES.into(),
            None,
            "Guest callbacks that failed, by filter and reason (trap, deadline, memory_cap).".into(),
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

impl Default for Exporter {
    fn default() -> Self {
        Self::new()
    }
}

/// Times one filter's callbacks into [`HOOK_DURATION`], per thread.
pub struct HookTimer {
    clock: quanta::Clock,
    threads: ThreadLocal<Box<ThreadHooks>>,
}

impl HookTimer {
    fn new(clock: quanta::Clock) -> Self {
        HookTimer { clock, threads: ThreadLocal::new() }
    }

    /// Records one callback of `ns` nanoseconds on this thread.
    fn record(&self, callback: Callback, ns: u64) {
        let t = self.threads.get_or(Box::default);
        let i = HOOK_BUCKETS_NS.iter().position(|&b| ns <= b).unwrap_or(HOOK_BUCKETS_NS.len());
        bump(&t.buckets[callback.index()][i], 1);
        bump(&t.sum_ns[callback.index()], ns);
    }

    /// Per callback: the bucket counts (not cumulative) and the sum in ns, over all threads.
    fn totals(&self) -> Vec<(Callback, [u64; HOOK_BUCKETS_NS.len() + 1], u64)> {
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

/// One filter's counters: Prometheus handles (when the endpoint is on) and ATS stats.
pub struct FilterMetrics {
    timer: Option<Arc<HookTimer>>,
    observer: Observer,
    failures: Option<[Counter; FailureReason::ALL.len()]>,
    outcomes: Option<[Counter; 2]>,
    ats: AtsStats,
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
    /// Creates filter `name`'s ATS stats and, with an exporter, its Prometheus handles. Runs in
    /// `TSPluginInit`.
    pub fn new(name: &str, exporter: Option<&Exporter>) -> Arc<Self> {
        let stat = |s: &str| {
            let n = ats_stat_name(name, s);
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
        let failures = exporter.map(|e| {
            FailureReason::ALL.map(|r| e.counter(CALLBACK_FAILURES, vec![filter(), Label::new("reason", r.label())]))
        });
        let outcomes = exporter.map(|e| {
            ["fail_open", "fail_closed"].map(|o| e.counter(FAILURE_OUTCOMES, vec![filter(), Label::new("outcome", o)]))
        });
        let timer = exporter.map(|e| Arc::new(HookTimer::new(e.clock.clone())));
        let observer = Observer(timer.clone().map(|t| t as Arc<dyn CallbackObserver>));
        Arc::new(FilterMetrics { timer, observer, failures, outcomes, ats })
    }

    /// Without ATS stats (unit tests: they cannot call ATS).
    #[cfg(test)]
    fn new_untracked(e: &Exporter) -> Arc<Self> {
        let timer = Some(Arc::new(HookTimer::new(e.clock.clone())));
        Arc::new(FilterMetrics {
            observer: Observer(timer.clone().map(|t| t as Arc<dyn CallbackObserver>)),
            timer,
            failures: None,
            outcomes: None,
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

    /// Copies the pool's totals into the ATS stats (any thread).
    fn refresh_ats(&self, pool: &ats_wasm_pool::PoolStats) {
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

/// What the scrape renders about each filter: its name, its pool's counters, its metrics.
pub struct FilterSnapshot {
    /// The filter's name.
    pub name: String,
    /// Its pool's counters.
    pub pool: ats_wasm_pool::PoolStats,
    /// Its counters and callback histograms.
    pub metrics: Arc<FilterMetrics>,
}

/// Prepares the endpoint in `TSPluginInit`: binds `listen` (so a port in use is reported
/// there, as one diags.log line) and creates the recorder. `None` when off or on failure; the
/// filters then run untimed.
pub fn prepare(listen: Option<SocketAddr>) -> Option<(TcpListener, Exporter)> {
    let addr = listen?;
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            log::error(
                format!("ats_wasm: --metrics-listen={addr}: cannot listen: {e}; the Prometheus endpoint is off, filters still run")
                    .as_bytes(),
            );
            return None;
        }
    };
    Some((listener, Exporter::new()))
}

/// Starts the endpoint's thread (serving `listener`) and the refresh thread. `filters` reads
/// the filters' names, pool counters and metrics.
pub fn start(listener: Option<(TcpListener, Exporter)>, filters: fn() -> Vec<FilterSnapshot>) {
    let handle = listener.as_ref().map(|(_, e)| e.handle.clone());
    if let Some((listener, exporter)) = listener {
        exporter.describe();
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let spawned = std::thread::Builder::new().name("ats_wasm-metrics".into()).spawn(move || {
            let busy = Arc::new(AtomicUsize::new(0));
            for conn in listener.incoming().flatten() {
                serve_on_own_thread(conn, &exporter.handle, filters, &busy);
            }
        });
        match spawned {
            Ok(_) => log::note(format!("ats_wasm: Prometheus endpoint on http://{addr}/metrics").as_bytes()),
            Err(e) => log::error(format!("ats_wasm: cannot start the Prometheus endpoint's thread: {e}").as_bytes()),
        }
    }
    let spawned = std::thread::Builder::new().name("ats_wasm-stats".into()).spawn(move || {
        loop {
            std::thread::sleep(REFRESH);
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for f in filters() {
                    f.metrics.refresh_ats(&f.pool);
                }
                if let Some(h) = &handle {
                    h.run_upkeep();
                }
            }));
        }
    });
    if let Err(e) = spawned {
        log::error(format!("ats_wasm: cannot start the stats thread: {e}; pool stats stay 0").as_bytes());
    }
}

/// At most this many connections are served at once; more are closed unanswered.
const MAX_CONCURRENT_SCRAPES: usize = 8;

/// Serves `conn` on a thread of its own, so that a client that connects and sends nothing
/// (or reads slowly) holds only its own connection, for at most the 5 s timeouts, and never
/// delays other scrapers.
fn serve_on_own_thread(
    conn: TcpStream,
    handle: &PrometheusHandle,
    filters: fn() -> Vec<FilterSnapshot>,
    busy: &Arc<AtomicUsize>,
) {
    if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT_SCRAPES {
        busy.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let (handle, busy2) = (handle.clone(), Arc::clone(busy));
    let spawned = std::thread::Builder::new().name("ats_wasm-scrape".into()).spawn(move || {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = serve(conn, &handle, filters);
        }));
        busy2.fetch_sub(1, Ordering::AcqRel);
    });
    if spawned.is_err() {
        busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers one HTTP/1.x request: `GET /metrics` (or `/`) gets the text format, anything else
/// 404. One request per connection.
fn serve(conn: TcpStream, handle: &PrometheusHandle, filters: fn() -> Vec<FilterSnapshot>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Skip the header fields.
    let mut field = String::new();
    while reader.read_line(&mut field)? > 2 {
        field.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let mut conn = conn;
    if (method == "GET" || method == "HEAD") && (path == "/metrics" || path == "/") {
        let body = render(handle, &filters(), &Metrics::global().snapshot());
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes())?;
        if method == "GET" {
            conn.write_all(body.as_bytes())?;
        }
    } else {
        conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 27\r\nConnection: close\r\n\r\nonly /metrics is served here")?;
    }
    conn.flush()
}

/// The whole scrape: the recorder's metrics, the pools' and the guests'.
pub fn render(handle: &PrometheusHandle, filters: &[FilterSnapshot], guest: &[MetricSnapshot]) -> String {
    let mut out = handle.render();
    render_hooks(&mut out, filters);
    render_pools(&mut out, filters);
    render_guest(&mut out, guest);
    out
}

/// Escapes a label value (`\`, `"` and newlines).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The callback histograms of every filter, for the callbacks that ran at least once.
pub fn render_hooks(out: &mut String, filters: &[FilterSnapshot]) {
    let _ = writeln!(
        out,
        "# HELP {HOOK_DURATION} Duration of one guest callback, by filter and callback (hook).\n# TYPE {HOOK_DURATION} histogram"
    );
    for f in filters {
        let Some(timer) = &f.metrics.timer else { continue };
        let filter = label_value(&f.name);
        for (callback, buckets, sum_ns) in timer.totals() {
            let count: u64 = buckets.iter().fold(0, |a, b| a.wrapping_add(*b));
            if count == 0 {
                continue;
            }
            let labels = format!("filter=\"{filter}\",hook=\"{}\"", callback.label());
            let mut cumulative = 0u64;
            for (i, n) in buckets.iter().enumerate() {
                cumulative = cumulative.wrapping_add(*n);
                let le = HOOK_BUCKET_LABELS.get(i).copied().unwrap_or("+Inf");
                let _ = writeln!(out, "{HOOK_DURATION}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{HOOK_DURATION}_sum{{{labels}}} {}", sum_ns as f64 / 1e9);
            let _ = writeln!(out, "{HOOK_DURATION}_count{{{labels}}} {count}");
        }
    }
}

/// The pools' counters, per filter and pool thread.
pub fn render_pools(out: &mut String, filters: &[FilterSnapshot]) {
    type Field = fn(&ats_wasm_pool::ThreadStats) -> u64;
    let series: [(&str, &str, &str, Field); 7] = [
        ("ats_wasm_pool_ready_vms", "gauge", "VMs ready to lease, per filter and pool thread.", |t| t.ready),
        ("ats_wasm_pool_leased_vms", "gauge", "VMs leased by transactions now, per filter and pool thread.", |t| {
            t.leased
        }),
        ("ats_wasm_pool_instantiations_total", "counter", "VMs created (instantiated and initialized).", |t| {
            t.instantiations
        }),
        ("ats_wasm_pool_init_failures_total", "counter", "Failed VM creations (instantiation or initializer).", |t| {
            t.init_failures
        }),
        (
            "ats_wasm_pool_misses_total",
            "counter",
            "Leases that found no ready VM and created one on the request path.",
            |t| t.misses,
        ),
        ("ats_wasm_pool_poisonings_total", "counter", "VMs discarded after a failed callback.", |t| t.poisonings),
        ("ats_wasm_pool_cross_thread_returns_total", "counter", "Leases released on another thread.", |t| {
            t.cross_thread_returns
        }),
    ];
    for (name, kind, help, field) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for f in filters {
            let filter = label_value(&f.name);
            for t in &f.pool.threads {
                let _ = writeln!(out, "{name}{{filter=\"{filter}\",thread=\"{}\"}} {}", t.thread, field(t));
            }
        }
    }
}

/// A guest metric's name as exported: [`GUEST_PREFIX`] + the name with every character other
/// than ASCII letters, digits and `_` replaced by `_`; counters end in `_total` (added unless
/// the name ends so already).
pub fn guest_metric_name(name: &str, kind: MetricType) -> String {
    let mut out = String::with_capacity(GUEST_PREFIX.len() + name.len() + 6);
    out.push_str(GUEST_PREFIX);
    out.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
    if kind == MetricType::Counter && !out.ends_with("_total") {
        out.push_str("_total");
    }
    out
}

/// The guests' metrics (process-wide: one value per name, whichever filter defined it).
/// Names that collide after sanitizing get `_2`, `_3`… in definition order.
pub fn render_guest(out: &mut String, guest: &[MetricSnapshot]) {
    let mut seen = HashSet::new();
    for m in guest {
        let base = guest_metric_name(&m.name, m.kind);
        let mut name = base.clone();
        let mut n = 1;
        while !seen.insert(name.clone()) {
            n += 1;
            name = match base.strip_suffix("_total") {
                Some(stem) if m.kind == MetricType::Counter => format!("{stem}_{n}_total"),
                _ => format!("{base}_{n}"),
            };
        }
        let help = m.name.replace('\\', "\\\\").replace('\n', "\\n");
        let kind = match m.kind {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} Guest metric \"{help}\" (proxy_define_metric).\n# TYPE {name} {kind}");
        match m.kind {
            MetricType::Counter => {
                let _ = writeln!(out, "{name} {}", m.value.max(0));
            }
            MetricType::Gauge => {
                let _ = writeln!(out, "{name} {}", m.value);
            }
            MetricType::Histogram => {
                let mut cumulative = 0u64;
                for (i, count) in m.buckets.iter().enumerate() {
                    cumulative = cumulative.wrapping_add(*count);
                    match HISTOGRAM_BUCKETS.get(i) {
                        Some(le) => {
                            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                        }
                        None => {
                            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                        }
                    }
                }
                let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", m.sum, m.count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_names_are_sanitized_prefixed_and_counters_end_in_total() {
        assert_eq!(guest_metric_name("ticker.ticks", MetricType::Counter), "ats_wasm_guest_ticker_ticks_total");
        assert_eq!(guest_metric_name("reqs_total", MetricType::Counter), "ats_wasm_guest_reqs_total");
        assert_eq!(guest_metric_name("a-b c:d/é", MetricType::Gauge), "ats_wasm_guest_a_b_c_d__");
        assert_eq!(guest_metric_name("9lives", MetricType::Histogram), "ats_wasm_guest_9lives");
        assert_eq!(guest_metric_name("x_total", MetricType::Gauge), "ats_wasm_guest_x_total");
    }

    #[test]
    fn guest_metrics_render_as_text_format_with_cumulative_buckets_and_unique_names() {
        let m = Metrics::default();
        let c = m.define(MetricType::Counter, b"a.b").unwrap();
        m.increment(c, 7).unwrap();
        let g = m.define(MetricType::Gauge, b"a_b").unwrap();
        m.increment(g, -3).unwrap();
        let c2 = m.define(MetricType::Counter, b"a-b").unwrap();
        m.increment(c2, 1).unwrap();
        let h = m.define(MetricType::Histogram, b"lat\"ms").unwrap();
        for v in [0, 3, 7, 9_999_999] {
            m.record(h, v).unwrap();
        }
        let mut out = String::new();
        render_guest(&mut out, &m.snapshot());
        assert!(out.contains("# TYPE ats_wasm_guest_a_b_total counter\nats_wasm_guest_a_b_total 7\n"), "{out}");
        // The gauge does not collide with the counter (different suffix); the second counter does.
        assert!(out.contains("# TYPE ats_wasm_guest_a_b gauge\nats_wasm_guest_a_b -3\n"), "{out}");
        assert!(out.contains("# TYPE ats_wasm_guest_a_b_2_total counter\nats_wasm_guest_a_b_2_total 1\n"), "{out}");
        assert!(out.contains("# HELP ats_wasm_guest_lat_ms Guest metric \"lat\"ms\" (proxy_define_metric)."), "{out}");
        assert!(out.contains("ats_wasm_guest_lat_ms_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("ats_wasm_guest_lat_ms_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("ats_wasm_guest_lat_ms_bucket{le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("ats_wasm_guest_lat_ms_bucket{le=\"3600000\"} 3\n"), "{out}");
        assert!(out.contains("ats_wasm_guest_lat_ms_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("ats_wasm_guest_lat_ms_sum 10000009\nats_wasm_guest_lat_ms_count 4\n"), "{out}");
        let samples = out.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 3 + HISTOGRAM_BUCKETS.len() + 1 + 2);
    }

    #[test]
    fn hook_timer_records_per_thread_into_explicit_buckets() {
        let e = Exporter::new();
        let fm = FilterMetrics::new_untracked(&e);
        let t = fm.timer.clone().unwrap();
        t.record(Callback::RequestHeaders, 3_000);
        std::thread::scope(|s| {
            s.spawn(|| t.record(Callback::RequestHeaders, 2_000_000));
        });
        t.record(Callback::Log, 2_000_000_000);
        // The observer API: start then finish measures real time.
        let o = fm.observer().0.unwrap();
        let started = o.start();
        std::thread::sleep(Duration::from_millis(3));
        o.finish(Callback::Tick, started);
        let text =
            render(&e.handle, &[FilterSnapshot { name: "f\"1".into(), pool: Default::default(), metrics: fm }], &[]);
        let rh = "filter=\"f\\\"1\",hook=\"request_headers\"";
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{rh},le=\"0.000001\"}} 0\n")), "{text}");
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{rh},le=\"0.000005\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{rh},le=\"0.0025\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("{HOOK_DURATION}_sum{{{rh}}} 0.002003\n")), "{text}");
        assert!(text.contains(&format!("{HOOK_DURATION}_count{{{rh}}} 2\n")), "{text}");
        let log = "filter=\"f\\\"1\",hook=\"log\"";
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{log},le=\"1\"}} 0\n")), "{text}");
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{log},le=\"+Inf\"}} 1\n")), "{text}");
        let tick = "filter=\"f\\\"1\",hook=\"tick\"";
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{tick},le=\"0.0025\"}} 0\n")), "{text}");
        // At least 3 ms; no upper bound: a loaded machine may sleep much longer.
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{tick},le=\"+Inf\"}} 1\n")), "3 ms: {text}");
        assert!(!text.contains("hook=\"done\""), "callbacks that never ran are left out: {text}");
        assert_eq!(text.matches(&format!("# TYPE {HOOK_DURATION} histogram")).count(), 1);
    }

    #[test]
    fn pools_render_per_filter_and_thread() {
        let pool = ats_wasm_pool::PoolStats {
            threads: vec![
                ats_wasm_pool::ThreadStats { thread: 0, ready: 2, misses: 5, ..Default::default() },
                ats_wasm_pool::ThreadStats { thread: 1, ready: 1, leased: 1, ..Default::default() },
            ],
        };
        let mut out = String::new();
        let e = Exporter::new();
        let metrics = FilterMetrics::new_untracked(&e);
        render_pools(&mut out, &[FilterSnapshot { name: "f".into(), pool, metrics }]);
        assert!(out.contains("ats_wasm_pool_ready_vms{filter=\"f\",thread=\"0\"} 2\n"), "{out}");
        assert!(out.contains("ats_wasm_pool_leased_vms{filter=\"f\",thread=\"1\"} 1\n"), "{out}");
        assert!(out.contains("# TYPE ats_wasm_pool_misses_total counter\n"), "{out}");
        assert!(out.contains("ats_wasm_pool_misses_total{filter=\"f\",thread=\"0\"} 5\n"), "{out}");
    }

    #[test]
    fn ats_stat_names_keep_safe_characters() {
        assert_eq!(ats_stat_name("add-headers", "requests"), "proxy.plugin.ats_wasm.add-headers.requests");
        assert_eq!(ats_stat_name("my filter.v2", "traps"), "proxy.plugin.ats_wasm.my_filter_v2.traps");
    }
}
