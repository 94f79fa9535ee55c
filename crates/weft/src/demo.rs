//! `weft demo`: a whole mesh on loopback. It starts `weft control` on a registry directory, five
//! sample service instances (frontend, reviews v1 and v2, ratings over HTTP; details, a Dubbo2
//! provider the frontend calls over RPC), each behind its own `weft proxy` sidecar configured over
//! xDS, and a traffic generator; prints where to look and one summary line
//! per second; and on a timer edits the registry files (a canary weight shift, then a fault
//! injection) so the user watches the mesh react.
//!
//! The control plane and the sidecars are child processes of this binary (exactly what a user would
//! run); the sample applications and the traffic generator run in this process. Everything binds
//! 127.0.0.1. Ctrl-C (or SIGTERM, SIGHUP, `--duration`) stops the children — sidecars first, then the
//! control plane, so nothing warns about a lost control plane — and removes the temporary directory.
//! The children run in process groups of their own: a terminal's Ctrl-C reaches only the demo.

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args, Clone)]
pub struct DemoArgs {
    /// Stop after this long (e.g. 60s); default: run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second the traffic generator sends to the frontend.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Seconds between scripted events (canary 10%, canary 50%, fault on, fault off + promote).
    #[arg(long, default_value_t = 10)]
    pub step: u64,
    /// xDS flavour the sidecars use: "delta" or "sotw".
    #[arg(long, default_value = "delta")]
    pub xds: String,
    /// Run the mesh without its CA: plaintext between the sidecars. By default weft control runs
    /// the mesh CA, every sidecar gets a SPIFFE identity, and calls between sidecars are mTLS.
    #[arg(long)]
    pub plaintext: bool,
}

/// The same defaults as the flags: `weft` with no subcommand runs the demo.
impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            duration: None,
            rate: 100,
            step: 10,
            xds: "delta".into(),
            plaintext: false,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    weft_config::duration::parse(s)
}

/// An address for a child process to bind, free a moment ago. The children bind these later, so
/// the port is drawn below the kernel's ephemeral range (32768+ by default): ports there are also
/// handed out to every outgoing connection and every bind to port 0, and one could take it meanwhile.
/// The draw is from 26000-32767: the test suite hands ports 20000-25999 to the processes it starts
/// (`weft-test-support`'s `free_port`), and a demo running beside those tests must not take a
/// port a test has handed out but its child has not bound yet.
///
/// A port is never handed out twice by one demo: two children given the same free port would
/// race for it, and the loser exits.
fn free_addr() -> std::io::Result<SocketAddr> {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        let port = fastrand::u16(26000..32768);
        if handed.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            handed.push(port);
            return l.local_addr();
        }
    }
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    handed.push(addr.port());
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// Per-second statistics

#[derive(Default)]
struct Window {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u32>,
}

