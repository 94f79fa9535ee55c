//! Istio-standard request metrics, beside weft's own: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`, with
//! Istio's labels, so that dashboards written for an Istio mesh read weft's `/stats/prometheus`.
//!
//! Where label values come from:
//! - `reporter`: `destination` on an inbound listener (or one whose direction is not said),
//!   `source` on an outbound one.
//! - This proxy's own workload (the `destination_*` labels when it reports as destination, the
//!   `source_*` ones as source): the node's metadata, under Istio's keys — `WORKLOAD_NAME`,
//!   `NAMESPACE`, `CANONICAL_SERVICE`, `CANONICAL_REVISION`, `CLUSTER_ID`, `PRINCIPAL` — with the
//!   node id as the workload name when absent.
//! - The other side: `destination_service` and `destination_service_name` are the upstream
//!   cluster's name (until `weft control` publishes service metadata on clusters); the peer's
//!   workload, namespace and principal are `unknown`, as Istio reports them without peer metadata.
//! - `response_code` (exact status), `response_flags` (weft's reason code, `-` when none),
//!   `request_protocol` (`http` or `grpc`), `grpc_response_status` (from a trailers-only gRPC
//!   response's headers, else empty), `connection_security_policy` (`none`: plaintext).
//!
//! Cost per request: one read-locked hash lookup, without allocation, of a pre-built handle set
//! keyed by (cluster, status, reason, gRPC status); then an atomic counter increment and three
//! histogram observations (prometheus-client's histograms take a short per-label-set lock, as
//! weft's own latency histograms do). A label set is built
//! (and allocated) once, the first time its key is seen. Cardinality is bounded: no path, id or
//! header value is a label; at most [`MAX_LABEL_SETS`] sets exist per connection manager, and later
//! new keys share one overflow set whose `response_code` and `destination_service` are `overflow`.

use crate::hist::Histogram;
use crate::shard::Counter;
use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Label sets per connection manager before new keys go to the overflow set.
pub const MAX_LABEL_SETS: usize = 512;

/// Istio's duration buckets (milliseconds).
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// The labels the request and the TCP metrics share: the reporter and both workloads, in Istio's
/// order (each metric's own labels follow them).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_cluster: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_cluster: String,
}

impl PeerLabels {
    /// `destination_service` and `destination_service_name`: the upstream cluster's name.
    pub(crate) fn set_service(&mut self, service: &str) {
        self.destination_service = service.to_string();
        self.destination_service_name = service.to_string();
    }

    /// The `destination_service*` labels from the service a cluster reaches (Istio's cluster
    /// metadata); an empty namespace keeps the reporter's default.
    pub(crate) fn set_service_ref(&mut self, s: ServiceRef<'_>) {
        self.destination_service = s.host.to_string();
        self.destination_service_name = s.name.to_string();
        if !s.namespace.is_empty() {
            self.destination_service_namespace = s.namespace.to_string();
        }
    }
}

/// The service a cluster reaches, as Istio's cluster metadata says it (`host`, `name`,
/// `namespace`; an empty namespace is not known).
#[derive(Clone, Copy, Debug)]
pub struct ServiceRef<'a> {
    pub host: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IstioLabels {
    #[prometheus(flatten)]
    pub peers: PeerLabels,
    pub request_protocol: String,
    pub response_code: String,
    pub grpc_response_status: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// The families, in their own registry (Istio's names carry no `weft_` prefix).
pub struct IstioMetrics {
    registry: Registry,
    /// The `istio_tcp_*` families (TCP proxy listeners).
    pub tcp: crate::istio_tcp::TcpFamilies,
    requests: Family<IstioLabels, Counter>,
    duration: Family<IstioLabels, Histogram>,
    request_bytes: Family<IstioLabels, Histogram>,
    response_bytes: Family<IstioLabels, Histogram>,
}

impl Default for IstioMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<IstioLabels, Counter>::new_with_constructor(Counter::sharded);
        let duration = Family::<IstioLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(DURATION_BUCKETS)) as fn() -> Histogram,
        );
        let bytes = || {
            Family::<IstioLabels, Histogram>::new_with_constructor(
                (|| {
                    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                        1.0, 10.0, 10,
                    ))
                }) as fn() -> Histogram,
            )
        };
        let request_bytes = bytes();
        let response_bytes = bytes();
        registry.register("istio_requests", "Requests (Istio standard metric)", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds (Istio standard metric)",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes (Istio standard metric; from content-length)",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes (Istio standard metric; from content-length)",
            response_bytes.clone(),
        );
        let tcp = crate::istio_tcp::TcpFamilies::register(&mut registry);
        IstioMetrics {
            registry,
            tcp,
            requests,
            duration,
            request_bytes,
            response_bytes,
        }
    }
}

