//! Envoy's gRPC access-log service (`AccessLogService/StreamAccessLogs`) against a collector nobody
//! here wrote the protocol code of: a grpcio server on grpc's own compiled Envoy protos
//! (`xds-protos`, interop/als_receiver.py). Real HTTP requests (forwarded, no route, connect
//! failure) and a TCP session arrive as `HTTPAccessLogEntry`/`TCPAccessLogEntry` with the
//! identifier on each stream's first message; an unreachable collector and a stuck one never slow
//! or fail requests, their losses are counted, and the logger reconnects once the collector is up.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_test_support::*;

fn python() -> Option<PathBuf> {
    peers::interop_peer(".venv-grpc").map(|v| v.join("bin/python"))
}

struct Collector {
    _proc: peers::ChildGuard,
    addr: SocketAddr,
    out: PathBuf,
    _dir: TempDir,
}

/// Starts the grpcio receiver (on `port`, 0: any).
fn collector(py: &Path, port: u16) -> Collector {
    let dir = TempDir::new("als");
    let out = dir.join("als.jsonl");
    let mut child = Command::new(py)
        .arg(peers::interop_dir().join("als_receiver.py"))
        .args(["--out", out.to_str().unwrap(), "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the ALS receiver");
    let stdout = child.stdout.take().unwrap();
    let guard = peers::ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("receiver said {line:?}"));
    Collector {
        _proc: guard,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        out,
        _dir: dir,
    }
}

impl Collector {
    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn entries(&self, kind: &str) -> Vec<Value> {
        self.messages()
            .iter()
            .flat_map(|m| m[kind].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits (at most 15 s) until `ok` holds for the entries of `kind` received.
    async fn wait(&self, kind: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.entries(kind);
            if ok(&got) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn yaml(collector: SocketAddr, app: SocketAddr, dead: SocketAddr, echo: SocketAddr, grpc_extra: &str) -> String {
    format!(
        r#"
node: {{ id: als-node-1, cluster: als-mesh, metadata: {{ app: web }} }}
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      access_log:
        - grpc:
            cluster: als
            log_name: web-als
            buffer_flush_interval: 100ms
            additional_request_headers_to_log: [x-user, x-absent]
            additional_response_headers_to_log: [x-cache]
            {grpc_extra}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["svc.local"]
            routes:
              - name: ok-route
                match: {{ prefix: /ok }}
                route: {{ cluster: app }}
              - name: dead-route
                match: {{ prefix: /dead }}
                route: {{ cluster: dead, retry_policy: {{ retry_on: [connect-failure], num_retries: 1 }} }}
  - name: db
    address: 127.0.0.1:0
    tcp_proxy:
      cluster: echo
      access_log: {{ grpc: {{ cluster: als, log_name: tcp-als, buffer_flush_interval: 100ms }} }}
clusters:
  - name: app
    endpoints: [{{ address: "{app}" }}]
  - name: dead
    connect_timeout: 1s
    endpoints: [{{ address: "{dead}" }}]
  - name: echo
    endpoints: [{{ address: "{echo}" }}]
  - name: als
    endpoints: [{{ address: "{collector}" }}]
"#
    )
}

async fn app() -> Upstream {
    upstream(|_seen| async {
        let mut r = text(200, "hello back");
        r.headers_mut().insert("x-cache", "hit".parse().unwrap());
        r
    })
    .await
}

/// One request on a fresh connection; (status, the client's address, how long it took).
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, SocketAddr, Duration) {
    let t = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let me = stream.local_addr().unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        tx.send_request(req(method, path, "svc.local", headers, body)),
    )
    .await
    .expect("response in time")
    .unwrap();
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    (status, me, t.elapsed())
}

fn by_path<'a>(entries: &'a [Value], path: &str) -> Option<&'a Value> {
    entries.iter().find(|e| e["request"]["path"] == path)
}

fn socket(v: &Value) -> String {
    format!(
        "{}:{}",
        v["socket_address"]["address"].as_str().unwrap_or("?"),
        v["socket_address"]["port_value"]
    )
}

