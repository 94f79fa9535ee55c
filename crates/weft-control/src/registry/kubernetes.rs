//! The Kubernetes registry: Services, EndpointSlices, Pods and Namespaces watched through the API
//! server (kube-runtime watchers: list, then watch from the list's resourceVersion with bookmarks).
//!
//! Each Service becomes one source `k8s:<namespace>/<name>` holding one weft service per Service
//! port: the first port is `<name>.<namespace>`, further ports `<name>.<namespace>.<port name or
//! number>`. Its endpoints come from the EndpointSlices labelled `kubernetes.io/service-name:
//! <name>` in the same namespace, the slice port being the one with the Service port's name:
//!
//! | EndpointSlice endpoint | weft endpoint |
//! |---|---|
//! | `addresses[0]` + the slice port | `address` |
//! | `conditions.ready` (absent = ready) | `health: healthy` |
//! | `serving && terminating` (not ready) | `health: draining` |
//! | otherwise | `health: unhealthy` |
//! | `zone` (else the first `hints.forZones`) | `locality.zone`; `nodeName` → `locality.sub_zone` |
//! | `targetRef` Pod's labels | `labels` (subsets select on them) |
//! | the Pod's `serviceAccountName` + namespace | label `security.weft.dev/identity: spiffe://TD/ns/NS/sa/SA` |
//!
//! A port named `tcp-dubbo…` or `dubbo…` (or with appProtocol `dubbo`) is a Dubbo service
//! (`protocol: dubbo`); the annotation `rpc.weft.dev/dubbo-interfaces: a.B, c.D` lists the Dubbo
//! interfaces it provides (callers' sidecars route on them).
//!
//! Mesh mTLS (with weft control's CA): a Service annotated `security.weft.dev/mtls` gets that mode;
//! otherwise one whose endpoints all lack a weft sidecar (annotation `sidecar.weft.dev/status:
//! injected` or a container named `weft-proxy`; an endpoint that is not a Pod has none) is
//! `DISABLE`, and any other takes weft control's default. Each endpoint records whether its Pod has
//! a sidecar ([`Endpoint::sidecar`]): when they are mixed, callers reach the ones without in
//! plaintext and the others with mTLS (Istio's `tlsMode` endpoint metadata and
//! `transport_socket_matches`).
//!
//! Namespaces labelled `mesh.weft.dev/discovery: "disabled"` are left out. A malformed object (a
//! Service without ports, an EndpointSlice without ports or with FQDN addresses, an endpoint whose
//! address is not an IP) is skipped with its reason ([`RegistryEvent::Skipped`]); the rest keeps
//! flowing. A watch that ends with `410 Gone` relists: the new list replaces the cache only once it
//! is complete and only the differences go out, so the mesh never goes empty in between. An
//! unreachable API server is reported as [`RegistryEvent::Health`]; the last state keeps serving.
//!
//! weft's own custom resources ([`crate::crd::KINDS`]) are watched as JSON and validated like the
//! registry file's entries; the outcome goes into each resource's `status` (the `Accepted`
//! condition, [`WeftStatus`]) through the status subresource, written only when it differs from
//! what the resource carries, by a task of its own: a failing write (RBAC, API server down) is
//! logged and retried with backoff, never holding up the mesh.

use super::{BoxFuture, Registry, RegistryEvent, SourceChange};
use crate::crd::{WeftStatus, KINDS};
use crate::istio::{DestinationRule, VirtualService};
use crate::model::{Endpoint, Fragment, Health, Locality, Protocol, Service};
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// The label the endpoint's workload identity is carried in.
pub const IDENTITY_LABEL: &str = "security.weft.dev/identity";
/// A Service annotation setting its mesh mTLS mode (STRICT, PERMISSIVE, DISABLE), like a
/// PeerAuthentication for its workloads.
pub const MTLS_ANNOTATION: &str = "security.weft.dev/mtls";
/// The Dubbo interfaces a Dubbo Service provides (comma-separated): what callers' sidecars route
/// on. Without it, a Dubbo port's weft service name is its interface.
pub const DUBBO_INTERFACES_ANNOTATION: &str = "rpc.weft.dev/dubbo-interfaces";
/// A namespace with this label set to `disabled` is not part of the mesh.
pub const DISCOVERY_LABEL: &str = "mesh.weft.dev/discovery";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the registry reads, as (API group, resource): it lists and watches each, cluster-wide,
/// and needs no other access (deploy/kubernetes/20-clusterrole.yaml grants exactly this).
pub const WATCHED: &[(&str, &str)] = &[
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("", "pods"),
    ("", "namespaces"),
    ("weft.dev", "weftroutes"),
    ("weft.dev", "weftdestinations"),
    ("weft.dev", "weftauthorizations"),
    ("networking.istio.io", "virtualservices"),
    ("networking.istio.io", "destinationrules"),
];
/// The verbs the registry's watchers use (a list, then watches).
pub const VERBS: &[&str] = &["list", "watch"];
/// The verbs it uses on the status subresource of each weft kind (`weftroutes/status`, ...).
pub const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

/// Where the API server is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeRegistry {
    /// `?api=URL`: the API server's URL, no credentials (tests, `kubectl proxy`).
    pub api: Option<String>,
    /// `?kubeconfig=PATH`; without it and without `api`: `$KUBECONFIG`, `~/.kube/config`, or the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Trust domain of the SPIFFE identities (`?trust-domain=`, default `cluster.local`).
    pub trust_domain: String,
}

/// Why a `--registry kubernetes...` value was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SpecError {
    BadOption(String),
    BadUrl(String),
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecError::BadOption(o) => write!(
                f,
                "bad option \"{o}\" (api=http(s)://HOST:PORT, kubeconfig=PATH, trust-domain=NAME)"
            ),
            SpecError::BadUrl(u) => write!(f, "api=\"{u}\" is not an http:// or https:// URL"),
        }
    }
}

