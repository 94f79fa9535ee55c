//! `weft-xds-sim`: the control-plane scale benchmark.
//!
//! Simulates many sidecars as lightweight ADS clients in one process (each its own HTTP/2
//! connection and ADS stream, subscribing like a sidecar does: CDS and LDS wildcard, then EDS for
//! every cluster and RDS for its routes, ACKing everything), against `weft control` serving a
//! generated file registry. It then changes one endpoint of one service at a time and measures how
//! long it takes until every simulated proxy has ACKed the update, and how many bytes the control
//! plane sent for it.
//!
//! No existing tool does this for the Envoy v3 API with Delta xDS (Istio's `pilot-load` is tied to
//! Istio's Kubernetes model), hence this small harness.
#![forbid(unsafe_code)]

use clap::Parser;
use hdrhistogram::Histogram;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, Endpoint};
use weft_xds_api::pb::envoy::config::core::v3::Node;
use weft_xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use weft_xds_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_xds_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use weft_xds_api::pb::google::protobuf::{value::Kind, Struct, Value};
use weft_xds_api::prost::Message;
use weft_xds_api::type_url;

#[derive(Parser, Debug)]
#[command(
    name = "weft-xds-sim",
    about = "Scale benchmark for weft control: many simulated ADS clients"
)]
struct Args {
    /// Start `weft control` from this binary on a generated registry (else use --control).
    #[arg(long)]
    weft_bin: Option<PathBuf>,
    /// xDS address of an already running control plane (its registry must be --registry).
    #[arg(long)]
    control: Option<SocketAddr>,
    /// PID of an already running control plane, for its CPU and RSS.
    #[arg(long)]
    control_pid: Option<u32>,
    /// Registry directory (generated here when --weft-bin is given; default: a temp dir).
    #[arg(long)]
    registry: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 100)]
    endpoints: usize,
    /// Single-endpoint changes to measure.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// "delta" (incremental ADS) or "sotw" (state of the world ADS).
    #[arg(long, default_value = "delta")]
    mode: String,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Give up on the initial sync after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Write every resource the first simulated proxy receives into this directory, one file each
    /// (a type byte, 0 listener / 1 route / 2 cluster / 3 endpoints, then the encoded resource):
    /// seeds for the `xds_resources` fuzz target.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// After the changes, restart the control plane (kill it, move one endpoint in the registry
    /// while it is down, start it again on the same ports) and measure how long until every
    /// simulated proxy has reconnected and received the change. Needs --weft-bin.
    #[arg(long)]
    restart: bool,
    /// How long the control plane stays down in the restart scenario.
    #[arg(long, default_value_t = 1000)]
    down_ms: u64,
    /// Reconnect backoff of the simulated proxies: first delay and ceiling in ms (jittered
    /// exponential over [d/2, d], reset after a stream that delivered a response; weft's and
    /// Envoy's defaults are 500 ms and 30 s).
    #[arg(long, default_value_t = 500)]
    backoff_base_ms: u64,
    #[arg(long, default_value_t = 30000)]
    backoff_max_ms: u64,
    /// Busy threads competing for the CPU during the restart scenario ("other load").
    #[arg(long, default_value_t = 0)]
    load_threads: usize,
    /// Each service declares this many dependencies (the next N services): its sidecars are sent
    /// only those (configuration scoping), and a change reaches only the proxies that depend on
    /// the changed service. 0: none declared, every proxy gets the whole mesh.
    #[arg(long, default_value_t = 0)]
    deps: usize,
}

/// `--deps` and `--services`, for [`write_service`].
static DEPS: AtomicUsize = AtomicUsize::new(0);
static SERVICES: AtomicUsize = AtomicUsize::new(1);

/// Whether sidecars of service `s` depend on service `svc` (with `--deps`).
fn depends(s: usize, svc: usize) -> bool {
    let (deps, services) = (DEPS.load(Ordering::Relaxed), SERVICES.load(Ordering::Relaxed));
    deps == 0 || (1..=deps).any(|k| (s + k) % services == svc)
}

/// One measured registry change: the service whose endpoint 0 moved to `port`.
struct Probe {
    id: usize,
    service: String,
    port: u32,
    t0: Instant,
    seen: AtomicUsize,
    latencies_us: Mutex<Vec<u64>>,
}

