//! The process-wide registry of the metrics guests define (`proxy_define_metric`, `proxy_increment_metric`,
//! `proxy_record_metric`, `proxy_get_metric`), readable by an exporter through
//! [`Metrics::snapshot`].
//!
//! Defining a name again with the same type returns the same id (every VM of a filter defines
//! its metrics at start); the same name with another type is `BAD_ARGUMENT`. Values are atomics:
//! updates take a read lock on the id table only.
//!
//! Semantics per type: a counter only grows (`increment` with a negative delta is
//! `BAD_ARGUMENT`; `record` sets it); a gauge is a signed 64-bit value (`record` sets it,
//! `increment` adds, `get` returns its two's-complement bits); a histogram counts recorded
//! values into [`HISTOGRAM_BUCKETS`] and keeps their sum and count (`increment` and `get` are
//! `BAD_ARGUMENT`: a distribution has no single value, as in Envoy).

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use super::types::{HostResult, MetricType, Status};

/// Upper bounds (inclusive) of the histogram buckets; a last bucket `+Inf` is implied.
pub const HISTOGRAM_BUCKETS: [u64; 18] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000, 1_800_000,
    3_600_000,
];

/// The most metrics one process may define (bounds the memory a guest can claim).
pub const MAX_METRICS: usize = 10_000;

/// One metric's live values.
#[derive(Debug)]
pub struct Metric {
    /// The name the guest defined.
    pub name: String,
    /// Its type.
    pub kind: MetricType,
    value: AtomicI64,
    buckets: [AtomicU64; HISTOGRAM_BUCKETS.len() + 1],
    sum: AtomicU64,
    count: AtomicU64,
}

/// A copy of one metric's values at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricSnapshot {
    /// The name the guest defined.
    pub name: String,
    /// Its type.
    pub kind: MetricType,
    /// Counter or gauge value (0 for histograms).
    pub value: i64,
    /// Histograms: the number of values in each bucket of [`HISTOGRAM_BUCKETS`] (not
    /// cumulative), then the `+Inf` bucket.
    pub buckets: Vec<u64>,
    /// Histograms: the sum of recorded values (wrapping).
    pub sum: u64,
    /// Histograms: how many values were recorded.
    pub count: u64,
}

impl Metric {
    fn new(name: String, kind: MetricType) -> Self {
        Self {
            name,
            kind,
            value: AtomicI64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn snapshot(&self) -> MetricSnapshot {
        let hist = self.kind == MetricType::Histogram;
        MetricSnapshot {
            name: self.name.clone(),
            kind: self.kind,
            value: self.value.load(Ordering::Relaxed),
            buckets: if hist { self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect() } else { Vec::new() },
            sum: self.sum.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// The registry: metric ids are indices + 1 (0 is never a valid id).
#[derive(Default)]
pub struct Metrics {
    list: RwLock<Vec<Arc<Metric>>>,
}

impl Metrics {
    /// The process-wide registry.
    pub fn global() -> Arc<Metrics> {
        static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(Metrics::default())).clone()
    }

    /// Defines (or finds) metric `name` of type `kind`; returns its id.
    pub fn define(&self, kind: MetricType, name: &[u8]) -> HostResult<u32> {
        let name = std::str::from_utf8(name).map_err(|_| Status::BadArgument)?;
        if name.is_empty() {
            return Err(Status::BadArgument);
        }
        let mut list = self.list.write().map_err(|_| Status::InternalFailure)?;
        if let Some(i) = list.iter().position(|m| m.name == name) {
            return if list[i].kind == kind { Ok(i as u32 + 1) } else { Err(Status::BadArgument) };
        }
        if list.len() >= MAX_METRICS {
            return Err(Status::InternalFailure);
        }
        list.push(Arc::new(Metric::new(name.to_owned(), kind)));
        Ok(list.len() as u32)
    }

    fn with<R>(&self, id: u32, f: impl FnOnce(&Metric) -> HostResult<R>) -> HostResult<R> {
        let list = self.list.read().map_err(|_| Status::InternalFailure)?;
        let m = (id as usize).checked_sub(1).and_then(|i| list.get(i)).ok_or(Status::NotFound)?;
        f(m)
    }

    /// `proxy_increment_metric`.
    pub fn increment(&self, id: u32, delta: i64) -> HostResult {
        self.with(id, |m| match m.kind {
            MetricType::Counter if delta < 0 => Err(Status::BadArgument),
            MetricType::Counter | MetricType::Gauge => {
                m.value.fetch_add(delta, Ordering::Relaxed);
                Ok(())
            }
            MetricType::Histogram => Err(Status::BadArgument),
        })
    }

    /// `proxy_record_metric`.
    pub fn record(&self, id: u32, value: u64) -> HostResult {
        self.with(id, |m| {
            match m.kind {
                MetricType::Counter | MetricType::Gauge => m.value.store(value as i64, Ordering::Relaxed),
                MetricType::Histogram => {
                    let i = HISTOGRAM_BUCKETS.iter().position(|&b| value <= b).unwrap_or(HISTOGRAM_BUCKETS.len());
                    m.buckets[i].fetch_add(1, Ordering::Relaxed);
                    m.sum.fetch_add(value, Ordering::Relaxed);
                    m.count.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
    }

    /// `proxy_get_metric`.
    pub fn get(&self, id: u32) -> HostResult<u64> {
        self.with(id, |m| match m.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(m.value.load(Ordering::Relaxed) as u64),
        })
    }

    /// Every metric's current values, in definition order (for an exporter).
    pub fn snapshot(&self) -> Vec<MetricSnapshot> {
        match self.list.read() {
            Ok(list) => list.iter().map(|m| m.snapshot()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_behave() {
        let m = Metrics::default();
        let c = m.define(MetricType::Counter, b"c").unwrap();
        assert_eq!(m.define(MetricType::Counter, b"c").unwrap(), c, "same id again");
        assert_eq!(m.define(MetricType::Gauge, b"c"), Err(Status::BadArgument), "type clash");
        m.increment(c, 3).unwrap();
        assert_eq!(m.increment(c, -1), Err(Status::BadArgument));
        assert_eq!(m.get(c).unwrap(), 3);
        let g = m.define(MetricType::Gauge, b"g").unwrap();
        m.record(g, 10).unwrap();
        m.increment(g, -12).unwrap();
        assert_eq!(m.get(g).unwrap() as i64, -2);
        let h = m.define(MetricType::Histogram, b"h").unwrap();
        for v in [0, 3, 7, 9_999_999] {
            m.record(h, v).unwrap();
        }
        assert_eq!(m.get(h), Err(Status::BadArgument));
        assert_eq!(m.increment(h, 1), Err(Status::BadArgument));
        let snap = m.snapshot();
        let hs = &snap[2];
        assert_eq!((hs.count, hs.sum), (4, 10_000_009));
        assert_eq!(hs.buckets[0], 1);
        assert_eq!(hs.buckets[1], 1);
        assert_eq!(hs.buckets[2], 1);
        assert_eq!(hs.buckets[HISTOGRAM_BUCKETS.len()], 1);
        assert_eq!(m.get(0), Err(Status::NotFound));
        assert_eq!(m.get(99), Err(Status::NotFound));
        assert_eq!(m.define(MetricType::Counter, b""), Err(Status::BadArgument));
    }
}
