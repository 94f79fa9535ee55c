//! The YAML source format, exactly as a user writes it.
//!
//! Everything here is deliberately loose (most fields optional; enumerations and durations are text,
//! or typed values from the xDS conversion: see [`crate::typed`]) so that [`crate::validate`] can name
//! the offending field path in its errors instead of relying on a generic deserializer message.
//! Unknown fields are rejected by serde, which reports line/column.

pub use crate::typed::{RawDuration, Typed};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A cluster's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterType {
    Static,
    StrictDns,
    OriginalDst,
}

impl ClusterType {
    pub const NAMES: &'static [(&'static str, ClusterType)] = &[
        ("static", ClusterType::Static),
        ("strict_dns", ClusterType::StrictDns),
        ("original_dst", ClusterType::OriginalDst),
    ];
}

/// A cluster's `lb_policy` (its parameters are fields of their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbKind {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

impl LbKind {
    pub const NAMES: &'static [(&'static str, LbKind)] = &[
        ("round_robin", LbKind::RoundRobin),
        ("least_request", LbKind::LeastRequest),
        ("random", LbKind::Random),
        ("ring_hash", LbKind::RingHash),
        ("maglev", LbKind::Maglev),
    ];
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub node: RawNode,
    pub admin: Option<RawAdmin>,
    pub runtime: RawRuntime,
    pub listeners: Vec<RawListener>,
    pub clusters: Vec<RawCluster>,
    /// Dynamic configuration from a control plane (the file is then a bootstrap).
    pub xds: Option<RawXds>,
    /// A DNS proxy for transparent interception (`weft init --dns-port`).
    pub dns: Option<RawDns>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDns {
    /// UDP and TCP `IP:port` to answer on, e.g. "127.0.0.1:15053".
    pub listen: Option<String>,
    /// `IP:port` (or IP, port 53) to forward other names to; default: the first `nameserver` of
    /// /etc/resolv.conf.
    pub upstream: Option<String>,
    /// Mesh names and their addresses (A and AAAA answers).
    pub hosts: BTreeMap<String, Vec<String>>,
    /// TTL of the answers, e.g. "30s" (default).
    pub ttl: Option<RawDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawXds {
    /// Control plane `host:port` (gRPC over h2c).
    pub address: Option<String>,
    /// More control-plane replicas (`host:port`), tried in turn after `address` when a stream
    /// fails.
    pub addresses: Vec<String>,
    /// "ads_delta" (default), "ads_sotw", "delta" or "sotw".
    pub mode: Option<String>,
    /// How long a cluster waits for its endpoints (or a listener for its routes) before it is used
    /// anyway; "0s" waits forever. Default 15s (Envoy's).
    pub initial_fetch_timeout: Option<RawDuration>,
    /// Reconnect backoff: first delay and ceiling (jittered exponential).
    pub backoff_base: Option<RawDuration>,
    pub backoff_max: Option<RawDuration>,
    /// A service asked for on demand and then not called for this long is forgotten (unsubscribed);
    /// "0s" keeps them. Default 10m.
    pub on_demand_idle: Option<RawDuration>,
    /// TLS to the control plane (weft control's `--xds-tls` port).
    pub tls: Option<RawXdsTls>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawXdsTls {
    /// "mesh": the proxy's mesh identity (`--ca-address` … or `--identity-cert-file` …) is its
    /// client certificate, and the control plane is verified against the mesh roots.
    pub mode: Option<String>,
    /// The identities the control plane may present; default
    /// `spiffe://<trust domain>/ns/weft-system/sa/weft-control`.
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNode {
    pub id: Option<String>,
    pub cluster: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub sub_zone: Option<String>,
    /// Sent to the control plane as `node.metadata` (string values).
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub address: Option<String>,
    /// Explicit opt-in to serve the admin API on a non-loopback address.
    pub allow_non_loopback: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRuntime {
    pub concurrency: Option<u64>,
    pub drain_timeout: Option<RawDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListener {
    pub name: Option<String>,
    pub address: Option<String>,
    pub max_connections: Option<u64>,
    /// Bytes buffered per connection and per stream in each direction (Envoy's
    /// `per_connection_buffer_limit_bytes`).
    pub per_connection_buffer_limit_bytes: Option<u64>,
    pub filter_chains: Vec<RawFilterChain>,
    /// Shorthand for a single filter chain holding an HTTP connection manager.
    pub http: Option<RawHttp>,
    /// Shorthand for a single filter chain holding a TCP proxy.
    pub tcp_proxy: Option<RawTcpProxy>,
    /// `inbound` (traffic to the app) or `outbound` (the app's own calls); Envoy's
    /// `traffic_direction`. On shutdown, outbound listeners keep serving while inbound ones drain.
    pub direction: Option<Typed<crate::model::Direction>>,
    /// Transparent interception: dispatch each connection by its original destination (before an
    /// iptables REDIRECT/TPROXY rule sent it here). Envoy's `use_original_dst`.
    pub original_destination: Option<bool>,
    /// `IP_TRANSPARENT` on the listening socket, for iptables TPROXY (needs CAP_NET_ADMIN).
    pub transparent: Option<bool>,
    /// Connections this listener accepts reach `original_dst` clusters from the downstream
    /// peer's IP, as a cluster's `original_source` does (Envoy's `envoy.filters.listener.original_src`
    /// listener filter, which is what xDS converts to this).
    pub original_source: Option<bool>,
    /// With `original_source`: `SO_MARK` on those upstream connections (Envoy's original_src
    /// `mark`; Istio's TPROXY mode sends 1337), for policy routing of the replies. Needs
    /// CAP_NET_ADMIN. Default: no mark.
    pub original_source_mark: Option<u32>,
    /// `false`: no socket of its own; it receives connections an `original_destination` listener
    /// hands over (Envoy's virtual listener). Default true.
    pub bind_to_port: Option<bool>,
    /// TLS termination (edge certificates or the mesh identity); see [`crate::tls`].
    pub tls: Option<crate::tls::RawListenerTls>,
    /// Shorthand for a single filter chain holding an RPC proxy (see `rpc.rs`).
    pub rpc: Option<crate::rpc::RawRpc>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFilterChain {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub match_: Option<RawFilterChainMatch>,
    pub http: Option<RawHttp>,
    pub tcp_proxy: Option<RawTcpProxy>,
    /// An RPC proxy (`protocol: dubbo` or `bolt`; `auto` only as the listener's `rpc` shorthand).
    /// Envoy's `envoy.filters.network.dubbo_proxy` over xDS becomes this.
    pub rpc: Option<crate::rpc::RawRpc>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFilterChainMatch {
    pub destination_port: Option<u64>,
    pub source_prefixes: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccessLog {
    /// "stdout", "stderr" or a file path.
    pub path: Option<String>,
    /// A text format with Envoy's command operators (`""`: Envoy's default format).
    pub format: Option<String>,
    /// One JSON object per line: key → format string with Envoy's command operators.
    pub json_format: Option<std::collections::BTreeMap<String, String>>,
    /// Entries streamed to a collector over Envoy's gRPC access-log service instead of a file.
    pub grpc: Option<crate::grpc_log::RawGrpcAccessLog>,
}

/// `access_log` of a connection manager or TCP proxy: one entry (a map) or a list of entries (at
/// most one file/stdout log and one gRPC log).
#[derive(Clone, Debug, Default)]
pub struct RawAccessLogs {
    pub entries: Vec<RawAccessLog>,
    /// Written as a list: errors then name `access_log[i]`.
    pub list: bool,
}

impl From<RawAccessLog> for RawAccessLogs {
    fn from(a: RawAccessLog) -> RawAccessLogs {
        RawAccessLogs {
            entries: vec![a],
            list: false,
        }
    }
}

impl<'de> Deserialize<'de> for RawAccessLogs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawAccessLogs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an access log (a map) or a list of access logs")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawAccessLogs, A::Error> {
                RawAccessLog::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(RawAccessLogs::from)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawAccessLogs, A::Error> {
                Ok(RawAccessLogs {
                    entries: Vec::<RawAccessLog>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?,
                    list: true,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTcpProxy {
    pub stat_prefix: Option<String>,
    pub cluster: Option<String>,
    pub idle_timeout: Option<RawDuration>,
    pub access_log: Option<RawAccessLogs>,
    /// One span per session, exported over OTLP (the same block as an `http` listener's).
    pub tracing: Option<crate::tracing::RawTracing>,
    /// Envoy `envoy.filters.network.rbac`: who may connect (see `crate::authz`).
    pub authorization: Option<crate::authz::RawAuthorization>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    pub stat_prefix: Option<String>,
    /// "auto" (HTTP/1.1 and h2c prior knowledge), "http1" or "http2".
    pub codec: Option<Typed<crate::model::Codec>>,
    pub route_config: Option<RawRouteConfig>,
    pub idle_timeout: Option<RawDuration>,
    pub request_headers_timeout: Option<RawDuration>,
    /// A request or response in progress that moves no bytes for this long is closed.
    pub stream_idle_timeout: Option<RawDuration>,
    pub max_request_headers_kb: Option<u64>,
    pub use_remote_address: Option<bool>,
    pub xff_num_trusted_hops: Option<u64>,
    pub generate_request_id: Option<bool>,
    pub via: Option<String>,
    pub server_name: Option<String>,
    pub access_log: Option<RawAccessLogs>,
    /// Token bucket for every request on this connection manager (Envoy `local_ratelimit`).
    pub local_rate_limit: Option<RawLocalRateLimit>,
    /// Global rate limiting: the gRPC rate limit service routes' `rate_limits` ask (Envoy `ratelimit`).
    pub rate_limit_service: Option<RawRateLimitService>,
    /// Distributed tracing exported over OTLP (see `crate::tracing`).
    pub tracing: Option<crate::tracing::RawTracing>,
    /// Envoy `envoy.filters.http.rbac` / Istio AuthorizationPolicy (see `crate::authz`).
    pub authorization: Option<crate::authz::RawAuthorization>,
    /// Envoy `envoy.filters.http.jwt_authn`: JWT request authentication (see `crate::jwt`).
    pub jwt_authn: Option<crate::jwt::RawJwtAuthn>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimitService {
    /// Cluster of the rate limit service (Envoy's RLS protocol, `envoy.service.ratelimit.v3`, over gRPC).
    pub cluster: Option<String>,
    pub domain: Option<String>,
    pub timeout: Option<RawDuration>,
    /// Answer 500 when the service fails or times out (default: let the request through).
    pub failure_mode_deny: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimit {
    pub actions: Vec<RawRateLimitAction>,
}

/// One descriptor entry (Envoy `RateLimit.Action`); exactly one field is set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimitAction {
    pub request_headers: Option<RawRequestHeadersAction>,
    pub remote_address: Option<RawEmpty>,
    pub generic_key: Option<RawGenericKeyAction>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRequestHeadersAction {
    pub header_name: Option<String>,
    pub descriptor_key: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGenericKeyAction {
    pub descriptor_value: Option<String>,
    pub descriptor_key: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEmpty {}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRouteConfig {
    pub name: Option<String>,
    pub virtual_hosts: Vec<RawVirtualHost>,
    pub request_headers_to_add: Vec<RawHeaderValue>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<RawHeaderValue>,
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawVirtualHost {
    pub name: Option<String>,
    pub domains: Vec<String>,
    pub routes: Vec<RawRoute>,
    pub request_headers_to_add: Vec<RawHeaderValue>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<RawHeaderValue>,
    pub response_headers_to_remove: Vec<String>,
    pub retry_policy: Option<RawRetryPolicy>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHeaderValue {
    pub name: Option<String>,
    pub value: Option<String>,
    /// "append" (default) or "overwrite" / "add_if_absent".
    pub action: Option<Typed<crate::model::HeaderAppendAction>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub match_: Option<RawRouteMatch>,
    pub route: Option<RawRouteAction>,
    pub redirect: Option<RawRedirect>,
    pub direct_response: Option<RawDirectResponse>,
    pub request_headers_to_add: Vec<RawHeaderValue>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<RawHeaderValue>,
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRouteMatch {
    pub prefix: Option<String>,
    pub path: Option<String>,
    pub regex: Option<String>,
    pub case_sensitive: Option<bool>,
    pub methods: Vec<String>,
    pub headers: Vec<RawHeaderMatcher>,
    pub query_parameters: Vec<RawQueryMatcher>,
    /// gRPC / Dubbo3 Triple sugar: service, method, Triple version and group, attachments.
    pub grpc: Option<RawGrpcMatch>,
}

/// `match.grpc`: turned into a path match (`/service/method`, or `/service/`) and header matchers
/// (`tri-service-version`, `tri-service-group`, attachments) by validation.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGrpcMatch {
    pub service: Option<String>,
    pub method: Option<String>,
    pub version: Option<String>,
    pub group: Option<String>,
    pub attachments: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHeaderMatcher {
    pub name: Option<String>,
    pub exact: Option<String>,
    pub regex: Option<String>,
    pub prefix: Option<String>,
    pub present: Option<bool>,
    pub invert: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawQueryMatcher {
    pub name: Option<String>,
    pub exact: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRouteAction {
    pub cluster: Option<String>,
    pub weighted_clusters: Vec<RawWeightedCluster>,
    pub timeout: Option<RawDuration>,
    /// Envoy `RouteAction.max_grpc_timeout` (or `max_stream_duration.grpc_timeout_header_max`): a
    /// gRPC request's `grpc-timeout` replaces `timeout`, capped at this (`0s`: no cap). Unset, a
    /// `grpc-timeout` can only shorten `timeout`.
    pub max_grpc_timeout: Option<RawDuration>,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<String>,
    pub auto_host_rewrite: Option<bool>,
    pub retry_policy: Option<RawRetryPolicy>,
    pub hash_policy: Vec<RawHashPolicy>,
    /// Envoy `envoy.filters.http.fault` as per-route config.
    pub fault: Option<RawFault>,
    /// Envoy `RouteAction.request_mirror_policies`.
    pub request_mirror_policies: Vec<RawMirrorPolicy>,
    /// Envoy `envoy.filters.http.local_ratelimit` as per-route config.
    pub local_rate_limit: Option<RawLocalRateLimit>,
    /// Envoy `RouteAction.rate_limits`: descriptors sent to the connection manager's rate limit service.
    pub rate_limits: Vec<RawRateLimit>,
    /// "default" or "high": which circuit-breaker thresholds the route's requests count against.
    pub priority: Option<Typed<crate::model::RoutePriority>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFault {
    pub delay: Option<RawFaultDelay>,
    pub abort: Option<RawFaultAbort>,
    /// The fault applies only to requests matching all of these.
    pub headers: Vec<RawHeaderMatcher>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFaultDelay {
    pub fixed: Option<RawDuration>,
    pub percent: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFaultAbort {
    pub http_status: Option<u64>,
    pub grpc_status: Option<u64>,
    pub percent: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMirrorPolicy {
    pub cluster: Option<String>,
    pub percent: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLocalRateLimit {
    pub max_tokens: Option<u64>,
    pub tokens_per_fill: Option<u64>,
    pub fill_interval: Option<RawDuration>,
    /// One bucket per distinct value of this request header.
    pub descriptor_header: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWeightedCluster {
    pub name: Option<String>,
    pub weight: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetryPolicy {
    pub retry_on: Vec<String>,
    pub num_retries: Option<u64>,
    pub per_try_timeout: Option<RawDuration>,
    pub retriable_status_codes: Vec<u64>,
    pub retry_back_off: Option<RawBackoff>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBackoff {
    pub base_interval: Option<RawDuration>,
    pub max_interval: Option<RawDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHashPolicy {
    pub header: Option<String>,
    /// `cookie: NAME`, or `cookie: {name, ttl, path, attributes}`.
    pub cookie: Option<RawCookie>,
    pub source_ip: Option<bool>,
    pub query_parameter: Option<String>,
    pub terminal: Option<bool>,
}

/// A cookie hash policy (Envoy `RouteAction.HashPolicy.Cookie`): written as the cookie's name
/// alone, or as a map that can ask the proxy to generate the cookie (`ttl`).
#[derive(Clone, Debug, Default)]
pub struct RawCookie {
    pub name: Option<String>,
    pub ttl: Option<RawDuration>,
    pub path: Option<String>,
    pub attributes: Vec<RawCookieAttribute>,
}

/// The map form of [`RawCookie`].
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCookieMap {
    name: Option<String>,
    ttl: Option<RawDuration>,
    path: Option<String>,
    attributes: Vec<RawCookieAttribute>,
}

impl From<String> for RawCookie {
    fn from(name: String) -> RawCookie {
        RawCookie {
            name: Some(name),
            ..Default::default()
        }
    }
}

impl<'de> Deserialize<'de> for RawCookie {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawCookie;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a cookie name, or a map with name, ttl, path, attributes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawCookie, E> {
                Ok(RawCookie::from(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawCookie, A::Error> {
                let m = RawCookieMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawCookie {
                    name: m.name,
                    ttl: m.ttl,
                    path: m.path,
                    attributes: m.attributes,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCookieAttribute {
    pub name: Option<String>,
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u64>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub status: Option<u64>,
    pub strip_query: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDirectResponse {
    pub status: Option<u64>,
    pub body: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCluster {
    pub name: Option<String>,
    /// "static", "strict_dns" or "original_dst".
    #[serde(rename = "type")]
    pub type_: Option<Typed<ClusterType>>,
    pub lb_policy: Option<Typed<LbKind>>,
    pub connect_timeout: Option<RawDuration>,
    /// Bytes buffered per upstream connection and stream (Envoy's `per_connection_buffer_limit_bytes`).
    pub per_connection_buffer_limit_bytes: Option<u64>,
    /// Upstream HTTP protocol: "http1" or "http2".
    pub protocol: Option<Typed<crate::model::UpstreamProtocol>>,
    pub dns_refresh_rate: Option<RawDuration>,
    pub endpoints: Vec<RawEndpoint>,
    pub circuit_breakers: Option<RawCircuitBreakers>,
    pub retry_budget: Option<RawRetryBudget>,
    pub pool: Option<RawPool>,
    pub ring_hash: Option<RawRingHash>,
    pub maglev: Option<RawMaglev>,
    pub least_request: Option<RawLeastRequest>,
    pub outlier_detection: Option<RawOutlierDetection>,
    pub health_checks: Vec<RawHealthCheck>,
    /// Percent of hosts that must be healthy before weft ignores health (Envoy `healthy_panic_threshold`).
    pub healthy_panic_threshold: Option<f64>,
    /// Prefer endpoints in the proxy's own zone, then region (needs `node.zone`/`node.region`).
    pub locality_aware: Option<bool>,
    pub subsets: Option<RawSubsets>,
    /// TLS origination to the endpoints; see [`crate::tls`].
    pub tls: Option<crate::tls::RawClusterTls>,
    /// TLS chosen per endpoint (Envoy's `transport_socket_matches`): the first entry whose `match`
    /// is a subset of an endpoint's `tls_match` (else of its `locality_tls_match`) decides that
    /// endpoint's TLS; endpoints no entry matches use `tls`.
    pub tls_matches: Vec<RawTlsMatch>,
    /// `original_dst` clusters: connect from the downstream peer's IP (IP_TRANSPARENT), so the app
    /// behind a TPROXY sidecar sees the caller's address.
    pub original_source: Option<bool>,
    /// The service this cluster reaches, for the Istio-standard metrics' `destination_service*`
    /// labels (over xDS: Istio's cluster metadata `filter_metadata.istio.services[0]`).
    pub service: Option<RawClusterService>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClusterService {
    pub host: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOutlierDetection {
    pub consecutive_5xx: Option<u64>,
    pub consecutive_gateway_failure: Option<u64>,
    pub consecutive_local_origin_failure: Option<u64>,
    pub interval: Option<RawDuration>,
    pub base_ejection_time: Option<RawDuration>,
    pub max_ejection_time: Option<RawDuration>,
    pub max_ejection_percent: Option<u64>,
    pub success_rate_minimum_hosts: Option<u64>,
    pub success_rate_request_volume: Option<u64>,
    pub success_rate_stdev_factor: Option<u64>,
    pub failure_percentage_threshold: Option<u64>,
    pub failure_percentage_minimum_hosts: Option<u64>,
    pub failure_percentage_request_volume: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealthCheck {
    pub interval: Option<RawDuration>,
    pub interval_jitter: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
    pub healthy_threshold: Option<u64>,
    pub unhealthy_threshold: Option<u64>,
    pub http: Option<RawHttpHealthCheck>,
    pub tcp: Option<RawTcpHealthCheck>,
    pub grpc: Option<RawGrpcHealthCheck>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttpHealthCheck {
    pub path: Option<String>,
    pub host: Option<String>,
    /// Ranges like "200-299" or single codes; default 200.
    pub expected_statuses: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTcpHealthCheck {}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGrpcHealthCheck {
    pub service_name: Option<String>,
    pub authority: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSubsets {
    /// "no_fallback", "any_endpoint" (default) or "default_subset".
    pub fallback_policy: Option<Typed<crate::model::SubsetFallback>>,
    pub default_subset: BTreeMap<String, String>,
    /// Requests carrying this header are routed to endpoints whose `tag_label` equals its value.
    pub tag_header: Option<String>,
    pub tag_label: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEndpoint {
    pub address: Option<String>,
    pub weight: Option<u64>,
    pub priority: Option<u64>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub sub_zone: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// What the cluster's `tls_matches` match against (Envoy: the endpoint's
    /// `envoy.transport_socket_match` metadata, e.g. Istio's `{tlsMode: istio}`).
    pub tls_match: BTreeMap<String, String>,
    /// The same for the endpoint's locality, consulted when no entry matches `tls_match`.
    pub locality_tls_match: BTreeMap<String, String>,
}

/// One of a cluster's `tls_matches`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTlsMatch {
    /// For stats and errors.
    pub name: Option<String>,
    /// Key/values the endpoint's `tls_match` must all carry; empty matches every endpoint.
    #[serde(rename = "match")]
    pub match_: BTreeMap<String, String>,
    /// The TLS of matching endpoints; absent: plaintext.
    pub tls: Option<crate::tls::RawClusterTls>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCircuitBreakers {
    pub max_connections: Option<u64>,
    pub max_pending_requests: Option<u64>,
    pub max_requests: Option<u64>,
    pub max_retries: Option<u64>,
    /// Thresholds for routes with `priority: high` (same fields; no further nesting).
    pub high_priority: Option<Box<RawCircuitBreakers>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetryBudget {
    pub budget_percent: Option<f64>,
    pub min_retry_concurrency: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPool {
    pub max_idle_per_endpoint: Option<u64>,
    pub idle_timeout: Option<RawDuration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRingHash {
    pub minimum_ring_size: Option<u64>,
    pub maximum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMaglev {
    pub table_size: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLeastRequest {
    pub choice_count: Option<u64>,
}
