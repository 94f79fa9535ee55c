//! The live service graph: `GET /graph` (a page) and `GET /graph.json` on the admin API.
//!
//! **Scraped, not pushed.** Every [`GraphOptions::interval`] the control plane reads
//! `/stats/prometheus` from the admin API of each proxy connected over xDS (the address is the
//! node metadata `weft.admin`, which weft proxies send). Why scrape: the sidecars already export
//! the Istio-standard metrics the graph needs, so nothing new runs on the request path or in the
//! sidecar; the control plane already knows every proxy and when it goes away; and a sidecar that
//! stops answering is seen directly, as a failed scrape. The cost is one HTTP request per proxy per
//! interval from the control plane, and the control plane must be able to reach the admin address
//! (see docs/observability.md, "Limits").
//!
//! From each scrape only two families are read ([`prom`]), summed per (reporter, destination
//! service). Per proxy the last [`RATE_SAMPLES`] scrapes are kept for rates (counter deltas over
//! that window; a counter that went down is a restarted sidecar and counts from zero) and p99
//! (from the histogram buckets' deltas), and [`ERROR_SAMPLES`] small maps of errors by reason for
//! the "recent errors" of the drill-down. At most [`MAX_INSTANCES`] proxies are tracked.
//!
//! A proxy that disconnects from xDS, or whose scrape fails, becomes **stale**: it keeps its last
//! numbers, shown greyed with "stale since", and is forgotten [`STALE_KEEP`] later. A stale
//! proxy's samples are not updated, so its rates are those of its last good window.

pub mod page;
pub mod prom;

use crate::server::Shared;
use crate::translate::{service_of, Kind};
use prom::{Agg, Reporter, Scrape, TcpAgg};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Scrapes kept per proxy for rates: the rate window is up to `RATE_SAMPLES - 1` intervals.
pub const RATE_SAMPLES: usize = 6;
/// Error-by-reason samples kept per proxy ("recent errors": up to 60 intervals).
pub const ERROR_SAMPLES: usize = 61;
/// (side, reason) pairs kept per error sample.
pub const MAX_ERROR_KEYS: usize = 32;
/// Proxies tracked; past this, the longest-stale ones are forgotten first, and new ones are not
/// tracked while every tracked one is connected.
pub const MAX_INSTANCES: usize = 512;
/// How long a stale proxy stays on the graph.
pub const STALE_KEEP: Duration = Duration::from_secs(600);
/// Largest `/stats/prometheus` body read.
pub const MAX_BODY: usize = 8 << 20;

#[derive(Clone, Debug)]
pub struct GraphOptions {
    /// How often every proxy is scraped; None: no scraping (the page shows an empty graph).
    pub interval: Option<Duration>,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            interval: Some(Duration::from_secs(1)),
        }
    }
}

/// Cumulative errors by (reporter, reason) at one scrape.
type ErrorCounts = BTreeMap<(Reporter, String), u64>;

/// What is known about one proxy.
struct Inst {
    node_id: String,
    workload: String,
    service: String,
    namespace: String,
    identity: Option<String>,
    admin: Option<SocketAddr>,
    inbound: Option<SocketAddr>,
    connected: bool,
    /// Per xDS type: the version the proxy ACKed last, and its NACK count.
    acked: BTreeMap<String, (String, u64)>,
    last_nack: Option<String>,
    first_seen_unix: u64,
    last_scrape_unix: Option<u64>,
    stale_since: Option<(Instant, u64)>,
    last_error: Option<String>,
    samples: VecDeque<(Instant, Arc<Scrape>)>,
    /// Cumulative errors by (reporter, reason), per scrape.
    errors: VecDeque<(Instant, ErrorCounts)>,
}

#[derive(Default)]
struct State {
    instances: BTreeMap<String, Inst>,
    scrapes: u64,
    scrape_failures: u64,
}

