//! The registry model: weft's own YAML for services, routing policies and destination policies.
//!
//! Parsing happens in two steps. [`parse_fragment`] turns one source (a file, later a Kubernetes
//! object) into a validated [`Fragment`], collecting every shape error with a field path
//! (`routes[0].http[1].route[0].weight: must be at least 1`). [`World::build`] then merges all
//! fragments and checks what only the whole registry can tell: duplicate definitions and references to
//! unknown services or subsets. Nothing that fails either step ever reaches translation.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use weft_config::model::RoutePriority;
use weft_config::raw::LbKind;
use weft_config::typed::FromText;

// ---------------------------------------------------------------------------------------------
// Raw YAML shapes (deny_unknown_fields: a typo must be an error, not a silently ignored policy).
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    routes: Vec<RawRoutes>,
    #[serde(default)]
    destinations: Vec<RawDestination>,
    rate_limit_service: Option<RawRls>,
    /// Istio-style AuthorizationPolicies, enforced by the selected services' inbound sidecars.
    #[serde(default)]
    authorization: Vec<RawMeshAuthz>,
    /// Mesh-wide tracing: every sidecar's HTTP connection managers export spans (OTLP/gRPC).
    tracing: Option<RawMeshTracing>,
    /// Mesh-wide access log: every sidecar's HTTP connection managers send Envoy's gRPC access-log
    /// service entries.
    access_log: Option<RawMeshAccessLog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeshTracing {
    service: String,
    sampling_percent: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeshAccessLog {
    service: String,
    log_name: Option<String>,
}

/// One mesh authorization policy, like a registry file's `authorization` entry: Istio's
/// AuthorizationPolicy with `service` as its selector (also the spec of a WeftAuthorization).
#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(
    feature = "kubernetes",
    derive(serde::Serialize, schemars::JsonSchema, kube::CustomResource)
)]
#[cfg_attr(
    feature = "kubernetes",
    kube(
        group = "weft.dev",
        version = "v1alpha1",
        kind = "WeftAuthorization",
        plural = "weftauthorizations",
        shortname = "wauthz",
        namespaced,
        status = "crate::crd::WeftStatus",
        doc = "weft authorization policy: the spec is a registry file's `authorization` entry (docs/control.md)"
    )
)]
#[serde(deny_unknown_fields)]
pub struct RawMeshAuthz {
    /// Applies to this service's inbound listeners (`reviews.bookinfo`); absent: every service
    /// (in `namespace`).
    #[serde(alias = "selector", skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    /// Applies only to sidecars whose node metadata NAMESPACE is this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    /// The policy's name (unique in the mesh).
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// ALLOW (default), DENY or AUDIT.
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    /// Only logged and counted (shadow rules).
    #[serde(alias = "dryRun", skip_serializing_if = "Option::is_none")]
    dry_run: Option<bool>,
    /// Istio's rules: `from` (sources), `to` (operations), `when` (conditions); none: the
    /// policy matches nothing (ALLOW) or everything (DENY).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rules: Vec<weft_config::authz::RawAuthzRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRls {
    service: String,
    domain: String,
    timeout: Option<String>,
    failure_mode_deny: Option<bool>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawEmpty {}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRlDescriptor {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    actions: Vec<RawRlAction>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRlAction {
    #[serde(skip_serializing_if = "Option::is_none")]
    request_headers: Option<RawRlHeader>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_address: Option<RawEmpty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generic_key: Option<RawRlGeneric>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRlHeader {
    header_name: String,
    descriptor_key: String,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRlGeneric {
    descriptor_value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    descriptor_key: Option<String>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_jitter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthy_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unhealthy_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<RawHttpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<RawEmpty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc: Option<RawGrpcCheck>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawHttpCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    expected_statuses: Vec<RawStatus>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize))]
#[serde(untagged)]
enum RawStatus {
    Code(u32),
    Text(String),
}

/// A status code or a range (`"200-299"`): Kubernetes' `int-or-string`.
#[cfg(feature = "kubernetes")]
impl schemars::JsonSchema for RawStatus {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RawStatus".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawGrpcCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    service_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    port: Option<u16>,
    protocol: Option<String>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    dependencies: Option<Vec<String>>,
    /// Mesh mTLS for this service's workloads (with `--ca-dir`), like Istio's PeerAuthentication:
    /// STRICT, PERMISSIVE or DISABLE (no sidecar: callers send plaintext). Default: `--mtls`.
    mtls: Option<String>,
    /// The SPIFFE IDs that may serve this service (secure naming): a caller's sidecar refuses a
    /// server presenting another. Default: the endpoints' `security.weft.dev/identity` labels.
    #[serde(default)]
    identities: Vec<String>,
    /// `protocol: dubbo` only: the Dubbo interfaces the service provides (what callers' sidecars
    /// route on). Default: the service's name.
    #[serde(default)]
    interfaces: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    address: String,
    weight: Option<u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    locality: Option<RawLocality>,
    priority: Option<u32>,
    health: Option<String>,
    /// false: the endpoint's workload has no sidecar, so callers reach it in plaintext while the
    /// service's other endpoints get mesh mTLS (Istio's `tlsMode`). Default true.
    sidecar: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLocality {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    sub_zone: String,
}

/// Routing policy for one service, like a registry file's `routes` entry (also the spec of a
/// WeftRoute).
#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(
    feature = "kubernetes",
    derive(serde::Serialize, schemars::JsonSchema, kube::CustomResource)
)]
#[cfg_attr(
    feature = "kubernetes",
    kube(
        group = "weft.dev",
        version = "v1alpha1",
        kind = "WeftRoute",
        plural = "weftroutes",
        shortname = "wroute",
        namespaced,
        status = "crate::crd::WeftStatus",
        doc = "weft routing policy: the spec is a registry file's `routes` entry (docs/control.md)"
    )
)]
#[serde(deny_unknown_fields)]
pub struct RawRoutes {
    /// The weft service these routes apply to (`reviews.bookinfo`).
    service: String,
    /// HTTP routes, first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    http: Vec<RawHttpRoute>,
    /// Dubbo rules (a `protocol: dubbo` service), first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dubbo: Vec<RawDubboRoute>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawDubboRoute {
    #[serde(default, rename = "match")]
    matches: RawDubboMatch,
    route: RawDubboDest,
}