#[derive(Default)]
struct Shared {
    dump: Option<PathBuf>,
    synced: AtomicUsize,
    /// Streams or connection attempts that failed (each is retried: nobody gives up).
    failed: AtomicUsize,
    /// Streams opened after the first one of each proxy.
    reconnects: AtomicUsize,
    backoff: (Duration, Duration),
    /// Bytes received per type: CDS, EDS, LDS, RDS.
    bytes: [AtomicU64; 4],
    responses: AtomicU64,
    probe: RwLock<Option<Arc<Probe>>>,
}

fn type_index(url: &str) -> usize {
    match url {
        type_url::CLUSTER => 0,
        type_url::ENDPOINT => 1,
        type_url::LISTENER => 2,
        _ => 3,
    }
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

fn endpoint_addr(service: usize, ep: usize, port: u32) -> String {
    // Data only: nothing connects to these. 127/8 keeps even a misconfigured run on loopback.
    let n = service * 256 + ep;
    format!("127.{}.{}.{}:{port}", 1 + n / 65536, (n / 256) % 256, n % 256)
}

fn write_service(dir: &Path, i: usize, endpoints: usize, moved_port: Option<u32>) -> std::io::Result<()> {
    let mut s = format!("services:\n  - name: {}\n    port: 8080\n", service_name(i));
    let (deps, services) = (DEPS.load(Ordering::Relaxed), SERVICES.load(Ordering::Relaxed));
    if deps > 0 {
        let names: Vec<String> = (1..=deps).map(|k| service_name((i + k) % services)).collect();
        s.push_str(&format!("    dependencies: [{}]\n", names.join(", ")));
    }
    s.push_str("    endpoints:\n");
    for e in 0..endpoints {
        let port = if e == 0 { moved_port.unwrap_or(8080) } else { 8080 };
        s.push_str(&format!(
            "      - address: {}\n        labels: {{version: v{}}}\n        locality: {{region: r1, zone: z{}}}\n",
            endpoint_addr(i, e, port),
            1 + e % 2,
            1 + i % 3
        ));
    }
    // Atomic replace, so the registry never reads half a file.
    let tmp = dir.join(format!(".{}.yaml.tmp", service_name(i)));
    std::fs::write(&tmp, s)?;
    std::fs::rename(&tmp, dir.join(format!("{}.yaml", service_name(i))))
}

fn node(i: usize, services: usize) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut fields = std::collections::HashMap::new();
    fields.insert("weft.role".to_string(), s("sidecar"));
    fields.insert("weft.outbound".to_string(), s("127.0.0.1:15001"));
    fields.insert("weft.inbound".to_string(), s("127.0.0.1:15006"));
    fields.insert("weft.app".to_string(), s("127.0.0.1:8080"));
    Node {
        id: format!("sim-{i}"),
        cluster: service_name(i % services),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        ..Default::default()
    }
}

/// Called for every endpoint resource a client receives, after the ACK for it is queued.
fn check_probe(shared: &Shared, seen_probe: &mut usize, name: &str, any_value: &[u8]) {
    let guard = shared.probe.read().unwrap();
    let Some(p) = guard.as_ref() else { return };
    if p.id == *seen_probe || p.service != name {
        return;
    }
    let Ok(cla) = ClusterLoadAssignment::decode(any_value) else {
        return;
    };
    let has = cla.endpoints.iter().flat_map(|l| &l.lb_endpoints).any(|e| {
        use weft_xds_api::pb::envoy::config::core::v3::{address::Address, socket_address::PortSpecifier};
        use weft_xds_api::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
        let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
            return false;
        };
        let Some(Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref()) else {
            return false;
        };
        matches!(sa.port_specifier, Some(PortSpecifier::PortValue(port)) if port == p.port)
    });
    if has {
        *seen_probe = p.id;
        p.latencies_us.lock().unwrap().push(p.t0.elapsed().as_micros() as u64);
        p.seen.fetch_add(1, Ordering::SeqCst);
    }
}