/// The graph's state, shared by the scraper task and the admin API.
pub struct Graph {
    state: Mutex<State>,
    pub interval: Option<Duration>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The address to scrape for a proxy: its `weft.admin`, an unspecified IP replaced by the address
/// the proxy connected from. Refused when it points anywhere but the host the proxy connected
/// from (a loopback admin address for a loopback peer is fine): any xDS client can claim any
/// address, and the control plane must not be made to send requests elsewhere.
pub fn scrape_target(admin: SocketAddr, peer: Option<SocketAddr>) -> Result<SocketAddr, String> {
    let Some(peer) = peer else {
        return if admin.ip().is_loopback() {
            Ok(admin)
        } else {
            Err(format!(
                "weft.admin {admin}: the proxy's own address is unknown, not scraped"
            ))
        };
    };
    if admin.ip().is_unspecified() {
        return Ok(SocketAddr::new(peer.ip(), admin.port()));
    }
    let same = admin.ip() == peer.ip() || (admin.ip().is_loopback() && peer.ip().is_loopback());
    if same {
        Ok(admin)
    } else {
        Err(format!(
            "weft.admin {admin} is not on the host the proxy connected from ({}), not scraped",
            peer.ip()
        ))
    }
}

/// GET http://addr/stats/prometheus, bounded in time and size.
async fn fetch(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Limited};
    let work = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get("/stats/prometheus")
            .header("host", addr.to_string())
            .header("user-agent", "weft-control-graph")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("GET /stats/prometheus: {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading /stats/prometheus: {e}"))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer from {addr} within {timeout:?}")),
    }
}

/// Delta of two cumulative aggregates; a counter that went down restarted, and counts from zero.
fn delta(new: &Agg, old: Option<&Agg>) -> Agg {
    let Some(old) = old else {
        return new.clone();
    };
    if new.requests < old.requests {
        return new.clone();
    }
    let d = |n: u64, o: u64| n.saturating_sub(o);
    let old_bucket = |b: f64| old.buckets.iter().find(|(x, _)| *x == b).map_or(0, |(_, c)| *c);
    Agg {
        requests: d(new.requests, old.requests),
        errors: d(new.errors, old.errors),
        reasons: new
            .reasons
            .iter()
            .map(|(r, n)| (r.clone(), d(*n, old.reasons.get(r).copied().unwrap_or(0))))
            .filter(|(_, n)| *n > 0)
            .collect(),
        buckets: new.buckets.iter().map(|(b, c)| (*b, d(*c, old_bucket(*b)))).collect(),
        protocols: new.protocols.clone(),
    }
}

/// TCP sessions/s, failed sessions/s and bytes/s (both ways) summed over series, with staleness.
#[derive(Default, Clone)]
struct TcpAcc {
    cps: f64,
    failed: f64,
    bps: f64,
    stale: Vec<Option<u64>>,
}

impl TcpAcc {
    fn add(&mut self, new: &TcpAgg, old: Option<&TcpAgg>, secs: f64, stale: Option<u64>) {
        // A counter that went down belongs to a restarted sidecar: count from zero.
        let old = old.filter(|o| o.opened <= new.opened && o.bytes <= new.bytes);
        let d = |n: u64, o: Option<u64>| n.saturating_sub(o.unwrap_or(0)) as f64;
        if secs > 0.0 {
            self.cps += d(new.opened, old.map(|o| o.opened)) / secs;
            self.failed += d(new.failed, old.map(|o| o.failed)) / secs;
            self.bps += d(new.bytes, old.map(|o| o.bytes)) / secs;
        }
        self.stale.push(stale);
    }

    fn json(&self, from: &str, to: &str) -> serde_json::Value {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        let stale = !self.stale.is_empty() && self.stale.iter().all(Option::is_some);
        serde_json::json!({
            "from": from,
            "to": to,
            "protocol": "tcp",
            "connections_per_s": round(self.cps),
            "failed_per_s": round(self.failed),
            "bytes_per_s": round(self.bps),
            "stale": stale,
            "stale_since_unix": if stale { self.stale.iter().flatten().max().copied() } else { None },
        })
    }
}

/// Rates summed over several series: requests/s, errors/s, a merged delta histogram.
#[derive(Default, Clone)]
struct Acc {
    rps: f64,
    eps: f64,
    buckets: BTreeMap<u64, u64>,
    reasons: BTreeMap<String, f64>,
    /// Contributing proxies: (stale since, unix), None for a fresh one.
    stale: Vec<Option<u64>>,
    /// Series added (0: nothing was ever reported, e.g. a workload nobody calls).
    series: usize,
    /// Request protocols of the series (`http`, `grpc`, `dubbo`, `bolt`).
    protocols: std::collections::BTreeSet<String>,
}

