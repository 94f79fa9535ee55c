//! Prometheus metrics, prefix `weft_control_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabel {
    pub registry: String,
}

pub struct Metrics {
    registry: Registry,
    /// Per registry (`--registry` flag): 1 while its store is reachable.
    pub registry_connected: Family<RegistryLabel, Gauge>,
    /// Per registry: seconds since its store was last reachable (0 while connected); its last
    /// known state keeps serving meanwhile.
    pub registry_stale_seconds: Family<RegistryLabel, Gauge>,
    /// Per registry: entries currently skipped as malformed.
    pub registry_skipped_entries: Family<RegistryLabel, Gauge>,
    /// Definitions dropped because a registry with precedence defines the same name differently.
    pub registry_conflicts: Gauge,
    pub connected: Family<StreamLabel, Gauge>,
    pub streams_total: Family<StreamLabel, Counter>,
    /// ADS streams refused on the secure port: no client certificate, or a node that is not the
    /// certificate's service.
    pub streams_refused: Counter,
    pub pushes: Family<TypeLabel, Counter>,
    pub resources_sent: Family<TypeLabel, Counter>,
    pub bytes_sent: Family<TypeLabel, Counter>,
    pub acks: Family<TypeLabel, Counter>,
    pub nacks: Family<TypeLabel, Counter>,
    pub registry_errors: Counter,
    pub registry_invalid_sources: Gauge,
    pub snapshot_generation: Gauge,
    pub services: Gauge,
    pub endpoints: Gauge,
    /// From snapshot publication to the response being queued on a stream.
    pub push_latency: Histogram,
    /// Counts for the periodic log summary (each event itself is logged at debug).
    pub activity: Activity,
    /// The mesh CA's counters (zero when the CA is off).
    pub ca: crate::ca::service::CaMetrics,
}

/// What happened since the last log summary ([`Activity::take`]).
#[derive(Default)]
pub struct Activity {
    pub streams_opened: std::sync::atomic::AtomicU64,
    pub streams_closed: std::sync::atomic::AtomicU64,
    pub snapshots: std::sync::atomic::AtomicU64,
    pub nacks: std::sync::atomic::AtomicU64,
    /// NACK messages already logged at WARN in this period, so that a thousand proxies refusing
    /// the same resource make one WARN line, not a thousand.
    nack_messages: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

impl Activity {
    /// Counts a NACK; true if its (type, message) is new in this period (log it at WARN).
    pub fn nack(&self, r#type: &str, message: &str) -> bool {
        self.nacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut seen = self.nack_messages.lock().unwrap_or_else(|p| p.into_inner());
        seen.len() < 1000 && seen.insert((r#type.to_string(), message.to_string()))
    }

    /// (streams opened, closed, snapshots published, NACKs) since the last call.
    pub fn take(&self) -> (u64, u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.nack_messages.lock().unwrap_or_else(|p| p.into_inner()).clear();
        (
            self.streams_opened.swap(0, Relaxed),
            self.streams_closed.swap(0, Relaxed),
            self.snapshots.swap(0, Relaxed),
            self.nacks.swap(0, Relaxed),
        )
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft_control");
        let m = Metrics {
            connected: Family::default(),
            streams_total: Family::default(),
            streams_refused: Counter::default(),
            pushes: Family::default(),
            resources_sent: Family::default(),
            bytes_sent: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            registry_errors: Counter::default(),
            registry_invalid_sources: Gauge::default(),
            snapshot_generation: Gauge::default(),
            services: Gauge::default(),
            endpoints: Gauge::default(),
            push_latency: Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            activity: Activity::default(),
            ca: Default::default(),
            registry: Registry::default(),
            registry_connected: Family::default(),
            registry_stale_seconds: Family::default(),
            registry_skipped_entries: Family::default(),
            registry_conflicts: Gauge::default(),
        };
        m.ca.register(&mut registry);
        registry.register("connected_proxies", "ADS streams currently open", m.connected.clone());
        registry.register("streams", "ADS streams accepted", m.streams_total.clone());
        registry.register(
            "streams_refused",
            "ADS streams refused on the secure port (no client certificate, or a node that is not the certificate's service)",
            m.streams_refused.clone(),
        );
        registry.register("pushes", "xDS responses sent", m.pushes.clone());
        registry.register(
            "resources_sent",
            "Resources sent in xDS responses",
            m.resources_sent.clone(),
        );
        registry.register("bytes_sent", "Encoded resource bytes sent", m.bytes_sent.clone());
        registry.register("acks", "ACKs received", m.acks.clone());
        registry.register("nacks", "NACKs received", m.nacks.clone());
        registry.register(
            "registry_errors",
            "Registry sources rejected",
            m.registry_errors.clone(),
        );
        registry.register(
            "registry_invalid_sources",
            "Registry sources currently rejected (their last good content is in effect)",
            m.registry_invalid_sources.clone(),
        );
        registry.register(
            "snapshot_generation",
            "Current snapshot generation",
            m.snapshot_generation.clone(),
        );
        registry.register("services", "Services in the registry", m.services.clone());
        registry.register("endpoints", "Endpoints in the registry", m.endpoints.clone());
        registry.register(
            "push_latency_seconds",
            "Time from snapshot publication to a response queued for a proxy",
            m.push_latency.clone(),
        );
        registry.register(
            "registry_connected",
            "1 while the registry's store is reachable",
            m.registry_connected.clone(),
        );
        registry.register(
            "registry_stale_seconds",
            "Seconds since the registry's store was last reachable (0 while connected)",
            m.registry_stale_seconds.clone(),
        );
        registry.register(
            "registry_skipped_entries",
            "Registry entries currently skipped as malformed",
            m.registry_skipped_entries.clone(),
        );
        registry.register(
            "registry_conflicts",
            "Definitions dropped because a registry with precedence defines the same name differently",
            m.registry_conflicts.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_nack_is_logged_at_warn_once_per_summary_period() {
        let a = super::Activity::default();
        assert!(a.nack("cds", "cluster \"x\": bad"));
        assert!(!a.nack("cds", "cluster \"x\": bad"));
        assert!(a.nack("eds", "cluster \"x\": bad"));
        assert_eq!(a.take(), (0, 0, 0, 3));
        assert!(a.nack("cds", "cluster \"x\": bad"), "a new period logs it again");
    }
}
