//! Smooth weighted round robin over a precomputed schedule.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;

use crate::{next, random_cursor, weight_of, HostInfo};

/// Longest schedule built (unless there are more hosts than this).
pub(crate) const MAX_PERIOD: u64 = 64 * 1024;

pub(crate) struct RoundRobin {
    hosts: usize,
    /// One period of the smooth schedule; `None` when all weights are equal (plain rotation).
    schedule: Option<Box<[u32]>>,
    cursor: AtomicUsize,
}

impl RoundRobin {
    pub(crate) fn new(hosts: &[HostInfo]) -> Self {
        let weights = effective_weights(hosts, MAX_PERIOD);
        let schedule = if weights.iter().all(|&w| w == 1) {
            None
        } else {
            Some(smooth_schedule(&weights))
        };
        let period = schedule.as_ref().map_or(hosts.len(), |s| s.len());
        RoundRobin {
            hosts: hosts.len(),
            schedule,
            cursor: random_cursor(period),
        }
    }

    #[inline]
    pub(crate) fn pick(&self) -> usize {
        let i = next(&self.cursor);
        match &self.schedule {
            None => i % self.hosts,
            Some(schedule) => schedule[i % schedule.len()] as usize,
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn divide_by_gcd(weights: &mut [u64]) {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    if g > 1 {
        weights.iter_mut().for_each(|w| *w /= g);
    }
}

/// Host weights reduced by their gcd and, when they add up to more than `cap` (or the host
/// count, if larger), scaled down proportionally, every host keeping a weight of at least 1.
pub(crate) fn effective_weights(hosts: &[HostInfo], cap: u64) -> Vec<u64> {
    let mut weights: Vec<u64> = hosts.iter().map(weight_of).collect();
    divide_by_gcd(&mut weights);
    let sum: u64 = weights.iter().sum();
    let cap = cap.max(weights.len() as u64);
    if sum > cap {
        for w in &mut weights {
            let scaled = u128::from(*w) * u128::from(cap) / u128::from(sum);
            *w = (scaled as u64).max(1);
        }
        divide_by_gcd(&mut weights);
    }
    weights
}

/// One period of nginx's smooth weighted round robin for `weights` (each >= 1).
///
/// nginx, at every step, adds each host's weight to its running score, picks the host with the
/// highest score (the lowest index on ties) and takes the sum of all weights off the winner's
/// score. After `t` steps a host that was picked `k` times scores `t * w - total * k`. Hosts of
/// equal weight are therefore picked in turn in index order, so it is enough to compare one
/// candidate per distinct weight: O(period * distinct weights) instead of O(period * hosts).
pub(crate) fn smooth_schedule(weights: &[u64]) -> Box<[u32]> {
    struct Group {
        weight: i128,
        members: Vec<u32>,
        picks: usize,
    }
    impl Group {
        fn candidate(&self) -> u32 {
            self.members[self.picks % self.members.len()]
        }
    }

    let mut by_weight: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (i, &w) in weights.iter().enumerate() {
        by_weight.entry(w).or_default().push(i as u32);
    }
    let mut groups: Vec<Group> = by_weight
        .into_iter()
        .map(|(w, members)| Group {
            weight: i128::from(w),
            members,
            picks: 0,
        })
        .collect();

    let total: u64 = weights.iter().sum();
    let total_i = i128::from(total);
    let mut schedule = Vec::with_capacity(total as usize);
    for step in 1..=total_i {
        let mut best = 0;
        let mut best_score = i128::MIN;
        for (g, group) in groups.iter().enumerate() {
            let rounds = (group.picks / group.members.len()) as i128;
            let score = step * group.weight - total_i * rounds;
            if score > best_score || (score == best_score && group.candidate() < groups[best].candidate()) {
                best = g;
                best_score = score;
            }
        }
        schedule.push(groups[best].candidate());
        groups[best].picks += 1;
    }
    schedule.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward O(period * hosts) nginx smooth WRR, as a reference.
    fn nginx_reference(weights: &[u64]) -> Vec<u32> {
        let total: i64 = weights.iter().map(|&w| w as i64).sum();
        let mut current = vec![0i64; weights.len()];
        (0..total)
            .map(|_| {
                let mut best = 0;
                for i in 0..weights.len() {
                    current[i] += weights[i] as i64;
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                best as u32
            })
            .collect()
    }

    #[test]
    fn schedule_5_1_1_is_smooth() {
        assert_eq!(&*smooth_schedule(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn schedule_matches_nginx_reference() {
        let cases: &[&[u64]] = &[&[1, 2], &[3, 1, 3, 2], &[4, 4, 1, 7, 1, 4], &[10, 1, 1, 1, 10, 5, 2]];
        for weights in cases {
            assert_eq!(
                smooth_schedule(weights).to_vec(),
                nginx_reference(weights),
                "{weights:?}"
            );
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..50 {
            let weights: Vec<u64> = (0..rng.usize(2..12)).map(|_| rng.u64(1..20)).collect();
            assert_eq!(
                smooth_schedule(&weights).to_vec(),
                nginx_reference(&weights),
                "{weights:?}"
            );
        }
    }

    fn hosts(weights: &[u32]) -> Vec<HostInfo> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| HostInfo {
                key: format!("h{i}"),
                weight,
            })
            .collect()
    }

    #[test]
    fn weights_are_reduced_by_gcd() {
        assert_eq!(effective_weights(&hosts(&[10, 20, 30]), MAX_PERIOD), [1, 2, 3]);
        assert_eq!(effective_weights(&hosts(&[7, 7]), MAX_PERIOD), [1, 1]);
        // Weight 0 counts as 1.
        assert_eq!(effective_weights(&hosts(&[0, 2]), MAX_PERIOD), [1, 2]);
    }

    #[test]
    fn huge_weight_sums_are_capped_and_keep_every_host() {
        let w = effective_weights(&hosts(&[u32::MAX, 1, 3_000_000]), MAX_PERIOD);
        let sum: u64 = w.iter().sum();
        assert!(sum <= MAX_PERIOD + 3, "{w:?}");
        assert!(w.iter().all(|&x| x >= 1), "{w:?}");
        assert!(w[0] > w[2] && w[2] >= w[1], "{w:?}");
        let rr = RoundRobin::new(&hosts(&[u32::MAX, 1, 3_000_000]));
        let schedule = rr.schedule.as_ref().unwrap();
        assert_eq!(schedule.len() as u64, sum);
        for h in 0..3u32 {
            assert!(schedule.contains(&h));
        }
    }

    #[test]
    fn equal_weights_need_no_schedule() {
        assert!(RoundRobin::new(&hosts(&[3, 3, 3])).schedule.is_none());
        assert!(RoundRobin::new(&hosts(&[3, 1, 3])).schedule.is_some());
    }
}
