//! What the client holds from the control plane, and how it becomes one weft `Config`.
//!
//! Every response is first applied to a copy of the held resources; the copy is assembled into a
//! complete configuration (static bootstrap parts + warmed dynamic parts), validated, and applied.
//! Only when all of that succeeds is the copy committed and the response ACKed, so a NACKed
//! response changes nothing that is running.

use crate::convert::{self, XCluster, XListener};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tokio::time::Instant;
use weft_config::raw::{RawConfig, RawNode, RawRouteConfig};
use weft_config::ConfigError;
use weft_config::{Config, ValidateOptions};
use weft_xds_api::pb::envoy::config::cluster::v3::Cluster;
use weft_xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use weft_xds_api::pb::envoy::config::listener::v3::Listener;
use weft_xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use weft_xds_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use weft_xds_api::pb::google::protobuf::Any;
use weft_xds_api::type_url;

/// Resource types in weft's index order.
pub const TYPES: [&str; 5] = [
    type_url::LISTENER,
    type_url::ROUTE,
    type_url::CLUSTER,
    type_url::ENDPOINT,
    type_url::SECRET,
];
pub const LDS: usize = 0;
pub const RDS: usize = 1;
pub const CDS: usize = 2;
pub const EDS: usize = 3;
/// Secrets, on the ADS stream only (named by listeners' and clusters' `sds_config: { ads: {} }`).
pub const SDS: usize = 4;

pub fn type_index(url: &str) -> Option<usize> {
    TYPES.iter().position(|t| *t == url)
}

pub fn kind(t: usize) -> &'static str {
    [
        "listener",
        "route_configuration",
        "cluster",
        "cluster_load_assignment",
        "secret",
    ][t]
}

#[derive(Clone, Debug)]
pub struct Held<T> {
    pub version: String,
    pub value: T,
}

/// The dynamic resources, keyed by name.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    pub listeners: BTreeMap<String, Held<XListener>>,
    pub routes: BTreeMap<String, Held<RawRouteConfig>>,
    pub clusters: BTreeMap<String, Held<XCluster>>,
    pub endpoints: BTreeMap<String, Held<convert::XEndpoints>>,
    pub secrets: BTreeMap<String, Held<crate::tls::XSecret>>,
}

/// A converted resource of any type. Short-lived (one per resource in a response), so the size of
/// the listener variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Converted {
    /// An API listener (proxyless gRPC) or another resource weft has no use for.
    Ignored,
    Listener(XListener),
    Route(RawRouteConfig),
    Cluster(XCluster),
    Endpoints(convert::XEndpoints),
    Secret(crate::tls::XSecret),
}

/// A response, decoded to what changes.
pub struct Change {
    pub t: usize,
    /// (name, version, resource)
    pub upserts: Vec<(String, String, Any)>,
    pub removed: Vec<String>,
    /// SotW TTL heartbeats: resources named without a body, unchanged.
    pub keep: Vec<String>,
    /// SotW LDS/CDS: resources absent from the response are deleted.
    pub full_set: bool,
}

#[derive(Clone, Debug, Default)]
struct Applied {
    listeners: BTreeMap<String, weft_config::raw::RawListener>,
    clusters: BTreeMap<String, weft_config::raw::RawCluster>,
}

#[derive(Clone, Debug, Default)]
pub struct TypeStatus {
    /// Last accepted `version_info` (SotW) or `system_version_info` (Delta).
    pub version: String,
    pub nonce: String,
    pub last_error: Option<String>,
    pub last_update: Option<std::time::SystemTime>,
}

