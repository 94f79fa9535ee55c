//! The ADS server: State-of-the-World and Delta streams over one gRPC service.
//!
//! Each stream is one task owning a [`StreamState`] (behind a mutex only so that the admin API can
//! read it; the task never holds it across an await). A stream reacts to two things: requests from
//! its proxy (subscriptions, ACKs, NACKs) and new snapshots from the catalog. Work per snapshot is a
//! diff of resource versions against what this proxy already holds: nothing is re-translated and
//! resources are shared, so an endpoint change costs each proxy a few map lookups and one message.

use crate::metrics::{Metrics, StreamLabel, TypeLabel};
use crate::translate::{
    fnv, node_resources, Kind, NodeDubbo, NodeInfo, NodeResources, Res, Scope, Snapshot, FNV_INIT, OUTBOUND,
};
use crate::wire;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use weft_xds_api::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};

/// State shared by all streams and the admin API.
pub struct Shared {
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    pub metrics: Arc<Metrics>,
    pub proxies: Mutex<BTreeMap<u64, Arc<ProxyEntry>>>,
    pub next_id: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    pub scoping: Scoping,
}

/// Which proxies get only part of the mesh (`--scoping`; see docs/control.md, "Configuration
/// scoping").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scoping {
    /// Sidecars of a service that declares `dependencies` get those services only (plus what they
    /// ask for by name); every other proxy gets the whole mesh.
    #[default]
    Declared,
    /// As `Declared`, and sidecars that can ask on demand (weft proxies) start with nothing when
    /// their service declares no dependencies: they learn from their traffic.
    OnDemand,
    /// Every proxy gets the whole mesh.
    Off,
}

impl std::str::FromStr for Scoping {
    type Err = String;
    fn from_str(s: &str) -> Result<Scoping, String> {
        match s {
            "declared" => Ok(Scoping::Declared),
            "on-demand" => Ok(Scoping::OnDemand),
            "off" => Ok(Scoping::Off),
            other => Err(format!("unknown scoping \"{other}\" (declared, on-demand, off)")),
        }
    }
}

pub struct ProxyEntry {
    pub stream_id: u64,
    pub kind: &'static str,
    pub connected_at: SystemTime,
    pub peer: Option<std::net::SocketAddr>,
    /// The identity the proxy's client certificate proved (streams on the secure port; None on
    /// the plaintext one).
    pub identity: Option<weft_identity::spiffe::SpiffeId>,
    pub state: Mutex<StreamState>,
}

/// Per-type protocol state of one stream.
#[derive(Default, Clone)]
pub struct TypeState {
    /// The client has sent at least one request for this type.
    pub seen: bool,
    pub responded: bool,
    pub wildcard: bool,
    pub names: BTreeSet<String>,
    /// What the client holds: name -> version. SotW: what we last sent; Delta: also seeded from
    /// `initial_resource_versions` on reconnect.
    pub sent: HashMap<Arc<str>, u64>,
    /// SotW LDS/CDS: hash of the last full set sent, to send a full set only when it changed.
    pub full_hash: Option<u64>,
    /// SotW: the `version_info` of the stream's first request for this type (a client that
    /// reconnects, to this or a restarted control plane, says what it holds). If it equals what
    /// would be sent, nothing is: versions are content hashes, the same in every process.
    pub initial_version: Option<String>,
    /// SotW: the nonces of the latest response, one per chunk when it was split (older nonces are
    /// stale; an ACK or NACK of any chunk of the latest response counts).
    pub nonces: Vec<String>,
    /// Delta: responses not yet ACKed, (nonce, system version).
    pub pending: VecDeque<(String, String)>,
    pub last_sent_version: String,
    pub acked_version: String,
    pub acks: u64,
    pub nacks: u64,
    pub last_nack: Option<String>,
    /// Delta CDS: names subscribed explicitly (on demand) that do not exist, already reported in
    /// `removed_resources` so the client stops waiting for them.
    pub missing_reported: BTreeSet<String>,
}

type NodeInputs = (Option<crate::model::RateLimitService>, Option<crate::model::Telemetry>);

pub struct StreamState {
    pub node: Option<NodeInfo>,
    pub node_res: Arc<NodeResources>,
    /// The rate limit service and mesh telemetry `node_res` was built with (None: not built yet).
    node_rls: Option<NodeInputs>,
    /// The authorization `node_res` was built with.
    node_authz: Option<weft_config::authz::Authorization>,
    /// The mesh mTLS mode of the node's inbound listener `node_res` was built with.
    node_mtls: Option<crate::model::MtlsMode>,
    /// The Dubbo inputs `node_res` was built from.
    node_dubbo: NodeDubbo,
    pub types: [TypeState; 4],
    pub nonce_counter: u64,
    pub generation: u64,
    scoping: Scoping,
    /// The services this proxy is sent; None: the whole mesh.
    pub scope: Option<Arc<Scope>>,
    /// `outbound` cut to `scope`, from the current snapshot.
    scoped_rds: Option<Arc<Res>>,
    /// The node was checked against the stream's authenticated identity.
    node_checked: bool,
}

impl StreamState {
    fn new(scoping: Scoping) -> StreamState {
        StreamState {
            node: None,
            node_res: Arc::new(NodeResources::default()),
            node_rls: None,
            node_authz: None,
            node_mtls: None,
            node_dubbo: NodeDubbo::default(),
            types: Default::default(),
            nonce_counter: 0,
            generation: 0,
            scoping,
            scope: None,
            scoped_rds: None,
            node_checked: false,
        }
    }

    /// The services this proxy should be sent, or None for the whole mesh: its service's declared
    /// dependencies (or nothing, for an on-demand proxy under `--scoping on-demand`), plus every
    /// service whose cluster it subscribed to by name (on demand).
    fn desired_scope(&self, snap: &Snapshot) -> Option<BTreeSet<String>> {
        let info = self.node.as_ref()?;
        if self.scoping == Scoping::Off || info.role != "sidecar" || info.cluster.is_empty() {
            return None;
        }
        let declared = snap
            .world
            .services
            .get(&info.cluster)
            .and_then(|s| s.dependencies.as_ref());
        let mut set: BTreeSet<String> = match declared {
            Some(d) if d.iter().any(|x| x == "*") => return None,
            Some(d) => d.iter().cloned().collect(),
            None if self.scoping == Scoping::OnDemand && info.on_demand => BTreeSet::new(),
            None => return None,
        };
        for n in &self.types[Kind::Cluster as usize].names {
            set.insert(crate::translate::service_of(n).to_string());
        }
        // The mesh-wide trace and access-log collectors: the listeners name their clusters.
        if let Some(t) = crate::translate::active_telemetry(&snap.world) {
            set.extend(t.tracing.map(|x| x.service));
            set.extend(t.access_log.map(|x| x.service));
        }
        Some(set)
    }

