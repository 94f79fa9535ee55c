//! Route-level traffic governance through real sockets: fault injection (delay, abort, header
//! restriction, gRPC), request mirroring (shadow host and body, fire-and-forget, sampling, skipped
//! bodies) and local rate limiting (burst and refill, per-header buckets, listener scope shared by
//! workers), plus validation errors for the new fields.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use weft_test_support::*;

/// One listener `web` with the given `http:` extras and routes, clusters `app` and `shadow`.
fn config(concurrency: u32, app: SocketAddr, shadow: SocketAddr, http_extra: &str, routes: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: {concurrency} }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      {http_extra}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
{routes}
clusters:
  - name: app
    endpoints: [{{ address: "{app}" }}]
  - name: shadow
    endpoints: [{{ address: "{shadow}" }}]
"#
    )
}

/// Sends `n` requests over `conns` keep-alive connections in parallel; `make(i)` builds request `i`.
async fn blast<F>(addr: SocketAddr, n: usize, conns: usize, make: F) -> Vec<Got>
where
    F: Fn(usize) -> http::Request<Full<Bytes>> + Send + Sync + 'static,
{
    let make = std::sync::Arc::new(make);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = H1Client::connect(addr).await;
            let mut out = Vec::new();
            let mut i = c;
            while i < n {
                out.push(client.send(make(i)).await);
                i += conns;
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn get_req(path: &str, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    req("GET", path, "test.local", headers, "")
}

// ---------------------------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_hits_ten_percent_of_requests() {
    let app = named_upstream("app").await;
    let shadow = named_upstream("shadow").await;
    let routes = r#"              - match: { prefix: / }
                route: { cluster: app, fault: { abort: { http_status: 503, percent: 10.0 } } }"#;
    let proxy = start_proxy(&config(1, app.addr, shadow.addr, "", routes));
    let addr = proxy.listener_addr("web").unwrap();
    let got = blast(addr, 10_000, 8, |_| get_req("/", &[])).await;
    let aborted = got.iter().filter(|g| g.status == 503).count();
    assert!(
        got.iter()
            .filter(|g| g.status == 503)
            .all(|g| g.header("x-weft-reason") == Some("FI") && g.text() == "fault filter abort (FI)\n"),
        "every abort is marked FI"
    );
    assert!(got.iter().all(|g| g.status == 503 || g.status == 200));
    assert!((900..=1100).contains(&aborted), "10% ± 1% aborted, got {aborted}");
    assert_eq!(
        app.hits() as usize,
        10_000 - aborted,
        "aborted requests never reach the upstream"
    );
    let s = stats(&proxy).await;
    assert_eq!(
        metric(&s, "weft_http_fault_aborts_total{listener=\"web\"}"),
        Some(aborted as f64),
        "{s}"
    );
    assert_eq!(
        metric(&s, "weft_downstream_rq_local_total{listener=\"web\",reason=\"FI\"}"),
        Some(aborted as f64)
    );
}

#[tokio::test]
async fn fault_headers_restrict_the_fault_to_matching_requests() {
    let app = named_upstream("app").await;
    let shadow = named_upstream("shadow").await;
    let routes = r#"              - match: { prefix: / }
                route:
                  cluster: app
                  fault:
                    abort: { http_status: 418 }
                    headers: [{ name: x-fault, exact: "yes" }, { name: x-user, prefix: "test-" }]"#;
    let proxy = start_proxy(&config(1, app.addr, shadow.addr, "", routes));
    let mut c = H1Client::connect(proxy.listener_addr("web").unwrap()).await;
    for _ in 0..20 {
        let hit = c.send(get_req("/", &[("x-fault", "yes"), ("x-user", "test-1")])).await;
        assert_eq!(hit.status, 418);
        assert_eq!(hit.header("x-weft-reason"), Some("FI"));
        // Only one of the two matchers: no fault.
        let miss = c.send(get_req("/", &[("x-fault", "yes"), ("x-user", "real")])).await;
        assert_eq!(miss.status, 200);
        assert_eq!(miss.text(), "hello from app");
        let plain = c.get("/").await;
        assert_eq!(plain.status, 200);
    }
    assert_eq!(app.hits(), 40);
}

#[tokio::test]
async fn fault_fixed_delay_at_full_percent_delays_every_response() {
    let app = named_upstream("app").await;
    let shadow = named_upstream("shadow").await;
    let routes = r#"              - match: { prefix: /slow }
                route: { cluster: app, fault: { delay: { fixed: 200ms, percent: 100.0 } } }
              - match: { prefix: / }
                route: { cluster: app }"#;
    let proxy = start_proxy(&config(1, app.addr, shadow.addr, "", routes));
    let mut c = H1Client::connect(proxy.listener_addr("web").unwrap()).await;
    for _ in 0..3 {
        let t = Instant::now();
        let got = c.get("/slow").await;
        let took = t.elapsed();
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "hello from app");
        assert!(took >= Duration::from_millis(200), "delayed: {took:?}");
        assert!(took < Duration::from_millis(1500), "only delayed once: {took:?}");
    }
    let t = Instant::now();
    assert_eq!(c.get("/fast").await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(200), "other routes are not delayed");
    let s = stats(&proxy).await;
    assert_eq!(
        metric(&s, "weft_http_fault_delays_total{listener=\"web\"}"),
        Some(3.0),
        "{s}"
    );
}