async fn connect(addr: SocketAddr) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// What a simulated proxy holds across reconnects (like a real one): per type (CDS, EDS, LDS,
/// RDS) the last accepted SotW version or the Delta per-resource versions, and its subscriptions.
#[derive(Default)]
struct Held {
    sotw_version: [String; 4],
    delta_versions: [std::collections::HashMap<String, String>; 4],
    eds_names: Vec<String>,
    /// SotW: the assignments and route configurations received (a server that finds the
    /// reconnecting client current sends nothing again).
    sotw_eds_have: HashSet<String>,
    sotw_rds_have: usize,
    rds_requested: bool,
    synced: bool,
    seen_probe: Option<usize>,
}

/// One simulated proxy for the whole run: connect, follow the stream, and when it fails retry
/// after a jittered exponential backoff (reset once a stream delivered something), as weft and
/// Envoy do. It never gives up.
async fn proxy_loop(i: usize, services: usize, xds: SocketAddr, delta: bool, shared: Arc<Shared>) {
    let (base, max) = shared.backoff;
    let mut backoff = base;
    let mut held = Held::default();
    let mut first = true;
    loop {
        let mut progress = false;
        let r = match connect(xds).await {
            Ok(ch) => {
                if !first {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                first = false;
                if delta {
                    run_delta(i, services, ch, &shared, &mut held, &mut progress).await
                } else {
                    run_sotw(i, services, ch, &shared, &mut held, &mut progress).await
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            if shared.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                eprintln!("client {i}: {e} (retrying)");
            }
        }
        if progress {
            backoff = base;
        }
        let half = backoff / 2;
        let delay = half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos().max(1) as u64));
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(max);
    }
}

async fn run_delta(
    i: usize,
    services: usize,
    channel: Channel,
    shared: &Shared,
    held: &mut Held,
    progress: &mut bool,
) -> Result<(), String> {
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(1 << 30);
    let send = |r: DeltaDiscoveryRequest| tx.send(r).map_err(|e| e.to_string());
    // On a reconnect: what it holds, so that the server sends only what changed.
    send(DeltaDiscoveryRequest {
        node: Some(node(i, services)),
        type_url: type_url::CLUSTER.into(),
        initial_resource_versions: held.delta_versions[0].clone(),
        ..Default::default()
    })?;
    if !held.eds_names.is_empty() {
        send(DeltaDiscoveryRequest {
            type_url: type_url::ENDPOINT.into(),
            resource_names_subscribe: held.eds_names.clone(),
            initial_resource_versions: held.delta_versions[1].clone(),
            ..Default::default()
        })?;
    }
    send(DeltaDiscoveryRequest {
        type_url: type_url::LISTENER.into(),
        initial_resource_versions: held.delta_versions[2].clone(),
        ..Default::default()
    })?;
    let rds_names = vec![
        "outbound".to_string(),
        format!("inbound|{}", service_name(i % services)),
    ];
    if held.rds_requested {
        send(DeltaDiscoveryRequest {
            type_url: type_url::ROUTE.into(),
            resource_names_subscribe: rds_names.clone(),
            initial_resource_versions: held.delta_versions[3].clone(),
            ..Default::default()
        })?;
    }
    let mut stream = client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut eds_wanted: HashSet<String> = held.eds_names.iter().cloned().collect();
    let mut eds_have: HashSet<String> = held.delta_versions[1].keys().cloned().collect();
    let mut rds_wanted = held.rds_requested;
    let mut rds_have = held.delta_versions[3].len();
    let mut synced = held.synced;
    let mut seen_probe = held.seen_probe.unwrap_or(usize::MAX);
    if !synced && !eds_wanted.is_empty() && eds_have.len() >= eds_wanted.len() && rds_have > 0 {
        synced = true;
        held.synced = true;
        shared.synced.fetch_add(1, Ordering::SeqCst);
    }
    while let Some(resp) = stream.message().await.map_err(|e| e.to_string())? {
        let resp: DeltaDiscoveryResponse = resp;
        *progress = true;
        let t = type_index(&resp.type_url);
        for r in &resp.resources {
            held.delta_versions[t].insert(r.name.clone(), r.version.clone());
        }
        for r in &resp.removed_resources {
            held.delta_versions[t].remove(r);
        }
        if i == 0 {
            if let Some(dir) = &shared.dump {
                for r in &resp.resources {
                    if let Some(any) = &r.resource {
                        dump(dir, &resp.type_url, &r.name, &any.value);
                    }
                }
            }
        }
        shared.bytes[type_index(&resp.type_url)].fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
        shared.responses.fetch_add(1, Ordering::Relaxed);
        send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })?;
        match resp.type_url.as_str() {
            type_url::CLUSTER => {
                let new: Vec<String> = resp
                    .resources
                    .iter()
                    .map(|r| r.name.clone())
                    .filter(|n| !n.starts_with("inbound|") && !eds_wanted.contains(n))
                    .collect();
                eds_wanted.extend(new.iter().cloned());
                for gone in &resp.removed_resources {
                    eds_wanted.remove(gone);
                    eds_have.remove(gone);
                }
                held.eds_names = eds_wanted.iter().cloned().collect();
                if !new.is_empty() || !resp.removed_resources.is_empty() {
                    send(DeltaDiscoveryRequest {
                        type_url: type_url::ENDPOINT.into(),
                        resource_names_subscribe: new,
                        resource_names_unsubscribe: resp.removed_resources.clone(),
                        ..Default::default()
                    })?;
                }
            }
            type_url::LISTENER if !rds_wanted => {
                rds_wanted = true;
                held.rds_requested = true;
                send(DeltaDiscoveryRequest {
                    type_url: type_url::ROUTE.into(),
                    resource_names_subscribe: rds_names.clone(),
                    ..Default::default()
                })?;
            }
            type_url::ROUTE => rds_have += resp.resources.len(),
            type_url::ENDPOINT => {
                for r in &resp.resources {
                    eds_have.insert(r.name.clone());
                    if let Some(any) = &r.resource {
                        check_probe(shared, &mut seen_probe, &r.name, &any.value);
                        held.seen_probe = Some(seen_probe);
                    }
                }
            }
            _ => {}
        }
        if !synced && !eds_wanted.is_empty() && eds_have.len() >= eds_wanted.len() && rds_have > 0 {
            synced = true;
            held.synced = true;
            shared.synced.fetch_add(1, Ordering::SeqCst);
        }
    }
    Err("stream ended".into())
}

