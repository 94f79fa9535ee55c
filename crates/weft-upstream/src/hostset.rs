//! Which hosts may take traffic right now, and how load spreads over them.
//!
//! A [`HostSet`] is rebuilt (and swapped atomically) whenever health, ejection or membership changes,
//! so picking stays lock-free. Eligible hosts are those passing active health checks and not ejected
//! by outlier detection. They are grouped into levels by (priority, locality distance) — distance 0 is
//! the proxy's own zone, 1 its region, 2 elsewhere (only with `locality_aware`). Each level takes load
//! in proportion to its healthy share times an overprovisioning factor of 1.4, and what it cannot take
//! spills to the next level, as in Envoy. When fewer than `healthy_panic_threshold` percent of all
//! hosts are eligible, health is ignored (panic mode) so a mostly-failed cluster still serves.

use crate::cluster::Host;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use weft_config::{Cluster, LbPolicy, Locality, SubsetFallback};
use weft_lb::{Balancer, HostInfo};

/// Basis points (1/100 of a percent) of load.
const FULL: u32 = 10_000;
const OVERPROVISIONING: f64 = 1.4;

/// Hosts and a balancer over them.
pub struct Pool {
    pub hosts: Vec<Arc<Host>>,
    balancer: Balancer,
}

impl Pool {
    fn new(policy: &LbPolicy, hosts: Vec<Arc<Host>>) -> Pool {
        let info: Vec<HostInfo> = hosts
            .iter()
            .map(|h| HostInfo {
                key: h.address.to_string(),
                weight: h.weight,
            })
            .collect();
        Pool {
            balancer: Balancer::new(&lb_policy(policy), &info),
            hosts,
        }
    }

    pub fn pick(&self, hash: Option<u64>, exclude: Option<&Arc<Host>>) -> Option<Arc<Host>> {
        let active = |i: usize| self.hosts[i].active_rq.load(Ordering::Relaxed);
        let i = self.balancer.pick(hash, &active)?;
        let h = &self.hosts[i];
        if let Some(ex) = exclude {
            if Arc::ptr_eq(h, ex) && self.hosts.len() > 1 {
                // A retry: one more pick, and failing that the next host, so it lands elsewhere.
                let j = self
                    .balancer
                    .pick(hash.map(|h| h.wrapping_add(0x9e37_79b9_7f4a_7c15)), &active)
                    .unwrap_or(i);
                let j = if j == i { (i + 1) % self.hosts.len() } else { j };
                return Some(self.hosts[j].clone());
            }
        }
        Some(h.clone())
    }
}

fn lb_policy(p: &LbPolicy) -> weft_lb::LbPolicy {
    match *p {
        LbPolicy::RoundRobin => weft_lb::LbPolicy::RoundRobin,
        LbPolicy::LeastRequest { choice_count } => weft_lb::LbPolicy::LeastRequest { choice_count },
        LbPolicy::Random => weft_lb::LbPolicy::Random,
        LbPolicy::RingHash {
            min_ring_size,
            max_ring_size,
        } => weft_lb::LbPolicy::RingHash {
            min_ring_size,
            max_ring_size,
        },
        LbPolicy::Maglev { table_size } => weft_lb::LbPolicy::Maglev { table_size },
    }
}

struct Level {
    /// Upper bound (exclusive) of this level's share of [0, FULL).
    until: u32,
    pool: Pool,
}

pub type Labels = BTreeMap<String, String>;

pub struct HostSet {
    /// Every member, healthy or not.
    pub hosts: Vec<Arc<Host>>,
    pub eligible: usize,
    pub panic: bool,
    levels: Vec<Level>,
    /// Used in panic mode, and as the any-endpoint subset fallback.
    all: Pool,
    policy: LbPolicy,
    subsets: Option<SubsetConf>,
    subset_cache: Mutex<HashMap<Labels, Arc<Pool>>>,
}

struct SubsetConf {
    fallback: SubsetFallback,
    default: Labels,
}

pub fn is_eligible(h: &Host) -> bool {
    h.healthy.load(Ordering::Relaxed) && !h.outlier.ejected.load(Ordering::Relaxed)
}

fn distance(local: &Locality, h: &Locality) -> u8 {
    let unknown = local.region.is_empty() && local.zone.is_empty();
    if unknown || (h.region == local.region && h.zone == local.zone) {
        0
    } else if h.region == local.region {
        1
    } else {
        2
    }
}

