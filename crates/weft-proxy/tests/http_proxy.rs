//! HTTP proxying observed on the wire: forwarding headers, routing, rewrites, local replies,
//! smuggling rejection, 100-continue, HEAD.

use std::time::Duration;
use weft_test_support::*;

fn one_cluster(addr: std::net::SocketAddr, extra_http: &str, routes: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      {extra_http}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
{routes}
clusters:
  - name: app
    endpoints: [{{ address: "{addr}" }}]
"#
    )
}

const DEFAULT_ROUTE: &str = "              - { match: { prefix: / }, route: { cluster: app } }";

#[tokio::test]
async fn forwards_and_sets_proxy_headers() {
    let up = named_upstream("a").await;
    let proxy = start_proxy(&one_cluster(up.addr, "via: weft", DEFAULT_ROUTE));
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = H1Client::connect(addr).await;
    let got = c
        .send(req(
            "GET",
            "/some/path?q=1",
            "shop.example",
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("x-forwarded-for", "10.9.8.7"),
                ("x-custom", "kept"),
            ],
            "",
        ))
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hello from a");
    assert_eq!(got.header("via"), Some("1.1 weft"));
    let seen = up.last();
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/some/path?q=1");
    assert_eq!(seen.headers["host"], "shop.example");
    assert_eq!(seen.headers["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["via"], "1.1 weft");
    let id = seen.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "uuid-shaped request id: {id}");
    for hop in ["x-secret", "keep-alive", "proxy-connection"] {
        assert!(!seen.headers.contains_key(hop), "{hop} must not be forwarded");
    }
    // Keep-alive: a second request on the same client connection works.
    let again = c.get("/again").await;
    assert_eq!(again.status, 200);
    assert_eq!(up.last().uri.path(), "/again");
    // An existing request id is kept.
    c.send(req("GET", "/", "x", &[("x-request-id", "abc-123")], "")).await;
    assert_eq!(up.last().headers["x-request-id"], "abc-123");
}

#[tokio::test]
async fn virtual_hosts_routes_and_local_replies() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: api
            domains: ["api.example.com", "*.api.example.com"]
            routes:
              - match: {{ prefix: /v1/, methods: [POST] }}
                route: {{ cluster: b }}
              - match: {{ prefix: /v1/, headers: [{{ name: x-canary, exact: "yes" }}] }}
                route: {{ cluster: b, prefix_rewrite: /canary/ }}
              - match: {{ prefix: /v1/ }}
                route: {{ cluster: a, prefix_rewrite: /internal/, host_rewrite: backend.internal }}
                request_headers_to_add: [{{ name: x-route, value: v1 }}]
                request_headers_to_remove: [x-drop-me]
                response_headers_to_add: [{{ name: x-served-route, value: v1 }}]
                response_headers_to_remove: [x-upstream]
              - match: {{ path: /old }}
                redirect: {{ path: /new, status: 308 }}
              - match: {{ path: /secure }}
                redirect: {{ scheme: https, status: 301 }}
              - match: {{ regex: "/teapot/[0-9]+" }}
                direct_response: {{ status: 418, body: "short and stout" }}
              - match: {{ prefix: /q, query_parameters: [{{ name: debug, exact: "1" }}] }}
                route: {{ cluster: b }}
              - match: {{ prefix: /q }}
                route: {{ cluster: a }}
clusters:
  - {{ name: a, endpoints: [{{ address: "{a}" }}] }}
  - {{ name: b, endpoints: [{{ address: "{b}" }}] }}