#[derive(Default, Clone)]
struct Stats(Arc<Mutex<BTreeMap<&'static str, Window>>>);

impl Stats {
    fn record(&self, who: &'static str, ok: bool, took: Duration) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let w = m.entry(who).or_default();
        if ok {
            w.ok += 1;
        } else {
            w.errors += 1;
        }
        w.latencies_us.push(took.as_micros().min(u32::MAX as u128) as u32);
    }

    fn take(&self) -> BTreeMap<&'static str, Window> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn p99_ms(lat: &mut [u32]) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    lat.sort_unstable();
    lat[((lat.len() - 1) as f64 * 0.99) as usize] as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// A tiny keep-alive HTTP/1.1 client (apps call their sidecar's outbound listener with it)

type Conn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

#[derive(Clone)]
struct Client {
    /// Movable: a restarted mesh (after a port clash) puts the sidecar elsewhere.
    to: Arc<Mutex<SocketAddr>>,
    slots: Arc<Vec<tokio::sync::Mutex<Option<Conn>>>>,
    next: Arc<AtomicU64>,
}

impl Client {
    fn new(to: SocketAddr) -> Client {
        Client {
            to: Arc::new(Mutex::new(to)),
            slots: Arc::new((0..16).map(|_| tokio::sync::Mutex::new(None)).collect()),
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    /// GET `path` with `Host: host`; (status, body) or None on a transport error.
    async fn get(&self, host: &str, path: &str) -> Option<(u16, String)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            let to = *self.to.lock().unwrap_or_else(|e| e.into_inner());
            let stream = tokio::net::TcpStream::connect(to).await.ok()?;
            let _ = stream.set_nodelay(true);
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
            tokio::spawn(conn);
            *slot = Some(s);
        }
        let sender = slot.as_mut()?;
        sender.ready().await.ok()?;
        let req = hyper::Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .ok()?;
        let resp = match tokio::time::timeout(Duration::from_secs(5), sender.send_request(req)).await {
            Ok(Ok(r)) => r,
            _ => {
                *slot = None;
                return None;
            }
        };
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).trim().to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny Dubbo2 client (the frontend calls details with it, through its sidecar)

/// The Dubbo interface of the demo's `details` service.
const DETAILS_INTERFACE: &str = "demo.Details";

/// A connection to the sidecar's Dubbo listener and its read buffer.
type DubboConn = (tokio::net::TcpStream, bytes::BytesMut);

#[derive(Clone)]
struct DubboClient {
    /// Movable, as [`Client::to`].
    to: Arc<Mutex<SocketAddr>>,
    /// Connections, one call at a time each (the sidecar multiplexes them upstream).
    slots: Arc<Vec<tokio::sync::Mutex<Option<DubboConn>>>>,
    next: Arc<AtomicU64>,
}

impl DubboClient {
    fn new(to: SocketAddr) -> DubboClient {
        DubboClient {
            to: Arc::new(Mutex::new(to)),
            slots: Arc::new((0..8).map(|_| tokio::sync::Mutex::new(None)).collect()),
            next: Arc::new(AtomicU64::new(1)),
        }
    }

    /// `demo.Details.get(arg)`: the provider's answer (it echoes `arg`), or why not. Recorded as
    /// the `details-1` figures of the per-second line (seen by the frontend).
    async fn call(&self, arg: &str, stats: &Stats) -> Result<String, String> {
        let start = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), self.call_inner(arg)).await;
        let r = r.unwrap_or_else(|_| Err("timeout".into()));
        stats.record("details-1", r.is_ok(), start.elapsed());
        r
    }

    async fn call_inner(&self, arg: &str) -> Result<String, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use weft_rpc::codec::Codec;
        use weft_rpc::dubbo::{self, Dubbo};
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut slot = self.slots[id as usize % self.slots.len()].lock().await;
        let (s, buf) = match &mut *slot {
            Some(c) => c,
            none => {
                let to = *self.to.lock().unwrap_or_else(|e| e.into_inner());
                let s = tokio::net::TcpStream::connect(to).await.map_err(|e| e.to_string())?;
                let _ = s.set_nodelay(true);
                none.insert((s, bytes::BytesMut::with_capacity(1024)))
            }
        };
        let mut args = Vec::new();
        weft_rpc::hessian::write_string(&mut args, arg);
        let req = dubbo::encode_request(id, true, DETAILS_INTERFACE, "", "get", "Ljava/lang/String;", &args, &[]);
        let frame = async {
            s.write_all(&req).await.map_err(|e| e.to_string())?;
            loop {
                match Dubbo.decode(buf, 1 << 20) {
                    Ok(Some(f)) if f.id == id => return Ok(f),
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    Err(e) => return Err(e.to_string()),
                }
                if s.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("connection closed".to_string());
                }
            }
        }
        .await;
        let f = match frame {
            Ok(f) => f,
            Err(e) => {
                *slot = None;
                return Err(e);
            }
        };
        if f.status != 20 {
            return Err(format!(
                "status {}: {}",
                f.status,
                dubbo::error_message(&f).unwrap_or_default()
            ));
        }
        let mut r = weft_rpc::hessian::Reader::at(&f.data, dubbo::HEADER_LEN);
        let _kind = r.read_int().map_err(|e| e.to_string())?;
        Ok(r.read_opt_string()
            .map_err(|e| e.to_string())?
            .map(|s| s.into_owned())
            .unwrap_or_default())
    }
}