impl Acc {
    fn add(&mut self, d: &Agg, secs: f64, stale: Option<u64>) {
        self.series += 1;
        if secs > 0.0 {
            self.rps += d.requests as f64 / secs;
            self.eps += d.errors as f64 / secs;
            for (r, n) in &d.reasons {
                *self.reasons.entry(r.clone()).or_default() += *n as f64 / secs;
            }
        }
        for (b, c) in &d.buckets {
            *self.buckets.entry(b.to_bits()).or_default() += c;
        }
        self.protocols.extend(d.protocols.iter().cloned());
        self.stale.push(stale);
    }

    fn json(&self) -> serde_json::Value {
        let mut buckets: Vec<(f64, u64)> = self.buckets.iter().map(|(b, c)| (f64::from_bits(*b), *c)).collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let p99 = prom::quantile(0.99, &buckets);
        let stale = !self.stale.is_empty() && self.stale.iter().all(Option::is_some);
        let stale_since = if stale {
            self.stale.iter().flatten().max().copied()
        } else {
            None
        };
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        serde_json::json!({
            "rps": round(self.rps),
            "error_rate": if self.rps > 0.0 { round((self.eps / self.rps).min(1.0)) } else { 0.0 },
            "errors_per_s": round(self.eps),
            "p99_ms": p99.map(round),
            "errors_by_reason": self.reasons.iter().map(|(r, v)| (r.clone(), serde_json::json!(round(*v)))).collect::<serde_json::Map<_, _>>(),
            "protocols": self.protocols,
            "stale": stale,
            "stale_since_unix": stale_since,
        })
    }
}