"#,
        a = a.addr,
        b = b.addr
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = H1Client::connect(addr).await;

    let got = c
        .send(req(
            "GET",
            "/v1/users?x=1",
            "api.example.com",
            &[("x-drop-me", "1")],
            "",
        ))
        .await;
    assert_eq!(got.text(), "hello from a");
    assert_eq!(got.header("x-served-route"), Some("v1"));
    assert_eq!(got.header("x-upstream"), None, "response header removed");
    let seen = a.last();
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/internal/users?x=1");
    assert_eq!(seen.headers["host"], "backend.internal");
    assert_eq!(seen.headers["x-route"], "v1");
    assert!(!seen.headers.contains_key("x-drop-me"));

    let got = c
        .send(req("POST", "/v1/users", "eu.api.example.com:8443", &[], "{}"))
        .await;
    assert_eq!(got.text(), "hello from b");
    assert_eq!(b.last().body.as_ref(), b"{}");

    let got = c
        .send(req("GET", "/v1/x", "api.example.com", &[("x-canary", "yes")], ""))
        .await;
    assert_eq!(got.text(), "hello from b");
    assert_eq!(b.last().uri.path(), "/canary/x");

    let got = c.send(req("GET", "/old?keep=1", "api.example.com", &[], "")).await;
    assert_eq!(got.status, 308);
    assert_eq!(got.header("location"), Some("http://api.example.com/new?keep=1"));

    let got = c.send(req("GET", "/secure", "api.example.com:8080", &[], "")).await;
    assert_eq!(got.status, 301);
    assert_eq!(got.header("location"), Some("https://api.example.com/secure"));

    let got = c.send(req("GET", "/teapot/7", "api.example.com", &[], "")).await;
    assert_eq!(got.status, 418);
    assert_eq!(got.text(), "short and stout");

    let got = c.send(req("GET", "/q?debug=1", "api.example.com", &[], "")).await;
    assert_eq!(got.text(), "hello from b");
    let got = c.send(req("GET", "/q?debug=0", "api.example.com", &[], "")).await;
    assert_eq!(got.text(), "hello from a");

    // No virtual host for this domain, and no route for this path: 404 made by weft, marked NR.
    let got = c.send(req("GET", "/v1/x", "other.example.com", &[], "")).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.header("x-weft-reason"), Some("NR"));
    let got = c.send(req("GET", "/nothing", "api.example.com", &[], "")).await;
    assert_eq!(got.status, 404);
    assert_eq!(got.header("x-weft-reason"), Some("NR"));

    let stats = admin(&proxy, "/stats/prometheus").await.text();
    assert_eq!(
        metric(&stats, "weft_downstream_rq_local_total{listener=\"web\",reason=\"NR\"}"),
        Some(2.0),
        "{stats}"
    );
}

#[tokio::test]
async fn upstream_failures_are_marked() {
    // A port with nothing listening.
    let dead = dead_addr();
    let slow = slow_upstream(Duration::from_secs(2), 200, "late").await;
    let app503 = upstream(|_| async { text(503, "app says no") }).await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - {{ match: {{ prefix: /dead }}, route: {{ cluster: dead }} }}
              - {{ match: {{ prefix: /slow }}, route: {{ cluster: slow, timeout: 200ms }} }}
              - {{ match: {{ prefix: /app }}, route: {{ cluster: app }} }}
clusters:
  - {{ name: dead, connect_timeout: 500ms, endpoints: [{{ address: "{dead}" }}] }}
  - {{ name: slow, endpoints: [{{ address: "{slow}" }}] }}
  - {{ name: app, endpoints: [{{ address: "{app}" }}] }}
"#,
        slow = slow.addr,
        app = app503.addr
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = H1Client::connect(addr).await;

    let got = c.get("/dead").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("x-weft-reason"), Some("UF"));
    assert!(got.text().contains("upstream connect error"), "{}", got.text());

    let t = std::time::Instant::now();
    let got = c.get("/slow").await;
    assert_eq!(got.status, 504);
    assert_eq!(got.header("x-weft-reason"), Some("UT"));
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "timeout honoured: {:?}",
        t.elapsed()
    );

    // The application's own 503 passes through unmarked.
    let got = c.get("/app").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.text(), "app says no");
    assert_eq!(got.header("x-weft-reason"), None);

    let stats = admin(&proxy, "/stats/prometheus").await.text();
    assert_eq!(
        metric(&stats, "weft_upstream_cx_connect_fail_total{cluster=\"dead\"}"),
        Some(1.0),
        "{stats}"
    );
    assert_eq!(
        metric(&stats, "weft_upstream_rq_timeout_total{cluster=\"slow\"}"),
        Some(1.0),
        "{stats}"
    );
    assert_eq!(
        metric(&stats, "weft_upstream_rq_total{cluster=\"app\",class=\"5xx\"}"),
        Some(1.0),
        "{stats}"
    );
    assert_eq!(
        metric(&stats, "weft_downstream_rq_total{listener=\"web\",class=\"5xx\"}"),
        Some(3.0),
        "{stats}"
    );
    let clusters: serde_json::Value = serde_json::from_slice(&admin(&proxy, "/clusters").await.body).unwrap();
    let dead_c = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dead")
        .unwrap();
    assert_eq!(dead_c["hosts"][0]["connect_failures"], 1);
}

