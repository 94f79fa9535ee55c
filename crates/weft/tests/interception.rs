//! Transparent interception in real network namespaces: `weft init` installs iptables rules, an
//! unmodified client (curl) in namespace A calls an unmodified server (python3 -m http.server) in
//! namespace B by B's own address, and the two sidecars it does not know about carry the call.
//!
//! Needs root, `ip netns`, iptables and python3 (scripts/install-peers). Outside CI a missing piece
//! skips the test with a message; under `CI=true` it fails.
//!
//! The sidecars run as uid/gid 1337 (`setpriv`), the uid `weft init --proxy-uid` excludes, so their
//! own upstream connections are not intercepted again; the client and servers run as root.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use weft_test_support::TempDir;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// `setpriv` running what follows as the sidecars' uid/gid 1337, with no supplementary groups.
const AS_PROXY_UID: [&str; 6] = ["setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups"];

/// Why this machine cannot run the tests, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for (prog, arg) in [
        ("ip", "-V"),
        ("iptables-restore", "--version"),
        ("ip6tables-restore", "--version"),
        ("python3", "--version"),
        ("curl", "--version"),
        ("setpriv", "--version"),
    ] {
        if !Command::new(prog)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(format!("{prog} is not installed (scripts/install-peers installs it)"));
        }
    }
    let probe = format!("wfprobe{}", std::process::id());
    if !sh(&["ip", "netns", "add", &probe]).status.success() {
        return Some("ip netns add is not permitted here".into());
    }
    sh(&["ip", "netns", "del", &probe]);
    None
}

/// Skips (outside CI) or fails (CI) when the machine cannot run these tests. Checked once per
/// process: the tests run in parallel, and two probes adding the same namespace at once would make
/// one of them fail ("File exists").
fn prerequisites() -> bool {
    static MISSING: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    match MISSING.get_or_init(missing_prerequisite).clone() {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("interception tests cannot run under CI=true: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED: interception tests need root, ip netns, iptables, python3, curl and setpriv: {why}");
            false
        }
    }
}

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

fn ok(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace, deleted on drop (also on panic), with its veth ends.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!(
            "wf{tag}{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ok(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        // No duplicate address detection on the links this test creates, link-local addresses
        // included (the global ones are added `nodad`): every address is usable at once, and
        // nothing waits on a tentative one (`link` also waits until each end's carrier is up).
        ns.run(&[
            "sh",
            "-c",
            "echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad && echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad",
        ]);
        ns
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args).stdin(Stdio::null());
        c
    }

    fn exec(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in {}: {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn spawn(&self, args: &[&str], log: &Path, dir: Option<&Path>) -> Proc {
        let f = std::fs::File::create(log).unwrap();
        let mut c = self.cmd(args);
        c.stdout(f.try_clone().unwrap()).stderr(f);
        if let Some(d) = dir {
            c.current_dir(d);
        }
        Proc(c.spawn().unwrap())
    }

    /// `iptables-save` and `ip6tables-save` without comments, counters and empty built-in tables
    /// (the nf_tables backend keeps a table it created once, empty), plus the ip rules.
    fn state(&self) -> String {
        let mut out = String::new();
        for save in ["iptables-save", "ip6tables-save"] {
            out.push_str(&normalize_save(&self.run(&[save])));
        }
        for fam in ["-4", "-6"] {
            out.push_str(&self.run(&["ip", fam, "rule", "show"]));
            // (An error when the table does not exist: then it is empty.)
            out.push_str(&String::from_utf8_lossy(
                &self.exec(&["ip", fam, "route", "show", "table", "133"]).stdout,
            ));
        }
        out
    }
}

fn normalize_save(save: &str) -> String {
    let mut out = String::new();
    let mut table: Vec<String> = Vec::new();
    for line in save.lines().filter(|l| !l.starts_with('#')) {
        let line = match line.find(" [") {
            Some(i) if line.starts_with(':') => line[..i].to_string(),
            _ => line.to_string(),
        };
        let end = line == "COMMIT";
        table.push(line);
        if end {
            let has_content = table
                .iter()
                .any(|l| l.starts_with("-A") || (l.starts_with(':') && !l.ends_with(" ACCEPT")));
            if has_content {
                out.push_str(&table.join("\n"));
                out.push('\n');
            }
            table.clear();
        }
    }
    out
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
        // Only if empty (another test's namespace may still use it).
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

impl Netns {
    /// The namespace's own /etc/resolv.conf (`ip netns exec` mounts /etc/netns/NAME/resolv.conf).
    fn set_resolver(&self, nameserver: &str) {
        let dir = Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), format!("nameserver {nameserver}\n")).unwrap();
    }
}

/// A process started in a namespace; killed (by its pid) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // `ip netns exec` execs the command, so this pid is the process itself.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two namespaces joined by a veth pair: A = 10.213.0.1 / fd00:213::1, B = 10.213.0.2 /
/// fd00:213::2 (and the extra addresses given for B).
fn pair(tag: &str, b_extra: &[&str]) -> (Netns, Netns) {
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    let mut b_ips = vec!["10.213.0.2/24", "fd00:213::2/64"];
    b_ips.extend(b_extra);
    link(&a, &b, &["10.213.0.1/24", "fd00:213::1/64"], &b_ips);
    (a, b)
}

/// A fresh directory for a test's files, readable by the sidecar's uid.
fn test_dir(tag: &str) -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new(tag);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A sidecar: outbound listeners on 15001 and inbound ones on 15006 (IPv4 and IPv6), both
/// dispatching by original destination to pass-through clusters (original port 8082: a TCP proxy
/// chain, any other: HTTP), plus `extra` listeners.
fn sidecar_config(inbound_transparent: bool, extra_listeners: &str, extra_clusters: &str) -> String {
    let mut listeners = String::new();
    for (fam, any) in [("", "0.0.0.0"), ("6", "[::]")] {
        for (name, port, cluster, dir) in [
            ("outbound", 15001, "passthrough", "outbound"),
            ("inbound", 15006, "inbound_passthrough", "inbound"),
        ] {
            let transparent = inbound_transparent && dir == "inbound";
            listeners.push_str(&format!(
                r#"  - name: {name}{fam}
    address: "{any}:{port}"
    original_destination: true
    transparent: {transparent}
    direction: {dir}
    filter_chains:
      - name: tcp
        match: {{ destination_port: 8082 }}
        tcp_proxy: {{ cluster: tcp_{cluster} }}
      - name: http
        http:
          route_config:
            virtual_hosts:
              - name: all
                domains: ["*"]
                routes:
                  - {{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }}
"#
            ));
        }
    }
    format!(
        r#"admin: {{ address: "127.0.0.1:9901" }}
runtime: {{ concurrency: 1, drain_timeout: 1s }}
listeners:
{listeners}{extra_listeners}clusters:
  - {{ name: passthrough, type: original_dst }}
  - {{ name: inbound_passthrough, type: original_dst }}
  - {{ name: tcp_passthrough, type: original_dst }}
  - {{ name: tcp_inbound_passthrough, type: original_dst }}
{extra_clusters}"#
    )
}

