//! Translation of the registry model into Envoy v3 resources, per the contract in
//! `docs/xds-contract.md`.
//!
//! The world is split in two parts so that a thousand proxies do not cost a thousand translations:
//! - [`Snapshot`]: everything that is the same for every proxy (service clusters and subset clusters,
//!   their ClusterLoadAssignments, the `outbound` route table, API listeners for proxyless clients),
//!   built once per registry version, encoded once, shared behind `Arc`s. Services whose inputs did
//!   not change reuse the previous snapshot's encoded resources, so an endpoint change re-encodes one
//!   service, not a hundred thousand endpoints.
//! - [`NodeResources`]: the few resources that depend on a proxy's own identity (its listeners, its
//!   inbound cluster and route table), built once when the proxy connects.

use crate::model::{self, AbortCode, HashOn, Health, LbPolicy, PathMatch, Protocol, StringMatch, World};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_xds_api::pb::envoy::config::cluster::v3 as cl;
use weft_xds_api::pb::envoy::config::core::v3 as core;
use weft_xds_api::pb::envoy::config::endpoint::v3 as ep;
use weft_xds_api::pb::envoy::config::listener::v3 as ls;
use weft_xds_api::pb::envoy::config::route::v3 as rt;
use weft_xds_api::pb::envoy::extensions::filters::http::fault::v3 as fault;
use weft_xds_api::pb::envoy::extensions::filters::http::local_ratelimit::v3 as lrl;
use weft_xds_api::pb::envoy::extensions::filters::http::ratelimit::v3 as grl;
use weft_xds_api::pb::envoy::extensions::filters::http::router::v3 as router;
use weft_xds_api::pb::envoy::extensions::filters::network::dubbo_proxy::v3 as dubbo;
use weft_xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use weft_xds_api::pb::envoy::extensions::upstreams::http::v3 as uph;
use weft_xds_api::pb::envoy::r#type::matcher::v3 as matcher;
use weft_xds_api::pb::envoy::r#type::v3 as typ;
use weft_xds_api::pb::google::protobuf::{Any, Duration as PbDuration, Struct, UInt32Value, Value};
use weft_xds_api::prost::Message;
use weft_xds_api::type_url;

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const RATELIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// Global rate limiting (an Envoy RLS server), on sidecar outbound listeners only.
pub const GLOBAL_RATELIMIT_FILTER: &str = "envoy.filters.http.ratelimit";
pub const GLOBAL_RATELIMIT_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit";
pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
pub const OUTBOUND: &str = "outbound";
/// The sidecar's outbound Dubbo listener (node metadata `weft.outbound_dubbo`).
pub const OUTBOUND_DUBBO: &str = "outbound_dubbo";
/// Envoy's Dubbo proxy filter.
pub const DUBBO_PROXY_FILTER: &str = "envoy.filters.network.dubbo_proxy";

/// The four resource types weft control serves, in push order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Cluster = 0,
    Endpoint = 1,
    Listener = 2,
    Route = 3,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route];

    pub fn from_url(url: &str) -> Option<Kind> {
        match url {
            type_url::CLUSTER => Some(Kind::Cluster),
            type_url::ENDPOINT => Some(Kind::Endpoint),
            type_url::LISTENER => Some(Kind::Listener),
            type_url::ROUTE => Some(Kind::Route),
            _ => None,
        }
    }

    pub fn url(self) -> &'static str {
        match self {
            Kind::Cluster => type_url::CLUSTER,
            Kind::Endpoint => type_url::ENDPOINT,
            Kind::Listener => type_url::LISTENER,
            Kind::Route => type_url::ROUTE,
        }
    }

    pub fn short(self) -> &'static str {
        type_url::short(self.url())
    }

    /// LDS and CDS are "full state" types: a SotW response carries all of them and an empty
    /// subscription is a wildcard.
    pub fn is_full_state(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }
}

/// One encoded resource. Immutable and shared by every proxy that receives it.
#[derive(Debug)]
pub struct Res {
    pub name: Arc<str>,
    /// `content_version` of the encoding, as a number (hex in the wire form).
    pub version: u64,
    pub any: Any,
}

impl Res {
    pub fn new<M: Message>(kind: Kind, name: &str, msg: &M) -> Arc<Res> {
        // Canonical: maps sorted, so the same content has the same version in every process (a
        // restarted control plane must not resend what proxies already hold).
        let any = weft_xds_api::pack_canonical(kind.url(), msg);
        let version = weft_xds_api::content_hash(&any.value);
        Arc::new(Res {
            name: name.into(),
            version,
            any,
        })
    }

    pub fn version_string(&self) -> String {
        format!("{:016x}", self.version)
    }
}

pub type ResMap = BTreeMap<Arc<str>, Arc<Res>>;

/// What translating one service produced (its cluster, subset clusters, and their assignments).
#[derive(Debug, Default)]
struct ServiceOut {
    clusters: Vec<Arc<Res>>,
    endpoints: Vec<Arc<Res>>,
    /// The same clusters as proxyless gRPC clients get them, where that differs (see
    /// [`grpc_cluster`]).
    grpc_clusters: Vec<Arc<Res>>,
}

/// The shared part of the xDS world for one registry version.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub built_at: Instant,
    pub world: Arc<World>,
    pub maps: [ResMap; 4],
    /// Hash over (name, version) of all resources of a type: Delta's system_version_info.
    pub type_hash: [u64; 4],
    per_service: HashMap<String, Arc<ServiceOut>>,
    /// API listeners (`T`) are only sent to nodes that ask for them by name.
    pub api_listeners: ResMap,
    /// Clusters as proxyless gRPC clients get them where they differ from `maps` (a load balancing
    /// policy gRPC lacks: see [`grpc_cluster`]).
    pub grpc_clusters: ResMap,
    /// The generation this snapshot was diffed against, and the names per type that were added,
    /// changed or removed since. A stream that is current with `prev_generation` only looks at
    /// these names: with 1,000 proxies an endpoint change then costs a few lookups per proxy
    /// instead of a full diff of every subscribed resource.
    pub prev_generation: u64,
    pub changed: [Vec<Arc<str>>; 4],
    /// `outbound` route tables cut to one [`Scope`] each, built on first use and shared by every
    /// proxy with that scope. Carried over to the next snapshot when the route inputs are the same.
    scoped_outbound: std::sync::Mutex<HashMap<BTreeSet<String>, Arc<Res>>>,
    /// Every Dubbo interface of the `protocol: dubbo` services and the service providing it,
    /// sorted: the routes of sidecars' outbound Dubbo listeners.
    pub dubbo_routes: Arc<Vec<DubboRoute>>,
}

/// A Dubbo interface, the service (cluster) that provides it, and the routing rules of that
/// service that apply to it (tried in order before the service's own cluster).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DubboRoute {
    pub interface: String,
    pub service: String,
    pub rules: Vec<DubboRuleRoute>,
}

/// One `routes[].dubbo[]` rule, for one interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DubboRuleRoute {
    pub method: Option<String>,
    pub arguments: Vec<(u32, String)>,
    pub attachments: BTreeMap<String, String>,
    /// `T` or `T|subset`.
    pub cluster: String,
}

/// The Dubbo routes of `world` (see [`Snapshot::dubbo_routes`]).
fn dubbo_routes(world: &World) -> Vec<DubboRoute> {
    let mut v: Vec<DubboRoute> = world
        .services
        .values()
        .filter(|s| s.protocol == Protocol::Dubbo)
        .flat_map(|s| {
            let policy = world.routes.get(&s.name);
            s.dubbo_interfaces().into_iter().map(move |i| DubboRoute {
                interface: i.to_string(),
                service: s.name.clone(),
                rules: policy
                    .iter()
                    .flat_map(|p| p.dubbo.iter())
                    .filter(|r| r.interface.as_deref().is_none_or(|want| want == i))
                    .map(|r| DubboRuleRoute {
                        method: r.method.clone(),
                        arguments: r.arguments.clone(),
                        attachments: r.attachments.clone(),
                        cluster: model::cluster_name(&r.service, r.subset.as_deref()),
                    })
                    .collect(),
            })
        })
        .collect();
    v.sort();
    v
}

/// The services one proxy is sent when its configuration is scoped (declared dependencies plus
/// what it asked for on demand). Resources of other services are left out of its wildcard sets
/// and its `outbound` route table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub services: BTreeSet<String>,
}