#[tokio::test]
async fn request_smuggling_shapes_are_rejected() {
    let up = named_upstream("a").await;
    let proxy = start_proxy(&one_cluster(up.addr, "", DEFAULT_ROUTE));
    let addr = proxy.listener_addr("web").unwrap();
    let cases: [&[u8]; 3] = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    ];
    for case in cases {
        let out = raw(addr, case, Duration::from_secs(2)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "expected 400 for {:?}, got {text:?}",
            String::from_utf8_lossy(case)
        );
    }
    assert_eq!(up.hits(), 0, "nothing ambiguous reached the upstream");
    // Garbage gets a 400 or a closed connection, never a hang.
    let out = raw(addr, b"\x00\x01\x02 garbage\r\n\r\n", Duration::from_secs(2)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || text.starts_with("HTTP/1.1 400"), "{text:?}");
}

#[tokio::test]
async fn expect_continue_and_head() {
    let up = upstream(|s| async move { text(200, &format!("got {} bytes", s.body.len())) }).await;
    let proxy = start_proxy(&one_cluster(up.addr, "", DEFAULT_ROUTE));
    let addr = proxy.listener_addr("web").unwrap();

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.unwrap();
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !String::from_utf8_lossy(&all).contains("got 5 bytes") && tokio::time::Instant::now() < deadline {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&all).contains("got 5 bytes"),
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    assert!(!up.last().headers.contains_key("expect"));

    let mut c = H1Client::connect(addr).await;
    let got = c.send(req("HEAD", "/h", "x", &[], "")).await;
    assert_eq!(got.status, 200);
    assert!(got.body.is_empty());
    assert_eq!(up.last().method, "HEAD");
    // The connection is still in sync after HEAD.
    assert_eq!(c.get("/after").await.status, 200);
}

#[tokio::test]
async fn h2c_downstream_and_h2_upstream() {
    let up = named_upstream("h2").await;
    let yaml = format!(
        r#"
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ route: {{ cluster: app }} }}] }}]
clusters:
  - {{ name: app, protocol: http2, endpoints: [{{ address: "{}" }}] }}
