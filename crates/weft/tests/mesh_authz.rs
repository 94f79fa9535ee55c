//! Authorization through a real sidecar pair with mTLS: SPIFFE identities come from a real
//! `weft control` CA; the server sidecar enforces Istio-style policies on its inbound listener.
//! reviews (allowed) → 200, productpage (not allowed) → 403 `RBAC: access denied`, a DENY rule wins
//! over ALLOW, a dry-run policy counts but lets through, and a TCP listener's policy closes the
//! connection. The access log names the policy (`rbac_access_denied_matched_policy[...]`), the
//! metrics count each decision, and `weft explain` agrees with the real outcomes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft_test_support::*;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/productpage";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let f = std::fs::File::create(log).unwrap();
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    )
}

fn token(dir: &Path, identity: &str) -> PathBuf {
    let out = Command::new(WEFT)
        .args(["control", "token", "--ca-dir"])
        .arg(dir.join("ca"))
        .args(["--identity", identity, "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = dir.join(format!("{}.token", identity.replace('/', "_")));
    std::fs::write(&p, &out.stdout).unwrap();
    p
}

struct Sidecar {
    _p: Proc,
    admin: SocketAddr,
}

fn sidecar(dir: &Path, name: &str, yaml: &str, ca: SocketAddr, identity: &str) -> Sidecar {
    let admin = addr();
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!("admin: {{ address: \"{admin}\" }}\nruntime: {{ concurrency: 1 }}\n{yaml}"),
    )
    .unwrap();
    let tok = token(dir, identity);
    let p = spawn(
        Command::new(WEFT)
            .args(["proxy", "-c"])
            .arg(&cfg)
            .args(["--ca-address", &ca.to_string(), "--identity-token-file"])
            .arg(&tok),
        &dir.join(format!("{name}.log")),
    );
    wait_until(&format!("{name}'s identity"), Duration::from_secs(30), || {
        let dump = http_text(admin, "GET", "/config_dump")?;
        dump.contains("spiffe://").then_some(())
    });
    Sidecar { _p: p, admin }
}

/// One request over a fresh plaintext connection: the whole response text; None on failure.
fn http_text(a: SocketAddr, method: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(a).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: ratings\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn status_and_body(resp: &str) -> (u16, &str) {
    let status = resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, resp.split_once("\r\n\r\n").map_or("", |(_, b)| b))
}

fn metric_of(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// POST /explain on the server sidecar's admin API, for a caller with `principal`.
fn explain(admin: SocketAddr, method: &str, path: &str, principal: &str) -> serde_json::Value {
    let body = serde_json::json!({ "method": method, "url": format!("http://ratings{path}"), "principal": principal, "listener": "inbound" })
        .to_string();
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /explain HTTP/1.1\r\nhost: {admin}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (status, b) = status_and_body(&out);
    assert_eq!(status, 200, "{out}");
    serde_json::from_str(b).unwrap()
}

fn server_yaml(inbound: SocketAddr, tcp: SocketAddr, app: SocketAddr, log: &Path) -> String {
    format!(
        r#"listeners:
  - name: inbound
    address: {inbound}
    tls: {{ mode: STRICT }}
    http:
      access_log: {{ path: "{log}", format: "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %DOWNSTREAM_PEER_URI_SAN% %REQ(:PATH)%\n" }}
      authorization:
        policies:
          - name: no-admin
            action: DENY
            rules: [{{ to: [{{ paths: ["/admin*"] }}] }}]
          - name: reviews-reads
            action: ALLOW
            rules:
              - from: [{{ principals: ["{REVIEWS}"] }}]
                to: [{{ methods: [GET, POST] }}]
          - name: watch-posts
            action: DENY
            dry_run: true
            rules: [{{ to: [{{ methods: [POST] }}] }}]
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: app }}
  - name: db
    address: {tcp}
    tcp_proxy:
      cluster: app
      authorization:
        policies:
          - {{ name: no-loopback, action: DENY, rules: [{{ from: [{{ ip_blocks: [127.0.0.0/8] }}] }}] }}
clusters:
  - name: app
    endpoints: [{{ address: "{app}" }}]
"#,
        log = log.display()
    )
}