impl Scope {
    /// Whether a shared cluster or ClusterLoadAssignment (`T` or `T|subset`) belongs to a service in
    /// the scope.
    pub fn covers(&self, resource_name: &str) -> bool {
        self.services.contains(service_of(resource_name))
    }
}

/// The service a shared cluster or endpoint resource belongs to: `T` for `T` and `T|subset`.
pub fn service_of(resource_name: &str) -> &str {
    resource_name.split('|').next().unwrap_or(resource_name)
}

/// Bound on the cached scoped route tables of one snapshot (each distinct dependency set is one).
const SCOPED_CACHE_MAX: usize = 16_384;

impl Snapshot {
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Arc<Res>> {
        if kind == Kind::Listener {
            return self.api_listeners.get(name);
        }
        self.maps[kind as usize].get(name)
    }

    pub fn total(&self) -> usize {
        self.maps.iter().map(|m| m.len()).sum::<usize>() + self.api_listeners.len()
    }

    /// The `outbound` route table with only the virtual hosts of `scope`'s services (those that
    /// exist), encoded once per distinct scope.
    pub fn scoped_outbound(&self, scope: &Scope) -> Arc<Res> {
        let mut cache = self.scoped_outbound.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = cache.get(&scope.services) {
            return r.clone();
        }
        let vhosts = scope
            .services
            .iter()
            .filter_map(|n| self.world.services.get(n))
            .map(|s| virtual_host(&self.world, s, true))
            .collect();
        let rc = rt::RouteConfiguration {
            name: OUTBOUND.into(),
            virtual_hosts: vhosts,
            ..Default::default()
        };
        let r = Res::new(Kind::Route, OUTBOUND, &rc);
        if cache.len() >= SCOPED_CACHE_MAX {
            cache.clear();
        }
        cache.insert(scope.services.clone(), r.clone());
        r
    }
}

pub use weft_xds_api::{fnv, FNV_INIT};

/// Builds the snapshot for `world`, reusing from `prev` every service whose inputs are unchanged.
pub fn build_snapshot(generation: u64, world: Arc<World>, prev: Option<&Snapshot>) -> Snapshot {
    let mut per_service = HashMap::with_capacity(world.services.len());
    let mut maps: [ResMap; 4] = Default::default();
    let mut grpc_clusters = ResMap::new();
    for (name, svc) in &world.services {
        let dest = world.destinations.get(name);
        let reuse = prev.and_then(|p| {
            let same_svc = p
                .world
                .services
                .get(name)
                .is_some_and(|old| Arc::ptr_eq(old, svc) || **old == **svc);
            let same = same_svc && p.world.destinations.get(name) == dest && p.world.mesh_tls == world.mesh_tls;
            if same {
                p.per_service.get(name).cloned()
            } else {
                None
            }
        });
        let out = reuse.unwrap_or_else(|| Arc::new(translate_service(svc, dest, world.mesh_tls.as_ref())));
        for c in &out.clusters {
            maps[Kind::Cluster as usize].insert(c.name.clone(), c.clone());
        }
        for e in &out.endpoints {
            maps[Kind::Endpoint as usize].insert(e.name.clone(), e.clone());
        }
        for c in &out.grpc_clusters {
            grpc_clusters.insert(c.name.clone(), c.clone());
        }
        per_service.insert(name.clone(), out);
    }
    // The outbound table spans every service; rebuilt only when services' names/ports or routes change.
    // Inputs of the route tables: routes, service names and ports, and subset names (a route to a
    // subset that no longer exists is dropped).
    let subsets = |w: &World| -> Vec<(String, Vec<String>)> {
        w.destinations
            .values()
            .map(|d| (d.service.clone(), d.subsets.iter().map(|s| s.name.clone()).collect()))
            .collect()
    };
    let route_inputs_same = prev.is_some_and(|p| {
        p.world.routes == world.routes
            && subsets(&p.world) == subsets(&world)
            && active_rls(&p.world) == active_rls(&world)
            && p.world.services.len() == world.services.len()
            && p.world
                .services
                .iter()
                .zip(world.services.iter())
                .all(|((a, sa), (b, sb))| a == b && sa.port == sb.port)
    });
    let scoped_outbound = match prev {
        Some(p) if route_inputs_same => p.scoped_outbound.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        _ => HashMap::new(),
    };
    let (outbound, api_listeners) = match prev {
        Some(p) if route_inputs_same => (
            p.maps[Kind::Route as usize].get(OUTBOUND).cloned(),
            p.api_listeners.clone(),
        ),
        _ => {
            let vhosts: Vec<rt::VirtualHost> = world.services.values().map(|s| virtual_host(&world, s, true)).collect();
            let rc = rt::RouteConfiguration {
                name: OUTBOUND.into(),
                virtual_hosts: vhosts,
                ..Default::default()
            };
            let mut api = ResMap::new();
            for s in world.services.values() {
                // gRPC names the listener after the target's host: `xds:///T` asks for `T`,
                // `xds:///T:port` for `T:port`.
                let mut names = vec![s.name.clone()];
                names.extend(s.port.map(|p| format!("{}:{p}", s.name)));
                for name in names {
                    let l = api_listener(&world, s, &name);
                    api.insert(name.as_str().into(), Res::new(Kind::Listener, &name, &l));
                }
            }
            (Some(Res::new(Kind::Route, OUTBOUND, &rc)), api)
        }
    };
    if let Some(o) = outbound {
        maps[Kind::Route as usize].insert(o.name.clone(), o);
    }
    let mut type_hash = [FNV_INIT; 4];
    for (i, m) in maps.iter().enumerate() {
        for r in m.values() {
            fnv(&mut type_hash[i], r.name.as_bytes());
            fnv(&mut type_hash[i], &r.version.to_le_bytes());
        }
    }
    for r in api_listeners.values() {
        fnv(&mut type_hash[Kind::Listener as usize], &r.version.to_le_bytes());
    }
    let mut changed: [Vec<Arc<str>>; 4] = Default::default();
    if let Some(p) = prev {
        for kind in Kind::ALL {
            let (new, old) = if kind == Kind::Listener {
                (&api_listeners, &p.api_listeners)
            } else {
                (&maps[kind as usize], &p.maps[kind as usize])
            };
            let out = &mut changed[kind as usize];
            for (n, r) in new {
                if old.get(n).is_none_or(|o| o.version != r.version) {
                    out.push(n.clone());
                }
            }
            for n in old.keys() {
                if !new.contains_key(n) {
                    out.push(n.clone());
                }
            }
        }
    }
    let dubbo_routes = {
        let d = dubbo_routes(&world);
        match prev {
            Some(p) if *p.dubbo_routes == d => p.dubbo_routes.clone(),
            _ => Arc::new(d),
        }
    };
    Snapshot {
        generation,
        prev_generation: prev.map_or(0, |p| p.generation),
        changed,
        built_at: Instant::now(),
        world,
        maps,
        type_hash,
        per_service,
        api_listeners,
        grpc_clusters,
        scoped_outbound: std::sync::Mutex::new(scoped_outbound),
        dubbo_routes,
    }
}

fn pb_dur(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

pub fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

pub fn socket_address(addr: std::net::SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

fn http2_options() -> HashMap<String, Any> {
    let opts = uph::HttpProtocolOptions {
        upstream_protocol_options: Some(uph::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            uph::http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    uph::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Default::default(),
                    ),
                ),
            },
        )),
        ..Default::default()
    };
    HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        weft_xds_api::pack(type_url::HTTP_PROTOCOL_OPTIONS, &opts),
    )])
}

