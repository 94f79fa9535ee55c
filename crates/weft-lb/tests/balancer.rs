//! Behaviour of every policy through the public API.

use std::sync::Arc;
use std::thread;

use weft_lb::{hash_key, Balancer, HostInfo, LbPolicy};

fn hosts(weights: &[u32]) -> Vec<HostInfo> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| HostInfo {
            key: format!("10.0.0.{}:8080", i + 1),
            weight,
        })
        .collect()
}

fn idle(_: usize) -> u32 {
    0
}

fn counts(b: &Balancer, picks: usize) -> Vec<usize> {
    let mut counts = vec![0; b.len()];
    for _ in 0..picks {
        counts[b.pick(None, &idle).unwrap()] += 1;
    }
    counts
}

/// Asserts that `counts` follow `weights` within `tolerance` (relative to each expected count).
fn assert_proportional(counts: &[usize], weights: &[u32], tolerance: f64) {
    let total: usize = counts.iter().sum();
    let weight_sum: u32 = weights.iter().sum();
    for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
        let expected = total as f64 * f64::from(w) / f64::from(weight_sum);
        let error = (c as f64 - expected).abs() / expected;
        assert!(
            error <= tolerance,
            "host {i}: {c} picks, expected {expected:.0} ± {:.0}% (all: {counts:?})",
            tolerance * 100.0
        );
    }
}

const RING: LbPolicy = LbPolicy::RingHash {
    min_ring_size: LbPolicy::DEFAULT_MIN_RING_SIZE,
    max_ring_size: LbPolicy::DEFAULT_MAX_RING_SIZE,
};
const MAGLEV: LbPolicy = LbPolicy::Maglev {
    table_size: LbPolicy::DEFAULT_MAGLEV_TABLE_SIZE,
};
const ALL_POLICIES: [LbPolicy; 5] = [
    LbPolicy::RoundRobin,
    LbPolicy::LeastRequest { choice_count: 2 },
    LbPolicy::Random,
    RING,
    MAGLEV,
];

// ---------------------------------------------------------------- all policies

#[test]
fn empty_balancer_picks_nothing() {
    for policy in &ALL_POLICIES {
        let b = Balancer::new(policy, &[]);
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
        assert_eq!(b.pick(None, &idle), None, "{policy:?}");
        assert_eq!(b.pick(Some(42), &idle), None, "{policy:?}");
    }
}

#[test]
fn single_host_is_always_picked() {
    for policy in &ALL_POLICIES {
        let b = Balancer::new(policy, &hosts(&[3]));
        assert_eq!(b.len(), 1);
        assert!(!b.is_empty());
        for i in 0..100u64 {
            assert_eq!(b.pick(Some(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)), &|_| 7), Some(0));
            assert_eq!(b.pick(None, &idle), Some(0), "{policy:?}");
        }
    }
}

#[test]
fn picks_are_in_range() {
    let hosts = hosts(&[1, 5, 2, 1, 9]);
    for policy in &ALL_POLICIES {
        let b = Balancer::new(policy, &hosts);
        assert_eq!(b.len(), 5);
        for i in 0..10_000u64 {
            let hash = (i % 2 == 0).then(|| hash_key(&i.to_le_bytes()));
            let picked = b.pick(hash, &|h| h as u32).unwrap();
            assert!(picked < 5, "{policy:?} picked {picked}");
        }
    }
}

#[test]
fn balancer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Balancer>();
}

// ---------------------------------------------------------------- round robin

#[test]
fn rr_equal_weights_is_exact_round_robin() {
    let b = Balancer::new(&LbPolicy::RoundRobin, &hosts(&[2, 2, 2, 2]));
    let first = b.pick(None, &idle).unwrap();
    for i in 1..400 {
        assert_eq!(b.pick(None, &idle), Some((first + i) % 4));
    }
    assert_eq!(counts(&b, 4_000), [1_000; 4]);
}

#[test]
fn rr_5_1_1_is_smooth_and_exact() {
    let b = Balancer::new(&LbPolicy::RoundRobin, &hosts(&[5, 1, 1]));
    let seq: Vec<usize> = (0..7_000).map(|_| b.pick(None, &idle).unwrap()).collect();

    // Exact 5:1:1 counts.
    let mut counts = [0; 3];
    seq.iter().for_each(|&h| counts[h] += 1);
    assert_eq!(counts, [5_000, 1_000, 1_000]);

    // No host gets more than its share in any window of 7 picks.
    for window in seq.windows(7) {
        let mut c = [0; 3];
        window.iter().for_each(|&h| c[h] += 1);
        assert!(c[0] <= 5 && c[1] <= 1 && c[2] <= 1, "{window:?}");
    }

    // Smooth: the nginx sequence a a b a c a a (up to where the random start falls),
    // never a a a a a b c.
    let smooth = [0, 0, 1, 0, 2, 0, 0];
    let offset = (0..7)
        .find(|&o| (0..7).all(|i| seq[i] == smooth[(o + i) % 7]))
        .unwrap_or_else(|| panic!("not a rotation of {smooth:?}: {:?}", &seq[..7]));
    for (i, &h) in seq.iter().enumerate() {
        assert_eq!(h, smooth[(offset + i) % 7], "pick {i}");
    }
    // b and c are never adjacent.
    assert!(seq.windows(2).all(|w| w[0] == 0 || w[1] == 0));
}