impl IstioMetrics {
    /// Prometheus text of the Istio families, without the final `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        out
    }

    fn handles(&self, l: &IstioLabels) -> Arc<Handles> {
        Arc::new(Handles {
            requests: self.requests.get_or_create(l).clone(),
            duration: self.duration.get_or_create(l).clone(),
            request_bytes: self.request_bytes.get_or_create(l).clone(),
            response_bytes: self.response_bytes.get_or_create(l).clone(),
        })
    }
}

struct Handles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// Who this proxy is, from the node's metadata (Istio's keys).
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub cluster: String,
}

impl Workload {
    pub fn from_node(id: &str, metadata: &BTreeMap<String, String>) -> Workload {
        let get = |k: &str| metadata.get(k).filter(|v| !v.is_empty()).cloned();
        let unknown = || "unknown".to_string();
        let name = get("WORKLOAD_NAME")
            .or_else(|| (!id.is_empty()).then(|| id.to_string()))
            .unwrap_or_else(unknown);
        let canonical_service = get("CANONICAL_SERVICE")
            .or_else(|| get("app"))
            .unwrap_or_else(|| name.clone());
        Workload {
            namespace: get("NAMESPACE").unwrap_or_else(unknown),
            principal: get("PRINCIPAL").unwrap_or_else(unknown),
            app: get("app").unwrap_or_else(unknown),
            version: get("version").unwrap_or_else(unknown),
            canonical_revision: get("CANONICAL_REVISION")
                .or_else(|| get("version"))
                .unwrap_or_else(|| "latest".into()),
            cluster: get("CLUSTER_ID").unwrap_or_else(unknown),
            canonical_service,
            name,
        }
    }
}

/// Whether the node's metadata turns the Istio metrics off (`WEFT_ISTIO_METRICS: "false"`).
pub fn enabled(metadata: &BTreeMap<String, String>) -> bool {
    metadata.get("WEFT_ISTIO_METRICS").is_none_or(|v| v != "false")
}

/// Cache key: everything per request that a label depends on.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    cluster_hash: u64,
    status: u16,
    flags: &'static str,
    grpc: u8,
}

/// A cache entry: the cluster name it was built for and its handles.
type Cached = (Box<str>, Arc<Handles>);

/// One connection manager's Istio reporter.
pub struct IstioReporter {
    metrics: Arc<IstioMetrics>,
    base: IstioLabels,
    /// Per key: the cluster name it was built for (checked on every hit) and the handles.
    cache: RwLock<crate::FastMap<Key, Cached>>,
    /// The overflow set's labels, and its handles once first used (created then, so that a
    /// proxy within its bounds exports no `overflow` series for dashboards to list).
    overflow_labels: IstioLabels,
    overflow: std::sync::OnceLock<Arc<Handles>>,
    /// `request_protocol` for every exchange (an RPC listener's codec name); `None`: `http` or
    /// `grpc` per exchange.
    protocol: Option<&'static str>,
}

