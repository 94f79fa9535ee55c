//! Authorization through a real sidecar pair with mTLS: SPIFFE identities come from a real
//! `weft control` CA; the server sidecar enforces Istio-style policies on its inbound listener.
//! reviews (allowed) → 200, productpage (not allowed) → 403 `RBAC: access denied`, a DENY rule wins
//! over ALLOW, a dry-run policy counts but lets through, and a TCP listener's policy closes the
//! connection. The access log names the policy (`rbac_access_denied_matched_policy[...]`), the
//! metrics count each decision, and `weft explain` agrees with the real outcomes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use weft_test_support::*;

mod mesh_support;
use mesh_support::*;

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