impl Graph {
    pub fn new(opts: &GraphOptions) -> Graph {
        Graph {
            state: Mutex::new(State::default()),
            interval: opts.interval,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the list of proxies up to date with the xDS streams; returns what to scrape now.
    fn refresh(&self, shared: &Shared, now: Instant) -> Vec<(String, Result<SocketAddr, String>)> {
        let entries: Vec<_> = shared
            .proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let wall = unix(SystemTime::now());
        let mut st = self.lock();
        let mut seen = BTreeSet::new();
        for e in entries {
            let s = e.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(node) = s.node.clone() else {
                continue;
            };
            // Only proxies: not proxyless gRPC clients (no admin API, no metrics).
            if node.proxyless_grpc || node.id.is_empty() {
                continue;
            }
            let acked: BTreeMap<String, (String, u64)> = Kind::ALL
                .iter()
                .filter(|k| s.types[**k as usize].seen)
                .map(|k| {
                    let t = &s.types[*k as usize];
                    (k.short().to_string(), (t.acked_version.clone(), t.nacks))
                })
                .collect();
            let last_nack = Kind::ALL.iter().find_map(|k| s.types[*k as usize].last_nack.clone());
            drop(s);
            if !st.instances.contains_key(&node.id) && st.instances.len() >= MAX_INSTANCES {
                // Make room by forgetting the longest-stale proxy, if any.
                let oldest = st
                    .instances
                    .iter()
                    .filter_map(|(id, i)| i.stale_since.map(|(t, _)| (t, id.clone())))
                    .min();
                match oldest {
                    Some((_, id)) => {
                        st.instances.remove(&id);
                    }
                    None => continue,
                }
            }
            seen.insert(node.id.clone());
            let inst = st.instances.entry(node.id.clone()).or_insert_with(|| Inst {
                node_id: node.id.clone(),
                workload: String::new(),
                service: String::new(),
                namespace: String::new(),
                identity: None,
                admin: None,
                inbound: None,
                connected: true,
                acked: BTreeMap::new(),
                last_nack: None,
                first_seen_unix: wall,
                last_scrape_unix: None,
                stale_since: None,
                last_error: None,
                samples: VecDeque::new(),
                errors: VecDeque::new(),
            });
            inst.workload = node.workload.clone();
            inst.service = node.cluster.clone();
            inst.namespace = node.namespace.clone();
            inst.identity = node.identity.clone();
            inst.inbound = node.inbound;
            inst.acked = acked;
            inst.last_nack = last_nack;
            if !inst.connected {
                inst.connected = true;
            }
            inst.admin = match node.admin {
                Some(a) => match scrape_target(a, e.peer) {
                    Ok(t) => Some(t),
                    Err(why) => {
                        inst.last_error = Some(why);
                        None
                    }
                },
                None => {
                    inst.last_error = Some("no weft.admin in the node metadata: not scraped".into());
                    None
                }
            };
        }
        let mut targets = Vec::new();
        for (id, inst) in st.instances.iter_mut() {
            if !seen.contains(id) {
                if inst.connected {
                    inst.connected = false;
                    inst.last_error = Some("disconnected from weft control".into());
                }
                if inst.stale_since.is_none() {
                    inst.stale_since = Some((now, wall));
                }
                continue;
            }
            match inst.admin {
                Some(a) => targets.push((id.clone(), Ok(a))),
                None => targets.push((id.clone(), Err(inst.last_error.clone().unwrap_or_default()))),
            }
        }
        st.instances
            .retain(|_, i| i.stale_since.is_none_or(|(t, _)| now.duration_since(t) < STALE_KEEP));
        targets
    }

    fn record(&self, id: &str, result: Result<String, String>, at: Instant) {
        let wall = unix(SystemTime::now());
        let mut st = self.lock();
        st.scrapes += 1;
        if result.is_err() {
            st.scrape_failures += 1;
        }
        let Some(inst) = st.instances.get_mut(id) else {
            return;
        };
        match result {
            Ok(text) => {
                let scrape = prom::parse(&text);
                let mut errs: ErrorCounts = BTreeMap::new();
                for ((rep, _), agg) in &scrape.series {
                    for (r, n) in &agg.reasons {
                        let key = (*rep, r.clone());
                        // Bounded like the series: past MAX_ERROR_KEYS reasons, "other".
                        let key = if errs.contains_key(&key) || errs.len() < MAX_ERROR_KEYS {
                            key
                        } else {
                            (*rep, "other".to_string())
                        };
                        let e = errs.entry(key).or_default();
                        *e = e.saturating_add(*n);
                    }
                }
                inst.samples.push_back((at, Arc::new(scrape)));
                while inst.samples.len() > RATE_SAMPLES {
                    inst.samples.pop_front();
                }
                inst.errors.push_back((at, errs));
                while inst.errors.len() > ERROR_SAMPLES {
                    inst.errors.pop_front();
                }
                inst.stale_since = None;
                inst.last_error = None;
                inst.last_scrape_unix = Some(wall);
            }
            Err(e) => {
                if inst.stale_since.is_none() {
                    inst.stale_since = Some((at, wall));
                }
                inst.last_error = Some(e);
            }
        }
    }

    /// One round: refresh the proxy list, scrape every proxy at once (each bounded by `timeout`).
    pub async fn scrape_once(&self, shared: &Shared, timeout: Duration) {
        let now = Instant::now();
        let targets = self.refresh(shared, now);
        let mut set = tokio::task::JoinSet::new();
        for (id, target) in targets {
            match target {
                Ok(addr) => {
                    set.spawn(async move { (id, fetch(addr, timeout).await) });
                }
                Err(why) => self.record(&id, Err(why), now),
            }
        }
        while let Some(r) = set.join_next().await {
            if let Ok((id, res)) = r {
                self.record(&id, res, Instant::now());
            }
        }
    }

    /// The `/graph.json` document.
    pub fn json(&self, shared: &Shared) -> serde_json::Value {
        let snapshot = shared.snapshots.borrow().clone();
        let st = self.lock();
        let wall_now = unix(SystemTime::now());
        // Which workload answers at each inbound address.
        let mut by_inbound: BTreeMap<SocketAddr, BTreeSet<&str>> = BTreeMap::new();
        for i in st.instances.values() {
            if let Some(a) = i.inbound {
                by_inbound.entry(a).or_default().insert(i.workload.as_str());
            }
        }
        // A destination cluster (`T` or `T|subset`) -> a workload when exactly one serves all of
        // its endpoints, else the service.
        let mut resolved: BTreeMap<String, (String, &'static str, String)> = BTreeMap::new();
        let mut resolve = |dest: &str| -> (String, &'static str, String) {
            if let Some(r) = resolved.get(dest) {
                return r.clone();
            }
            // Requests the caller's sidecar answered itself before choosing a cluster (no route,
            // fault abort, rate limit): weft's Istio metrics carry no destination for them.
            let r = if dest.is_empty() || dest == "unknown" {
                ("unknown".to_string(), "unknown", "not forwarded".to_string())
            } else if dest == "overflow" {
                // The sidecar's shared label set past its cardinality limit (docs/observability.md).
                (
                    "overflow".to_string(),
                    "unknown",
                    "overflow (label sets over the limit)".to_string(),
                )
            } else {
                let mut workloads = BTreeSet::new();
                let mut any = false;
                if let Some(res) = snapshot.as_ref().and_then(|s| s.get(Kind::Endpoint, dest)) {
                    use weft_xds_api::pb::envoy::config::endpoint::v3 as ep;
                    use weft_xds_api::prost::Message;
                    if let Ok(cla) = ep::ClusterLoadAssignment::decode(res.any.value.as_slice()) {
                        for lb in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
                            let Some(ep::lb_endpoint::HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                                continue;
                            };
                            let Some(addr) = endpoint_addr(e) else { continue };
                            any = true;
                            match by_inbound.get(&addr) {
                                Some(w) => workloads.extend(w.iter().map(|s| s.to_string())),
                                None => {
                                    workloads.insert(String::new());
                                }
                            }
                        }
                    }
                }
                if any && workloads.len() == 1 && !workloads.contains("") {
                    let w = workloads.into_iter().next().unwrap_or_default();
                    (format!("wl:{w}"), "workload", w)
                } else {
                    let svc = service_of(dest).to_string();
                    (format!("svc:{svc}"), "service", svc)
                }
            };
            resolved.insert(dest.to_string(), r.clone());
            r
        };

        let mut nodes: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        let mut edges: BTreeMap<(String, String), Acc> = BTreeMap::new();
        let mut inbound: BTreeMap<String, Acc> = BTreeMap::new();
        // TCP proxy sessions: edges from the calling side's reports, and the called side's own
        // (drawn from outside the mesh when no known caller reported them).
        let mut tcp_edges: BTreeMap<(String, String), TcpAcc> = BTreeMap::new();
        let mut tcp_inbound: BTreeMap<String, TcpAcc> = BTreeMap::new();
        let mut outbound: BTreeMap<String, Acc> = BTreeMap::new();
        let mut workloads: BTreeMap<String, Vec<&Inst>> = BTreeMap::new();
        for i in st.instances.values() {
            workloads.entry(i.workload.clone()).or_default().push(i);
            let stale = i.stale_since.map(|(_, u)| u);
            let (Some((t_new, new)), Some((t_old, old))) = (i.samples.back(), i.samples.front()) else {
                inbound.entry(i.workload.clone()).or_default().stale.push(stale);
                continue;
            };
            let secs = t_new.duration_since(*t_old).as_secs_f64();
            for ((rep, dest), t) in &new.tcp {
                if t.opened == 0 && t.bytes == 0 {
                    continue;
                }
                let old_t = old.tcp.get(&(*rep, dest.clone()));
                match rep {
                    Reporter::Destination => tcp_inbound
                        .entry(i.workload.clone())
                        .or_default()
                        .add(t, old_t, secs, stale),
                    Reporter::Source => {
                        let (to, kind, name) = resolve(dest);
                        nodes
                            .entry(to.clone())
                            .or_insert_with(|| serde_json::json!({ "id": to, "kind": kind, "name": name }));
                        tcp_edges
                            .entry((format!("wl:{}", i.workload), to))
                            .or_default()
                            .add(t, old_t, secs, stale);
                    }
                }
            }
            for ((rep, dest), agg) in &new.series {
                // Label sets that exist but never counted a request (a sidecar's pre-built
                // overflow set, for one) draw nothing.
                if agg.requests == 0 {
                    continue;
                }
                let d = if secs > 0.0 {
                    delta(agg, old.series.get(&(*rep, dest.clone())))
                } else {
                    Agg::default()
                };
                match rep {
                    Reporter::Destination => inbound.entry(i.workload.clone()).or_default().add(&d, secs, stale),
                    Reporter::Source => {
                        outbound.entry(i.workload.clone()).or_default().add(&d, secs, stale);
                        let (to, kind, name) = resolve(dest);
                        nodes
                            .entry(to.clone())
                            .or_insert_with(|| serde_json::json!({ "id": to, "kind": kind, "name": name }));
                        let e = edges.entry((format!("wl:{}", i.workload), to)).or_default();
                        e.add(&d, secs, stale);
                    }
                }
            }
            inbound.entry(i.workload.clone()).or_default().stale.push(stale);
        }
        // Workloads that take traffic but that no known caller reported: from the service node
        // when callers reached the service as a whole, else from outside the mesh.
        let targeted: BTreeSet<String> = edges.keys().map(|(_, to)| to.clone()).collect();
        for (w, acc) in &inbound {
            let id = format!("wl:{w}");
            if targeted.contains(&id) || acc.rps <= 0.0 {
                continue;
            }
            let svc = workloads
                .get(w)
                .and_then(|v| v.iter().map(|i| i.service.as_str()).find(|s| !s.is_empty()))
                .map(|s| format!("svc:{s}"));
            let from = match svc {
                Some(s) if nodes.contains_key(&s) => s,
                _ => {
                    nodes.entry("outside".into()).or_insert_with(
                        || serde_json::json!({ "id": "outside", "kind": "external", "name": "outside the mesh" }),
                    );
                    "outside".to_string()
                }
            };
            edges.insert((from, id), acc.clone());
        }
        let tcp_targeted: BTreeSet<String> = tcp_edges.keys().map(|(_, to)| to.clone()).collect();
        for (w, acc) in tcp_inbound {
            let id = format!("wl:{w}");
            if tcp_targeted.contains(&id) {
                continue;
            }
            nodes.entry("outside".into()).or_insert_with(
                || serde_json::json!({ "id": "outside", "kind": "external", "name": "outside the mesh" }),
            );
            tcp_edges.insert(("outside".to_string(), id), acc);
        }
        for (w, insts) in &workloads {
            let id = format!("wl:{w}");
            let stale_all = insts.iter().all(|i| i.stale_since.is_some());
            let stale_since = if stale_all {
                insts.iter().filter_map(|i| i.stale_since.map(|(_, u)| u)).max()
            } else {
                None
            };
            let mut identities: BTreeSet<String> = BTreeSet::new();
            let mut recent: ErrorCounts = BTreeMap::new();
            let mut recent_secs = 0.0f64;
            let instances: Vec<serde_json::Value> = insts
                .iter()
                .map(|i| {
                    if let Some(id) = &i.identity {
                        identities.insert(id.clone());
                    }
                    if let (Some((tn, new)), Some((to, old))) = (i.errors.back(), i.errors.front()) {
                        recent_secs = recent_secs.max(tn.duration_since(*to).as_secs_f64());
                        for (k, n) in new {
                            let o = old.get(k).copied().unwrap_or(0);
                            let d = if *n >= o { n - o } else { *n };
                            if d > 0 {
                                *recent.entry(k.clone()).or_default() += d;
                            }
                        }
                    }
                    serde_json::json!({
                        "node_id": i.node_id,
                        "service": i.service,
                        "namespace": i.namespace,
                        "identity": i.identity,
                        "admin": i.admin.map(|a| a.to_string()),
                        "inbound": i.inbound.map(|a| a.to_string()),
                        "connected": i.connected,
                        "stale": i.stale_since.is_some(),
                        "stale_since_unix": i.stale_since.map(|(_, u)| u),
                        "first_seen_unix": i.first_seen_unix,
                        "last_scrape_unix": i.last_scrape_unix,
                        "last_error": i.last_error,
                        "config": i.acked.iter().map(|(k, (v, nacks))| (k.clone(), serde_json::json!({"acked_version": v, "nacks": nacks}))).collect::<serde_json::Map<_, _>>(),
                        "last_nack": i.last_nack,
                    })
                })
                .collect();
            let recent_errors: Vec<serde_json::Value> = recent
                .iter()
                .map(|((rep, reason), n)| {
                    serde_json::json!({
                        "reason": reason,
                        "side": if *rep == Reporter::Source { "outbound" } else { "inbound" },
                        "count": n,
                    })
                })
                .collect();
            let services: BTreeSet<&str> = insts
                .iter()
                .map(|i| i.service.as_str())
                .filter(|s| !s.is_empty())
                .collect();
            nodes.insert(
                id.clone(),
                serde_json::json!({
                    "id": id,
                    "kind": "workload",
                    "name": w,
                    "services": services,
                    "stale": stale_all,
                    "stale_since_unix": stale_since,
                    "inbound": inbound.get(w).filter(|a| a.series > 0).map(Acc::json),
                    "outbound": outbound.get(w).filter(|a| a.series > 0).map(Acc::json),
                    "instances": instances,
                    "identities": identities,
                    "recent_errors": recent_errors,
                    "recent_errors_window_s": recent_secs.round(),
                }),
            );
        }
        let edges: Vec<serde_json::Value> = edges
            .iter()
            .filter(|((from, to), _)| nodes.contains_key(from) && nodes.contains_key(to))
            .map(|((from, to), acc)| {
                let mut v = acc.json();
                v["from"] = serde_json::json!(from);
                v["to"] = serde_json::json!(to);
                v
            })
            .collect();
        serde_json::json!({
            "generated_unix": wall_now,
            "scrape_interval_ms": self.interval.map(|d| d.as_millis() as u64),
            "rate_window_samples": RATE_SAMPLES,
            "scrapes": st.scrapes,
            "scrape_failures": st.scrape_failures,
            "edges": edges,
            "tcp_edges": tcp_edges
                .iter()
                .filter(|((from, to), _)| nodes.contains_key(from) && nodes.contains_key(to))
                .map(|((from, to), acc)| acc.json(from, to))
                .collect::<Vec<_>>(),
            "nodes": nodes.into_values().collect::<Vec<_>>(),
        })
    }
}

fn endpoint_addr(e: &weft_xds_api::pb::envoy::config::endpoint::v3::Endpoint) -> Option<SocketAddr> {
    use weft_xds_api::pb::envoy::config::core::v3 as core;
    let Some(core::address::Address::SocketAddress(sa)) = e.address.as_ref()?.address.as_ref() else {
        return None;
    };
    let Some(core::socket_address::PortSpecifier::PortValue(p)) = sa.port_specifier else {
        return None;
    };
    Some(SocketAddr::new(sa.address.parse().ok()?, u16::try_from(p).ok()?))
}

/// The scraper task: one round per interval until shutdown. A round that takes longer than the
/// interval delays the next (rounds never overlap).
pub async fn run(graph: Arc<Graph>, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Some(every) = graph.interval else {
        return;
    };
    let timeout = every.clamp(Duration::from_millis(200), Duration::from_secs(2));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        tokio::select! {
            _ = graph.scrape_once(&shared, timeout) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_target_stays_on_the_proxys_host() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            scrape_target(a("127.0.0.1:9901"), Some(a("127.0.0.1:5555"))),
            Ok(a("127.0.0.1:9901"))
        );
        assert_eq!(
            scrape_target(a("0.0.0.0:9901"), Some(a("10.0.0.7:5555"))),
            Ok(a("10.0.0.7:9901"))
        );
        assert_eq!(
            scrape_target(a("10.0.0.7:9901"), Some(a("10.0.0.7:5555"))),
            Ok(a("10.0.0.7:9901"))
        );
        assert!(scrape_target(a("10.0.0.8:9901"), Some(a("10.0.0.7:5555"))).is_err());
        assert!(scrape_target(a("127.0.0.1:9901"), Some(a("10.0.0.7:5555"))).is_err());
        assert!(scrape_target(a("10.0.0.8:9901"), None).is_err());
    }

    #[test]
    fn delta_handles_restarts() {
        let agg = |r: u64, e: u64| Agg {
            requests: r,
            errors: e,
            reasons: [("UF".to_string(), e)].into_iter().collect(),
            buckets: vec![(1.0, r), (f64::INFINITY, r)],
            protocols: Default::default(),
        };
        let d = delta(&agg(30, 5), Some(&agg(10, 2)));
        assert_eq!((d.requests, d.errors, d.reasons["UF"]), (20, 3, 3));
        assert_eq!(d.buckets, vec![(1.0, 20), (f64::INFINITY, 20)]);
        let d = delta(&agg(4, 1), Some(&agg(10, 2)));
        assert_eq!((d.requests, d.errors), (4, 1), "a restarted sidecar counts from zero");
    }
}