#[derive(Default, Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawDubboMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    interface: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    arguments: Vec<RawDubboArg>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    attachments: BTreeMap<String, String>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawDubboArg {
    index: u32,
    equals: String,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawDubboDest {
    destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subset: Option<String>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawHttpRoute {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    matches: Vec<RawMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    route: Vec<RawDestRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<RawRetries>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<RawFault>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mirror: Option<RawMirror>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RawRateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<RawHash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rate_limits: Vec<RawRlDescriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rewrite: Option<RawRewrite>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<RawHeaderOps>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRewrite {
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authority: Option<String>,
}

#[derive(Default, Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawHeaderOps {
    #[serde(default)]
    request: RawHeaderOp,
    #[serde(default)]
    response: RawHeaderOp,
}

#[derive(Default, Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawHeaderOp {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    remove: Vec<String>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, RawStringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    query_params: BTreeMap<String, RawStringMatch>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawStringMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    present: Option<bool>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawDestRef {
    destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRetries {
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_try_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    retry_on: Vec<String>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawFault {
    #[serde(skip_serializing_if = "Option::is_none")]
    abort: Option<RawAbort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delay: Option<RawDelay>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawAbort {
    #[serde(skip_serializing_if = "Option::is_none")]
    http_status: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_status: Option<u32>,
    percent: f64,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawDelay {
    fixed: String,
    percent: f64,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawMirror {
    destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    percent: Option<f64>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests: u32,
    per: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<u32>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawHash {
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    source_ip: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cookie: Option<RawHashCookie>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawHashCookie {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

/// Destination policy for one service, like a registry file's `destinations` entry (also the
/// spec of a WeftDestination).
#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(
    feature = "kubernetes",
    derive(serde::Serialize, schemars::JsonSchema, kube::CustomResource)
)]
#[cfg_attr(
    feature = "kubernetes",
    kube(
        group = "weft.dev",
        version = "v1alpha1",
        kind = "WeftDestination",
        plural = "weftdestinations",
        shortname = "wdest",
        namespaced,
        status = "crate::crd::WeftStatus",
        doc = "weft destination policy: the spec is a registry file's `destinations` entry (docs/control.md)"
    )
)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    /// The weft service this policy applies to (`reviews.bookinfo`).
    service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lb: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_limits: Option<RawLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outlier_detection: Option<RawOutlier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    subsets: Vec<RawSubset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    health_checks: Vec<RawHealthCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    panic_threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    locality_lb: Option<String>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_pending_requests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_requests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_retries: Option<u32>,
    /// The same limits for high-priority routes (one level: a CRD schema cannot recurse).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kubernetes", schemars(with = "Option<RawLimitsLeaf>"))]
    high_priority: Option<Box<RawLimits>>,
}

/// [`RawLimits`] without `high_priority`: its schema, one level down.
#[cfg(feature = "kubernetes")]
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct RawLimitsLeaf {
    max_connections: Option<u32>,
    max_pending_requests: Option<u32>,
    max_requests: Option<u32>,
    max_retries: Option<u32>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    #[serde(skip_serializing_if = "Option::is_none")]
    consecutive_5xx: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_ejection_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_ejection_percent: Option<u32>,
}

#[derive(Deserialize, Clone, Debug)]
#[cfg_attr(feature = "kubernetes", derive(serde::Serialize, schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSubset {
    name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// Validated model.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Grpc,
    Tcp,
    /// Dubbo2 (hessian2): sidecars proxy it with `envoy.filters.network.dubbo_proxy`.
    Dubbo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
    Draining,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
    pub locality: Locality,
    pub priority: u32,
    pub health: Health,
    /// The workload runs a sidecar that answers mesh mTLS. When some of a service's endpoints do
    /// not, those are called in plaintext and the others with mTLS (Istio's `tlsMode`, see
    /// `mesh_tls`).
    pub sidecar: bool,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Service {
    pub name: String,
    pub port: Option<u16>,
    pub protocol: Protocol,
    pub endpoints: Vec<Endpoint>,
    /// The services this service's workloads call (like the egress hosts of an Istio `Sidecar`):
    /// their sidecars are sent only these (see `docs/control.md`, "Configuration scoping"). None:
    /// not declared; `*` in the list: everything.
    pub dependencies: Option<Vec<String>>,
    /// Mesh mTLS mode of the service's workloads; None: the control plane's default (`--mtls`).
    pub mtls: Option<MtlsMode>,
    /// The SPIFFE IDs that may serve the service (secure naming), sorted; empty: its endpoints'
    /// identity labels, else any mesh identity.
    pub identities: Vec<String>,
    /// `Protocol::Dubbo`: the Dubbo interfaces it provides, sorted; empty: its name
    /// ([`Service::dubbo_interfaces`]).
    pub interfaces: Vec<String>,
}

/// Istio PeerAuthentication's modes, for a service's workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inbound: mTLS only. Callers: mTLS.
    Strict,
    /// Inbound: mTLS and plaintext on one port. Callers: mTLS.
    Permissive,
    /// No mesh TLS: the workload has no sidecar with an identity; callers send plaintext.
    Disable,
}

impl MtlsMode {
    pub fn parse(s: &str) -> Option<MtlsMode> {
        match s.to_ascii_uppercase().as_str() {
            "STRICT" => Some(MtlsMode::Strict),
            "PERMISSIVE" => Some(MtlsMode::Permissive),
            "DISABLE" => Some(MtlsMode::Disable),
            _ => None,
        }
    }
}

/// The endpoint label naming the workload's SPIFFE ID (the Kubernetes registry sets it from the
/// Pod's service account).
pub const IDENTITY_LABEL: &str = "security.weft.dev/identity";

impl Service {
    /// The Dubbo interfaces a `protocol: dubbo` service provides: `interfaces`, else its name.
    pub fn dubbo_interfaces(&self) -> Vec<&str> {
        if self.interfaces.is_empty() {
            vec![self.name.as_str()]
        } else {
            self.interfaces.iter().map(String::as_str).collect()
        }
    }

    /// The SPIFFE IDs a caller accepts from this service's servers: `identities`, else the
    /// endpoints' identity labels (sorted, deduplicated); empty: any mesh identity.
    pub fn server_identities(&self) -> Vec<String> {
        if !self.identities.is_empty() {
            return self.identities.clone();
        }
        let mut v: Vec<String> = self
            .endpoints
            .iter()
            .filter_map(|e| e.labels.get(IDENTITY_LABEL).cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Mesh mTLS as weft control applies it (on when it runs the CA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshTls {
    /// The mode of services that set none.
    pub default_mode: MtlsMode,
    /// The cipher suite families the mesh TLS contexts offer (`--mtls-suites`).
    pub suites: MtlsSuites,
}

/// `weft control --mtls-suites`: the suite families of the mesh TLS contexts sent to sidecars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MtlsSuites {
    /// No `tls_params` (the proxy's defaults: standard suites), as Istio sends.
    #[default]
    Standard,
    /// `tls_params.cipher_suites: [TLS_SM4_GCM_SM3]`: ShangMi only (sidecars with
    /// `--identity-key-type sm2` or `both`).
    Sm,
    /// `TLS_SM4_GCM_SM3` first, then the standard TLS 1.3 and ECDHE-ECDSA suites (sidecars with
    /// `--identity-key-type both`).
    Both,
}

impl MeshTls {
    /// A service's effective mode.
    pub fn mode_of(&self, svc: &Service) -> MtlsMode {
        svc.mtls.unwrap_or(self.default_mode)
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
    Present(bool),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Match {
    pub path: PathMatch,
    pub method: Option<String>,
    pub headers: BTreeMap<String, StringMatch>,
    /// Query parameters by name (case-sensitive; `present: false` is refused: Envoy cannot say
    /// "absent" for them).
    pub query_params: BTreeMap<String, StringMatch>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DestRef {
    pub service: String,
    pub subset: Option<String>,
    pub weight: u32,
}

impl DestRef {
    /// The xDS cluster this reference points at: `T` or `T|subset`.
    pub fn cluster_name(&self) -> String {
        cluster_name(&self.service, self.subset.as_deref())
    }
}

pub fn cluster_name(service: &str, subset: Option<&str>) -> String {
    match subset {
        Some(s) => format!("{service}|{s}"),
        None => service.to_string(),
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Retries {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum AbortCode {
    Http(u32),
    Grpc(u32),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Fault {
    pub abort: Option<(AbortCode, f64)>,
    pub delay: Option<(Duration, f64)>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Mirror {
    pub dest: DestRef,
    pub percent: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum HashOn {
    Header(String),
    SourceIp,
    /// Envoy's `hash_policy.cookie`: with a `ttl` the proxy generates the cookie when the request
    /// has none (ttl 0: a session cookie) and sets it, with `path`, on the response.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: Option<String>,
    },
}

/// One action of a global rate limit descriptor (Envoy `RateLimit.Action`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum RlAction {
    RequestHeaders {
        header_name: String,
        descriptor_key: String,
    },
    RemoteAddress,
    GenericKey {
        descriptor_value: String,
        descriptor_key: Option<String>,
    },
}

/// One descriptor sent to the rate limit service (Envoy `RouteAction.rate_limits[]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RlDescriptor {
    pub actions: Vec<RlAction>,
}

/// Mesh-wide telemetry (top-level `tracing` and `access_log`), put in the HTTP connection manager
/// of every sidecar listener.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Telemetry {
    pub tracing: Option<MeshTracing>,
    pub access_log: Option<MeshAccessLog>,
}

/// `tracing`: spans exported over OTLP/gRPC to a registered gRPC service (the collector).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MeshTracing {
    pub service: String,
    /// Percent of new traces sampled (Envoy's `random_sampling`).
    pub sampling_percent: f64,
}

/// `access_log`: Envoy's gRPC access-log service on a registered gRPC service.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MeshAccessLog {
    pub service: String,
    pub log_name: String,
}

/// The global rate limit service (top-level `rate_limit_service`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RateLimitService {
    /// A registered service of protocol grpc; its EDS cluster is the filter's `envoy_grpc` cluster.
    pub service: String,
    pub domain: String,
    pub timeout: Duration,
    pub failure_mode_deny: bool,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HttpRoute {
    pub name: Option<String>,
    pub matches: Vec<Match>,
    pub route: Vec<DestRef>,
    pub retries: Option<Retries>,
    pub timeout: Option<Duration>,
    pub fault: Option<Fault>,
    pub mirror: Option<Mirror>,
    pub rate_limit: Option<RateLimit>,
    pub hash: Option<HashOn>,
    /// `priority: high` → `RouteAction.priority: HIGH` (the HIGH circuit breaker thresholds).
    pub high_priority: bool,
    pub rate_limits: Vec<RlDescriptor>,
    pub rewrite: Option<Rewrite>,
    /// Header changes on the way to the destination (`request`) and back (`response`).
    pub request_headers: HeaderOp,
    pub response_headers: HeaderOp,
}

/// `rewrite` of an HTTP route (Istio's `HTTPRewrite`): the matched path prefix (the whole path of
/// an exact match) becomes `uri`; the `Host`/`:authority` becomes `authority`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
}

/// Header changes (Istio's `Headers.HeaderOperations`): `set` replaces (or adds), `add` appends,
/// `remove` removes.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct HeaderOp {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

/// A rule for the calls to a Dubbo service (`routes[].dubbo[]`): all its conditions must hold.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DubboRule {
    /// One of the service's interfaces; none: all of them.
    pub interface: Option<String>,
    pub method: Option<String>,
    /// `(index, value)`: the argument at `index`, as a string (integers in decimal).
    pub arguments: Vec<(u32, String)>,
    pub attachments: BTreeMap<String, String>,
    /// Where the matched calls go: a Dubbo service and optionally one of its subsets.
    pub service: String,
    pub subset: Option<String>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RoutePolicy {
    pub service: String,
    pub http: Vec<HttpRoute>,
    pub dubbo: Vec<DubboRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

#[derive(Clone, Debug, PartialEq, Default, serde::Serialize)]
pub struct Limits {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
    /// Thresholds of the HIGH routing priority.
    pub high_priority: Option<Box<Limits>>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum CheckKind {
    /// path, host, expected statuses as half-open [start, end) ranges.
    Http {
        path: String,
        host: Option<String>,
        expected: Vec<(u32, u32)>,
    },
    Tcp,
    Grpc {
        service_name: String,
    },
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub interval_jitter: Option<Duration>,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalityLb {
    /// `common_lb_config.zone_aware_lb_config`.
    ZoneAware,
    /// `common_lb_config.locality_weighted_lb_config`.
    Weighted,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Outlier {
    pub consecutive_5xx: Option<u32>,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DestinationPolicy {
    pub service: String,
    pub lb: LbPolicy,
    pub limits: Option<Limits>,
    pub outlier: Option<Outlier>,
    pub subsets: Vec<Subset>,
    pub connect_timeout: Option<Duration>,
    pub health_checks: Vec<HealthCheck>,
    /// Percent, 0-100.
    pub panic_threshold: Option<f64>,
    pub locality_lb: Option<LocalityLb>,
}

/// What one source (file) contributes, validated in isolation. Order is kept so that error paths
/// from the cross-reference check (`routes[2]...`) point into the source as written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fragment {
    /// `Arc`: a world of 100k endpoints is merged on every change; services are shared, not copied.
    pub services: Vec<std::sync::Arc<Service>>,
    pub routes: Vec<RoutePolicy>,
    pub destinations: Vec<DestinationPolicy>,
    pub rate_limit_service: Option<RateLimitService>,
    pub telemetry: Option<Telemetry>,
    pub authorization: Vec<MeshAuthz>,
}

/// A validated mesh authorization policy.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshAuthz {
    pub name: String,
    pub service: Option<String>,
    pub namespace: Option<String>,
    /// The policy compiled alone (its stages); merged per proxy by
    /// [`crate::translate::authorization_for`].
    pub compiled: weft_config::authz::Authorization,
}

impl MeshAuthz {
    /// Whether the policy applies to the sidecar of `service` whose node says it runs in
    /// `namespace`. A node that does not say (no `NAMESPACE` metadata) is taken to run in its
    /// service's namespace when the service is named `<name>.<namespace>` (the Kubernetes
    /// registry's names), so a namespace's policies reach its sidecars either way.
    pub fn selects(&self, service: &str, namespace: &str) -> bool {
        let namespace = match namespace {
            "" => service.rsplit_once('.').map_or("", |(_, ns)| ns),
            ns => ns,
        };
        self.service.as_deref().is_none_or(|s| s == service) && self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

/// weft-config's field-error collector, each path prefixed with the source (a file name).
struct Errs<'a> {
    source: &'a str,
    list: weft_config::ConfigError,
}

impl Errs<'_> {
    fn push(&mut self, path: impl std::fmt::Display, msg: impl std::fmt::Display) {
        self.list.add(format!("{}: {path}", self.source), msg);
    }
}

fn dur(e: &mut Errs<'_>, path: &str, s: &str) -> Option<Duration> {
    match weft_config::duration::parse(s) {
        Ok(d) => Some(d),
        Err(m) => {
            e.push(path, m);
            None
        }
    }
}

/// A route's `hash.cookie`: the same rules as the proxy's `hash_policy[].cookie`, so what Envoy
/// and weft are sent is valid for both.
fn hash_cookie(e: &mut Errs<'_>, path: &str, c: RawHashCookie) -> Option<HashOn> {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let mut ok = true;
    if !token(&c.name) {
        e.push(
            format!("{path}.name"),
            format!("\"{}\" is not a valid cookie name (an HTTP token)", c.name),
        );
        ok = false;
    }
    let ttl = match &c.ttl {
        Some(t) => {
            let d = dur(e, &format!("{path}.ttl"), t);
            ok &= d.is_some();
            d
        }
        None => None,
    };
    if let Some(p) = &c.path {
        if c.ttl.is_none() {
            e.push(
                format!("{path}.path"),
                "has no effect without ttl (no cookie is generated)",
            );
            ok = false;
        } else if p.is_empty() || !p.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b';') {
            e.push(format!("{path}.path"), "must be non-empty printable ASCII without ';'");
            ok = false;
        }
    }
    ok.then_some(HashOn::Cookie {
        name: c.name,
        ttl,
        path: c.path,
    })
}

fn percent(e: &mut Errs<'_>, path: &str, p: f64) -> f64 {
    if !(0.0..=100.0).contains(&p) || p.is_nan() {
        e.push(path, format!("{p} is not a percentage between 0 and 100"));
    }
    p
}

/// DNS-label-like names: they become cluster and virtual host names, and `|` is our subset separator.
fn check_name(e: &mut Errs<'_>, path: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !ok {
        e.push(
            path,
            format!("\"{name}\" is not a valid name (letters, digits, '-', '.', '_')"),
        );
    }
}

/// A Dubbo interface name as sidecars route on it: a Java type name (letters, digits, '_', '$',
/// '.'-separated, no empty part).
fn check_interface(e: &mut Errs<'_>, path: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'$'))
        });
    if !ok {
        e.push(
            path,
            format!("\"{name}\" is not a Dubbo interface name (e.g. org.example.Greeter)"),
        );
    }
}

/// Parses and validates one YAML source. `source` names it in error messages (a file name).
pub fn parse_fragment(source: &str, text: &str) -> Result<Fragment, Vec<String>> {
    let raw: RawFile = if text.trim().is_empty() {
        RawFile::default()
    } else {
        serde_saphyr::from_str(text).map_err(|err| vec![format!("{source}: {err}")])?
    };
    let mut e = Errs {
        source,
        list: Default::default(),
    };
    let mut frag = Fragment::default();
    for (i, s) in raw.services.into_iter().enumerate() {
        let p = format!("services[{i}]");
        check_name(&mut e, &format!("{p}.name"), &s.name);
        let protocol = match s.protocol.as_deref() {
            None | Some("http") => Protocol::Http,
            Some("grpc") | Some("http2") => Protocol::Grpc,
            Some("tcp") => Protocol::Tcp,
            Some("dubbo") => Protocol::Dubbo,
            Some(other) => {
                e.push(
                    format!("{p}.protocol"),
                    format!("unknown protocol \"{other}\" (http, grpc, tcp, dubbo)"),
                );
                Protocol::Http
            }
        };
        if s.port == Some(0) {
            e.push(format!("{p}.port"), "must be 1..65535");
        }
        let mut endpoints = Vec::with_capacity(s.endpoints.len());
        let mut seen = std::collections::HashSet::new();
        for (j, ep) in s.endpoints.into_iter().enumerate() {
            let ep_path = format!("{p}.endpoints[{j}]");
            // gRPC clients accept only IP endpoints, so host names are refused here rather than NACKed later.
            let address = match ep.address.parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 => a,
                _ => {
                    e.push(
                        format!("{ep_path}.address"),
                        format!("\"{}\" is not IP:port", ep.address),
                    );
                    continue;
                }
            };
            if !seen.insert(address) {
                e.push(format!("{ep_path}.address"), format!("duplicate endpoint {address}"));
            }
            let weight = ep.weight.unwrap_or(1);
            if weight == 0 {
                e.push(
                    format!("{ep_path}.weight"),
                    "must be at least 1 (remove the endpoint or mark it unhealthy instead)",
                );
            }
            let health = match ep.health.as_deref() {
                None | Some("healthy") => Health::Healthy,
                Some("unhealthy") => Health::Unhealthy,
                Some("draining") => Health::Draining,
                Some(other) => {
                    e.push(
                        format!("{ep_path}.health"),
                        format!("unknown health \"{other}\" (healthy, unhealthy, draining)"),
                    );
                    Health::Healthy
                }
            };
            let loc = ep.locality.unwrap_or_default();
            endpoints.push(Endpoint {
                address,
                weight,
                labels: ep.labels,
                locality: Locality {
                    region: loc.region,
                    zone: loc.zone,
                    sub_zone: loc.sub_zone,
                },
                priority: ep.priority.unwrap_or(0),
                health,
                sidecar: ep.sidecar.unwrap_or(true),
            });
        }
        if let Some(deps) = &s.dependencies {
            for (j, d) in deps.iter().enumerate() {
                if d != "*" {
                    check_name(&mut e, &format!("{p}.dependencies[{j}]"), d);
                }
            }
        }
        let mtls = s.mtls.as_deref().and_then(|m| {
            let v = MtlsMode::parse(m);
            if v.is_none() {
                e.push(
                    format!("{p}.mtls"),
                    format!("unknown mode \"{m}\" (STRICT, PERMISSIVE, DISABLE)"),
                );
            }
            v
        });
        for (j, id) in s.identities.iter().enumerate() {
            if weft_identity::SpiffeId::parse(id).is_err() {
                e.push(
                    format!("{p}.identities[{j}]"),
                    format!(
                        "\"{id}\" is not a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
                    ),
                );
            }
        }
        let mut identities = s.identities;
        identities.sort();
        identities.dedup();
        if !s.interfaces.is_empty() && protocol != Protocol::Dubbo {
            e.push(
                format!("{p}.interfaces"),
                "only a protocol: dubbo service has interfaces",
            );
        }
        for (j, i) in s.interfaces.iter().enumerate() {
            check_interface(&mut e, &format!("{p}.interfaces[{j}]"), i);
        }
        if protocol == Protocol::Dubbo && s.interfaces.is_empty() {
            check_interface(&mut e, &format!("{p}.name"), &s.name);
        }
        let mut interfaces = s.interfaces;
        interfaces.sort();
        interfaces.dedup();
        frag.services.push(std::sync::Arc::new(Service {
            interfaces,
            name: s.name,
            port: s.port,
            protocol,
            endpoints,
            dependencies: s.dependencies.map(|mut d| {
                d.sort();
                d.dedup();
                d
            }),
            mtls,
            identities,
        }));
    }
    for (i, r) in raw.routes.into_iter().enumerate() {
        let p = format!("routes[{i}]");
        check_name(&mut e, &format!("{p}.service"), &r.service);
        let mut http = Vec::new();
        for (j, h) in r.http.into_iter().enumerate() {
            http.push(http_route(&mut e, &format!("{p}.http[{j}]"), h));
        }
        let dubbo = (r.dubbo.into_iter().enumerate())
            .map(|(j, d)| dubbo_rule(&mut e, &format!("{p}.dubbo[{j}]"), d))
            .collect();
        frag.routes.push(RoutePolicy {
            service: r.service,
            http,
            dubbo,
        });
    }
    for (i, d) in raw.destinations.into_iter().enumerate() {
        let p = format!("destinations[{i}]");
        check_name(&mut e, &format!("{p}.service"), &d.service);
        // The proxy's own names (weft_config's table), so a destination's `lb` reads as a cluster's.
        let lb = match d.lb.as_deref().map(LbKind::from_text) {
            None | Some(Ok(LbKind::RoundRobin)) => LbPolicy::RoundRobin,
            Some(Ok(LbKind::LeastRequest)) => LbPolicy::LeastRequest,
            Some(Ok(LbKind::Random)) => LbPolicy::Random,
            Some(Ok(LbKind::RingHash)) => LbPolicy::RingHash,
            Some(Ok(LbKind::Maglev)) => LbPolicy::Maglev,
            Some(Err(m)) => {
                e.push(format!("{p}.lb"), m);
                LbPolicy::RoundRobin
            }
        };
        let outlier = d.outlier_detection.map(|o| Outlier {
            consecutive_5xx: o.consecutive_5xx,
            interval: o
                .interval
                .and_then(|s| dur(&mut e, &format!("{p}.outlier_detection.interval"), &s)),
            base_ejection_time: o
                .base_ejection_time
                .and_then(|s| dur(&mut e, &format!("{p}.outlier_detection.base_ejection_time"), &s)),
            max_ejection_percent: o.max_ejection_percent,
        });
        if let Some(m) = outlier.as_ref().and_then(|o| o.max_ejection_percent) {
            if m > 100 {
                e.push(format!("{p}.outlier_detection.max_ejection_percent"), "must be 0..100");
            }
        }
        let mut subsets: Vec<Subset> = Vec::new();
        for (j, s) in d.subsets.into_iter().enumerate() {
            check_name(&mut e, &format!("{p}.subsets[{j}].name"), &s.name);
            if subsets.iter().any(|x| x.name == s.name) {
                e.push(
                    format!("{p}.subsets[{j}].name"),
                    format!("duplicate subset \"{}\"", s.name),
                );
            }
            if s.labels.is_empty() {
                e.push(format!("{p}.subsets[{j}].labels"), "a subset needs at least one label");
            }
            subsets.push(Subset {
                name: s.name,
                labels: s.labels,
            });
        }
        let connect_timeout = d
            .connect_timeout
            .and_then(|s| dur(&mut e, &format!("{p}.connect_timeout"), &s));
        let limits = d.connection_limits.map(|l| {
            let high_priority = l.high_priority.map(|h| {
                if h.high_priority.is_some() {
                    e.push(
                        format!("{p}.connection_limits.high_priority.high_priority"),
                        "not allowed here",
                    );
                }
                Box::new(Limits {
                    max_connections: h.max_connections,
                    max_pending_requests: h.max_pending_requests,
                    max_requests: h.max_requests,
                    max_retries: h.max_retries,
                    high_priority: None,
                })
            });
            Limits {
                max_connections: l.max_connections,
                max_pending_requests: l.max_pending_requests,
                max_requests: l.max_requests,
                max_retries: l.max_retries,
                high_priority,
            }
        });
        let mut health_checks = Vec::new();
        if d.health_checks.len() > 1 {
            // Envoy (1.40) requires a name on every check when there are several, a field the
            // v3 API weft speaks does not have yet.
            e.push(
                format!("{p}.health_checks[1]"),
                "at most one health check per destination",
            );
        }
        for (j, h) in d.health_checks.into_iter().enumerate() {
            if let Some(hc) = health_check(&mut e, &format!("{p}.health_checks[{j}]"), h) {
                health_checks.push(hc);
            }
        }
        let panic_threshold = d
            .panic_threshold
            .map(|t| percent(&mut e, &format!("{p}.panic_threshold"), t));
        let locality_lb = match d.locality_lb.as_deref() {
            None => None,
            Some("zone_aware") => Some(LocalityLb::ZoneAware),
            Some("weighted") => Some(LocalityLb::Weighted),
            Some(other) => {
                e.push(
                    format!("{p}.locality_lb"),
                    format!("unknown locality_lb \"{other}\" (zone_aware, weighted)"),
                );
                None
            }
        };
        frag.destinations.push(DestinationPolicy {
            service: d.service,
            lb,
            limits,
            outlier,
            subsets,
            connect_timeout,
            health_checks,
            panic_threshold,
            locality_lb,
        });
    }
    if let Some(r) = raw.rate_limit_service {
        let p = "rate_limit_service";
        check_name(&mut e, &format!("{p}.service"), &r.service);
        if r.domain.is_empty() {
            e.push(format!("{p}.domain"), "must not be empty");
        }
        let timeout = match r.timeout {
            Some(t) => {
                let d = dur(&mut e, &format!("{p}.timeout"), &t);
                if d.is_some_and(|d| d.is_zero()) {
                    e.push(format!("{p}.timeout"), "must be more than 0");
                }
                d.unwrap_or_default()
            }
            // Envoy's default.
            None => Duration::from_millis(20),
        };
        frag.rate_limit_service = Some(RateLimitService {
            service: r.service,
            domain: r.domain,
            timeout,
            failure_mode_deny: r.failure_mode_deny.unwrap_or(false),
        });
    }
    if raw.tracing.is_some() || raw.access_log.is_some() {
        let mut t = Telemetry::default();
        if let Some(r) = raw.tracing {
            check_name(&mut e, "tracing.service", &r.service);
            let pct = r.sampling_percent.unwrap_or(100.0);
            if !(0.0..=100.0).contains(&pct) {
                e.push("tracing.sampling_percent", format!("{pct} is out of range [0, 100]"));
            }
            t.tracing = Some(MeshTracing {
                service: r.service,
                sampling_percent: pct,
            });
        }
        if let Some(r) = raw.access_log {
            check_name(&mut e, "access_log.service", &r.service);
            let log_name = r.log_name.unwrap_or_else(|| "weft".into());
            if log_name.is_empty() || log_name.chars().any(char::is_control) {
                e.push("access_log.log_name", "must be a non-empty name");
            }
            t.access_log = Some(MeshAccessLog {
                service: r.service,
                log_name,
            });
        }
        frag.telemetry = Some(t);
    }
    for (i, a) in raw.authorization.into_iter().enumerate() {
        let p = format!("authorization[{i}]");
        if let Some(s) = &a.service {
            check_name(&mut e, &format!("{p}.service"), s);
        }
        let name = a.name.clone().unwrap_or_default();
        let raw = weft_config::authz::RawAuthorization {
            policies: vec![weft_config::authz::RawAuthzPolicy {
                name: a.name,
                action: a.action,
                dry_run: a.dry_run,
                rules: a.rules,
            }],
            rbac: Vec::new(),
        };
        let (compiled, errs) = weft_config::authz::validate(&p, &raw, false);
        for f in errs.errors {
            // `authorization[i].policies[0].rules…` → `authorization[i].rules…`
            e.push(f.path.replacen(".policies[0]", "", 1), f.message);
        }
        if let Some(compiled) = compiled {
            frag.authorization.push(MeshAuthz {
                name,
                service: a.service,
                namespace: a.namespace,
                compiled,
            });
        }
    }
    if e.list.is_empty() {
        Ok(frag)
    } else {
        Err(e.list.lines())
    }
}

fn health_check(e: &mut Errs<'_>, p: &str, h: RawHealthCheck) -> Option<HealthCheck> {
    let interval = h
        .interval
        .and_then(|s| dur(e, &format!("{p}.interval"), &s))
        .unwrap_or(Duration::from_secs(5));
    if interval < Duration::from_millis(10) {
        e.push(format!("{p}.interval"), "must be at least 10ms");
    }
    let timeout = h
        .timeout
        .and_then(|s| dur(e, &format!("{p}.timeout"), &s))
        .unwrap_or(Duration::from_secs(1));
    if timeout.is_zero() {
        e.push(format!("{p}.timeout"), "must be more than 0");
    }
    let interval_jitter = h
        .interval_jitter
        .and_then(|s| dur(e, &format!("{p}.interval_jitter"), &s));
    let threshold = |e: &mut Errs<'_>, name: &str, v: Option<u32>, default: u32| {
        let v = v.unwrap_or(default);
        if !(1..=1000).contains(&v) {
            e.push(format!("{p}.{name}"), "must be 1..1000");
        }
        v
    };
    let healthy_threshold = threshold(e, "healthy_threshold", h.healthy_threshold, 1);
    let unhealthy_threshold = threshold(e, "unhealthy_threshold", h.unhealthy_threshold, 3);
    let mut kinds = Vec::new();
    if let Some(x) = h.http {
        let path = x.path.unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            e.push(format!("{p}.http.path"), "must start with '/'");
        }
        let mut expected = Vec::new();
        for (k, s) in x.expected_statuses.into_iter().enumerate() {
            let sp = format!("{p}.http.expected_statuses[{k}]");
            let text = match s {
                RawStatus::Code(c) => c.to_string(),
                RawStatus::Text(t) => t,
            };
            let range = match text.split_once('-') {
                Some((a, b)) => a.trim().parse::<u32>().ok().zip(b.trim().parse::<u32>().ok()),
                None => text.trim().parse::<u32>().ok().map(|c| (c, c)),
            };
            match range {
                Some((a, b)) if (100..600).contains(&a) && (100..600).contains(&b) && a <= b => {
                    expected.push((a, b + 1))
                }
                _ => e.push(
                    &sp,
                    format!("\"{text}\" is not a status (\"204\") or inclusive range (\"200-299\") within 100..599"),
                ),
            }
        }
        if let Some(host) = &x.host {
            if host.is_empty() {
                e.push(format!("{p}.http.host"), "must not be empty");
            }
        }
        kinds.push(CheckKind::Http {
            path,
            host: x.host,
            expected,
        });
    }
    if h.tcp.is_some() {
        kinds.push(CheckKind::Tcp);
    }
    if let Some(g) = h.grpc {
        kinds.push(CheckKind::Grpc {
            service_name: g.service_name.unwrap_or_default(),
        });
    }
    if kinds.len() != 1 {
        e.push(p, "give exactly one of http, tcp, grpc");
    }
    Some(HealthCheck {
        kind: kinds.pop()?,
        interval,
        interval_jitter,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    })
}

fn string_match(e: &mut Errs<'_>, path: &str, m: RawStringMatch) -> StringMatch {
    let mut out = Vec::new();
    if let Some(v) = m.exact {
        out.push(StringMatch::Exact(v));
    }
    if let Some(v) = m.prefix {
        out.push(StringMatch::Prefix(v));
    }
    if let Some(v) = m.regex {
        check_regex(e, path, &v);
        out.push(StringMatch::Regex(v));
    }
    if let Some(v) = m.present {
        out.push(StringMatch::Present(v));
    }
    if out.len() != 1 {
        e.push(path, "give exactly one of exact, prefix, regex, present");
    }
    out.pop().unwrap_or(StringMatch::Present(true))
}

fn check_regex(e: &mut Errs<'_>, path: &str, re: &str) {
    // RE2 (Envoy, gRPC) and Rust's regex share the syntax we allow: no look-around, no back-references.
    if re.is_empty() || re.contains("(?=") || re.contains("(?!") || re.contains("(?<") {
        e.push(path, format!("\"{re}\" is not an RE2 regular expression"));
    }
}

fn dest_ref(e: &mut Errs<'_>, path: &str, service: String, subset: Option<String>, weight: Option<u32>) -> DestRef {
    check_name(e, &format!("{path}.destination"), &service);
    if let Some(s) = &subset {
        check_name(e, &format!("{path}.subset"), s);
    }
    DestRef {
        service,
        subset,
        weight: weight.unwrap_or(0),
    }
}

fn dubbo_rule(e: &mut Errs<'_>, p: &str, d: RawDubboRoute) -> DubboRule {
    let m = d.matches;
    for (f, v) in [("interface", &m.interface), ("method", &m.method)] {
        if v.as_deref() == Some("") {
            e.push(
                format!("{p}.match.{f}"),
                "must not be empty (leave it out to match any)",
            );
        }
    }
    let mut arguments = Vec::new();
    for (k, a) in m.arguments.into_iter().enumerate() {
        if a.index > 255 {
            e.push(
                format!("{p}.match.arguments[{k}].index"),
                format!("{} is out of range [0, 255]", a.index),
            );
        } else if arguments.iter().any(|(i, _)| *i == a.index) {
            e.push(
                format!("{p}.match.arguments[{k}].index"),
                format!("argument {} is matched twice", a.index),
            );
        } else {
            arguments.push((a.index, a.equals));
        }
    }
    arguments.sort();
    if m.attachments.keys().any(|k| k.is_empty()) {
        e.push(format!("{p}.match.attachments"), "an attachment name must not be empty");
    }
    check_name(e, &format!("{p}.route.destination"), &d.route.destination);
    DubboRule {
        interface: m.interface,
        method: m.method,
        arguments,
        attachments: m.attachments,
        service: d.route.destination,
        subset: d.route.subset,
    }
}

fn http_route(e: &mut Errs<'_>, p: &str, h: RawHttpRoute) -> HttpRoute {
    let mut matches = Vec::new();
    for (k, m) in h.matches.into_iter().enumerate() {
        let mp = format!("{p}.match[{k}]");
        let mut paths = Vec::new();
        if let Some(v) = m.prefix {
            if !v.starts_with('/') {
                e.push(format!("{mp}.prefix"), "must start with '/'");
            }
            paths.push(PathMatch::Prefix(v));
        }
        if let Some(v) = m.path {
            if !v.starts_with('/') {
                e.push(format!("{mp}.path"), "must start with '/'");
            }
            paths.push(PathMatch::Exact(v));
        }
        if let Some(v) = m.regex {
            check_regex(e, &format!("{mp}.regex"), &v);
            paths.push(PathMatch::Regex(v));
        }
        if paths.len() > 1 {
            e.push(&mp, "give at most one of prefix, path, regex");
        }
        let mut headers = BTreeMap::new();
        for (name, sm) in m.headers {
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase() || b == b' ') {
                e.push(format!("{mp}.headers.{name}"), "header names must be lower case");
            }
            let v = string_match(e, &format!("{mp}.headers.{name}"), sm);
            headers.insert(name, v);
        }
        let mut query_params = BTreeMap::new();
        for (name, sm) in m.query_params {
            let qp = format!("{mp}.query_params.{name}");
            if name.is_empty() {
                e.push(&qp, "a query parameter name must not be empty");
            }
            let v = string_match(e, &qp, sm);
            if v == StringMatch::Present(false) {
                e.push(&qp, "present: false is not supported for query parameters");
            }
            query_params.insert(name, v);
        }
        matches.push(Match {
            path: paths.pop().unwrap_or(PathMatch::Prefix("/".into())),
            method: m.method.map(|s| s.to_ascii_uppercase()),
            headers,
            query_params,
        });
    }
    if h.route.is_empty() {
        e.push(format!("{p}.route"), "needs at least one destination");
    }
    let many = h.route.len() > 1;
    let mut route = Vec::new();
    for (k, r) in h.route.into_iter().enumerate() {
        let rp = format!("{p}.route[{k}]");
        if many && r.weight.is_none() {
            e.push(format!("{rp}.weight"), "required when a route has several destinations");
        }
        if r.weight == Some(0) && !many {
            e.push(format!("{rp}.weight"), "must be at least 1");
        }
        route.push(dest_ref(e, &rp, r.destination, r.subset, r.weight));
    }
    if many && route.iter().all(|d| d.weight == 0) {
        e.push(format!("{p}.route"), "the weights add up to 0");
    }
    let retries = h.retries.map(|r| {
        const KNOWN: &[&str] = &[
            "5xx",
            "gateway-error",
            "reset",
            "connect-failure",
            "retriable-4xx",
            "refused-stream",
            "retriable-status-codes",
            "retriable-headers",
            "http3-post-connect-failure",
            "envoy-ratelimited",
            "cancelled",
            "deadline-exceeded",
            "internal",
            "resource-exhausted",
            "unavailable",
        ];
        for (k, c) in r.retry_on.iter().enumerate() {
            if !KNOWN.contains(&c.as_str()) {
                e.push(
                    format!("{p}.retries.retry_on[{k}]"),
                    format!("unknown retry condition \"{c}\""),
                );
            }
        }
        if r.attempts > 10 {
            e.push(format!("{p}.retries.attempts"), "at most 10");
        }
        Retries {
            attempts: r.attempts,
            per_try_timeout: r
                .per_try_timeout
                .and_then(|s| dur(e, &format!("{p}.retries.per_try_timeout"), &s)),
            retry_on: r.retry_on,
        }
    });
    let timeout = h.timeout.and_then(|s| dur(e, &format!("{p}.timeout"), &s));
    let fault = h.fault.map(|f| {
        let abort = f.abort.map(|a| {
            let pc = percent(e, &format!("{p}.fault.abort.percent"), a.percent);
            let code = match (a.http_status, a.grpc_status) {
                (Some(s), None) => {
                    if !(200..600).contains(&s) {
                        e.push(format!("{p}.fault.abort.http_status"), format!("{s} is not 200..599"));
                    }
                    AbortCode::Http(s)
                }
                (None, Some(s)) => {
                    if s > 16 {
                        e.push(format!("{p}.fault.abort.grpc_status"), format!("{s} is not 0..16"));
                    }
                    AbortCode::Grpc(s)
                }
                _ => {
                    e.push(
                        format!("{p}.fault.abort"),
                        "give exactly one of http_status, grpc_status",
                    );
                    AbortCode::Http(503)
                }
            };
            (code, pc)
        });
        let delay = f.delay.and_then(|d| {
            let pc = percent(e, &format!("{p}.fault.delay.percent"), d.percent);
            dur(e, &format!("{p}.fault.delay.fixed"), &d.fixed).map(|x| (x, pc))
        });
        if abort.is_none() && delay.is_none() {
            e.push(format!("{p}.fault"), "give abort and/or delay");
        }
        Fault { abort, delay }
    });
    let mirror = h.mirror.map(|m| Mirror {
        dest: dest_ref(e, &format!("{p}.mirror"), m.destination, m.subset, None),
        percent: percent(e, &format!("{p}.mirror.percent"), m.percent.unwrap_or(100.0)),
    });
    let rate_limit = h.rate_limit.and_then(|r| {
        if r.requests == 0 {
            e.push(format!("{p}.rate_limit.requests"), "must be at least 1");
        }
        let per = dur(e, &format!("{p}.rate_limit.per"), &r.per)?;
        if per < Duration::from_millis(50) {
            e.push(
                format!("{p}.rate_limit.per"),
                "must be at least 50ms (Envoy's minimum fill interval)",
            );
        }
        Some(RateLimit {
            requests: r.requests,
            per,
            burst: r.burst.unwrap_or(r.requests).max(r.requests),
        })
    });
    let hash = h.hash.and_then(|x| match (x.header, x.source_ip, x.cookie) {
        (Some(hd), false, None) => Some(HashOn::Header(hd.to_ascii_lowercase())),
        (None, true, None) => Some(HashOn::SourceIp),
        (None, false, Some(c)) => hash_cookie(e, &format!("{p}.hash.cookie"), c),
        _ => {
            e.push(
                format!("{p}.hash"),
                "give exactly one of header, source_ip: true, cookie",
            );
            None
        }
    });
    let high_priority = match h.priority.as_deref().map(RoutePriority::from_text) {
        None => false,
        Some(Ok(priority)) => priority == RoutePriority::High,
        Some(Err(m)) => {
            e.push(format!("{p}.priority"), m);
            false
        }
    };
    let mut rate_limits = Vec::new();
    for (k, d) in h.rate_limits.into_iter().enumerate() {
        let dp = format!("{p}.rate_limits[{k}]");
        if d.actions.is_empty() {
            e.push(format!("{dp}.actions"), "needs at least one action");
        }
        let mut actions = Vec::new();
        for (a, act) in d.actions.into_iter().enumerate() {
            let ap = format!("{dp}.actions[{a}]");
            let mut got = Vec::new();
            if let Some(r) = act.request_headers {
                if r.header_name.is_empty() || r.header_name.bytes().any(|b| b.is_ascii_uppercase() || b == b' ') {
                    e.push(
                        format!("{ap}.request_headers.header_name"),
                        "must be a non-empty lower-case header name",
                    );
                }
                if r.descriptor_key.is_empty() {
                    e.push(format!("{ap}.request_headers.descriptor_key"), "must not be empty");
                }
                got.push(RlAction::RequestHeaders {
                    header_name: r.header_name,
                    descriptor_key: r.descriptor_key,
                });
            }
            if act.remote_address.is_some() {
                got.push(RlAction::RemoteAddress);
            }
            if let Some(g) = act.generic_key {
                if g.descriptor_value.is_empty() {
                    e.push(format!("{ap}.generic_key.descriptor_value"), "must not be empty");
                }
                got.push(RlAction::GenericKey {
                    descriptor_value: g.descriptor_value,
                    descriptor_key: g.descriptor_key.filter(|k| !k.is_empty()),
                });
            }
            if got.len() != 1 {
                e.push(&ap, "give exactly one of request_headers, remote_address, generic_key");
            }
            actions.extend(got.pop());
        }
        rate_limits.push(RlDescriptor { actions });
    }
    let rewrite = h.rewrite.map(|r| {
        if let Some(u) = &r.uri {
            if !u.starts_with('/') {
                e.push(format!("{p}.rewrite.uri"), "must start with '/'");
            }
            if let Some(i) = matches.iter().position(|m| matches!(m.path, PathMatch::Regex(_))) {
                e.push(
                    format!("{p}.rewrite.uri"),
                    format!("cannot rewrite the path of a regex match (match[{i}].regex): it has no prefix to replace"),
                );
            }
        }
        if let Some(a) = &r.authority {
            if a.is_empty() || a.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
                e.push(
                    format!("{p}.rewrite.authority"),
                    format!("\"{a}\" is not a host[:port]"),
                );
            }
        }
        if r.uri.is_none() && r.authority.is_none() {
            e.push(format!("{p}.rewrite"), "give uri, authority or both");
        }
        Rewrite {
            uri: r.uri,
            authority: r.authority,
        }
    });
    let ops = h.headers.unwrap_or_default();
    let request_headers = header_op(e, &format!("{p}.headers.request"), ops.request);
    let response_headers = header_op(e, &format!("{p}.headers.response"), ops.response);
    HttpRoute {
        name: h.name,
        matches,
        route,
        retries,
        timeout,
        fault,
        mirror,
        rate_limit,
        hash,
        high_priority,
        rate_limits,
        rewrite,
        request_headers,
        response_headers,
    }
}

/// Header names are lower case; pseudo-headers and `host` cannot be changed this way (`host`:
/// use `rewrite.authority`).
fn header_op(e: &mut Errs<'_>, p: &str, o: RawHeaderOp) -> HeaderOp {
    let mut check = |what: &str, name: &str| {
        let at = format!("{p}.{what}");
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_uppercase() || !b.is_ascii_graphic() || b == b':')
        {
            e.push(&at, format!("\"{name}\" is not a lower-case header name"));
        } else if name == "host" {
            e.push(&at, "the host header is changed with rewrite.authority");
        }
    };
    for k in o.set.keys() {
        check("set", k);
    }
    for k in o.add.keys() {
        check("add", k);
    }
    for k in &o.remove {
        check("remove", k);
    }
    HeaderOp {
        set: o.set,
        add: o.add,
        remove: o.remove,
    }
}

/// The merged, cross-checked registry: what translation works from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct World {
    pub services: BTreeMap<String, std::sync::Arc<Service>>,
    pub routes: BTreeMap<String, RoutePolicy>,
    pub destinations: BTreeMap<String, DestinationPolicy>,
    pub rate_limit_service: Option<RateLimitService>,
    /// Every mesh authorization policy, in source order.
    pub authorization: Vec<MeshAuthz>,
    pub telemetry: Option<Telemetry>,
    /// Mesh mTLS, when weft control runs the CA (set by the catalog, not by any registry).
    pub mesh_tls: Option<MeshTls>,
}

