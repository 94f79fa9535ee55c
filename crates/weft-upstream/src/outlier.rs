//! Outlier detection (passive health): hosts that keep failing real requests are ejected for a
//! while, longer each time they are ejected again.
//!
//! Consecutive-error detectors eject on the request path the moment a threshold is reached.
//! Success-rate and failure-percentage detectors, and un-ejection, run once per `interval` on the
//! control thread. At most `max_ejection_percent` of hosts (but always at least one) are ejected.

use crate::cluster::{ClusterRt, Host};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use weft_config::OutlierDetection;

/// What one upstream try came to, as outlier detection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// Connect failure, timeout or reset: a local-origin error.
    LocalFailure,
}

/// Per-host counters.
#[derive(Default)]
pub struct OutlierState {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    interval_success: AtomicU64,
    interval_failure: AtomicU64,
    /// Ejection multiplier: grows with each ejection, shrinks after healthy intervals.
    multiplier: AtomicU32,
    ejected_until_ms: AtomicU64,
    pub ejections: AtomicU64,
    pub ejected: AtomicBool,
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl OutlierState {
    /// Records an outcome; returns true when a consecutive-error threshold was just reached.
    fn record(&self, o: &OutlierDetection, outcome: Outcome) -> bool {
        let hit = |c: &AtomicU32, threshold: u32| threshold > 0 && c.fetch_add(1, Ordering::Relaxed) + 1 >= threshold;
        match outcome {
            Outcome::Status(s) if s >= 500 => {
                self.interval_failure.fetch_add(1, Ordering::Relaxed);
                self.consecutive_local.store(0, Ordering::Relaxed);
                let gw = if matches!(s, 502..=504) {
                    hit(&self.consecutive_gateway, o.consecutive_gateway_failure)
                } else {
                    self.consecutive_gateway.store(0, Ordering::Relaxed);
                    false
                };
                hit(&self.consecutive_5xx, o.consecutive_5xx) || gw
            }
            Outcome::Status(_) => {
                self.interval_success.fetch_add(1, Ordering::Relaxed);
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                self.consecutive_local.store(0, Ordering::Relaxed);
                false
            }
            Outcome::LocalFailure => {
                // Without a split between local and external errors (Envoy's default), a local
                // failure also counts as a 5xx (503) and a gateway failure.
                self.interval_failure.fetch_add(1, Ordering::Relaxed);
                let l = hit(&self.consecutive_local, o.consecutive_local_origin_failure);
                let x = hit(&self.consecutive_5xx, o.consecutive_5xx);
                let g = hit(&self.consecutive_gateway, o.consecutive_gateway_failure);
                l || x || g
            }
        }
    }

    fn reset_interval(&self) {
        self.interval_success.store(0, Ordering::Relaxed);
        self.interval_failure.store(0, Ordering::Relaxed);
    }

    /// Forgets any ejection (used when a reload turns outlier detection off).
    pub fn clear(&self) {
        self.ejected.store(false, Ordering::Relaxed);
        self.reset_consecutive();
        self.reset_interval();
    }

    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }
}

impl ClusterRt {
    /// Feeds outlier detection with the result of one try on `host`.
    pub fn report(&self, host: &Host, outcome: Outcome) {
        let Some(o) = &self.config.outlier_detection else {
            return;
        };
        if host.outlier.record(o, outcome) {
            self.try_eject(host, o);
        }
    }

    fn try_eject(&self, host: &Host, o: &OutlierDetection) -> bool {
        if host.outlier.ejected.load(Ordering::Relaxed) {
            return false;
        }
        let set = self.hosts.load();
        let total = set.hosts.len();
        let ejected = set
            .hosts
            .iter()
            .filter(|h| h.outlier.ejected.load(Ordering::Relaxed))
            .count();
        let allowed = ((total * o.max_ejection_percent as usize) / 100).max(1);
        if ejected >= allowed {
            self.stats.outlier_overflow.inc();
            host.outlier.reset_consecutive();
            return false;
        }
        if host.outlier.ejected.swap(true, Ordering::Relaxed) {
            return false;
        }
        let m = host.outlier.multiplier.fetch_add(1, Ordering::Relaxed) + 1;
        let time = (o.base_ejection_time * m).min(o.max_ejection_time);
        host.outlier
            .ejected_until_ms
            .store(now_ms() + time.as_millis() as u64, Ordering::Relaxed);
        host.outlier.ejections.fetch_add(1, Ordering::Relaxed);
        host.outlier.reset_consecutive();
        // Failures before the ejection must not count against the host when it returns.
        host.outlier.reset_interval();
        self.stats.outlier_ejections.inc();
        tracing::info!(cluster = %self.config.name, host = %host.address, ejection_ms = time.as_millis() as u64, "outlier ejected");
        self.rebuild_hosts();
        true
    }