fn eds_cluster(name: &str, svc: &model::Service, dest: Option<&model::DestinationPolicy>) -> cl::Cluster {
    let mut c = cl::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(
            cl::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cl::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.into(),
        }),
        connect_timeout: Some(pb_dur(
            dest.and_then(|d| d.connect_timeout).unwrap_or(Duration::from_secs(1)),
        )),
        metadata: Some(istio_service_metadata(&svc.name)),
        ..Default::default()
    };
    if svc.protocol == Protocol::Grpc {
        c.typed_extension_protocol_options = http2_options();
    }
    if let Some(d) = dest {
        c.lb_policy = match d.lb {
            LbPolicy::RoundRobin => cl::cluster::LbPolicy::RoundRobin,
            LbPolicy::LeastRequest => cl::cluster::LbPolicy::LeastRequest,
            LbPolicy::Random => cl::cluster::LbPolicy::Random,
            LbPolicy::RingHash => cl::cluster::LbPolicy::RingHash,
            LbPolicy::Maglev => cl::cluster::LbPolicy::Maglev,
        } as i32;
        if let Some(l) = &d.limits {
            let thresholds = |l: &model::Limits, priority: core::RoutingPriority| cl::circuit_breakers::Thresholds {
                priority: priority as i32,
                max_connections: l.max_connections.and_then(u32v),
                max_pending_requests: l.max_pending_requests.and_then(u32v),
                max_requests: l.max_requests.and_then(u32v),
                max_retries: l.max_retries.and_then(u32v),
                ..Default::default()
            };
            let mut list = vec![thresholds(l, core::RoutingPriority::Default)];
            if let Some(h) = &l.high_priority {
                list.push(thresholds(h, core::RoutingPriority::High));
            }
            c.circuit_breakers = Some(cl::CircuitBreakers {
                thresholds: list,
                ..Default::default()
            });
        }
        c.health_checks = d.health_checks.iter().map(health_check).collect();
        if d.panic_threshold.is_some() || d.locality_lb.is_some() {
            use cl::cluster::common_lb_config::{LocalityConfigSpecifier, LocalityWeightedLbConfig, ZoneAwareLbConfig};
            c.common_lb_config = Some(cl::cluster::CommonLbConfig {
                healthy_panic_threshold: d.panic_threshold.map(|value| typ::Percent { value }),
                locality_config_specifier: d.locality_lb.map(|l| match l {
                    model::LocalityLb::ZoneAware => {
                        LocalityConfigSpecifier::ZoneAwareLbConfig(ZoneAwareLbConfig::default())
                    }
                    model::LocalityLb::Weighted => {
                        LocalityConfigSpecifier::LocalityWeightedLbConfig(LocalityWeightedLbConfig {})
                    }
                }),
                ..Default::default()
            });
        }
        if let Some(o) = &d.outlier {
            c.outlier_detection = Some(cl::OutlierDetection {
                consecutive_5xx: o.consecutive_5xx.and_then(u32v),
                interval: o.interval.map(pb_dur),
                base_ejection_time: o.base_ejection_time.map(pb_dur),
                max_ejection_percent: o.max_ejection_percent.and_then(u32v),
                ..Default::default()
            });
        }
    }
    c
}

fn health_check(h: &model::HealthCheck) -> core::HealthCheck {
    use core::health_check::{GrpcHealthCheck, HealthChecker, HttpHealthCheck, TcpHealthCheck};
    let checker = match &h.kind {
        model::CheckKind::Http { path, host, expected } => HealthChecker::HttpHealthCheck(HttpHealthCheck {
            path: path.clone(),
            host: host.clone().unwrap_or_default(),
            expected_statuses: expected
                .iter()
                .map(|(start, end)| typ::Int64Range {
                    start: i64::from(*start),
                    end: i64::from(*end),
                })
                .collect(),
            ..Default::default()
        }),
        model::CheckKind::Tcp => HealthChecker::TcpHealthCheck(TcpHealthCheck::default()),
        model::CheckKind::Grpc { service_name } => HealthChecker::GrpcHealthCheck(GrpcHealthCheck {
            service_name: service_name.clone(),
            ..Default::default()
        }),
    };
    core::HealthCheck {
        timeout: Some(pb_dur(h.timeout)),
        interval: Some(pb_dur(h.interval)),
        interval_jitter: h.interval_jitter.map(pb_dur),
        healthy_threshold: u32v(h.healthy_threshold),
        unhealthy_threshold: u32v(h.unhealthy_threshold),
        health_checker: Some(checker),
        ..Default::default()
    }
}

fn health(h: Health) -> i32 {
    match h {
        Health::Healthy => core::HealthStatus::Healthy as i32,
        Health::Unhealthy => core::HealthStatus::Unhealthy as i32,
        Health::Draining => core::HealthStatus::Draining as i32,
    }
}

/// Groups endpoints by (priority, locality). Locality weights are the sum of their endpoints' weights,
/// so that locality-weighted balancing (gRPC always does it) keeps the per-endpoint proportions.
pub fn load_assignment<'a>(name: &str, eps: impl Iterator<Item = &'a model::Endpoint>) -> ep::ClusterLoadAssignment {
    load_assignment_marked(name, eps, false)
}

/// [`load_assignment`]; `tls_mode`: endpoints with a sidecar carry Istio's
/// `envoy.transport_socket_match: {tlsMode: istio}` (see `mesh_tls::per_endpoint`).
pub fn load_assignment_marked<'a>(
    name: &str,
    eps: impl Iterator<Item = &'a model::Endpoint>,
    tls_mode: bool,
) -> ep::ClusterLoadAssignment {
    let mut groups: BTreeMap<(u32, &model::Locality), Vec<&model::Endpoint>> = BTreeMap::new();
    for e in eps {
        groups.entry((e.priority, &e.locality)).or_default().push(e);
    }
    // Envoy and gRPC require priorities to run 0..N without gaps; a subset (or a registry that only
    // uses priorities 1 and 3) may not, so they are renumbered keeping their order.
    let mut distinct: Vec<u32> = groups.keys().map(|(p, _)| *p).collect();
    distinct.dedup();
    let endpoints = groups
        .into_iter()
        .map(|((priority, loc), list)| {
            let priority = distinct.binary_search(&priority).unwrap_or(0) as u32;
            let total: u64 = list.iter().map(|e| u64::from(e.weight)).sum();
            ep::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    region: loc.region.clone(),
                    zone: loc.zone.clone(),
                    sub_zone: loc.sub_zone.clone(),
                }),
                load_balancing_weight: u32v(total.clamp(1, u64::from(u32::MAX)) as u32),
                priority,
                lb_endpoints: list
                    .into_iter()
                    .map(|e| ep::LbEndpoint {
                        health_status: health(e.health),
                        load_balancing_weight: u32v(e.weight.max(1)),
                        metadata: endpoint_metadata(&e.labels, tls_mode && e.sidecar),
                        host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
                            address: Some(socket_address(e.address)),
                            ..Default::default()
                        })),
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    ep::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints,
        ..Default::default()
    }
}

/// An endpoint's metadata: its labels (`envoy.lb`), and `tlsMode: istio` when `tls_mode`.
fn endpoint_metadata(labels: &BTreeMap<String, String>, tls_mode: bool) -> Option<core::Metadata> {
    let mut m = labels_metadata(labels);
    if tls_mode {
        let fields = [(
            crate::mesh_tls::TLS_MODE_KEY.to_string(),
            Value {
                kind: Some(weft_xds_api::pb::google::protobuf::value::Kind::StringValue(
                    crate::mesh_tls::TLS_MODE_ISTIO.into(),
                )),
            },
        )]
        .into_iter()
        .collect();
        m.get_or_insert_with(Default::default)
            .filter_metadata
            .insert(crate::mesh_tls::TRANSPORT_SOCKET_MATCH.to_string(), Struct { fields });
    }
    m
}

fn labels_metadata(labels: &BTreeMap<String, String>) -> Option<core::Metadata> {
    if labels.is_empty() {
        return None;
    }
    let fields = labels
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Value {
                    kind: Some(weft_xds_api::pb::google::protobuf::value::Kind::StringValue(v.clone())),
                },
            )
        })
        .collect();
    Some(core::Metadata {
        filter_metadata: HashMap::from([("envoy.lb".to_string(), Struct { fields })]),
        ..Default::default()
    })
}

/// The service a cluster reaches, in Istio's cluster metadata (`filter_metadata.istio.services`:
/// `host` and `name`; the registry has no namespaces): a sidecar's Istio-standard metrics then say
/// `destination_service="reviews"` for every cluster of the service (its subsets `reviews|v1`, the
/// inbound `inbound|reviews`), on the caller's side and the called side alike, as Istio's do.
fn istio_service_metadata(service: &str) -> core::Metadata {
    use weft_xds_api::pb::google::protobuf::{value::Kind, ListValue};
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let entry = Struct {
        fields: [("host".to_string(), s(service)), ("name".to_string(), s(service))].into(),
    };
    let services = Value {
        kind: Some(Kind::ListValue(ListValue {
            values: vec![Value {
                kind: Some(Kind::StructValue(entry)),
            }],
        })),
    };
    core::Metadata {
        filter_metadata: HashMap::from([(
            "istio".to_string(),
            Struct {
                fields: [("services".to_string(), services)].into(),
            },
        )]),
        ..Default::default()
    }
}

