//! The mesh end to end, with processes nobody here wrote: `weft control` serving xDS from a file
//! registry to a real Envoy 1.40 (SotW and Delta ADS), to Python grpcio and Node @grpc/grpc-js-xds
//! proxyless clients (`xds:///` targets), and to `weft proxy` sidecars (SotW and Delta), including a
//! control plane killed and restarted under traffic.
//!
//! Peers come from `interop/install` (run by `scripts/test`). Outside CI a missing peer skips its
//! test with a message; under `CI=true` it fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use weft_test_support::peers::{self, ChildGuard};
use weft_test_support::{eventually_blocking, free_addr, TempDir};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http(addr: SocketAddr, method: &str, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The whole response to a GET on a fresh connection, and the client's address.
fn response_from(addr: SocketAddr, host: &str, path: &str) -> (String, SocketAddr) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).expect("connect");
    let me = s.local_addr().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    (String::from_utf8_lossy(&buf).to_string(), me)
}

// ---------------------------------------------------------------------------------------------
// Registry files (the file registry format of docs/control.md)

struct Ep<'a> {
    addr: SocketAddr,
    weight: u32,
    zone: &'a str,
    version: &'a str,
}

fn service_yaml(name: &str, protocol: &str, eps: &[Ep]) -> String {
    let empty = if eps.is_empty() { " []" } else { "" };
    let mut s = format!("services:\n  - name: {name}\n    protocol: {protocol}\n    endpoints:{empty}\n");
    for e in eps {
        s.push_str(&format!(
            "      - address: {}\n        weight: {}\n        labels: {{version: {}}}\n        locality: {{region: local, zone: {}}}\n",
            e.addr, e.weight, e.version, e.zone
        ));
    }
    s
}