impl World {
    /// Merges fragments (by source name) and checks the references between them. Returns the world
    /// and the errors per source; a caller decides which sources to reject.
    pub fn build<'a>(
        fragments: impl Iterator<Item = (&'a str, &'a Fragment)> + Clone,
    ) -> (World, BTreeMap<String, Vec<String>>) {
        let mut w = World::default();
        let mut errs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut owner: BTreeMap<(u8, String), String> = BTreeMap::new();
        for (src, f) in fragments.clone() {
            let mut dup = |kind: u8, what: &str, path: String, name: &str| -> bool {
                match owner.get(&(kind, name.to_string())) {
                    Some(other) => {
                        errs.entry(src.to_string()).or_default().push(format!(
                            "{src}: {path}: {what} \"{name}\" is already defined in {other}"
                        ));
                        false
                    }
                    None => {
                        owner.insert((kind, name.to_string()), src.to_string());
                        true
                    }
                }
            };
            for (i, s) in f.services.iter().enumerate() {
                if dup(0, "service", format!("services[{i}].name"), &s.name) {
                    w.services.insert(s.name.clone(), s.clone());
                }
                // Callers' sidecars route a Dubbo call by its interface: one service each.
                if s.protocol == Protocol::Dubbo {
                    for iface in s.dubbo_interfaces() {
                        dup(6, "Dubbo interface", format!("services[{i}].interfaces"), iface);
                    }
                }
            }
            for (i, r) in f.routes.iter().enumerate() {
                if dup(1, "routes for service", format!("routes[{i}].service"), &r.service) {
                    w.routes.insert(r.service.clone(), r.clone());
                }
            }
            for (i, d) in f.destinations.iter().enumerate() {
                if dup(
                    2,
                    "destination policy for service",
                    format!("destinations[{i}].service"),
                    &d.service,
                ) {
                    w.destinations.insert(d.service.clone(), d.clone());
                }
            }
            if let Some(r) = &f.rate_limit_service {
                if dup(3, "block", "rate_limit_service".into(), "rate_limit_service") {
                    w.rate_limit_service = Some(r.clone());
                }
            }
            if let Some(t) = &f.telemetry {
                if dup(3, "block", "tracing/access_log".into(), "telemetry") {
                    w.telemetry = Some(t.clone());
                }
            }
            for (i, a) in f.authorization.iter().enumerate() {
                if dup(5, "authorization policy", format!("authorization[{i}].name"), &a.name) {
                    w.authorization.push(a.clone());
                }
            }
        }
        for (src, f) in fragments {
            let mut e = Errs {
                source: src,
                list: Default::default(),
            };
            let check = |e: &mut Errs<'_>, path: String, d: &DestRef| {
                if !w.services.contains_key(&d.service) {
                    e.push(
                        format!("{path}.destination"),
                        format!("unknown service \"{}\"", d.service),
                    );
                } else if let Some(sub) = &d.subset {
                    let known = w
                        .destinations
                        .get(&d.service)
                        .is_some_and(|dp| dp.subsets.iter().any(|s| &s.name == sub));
                    if !known {
                        e.push(
                            format!("{path}.subset"),
                            format!("unknown subset \"{sub}\" of service \"{}\"", d.service),
                        );
                    }
                }
            };
            for (i, r) in f.routes.iter().enumerate() {
                let target = w.services.get(&r.service);
                if target.is_none() {
                    e.push(
                        format!("routes[{i}].service"),
                        format!("unknown service \"{}\"", r.service),
                    );
                }
                if let Some(s) = target.filter(|s| s.protocol != Protocol::Dubbo && !r.dubbo.is_empty()) {
                    e.push(
                        format!("routes[{i}].dubbo"),
                        format!("service \"{}\" is not a Dubbo service (protocol: dubbo)", s.name),
                    );
                }
                for (j, d) in r.dubbo.iter().enumerate() {
                    let p = format!("routes[{i}].dubbo[{j}]");
                    if let (Some(s), Some(want)) = (target, &d.interface) {
                        if s.protocol == Protocol::Dubbo && !s.dubbo_interfaces().contains(&want.as_str()) {
                            e.push(
                                format!("{p}.match.interface"),
                                format!("\"{want}\" is not an interface of service \"{}\"", s.name),
                            );
                        }
                    }
                    let dest = DestRef {
                        service: d.service.clone(),
                        subset: d.subset.clone(),
                        weight: 1,
                    };
                    check(&mut e, format!("{p}.route"), &dest);
                    if w.services
                        .get(&d.service)
                        .is_some_and(|s| s.protocol != Protocol::Dubbo)
                    {
                        e.push(
                            format!("{p}.route.destination"),
                            format!("service \"{}\" is not a Dubbo service (protocol: dubbo)", d.service),
                        );
                    }
                }
                for (j, h) in r.http.iter().enumerate() {
                    for (k, d) in h.route.iter().enumerate() {
                        check(&mut e, format!("routes[{i}].http[{j}].route[{k}]"), d);
                    }
                    if let Some(m) = &h.mirror {
                        check(&mut e, format!("routes[{i}].http[{j}].mirror"), &m.dest);
                    }
                    if !h.rate_limits.is_empty() && w.rate_limit_service.is_none() {
                        e.push(
                            format!("routes[{i}].http[{j}].rate_limits"),
                            "needs a rate_limit_service (a top-level `rate_limit_service: {service, domain}` in some registry file)",
                        );
                    }
                }
            }
            for (i, d) in f.destinations.iter().enumerate() {
                match w.services.get(&d.service) {
                    None => e.push(
                        format!("destinations[{i}].service"),
                        format!("unknown service \"{}\"", d.service),
                    ),
                    Some(s) => {
                        for (j, h) in d.health_checks.iter().enumerate() {
                            if matches!(h.kind, CheckKind::Grpc { .. }) && s.protocol != Protocol::Grpc {
                                e.push(
                                    format!("destinations[{i}].health_checks[{j}].grpc"),
                                    format!(
                                        "gRPC health checks need an HTTP/2 cluster: service \"{}\" is not protocol grpc",
                                        d.service
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            if let Some(t) = &f.telemetry {
                let refs = [
                    t.tracing
                        .as_ref()
                        .map(|x| ("tracing.service", &x.service, "an OTLP/gRPC trace collector")),
                    t.access_log
                        .as_ref()
                        .map(|x| ("access_log.service", &x.service, "a gRPC access-log service")),
                ];
                for (path, svc, what) in refs.into_iter().flatten() {
                    match w.services.get(svc) {
                        None => e.push(path, format!("unknown service \"{svc}\"")),
                        Some(s) if s.protocol != Protocol::Grpc => {
                            e.push(path, format!("service \"{svc}\" must be protocol grpc (it is {what})"))
                        }
                        Some(_) => {}
                    }
                }
            }
            if let Some(r) = &f.rate_limit_service {
                match w.services.get(&r.service) {
                    None => e.push(
                        "rate_limit_service.service",
                        format!("unknown service \"{}\"", r.service),
                    ),
                    Some(s) if s.protocol != Protocol::Grpc => e.push(
                        "rate_limit_service.service",
                        format!(
                            "service \"{}\" must be protocol grpc (the rate limit service is a gRPC server)",
                            r.service
                        ),
                    ),
                    Some(_) => {}
                }
            }
            if !e.list.is_empty() {
                errs.entry(src.to_string()).or_default().extend(e.list.lines());
            }
        }
        (w, errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_are_reported_and_collected() {
        let y = r#"
services:
  - name: reviews
    endpoints: [{address: 127.0.0.1:1, weight: 0}, {address: nope}]
routes:
  - service: reviews
    http:
      - route: [{destination: reviews, weight: 1}, {destination: reviews}]
        timeout: 5
"#;
        let errs = parse_fragment("reviews.yaml", y).unwrap_err();
        let all = errs.join("\n");
        assert!(all.contains("reviews.yaml: services[0].endpoints[0].weight"), "{all}");
        assert!(all.contains("services[0].endpoints[1].address"), "{all}");
        assert!(all.contains("routes[0].http[0].route[1].weight"), "{all}");
        assert!(all.contains("routes[0].http[0].timeout"), "{all}");
    }

    #[test]
    fn unknown_references_are_errors() {
        let a = parse_fragment(
            "a.yaml",
            "services: [{name: a, endpoints: []}]\nroutes: [{service: a, http: [{route: [{destination: b}]}, {route: [{destination: a, subset: v9}]}]}]\n",
        )
        .unwrap();
        let (_, errs) = World::build([("a.yaml", &a)].into_iter());
        let all = errs["a.yaml"].join("\n");
        assert!(
            all.contains("routes[0].http[0].route[0].destination: unknown service \"b\""),
            "{all}"
        );
        assert!(
            all.contains("routes[0].http[1].route[0].subset: unknown subset \"v9\""),
            "{all}"
        );
    }

    #[test]
    fn dubbo_services_and_their_interfaces() {
        let ok = parse_fragment(
            "d.yaml",
            "services:\n  - {name: greeter, protocol: dubbo, interfaces: [org.example.B, org.example.A, org.example.A]}\n  - {name: org.example.Echo, protocol: dubbo}\n",
        )
        .unwrap();
        assert_eq!(ok.services[0].protocol, Protocol::Dubbo);
        assert_eq!(ok.services[0].dubbo_interfaces(), ["org.example.A", "org.example.B"]);
        assert_eq!(ok.services[1].dubbo_interfaces(), ["org.example.Echo"]);
        let errs = parse_fragment(
            "d.yaml",
            "services:\n  - {name: web, interfaces: [org.example.A]}\n  - {name: g, protocol: dubbo, interfaces: [\"org..A\", \"a-b\"]}\n  - {name: my-svc, protocol: dubbo}\n",
        )
        .unwrap_err()
        .join("\n");
        assert!(
            errs.contains("services[0].interfaces: only a protocol: dubbo service has interfaces"),
            "{errs}"
        );
        assert!(
            errs.contains("services[1].interfaces[0]: \"org..A\" is not a Dubbo interface name"),
            "{errs}"
        );
        assert!(errs.contains("services[1].interfaces[1]"), "{errs}");
        assert!(
            errs.contains("services[2].name: \"my-svc\" is not a Dubbo interface name"),
            "{errs}"
        );
        // Two services cannot provide one interface: callers route by it.
        let a = parse_fragment(
            "a.yaml",
            "services: [{name: a, protocol: dubbo, interfaces: [org.example.X]}]",
        )
        .unwrap();
        let b = parse_fragment("b.yaml", "services: [{name: org.example.X, protocol: dubbo}]").unwrap();
        let (_, errs) = World::build([("a.yaml", &a), ("b.yaml", &b)].into_iter());
        let all = errs["b.yaml"].join("\n");
        assert!(
            all.contains("services[0].interfaces: Dubbo interface \"org.example.X\" is already defined in a.yaml"),
            "{all}"
        );
    }

    #[test]
    fn dubbo_routing_rules_are_checked_and_become_routes_per_interface() {
        let f = parse_fragment(
            "r.yaml",
            r#"services:
  - {name: greeter, protocol: dubbo, interfaces: [org.example.A, org.example.B], endpoints: [{address: "127.0.0.1:1", labels: {v: "2"}}]}
  - {name: web, endpoints: [{address: "127.0.0.1:2"}]}
destinations:
  - service: greeter
    subsets: [{name: v2, labels: {v: "2"}}]
routes:
  - service: greeter
    dubbo:
      - match: {method: echo, arguments: [{index: 1, equals: "7"}, {index: 0, equals: vip}], attachments: {t: x}}
        route: {destination: greeter, subset: v2}
      - match: {interface: org.example.B}
        route: {destination: greeter}
"#,
        )
        .unwrap();
        let (w, errs) = World::build([("r.yaml", &f)].into_iter());
        assert!(errs.is_empty(), "{errs:?}");
        let rules = &w.routes["greeter"].dubbo;
        assert_eq!(rules[0].arguments, [(0, "vip".to_string()), (1, "7".to_string())]);
        assert_eq!(rules[0].subset.as_deref(), Some("v2"));

        let bad = parse_fragment(
            "b.yaml",
            "routes:
  - service: greeter
    dubbo:
      - match: {method: \"\", arguments: [{index: 300, equals: x}, {index: 1, equals: a}, {index: 1, equals: b}]}
        route: {destination: greeter}
",
        )
        .unwrap_err()
        .join("\n");
        assert!(
            bad.contains("routes[0].dubbo[0].match.method: must not be empty"),
            "{bad}"
        );
        assert!(
            bad.contains("routes[0].dubbo[0].match.arguments[0].index: 300 is out of range [0, 255]"),
            "{bad}"
        );
        assert!(
            bad.contains("routes[0].dubbo[0].match.arguments[2].index: argument 1 is matched twice"),
            "{bad}"
        );

        let refs = parse_fragment(
            "c.yaml",
            "routes:
  - service: greeter
    dubbo:
      - match: {interface: org.example.C}
        route: {destination: web}
      - route: {destination: greeter, subset: v9}
  - service: web
    dubbo:
      - route: {destination: greeter}
",
        )
        .unwrap();
        let svc = parse_fragment(
            "s.yaml",
            "services:
  - {name: greeter, protocol: dubbo}
  - {name: web}
",
        )
        .unwrap();
        let (_, errs) = World::build([("s.yaml", &svc), ("c.yaml", &refs)].into_iter());
        let all = errs["c.yaml"].join("\n");
        for want in [
            "routes[0].dubbo[0].match.interface: \"org.example.C\" is not an interface of service \"greeter\"",
            "routes[0].dubbo[0].route.destination: service \"web\" is not a Dubbo service",
            "routes[0].dubbo[1].route.subset: unknown subset \"v9\"",
            "routes[1].dubbo: service \"web\" is not a Dubbo service (protocol: dubbo)",
        ] {
            assert!(all.contains(want), "want {want:?} in\n{all}");
        }
    }

    #[test]
    fn hash_cookies_are_checked() {
        let ok = parse_fragment(
            "h.yaml",
            "routes:\n  - service: web\n    http:\n      - route: [{destination: web}]\n        hash: {cookie: {name: s, ttl: 0s}}\n",
        )
        .unwrap();
        assert_eq!(
            ok.routes[0].http[0].hash,
            Some(HashOn::Cookie {
                name: "s".into(),
                ttl: Some(Duration::ZERO),
                path: None
            })
        );
        let errs = parse_fragment(
            "h.yaml",
            r#"routes:
  - service: web
    http:
      - route: [{destination: web}]
        hash: {cookie: {name: "a b", ttl: soon}}
      - route: [{destination: web}]
        hash: {cookie: {name: s, path: /}}
      - route: [{destination: web}]
        hash: {cookie: {name: s, ttl: 1h, path: "/a;b"}}
      - route: [{destination: web}]
        hash: {cookie: {name: s}, header: x-user}
"#,
        )
        .unwrap_err()
        .join("\n");
        for want in [
            "routes[0].http[0].hash.cookie.name: \"a b\" is not a valid cookie name",
            "routes[0].http[0].hash.cookie.ttl: ",
            "routes[0].http[1].hash.cookie.path: has no effect without ttl",
            "routes[0].http[2].hash.cookie.path: must be non-empty printable ASCII without ';'",
            "routes[0].http[3].hash: give exactly one of header, source_ip: true, cookie",
        ] {
            assert!(errs.contains(want), "want {want:?} in\n{errs}");
        }
    }

    #[test]
    fn rewrite_and_header_changes_are_checked() {
        let errs = parse_fragment(
            "h.yaml",
            r#"routes:
  - service: web
    http:
      - match: [{regex: "^/a", query_params: {gone: {present: false}, "": {exact: x}}}]
        route: [{destination: web}]
        rewrite: {uri: "x", authority: "a b"}
        headers:
          request: {set: {X-Up: "1", host: h}, remove: [":path"]}
      - route: [{destination: web}]
        rewrite: {}
"#,
        )
        .unwrap_err()
        .join("\n");
        for want in [
            "routes[0].http[0].rewrite.uri: must start with '/'",
            "routes[0].http[0].rewrite.uri: cannot rewrite the path of a regex match (match[0].regex)",
            "routes[0].http[0].rewrite.authority: \"a b\" is not a host[:port]",
            "routes[0].http[0].headers.request.set: \"X-Up\" is not a lower-case header name",
            "routes[0].http[0].headers.request.set: the host header is changed with rewrite.authority",
            "routes[0].http[0].headers.request.remove: \":path\" is not a lower-case header name",
            "routes[0].http[1].rewrite: give uri, authority or both",
            "routes[0].http[0].match[0].query_params.gone: present: false is not supported for query parameters",
            "routes[0].http[0].match[0].query_params.: a query parameter name must not be empty",
        ] {
            assert!(errs.contains(want), "want {want:?} in\n{errs}");
        }
    }
}
