//! Metrics. Label lookups happen once, when a snapshot is built: the request path only touches
//! pre-resolved counters (atomics) and histograms.

use crate::hist::Histogram;
use crate::shard::Counter;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerClassLabel {
    pub listener: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterClassLabel {
    pub cluster: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub listener: String,
    pub vhost: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteClassLabel {
    pub listener: String,
    pub vhost: String,
    pub route: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub listener: String,
    pub reason: &'static str,
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50us .. ~52s in 21 doubling buckets.
    Histogram::new(exponential_buckets(0.00005, 2.0, 21))
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into per-class counters for a status code.
pub fn class_index(status: u16) -> usize {
    ((status / 100).clamp(1, 5) - 1) as usize
}

/// All metric families, registered once for the life of the process.
pub struct Metrics {
    registry: Mutex<Registry>,
    downstream_cx_total: Family<ListenerLabel, Counter>,
    downstream_cx_active: Family<ListenerLabel, Gauge>,
    downstream_cx_overflow: Family<ListenerLabel, Counter>,
    downstream_cx_idle_timeout: Family<ListenerLabel, Counter>,
    downstream_rq_idle_timeout: Family<ListenerLabel, Counter>,
    downstream_rq_header_timeout: Family<ListenerLabel, Counter>,
    downstream_rq_total: Family<ListenerClassLabel, Counter>,
    downstream_rq_time: HistFamily<ListenerLabel>,
    downstream_rq_local: Family<ReasonLabel, Counter>,
    upstream_rq_total: Family<ClusterClassLabel, Counter>,
    upstream_rq_time: HistFamily<ClusterLabel>,
    upstream_rq_active: Family<ClusterLabel, Gauge>,
    upstream_cx_total: Family<ClusterLabel, Counter>,
    upstream_cx_active: Family<ClusterLabel, Gauge>,
    upstream_cx_connect_fail: Family<ClusterLabel, Counter>,
    upstream_rq_timeout: Family<ClusterLabel, Counter>,
    upstream_rq_retry: Family<ClusterLabel, Counter>,
    upstream_rq_retry_overflow: Family<ClusterLabel, Counter>,
    upstream_rq_overflow: Family<ClusterLabel, Counter>,
    upstream_cx_tx_bytes: Family<ClusterLabel, Counter>,
    upstream_cx_rx_bytes: Family<ClusterLabel, Counter>,
    upstream_hosts_eligible: Family<ClusterLabel, Gauge>,
    upstream_panic: Family<ClusterLabel, Gauge>,
    outlier_ejections: Family<ClusterLabel, Counter>,
    outlier_overflow: Family<ClusterLabel, Counter>,
    hc_success: Family<ClusterLabel, Counter>,
    hc_failure: Family<ClusterLabel, Counter>,
    route_rq_total: Family<RouteClassLabel, Counter>,
    route_rq_time: HistFamily<RouteLabel>,
    /// Fault injection, mirroring and local rate limiting.
    pub filters: FilterMetrics,
    /// Distributed tracing: sampled, forced, dropped and exported spans.
    pub tracing: crate::trace::TraceMetrics,
    /// gRPC access-log service clients: entries sent and dropped, streams.
    pub grpc_logs: crate::access_log::GrpcLogMetrics,
    /// Istio-standard request metrics (their own registry: no `weft_` prefix).
    pub istio: std::sync::Arc<crate::istio::IstioMetrics>,
    pub config_reloads: Counter,
    pub config_reload_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("weft");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            downstream_cx_total: Family::default(),
            downstream_cx_active: Family::default(),
            downstream_cx_overflow: Family::default(),
            downstream_cx_idle_timeout: Family::default(),
            downstream_rq_idle_timeout: Family::default(),
            downstream_rq_header_timeout: Family::default(),
            downstream_rq_total: Family::new_with_constructor(Counter::sharded),
            downstream_rq_time: Family::new_with_constructor(latency_histogram),
            downstream_rq_local: Family::default(),
            upstream_rq_total: Family::new_with_constructor(Counter::sharded),
            upstream_rq_time: Family::new_with_constructor(latency_histogram),
            upstream_rq_active: Family::default(),
            upstream_cx_total: Family::default(),
            upstream_cx_active: Family::default(),
            upstream_cx_connect_fail: Family::default(),
            upstream_rq_timeout: Family::default(),
            upstream_rq_retry: Family::default(),
            upstream_rq_retry_overflow: Family::default(),
            upstream_rq_overflow: Family::default(),
            upstream_cx_tx_bytes: Family::default(),
            upstream_cx_rx_bytes: Family::default(),
            upstream_hosts_eligible: Family::default(),
            upstream_panic: Family::default(),
            outlier_ejections: Family::default(),
            outlier_overflow: Family::default(),
            hc_success: Family::default(),
            hc_failure: Family::default(),
            route_rq_total: Family::new_with_constructor(Counter::sharded),
            route_rq_time: Family::new_with_constructor(latency_histogram),
            filters: FilterMetrics::default(),
            tracing: crate::trace::TraceMetrics::default(),
            grpc_logs: Default::default(),
            istio: Default::default(),
            config_reloads: Counter::default(),
            config_reload_failures: Counter::default(),
        };
        r.register(
            "downstream_cx",
            "Downstream connections accepted",
            m.downstream_cx_total.clone(),
        );
        r.register(
            "downstream_cx_active",
            "Downstream connections open",
            m.downstream_cx_active.clone(),
        );
        r.register(
            "downstream_cx_overflow",
            "Downstream connections refused by max_connections",
            m.downstream_cx_overflow.clone(),
        );
        r.register(
            "downstream_cx_idle_timeout",
            "Downstream connections closed by the idle timeout (no request for idle_timeout)",
            m.downstream_cx_idle_timeout.clone(),
        );
        r.register(
            "downstream_rq_idle_timeout",
            "Downstream requests reset by the stream idle timeout (no bytes moved while in progress)",
            m.downstream_rq_idle_timeout.clone(),
        );
        r.register(
            "downstream_rq_header_timeout",
            "Downstream connections closed by the request headers timeout (slow or missing request head)",
            m.downstream_rq_header_timeout.clone(),
        );
        r.register(
            "downstream_rq",
            "Downstream requests by response class",
            m.downstream_rq_total.clone(),
        );
        r.register(
            "downstream_rq_time_seconds",
            "Downstream request time to response headers",
            m.downstream_rq_time.clone(),
        );
        r.register(
            "downstream_rq_local",
            "Responses generated by the proxy itself, by reason code",
            m.downstream_rq_local.clone(),
        );
        r.register(
            "upstream_rq",
            "Upstream requests by response class",
            m.upstream_rq_total.clone(),
        );
        r.register(
            "upstream_rq_time_seconds",
            "Upstream request time to response headers",
            m.upstream_rq_time.clone(),
        );
        r.register(
            "upstream_rq_active",
            "Upstream requests in flight",
            m.upstream_rq_active.clone(),
        );
        r.register(
            "upstream_cx",
            "Upstream connections opened",
            m.upstream_cx_total.clone(),
        );
        r.register(
            "upstream_cx_active",
            "Upstream connections open",
            m.upstream_cx_active.clone(),
        );
        r.register(
            "upstream_cx_connect_fail",
            "Upstream connect failures",
            m.upstream_cx_connect_fail.clone(),
        );
        r.register(
            "upstream_rq_timeout",
            "Upstream requests timed out",
            m.upstream_rq_timeout.clone(),
        );
        r.register("upstream_rq_retry", "Upstream retries", m.upstream_rq_retry.clone());
        r.register(
            "upstream_rq_retry_overflow",
            "Retries refused by the retry budget or circuit breaker",
            m.upstream_rq_retry_overflow.clone(),
        );
        r.register(
            "upstream_rq_overflow",
            "Requests refused by a circuit breaker",
            m.upstream_rq_overflow.clone(),
        );
        r.register(
            "upstream_cx_tx_bytes",
            "Bytes sent upstream (TCP proxy)",
            m.upstream_cx_tx_bytes.clone(),
        );
        r.register(
            "upstream_cx_rx_bytes",
            "Bytes received from upstream (TCP proxy)",
            m.upstream_cx_rx_bytes.clone(),
        );
        r.register(
            "upstream_hosts_eligible",
            "Hosts passing health checks and not ejected",
            m.upstream_hosts_eligible.clone(),
        );
        r.register(
            "upstream_panic",
            "1 while the cluster is in panic mode (health ignored)",
            m.upstream_panic.clone(),
        );
        r.register(
            "outlier_ejections",
            "Hosts ejected by outlier detection",
            m.outlier_ejections.clone(),
        );
        r.register(
            "outlier_ejections_overflow",
            "Ejections skipped because max_ejection_percent was reached",
            m.outlier_overflow.clone(),
        );
        r.register(
            "health_check_success",
            "Active health checks that passed",
            m.hc_success.clone(),
        );
        r.register(
            "health_check_failure",
            "Active health checks that failed",
            m.hc_failure.clone(),
        );
        r.register(
            "route_rq",
            "Requests per route by response class",
            m.route_rq_total.clone(),
        );
        r.register(
            "route_rq_time_seconds",
            "Request time per route",
            m.route_rq_time.clone(),
        );
        m.filters.register(&mut r);
        m.tracing.register(&mut r);
        m.grpc_logs.register(&mut r);
        r.register(
            "config_reloads",
            "Successful configuration reloads",
            m.config_reloads.clone(),
        );
        r.register(
            "config_reload_failures",
            "Configuration reloads refused",
            m.config_reload_failures.clone(),
        );
        *m.registry.lock() = r;
        m
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        out.push_str(&self.istio.encode());
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }

    pub fn listener(&self, name: &str) -> ListenerStats {
        let l = ListenerLabel {
            listener: name.to_string(),
        };
        ListenerStats {
            cx_total: self.downstream_cx_total.get_or_create(&l).clone(),
            cx_active: self.downstream_cx_active.get_or_create(&l).clone(),
            cx_overflow: self.downstream_cx_overflow.get_or_create(&l).clone(),
            cx_idle_timeout: self.downstream_cx_idle_timeout.get_or_create(&l).clone(),
            rq_idle_timeout: self.downstream_rq_idle_timeout.get_or_create(&l).clone(),
            rq_header_timeout: self.downstream_rq_header_timeout.get_or_create(&l).clone(),
            rq: CLASSES.map(|class| {
                self.downstream_rq_total
                    .get_or_create(&ListenerClassLabel {
                        listener: name.to_string(),
                        class,
                    })
                    .clone()
            }),
            rq_time: self.downstream_rq_time.get_or_create(&l).clone(),
            name: name.to_string(),
        }
    }

    pub fn local_reply(&self, listener: &str, reason: &'static str) -> Counter {
        self.downstream_rq_local
            .get_or_create(&ReasonLabel {
                listener: listener.to_string(),
                reason,
            })
            .clone()
    }

    pub fn cluster(&self, name: &str) -> ClusterStats {
        let l = ClusterLabel {
            cluster: name.to_string(),
        };
        ClusterStats {
            rq: CLASSES.map(|class| {
                self.upstream_rq_total
                    .get_or_create(&ClusterClassLabel {
                        cluster: name.to_string(),
                        class,
                    })
                    .clone()
            }),
            rq_time: self.upstream_rq_time.get_or_create(&l).clone(),
            rq_active: self.upstream_rq_active.get_or_create(&l).clone(),
            cx_total: self.upstream_cx_total.get_or_create(&l).clone(),
            cx_active: self.upstream_cx_active.get_or_create(&l).clone(),
            cx_connect_fail: self.upstream_cx_connect_fail.get_or_create(&l).clone(),
            rq_timeout: self.upstream_rq_timeout.get_or_create(&l).clone(),
            rq_retry: self.upstream_rq_retry.get_or_create(&l).clone(),
            rq_retry_overflow: self.upstream_rq_retry_overflow.get_or_create(&l).clone(),
            rq_overflow: self.upstream_rq_overflow.get_or_create(&l).clone(),
            tx_bytes: self.upstream_cx_tx_bytes.get_or_create(&l).clone(),
            rx_bytes: self.upstream_cx_rx_bytes.get_or_create(&l).clone(),
            hosts_eligible: self.upstream_hosts_eligible.get_or_create(&l).clone(),
            panic: self.upstream_panic.get_or_create(&l).clone(),
            outlier_ejections: self.outlier_ejections.get_or_create(&l).clone(),
            outlier_overflow: self.outlier_overflow.get_or_create(&l).clone(),
            hc_success: self.hc_success.get_or_create(&l).clone(),
            hc_failure: self.hc_failure.get_or_create(&l).clone(),
        }
    }

    pub fn route(&self, listener: &str, vhost: &str, route: &str) -> RouteStats {
        let l = RouteLabel {
            listener: listener.to_string(),
            vhost: vhost.to_string(),
            route: route.to_string(),
        };
        RouteStats {
            rq: CLASSES.map(|class| {
                self.route_rq_total
                    .get_or_create(&RouteClassLabel {
                        listener: listener.to_string(),
                        vhost: vhost.to_string(),
                        route: route.to_string(),
                        class,
                    })
                    .clone()
            }),
            rq_time: self.route_rq_time.get_or_create(&l).clone(),
        }
    }
}

pub struct ListenerStats {
    pub name: String,
    pub cx_total: Counter,
    pub cx_active: Gauge,
    pub cx_overflow: Counter,
    pub cx_idle_timeout: Counter,
    pub rq_idle_timeout: Counter,
    pub rq_header_timeout: Counter,
    pub rq: [Counter; 5],
    pub rq_time: Histogram,
}

impl ListenerStats {
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.rq[class_index(status)].inc();
        self.rq_time.observe(elapsed.as_secs_f64());
    }
}

