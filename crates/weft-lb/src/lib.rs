//! Load-balancing algorithms for weft: pure functions of an immutable host list.
//!
//! The proxy builds one [`Balancer`] per cluster from the currently *eligible* endpoints and
//! rebuilds it whenever the endpoint set, their weights or their health change. Apart from an
//! internal atomic cursor a balancer is immutable, so [`Balancer::pick`] runs concurrently on
//! every worker thread without locks, allocation or system calls. All precomputation
//! (sequences, rings, lookup tables) happens once in [`Balancer::new`].
//!
//! # Algorithms
//!
//! * **Round robin** ([`LbPolicy::RoundRobin`]): nginx-style *smooth* weighted round robin.
//!   Weights are reduced by their gcd and the whole period of the smooth schedule is
//!   precomputed (weights 5,1,1 give `a a b a c a a`, not `a a a a a b c`). The period is
//!   capped at 64Ki entries (or the host count, if larger) by scaling weights proportionally
//!   while keeping every host in the period at least once. A pick is a `fetch_add` on an
//!   atomic cursor, which starts at a random offset so that a fleet of proxies does not hit
//!   host 0 in lockstep. Equal weights need no table at all.
//! * **Least request** ([`LbPolicy::LeastRequest`]): power-of-N-choices. `choice_count`
//!   hosts are sampled at random, weighted by weight, and the one with the fewest in-flight
//!   requests wins (ties go to the earlier sample, which keeps the weighted distribution when
//!   the cluster is idle). A sample that repeats the current best host is redrawn a few
//!   times, so a single overloaded host is not "compared against itself".
//! * **Random** ([`LbPolicy::Random`]): weighted random, by binary search over cumulative
//!   weights (uniform `fastrand` index when all weights are equal).
//! * **Ring hash** ([`LbPolicy::RingHash`]): Ketama-style consistent hashing. Each host gets
//!   points `xxh64("<key>_<n>")`, `n = 0, 1, ...`, their number proportional to its weight; a
//!   request hash maps to the first point at or after it, wrapping around. The number of
//!   points per unit of weight is a power of two (the smallest making the ring at least
//!   `min_ring_size`), so adding or removing a host usually leaves every other host's points
//!   unchanged and only the keys of the changed host move. The ring never exceeds
//!   `max_ring_size` (except to give every host at least one point).
//! * **Maglev** ([`LbPolicy::Maglev`]): the lookup-table consistent hash from Google's Maglev
//!   paper, in its weighted form: every host walks its own permutation of the (prime-sized)
//!   table, derived from two independent hashes of its key (offset and skip), and hosts take
//!   turns claiming free slots, a host with the largest weight claiming one slot per round and
//!   others proportionally less often. A pick is `table[hash % table_size]`.
//!
//! Ring hash and Maglev fall back to a random pick (a random hash, so still weighted) when
//! the request carries no hash. [`hash_key`] is the xxHash64 (seed 0) used to hash request
//! attributes, and the same function hashes host keys, so every proxy instance given the same
//! host list makes exactly the same choices.
//!
//! # Why hand-written
//!
//! These algorithms are small, but no maintained crate offers smooth WRR, Ketama rings and
//! weighted Maglev over our host model (index-addressed hosts, u32 weights, an external
//! in-flight counter, lock-free concurrent picks) with the exact placement rules above, which
//! other proxies rely on for hash compatibility. Hashing itself is not hand-rolled: it uses
//! the `xxhash-rust` crate.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

mod maglev;
mod random;
mod ring_hash;
mod round_robin;

use random::WeightedSampler;