#[tokio::test]
async fn fault_abort_answers_grpc_requests_with_trailers_only_status() {
    let app = named_upstream("app").await;
    let shadow = named_upstream("shadow").await;
    let routes = r#"              - match: { prefix: /http }
                route: { cluster: app, fault: { abort: { http_status: 503 } } }
              - match: { prefix: /grpc }
                route: { cluster: app, fault: { abort: { grpc_status: 14, percent: 100 } } }"#;
    let proxy = start_proxy(&config(1, app.addr, shadow.addr, "", routes));
    let addr = proxy.listener_addr("web").unwrap();
    let mut sender = h2_connect(addr).await;
    for path in ["/http/svc.Echo/Say", "/grpc/svc.Echo/Say"] {
        let r = http::Request::builder()
            .method("POST")
            .uri(format!("http://test.local{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let resp = sender.send_request(r).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["grpc-status"], "14", "{path}");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["x-weft-reason"], "FI");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty(), "trailers-only: no body");
    }
    // A plain request to the gRPC-configured route gets the matching HTTP status.
    let got = get(addr, "/grpc/x").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("x-weft-reason"), Some("FI"));
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn fault_and_rate_limit_reasons_reach_the_access_log() {
    let app = named_upstream("app").await;
    let shadow = named_upstream("shadow").await;
    let dir = std::env::temp_dir().join(format!("weft-governance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let _ = std::fs::remove_file(&log);
    let routes = r#"              - match: { prefix: /fault }
                route: { cluster: app, fault: { abort: { http_status: 500 } } }
              - match: { prefix: /limited }
                route: { cluster: app, local_rate_limit: { max_tokens: 1, fill_interval: 1h } }"#;
    let extra = format!("access_log: {{ path: \"{}\" }}", log.display());
    let proxy = start_proxy(&config(1, app.addr, shadow.addr, &extra, routes));
    let mut c = H1Client::connect(proxy.listener_addr("web").unwrap()).await;
    assert_eq!(c.get("/fault").await.status, 500);
    assert_eq!(c.get("/limited").await.status, 200);
    let limited = c.get("/limited").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("x-weft-reason"), Some("RL"));
    let found = within(Duration::from_secs(3), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains(r#""reason":"FI""#) && text.contains(r#""reason":"RL""#)
    })
    .await;
    assert!(found, "{}", std::fs::read_to_string(&log).unwrap_or_default());
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Mirroring
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sends_every_request_to_the_shadow_with_shadow_host_and_same_body() {
    let app = named_upstream("app").await;
    let shadow = named_upstream("shadow").await;
    let routes = r#"              - match: { prefix: / }
                route: { cluster: app, request_mirror_policies: [{ cluster: shadow, percent: 100.0 }] }"#;
    let proxy = start_proxy(&config(1, app.addr, shadow.addr, "", routes));
    let mut c = H1Client::connect(proxy.listener_addr("web").unwrap()).await;
    let hosts = ["shop.example", "shop.example:8080"];
    for i in 0..20 {
        let body = format!("payload number {i}");
        let host = hosts[i % 2];
        let got = c
            .send(req(
                "POST",
                &format!("/orders/{i}?x=1"),
                host,
                &[("x-trace", "t")],
                &body,
            ))
            .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "hello from app", "the client sees only the primary");
        assert_eq!(got.header("x-upstream"), Some("app"));
    }
    // GETs without a body are mirrored too.
    assert_eq!(c.get("/empty").await.status, 200);
    assert!(
        within(Duration::from_secs(5), || async { shadow.hits() == 21 }).await,
        "{}",
        shadow.hits()
    );
    let seen = shadow.seen.lock().clone();
    let primary = app.seen.lock().clone();
    for i in 0..20 {
        let path = format!("/orders/{i}");
        let s = seen.iter().find(|s| s.uri.path() == path).expect("mirrored");
        let p = primary.iter().find(|s| s.uri.path() == path).expect("forwarded");
        assert_eq!(s.body, format!("payload number {i}").as_bytes());
        assert_eq!(s.body, p.body);
        assert_eq!(s.uri.query(), Some("x=1"));
        let host = s.headers["host"].to_str().unwrap();
        let want = if i % 2 == 0 {
            "shop.example-shadow"
        } else {
            "shop.example-shadow:8080"
        };
        assert_eq!(host, want);
        assert!(host.split(':').next().unwrap().ends_with("-shadow"));
        assert_eq!(p.headers["host"], hosts[i % 2], "the primary keeps its host");
        assert_eq!(s.headers["x-trace"], "t");
        assert_eq!(s.headers["x-request-id"], p.headers["x-request-id"]);
    }
    let s = stats(&proxy).await;
    assert_eq!(
        metric(&s, "weft_http_mirror_requests_total{cluster=\"shadow\"}"),
        Some(21.0),
        "{s}"
    );
    assert_eq!(
        metric(&s, "weft_http_mirror_errors_total{cluster=\"shadow\"}"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_dead_shadow_never_delays_the_primary() {
    let app = named_upstream("app").await;
    let slow = upstream(|_| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        text(200, "late")
    })
    .await;
    let dead = free_port();
    let routes = r#"              - match: { prefix: /slow }
                route: { cluster: app, request_mirror_policies: [{ cluster: shadow }] }
              - match: { prefix: /dead }
                route: { cluster: app, request_mirror_policies: [{ cluster: dead }] }"#;
    let yaml = config(1, app.addr, slow.addr, "", routes)
        + &format!("  - {{ name: dead, connect_timeout: 1s, endpoints: [{{ address: \"127.0.0.1:{dead}\" }}] }}\n");
    let proxy = start_proxy(&yaml);
    let mut c = H1Client::connect(proxy.listener_addr("web").unwrap()).await;
    for path in ["/slow", "/dead"] {
        for i in 0..5 {
            let t = Instant::now();
            let got = c.send(req("POST", path, "h", &[], &format!("b{i}"))).await;
            let took = t.elapsed();
            assert_eq!(got.status, 200, "{path}");
            assert_eq!(got.text(), "hello from app");
            assert!(took < Duration::from_millis(200), "{path}: primary took {took:?}");
        }
    }
    assert!(within(Duration::from_secs(3), || async { slow.hits() == 5 }).await);
    // The dead shadow's connects fail in their own tasks; wait for all five to be counted.
    let failed = metric_eventually(
        &proxy,
        "weft_http_mirror_errors_total{cluster=\"dead\"}",
        Duration::from_secs(5),
        |v| v == 5.0,
    )
    .await;
    assert_eq!(failed, Some(5.0), "dead shadow failures are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_percent_samples_requests() {
    let app = named_upstream("app").await;
    let shadow = named_upstream("shadow").await;
    let routes = r#"              - match: { prefix: / }
                route: { cluster: app, request_mirror_policies: [{ cluster: shadow, percent: 50.0 }] }"#;
    let proxy = start_proxy(&config(1, app.addr, shadow.addr, "", routes));
    let got = blast(proxy.listener_addr("web").unwrap(), 2000, 4, |_| get_req("/", &[])).await;
    assert!(got.iter().all(|g| g.status == 200));
    let s = stats(&proxy).await;
    let sent = metric(&s, "weft_http_mirror_requests_total{cluster=\"shadow\"}").unwrap() as u64;
    assert!((900..=1100).contains(&sent), "50% ± 5% mirrored, got {sent}");
    assert!(
        within(Duration::from_secs(5), || async { shadow.hits() == sent }).await,
        "shadow received {} of {sent}",
        shadow.hits()
    );
}

#[tokio::test]
async fn mirror_skips_large_and_streaming_bodies_but_forwards_them() {
    let app = upstream(|s| async move { text(200, &format!("got {} bytes", s.body.len())) }).await;
    let shadow = named_upstream("shadow").await;
    let routes = r#"              - match: { prefix: / }
                route: { cluster: app, request_mirror_policies: [{ cluster: shadow }] }"#;
    let proxy = start_proxy(&config(1, app.addr, shadow.addr, "", routes));
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = H1Client::connect(addr).await;
    let big = "x".repeat(64 * 1024 + 1);
    let got = c.send(req("POST", "/big", "h", &[], &big)).await;
    assert_eq!(got.text(), format!("got {} bytes", big.len()));
    let limit = "y".repeat(64 * 1024);
    let got = c.send(req("POST", "/limit", "h", &[], &limit)).await;
    assert_eq!(got.text(), format!("got {} bytes", limit.len()));
    // Chunked (no content-length): streamed, not mirrored.
    let raw_resp = raw(
        addr,
        b"POST /chunked HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(String::from_utf8_lossy(&raw_resp).contains("got 5 bytes"));
    assert!(within(Duration::from_secs(3), || async { shadow.hits() == 1 }).await);
    assert_eq!(shadow.last().uri.path(), "/limit");
    assert_eq!(shadow.last().body.len(), limit.len());
    let s = stats(&proxy).await;
    assert_eq!(
        metric(&s, "weft_http_mirror_skipped_total{cluster=\"shadow\"}"),
        Some(2.0),
        "{s}"
    );
    assert_eq!(
        metric(&s, "weft_http_mirror_requests_total{cluster=\"shadow\"}"),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------------
// Local rate limiting
// ---------------------------------------------------------------------------------------------

fn count(got: &[Got]) -> (usize, usize) {
    let ok = got.iter().filter(|g| g.status == 200).count();
    let limited: Vec<&Got> = got.iter().filter(|g| g.status == 429).collect();
    for g in &limited {
        assert_eq!(g.header("x-weft-reason"), Some("RL"));
        let secs: u64 = g.header("retry-after").expect("retry-after").parse().unwrap();
        assert!((1..=1).contains(&secs), "retry-after {secs}");
    }
    (ok, limited.len())
}

#[tokio::test]
async fn route_rate_limit_allows_a_burst_then_refills() {
    let app = named_upstream("app").await;
    let shadow = named_upstream("shadow").await;
    let routes = r#"              - match: { prefix: /limited }
                route:
                  cluster: app
                  local_rate_limit: { max_tokens: 10, tokens_per_fill: 10, fill_interval: 1s }
              - match: { prefix: / }
                route: { cluster: app }"#;
    let proxy = start_proxy(&config(1, app.addr, shadow.addr, "", routes));
    let mut c = H1Client::connect(proxy.listener_addr("web").unwrap()).await;
    let mut burst = Vec::new();
    for _ in 0..30 {
        burst.push(c.get("/limited").await);
    }
    assert_eq!(count(&burst), (10, 20));
    assert!(burst[..10].iter().all(|g| g.status == 200), "the first ten pass");
    // Other routes are not limited.
    assert_eq!(c.get("/other").await.status, 200);
    // A scenario sleep: the bucket refills once a second; let one fill interval pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut again = Vec::new();
    for _ in 0..10 {
        again.push(c.get("/limited").await);
    }
    assert_eq!(count(&again), (10, 0), "one fill brings ten tokens");
    assert_eq!(c.get("/limited").await.status, 429);
    let s = stats(&proxy).await;
    assert_eq!(
        metric(
            &s,
            "weft_http_rate_limited_total{listener=\"web\",scope=\"route:all/route0\"}"
        ),
        Some(21.0),
        "{s}"
    );
}

#[tokio::test]
async fn descriptor_header_gives_each_value_its_own_bucket() {
    let app = named_upstream("app").await;
    let shadow = named_upstream("shadow").await;
    let routes = r#"              - match: { prefix: / }
                route:
                  cluster: app
                  local_rate_limit: { max_tokens: 10, tokens_per_fill: 10, fill_interval: 1h, descriptor_header: x-user }"#;
    let proxy = start_proxy(&config(1, app.addr, shadow.addr, "", routes));
    let mut c = H1Client::connect(proxy.listener_addr("web").unwrap()).await;
    for user in [Some("alice"), Some("bob"), None] {
        let headers: Vec<(&str, &str)> = user.map(|u| ("x-user", u)).into_iter().collect();
        let mut got = Vec::new();
        for _ in 0..15 {
            got.push(c.send(get_req("/", &headers)).await);
        }
        let ok = got.iter().filter(|g| g.status == 200).count();
        let limited = got.iter().filter(|g| g.status == 429).count();
        assert_eq!((ok, limited), (10, 5), "user {user:?}");
        let retry: u64 = got[14].header("retry-after").unwrap().parse().unwrap();
        assert!((3500..=3600).contains(&retry), "retry-after {retry}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_rate_limit_is_shared_by_all_workers() {
    let app = named_upstream("app").await;
    let shadow = named_upstream("shadow").await;
    let routes = r#"              - match: { prefix: / }
                direct_response: { status: 200, body: ok }"#;
    let extra = "local_rate_limit: { max_tokens: 10, tokens_per_fill: 10, fill_interval: 1h }";
    let proxy = start_proxy(&config(2, app.addr, shadow.addr, extra, routes));
    let got = blast(proxy.listener_addr("web").unwrap(), 40, 8, |_| get_req("/", &[])).await;
    let ok = got.iter().filter(|g| g.status == 200).count();
    let limited = got
        .iter()
        .filter(|g| g.status == 429 && g.header("x-weft-reason") == Some("RL") && g.header("retry-after").is_some())
        .count();
    assert_eq!((ok, limited), (10, 30), "one limit per proxy, not per worker");
    let s = stats(&proxy).await;
    assert_eq!(
        metric(&s, "weft_http_rate_limited_total{listener=\"web\",scope=\"listener\"}"),
        Some(30.0),
        "{s}"
    );
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

fn errors_for(route_action: &str, http_extra: &str) -> String {
    let yaml = format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      {http_extra}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - route: {route_action}
clusters:
  - {{ name: app, endpoints: [{{ address: "127.0.0.1:1" }}] }}
"#
    );
    match weft_config::from_yaml(&yaml) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn validation_errors_name_the_new_fields() {
    const R: &str = "listeners[0].http.route_config.virtual_hosts[0].routes[0].route";
    let cases: &[(&str, &str, &str)] = &[
        ("{ cluster: app, fault: {} }", "", "fault: give delay, abort or both"),
        (
            "{ cluster: app, fault: { delay: { percent: 5 } } }",
            "",
            "fault.delay.fixed: is required",
        ),
        (
            "{ cluster: app, fault: { delay: { fixed: 200, percent: 5 } } }",
            "",
            "fault.delay.fixed: \"200\" has no unit",
        ),
        (
            "{ cluster: app, fault: { delay: { fixed: 1s, percent: 100.5 } } }",
            "",
            "fault.delay.percent: 100.5 is out of range [0, 100]",
        ),
        (
            "{ cluster: app, fault: { abort: { percent: 10 } } }",
            "",
            "fault.abort.http_status: is required (or grpc_status)",
        ),
        (
            "{ cluster: app, fault: { abort: { http_status: 503, grpc_status: 14 } } }",
            "",
            "fault.abort: give only one of http_status, grpc_status",
        ),
        (
            "{ cluster: app, fault: { abort: { http_status: 99 } } }",
            "",
            "fault.abort.http_status: 99 is out of range [200, 599]",
        ),
        (
            "{ cluster: app, fault: { abort: { grpc_status: 17 } } }",
            "",
            "fault.abort.grpc_status: 17 is out of range [0, 16]",
        ),
        (
            "{ cluster: app, fault: { abort: { http_status: 503, percent: -1 } } }",
            "",
            "fault.abort.percent: -1 is out of range [0, 100]",
        ),
        (
            "{ cluster: app, fault: { abort: { http_status: 503 }, headers: [{ name: x-a, regex: \"(\" }] } }",
            "",
            "fault.headers[0].regex: invalid regex",
        ),
        (
            "{ cluster: app, fault: { abort: { http_status: 503 }, headers: [{ exact: a }] } }",
            "",
            "fault.headers[0].name: is required",
        ),
        (
            "{ cluster: app, request_mirror_policies: [{ cluster: nope }] }",
            "",
            "request_mirror_policies[0].cluster: unknown cluster \"nope\"",
        ),
        (
            "{ cluster: app, request_mirror_policies: [{ percent: 5 }] }",
            "",
            "request_mirror_policies[0].cluster: is required",
        ),
        (
            "{ cluster: app, request_mirror_policies: [{ cluster: app, percent: 101 }] }",
            "",
            "request_mirror_policies[0].percent: 101 is out of range [0, 100]",
        ),
        (
            "{ cluster: app, local_rate_limit: { fill_interval: 1s } }",
            "",
            "local_rate_limit.max_tokens: is required",
        ),
        (
            "{ cluster: app, local_rate_limit: { max_tokens: 0, fill_interval: 1s } }",
            "",
            "local_rate_limit.max_tokens: 0 is out of range [1, 16777215]",
        ),
        (
            "{ cluster: app, local_rate_limit: { max_tokens: 5 } }",
            "",
            "local_rate_limit.fill_interval: is required",
        ),
        (
            "{ cluster: app, local_rate_limit: { max_tokens: 5, fill_interval: 10ms } }",
            "",
            "local_rate_limit.fill_interval: 10ms is out of range [50ms, 24h]",
        ),
        (
            "{ cluster: app, local_rate_limit: { max_tokens: 5, tokens_per_fill: 0, fill_interval: 1s } }",
            "",
            "local_rate_limit.tokens_per_fill: 0 is out of range [1, 16777215]",
        ),
        (
            "{ cluster: app, local_rate_limit: { max_tokens: 5, fill_interval: 1s, descriptor_header: \"bad header\" } }",
            "",
            "local_rate_limit.descriptor_header: \"bad header\" is not a valid header name",
        ),
    ];
    for (action, extra, want) in cases {
        let e = errors_for(action, extra);
        let want = format!("{R}.{want}");
        assert!(e.contains(&want), "{action}\nwant: {want}\ngot:  {e}");
    }
    let e = errors_for(
        "{ cluster: app }",
        "local_rate_limit: { max_tokens: 1, fill_interval: 1m, descriptor_header: \"a b\" }",
    );
    assert!(
        e.contains("listeners[0].http.local_rate_limit.descriptor_header: \"a b\" is not a valid header name"),
        "{e}"
    );
    let e = errors_for("{ cluster: app }", "local_rate_limit: { max_tokens: 1 }");
    assert!(
        e.contains("listeners[0].http.local_rate_limit.fill_interval: is required"),
        "{e}"
    );
    // Unknown fields are rejected with their name.
    let e = errors_for("{ cluster: app, fault: { abort: { status: 503 } } }", "");
    assert!(e.contains("status"), "{e}");

    // A valid configuration with every feature.
    let ok = errors_for(
        "{ cluster: app, fault: { delay: { fixed: 1ms, percent: 0.5 }, abort: { grpc_status: 14, percent: 0.1 }, headers: [{ name: x-a, present: true }] }, request_mirror_policies: [{ cluster: app, percent: 12.5 }], local_rate_limit: { max_tokens: 5, tokens_per_fill: 2, fill_interval: 250ms, descriptor_header: X-User } }",
        "local_rate_limit: { max_tokens: 100, tokens_per_fill: 100, fill_interval: 1s }",
    );
    assert_eq!(ok, "");
}