fn client_yaml(listen: SocketAddr, server: SocketAddr) -> String {
    format!(
        r#"listeners:
  - name: outbound
    address: {listen}
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: ratings }}
clusters:
  - name: ratings
    endpoints: [{{ address: "{server}" }}]
    tls: {{ mode: mesh }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_pair_enforces_authorization_by_spiffe_identity() {
    let dir = TempDir::new("mesh-authz");
    std::fs::create_dir_all(dir.join("reg")).unwrap();
    let xds = addr();
    let _control = spawn(
        Command::new(WEFT)
            .args(["control", "--registry"])
            .arg(dir.join("reg"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .args(["--xds", &xds.to_string(), "--admin", &addr().to_string()]),
        &dir.join("control.log"),
    );
    wait_until("weft control", Duration::from_secs(10), || TcpStream::connect(xds).ok());
    let app = upstream(|s| async move { text(200, &format!("app saw {}", s.uri.path())) }).await;
    let (inbound, tcp, rev_out, pp_out) = (addr(), addr(), addr(), addr());
    let access = dir.join("ratings-access.log");
    let server = sidecar(
        dir.path(),
        "ratings",
        &server_yaml(inbound, tcp, app.addr, &access),
        xds,
        "default/ratings",
    );
    let _reviews = sidecar(
        dir.path(),
        "reviews",
        &client_yaml(rev_out, inbound),
        xds,
        "default/reviews",
    );
    let _pp = sidecar(
        dir.path(),
        "productpage",
        &client_yaml(pp_out, inbound),
        xds,
        "default/productpage",
    );

    // The allowed principal: 200 from the app.
    let r = http_text(rev_out, "GET", "/ratings/1").unwrap();
    assert_eq!(status_and_body(&r), (200, "app saw /ratings/1"), "{r}");
    // Another principal: 403 with Envoy's body; the app never sees it.
    let r = http_text(pp_out, "GET", "/ratings/1").unwrap();
    assert_eq!(status_and_body(&r), (403, "RBAC: access denied"), "{r}");
    assert!(r.to_ascii_lowercase().contains("x-weft-reason: rbac"), "{r}");
    // DENY wins over ALLOW, even for the allowed principal.
    let r = http_text(rev_out, "GET", "/admin/config").unwrap();
    assert_eq!(status_and_body(&r), (403, "RBAC: access denied"), "{r}");
    // Dry run: the POST would be denied by `watch-posts`, but only counts; it goes through.
    let r = http_text(rev_out, "POST", "/ratings/2").unwrap();
    assert_eq!(status_and_body(&r).0, 200, "{r}");
    assert_eq!(app.hits(), 2, "the app saw only the two allowed requests");

    let stats = http_text(server.admin, "GET", "/stats/prometheus").unwrap();
    let m = |n: &str| metric_of(&stats, &format!("weft_rbac_{n}_total{{listener=\"inbound\"}}"));
    assert_eq!(m("allowed"), 2.0, "{stats}");
    assert_eq!(m("denied"), 2.0, "{stats}");
    assert_eq!(m("shadow_denied"), 1.0, "{stats}");
    assert_eq!(m("shadow_allowed"), 3.0, "{stats}");

    // The access log says who was denied and by which policy.
    let log = wait_until("four access-log lines", Duration::from_secs(5), || {
        let t = std::fs::read_to_string(&access).ok()?;
        (t.lines().count() >= 4).then_some(t)
    });
    assert!(
        log.contains(&format!(
            "403 - rbac_access_denied_matched_policy[none] {PRODUCTPAGE} /ratings/1"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "403 - rbac_access_denied_matched_policy[no-admin[0]] {REVIEWS} /admin/config"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("200 - via_upstream {REVIEWS} /ratings/1")),
        "{log}"
    );

    // weft explain agrees with what happened.
    let v = explain(server.admin, "GET", "/ratings/1", REVIEWS);
    assert_eq!(
        v["policies"]["authorization"]["detail"], "allowed by policy reviews-reads[0]",
        "{v:#}"
    );
    let v = explain(server.admin, "GET", "/ratings/1", PRODUCTPAGE);
    assert_eq!(v["verdict"]["outcome"], "denied", "{v:#}");
    let v = explain(server.admin, "GET", "/admin/config", REVIEWS);
    assert_eq!(v["verdict"]["detail"], "denied by policy no-admin[0]", "{v:#}");

    // TCP: the listener's DENY policy closes the connection before anything is proxied.
    let mut s = TcpStream::connect(tcp).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed without an answer");
    assert_eq!(app.hits(), 2);
    let stats = http_text(server.admin, "GET", "/stats/prometheus").unwrap();
    assert_eq!(
        metric_of(&stats, "weft_rbac_denied_total{listener=\"db\"}"),
        1.0,
        "{stats}"
    );
}
