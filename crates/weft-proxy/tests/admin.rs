//! The admin API refuses cross-site mutation (foreign Origin or Host, CORS simple-request content
//! types) with 403, requires POST to mutate, and still serves curl-style calls. On the wire, against
//! a real proxy on 127.0.0.1.

use std::net::SocketAddr;
use weft_test_support::*;

async fn proxy() -> (std::sync::Arc<weft_proxy::Server>, SocketAddr, Upstream) {
    let up = named_upstream("a").await;
    let yaml = one_route_yaml(
        "{ cluster: a }",
        &format!("  - name: a\n    endpoints: [{{ address: \"{}\" }}]", up.addr),
    );
    let proxy = start_proxy(&yaml);
    let admin_addr = proxy.admin_addr().expect("admin configured");
    (proxy, admin_addr, up)
}

async fn send(addr: SocketAddr, method: &str, path: &str, host: &str, headers: &[(&str, &str)], body: &str) -> Got {
    H1Client::connect(addr)
        .await
        .send(req(method, path, host, headers, body))
        .await
}

async fn ready(addr: SocketAddr) -> (u16, String) {
    let r = get(addr, "/ready").await;
    (r.status.as_u16(), r.text())
}

/// The request that drained a proxy in the field: a page elsewhere POSTs `text/plain` to the
/// admin port (its own Origin, its own DNS name rebound to 127.0.0.1 as Host). Each of the three
/// marks alone is enough to refuse it; nothing is drained or reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_cross_site_drain_and_reload() {
    let (_proxy, admin, _up) = proxy().await;
    let own_host = admin.to_string();
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "all three",
            format!("evil.example:{}", admin.port()),
            vec![("origin", "https://evil.example"), ("content-type", "text/plain")],
        ),
        (
            "foreign Origin",
            own_host.clone(),
            vec![("origin", "https://evil.example")],
        ),
        ("Origin null", own_host.clone(), vec![("origin", "null")]),
        (
            "foreign Host (DNS rebinding)",
            format!("evil.example:{}", admin.port()),
            vec![],
        ),
        (
            "text/plain",
            own_host.clone(),
            vec![("content-type", "text/plain;charset=UTF-8")],
        ),
        (
            "form",
            own_host.clone(),
            vec![("content-type", "application/x-www-form-urlencoded")],
        ),
        (
            "multipart",
            own_host.clone(),
            vec![("content-type", "multipart/form-data; boundary=x")],
        ),
    ];
    for path in ["/drain", "/reload"] {
        for (what, host, headers) in &cases {
            let r = send(admin, "POST", path, host, headers, "x=1").await;
            assert_eq!(r.status, 403, "{what} POST {path}: {}", r.text());
            assert!(
                r.text().starts_with("403 refused: "),
                "{what}: clear body: {}",
                r.text()
            );
            assert!(r.text().contains("docs/security.md"), "{}", r.text());
        }
        // Other mutating methods are checked the same way.
        let r = send(
            admin,
            "DELETE",
            path,
            &own_host,
            &[("origin", "https://evil.example")],
            "",
        )
        .await;
        assert_eq!(r.status, 403, "{}", r.text());
    }
    assert!(
        send(admin, "POST", "/drain", "evil.example", &[], "")
            .await
            .text()
            .contains("Host \"evil.example\""),
        "the body names what was refused"
    );
    assert_eq!(ready(admin).await, (200, "LIVE\n".into()), "not drained");
    let dump: serde_json::Value = serde_json::from_slice(&get(admin, "/config_dump").await.body).unwrap();
    assert_eq!(dump["generation"], 1, "not reloaded: {dump}");
}

/// Only POST mutates: GET (what a link, an image or a prefetch sends) does not drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_get_drain_does_not_drain() {
    let (_proxy, admin, _up) = proxy().await;
    for m in ["GET", "HEAD"] {
        let r = send(admin, m, "/drain", &admin.to_string(), &[], "").await;
        assert_eq!(r.status, 405, "{m} /drain");
    }
    let r = send(admin, "PUT", "/drain", &admin.to_string(), &[], "").await;
    assert_eq!(r.status, 405, "PUT /drain: {}", r.text());
    assert_eq!(ready(admin).await, (200, "LIVE\n".into()), "not drained");
}

/// curl and scripts (no Origin, Host the admin address or a loopback name, no body) still work; so
/// does the admin's own origin and a loopback origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_accepts_curl_style_post() {
    let (_proxy, admin, _up) = proxy().await;
    let port = admin.port();
    let localhost = format!("localhost:{port}");
    let own_origin = format!("http://{admin}");
    // A quick-start proxy has no file: reload is refused with 400, but it is not a 403.
    for (host, headers) in [
        (admin.to_string(), vec![("user-agent", "curl/8.5.0")]),
        (localhost.clone(), vec![("content-type", "application/json")]),
        ("127.0.0.1".to_string(), vec![("origin", own_origin.as_str())]),
        (localhost.clone(), vec![("origin", "http://localhost:3000")]),
    ] {
        let r = send(admin, "POST", "/reload", &host, &headers, "").await;
        assert_eq!(r.status, 400, "Host {host} {headers:?}: {}", r.text());
        assert!(r.text().contains("no configuration file"), "{}", r.text());
    }
    let r = send(
        admin,
        "POST",
        "/drain",
        &admin.to_string(),
        &[("user-agent", "curl/8.5.0")],
        "",
    )
    .await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "draining\n"));
    assert_eq!(ready(admin).await, (503, "DRAINING\n".into()));
}

#[tokio::test]
async fn admin_listen_backlog_is_1024() {
    let up = upstream(|_| async { text(200, "ok") }).await;
    let proxy = start_proxy(&app_yaml(up.addr, ""));
    let port = proxy.admin_addr().unwrap().port();
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2, installed by scripts/install-peers)");
    let text = String::from_utf8_lossy(&out.stdout);
    // State Recv-Q Send-Q Local Peer: for a listening socket Send-Q is the backlog.
    let backlog: u32 = text.split_whitespace().nth(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    assert_eq!(backlog, somaxconn.min(1024), "{text}");
}