impl HostSet {
    pub fn new(cfg: &Cluster, local: &Locality, hosts: Vec<Arc<Host>>) -> HostSet {
        let eligible: Vec<&Arc<Host>> = hosts.iter().filter(|h| is_eligible(h)).collect();
        let n_eligible = eligible.len();
        let panic = !hosts.is_empty()
            && (n_eligible == 0 || (n_eligible as f64) * 100.0 / (hosts.len() as f64) < cfg.healthy_panic_threshold);

        // Group by (priority, distance).
        // (priority, distance) -> (members, eligible members)
        type Groups = BTreeMap<(u32, u8), (usize, Vec<Arc<Host>>)>;
        let mut groups: Groups = BTreeMap::new();
        for h in &hosts {
            let d = if cfg.locality_aware {
                distance(local, &h.locality)
            } else {
                0
            };
            let g = groups.entry((h.priority, d)).or_default();
            g.0 += 1;
            if is_eligible(h) {
                g.1.push(h.clone());
            }
        }
        let mut levels = Vec::new();
        if !panic {
            let mut remaining = FULL;
            let mut shares = Vec::new();
            for (total, members) in groups.into_values() {
                if members.is_empty() {
                    continue;
                }
                let health = members.len() as f64 / total as f64;
                let capacity = ((health * OVERPROVISIONING).min(1.0) * FULL as f64) as u32;
                let share = capacity.min(remaining);
                remaining -= share;
                shares.push((share, members));
            }
            // What no level could take is spread in proportion to what each took.
            let assigned: u32 = shares.iter().map(|(s, _)| *s).sum();
            let mut until = 0u32;
            for (share, members) in shares {
                let scaled = if assigned == 0 {
                    0
                } else {
                    ((share as u64 * FULL as u64) / assigned as u64) as u32
                };
                if scaled == 0 {
                    continue;
                }
                until += scaled;
                levels.push(Level {
                    until,
                    pool: Pool::new(&cfg.lb_policy, members),
                });
            }
            if let Some(last) = levels.last_mut() {
                last.until = FULL;
            }
        }
        HostSet {
            all: Pool::new(&cfg.lb_policy, hosts.clone()),
            eligible: n_eligible,
            panic,
            levels,
            hosts,
            policy: cfg.lb_policy.clone(),
            subsets: cfg.subsets.as_ref().map(|s| SubsetConf {
                fallback: s.fallback_policy,
                default: s.default_subset.clone(),
            }),
            subset_cache: Mutex::new(HashMap::new()),
        }
    }

    /// Picks a host: by level share (the hash chooses the level when there is one, so hashing stays
    /// sticky), then by the cluster's balancer within the level.
    pub fn pick(&self, hash: Option<u64>, exclude: Option<&Arc<Host>>) -> Option<Arc<Host>> {
        if self.panic || self.levels.is_empty() {
            return self.all.pick(hash, exclude);
        }
        if self.levels.len() == 1 {
            return self.levels[0].pool.pick(hash, exclude);
        }
        let roll = match hash {
            Some(h) => (h % FULL as u64) as u32,
            None => fastrand::u32(0..FULL),
        };
        let level = self
            .levels
            .iter()
            .find(|l| roll < l.until)
            .unwrap_or(&self.levels[self.levels.len() - 1]);
        level.pool.pick(hash, exclude)
    }

    /// Picks within the subset of hosts whose labels include `want`, applying the fallback policy
    /// when that subset has no eligible host.
    pub fn pick_subset(&self, want: &Labels, hash: Option<u64>, exclude: Option<&Arc<Host>>) -> Option<Arc<Host>> {
        let Some(conf) = &self.subsets else {
            return self.pick(hash, exclude);
        };
        if let Some(pool) = self.subset(want) {
            return pool.pick(hash, exclude);
        }
        match conf.fallback {
            SubsetFallback::NoFallback => None,
            SubsetFallback::AnyEndpoint => self.pick(hash, exclude),
            SubsetFallback::DefaultSubset => self.subset(&conf.default)?.pick(hash, exclude),
        }
    }

    /// The eligible hosts carrying all of `want`'s labels (panic mode: all such hosts).
    fn subset(&self, want: &Labels) -> Option<Arc<Pool>> {
        let mut cache = self.subset_cache.lock();
        if let Some(p) = cache.get(want) {
            return (!p.hosts.is_empty()).then(|| p.clone());
        }
        let members: Vec<Arc<Host>> = self
            .hosts
            .iter()
            .filter(|h| (self.panic || is_eligible(h)) && want.iter().all(|(k, v)| h.labels.get(k) == Some(v)))
            .cloned()
            .collect();
        let pool = Arc::new(Pool::new(&self.policy, members));
        if cache.len() < 1024 {
            cache.insert(want.clone(), pool.clone());
        }
        (!pool.hosts.is_empty()).then_some(pool)
    }
}
