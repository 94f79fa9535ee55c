//! Weighted Maglev lookup table (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4).

use xxhash_rust::xxh64::xxh64;

use crate::{weight_of, HostInfo, LbPolicy};

const EMPTY: u32 = u32::MAX;

pub(crate) struct Table {
    /// `slots[hash % len]` is the host for `hash`.
    slots: Box<[u32]>,
}

/// A host's walk through its permutation of the table: slot `(offset + j * skip) % size`
/// for `j = 0, 1, ...`, which visits every slot once since `size` is prime.
struct Walker {
    position: u64,
    skip: u64,
    weight: u64,
    credit: u64,
}

impl Table {
    pub(crate) fn new(hosts: &[HostInfo], table_size: u64) -> Self {
        let size = effective_table_size(table_size, hosts.len());
        let max_weight = hosts.iter().map(weight_of).max().unwrap_or(1);
        let mut walkers: Vec<Walker> = hosts
            .iter()
            .map(|h| {
                let key = h.key.as_bytes();
                Walker {
                    position: xxh64(key, 0) % size,
                    skip: xxh64(key, 1) % (size - 1) + 1,
                    weight: weight_of(h),
                    credit: 0,
                }
            })
            .collect();

        let mut slots = vec![EMPTY; size as usize];
        let mut filled = 0u64;
        // Rounds: every host earns its weight in credit; each `max_weight` of credit buys the
        // next free slot on its permutation. A host of the largest weight claims one slot per
        // round, one of half that weight one slot every other round, and so on.
        'fill: loop {
            for (host, walker) in walkers.iter_mut().enumerate() {
                walker.credit += walker.weight;
                if walker.credit < max_weight {
                    continue;
                }
                walker.credit -= max_weight;
                loop {
                    let slot = walker.position as usize;
                    walker.position = (walker.position + walker.skip) % size;
                    if slots[slot] == EMPTY {
                        slots[slot] = host as u32;
                        break;
                    }
                }
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Table {
            slots: slots.into_boxed_slice(),
        }
    }

    #[inline]
    pub(crate) fn lookup(&self, hash: u64) -> usize {
        self.slots[(hash % self.slots.len() as u64) as usize] as usize
    }
}

/// The table size actually used: 0 means the default; the size is capped, raised to at least
/// the host count, then raised to a prime.
pub(crate) fn effective_table_size(requested: u64, hosts: usize) -> u64 {
    let size = if requested == 0 {
        LbPolicy::DEFAULT_MAGLEV_TABLE_SIZE
    } else {
        requested
    };
    next_prime(size.min(LbPolicy::MAX_MAGLEV_TABLE_SIZE).max(hosts as u64))
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

fn next_prime(mut n: u64) -> u64 {
    n = n.max(2);
    while !is_prime(n) {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_size_is_prime() {
        assert_eq!(effective_table_size(0, 3), 65537);
        assert_eq!(effective_table_size(65537, 3), 65537);
        assert_eq!(effective_table_size(65536, 3), 65537);
        assert_eq!(effective_table_size(100, 3), 101);
        assert_eq!(effective_table_size(7, 10), 11);
        assert_eq!(effective_table_size(1, 2), 2);
        assert_eq!(effective_table_size(u64::MAX, 3), LbPolicy::MAX_MAGLEV_TABLE_SIZE);
        assert!(is_prime(LbPolicy::MAX_MAGLEV_TABLE_SIZE));
    }

    fn hosts(weights: &[u32]) -> Vec<HostInfo> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| HostInfo {
                key: format!("10.0.0.{i}:8080"),
                weight,
            })
            .collect()
    }

    #[test]
    fn every_slot_is_filled_in_weight_proportion() {
        let table = Table::new(&hosts(&[4, 2, 1, 1]), 10_007);
        let mut counts = [0usize; 4];
        for &s in table.slots.iter() {
            counts[s as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), 10_007);
        // 4:2:1:1 of 10007 = 5003.5, 2501.75, 1250.9, 1250.9 (rounding at the last round).
        for (c, expected) in counts.iter().zip([5003.5, 2501.75, 1250.9, 1250.9]) {
            assert!((*c as f64 - expected).abs() <= 2.0, "{counts:?}");
        }
    }

    #[test]
    fn tiny_table_still_covers_each_host() {
        let table = Table::new(&hosts(&[1, 1, 1]), 1);
        assert_eq!(table.slots.len(), 3);
        let mut seen = table.slots.to_vec();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2]);
    }
}