async fn run_sotw(
    i: usize,
    services: usize,
    channel: Channel,
    shared: &Shared,
    held: &mut Held,
    progress: &mut bool,
) -> Result<(), String> {
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(1 << 30);
    let send = |r: DiscoveryRequest| tx.send(r).map_err(|e| e.to_string());
    let rds_names = vec![
        "outbound".to_string(),
        format!("inbound|{}", service_name(i % services)),
    ];
    // On a reconnect: the versions it holds (no nonce: those belong to the old stream).
    send(DiscoveryRequest {
        node: Some(node(i, services)),
        type_url: type_url::CLUSTER.into(),
        version_info: held.sotw_version[0].clone(),
        ..Default::default()
    })?;
    if !held.eds_names.is_empty() {
        send(DiscoveryRequest {
            type_url: type_url::ENDPOINT.into(),
            version_info: held.sotw_version[1].clone(),
            resource_names: held.eds_names.clone(),
            ..Default::default()
        })?;
    }
    send(DiscoveryRequest {
        type_url: type_url::LISTENER.into(),
        version_info: held.sotw_version[2].clone(),
        ..Default::default()
    })?;
    if held.rds_requested {
        send(DiscoveryRequest {
            type_url: type_url::ROUTE.into(),
            version_info: held.sotw_version[3].clone(),
            resource_names: rds_names.clone(),
            ..Default::default()
        })?;
    }
    let mut stream = client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut eds_names: Vec<String> = held.eds_names.clone();
    let mut eds_state = (held.sotw_version[1].clone(), String::new()); // last (version, nonce)
    let mut eds_have: HashSet<String> = held.sotw_eds_have.clone();
    let mut rds_requested = held.rds_requested;
    let mut rds_have = held.sotw_rds_have;
    let mut synced = held.synced;
    let mut seen_probe = held.seen_probe.unwrap_or(usize::MAX);
    // A reconnected client the server finds current gets nothing: what it holds may complete it.
    if !synced && !eds_names.is_empty() && eds_have.len() >= eds_names.len() && rds_have > 0 {
        synced = true;
        held.synced = true;
        shared.synced.fetch_add(1, Ordering::SeqCst);
    }
    while let Some(resp) = stream.message().await.map_err(|e| e.to_string())? {
        let resp: DiscoveryResponse = resp;
        *progress = true;
        held.sotw_version[type_index(&resp.type_url)] = resp.version_info.clone();
        shared.bytes[type_index(&resp.type_url)].fetch_add(resp.encoded_len() as u64, Ordering::Relaxed);
        shared.responses.fetch_add(1, Ordering::Relaxed);
        let names = match resp.type_url.as_str() {
            type_url::ENDPOINT => eds_names.clone(),
            type_url::ROUTE => rds_names.clone(),
            _ => vec![],
        };
        send(DiscoveryRequest {
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            type_url: resp.type_url.clone(),
            resource_names: names,
            ..Default::default()
        })?;
        match resp.type_url.as_str() {
            type_url::CLUSTER => {
                let mut names: Vec<String> = resp
                    .resources
                    .iter()
                    .filter_map(|a| {
                        weft_xds_api::unpack::<weft_xds_api::pb::envoy::config::cluster::v3::Cluster>(
                            a,
                            type_url::CLUSTER,
                        )
                        .ok()
                    })
                    .map(|c| c.name)
                    .filter(|n| !n.starts_with("inbound|"))
                    .collect();
                names.sort();
                if names != eds_names {
                    eds_names = names;
                    held.eds_names = eds_names.clone();
                    send(DiscoveryRequest {
                        version_info: eds_state.0.clone(),
                        response_nonce: eds_state.1.clone(),
                        type_url: type_url::ENDPOINT.into(),
                        resource_names: eds_names.clone(),
                        ..Default::default()
                    })?;
                }
            }
            type_url::LISTENER if !rds_requested => {
                rds_requested = true;
                held.rds_requested = true;
                send(DiscoveryRequest {
                    type_url: type_url::ROUTE.into(),
                    resource_names: rds_names.clone(),
                    ..Default::default()
                })?;
            }
            type_url::ROUTE => {
                rds_have += resp.resources.len();
                held.sotw_rds_have = rds_have;
            }
            type_url::ENDPOINT => {
                eds_state = (resp.version_info.clone(), resp.nonce.clone());
                for a in &resp.resources {
                    // SotW carries no names outside the resource: read just the name's field, so
                    // the simulated proxies stay cheap next to the control plane they measure.
                    let Some(name) = cla_name(&a.value) else { continue };
                    check_probe(shared, &mut seen_probe, &name, &a.value);
                    held.seen_probe = Some(seen_probe);
                    held.sotw_eds_have.insert(name.clone());
                    eds_have.insert(name);
                }
            }
            _ => {}
        }
        if !synced && !eds_names.is_empty() && eds_have.len() >= eds_names.len() && rds_have > 0 {
            synced = true;
            held.synced = true;
            shared.synced.fetch_add(1, Ordering::SeqCst);
        }
    }
    Err("stream ended".into())
}