"#,
        up.addr
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    // HTTP/2 with prior knowledge from the client.
    let mut sender = h2_connect::<http_body_util::Empty<bytes::Bytes>>(addr).await;
    let mut handles = Vec::new();
    for i in 0..20 {
        let mut s = sender.clone();
        handles.push(tokio::spawn(async move {
            let r = http::Request::get(format!("http://h2.example/stream/{i}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = s.send_request(r).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), http::Version::HTTP_2);
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.uri.authority().unwrap().as_str(), "h2.example");
    assert_eq!(up.hits(), 20);
    // Multiplexed: one upstream connection carried all streams.
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    sender.ready().await.unwrap();
}

#[tokio::test]
async fn upstream_keepalive_pool_reuses_connections() {
    let up = named_upstream("a").await;
    let proxy = start_proxy(&one_cluster(up.addr, "", DEFAULT_ROUTE));
    let addr = proxy.listener_addr("web").unwrap();
    for _ in 0..3 {
        let mut c = H1Client::connect(addr).await;
        for _ in 0..10 {
            assert_eq!(c.get("/").await.status, 200);
        }
    }
    assert_eq!(up.hits(), 30);
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "sequential requests share one pooled connection"
    );
}

/// weft's own HTTP/1.1 server: heads it refuses get their precise status and a close (the upstream
/// sees none of them); requests pipelined in one write are answered in order on one connection; a
/// chunked upload with extensions and trailers reaches the upstream whole; an HTTP/1.0 request
/// without keep-alive is answered in HTTP/1.0 and closed.
#[tokio::test]
async fn own_server_refusals_pipelining_and_chunked_uploads() {
    let up = upstream(|s| async move { text(200, &format!("{} {} {}", s.method, s.uri.path(), s.body.len())) }).await;
    let proxy = start_proxy(&one_cluster(up.addr, "max_request_headers_kb: 2", DEFAULT_ROUTE));
    let addr = proxy.listener_addr("web").unwrap();
    let wait = Duration::from_secs(3);
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(4096));
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let cases: [(&[u8], &str); 5] = [
        (big.as_bytes(), "HTTP/1.1 431"),
        (many.as_bytes(), "HTTP/1.1 431"),
        (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", "HTTP/1.1 505"),
        (b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.1 400"),
        (
            b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
    ];
    for (case, status) in cases {
        let out = raw(addr, case, wait).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with(status), "{status} expected, got {text:?}");
        assert!(text.to_ascii_lowercase().contains("connection: close"), "{text:?}");
    }
    assert_eq!(up.hits(), 0, "no refused head reached the upstream");

    // Three requests in one write, the last one closing: three answers in order, then the close.
    let out = raw(
        addr,
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n\
POST /2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=a\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n\
GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    let bodies: Vec<&str> = ["GET /1 0", "POST /2 7", "GET /3 0"]
        .into_iter()
        .filter(|b| text.contains(b))
        .collect();
    assert_eq!(bodies.len(), 3, "{text:?}");
    assert!(text.find("GET /1 0") < text.find("POST /2 7") && text.find("POST /2 7") < text.find("GET /3 0"));
    assert_eq!(text.matches("HTTP/1.1 200").count(), 3, "{text:?}");
    assert_eq!(up.hits(), 3);

    // HTTP/1.0 without keep-alive: answered in HTTP/1.0, then closed.
    let out = raw(addr, b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n", wait).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.0 200"), "{text:?}");
    assert!(text.ends_with("GET /old 0"), "{text:?}");
}

/// A request body the pipeline never reads (a local reply): the part already received is skipped
/// and the connection stays usable; a body still to come closes it, and the reply says so.
#[tokio::test]
async fn an_unread_request_body_keeps_or_closes_the_connection_explicitly() {
    let up = upstream(|s| async move { text(200, &format!("{} {}", s.uri.path(), s.body.len())) }).await;
    let routes = "              - { match: { prefix: /app }, route: { cluster: app } }";
    let proxy = start_proxy(&one_cluster(up.addr, "", routes));
    let addr = proxy.listener_addr("web").unwrap();
    let wait = Duration::from_secs(3);
    let out = raw(
        addr,
        b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /app HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 404"), "{text:?}");
    let second = text
        .find("HTTP/1.1 200")
        .unwrap_or_else(|| panic!("no second answer: {text:?}"));
    assert!(
        !text[..second].to_ascii_lowercase().contains("connection: close"),
        "{text:?}"
    );
    assert!(text.ends_with("/app 0"), "{text:?}");
    // The body has not arrived when the reply goes out: the reply closes the connection.
    let out = raw(
        addr,
        b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        wait,
    )
    .await;
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 404"), "{text:?}");
    assert!(text.contains("connection: close"), "{text:?}");
}