impl KubeRegistry {
    /// `kubernetes[?api=URL][&kubeconfig=PATH][&trust-domain=TD]` (also `kubernetes://?...`).
    pub fn parse(spec: &str) -> Result<KubeRegistry, SpecError> {
        let query = spec
            .strip_prefix("kubernetes")
            .unwrap_or(spec)
            .trim_start_matches("://")
            .trim_start_matches('?');
        let mut r = KubeRegistry {
            trust_domain: "cluster.local".into(),
            ..Default::default()
        };
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            match kv.split_once('=') {
                Some(("api", u)) => {
                    let ok = (u.starts_with("http://") || u.starts_with("https://"))
                        && u.parse::<http::Uri>().is_ok_and(|x| x.host().is_some());
                    if !ok {
                        return Err(SpecError::BadUrl(u.to_string()));
                    }
                    r.api = Some(u.to_string());
                }
                Some(("kubeconfig", p)) if !p.is_empty() => r.kubeconfig = Some(PathBuf::from(p)),
                Some(("trust-domain", t)) if !t.is_empty() && !t.contains('/') => r.trust_domain = t.to_string(),
                _ => return Err(SpecError::BadOption(kv.to_string())),
            }
        }
        Ok(r)
    }

    /// The API client this registry uses.
    pub async fn client(&self) -> Result<Client, String> {
        let config = if let Some(api) = &self.api {
            let uri: http::Uri = api.parse().map_err(|e| format!("api={api}: {e}"))?;
            kube::Config::new(uri)
        } else if let Some(path) = &self.kubeconfig {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        } else {
            kube::Config::infer()
                .await
                .map_err(|e| format!("no kubeconfig and not in a cluster: {e}"))?
        };
        Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))
    }
}

type Key = (String, String);

fn key<K: ResourceExt>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// One resource type's cache, with the relist buffer.
struct Cache<K> {
    live: BTreeMap<Key, Arc<K>>,
    relist: Option<BTreeMap<Key, Arc<K>>>,
    synced: bool,
}