fn dump(dir: &Path, type_url: &str, name: &str, value: &[u8]) {
    let kind = match type_url {
        type_url::LISTENER => 0u8,
        type_url::ROUTE => 1,
        type_url::CLUSTER => 2,
        _ => 3,
    };
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut bytes = vec![kind];
    bytes.extend_from_slice(value);
    let _ = std::fs::create_dir_all(dir);
    let _ = std::fs::write(dir.join(format!("{kind}-{safe}")), bytes);
}

/// `ClusterLoadAssignment.cluster_name` (field 1), read without decoding the endpoints.
fn cla_name(mut b: &[u8]) -> Option<String> {
    use weft_xds_api::varint;
    while !b.is_empty() {
        let key = varint(&mut b)?;
        match key & 7 {
            0 => {
                varint(&mut b)?;
            }
            1 => b = b.get(8..)?,
            5 => b = b.get(4..)?,
            2 => {
                let len = varint(&mut b)? as usize;
                let (field, rest) = (b.get(..len)?, b.get(len..)?);
                if key >> 3 == 1 {
                    return String::from_utf8(field.to_vec()).ok();
                }
                b = rest;
            }
            _ => return None,
        }
    }
    None
}

/// (user+system CPU seconds, RSS KiB, peak RSS KiB) of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some((ticks / 100.0, kib("VmRSS:"), kib("VmHWM:")))
}

fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A port free a moment ago, below the kernel's ephemeral range (32768+): the control plane is
/// started on it again after a restart, and a port in the ephemeral range could meanwhile be
/// taken as the source port of one of the thousands of reconnecting clients. Drawn from
/// 26000-32767, apart from the ports the test suite hands out (20000-25999).
/// Never the same port twice in one run (the xDS and admin ports are drawn together).
fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..500 {
        let port = fastrand::u16(26000..32768);
        if handed.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            let port = l.local_addr().map(|a| a.port()).unwrap_or(port);
            handed.push(port);
            return port;
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0");
    handed.push(port);
    port
}

/// Starts `weft control` on `registry` and waits until it is ready.
fn start_control(bin: &Path, registry: &Path, xds: SocketAddr, admin: SocketAddr) -> Result<ControlProcess, String> {
    let child = Command::new(bin)
        .args(["control", "--registry"])
        .arg(registry)
        .args(["--xds", &xds.to_string(), "--admin", &admin.to_string()])
        .env("WEFT_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start weft control: {e}"))?;
    let guard = ControlProcess(child);
    let t = Instant::now();
    while http_get_status(admin, "/ready") != Some(200) {
        if t.elapsed() > Duration::from_secs(120) {
            return Err("weft control not ready after 120 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(guard)
}

struct ControlProcess(Child);
impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percentile(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() {
    let args = Args::parse();
    DEPS.store(args.deps, Ordering::Relaxed);
    SERVICES.store(args.services.max(1), Ordering::Relaxed);
    if args.deps > 0 && args.restart {
        eprintln!("--restart measures every proxy reconverging: use it without --deps");
        std::process::exit(2);
    }
    if args.mode != "delta" && args.mode != "sotw" {
        eprintln!("--mode must be delta or sotw");
        std::process::exit(2);
    }
    let registry = args
        .registry
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("weft-xds-sim-{}", std::process::id())));
    let mut _control_guard = None;
    let mut control_addrs = None;
    if args.restart && args.weft_bin.is_none() {
        eprintln!("--restart needs --weft-bin");
        std::process::exit(2);
    }
    let (xds, pid) = if let Some(bin) = &args.weft_bin {
        let _ = std::fs::remove_dir_all(&registry);
        std::fs::create_dir_all(&registry).expect("create registry dir");
        let t = Instant::now();
        for i in 0..args.services {
            write_service(&registry, i, args.endpoints, None).expect("write registry");
        }
        eprintln!(
            "registry: {} services x {} endpoints in {} ({:.1}s)",
            args.services,
            args.endpoints,
            registry.display(),
            t.elapsed().as_secs_f64()
        );
        let xds: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let t = Instant::now();
        let guard = start_control(bin, &registry, xds, admin).unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1);
        });
        let pid = guard.0.id();
        _control_guard = Some(guard);
        control_addrs = Some((xds, admin));
        eprintln!("control plane ready in {:.2}s (pid {pid})", t.elapsed().as_secs_f64());
        (xds, Some(pid))
    } else {
        let Some(xds) = args.control else {
            eprintln!("give --weft-bin or --control");
            std::process::exit(2);
        };
        (xds, args.control_pid)
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = Arc::new(Shared {
        dump: args.dump.clone(),
        backoff: (
            Duration::from_millis(args.backoff_base_ms.max(1)),
            Duration::from_millis(args.backoff_max_ms.max(args.backoff_base_ms.max(1))),
        ),
        ..Default::default()
    });
    let before = pid.and_then(proc_usage);
    let t_start = Instant::now();
    rt.block_on(async {
        for i in 0..args.proxies {
            let shared = shared.clone();
            let delta = args.mode == "delta";
            let services = args.services;
            tokio::spawn(proxy_loop(i, services, xds, delta, shared));
        }
    });
    let deadline = t_start + Duration::from_secs(args.timeout_secs);
    let mut last_print = Instant::now();
    while shared.synced.load(Ordering::SeqCst) < args.proxies {
        if Instant::now() > deadline {
            eprintln!(
                "initial sync incomplete: {}/{} synced, {} failed",
                shared.synced.load(Ordering::SeqCst),
                args.proxies,
                shared.failed.load(Ordering::SeqCst)
            );
            // process::exit skips destructors: stop the control plane first.
            drop(_control_guard.take());
            std::process::exit(1);
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!("  synced {}/{}", shared.synced.load(Ordering::SeqCst), args.proxies);
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let initial_s = t_start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let after = pid.and_then(proc_usage);
    let initial_bytes: u64 = shared.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum();
    let full_push_cpu = match (before, after) {
        (Some(b), Some(a)) => Some(a.0 - b.0),
        _ => None,
    };
    eprintln!(
        "initial sync: {} proxies in {:.2}s, {:.1} MiB sent, control CPU {:?}s",
        args.proxies,
        initial_s,
        initial_bytes as f64 / 1048576.0,
        full_push_cpu
    );

    let mut per_change = Vec::new();
    let mut all_last = Histogram::<u64>::new(3).unwrap();
    let mut all_each = Histogram::<u64>::new(3).unwrap();
    let mut change_bytes = Vec::new();
    let mut receivers = Vec::new();
    for c in 0..args.changes {
        let svc = (c * 7919 + 13) % args.services;
        let port = 30000 + c as u32;
        let bytes_before: u64 = shared.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum();
        let probe = Arc::new(Probe {
            id: c,
            service: service_name(svc),
            port,
            t0: Instant::now(),
            seen: AtomicUsize::new(0),
            latencies_us: Mutex::new(Vec::new()),
        });
        *shared.probe.write().unwrap() = Some(probe.clone());
        let expected = (0..args.proxies).filter(|i| depends(i % args.services, svc)).count();
        receivers.push(expected);
        write_service(&registry, svc, args.endpoints, Some(port)).expect("rewrite registry file");
        let t = Instant::now();
        while probe.seen.load(Ordering::SeqCst) < expected && t.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Let anything else the change triggered arrive before counting bytes.
        std::thread::sleep(Duration::from_millis(700));
        let bytes: u64 = shared.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum::<u64>() - bytes_before;
        let lat = probe.latencies_us.lock().unwrap().clone();
        let mut h = Histogram::<u64>::new(3).unwrap();
        for l in &lat {
            h.record(*l).ok();
            all_each.record(*l).ok();
        }
        let last = lat.iter().copied().max().unwrap_or(0);
        all_last.record(last).ok();
        change_bytes.push(bytes);
        eprintln!(
            "change {c}: {} reached {}/{} proxies, last after {:.1} ms (p50 {:.1} ms), {} bytes sent in all ({:.0} per proxy)",
            service_name(svc),
            lat.len(),
            expected,
            last as f64 / 1000.0,
            percentile(&h, 0.5),
            bytes,
            bytes as f64 / args.proxies as f64
        );
        per_change.push(serde_json::json!({
            "service": service_name(svc), "reached": lat.len(), "last_ms": last as f64 / 1000.0,
            "p50_ms": percentile(&h, 0.5), "p99_ms": percentile(&h, 0.99), "bytes": bytes,
        }));
    }
    let end = pid.and_then(proc_usage);
    let storm = match (args.restart, &args.weft_bin, control_addrs) {
        (true, Some(bin), Some((xds, admin))) => {
            let r = restart_storm(&args, bin, &registry, xds, admin, &shared, &mut _control_guard);
            if r.get("reached").and_then(|v| v.as_u64()) != Some(args.proxies as u64) {
                eprintln!("restart: not every proxy reconverged");
            }
            Some(r)
        }
        _ => None,
    };
    let mean_bytes = change_bytes.iter().sum::<u64>() as f64 / change_bytes.len().max(1) as f64;
    let summary = serde_json::json!({
        "mode": args.mode,
        "proxies": args.proxies,
        "services": args.services,
        "endpoints_total": args.services * args.endpoints,
        "initial_sync_s": initial_s,
        "initial_bytes": initial_bytes,
        "initial_bytes_per_proxy": initial_bytes as f64 / args.proxies.max(1) as f64,
        "deps": args.deps,
        "receivers_per_change": receivers.iter().sum::<usize>() as f64 / receivers.len().max(1) as f64,
        "full_push_cpu_s": full_push_cpu,
        "control_rss_mib": end.map(|u| u.1 as f64 / 1024.0),
        "control_peak_rss_mib": end.map(|u| u.2 as f64 / 1024.0),
        "change_to_last_ack_ms": {
            "p50": percentile(&all_last, 0.5), "p99": percentile(&all_last, 0.99), "max": all_last.max() as f64 / 1000.0,
        },
        "change_to_each_ack_ms": { "p50": percentile(&all_each, 0.5), "p99": percentile(&all_each, 0.99) },
        "bytes_per_change": mean_bytes,
        "bytes_per_change_per_proxy": mean_bytes / args.proxies as f64,
        "changes": per_change,
        "restart": storm,
    });
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&summary).unwrap()).expect("write --json");
    }
    rt.shutdown_timeout(Duration::from_millis(200));
    if storm.is_some_and(|r| r["reached"].as_u64() != Some(args.proxies as u64)) {
        drop(_control_guard.take());
        std::process::exit(1);
    }
}