/// The labels of this proxy's side (and `unknown` for the peer's) on a listener reporting as
/// destination (`inbound`) or source; `destination_service` is left for the caller.
pub(crate) fn base_labels(me: &Workload, inbound: bool) -> PeerLabels {
    let unknown = || "unknown".to_string();
    let mut base = PeerLabels {
        reporter: if inbound { "destination" } else { "source" }.into(),
        ..PeerLabels::default()
    };
    let fill = |l: &mut PeerLabels, src: bool, w: Option<&Workload>| {
        let v = |f: fn(&Workload) -> &String| w.map_or_else(unknown, |w| f(w).clone());
        let (wl, ns, pr, app, ver, cs, cr, cl) = (
            v(|w| &w.name),
            v(|w| &w.namespace),
            v(|w| &w.principal),
            v(|w| &w.app),
            v(|w| &w.version),
            v(|w| &w.canonical_service),
            v(|w| &w.canonical_revision),
            v(|w| &w.cluster),
        );
        if src {
            (l.source_workload, l.source_workload_namespace, l.source_principal) = (wl, ns, pr);
            (l.source_app, l.source_version) = (app, ver);
            (
                l.source_canonical_service,
                l.source_canonical_revision,
                l.source_cluster,
            ) = (cs, cr, cl);
        } else {
            (
                l.destination_workload,
                l.destination_workload_namespace,
                l.destination_principal,
            ) = (wl, ns, pr);
            (l.destination_app, l.destination_version) = (app, ver);
            (
                l.destination_canonical_service,
                l.destination_canonical_revision,
                l.destination_cluster,
            ) = (cs, cr, cl);
        }
    };
    fill(&mut base, inbound, None);
    fill(&mut base, !inbound, Some(me));
    base.destination_service_namespace = if inbound { me.namespace.clone() } else { unknown() };
    base
}

/// `connection_security_policy` on a listener reporting as destination (`inbound`) or source.
pub(crate) fn security_policy(inbound: bool) -> String {
    if inbound { "none" } else { "unknown" }.into()
}

/// `grpc` value meaning "not gRPC".
pub const NOT_GRPC: u8 = 255;

impl IstioReporter {
    /// `inbound`: whether this listener takes traffic to the local workload (reporter=destination).
    pub fn new(metrics: Arc<IstioMetrics>, me: &Workload, inbound: bool) -> IstioReporter {
        let base = IstioLabels {
            peers: base_labels(me, inbound),
            connection_security_policy: security_policy(inbound),
            ..IstioLabels::default()
        };
        let mut o = base.clone();
        o.peers.set_service("overflow");
        o.response_code = "overflow".into();
        o.response_flags = "overflow".into();
        o.request_protocol = "overflow".into();
        IstioReporter {
            metrics,
            base,
            cache: RwLock::new(crate::FastMap::default()),
            overflow_labels: o,
            overflow: std::sync::OnceLock::new(),
            protocol: None,
        }
    }

    /// An RPC listener's reporter: `request_protocol` is `protocol` (`dubbo`, `bolt`) and
    /// `response_code` the HTTP-like class of the RPC status the caller passes.
    pub fn with_protocol(mut self, protocol: &'static str) -> IstioReporter {
        self.protocol = Some(protocol);
        self
    }

    /// Records one exchange. `cluster` is the cluster the request was for (forwarded to, or the
    /// matched route's target when the proxy answered by itself), empty when no route matched;
    /// `service` is that cluster's service metadata (the labels then say its host and name rather
    /// than the cluster's name; the first one seen for a cluster name is kept); `flags` is weft's
    /// reason code or `-`; `grpc` is the gRPC status seen in the response headers, or [`NOT_GRPC`].
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        cluster: &str,
        service: Option<ServiceRef<'_>>,
        status: u16,
        flags: &'static str,
        is_grpc: bool,
        grpc: u8,
        elapsed: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let key = Key {
            cluster_hash: fnv(cluster.as_bytes()),
            status,
            flags,
            grpc: if is_grpc { grpc.min(NOT_GRPC - 1) } else { NOT_GRPC },
        };
        let observe = |h: &Handles| {
            h.requests.inc();
            h.duration.observe(elapsed.as_secs_f64() * 1000.0);
            h.request_bytes.observe(request_bytes as f64);
            h.response_bytes.observe(response_bytes as f64);
        };
        // Observed under the read guard: no reference count taken and dropped per request.
        {
            let cache = self.cache.read();
            if let Some((_, h)) = cache.get(&key).filter(|(name, _)| &**name == cluster) {
                observe(h);
                return;
            }
        }
        observe(&self.insert(key, cluster, service, is_grpc));
    }

    #[cold]
    fn insert(&self, key: Key, cluster: &str, service: Option<ServiceRef<'_>>, is_grpc: bool) -> Arc<Handles> {
        let mut cache = self.cache.write();
        if let Some((name, h)) = cache.get(&key) {
            if &**name == cluster {
                return h.clone();
            }
        }
        if cache.len() >= MAX_LABEL_SETS || !(100..=599).contains(&key.status) {
            return self
                .overflow
                .get_or_init(|| self.metrics.handles(&self.overflow_labels))
                .clone();
        }
        let mut l = self.base.clone();
        match service {
            Some(s) if !cluster.is_empty() => l.peers.set_service_ref(s),
            _ => l
                .peers
                .set_service(if cluster.is_empty() { "unknown" } else { cluster }),
        }
        l.request_protocol = match self.protocol {
            Some(p) => p,
            None if is_grpc => "grpc",
            None => "http",
        }
        .into();
        l.response_code = key.status.to_string();
        l.response_flags = key.flags.to_string();
        l.grpc_response_status = if key.grpc == NOT_GRPC {
            String::new()
        } else {
            key.grpc.to_string()
        };
        let h = self.metrics.handles(&l);
        cache.insert(key, (cluster.into(), h.clone()));
        h
    }
}

