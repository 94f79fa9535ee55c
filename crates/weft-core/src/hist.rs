//! A histogram for the request path: observed with atomic adds, without a lock.
//!
//! prometheus-client's `Histogram` takes a mutex for every observation and finds the bucket by a
//! linear scan: ~80 instructions per observation, and a proxied request observes six (listener,
//! route and cluster request times; Istio's duration, request and response sizes). Here the
//! bucket is found by binary search and counted with relaxed atomic adds; the sum is a `f64` kept
//! as bits and added by compare-and-swap. A scrape reads the atomics one by one, so a scrape that
//! races observations may see a count that is one observation ahead of a bucket or the sum, as
//! with any lock-free Prometheus client (the Go client's histogram does the same); every
//! observation is counted exactly once. prometheus-client offers no lock-free histogram, so this
//! one implements its encoding traits and lives in its registries and families like its own.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// A classic (bucketed) Prometheus histogram. Clones share their counts.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in increasing order, the last one `+Inf`.
    bounds: Box<[f64]>,
    /// Observations per bucket (not cumulative), one per bound.
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    /// The sum of the observations, as `f64::to_bits`.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (in increasing order) and `+Inf`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Histogram {
        let mut b: Vec<f64> = bounds.into_iter().filter(|b| *b != f64::INFINITY).collect();
        b.push(f64::INFINITY);
        let counts = b.iter().map(|_| AtomicU64::new(0)).collect();
        Histogram {
            inner: Arc::new(Inner {
                bounds: b.into_boxed_slice(),
                counts,
                count: AtomicU64::new(0),
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// Counts `v` in the first bucket whose upper bound is at least `v` (NaN: in `+Inf`).
    #[inline]
    pub fn observe(&self, v: f64) {
        let inner = &*self.inner;
        let last = inner.bounds.len() - 1;
        let i = if v.is_nan() {
            last
        } else {
            inner.bounds.partition_point(|b| *b < v).min(last)
        };
        inner.counts[i].fetch_add(1, Relaxed);
        inner.count.fetch_add(1, Relaxed);
        let mut cur = inner.sum.load(Relaxed);
        loop {
            let new = (f64::from_bits(cur) + v).to_bits();
            match inner.sum.compare_exchange_weak(cur, new, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
    }

    /// (sum, count, per-bucket counts with their upper bounds), as a scrape sees them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &*self.inner;
        let buckets = inner
            .bounds
            .iter()
            .zip(inner.counts.iter())
            .map(|(b, c)| (*b, c.load(Relaxed)))
            .collect();
        (
            f64::from_bits(inner.sum.load(Relaxed)),
            inner.count.load(Relaxed),
            buckets,
        )
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    fn text(h: &Histogram) -> String {
        let mut r = Registry::default();
        r.register("t", "test", h.clone());
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        out
    }

    #[test]
    fn encodes_like_prometheus_clients_histogram() {
        let ours = Histogram::new([1.0, 2.0, 4.0]);
        let theirs = prometheus_client::metrics::histogram::Histogram::new([1.0, 2.0, 4.0]);
        for v in [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 100.0, -1.0, f64::NAN, f64::INFINITY] {
            ours.observe(v);
            theirs.observe(v);
        }
        let mut r = Registry::default();
        r.register("t", "test", theirs);
        let mut expected = String::new();
        encode(&mut expected, &r).unwrap();
        // NaN makes both sums NaN.
        assert_eq!(text(&ours), expected);
        assert!(expected.contains("t_bucket{le=\"1.0\"} 3\n"), "{expected}");
        assert!(expected.contains("t_bucket{le=\"+Inf\"} 11\n"), "{expected}");
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = Histogram::new([10.0, 100.0]);
        std::thread::scope(|s| {
            for t in 0..4 {
                let h = h.clone();
                s.spawn(move || {
                    for i in 0..10_000u32 {
                        h.observe(f64::from((i + t) % 200));
                    }
                });
            }
        });
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 40_000);
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 40_000);
        let expected: u64 = (0..4u32)
            .flat_map(|t| (0..10_000u32).map(move |i| u64::from((i + t) % 200)))
            .sum();
        assert_eq!(sum, expected as f64);
    }
}