/// Typed load balancing policies (`Cluster.load_balancing_policy` entries).
fn lb_policy_entry<M: Message>(name: &str, type_url: &str, msg: &M) -> cl::load_balancing_policy::Policy {
    cl::load_balancing_policy::Policy {
        typed_extension_config: Some(core::TypedExtensionConfig {
            name: name.into(),
            typed_config: Some(weft_xds_api::pack(type_url, msg)),
        }),
    }
}

/// The cluster as proxyless gRPC clients get it, when its `lb_policy` is one they do not
/// implement: grpcio 1.85 and grpc-js-xds 1.14 know `ROUND_ROBIN` and `RING_HASH` as `lb_policy`
/// values and NACK `LEAST_REQUEST`, `RANDOM` and `MAGLEV`; as typed `load_balancing_policy` entries
/// they know round_robin, ring_hash (XX_HASH), wrr_locality (grpcio; grpc-js-xds registers it under
/// a malformed type URL and so skips it), pick_first and client-side weighted round robin, and none
/// of least_request, random or maglev. A gRPC client uses the FIRST entry of the list it supports
/// (gRFC A52), so the list starts with the policy asked for (for clients that have it, e.g.
/// grpc-java and grpc-go have least_request) and falls back to the nearest one they all have:
/// round robin (weighted by locality where supported) for least_request and random, ring hash for
/// maglev (both consistent hashing over the route's hash policy). `None`: the cluster is fine as is.
pub fn grpc_cluster(base: &cl::Cluster, lb: LbPolicy) -> Option<cl::Cluster> {
    use weft_xds_api::pb::envoy::extensions::load_balancing_policies as lbp;
    const P: &str = "type.googleapis.com/envoy.extensions.load_balancing_policies.";
    let round_robin = || {
        lb_policy_entry(
            "envoy.load_balancing_policies.round_robin",
            &format!("{P}round_robin.v3.RoundRobin"),
            &lbp::round_robin::v3::RoundRobin::default(),
        )
    };
    let wrr_locality = || {
        lb_policy_entry(
            "envoy.load_balancing_policies.wrr_locality",
            &format!("{P}wrr_locality.v3.WrrLocality"),
            &lbp::wrr_locality::v3::WrrLocality {
                endpoint_picking_policy: Some(cl::LoadBalancingPolicy {
                    policies: vec![round_robin()],
                }),
            },
        )
    };
    let policies = match lb {
        LbPolicy::RoundRobin | LbPolicy::RingHash => return None,
        LbPolicy::LeastRequest => vec![
            lb_policy_entry(
                "envoy.load_balancing_policies.least_request",
                &format!("{P}least_request.v3.LeastRequest"),
                &lbp::least_request::v3::LeastRequest::default(),
            ),
            wrr_locality(),
            round_robin(),
        ],
        LbPolicy::Random => vec![
            lb_policy_entry(
                "envoy.load_balancing_policies.random",
                &format!("{P}random.v3.Random"),
                &lbp::random::v3::Random::default(),
            ),
            wrr_locality(),
            round_robin(),
        ],
        LbPolicy::Maglev => vec![
            lb_policy_entry(
                "envoy.load_balancing_policies.maglev",
                &format!("{P}maglev.v3.Maglev"),
                &lbp::maglev::v3::Maglev::default(),
            ),
            lb_policy_entry(
                "envoy.load_balancing_policies.ring_hash",
                &format!("{P}ring_hash.v3.RingHash"),
                &lbp::ring_hash::v3::RingHash {
                    hash_function: lbp::ring_hash::v3::ring_hash::HashFunction::XxHash as i32,
                    ..Default::default()
                },
            ),
        ],
    };
    let mut c = base.clone();
    // gRPC reads load_balancing_policy first; lb_policy is left at a value it knows anyway.
    c.lb_policy = cl::cluster::LbPolicy::RoundRobin as i32;
    c.load_balancing_policy = Some(cl::LoadBalancingPolicy { policies });
    Some(c)
}

fn translate_service(
    svc: &model::Service,
    dest: Option<&model::DestinationPolicy>,
    mesh: Option<&model::MeshTls>,
) -> ServiceOut {
    let mut out = ServiceOut::default();
    let mtls = mesh.is_some_and(|m| m.mode_of(svc) != model::MtlsMode::Disable);
    let suites = mesh.map_or(model::MtlsSuites::Standard, |m| m.suites);
    // Endpoints with and without sidecars: mTLS chosen per endpoint, by its tlsMode metadata;
    // except for a service explicitly STRICT, whose callers use mTLS (and secure naming) to every
    // endpoint: a workload without a sidecar that joins it is refused, not sent plaintext.
    let per_endpoint = mtls && crate::mesh_tls::mixed(svc) && svc.mtls != Some(model::MtlsMode::Strict);
    // Sidecar endpoints of a mesh service are always marked (as Istio does), so the endpoints a
    // caller holds already say which get mTLS when a cluster switches to per-endpoint choice:
    // a cluster update applied before its endpoints' never sends plaintext to a sidecar.
    let mark = mtls;
    let push_cluster = |out: &mut ServiceOut, name: &str, subset: Option<&str>| {
        let mut c = eds_cluster(name, svc, dest);
        if mtls && per_endpoint {
            c.transport_socket_matches = crate::mesh_tls::per_endpoint(svc, subset, suites);
        } else if mtls {
            c.transport_socket = Some(crate::mesh_tls::upstream(svc, subset, suites));
        }
        let grpc = dest.and_then(|d| grpc_cluster(&c, d.lb));
        if mtls {
            // Proxyless gRPC clients take certificates from certificate providers, not from SDS,
            // and would refuse the cluster: theirs stays plaintext (they reach PERMISSIVE
            // services only).
            let mut g = grpc.unwrap_or_else(|| c.clone());
            g.transport_socket = None;
            g.transport_socket_matches.clear();
            out.grpc_clusters.push(Res::new(Kind::Cluster, name, &g));
        } else if let Some(g) = grpc {
            out.grpc_clusters.push(Res::new(Kind::Cluster, name, &g));
        }
        out.clusters.push(Res::new(Kind::Cluster, name, &c));
    };
    push_cluster(&mut out, &svc.name, None);
    out.endpoints.push(Res::new(
        Kind::Endpoint,
        &svc.name,
        &load_assignment_marked(&svc.name, svc.endpoints.iter(), mark),
    ));
    for sub in dest.map(|d| d.subsets.as_slice()).unwrap_or_default() {
        let name = model::cluster_name(&svc.name, Some(&sub.name));
        push_cluster(&mut out, &name, Some(&sub.name));
        let matching = svc
            .endpoints
            .iter()
            .filter(|e| sub.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)));
        out.endpoints.push(Res::new(
            Kind::Endpoint,
            &name,
            &load_assignment_marked(&name, matching, mark),
        ));
    }
    out
}

fn fraction(percent: f64) -> typ::FractionalPercent {
    typ::FractionalPercent {
        numerator: (percent * 10_000.0).round().clamp(0.0, 1_000_000.0) as u32,
        denominator: typ::fractional_percent::DenominatorType::Million as i32,
    }
}

fn runtime_fraction(percent: f64, key: &str) -> core::RuntimeFractionalPercent {
    core::RuntimeFractionalPercent {
        default_value: Some(fraction(percent)),
        runtime_key: key.into(),
    }
}

fn string_matcher(m: &StringMatch) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern;
    let p = match m {
        StringMatch::Exact(v) => MatchPattern::Exact(v.clone()),
        StringMatch::Prefix(v) => MatchPattern::Prefix(v.clone()),
        StringMatch::Regex(v) => MatchPattern::SafeRegex(regex(v)),
        StringMatch::Present(_) => MatchPattern::Prefix(String::new()),
    };
    matcher::StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    }
}

fn regex(r: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: r.into(),
        ..Default::default()
    }
}

fn header_matcher(name: &str, m: &StringMatch) -> rt::HeaderMatcher {
    use rt::header_matcher::HeaderMatchSpecifier;
    let spec = match m {
        StringMatch::Present(p) => HeaderMatchSpecifier::PresentMatch(*p),
        other => HeaderMatchSpecifier::StringMatch(string_matcher(other)),
    };
    rt::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}

