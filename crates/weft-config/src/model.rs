//! The validated configuration model. Every value here has been checked: a `Config` that exists is
//! one the proxy can run. The shape follows Envoy's v3 API (Listener → FilterChain → HttpConnectionManager
//! / TcpProxy, RouteConfiguration → VirtualHost → Route, Cluster → ClusterLoadAssignment) so that xDS
//! resources translate onto it one to one.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

fn ser_header_name<S: serde::Serializer>(n: &http::HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

fn ser_opt_header_name<S: serde::Serializer>(n: &Option<http::HeaderName>, s: S) -> Result<S::Ok, S::Error> {
    match n {
        Some(n) => s.serialize_str(n.as_str()),
        None => s.serialize_none(),
    }
}

pub(crate) fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::duration::format(*d))
}

fn ser_opt_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&crate::duration::format(*d)),
        None => s.serialize_none(),
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Config {
    pub node: Node,
    pub admin: Option<Admin>,
    pub runtime: Runtime,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    /// Present when listeners and clusters (also) come from a control plane.
    pub xds: Option<Xds>,
    /// The DNS proxy (transparent interception), if configured.
    pub dns: Option<Dns>,
}

/// A DNS proxy: answers A/AAAA for `hosts`, forwards every other query to `upstream`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Dns {
    pub listen: SocketAddr,
    /// `None`: the first `nameserver` of /etc/resolv.conf, read when the proxy starts.
    pub upstream: Option<SocketAddr>,
    /// Lower-case names without the trailing dot.
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    #[serde(serialize_with = "ser_dur")]
    pub ttl: Duration,
}

/// Where and how the proxy fetches dynamic configuration (xDS, Envoy v3 API).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Xds {
    /// `host:port` of the control plane.
    pub address: String,
    /// Every control-plane replica, `address` first: a failed stream moves to the next one at
    /// once; a whole round of failures backs off.
    pub addresses: Vec<String>,
    pub mode: XdsMode,
    /// `None`: wait forever for a cluster's endpoints / a listener's routes.
    #[serde(serialize_with = "ser_opt_dur")]
    pub initial_fetch_timeout: Option<Duration>,
    #[serde(serialize_with = "ser_dur")]
    pub backoff_base: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub backoff_max: Duration,
    /// Services asked for on demand and not called for this long are unsubscribed; `None`: kept.
    #[serde(serialize_with = "ser_opt_dur")]
    pub on_demand_idle: Option<Duration>,
    /// TLS to the control plane; None: plaintext.
    pub tls: Option<XdsTls>,
}

/// `xds.tls`: the mesh identity as client certificate, the control plane verified against the mesh
/// roots and (secure naming) one of `subject_alt_names`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct XdsTls {
    /// Empty: the control plane's identity in the proxy's own trust domain.
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum XdsMode {
    /// One aggregated (ADS) stream, state of the world.
    AdsSotw,
    /// One aggregated (ADS) stream, incremental.
    AdsDelta,
    /// One state-of-the-world stream per resource type (LDS, RDS, CDS, EDS services).
    Sotw,
    /// One incremental stream per resource type.
    Delta,
}

/// Who this proxy is: its identity and where it runs (for locality-aware routing, later xDS).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    pub locality: Locality,
    /// Sent to a control plane as `node.metadata`.
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Admin {
    pub address: SocketAddr,
    /// The operator's explicit opt-in to a non-loopback `address` (see docs/security.md).
    pub allow_non_loopback: bool,
}

impl Admin {
    /// An admin API on `address`, without the non-loopback opt-in.
    pub fn new(address: SocketAddr) -> Admin {
        Admin {
            address,
            allow_non_loopback: false,
        }
    }

