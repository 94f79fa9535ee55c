//! Proxy lifecycle observed on the wire: reload (API, file, admin), listeners kept across reloads,
//! graceful drain, connection limits, HTTP idle timeout, and the HTTP access log.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use weft_proxy::{Server, ServerOptions};
use weft_test_support::*;

/// One HTTP listener `web` with a catch-all route to `route_to`, and the given clusters.
fn web_yaml(route_to: &str, clusters: &[(&str, SocketAddr)], http_extra: &str, listener_extra: &str) -> String {
    let clusters: String = clusters
        .iter()
        .map(|(name, addr)| format!("  - {{ name: {name}, endpoints: [{{ address: \"{addr}\" }}] }}\n"))
        .collect();
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
{listener_extra}
    http:
      {http_extra}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - {{ match: {{ prefix: / }}, route: {{ cluster: {route_to} }} }}
clusters:
{clusters}"#
    )
}

fn cfg(yaml: &str) -> weft_config::Config {
    weft_config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{yaml}"))
}

async fn generation(server: &Server) -> u64 {
    let dump: serde_json::Value = serde_json::from_slice(&admin(server, "/config_dump").await.body).unwrap();
    dump["generation"].as_u64().expect("generation in /config_dump")
}

async fn config_dump(server: &Server) -> serde_json::Value {
    serde_json::from_slice(&admin(server, "/config_dump").await.body).unwrap()
}

/// A raw hyper HTTP/1.1 client connection whose connection task we can watch.
async fn h1_conn(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

#[tokio::test]
async fn reload_with_apply_switches_routes_for_new_requests() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let clusters = [("a", a.addr), ("b", b.addr)];
    let proxy = start_proxy(&web_yaml("a", &clusters, "", ""));
    let addr = proxy.listener_addr("web").unwrap();
    assert_eq!(get(addr, "/").await.text(), "hello from a");
    let g0 = generation(&proxy).await;

    proxy
        .apply(cfg(&web_yaml("b", &clusters, "", "")))
        .expect("apply succeeds");
    assert_eq!(generation(&proxy).await, g0 + 1);
    assert_eq!(proxy.listener_addr("web"), Some(addr), "listener keeps its socket");
    for i in 0..5 {
        let got = get(addr, &format!("/after/{i}")).await;
        assert_eq!(got.text(), "hello from b", "request {i} after the reload");
    }
    assert_eq!(a.hits(), 1, "the old upstream saw only the first request");
    assert_eq!(b.hits(), 5);
}

#[tokio::test]
async fn reload_from_file_refuses_invalid_config_and_keeps_serving() {
    let dir = TempDir::new("reload");
    let path = dir.join("weft.yaml");
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let c = named_upstream("c").await;
    let clusters = [("a", a.addr), ("b", b.addr), ("c", c.addr)];
    std::fs::write(&path, web_yaml("a", &clusters, "", "")).unwrap();
    let proxy = Server::start(
        weft_config::from_file(&path).unwrap(),
        ServerOptions {
            config_path: Some(path.clone()),
        },
    )
    .expect("proxy starts");
    let addr = proxy.listener_addr("web").unwrap();
    assert_eq!(get(addr, "/").await.text(), "hello from a");

    // A good file: the route change takes effect for new requests.
    std::fs::write(&path, web_yaml("b", &clusters, "", "")).unwrap();
    let msg = proxy.reload().expect("good file reloads");
    assert!(msg.contains("generation"), "{msg}");
    assert_eq!(get(addr, "/").await.text(), "hello from b");
    let good_gen = generation(&proxy).await;

    // An invalid file (it would also move traffic to c): refused, naming the field path.
    let bad = web_yaml("c", &clusters, "", "").replace("{ name: a,", "{ name: a, lb_policy: rr,");
    assert!(bad.contains("lb_policy: rr"));
    std::fs::write(&path, &bad).unwrap();
    let err = proxy.reload().expect_err("invalid file is refused").to_string();
    assert!(
        err.contains("clusters[0].lb_policy"),
        "error names the field path: {err}"
    );
    let dump = config_dump(&proxy).await;
    assert_eq!(dump["generation"].as_u64(), Some(good_gen), "still the old generation");
    let last_err = dump["last_reload_error"].as_str().unwrap_or_default();
    assert!(last_err.contains("clusters[0].lb_policy"), "{dump}");
    for _ in 0..3 {
        assert_eq!(
            get(addr, "/").await.text(),
            "hello from b",
            "traffic stays on the old upstream"
        );
    }
    assert_eq!(c.hits(), 0);
    let failures = metric(
        &admin(&proxy, "/stats/prometheus").await.text(),
        "weft_config_reload_failures_total",
    );
    assert_eq!(failures, Some(1.0));

    // The admin endpoint: 400 with the error text for the bad file...
    let r = admin_post(&proxy, "/reload").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("clusters[0].lb_policy"), "{}", r.text());
    let failures = metric(
        &admin(&proxy, "/stats/prometheus").await.text(),
        "weft_config_reload_failures_total",
    );
    assert_eq!(failures, Some(2.0));
    assert_eq!(get(addr, "/").await.text(), "hello from b");
    // ...and 200 for a good one.
    std::fs::write(&path, web_yaml("c", &clusters, "", "")).unwrap();
    let r = admin_post(&proxy, "/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(generation(&proxy).await, good_gen + 1);
    assert!(config_dump(&proxy).await["last_reload_error"].is_null());
    assert_eq!(get(addr, "/").await.text(), "hello from c");
}