// ---------------------------------------------------------------------------------------------
// Sample applications

/// What an app does with a request: answer by itself, or call a downstream service through its
/// sidecar and wrap the answer.
#[derive(Clone)]
enum Behaviour {
    Leaf(&'static str),
    Calls {
        me: &'static str,
        service: &'static str,
        sidecar: Client,
        /// Also a Dubbo call (to details) through the sidecar's outbound Dubbo listener.
        rpc: Option<DubboClient>,
    },
}

async fn serve_app(listener: tokio::net::TcpListener, name: &'static str, behaviour: Behaviour, stats: Stats) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let behaviour = behaviour.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req: hyper::Request<Incoming>| {
                let behaviour = behaviour.clone();
                let stats = stats.clone();
                async move {
                    let start = Instant::now();
                    let (status, body) = match &behaviour {
                        Behaviour::Leaf(text) => (200, text.to_string()),
                        Behaviour::Calls {
                            me,
                            service,
                            sidecar,
                            rpc,
                        } => {
                            let http = sidecar.get(service, "/");
                            let (http, rpc) = match rpc {
                                Some(d) => {
                                    let (h, r) = tokio::join!(http, d.call("book-1", &stats));
                                    (h, Some(r))
                                }
                                None => (http.await, None),
                            };
                            match (http, rpc) {
                                (Some((200, b)), None) => (200, format!("{me} <- {b}")),
                                (Some((200, b)), Some(Ok(d))) => (200, format!("{me} <- {b}; details (dubbo) <- {d}")),
                                (Some((200, _)), Some(Err(e))) => (502, format!("{me}: details (dubbo): {e}")),
                                (Some((s, _)), _) => (502, format!("{me}: {service} answered {s}")),
                                (None, _) => (502, format!("{me}: {service} unreachable")),
                            }
                        }
                    };
                    stats.record(name, status == 200, start.elapsed());
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .status(status)
                            .header("x-served-by", name)
                            .body(Full::new(Bytes::from(body)))
                            .expect("valid response"),
                    )
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The mesh: registry files, control plane, sidecars

/// One service instance: its app, and the three addresses of its sidecar.
struct Instance {
    id: &'static str,
    /// The workload it belongs to (Istio's `WORKLOAD_NAME`; a node on the service graph).
    workload: &'static str,
    service: &'static str,
    version: &'static str,
    app: SocketAddr,
    inbound: SocketAddr,
    outbound: SocketAddr,
    /// The sidecar's outbound Dubbo listener (the frontend's only): its app's Dubbo calls.
    dubbo_out: Option<SocketAddr>,
    admin: SocketAddr,
}

/// Children are killed when the demo ends, however it ends: last started first, so the sidecars
/// are gone before the control plane (which starts first) closes their xDS streams — otherwise
/// each sidecar logs a warning about the lost control plane on the way out.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A child in a process group of its own: a terminal's Ctrl-C (SIGINT to the foreground group)
/// reaches the demo only, which then stops the children in order (see [`Children`]).
fn own_group(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The identity (namespace/service account) of a service's workloads in the demo.
fn identity_of(service: &str) -> String {
    format!("demo/{service}")
}

fn services_yaml(instances: &[Instance], mtls: bool) -> String {
    let mut s = String::from("# The demo's services: each endpoint is a sidecar's inbound listener.\nservices:\n");
    for svc in ["frontend", "reviews", "ratings", "details"] {
        if svc == "details" {
            // A Dubbo2 service: its sidecar proxies each call; callers' sidecars route by interface.
            s.push_str(&format!(
                "  - name: {svc}\n    protocol: dubbo\n    interfaces: [{DETAILS_INTERFACE}]\n"
            ));
        } else {
            s.push_str(&format!("  - name: {svc}\n    protocol: http\n"));
        }
        if mtls {
            // Secure naming: callers' sidecars accept only this identity from the service's
            // servers. Mode: weft control's default, PERMISSIVE (the traffic generator calls the
            // frontend's sidecar in plaintext).
            s.push_str(&format!(
                "    identities: [\"spiffe://cluster.local/ns/{}\"]\n",
                identity_of(svc).replace('/', "/sa/")
            ));
        }
        s.push_str("    endpoints:\n");
        for i in instances.iter().filter(|i| i.service == svc) {
            s.push_str(&format!(
                "      - address: {}\n        labels: {{version: {}}}\n        locality: {{region: local, zone: a}}\n",
                i.inbound, i.version
            ));
        }
    }
    s
}

fn destinations_yaml() -> String {
    r#"# Destination policies: subsets by label, connection limits, outlier ejection.
destinations:
  - service: reviews
    lb: least_request
    connection_limits: {max_requests: 1000, max_pending_requests: 1000}
    outlier_detection: {consecutive_5xx: 5, interval: 1s, base_ejection_time: 5s, max_ejection_percent: 50}
    subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#
    .to_string()
}

/// The timeline's authorization stage: ratings refuses reviews (by its mTLS identity, or, in
/// plaintext, every caller: reviews is its only one). Removing the file lifts it.
fn deny_reviews_yaml(mtls: bool) -> String {
    let from = if mtls {
        format!(
            "\n        from: [{{principals: [\"spiffe://cluster.local/ns/{}\"]}}]",
            identity_of("reviews").replace('/', "/sa/")
        )
    } else {
        String::new()
    };
    format!(
        "# Authorization (written by the demo's timeline): ratings no longer serves reviews.\nauthorization:\n  - name: ratings-refuses-reviews\n    service: ratings\n    action: DENY\n    rules:\n      - to: [{{methods: [GET]}}]{from}\n"
    )
}

/// The routing policy at each stage of the timeline.
fn routes_yaml(v2_weight: u32, ratings_fault_percent: u32) -> String {
    let mut s = format!(
        "# Routing rules (edited by the demo's timeline).\nroutes:\n  - service: reviews\n    http:\n      - route:\n          - {{destination: reviews, subset: v1, weight: {}}}\n          - {{destination: reviews, subset: v2, weight: {}}}\n        timeout: 3s\n",
        100 - v2_weight,
        v2_weight
    );
    if ratings_fault_percent > 0 {
        s.push_str(&format!(
            "  - service: ratings\n    http:\n      - route: [{{destination: ratings}}]\n        fault: {{abort: {{http_status: 503, percent: {ratings_fault_percent}}}}}\n"
        ));
    }
    s
}

fn sidecar_yaml(i: &Instance, xds: SocketAddr, mode: &str) -> String {
    format!(
        r#"# Sidecar of {id}: everything but this bootstrap comes from weft control over xDS.
node:
  id: {id}
  cluster: {service}
  zone: a
  region: local
  metadata:
    weft.role: sidecar
    weft.inbound: "{inbound}"
    weft.outbound: "{outbound}"
    weft.app: "{app}"{dubbo}
    WORKLOAD_NAME: {workload}
    NAMESPACE: demo
admin:
  address: "{admin}"
runtime:
  concurrency: 1
xds:
  address: "{xds}"
  mode: {mode}
"#,
        id = i.id,
        workload = i.workload,
        service = i.service,
        inbound = i.inbound,
        outbound = i.outbound,
        app = i.app,
        admin = i.admin,
        dubbo = i
            .dubbo_out
            .map(|d| format!("\n    weft.outbound_dubbo: \"{d}\""))
            .unwrap_or_default(),
    )
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).split_whitespace().nth(1)?.parse().ok()
}

/// The mTLS handshakes a sidecar's listeners completed (`weft_tls_handshakes_total`, downstream).
fn mtls_accepted(admin: SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let text = (|| {
        let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(300)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        write!(
            s,
            "GET /stats/prometheus HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        Some(String::from_utf8_lossy(&buf).into_owned())
    })()
    .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("weft_tls_handshakes_total{side=\"downstream\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<u64>().ok()))
        .sum()
}

async fn wait_ready(name: &str, admin: SocketAddr, children: &mut Children, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if tokio::task::spawn_blocking(move || http_status(admin, "/ready"))
            .await
            .ok()
            .flatten()
            == Some(200)
        {
            return Ok(());
        }
        for (n, c) in &mut children.0 {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("{n} exited ({status}) before it was ready"));
            }
        }
        if start.elapsed() > limit {
            return Err(format!("{name} not ready after {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How the demo's mesh runs.
struct MeshOptions<'a> {
    /// The sidecars' `xds.mode`.
    xds_mode: &'a str,
    /// `WEFT_LOG` of the children.
    log: &'a str,
    /// weft control runs the mesh CA (in `<dir>/ca`): identities and mTLS between sidecars.
    mtls: bool,
}

/// Starts weft control and one sidecar per instance, and waits until all of them are ready.
async fn start_mesh(
    exe: &Path,
    dir: &Path,
    registry: &Path,
    instances: &[Instance],
    xds: SocketAddr,
    control_admin: SocketAddr,
    mesh: &MeshOptions<'_>,
) -> Result<Children, String> {
    let (mode, log) = (mesh.xds_mode, mesh.log);
    let io = |e: std::io::Error| e.to_string();
    let mut children = Children(Vec::new());
    let ca_dir = dir.join("ca");
    let mut control_cmd = Command::new(exe);
    control_cmd.args(["control", "--registry"]).arg(registry).args([
        "--xds",
        &xds.to_string(),
        "--admin",
        &control_admin.to_string(),
    ]);
    if mesh.mtls {
        control_cmd.arg("--ca-dir").arg(&ca_dir);
    }
    let control = own_group(&mut control_cmd)
        .env("WEFT_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start weft control: {e}"))?;
    children.0.push(("weft control".into(), control));
    wait_ready("weft control", control_admin, &mut children, Duration::from_secs(30)).await?;
    for i in instances {
        let cfg = dir.join(format!("sidecar-{}.yaml", i.id));
        write_atomic(&cfg, &sidecar_yaml(i, xds, mode)).map_err(io)?;
        let mut cmd = Command::new(exe);
        cmd.args(["proxy", "-c"]).arg(&cfg);
        if mesh.mtls {
            // A bootstrap token for the instance's identity; the sidecar generates its key and
            // obtains its certificate from weft control's CA (renewed at half-life).
            let out = Command::new(exe)
                .args(["control", "token", "--ca-dir"])
                .arg(&ca_dir)
                .args(["--identity", &identity_of(i.service), "--ttl", "24h"])
                .output()
                .map_err(|e| format!("weft control token: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "weft control token: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let token = dir.join(format!("{}.token", i.id));
            std::fs::write(&token, &out.stdout).map_err(io)?;
            cmd.args(["--ca-address", &xds.to_string(), "--identity-token-file"])
                .arg(&token);
        }
        let child = own_group(&mut cmd)
            .env("WEFT_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the sidecar of {}: {e}", i.id))?;
        children.0.push((format!("sidecar {}", i.id), child));
    }
    for i in instances {
        // Ready in well under a second normally; a sidecar that cannot bind its listeners never is.
        wait_ready(
            &format!("sidecar {}", i.id),
            i.admin,
            &mut children,
            Duration::from_secs(10),
        )
        .await?;
    }
    // A /ready answered by another process that holds the port (one a child failed to bind) looks
    // like readiness; the child that lost the port exits at once, so look again a moment later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (n, c) in &mut children.0 {
        if let Ok(Some(status)) = c.try_wait() {
            return Err(format!("{n} exited ({status}) at start"));
        }
    }
    Ok(children)
}

pub fn run(args: DemoArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft demo: {e}");
            return 1;
        }
    };
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    let code = rt.block_on(demo(args, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    code
}

async fn demo(args: DemoArgs, dir: &Path) -> i32 {
    match demo_inner(args, dir).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("weft demo: {e}");
            1
        }
    }
}

async fn demo_inner(args: DemoArgs, dir: &Path) -> Result<(), String> {
    let mode = match args.xds.as_str() {
        "delta" => "ads_delta",
        "sotw" => "ads_sotw",
        o => return Err(format!("--xds must be delta or sotw, not {o:?}")),
    };
    // Ctrl-C, and also SIGTERM and SIGHUP (terminal closed): the children, in their own process
    // groups, get none of these, so the demo must stop them itself.
    let stop = stop_signal();
    let exe: PathBuf = std::env::current_exe().map_err(|e| e.to_string())?;
    let registry = dir.join("registry");
    std::fs::create_dir_all(&registry).map_err(|e| format!("{}: {e}", registry.display()))?;
    let io = |e: std::io::Error| e.to_string();

    // Apps first (their listeners exist before anyone routes to them).
    let stats = Stats::default();
    let mut instances = Vec::new();
    let mut app_listeners = Vec::new();
    for (id, workload, service, version) in [
        ("frontend-1", "frontend", "frontend", "v1"),
        ("reviews-v1", "reviews-v1", "reviews", "v1"),
        ("reviews-v2", "reviews-v2", "reviews", "v2"),
        ("ratings-1", "ratings", "ratings", "v1"),
        ("details-1", "details", "details", "v1"),
    ] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        instances.push(Instance {
            id,
            workload,
            service,
            version,
            app: l.local_addr().map_err(io)?,
            inbound: free_addr().map_err(io)?,
            outbound: free_addr().map_err(io)?,
            dubbo_out: if id == "frontend-1" {
                Some(free_addr().map_err(io)?)
            } else {
                None
            },
            admin: free_addr().map_err(io)?,
        });
        app_listeners.push(l);
    }
    // The apps' clients of their own sidecar's outbound listener, by instance.
    let mut outbound_clients: Vec<Option<Client>> = Vec::new();
    let mut dubbo_client = None;
    for (i, l) in instances.iter().zip(app_listeners) {
        let (behaviour, client) = match i.id {
            "frontend-1" => {
                let c = Client::new(i.outbound);
                let d = i.dubbo_out.map(DubboClient::new);
                dubbo_client = d.clone();
                let b = Behaviour::Calls {
                    me: "frontend",
                    service: "reviews",
                    sidecar: c.clone(),
                    rpc: d,
                };
                (b, Some(c))
            }
            "details-1" => {
                // A Dubbo2 provider (weft bench's echo provider: answers each call with its
                // first argument).
                tokio::spawn(weft_bench::provider::serve(l));
                outbound_clients.push(None);
                continue;
            }
            "reviews-v1" => (Behaviour::Leaf("reviews-v1"), None),
            "reviews-v2" => {
                let c = Client::new(i.outbound);
                let b = Behaviour::Calls {
                    me: "reviews-v2",
                    service: "ratings",
                    sidecar: c.clone(),
                    rpc: None,
                };
                (b, Some(c))
            }
            _ => (Behaviour::Leaf("ratings: 4.5 stars"), None),
        };
        outbound_clients.push(client);
        tokio::spawn(serve_app(l, i.id, behaviour, stats.clone()));
    }

    // Registry, then the control plane, then the sidecars. The children bind addresses chosen
    // here; if another process takes one first (rare), start the mesh again on new ports.
    write_atomic(&registry.join("destinations.yaml"), &destinations_yaml()).map_err(io)?;
    write_atomic(&registry.join("routes.yaml"), &routes_yaml(0, 0)).map_err(io)?;
    let log = std::env::var("WEFT_LOG").unwrap_or_else(|_| "warn".into());
    let mut attempt = 0;
    let (mut children, xds, control_admin) = loop {
        attempt += 1;
        if attempt > 1 {
            for (i, client) in instances.iter_mut().zip(&outbound_clients) {
                i.inbound = free_addr().map_err(io)?;
                i.outbound = free_addr().map_err(io)?;
                i.admin = free_addr().map_err(io)?;
                if let Some(c) = client {
                    *c.to.lock().unwrap_or_else(|e| e.into_inner()) = i.outbound;
                }
                if i.dubbo_out.is_some() {
                    let d = free_addr().map_err(io)?;
                    i.dubbo_out = Some(d);
                    if let Some(c) = &dubbo_client {
                        *c.to.lock().unwrap_or_else(|e| e.into_inner()) = d;
                    }
                }
            }
        }
        write_atomic(
            &registry.join("services.yaml"),
            &services_yaml(&instances, !args.plaintext),
        )
        .map_err(io)?;
        let xds = free_addr().map_err(io)?;
        let control_admin = free_addr().map_err(io)?;
        let mesh = MeshOptions {
            xds_mode: mode,
            log: &log,
            mtls: !args.plaintext,
        };
        match start_mesh(&exe, dir, &registry, &instances, xds, control_admin, &mesh).await {
            Ok(children) => break (children, xds, control_admin),
            Err(e) if attempt < 3 => eprintln!("weft demo: {e}; starting again on other ports"),
            Err(e) => return Err(e),
        }
    };

    let frontend = instances[0].inbound;
    println!(
        "weft demo: a mesh on loopback. weft control serves xDS ({}) to five sidecars.",
        args.xds
    );
    if args.plaintext {
        println!("  (--plaintext: no CA, calls between sidecars are plaintext)\n");
    } else {
        println!(
            "  weft control is the mesh CA: each sidecar holds a SPIFFE identity (spiffe://cluster.local/ns/demo/sa/<service>,\n  on its admin page) and calls between sidecars are mTLS (PERMISSIVE inbound: the traffic generator calls\n  the frontend in plaintext). Root: {}\n",
            dir.join("ca/root-cert.pem").display()
        );
    }
    println!("  control plane  xDS {xds}   admin http://{control_admin}/debug/proxies  /metrics");
    println!(
        "  service graph  http://{control_admin}/graph  (live: workloads and their calls with rates, errors, latency)"
    );
    for i in &instances {
        let dubbo = i.dubbo_out.map(|d| format!(" dubbo out {d}")).unwrap_or_default();
        println!(
            "  {:<11}    app {}  sidecar in {} out {}{dubbo}  admin http://{}/ (try /clusters, /stats/prometheus, /xds)",
            i.id, i.app, i.inbound, i.outbound, i.admin
        );
    }
    println!(
        "  registry       {}  (edit these files: the mesh follows within a second)",
        registry.display()
    );
    println!(
        "  traffic        {} req/s to the frontend; frontend -> reviews (v1 | v2 -> ratings) over HTTP, and frontend -> details\n                 over Dubbo2 (the frontend's sidecar routes the call by interface {DETAILS_INTERFACE}; details' sidecar\n                 proxies each call: weft_rpc_* metrics on both admin pages)\n",
        args.rate
    );
    let s = args.step;
    println!(
        "  Timeline: t={s}s canary reviews-v2 10%; t={}s 50%; t={}s fault: calls to ratings abort 40%; t={}s fault off, v2 promoted to 100%;\n            t={}s authorization: ratings refuses reviews (403); t={}s lifted.",
        2 * s,
        3 * s,
        4 * s,
        5 * s,
        6 * s
    );
    println!("Each line: requests/s, error rate and p99 latency seen by the client, then by each service instance.");
    println!("Press Ctrl-C to stop.\n");

    let sent = Arc::new(AtomicU64::new(0));
    let gen = tokio::spawn(traffic(frontend, args.rate.max(1), stats.clone(), sent.clone()));
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut stage = 0;
    tokio::pin!(stop);
    let stages: [(u32, u32, &str); 4] = [
        (10, 0, "canary: reviews-v2 gets 10% (routes.yaml)"),
        (50, 0, "canary: reviews-v2 gets 50%"),
        (
            50,
            40,
            "fault injection: 40% of calls to ratings abort with 503 (injected by the callers' sidecars)",
        ),
        (100, 0, "fault removed; reviews-v2 promoted to 100%"),
    ];
    let result = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            _ = tick.tick() => {}
        }
        let elapsed = started.elapsed();
        if args.duration.is_some_and(|d| elapsed >= d) {
            break Ok(());
        }
        let exited = children.0.iter_mut().find_map(|(n, c)| {
            c.try_wait()
                .ok()
                .flatten()
                .map(|status| format!("{n} exited unexpectedly ({status})"))
        });
        if let Some(e) = exited {
            break Err(e);
        }
        let t = elapsed.as_secs();
        if stage < stages.len() && t >= s * (stage as u64 + 1) {
            let (v2, fault, what) = stages[stage];
            stage += 1;
            match write_atomic(&registry.join("routes.yaml"), &routes_yaml(v2, fault)) {
                Ok(()) => println!(">>> t={t}s  {what}"),
                Err(e) => println!(">>> t={t}s  cannot write the registry: {e}"),
            }
        } else if stage == stages.len() && t >= s * (stage as u64 + 1) {
            stage += 1;
            let by = if args.plaintext { "" } else { " (by its mTLS identity)" };
            match write_atomic(&registry.join("authz.yaml"), &deny_reviews_yaml(!args.plaintext)) {
                Ok(()) => println!(
                    ">>> t={t}s  authorization: ratings refuses reviews{by}; ratings' sidecar answers 403, reviews-v2 fails (authz.yaml)"
                ),
                Err(e) => println!(">>> t={t}s  cannot write the registry: {e}"),
            }
        } else if stage == stages.len() + 1 && t >= s * (stage as u64 + 1) {
            stage += 1;
            match std::fs::remove_file(registry.join("authz.yaml")) {
                Ok(()) => println!(">>> t={t}s  authorization lifted (authz.yaml removed)"),
                Err(e) => println!(">>> t={t}s  cannot change the registry: {e}"),
            }
        }
        let mut w = stats.take();
        let mut line = format!("t={t:>3}s");
        for (who, label) in [
            ("client", "client"),
            ("frontend-1", "frontend"),
            ("reviews-v1", "reviews-v1"),
            ("reviews-v2", "reviews-v2"),
            ("ratings-1", "ratings"),
            ("details-1", "details"),
        ] {
            let win = w.entry(who).or_default();
            let total = win.ok + win.errors;
            let err = if total == 0 {
                0.0
            } else {
                win.errors as f64 * 100.0 / total as f64
            };
            let p99 = p99_ms(&mut win.latencies_us);
            if who == "client" {
                line.push_str(&format!(
                    "  client {total:>3} req/s err {err:>4.1}% p99 {p99:>5.1}ms ||"
                ));
            } else {
                line.push_str(&format!(" {label} {total:>3} {err:>4.1}% {p99:>4.1}ms |"));
            }
        }
        line.pop();
        println!("{line}");
    };
    gen.abort();
    // How many mTLS connections the sidecars accepted from each other (read before they stop).
    let admins: Vec<SocketAddr> = instances.iter().map(|i| i.admin).collect();
    let mtls = tokio::task::spawn_blocking(move || admins.iter().map(|a| mtls_accepted(*a)).sum::<u64>())
        .await
        .unwrap_or(0);
    println!("\nstopping the sidecars and the control plane...");
    drop(children);
    if args.plaintext {
        println!("done: {} requests sent.", sent.load(Ordering::Relaxed));
    } else {
        println!(
            "done: {} requests sent; the sidecars accepted {mtls} mTLS connections from each other.",
            sent.load(Ordering::Relaxed)
        );
    }
    result
}

/// Resolves on SIGINT, SIGTERM or SIGHUP. The handlers are installed at once (not on the first
/// poll), so a signal during start-up does not kill the demo and leave its children running.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    );
    async move {
        match signals {
            (Ok(mut int), Ok(mut term), Ok(mut hup)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// A fixed-rate schedule; each request on its own task over keep-alive connections.
async fn traffic(frontend: SocketAddr, rate: u32, stats: Stats, sent: Arc<AtomicU64>) {
    let client = Client::new(frontend);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sent.fetch_add(1, Ordering::Relaxed);
        let client = client.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let ok = matches!(client.get("frontend", "/").await, Some((200, _)));
            stats.record("client", ok, start.elapsed());
        });
    }
}