/// The reconnect storm: kill the control plane under all connected proxies, move one endpoint
/// while it is down, start it again on the same ports, and measure until every proxy has
/// reconnected and received the moved endpoint.
fn restart_storm(
    args: &Args,
    bin: &Path,
    registry: &Path,
    xds: SocketAddr,
    admin: SocketAddr,
    shared: &Shared,
    guard: &mut Option<ControlProcess>,
) -> serde_json::Value {
    let svc = (args.changes * 7919 + 17) % args.services;
    let port = 40000;
    let reconnects_before = shared.reconnects.load(Ordering::SeqCst);
    let failed_before = shared.failed.load(Ordering::SeqCst);
    // Other load on the machine while the storm runs.
    let stop_load = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burners: Vec<_> = (0..args.load_threads)
        .map(|_| {
            let stop = stop_load.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    eprintln!(
        "restart: stopping the control plane under {} connected proxies",
        args.proxies
    );
    drop(guard.take());
    write_service(registry, svc, args.endpoints, Some(port)).expect("rewrite registry file");
    std::thread::sleep(Duration::from_millis(args.down_ms));
    let probe = Arc::new(Probe {
        id: usize::MAX - 1,
        service: service_name(svc),
        port,
        t0: Instant::now(),
        seen: AtomicUsize::new(0),
        latencies_us: Mutex::new(Vec::new()),
    });
    *shared.probe.write().unwrap() = Some(probe.clone());
    let t0 = Instant::now();
    match start_control(bin, registry, xds, admin) {
        Ok(g) => *guard = Some(g),
        Err(e) => {
            eprintln!("restart: {e}");
            return serde_json::json!({ "error": e, "reached": 0 });
        }
    }
    let ready_s = t0.elapsed().as_secs_f64();
    let limit = Duration::from_secs(args.timeout_secs);
    let mut last_print = Instant::now();
    while probe.seen.load(Ordering::SeqCst) < args.proxies && t0.elapsed() < limit {
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!("  reconverged {}/{}", probe.seen.load(Ordering::SeqCst), args.proxies);
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop_load.store(true, Ordering::Relaxed);
    for b in burners {
        let _ = b.join();
    }
    let lat = probe.latencies_us.lock().unwrap().clone();
    let mut h = Histogram::<u64>::new(3).unwrap();
    for l in &lat {
        h.record(*l).ok();
    }
    let last = lat.iter().copied().max().unwrap_or(0) as f64 / 1e6;
    let reconnects = shared.reconnects.load(Ordering::SeqCst) - reconnects_before;
    let failed = shared.failed.load(Ordering::SeqCst) - failed_before;
    let end = guard.as_ref().and_then(|g| proc_usage(g.0.id()));
    eprintln!(
        "restart: ready after {ready_s:.2}s; {}/{} proxies reconverged, last after {last:.2}s (p50 {:.2}s, p99 {:.2}s); {reconnects} reconnects, {failed} failed attempts",
        lat.len(),
        args.proxies,
        percentile(&h, 0.5) / 1000.0,
        percentile(&h, 0.99) / 1000.0,
    );
    serde_json::json!({
        "down_ms": args.down_ms,
        "load_threads": args.load_threads,
        "control_ready_s": ready_s,
        "reached": lat.len(),
        "reconverge_last_s": last,
        "reconverge_p50_s": percentile(&h, 0.5) / 1000.0,
        "reconverge_p99_s": percentile(&h, 0.99) / 1000.0,
        "reconnects": reconnects,
        "failed_attempts": failed,
        "backoff_ms": [args.backoff_base_ms, args.backoff_max_ms],
        "control_rss_mib": end.map(|u| u.1 as f64 / 1024.0),
    })
}