    /// One detection interval: un-eject hosts whose time is up, run the statistical detectors,
    /// reset the interval counters.
    fn outlier_interval(&self, o: &OutlierDetection) {
        let set = self.hosts.load_full();
        let now = now_ms();
        let mut changed = false;
        for h in &set.hosts {
            let st = &h.outlier;
            if st.ejected.load(Ordering::Relaxed) {
                if now >= st.ejected_until_ms.load(Ordering::Relaxed) {
                    st.ejected.store(false, Ordering::Relaxed);
                    st.reset_consecutive();
                    st.reset_interval();
                    changed = true;
                    tracing::info!(cluster = %self.config.name, host = %h.address, "outlier ejection ended");
                }
            } else if st.multiplier.load(Ordering::Relaxed) > 0 && st.interval_failure.load(Ordering::Relaxed) == 0 {
                st.multiplier.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if changed {
            self.rebuild_hosts();
        }
        // Statistical detectors over this interval's volume.
        let stats: Vec<(&Arc<Host>, u64, u64)> = set
            .hosts
            .iter()
            .filter(|h| !h.outlier.ejected.load(Ordering::Relaxed))
            .map(|h| {
                (
                    h,
                    h.outlier.interval_success.swap(0, Ordering::Relaxed),
                    h.outlier.interval_failure.swap(0, Ordering::Relaxed),
                )
            })
            .collect();
        let mut to_eject = Vec::new();
        let sr: Vec<(&Arc<Host>, f64)> = stats
            .iter()
            .filter(|(_, ok, fail)| ok + fail >= o.success_rate_request_volume as u64 && ok + fail > 0)
            .map(|(h, ok, fail)| (*h, *ok as f64 * 100.0 / (*ok + *fail) as f64))
            .collect();
        if sr.len() >= o.success_rate_minimum_hosts as usize && o.success_rate_minimum_hosts > 0 {
            let mean = sr.iter().map(|(_, r)| r).sum::<f64>() / sr.len() as f64;
            let var = sr.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / sr.len() as f64;
            let threshold = mean - var.sqrt() * (o.success_rate_stdev_factor as f64 / 1000.0);
            to_eject.extend(sr.iter().filter(|(_, r)| *r < threshold).map(|(h, _)| (*h).clone()));
        }
        if o.failure_percentage_threshold > 0 {
            let fp: Vec<(&Arc<Host>, f64)> = stats
                .iter()
                .filter(|(_, ok, fail)| ok + fail >= o.failure_percentage_request_volume as u64 && ok + fail > 0)
                .map(|(h, ok, fail)| (*h, *fail as f64 * 100.0 / (*ok + *fail) as f64))
                .collect();
            if fp.len() >= o.failure_percentage_minimum_hosts as usize {
                to_eject.extend(
                    fp.iter()
                        .filter(|(_, p)| *p >= o.failure_percentage_threshold as f64)
                        .map(|(h, _)| (*h).clone()),
                );
            }
        }
        for h in to_eject {
            self.try_eject(&h, o);
        }
    }
}

/// Runs the interval detector for a cluster until the cluster is gone.
pub async fn run(cluster: Weak<ClusterRt>) {
    let Some(interval) = cluster
        .upgrade()
        .and_then(|c| c.config.outlier_detection.as_ref().map(|o| o.interval))
    else {
        return;
    };
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else { return };
        if let Some(o) = c.config.outlier_detection.clone() {
            c.outlier_interval(&o);
        }
    }
}