impl<K: PartialEq> Cache<K> {
    fn new() -> Self {
        Cache {
            live: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }

    /// Applies one watcher event; returns the (old, new) of every key that changed.
    #[allow(clippy::type_complexity)]
    fn apply(&mut self, ev: Event<K>) -> Vec<(Option<Arc<K>>, Option<Arc<K>>)>
    where
        K: ResourceExt,
    {
        match ev {
            Event::Init => {
                self.relist = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                let o = Arc::new(o);
                self.relist.get_or_insert_with(BTreeMap::new).insert(key(&*o), o);
                Vec::new()
            }
            Event::InitDone => {
                // The complete new list replaces the cache only now: no empty mesh in between.
                let fresh = self.relist.take().unwrap_or_default();
                let mut out = Vec::new();
                for (k, old) in &self.live {
                    match fresh.get(k) {
                        Some(new) if **new == **old => {}
                        new => out.push((Some(old.clone()), new.cloned())),
                    }
                }
                for (k, new) in &fresh {
                    if !self.live.contains_key(k) {
                        out.push((None, Some(new.clone())));
                    }
                }
                self.live = fresh;
                self.synced = true;
                out
            }
            Event::Apply(o) => {
                let o = Arc::new(o);
                let old = self.live.insert(key(&*o), o.clone());
                vec![(old, Some(o))]
            }
            Event::Delete(o) => {
                let old = self.live.remove(&key(&o));
                vec![(old.or_else(|| Some(Arc::new(o))), None)]
            }
        }
    }
}

/// What the registry knows; builds fragments.
pub struct KubeState {
    services: Cache<KService>,
    slices: Cache<EndpointSlice>,
    pods: Cache<Pod>,
    namespaces: Cache<Namespace>,
    /// weft's custom resources, one cache per [`KINDS`] entry (same index), as JSON.
    weft: Vec<Cache<DynamicObject>>,
    /// Istio's VirtualServices and DestinationRules (`networking.istio.io/v1`).
    virtual_services: Cache<VirtualService>,
    destination_rules: Cache<DestinationRule>,
    /// Custom resources changed since the last batch: (kind, key).
    cr_dirty: BTreeSet<(&'static str, Key)>,
    /// Invalid custom resources (`WeftRoute ns/name` → why).
    cr_skipped: BTreeMap<String, String>,
    cr_published: BTreeSet<(&'static str, Key)>,
    /// The last validation outcome of each weft resource (Err: the reason, paths from `spec.`).
    cr_outcome: BTreeMap<(&'static str, Key), Result<(), String>>,
    /// weft resources whose status may need writing: ([`KINDS`] index, key).
    status_check: BTreeSet<(usize, Key)>,
    trust_domain: String,
    /// The skipped objects of each Service (`Service ns/name`, `EndpointSlice ns/name` → why).
    skipped: BTreeMap<Key, BTreeMap<String, String>>,
    /// Services whose source is currently published.
    published: BTreeSet<Key>,
}

enum Msg {
    Service(Box<Event<KService>>),
    Slice(Event<EndpointSlice>),
    /// Pods and Services boxed: they are several times the size of the others.
    Pod(Box<Event<Pod>>),
    Namespace(Event<Namespace>),
    /// A weft custom resource: ([`KINDS`] index, event).
    Weft(usize, Box<Event<DynamicObject>>),
    VirtualService(Box<Event<VirtualService>>),
    DestinationRule(Box<Event<DestinationRule>>),
    /// The API server does not serve this kind (404: Istio's CRDs not installed) or does not let
    /// weft read it (403: an older ClusterRole): nothing of it. (kind, HTTP status)
    Absent(&'static str, u16),
}

/// Whether a Pod runs a weft sidecar (it was injected, or carries the container).
fn has_sidecar(pod: &Pod) -> bool {
    pod.annotations()
        .get(crate::injector::STATUS_ANNOTATION)
        .is_some_and(|v| v == "injected")
        || pod
            .spec
            .as_ref()
            .is_some_and(|s| s.containers.iter().any(|c| c.name == "weft-proxy"))
}

fn source_of(k: &Key) -> String {
    format!("k8s:{}/{}", k.0, k.1)
}

fn protocol_of(port: &k8s_openapi::api::core::v1::ServicePort) -> Protocol {
    let by_app = port.app_protocol.as_deref().map(|p| p.to_ascii_lowercase());
    let hint = by_app.or_else(|| port.name.as_deref().map(|n| n.to_ascii_lowercase()));
    match hint.as_deref() {
        // Aeraki's and Istio's conventions: port name `tcp-dubbo[-…]`, or appProtocol `dubbo`.
        Some(p) if p.starts_with("dubbo") || p.starts_with("tcp-dubbo") => Protocol::Dubbo,
        Some(p) if p.starts_with("grpc") || p.starts_with("http2") || p == "kubernetes.io/h2c" => Protocol::Grpc,
        Some(p)
            if p.starts_with("tcp") || p.starts_with("mongo") || p.starts_with("mysql") || p.starts_with("redis") =>
        {
            Protocol::Tcp
        }
        _ => Protocol::Http,
    }
}

impl KubeState {
    pub fn new(trust_domain: &str) -> KubeState {
        KubeState {
            services: Cache::new(),
            slices: Cache::new(),
            pods: Cache::new(),
            namespaces: Cache::new(),
            weft: KINDS.iter().map(|_| Cache::new()).collect(),
            virtual_services: Cache::new(),
            destination_rules: Cache::new(),
            cr_dirty: BTreeSet::new(),
            cr_skipped: BTreeMap::new(),
            cr_published: BTreeSet::new(),
            cr_outcome: BTreeMap::new(),
            status_check: BTreeSet::new(),
            trust_domain: trust_domain.to_string(),
            skipped: BTreeMap::new(),
            published: BTreeSet::new(),
        }
    }

    fn synced(&self) -> bool {
        self.services.synced
            && self.slices.synced
            && self.pods.synced
            && self.namespaces.synced
            && self.weft.iter().all(|c| c.synced)
            && self.virtual_services.synced
            && self.destination_rules.synced
    }

    fn slice_service(s: &EndpointSlice) -> Option<Key> {
        let name = s.labels().get(SERVICE_NAME_LABEL)?;
        Some((s.namespace().unwrap_or_default(), name.clone()))
    }

    /// Services affected by one event.
    fn apply(&mut self, msg: Msg, dirty: &mut BTreeSet<Key>) {
        match msg {
            Msg::Service(ev) => {
                let changes = self.services.apply(*ev);
                if !changes.is_empty() {
                    // VirtualServices name Service ports.
                    self.all_virtual_services_dirty();
                }
                for (old, new) in changes {
                    dirty.extend(old.iter().chain(new.iter()).map(|s| key(&**s)));
                }
            }
            Msg::Slice(ev) => {
                for (old, new) in self.slices.apply(ev) {
                    dirty.extend(old.iter().chain(new.iter()).filter_map(|s| Self::slice_service(s)));
                }
            }
            Msg::Pod(ev) => {
                for (old, new) in self.pods.apply(*ev) {
                    for p in old.iter().chain(new.iter()) {
                        let (ns, name) = key(&**p);
                        // The services whose slices name this pod.
                        for s in self.slices.live.range((ns.clone(), String::new())..) {
                            if s.0 .0 != ns {
                                break;
                            }
                            let names_it = s.1.endpoints.iter().flatten().any(|e| {
                                e.target_ref.as_ref().is_some_and(|t| {
                                    t.kind.as_deref() == Some("Pod") && t.name.as_deref() == Some(name.as_str())
                                })
                            });
                            if names_it {
                                dirty.extend(Self::slice_service(s.1));
                            }
                        }
                    }
                }
            }
            Msg::Weft(i, ev) => {
                for (old, new) in self.weft[i].apply(*ev) {
                    let k = key(&**old.as_ref().or(new.as_ref()).expect("a change has a side"));
                    // Only a new spec is a new policy: the status the registry writes comes back
                    // as a MODIFIED event too, and must not republish anything.
                    let spec = |o: &Option<Arc<DynamicObject>>| o.as_ref().map(|o| o.data.get("spec").cloned());
                    if spec(&old) != spec(&new) {
                        self.cr_dirty.insert((KINDS[i].kind, k.clone()));
                    }
                    self.status_check.insert((i, k));
                }
            }
            Msg::VirtualService(ev) => {
                for (old, new) in self.virtual_services.apply(*ev) {
                    self.cr_dirty
                        .extend(old.iter().chain(new.iter()).map(|r| ("VirtualService", key(&**r))));
                }
            }
            Msg::DestinationRule(ev) => {
                let changes = self.destination_rules.apply(*ev);
                if !changes.is_empty() {
                    // A rule's consistent hash is set on the routes to its host.
                    self.all_virtual_services_dirty();
                }
                for (old, new) in changes {
                    self.cr_dirty
                        .extend(old.iter().chain(new.iter()).map(|r| ("DestinationRule", key(&**r))));
                }
            }
            Msg::Absent(kind, code) => {
                let weft = KINDS.iter().position(|k| k.kind == kind);
                let cache_synced = match (kind, weft) {
                    (_, Some(i)) => &mut self.weft[i].synced,
                    ("VirtualService", None) => &mut self.virtual_services.synced,
                    _ => &mut self.destination_rules.synced,
                };
                let (group, crds) = match weft {
                    Some(_) => (
                        "weft.dev",
                        "weft's CRDs are not installed: kubectl apply -f deploy/kubernetes/crds/",
                    ),
                    None => ("networking.istio.io", "Istio's CRDs are not installed"),
                };
                if !*cache_synced && code == 403 {
                    tracing::warn!(kind, "kubernetes registry: not allowed to list {kind} (grant list/watch on {group}, deploy/kubernetes/20-clusterrole.yaml); none read");
                } else if !*cache_synced {
                    tracing::warn!(
                        kind,
                        "kubernetes registry: the API server does not serve {kind} ({crds}); none read"
                    );
                }
                *cache_synced = true;
            }
            Msg::Namespace(ev) => {
                for (old, new) in self.namespaces.apply(ev) {
                    for n in old.iter().chain(new.iter()) {
                        let ns = n.name_any();
                        dirty.extend(
                            self.services
                                .live
                                .range((ns.clone(), String::new())..)
                                .take_while(|(k, _)| k.0 == ns)
                                .map(|(k, _)| k.clone()),
                        );
                    }
                }
            }
        }
    }

    fn all_virtual_services_dirty(&mut self) {
        self.cr_dirty
            .extend(self.virtual_services.live.keys().map(|k| ("VirtualService", k.clone())));
    }

    fn namespace_enabled(&self, ns: &str) -> bool {
        let n = self.namespaces.live.get(&(String::new(), ns.to_string()));
        n.is_none_or(|n| n.labels().get(DISCOVERY_LABEL).is_none_or(|v| v != "disabled"))
    }

    /// The change for one Service and its skipped objects.
    pub fn build(&self, k: &Key) -> (SourceChange, BTreeMap<String, String>) {
        let source = source_of(k);
        let mut skipped = BTreeMap::new();
        let Some(svc) = self.services.live.get(k) else {
            return (SourceChange::Remove { source }, skipped);
        };
        if !self.namespace_enabled(&k.0) {
            return (SourceChange::Remove { source }, skipped);
        }
        let what = format!("Service {}/{}", k.0, k.1);
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            skipped.insert(
                what,
                "type ExternalName has no endpoints (a DNS alias): not served".into(),
            );
            return (SourceChange::Remove { source }, skipped);
        }
        let ports = spec.ports.unwrap_or_default();
        if ports.is_empty() {
            skipped.insert(what, "spec.ports is empty: a Service needs at least one port".into());
            return (SourceChange::Remove { source }, skipped);
        }
        // The slices of this service.
        let slices: Vec<&Arc<EndpointSlice>> = self
            .slices
            .live
            .range((k.0.clone(), String::new())..)
            .take_while(|(sk, _)| sk.0 == k.0)
            .filter(|(_, s)| Self::slice_service(s).as_ref() == Some(k))
            .map(|(_, s)| s)
            .collect();
        let mut good_slices = Vec::new();
        for s in slices {
            let sw = format!("EndpointSlice {}/{}", k.0, s.name_any());
            if s.ports.as_ref().is_none_or(|p| p.is_empty()) {
                skipped.insert(sw, "ports is empty: no endpoint port to send traffic to".into());
                continue;
            }
            if !matches!(s.address_type.as_str(), "IPv4" | "IPv6") {
                skipped.insert(
                    sw,
                    format!("addressType {} is not served (endpoints are IP:port)", s.address_type),
                );
                continue;
            }
            good_slices.push(s);
        }
        let annotated = svc.annotations().get(MTLS_ANNOTATION).and_then(|m| {
            let v = crate::model::MtlsMode::parse(m);
            if v.is_none() {
                skipped.insert(
                    format!("{what} annotation {MTLS_ANNOTATION}"),
                    format!("unknown mode \"{m}\" (STRICT, PERMISSIVE, DISABLE): weft control's default applies"),
                );
            }
            v
        });
        let mut interfaces: Vec<String> = svc
            .annotations()
            .get(DUBBO_INTERFACES_ANNOTATION)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|i| !i.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        interfaces.sort();
        interfaces.dedup();
        let mut services = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let pw = format!("{what} port {}", p.name.clone().unwrap_or_else(|| p.port.to_string()));
            if p.protocol.as_deref().is_some_and(|pr| pr != "TCP") {
                skipped.insert(
                    pw,
                    format!(
                        "protocol {} is not served (TCP only)",
                        p.protocol.as_deref().unwrap_or("")
                    ),
                );
                continue;
            }
            let Ok(port) = u16::try_from(p.port) else {
                skipped.insert(pw, format!("port {} is not 1..65535", p.port));
                continue;
            };
            if port == 0 {
                skipped.insert(pw, "port 0 is not 1..65535".into());
                continue;
            }
            let name = if i == 0 {
                format!("{}.{}", k.1, k.0)
            } else {
                format!(
                    "{}.{}.{}",
                    k.1,
                    k.0,
                    p.name.clone().unwrap_or_else(|| p.port.to_string())
                )
            };
            let mut endpoints: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
            let mut any_meshed = false;
            for s in &good_slices {
                let sw = format!("EndpointSlice {}/{}", k.0, s.name_any());
                let want = p.name.as_deref().unwrap_or("");
                let Some(sp) = s
                    .ports
                    .iter()
                    .flatten()
                    .find(|sp| sp.name.as_deref().unwrap_or("") == want)
                else {
                    continue;
                };
                let Some(ep_port) = sp.port.and_then(|x| u16::try_from(x).ok()).filter(|x| *x != 0) else {
                    skipped.insert(sw.clone(), format!("port \"{want}\" has no port number in 1..65535"));
                    continue;
                };
                for (j, e) in s.endpoints.iter().flatten().enumerate() {
                    let Some(a) = e.addresses.first() else {
                        skipped.insert(format!("{sw} endpoints[{j}]"), "no addresses".into());
                        continue;
                    };
                    let Ok(ip) = a.parse::<IpAddr>() else {
                        skipped.insert(
                            format!("{sw} endpoints[{j}]"),
                            format!("address \"{a}\" is not an IP address"),
                        );
                        continue;
                    };
                    let c = e.conditions.clone().unwrap_or_default();
                    let ready = c.ready.unwrap_or(true);
                    let serving = c.serving.unwrap_or(ready);
                    let terminating = c.terminating.unwrap_or(false);
                    let health = if ready {
                        Health::Healthy
                    } else if serving && terminating {
                        Health::Draining
                    } else {
                        Health::Unhealthy
                    };
                    let zone = e.zone.clone().or_else(|| {
                        e.hints
                            .as_ref()
                            .and_then(|h| h.for_zones.as_ref())
                            .and_then(|z| z.first())
                            .map(|z| z.name.clone())
                    });
                    let mut labels = BTreeMap::new();
                    let mut meshed = false;
                    if let Some(t) = &e.target_ref {
                        if t.kind.as_deref() == Some("Pod") {
                            let pk = (
                                t.namespace.clone().unwrap_or_else(|| k.0.clone()),
                                t.name.clone().unwrap_or_default(),
                            );
                            if let Some(pod) = self.pods.live.get(&pk) {
                                meshed = has_sidecar(pod);
                                labels.extend(pod.labels().iter().map(|(a, b)| (a.clone(), b.clone())));
                                let sa = pod
                                    .spec
                                    .as_ref()
                                    .and_then(|s| s.service_account_name.clone())
                                    .unwrap_or_else(|| "default".into());
                                labels.insert(
                                    IDENTITY_LABEL.into(),
                                    format!("spiffe://{}/ns/{}/sa/{sa}", self.trust_domain, pk.0),
                                );
                            }
                        }
                    }
                    any_meshed |= meshed;
                    let address = SocketAddr::new(ip, ep_port);
                    let ep = Endpoint {
                        address,
                        weight: 1,
                        labels,
                        locality: Locality {
                            region: String::new(),
                            zone: zone.unwrap_or_default(),
                            sub_zone: e.node_name.clone().unwrap_or_default(),
                        },
                        priority: 0,
                        health,
                        sidecar: meshed,
                    };
                    // The same address in two slices (a slice being split): the healthier wins.
                    let rank = |h: Health| match h {
                        Health::Healthy => 0,
                        Health::Draining => 1,
                        Health::Unhealthy => 2,
                    };
                    match endpoints.get(&address) {
                        Some(prev) if rank(prev.health) <= rank(ep.health) => {}
                        _ => {
                            endpoints.insert(address, ep);
                        }
                    }
                }
            }
            let no_sidecar = !any_meshed && !endpoints.is_empty();
            services.push(Arc::new(Service {
                name,
                port: Some(port),
                protocol: protocol_of(p),
                // Sorted by address (the BTreeMap): identical content gives identical versions.
                endpoints: endpoints.into_values().collect(),
                dependencies: None,
                // No endpoint with a sidecar: nobody answers mTLS. Mixed endpoints keep the mode:
                // callers reach those without a sidecar in plaintext (`Endpoint::sidecar`).
                mtls: annotated.or(no_sidecar.then_some(crate::model::MtlsMode::Disable)),
                identities: Vec::new(),
                interfaces: if protocol_of(p) == Protocol::Dubbo {
                    interfaces.clone()
                } else {
                    Vec::new()
                },
            }));
        }
        if services.is_empty() {
            return (SourceChange::Remove { source }, skipped);
        }
        let fragment = Fragment {
            services,
            ..Default::default()
        };
        (SourceChange::Upsert { source, fragment }, skipped)
    }

    /// The change for one custom resource (valid: its policy; invalid or gone: none).
    fn build_cr(&mut self, kind: &'static str, k: &Key) -> Option<SourceChange> {
        let what = format!("{kind} {}/{}", k.0, k.1);
        let source = format!("k8s:{}/{}/{}", kind.to_ascii_lowercase(), k.0, k.1);
        // Istio resources: partly served, with the parts weft cannot honour skipped.
        self.cr_skipped
            .retain(|s, _| !(s == &what || s.starts_with(&format!("{what} "))));
        let mut parts = BTreeMap::new();
        let weft = KINDS.iter().position(|w| w.kind == kind);
        let built = match kind {
            _ if weft.is_some() => {
                let i = weft.unwrap_or_default();
                self.status_check.insert((i, k.clone()));
                self.weft[i].live.get(k).map(|o| {
                    let spec = o.data.get("spec").unwrap_or(&serde_json::Value::Null);
                    KINDS[i]
                        .spec_of(&k.0, &k.1, spec)
                        .map_err(|e| format!("{what}: {e}"))
                        .and_then(|spec| crate::crd::validate(&what, KINDS[i].section, &spec))
                })
            }
            "VirtualService" => self.virtual_services.live.get(k).map(|v| {
                let (f, skipped) = crate::istio::virtual_service(&*self, &what, &k.0, &v.spec);
                parts = skipped;
                f.ok_or_else(String::new)
            }),
            _ => self.destination_rules.live.get(k).map(|d| {
                let (f, skipped) = crate::istio::destination_rule(&what, &k.0, &d.spec);
                parts = skipped;
                f.ok_or_else(String::new)
            }),
        };
        let built = built.filter(|_| self.namespace_enabled(&k.0));
        if built.is_some() {
            self.cr_skipped.extend(parts);
        }
        if weft.is_some() {
            let prefix = format!("{what}: ");
            match &built {
                Some(Ok(_)) => {
                    self.cr_outcome.insert((kind, k.clone()), Ok(()));
                }
                Some(Err(why)) => {
                    // The status says it of this resource: no `WeftRoute ns/name: ` before each error.
                    let why = why
                        .split("; ")
                        .map(|e| e.strip_prefix(&prefix).unwrap_or(e))
                        .collect::<Vec<_>>()
                        .join("; ");
                    self.cr_outcome.insert((kind, k.clone()), Err(why));
                }
                None => {
                    self.cr_outcome.remove(&(kind, k.clone()));
                }
            }
        }
        let published = self.cr_published.contains(&(kind, k.clone()));
        match built {
            Some(Ok(fragment)) => {
                self.cr_skipped.remove(&what);
                self.cr_published.insert((kind, k.clone()));
                Some(SourceChange::Upsert { source, fragment })
            }
            other => {
                if let Some(Err(why)) = other.filter(|_| self.namespace_enabled(&k.0)) {
                    if !why.is_empty() {
                        self.cr_skipped.insert(what.clone(), why);
                    }
                } else {
                    self.cr_skipped
                        .retain(|s, _| !(s == &what || s.starts_with(&format!("{what} "))));
                }
                self.cr_published.remove(&(kind, k.clone()));
                published.then_some(SourceChange::Remove { source })
            }
        }
    }

    /// Changes for the dirty services, updating what is published and skipped.
    fn changes(&mut self, dirty: BTreeSet<Key>) -> Vec<SourceChange> {
        let mut out = Vec::new();
        for (kind, k) in std::mem::take(&mut self.cr_dirty) {
            out.extend(self.build_cr(kind, &k));
        }
        for k in dirty {
            let (change, skipped) = self.build(&k);
            if skipped.is_empty() {
                self.skipped.remove(&k);
            } else {
                self.skipped.insert(k.clone(), skipped);
            }
            match change {
                SourceChange::Remove { .. } if !self.published.remove(&k) => {}
                c @ SourceChange::Remove { .. } => out.push(c),
                c => {
                    self.published.insert(k);
                    out.push(c);
                }
            }
        }
        out
    }

    /// The status writes the checked weft resources need: those whose validated outcome differs
    /// from the status they carry.
    fn status_writes(&mut self) -> Vec<StatusWrite> {
        let mut out = Vec::new();
        for (i, k) in std::mem::take(&mut self.status_check) {
            let Some(obj) = self.weft[i].live.get(&k) else { continue };
            let Some(outcome) = self.cr_outcome.get(&(KINDS[i].kind, k.clone())) else {
                continue;
            };
            let carries: Option<WeftStatus> = obj
                .data
                .get("status")
                .and_then(|s| serde_json::from_value(s.clone()).ok());
            let want = WeftStatus::after_validation(
                carries.as_ref(),
                obj.metadata.generation,
                outcome.as_ref().map(|_| ()).map_err(String::as_str),
                now_rfc3339,
            );
            // Written only when the verdict differs (generation, status, reason): two replicas of
            // different versions, wording a message differently, do not rewrite each other's.
            let verdict = |s: &WeftStatus| {
                let c: Vec<_> = s
                    .conditions
                    .iter()
                    .map(|c| {
                        (
                            c.type_.clone(),
                            c.status.clone(),
                            c.reason.clone(),
                            c.observed_generation,
                        )
                    })
                    .collect();
                (s.observed_generation, c)
            };
            if carries.as_ref().map(verdict) != Some(verdict(&want)) {
                out.push(StatusWrite {
                    kind: i,
                    namespace: k.0.clone(),
                    name: k.1.clone(),
                    status: want,
                });
            }
        }
        out
    }

    fn all_skipped(&self) -> BTreeMap<String, String> {
        self.skipped
            .values()
            .flat_map(|m| m.iter())
            .chain(self.cr_skipped.iter())
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect()
    }

    /// Every Service key any cache refers to.
    fn all_keys(&self) -> BTreeSet<Key> {
        let mut keys: BTreeSet<Key> = self.services.live.keys().cloned().collect();
        keys.extend(self.slices.live.values().filter_map(|s| Self::slice_service(s)));
        keys.extend(self.published.iter().cloned());
        keys
    }
}

impl crate::istio::Lookup for KubeState {
    fn service_for_port(&self, namespace: &str, name: &str, port: u32) -> Option<String> {
        let svc = self.services.live.get(&(namespace.to_string(), name.to_string()))?;
        let ports = svc.spec.as_ref()?.ports.as_ref()?;
        let i = ports.iter().position(|p| u32::try_from(p.port).ok() == Some(port))?;
        Some(if i == 0 {
            format!("{name}.{namespace}")
        } else {
            let p = &ports[i];
            format!(
                "{name}.{namespace}.{}",
                p.name.clone().unwrap_or_else(|| p.port.to_string())
            )
        })
    }

    fn hash_for(&self, service: &str) -> Option<serde_json::Value> {
        self.destination_rules.live.iter().find_map(|((ns, _), d)| {
            let host = d.spec.raw.get("host")?.as_str()?;
            let (hns, hname) = crate::istio::resolve_host(host, ns).ok()?;
            (format!("{hname}.{hns}") == service)
                .then(|| crate::istio::destination_rule_hash(&d.spec))
                .flatten()
        })
    }
}

/// Builds every Service's change from a set of API objects (Services, EndpointSlices, Pods,
/// Namespaces as JSON with `kind`; others and undecodable ones are ignored): what the registry
/// would publish for them, and the skipped objects with their reasons. For the fuzz target and
/// tests.
pub fn changes_for_objects(
    objects: &[serde_json::Value],
    trust_domain: &str,
) -> (Vec<SourceChange>, BTreeMap<String, String>) {
    let mut st = KubeState::new(trust_domain);
    for m in [
        Msg::Service(Box::new(Event::InitDone)),
        Msg::Slice(Event::InitDone),
        Msg::Pod(Box::new(Event::InitDone)),
        Msg::Namespace(Event::InitDone),
        Msg::VirtualService(Box::new(Event::InitDone)),
        Msg::DestinationRule(Box::new(Event::InitDone)),
    ]
    .into_iter()
    .chain((0..KINDS.len()).map(|i| Msg::Weft(i, Box::new(Event::InitDone))))
    {
        st.apply(m, &mut BTreeSet::new());
    }
    let mut dirty = BTreeSet::new();
    for o in objects {
        let msg = match o["kind"].as_str() {
            Some("Service") => serde_json::from_value(o.clone())
                .ok()
                .map(|x| Msg::Service(Box::new(Event::Apply(x)))),
            Some("EndpointSlice") => serde_json::from_value(o.clone())
                .ok()
                .map(|x| Msg::Slice(Event::Apply(x))),
            Some("Pod") => serde_json::from_value(o.clone())
                .ok()
                .map(|x| Msg::Pod(Box::new(Event::Apply(x)))),
            Some("Namespace") => serde_json::from_value(o.clone())
                .ok()
                .map(|x| Msg::Namespace(Event::Apply(x))),
            Some(k) if KINDS.iter().any(|w| w.kind == k) => serde_json::from_value(o.clone()).ok().map(|x| {
                Msg::Weft(
                    KINDS.iter().position(|w| w.kind == k).unwrap_or_default(),
                    Box::new(Event::Apply(x)),
                )
            }),
            Some("VirtualService") => serde_json::from_value(o.clone())
                .ok()
                .map(|x| Msg::VirtualService(Box::new(Event::Apply(x)))),
            Some("DestinationRule") => serde_json::from_value(o.clone())
                .ok()
                .map(|x| Msg::DestinationRule(Box::new(Event::Apply(x)))),
            _ => None,
        };
        if let Some(m) = msg {
            st.apply(m, &mut dirty);
        }
    }
    let changes = st.changes(st.all_keys());
    (changes, st.all_skipped())
}

fn watch_stream<K>(client: &Client) -> futures_util::stream::BoxStream<'static, Result<Event<K>, watcher::Error>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed()
}

/// A kind the API server does not serve (404 on its list: Istio's or weft's CRDs are not
/// installed, e.g. a newer weft control before its new CRD is applied) or does not let weft read
/// (403: an older ClusterRole) is read as empty, so the rest of the mesh still syncs; its watcher
/// keeps retrying with backoff and reads it once it can.
fn absent_if_404(r: Result<Msg, watcher::Error>, kind: &'static str) -> Result<Msg, watcher::Error> {
    match r {
        Err(
            watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s)),
        ) if s.code == 404 || s.code == 403 => Ok(Msg::Absent(kind, s.code)),
        r => r,
    }
}