pub struct ClusterStats {
    pub rq: [Counter; 5],
    pub rq_time: Histogram,
    pub rq_active: Gauge,
    pub cx_total: Counter,
    pub cx_active: Gauge,
    pub cx_connect_fail: Counter,
    pub rq_timeout: Counter,
    pub rq_retry: Counter,
    pub rq_retry_overflow: Counter,
    pub rq_overflow: Counter,
    pub tx_bytes: Counter,
    pub rx_bytes: Counter,
    pub hosts_eligible: Gauge,
    pub panic: Gauge,
    pub outlier_ejections: Counter,
    pub outlier_overflow: Counter,
    pub hc_success: Counter,
    pub hc_failure: Counter,
}

impl ClusterStats {
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.rq[class_index(status)].inc();
        self.rq_time.observe(elapsed.as_secs_f64());
    }
}

pub struct RouteStats {
    pub rq: [Counter; 5],
    pub rq_time: Histogram,
}

impl RouteStats {
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.rq[class_index(status)].inc();
        self.rq_time.observe(elapsed.as_secs_f64());
    }
}

// ---------------------------------------------------------------------------------------------
// Route filter metrics
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    pub listener: String,
    pub scope: String,
}

/// The metric families of route filters (faults, mirrors, rate limits), registered with the process registry once.
#[derive(Default)]
pub struct FilterMetrics {
    pub fault_aborts: Family<ListenerLabel, Counter>,
    pub fault_delays: Family<ListenerLabel, Counter>,
    pub mirror_requests: Family<ClusterLabel, Counter>,
    pub mirror_errors: Family<ClusterLabel, Counter>,
    pub mirror_skipped: Family<ClusterLabel, Counter>,
    pub rate_limited: Family<ScopeLabel, Counter>,
    pub rls_over_limit: Family<ListenerLabel, Counter>,
    pub rls_errors: Family<ListenerLabel, Counter>,
    pub rbac_allowed: Family<ListenerLabel, Counter>,
    pub rbac_denied: Family<ListenerLabel, Counter>,
    pub rbac_shadow_allowed: Family<ListenerLabel, Counter>,
    pub rbac_shadow_denied: Family<ListenerLabel, Counter>,
}

