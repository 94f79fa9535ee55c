//! weft control over real registry stores: an etcd server and a ZooKeeper server (Debian's
//! packages, installed by `scripts/install-peers`) started here on 127.0.0.1 ephemeral ports in temp
//! dirs. Registry changes are made with each store's own client (etcdctl; zkCli.sh) and must reach
//! a real `weft proxy` sidecar (through weft control's xDS) within a second: asserted on traffic
//! through the sidecar to real HTTP upstreams on loopback. Also: lease expiry and ZooKeeper
//! session close/expiry remove endpoints; a killed store leaves the last state serving (stale on the
//! admin API and in metrics); etcd's watch resumes from the state file after a control-plane restart;
//! a file registry merged with a store, the first `--registry` winning a conflict.
//!
//! Outside CI a missing peer skips its test with a message; under `CI=true` it fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use weft_test_support::{free_addr, TempDir};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The peer's path, or None (skip) outside CI; under CI a missing peer is a failure.
fn peer(path: &str) -> Option<PathBuf> {
    let p = PathBuf::from(path);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{path} missing (scripts/install-peers installs it)");
    }
    eprintln!("skipping: {path} missing (run scripts/install-peers)");
    None
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request on a fresh connection: (status, body). Reads by content-length rather than to the
/// end of the stream: Envoy delays closing after a local reply (404) by its delayed_close_timeout
/// (1 s), which would otherwise be counted as latency.
fn http(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut w = s.try_clone().ok()?;
    write!(
        w,
        "GET {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut len: Option<usize> = None;
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok();
            }
        }
    }
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).ok()?;
        }
        None => {
            r.read_to_end(&mut body).ok()?;
        }
    }
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http(addr, "x", path).unwrap_or_default();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A keep-alive-less HTTP/1.1 server answering every request with `name`.
fn name_server(name: &'static str) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    let mut n = 0;
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => n += 1,
                        }
                    }
                    if n == 0 {
                        return;
                    }
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}", name.len());
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Replies per body for `n` requests with `Host: host` through `via`.
fn spread(via: SocketAddr, host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let k = match http(via, host, "/") {
            Some((200, body)) => body,
            Some((s, _)) => format!("ERR {s}"),
            None => "ERR io".into(),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

/// Time until a request through `via` reaches `name` (polling every 5 ms, bounded).
fn time_until_reached(via: SocketAddr, host: &str, name: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if http(via, host, "/").is_some_and(|(s, b)| s == 200 && b == name) {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{name} not reached through {host} within {limit:?}");
}

/// Time until 20 requests in a row through `via` all answer `only`.
fn time_until_only(via: SocketAddr, host: &str, only: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut run = 0;
    let mut first_of_run = start.elapsed();
    while start.elapsed() < limit {
        if http(via, host, "/").is_some_and(|(s, b)| s == 200 && b == only) {
            if run == 0 {
                first_of_run = start.elapsed();
            }
            run += 1;
            if run == 20 {
                return first_of_run;
            }
        } else {
            run = 0;
        }
    }
    panic!("{host} not answered by {only} alone within {limit:?}");
}

struct Control {
    _proc: Proc,
    xds: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

fn start_control(registries: &[String], log: PathBuf) -> Control {
    let xds = free_addr();
    let admin = free_addr();
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(WEFT);
    cmd.arg("control");
    for r in registries {
        cmd.args(["--registry", r]);
    }
    let child = cmd
        .args([
            "--xds",
            &xds.to_string(),
            "--admin",
            &admin.to_string(),
            "--debounce",
            "20ms",
        ])
        .env("WEFT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start weft control");
    let c = Control {
        _proc: Proc(child),
        xds,
        admin,
        log,
    };
    wait_until("weft control /ready", Duration::from_secs(20), || {
        (http(admin, "x", "/ready")?.0 == 200).then_some(())
    });
    c
}

struct Sidecar {
    _proc: Proc,
    outbound: SocketAddr,
}

fn start_sidecar(dir: &TempDir, id: &str, control: &Control) -> Sidecar {
    let admin = free_addr();
    let outbound = free_addr();
    let cfg = format!(
        "node:\n  id: {id}\n  cluster: client\n  metadata:\n    weft.role: sidecar\n    weft.outbound: \"{outbound}\"\n    weft.inbound: \"{}\"\n    weft.app: \"{}\"\nadmin:\n  address: \"{admin}\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"{}\"\n  mode: ads_delta\n",
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
    let s = Sidecar {
        _proc: Proc(child),
        outbound,
    };
    wait_until("sidecar /ready", Duration::from_secs(20), || {
        (http(admin, "x", "/ready")?.0 == 200).then_some(())
    });
    s
}

/// The registry entry named `needle` on `/debug/registry`.
fn registry_state(control: &Control, needle: &str) -> serde_json::Value {
    let v = json(control.admin, "/debug/registry");
    v["registries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"].as_str().unwrap().contains(needle))
        .cloned()
        .unwrap_or_else(|| panic!("no registry {needle} in {v}"))
}

fn metric(control: &Control, prefix: &str) -> Option<f64> {
    let (_, body) = http(control.admin, "x", "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// etcd

struct Etcd {
    proc: Option<Proc>,
    client: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
}

impl Etcd {
    fn start(data: PathBuf) -> Etcd {
        let mut e = Etcd {
            proc: None,
            client: free_addr(),
            peer: free_addr(),
            data,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let c = format!("http://{}", self.client);
        let p = format!("http://{}", self.peer);
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args(["--listen-peer-urls", &p, "--initial-advertise-peer-urls", &p])
            .args(["--initial-cluster", &format!("t={p}"), "--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.proc = Some(Proc(child));
        wait_until("etcd healthy", Duration::from_secs(20), || {
            self.ctl_ok(&["endpoint", "health"]).then_some(())
        });
    }

    fn kill(&mut self) {
        self.proc = None;
    }

    fn ctl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.client.to_string(), "--command-timeout", "3s"])
            .args(args);
        c
    }

    fn ctl_ok(&self, args: &[&str]) -> bool {
        self.ctl_cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs etcdctl, returns stdout; panics on failure.
    fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_cmd(args).output().expect("etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `etcdctl lease grant`: the lease id (hex).
    fn lease(&self, ttl: u32) -> String {
        let out = self.ctl(&["lease", "grant", &ttl.to_string()]);
        // "lease 694d7f1c2ab0a40b granted with TTL(2s)"
        out.split_whitespace().nth(1).unwrap().to_string()
    }
}

fn instance(addr: SocketAddr) -> String {
    format!("{{\"address\": \"{addr}\", \"labels\": {{\"version\": \"v1\"}}}}")
}

#[test]
fn etcd_registry_drives_a_weft_sidecar() {
    if peer("/usr/bin/etcd").is_none() || peer("/usr/bin/etcdctl").is_none() {
        return;
    }
    let dir = TempDir::new("reg-etcd");
    let files = TempDir::new("reg-etcd-files");
    let mut etcd = Etcd::start(dir.join("etcd-data"));
    let alpha = name_server("alpha");
    let beta = name_server("beta");
    let gamma = name_server("gamma");
    // The file registry holds the sidecar's own service and a conflicting `echo` (to gamma): the
    // etcd registry is given first, so its `echo` wins and the conflict is reported.
    std::fs::write(
        files.join("client.yaml"),
        format!("services:\n  - name: client\n    endpoints: []\n  - name: echo\n    endpoints: [{{address: \"{gamma}\"}}]\n"),
    )
    .unwrap();
    etcd.ctl(&["put", "/weft/services/echo", r#"{"protocol": "http"}"#]);
    let long = etcd.lease(60);
    etcd.ctl(&["put", "--lease", &long, "/weft/instances/echo/alpha", &instance(alpha)]);
    let state = dir.join("etcd-state.json");
    // page=1: the first listing takes one request per key (paging is exercised: 2 keys, 2 pages).
    let etcd_spec = format!("etcd://{}/weft/?state={}&page=1", etcd.client, state.display());
    let regs = [etcd_spec.clone(), files.0.display().to_string()];
    let control = start_control(&regs, dir.join("control.log"));
    let sidecar = start_sidecar(&dir, "client-etcd", &control);
    let m = spread(sidecar.outbound, "echo", 20);
    assert_eq!(m.get("alpha"), Some(&20), "{m:?}");
    let text = std::fs::read_to_string(&control.log).unwrap();
    assert!(text.contains("keys=2 pages=2"), "listed in pages of one key: {text}");
    let v = json(control.admin, "/debug/registry");
    let conflicts = v["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{v}");
    assert_eq!(conflicts[0]["name"], "echo");
    assert_eq!(conflicts[0]["kept"], "etcd:echo");
    assert_eq!(conflicts[0]["dropped"], "client.yaml");
    assert_eq!(metric(&control, "weft_control_registry_conflicts"), Some(1.0));

    // A new instance, kept alive by an `etcdctl lease keep-alive` process (a live instance).
    let lease = etcd.lease(2);
    let keepalive = Proc(
        etcd.ctl_cmd(&["lease", "keep-alive", &lease])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    etcd.ctl(&["put", "--lease", &lease, "/weft/instances/echo/beta", &instance(beta)]);
    let added = time_until_reached(sidecar.outbound, "echo", "beta", Duration::from_secs(1));
    eprintln!("etcd: instance put -> traffic reaches it through the sidecar: {added:?}");
    std::thread::sleep(Duration::from_secs(3)); // longer than the TTL: the keep-alive holds it
    let m = spread(sidecar.outbound, "echo", 40);
    assert!(m.get("beta").copied().unwrap_or(0) > 5, "kept alive: {m:?}");

    // A malformed instance is skipped with its reason; everything else keeps flowing.
    etcd.ctl(&["put", "/weft/instances/echo/bad", r#"{"address": "not-an-address"}"#]);
    wait_until("the malformed instance to be listed", Duration::from_secs(5), || {
        let r = registry_state(&control, "etcd");
        r["skipped"]["/weft/instances/echo/bad"].as_str().map(str::to_string)
    });
    let why = registry_state(&control, "etcd")["skipped"]["/weft/instances/echo/bad"].to_string();
    assert!(
        why.contains("not-an-address") && why.contains("is not IP:port"),
        "{why}"
    );
    assert_eq!(metric(&control, "weft_control_registry_skipped_entries"), Some(1.0));
    let m = spread(sidecar.outbound, "echo", 20);
    assert_eq!(m.keys().filter(|k| k.starts_with("ERR")).count(), 0, "{m:?}");

    // The instance dies (its keep-alive stops): the lease expires and the endpoint goes.
    drop(keepalive);
    let died = Instant::now();
    let gone = time_until_only(sidecar.outbound, "echo", "alpha", Duration::from_secs(6));
    eprintln!("etcd: keep-alive killed -> beta out of traffic after {gone:?} (lease TTL 2s)");
    assert!(
        died.elapsed() > Duration::from_millis(900),
        "removed before the lease could expire"
    );

    // Revoking a lease (a graceful deregistration) is seen within a second.
    let lease2 = etcd.lease(60);
    etcd.ctl(&["put", "--lease", &lease2, "/weft/instances/echo/beta", &instance(beta)]);
    time_until_reached(sidecar.outbound, "echo", "beta", Duration::from_secs(1));
    etcd.ctl(&["lease", "revoke", &lease2]);
    let revoked = time_until_only(sidecar.outbound, "echo", "alpha", Duration::from_secs(1));
    eprintln!("etcd: lease revoked -> beta out of traffic after {revoked:?}");

    // etcd dies: the last state keeps serving, the registry shows as stale.
    etcd.kill();
    let m = spread(sidecar.outbound, "echo", 20);
    assert_eq!(m.get("alpha"), Some(&20), "{m:?}");
    wait_until("the etcd registry to show as stale", Duration::from_secs(10), || {
        let r = registry_state(&control, "etcd");
        (r["connected"] == false && r["stale_seconds"].as_f64()? >= 1.0).then_some(())
    });
    assert_eq!(
        metric(&control, "weft_control_registry_connected{registry=\"etcd"),
        Some(0.0)
    );
    assert!(metric(&control, "weft_control_registry_stale_seconds{registry=\"etcd").unwrap() >= 1.0);
    assert_eq!(json(control.admin, "/debug/registry")["services"], 2);
    let m = spread(sidecar.outbound, "echo", 20);
    assert_eq!(m.get("alpha"), Some(&20), "still serving while etcd is down: {m:?}");

    // etcd back (same data): the control plane reconnects (backoff) and follows changes again.
    etcd.spawn();
    wait_until("the etcd registry to reconnect", Duration::from_secs(15), || {
        (registry_state(&control, "etcd")["connected"] == true).then_some(())
    });
    etcd.ctl(&["put", "--lease", &long, "/weft/instances/echo/beta", &instance(beta)]);
    let t = time_until_reached(sidecar.outbound, "echo", "beta", Duration::from_secs(1));
    eprintln!("etcd: after etcd restart, instance put -> traffic: {t:?}");

    // The control plane restarts while etcd changes: it resumes its watch from the state file (no
    // relist) and catches up with what it missed.
    drop(control);
    etcd.ctl(&["del", "/weft/instances/echo/beta"]);
    // Later writes outside the prefix: the watch has caught up only once etcd's progress
    // notification says so (no event under the prefix reaches that revision).
    etcd.ctl(&["put", "/other/key", "x"]);
    let log2 = dir.join("control2.log");
    let control = start_control(&regs, log2.clone());
    let text = std::fs::read_to_string(&log2).unwrap();
    assert!(
        text.contains("etcd registry state loaded; resuming the watch"),
        "{text}"
    );
    assert!(
        !text.contains("etcd registry listed"),
        "relisted after a restart: {text}"
    );
    let sidecar2 = start_sidecar(&dir, "client-etcd-2", &control);
    let m = spread(sidecar2.outbound, "echo", 20);
    assert_eq!(m.get("alpha"), Some(&20), "{m:?}");
}

// ---------------------------------------------------------------------------------------------
// ZooKeeper (Dubbo)

const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";
const ZK_CLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";

struct ZooKeeper {
    proc: Option<Proc>,
    addr: SocketAddr,
}

impl ZooKeeper {
    fn start(dir: &Path) -> ZooKeeper {
        let addr = free_addr();
        let data = dir.join("zk-data");
        std::fs::create_dir_all(&data).unwrap();
        let cfg = dir.join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=200\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\nminSessionTimeout=400\nmaxSessionTimeout=20000\n",
                data.display(),
                addr.port()
            ),
        )
        .unwrap();
        let child = Command::new("java")
            .arg(format!("-Dzookeeper.log.dir={}", dir.display()))
            .args(["-cp", &format!("/etc/zookeeper/conf:{ZK_JAR}")])
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start zookeeper");
        wait_until("zookeeper listening", Duration::from_secs(30), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        });
        ZooKeeper {
            proc: Some(Proc(child)),
            addr,
        }
    }
}

/// An interactive `zkCli.sh` session: commands go to its stdin; its ephemeral nodes live as long as
/// the session does (`quit` closes it, killing the process lets it expire after `timeout_ms`).
struct ZkCli {
    _proc: Proc,
    stdin: ChildStdin,
    /// zkCli's output lines, from a reader thread.
    out: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl ZkCli {
    fn start(zk: &ZooKeeper, timeout_ms: u32) -> ZkCli {
        // zkCli prints command results ("Created /x") on stderr, events on stdout: read both. `exec`
        // keeps the pid zkCli's own, so that dropping the session kills zkCli itself.
        let mut child = Command::new("sh")
            .args([
                "-c",
                &format!("exec {ZK_CLI} -timeout {timeout_ms} -server {} 2>&1", zk.addr),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start zkCli.sh");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, out) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut c = ZkCli {
            _proc: Proc(child),
            stdin,
            out,
            seen: Vec::new(),
        };
        wait_until("zkCli connected", Duration::from_secs(30), || {
            c.saw("SyncConnected").then_some(())
        });
        c
    }

    fn saw(&mut self, needle: &str) -> bool {
        self.seen.extend(self.out.try_iter());
        self.seen.iter().any(|l| l.contains(needle))
    }

    /// Sends a command and waits for zkCli to print `expect`.
    fn run(&mut self, cmd: &str, expect: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        wait_until(&format!("zkCli: {cmd} -> {expect}"), Duration::from_secs(10), || {
            self.saw(expect).then_some(())
        });
    }

    fn create(&mut self, flags: &str, path: &str, data: &str) {
        let data = if data.is_empty() {
            String::new()
        } else {
            format!(" '{data}'")
        };
        self.run(&format!("create {flags} {path}{data}"), &format!("Created {path}"));
    }
}

#[test]
fn zookeeper_dubbo_registry_drives_a_weft_sidecar() {
    if peer(ZK_JAR).is_none() || peer(ZK_CLI).is_none() || peer("/usr/bin/java").is_none() {
        return;
    }
    let dir = TempDir::new("reg-zk");
    let files = TempDir::new("reg-zk-files");
    let mut zk = ZooKeeper::start(&dir.0);
    let alpha = name_server("alpha");
    let beta = name_server("beta");
    let gamma = name_server("gamma");
    std::fs::write(
        files.join("client.yaml"),
        "services:\n  - name: client\n    endpoints: []\n",
    )
    .unwrap();
    const IFACE: &str = "org.weft.demo.EchoService";
    let provider = |addr: SocketAddr, app: &str| {
        let url = format!(
            "rest://{addr}/{IFACE}?anyhost=true&application={app}&side=provider&version=1.0.0&weight=100&methods=echo"
        );
        // URLEncoder.encode, as Dubbo names provider nodes.
        url.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    let providers = format!("/dubbo/{IFACE}/providers");
    let mut admin_cli = ZkCli::start(&zk, 10_000);
    admin_cli.create("", "/dubbo", "");
    admin_cli.create("", &format!("/dubbo/{IFACE}"), "");
    admin_cli.create("", &providers, "");
    admin_cli.create("", "/services", "");
    admin_cli.create("", "/services/shop", "");
    // Provider alpha, in its own session.
    let mut a = ZkCli::start(&zk, 10_000);
    a.create("-e", &format!("{providers}/{}", provider(alpha, "echo-a")), "");
    // A persistent node whose name is not a Dubbo URL: skipped with the reason.
    admin_cli.create("", &format!("{providers}/not-a-url"), "");

    let regs = [format!("zk://{}", zk.addr), files.0.display().to_string()];
    let control = start_control(&regs, dir.join("control.log"));
    let sidecar = start_sidecar(&dir, "client-zk", &control);
    let m = spread(sidecar.outbound, IFACE, 20);
    assert_eq!(m.get("alpha"), Some(&20), "{m:?}");
    let r = registry_state(&control, "zookeeper");
    assert_eq!(
        r["skipped"][format!("{providers}/not-a-url")].as_str(),
        Some("not a URL: no \"<protocol>://\""),
        "{r}"
    );

    // Provider beta registers: traffic reaches it within a second.
    let mut b = ZkCli::start(&zk, 1_000);
    writeln!(b.stdin, "create -e {providers}/{} ''", provider(beta, "echo-b")).unwrap();
    b.stdin.flush().unwrap();
    let sent = Instant::now();
    let t = time_until_reached(sidecar.outbound, IFACE, "beta", Duration::from_secs(3));
    eprintln!("zookeeper: provider node created (zkCli command sent) -> traffic reaches it: {t:?}");
    assert!(sent.elapsed() < Duration::from_secs(3));
    wait_until("zkCli created", Duration::from_secs(5), || {
        b.saw("Created").then_some(())
    });
    assert!(t < Duration::from_secs(1), "{t:?}");

    // Its session closes (the provider stops cleanly): the ephemeral node and the endpoint go.
    writeln!(b.stdin, "quit").unwrap();
    b.stdin.flush().unwrap();
    let closed = time_until_only(sidecar.outbound, IFACE, "alpha", Duration::from_secs(2));
    eprintln!("zookeeper: provider session closed -> out of traffic after {closed:?}");
    assert!(closed < Duration::from_secs(1), "{closed:?}");
    drop(b);

    // A provider whose process dies: its session expires (timeout 1 s) and the endpoint goes.
    let mut c = ZkCli::start(&zk, 1_000);
    c.create("-e", &format!("{providers}/{}", provider(beta, "echo-c")), "");
    time_until_reached(sidecar.outbound, IFACE, "beta", Duration::from_secs(1));
    // zkCli.sh is killed and its stdin closed: its JVM exits without closing the session.
    drop(c);
    let expired = time_until_only(sidecar.outbound, IFACE, "alpha", Duration::from_secs(10));
    eprintln!("zookeeper: provider killed -> out of traffic after {expired:?} (session timeout 1s)");

    // Dubbo 3 application-level discovery: /services/<app>/<instance> with its JSON payload.
    let payload = format!(
        r#"{{"name":"shop","id":"{gamma}","address":"127.0.0.1","port":{},"sslPort":null,"payload":{{"@class":"org.apache.dubbo.registry.zookeeper.ZookeeperInstance","id":"{gamma}","name":"shop","metadata":{{"dubbo.endpoints":"[{{\"port\":{},\"protocol\":\"rest\"}}]","dubbo.metadata.revision":"r1"}}}},"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}}"#,
        gamma.port(),
        gamma.port()
    );
    let mut app = ZkCli::start(&zk, 10_000);
    app.create("-e", &format!("/services/shop/{gamma}"), &payload);
    let t = time_until_reached(sidecar.outbound, "shop", "gamma", Duration::from_secs(1));
    eprintln!("zookeeper: application-level instance -> traffic: {t:?}");

    // ZooKeeper dies: the last state keeps serving, the registry shows as stale.
    zk.proc = None;
    wait_until(
        "the zookeeper registry to show as stale",
        Duration::from_secs(15),
        || {
            let r = registry_state(&control, "zookeeper");
            (r["connected"] == false).then_some(())
        },
    );
    let m = spread(sidecar.outbound, IFACE, 20);
    assert_eq!(
        m.get("alpha"),
        Some(&20),
        "still serving while ZooKeeper is down: {m:?}"
    );
    let m = spread(sidecar.outbound, "shop", 10);
    assert_eq!(m.get("gamma"), Some(&10), "{m:?}");
    drop((a, app, admin_cli));
}

// ---------------------------------------------------------------------------------------------
// A real Envoy (interop/install) following etcd and ZooKeeper through weft control

fn envoy_binary() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/.venv-envoy");
    let p = peer(&venv.display().to_string())?;
    for entry in std::fs::read_dir(p.join("lib")).ok()?.flatten() {
        let bin = entry.path().join("site-packages/envoy/_bin/envoy");
        if bin.exists() {
            return Some(bin);
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("no envoy binary under {}", venv.display());
    }
    None
}

struct Envoy {
    _proc: Proc,
    admin: SocketAddr,
    outbound: SocketAddr,
}

fn start_envoy(bin: &Path, dir: &TempDir, control: &Control) -> Envoy {
    let outbound = free_addr();
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../interop/envoy-ads.yaml")).unwrap();
    let cfg = template
        .replace("{{NODE_ID}}", &format!("envoy-registries-{}", std::process::id()))
        .replace("{{NODE_CLUSTER}}", "client")
        .replace("{{API_TYPE}}", "DELTA_GRPC")
        .replace("{{OUTBOUND}}", &outbound.to_string())
        .replace("{{INBOUND}}", &free_addr().to_string())
        .replace("{{APP}}", &free_addr().to_string())
        .replace("{{XDS_PORT}}", &control.xds.port().to_string());
    let cfg_path = dir.join("envoy.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let admin_path = dir.join("envoy.admin");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&cfg_path)
        .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warn"])
        .arg("--admin-address-path")
        .arg(&admin_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start envoy");
    let proc = Proc(child);
    let admin: SocketAddr = wait_until("envoy admin address", Duration::from_secs(20), || {
        std::fs::read_to_string(&admin_path).ok()?.trim().parse().ok()
    });
    Envoy {
        _proc: proc,
        admin,
        outbound,
    }
}

/// No xDS update rejected by Envoy.
fn assert_envoy_rejected_nothing(envoy: &Envoy) {
    let (_, body) = http(envoy.admin, "x", "/stats").unwrap_or_default();
    let rejected: Vec<&str> = body
        .lines()
        .filter(|l| l.contains(".update_rejected: ") && !l.ends_with(": 0"))
        .collect();
    assert!(rejected.is_empty(), "Envoy rejected xDS updates: {rejected:?}");
}

#[test]
fn envoy_follows_etcd_and_zookeeper_registries() {
    let Some(bin) = envoy_binary() else { return };
    if peer("/usr/bin/etcd").is_none() || peer(ZK_JAR).is_none() {
        return;
    }
    let dir = TempDir::new("reg-envoy");
    let files = TempDir::new("reg-envoy-files");
    let etcd = Etcd::start(dir.join("etcd-data"));
    let zk = ZooKeeper::start(&dir.0);
    let alpha = name_server("alpha");
    let beta = name_server("beta");
    let gamma = name_server("gamma");
    std::fs::write(
        files.join("client.yaml"),
        "services:\n  - name: client\n    endpoints: []\n",
    )
    .unwrap();
    let lease = etcd.lease(60);
    etcd.ctl(&["put", "--lease", &lease, "/weft/instances/echo/alpha", &instance(alpha)]);
    let mut cli = ZkCli::start(&zk, 10_000);
    for p in ["/dubbo", "/dubbo/org.weft.Shop", "/dubbo/org.weft.Shop/providers"] {
        cli.create("", p, "");
    }
    let regs = [
        format!("etcd://{}/weft/", etcd.client),
        format!("zk://{}", zk.addr),
        files.0.display().to_string(),
    ];
    let control = start_control(&regs, dir.join("control.log"));
    let envoy = start_envoy(&bin, &dir, &control);
    wait_until("traffic through Envoy to alpha", Duration::from_secs(20), || {
        (spread(envoy.outbound, "echo", 5).get("alpha") == Some(&5)).then_some(())
    });

    etcd.ctl(&["put", "--lease", &lease, "/weft/instances/echo/beta", &instance(beta)]);
    let t = time_until_reached(envoy.outbound, "echo", "beta", Duration::from_secs(1));
    eprintln!("envoy: etcd instance put -> traffic through Envoy reaches it: {t:?}");
    etcd.ctl(&["del", "/weft/instances/echo/beta"]);
    let t = time_until_only(envoy.outbound, "echo", "alpha", Duration::from_secs(1));
    eprintln!("envoy: etcd instance deleted -> out of Envoy's traffic after {t:?}");

    let node = |addr: SocketAddr, version: &str| -> String {
        let url = format!("rest://{addr}/org.weft.Shop?side=provider&application=shop&version={version}");
        url.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    // The interface's first provider: a new service, so Envoy also warms a new cluster and route.
    let mut first = ZkCli::start(&zk, 10_000);
    first.create(
        "-e",
        &format!("/dubbo/org.weft.Shop/providers/{}", node(gamma, "1")),
        "",
    );
    let t = time_until_reached(envoy.outbound, "org.weft.Shop", "gamma", Duration::from_secs(1));
    eprintln!("envoy: first Dubbo provider of a new interface -> traffic through Envoy reaches it: {t:?}");
    // A second provider of the same interface: an endpoint change.
    let mut second = ZkCli::start(&zk, 10_000);
    writeln!(
        second.stdin,
        "create -e /dubbo/org.weft.Shop/providers/{}",
        node(beta, "2")
    )
    .unwrap();
    second.stdin.flush().unwrap();
    let t = time_until_reached(envoy.outbound, "org.weft.Shop", "beta", Duration::from_secs(1));
    eprintln!("envoy: second Dubbo provider node created (zkCli command sent) -> traffic reaches it: {t:?}");
    writeln!(second.stdin, "quit").unwrap();
    second.stdin.flush().unwrap();
    let t = time_until_only(envoy.outbound, "org.weft.Shop", "gamma", Duration::from_secs(1));
    eprintln!("envoy: second provider's session closed -> out of Envoy's traffic after {t:?}");
    drop((first, cli));
    assert_envoy_rejected_nothing(&envoy);
}
