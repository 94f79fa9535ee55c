//! A histogram for the request path: observed without a lock, and by a worker without a locked
//! instruction.
//!
//! prometheus-client's `Histogram` takes a mutex for every observation and finds the bucket by a
//! linear scan: ~80 instructions per observation, and a proxied request observes six (listener,
//! route and cluster request times; Istio's duration, request and response sizes). Here the
//! bucket is found by binary search and counted in the observing thread's slot
//! ([`crate::shard`]): a worker's own slot with plain loads and stores, the shared slot with
//! relaxed atomic adds (the sum, a `f64` kept as bits, by compare-and-swap). The count is the sum
//! of the buckets. A scrape sums the slots one by one, so a scrape that races observations may see
//! the sum one observation behind the buckets, as with any lock-free Prometheus client (the Go
//! client's histogram does the same); every observation is counted exactly once. prometheus-client
//! offers no lock-free histogram, so this one implements its encoding traits and lives in its
//! registries and families like its own.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::shard;

/// A classic (bucketed) Prometheus histogram. Clones share their counts.
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in increasing order, the last one `+Inf`.
    bounds: Box<[f64]>,
    /// Per slot ([`crate::shard`]), `stride` cells: the observations per bucket (not cumulative),
    /// one per bound, then the sum of the observations as `f64::to_bits`. `stride` is rounded up
    /// to a whole number of cache lines, so that two workers' slots share at most one line.
    cells: Box<[AtomicU64]>,
    stride: usize,
}

impl Histogram {
    /// A histogram with these upper bounds (in increasing order) and `+Inf`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Histogram {
        let mut b: Vec<f64> = bounds.into_iter().filter(|b| *b != f64::INFINITY).collect();
        b.push(f64::INFINITY);
        let stride = (b.len() + 1).next_multiple_of(8);
        let cells = (0..stride * shard::slots()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            inner: Arc::new(Inner {
                bounds: b.into_boxed_slice(),
                cells,
                stride,
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
        let (s, owned) = shard::slot(inner.cells.len() / inner.stride);
        let cells = &inner.cells[s * inner.stride..(s + 1) * inner.stride];
        shard::add(&cells[i], 1, owned);
        let sum = &cells[inner.bounds.len()];
        if owned {
            sum.store((f64::from_bits(sum.load(Relaxed)) + v).to_bits(), Relaxed);
            return;
        }
        let mut cur = sum.load(Relaxed);
        loop {
            let new = (f64::from_bits(cur) + v).to_bits();
            match sum.compare_exchange_weak(cur, new, Relaxed, Relaxed) {
                Ok(_) => break,
                Err(seen) => cur = seen,
            }
        }
    }

    /// (sum, count, per-bucket counts with their upper bounds), as a scrape sees them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let inner = &*self.inner;
        let n = inner.bounds.len();
        let mut sum = 0.0;
        let mut buckets: Vec<(f64, u64)> = inner.bounds.iter().map(|b| (*b, 0)).collect();
        for slot in inner.cells.chunks(inner.stride) {
            for (b, c) in buckets.iter_mut().zip(&slot[..n]) {
                b.1 += c.load(Relaxed);
            }
            sum += f64::from_bits(slot[n].load(Relaxed));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (sum, count, buckets)
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
        // Workers in slots of their own (registered) and other threads in the shared one.
        let _serial = shard::TEST_LOCK.lock();
        shard::configure(4);
        let h = Histogram::new([10.0, 100.0]);
        assert!(h.inner.cells.len() >= 5 * h.inner.stride);
        std::thread::scope(|s| {
            for t in 0..4 {
                let h = h.clone();
                s.spawn(move || {
                    if t % 2 == 0 {
                        shard::register_thread();
                    }
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