/// Envoy's header additions for a route's `set` (replace or add) and `add` (append) entries.
fn header_values(o: &model::HeaderOp) -> Vec<core::HeaderValueOption> {
    use core::header_value_option::HeaderAppendAction as A;
    let entry = |(k, v): (&String, &String), action: A| core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    (o.set.iter().map(|kv| entry(kv, A::OverwriteIfExistsOrAdd)))
        .chain(o.add.iter().map(|kv| entry(kv, A::AppendIfExistsOrAdd)))
        .collect()
}

/// Routes of one service `T`, then the catch-all to cluster `T`. `with_ratelimit` is false for API
/// listeners: gRPC clients reject per-route configs of filters they do not implement.
fn routes_for(world: &World, svc: &model::Service, with_ratelimit: bool) -> Vec<rt::Route> {
    let mut out = Vec::new();
    for (i, h) in world
        .routes
        .get(&svc.name)
        .map(|r| r.http.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let action = route_action(world, h, with_ratelimit);
        let mut per_filter = HashMap::new();
        if let Some(f) = &h.fault {
            per_filter.insert(
                FAULT_FILTER.to_string(),
                weft_xds_api::pack(type_url::FAULT, &fault_config(f)),
            );
        }
        if let (Some(r), true) = (&h.rate_limit, with_ratelimit) {
            let stat = format!("{}_{i}", svc.name);
            let cfg = lrl::LocalRateLimit {
                stat_prefix: stat.clone(),
                token_bucket: Some(typ::TokenBucket {
                    max_tokens: r.burst,
                    tokens_per_fill: u32v(r.requests),
                    fill_interval: Some(pb_dur(r.per)),
                }),
                filter_enabled: Some(runtime_fraction(100.0, "weft.ratelimit_enabled")),
                filter_enforced: Some(runtime_fraction(100.0, "weft.ratelimit_enforced")),
                ..Default::default()
            };
            per_filter.insert(
                RATELIMIT_FILTER.to_string(),
                weft_xds_api::pack(type_url::LOCAL_RATE_LIMIT, &cfg),
            );
        }
        let matches: Vec<Option<&model::Match>> = if h.matches.is_empty() {
            vec![None]
        } else {
            h.matches.iter().map(Some).collect()
        };
        // Several matches are OR-ed: one Envoy route per match, all with the same action.
        let (req_add, resp_add) = (header_values(&h.request_headers), header_values(&h.response_headers));
        for m in matches {
            out.push(rt::Route {
                name: h.name.clone().unwrap_or_else(|| format!("{}-{i}", svc.name)),
                r#match: Some(route_match(m)),
                action: Some(rt::route::Action::Route(action.clone())),
                typed_per_filter_config: per_filter.clone(),
                request_headers_to_add: req_add.clone(),
                request_headers_to_remove: h.request_headers.remove.clone(),
                response_headers_to_add: resp_add.clone(),
                response_headers_to_remove: h.response_headers.remove.clone(),
                ..Default::default()
            });
        }
    }
    out.push(rt::Route {
        name: format!("{}-default", svc.name),
        r#match: Some(route_match(None)),
        action: Some(rt::route::Action::Route(rt::RouteAction {
            cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(svc.name.clone())),
            retry_policy: with_ratelimit.then(default_retry_policy),
            ..Default::default()
        })),
        ..Default::default()
    });
    out
}

fn route_match(m: Option<&model::Match>) -> rt::RouteMatch {
    use rt::route_match::PathSpecifier;
    let Some(m) = m else {
        return rt::RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        };
    };
    let path = match &m.path {
        PathMatch::Prefix(p) => PathSpecifier::Prefix(p.clone()),
        PathMatch::Exact(p) => PathSpecifier::Path(p.clone()),
        PathMatch::Regex(r) => PathSpecifier::SafeRegex(regex(r)),
    };
    let mut headers: Vec<rt::HeaderMatcher> = m.headers.iter().map(|(k, v)| header_matcher(k, v)).collect();
    if let Some(method) = &m.method {
        headers.push(header_matcher(":method", &StringMatch::Exact(method.clone())));
    }
    let query_parameters = (m.query_params.iter())
        .map(|(name, v)| {
            use rt::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
            let spec = match v {
                StringMatch::Present(_) => Q::PresentMatch(true),
                other => Q::StringMatch(string_matcher(other)),
            };
            rt::QueryParameterMatcher {
                name: name.clone(),
                query_parameter_match_specifier: Some(spec),
            }
        })
        .collect();
    rt::RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters,
        ..Default::default()
    }
}

/// The rate limit service in effect: configured, and naming a registered gRPC service (a policy file
/// deleted under it leaves it dangling; then nothing points at a missing cluster).
pub fn active_rls(world: &World) -> Option<&model::RateLimitService> {
    world.rate_limit_service.as_ref().filter(|r| {
        world
            .services
            .get(&r.service)
            .is_some_and(|s| s.protocol == Protocol::Grpc)
    })
}

/// The mesh-wide telemetry in effect: its parts whose collector is a registered gRPC service (a
/// registry file deleted under it leaves it dangling; then nothing points at a missing cluster).
pub fn active_telemetry(world: &World) -> Option<model::Telemetry> {
    let t = world.telemetry.as_ref()?;
    let grpc = |svc: &str| world.services.get(svc).is_some_and(|s| s.protocol == Protocol::Grpc);
    let out = model::Telemetry {
        tracing: t.tracing.clone().filter(|x| grpc(&x.service)),
        access_log: t.access_log.clone().filter(|x| grpc(&x.service)),
    };
    (out.tracing.is_some() || out.access_log.is_some()).then_some(out)
}

