//! Open-loop request schedules.
//!
//! A total rate `R` is spread evenly over `W` workers (connections × streams).
//! Worker `i` sends its `k`-th request at `base + i/R + k·W/R`, so every worker
//! runs at `R/W` requests per second and, taken together, the workers' slots
//! interleave into one evenly spaced stream of `R` requests per second.

use std::time::{Duration, Instant};

/// The fixed send schedule of one worker.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    base: Instant,
    offset_ns: f64,
    interval_ns: f64,
}

impl Schedule {
    /// Schedule for worker `index` of `workers`, sharing `total_rate` requests/s.
    pub fn new(base: Instant, total_rate: f64, workers: usize, index: usize) -> Schedule {
        assert!(total_rate > 0.0 && total_rate.is_finite(), "rate must be > 0");
        assert!(workers > 0 && index < workers, "bad worker index");
        Schedule {
            base,
            offset_ns: index as f64 * 1e9 / total_rate,
            interval_ns: workers as f64 * 1e9 / total_rate,
        }
    }

    /// Interval between two of this worker's requests.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns as u64)
    }

    /// Offset of slot `k` from the schedule base.
    pub fn offset_of(&self, k: u64) -> Duration {
        Duration::from_nanos((self.offset_ns + k as f64 * self.interval_ns).round() as u64)
    }

    /// Scheduled send time of this worker's `k`-th request (k from 0).
    pub fn at(&self, k: u64) -> Instant {
        self.base + self.offset_of(k)
    }

    /// Number of slots scheduled strictly before `base + elapsed`.
    pub fn slots_before(&self, elapsed: Duration) -> u64 {
        let e = elapsed.as_nanos() as f64;
        if e <= self.offset_ns {
            return 0;
        }
        let mut n = ((e - self.offset_ns) / self.interval_ns).ceil() as u64;
        // Correct for floating-point rounding at the boundary.
        while n > 0 && self.offset_of(n - 1) >= elapsed {
            n -= 1;
        }
        while self.offset_of(n) < elapsed {
            n += 1;
        }
        n
    }
}