/// Backend alpha (zone z1, version v1) and, unless `wb` is None (removed), beta with weight `wb` in
/// `zone_b` (version v1 when it shares alpha's zone, else v2).
fn alpha_beta((a, wa): (SocketAddr, u32), b: SocketAddr, wb: Option<u32>, zone_b: &'static str) -> Vec<Ep<'static>> {
    let mut v = vec![Ep {
        addr: a,
        weight: wa,
        zone: "z1",
        version: "v1",
    }];
    if let Some(wb) = wb {
        v.push(Ep {
            addr: b,
            weight: wb,
            zone: zone_b,
            version: if zone_b == "z1" { "v1" } else { "v2" },
        });
    }
    v
}

/// Replaces a registry file atomically, so the watcher never reads half of it.
fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// weft control as a process

struct Control {
    proc: Option<ChildGuard>,
    registry: PathBuf,
    xds: SocketAddr,
    admin: SocketAddr,
}

impl Control {
    fn start(registry: &Path) -> Control {
        let mut c = Control {
            proc: None,
            registry: registry.to_path_buf(),
            xds: free_addr(),
            admin: free_addr(),
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let child = Command::new(WEFT)
            .args(["control", "--registry"])
            .arg(&self.registry)
            .args(["--xds", &self.xds.to_string(), "--admin", &self.admin.to_string()])
            .env("WEFT_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start weft control");
        self.proc = Some(ChildGuard(child));
        let admin = self.admin;
        eventually_blocking("weft control /ready", Duration::from_secs(20), || {
            (http(admin, "GET", "x", "/ready")?.0 == 200).then_some(())
        });
    }

    fn kill(&mut self) {
        self.proc = None;
    }

    fn debug_proxies(&self) -> String {
        http(self.admin, "GET", "x", "/debug/proxies")
            .map(|r| r.1)
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP upstreams that answer with their name

fn name_server(name: &'static str) -> SocketAddr {
    name_server_with_health(name, Arc::new(AtomicBool::new(false)))
}

/// Like [`name_server`], but `GET /healthz` answers 503 while `sick` is set (other paths still 200).
fn name_server_with_health(name: &'static str, sick: Arc<AtomicBool>) -> SocketAddr {
    http_server(move |request_line| {
        let status = if request_line.starts_with("GET /healthz ") && sick.load(Ordering::SeqCst) {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        (status, name.to_string())
    })
}

/// A keep-alive HTTP/1.1 server on a thread per connection: `answer` gets each request line (the
/// requests carry no bodies in these tests) and returns the status line's status and the body. It
/// may block, to make a slow upstream.
fn http_server(answer: impl Fn(&str) -> (&'static str, String) + Send + Sync + 'static) -> SocketAddr {
    let answer = Arc::new(answer);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    let mut first = String::new();
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) if first.is_empty() => first = line.clone(),
                            Ok(_) => {}
                        }
                    }
                    if first.is_empty() {
                        return;
                    }
                    let (status, body) = answer(&first);
                    let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n", body.len());
                    if s.write_all(head.as_bytes())
                        .and_then(|()| s.write_all(body.as_bytes()))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `n` requests with `Host: host` to `via`, returns replies per body ("ERR <status>" for others).
fn spread(via: SocketAddr, host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let k = match http(via, "GET", host, "/") {
            Some((200, body)) => body,
            Some((s, _)) => format!("ERR {s}"),
            None => "ERR io".into(),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// No stream in weft control's `/debug/proxies` ever NACKed.
fn assert_no_nacks(proxies: &str) {
    let v: serde_json::Value = serde_json::from_str(proxies).expect("/debug/proxies is JSON");
    let text = v.to_string();
    assert!(!text.contains("\"last_nack\":\""), "a NACK: {proxies}");
}

fn share(m: &BTreeMap<String, usize>, k: &str) -> f64 {
    let total: usize = m.values().sum();
    *m.get(k).unwrap_or(&0) as f64 / total.max(1) as f64
}

// ---------------------------------------------------------------------------------------------
// Envoy

struct Envoy {
    _proc: ChildGuard,
    admin: SocketAddr,
    outbound: SocketAddr,
}

impl Envoy {
    fn start(bin: &Path, dir: &TempDir, api_type: &str, control: &Control, node_cluster: &str) -> Envoy {
        let outbound = free_addr();
        let template = std::fs::read_to_string(peers::interop_dir().join("envoy-ads.yaml")).unwrap();
        let cfg = template
            .replace("{{NODE_ID}}", &format!("envoy-{api_type}-{}", std::process::id()))
            .replace("{{NODE_CLUSTER}}", node_cluster)
            .replace("{{API_TYPE}}", api_type)
            .replace("{{OUTBOUND}}", &outbound.to_string())
            .replace("{{INBOUND}}", &free_addr().to_string())
            .replace("{{APP}}", &free_addr().to_string())
            .replace("{{XDS_PORT}}", &control.xds.port().to_string());
        let cfg_path = dir.join(&format!("envoy-{api_type}.yaml"));
        std::fs::write(&cfg_path, cfg).unwrap();
        let admin_path = dir.join(&format!("envoy-{api_type}.admin"));
        let child = Command::new(bin)
            .arg("-c")
            .arg(&cfg_path)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warn"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start envoy");
        let proc = ChildGuard(child);
        let admin: SocketAddr = eventually_blocking("envoy admin address", Duration::from_secs(20), || {
            std::fs::read_to_string(&admin_path).ok()?.trim().parse().ok()
        });
        Envoy {
            _proc: proc,
            admin,
            outbound,
        }
    }

    /// Envoy's counters and gauges, name -> value.
    fn stats(&self) -> BTreeMap<String, u64> {
        let body = http(self.admin, "GET", "x", "/stats").map(|r| r.1).unwrap_or_default();
        body.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }
}

fn assert_envoy_accepted_everything(envoy: &Envoy) {
    let stats = envoy.stats();
    let rejected: Vec<_> = stats
        .iter()
        .filter(|(k, v)| k.ends_with(".update_rejected") && **v > 0)
        .collect();
    assert!(rejected.is_empty(), "Envoy rejected xDS updates: {rejected:?}");
    for key in [
        "cluster_manager.cds.update_success",
        "listener_manager.lds.update_success",
    ] {
        assert!(stats.get(key).copied().unwrap_or(0) > 0, "{key} is 0: {stats:?}");
    }
    let rds = stats
        .iter()
        .filter(|(k, v)| k.contains(".rds.") && k.ends_with(".update_success") && **v > 0)
        .count();
    assert!(rds > 0, "no RDS update_success");
}

fn envoy_follows_registry(api_type: &str) {
    let Some(bin) = peers::envoy_binary() else { return };
    let dir = TempDir::new(&format!("envoy-{api_type}"));
    let reg = TempDir::new("reg");
    let a = name_server("alpha");
    let b = name_server("beta");
    let file = reg.join("echo.yaml");
    let eps = |wa: u32, wb: Option<u32>| alpha_beta((a, wa), b, wb, "z1");
    write_file(&file, &service_yaml("echo", "http", &eps(1, Some(1))));
    write_file(&reg.join("client.yaml"), &service_yaml("client", "http", &[]));
    let control = Control::start(&reg.0);
    let envoy = Envoy::start(&bin, &dir, api_type, &control, "client");

    // Both backends serve once Envoy has warmed its listener, routes, cluster and endpoints.
    eventually_blocking(
        "traffic through Envoy to both backends",
        Duration::from_secs(20),
        || {
            let m = spread(envoy.outbound, "echo", 20);
            (share(&m, "alpha") > 0.2 && share(&m, "beta") > 0.2).then_some(())
        },
    );
    assert_envoy_accepted_everything(&envoy);

    // A weight change in the registry moves traffic.
    write_file(&file, &service_yaml("echo", "http", &eps(9, Some(1))));
    eventually_blocking("Envoy to follow the weight change", Duration::from_secs(10), || {
        let m = spread(envoy.outbound, "echo", 100);
        (share(&m, "alpha") > 0.8).then_some(())
    });
    // Removing a backend takes it out of rotation.
    write_file(&file, &service_yaml("echo", "http", &eps(1, None)));
    eventually_blocking("Envoy to drop the removed backend", Duration::from_secs(10), || {
        let m = spread(envoy.outbound, "echo", 50);
        (share(&m, "alpha") == 1.0).then_some(())
    });
    assert_envoy_accepted_everything(&envoy);
    let proxies = control.debug_proxies();
    assert!(
        proxies.contains("envoy-"),
        "control plane does not list Envoy: {proxies}"
    );
}

#[test]
fn envoy_sotw_ads_follows_the_registry() {
    envoy_follows_registry("GRPC");
}

#[test]
fn envoy_delta_ads_follows_the_registry() {
    envoy_follows_registry("DELTA_GRPC");
}

// ---------------------------------------------------------------------------------------------
// Proxyless gRPC clients

struct GrpcBackend {
    _proc: ChildGuard,
    addr: SocketAddr,
}

fn grpc_backend(python: &Path, name: &str) -> GrpcBackend {
    let mut child = Command::new(python)
        .arg(peers::interop_dir().join("grpc_backend.py"))
        .args(["--name", name])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start python gRPC backend");
    let stdout = child.stdout.take().unwrap();
    let proc = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("backend said {line:?}"));
    GrpcBackend {
        _proc: proc,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// Reads the client's JSON lines on a thread; each is (replies per backend, errors).
fn report_lines(stdout: ChildStdout) -> mpsc::Receiver<(BTreeMap<String, u64>, u64, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let counts = v["counts"]
                .as_object()
                .map(|o| o.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
                .unwrap_or_default();
            let errors = v["errors"].as_u64().unwrap_or(0);
            let last = v["last_error"].as_str().unwrap_or("").to_string();
            if tx.send((counts, errors, last)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Accumulates client reports until `pred` holds on a window of at least `min` replies.
fn wait_for_window(
    rx: &mpsc::Receiver<(BTreeMap<String, u64>, u64, String)>,
    what: &str,
    timeout: Duration,
    min: u64,
    pred: impl Fn(&BTreeMap<String, u64>) -> bool,
) {
    let start = Instant::now();
    let mut window: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_err = String::new();
    while start.elapsed() < timeout {
        let Ok((counts, _errors, err)) = rx.recv_timeout(Duration::from_secs(2)) else {
            continue;
        };
        if !err.is_empty() {
            last_err = err;
        }
        for (k, n) in counts {
            *window.entry(k).or_insert(0) += n;
        }
        if window.values().sum::<u64>() >= min {
            if pred(&window) {
                return;
            }
            window.clear();
        }
    }
    panic!("timed out waiting for {what}; last window {window:?}, last error {last_err:?}");
}

fn frac(m: &BTreeMap<String, u64>, k: &str) -> f64 {
    *m.get(k).unwrap_or(&0) as f64 / m.values().sum::<u64>().max(1) as f64
}

fn grpc_client_follows_registry(client: &str) {
    let Some(venv) = peers::interop_peer(".venv-grpc") else {
        return;
    };
    let python = venv.join("bin/python");
    let node_client = peers::interop_dir().join("node/xds_client.js");
    if client == "node" && peers::interop_peer("node/node_modules/@grpc/grpc-js-xds").is_none() {
        return;
    }
    let dir = TempDir::new(&format!("grpc-{client}"));
    let reg = TempDir::new("reg");
    let a = grpc_backend(&python, "alpha");
    let b = grpc_backend(&python, "beta");
    // gRPC weights localities (its round_robin ignores endpoint weights), so each backend gets its
    // own zone and the control plane's locality weight (the sum of its endpoints') carries the split.
    let eps = |wa: u32, wb: Option<u32>| alpha_beta((a.addr, wa), b.addr, wb, "z2");
    let file = reg.join("echo.yaml");
    write_file(&file, &service_yaml("echo", "grpc", &eps(1, Some(1))));
    // Governance policies on the same service: the clusters gRPC shares with sidecars carry health
    // checks, a panic threshold, locality weighting and HIGH thresholds, and the sidecars' routes
    // priorities and rate limits (left out of API listeners); gRPC must accept all of it.
    write_file(
        &reg.join("ratelimit.yaml"),
        &format!(
            "services:\n  - name: ratelimit\n    protocol: grpc\n    endpoints: [{{address: \"{}\"}}]\nrate_limit_service: {{service: ratelimit, domain: mesh}}\n",
            free_addr()
        ),
    );
    write_file(
        &reg.join("governance.yaml"),
        "routes:\n  - service: echo\n    http:\n      - match: [{prefix: /}]\n        route: [{destination: echo}]\n        priority: high\n        rate_limits: [{actions: [{generic_key: {descriptor_value: echo}}]}]\ndestinations:\n  - service: echo\n    panic_threshold: 20\n    locality_lb: weighted\n    connection_limits: {max_requests: 1000, high_priority: {max_requests: 2000}}\n    health_checks: [{interval: 1s, tcp: {}}]\n",
    );
    let control = Control::start(&reg.0);
    let bootstrap = dir.join("xds-bootstrap.json");
    std::fs::write(
        &bootstrap,
        serde_json::json!({
            "xds_servers": [{
                "server_uri": control.xds.to_string(),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": format!("{client}-grpc-{}", std::process::id()), "locality": {"zone": "z1"}},
        })
        .to_string(),
    )
    .unwrap();
    let mut cmd = if client == "python" {
        let mut c = Command::new(&python);
        c.arg(peers::interop_dir().join("grpc_xds_client.py"));
        c
    } else {
        let mut c = Command::new("node");
        c.arg(&node_client);
        c
    };
    let mut child = cmd
        .args(["--target", "xds:///echo", "--duration", "40", "--interval", "0.25"])
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start gRPC xDS client");
    let rx = report_lines(child.stdout.take().unwrap());
    let _client = ChildGuard(child);

    wait_for_window(&rx, "calls to reach both backends", Duration::from_secs(20), 200, |m| {
        frac(m, "alpha") > 0.2 && frac(m, "beta") > 0.2
    });
    write_file(&file, &service_yaml("echo", "grpc", &eps(9, Some(1))));
    wait_for_window(
        &rx,
        "the weight change to shift calls",
        Duration::from_secs(10),
        300,
        |m| frac(m, "alpha") > 0.8 && frac(m, "alpha") < 0.97,
    );
    write_file(&file, &service_yaml("echo", "grpc", &eps(1, None)));
    wait_for_window(
        &rx,
        "the removed backend to stop getting calls",
        Duration::from_secs(10),
        200,
        |m| frac(m, "alpha") == 1.0,
    );
    let proxies = control.debug_proxies();
    assert!(proxies.contains(&format!("{client}-grpc")), "{proxies}");
    assert_no_nacks(&proxies);
}

#[test]
fn grpcio_xds_client_follows_the_registry() {
    grpc_client_follows_registry("python");
}

#[test]
fn grpc_js_xds_client_follows_the_registry() {
    grpc_client_follows_registry("node");
}

// ---------------------------------------------------------------------------------------------
// weft proxy sidecars against weft control

struct Sidecar {
    _proc: ChildGuard,
    admin: SocketAddr,
    outbound: SocketAddr,
}

fn start_sidecar(dir: &TempDir, id: &str, service: &str, control: &Control, mode: &str) -> Sidecar {
    let admin = free_addr();
    let outbound = free_addr();
    let cfg = format!(
        "node:\n  id: {id}\n  cluster: {service}\n  zone: z1\n  region: local\n  metadata:\n    weft.role: sidecar\n    weft.outbound: \"{outbound}\"\n    weft.inbound: \"{}\"\n    weft.app: \"{}\"\nadmin:\n  address: \"{admin}\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"{}\"\n  mode: {mode}\n",
        free_addr(),
        free_addr(),
        control.xds
    );
    let path = dir.join(&format!("{id}.yaml"));
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(WEFT)
        .args(["proxy", "-c"])
        .arg(&path)
        .env("WEFT_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .expect("start weft proxy");
    Sidecar {
        _proc: ChildGuard(child),
        admin,
        outbound,
    }
}

fn weft_sidecar_follows_registry_and_survives_control_restart(mode: &str) {
    let dir = TempDir::new(&format!("sidecar-{mode}"));
    let reg = TempDir::new("reg");
    let a = name_server("alpha");
    let b = name_server("beta");
    let file = reg.join("echo.yaml");
    let eps = |wa: u32, wb: Option<u32>| alpha_beta((a, wa), b, wb, "z1");
    write_file(&file, &service_yaml("echo", "http", &eps(1, Some(1))));
    write_file(&reg.join("client.yaml"), &service_yaml("client", "http", &[]));
    let mut control = Control::start(&reg.0);
    // The sidecar starts before it can have a config: /ready must say so until xDS has warmed.
    let sidecar = start_sidecar(&dir, &format!("client-{mode}"), "client", &control, mode);
    eventually_blocking("sidecar /ready", Duration::from_secs(20), || {
        (http(sidecar.admin, "GET", "x", "/ready")?.0 == 200).then_some(())
    });
    let m = spread(sidecar.outbound, "echo", 40);
    assert!(share(&m, "alpha") > 0.2 && share(&m, "beta") > 0.2, "{m:?}");

    write_file(&file, &service_yaml("echo", "http", &eps(9, Some(1))));
    eventually_blocking(
        "the sidecar to follow the weight change",
        Duration::from_secs(10),
        || {
            let m = spread(sidecar.outbound, "echo", 100);
            (share(&m, "alpha") > 0.8).then_some(())
        },
    );

    // The control plane dies: the sidecar keeps serving its last configuration.
    control.kill();
    let m = spread(sidecar.outbound, "echo", 100);
    assert_eq!(m.keys().filter(|k| k.starts_with("ERR")).count(), 0, "{m:?}");
    // The registry changes while the control plane is down; a new control plane picks it up and
    // the sidecar, reconnecting, resyncs.
    write_file(&file, &service_yaml("echo", "http", &eps(1, None)));
    // A kept sleep: with the control plane dead, nothing observable marks that the change was
    // (rightly) not picked up; the sidecar gets a moment before its traffic is sampled.
    std::thread::sleep(Duration::from_millis(300));
    let m = spread(sidecar.outbound, "echo", 50);
    assert!(
        share(&m, "beta") > 0.0 || share(&m, "alpha") > 0.95,
        "still the old config: {m:?}"
    );
    control.spawn();
    eventually_blocking(
        "the sidecar to resync after the restart",
        Duration::from_secs(20),
        || {
            let m = spread(sidecar.outbound, "echo", 50);
            (share(&m, "alpha") == 1.0).then_some(())
        },
    );
    assert_eq!(http(sidecar.admin, "GET", "x", "/ready").map(|r| r.0), Some(200));
}

#[test]
fn weft_sidecar_delta_follows_the_registry_and_survives_a_control_plane_restart() {
    weft_sidecar_follows_registry_and_survives_control_restart("ads_delta");
}

#[test]
fn weft_sidecar_sotw_follows_the_registry_and_survives_a_control_plane_restart() {
    weft_sidecar_follows_registry_and_survives_control_restart("ads_sotw");
}

/// An endpoint that refuses connections (a pod gone before the registry says so) costs no request:
/// weft control's routes retry a failed connection by default, on the other endpoint.
#[test]
fn weft_sidecar_retries_a_refused_connection_on_another_endpoint_by_default() {
    let dir = TempDir::new("sidecar-default-retry");
    let reg = TempDir::new("reg");
    let alpha = name_server("alpha");
    let gone = weft_test_support::net::dead_addr();
    let ep = |addr| Ep {
        addr,
        weight: 1,
        zone: "z1",
        version: "v1",
    };
    write_file(
        &reg.join("echo.yaml"),
        &service_yaml("echo", "http", &[ep(alpha), ep(gone)]),
    );
    write_file(&reg.join("client.yaml"), &service_yaml("client", "http", &[]));
    let control = Control::start(&reg.0);
    let sidecar = start_sidecar(&dir, "client-retry", "client", &control, "ads_delta");
    eventually_blocking("sidecar /ready", Duration::from_secs(20), || {
        (http(sidecar.admin, "GET", "x", "/ready")?.0 == 200).then_some(())
    });
    let m = spread(sidecar.outbound, "echo", 60);
    assert_eq!(m, BTreeMap::from([("alpha".to_string(), 60)]));
    let (_, stats) = http(sidecar.admin, "GET", "x", "/stats/prometheus").unwrap();
    let retries: f64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("weft_upstream_rq_retry_total{cluster=\"echo\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(retries >= 1.0, "no retry was needed, so nothing was tested:\n{stats}");
}

/// A route's cookie hash with a ttl, from weft control to a weft sidecar over a ring_hash
/// destination: a request without the cookie gets one (Envoy's value and format), and the cookie
/// sent back keeps every later request on the endpoint the first one reached.
#[test]
fn weft_sidecar_generates_hash_cookies_that_stick() {
    let dir = TempDir::new("sidecar-cookie");
    let reg = TempDir::new("reg");
    let ep = |addr| Ep {
        addr,
        weight: 1,
        zone: "z1",
        version: "v1",
    };
    let eps = [name_server("alpha"), name_server("beta"), name_server("gamma")].map(ep);
    write_file(&reg.join("echo.yaml"), &service_yaml("echo", "http", &eps));
    write_file(&reg.join("client.yaml"), &service_yaml("client", "http", &[]));
    write_file(
        &reg.join("policy.yaml"),
        "destinations:\n  - service: echo\n    lb: ring_hash\nroutes:\n  - service: echo\n    http:\n      - route: [{destination: echo}]\n        hash: {cookie: {name: sticky, ttl: 30m, path: /}}\n",
    );
    let control = Control::start(&reg.0);
    let sidecar = start_sidecar(&dir, "client-cookie", "client", &control, "ads_delta");
    sidecar_ready(&sidecar);
    let set_cookie = |text: &str| {
        text.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
                .map(|(_, v)| v.trim().to_string())
        })
    };
    let body = |text: &str| {
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    };
    let mut reached = BTreeMap::new();
    for conn in 0..12 {
        let (generating, me) = response_from(sidecar.outbound, "echo", "/");
        let sc = set_cookie(&generating).unwrap_or_else(|| panic!("no cookie generated:\n{generating}"));
        let value = format!(
            "{:016x}",
            weft_lb::hash_key(format!("{me}{}", sidecar.outbound).as_bytes())
        );
        assert_eq!(sc, format!("sticky=\"{value}\"; Max-Age=1800; Path=/; HttpOnly"));
        // The request that generated the cookie went where the cookie hashes.
        let mut first = Some(body(&generating));
        for i in 0..20 {
            let (status, text) = http_full(
                sidecar.outbound,
                "echo",
                "/",
                &format!("cookie: sticky=\"{value}\"\r\n"),
            )
            .unwrap();
            assert_eq!(status, 200, "{text}");
            assert_eq!(set_cookie(&text), None, "the cookie was sent: none is generated");
            let b = body(&text);
            assert_eq!(first.get_or_insert(b.clone()), &b, "connection {conn}, request {i}");
        }
        *reached.entry(first.unwrap()).or_insert(0) += 1;
    }
    assert!(reached.len() >= 2, "the cookies spread over the endpoints: {reached:?}");
    assert_no_nacks(&control.debug_proxies());
}

/// The README's mesh example (registry file and sidecar bootstrap) is valid as written.
#[test]
fn readme_mesh_example_is_valid() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let block = |first_line: &str| {
        let start = readme
            .find(&format!("```yaml\n{first_line}"))
            .unwrap_or_else(|| panic!("README has no block starting {first_line:?}"));
        let body = &readme[start + "```yaml\n".len()..];
        body[..body.find("```").unwrap()].to_string()
    };
    let dir = TempDir::new("readme");
    let reg = dir.join("registry");
    std::fs::create_dir_all(&reg).unwrap();
    std::fs::write(reg.join("reviews.yaml"), block("# registry/reviews.yaml")).unwrap();
    std::fs::write(dir.join("sidecar.yaml"), block("# sidecar.yaml")).unwrap();
    let out = Command::new(WEFT)
        .args(["control", "--check", "--registry"])
        .arg(&reg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(WEFT)
        .args(["proxy", "--check", "-c"])
        .arg(dir.join("sidecar.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// Governance policies (docs/control.md): active health checks, global rate limiting, priorities

/// One HTTP/1.1 request on a fresh connection: (status, the whole response, head included).
fn http_full(addr: SocketAddr, host: &str, path: &str, extra: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

fn sidecar_ready(sidecar: &Sidecar) {
    eventually_blocking("sidecar /ready", Duration::from_secs(20), || {
        (http(sidecar.admin, "GET", "x", "/ready")?.0 == 200).then_some(())
    });
}

/// An active HTTP health check from a destination policy takes a failing endpoint out of the
/// sidecar's rotation (traffic moves to the healthy one) and puts it back once it recovers.
#[test]
fn weft_sidecar_health_check_from_destination_policy_moves_traffic() {
    let dir = TempDir::new("hc");
    let reg = TempDir::new("reg");
    let a = name_server("alpha");
    let sick = Arc::new(AtomicBool::new(false));
    let b = name_server_with_health("beta", sick.clone());
    let eps = [
        Ep {
            addr: a,
            weight: 1,
            zone: "z1",
            version: "v1",
        },
        Ep {
            addr: b,
            weight: 1,
            zone: "z1",
            version: "v1",
        },
    ];
    write_file(&reg.join("echo.yaml"), &service_yaml("echo", "http", &eps));
    write_file(&reg.join("client.yaml"), &service_yaml("client", "http", &[]));
    write_file(
        &reg.join("policy.yaml"),
        "destinations:\n  - service: echo\n    panic_threshold: 10\n    health_checks:\n      - {interval: 100ms, timeout: 500ms, unhealthy_threshold: 1, healthy_threshold: 1, http: {path: /healthz, expected_statuses: [\"200-299\"]}}\n",
    );
    let control = Control::start(&reg.0);
    let sidecar = start_sidecar(&dir, "client-hc", "client", &control, "ads_delta");
    sidecar_ready(&sidecar);
    eventually_blocking("traffic to both backends", Duration::from_secs(10), || {
        let m = spread(sidecar.outbound, "echo", 40);
        (share(&m, "alpha") > 0.2 && share(&m, "beta") > 0.2).then_some(())
    });
    // beta still serves requests, but its health check fails: only the check can move traffic.
    sick.store(true, Ordering::SeqCst);
    eventually_blocking(
        "the health check to take beta out of rotation",
        Duration::from_secs(10),
        || {
            let m = spread(sidecar.outbound, "echo", 40);
            (share(&m, "alpha") == 1.0).then_some(())
        },
    );
    let clusters = http(sidecar.admin, "GET", "x", "/clusters")
        .map(|r| r.1)
        .unwrap_or_default();
    assert!(clusters.contains("health_checks"), "{clusters}");
    sick.store(false, Ordering::SeqCst);
    eventually_blocking("beta back in rotation", Duration::from_secs(10), || {
        let m = spread(sidecar.outbound, "echo", 40);
        (share(&m, "beta") > 0.2).then_some(())
    });
}

mod rls {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use weft_xds_api::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
    use weft_xds_api::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
        RateLimitService, RateLimitServiceServer,
    };
    use weft_xds_api::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};

    /// (domain, descriptors as key/value lists) of one call.
    pub type Call = (String, Vec<Vec<(String, String)>>);

    /// An Envoy RLS server: allows `limit` hits per distinct descriptor, then says OVER_LIMIT.
    #[derive(Clone, Default)]
    struct Rls {
        limit: u32,
        hits: Arc<Mutex<HashMap<String, u32>>>,
        seen: Arc<Mutex<Vec<Call>>>,
    }

    #[tonic::async_trait]
    impl RateLimitService for Rls {
        async fn should_rate_limit(
            &self,
            request: tonic::Request<RateLimitRequest>,
        ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
            let r = request.into_inner();
            let descriptors: Vec<Vec<(String, String)>> = r
                .descriptors
                .iter()
                .map(|d| d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect())
                .collect();
            let mut over = false;
            {
                let mut hits = self.hits.lock().unwrap();
                for d in &descriptors {
                    let n = hits.entry(format!("{d:?}")).or_insert(0);
                    *n += r.hits_addend.max(1);
                    over |= *n > self.limit;
                }
            }
            self.seen.lock().unwrap().push((r.domain, descriptors));
            Ok(tonic::Response::new(RateLimitResponse {
                overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
                ..Default::default()
            }))
        }
    }

    /// The server runs on its own runtime; dropping this stops it.
    pub struct Server {
        pub addr: SocketAddr,
        pub seen: Arc<Mutex<Vec<Call>>>,
        _rt: tokio::runtime::Runtime,
    }

    pub fn start(limit: u32) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let rls = Rls {
            limit,
            ..Default::default()
        };
        let seen = rls.seen.clone();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = RateLimitServiceServer::new(rls);
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Server { addr, seen, _rt: rt }
    }
}

/// The registry of the global rate limit tests: `echo` (HTTP) whose `/limited` route sends a
/// descriptor to the rate limit service `ratelimit` (a registered gRPC service).
fn rate_limited_registry(reg: &TempDir, echo: SocketAddr, rls: SocketAddr) {
    let ep = |addr| Ep {
        addr,
        weight: 1,
        zone: "z1",
        version: "v1",
    };
    write_file(&reg.join("echo.yaml"), &service_yaml("echo", "http", &[ep(echo)]));
    write_file(
        &reg.join("ratelimit.yaml"),
        &service_yaml("ratelimit", "grpc", &[ep(rls)]),
    );
    write_file(&reg.join("client.yaml"), &service_yaml("client", "http", &[]));
    write_file(
        &reg.join("mesh.yaml"),
        "rate_limit_service: {service: ratelimit, domain: mesh, timeout: 1s, failure_mode_deny: false}\n",
    );
    write_file(
        &reg.join("routes.yaml"),
        "routes:\n  - service: echo\n    http:\n      - match: [{prefix: /limited}]\n        route: [{destination: echo}]\n        rate_limits:\n          - actions: [{generic_key: {descriptor_value: echo-api}}, {request_headers: {header_name: x-user, descriptor_key: user}}]\n",
    );
}

/// Sends requests to `/limited` until one is refused by the rate limit service; checks the answer.
fn assert_rate_limited(outbound: SocketAddr, rls: &rls::Server, limit: usize) {
    // The first `limit` requests pass once the route and filter are in place; then 429.
    let mut ok = 0;
    let got = eventually_blocking("a 429 from the rate limit service", Duration::from_secs(20), || {
        let (status, text) = http_full(outbound, "echo", "/limited", "x-user: bob\r\n")?;
        if status == 200 {
            ok += 1;
        }
        (status == 429).then_some(text)
    });
    assert!(got.to_ascii_lowercase().contains("x-envoy-ratelimited: true"), "{got}");
    assert!(ok >= limit, "only {ok} requests passed before the limit of {limit}");
    // Routes without rate_limits are not limited.
    assert_eq!(http_full(outbound, "echo", "/free", "").map(|r| r.0), Some(200));
    let seen = rls.seen.lock().unwrap().clone();
    let want = vec![vec![
        ("generic_key".to_string(), "echo-api".to_string()),
        ("user".to_string(), "bob".to_string()),
    ]];
    assert!(seen.iter().all(|(d, ds)| d == "mesh" && *ds == want), "{seen:?}");
}

/// Global rate limiting from weft control's policies, through a weft sidecar, against a tonic RLS
/// server registered in the registry as a gRPC service. The policies arrive while the sidecar is
/// connected (SotW): the outbound listener gains the filter and the route its descriptors.
#[test]
fn weft_sidecar_global_rate_limit_from_policies() {
    let dir = TempDir::new("rls");
    let reg = TempDir::new("reg");
    let echo = name_server("echo");
    let rls = rls::start(3);
    rate_limited_registry(&reg, echo, rls.addr);
    let routes = std::fs::read_to_string(reg.join("routes.yaml")).unwrap();
    let mesh = std::fs::read_to_string(reg.join("mesh.yaml")).unwrap();
    std::fs::remove_file(reg.join("routes.yaml")).unwrap();
    std::fs::remove_file(reg.join("mesh.yaml")).unwrap();
    let control = Control::start(&reg.0);
    let sidecar = start_sidecar(&dir, "client-rls", "client", &control, "ads_sotw");
    sidecar_ready(&sidecar);
    let m = (0..10)
        .filter_map(|_| http_full(sidecar.outbound, "echo", "/limited", "x-user: bob\r\n"))
        .filter(|r| r.0 == 200)
        .count();
    assert_eq!(m, 10, "no limits before the policies exist");
    // The service block first (routes with rate_limits need it), then the routes.
    write_file(&reg.join("mesh.yaml"), &mesh);
    eventually_blocking("weft control to load mesh.yaml", Duration::from_secs(10), || {
        let body = http(control.admin, "GET", "x", "/debug/registry")?.1;
        body.contains("mesh.yaml").then_some(())
    });
    write_file(&reg.join("routes.yaml"), &routes);
    assert_rate_limited(sidecar.outbound, &rls, 3);
    assert_no_nacks(&control.debug_proxies());
}

/// A slow upstream behind a sidecar whose destination policy allows 1 default-priority request
/// and 5 high-priority ones: with the default slot busy, a default-priority request is refused
/// (503) while a `priority: high` route still gets through.
#[test]
fn weft_sidecar_high_priority_route_survives_a_full_default_breaker() {
    let dir = TempDir::new("prio");
    let reg = TempDir::new("reg");
    // An upstream that holds `/slow` for 5 s (saying so on `arrived`) and answers the rest at once.
    let (arrived_tx, arrived) = mpsc::channel::<()>();
    let arrived_tx = Mutex::new(arrived_tx);
    let slow = http_server(move |request_line| {
        if request_line.contains(" /slow") {
            let _ = arrived_tx.lock().unwrap().send(());
            std::thread::sleep(Duration::from_secs(5));
        }
        ("200 OK", "ok".to_string())
    });
    let ep = Ep {
        addr: slow,
        weight: 1,
        zone: "z1",
        version: "v1",
    };
    write_file(&reg.join("echo.yaml"), &service_yaml("echo", "http", &[ep]));
    write_file(&reg.join("client.yaml"), &service_yaml("client", "http", &[]));
    write_file(
        &reg.join("policy.yaml"),
        "routes:\n  - service: echo\n    http:\n      - match: [{prefix: /vip}]\n        route: [{destination: echo}]\n        priority: high\ndestinations:\n  - service: echo\n    connection_limits:\n      max_requests: 1\n      max_pending_requests: 1\n      max_connections: 1\n      high_priority: {max_requests: 5, max_pending_requests: 5, max_connections: 5}\n",
    );
    let control = Control::start(&reg.0);
    let sidecar = start_sidecar(&dir, "client-prio", "client", &control, "ads_delta");
    sidecar_ready(&sidecar);
    eventually_blocking("echo through the sidecar", Duration::from_secs(10), || {
        (http(sidecar.outbound, "GET", "echo", "/")?.0 == 200).then_some(())
    });
    let outbound = sidecar.outbound;
    let busy = std::thread::spawn(move || {
        let mut s = TcpStream::connect_timeout(&outbound, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(s, "GET /slow HTTP/1.1\r\nhost: echo\r\nconnection: close\r\n\r\n").ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).ok()?;
        String::from_utf8_lossy(&buf)
            .split_whitespace()
            .nth(1)?
            .parse::<u16>()
            .ok()
    });
    // Once the slow request holds the only default-priority slot, a default request is refused.
    arrived
        .recv_timeout(Duration::from_secs(10))
        .expect("the slow request to reach the upstream");
    let refused = http(outbound, "GET", "echo", "/");
    assert_eq!(refused.as_ref().map(|r| r.0), Some(503), "{refused:?}");
    // The high-priority route counts against its own thresholds.
    assert_eq!(http(outbound, "GET", "echo", "/vip").map(|r| r.0), Some(200));
    assert_eq!(busy.join().unwrap(), Some(200));
}

/// Every governance policy field at once, served to a real Envoy 1.40: nothing is rejected, health
/// checked endpoints serve, and global rate limiting through the registered RLS server answers 429.
fn envoy_accepts_every_governance_policy(api_type: &str) {
    let Some(bin) = peers::envoy_binary() else { return };
    let dir = TempDir::new(&format!("envoy-gov-{api_type}"));
    let reg = TempDir::new("reg");
    let echo = name_server("echo");
    let rls = rls::start(3);
    rate_limited_registry(&reg, echo, rls.addr);
    // A second gRPC service for the gRPC health check (nothing listens there: it stays unhealthy).
    write_file(
        &reg.join("ratings.yaml"),
        &format!(
            "services:\n  - name: ratings\n    protocol: grpc\n    endpoints: [{{address: \"{}\"}}]\n",
            free_addr()
        ),
    );
    write_file(
        &reg.join("routes.yaml"),
        "routes:\n  - service: echo\n    http:\n      - match: [{prefix: /limited}]\n        route: [{destination: echo}]\n        priority: high\n        rate_limits:\n          - actions: [{generic_key: {descriptor_value: echo-api}}, {request_headers: {header_name: x-user, descriptor_key: user}}]\n      - match: [{prefix: /other}]\n        route: [{destination: echo}]\n        rate_limits:\n          - actions: [{remote_address: {}}]\n          - actions: [{generic_key: {descriptor_value: other, descriptor_key: kind}}]\n      - match: [{prefix: /old/, query_params: {lang: {exact: en}, debug: {present: true}}}]\n        route: [{destination: echo}]\n        rewrite: {uri: /new/, authority: echo.internal}\n        headers: {request: {set: {x-lane: blue}, add: {x-via: weft}, remove: [x-debug]}, response: {set: {x-served-by: weft}, remove: [server]}}\n      - match: [{prefix: /sticky}]\n        route: [{destination: sticky}]\n        hash: {cookie: {name: sticky, ttl: 1h, path: /}}\n",
    );
    // The same echo server as a ring_hash service, for the cookie hash (Envoy generates cookies
    // only for consistent-hash clusters).
    write_file(
        &reg.join("sticky.yaml"),
        &service_yaml(
            "sticky",
            "http",
            &[Ep {
                addr: echo,
                weight: 1,
                zone: "z1",
                version: "v1",
            }],
        ),
    );
    write_file(
        &reg.join("destinations.yaml"),
        r#"destinations:
  - service: echo
    lb: least_request
    panic_threshold: 30
    locality_lb: zone_aware
    connection_limits:
      max_connections: 100
      max_requests: 100
      high_priority: {max_connections: 200, max_pending_requests: 50, max_requests: 200, max_retries: 5}
    outlier_detection: {consecutive_5xx: 5, interval: 1s, base_ejection_time: 30s, max_ejection_percent: 50}
    health_checks:
      - {interval: 200ms, interval_jitter: 50ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2, http: {path: /healthz, host: echo.local, expected_statuses: ["200-299", 304]}}
  - service: ratelimit
    health_checks: [{interval: 1s, tcp: {}}]
  - service: sticky
    lb: ring_hash
  - service: ratings
    locality_lb: weighted
    panic_threshold: 0
    health_checks: [{interval: 1s, grpc: {service_name: ratings.v1.Ratings}}]
"#,
    );
    let control = Control::start(&reg.0);
    let envoy = Envoy::start(&bin, &dir, api_type, &control, "client");
    let start = Instant::now();
    loop {
        if http(envoy.outbound, "GET", "echo", "/").is_some_and(|r| r.0 == 200) {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let rejected: Vec<_> = envoy
                .stats()
                .into_iter()
                .filter(|(k, v)| *v > 0 && (k.contains("rejected") || k.contains("health_check")))
                .collect();
            panic!(
                "no traffic through Envoy to echo: {rejected:?}\n{}\n{:?}",
                control.debug_proxies(),
                http(envoy.outbound, "GET", "echo", "/")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_rate_limited(envoy.outbound, &rls, 3);
    assert_envoy_accepted_everything(&envoy);
    // The route's cookie hash: Envoy generates the cookie as weft does (docs/config.md).
    let (head, me) = response_from(envoy.outbound, "echo", "/sticky");
    let set_cookie = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
                .map(|(_, v)| v.trim().to_string())
        })
        .expect("Envoy sets the generated cookie");
    let value = set_cookie
        .strip_prefix("sticky=\"")
        .and_then(|r| r.split_once('"'))
        .map(|(v, _)| v.to_string())
        .unwrap_or_else(|| panic!("{set_cookie}"));
    assert!(
        value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()),
        "{set_cookie}"
    );
    assert_eq!(
        set_cookie,
        format!("sticky=\"{value}\"; Max-Age=3600; Path=/; HttpOnly")
    );
    // Its value: xxHash64 of the connection's remote then local address, as weft makes it.
    let addrs = format!("{me}{}", envoy.outbound);
    assert_eq!(
        value,
        format!("{:016x}", weft_lb::hash_key(addrs.as_bytes())),
        "{addrs}"
    );
    let stats = envoy.stats();
    assert!(
        stats.get("cluster.echo.health_check.success").copied().unwrap_or(0) > 0,
        "Envoy runs the health checks: {:?}",
        stats
            .iter()
            .filter(|(k, _)| k.contains("health_check"))
            .collect::<Vec<_>>()
    );
    assert_no_nacks(&control.debug_proxies());
}

#[test]
fn envoy_sotw_accepts_every_governance_policy() {
    envoy_accepts_every_governance_policy("GRPC");
}

#[test]
fn envoy_delta_accepts_every_governance_policy() {
    envoy_accepts_every_governance_policy("DELTA_GRPC");
}

/// Every YAML example in docs/control.md is valid: the registry examples all together, as one
/// registry directory; weft's Kubernetes resources (WeftRoute, WeftDestination, WeftAuthorization)
/// through the same validation the Kubernetes registry applies.
/// Istio VirtualServices and DestinationRules (documents separated by `---`) map to weft policy
/// with nothing skipped.
fn istio_example(body: &str) -> Result<(), String> {
    use weft_control::istio::{self, DestinationRuleSpec, Lookup, VirtualServiceSpec};
    struct ByName;
    impl Lookup for ByName {
        fn service_for_port(&self, namespace: &str, name: &str, _port: u32) -> Option<String> {
            Some(format!("{name}.{namespace}"))
        }
        fn hash_for(&self, _service: &str) -> Option<serde_json::Value> {
            None
        }
    }
    for doc in body.split("\n---\n") {
        let v: serde_json::Value = serde_saphyr::from_str(doc).map_err(|e| e.to_string())?;
        let ns = v["metadata"]["namespace"].as_str().unwrap_or("default");
        let raw = v["spec"].as_object().cloned().ok_or("no spec")?;
        let (fragment, skipped) = match v["kind"].as_str() {
            Some("VirtualService") => istio::virtual_service(&ByName, "docs example", ns, &VirtualServiceSpec { raw }),
            Some("DestinationRule") => istio::destination_rule("docs example", ns, &DestinationRuleSpec { raw }),
            k => return Err(format!("an Istio resource of kind {k:?}")),
        };
        if fragment.is_none() || !skipped.is_empty() {
            return Err(format!("not mapped whole: {skipped:?}"));
        }
    }
    Ok(())
}

/// An RBAC example (what weft control needs granted): a Role or binding with what each must have.
fn rbac_example(body: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_saphyr::from_str(body).map_err(|e| e.to_string())?;
    v["metadata"]["name"].as_str().ok_or("no metadata.name")?;
    match v["kind"].as_str() {
        Some("Role" | "ClusterRole") => {
            let rules = v["rules"].as_array().filter(|r| !r.is_empty()).ok_or("no rules")?;
            for r in rules {
                for f in ["apiGroups", "resources", "verbs"] {
                    r[f].as_array()
                        .filter(|a| !a.is_empty())
                        .ok_or(format!("a rule without {f}"))?;
                }
            }
            Ok(())
        }
        Some("RoleBinding" | "ClusterRoleBinding") => {
            v["roleRef"]["name"].as_str().ok_or("no roleRef.name")?;
            v["subjects"]
                .as_array()
                .filter(|s| !s.is_empty())
                .ok_or("no subjects")?;
            Ok(())
        }
        k => Err(format!("an RBAC resource of kind {k:?}")),
    }
}

#[test]
fn control_docs_examples_are_valid() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/control.md")).unwrap();
    let dir = TempDir::new("control-docs");
    let (mut n, mut resources) = (0, 0);
    for (i, block) in doc.split("```yaml\n").skip(1).enumerate() {
        let body = &block[..block.find("```").expect("closed block")];
        if body.starts_with("apiVersion:") {
            let checked = if body.starts_with("apiVersion: weft.dev/") {
                serde_saphyr::from_str::<serde_json::Value>(body)
                    .map_err(|e| e.to_string())
                    .and_then(|r| weft_control::crd::validate_object("docs example", &r).map(|_| ()))
            } else if body.starts_with("apiVersion: networking.istio.io/") {
                istio_example(body)
            } else if body.starts_with("apiVersion: rbac.authorization.k8s.io/") {
                rbac_example(body)
            } else {
                Err("a Kubernetes resource of an unknown kind".to_string())
            };
            checked.unwrap_or_else(|e| panic!("example {i}: {e}\n{body}"));
            resources += 1;
            continue;
        }
        std::fs::write(dir.join(&format!("example{i}.yaml")), body).unwrap();
        n += 1;
    }
    assert!(n >= 3, "found only {n} YAML examples");
    assert!(resources >= 1, "found no Kubernetes resource example");
    let out = Command::new(WEFT)
        .args(["control", "--check", "--registry"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An HTTP/1.1 upstream that answers every request with its whole head (lower-cased) as the body
/// and a response header `x-upstream: 1`.
fn head_echo_server() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => head.push_str(&line),
                        }
                    }
                    let body = head.to_ascii_lowercase();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nx-upstream: 1\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A routing policy's `rewrite` and `headers` (docs/control.md): the destination sees the new
/// path and authority and the changed request headers; the caller sees the changed response
/// headers; a request the route does not match is left as it was.
#[test]
fn weft_sidecar_rewrites_and_changes_headers_from_a_routing_policy() {
    let dir = TempDir::new("sidecar-rewrite");
    let reg = TempDir::new("reg-rewrite");
    let up = head_echo_server();
    write_file(
        &reg.join("echo.yaml"),
        &format!(
            r#"services:
  - name: echo
    endpoints: [{{address: "{up}"}}]
  - name: client
routes:
  - service: echo
    http:
      - match: [{{prefix: /old/, query_params: {{lang: {{exact: en}}}}}}]
        route: [{{destination: echo}}]
        rewrite: {{uri: /new/, authority: echo.internal}}
        headers:
          request: {{set: {{x-lane: blue}}, add: {{x-via: weft}}, remove: [x-debug]}}
          response: {{set: {{x-served-by: weft}}, remove: [x-upstream]}}
"#
        ),
    );
    let control = Control::start(&reg.0);
    let sidecar = start_sidecar(&dir, "client-rw", "client", &control, "ads_delta");
    sidecar_ready(&sidecar);
    let extra = "x-lane: red\r\nx-debug: 1\r\nx-via: client\r\n";
    let text = eventually_blocking("the rewritten request", Duration::from_secs(20), || {
        let (status, text) = http_full(sidecar.outbound, "echo", "/old/x?q=1&lang=en", extra)?;
        (status == 200).then_some(text)
    });
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(body.starts_with("get /new/x?q=1&lang=en http/1.1\r\n"), "{body}");
    assert!(body.contains("\r\nhost: echo.internal\r\n"), "{body}");
    assert!(
        body.contains("\r\nx-lane: blue\r\n") && !body.contains("x-lane: red"),
        "{body}"
    );
    assert!(!body.contains("x-debug"), "{body}");
    let vias: Vec<&str> = (body.lines())
        .filter_map(|l| l.strip_prefix("x-via: "))
        .flat_map(|v| v.split(',').map(str::trim))
        .collect();
    assert_eq!(vias, ["client", "weft"], "{body}");
    assert!(head.contains("\r\nx-served-by: weft"), "{head}");
    assert!(!head.contains("x-upstream"), "{head}");
    // Another path, or the same one with another `lang`, takes the service's catch-all route:
    // nothing changed.
    for path in ["/other", "/old/x?lang=fr"] {
        let (status, text) = http_full(sidecar.outbound, "echo", path, extra).unwrap();
        assert_eq!(status, 200, "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let line = format!("get {path} http/1.1\r\n");
        assert!(body.starts_with(&line) && body.contains("x-lane: red"), "{body}");
        assert!(head.to_ascii_lowercase().contains("x-upstream: 1"), "{head}");
    }
}