pub struct State {
    pub static_cfg: Config,
    pub res: Resources,
    pub types: [TypeStatus; 5],
    pub got: [bool; 5],
    /// RDS / EDS names subscribed at, waiting since (for `initial_fetch_timeout`).
    pub waiting_since: HashMap<(usize, String), Instant>,
    /// RDS / EDS names whose initial fetch timed out: used empty until they arrive.
    pub timed_out: BTreeSet<(usize, String)>,
    pub initial_fetch_timeout: Option<std::time::Duration>,
    pub last_applied: Option<Config>,
    /// The dynamic listeners / clusters (routes and endpoints filled in) of the last applied
    /// config: what keeps running while an update of them warms.
    applied: Applied,
    pub initialized: bool,
    pub connected: bool,
    /// API listeners (proxyless gRPC only) already reported as dropped, so each is logged once.
    api_listeners_warned: BTreeSet<String>,
    /// Sockets bound (not listening) for the addresses of held dynamic listeners, as Envoy binds a
    /// listener when LDS adds it: a listener whose port is taken is refused in its LDS response,
    /// and its port cannot be taken by someone else while it warms. SO_REUSEPORT lets the proxy
    /// bind the same address next to it.
    reservations: HashMap<String, Reservation>,
    /// Clusters asked for by name on demand (a request for a service this proxy was not sent),
    /// with when they were first asked for. CDS is then a wildcard plus these names.
    pub on_demand: BTreeMap<String, Instant>,
    /// On-demand names the control plane said it does not have, with when it said so.
    pub on_demand_missing: HashMap<String, Instant>,
}

/// A listener's address, held for it (see [`State::reservations`]).
pub struct Reservation {
    addr: std::net::SocketAddr,
    _socket: socket2::Socket,
}

/// Binds `addr` with SO_REUSEPORT (which the proxy's own listener sockets also set, so it can bind
/// next to it) but without SO_REUSEADDR (which would let any other socket bind it too while this
/// one does not listen), and without listening.
///
/// A port whose only other sockets are closed connections in TIME-WAIT (a client connection that
/// used it as its local port, or an earlier listener's connection) refuses that bind, although
/// every server binds it (they set SO_REUSEADDR): the second try sets SO_REUSEADDR, which binds
/// past TIME-WAIT but still not next to a listening socket. Only then is the port open to another
/// SO_REUSEADDR socket while the listener warms, as Envoy's listener sockets always are.
fn reserve(addr: std::net::SocketAddr) -> std::io::Result<Reservation> {
    match reserve_with(addr, false) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => reserve_with(addr, true).map_err(|_| e),
        r => r,
    }
}

fn reserve_with(addr: std::net::SocketAddr, reuse_address: bool) -> std::io::Result<Reservation> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(reuse_address)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    Ok(Reservation { addr, _socket: s })
}

impl Resources {
    /// Route configuration names the listeners wait for.
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.value.rds.iter().flatten().cloned())
            .collect()
    }

    /// ClusterLoadAssignment names the EDS clusters wait for.
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters.values().filter_map(|c| c.value.eds.clone()).collect()
    }

    /// Secret names the listeners and clusters wait for.
    pub fn sds_names(&self) -> BTreeSet<String> {
        let l = self.listeners.values().flat_map(|l| &l.value.secrets);
        let c = self.clusters.values().flat_map(|c| &c.value.secrets);
        l.chain(c).map(|r| r.name.clone()).collect()
    }

    /// Drops RDS/EDS/SDS resources nothing references any more.
    fn collect_garbage(&mut self) {
        let rds = self.rds_names();
        self.routes.retain(|n, _| rds.contains(n));
        let eds = self.eds_names();
        self.endpoints.retain(|n, _| eds.contains(n));
        let sds = self.sds_names();
        self.secrets.retain(|n, _| sds.contains(n));
    }

    pub fn names(&self, t: usize) -> Vec<String> {
        match t {
            LDS => self.listeners.keys().cloned().collect(),
            RDS => self.routes.keys().cloned().collect(),
            CDS => self.clusters.keys().cloned().collect(),
            EDS => self.endpoints.keys().cloned().collect(),
            _ => self.secrets.keys().cloned().collect(),
        }
    }

    /// name → version of what is held (Delta `initial_resource_versions`).
    pub fn versions(&self, t: usize) -> HashMap<String, String> {
        fn v<T>(m: &BTreeMap<String, Held<T>>) -> HashMap<String, String> {
            m.iter()
                .filter(|(_, h)| !h.version.is_empty())
                .map(|(n, h)| (n.clone(), h.version.clone()))
                .collect()
        }
        match t {
            LDS => v(&self.listeners),
            RDS => v(&self.routes),
            CDS => v(&self.clusters),
            EDS => v(&self.endpoints),
            _ => v(&self.secrets),
        }
    }
}

