//! Parses arbitrary text as a sidecar's `/stats/prometheus` the way weft control's service graph
//! reads it (`graph::prom::parse`), and computes a p99 from every histogram it finds.
//!
//! Checks: never panics; at most `MAX_SERIES` series and `MAX_REASONS` (+ "other") reasons per
//! series are kept; errors never exceed the sum of the reasons; buckets are sorted by bound; a
//! quantile, when there is one, is finite, non-negative and no larger than the largest finite
//! bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_control::graph::prom::{parse, quantile, MAX_REASONS, MAX_SERIES};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s = parse(&text);
    assert!(s.series.len() <= MAX_SERIES);
    for agg in s.series.values() {
        assert!(agg.reasons.len() <= MAX_REASONS + 1);
        let sum: u64 = agg.reasons.values().fold(0u64, |a, b| a.saturating_add(*b));
        assert!(agg.errors <= sum || sum == u64::MAX, "{agg:?}");
        assert!(agg.buckets.windows(2).all(|w| w[0].0 < w[1].0), "{agg:?}");
        if let Some(q) = quantile(0.99, &agg.buckets) {
            let max_finite = agg.buckets.iter().map(|b| b.0).filter(|b| b.is_finite()).fold(0.0, f64::max);
            assert!(q.is_finite() && q >= 0.0 && q <= max_finite, "{q} {agg:?}");
        }
    }
});