#[test]
fn rr_weights_with_common_factor() {
    let b = Balancer::new(&LbPolicy::RoundRobin, &hosts(&[300, 200, 100]));
    let c = counts(&b, 6_000);
    assert_eq!(c, [3_000, 2_000, 1_000]);
}

#[test]
fn rr_concurrent_picks_are_exact() {
    let b = Arc::new(Balancer::new(&LbPolicy::RoundRobin, &hosts(&[1, 1, 1])));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let b = Arc::clone(&b);
            thread::spawn(move || {
                let mut counts = [0usize; 3];
                for _ in 0..7_500 {
                    counts[b.pick(None, &idle).unwrap()] += 1;
                }
                counts
            })
        })
        .collect();
    let mut total = [0usize; 3];
    for h in handles {
        for (t, c) in total.iter_mut().zip(h.join().unwrap()) {
            *t += c;
        }
    }
    assert_eq!(total, [10_000; 3]);
}

#[test]
fn rr_start_is_randomised() {
    // Many balancers over the same hosts should not all start at host 0.
    let hosts = hosts(&[1; 8]);
    let firsts: std::collections::HashSet<usize> = (0..64)
        .map(|_| Balancer::new(&LbPolicy::RoundRobin, &hosts).pick(None, &idle).unwrap())
        .collect();
    assert!(firsts.len() > 1, "{firsts:?}");
}

// ---------------------------------------------------------------- random / least request

#[test]
fn random_is_weighted() {
    fastrand::seed(11);
    let weights = [1, 2, 3, 4];
    let b = Balancer::new(&LbPolicy::Random, &hosts(&weights));
    assert_proportional(&counts(&b, 100_000), &weights, 0.05);
}

#[test]
fn random_equal_weights_is_uniform() {
    fastrand::seed(12);
    let weights = [7, 7, 7];
    let b = Balancer::new(&LbPolicy::Random, &hosts(&weights));
    assert_proportional(&counts(&b, 100_000), &weights, 0.03);
}

#[test]
fn least_request_idle_cluster_is_weighted() {
    fastrand::seed(13);
    let weights = [1, 2, 3];
    let b = Balancer::new(&LbPolicy::LeastRequest { choice_count: 2 }, &hosts(&weights));
    assert_proportional(&counts(&b, 100_000), &weights, 0.05);
}

#[test]
fn least_request_avoids_loaded_host() {
    fastrand::seed(14);
    let loads = [100u32, 0, 0];
    let b = Balancer::new(&LbPolicy::LeastRequest { choice_count: 2 }, &hosts(&[1, 1, 1]));
    let mut counts = [0usize; 3];
    for _ in 0..100_000 {
        counts[b.pick(None, &|i| loads[i]).unwrap()] += 1;
    }
    assert!(counts[0] < 5_000, "{counts:?}");
    assert_proportional(&counts[1..], &[1, 1], 0.05);
}

#[test]
fn least_request_prefers_lighter_hosts() {
    fastrand::seed(15);
    // Loads 0..10: with two choices, lighter hosts must get more picks than heavier ones.
    let b = Balancer::new(&LbPolicy::LeastRequest { choice_count: 2 }, &hosts(&[1; 10]));
    let mut counts = [0usize; 10];
    for _ in 0..100_000 {
        counts[b.pick(None, &|i| i as u32).unwrap()] += 1;
    }
    assert!(counts.windows(2).all(|w| w[0] > w[1]), "{counts:?}");
    // More choices concentrate picks on the least loaded host.
    let b = Balancer::new(&LbPolicy::LeastRequest { choice_count: 5 }, &hosts(&[1; 10]));
    let mut counts5 = [0usize; 10];
    for _ in 0..100_000 {
        counts5[b.pick(None, &|i| i as u32).unwrap()] += 1;
    }
    assert!(counts5[0] > counts[0], "{counts5:?} vs {counts:?}");
}

// ---------------------------------------------------------------- ring hash / maglev

fn request_hashes(n: usize) -> impl Iterator<Item = u64> {
    (0..n).map(|i| hash_key(format!("session-{i}").as_bytes()))
}

fn hash_counts(b: &Balancer, n: usize) -> Vec<usize> {
    let mut counts = vec![0; b.len()];
    for h in request_hashes(n) {
        counts[b.pick(Some(h), &idle).unwrap()] += 1;
    }
    counts
}

/// Host key chosen for each of `n` request hashes.
fn owners<'a>(b: &Balancer, hosts: &'a [HostInfo], n: usize) -> Vec<&'a str> {
    request_hashes(n)
        .map(|h| hosts[b.pick(Some(h), &idle).unwrap()].key.as_str())
        .collect()
}

