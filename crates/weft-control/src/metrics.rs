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

pub struct Metrics {
    registry: Registry,
    pub connected: Family<StreamLabel, Gauge>,
    pub streams_total: Family<StreamLabel, Counter>,
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
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft_control");
        let m = Metrics {
            connected: Family::default(),
            streams_total: Family::default(),
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
            registry: Registry::default(),
        };
        registry.register("connected_proxies", "ADS streams currently open", m.connected.clone());
        registry.register("streams", "ADS streams accepted", m.streams_total.clone());
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