fn envoy_grpc(cluster: &str) -> core::GrpcService {
    core::GrpcService {
        target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
            core::grpc_service::EnvoyGrpc {
                cluster_name: cluster.into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The HCM's `tracing` (Envoy's `envoy.tracers.opentelemetry`: OTLP/gRPC to the collector's
/// cluster, `random_sampling`, the sidecar's service as `service_name`).
fn hcm_tracing(t: &model::MeshTracing, service_name: &str) -> hcm::http_connection_manager::Tracing {
    use weft_xds_api::pb::envoy::config::trace::v3 as trace;
    let cfg = trace::OpenTelemetryConfig {
        grpc_service: Some(envoy_grpc(&t.service)),
        service_name: service_name.into(),
        ..Default::default()
    };
    hcm::http_connection_manager::Tracing {
        random_sampling: Some(typ::Percent {
            value: t.sampling_percent,
        }),
        provider: Some(trace::tracing::Http {
            name: "envoy.tracers.opentelemetry".into(),
            config_type: Some(trace::tracing::http::ConfigType::TypedConfig(weft_xds_api::pack(
                "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                &cfg,
            ))),
        }),
        ..Default::default()
    }
}

/// The HCM's `access_log`: Envoy's `envoy.access_loggers.http_grpc` to the collector's cluster.
fn hcm_access_log(a: &model::MeshAccessLog) -> weft_xds_api::pb::envoy::config::accesslog::v3::AccessLog {
    use weft_xds_api::pb::envoy::config::accesslog::v3 as al;
    use weft_xds_api::pb::envoy::extensions::access_loggers::grpc::v3 as g;
    let cfg = g::HttpGrpcAccessLogConfig {
        common_config: Some(g::CommonGrpcAccessLogConfig {
            log_name: a.log_name.clone(),
            grpc_service: Some(envoy_grpc(&a.service)),
            transport_api_version: core::ApiVersion::V3 as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    al::AccessLog {
        name: "envoy.access_loggers.http_grpc".into(),
        config_type: Some(al::access_log::ConfigType::TypedConfig(weft_xds_api::pack(
            "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            &cfg,
        ))),
        ..Default::default()
    }
}

fn rate_limit_descriptor(d: &model::RlDescriptor) -> rt::RateLimit {
    use rt::rate_limit::action::{ActionSpecifier, GenericKey, RemoteAddress, RequestHeaders};
    rt::RateLimit {
        actions: d
            .actions
            .iter()
            .map(|a| rt::rate_limit::Action {
                action_specifier: Some(match a {
                    model::RlAction::RequestHeaders {
                        header_name,
                        descriptor_key,
                    } => ActionSpecifier::RequestHeaders(RequestHeaders {
                        header_name: header_name.clone(),
                        descriptor_key: descriptor_key.clone(),
                        ..Default::default()
                    }),
                    model::RlAction::RemoteAddress => ActionSpecifier::RemoteAddress(RemoteAddress {}),
                    model::RlAction::GenericKey {
                        descriptor_value,
                        descriptor_key,
                    } => ActionSpecifier::GenericKey(GenericKey {
                        descriptor_value: descriptor_value.clone(),
                        descriptor_key: descriptor_key.clone().unwrap_or_default(),
                        ..Default::default()
                    }),
                }),
            })
            .collect(),
        ..Default::default()
    }
}

/// What a sidecar's outbound route retries when the route sets no `retries` (Istio retries by default
/// too): a try that the app cannot have seen because the connection to its endpoint failed, up to
/// twice, each time on another endpoint when there is one. A pod that went away a moment before the
/// registry said so, or a SYN lost on the way, then costs a retry instead of a failed request.
/// Nothing the app may have received is retried by default (weft reads `refused-stream` as any
/// reset before a response, broader than HTTP/2's REFUSED_STREAM, so it is left out), and as no
/// request body is ever sent before a connection exists, none has to be held for a replay.
/// `retries: {attempts: 0}` on a route turns it off.
pub const DEFAULT_RETRY_ON: &str = "connect-failure";
pub const DEFAULT_RETRIES: u32 = 2;

fn default_retry_policy() -> rt::RetryPolicy {
    rt::RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.into(),
        num_retries: u32v(DEFAULT_RETRIES),
        ..Default::default()
    }
}

/// `sidecar`: false for API listeners (proxyless gRPC), which get neither global rate limits (no
/// such filter in gRPC) nor routing priorities (gRPC has no priority circuit breakers).
fn route_action(world: &World, h: &model::HttpRoute, sidecar: bool) -> rt::RouteAction {
    use rt::route_action::ClusterSpecifier;
    // Validation guarantees references resolve; a dangling one (a file deleted under a policy) is
    // dropped here rather than sent, so the proxy never sees a cluster that does not exist.
    let known = |d: &model::DestRef| {
        world.services.contains_key(&d.service)
            && d.subset.as_ref().is_none_or(|sub| {
                world
                    .destinations
                    .get(&d.service)
                    .is_some_and(|dp| dp.subsets.iter().any(|x| &x.name == sub))
            })
    };
    let dests: Vec<&model::DestRef> = h.route.iter().filter(|d| known(d)).collect();
    let cluster_specifier = if dests.len() == 1 {
        Some(ClusterSpecifier::Cluster(dests[0].cluster_name()))
    } else if dests.is_empty() {
        // Everything dangling: fall back to the base cluster of the first destination (it exists if
        // only its subset went away).
        Some(ClusterSpecifier::Cluster(
            h.route.first().map(|d| d.service.clone()).unwrap_or_default(),
        ))
    } else {
        Some(ClusterSpecifier::WeightedClusters(rt::WeightedCluster {
            clusters: dests
                .iter()
                .filter(|d| d.weight > 0)
                .map(|d| rt::weighted_cluster::ClusterWeight {
                    name: d.cluster_name(),
                    weight: u32v(d.weight),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }))
    };
    let mut a = rt::RouteAction {
        cluster_specifier,
        timeout: h.timeout.map(pb_dur),
        ..Default::default()
    };
    if let Some(r) = &h.rewrite {
        if let Some(u) = &r.uri {
            a.prefix_rewrite = u.clone();
        }
        if let Some(host) = &r.authority {
            a.host_rewrite_specifier = Some(rt::route_action::HostRewriteSpecifier::HostRewriteLiteral(host.clone()));
        }
    }
    if sidecar && h.high_priority {
        a.priority = core::RoutingPriority::High as i32;
    }
    if sidecar && active_rls(world).is_some() {
        a.rate_limits = h.rate_limits.iter().map(rate_limit_descriptor).collect();
    }
    if h.retries.is_none() && sidecar {
        a.retry_policy = Some(default_retry_policy());
    }
    if let Some(r) = &h.retries {
        a.retry_policy = Some(rt::RetryPolicy {
            retry_on: if r.retry_on.is_empty() {
                "5xx,connect-failure,refused-stream,unavailable".into()
            } else {
                r.retry_on.join(",")
            },
            num_retries: u32v(r.attempts),
            per_try_timeout: r.per_try_timeout.map(pb_dur),
            ..Default::default()
        });
    }
    if let Some(m) = h.mirror.as_ref().filter(|m| known(&m.dest)) {
        a.request_mirror_policies = vec![rt::route_action::RequestMirrorPolicy {
            cluster: m.dest.cluster_name(),
            runtime_fraction: Some(runtime_fraction(m.percent, "weft.mirror")),
            ..Default::default()
        }];
    }
    if let Some(hash) = &h.hash {
        use rt::route_action::hash_policy::{ConnectionProperties, Cookie, Header, PolicySpecifier};
        let spec = match hash {
            HashOn::Cookie { name, ttl, path } => PolicySpecifier::Cookie(Cookie {
                name: name.clone(),
                ttl: ttl.map(pb_dur),
                path: path.clone().unwrap_or_default(),
                ..Default::default()
            }),
            HashOn::Header(name) => PolicySpecifier::Header(Header {
                header_name: name.clone(),
                ..Default::default()
            }),
            HashOn::SourceIp => PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true }),
        };
        a.hash_policy = vec![rt::route_action::HashPolicy {
            policy_specifier: Some(spec),
            ..Default::default()
        }];
    }
    a
}

fn fault_config(f: &model::Fault) -> fault::HttpFault {
    use weft_xds_api::pb::envoy::extensions::filters::common::fault::v3 as cf;
    fault::HttpFault {
        delay: f.delay.map(|(d, pc)| cf::FaultDelay {
            percentage: Some(fraction(pc)),
            fault_delay_secifier: Some(cf::fault_delay::FaultDelaySecifier::FixedDelay(pb_dur(d))),
        }),
        abort: f.abort.as_ref().map(|(code, pc)| fault::FaultAbort {
            percentage: Some(fraction(*pc)),
            error_type: Some(match code {
                AbortCode::Http(s) => fault::fault_abort::ErrorType::HttpStatus(*s),
                AbortCode::Grpc(s) => fault::fault_abort::ErrorType::GrpcStatus(*s),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn virtual_host(world: &World, svc: &model::Service, with_ratelimit: bool) -> rt::VirtualHost {
    let mut domains = vec![svc.name.clone()];
    if let Some(p) = svc.port {
        domains.push(format!("{}:{p}", svc.name));
    }
    rt::VirtualHost {
        name: svc.name.clone(),
        domains,
        routes: routes_for(world, svc, with_ratelimit),
        ..Default::default()
    }
}

fn http_filter(name: &str, url: &str, cfg: &impl Message, optional: bool) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.into(),
        is_optional: optional,
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(weft_xds_api::pack(url, cfg))),
        ..Default::default()
    }
}

fn router_filter() -> hcm::HttpFilter {
    http_filter(ROUTER_FILTER, type_url::ROUTER, &router::Router::default(), false)
}

/// The global rate limit filter: asks the rate limit service's EDS cluster (`envoy_grpc`) about the
/// descriptors of routes with `rate_limits`. Not optional: a proxy that cannot enforce the limits
/// must refuse the listener rather than silently let everything through.
fn global_ratelimit_filter(r: &model::RateLimitService) -> hcm::HttpFilter {
    let cfg = grl::RateLimit {
        domain: r.domain.clone(),
        timeout: Some(pb_dur(r.timeout)),
        failure_mode_deny: r.failure_mode_deny,
        rate_limit_service: Some(weft_xds_api::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig {
            grpc_service: Some(core::GrpcService {
                target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                    core::grpc_service::EnvoyGrpc {
                        cluster_name: r.service.clone(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            transport_api_version: core::ApiVersion::V3 as i32,
        }),
        ..Default::default()
    };
    http_filter(GLOBAL_RATELIMIT_FILTER, GLOBAL_RATELIMIT_URL, &cfg, false)
}

/// Sidecar HCM filters: fault and local rate limit (optional, so proxies without them still accept),
/// the global rate limit filter when `rls` is given (outbound only), router last.
fn sidecar_filters(stat_prefix: &str, rls: Option<&model::RateLimitService>) -> Vec<hcm::HttpFilter> {
    let mut v = vec![
        http_filter(FAULT_FILTER, type_url::FAULT, &fault::HttpFault::default(), true),
        http_filter(
            RATELIMIT_FILTER,
            type_url::LOCAL_RATE_LIMIT,
            &lrl::LocalRateLimit {
                stat_prefix: stat_prefix.into(),
                ..Default::default()
            },
            true,
        ),
    ];
    v.extend(rls.map(global_ratelimit_filter));
    v.push(router_filter());
    v
}

fn api_listener(world: &World, svc: &model::Service, name: &str) -> ls::Listener {
    let manager = hcm::HttpConnectionManager {
        stat_prefix: svc.name.clone(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            rt::RouteConfiguration {
                name: svc.name.clone(),
                virtual_hosts: vec![virtual_host(world, svc, false)],
                ..Default::default()
            },
        )),
        http_filters: vec![
            http_filter(FAULT_FILTER, type_url::FAULT, &fault::HttpFault::default(), true),
            router_filter(),
        ],
        ..Default::default()
    };
    ls::Listener {
        name: name.into(),
        api_listener: Some(ls::ApiListener {
            api_listener: Some(weft_xds_api::pack(type_url::HCM, &manager)),
        }),
        ..Default::default()
    }
}

/// Which side of the sidecar a listener serves, with what only the inbound side has.
enum Side<'a> {
    /// The app's own calls; the global rate limit filter applies there.
    Outbound(Option<&'a model::RateLimitService>),
    /// Calls to the app: authorization policies, mesh mTLS termination.
    Inbound(
        Option<&'a weft_config::authz::Authorization>,
        Option<model::MtlsMode>,
        model::MtlsSuites,
    ),
}

/// A sidecar listener. Its Envoy `traffic_direction` (1 inbound, 2 outbound) also tells a weft
/// sidecar to keep its outbound listener serving the app during shutdown.
fn rds_listener(
    name: &str,
    addr: std::net::SocketAddr,
    route: &str,
    side: Side<'_>,
    telemetry: Option<(&model::Telemetry, &str)>,
) -> ls::Listener {
    let (rls, direction, authz, mtls, suites) = match side {
        Side::Outbound(rls) => (rls, 2, None, None, model::MtlsSuites::Standard),
        Side::Inbound(authz, mtls, suites) => (None, 1, authz, mtls, suites),
    };
    // Authorization first, as Istio places its RBAC filters.
    let mut http_filters = authz.map(crate::authz_xds::rbac_filters).unwrap_or_default();
    http_filters.extend(sidecar_filters(&name.replace('|', "_"), rls));
    let manager = hcm::HttpConnectionManager {
        stat_prefix: name.replace('|', "_"),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(ads()),
            route_config_name: route.into(),
        })),
        http_filters,
        tracing: telemetry.and_then(|(t, svc)| t.tracing.as_ref().map(|x| hcm_tracing(x, svc))),
        access_log: telemetry
            .and_then(|(t, _)| t.access_log.as_ref().map(hcm_access_log))
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let mtls = mtls.filter(|m| *m != model::MtlsMode::Disable);
    let mut manager = manager;
    if mtls.is_some() {
        // The app learns the caller's verified SPIFFE ID; whatever a caller sent is replaced.
        manager.forward_client_cert_details =
            hcm::http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32;
        manager.set_current_client_cert_details = Some(hcm::http_connection_manager::SetCurrentClientCertDetails {
            uri: true,
            ..Default::default()
        });
    }
    let filters = vec![ls::Filter {
        name: HCM_FILTER.into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(weft_xds_api::pack(
            type_url::HCM,
            &manager,
        ))),
    }];
    sidecar_listener(name, addr, direction, filters, mtls, suites)
}

/// A Dubbo listener: Envoy's `dubbo_proxy` (Dubbo2, hessian2) with its routes inline, one route
/// configuration per `(interface, cluster, rules)` (`*`: any interface): the rules' routes in
/// order (method exact or any, arguments and attachments exact), then one that takes any method
/// to the cluster (`safe_regex: ".*"`, as Envoy needs a method matcher). Inbound, the mesh mTLS
/// chains wrap it.
fn dubbo_listener(
    name: &str,
    addr: std::net::SocketAddr,
    direction: i32,
    routes: &[(&str, &str, &[DubboRuleRoute])],
    mtls: Option<model::MtlsMode>,
    suites: model::MtlsSuites,
) -> ls::Listener {
    // The method exact, or any (`.*`: Envoy needs a method matcher).
    let method = |m: Option<&str>, params| {
        let m = match m {
            Some(m) => StringMatch::Exact(m.into()),
            None => StringMatch::Regex(".*".into()),
        };
        Some(dubbo::MethodMatch {
            name: Some(string_matcher(&m)),
            params_match: params,
        })
    };
    let to = |cluster: &str| {
        Some(dubbo::RouteAction {
            cluster_specifier: Some(dubbo::route_action::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        })
    };
    let rule = |r: &DubboRuleRoute| {
        use dubbo::method_match::parameter_match_specifier::ParameterMatchSpecifier as P;
        let params = (r.arguments.iter())
            .map(|(i, v)| {
                let spec = dubbo::method_match::ParameterMatchSpecifier {
                    parameter_match_specifier: Some(P::ExactMatch(v.clone())),
                };
                (*i, spec)
            })
            .collect();
        dubbo::Route {
            r#match: Some(dubbo::RouteMatch {
                method: method(r.method.as_deref(), params),
                headers: (r.attachments.iter())
                    .map(|(k, v)| header_matcher(k, &StringMatch::Exact(v.clone())))
                    .collect(),
            }),
            route: to(&r.cluster),
        }
    };
    let route_config = routes
        .iter()
        .map(|(iface, cluster, rules)| dubbo::RouteConfiguration {
            name: (*iface).into(),
            interface: (*iface).into(),
            routes: (rules.iter().map(rule))
                .chain(std::iter::once(dubbo::Route {
                    r#match: Some(dubbo::RouteMatch {
                        method: method(None, Default::default()),
                        ..Default::default()
                    }),
                    route: to(cluster),
                }))
                .collect(),
            ..Default::default()
        })
        .collect();
    let proxy = dubbo::DubboProxy {
        stat_prefix: name.replace('|', "_"),
        protocol_type: dubbo::ProtocolType::Dubbo as i32,
        serialization_type: dubbo::SerializationType::Hessian2 as i32,
        route_specifier: Some(dubbo::dubbo_proxy::RouteSpecifier::MultipleRouteConfig(
            dubbo::MultipleRouteConfiguration {
                name: name.into(),
                route_config,
            },
        )),
        ..Default::default()
    };
    let filters = vec![ls::Filter {
        name: DUBBO_PROXY_FILTER.into(),
        config_type: Some(ls::filter::ConfigType::TypedConfig(weft_xds_api::pack(
            type_url::DUBBO_PROXY,
            &proxy,
        ))),
    }];
    sidecar_listener(name, addr, direction, filters, mtls, suites)
}

/// A sidecar listener around its network `filters`: in the mesh mTLS chains when `mtls` is on
/// (not `DISABLE`), else one plaintext chain.
fn sidecar_listener(
    name: &str,
    addr: std::net::SocketAddr,
    direction: i32,
    filters: Vec<ls::Filter>,
    mtls: Option<model::MtlsMode>,
    suites: model::MtlsSuites,
) -> ls::Listener {
    let mtls = mtls.filter(|m| *m != model::MtlsMode::Disable);
    let (filter_chains, listener_filters) = crate::mesh_tls::inbound_chains(filters, mtls, suites);
    ls::Listener {
        name: name.into(),
        address: Some(socket_address(addr)),
        filter_chains,
        listener_filters,
        traffic_direction: direction,
        ..Default::default()
    }
}

/// A proxy's identity as the contract defines it (bootstrap `node`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
    pub role: String,
    pub outbound: Option<std::net::SocketAddr>,
    /// The outbound Dubbo listener's address (metadata `weft.outbound_dubbo`): the app's Dubbo
    /// calls, routed by interface.
    pub outbound_dubbo: Option<std::net::SocketAddr>,
    pub inbound: Option<std::net::SocketAddr>,
    pub app: Option<std::net::SocketAddr>,
    pub user_agent: String,
    /// A proxyless gRPC client (`user_agent_name` "gRPC C-core ...", "gRPC Node Pure JS",
    /// "gRPC Java", "gRPC Go"): gets [`Snapshot::grpc_clusters`].
    pub proxyless_grpc: bool,
    /// The proxy asks for services it does not know on demand (node metadata `weft.on_demand`:
    /// "true"), so its configuration may start empty (`--scoping on-demand`).
    pub on_demand: bool,
    /// The proxy's admin API (node metadata `weft.admin`, which weft proxies send), scraped for
    /// the service graph.
    pub admin: Option<std::net::SocketAddr>,
    /// The workload the proxy belongs to, as its Istio metrics name it: metadata `WORKLOAD_NAME`,
    /// else the node id.
    pub workload: String,
    /// Metadata `NAMESPACE`, or empty.
    pub namespace: String,
    /// The workload identity the proxy declared: metadata `weft.identity` (a weft proxy's SPIFFE
    /// ID when it has a mesh certificate), else `PRINCIPAL`.
    pub identity: Option<String>,
}

impl NodeInfo {
    pub fn from_node(n: &core::Node) -> NodeInfo {
        let meta = |key: &str| -> Option<String> {
            let f = n.metadata.as_ref()?.fields.get(key)?;
            match &f.kind {
                Some(weft_xds_api::pb::google::protobuf::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            }
        };
        let addr = |key: &str| meta(key).and_then(|s| s.parse().ok());
        NodeInfo {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
            role: meta("weft.role").unwrap_or_else(|| {
                if n.cluster.is_empty() {
                    "client".into()
                } else {
                    "sidecar".into()
                }
            }),
            outbound: addr("weft.outbound"),
            outbound_dubbo: addr("weft.outbound_dubbo"),
            inbound: addr("weft.inbound"),
            app: addr("weft.app"),
            user_agent: n.user_agent_name.clone(),
            proxyless_grpc: n.user_agent_name.starts_with("gRPC"),
            on_demand: meta("weft.on_demand").as_deref() == Some("true"),
            admin: addr("weft.admin"),
            workload: meta("WORKLOAD_NAME")
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| n.id.clone()),
            namespace: meta("NAMESPACE").unwrap_or_default(),
            identity: meta("weft.identity")
                .or_else(|| meta("PRINCIPAL"))
                .filter(|i| !i.is_empty()),
        }
    }
}

/// What a proxy's Dubbo listeners depend on: the routes of its outbound Dubbo listener (the
/// snapshot's, cut to its scope) and whether its own service is a Dubbo one (then its inbound
/// listener proxies Dubbo).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeDubbo {
    pub routes: Arc<Vec<DubboRoute>>,
    pub inbound: bool,
}

impl NodeDubbo {
    /// For the proxy of service `cluster` (empty: none), with configuration scope `scope`.
    pub fn of(snap: &Snapshot, cluster: &str, scope: Option<&Scope>) -> NodeDubbo {
        let routes = match scope {
            None => snap.dubbo_routes.clone(),
            Some(s) => Arc::new(
                (snap.dubbo_routes.iter())
                    .filter(|r| s.services.contains(&r.service))
                    .cloned()
                    .collect(),
            ),
        };
        let inbound = snap
            .world
            .services
            .get(cluster)
            .is_some_and(|s| s.protocol == Protocol::Dubbo);
        NodeDubbo { routes, inbound }
    }
}

/// Resources private to one proxy. Built once per stream: they depend only on the node's identity.
#[derive(Debug, Default)]
pub struct NodeResources {
    pub maps: [ResMap; 4],
}

/// `rls`: the rate limit service in effect ([`active_rls`]); it puts the global rate limit filter on
/// the outbound listener, so these resources are rebuilt when it changes.
///
/// `authz`: the authorization policies selecting this proxy's service
/// ([`crate::authz_xds::authorization_for`]), as RBAC filters on its inbound listener;
/// `telemetry`: the mesh-wide tracing and access log, on every listener's connection manager.
pub fn node_resources(
    node: &NodeInfo,
    rls: Option<&model::RateLimitService>,
    authz: Option<&weft_config::authz::Authorization>,
    telemetry: Option<&model::Telemetry>,
    mtls: Option<model::MtlsMode>,
    suites: model::MtlsSuites,
    dubbo: &NodeDubbo,
) -> NodeResources {
    // The service name spans carry: the sidecar's service, else its node id.
    let service_name = if node.cluster.is_empty() {
        &node.id
    } else {
        &node.cluster
    };
    let telemetry = telemetry.map(|t| (t, service_name.as_str()));
    let mut r = NodeResources::default();
    let mut put = |kind: Kind, res: Arc<Res>| {
        r.maps[kind as usize].insert(res.name.clone(), res);
    };
    if let Some(addr) = node.outbound {
        put(
            Kind::Listener,
            Res::new(
                Kind::Listener,
                OUTBOUND,
                &rds_listener(OUTBOUND, addr, OUTBOUND, Side::Outbound(rls), telemetry),
            ),
        );
    }
    if let Some(addr) = node.outbound_dubbo.filter(|_| !dubbo.routes.is_empty()) {
        let routes: Vec<(&str, &str, &[DubboRuleRoute])> = (dubbo.routes.iter())
            .map(|r| (r.interface.as_str(), r.service.as_str(), r.rules.as_slice()))
            .collect();
        put(
            Kind::Listener,
            Res::new(
                Kind::Listener,
                OUTBOUND_DUBBO,
                &dubbo_listener(OUTBOUND_DUBBO, addr, 2, &routes, None, model::MtlsSuites::Standard),
            ),
        );
    }
    if !node.cluster.is_empty() {
        let name = format!("inbound|{}", node.cluster);
        if let (Some(addr), true) = (node.inbound, dubbo.inbound) {
            // A Dubbo service: its callers' calls, each one to the app (any interface).
            put(
                Kind::Listener,
                Res::new(
                    Kind::Listener,
                    &name,
                    &dubbo_listener(&name, addr, 1, &[("*", &name, &[])], mtls, suites),
                ),
            );
        } else if let Some(addr) = node.inbound {
            put(
                Kind::Listener,
                Res::new(
                    Kind::Listener,
                    &name,
                    &rds_listener(&name, addr, &name, Side::Inbound(authz, mtls, suites), telemetry),
                ),
            );
            let rc = rt::RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vec![rt::VirtualHost {
                    name: "inbound".into(),
                    domains: vec!["*".into()],
                    routes: vec![rt::Route {
                        name: "inbound".into(),
                        r#match: Some(route_match(None)),
                        action: Some(rt::route::Action::Route(rt::RouteAction {
                            cluster_specifier: Some(rt::route_action::ClusterSpecifier::Cluster(name.clone())),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            put(Kind::Route, Res::new(Kind::Route, &name, &rc));
        }
        if let Some(app) = node.app {
            let c = cl::Cluster {
                name: name.clone(),
                cluster_discovery_type: Some(cl::cluster::ClusterDiscoveryType::Type(
                    cl::cluster::DiscoveryType::Static as i32,
                )),
                connect_timeout: Some(pb_dur(Duration::from_secs(1))),
                metadata: Some(istio_service_metadata(&node.cluster)),
                load_assignment: Some(ep::ClusterLoadAssignment {
                    cluster_name: name.clone(),
                    endpoints: vec![ep::LocalityLbEndpoints {
                        lb_endpoints: vec![ep::LbEndpoint {
                            host_identifier: Some(ep::lb_endpoint::HostIdentifier::Endpoint(ep::Endpoint {
                                address: Some(socket_address(app)),
                                ..Default::default()
                            })),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            };
            put(Kind::Cluster, Res::new(Kind::Cluster, &name, &c));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_services_reuse_encodings() {
        let f = model::parse_fragment(
            "a.yaml",
            "services:\n - {name: a, endpoints: [{address: 127.0.0.1:1}]}\n - {name: b, endpoints: [{address: 127.0.0.1:2}]}\n",
        )
        .unwrap();
        let (w, e) = World::build([("a.yaml", &f)].into_iter());
        assert!(e.is_empty());
        let s1 = build_snapshot(1, Arc::new(w.clone()), None);
        let mut w2 = w;
        Arc::make_mut(w2.services.get_mut("b").unwrap()).endpoints[0].weight = 7;
        let s2 = build_snapshot(2, Arc::new(w2), Some(&s1));
        let ep = |s: &Snapshot, n: &str| s.maps[Kind::Endpoint as usize][n].clone();
        assert!(Arc::ptr_eq(&ep(&s1, "a"), &ep(&s2, "a")));
        assert_ne!(ep(&s1, "b").version, ep(&s2, "b").version);
        assert!(Arc::ptr_eq(
            &s1.maps[Kind::Route as usize][OUTBOUND],
            &s2.maps[Kind::Route as usize][OUTBOUND]
        ));
    }
}