    /// Why this admin address may not be used (non-loopback without the opt-in), or `None`.
    pub fn refusal(&self) -> Option<String> {
        crate::admin::loopback_refusal(self.address, self.allow_non_loopback, "admin.allow_non_loopback: true")
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Runtime {
    /// Worker threads; `None` means one per available core.
    pub concurrency: Option<usize>,
    #[serde(serialize_with = "ser_dur")]
    pub drain_timeout: Duration,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Connections beyond this are accepted and closed at once (counted as overflow).
    pub max_connections: Option<u32>,
    /// Bytes buffered per connection and per stream in each direction.
    pub per_connection_buffer_limit_bytes: u32,
    pub filter_chains: Vec<FilterChain>,
    /// Which way the listener's traffic flows, for a sidecar's shutdown order.
    pub direction: Direction,
    /// Dispatch by the connection's original destination (transparent interception).
    pub original_destination: bool,
    /// `IP_TRANSPARENT` on the listening socket (iptables TPROXY).
    pub transparent: bool,
    /// Upstream connections to `original_dst` clusters made for this listener's connections come
    /// from the downstream peer's IP (as the cluster's `original_source`).
    pub original_source: bool,
    /// `SO_MARK` on those upstream connections (0: none).
    pub original_source_mark: u32,
    /// False for a virtual listener: not bound, reached through an `original_destination` one.
    pub bind_to_port: bool,
    /// TLS termination; `None` is plaintext.
    pub tls: Option<crate::tls::ListenerTls>,
}

/// A listener's traffic direction (Envoy's `traffic_direction`).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Not said: drained with the inbound listeners on shutdown.
    #[default]
    Unspecified,
    /// Traffic to the local app.
    Inbound,
    /// The local app's own calls: on shutdown it keeps serving until the app's connections end.
    Outbound,
}

impl Direction {
    /// `Unspecified` has no name: it is what an absent `direction` means.
    pub const NAMES: &'static [(&'static str, Direction)] =
        &[("inbound", Direction::Inbound), ("outbound", Direction::Outbound)];
}

/// The default for `per_connection_buffer_limit_bytes` (listeners and clusters).
pub const DEFAULT_BUFFER_LIMIT: u32 = 64 * 1024;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FilterChain {
    pub name: String,
    #[serde(rename = "match")]
    pub match_: FilterChainMatch,
    pub filter: NetworkFilter,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FilterChainMatch {
    pub destination_port: Option<u16>,
    pub source_prefixes: Vec<CidrRange>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct CidrRange {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl CidrRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix_len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix_len))
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix_len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix_len))
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

// Built once per configuration and never moved on the request path, so variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum NetworkFilter {
    TcpProxy(TcpProxy),
    Http(HttpConnectionManager),
    /// RPC proxying (Dubbo2): see `rpc.rs`.
    Rpc(crate::rpc::RpcProxy),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AccessLog {
    pub sink: LogSink,
    /// Text or JSON with Envoy's command operators; `None`: weft's own JSON record.
    pub format: Option<crate::log_format::LogFormat>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum LogSink {
    Stdout,
    Stderr,
    File(String),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub cluster: String,
    #[serde(serialize_with = "ser_opt_dur")]
    pub idle_timeout: Option<Duration>,
    pub access_log: Option<AccessLog>,
    /// Entries streamed over Envoy's gRPC access-log service (`TCPAccessLogEntry`).
    pub grpc_access_log: Option<crate::grpc_log::GrpcAccessLog>,
    /// One span per session.
    pub tracing: Option<Box<crate::tracing::Tracing>>,
    /// Who may connect (Envoy's network RBAC); `None`: everyone.
    pub authorization: Option<Box<crate::authz::Authorization>>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// HTTP/1.1 and HTTP/2 with prior knowledge, told apart by the connection preface.
    Auto,
    Http1,
    Http2,
}

impl Codec {
    pub const NAMES: &'static [(&'static str, Codec)] =
        &[("auto", Codec::Auto), ("http1", Codec::Http1), ("http2", Codec::Http2)];
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub route_config: RouteConfig,
    #[serde(serialize_with = "ser_opt_dur")]
    pub idle_timeout: Option<Duration>,
    /// Limit on receiving a request's headers (HTTP/1.1 head, HTTP/2 preface and header
    /// blocks), and on a new connection's first request; `None` disables it.
    #[serde(serialize_with = "ser_opt_dur")]
    pub request_headers_timeout: Option<Duration>,
    /// A request in progress (waiting for the upstream, or streaming either way) that moves no
    /// bytes for this long is reset; `None` disables it.
    #[serde(serialize_with = "ser_opt_dur")]
    pub stream_idle_timeout: Option<Duration>,
    pub max_request_headers_kb: u32,
    /// When true, the peer address is the client address appended to `x-forwarded-for`
    /// (an edge proxy); when false, an existing `x-forwarded-for` is trusted as is.
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub generate_request_id: bool,
    pub via: Option<String>,
    pub server_name: Option<String>,
    pub access_log: Option<AccessLog>,
    /// Entries streamed over Envoy's gRPC access-log service (`HTTPAccessLogEntry`).
    pub grpc_access_log: Option<crate::grpc_log::GrpcAccessLog>,
    /// One token bucket for every request through this connection manager (all workers share it).
    pub local_rate_limit: Option<Box<LocalRateLimit>>,
    pub rate_limit_service: Option<RateLimitService>,
    /// Distributed tracing (spans exported over OTLP); `None` costs nothing per request.
    pub tracing: Option<Box<crate::tracing::Tracing>>,
    /// Authorization (Envoy HTTP RBAC); `None` costs one pointer test per request.
    pub authorization: Option<Box<crate::authz::Authorization>>,
    /// JWT request authentication (Envoy `jwt_authn`), before authorization and routing.
    pub jwt_authn: Option<Box<crate::jwt::JwtAuthn>>,
}