fn start_sidecar(ns: &Netns, dir: &TempDir, name: &str, config: &str, caps: bool) -> Proc {
    dir.write(&format!("{name}.yaml"), config);
    let cfg = dir.join(&format!("{name}.yaml"));
    let cfg = cfg.to_str().unwrap();
    let mut args = AS_PROXY_UID.to_vec();
    if caps {
        // TPROXY: IP_TRANSPARENT on the inbound listener needs CAP_NET_ADMIN.
        args.extend(["--inh-caps", "+net_admin", "--ambient-caps", "+net_admin"]);
    }
    args.extend([WEFT, "proxy", "-c", cfg]);
    let p = ns.spawn(&args, &dir.join(&format!("{name}.log")), None);
    wait_200(ns, &["http://127.0.0.1:9901/ready"], Duration::from_secs(20), || {
        format!(
            "sidecar {name} not ready: {}",
            std::fs::read_to_string(dir.join(&format!("{name}.log"))).unwrap_or_default()
        )
    });
    p
}

/// Waits (at most `within`, polling every 100 ms) until curl in `ns` with `args` gets status 200;
/// then panics with `not_ready()`.
fn wait_200(ns: &Netns, args: &[&str], within: Duration, not_ready: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    let mut all = vec!["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
    all.extend(args);
    while String::from_utf8_lossy(&ns.exec(&all).stdout) != "200" {
        assert!(Instant::now() < deadline, "{}", not_ready());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `python3 -m http.server` bound to `ip:port` in `ns`, serving `dir/www` (a file hello.txt); its
/// request log (with each client's address) goes to `dir/<log>`.
fn start_server(ns: &Netns, dir: &TempDir, ip: &str, port: u16, log: &str) -> Proc {
    start_server_with(ns, dir, ip, port, log, &[])
}

/// [`start_server`] with more http.server flags (e.g. `-p HTTP/1.1` for keep-alive).
fn start_server_with(ns: &Netns, dir: &TempDir, ip: &str, port: u16, log: &str, extra: &[&str]) -> Proc {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello from B\n").unwrap();
    let port_s = port.to_string();
    let mut args = vec!["python3", "-u", "-m", "http.server", "--bind", ip, &port_s];
    args.extend(extra);
    let p = ns.spawn(&args, &dir.join(log), Some(&www));
    // Ready once it answers (before any interception is installed in ns).
    let url = format!("http://{}/probe", host_port(ip, port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ns.exec(&["curl", "-s", "-g", "-o", "/dev/null", &url]).status.success() {
        assert!(
            Instant::now() < deadline,
            "python http.server on {ip}:{port} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

/// What [`fetch`] returns when the call reached B's app.
fn hello() -> (String, String) {
    ("200".into(), "hello from B".into())
}

fn host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The client: curl in `ns` for hello.txt at ip:port; the status and body.
fn fetch(ns: &Netns, ip: &str, port: u16) -> (String, String) {
    let url = format!("http://{}/hello.txt", host_port(ip, port));
    let out = ns.exec(&["curl", "-s", "-g", "-m", "10", "-w", "\n%{http_code}", &url]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.trim_end().to_string())
}

/// A sidecar's count of 2xx requests on one listener, read from its admin API in `ns`.
fn requests(ns: &Netns, listener: &str) -> f64 {
    stat(
        ns,
        &format!("weft_downstream_rq_total{{listener=\"{listener}\",class=\"2xx\"}}"),
    )
}

/// A sidecar's count of upstream connections of one cluster.
fn upstream_connections(ns: &Netns, cluster: &str) -> f64 {
    stat(ns, &format!("weft_upstream_cx_total{{cluster=\"{cluster}\"}}"))
}

/// The value of the sample `key` (name and labels) on the sidecar's admin API in `ns`; 0 if absent.
fn stat(ns: &Netns, key: &str) -> f64 {
    let stats = ns.run(&["curl", "-s", "http://127.0.0.1:9901/stats/prometheus"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// The client addresses that asked the server for hello.txt.
fn served_to(dir: &TempDir, log: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(log))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("GET /hello.txt"))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

fn init(ns: &Netns, args: &[&str]) {
    let mut all = vec![WEFT, "init"];
    all.extend(args);
    ns.run(&all);
}

#[test]
fn redirect_mode_carries_an_unmodified_call_through_both_sidecars() {
    if !prerequisites() {
        return;
    }
    let dir = test_dir("interception-redirect");
    let (a, b) = pair("r", &["10.213.0.3/24", "10.213.0.4/24"]);
    // B: the app (unmodified servers) on its own addresses.
    let _s1 = start_server(&b, &dir, "10.213.0.2", 8080, "s1.log");
    let _s2 = start_server(&b, &dir, "10.213.0.2", 8081, "s2.log");
    let _s3 = start_server(&b, &dir, "10.213.0.3", 8080, "s3.log");
    let _s4 = start_server(&b, &dir, "10.213.0.4", 8080, "s4.log");
    let _s6 = start_server(&b, &dir, "fd00:213::2", 8080, "s6.log");
    let _s7 = start_server(&b, &dir, "10.213.0.2", 8082, "s7.log");
    // A's sidecar knows one service by address (a virtual listener), the rest pass through.
    let virtual_b = r#"  - name: svc_b
    address: "10.213.0.2:8080"
    bind_to_port: false
    http:
      route_config:
        virtual_hosts:
          - name: b
            domains: ["*"]
            routes:
              - { match: { prefix: / }, route: { cluster: svc_b } }
"#;
    let cluster_b = "  - { name: svc_b, endpoints: [{ address: \"10.213.0.2:8080\" }] }\n";
    let _pa = start_sidecar(&a, &dir, "a", &sidecar_config(false, virtual_b, cluster_b), false);
    let _pb = start_sidecar(&b, &dir, "b", &sidecar_config(false, "", ""), false);
    init(
        &a,
        &[
            "--exclude-outbound-ports",
            "8081",
            "--exclude-outbound-cidrs",
            "10.213.0.4/32",
        ],
    );
    init(&b, &["--exclude-inbound-ports", "8081"]);

    // 1. By B's own address: A's virtual listener for it, then B's inbound capture.
    assert_eq!(fetch(&a, "10.213.0.2", 8080), hello());
    assert_eq!(requests(&a, "svc_b"), 1.0, "A's sidecar did not carry the call");
    assert_eq!(requests(&b, "inbound"), 1.0, "B's sidecar did not carry the call");
    // B's sidecar connected to the app from B's address, not the client's.
    assert_eq!(served_to(&dir, "s1.log"), ["10.213.0.2"]);

    // 2. An address A's sidecar has no listener for: the pass-through (original destination).
    assert_eq!(fetch(&a, "10.213.0.3", 8080), hello());
    assert_eq!(requests(&a, "outbound"), 1.0);
    assert_eq!(requests(&b, "inbound"), 2.0);
    assert_eq!(
        served_to(&dir, "s3.log"),
        ["10.213.0.2"],
        "from B's sidecar (B's primary address)"
    );

    // 3. An excluded port (outbound on A, inbound on B): straight from the client.
    assert_eq!(fetch(&a, "10.213.0.2", 8081), hello());
    assert_eq!(served_to(&dir, "s2.log"), ["10.213.0.1"], "the sidecars were bypassed");
    assert_eq!(requests(&a, "outbound") + requests(&a, "svc_b"), 2.0);
    assert_eq!(requests(&b, "inbound"), 2.0);

    // 4. An excluded CIDR on A: A's sidecar is bypassed, B's still captures it.
    assert_eq!(fetch(&a, "10.213.0.4", 8080), hello());
    assert_eq!(requests(&a, "outbound") + requests(&a, "svc_b"), 2.0);
    assert_eq!(requests(&b, "inbound"), 3.0);

    // 5. IPv6, through both sidecars' IPv6 listeners.
    assert_eq!(fetch(&a, "fd00:213::2", 8080), hello());
    assert_eq!(requests(&a, "outbound6"), 1.0);
    assert_eq!(requests(&b, "inbound6"), 1.0);
    assert_eq!(served_to(&dir, "s6.log"), ["fd00:213::2"]);

    // 6. Original port 8082: both sidecars' TCP proxy chain (filter chain match on the original
    // port), pass-through at L4.
    assert_eq!(fetch(&a, "10.213.0.2", 8082), hello());
    assert_eq!(upstream_connections(&a, "tcp_passthrough"), 1.0);
    assert_eq!(upstream_connections(&b, "tcp_inbound_passthrough"), 1.0);
    assert_eq!(
        requests(&a, "outbound") + requests(&a, "svc_b"),
        2.0,
        "not through HTTP"
    );
    assert_eq!(served_to(&dir, "s7.log"), ["10.213.0.2"]);

    // Removed: the same call goes straight to the server again.
    init(&a, &["--remove"]);
    init(&b, &["--remove"]);
    assert_eq!(fetch(&a, "10.213.0.2", 8080).0, "200");
    assert_eq!(served_to(&dir, "s1.log"), ["10.213.0.2", "10.213.0.1"]);
    assert_eq!(requests(&a, "svc_b"), 1.0);
}

#[test]
fn tproxy_mode_carries_the_call_without_nat_on_inbound() {
    if !prerequisites() {
        return;
    }
    let dir = test_dir("interception-tproxy");
    let (a, b) = pair("t", &[]);
    let _s1 = start_server(&b, &dir, "10.213.0.2", 8080, "s1.log");
    let _s6 = start_server(&b, &dir, "fd00:213::2", 8080, "s6.log");
    let _pa = start_sidecar(&a, &dir, "a", &sidecar_config(false, "", ""), false);
    let _pb = start_sidecar(&b, &dir, "b", &sidecar_config(true, "", ""), true);
    init(&a, &[]);
    init(&b, &["--tproxy"]);
    let rules = b.run(&["iptables-save", "-t", "mangle"]);
    assert!(rules.contains("-j TPROXY --on-port 15006"), "{rules}");
    let nat = b.run(&["iptables-save", "-t", "nat"]);
    assert!(
        !nat.contains("WEFT_IN_REDIRECT"),
        "TPROXY mode has no inbound NAT: {nat}"
    );
    assert!(b.run(&["ip", "rule", "show"]).contains("fwmark 0x539 lookup 133"));

    assert_eq!(fetch(&a, "10.213.0.2", 8080), hello());
    assert_eq!(requests(&a, "outbound"), 1.0);
    assert_eq!(
        requests(&b, "inbound"),
        1.0,
        "B's transparent inbound listener did not carry it"
    );
    assert_eq!(fetch(&a, "fd00:213::2", 8080), hello());
    assert_eq!(requests(&b, "inbound6"), 1.0);
    // Without `original_source`, the app sees its sidecar's connection (from B's own address).
    assert_eq!(served_to(&dir, "s1.log"), ["10.213.0.2"]);
}

#[test]
fn tproxy_original_source_shows_the_app_the_callers_address() {
    if !prerequisites() {
        return;
    }
    let dir = test_dir("interception-origsrc");
    let (a, b) = pair("o", &[]);
    let _s1 = start_server(&b, &dir, "10.213.0.2", 8080, "s1.log");
    let _s6 = start_server(&b, &dir, "fd00:213::2", 8080, "s6.log");
    let _s7 = start_server(&b, &dir, "10.213.0.2", 8082, "s7.log");
    let cfg = sidecar_config(true, "", "")
        .replace(
            "{ name: inbound_passthrough, type: original_dst }",
            "{ name: inbound_passthrough, type: original_dst, original_source: true }",
        )
        .replace(
            "{ name: tcp_inbound_passthrough, type: original_dst }",
            "{ name: tcp_inbound_passthrough, type: original_dst, original_source: true }",
        );
    assert_eq!(cfg.matches("original_source: true").count(), 2);
    let _pb = start_sidecar(&b, &dir, "b", &cfg, true);
    init(&b, &["--tproxy"]);
    // The caller (A, no sidecar) calls B's app by its address; B's sidecar carries it (HTTP chain,
    // then the TCP chain on 8082) and connects to the app from A's address.
    for _ in 0..3 {
        assert_eq!(fetch(&a, "10.213.0.2", 8080), hello());
    }
    assert_eq!(requests(&b, "inbound"), 3.0, "B's sidecar did not carry the calls");
    assert_eq!(
        served_to(&dir, "s1.log"),
        ["10.213.0.1"; 3],
        "the app saw the caller's address"
    );
    assert_eq!(fetch(&a, "fd00:213::2", 8080), hello());
    assert_eq!(requests(&b, "inbound6"), 1.0);
    assert_eq!(served_to(&dir, "s6.log"), ["fd00:213::1"]);
    assert_eq!(fetch(&a, "10.213.0.2", 8082), hello());
    assert_eq!(upstream_connections(&b, "tcp_inbound_passthrough"), 1.0);
    assert_eq!(served_to(&dir, "s7.log"), ["10.213.0.1"]);
    // The app's own outbound calls are unaffected (the return-path rules mark only connections
    // the sidecar opened from a foreign address).
    assert_eq!(fetch(&b, "10.213.0.2", 8080).0, "200");
}

/// The same on the listener (what Envoy's `envoy.filters.listener.original_src` listener filter
/// converts to over xDS): the inbound listeners have `original_source`, the clusters do not, and
/// the connections to the app carry Istio's `mark: 1337` (`original_source_mark`) as SO_MARK.
#[test]
fn tproxy_original_source_on_the_listener_shows_the_app_the_callers_address() {
    if !prerequisites() {
        return;
    }
    let dir = test_dir("interception-origsrc-listener");
    let (a, b) = pair("l", &[]);
    let _s1 = start_server(&b, &dir, "10.213.0.2", 8080, "s1.log");
    let _s6 = start_server(&b, &dir, "fd00:213::2", 8080, "s6.log");
    let _s7 = start_server(&b, &dir, "10.213.0.2", 8082, "s7.log");
    let cfg = sidecar_config(true, "", "").replace(
        "    transparent: true\n    direction: inbound\n",
        "    transparent: true\n    original_source: true\n    original_source_mark: 1337\n    direction: inbound\n",
    );
    assert_eq!(cfg.matches("original_source: true").count(), 2);
    let _pb = start_sidecar(&b, &dir, "b", &cfg, true);
    init(&b, &["--tproxy"]);
    // Counts (no target: it changes nothing) the SYNs to the app that leave with mark 1337 before
    // any other mangle rule could set a mark: only the socket's SO_MARK can.
    let marked_syns = || {
        let out = b.run(&["iptables", "-t", "mangle", "-L", "OUTPUT", "1", "-v", "-x", "-n"]);
        out.split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{out}"))
    };
    b.run(&[
        "iptables",
        "-t",
        "mangle",
        "-I",
        "OUTPUT",
        "1",
        "-p",
        "tcp",
        "--syn",
        "-d",
        "10.213.0.2",
        "--dport",
        "8080",
        "-m",
        "mark",
        "--mark",
        "1337",
    ]);
    assert_eq!(marked_syns(), 0);
    for _ in 0..2 {
        assert_eq!(fetch(&a, "10.213.0.2", 8080), hello());
    }
    assert_eq!(requests(&b, "inbound"), 2.0, "B's sidecar did not carry the calls");
    assert_eq!(
        served_to(&dir, "s1.log"),
        ["10.213.0.1"; 2],
        "the app saw the caller's address"
    );
    assert!(marked_syns() >= 1, "the connection to the app carried no SO_MARK 1337");
    assert_eq!(fetch(&a, "fd00:213::2", 8080), hello());
    assert_eq!(served_to(&dir, "s6.log"), ["fd00:213::1"]);
    assert_eq!(fetch(&a, "10.213.0.2", 8082), hello());
    assert_eq!(upstream_connections(&b, "tcp_inbound_passthrough"), 1.0);
    assert_eq!(served_to(&dir, "s7.log"), ["10.213.0.1"]);
}

#[test]
fn init_is_idempotent_and_remove_restores_the_namespace() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("i");
    // Someone else's rules, which weft init must leave alone.
    ns.run(&[
        "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9999", "-j", "ACCEPT",
    ]);
    ns.run(&["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "7", "-j", "DROP"]);
    ns.run(&["ip6tables", "-t", "nat", "-N", "OTHER"]);
    let before = ns.state();

    init(&ns, &["--exclude-inbound-ports", "22", "--dns-port", "15053"]);
    let once = ns.state();
    assert_ne!(once, before);
    assert!(once.contains("-A OUTPUT -p tcp -j WEFT_OUTPUT"), "{once}");
    assert!(
        once.contains("-A OUTPUT -p udp -m udp --dport 9999 -j ACCEPT"),
        "{once}"
    );
    assert!(
        once.contains("-A OUTPUT -p udp -m udp --dport 53 -j WEFT_DNS"),
        "{once}"
    );
    init(&ns, &["--exclude-inbound-ports", "22", "--dns-port", "15053"]);
    assert_eq!(ns.state(), once, "a second weft init changed the rules");

    // Switching modes replaces ours; a second run is again a no-op.
    init(&ns, &["--tproxy"]);
    let tproxy = ns.state();
    assert!(
        tproxy.contains("TPROXY") && !tproxy.contains("WEFT_IN_REDIRECT"),
        "{tproxy}"
    );
    init(&ns, &["--tproxy"]);
    assert_eq!(ns.state(), tproxy);

    init(&ns, &["--remove"]);
    assert_eq!(ns.state(), before, "--remove did not restore the namespace");
    let again = ns.exec(&[WEFT, "init", "--remove"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("nothing to remove"));
}

#[test]
fn a_failed_init_leaves_nothing_and_says_why() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new("f");
    let before = ns.state();
    // With loopback down, TPROXY's `local default dev lo` route cannot be added (IPv6), after
    // the IPv4 rules were committed: everything must be taken back.
    ns.run(&["ip", "link", "set", "lo", "down"]);
    let out = ns.exec(&[WEFT, "init", "--tproxy"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("route replace local default dev lo table 133"), "{err}");
    assert!(err.contains("nothing was left installed"), "{err}");
    ns.run(&["ip", "link", "set", "lo", "up"]);
    assert_eq!(ns.state(), before);

    // A rule iptables refuses (a uid the owner match does not take) is named in the error, and
    // the transaction it was in left nothing.
    let out = ns.exec(&[WEFT, "init", "--proxy-uid", "4294967295"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("IPv4 rule refused: `-A WEFT_OUTPUT -o lo -m owner ! --uid-owner 4294967295 -j RETURN`"),
        "{err}"
    );
    assert_eq!(ns.state(), before);

    // Without CAP_NET_ADMIN: a clear refusal before anything is tried.
    let mut args = AS_PROXY_UID.to_vec();
    args.extend([WEFT, "init"]);
    let out = ns.exec(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("lacks CAP_NET_ADMIN"), "{err}");
    assert_eq!(ns.state(), before);
}

#[test]
fn dry_run_prints_the_rules_and_changes_nothing() {
    // Needs no privilege: the rule set for an empty namespace.
    let out = Command::new(WEFT)
        .args([
            "init",
            "--dry-run",
            "--tproxy",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,fd00::/8",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("# IPv4 (iptables-restore --noflush)\n*nat\n:WEFT_OUTPUT - [0:0]"),
        "{text}"
    );
    assert!(text.contains("-A WEFT_OUTPUT -d 10.0.0.0/8 -j RETURN"), "{text}");
    assert!(text.contains("-A WEFT_OUTPUT -d fd00::/8 -j RETURN"), "{text}");
    assert!(
        text.contains("-j TPROXY --on-port 15006 --tproxy-mark 0x539/0xffffffff"),
        "{text}"
    );
    assert!(text.contains("# ip -6 rule add fwmark 0x539 lookup 133"), "{text}");
}

/// A DNS query over TCP (2-byte length prefix) for `name` type A, by python3 with no DNS library;
/// prints the answer's addresses.
const TCP_DNS_QUERY: &str = r#"
import socket, struct, sys
name = sys.argv[1]
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.create_connection((sys.argv[2], 53), timeout=5)
s.sendall(struct.pack(">H", len(q)) + q)
n = struct.unpack(">H", s.recv(2))[0]
r = b""
while len(r) < n:
    r += s.recv(n - len(r))
an = struct.unpack(">H", r[6:8])[0]
at = len(q)
for _ in range(an):
    rdlen = struct.unpack(">H", r[at + 10:at + 12])[0]
    print(socket.inet_ntoa(r[at + 12:at + 12 + rdlen]))
    at += 12 + rdlen
"#;

#[test]
fn dns_capture_answers_mesh_names_and_forwards_the_rest() {
    if !prerequisites() {
        return;
    }
    let dir = test_dir("interception-dns");
    let (a, b) = pair("d", &[]);
    let _s1 = start_server(&b, &dir, "10.213.0.2", 8080, "s1.log");
    // B's sidecar plays A's upstream resolver: it knows other.mesh.
    let b_dns = "dns:\n  listen: \"10.213.0.2:5353\"\n  upstream: \"10.213.0.2:9\"\n  hosts: { other.mesh: [\"10.213.0.2\"] }\n";
    let _pb = start_sidecar(&b, &dir, "b", &sidecar_config(false, "", b_dns), false);
    let a_dns = "dns:\n  listen: \"127.0.0.1:15053\"\n  upstream: \"10.213.0.2:5353\"\n  ttl: 5s\n  hosts: { reviews.mesh: [\"10.213.0.2\", \"fd00:213::2\"] }\n";
    let _pa = start_sidecar(&a, &dir, "a", &sidecar_config(false, "", a_dns), false);
    // The app's resolver is an address where nothing answers: only the capture makes DNS work.
    a.set_resolver("10.213.0.53");
    let before = a.exec(&["getent", "ahostsv4", "reviews.mesh"]);
    assert!(!before.status.success(), "resolved without interception?");
    init(&a, &["--dns-port", "15053"]);

    // A mesh name, from A's sidecar's table (getaddrinfo, as any app resolves).
    let v4 = a.run(&["getent", "ahostsv4", "reviews.mesh"]);
    assert!(v4.starts_with("10.213.0.2 "), "{v4}");
    let v6 = a.run(&["getent", "ahostsv6", "reviews.mesh"]);
    assert!(v6.starts_with("fd00:213::2 "), "{v6}");
    let py = a.run(&[
        "python3",
        "-c",
        "import socket; print(socket.gethostbyname('reviews.mesh'))",
    ]);
    assert_eq!(py.trim(), "10.213.0.2");
    // Any other name: forwarded to the upstream resolver (B's), its answer relayed.
    let other = a.run(&["getent", "ahostsv4", "other.mesh"]);
    assert!(other.starts_with("10.213.0.2 "), "{other}");
    // DNS over TCP is captured too.
    let tcp = a.run(&["python3", "-c", TCP_DNS_QUERY, "reviews.mesh", "10.213.0.53"]);
    assert_eq!(tcp.trim(), "10.213.0.2");
    // And the name works end to end through the outbound capture.
    // (-4: the name has an IPv6 address too, where B serves nothing.)
    let out = a.run(&["curl", "-4", "-s", "-m", "10", "http://reviews.mesh:8080/hello.txt"]);
    assert_eq!(out.trim(), "hello from B");
    assert_eq!(requests(&a, "outbound"), 1.0);

    init(&a, &["--remove"]);
    assert!(!a.exec(&["getent", "ahostsv4", "reviews.mesh"]).status.success());
}

/// A veth pair between two existing namespaces: `a_ips` (CIDRs) on a's end, `b_ips` on b's (IPv6
/// ones without duplicate address detection, so they are usable at once).
fn link(a: &Netns, b: &Netns, a_ips: &[&str], b_ips: &[&str]) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (va, vb) = (
        format!("wfl{}x{n}a", std::process::id() % 100_000),
        format!("wfl{}x{n}b", std::process::id() % 100_000),
    );
    ok(&[
        "ip", "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns", &b.name,
    ]);
    for (ns, dev, ips) in [(a, &va, a_ips), (b, &vb, b_ips)] {
        for ip in ips {
            let mut args = vec!["ip", "addr", "add", ip, "dev", dev];
            if ip.contains(':') {
                args.push("nodad");
            }
            ns.run(&args);
        }
        ns.run(&["ip", "link", "set", dev, "up"]);
    }
    // Up is not yet usable: the kernel applies a carrier change through its link watcher, which
    // batches non-urgent events for up to a second, and until then the device's queue drops what
    // is sent (measured with plain sockets: a connect 0.5 s after `link up` lost its SYN in 3 of 9
    // tries, none of 10 once both ends reported operstate `up`). Wait for that on both ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (ns, dev) in [(a, &va), (b, &vb)] {
        loop {
            let state = ns.run(&["cat", &format!("/sys/class/net/{dev}/operstate")]);
            if state.trim() == "up" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{dev} in {} is still {state:?} after 10 s",
                ns.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Moves the calling thread (only it) into `ns`.
fn enter(ns: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    // SAFETY: setns on a valid namespace fd; CLONE_NEWNET affects the calling thread only.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns into {ns}: {}", std::io::Error::last_os_error());
}

/// One GET on a fresh connection (`connection: close`) to `addr` with `host`: the status.
/// The status and the whole answer of a GET on a new `connection: close` connection.
fn get_answer(addr: std::net::SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    match text.split_whitespace().nth(1).and_then(|c| c.parse().ok()) {
        Some(status) => Ok((status, text)),
        None => Err(format!("not an HTTP answer: {text:?}")),
    }
}

/// The client addresses of every GET /hello.txt the server logged after the first `skip` ones.
fn served_since(dir: &TempDir, log: &str, skip: usize) -> Vec<String> {
    served_to(dir, log).into_iter().skip(skip).collect()
}

fn count(v: &[String], ip: &str) -> usize {
    v.iter().filter(|a| *a == ip).count()
}

#[test]
fn intercept_switches_on_and_off_under_load_without_losing_a_request() {
    switch_under_load("s", false, false);
}

#[test]
fn intercept_switches_tproxy_interception_under_load_without_losing_a_request() {
    switch_under_load("p", true, false);
}

#[test]
fn intercept_switches_on_and_off_over_ipv6_under_load_without_losing_a_request() {
    switch_under_load("6", false, true);
}

#[test]
fn intercept_switches_tproxy_interception_over_ipv6_under_load_without_losing_a_request() {
    switch_under_load("q", true, true);
}

/// `weft intercept on` then `off` on one instance while a caller sends a request every 5 ms
/// through its sidecar: with `--tproxy` (a transparent inbound listener) or REDIRECT, and with the
/// service's endpoints (so every call) over IPv6 or IPv4.
fn switch_under_load(tag: &str, tproxy: bool, v6: bool) {
    if !prerequisites() {
        return;
    }
    let mode = match (tproxy, v6) {
        (false, false) => "REDIRECT, IPv4",
        (true, false) => "TPROXY, IPv4",
        (false, true) => "REDIRECT, IPv6",
        (true, true) => "TPROXY, IPv6",
    };
    let dir = test_dir(&format!("interception-switch-{tag}"));
    // C: the caller (app + sidecar under weft control, and weft control itself); B1: the instance
    // whose interception is switched; B2: the service's other instance. Every link has IPv4 (weft
    // control's admin API is reached over it) and IPv6 addresses; the service's endpoints are the
    // ones of the family under test.
    let c = Netns::new(&format!("s{tag}c"));
    let b1 = Netns::new(&format!("s{tag}b"));
    let b2 = Netns::new(&format!("s{tag}o"));
    link(
        &c,
        &b1,
        &["10.214.1.1/24", "fd00:214:1::1/64"],
        &["10.214.1.2/24", "fd00:214:1::2/64"],
    );
    link(
        &c,
        &b2,
        &["10.214.2.1/24", "fd00:214:2::1/64"],
        &["10.214.2.2/24", "fd00:214:2::2/64"],
    );
    let (caller_ip, b1_ip, b2_ip) = if v6 {
        ("fd00:214:1::1", "fd00:214:1::2", "fd00:214:2::2")
    } else {
        ("10.214.1.1", "10.214.1.2", "10.214.2.2")
    };
    // B1's sidecar's inbound listener for this family.
    let inbound = if v6 { "inbound6" } else { "inbound" };
    let _s1 = start_server(&b1, &dir, b1_ip, 8080, "s1.log");
    let _s2 = start_server(&b2, &dir, b2_ip, 8080, "s2.log");
    let _pb = start_sidecar(&b1, &dir, "b1", &sidecar_config(tproxy, "", ""), tproxy);

    let reg = dir.join("registry");
    std::fs::create_dir_all(&reg).unwrap();
    std::fs::write(
        reg.join("services.yaml"),
        format!(
            "services:\n  - name: client\n    endpoints: []\n  - name: svc\n    endpoints: [{{address: \"{}\"}}, {{address: \"{}\"}}]\n",
            host_port(b1_ip, 8080),
            host_port(b2_ip, 8080)
        ),
    )
    .unwrap();
    let control_admin = "10.214.1.1:18001";
    let _control = c.spawn(
        &[
            WEFT,
            "control",
            "--registry",
            reg.to_str().unwrap(),
            "--xds",
            "127.0.0.1:18000",
            "--admin",
            "0.0.0.0:18001",
            "--admin-allow-non-loopback",
        ],
        &dir.join("control.log"),
        None,
    );
    dir.write(
        "caller.yaml",
        "node:\n  id: client-1\n  cluster: client\n  metadata:\n    weft.role: sidecar\n    weft.outbound: \"127.0.0.1:15001\"\n    weft.inbound: \"127.0.0.1:15006\"\n    weft.app: \"127.0.0.1:8080\"\nadmin:\n  address: \"127.0.0.1:9902\"\nruntime:\n  concurrency: 1\nxds:\n  address: \"127.0.0.1:18000\"\n  mode: ads_delta\n",
    );
    let _caller = c.spawn(
        &[WEFT, "proxy", "-c", dir.join("caller.yaml").to_str().unwrap()],
        &dir.join("caller.log"),
        None,
    );
    let outbound: std::net::SocketAddr = "127.0.0.1:15001".parse().unwrap();
    // The caller reaches both instances through its sidecar.
    wait_200(
        &c,
        &["-H", "host: svc", "http://127.0.0.1:15001/hello.txt"],
        Duration::from_secs(30),
        || {
            format!(
                "the caller's sidecar does not route svc: {}{}",
                std::fs::read_to_string(dir.join("control.log")).unwrap_or_default(),
                std::fs::read_to_string(dir.join("caller.log")).unwrap_or_default()
            )
        },
    );

    // Both instances answered through the sidecar before the load starts, so that what is measured
    // below starts with every neighbour entry and pooled connection warm (two fresh-clone CI runs
    // lost the load's first request to the instance `wait_200` had not reached yet: its SYN was
    // sent within a second of `link up`, into a queue the kernel had not activated yet; `link` now
    // waits for that, and this proves both paths work before the clock starts).
    let warm_deadline = Instant::now() + Duration::from_secs(30);
    let mut warm_failures = 0;
    while served_to(&dir, "s1.log").is_empty() || served_to(&dir, "s2.log").is_empty() {
        assert!(
            Instant::now() < warm_deadline,
            "the caller's sidecar did not reach both instances within 30 s ({warm_failures} failed warm-up calls)"
        );
        let code = c.exec(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "host: svc",
            "http://127.0.0.1:15001/hello.txt",
        ]);
        if String::from_utf8_lossy(&code.stdout) != "200" {
            warm_failures += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if warm_failures > 0 {
        println!("[{mode}] warm-up: {warm_failures} call(s) failed before both instances answered");
    }

    // The caller app: a GET every 5 ms on a new connection, from inside C, until stopped (at most
    // 120 s); every failure is kept.
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let okc = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let load = {
        let (stop, okc, failures) = (stop.clone(), okc.clone(), failures.clone());
        let c_name = c.name.clone();
        std::thread::spawn(move || {
            enter(&c_name);
            let until = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                match get_answer(outbound, "svc", "/hello.txt") {
                    Ok((200, _)) => {
                        okc.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.lock().push(format!("{:?}: {other:?}", Instant::now())),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let instance = format!("svc/{}", host_port(b1_ip, 8080));
    let intercept = |switch: &str| -> (Duration, String) {
        let started = Instant::now();
        let mut args = vec![
            WEFT,
            "intercept",
            switch,
            "--control",
            control_admin,
            "--instance",
            &instance,
            "--admin",
            "127.0.0.1:9901",
            "--drain-timeout",
            "20s",
        ];
        if tproxy {
            args.push("--tproxy");
        }
        let out = b1.exec(&args);
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "weft intercept {switch} failed: {err}");
        (took, err)
    };

    std::thread::sleep(Duration::from_millis(1500));
    let before = served_to(&dir, "s1.log");
    assert!(
        count(&before, caller_ip) > 10,
        "direct calls before the switch: {before:?}"
    );
    assert_eq!(requests(&b1, inbound), 0.0);

    // On: from now on B1's app is reached through its sidecar (which connects from B1's address).
    let on_at = Instant::now();
    let (on_took, on_log) = intercept("on");
    eprintln!("[{mode}] intercept on took {on_took:?}:\n{on_log}");
    assert!(on_log.contains("all 1 connected proxies ACKed the drain"), "{on_log}");
    let at_on = served_to(&dir, "s1.log").len();
    let inbound_at_on = requests(&b1, inbound);
    std::thread::sleep(Duration::from_millis(1500));
    let after_on = served_since(&dir, "s1.log", at_on);
    assert!(
        count(&after_on, b1_ip) > 10,
        "through B1's sidecar after on: {after_on:?}"
    );
    assert_eq!(count(&after_on, caller_ip), 0, "no direct call after on: {after_on:?}");
    // (The log and the stats are read at slightly different moments under load: no exact match.)
    let via_sidecar = requests(&b1, inbound) - inbound_at_on;
    assert!(
        via_sidecar > 10.0,
        "B1's sidecar stats count the calls after on: {via_sidecar}"
    );

    // Off: straight to the app again.
    let off_at = Instant::now();
    let (off_took, off_log) = intercept("off");
    eprintln!("[{mode}] intercept off took {off_took:?}:\n{off_log}");
    let at_off = served_to(&dir, "s1.log").len();
    let inbound_at_off = requests(&b1, inbound);
    std::thread::sleep(Duration::from_millis(1500));
    let after_off = served_since(&dir, "s1.log", at_off);
    assert!(count(&after_off, caller_ip) > 10, "direct after off: {after_off:?}");
    assert_eq!(
        count(&after_off, b1_ip),
        0,
        "no call through the sidecar after off: {after_off:?}"
    );
    assert_eq!(requests(&b1, inbound), inbound_at_off);

    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    let failed = failures.lock().clone();
    let total = okc.load(Ordering::SeqCst);
    eprintln!(
        "[{mode}] switch under load: {total} requests OK, {} failed; on took {on_took:?}, off took {off_took:?}",
        failed.len()
    );
    if !failed.is_empty() {
        // What the proxies said about it: the caller's sidecar and B1's.
        for log in ["caller.log", "b1.log", "control.log"] {
            let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains(" 503 ") || l.contains("connect"))
                .collect();
            eprintln!("--- {log} (warnings and errors) ---\n{}", lines.join("\n"));
        }
        // The kernels' view: SYN retransmissions, listen queue overflows, resets.
        for ns in [&c, &b1, &b2] {
            let out = ns.exec(&[
                "nstat",
                "-az",
                "TcpExtListen*",
                "TcpExtTCPSynRetrans",
                "TcpRetransSegs",
                "TcpOutRsts",
                "TcpExtTW*",
                "TcpAttemptFails",
                "TcpExtTCPTimeouts",
            ]);
            eprintln!("--- nstat in {} ---\n{}", ns.name, String::from_utf8_lossy(&out.stdout));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed (on at {on_at:?}, off at {off_at:?}): {failed:?}",
        failed.len(),
        total + failed.len() as u64
    );
    assert!(total > 100, "too little load to prove anything: {total}");
    // Nothing left drained at the control plane.
    let drains = c.run(&["curl", "-s", "http://127.0.0.1:18001/endpoints/drains"]);
    assert!(drains.contains("\"drains\": []"), "{drains}");
}

/// The pod's app: calls http://HOST:PORT/hello.txt every 20 ms on a keep-alive connection
/// (reconnecting after an error) from its first instant; on SIGTERM it goes on calling for 3 s
/// (its own graceful shutdown), then prints `RESULT <ok at start> <failed at start> <ok during
/// shutdown> <failed during shutdown>`. At most 60 s.
const POD_APP: &str = r#"
import http.client, signal, sys, time
host, port = sys.argv[1], int(sys.argv[2])
stop_at = None
def term(*_):
    global stop_at
    stop_at = time.monotonic() + 3.0
signal.signal(signal.SIGTERM, term)
ok = {"start": 0, "shutdown": 0}
failed = {"start": 0, "shutdown": 0}
conn = None
print("STARTED", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and not (stop_at and time.monotonic() >= stop_at):
    phase = "shutdown" if stop_at else "start"
    try:
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=2)
        conn.request("GET", "/hello.txt")
        r = conn.getresponse()
        r.read()
        if r.status == 200:
            ok[phase] += 1
        else:
            failed[phase] += 1
            print(phase, "status", r.status, flush=True)
    except Exception as e:
        failed[phase] += 1
        print(phase, "error", repr(e), flush=True)
        try:
            conn.close()
        except Exception:
            pass
        conn = None
    time.sleep(0.02)
print("RESULT", ok["start"], failed["start"], ok["shutdown"], failed["shutdown"], flush=True)
"#;

fn sigterm(p: &Proc) {
    // SAFETY: kill(2) on the pid of a child we started and have not reaped.
    unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
}

fn wait_exit(p: &mut Proc, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if p.0.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// One pod lifetime in a fresh namespace with interception on: the app starts first (wrapped in
/// `weft wait-ready` when `lifecycle`), the sidecar later (500 ms later, or once the app without
/// wait-ready has seen a call fail); 1.5 s after the app started both get SIGTERM.
/// With `lifecycle` the sidecar drains (10 s timer) and keeps serving the app's outbound; without
/// it, it exits at once (drain_timeout 0s). Returns the app's RESULT numbers.
fn pod_lifetime(tag: &str, lifecycle: bool) -> [u64; 4] {
    let dir = test_dir(&format!("interception-pod-{tag}"));
    let (pod, server) = pair(tag, &[]);
    // HTTP/1.1 keep-alive on the server too, so the app's connection through the sidecar stays
    // open across calls: an app with no connection open would let a draining sidecar exit early.
    let _srv = start_server_with(&server, &dir, "10.213.0.2", 8080, "server.log", &["-p", "HTTP/1.1"]);
    // Outbound capture only; the sidecar's config comes with the pod (static here).
    init(&pod, &["--include-inbound-ports", ""]);
    dir.write("app.py", POD_APP);
    let app_py = dir.join("app.py");
    let app_cmd = format!("python3 -u {} 10.213.0.2 8080", app_py.display());
    let mut app = if lifecycle {
        let wrapped = format!("{WEFT} wait-ready --admin 127.0.0.1:9901 --timeout 20s && exec {app_cmd}");
        pod.spawn(&["sh", "-c", &wrapped], &dir.join("app.log"), None)
    } else {
        pod.spawn(&["sh", "-c", &format!("exec {app_cmd}")], &dir.join("app.log"), None)
    };
    let drain = if lifecycle { "10s" } else { "0s" };
    let cfg = sidecar_config(false, "", "").replace("drain_timeout: 1s", &format!("drain_timeout: {drain}"));
    assert!(cfg.contains(&format!("drain_timeout: {drain}")));
    let app_log = || std::fs::read_to_string(dir.join("app.log")).unwrap_or_default();
    if lifecycle {
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !app_log().contains("STARTED"),
            "wait-ready let the app start without a sidecar"
        );
    } else {
        // The sidecar container starts later than the app, which is calling already.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !app_log().contains("start error") {
            assert!(Instant::now() < deadline, "the app made no call: {}", app_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    dir.write("sidecar.yaml", &cfg);
    let cfg_path = dir.join("sidecar.yaml");
    let mut args = AS_PROXY_UID.to_vec();
    args.extend([WEFT, "proxy", "-c", cfg_path.to_str().unwrap()]);
    let mut sidecar = pod.spawn(&args, &dir.join("sidecar.log"), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app_log().contains("STARTED") {
        assert!(Instant::now() < deadline, "the app did not start: {}", app_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // Pod deletion: SIGTERM to every container at once.
    sigterm(&app);
    sigterm(&sidecar);
    assert!(
        wait_exit(&mut app, Duration::from_secs(15)),
        "the app did not exit: {}",
        app_log()
    );
    assert!(
        wait_exit(&mut sidecar, Duration::from_secs(15)),
        "the sidecar did not exit"
    );
    let log = app_log();
    eprintln!("pod {tag} (lifecycle {lifecycle}) app log:\n{log}");
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT in the app's log: {log}"));
    let n: Vec<u64> = line.split_whitespace().map(|v| v.parse().unwrap()).collect();
    [n[0], n[1], n[2], n[3]]
}

#[test]
fn a_pod_with_the_lifecycle_features_loses_no_call_at_start_or_shutdown() {
    if !prerequisites() {
        return;
    }
    let [ok_start, failed_start, ok_shutdown, failed_shutdown] = pod_lifetime("lw", true);
    assert!(ok_start >= 5, "calls at start: {ok_start}");
    assert!(ok_shutdown >= 20, "calls during the app's 3 s shutdown: {ok_shutdown}");
    assert_eq!(
        (failed_start, failed_shutdown),
        (0, 0),
        "failed calls (start, shutdown)"
    );

    // The same pod without them (no wait-ready, a sidecar that exits at once): calls fail at both
    // ends, so the test above proves something.
    let [_, failed_start, _, failed_shutdown] = pod_lifetime("ln", false);
    assert!(failed_start > 0, "without wait-ready the first calls fail");
    assert!(
        failed_shutdown > 0,
        "with a sidecar that exits at once, calls during shutdown fail"
    );
}