/// A status the registry wants written.
struct StatusWrite {
    /// [`KINDS`] index.
    kind: usize,
    namespace: String,
    name: String,
    status: WeftStatus,
}

/// Now, as Kubernetes writes times (`2026-12-05T10:00:00Z`).
fn now_rfc3339() -> String {
    let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Writes weft resources' statuses (merge patches of the status subresource), the newest wanted
/// status of each resource; a failed write is logged and retried with backoff (0.5 s doubling to
/// 30 s) until it succeeds, the resource is gone (404) or a newer status replaces it. Ends when
/// the registry drops its sender.
async fn write_statuses(client: Client, mut rx: mpsc::UnboundedReceiver<StatusWrite>) {
    let resources: Vec<ApiResource> = KINDS.iter().map(|k| (k.resource)()).collect();
    let mut pending: BTreeMap<(usize, String, String), WeftStatus> = BTreeMap::new();
    let min = std::time::Duration::from_millis(500);
    let mut backoff = min;
    loop {
        if pending.is_empty() {
            let Some(w) = rx.recv().await else { return };
            pending.insert((w.kind, w.namespace, w.name), w.status);
        }
        while let Ok(w) = rx.try_recv() {
            pending.insert((w.kind, w.namespace, w.name), w.status);
        }
        let mut failed = 0;
        for ((i, ns, name), status) in std::mem::take(&mut pending) {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resources[i]);
            let patch = serde_json::json!({ "status": status });
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::debug!(kind = KINDS[i].kind, namespace = %ns, name = %name, "kubernetes registry: status written");
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    failed += 1;
                    tracing::warn!(kind = KINDS[i].kind, namespace = %ns, name = %name, error = %e,
                        "kubernetes registry: writing the status failed (needs get/patch/update on {}/status, deploy/kubernetes/20-clusterrole.yaml); retrying in {backoff:?}",
                        resources[i].plural);
                    // Unless a newer one has come meanwhile.
                    pending.entry((i, ns, name)).or_insert(status);
                }
            }
        }
        if failed == 0 {
            backoff = min;
            continue;
        }
        // Wait out the backoff in full: writes that come meanwhile join the pending set, they do
        // not cut the wait short (a missing RBAC rule must not turn every event into a retry and
        // a warning).
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                w = rx.recv() => match w {
                    Some(w) => {
                        pending.insert((w.kind, w.namespace, w.name), w.status);
                    }
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
    }
}

