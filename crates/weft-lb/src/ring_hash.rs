//! Ketama-style consistent hashing ring.

use std::fmt::Write;

use crate::{hash_key, weight_of, HostInfo, LbPolicy};

pub(crate) struct Ring {
    /// Sorted ring points.
    points: Box<[u64]>,
    /// `owners[i]` is the host owning `points[i]`.
    owners: Box<[u32]>,
}

impl Ring {
    pub(crate) fn new(hosts: &[HostInfo], min_ring_size: u64, max_ring_size: u64) -> Self {
        let weights: Vec<u64> = hosts.iter().map(weight_of).collect();
        let counts = point_counts(&weights, min_ring_size, max_ring_size);
        let total: u64 = counts.iter().sum();

        let mut ring: Vec<(u64, u32)> = Vec::with_capacity(total as usize);
        let mut name = String::new();
        for (host, (info, &count)) in hosts.iter().zip(&counts).enumerate() {
            for replica in 0..count {
                name.clear();
                // Writing to a String cannot fail.
                let _ = write!(name, "{}_{}", info.key, replica);
                ring.push((hash_key(name.as_bytes()), host as u32));
            }
        }
        // Ties between equal points (only possible for duplicate keys or a 64-bit collision)
        // are broken by host index, so the ring does not depend on the input order of equal
        // points.
        ring.sort_unstable();
        let (points, owners) = ring.into_iter().unzip::<_, _, Vec<_>, Vec<_>>();
        Ring {
            points: points.into_boxed_slice(),
            owners: owners.into_boxed_slice(),
        }
    }

    /// The owner of the first point at or after `hash`, wrapping around to the first point.
    #[inline]
    pub(crate) fn lookup(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|&p| p < hash);
        let i = if i == self.points.len() { 0 } else { i };
        self.owners[i] as usize
    }
}

/// Number of ring points for each host.
///
/// Points per unit of weight is the smallest power of two (possibly a fraction, rounding each
/// host's count up) that makes the ring at least `min_ring_size`. Being a power of two, it
/// rarely changes when a host joins or leaves, so the other hosts keep exactly their points
/// and only the changed host's keys move. If that ring would exceed `max_ring_size`, counts
/// are instead scaled to fit `max_ring_size`, each host keeping at least one point.
pub(crate) fn point_counts(weights: &[u64], min_ring_size: u64, max_ring_size: u64) -> Vec<u64> {
    let max_ring = max_ring_size.clamp(1, LbPolicy::MAX_RING_SIZE);
    let min_ring = min_ring_size.clamp(1, max_ring);
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return Vec::new();
    }
    let min_ring_wide = u128::from(min_ring);

    let counts: Vec<u64> = if sum >= min_ring_wide {
        // Largest shift keeping sum / 2^shift >= min_ring.
        let mut shift = 0;
        while (min_ring_wide << (shift + 1)) <= sum {
            shift += 1;
        }
        weights
            .iter()
            .map(|&w| (w >> shift) + u64::from(w & ((1u64 << shift) - 1) != 0))
            .collect()
    } else {
        // Smallest shift with sum * 2^shift >= min_ring.
        let mut shift = 0;
        while (sum << shift) < min_ring_wide {
            shift += 1;
        }
        weights.iter().map(|&w| w << shift).collect()
    };

    let total: u128 = counts.iter().map(|&c| u128::from(c)).sum();
    if total <= u128::from(max_ring) {
        return counts;
    }
    weights
        .iter()
        .map(|&w| ((u128::from(w) * u128::from(max_ring) / sum) as u64).max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_counts_are_power_of_two_multiples_of_weight() {
        assert_eq!(point_counts(&[1, 1, 1], 1024, 8 << 20), [512, 512, 512]);
        assert_eq!(point_counts(&[1, 1, 1, 1], 1024, 8 << 20), [256; 4]);
        assert_eq!(point_counts(&[1; 5], 1024, 8 << 20), [256; 5]);
        assert_eq!(point_counts(&[2, 1], 1024, 8 << 20), [1024, 512]);
        // Large weights: divided by a power of two, rounded up.
        assert_eq!(point_counts(&[3000, 1], 1024, 8 << 20), [1500, 1]);
    }

    #[test]
    fn point_counts_respect_max_ring_size() {
        let counts = point_counts(&[1, 1, 1], 1024, 1000);
        assert_eq!(counts, [333, 333, 333]);
        // Power-of-two scaling fits here (31 + 1 points)...
        assert_eq!(point_counts(&[1_000_000, 1], 16, 100), [31, 1]);
        // ...but not here: proportional scaling, the light host keeping one point.
        assert_eq!(point_counts(&[1_000_000, 1], 16, 20), [19, 1]);
        // min > max: max wins.
        assert_eq!(point_counts(&[1, 1], 4096, 64), [32, 32]);
        // Absurd sizes are capped.
        let total: u64 = point_counts(&[1, 1], u64::MAX, u64::MAX).iter().sum();
        assert!(total <= LbPolicy::MAX_RING_SIZE);
    }

    #[test]
    fn lookup_takes_next_point_and_wraps() {
        let ring = Ring {
            points: vec![10, 20, 30].into_boxed_slice(),
            owners: vec![0, 1, 2].into_boxed_slice(),
        };
        assert_eq!(ring.lookup(0), 0);
        assert_eq!(ring.lookup(10), 0);
        assert_eq!(ring.lookup(11), 1);
        assert_eq!(ring.lookup(30), 2);
        assert_eq!(ring.lookup(31), 0);
        assert_eq!(ring.lookup(u64::MAX), 0);
    }

    #[test]
    fn points_are_hashes_of_key_and_replica() {
        let hosts = [HostInfo {
            key: "10.0.0.1:80".into(),
            weight: 1,
        }];
        let ring = Ring::new(&hosts, 4, 4);
        let mut expected: Vec<u64> = (0..4)
            .map(|n| hash_key(format!("10.0.0.1:80_{n}").as_bytes()))
            .collect();
        expected.sort_unstable();
        assert_eq!(&*ring.points, &expected[..]);
    }
}