    /// Recomputes the scope (and the scoped route table for `snap`); true when the scope changed,
    /// so that a full diff is needed.
    fn refresh_scope(&mut self, snap: &Snapshot) -> bool {
        let want = self.desired_scope(snap);
        let changed = match (&self.scope, &want) {
            (None, None) => false,
            (Some(a), Some(b)) => a.services != *b,
            _ => true,
        };
        if changed {
            self.scope = want.map(|services| Arc::new(Scope { services }));
        }
        self.scoped_rds = self.scope.as_ref().map(|s| snap.scoped_outbound(s));
        changed
    }

    fn next_nonce(&mut self) -> String {
        self.nonce_counter += 1;
        self.nonce_counter.to_string()
    }

    fn set_node(&mut self, node: Option<&weft_xds_api::pb::envoy::config::core::v3::Node>) {
        if self.node.is_none() {
            let info = node.map(NodeInfo::from_node).unwrap_or_default();
            tracing::debug!(node = %info.id, cluster = %info.cluster, role = %info.role, user_agent = %info.user_agent, "ADS stream opened");
            self.node = Some(info);
            self.node_rls = None;
        }
    }

    /// (Re)builds the node's own resources when they are missing or the snapshot's rate limit
    /// service (which the outbound listener's filters depend on) or mesh-wide telemetry (which
    /// both listeners' connection managers carry) changed. True when rebuilt.
    fn refresh_node(&mut self, snap: &Snapshot) -> bool {
        let Some(info) = &self.node else { return false };
        let rls = crate::translate::active_rls(&snap.world);
        let authz = crate::authz_xds::authorization_for(&snap.world, &info.cluster, &info.namespace);
        let telemetry = crate::translate::active_telemetry(&snap.world);
        let mtls = crate::mesh_tls::inbound_mode(&snap.world, &info.cluster);
        let dubbo = NodeDubbo::of(snap, &info.cluster, self.scope.as_deref());
        if self
            .node_rls
            .as_ref()
            .is_some_and(|(r, t)| r.as_ref() == rls && *t == telemetry)
            && self.node_authz == authz
            && self.node_mtls == mtls
            && self.node_dubbo == dubbo
        {
            return false;
        }
        self.node_res = Arc::new(node_resources(
            info,
            rls,
            authz.as_ref(),
            telemetry.as_ref(),
            mtls,
            crate::mesh_tls::suites(&snap.world),
            &dubbo,
        ));
        self.node_dubbo = dubbo;
        self.node_rls = Some((rls.cloned(), telemetry));
        self.node_authz = authz;
        self.node_mtls = mtls;
        true
    }
}

/// The resources one proxy can see: the shared snapshot plus its own.
struct View<'a> {
    snap: &'a Snapshot,
    node: &'a NodeResources,
    /// A proxyless gRPC client: clusters from `snap.grpc_clusters` where they exist.
    grpc: bool,
    /// Configuration scoping: shared clusters and endpoints outside the scope are left out of the
    /// wildcard sets, and `outbound` is `scoped_rds`. Resources named explicitly are still served.
    scope: Option<&'a Scope>,
    scoped_rds: Option<&'a Arc<Res>>,
}

/// What a [`View`] needs from the stream, cloned out so the stream state can be mutated meanwhile.
struct ViewParts {
    node_res: Arc<NodeResources>,
    grpc: bool,
    scope: Option<Arc<Scope>>,
    scoped_rds: Option<Arc<Res>>,
}

impl ViewParts {
    fn of(st: &StreamState) -> ViewParts {
        ViewParts {
            node_res: st.node_res.clone(),
            grpc: st.node.as_ref().is_some_and(|n| n.proxyless_grpc),
            scope: st.scope.clone(),
            scoped_rds: st.scoped_rds.clone(),
        }
    }
}

impl<'a> View<'a> {
    fn new(snap: &'a Snapshot, p: &'a ViewParts) -> View<'a> {
        View {
            snap,
            node: &p.node_res,
            grpc: p.grpc,
            scope: p.scope.as_deref(),
            scoped_rds: p.scoped_rds.as_ref(),
        }
    }

    /// Whether a shared resource is in this proxy's wildcard set.
    fn visible(&self, kind: Kind, name: &str) -> bool {
        match (self.scope, kind) {
            (None, _) | (Some(_), Kind::Listener) => true,
            (Some(s), Kind::Cluster | Kind::Endpoint) => s.covers(name),
            (Some(_), Kind::Route) => name != OUTBOUND,
        }
    }

    /// The variant of a shared resource this client gets.
    fn variant<'r>(&'r self, kind: Kind, r: &'r Arc<Res>) -> &'r Arc<Res> {
        if self.grpc && kind == Kind::Cluster {
            self.snap.grpc_clusters.get(&r.name).unwrap_or(r)
        } else {
            r
        }
    }

    fn get(&self, kind: Kind, name: &str) -> Option<&Arc<Res>> {
        if kind == Kind::Route && name == OUTBOUND {
            if let Some(r) = self.scoped_rds {
                return Some(r);
            }
        }
        self.node.maps[kind as usize]
            .get(name)
            .or_else(|| self.snap.get(kind, name).map(|r| self.variant(kind, r)))
    }

    /// The wildcard set. Listeners are per node only: API listeners go to those who name them.
    fn all(&self, kind: Kind) -> impl Iterator<Item = &Arc<Res>> {
        let shared = if kind == Kind::Listener {
            None
        } else {
            Some(
                self.snap.maps[kind as usize]
                    .values()
                    .filter(move |r| self.visible(kind, &r.name))
                    .map(move |r| self.variant(kind, r)),
            )
        };
        let scoped = if kind == Kind::Route { self.scoped_rds } else { None };
        self.node.maps[kind as usize]
            .values()
            .chain(shared.into_iter().flatten())
            .chain(scoped)
    }

    fn in_all(&self, kind: Kind, name: &str) -> bool {
        self.node.maps[kind as usize].contains_key(name)
            || (kind != Kind::Listener && self.snap.maps[kind as usize].contains_key(name) && self.visible(kind, name))
            || (kind == Kind::Route && name == OUTBOUND && self.scoped_rds.is_some())
    }
}