#[tokio::test]
async fn http_and_tcp_entries_reach_a_grpcio_collector() {
    let Some(py) = python() else { return };
    let rx = collector(&py, 0);
    let app = app().await;
    let dead = dead_addr();
    let echo = tcp_server(tcp_echo).await;
    let proxy = start_proxy(&yaml(rx.addr, app.addr, dead, echo, ""));
    let web = proxy.listener_addr("web").unwrap();
    let db = proxy.listener_addr("db").unwrap();

    let (s, me_ok, _) = send(
        web,
        "GET",
        "/ok/a?x=1",
        &[
            ("user-agent", "curl/8.1"),
            ("x-request-id", "rid-1"),
            ("x-user", "alice"),
            ("referer", "http://from.example/"),
        ],
        "",
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = send(web, "POST", "/dead", &[("x-request-id", "rid-2")], "12345").await;
    assert_eq!(s, 503);
    let (s, _, _) = send(web, "GET", "/nowhere", &[], "").await;
    assert_eq!(s, 404);

    // A TCP session: 11 bytes each way.
    let mut c = tokio::net::TcpStream::connect(db).await.unwrap();
    let me_tcp = c.local_addr().unwrap();
    c.write_all(b"hello world").await.unwrap();
    let mut back = [0u8; 11];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello world");
    drop(c);

    let http = rx.wait("http", |e| e.len() >= 3).await;
    assert_eq!(http.len(), 3, "{http:#?}");
    let ok = by_path(&http, "/ok/a?x=1").expect("the forwarded request");
    let c = &ok["common_properties"];
    assert_eq!(ok["request"]["request_method"], "GET");
    assert_eq!(ok["request"]["authority"], "svc.local");
    assert_eq!(ok["request"]["scheme"], "http");
    assert_eq!(ok["request"]["user_agent"], "curl/8.1");
    assert_eq!(ok["request"]["referer"], "http://from.example/");
    assert_eq!(ok["request"]["request_id"], "rid-1");
    assert_eq!(ok["request"]["request_headers"], serde_json::json!({"x-user": "alice"}));
    assert_eq!(ok["protocol_version"], "HTTP11");
    assert_eq!(ok["response"]["response_code"], 200);
    assert_eq!(ok["response"]["response_code_details"], "via_upstream");
    assert_eq!(ok["response"]["response_body_bytes"], "10");
    assert_eq!(
        ok["response"]["response_headers"],
        serde_json::json!({"x-cache": "hit"})
    );
    assert_eq!(c["upstream_cluster"], "app");
    assert_eq!(c["route_name"], "ok-route");
    assert_eq!(socket(&c["upstream_remote_address"]), app.addr.to_string());
    assert_eq!(socket(&c["downstream_remote_address"]), me_ok.to_string());
    assert_eq!(socket(&c["downstream_local_address"]), web.to_string());
    assert_eq!(c["upstream_request_attempt_count"], 1);
    assert_eq!(c["access_log_type"], "DownstreamEnd");
    assert!(c.get("response_flags").is_none(), "no flags on success: {c}");
    assert!(c["start_time"].as_str().is_some_and(|t| t.ends_with('Z')), "{c}");
    for t in [
        "time_to_first_upstream_rx_byte",
        "time_to_first_downstream_tx_byte",
        "time_to_last_downstream_tx_byte",
        "duration",
    ] {
        assert!(c[t].as_str().is_some_and(|d| d.ends_with('s')), "{t} in {c}");
    }

    let dead_e = by_path(&http, "/dead").expect("the failed request");
    let c = &dead_e["common_properties"];
    assert_eq!(dead_e["request"]["request_method"], "POST");
    assert_eq!(dead_e["request"]["request_body_bytes"], "5");
    assert_eq!(dead_e["response"]["response_code"], 503);
    assert_eq!(
        dead_e["response"]["response_code_details"],
        "upstream_reset_before_response_started{connection_failure}"
    );
    assert_eq!(c["upstream_cluster"], "dead");
    assert_eq!(c["route_name"], "dead-route");
    assert_eq!(c["upstream_request_attempt_count"], 2);
    assert_eq!(socket(&c["upstream_remote_address"]), dead.to_string());
    assert_eq!(
        c["response_flags"],
        serde_json::json!({"upstream_connection_failure": true, "upstream_retry_limit_exceeded": true}),
        "UF,URX"
    );

    let nr = by_path(&http, "/nowhere").expect("the unrouted request");
    assert_eq!(nr["response"]["response_code"], 404);
    assert_eq!(nr["response"]["response_code_details"], "route_not_found");
    assert_eq!(
        nr["common_properties"]["response_flags"],
        serde_json::json!({"no_route_found": true})
    );
    assert!(nr["common_properties"].get("upstream_cluster").is_none());

    let tcp = rx.wait("tcp", |e| !e.is_empty()).await;
    assert_eq!(tcp.len(), 1, "{tcp:#?}");
    let t = &tcp[0];
    assert_eq!(
        t["connection_properties"],
        serde_json::json!({"received_bytes": "11", "sent_bytes": "11"})
    );
    assert_eq!(t["common_properties"]["upstream_cluster"], "echo");
    assert_eq!(
        socket(&t["common_properties"]["upstream_remote_address"]),
        echo.to_string()
    );
    assert_eq!(
        socket(&t["common_properties"]["downstream_remote_address"]),
        me_tcp.to_string()
    );
    assert_eq!(t["common_properties"]["access_log_type"], "TcpConnectionEnd");

    // One stream per log, the identifier on its first message only.
    let msgs = rx.messages();
    for log in ["web-als", "tcp-als"] {
        let firsts: Vec<&Value> = msgs.iter().filter(|m| m["identifier"]["log_name"] == log).collect();
        assert_eq!(firsts.len(), 1, "{log}: {msgs:#?}");
        let id = &firsts[0]["identifier"];
        assert_eq!(firsts[0]["seq"], 0);
        assert_eq!(id["node"]["id"], "als-node-1");
        assert_eq!(id["node"]["cluster"], "als-mesh");
        assert_eq!(id["node"]["metadata"]["app"], "web");
        assert_eq!(id["node"]["user_agent_name"], "weft");
    }
    assert!(msgs.iter().all(|m| m["seq"] == 0 || m["identifier"].is_null()));

    let sent = stat(
        &proxy,
        "weft_access_log_grpc_sent_total{log_name=\"web-als\",kind=\"http\"}",
    )
    .await;
    assert_eq!(sent, Some(3.0));
    let dropped = stat(
        &proxy,
        "weft_access_log_grpc_dropped_total{log_name=\"web-als\",kind=\"http\"}",
    )
    .await;
    assert_eq!(dropped.unwrap_or(0.0), 0.0);
}

#[tokio::test]
async fn collector_down_then_up_requests_unaffected_drops_counted_then_delivered() {
    let Some(py) = python() else { return };
    let app = app().await;
    let echo = tcp_server(tcp_echo).await;
    // Nothing listens on the collector's port yet.
    let port = free_port();
    let collector_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let proxy = start_proxy(&yaml(collector_addr, app.addr, dead_addr(), echo, ""));
    let web = proxy.listener_addr("web").unwrap();

    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let (s, _, took) = send(web, "GET", &format!("/ok/down-{i}"), &[], "").await;
        assert_eq!(s, 200, "request {i} with the collector down");
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slowest < Duration::from_secs(1), "slowest request {slowest:?}");
    let dropped = "weft_access_log_grpc_dropped_total{log_name=\"web-als\",kind=\"http\"}";
    wait_stat(&proxy, dropped, Duration::from_secs(5), |v| v >= 30.0).await;
    let failures = "weft_access_log_grpc_stream_failures_total{log_name=\"web-als\",kind=\"http\"}";
    wait_stat(&proxy, failures, Duration::from_secs(5), |v| v >= 1.0).await;

    // The collector comes up on that port: the logger reconnects (after its backoff) and later
    // requests arrive.
    let rx = collector(&py, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        let (s, _, _) = send(web, "GET", &format!("/ok/up-{i}"), &[], "").await;
        assert_eq!(s, 200);
        i += 1;
        if rx
            .entries("http")
            .iter()
            .any(|e| e["request"]["path"].as_str().is_some_and(|p| p.starts_with("/ok/up-")))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no entry reached the collector after it came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let msgs = rx.messages();
    assert_eq!(msgs[0]["identifier"]["log_name"], "web-als", "{msgs:#?}");
    assert!(
        rx.entries("http")
            .iter()
            .all(|e| !e["request"]["path"].as_str().unwrap_or("").starts_with("/ok/down-")),
        "entries of the outage were dropped, not replayed"
    );
}

#[tokio::test]
async fn a_stuck_collector_never_slows_requests() {
    // Accepts connections and never reads or answers: HTTP/2 flow control holds the stream back
    // once its window is used up.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_addr = hole.local_addr().unwrap();
    let held = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = hole.accept().await {
            keep.lock().push(s);
        }
    });
    let app = app().await;
    let echo = tcp_server(tcp_echo).await;
    let proxy = start_proxy(&yaml(hole_addr, app.addr, dead_addr(), echo, "buffer_size_bytes: 0"));
    let web = proxy.listener_addr("web").unwrap();
    let big = "u".repeat(4096);
    let mut client = H1Client::connect(web).await;
    let mut slowest = Duration::ZERO;
    for i in 0..400 {
        let t = Instant::now();
        let got = client
            .send(req("GET", &format!("/ok/{i}"), "svc.local", &[("x-user", &big)], ""))
            .await;
        assert_eq!(got.status, 200, "request {i}");
        slowest = slowest.max(t.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "slowest request {slowest:?}");
    assert!(!held.lock().is_empty(), "the logger connected to the stuck collector");
    let dropped = "weft_access_log_grpc_dropped_total{log_name=\"web-als\",kind=\"http\"}";
    wait_stat(&proxy, dropped, Duration::from_secs(5), |v| v > 0.0).await;
    // Every entry is either handed to the stream or counted as dropped.
    let sent = "weft_access_log_grpc_sent_total{log_name=\"web-als\",kind=\"http\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, d) = (
            stat(&proxy, sent).await.unwrap_or(0.0),
            stat(&proxy, dropped).await.unwrap_or(0.0),
        );
        if s + d == 400.0 {
            assert!(s < 400.0, "the stuck collector took everything?");
            break;
        }
        assert!(Instant::now() < deadline, "sent {s} + dropped {d} != 400");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every leaf field path of an entry (`common_properties.response_flags.no_route_found`, …),