#[tokio::test]
async fn unchanged_listener_keeps_keepalive_connection_across_cluster_reload() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let proxy = start_proxy(&web_yaml("app", &[("app", a.addr)], "via: weft", ""));
    let addr = proxy.listener_addr("web").unwrap();
    let mut client = H1Client::connect(addr).await;
    assert_eq!(client.get("/one").await.text(), "hello from a");

    // Only the cluster changes (new endpoint); the listener is identical.
    proxy
        .apply(cfg(&web_yaml("app", &[("app", b.addr)], "via: weft", "")))
        .expect("apply succeeds");
    // Give a (wrong) drain time to close the idle connection. A kept sleep: a drain is a signal
    // the connection's task reacts to within milliseconds, and no counter marks "a drain would
    // have finished" (one more connection as a marker would change the connection count asserted
    // below), so 300 ms, many times that reaction, stands in for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = client
        .try_send(req("GET", "/two", "test.local", &[], ""))
        .await
        .expect("the same client connection still works after the reload");
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "hello from b", "existing connection uses the new cluster");
    let seen = b.last();
    assert_eq!(seen.uri.path(), "/two");
    assert_eq!(seen.headers["via"], "1.1 weft", "went through the proxy's route");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    let cx = metric(
        &admin(&proxy, "/stats/prometheus").await.text(),
        "weft_downstream_cx_total{listener=\"web\"}",
    );
    assert_eq!(cx, Some(1.0), "both requests used one downstream connection");
}

#[tokio::test]
async fn route_only_change_keeps_keepalive_connection_and_applies_at_once() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let clusters = [("a", a.addr), ("b", b.addr)];
    let proxy = start_proxy(&web_yaml("a", &clusters, "", ""));
    let addr = proxy.listener_addr("web").unwrap();
    let mut client = H1Client::connect(addr).await;
    assert_eq!(client.get("/one").await.text(), "hello from a");

    // Only the route changes (an RDS update does this): the route table is swapped in place.
    proxy.apply(cfg(&web_yaml("b", &clusters, "", ""))).unwrap();
    // As above: time for a (wrong) drain to close the idle connection; no signal marks its end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = client
        .try_send(req("GET", "/two", "test.local", &[], ""))
        .await
        .expect("the connection survives a route-only change");
    assert_eq!(
        got.text(),
        "hello from b",
        "the open connection routes by the new table"
    );
    assert!(got.header("connection").is_none(), "not asked to close");
    let cx = metric(
        &admin(&proxy, "/stats/prometheus").await.text(),
        "weft_downstream_cx_total{listener=\"web\"}",
    );
    assert_eq!(cx, Some(1.0));
}