fn fnv(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_overflow() {
        let m = Arc::new(IstioMetrics::default());
        let meta: BTreeMap<String, String> = [
            ("WORKLOAD_NAME".to_string(), "reviews-v1".to_string()),
            ("NAMESPACE".to_string(), "bookinfo".to_string()),
        ]
        .into();
        let me = Workload::from_node("node-1", &meta);
        let r = IstioReporter::new(m.clone(), &me, true);
        for _ in 0..3 {
            r.record(
                "reviews",
                None,
                200,
                "-",
                false,
                NOT_GRPC,
                Duration::from_millis(3),
                10,
                100,
            );
        }
        r.record(
            "reviews",
            None,
            503,
            "UF",
            false,
            NOT_GRPC,
            Duration::from_millis(1),
            0,
            0,
        );
        let text = m.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
            .unwrap();
        assert!(line.ends_with(" 3"), "{line}");
        for want in [
            "reporter=\"destination\"",
            "destination_workload=\"reviews-v1\"",
            "destination_workload_namespace=\"bookinfo\"",
            "source_workload=\"unknown\"",
            "destination_service_name=\"reviews\"",
            "response_flags=\"-\"",
        ] {
            assert!(line.contains(want), "{want} in {line}");
        }
        assert!(text.contains("response_flags=\"UF\""));
        assert!(
            !text.contains("overflow"),
            "no overflow series before it is used: {text}"
        );
        assert!(text.contains("istio_request_duration_milliseconds_bucket"));
        // Past the bound, new keys share the overflow set.
        for code in 100..(100 + MAX_LABEL_SETS as u16 + 10) {
            r.record("reviews", None, code, "-", false, NOT_GRPC, Duration::ZERO, 0, 0);
        }
        assert!(m.encode().contains("response_code=\"overflow\""));
        assert!(r.cache.read().len() <= MAX_LABEL_SETS);
    }

    #[test]
    fn service_metadata_names_the_destination() {
        let m = Arc::new(IstioMetrics::default());
        let me = Workload::from_node("web-1", &BTreeMap::new());
        let r = IstioReporter::new(m.clone(), &me, false);
        let svc = ServiceRef {
            host: "reviews.shop.svc.cluster.local",
            name: "reviews",
            namespace: "shop",
        };
        r.record("reviews|v2", Some(svc), 200, "-", false, NOT_GRPC, Duration::ZERO, 0, 0);
        r.record("", None, 404, "NR", false, NOT_GRPC, Duration::ZERO, 0, 0);
        let text = m.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
            .unwrap();
        for want in [
            "destination_service=\"reviews.shop.svc.cluster.local\"",
            "destination_service_name=\"reviews\"",
            "destination_service_namespace=\"shop\"",
        ] {
            assert!(line.contains(want), "{want} in {line}");
        }
        assert!(text.contains("destination_service=\"unknown\""), "{text}");
    }
}