/// with map keys of request/response headers folded into their map's path.
fn field_paths(v: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) if !prefix.ends_with("_headers") => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                field_paths(x, &p, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

/// Entries of one log (by the identifier's `log_name` on each stream's first message).
fn entries_of(msgs: &[Value], log: &str, kind: &str) -> Vec<Value> {
    let streams: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["identifier"]["log_name"] == log)
        .map(|m| &m["stream"])
        .collect();
    msgs.iter()
        .filter(|m| streams.contains(&&m["stream"]))
        .flat_map(|m| m[kind].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Fields Envoy 1.40 fills that weft does not (docs/observability.md, "gRPC access-log service").
const NOT_FILLED_BY_WEFT: &[&str] = &[
    "common_properties.time_to_last_rx_byte",
    "common_properties.time_to_first_upstream_tx_byte",
    "common_properties.time_to_last_upstream_tx_byte",
    "common_properties.upstream_local_address.socket_address.address",
    "common_properties.upstream_local_address.socket_address.port_value",
    "common_properties.upstream_transport_failure_reason",
    "common_properties.downstream_wire_bytes_sent",
    "common_properties.downstream_wire_bytes_received",
    "common_properties.upstream_wire_bytes_sent",
    "common_properties.upstream_wire_bytes_received",
    "request.upstream_header_bytes_sent",
    "request.downstream_header_bytes_received",
    "response.upstream_header_bytes_received",
    "response.downstream_header_bytes_sent",
];

/// Envoy 1.40 with the same `http_grpc`/`tcp_grpc` configuration (over its bootstrap, the xDS
/// types weft converts) against the same collector: weft fills every field Envoy fills but the
/// listed ones, with the same values where they do not depend on timing or ports.
#[tokio::test]
async fn envoy_and_weft_fill_the_same_fields() {
    let Some(py) = python() else { return };
    let Some(envoy_bin) = peers::envoy_binary() else { return };
    let rx = collector(&py, 0);
    let app = app().await;
    let dead = dead_addr();
    let echo = tcp_server(tcp_echo).await;
    let proxy = start_proxy(&yaml(rx.addr, app.addr, dead, echo, ""));
    let (web, db) = (proxy.listener_addr("web").unwrap(), proxy.listener_addr("db").unwrap());

    let dir = TempDir::new("als-envoy");
    let sock = |a: SocketAddr| {
        format!(
            "{{ socket_address: {{ address: {}, port_value: {} }} }}",
            a.ip(),
            a.port()
        )
    };
    let grpc = |log: &str| {
        format!(
            "{{ log_name: {log}, transport_api_version: V3, buffer_flush_interval: 0.1s, grpc_service: {{ envoy_grpc: {{ cluster_name: als }} }} }}"
        )
    };
    let mut attempt = 0;
    let (_envoy, e_web, e_db) = 'attempt: loop {
        attempt += 1;
        assert!(attempt <= 5, "Envoy did not start in 5 attempts");
        let (e_web, e_db, e_admin) = (free_port(), free_port(), free_port());
        let cfg = format!(
            r#"
    node: {{ id: envoy-node-1, cluster: als-mesh }}
    admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {e_admin} }} }} }}
    static_resources:
      listeners:
      - name: web
        address: {{ socket_address: {{ address: 127.0.0.1, port_value: {e_web} }} }}
        filter_chains:
        - filters:
          - name: envoy.filters.network.http_connection_manager
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
              stat_prefix: web
              access_log:
              - name: envoy.access_loggers.http_grpc
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
                  common_config: {http_common}
                  additional_request_headers_to_log: [x-user, x-absent]
                  additional_response_headers_to_log: [x-cache]
              http_filters:
              - name: envoy.filters.http.router
                typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
              route_config:
                virtual_hosts:
                - name: all
                  domains: ["svc.local"]
                  routes:
                  - name: ok-route
                    match: {{ prefix: /ok }}
                    route: {{ cluster: app }}
                  - name: dead-route
                    match: {{ prefix: /dead }}
                    route: {{ cluster: dead, retry_policy: {{ retry_on: connect-failure, num_retries: 1 }} }}
      - name: db
        address: {{ socket_address: {{ address: 127.0.0.1, port_value: {e_db} }} }}
        filter_chains:
        - filters:
          - name: envoy.filters.network.tcp_proxy
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
              stat_prefix: db
              cluster: echo
              access_log:
              - name: envoy.access_loggers.tcp_grpc
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig
                  common_config: {tcp_common}
      clusters:
      - name: app
        connect_timeout: 1s
        load_assignment: {{ cluster_name: app, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {app_addr} }} }}] }}] }}
      - name: dead
        connect_timeout: 1s
        load_assignment: {{ cluster_name: dead, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {dead_addr} }} }}] }}] }}
      - name: echo
        connect_timeout: 1s
        load_assignment: {{ cluster_name: echo, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {echo_addr} }} }}] }}] }}
      - name: als
        connect_timeout: 1s
        typed_extension_protocol_options:
          envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
            "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
            explicit_http_config: {{ http2_protocol_options: {{}} }}
        load_assignment: {{ cluster_name: als, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {als_addr} }} }}] }}] }}
    "#,
            http_common = grpc("envoy-web"),
            tcp_common = grpc("envoy-tcp"),
            app_addr = sock(app.addr),
            dead_addr = sock(dead),
            echo_addr = sock(echo),
            als_addr = sock(rx.addr),
        );
        let cfg_path = dir.join("envoy.yaml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let mut envoy = peers::ChildGuard(
            Command::new(&envoy_bin)
                .arg("-c")
                .arg(&cfg_path)
                .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warn"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("start envoy"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        // Ready (its admin says LIVE) without touching the listeners (a probe would be a TCP session).
        let admin = SocketAddr::from(([127, 0, 0, 1], e_admin));
        while !send_once(admin, req("GET", "/ready", "admin", &[], ""))
            .await
            .is_ok_and(|g| g.status == 200)
        {
            if envoy.0.try_wait().ok().flatten().is_some() {
                // A port picked free was taken by a parallel test before Envoy bound it: new ports.
                continue 'attempt;
            }
            assert!(Instant::now() < deadline, "Envoy did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        break (
            envoy,
            SocketAddr::from(([127, 0, 0, 1], e_web)),
            SocketAddr::from(([127, 0, 0, 1], e_db)),
        );
    };

    for addr in [web, e_web] {
        let h = [
            ("user-agent", "curl/8.1"),
            ("x-request-id", "rid-1"),
            ("x-user", "alice"),
            ("referer", "http://from.example/"),
        ];
        assert_eq!(send(addr, "GET", "/ok/a?x=1", &h, "").await.0, 200);
        assert_eq!(
            send(addr, "POST", "/dead", &[("x-request-id", "rid-2")], "12345")
                .await
                .0,
            503
        );
        assert_eq!(
            send(addr, "GET", "/nowhere", &[("x-request-id", "rid-3")], "").await.0,
            404
        );
    }
    for addr in [db, e_db] {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hello world").await.unwrap();
        let mut back = [0u8; 11];
        c.read_exact(&mut back).await.unwrap();
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
    }

    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut weft_http, mut envoy_http, mut weft_tcp, mut envoy_tcp);
    loop {
        let msgs = rx.messages();
        weft_http = entries_of(&msgs, "web-als", "http");
        envoy_http = entries_of(&msgs, "envoy-web", "http");
        weft_tcp = entries_of(&msgs, "tcp-als", "tcp");
        envoy_tcp = entries_of(&msgs, "envoy-tcp", "tcp");
        if (weft_http.len(), envoy_http.len(), weft_tcp.len(), envoy_tcp.len()) == (3, 3, 1, 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "entries: weft {} http {} tcp, envoy {} http {} tcp",
            weft_http.len(),
            weft_tcp.len(),
            envoy_http.len(),
            envoy_tcp.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut pairs: Vec<(String, Value, Value)> = ["/ok/a?x=1", "/dead", "/nowhere"]
        .into_iter()
        .map(|p| {
            (
                p.to_string(),
                by_path(&weft_http, p).cloned().expect("weft entry"),
                by_path(&envoy_http, p).cloned().expect("envoy entry"),
            )
        })
        .collect();
    pairs.push(("tcp".into(), weft_tcp[0].clone(), envoy_tcp[0].clone()));
    for (what, w, e) in &pairs {
        let (mut wf, mut ef) = (Default::default(), Default::default());
        field_paths(w, "", &mut wf);
        field_paths(e, "", &mut ef);
        let missing: Vec<&String> = ef
            .difference(&wf)
            .filter(|f| !NOT_FILLED_BY_WEFT.contains(&f.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "{what}: Envoy fills {missing:?}, weft does not\nweft {w:#}\nenvoy {e:#}"
        );
        eprintln!(
            "{what}: only Envoy: {:?}; only weft: {:?}",
            ef.difference(&wf).collect::<Vec<_>>(),
            wf.difference(&ef).collect::<Vec<_>>()
        );
        // Same values where they depend on neither timing, ports nor the proxy's own details.
        for f in [
            "/protocol_version",
            "/request/request_method",
            "/request/scheme",
            "/request/authority",
            "/request/path",
            "/request/user_agent",
            "/request/referer",
            "/request/request_headers",
            "/request/request_body_bytes",
            "/response/response_code",
            "/response/response_headers",
            "/common_properties/upstream_cluster",
            "/common_properties/route_name",
            "/common_properties/response_flags",
            "/common_properties/upstream_request_attempt_count",
            "/common_properties/access_log_type",
            "/connection_properties",
        ] {
            assert_eq!(w.pointer(f), e.pointer(f), "{what}: {f}\nweft {w:#}\nenvoy {e:#}");
        }
        if what != "tcp" {
            // The request id (a TCP session's is random).
            let f = "/common_properties/stream_id";
            assert_eq!(w.pointer(f), e.pointer(f), "{what}: {f}");
        }
        if what == "/ok/a?x=1" {
            // The upstream's body (local replies' bodies differ: weft's are its own).
            let f = "/response/response_body_bytes";
            assert_eq!(w.pointer(f), e.pointer(f), "{what}: {f}");
        }
    }
}

/// On a TLS listener (curl with a client certificate, HTTP/2 by ALPN): the entry carries the SNI,
/// the client certificate's SANs and subject, `https` and `HTTP2`.
#[tokio::test]
async fn tls_properties_of_a_curl_request_with_a_client_certificate() {
    let Some(py) = python() else { return };
    if peers::tool("curl").is_none() {
        return;
    }
    let rx = collector(&py, 0);
    let app = app().await;
    let dir = TempDir::new("als-tls");
    let ca = weft_tls::testcerts::Ca::new("weft als test CA");
    ca.write(dir.path(), "ca");
    ca.leaf_dns(&["a.example.com"]).write(dir.path(), "a");
    ca.leaf_dns(&["client.example.com"]).write(dir.path(), "client");
    let d = dir.path().display().to_string();
    let proxy = start_proxy(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    tls:
      certificates: [{{ cert_file: {d}/a.crt, key_file: {d}/a.key, server_names: [a.example.com] }}]
      require_client_certificate: true
      trusted_ca_file: {d}/ca.crt
    http:
      access_log: {{ grpc: {{ cluster: als, log_name: tls-als, buffer_flush_interval: 100ms }} }}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes: [{{ name: all-route, match: {{ prefix: / }}, route: {{ cluster: app }} }}]
clusters:
  - name: app
    endpoints: [{{ address: "{app}" }}]
  - name: als
    endpoints: [{{ address: "{als}" }}]
"#,
        app = app.addr,
        als = rx.addr
    ));
    let port = proxy.listener_addr("web").unwrap().port();
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--cacert", &format!("{d}/ca.crt"), "--cert", &format!("{d}/client.crt")])
        .args(["--key", &format!("{d}/client.key"), "--resolve"])
        .arg(format!("a.example.com:{port}:127.0.0.1"))
        .arg(format!("https://a.example.com:{port}/secure"))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let http = rx.wait("http", |e| !e.is_empty()).await;
    assert_eq!(http.len(), 1, "{http:#?}");
    let e = &http[0];
    assert_eq!(e["protocol_version"], "HTTP2");
    assert_eq!(e["request"]["scheme"], "https");
    assert_eq!(e["request"]["path"], "/secure");
    let t = &e["common_properties"]["tls_properties"];
    assert_eq!(t["tls_sni_hostname"], "a.example.com", "{e:#}");
    let peer = &t["peer_certificate_properties"];
    assert_eq!(
        peer["subject_alt_name"],
        serde_json::json!([{"dns": "client.example.com"}]),
        "{e:#}"
    );
    assert!(peer["subject"].as_str().is_some_and(|s| !s.is_empty()), "{e:#}");
}