fn decode(t: usize, any: &Any, node_has_locality: bool) -> Result<(String, Converted), (String, ConfigError)> {
    let url = TYPES[t];
    match t {
        LDS => {
            let l: Listener =
                weft_xds_api::unpack(any, url).map_err(|e| (String::new(), ConfigError::single("", e)))?;
            match convert::listener(&l) {
                Ok(Some(x)) => Ok((l.name, Converted::Listener(x))),
                Ok(None) => Ok((l.name, Converted::Ignored)),
                Err(e) => Err((l.name, e)),
            }
        }
        RDS => {
            let r: RouteConfiguration =
                weft_xds_api::unpack(any, url).map_err(|e| (String::new(), ConfigError::single("", e)))?;
            convert::route_config(&r)
                .map(|x| (r.name.clone(), Converted::Route(x)))
                .map_err(|e| (r.name, e))
        }
        CDS => {
            let c: Cluster = weft_xds_api::unpack(any, url).map_err(|e| (String::new(), ConfigError::single("", e)))?;
            convert::cluster(&c, node_has_locality)
                .map(|x| (c.name.clone(), Converted::Cluster(x)))
                .map_err(|e| (c.name, e))
        }
        EDS => {
            let c: ClusterLoadAssignment =
                weft_xds_api::unpack(any, url).map_err(|e| (String::new(), ConfigError::single("", e)))?;
            convert::load_assignment(&c)
                .map(|x| (c.cluster_name.clone(), Converted::Endpoints(x)))
                .map_err(|e| (c.cluster_name, e))
        }
        _ => {
            let s: Secret = weft_xds_api::unpack(any, url).map_err(|e| (String::new(), ConfigError::single("", e)))?;
            crate::tls::secret(&s)
                .map(|x| (s.name.clone(), Converted::Secret(x)))
                .map_err(|e| (s.name, e))
        }
    }
}

fn describe(t: usize, name: &str, errs: &ConfigError) -> String {
    errs.errors
        .iter()
        .map(|e| format!("{} \"{name}\": {e}", kind(t)))
        .collect::<Vec<_>>()
        .join("; ")
}

impl State {
    pub fn new(static_cfg: Config) -> State {
        let initial_fetch_timeout = static_cfg.xds.as_ref().and_then(|x| x.initial_fetch_timeout);
        State {
            static_cfg,
            res: Resources::default(),
            types: Default::default(),
            got: [false; 5],
            waiting_since: HashMap::new(),
            timed_out: BTreeSet::new(),
            initial_fetch_timeout,
            last_applied: None,
            applied: Applied::default(),
            initialized: false,
            connected: false,
            api_listeners_warned: BTreeSet::new(),
            reservations: HashMap::new(),
            on_demand: BTreeMap::new(),
            on_demand_missing: HashMap::new(),
        }
    }

    fn node_has_locality(&self) -> bool {
        let l = &self.static_cfg.node.locality;
        !l.region.is_empty() || !l.zone.is_empty()
    }