/// True for the error a 410 Gone watch ends with (a relist follows; the server is reachable).
fn is_gone(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

impl Registry for KubeRegistry {
    fn describe(&self) -> String {
        match (&self.api, &self.kubeconfig) {
            (Some(a), _) => format!("kubernetes registry {a}"),
            (None, Some(p)) => format!("kubernetes registry (kubeconfig {})", p.display()),
            (None, None) => "kubernetes registry".into(),
        }
    }

    fn run(self: Box<Self>, events: mpsc::Sender<RegistryEvent>, mut shutdown: watch::Receiver<bool>) -> BoxFuture {
        Box::pin(async move {
            let client = loop {
                match self.client().await {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(error = %e, "kubernetes registry: no API client; retrying");
                        if events
                            .send(RegistryEvent::Health {
                                connected: false,
                                error: Some(e),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            };
            let streams: Vec<futures_util::stream::BoxStream<'static, Result<Msg, watcher::Error>>> = vec![
                watch_stream::<KService>(&client)
                    .map(|r| r.map(|e| Msg::Service(Box::new(e))))
                    .boxed(),
                watch_stream::<EndpointSlice>(&client)
                    .map(|r| r.map(Msg::Slice))
                    .boxed(),
                watch_stream::<Pod>(&client)
                    .map(|r| r.map(|e| Msg::Pod(Box::new(e))))
                    .boxed(),
                watch_stream::<Namespace>(&client)
                    .map(|r| r.map(Msg::Namespace))
                    .boxed(),
                watch_stream::<VirtualService>(&client)
                    .map(|r| absent_if_404(r.map(|e| Msg::VirtualService(Box::new(e))), "VirtualService"))
                    .boxed(),
                watch_stream::<DestinationRule>(&client)
                    .map(|r| absent_if_404(r.map(|e| Msg::DestinationRule(Box::new(e))), "DestinationRule"))
                    .boxed(),
            ];
            let mut streams = streams;
            for (i, k) in KINDS.iter().enumerate() {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &(k.resource)());
                streams.push(
                    watcher::watcher(api, watcher::Config::default())
                        .default_backoff()
                        .map(move |r| absent_if_404(r.map(|e| Msg::Weft(i, Box::new(e))), KINDS[i].kind))
                        .boxed(),
                );
            }
            let mut all = futures_util::stream::select_all(streams);
            let (status_tx, status_rx) = mpsc::unbounded_channel();
            tokio::spawn(write_statuses(client.clone(), status_rx));
            let mut state = KubeState::new(&self.trust_domain);
            let mut synced = false;
            let mut connected = true;
            let mut dirty = BTreeSet::new();
            loop {
                let first = tokio::select! {
                    m = all.next() => m,
                    _ = shutdown.changed() => return,
                };
                let Some(first) = first else { return };
                // Everything already waiting goes out as one batch.
                let mut batch = vec![first];
                while batch.len() < 4096 {
                    match all.next().now_or_never() {
                        Some(Some(m)) => batch.push(m),
                        _ => break,
                    }
                }
                for m in batch {
                    match m {
                        Ok(msg) => {
                            if !connected {
                                connected = true;
                                if events
                                    .send(RegistryEvent::Health {
                                        connected: true,
                                        error: None,
                                    })
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                            state.apply(msg, &mut dirty);
                        }
                        Err(e) if is_gone(&e) => {
                            tracing::info!(error = %e, "kubernetes registry: watch expired (410 Gone); relisting, the current state keeps serving");
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "kubernetes registry: API error");
                            if connected {
                                connected = false;
                                if events
                                    .send(RegistryEvent::Health {
                                        connected: false,
                                        error: Some(e.to_string()),
                                    })
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                    }
                }
                if !synced {
                    if !state.synced() {
                        continue;
                    }
                    synced = true;
                    dirty = state.all_keys();
                    let before = state.all_skipped();
                    let changes = state.changes(std::mem::take(&mut dirty));
                    tracing::info!(
                        services = state.services.live.len(),
                        endpoint_slices = state.slices.live.len(),
                        pods = state.pods.live.len(),
                        namespaces = state.namespaces.live.len(),
                        "kubernetes registry listed"
                    );
                    let skipped = state.all_skipped();
                    if !super::publish(&events, changes, &skipped, &BTreeMap::new()).await {
                        return;
                    }
                    let _ = before;
                    if events.send(RegistryEvent::Synced).await.is_err() {
                        return;
                    }
                    for w in state.status_writes() {
                        let _ = status_tx.send(w);
                    }
                    continue;
                }
                if dirty.is_empty() && state.cr_dirty.is_empty() && state.status_check.is_empty() {
                    continue;
                }
                let before = state.all_skipped();
                let changes = state.changes(std::mem::take(&mut dirty));
                for w in state.status_writes() {
                    let _ = status_tx.send(w);
                }
                let skipped = state.all_skipped();
                if changes.is_empty() && skipped == before {
                    continue;
                }
                if !super::publish(&events, changes, &skipped, &before).await {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_and_refuses() {
        let r = KubeRegistry::parse("kubernetes").unwrap();
        assert_eq!(r.api, None);
        assert_eq!(r.trust_domain, "cluster.local");
        let r = KubeRegistry::parse("kubernetes?api=http://127.0.0.1:6443&trust-domain=corp").unwrap();
        assert_eq!(r.api.as_deref(), Some("http://127.0.0.1:6443"));
        assert_eq!(r.trust_domain, "corp");
        let r = KubeRegistry::parse("kubernetes://?kubeconfig=/k/config").unwrap();
        assert_eq!(r.kubeconfig, Some(PathBuf::from("/k/config")));
        assert_eq!(
            KubeRegistry::parse("kubernetes?api=ftp://x"),
            Err(SpecError::BadUrl("ftp://x".into()))
        );
        assert_eq!(
            KubeRegistry::parse("kubernetes?bogus=1"),
            Err(SpecError::BadOption("bogus=1".into()))
        );
    }
}