impl FilterMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "http_fault_aborts",
            "Requests aborted by fault injection",
            self.fault_aborts.clone(),
        );
        r.register(
            "http_fault_delays",
            "Requests delayed by fault injection",
            self.fault_delays.clone(),
        );
        r.register(
            "http_mirror_requests",
            "Mirrored (shadow) requests sent",
            self.mirror_requests.clone(),
        );
        r.register(
            "http_mirror_errors",
            "Mirrored requests that failed (no host, overflow, connect/reset/timeout, or 5xx)",
            self.mirror_errors.clone(),
        );
        r.register(
            "http_mirror_skipped",
            "Requests chosen for mirroring but not mirrored (body too large or streaming)",
            self.mirror_skipped.clone(),
        );
        r.register(
            "http_rate_limited",
            "Requests refused by a local rate limit",
            self.rate_limited.clone(),
        );
        r.register(
            "http_rate_limit_service_over_limit",
            "Requests the global rate limit service refused",
            self.rls_over_limit.clone(),
        );
        r.register(
            "http_rate_limit_service_errors",
            "Calls to the global rate limit service that failed or timed out",
            self.rls_errors.clone(),
        );
        r.register(
            "rbac_allowed",
            "Requests (or TCP connections) authorization allowed, on listeners that enforce a policy",
            self.rbac_allowed.clone(),
        );
        r.register(
            "rbac_denied",
            "Requests (or TCP connections) authorization denied",
            self.rbac_denied.clone(),
        );
        r.register(
            "rbac_shadow_allowed",
            "Requests shadow (dry-run) policies would have allowed",
            self.rbac_shadow_allowed.clone(),
        );
        r.register(
            "rbac_shadow_denied",
            "Requests shadow (dry-run) policies would have denied",
            self.rbac_shadow_denied.clone(),
        );
    }

    /// (over-limit, error) counters of a connection manager's rate limit service client.
    pub fn rate_limit_service(&self, listener: &str) -> (Counter, Counter) {
        (
            self.listener(&self.rls_over_limit, listener),
            self.listener(&self.rls_errors, listener),
        )
    }

    /// (allowed, denied, shadow allowed, shadow denied) counters of a listener's authorization.
    pub fn rbac(&self, listener: &str) -> [Counter; 4] {
        [
            self.listener(&self.rbac_allowed, listener),
            self.listener(&self.rbac_denied, listener),
            self.listener(&self.rbac_shadow_allowed, listener),
            self.listener(&self.rbac_shadow_denied, listener),
        ]
    }

    /// The counter of requests refused by the rate limit of `scope` (`listener` or `route:VHOST/ROUTE`).
    pub fn rate_limited(&self, listener: &str, scope: &str) -> Counter {
        self.rate_limited
            .get_or_create(&ScopeLabel {
                listener: listener.to_string(),
                scope: scope.to_string(),
            })
            .clone()
    }

    pub fn listener(&self, family: &Family<ListenerLabel, Counter>, listener: &str) -> Counter {
        family
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .clone()
    }

    pub fn cluster(&self, family: &Family<ClusterLabel, Counter>, cluster: &str) -> Counter {
        family
            .get_or_create(&ClusterLabel {
                cluster: cluster.to_string(),
            })
            .clone()
    }
}