/// Which algorithm.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum LbPolicy {
    /// Weighted round robin (plain round robin when all weights are equal). Smooth interleaving
    /// (nginx-style smooth WRR: weights 5,1,1 give a a b a c a a, not a a a a a b c).
    #[default]
    RoundRobin,
    /// Power-of-N-choices least request: sample `choice_count` (default 2) hosts at random
    /// (weighted by weight), take the one with the fewest active requests.
    /// A `choice_count` of 0 is treated as the default.
    LeastRequest { choice_count: u32 },
    /// Weighted random.
    Random,
    /// Consistent hashing ring (Ketama-style), xxHash64 of `"<host key>_<replica n>"` per point,
    /// number of points per host proportional to weight, total ring size clamped to
    /// [min_ring_size, max_ring_size] (both capped at [`LbPolicy::MAX_RING_SIZE`]).
    RingHash { min_ring_size: u64, max_ring_size: u64 },
    /// Maglev consistent hashing (Google's paper), table size a prime (default 65537), weighted.
    /// A size that is 0 means the default; one that is not prime, or smaller than the number of
    /// hosts, is raised to the next prime; sizes are capped at [`LbPolicy::MAX_MAGLEV_TABLE_SIZE`].
    Maglev { table_size: u64 },
}

impl LbPolicy {
    /// Default `choice_count` of [`LbPolicy::LeastRequest`].
    pub const DEFAULT_CHOICE_COUNT: u32 = 2;
    /// Default `min_ring_size` of [`LbPolicy::RingHash`].
    pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
    /// Default `max_ring_size` of [`LbPolicy::RingHash`].
    pub const DEFAULT_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
    /// Largest ring the balancer builds, whatever the configuration says.
    pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
    /// Default `table_size` of [`LbPolicy::Maglev`] (a prime).
    pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
    /// Largest Maglev table the balancer builds (a prime).
    pub const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;
}

/// One eligible endpoint as the balancer sees it.
#[derive(Clone, Debug)]
pub struct HostInfo {
    /// Stable identity used as the hashing key (the endpoint address string, e.g. "10.0.0.1:8080").
    pub key: String,
    /// Relative weight, >= 1 (0 is treated as 1).
    pub weight: u32,
}

/// Picks upstream hosts for one cluster. Immutable apart from internal atomics; build a new
/// one when the host set changes.
pub struct Balancer {
    len: usize,
    inner: Inner,
}

enum Inner {
    /// No hosts, or exactly one: the answer does not depend on the policy.
    Trivial,
    RoundRobin(round_robin::RoundRobin),
    LeastRequest {
        sampler: WeightedSampler,
        choice_count: u32,
    },
    Random(WeightedSampler),
    RingHash(ring_hash::Ring),
    Maglev(maglev::Table),
}

/// Effective weight of a host: at least 1.
fn weight_of(host: &HostInfo) -> u64 {
    u64::from(host.weight.max(1))
}

impl Balancer {
    /// Builds the balancer. `hosts` may be empty (then `pick` returns None).
    ///
    /// # Panics
    /// If there are more than `u32::MAX` hosts.
    pub fn new(policy: &LbPolicy, hosts: &[HostInfo]) -> Balancer {
        assert!(
            u32::try_from(hosts.len()).is_ok(),
            "weft-lb supports at most u32::MAX hosts"
        );
        let len = hosts.len();
        let inner = if len <= 1 {
            Inner::Trivial
        } else {
            match policy {
                LbPolicy::RoundRobin => Inner::RoundRobin(round_robin::RoundRobin::new(hosts)),
                LbPolicy::LeastRequest { choice_count } => Inner::LeastRequest {
                    sampler: WeightedSampler::new(hosts),
                    choice_count: if *choice_count == 0 {
                        LbPolicy::DEFAULT_CHOICE_COUNT
                    } else {
                        *choice_count
                    },
                },
                LbPolicy::Random => Inner::Random(WeightedSampler::new(hosts)),
                LbPolicy::RingHash {
                    min_ring_size,
                    max_ring_size,
                } => Inner::RingHash(ring_hash::Ring::new(hosts, *min_ring_size, *max_ring_size)),
                LbPolicy::Maglev { table_size } => Inner::Maglev(maglev::Table::new(hosts, *table_size)),
            }
        };
        Balancer { len, inner }
    }