#[test]
fn consistent_hash_is_sticky_and_deterministic() {
    let hosts = hosts(&[1, 2, 1, 3, 1]);
    for policy in [RING, MAGLEV] {
        let a = Balancer::new(&policy, &hosts);
        let b = Balancer::new(&policy, &hosts);
        let mut seen = std::collections::HashSet::new();
        for h in request_hashes(10_000) {
            let picked = a.pick(Some(h), &idle);
            seen.insert(picked);
            // Same hash, same host: repeatedly, whatever the load, and on another proxy
            // instance built from the same hosts.
            assert_eq!(a.pick(Some(h), &|_| 1_000), picked, "{policy:?}");
            assert_eq!(b.pick(Some(h), &idle), picked, "{policy:?}");
        }
        assert_eq!(seen.len(), 5, "{policy:?}");
    }
}

#[test]
fn consistent_hash_without_hash_is_random() {
    fastrand::seed(16);
    let weights = [1, 1, 2];
    for policy in [RING, MAGLEV] {
        let b = Balancer::new(&policy, &hosts(&weights));
        assert_proportional(&counts(&b, 100_000), &weights, 0.15);
    }
}

#[test]
fn consistent_hash_equal_hosts_spread_evenly() {
    for policy in [RING, MAGLEV] {
        let b = Balancer::new(&policy, &hosts(&[1, 1, 1]));
        assert_proportional(&hash_counts(&b, 100_000), &[1, 1, 1], 0.10);
    }
}

#[test]
fn consistent_hash_respects_weights() {
    for policy in [RING, MAGLEV] {
        let weights = [2, 1];
        let b = Balancer::new(&policy, &hosts(&weights));
        assert_proportional(&hash_counts(&b, 100_000), &weights, 0.10);
        let weights = [2, 1, 1];
        let b = Balancer::new(&policy, &hosts(&weights));
        assert_proportional(&hash_counts(&b, 100_000), &weights, 0.10);
    }
}

/// Fraction of keys not on `removed` that keep their host when it is removed from 5 hosts.
fn kept_after_removal(policy: &LbPolicy, removed: usize) -> f64 {
    const KEYS: usize = 100_000;
    let before_hosts = hosts(&[1; 5]);
    let mut after_hosts = before_hosts.clone();
    let removed_key = after_hosts.remove(removed).key;
    let before = owners(&Balancer::new(policy, &before_hosts), &before_hosts, KEYS);
    let after = owners(&Balancer::new(policy, &after_hosts), &after_hosts, KEYS);
    let mut eligible = 0;
    let mut kept = 0;
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(*a, removed_key);
        if *b != removed_key {
            eligible += 1;
            kept += usize::from(a == b);
        }
    }
    kept as f64 / eligible as f64
}

#[test]
fn ring_hash_removal_is_minimally_disruptive() {
    for removed in [0, 2, 4] {
        let kept = kept_after_removal(&RING, removed);
        assert!(kept >= 0.95, "removed host {removed}: kept {kept:.3}");
    }
    // Also with a ring size whose points per host change with the host count.
    let odd = LbPolicy::RingHash {
        min_ring_size: 1000,
        max_ring_size: 1000,
    };
    let kept = kept_after_removal(&odd, 1);
    assert!(kept >= 0.80, "kept {kept:.3}");
}

#[test]
fn maglev_removal_is_minimally_disruptive() {
    for removed in [0, 2, 4] {
        let kept = kept_after_removal(&MAGLEV, removed);
        assert!(kept >= 0.90, "removed host {removed}: kept {kept:.3}");
    }
}

#[test]
fn consistent_hash_addition_moves_about_one_share() {
    const KEYS: usize = 100_000;
    for policy in [RING, MAGLEV] {
        let before_hosts = hosts(&[1; 5]);
        let after_hosts = hosts(&[1; 6]);
        let new_key = after_hosts[5].key.as_str();
        let before = owners(&Balancer::new(&policy, &before_hosts), &before_hosts, KEYS);
        let after = owners(&Balancer::new(&policy, &after_hosts), &after_hosts, KEYS);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        let moved_fraction = moved.len() as f64 / KEYS as f64;
        let ideal = 1.0 / 6.0;
        assert!(
            (ideal * 0.7..ideal * 1.3).contains(&moved_fraction),
            "{policy:?}: moved {moved_fraction:.3}, ideal {ideal:.3}"
        );
        let to_new = moved.iter().filter(|(_, a)| **a == new_key).count();
        assert!(
            to_new as f64 >= 0.9 * moved.len() as f64,
            "{policy:?}: only {to_new} of {} moved keys went to the new host",
            moved.len()
        );
    }
}

#[test]
fn maglev_odd_table_sizes_work() {
    for table_size in [0, 1, 100, 65_536, 131_071] {
        let b = Balancer::new(&LbPolicy::Maglev { table_size }, &hosts(&[1, 1, 1]));
        let c = hash_counts(&b, 30_000);
        assert!(c.iter().all(|&n| n > 0), "table_size {table_size}: {c:?}");
    }
}