/// A global rate limit service speaking Envoy's RLS protocol over gRPC.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RateLimitService {
    pub cluster: String,
    pub domain: String,
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Duration,
    pub failure_mode_deny: bool,
}

/// One descriptor to send to the rate limit service (Envoy `RateLimit`): sent only when every
/// action yields an entry.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RateLimitPolicy {
    pub actions: Vec<RateLimitAction>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAction {
    /// `(descriptor_key, value of header_name)`; no entry when the header is absent.
    RequestHeaders {
        header_name: String,
        descriptor_key: String,
    },
    /// `("remote_address", client IP)`.
    RemoteAddress,
    /// `(descriptor_key or "generic_key", descriptor_value)`.
    GenericKey {
        descriptor_key: String,
        descriptor_value: String,
    },
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub headers: HeaderMutations,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HeaderMutations {
    pub request_add: Vec<HeaderValueOption>,
    pub request_remove: Vec<String>,
    pub response_add: Vec<HeaderValueOption>,
    pub response_remove: Vec<String>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HeaderAppendAction {
    Append,
    Overwrite,
    AddIfAbsent,
}

impl HeaderAppendAction {
    pub const NAMES: &'static [(&'static str, HeaderAppendAction)] = &[
        ("append", HeaderAppendAction::Append),
        ("overwrite", HeaderAppendAction::Overwrite),
        ("add_if_absent", HeaderAppendAction::AddIfAbsent),
    ];
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HeaderValueOption {
    /// Lower-case header name.
    pub name: String,
    pub value: String,
    pub action: HeaderAppendAction,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<DomainMatch>,
    pub routes: Vec<Route>,
    pub headers: HeaderMutations,
    pub retry_policy: Option<RetryPolicy>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DomainMatch {
    /// `example.com` (lower case; a port in the request's host is ignored unless listed).
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
    /// `www.example.*` stored as `www.example.`.
    Prefix(String),
    /// `*`.
    Any,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match")]
    pub match_: RouteMatch,
    pub action: RouteAction,
    pub headers: HeaderMutations,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    /// Empty means any method.
    pub methods: Vec<String>,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryMatcher>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// Must match the whole path (without the query).
    Regex(String),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HeaderMatcher {
    pub name: String,
    pub rule: StringRule,
    pub invert: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct QueryMatcher {
    pub name: String,
    pub rule: StringRule,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum StringRule {
    Exact(String),
    Prefix(String),
    /// Must match the whole value.
    Regex(String),
    Present(bool),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    Forward(ForwardAction),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ForwardAction {
    /// One entry with weight 1 for a plain `cluster:` route.
    pub clusters: Vec<WeightedCluster>,
    /// Whole-request timeout including retries; `None` disables it.
    #[serde(serialize_with = "ser_opt_dur")]
    pub timeout: Option<Duration>,
    /// Set: a gRPC request's `grpc-timeout` replaces `timeout`, capped at this (zero: no cap).
    /// Unset: `grpc-timeout` can only shorten `timeout`.
    #[serde(serialize_with = "ser_opt_dur")]
    pub max_grpc_timeout: Option<Duration>,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<String>,
    pub auto_host_rewrite: bool,
    pub retry_policy: Option<RetryPolicy>,
    pub hash_policy: Vec<HashPolicy>,
    pub fault: Option<Box<FaultPolicy>>,
    pub request_mirror_policies: Vec<MirrorPolicy>,
    pub local_rate_limit: Option<Box<LocalRateLimit>>,
    pub rate_limits: Vec<RateLimitPolicy>,
    pub priority: RoutePriority,
}

impl ForwardAction {
    /// The timeout of one request: the route's, shortened by a gRPC request's `grpc-timeout`
    /// (`grpc_timeout`), or replaced by it up to `max_grpc_timeout` when the route sets that.
    pub fn effective_timeout(&self, grpc_timeout: Option<Duration>) -> Option<Duration> {
        let Some(g) = grpc_timeout else {
            return self.timeout;
        };
        match self.max_grpc_timeout {
            Some(max) if max.is_zero() => Some(g),
            Some(max) => Some(g.min(max)),
            None => Some(self.timeout.map_or(g, |t| t.min(g))),
        }
    }

    /// Whether any per-route traffic-governance filter (fault, mirror, rate limit) is configured.
    pub fn has_filters(&self) -> bool {
        self.fault.is_some()
            || !self.request_mirror_policies.is_empty()
            || self.local_rate_limit.is_some()
            || !self.rate_limits.is_empty()
    }
}

/// Fault injection (Envoy `envoy.filters.http.fault`, `HTTPFault`). At least one of `delay`, `abort`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FaultPolicy {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    /// The fault applies only to requests matching all of these (empty: every request).
    pub headers: Vec<HeaderMatcher>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FaultDelay {
    #[serde(serialize_with = "ser_dur")]
    pub fixed: Duration,
    /// 0–100.
    pub percent: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FaultAbort {
    pub status: AbortStatus,
    /// 0–100.
    pub percent: f64,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AbortStatus {
    /// 200–599.
    Http(u16),
    /// 0–16.
    Grpc(u8),
}

/// Traffic mirroring (Envoy `RouteAction.RequestMirrorPolicy`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MirrorPolicy {
    pub cluster: String,
    /// 0–100.
    pub percent: f64,
}

/// A token bucket (Envoy `envoy.filters.http.local_ratelimit`, `token_bucket`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LocalRateLimit {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    #[serde(serialize_with = "ser_dur")]
    pub fill_interval: Duration,
    /// Lower-case header name: one bucket per distinct value; requests without it share one bucket.
    pub descriptor_header: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    pub num_retries: u32,
    #[serde(serialize_with = "ser_opt_dur")]
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    #[serde(serialize_with = "ser_dur")]
    pub backoff_base: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// Whether a retry can follow a try whose request body was already sent, so the body must be
    /// kept for a replay. A connect failure is never one: the body stays unsent and is put back.
    pub fn replays_body(&self) -> bool {
        let on = &self.retry_on;
        self.num_retries > 0
            && (on.five_xx || on.gateway_error || on.reset || on.retriable_status_codes || on.per_try_timeout)
    }
}

/// The conditions that make a try retriable (Envoy's `x-envoy-retry-on` names).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx response, connect failure, reset or per-try timeout.
    pub five_xx: bool,
    /// 502, 503, 504, plus connect failure / reset / per-try timeout.
    pub gateway_error: bool,
    pub connect_failure: bool,
    /// The upstream reset the stream or closed the connection before a response.
    pub reset: bool,
    pub retriable_status_codes: bool,
    pub per_try_timeout: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum HashPolicy {
    /// The name is parsed once, here, not per request.
    Header {
        #[serde(serialize_with = "ser_header_name")]
        name: http::HeaderName,
        terminal: bool,
    },
    /// `generate`: when the request has no such cookie, the proxy makes one up, hashes on it and
    /// sends it to the client in a `Set-Cookie` (Envoy's `cookie.ttl`); `None`: never generated.
    Cookie {
        name: String,
        terminal: bool,
        generate: Option<Box<CookieGen>>,
    },
    SourceIp {
        terminal: bool,
    },
    QueryParameter {
        name: String,
        terminal: bool,
    },
}

/// How a generated hash cookie is written: `Set-Cookie: NAME="VALUE"; Max-Age=TTL; Path=PATH;
/// ATTRIBUTES; HttpOnly` (as Envoy, the value quoted; no `Max-Age` when the ttl is under 1s: a
/// session cookie).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CookieGen {
    #[serde(serialize_with = "ser_dur")]
    pub ttl: Duration,
    pub path: Option<String>,
    pub attributes: Vec<CookieAttribute>,
}

/// One extra attribute of a generated cookie: `NAME` alone or `NAME=VALUE`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CookieAttribute {
    pub name: String,
    pub value: Option<String>,
}

impl CookieGen {
    /// The `Set-Cookie` value for cookie `name` with value `value`.
    pub fn set_cookie(&self, name: &str, value: &str) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(name.len() + value.len() + 64);
        let _ = write!(out, "{name}=\"{value}\"");
        let secs = self.ttl.as_secs();
        if secs != 0 {
            let _ = write!(out, "; Max-Age={secs}");
        }
        if let Some(p) = self.path.as_deref().filter(|p| !p.is_empty()) {
            let _ = write!(out, "; Path={p}");
        }
        for a in &self.attributes {
            match a.value.as_deref().filter(|v| !v.is_empty()) {
                Some(v) => {
                    let _ = write!(out, "; {}={v}", a.name);
                }
                None => {
                    let _ = write!(out, "; {}", a.name);
                }
            }
        }
        out.push_str("; HttpOnly");
        out
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub status: u16,
    pub strip_query: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DirectResponse {
    pub status: u16,
    pub body: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    #[serde(serialize_with = "ser_dur")]
    pub connect_timeout: Duration,
    /// Bytes buffered per upstream connection and stream.
    pub per_connection_buffer_limit_bytes: u32,
    pub protocol: UpstreamProtocol,
    pub endpoints: Vec<Endpoint>,
    pub circuit_breakers: CircuitBreakers,
    pub retry_budget: Option<RetryBudget>,
    pub pool: PoolConfig,
    pub outlier_detection: Option<OutlierDetection>,
    pub health_checks: Vec<HealthCheck>,
    /// Percent (0–100) of eligible hosts below which health is ignored (panic mode).
    pub healthy_panic_threshold: f64,
    pub locality_aware: bool,
    pub subsets: Option<Subsets>,
    /// TLS origination; `None` is plaintext. The default of endpoints no `tls_matches` entry
    /// matches.
    pub tls: Option<crate::tls::ClusterTls>,
    /// TLS per endpoint (Envoy's `transport_socket_matches`); see [`Cluster::tls_choice`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_matches: Vec<TlsMatch>,
    /// Connect to the original destination from the downstream peer's IP (only `original_dst`
    /// clusters; needs CAP_NET_ADMIN and `weft init --tproxy`'s return-path rules).
    pub original_source: bool,
    /// The service this cluster reaches (Istio's `destination_service`, `_name`, `_namespace`).
    pub service: Option<ClusterService>,
}

/// One of a cluster's `tls_matches`: endpoints whose `tls_match` carries every key/value of
/// `match_` (empty: every endpoint) connect with `tls` (`None`: plaintext).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TlsMatch {
    pub name: String,
    #[serde(rename = "match")]
    pub match_: BTreeMap<String, String>,
    pub tls: Option<crate::tls::ClusterTls>,
}

/// Whether every key/value of `want` is in `have`.
fn subset(want: &BTreeMap<String, String>, have: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

impl Cluster {
    /// Which TLS an endpoint uses (Envoy's transport socket matching): `i + 1` for the first
    /// `tls_matches[i]` whose `match` is a subset of the endpoint's `tls_match`, else of its
    /// `locality_tls_match`; 0 (the cluster's `tls`) when none matches or there is no endpoint
    /// (an original-destination host).
    pub fn tls_choice(&self, e: Option<&Endpoint>) -> usize {
        let Some(e) = e else {
            return 0;
        };
        let first = |have: &BTreeMap<String, String>| self.tls_matches.iter().position(|m| subset(&m.match_, have));
        first(&e.tls_match)
            .or_else(|| first(&e.locality_tls_match))
            .map_or(0, |i| i + 1)
    }

    /// The TLS of choice `i` ([`Cluster::tls_choice`]).
    pub fn tls_of(&self, i: usize) -> Option<&crate::tls::ClusterTls> {
        match i {
            0 => self.tls.as_ref(),
            i => self.tls_matches.get(i - 1).and_then(|m| m.tls.as_ref()),
        }
    }

    /// Whether any endpoint may connect with TLS.
    pub fn any_tls(&self) -> bool {
        self.tls.is_some() || self.tls_matches.iter().any(|m| m.tls.is_some())
    }
}

/// The service a cluster reaches, as Istio's metrics label it: `host` is `destination_service`
/// (e.g. `reviews.bookinfo.svc.cluster.local`), `name` `destination_service_name`, `namespace`
/// `destination_service_namespace` (empty: not known).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ClusterService {
    pub host: String,
    pub name: String,
    pub namespace: String,
}

/// Passive health checking (Envoy `OutlierDetection`). A threshold of 0 disables that detector.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    #[serde(serialize_with = "ser_dur")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub base_ejection_time: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    /// Eject hosts whose success rate is below mean − stdev × factor/1000.
    pub success_rate_stdev_factor: u32,
    /// 0 disables failure-percentage ejection.
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HealthCheck {
    #[serde(serialize_with = "ser_dur")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub interval_jitter: Duration,
    #[serde(serialize_with = "ser_dur")]
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub kind: HealthCheckKind,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    Http {
        path: String,
        host: Option<String>,
        /// Inclusive ranges.
        expected_statuses: Vec<(u16, u16)>,
    },
    Tcp,
    Grpc {
        service_name: String,
        authority: Option<String>,
    },
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Subsets {
    pub fallback_policy: SubsetFallback,
    pub default_subset: BTreeMap<String, String>,
    #[serde(serialize_with = "ser_opt_header_name")]
    pub tag_header: Option<http::HeaderName>,
    pub tag_label: String,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SubsetFallback {
    NoFallback,
    AnyEndpoint,
    DefaultSubset,
}

impl SubsetFallback {
    pub const NAMES: &'static [(&'static str, SubsetFallback)] = &[
        ("no_fallback", SubsetFallback::NoFallback),
        ("any_endpoint", SubsetFallback::AnyEndpoint),
        ("default_subset", SubsetFallback::DefaultSubset),
    ];
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    Static,
    /// Every endpoint is a `host:port` re-resolved every `refresh`.
    StrictDns {
        #[serde(serialize_with = "ser_dur")]
        refresh: Duration,
    },
    /// The upstream is the original destination of the downstream connection (`SO_ORIGINAL_DST`),
    /// or the `x-weft-original-dst-host` header for HTTP.
    OriginalDst,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest { choice_count: u32 },
    Random,
    RingHash { min_ring_size: u64, max_ring_size: u64 },
    Maglev { table_size: u64 },
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

impl UpstreamProtocol {
    pub const NAMES: &'static [(&'static str, UpstreamProtocol)] =
        &[("http1", UpstreamProtocol::Http1), ("http2", UpstreamProtocol::Http2)];
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Endpoint {
    pub address: EndpointAddress,
    pub weight: u32,
    pub priority: u32,
    pub locality: Locality,
    pub labels: BTreeMap<String, String>,
    /// Matched by the cluster's `tls_matches` (Envoy: `envoy.transport_socket_match` metadata).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tls_match: BTreeMap<String, String>,
    /// The locality's, consulted when nothing matches `tls_match`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub locality_tls_match: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum EndpointAddress {
    Socket(SocketAddr),
    /// A DNS name, for `strict_dns` clusters.
    Dns {
        host: String,
        port: u16,
    },
}

impl std::fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddress::Socket(a) => write!(f, "{a}"),
            EndpointAddress::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Circuit-breaker thresholds for requests of default priority, with the thresholds of
/// high-priority requests (routes with `priority: high`) alongside (Envoy's per-`RoutingPriority`
/// `thresholds`). The two priorities are counted separately.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CircuitBreakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// `None`: Envoy's defaults for the high priority.
    pub high_priority: Option<Box<CircuitBreakers>>,
}

impl CircuitBreakers {
    /// Envoy's defaults, for either priority.
    pub const ENVOY_DEFAULTS: CircuitBreakers = CircuitBreakers {
        max_connections: 1024,
        max_pending_requests: 1024,
        max_requests: 1024,
        max_retries: 3,
        high_priority: None,
    };

    /// The thresholds that apply to requests of `priority`.
    pub fn for_priority(&self, priority: RoutePriority) -> &CircuitBreakers {
        match priority {
            RoutePriority::Default => self,
            RoutePriority::High => self.high_priority.as_deref().unwrap_or(&Self::ENVOY_DEFAULTS),
        }
    }
}

impl Default for CircuitBreakers {
    /// Envoy's defaults.
    fn default() -> Self {
        Self::ENVOY_DEFAULTS
    }
}

/// Envoy's `RoutingPriority`: which set of circuit-breaker thresholds a route's requests count against.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RoutePriority {
    #[default]
    Default,
    High,
}

impl RoutePriority {
    pub const NAMES: &'static [(&'static str, RoutePriority)] =
        &[("default", RoutePriority::Default), ("high", RoutePriority::High)];
}

impl RoutePriority {
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RetryBudget {
    /// Retries allowed as a percentage of active requests.
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PoolConfig {
    pub max_idle_per_endpoint: u32,
    #[serde(serialize_with = "ser_dur")]
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle_per_endpoint: 1024,
            idle_timeout: Duration::from_secs(60),
        }
    }
}