    /// Picks a host index into the `hosts` slice given to `new`.
    /// `hash`: the request hash (from header/cookie/source IP) for RingHash/Maglev; when it is None
    /// those two fall back to a random pick. Other policies ignore it.
    /// `active_requests(i)`: current in-flight requests of host i (used by LeastRequest only).
    #[inline]
    pub fn pick(&self, hash: Option<u64>, active_requests: &dyn Fn(usize) -> u32) -> Option<usize> {
        let index = match &self.inner {
            Inner::Trivial => return if self.len == 0 { None } else { Some(0) },
            Inner::RoundRobin(rr) => rr.pick(),
            Inner::LeastRequest { sampler, choice_count } => least_request(sampler, *choice_count, active_requests),
            Inner::Random(sampler) => sampler.sample(),
            Inner::RingHash(ring) => ring.lookup(hash.unwrap_or_else(|| fastrand::u64(..))),
            Inner::Maglev(table) => table.lookup(hash.unwrap_or_else(|| fastrand::u64(..))),
        };
        debug_assert!(index < self.len);
        Some(index)
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = match &self.inner {
            Inner::Trivial => "trivial",
            Inner::RoundRobin(_) => "round_robin",
            Inner::LeastRequest { .. } => "least_request",
            Inner::Random(_) => "random",
            Inner::RingHash(_) => "ring_hash",
            Inner::Maglev(_) => "maglev",
        };
        f.debug_struct("Balancer")
            .field("policy", &policy)
            .field("len", &self.len)
            .finish()
    }
}

/// How many times a sample equal to the current best is redrawn before giving up.
const LEAST_REQUEST_REDRAWS: u32 = 8;

fn least_request(sampler: &WeightedSampler, choice_count: u32, active_requests: &dyn Fn(usize) -> u32) -> usize {
    let mut best = sampler.sample();
    let mut best_active = active_requests(best);
    for _ in 1..choice_count {
        let mut candidate = sampler.sample();
        let mut redraws = 0;
        while candidate == best && redraws < LEAST_REQUEST_REDRAWS {
            candidate = sampler.sample();
            redraws += 1;
        }
        if candidate == best {
            continue;
        }
        let active = active_requests(candidate);
        if active < best_active {
            best = candidate;
            best_active = active;
        }
    }
    best
}

/// xxHash64 (seed 0) of bytes: the function the proxy uses to hash header values, cookies, source IPs.
#[inline]
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

// The proxy shares balancers across worker threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Balancer>();
};

/// Used by the table-building modules: a live cursor with a random starting point.
fn random_cursor(period: usize) -> AtomicUsize {
    AtomicUsize::new(if period == 0 { 0 } else { fastrand::usize(..period) })
}

/// Relaxed is enough: the cursor only spreads picks, it orders no other memory.
fn next(cursor: &AtomicUsize) -> usize {
    cursor.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_key_is_xxh64_seed_0() {
        // Reference vectors of xxHash64 with seed 0.
        assert_eq!(hash_key(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(hash_key(b"abc"), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn debug_names_the_policy() {
        let hosts: Vec<HostInfo> = (0..2)
            .map(|i| HostInfo {
                key: format!("h{i}"),
                weight: 1,
            })
            .collect();
        let b = Balancer::new(&LbPolicy::Random, &hosts);
        assert_eq!(format!("{b:?}"), "Balancer { policy: \"random\", len: 2 }");
    }

    #[test]
    fn least_request_zero_choice_count_uses_default() {
        let hosts: Vec<HostInfo> = (0..3)
            .map(|i| HostInfo {
                key: format!("h{i}"),
                weight: 1,
            })
            .collect();
        let b = Balancer::new(&LbPolicy::LeastRequest { choice_count: 0 }, &hosts);
        match &b.inner {
            Inner::LeastRequest { choice_count, .. } => assert_eq!(*choice_count, 2),
            _ => panic!("wrong policy"),
        }
    }
}