#[tokio::test]
async fn changed_listener_drains_keepalive_connection() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let clusters = [("a", a.addr), ("b", b.addr)];
    let proxy = start_proxy(&web_yaml("a", &clusters, "", ""));
    let addr = proxy.listener_addr("web").unwrap();
    let (mut sender, conn) = h1_conn(addr).await;
    let r = sender.send_request(req("GET", "/", "x", &[], "")).await.unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();

    // A connection-manager setting changes too, so the listener is rebuilt and the old one drains.
    proxy.apply(cfg(&web_yaml("b", &clusters, "via: weft", ""))).unwrap();
    // The drained keep-alive connection answers its next request (on the old generation's routes)
    // with `connection: close` instead of being closed under a request the client may be sending.
    let r = sender.send_request(req("GET", "/", "x", &[], "")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "a draining HTTP/1.1 connection says it closes"
    );
    r.into_body().collect().await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), conn)
        .await
        .expect("drained connection closed after its response")
        .unwrap()
        .ok();
    // New connections get the new route.
    assert_eq!(get(addr, "/").await.text(), "hello from b");
}

/// Whether a new connection to `addr` is refused (or reset before any answer) within `wait`.
async fn refuses_connections(addr: SocketAddr, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match TcpStream::connect(addr).await {
            Err(_) => return true,
            Ok(mut s) => {
                // Accepted by the kernel backlog of a socket about to close: it must not be served.
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
                let mut buf = [0u8; 64];
                if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn shutdown_lets_in_flight_request_finish() {
    let up = slow_upstream(Duration::from_secs(1), 200, "slow but done").await;
    let proxy = start_proxy(&web_yaml("app", &[("app", up.addr)], "", ""));
    let addr = proxy.listener_addr("web").unwrap();

    let in_flight = tokio::spawn(async move {
        H1Client::connect(addr)
            .await
            .try_send(req("GET", "/slow", "x", &[], ""))
            .await
    });
    within(Duration::from_secs(3), || async { up.hits() > 0 }).await;
    assert_eq!(up.hits(), 1, "request reached the slow upstream");

    let p = proxy.clone();
    let started = Instant::now();
    let shutdown = tokio::task::spawn_blocking(move || p.shutdown(Duration::from_secs(5)));
    // While the drain runs: not ready, and no new connections. The drain has started once /ready
    // says so.
    let ready = eventually("/ready to answer 503 once the drain starts", WAIT, || async {
        let r = admin(&proxy, "/ready").await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.text().trim(), "DRAINING");
    assert!(
        refuses_connections(addr, Duration::from_millis(800)).await,
        "new connections are refused once the drain started"
    );

    let got = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("in-flight request finished")
        .unwrap()
        .expect("in-flight request succeeded");
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "slow but done");
    tokio::time::timeout(Duration::from_secs(6), shutdown)
        .await
        .expect("shutdown returned")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "shutdown waited {took:?}: it should end once the last connection closed, not at the timeout"
    );
    assert!(
        took >= Duration::from_millis(700),
        "shutdown did not wait for the request: {took:?}"
    );
}

#[tokio::test]
async fn admin_drain_turns_ready_503_and_stops_accepting() {
    let up = named_upstream("a").await;
    let proxy = start_proxy(&web_yaml("app", &[("app", up.addr)], "", ""));
    let addr = proxy.listener_addr("web").unwrap();
    let ready = admin(&proxy, "/ready").await;
    assert_eq!((ready.status.as_u16(), ready.text().trim()), (200, "LIVE"));
    assert_eq!(get(addr, "/").await.status, 200);

    let r = admin_post(&proxy, "/drain").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ready = admin(&proxy, "/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.text().trim(), "DRAINING");
    assert!(refuses_connections(addr, Duration::from_secs(1)).await);
    assert_eq!(admin(&proxy, "/drain").await.status, 405, "GET /drain is not allowed");
}

#[tokio::test]
async fn max_connections_overflow_closes_third_connection() {
    let up = named_upstream("a").await;
    let proxy = start_proxy(&web_yaml("app", &[("app", up.addr)], "", "    max_connections: 2"));
    let addr = proxy.listener_addr("web").unwrap();
    let mut c1 = H1Client::connect(addr).await;
    let mut c2 = H1Client::connect(addr).await;
    assert_eq!(c1.get("/1").await.status, 200);
    assert_eq!(c2.get("/2").await.status, 200);

    // The third is accepted by the kernel and closed at once, without an answer.
    let answer = raw(addr, b"GET /3 HTTP/1.1\r\nhost: x\r\n\r\n", Duration::from_secs(1)).await;
    assert!(
        answer.is_empty(),
        "third connection got an answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let overflow = metric_eventually(
        &proxy,
        "weft_downstream_cx_overflow_total{listener=\"web\"}",
        Duration::from_secs(2),
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(overflow, Some(1.0));
    assert_eq!(up.hits(), 2, "the overflowing request never reached the upstream");
    // The two admitted connections keep working.
    assert_eq!(c1.get("/1b").await.status, 200);
    assert_eq!(c2.get("/2b").await.status, 200);

    // Once one closes, a new connection is admitted again.
    drop(c1);
    let admitted = within(Duration::from_secs(3), || async {
        raw(
            addr,
            b"GET /4 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            Duration::from_secs(1),
        )
        .await
        .starts_with(b"HTTP/1.1 200")
    })
    .await;
    assert!(admitted, "a slot freed by a closed connection is reused");
}

#[tokio::test]
async fn http_idle_timeout_closes_idle_h2_but_not_busy_h1() {
    let up = named_upstream("a").await;
    let proxy = start_proxy(&web_yaml("app", &[("app", up.addr)], "idle_timeout: 300ms", ""));
    let addr = proxy.listener_addr("web").unwrap();

    let idle_h2 = async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let r = sender
            .send_request(
                http::Request::builder()
                    .uri(format!("http://{addr}/h2"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .expect("h2c request");
        assert_eq!(r.status(), 200);
        assert_eq!(r.version(), http::Version::HTTP_2);
        r.into_body().collect().await.unwrap();
        let idle_from = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(3), conn).await;
        assert!(closed.is_ok(), "idle h2c connection still open after 3 s");
        idle_from.elapsed()
    };
    let busy_h1 = async {
        let (mut sender, mut conn) = h1_conn(addr).await;
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_millis(1200) && n < 20 {
            assert!(
                !conn.is_finished(),
                "busy HTTP/1.1 connection was closed after {n} requests"
            );
            sender.ready().await.expect("connection still usable");
            let r = sender
                .send_request(req("GET", &format!("/h1/{n}"), "x", &[], ""))
                .await
                .unwrap_or_else(|e| panic!("request {n} on the busy connection: {e}"));
            assert_eq!(r.status(), 200);
            r.into_body().collect().await.unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(n >= 8, "only {n} requests in 1.2 s");
        // Once it stops, it is idle and gets closed too.
        let idle_from = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(3), &mut conn).await;
        assert!(closed.is_ok(), "HTTP/1.1 connection idle for 3 s still open");
        idle_from.elapsed()
    };
    let (h2_after, h1_after) = tokio::join!(idle_h2, busy_h1);
    assert!(
        h2_after >= Duration::from_millis(200) && h2_after <= Duration::from_millis(1200),
        "idle h2c connection closed after {h2_after:?}, expected ~300 ms"
    );
    assert!(
        h1_after <= Duration::from_millis(1200),
        "idle h1 closed after {h1_after:?}"
    );
    let cx = metric(
        &admin(&proxy, "/stats/prometheus").await.text(),
        "weft_downstream_cx_total{listener=\"web\"}",
    );
    assert_eq!(cx, Some(2.0), "the busy HTTP/1.1 client never reconnected");
}

#[tokio::test]
async fn http_access_log_one_line_per_request() {
    let dir = TempDir::new("http-log");
    let log = dir.join("access.log");
    let up = named_upstream("a").await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      access_log: {{ path: "{log}" }}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - {{ name: api, match: {{ prefix: /api/ }}, route: {{ cluster: app }} }}
clusters:
  - {{ name: app, endpoints: [{{ address: "{up}" }}] }}
"#,
        log = log.display(),
        up = up.addr
    );
    let proxy = start_proxy(&yaml);
    let addr = proxy.listener_addr("web").unwrap();
    let mut c = H1Client::connect(addr).await;
    let ok = c.get("/api/items?x=1").await;
    assert_eq!(ok.status, 200);
    let upstream_request_id = up.last().headers["x-request-id"].to_str().unwrap().to_string();
    let posted = c
        .send(req("POST", "/api/orders", "shop.local", &[], "order body"))
        .await;
    assert_eq!(posted.status, 200);
    let posted_request_id = up.last().headers["x-request-id"].to_str().unwrap().to_string();
    let nr = c.get("/elsewhere").await;
    assert_eq!(nr.status, 404);
    assert_eq!(nr.header("x-weft-reason"), Some("NR"));

    let lines = json_lines(&log, 3, Duration::from_secs(3)).await;
    assert_eq!(lines.len(), 3, "one line per request: {lines:?}");
    let (l0, l1, l2) = (&lines[0], &lines[1], &lines[2]);

    assert_eq!(l0["method"], "GET", "{l0}");
    assert_eq!(l0["path"], "/api/items?x=1", "{l0}");
    assert_eq!(l0["status"], 200, "{l0}");
    assert_eq!(l0["upstream_host"], up.addr.to_string(), "{l0}");
    assert_eq!(l0["upstream_cluster"], "app", "{l0}");
    assert_eq!(l0["route"], "api", "{l0}");
    assert_eq!(l0["request_id"], upstream_request_id.as_str(), "{l0}");
    assert_eq!(l0["bytes_sent"], ok.body.len() as u64, "{l0}");

    assert_eq!(l1["method"], "POST", "{l1}");
    assert_eq!(l1["path"], "/api/orders", "{l1}");
    assert_eq!(l1["authority"], "shop.local", "{l1}");
    assert_eq!(l1["request_id"], posted_request_id.as_str(), "{l1}");
    assert_ne!(upstream_request_id, posted_request_id, "each request has its own id");
    assert_eq!(l1["bytes_sent"], posted.body.len() as u64, "{l1}");

    assert_eq!(l2["method"], "GET", "{l2}");
    assert_eq!(l2["path"], "/elsewhere", "{l2}");
    assert_eq!(l2["status"], 404, "{l2}");
    assert_eq!(l2["reason"], "NR", "{l2}");
    assert!(l2["upstream_host"].is_null(), "{l2}");
    assert_eq!(l2["bytes_sent"], nr.body.len() as u64, "{l2}");

    // Forwarded responses are marked "-" (not a local reply).
    assert_eq!(l0["reason"], "-", "{l0}");
    assert_eq!(l1["reason"], "-", "{l1}");
}

/// A sidecar's shutdown: inbound stops at once, while the outbound listener keeps serving the app's
/// own calls (new connections included) until the app's connections have closed.
#[tokio::test]
async fn shutdown_keeps_outbound_serving_until_the_app_is_done() {
    let up = named_upstream("a").await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: inbound
    address: 127.0.0.1:0
    direction: inbound
    http:
      route_config:
        virtual_hosts:
          - {{ name: all, domains: ["*"], routes: [ {{ match: {{ prefix: / }}, route: {{ cluster: app }} }} ] }}
  - name: outbound
    address: 127.0.0.1:0
    direction: outbound
    http:
      route_config:
        virtual_hosts:
          - {{ name: all, domains: ["*"], routes: [ {{ match: {{ prefix: / }}, route: {{ cluster: app }} }} ] }}
clusters:
  - {{ name: app, endpoints: [{{ address: "{}" }}] }}
"#,
        up.addr
    );
    let proxy = start_proxy(&yaml);
    let inbound = proxy.listener_addr("inbound").unwrap();
    let outbound = proxy.listener_addr("outbound").unwrap();
    // The app holds a keep-alive connection through its sidecar.
    let mut app = H1Client::connect(outbound).await;
    assert_eq!(app.get("/").await.status, 200);

    let p = proxy.clone();
    let started = Instant::now();
    let shutdown = tokio::task::spawn_blocking(move || p.shutdown(Duration::from_secs(10)));
    eventually("/ready to answer 503 once the shutdown starts", WAIT, || async {
        (admin(&proxy, "/ready").await.status == 503).then_some(())
    })
    .await;
    assert!(
        refuses_connections(inbound, Duration::from_secs(1)).await,
        "inbound stops accepting at once"
    );
    // Outbound still serves the app: on its open connection and on new ones.
    for _ in 0..3 {
        assert_eq!(app.get("/").await.status, 200, "the app's keep-alive connection");
        assert_eq!(get(outbound, "/").await.status, 200, "a new outbound connection");
    }
    assert!(!shutdown.is_finished(), "the sidecar waits for the app");
    // The app is done: its connection closes, and the sidecar finishes well before the timeout.
    drop(app);
    tokio::time::timeout(Duration::from_secs(8), shutdown)
        .await
        .expect("shutdown returned once the app's connections closed")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown waited {:?}",
        started.elapsed()
    );
    assert!(refuses_connections(outbound, Duration::from_secs(1)).await);
}
