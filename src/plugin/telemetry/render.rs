//! The scrape's text: the recorder's counters, then the callback histograms, the pools' state
//! and the guests' metrics, in the Prometheus text format (0.0.4).
//!
//! The histograms are written here rather than by the recorder because the exporter cannot
//! carry pre-bucketed histograms (ours are bucketed on the hot path, the guests' in their
//! registry). Everything is read at scrape time; nothing here runs on an ATS thread.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fmt::Write as _;

use metrics_exporter_prometheus::PrometheusHandle;

use super::counters::FilterSnapshot;
use super::timing::{HOOK_BUCKET_LABELS, HOOK_DURATION};
use crate::abi::guest_metrics::HISTOGRAM_BUCKETS;
use crate::abi::{MetricSnapshot, MetricType};

/// The prefix of guest metric names.
pub const GUEST_PREFIX: &str = "ats_wasm_guest_";

/// The whole scrape: the recorder's metrics, the pools' and the guests'.
pub fn render(handle: &PrometheusHandle, filters: &[FilterSnapshot], guest: &[MetricSnapshot]) -> String {
    let mut out = handle.render();
    render_hooks(&mut out, filters);
    render_pools(&mut out, filters);
    render_guest(&mut out, guest);
    super::reloads::render_generations(&mut out);
    super::objects::render_objects(&mut out);
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
        let (filter, scope) = (label_value(&f.name), label_value(&f.scope));
        for (callback, buckets, sum_ns) in timer.totals() {
            let count: u64 = buckets.iter().fold(0, |a, b| a.wrapping_add(*b));
            if count == 0 {
                continue;
            }
            let labels = format!("filter=\"{filter}\",hook=\"{}\",scope=\"{scope}\"", callback.label());
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
            let (filter, scope) = (label_value(&f.name), label_value(&f.scope));
            for t in &f.pool.threads {
                let _ = writeln!(
                    out,
                    "{name}{{filter=\"{filter}\",thread=\"{}\",scope=\"{scope}\"}} {}",
                    t.thread,
                    field(t)
                );
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
    use std::time::Duration;

    use super::*;
    use crate::abi::{Callback, Metrics};
    use crate::plugin::telemetry::counters::{Exporter, FilterMetrics};

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
        let text = render(
            &e.handle,
            &[FilterSnapshot { name: "f\"1".into(), scope: "global".into(), pool: Default::default(), metrics: fm }],
            &[],
        );
        let rh = "filter=\"f\\\"1\",hook=\"request_headers\",scope=\"global\"";
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{rh},le=\"0.000001\"}} 0\n")), "{text}");
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{rh},le=\"0.000005\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{rh},le=\"0.0025\"}} 2\n")), "{text}");
        assert!(text.contains(&format!("{HOOK_DURATION}_sum{{{rh}}} 0.002003\n")), "{text}");
        assert!(text.contains(&format!("{HOOK_DURATION}_count{{{rh}}} 2\n")), "{text}");
        let log = "filter=\"f\\\"1\",hook=\"log\",scope=\"global\"";
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{log},le=\"1\"}} 0\n")), "{text}");
        assert!(text.contains(&format!("{HOOK_DURATION}_bucket{{{log},le=\"+Inf\"}} 1\n")), "{text}");
        let tick = "filter=\"f\\\"1\",hook=\"tick\",scope=\"global\"";
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
        render_pools(&mut out, &[FilterSnapshot { name: "f".into(), scope: "remap:http://a/".into(), pool, metrics }]);
        assert!(
            out.contains("ats_wasm_pool_ready_vms{filter=\"f\",thread=\"0\",scope=\"remap:http://a/\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("ats_wasm_pool_leased_vms{filter=\"f\",thread=\"1\",scope=\"remap:http://a/\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE ats_wasm_pool_misses_total counter\n"), "{out}");
        assert!(
            out.contains("ats_wasm_pool_misses_total{filter=\"f\",thread=\"0\",scope=\"remap:http://a/\"} 5\n"),
            "{out}"
        );
    }
}