fn parse_version(v: &str) -> u64 {
    u64::from_str_radix(v, 16).unwrap_or(0)
}

fn error_message(s: &weft_xds_api::pb::google::rpc::Status) -> String {
    format!("code {}: {}", s.code, s.message)
}

fn record_sent(metrics: &Metrics, kind: Kind, items: &[Arc<Res>], snap: &Snapshot, is_push: bool) {
    let l = TypeLabel { r#type: kind.short() };
    metrics.pushes.get_or_create(&l).inc();
    metrics.resources_sent.get_or_create(&l).inc_by(items.len() as u64);
    let bytes: usize = items.iter().map(|r| r.any.value.len()).sum();
    metrics.bytes_sent.get_or_create(&l).inc_by(bytes as u64);
    if is_push {
        metrics.push_latency.observe(snap.built_at.elapsed().as_secs_f64());
    }
}

/// A response decided but not yet built. Holds `Arc`s only: the resource bytes are copied into its
/// frame ([`wire`]) just before it is queued, so a proxy with a 100 MB backlog costs pointers, not copies.
struct Out {
    kind: Kind,
    nonce: String,
    version: String,
    items: Vec<Arc<Res>>,
    removed: Vec<String>,
}

// ------------------------------------------------------------------------------------------------
// State of the World
// ------------------------------------------------------------------------------------------------

/// (version_info, resources to send, names of resources whose version changed).
type SotwOut = (String, Vec<Arc<Res>>, Vec<Arc<str>>);

/// Computes the SotW response for one type, or None when the client already has it all.
fn sotw_compute(ts: &mut TypeState, kind: Kind, view: &View<'_>) -> Option<SotwOut> {
    let initial = ts.initial_version.take();
    if kind.is_full_state() {
        // LDS/CDS: the response is the full set; a missing resource means deletion.
        let items: Vec<Arc<Res>> = if ts.wildcard {
            let mut v: Vec<Arc<Res>> = view.all(kind).cloned().collect();
            for n in &ts.names {
                if !view.in_all(kind, n) {
                    v.extend(view.get(kind, n).cloned());
                }
            }
            v
        } else {
            ts.names.iter().filter_map(|n| view.get(kind, n).cloned()).collect()
        };
        let mut h = FNV_INIT;
        for r in &items {
            fnv(&mut h, r.name.as_bytes());
            fnv(&mut h, &r.version.to_le_bytes());
        }
        if ts.full_hash == Some(h) {
            return None;
        }
        ts.full_hash = Some(h);
        if initial.is_some_and(|v| parse_version(&v) == h) {
            // A reconnecting client that already holds exactly this set.
            ts.sent = items.iter().map(|r| (r.name.clone(), r.version)).collect();
            ts.acked_version = format!("{h:016x}");
            return None;
        }
        let changed: Vec<Arc<str>> = items
            .iter()
            .filter(|r| ts.sent.get(&r.name) != Some(&r.version))
            .map(|r| r.name.clone())
            .collect();
        ts.sent = items.iter().map(|r| (r.name.clone(), r.version)).collect();
        Some((format!("{h:016x}"), items, changed))
    } else {
        // RDS/EDS: only requested resources, and only those that changed.
        ts.sent
            .retain(|n, _| ts.names.contains(&**n) && view.get(kind, n).is_some());
        let mut h = FNV_INIT;
        let mut changed = Vec::new();
        for n in &ts.names {
            if let Some(r) = view.get(kind, n) {
                fnv(&mut h, r.name.as_bytes());
                fnv(&mut h, &r.version.to_le_bytes());
                if ts.sent.get(&r.name) != Some(&r.version) {
                    changed.push(r.clone());
                }
            }
        }
        if changed.is_empty() {
            return None;
        }
        for r in &changed {
            ts.sent.insert(r.name.clone(), r.version);
        }
        if initial.is_some_and(|v| parse_version(&v) == h) {
            // A reconnecting client whose last accepted response covered exactly these resources.
            ts.acked_version = format!("{h:016x}");
            return None;
        }
        let names = changed.iter().map(|r| r.name.clone()).collect();
        Some((format!("{h:016x}"), changed, names))
    }
}

/// Builds the responses for `kinds` (in push order). A CDS response makes the EDS of the clusters
/// it changed stale, so that Envoy gets the fresh EDS it needs to warm them.
fn sotw_respond(
    st: &mut StreamState,
    kinds: &[Kind],
    snap: &Snapshot,
    metrics: &Metrics,
    is_push: bool,
    incremental: bool,
) -> Vec<Out> {
    let parts = ViewParts::of(st);
    let view = View::new(snap, &parts);
    let mut out = Vec::new();
    let mut kinds: Vec<Kind> = kinds.to_vec();
    kinds.sort();
    kinds.dedup();
    let mut cds_changed = false;
    let mut i = 0;
    while i < kinds.len() {
        let kind = kinds[i];
        i += 1;
        if !st.types[kind as usize].seen {
            continue;
        }
        if incremental && !(kind == Kind::Endpoint && cds_changed) {
            // Nothing this client holds or wants changed: skip the full diff.
            let ts = &st.types[kind as usize];
            let touched = snap.changed[kind as usize]
                .iter()
                .any(|n| ts.sent.contains_key(&**n) || wanted(ts, kind, &view, n).is_some());
            if !touched {
                continue;
            }
        }
        let Some((version, items, changed)) = sotw_compute(&mut st.types[kind as usize], kind, &view) else {
            continue;
        };
        if kind == Kind::Cluster && !changed.is_empty() {
            cds_changed = true;
            let eds = &mut st.types[Kind::Endpoint as usize];
            for n in &changed {
                eds.sent.remove(n);
            }
            if !kinds.contains(&Kind::Endpoint) {
                kinds.insert(i, Kind::Endpoint);
            }
        }
        record_sent(metrics, kind, &items, snap, is_push);
        // LDS/CDS must be one message (the full set); RDS/EDS may be split, which keeps each message
        // under the 4 MiB default receive limit of gRPC clients.
        let chunks = if kind.is_full_state() {
            vec![items]
        } else {
            chunk(items)
        };
        st.types[kind as usize].nonces.clear();
        let n = chunks.len();
        for (i, part) in chunks.into_iter().enumerate() {
            let nonce = st.next_nonce();
            let ts = &mut st.types[kind as usize];
            ts.nonces.push(nonce.clone());
            ts.responded = true;
            ts.last_sent_version = version.clone();
            // Only the last chunk carries the version of the whole: a client whose stream broke
            // after some chunks reconnects with a partial version, which matches nothing, so it
            // is sent everything again instead of nothing.
            let version = if i + 1 < n {
                format!("{version}.{}of{n}", i + 1)
            } else {
                version.clone()
            };
            out.push(Out {
                kind,
                nonce,
                version,
                items: part,
                removed: Vec::new(),
            });
        }
    }
    out
}

/// Largest payload per response before splitting (gRPC clients default to a 4 MiB receive limit).
///
/// Also bounds the memory a push takes while it is in flight: each response is one allocation of
/// its size ([`wire`]), held from encoding until HTTP/2 has written it. (With tonic's generated
/// server the per-stream encode buffer kept its largest size for the stream's life; that is why
/// the ADS service encodes its own frames now.)
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// Splits resources into groups of at most [`MAX_RESPONSE_BYTES`] (a single larger resource goes
/// alone). Always returns at least one (possibly empty) group.
fn chunk(items: Vec<Arc<Res>>) -> Vec<Vec<Arc<Res>>> {
    let mut out = vec![Vec::new()];
    let mut size = 0;
    for r in items {
        let n = r.any.value.len() + r.name.len() + 64;
        if size + n > MAX_RESPONSE_BYTES && !out.last().is_some_and(|v| v.is_empty()) {
            out.push(Vec::new());
            size = 0;
        }
        size += n;
        if let Some(last) = out.last_mut() {
            last.push(r);
        }
    }
    out
}

/// Applies one SotW request to the stream state; returns its kind if it may need a response: the
/// first request of a type, or a changed subscription. A plain ACK or NACK never does (the snapshot
/// is unchanged, and rejected content is not resent), so it costs no diff.
fn sotw_request(st: &mut StreamState, req: DiscoveryRequest, metrics: &Metrics) -> Option<Kind> {
    st.set_node(req.node.as_ref());
    let kind = Kind::from_url(&req.type_url)?;
    let ts = &mut st.types[kind as usize];
    let label = TypeLabel { r#type: kind.short() };
    // A nonce when this stream has sent nothing of this type is one the client kept from an
    // earlier stream (a reconnect): not an ACK of anything here, but its subscription counts.
    if !req.response_nonce.is_empty() && !ts.nonces.is_empty() {
        if !ts.nonces.contains(&req.response_nonce) {
            // Stale: the client has not seen our latest response for this type yet.
            return None;
        }
        match &req.error_detail {
            Some(err) => {
                // Not resent: the same content would be rejected again. The next snapshot that
                // changes these resources gets sent as usual.
                ts.nacks += 1;
                ts.last_nack = Some(format!("version {}: {}", ts.last_sent_version, error_message(err)));
                metrics.nacks.get_or_create(&label).inc();
                let node = st.node.as_ref().map(|n| n.id.as_str()).unwrap_or("");
                if metrics.activity.nack(kind.short(), &err.message) {
                    tracing::warn!(node, r#type = kind.short(), error = %error_message(err), "NACK (further NACKs with this message are logged at debug until the next summary)");
                } else {
                    tracing::debug!(node, r#type = kind.short(), error = %error_message(err), "NACK");
                }
            }
            None => {
                ts.acks += 1;
                ts.acked_version = req.version_info.clone();
                metrics.acks.get_or_create(&label).inc();
            }
        }
    }
    let ts = &mut st.types[kind as usize];
    let (first, old_wildcard, old_count) = (!ts.seen, ts.wildcard, ts.names.len());
    let star = req.resource_names.iter().any(|n| n == "*");
    if !ts.seen {
        ts.seen = true;
        ts.wildcard = star || (kind.is_full_state() && req.resource_names.is_empty());
        if !req.version_info.is_empty() && req.response_nonce.is_empty() {
            ts.initial_version = Some(req.version_info.clone());
        }
    } else if kind.is_full_state() && !(ts.wildcard && req.resource_names.is_empty()) {
        // An empty list is a wildcard only until the client names something.
        ts.wildcard = star;
    }
    let names: BTreeSet<String> = req.resource_names.into_iter().filter(|n| n != "*").collect();
    let changed = first || ts.wildcard != old_wildcard || names.len() != old_count || names != ts.names;
    ts.names = names;
    changed.then_some(kind)
}

// ------------------------------------------------------------------------------------------------
// Delta
// ------------------------------------------------------------------------------------------------

fn delta_compute(ts: &mut TypeState, kind: Kind, view: &View<'_>) -> (Vec<Arc<Res>>, Vec<String>) {
    let mut send: Vec<Arc<Res>> = Vec::new();
    {
        let mut check = |r: &Arc<Res>| {
            if ts.sent.get(&r.name) != Some(&r.version) {
                send.push(r.clone());
            }
        };
        if ts.wildcard {
            for r in view.all(kind) {
                check(r);
            }
            for n in &ts.names {
                if !view.in_all(kind, n) {
                    if let Some(r) = view.get(kind, n) {
                        check(r);
                    }
                }
            }
        } else {
            for n in &ts.names {
                if let Some(r) = view.get(kind, n) {
                    check(r);
                }
            }
        }
    }
    let mut removed = Vec::new();
    let wildcard = ts.wildcard;
    let names = &ts.names;
    ts.sent.retain(|n, _| {
        let exists = if wildcard && !names.contains(&**n) {
            view.in_all(kind, n)
        } else {
            view.get(kind, n).is_some()
        };
        let interested = wildcard || names.contains(&**n);
        if interested && !exists {
            removed.push(n.to_string());
        }
        interested && exists
    });
    for r in &send {
        ts.sent.insert(r.name.clone(), r.version);
    }
    if kind == Kind::Cluster {
        // A cluster asked for by name (on-demand discovery) that does not exist: say so once, as
        // Envoy's on-demand CDS expects, so the client answers its waiting request at once.
        let mut missing: Vec<String> = Vec::new();
        for n in &ts.names {
            if view.get(kind, n).is_none() && !ts.sent.contains_key(n.as_str()) {
                missing.push(n.clone());
            }
        }
        ts.missing_reported.retain(|n| missing.contains(n));
        for n in missing {
            if ts.missing_reported.insert(n.clone()) && !removed.contains(&n) {
                removed.push(n);
            }
        }
    }
    (send, removed)
}

/// The resource `n` if this client should hold it: named explicitly, or covered by its wildcard.
fn wanted<'v>(ts: &TypeState, kind: Kind, view: &'v View<'_>, n: &str) -> Option<&'v Arc<Res>> {
    if ts.names.contains(n) || (ts.wildcard && view.in_all(kind, n)) {
        view.get(kind, n)
    } else {
        None
    }
}

/// Like [`delta_compute`], but only for `candidates` (the names changed since the snapshot this
/// stream is current with). Same result, a tiny fraction of the work at scale.
fn delta_compute_incremental(
    ts: &mut TypeState,
    kind: Kind,
    view: &View<'_>,
    candidates: &[Arc<str>],
) -> (Vec<Arc<Res>>, Vec<String>) {
    let mut send = Vec::new();
    let mut removed = Vec::new();
    for n in candidates {
        match wanted(ts, kind, view, n) {
            Some(r) => {
                if ts.sent.get(&**n) != Some(&r.version) {
                    send.push(r.clone());
                }
            }
            None => {
                if ts.sent.remove(&**n).is_some() {
                    removed.push(n.to_string());
                }
            }
        }
    }
    for r in &send {
        ts.sent.insert(r.name.clone(), r.version);
    }
    (send, removed)
}

/// `incremental`: the stream is current with `snap.prev_generation`, so only `snap.changed` names
/// (plus the EDS a CDS response invalidates) need a look.
fn delta_respond(
    st: &mut StreamState,
    kinds: &[Kind],
    snap: &Snapshot,
    metrics: &Metrics,
    is_push: bool,
    incremental: bool,
) -> Vec<Out> {
    let parts = ViewParts::of(st);
    let view = View::new(snap, &parts);
    let mut out = Vec::new();
    let mut kinds: Vec<Kind> = kinds.to_vec();
    kinds.sort();
    kinds.dedup();
    let mut invalidated: Vec<Arc<str>> = Vec::new();
    let mut i = 0;
    while i < kinds.len() {
        let kind = kinds[i];
        i += 1;
        let ts = &mut st.types[kind as usize];
        if !ts.seen {
            continue;
        }
        let (items, removed) = if incremental {
            if kind == Kind::Endpoint && !invalidated.is_empty() {
                let mut c: Vec<Arc<str>> = snap.changed[kind as usize].clone();
                c.append(&mut invalidated);
                c.sort();
                c.dedup();
                delta_compute_incremental(ts, kind, &view, &c)
            } else {
                delta_compute_incremental(ts, kind, &view, &snap.changed[kind as usize])
            }
        } else {
            delta_compute(ts, kind, &view)
        };
        // The first answer to a wildcard subscription is sent even when empty: the client waits for
        // it to finish initialising.
        let must_answer = !ts.responded && ts.wildcard;
        if items.is_empty() && removed.is_empty() && !must_answer {
            continue;
        }
        if kind == Kind::Cluster && !items.is_empty() {
            let eds = &mut st.types[Kind::Endpoint as usize];
            for r in &items {
                eds.sent.remove(&r.name);
                invalidated.push(r.name.clone());
            }
            if !kinds.contains(&Kind::Endpoint) {
                kinds.insert(i, Kind::Endpoint);
            }
        }
        let version = format!("{:016x}", snap.type_hash[kind as usize]);
        record_sent(metrics, kind, &items, snap, is_push);
        // Delta responses may carry any subset, so large ones are split for 4 MiB-limited clients.
        let mut removed = Some(removed);
        for part in chunk(items) {
            let nonce = st.next_nonce();
            let ts = &mut st.types[kind as usize];
            ts.responded = true;
            ts.last_sent_version = version.clone();
            ts.pending.push_back((nonce.clone(), version.clone()));
            if ts.pending.len() > 64 {
                ts.pending.pop_front();
            }
            out.push(Out {
                kind,
                nonce,
                version: version.clone(),
                items: part,
                removed: removed.take().unwrap_or_default(),
            });
        }
    }
    out
}

/// Applies one Delta request to the stream state; returns its kind if it may need a response (the
/// first request of a type, or a subscription change), not for a plain ACK or NACK.
fn delta_request(st: &mut StreamState, req: DeltaDiscoveryRequest, metrics: &Metrics) -> Option<Kind> {
    st.set_node(req.node.as_ref());
    let kind = Kind::from_url(&req.type_url)?;
    let node_id = st.node.as_ref().map(|n| n.id.clone()).unwrap_or_default();
    let ts = &mut st.types[kind as usize];
    let label = TypeLabel { r#type: kind.short() };
    if !req.response_nonce.is_empty() {
        if let Some(pos) = ts.pending.iter().position(|(n, _)| *n == req.response_nonce) {
            let (_, version) = ts.pending.drain(..=pos).next_back().unwrap_or_default();
            match &req.error_detail {
                Some(err) => {
                    ts.nacks += 1;
                    ts.last_nack = Some(format!("version {version}: {}", error_message(err)));
                    metrics.nacks.get_or_create(&label).inc();
                    if metrics.activity.nack(kind.short(), &err.message) {
                        tracing::warn!(node = %node_id, r#type = kind.short(), error = %error_message(err), "NACK (further NACKs with this message are logged at debug until the next summary)");
                    } else {
                        tracing::debug!(node = %node_id, r#type = kind.short(), error = %error_message(err), "NACK");
                    }
                }
                None => {
                    ts.acks += 1;
                    ts.acked_version = version;
                    metrics.acks.get_or_create(&label).inc();
                }
            }
        }
    }
    // Delta honours subscription changes even on a stale nonce.
    let needs_response =
        !ts.seen || !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
    if !ts.seen {
        ts.seen = true;
        ts.wildcard = kind.is_full_state() && req.resource_names_subscribe.is_empty();
        for (name, v) in req.initial_resource_versions {
            ts.sent.insert(name.into(), parse_version(&v));
        }
    }
    for n in req.resource_names_subscribe {
        if n == "*" {
            ts.wildcard = true;
        } else {
            ts.names.insert(n);
        }
    }
    for n in req.resource_names_unsubscribe {
        if n == "*" {
            ts.wildcard = false;
        } else {
            // Unsubscribed resources are forgotten, not reported removed: the client dropped them.
            ts.sent.remove(n.as_str());
            ts.names.remove(&n);
        }
    }
    needs_response.then_some(kind)
}

/// How long a proxy may leave a response unread before its stream is closed: a stalled proxy must
/// not keep its task (and its place in `/debug/proxies`) forever. It reconnects and resyncs.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// A proxy authenticated as `spiffe://<td>/ns/<ns>/sa/<sa>` may only ask for the configuration
/// of its own service: its node's `cluster` must be `<sa>` or `<sa>.<ns>`, or a service whose
/// servers the registry says have that identity (its `identities`, else its endpoints'
/// `security.weft.dev/identity` labels: in Kubernetes, a pod's service account need not be named
/// after its service). What it declares of itself (metadata `NAMESPACE`, `weft.identity`) must
/// agree with its certificate. A proxy then receives only what is meant for its service.
fn node_matches_identity(
    node: &NodeInfo,
    id: &weft_identity::spiffe::SpiffeId,
    world: Option<&crate::model::World>,
) -> Result<(), String> {
    let (ns, sa) = (id.namespace(), id.service_account());
    let served_by_it = || {
        world
            .and_then(|w| w.services.get(&node.cluster))
            .is_some_and(|svc| svc.server_identities().contains(&id.to_string()))
    };
    if node.cluster != sa && node.cluster != format!("{sa}.{ns}") && !served_by_it() {
        return Err(format!(
            "node.cluster \"{}\" is not the service of the certificate's identity {id} (expected \"{sa}\", \"{sa}.{ns}\", or a service whose endpoints have that identity)",
            node.cluster
        ));
    }
    if !node.namespace.is_empty() && node.namespace != ns {
        return Err(format!(
            "node metadata NAMESPACE \"{}\" differs from the certificate's namespace \"{ns}\"",
            node.namespace
        ));
    }
    if let Some(declared) = node.identity.as_deref().filter(|d| *d != id.to_string()) {
        return Err(format!(
            "node metadata weft.identity \"{declared}\" differs from the certificate's identity {id}"
        ));
    }
    Ok(())
}

/// One ADS stream, SotW or Delta: requests and snapshot changes in, responses out. `request`
/// applies a request to the stream state, `respond` diffs, `encode` makes the wire message;
/// `status` ends the stream with an error (a node refused).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
async fn run_stream<Req>(
    shared: Arc<Shared>,
    entry: Arc<ProxyEntry>,
    mut inbound: Streaming<Req>,
    tx: mpsc::Sender<Bytes>,
    status: Arc<std::sync::OnceLock<Status>>,
    request: fn(&mut StreamState, Req, &Metrics) -> Option<Kind>,
    respond: fn(&mut StreamState, &[Kind], &Snapshot, &Metrics, bool, bool) -> Vec<Out>,
    encode: fn(Out) -> Bytes,
) {
    let mut snaps = shared.snapshots.clone();
    let mut shutdown = shared.shutdown.clone();
    let mut current: Option<Arc<Snapshot>> = snaps.borrow_and_update().clone();
    if let Some(s) = &current {
        entry.state.lock().unwrap_or_else(|p| p.into_inner()).generation = s.generation;
    }
    loop {
        let responses = tokio::select! {
            msg = inbound.message() => {
                let req = match msg {
                    Ok(Some(r)) => r,
                    _ => return,
                };
                let mut st = entry.state.lock().unwrap_or_else(|p| p.into_inner());
                let kind = request(&mut st, req, &shared.metrics);
                if let (Some(id), Some(node), false) = (&entry.identity, &st.node, st.node_checked) {
                    if let Err(why) = node_matches_identity(node, id, current.as_ref().map(|c| &*c.world)) {
                        tracing::warn!(node = %node.id, cluster = %node.cluster, identity = %id, peer = ?entry.peer, "ADS stream refused: {why}");
                        shared.metrics.streams_refused.inc();
                        let _ = status.set(Status::permission_denied(why));
                        return;
                    }
                    st.node_checked = true;
                }
                match (kind, &current) {
                    (Some(kind), Some(snap)) => {
                        // A cluster asked for by name widens a scoped proxy's view: send it the
                        // service's endpoints and virtual host too. (The scope first: the node's
                        // outbound Dubbo routes follow it.)
                        let widened = st.refresh_scope(snap);
                        st.refresh_node(snap);
                        if widened {
                            respond(&mut st, &Kind::ALL, snap, &shared.metrics, false, false)
                        } else {
                            respond(&mut st, &[kind], snap, &shared.metrics, false, false)
                        }
                    }
                    _ => Vec::new(),
                }
            }
            r = snaps.changed() => {
                if r.is_err() {
                    return;
                }
                current = snaps.borrow_and_update().clone();
                let Some(snap) = &current else { continue };
                let mut st = entry.state.lock().unwrap_or_else(|p| p.into_inner());
                // The watch channel coalesces: if snapshots were skipped, diff in full.
                // Rebuilt node resources are not in `snap.changed`: diff in full then too.
                let rebuilt = st.refresh_scope(snap) | st.refresh_node(snap);
                let incremental = !rebuilt && st.generation != 0 && snap.prev_generation == st.generation;
                st.generation = snap.generation;
                respond(&mut st, &Kind::ALL, snap, &shared.metrics, true, incremental)
            }
            _ = shutdown.changed() => return,
        };
        for r in responses {
            tokio::select! {
                sent = tokio::time::timeout(SEND_TIMEOUT, tx.send(encode(r))) => match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::warn!(stream = entry.stream_id, "proxy read nothing for {SEND_TIMEOUT:?}; closing its stream");
                        return;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// gRPC service
// ------------------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct Ads {
    pub shared: Arc<Shared>,
}

/// Removes the stream from the registry of proxies when its task ends, however it ends.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
    kind: &'static str,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let removed = self
            .shared
            .proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if let Some(e) = removed {
            let st = e.state.lock().unwrap_or_else(|p| p.into_inner());
            let node = st.node.as_ref().map(|n| n.id.as_str()).unwrap_or("");
            tracing::debug!(stream = self.id, kind = self.kind, node, "ADS stream closed");
        }
        self.shared
            .metrics
            .activity
            .streams_closed
            .fetch_add(1, Ordering::Relaxed);
        self.shared
            .metrics
            .connected
            .get_or_create(&StreamLabel { kind: self.kind })
            .dec();
    }
}

impl Ads {
    fn register(
        &self,
        kind: &'static str,
        peer: Option<std::net::SocketAddr>,
        identity: Option<weft_identity::spiffe::SpiffeId>,
    ) -> (Arc<ProxyEntry>, Registration) {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ProxyEntry {
            stream_id: id,
            kind,
            connected_at: SystemTime::now(),
            peer,
            identity,
            state: Mutex::new(StreamState::new(self.shared.scoping)),
        });
        self.shared
            .proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry.clone());
        let label = StreamLabel { kind };
        self.shared.metrics.connected.get_or_create(&label).inc();
        self.shared.metrics.streams_total.get_or_create(&label).inc();
        self.shared
            .metrics
            .activity
            .streams_opened
            .fetch_add(1, Ordering::Relaxed);
        let reg = Registration {
            shared: self.shared.clone(),
            id,
            kind,
        };
        (entry, reg)
    }
}

// One queued response per stream: backpressure from a slow proxy stops its own task, never the
// others, and at most one built response per proxy waits in memory.
const STREAM_QUEUE: usize = 1;

fn wire_items(items: &[Arc<Res>]) -> Vec<wire::Item<'_>> {
    items
        .iter()
        .map(|r| wire::Item {
            name: &r.name,
            version: r.version,
            type_url: &r.any.type_url,
            value: &r.any.value,
        })
        .collect()
}

fn sotw_frame(o: Out) -> Bytes {
    wire::sotw_frame(&o.version, o.kind.url(), &o.nonce, &wire_items(&o.items))
}

fn delta_frame(o: Out) -> Bytes {
    wire::delta_frame(&o.version, o.kind.url(), &o.nonce, &wire_items(&o.items), &o.removed)
}

impl Ads {
    /// Starts the stream's task and answers with its response body.
    fn open(&self, method: wire::Method, req: http::Request<tonic::body::Body>) -> http::Response<tonic::body::Body> {
        let ext = req.extensions();
        let (peer, identity) = match ext.get::<crate::ca::tls::MeshConnectInfo>() {
            // The secure port: a stream needs the proxy's certificate.
            Some(i) => match &i.peer {
                Some(id) => (i.tcp.remote_addr(), Some(id.clone())),
                None => {
                    tracing::warn!(peer = ?i.tcp.remote_addr(), "ADS over TLS refused: no client certificate");
                    self.shared.metrics.streams_refused.inc();
                    return wire::error(Status::unauthenticated(
                        "ADS over TLS needs a client certificate from the mesh CA (the proxy's workload certificate)",
                    ));
                }
            },
            None => (
                ext.get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(|i| i.remote_addr()),
                None,
            ),
        };
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let status = Arc::new(std::sync::OnceLock::new());
        let shared = self.shared.clone();
        let body = req.into_body();
        let st = status.clone();
        match method {
            wire::Method::Sotw => {
                let (entry, reg) = self.register("sotw", peer, identity);
                let requests = wire::requests::<DiscoveryRequest>(body);
                tokio::spawn(async move {
                    let _reg = reg;
                    run_stream(shared, entry, requests, tx, st, sotw_request, sotw_respond, sotw_frame).await;
                });
            }
            wire::Method::Delta => {
                let (entry, reg) = self.register("delta", peer, identity);
                let requests = wire::requests::<DeltaDiscoveryRequest>(body);
                tokio::spawn(async move {
                    let _reg = reg;
                    run_stream(
                        shared,
                        entry,
                        requests,
                        tx,
                        st,
                        delta_request,
                        delta_respond,
                        delta_frame,
                    )
                    .await;
                });
            }
        }
        wire::response(rx, status)
    }
}

impl tonic::server::NamedService for Ads {
    const NAME: &'static str = wire::SERVICE;
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Ads {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let res = match wire::Method::of_path(req.uri().path()) {
            Some(m) => self.open(m, req),
            None => wire::error(Status::unimplemented(format!("no such method: {}", req.uri().path()))),
        };
        std::future::ready(Ok(res))
    }
}

/// Per connected proxy: has it ACKed everything it was sent from snapshot `generation` or later
/// (`acked`), and if not, why (for [`crate::drain`]). A stream at an older generation has not
/// processed that snapshot yet; a stream with a response not yet ACKed (or NACKed) has not applied it.
pub fn ack_progress(shared: &Shared, generation: u64) -> Vec<serde_json::Value> {
    let entries: Vec<Arc<ProxyEntry>> = shared
        .proxies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    entries
        .iter()
        .map(|e| {
            let st = e.state.lock().unwrap_or_else(|p| p.into_inner());
            let unacked: Vec<&str> = Kind::ALL
                .iter()
                .filter(|k| {
                    let t = &st.types[**k as usize];
                    t.seen && (!t.pending.is_empty() || t.acked_version != t.last_sent_version)
                })
                .map(|k| k.short())
                .collect();
            let reason = if st.generation < generation {
                Some(format!("at snapshot generation {}", st.generation))
            } else if !unacked.is_empty() {
                Some(format!("has not ACKed {}", unacked.join(", ")))
            } else {
                None
            };
            serde_json::json!({
                "node_id": st.node.as_ref().map(|n| n.id.clone()).unwrap_or_default(),
                "stream_id": e.stream_id,
                "generation": st.generation,
                "acked": reason.is_none(),
                "waiting": reason,
            })
        })
        .collect()
}

/// JSON for `/debug/proxies`.
pub fn proxies_json(shared: &Shared) -> serde_json::Value {
    let entries: Vec<Arc<ProxyEntry>> = shared
        .proxies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let st = e.state.lock().unwrap_or_else(|p| p.into_inner());
            let types: serde_json::Map<String, serde_json::Value> = Kind::ALL
                .iter()
                .filter(|k| st.types[**k as usize].seen)
                .map(|k| {
                    let t = &st.types[*k as usize];
                    (
                        k.short().to_string(),
                        serde_json::json!({
                            "wildcard": t.wildcard,
                            "subscribed": t.names.len(),
                            "resources": t.sent.len(),
                            "sent_version": t.last_sent_version,
                            "acked_version": t.acked_version,
                            "acks": t.acks,
                            "nacks": t.nacks,
                            "last_nack": t.last_nack,
                        }),
                    )
                })
                .collect();
            let node = st.node.clone().unwrap_or_default();
            serde_json::json!({
                "stream_id": e.stream_id,
                "node_id": node.id,
                "cluster": node.cluster,
                "role": node.role,
                "user_agent": node.user_agent,
                "stream": e.kind,
                "peer": e.peer.map(|p| p.to_string()),
                "authenticated_identity": e.identity.as_ref().map(|i| i.to_string()),
                "connected_at_unix": e.connected_at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "generation": st.generation,
                "types": types,
            })
        })
        .collect();
    serde_json::json!({ "proxies": list })
}

/// JSON for `/debug/config/{node_id}`: the names and versions each stream of that node holds.
pub fn config_json(shared: &Shared, node_id: &str) -> Option<serde_json::Value> {
    let entries: Vec<Arc<ProxyEntry>> = shared
        .proxies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    let mut streams = Vec::new();
    for e in entries {
        let st = e.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.node.as_ref().map(|n| n.id.as_str()) != Some(node_id) {
            continue;
        }
        let mut types = serde_json::Map::new();
        for k in Kind::ALL {
            let t = &st.types[k as usize];
            if !t.seen {
                continue;
            }
            let res: BTreeMap<String, String> = t
                .sent
                .iter()
                .map(|(n, v)| (n.to_string(), format!("{v:016x}")))
                .collect();
            types.insert(
                k.short().to_string(),
                serde_json::json!({
                    "wildcard": t.wildcard,
                    "subscribed": t.names,
                    "resources": res,
                    "acked_version": t.acked_version,
                    "last_nack": t.last_nack,
                }),
            );
        }
        streams.push(serde_json::json!({
            "stream_id": e.stream_id,
            "stream": e.kind,
            "node": st.node,
            "types": types,
        }));
    }
    if streams.is_empty() {
        None
    } else {
        Some(serde_json::json!({ "node_id": node_id, "streams": streams }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{parse_fragment, World};
    use crate::translate::build_snapshot;

    fn snap(yaml: &str, prev: Option<&Snapshot>) -> Snapshot {
        let f = parse_fragment("t.yaml", yaml).unwrap();
        let (w, e) = World::build([("t.yaml", &f)].into_iter());
        assert!(e.is_empty(), "{e:?}");
        build_snapshot(prev.map_or(1, |p| p.generation + 1), Arc::new(w), prev)
    }

    fn sorted(v: (Vec<Arc<Res>>, Vec<String>)) -> (Vec<(String, u64)>, Vec<String>) {
        let mut a: Vec<(String, u64)> = v.0.iter().map(|r| (r.name.to_string(), r.version)).collect();
        let mut b = v.1;
        a.sort();
        b.sort();
        (a, b)
    }

    /// The incremental diff must give exactly what the full diff gives, for wildcard and named
    /// subscriptions, across additions, changes and removals.
    #[test]
    fn incremental_diff_equals_full_diff() {
        let s1 = snap(
            "services:\n - {name: a, endpoints: [{address: 10.0.0.1:1}]}\n - {name: b, endpoints: [{address: 10.0.0.2:1}]}\n - {name: c, endpoints: []}\n",
            None,
        );
        let s2 = snap(
            "services:\n - {name: a, endpoints: [{address: 10.0.0.1:1}]}\n - {name: b, endpoints: [{address: 10.0.0.3:1}]}\n - {name: d, endpoints: []}\n",
            Some(&s1),
        );
        assert_eq!(s2.prev_generation, s1.generation);
        let node = NodeResources::default();
        for (kind, wildcard, names) in [
            (Kind::Cluster, true, vec![]),
            (Kind::Endpoint, false, vec!["a", "b", "c", "d"]),
            (Kind::Endpoint, false, vec!["b", "c"]),
            (Kind::Route, false, vec!["outbound"]),
            (Kind::Listener, false, vec!["b", "c", "d"]),
        ] {
            let mut ts = TypeState {
                seen: true,
                wildcard,
                names: names.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            let v1 = View {
                snap: &s1,
                node: &node,
                grpc: false,
                scope: None,
                scoped_rds: None,
            };
            delta_compute(&mut ts, kind, &v1);
            let v2 = View {
                snap: &s2,
                node: &node,
                grpc: false,
                scope: None,
                scoped_rds: None,
            };
            let mut full = ts.clone();
            let mut inc = ts.clone();
            let f = sorted(delta_compute(&mut full, kind, &v2));
            let i = sorted(delta_compute_incremental(
                &mut inc,
                kind,
                &v2,
                &s2.changed[kind as usize],
            ));
            assert_eq!(f, i, "{kind:?} {names:?}");
            assert_eq!(full.sent, inc.sent, "{kind:?}");
            assert!(!f.0.is_empty() || !f.1.is_empty(), "{kind:?}: the change is visible");
        }
    }
}