    /// Validates and applies one response. `Err` is the NACK's error_detail; nothing changed then.
    pub fn handle(&mut self, change: Change, apply: &crate::ApplyFn) -> Result<(), String> {
        let t = change.t;
        let mut cand = self.res.clone();
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        let has_loc = self.node_has_locality();
        let mut decoded = Vec::new();
        for (name_hint, version, any) in &change.upserts {
            match decode(t, any, has_loc) {
                Ok((name, conv)) => {
                    let name = if name.is_empty() { name_hint.clone() } else { name };
                    if !seen.insert(name.clone()) {
                        errors.push(format!("{} \"{name}\": duplicate resource in one response", kind(t)));
                    }
                    decoded.push((name, version.clone(), conv));
                }
                Err((name, errs)) => {
                    let name = if name.is_empty() { name_hint.clone() } else { name };
                    errors.push(describe(t, &name, &errs));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        if change.full_set {
            match t {
                LDS => cand.listeners.retain(|n, _| change.keep.contains(n)),
                CDS => cand.clusters.retain(|n, _| change.keep.contains(n)),
                _ => {}
            }
        }
        for name in &change.removed {
            match t {
                LDS => {
                    cand.listeners.remove(name);
                }
                CDS => {
                    cand.clusters.remove(name);
                }
                // A removed route configuration / load assignment leaves its user with none (Envoy
                // keeps the listener / cluster): held empty, not waiting.
                RDS => {
                    if let Some(r) = cand.routes.get_mut(name) {
                        r.version.clear();
                        r.value.virtual_hosts.clear();
                    }
                }
                // A removed secret: its users keep the certificates they have (they wait for it
                // as for a new one; nothing runs without its certificate).
                SDS => {
                    cand.secrets.remove(name);
                }
                _ => {
                    if let Some(e) = cand.endpoints.get_mut(name) {
                        e.version.clear();
                        e.value = convert::XEndpoints::default();
                    }
                }
            }
        }
        let mut ignored = Vec::new();
        for (name, version, conv) in decoded {
            match conv {
                Converted::Ignored => ignored.push(name),
                Converted::Listener(x) => {
                    cand.listeners.insert(name, Held { version, value: x });
                }
                Converted::Route(x) => {
                    cand.routes.insert(name, Held { version, value: x });
                }
                Converted::Cluster(x) => {
                    cand.clusters.insert(name, Held { version, value: x });
                }
                Converted::Endpoints(x) => {
                    cand.endpoints.insert(name, Held { version, value: x });
                }
                Converted::Secret(x) => {
                    cand.secrets.insert(name, Held { version, value: x });
                }
            }
        }
        cand.collect_garbage();
        let reserved = if t == LDS {
            Some(self.reserve_listeners(&cand)?)
        } else {
            None
        };
        let (cfg, applied) = self.assemble(&cand)?;
        self.apply_if_changed(cfg, apply)?;
        self.applied = applied;
        self.res = cand;
        if let Some(new) = reserved {
            let listeners = &self.res.listeners;
            self.reservations.retain(|n, r| {
                !new.contains_key(n)
                    && listeners
                        .get(n)
                        .and_then(|l| l.value.raw.address.as_deref())
                        .is_some_and(|a| a.parse() == Ok(r.addr))
            });
            self.reservations.extend(new);
        }
        if t == LDS {
            for name in ignored {
                if self.api_listeners_warned.insert(name.clone()) {
                    tracing::warn!(listener = %name, "xDS: dropping API listener (api_listener is for proxyless gRPC clients; weft has no socket to bind for it)");
                }
            }
        }
        self.got[t] = true;
        self.track_waiting();
        Ok(())
    }

    /// Reserves the addresses of the listeners of `cand` not reserved yet. Returns the new
    /// reservations (committed with the response); a listener whose address cannot be bound
    /// refuses the LDS response, naming the listener (Envoy's `listener_create_failure`).
    fn reserve_listeners(&self, cand: &Resources) -> Result<HashMap<String, Reservation>, String> {
        let mut out = HashMap::new();
        let mut errors = Vec::new();
        for (name, l) in &cand.listeners {
            let Some(addr) = l
                .value
                .raw
                .address
                .as_deref()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            else {
                continue;
            };
            if addr.port() == 0 || self.reservations.get(name).is_some_and(|r| r.addr == addr) {
                continue;
            }
            match reserve(addr) {
                Ok(r) => {
                    out.insert(name.clone(), r);
                }
                Err(e) => errors.push(format!("listener \"{name}\": address: cannot bind {addr}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors.join("; "))
        }
    }

    fn apply_if_changed(&mut self, cfg: Config, apply: &crate::ApplyFn) -> Result<(), String> {
        if self.last_applied.as_ref() != Some(&cfg) {
            apply(cfg.clone())?;
            self.last_applied = Some(cfg);
        }
        Ok(())
    }

    /// Re-applies after the static part changed (file reload) or a warming timeout fired.
    pub fn reapply(&mut self, apply: &crate::ApplyFn) -> Result<(), String> {
        let (cfg, applied) = self.assemble(&self.res.clone())?;
        self.apply_if_changed(cfg, apply)?;
        self.applied = applied;
        Ok(())
    }

    /// Starts / stops initial-fetch timers for the RDS/EDS names now needed.
    fn track_waiting(&mut self) {
        let now = Instant::now();
        let mut needed = BTreeSet::new();
        for n in self.res.rds_names() {
            if !self.res.routes.contains_key(&n) {
                needed.insert((RDS, n));
            }
        }
        for n in self.res.eds_names() {
            if !self.res.endpoints.contains_key(&n) {
                needed.insert((EDS, n));
            }
        }
        for n in self.res.sds_names() {
            if !self.res.secrets.contains_key(&n) {
                needed.insert((SDS, n));
            }
        }
        self.waiting_since.retain(|k, _| needed.contains(k));
        self.timed_out.retain(|k| needed.contains(k));
        for k in needed {
            self.waiting_since.entry(k).or_insert(now);
        }
    }

    /// When the next initial-fetch timeout fires, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let t = self.initial_fetch_timeout?;
        self.waiting_since
            .iter()
            .filter(|(k, _)| !self.timed_out.contains(*k))
            .map(|(_, since)| *since + t)
            .min()
    }

    /// Marks expired waits as timed out; true if anything changed.
    pub fn expire(&mut self, now: Instant) -> bool {
        let Some(t) = self.initial_fetch_timeout else {
            return false;
        };
        let mut changed = false;
        for (k, since) in &self.waiting_since {
            if *since + t <= now && self.timed_out.insert(k.clone()) {
                tracing::warn!(kind = kind(k.0), name = %k.1, "initial fetch timed out; using it empty");
                changed = true;
            }
        }
        changed
    }

    /// All subscribed resources of the initial responses have arrived (or timed out).
    pub fn complete(&self) -> bool {
        self.got[LDS]
            && self.got[CDS]
            && self
                .res
                .rds_names()
                .iter()
                .all(|n| self.res.routes.contains_key(n) || self.timed_out.contains(&(RDS, n.clone())))
            && self
                .res
                .eds_names()
                .iter()
                .all(|n| self.res.endpoints.contains_key(n) || self.timed_out.contains(&(EDS, n.clone())))
            && self
                .res
                .sds_names()
                .iter()
                .all(|n| self.res.secrets.contains_key(n) || self.timed_out.contains(&(SDS, n.clone())))
    }

    /// Puts the SDS secrets `refs` into a TLS block. `Ok(false)`: one has not arrived yet. A
    /// secret of the wrong kind, or secrets on a stream that is not ADS, is an error naming
    /// `what`.
    fn fill_secrets(
        &self,
        what: &str,
        refs: &[crate::tls::SecretRef],
        res: &Resources,
        mut tls: Option<Slots<'_>>,
    ) -> Result<bool, String> {
        use crate::tls::Slot;
        use weft_config::XdsMode;
        if refs.is_empty() {
            return Ok(true);
        }
        let ads = self
            .static_cfg
            .xds
            .as_ref()
            .is_some_and(|x| matches!(x.mode, XdsMode::AdsSotw | XdsMode::AdsDelta));
        if !ads {
            return Err(format!(
                "{what}: SDS secret \"{}\": secrets come over the ADS stream only (xds.mode ads_sotw or ads_delta)",
                refs[0].name
            ));
        }
        let mut all = true;
        for r in refs {
            let Some(sec) = res.secrets.get(&r.name) else {
                all = false;
                continue;
            };
            let wrong = |kind: &str| format!("{what}: secret \"{}\" is not a {kind}", r.name);
            match (r.slot, tls.as_mut()) {
                (Slot::Cert(i), Some(t)) => {
                    let ((cf, cp), (kf, kp)) = sec.value.cert.clone().ok_or_else(|| wrong("tls_certificate"))?;
                    t.set_cert(i, cf, cp, kf, kp);
                }
                (Slot::Ca, Some(t)) => {
                    let (f, p) = sec.value.ca.clone().ok_or_else(|| wrong("validation_context"))?;
                    t.set_ca(f, p);
                }
                (_, None) => {}
            }
        }
        Ok(all)
    }

    /// Static parts + the warmed dynamic resources → one validated `Config`.
    fn assemble(&self, res: &Resources) -> Result<(Config, Applied), String> {
        // Static names win; a dynamic resource may not shadow one (checked here, so that a reload
        // of the static part is held to it too).
        for l in res.listeners.keys() {
            if self.static_cfg.listeners.iter().any(|s| &s.name == l) {
                return Err(format!("listener \"{l}\": name clashes with a static listener"));
            }
        }
        for c in res.clusters.keys() {
            if self.static_cfg.clusters.iter().any(|s| &s.name == c) {
                return Err(format!("cluster \"{c}\": name clashes with a static cluster"));
            }
        }
        let node = &self.static_cfg.node;
        let mut raw = RawConfig {
            node: RawNode {
                id: Some(node.id.clone()),
                cluster: Some(node.cluster.clone()),
                region: Some(node.locality.region.clone()),
                zone: Some(node.locality.zone.clone()),
                sub_zone: Some(node.locality.sub_zone.clone()),
                metadata: node.metadata.clone(),
            },
            ..Default::default()
        };
        // (listener name, per-chain rds) and (cluster name, eds) in RawConfig order, to name the
        // resource at fault in validation errors.
        let mut lmap = Vec::new();
        let mut applied = Applied::default();
        for (name, l) in &res.listeners {
            let mut rl = l.value.raw.clone();
            // Warm: every route configuration arrived. Timed out: the missing ones waited longer
            // than initial_fetch_timeout and are used empty.
            let mut warm = true;
            let mut timed_out = true;
            for (i, rds) in l.value.rds.iter().enumerate() {
                let Some(rds) = rds else { continue };
                let rc = match res.routes.get(rds) {
                    Some(r) => r.value.clone(),
                    None => {
                        warm = false;
                        timed_out &= self.timed_out.contains(&(RDS, rds.clone()));
                        RawRouteConfig {
                            name: Some(rds.clone()),
                            ..Default::default()
                        }
                    }
                };
                if let Some(h) = rl.filter_chains[i].http.as_mut() {
                    let mut rc = rc;
                    if h.rate_limit_service.is_none() {
                        convert::strip_rate_limits(&mut rc);
                    }
                    h.route_config = Some(rc);
                }
            }
            // Its SDS secrets: never run without its certificate, so a missing secret keeps it
            // warming even past initial_fetch_timeout.
            let what = format!("listener \"{name}\"");
            let secrets_in = self.fill_secrets(&what, &l.value.secrets, res, rl.tls.as_mut().map(Slots::Listener))?;
            // An updated listener that is still warming: the previous version keeps running
            // (Envoy's make-before-break).
            let chosen = if warm && secrets_in {
                Some(rl)
            } else if let Some(prev) = self.applied.listeners.get(name) {
                Some(prev.clone())
            } else if timed_out && secrets_in {
                Some(rl)
            } else {
                None
            };
            if let Some(rl) = chosen {
                applied.listeners.insert(name.clone(), rl.clone());
                raw.listeners.push(rl);
                lmap.push((name.clone(), l.value.rds.clone()));
            }
        }
        let mut cmap = Vec::new();
        for (name, c) in &res.clusters {
            let mut rc = c.value.raw.clone();
            let what = format!("cluster \"{name}\"");
            let secrets_in = self.fill_secrets(&what, &c.value.secrets, res, rc.tls.as_mut().map(Slots::Cluster))?;
            let chosen = match &c.value.eds {
                // Waiting for a secret: the previous version runs, or nothing yet.
                _ if !secrets_in => self.applied.clusters.get(name).cloned(),
                None => Some(rc),
                Some(eds) => match res.endpoints.get(eds) {
                    Some(e) => {
                        rc.endpoints = if c.value.locality_weighted {
                            e.value.locality_weighted.clone()
                        } else {
                            e.value.plain.clone()
                        };
                        Some(rc)
                    }
                    None => match self.applied.clusters.get(name) {
                        Some(prev) => Some(prev.clone()),
                        None if self.timed_out.contains(&(EDS, eds.clone())) => Some(rc),
                        None => None,
                    },
                },
            };
            if let Some(rc) = chosen {
                applied.clusters.insert(name.clone(), rc.clone());
                raw.clusters.push(rc);
                cmap.push((name.clone(), c.value.eds.clone()));
            }
        }
        let dynamic = weft_config::validate_with(
            raw,
            ValidateOptions {
                allow_unknown_clusters: true,
                allow_empty_clusters: true,
                allow_empty_route_configs: true,
            },
        )
        .map_err(|e| {
            e.errors
                .iter()
                .map(|fe| map_error(&fe.path, &fe.message, &lmap, &cmap))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let mut cfg = self.static_cfg.clone();
        cfg.listeners.extend(dynamic.listeners);
        cfg.clusters.extend(dynamic.clusters);
        Ok((cfg, applied))
    }
}

/// Where a secret goes: a listener's or a cluster's TLS block.
enum Slots<'a> {
    Listener(&'a mut weft_config::tls::RawListenerTls),
    Cluster(&'a mut weft_config::tls::RawClusterTls),
}

impl Slots<'_> {
    fn set_cert(&mut self, i: usize, cf: Option<String>, cp: Option<String>, kf: Option<String>, kp: Option<String>) {
        match self {
            Slots::Listener(t) => {
                if let Some(c) = t.certificates.get_mut(i) {
                    (c.cert_file, c.cert_pem, c.key_file, c.key_pem) = (cf, cp, kf, kp);
                }
            }
            Slots::Cluster(t) => (t.cert_file, t.cert_pem, t.key_file, t.key_pem) = (cf, cp, kf, kp),
        }
    }

    fn set_ca(&mut self, f: Option<String>, p: Option<String>) {
        match self {
            Slots::Listener(t) => (t.trusted_ca_file, t.trusted_ca_pem) = (f, p),
            Slots::Cluster(t) => (t.trusted_ca_file, t.trusted_ca_pem) = (f, p),
        }
    }
}

/// `listeners[2].filter_chains[0].http.route_config.virtual_hosts[1]...` → the xDS resource and the
/// rest of the path, with weft's wrapper names replaced by Envoy's where they differ.
fn map_error(
    path: &str,
    msg: &str,
    lmap: &[(String, Vec<Option<String>>)],
    cmap: &[(String, Option<String>)],
) -> String {
    fn index(s: &str, prefix: &str) -> Option<(usize, String)> {
        let rest = s.strip_prefix(prefix)?;
        let (n, rest) = rest.split_once(']')?;
        Some((n.parse().ok()?, rest.trim_start_matches('.').to_string()))
    }
    let envoyish = |p: &str| {
        p.replace(".http.", ".filters[0].typed_config.")
            .replace(".tcp_proxy.", ".filters[0].typed_config.")
            .replace(".rpc.", ".filters[0].typed_config.")
            .replace("route.weighted_clusters[", "route.weighted_clusters.clusters[")
    };
    if let Some((i, rest)) = index(path, "listeners[") {
        if let Some((name, rds)) = lmap.get(i) {
            if let Some((j, after)) = index(&rest, "filter_chains[") {
                if let Some(r) = after.strip_prefix("http.route_config") {
                    if let Some(Some(rds)) = rds.get(j) {
                        let r = r.trim_start_matches('.');
                        let r = envoyish(&format!(".{r}"));
                        return format!("route_configuration \"{rds}\": {}: {msg}", r.trim_start_matches('.'));
                    }
                }
            }
            return format!("listener \"{name}\": {}: {msg}", envoyish(&rest));
        }
    }
    if let Some((i, rest)) = index(path, "clusters[") {
        if let Some((name, eds)) = cmap.get(i) {
            if let (Some(eds), true) = (eds, rest.starts_with("endpoints[")) {
                return format!("cluster \"{name}\" (cluster_load_assignment \"{eds}\"): {rest}: {msg}");
            }
            return format!("cluster \"{name}\": {rest}: {msg}");
        }
    }
    if path.is_empty() {
        msg.to_string()
    } else {
        format!("{path}: {msg}")
    }
}

#[cfg(test)]
mod tests {
    use super::reserve;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    /// A port with a connection in TIME-WAIT (its server closed first; the listener had no
    /// SO_REUSEPORT) is reserved; a port someone listens on is not.
    #[test]
    fn a_port_in_time_wait_is_reserved_a_listened_one_is_not() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).unwrap();
        drop(l.accept().unwrap().0);
        let _ = c.read(&mut [0u8; 1]); // the server's FIN: its side goes to TIME-WAIT
        drop(c);
        drop(l);
        assert!(
            reserve(addr).is_ok(),
            "a port with TIME-WAIT only is free for a listener"
        );

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = reserve(l.local_addr().unwrap())
            .err()
            .expect("a listened port is refused");
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    }
}
