//! Distributed tracing against software nobody here wrote: Python apps instrumented with the
//! OpenTelemetry SDK (W3C and B3 propagators) or Apache SkyWalking's agent (sw8) call each other
//! through two weft proxies (client app → weft A → weft B → server app); an OTLP receiver built on
//! the official `opentelemetry-proto` package collects every span (interop/otel_trace.py).
//! Also: a refusing collector and a slow one never slow or fail requests, and drops are counted.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_test_support::*;

fn python(venv: &str) -> Option<PathBuf> {
    peers::interop_peer(venv).map(|v| v.join("bin/python"))
}

fn script() -> PathBuf {
    peers::interop_dir().join("otel_trace.py")
}

/// Starts `otel_trace.py ARGS` and returns it with its first stdout line.
fn spawn(py: &Path, args: &[&str]) -> (peers::ChildGuard, String) {
    let mut child = Command::new(py)
        .arg(script())
        .args(args)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start python peer");
    let stdout = child.stdout.take().unwrap();
    let guard = peers::ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    (guard, line.trim().to_string())
}

struct Receiver {
    _proc: peers::ChildGuard,
    grpc: SocketAddr,
    http: SocketAddr,
    out: PathBuf,
    _dir: TempDir,
}

fn receiver(py: &Path, delay: f64) -> Receiver {
    let dir = TempDir::new("otlp");
    let out = dir.join("spans.jsonl");
    let delay = delay.to_string();
    let (proc, line) = spawn(py, &["receiver", "--out", out.to_str().unwrap(), "--delay", &delay]);
    let ports: Vec<u16> = line
        .strip_prefix("PORTS ")
        .map(|p| p.split(' ').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default();
    assert_eq!(ports.len(), 2, "receiver said {line:?}");
    Receiver {
        _proc: proc,
        grpc: SocketAddr::from(([127, 0, 0, 1], ports[0])),
        http: SocketAddr::from(([127, 0, 0, 1], ports[1])),
        out,
        _dir: dir,
    }
}

impl Receiver {
    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `n` spans of `trace` arrived.
    async fn trace(&self, trace: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got: Vec<Value> = self.spans().into_iter().filter(|s| s["trace_id"] == trace).collect();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A proxy named NAME whose one route forwards to `next`, tracing to `collector`.
fn proxy_yaml(name: &str, next: SocketAddr, tracing: &str) -> String {
    format!(
        r#"
node: {{ id: {name}-node }}
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      tracing: {tracing}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - name: to-next
                match: {{ prefix: / }}
                route: {{ cluster: next }}
clusters:
  - name: next
    endpoints: [{{ address: "{next}" }}]
"#
    )
}

struct Mesh {
    rx: Receiver,
    _app: peers::ChildGuard,
    app: SocketAddr,
    a: std::sync::Arc<weft_proxy::Server>,
    b: std::sync::Arc<weft_proxy::Server>,
}

/// Receiver, server app (extracting with `propagator`) and the two proxies.
fn mesh(py: &Path, propagator: &str, protocol: &str) -> Mesh {
    let rx = receiver(py, 0.0);
    let (app_proc, line) = spawn(
        py,
        &[
            "server",
            "--otlp",
            &rx.grpc.to_string(),
            "--propagator",
            propagator,
            "--name",
            "app-server",
        ],
    );
    let port: u16 = line
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .expect("server port");
    let app = SocketAddr::from(([127, 0, 0, 1], port));
    let collector = if protocol == "http" { rx.http } else { rx.grpc };
    let tracing = |svc: &str| {
        format!("{{ endpoint: \"{collector}\", protocol: {protocol}, service_name: {svc}, propagators: [w3c, b3, b3multi, sw8] }}")
    };
    let b = proxy::start_proxy(&proxy_yaml("b", app, &tracing("weft-b")));
    let b_addr = b.listener_addr("web").unwrap();
    let a = proxy::start_proxy(&proxy_yaml("a", b_addr, &tracing("weft-a")));
    Mesh {
        rx,
        _app: app_proc,
        app,
        a,
        b,
    }
}

fn run_client(py: &Path, args: &[&str]) -> Value {
    let out = Command::new(py)
        .arg(script())
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("run python client");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("client said {text:?}"));
    serde_json::from_str(line).unwrap()
}

fn by_service<'a>(spans: &'a [Value], service: &str, kind: i64) -> &'a Value {
    spans
        .iter()
        .find(|s| s["service"] == service && s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {service} span of kind {kind} in {spans:#?}"))
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

/// app-client → A server → A client → B server → B client → app-server, one trace, with the
/// semantic-convention attributes on weft's spans.
fn assert_chain(spans: &[Value], m: &Mesh, root_parent: &str) {
    let a_srv = by_service(spans, "weft-a", SERVER);
    let a_cli = by_service(spans, "weft-a", CLIENT);
    let b_srv = by_service(spans, "weft-b", SERVER);
    let b_cli = by_service(spans, "weft-b", CLIENT);
    let app = by_service(spans, "app-server", SERVER);
    assert_eq!(
        a_srv["parent_span_id"], root_parent,
        "A's server span continues the caller's"
    );
    assert_eq!(a_cli["parent_span_id"], a_srv["span_id"]);
    assert_eq!(b_srv["parent_span_id"], a_cli["span_id"], "B continues A's client span");
    assert_eq!(b_cli["parent_span_id"], b_srv["span_id"]);
    assert_eq!(
        app["parent_span_id"], b_cli["span_id"],
        "the app continues B's client span"
    );
    let b_addr = m.b.listener_addr("web").unwrap();
    for (srv, cli, next) in [(a_srv, a_cli, b_addr), (b_srv, b_cli, m.app)] {
        let at = &srv["attributes"];
        assert_eq!(at["http.request.method"], "GET");
        assert_eq!(at["url.path"], "/hello");
        assert_eq!(at["http.response.status_code"], 200);
        assert_eq!(at["network.peer.address"], "127.0.0.1");
        assert_eq!(at["server.address"], "127.0.0.1");
        assert_eq!(at["weft.route"], "to-next");
        assert_eq!(at["weft.upstream.cluster"], "next");
        assert!(at.get("weft.reason").is_none(), "{at}");
        let ct = &cli["attributes"];
        assert_eq!(ct["weft.upstream.cluster"], "next");
        assert_eq!(ct["weft.upstream.host"], next.to_string());
        assert_eq!(ct["server.port"], next.port());
        assert_eq!(ct["http.response.status_code"], 200);
        assert_eq!(ct["weft.attempts"], 1);
        assert_eq!(srv["status"], 0);
        assert_eq!(cli["status"], 0);
    }
}

async fn otel_chain(propagator: &str, protocol: &str) {
    let Some(py) = python(".venv-otel") else { return };
    let m = mesh(&py, propagator, protocol);
    let url = format!("http://{}/hello", m.a.listener_addr("web").unwrap());
    let collector = m.rx.grpc.to_string();
    let py2 = py.clone();
    let propagator2 = propagator.to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_client(
            &py2,
            &[
                "client",
                "--otlp",
                &collector,
                "--propagator",
                &propagator2,
                "--name",
                "app-client",
                "--url",
                &url,
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(out["status"], 200, "{out}");
    let trace = out["trace_id"].as_str().unwrap().to_string();
    let spans = m.rx.trace(&trace, 6).await;
    assert_eq!(spans.len(), 6, "one trace of six spans: {spans:#?}");
    let root = by_service(&spans, "app-client", CLIENT);
    assert_eq!(root["span_id"], out["span_id"]);
    assert_chain(&spans, &m, out["span_id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_trace_through_two_proxies() {
    otel_chain("w3c", "grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_trace_exported_over_otlp_http() {
    otel_chain("w3c", "http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_single_header_trace() {
    otel_chain("b3", "grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_multi_header_trace() {
    otel_chain("b3multi", "grpc").await;
}

/// The SkyWalking Python agent's own sw8 header starts the trace; both proxies continue it (same
/// OTLP trace id, B's server span under A's client span) and the app receives an sw8 carrying the
/// agent's trace id, written by weft B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skywalking_sw8_trace() {
    let (Some(otel), Some(sw)) = (python(".venv-otel"), python(".venv-skywalking")) else {
        return;
    };
    let m = mesh(&otel, "w3c", "grpc");
    let url = format!("http://{}/hello", m.a.listener_addr("web").unwrap());
    let out = tokio::task::spawn_blocking(move || run_client(&sw, &["sw-client", "--url", &url]))
        .await
        .unwrap();
    assert_eq!(out["status"], 200, "{out}");
    let sw_trace = out["trace_id"].as_str().unwrap().to_string();
    let seen: HashMap<String, String> = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    let sw8 = weft_core::trace::parse_sw8(seen["sw8"].as_bytes()).expect("the app got a valid sw8");
    let ctx = sw8.sw8.as_ref().unwrap();
    assert_eq!(ctx.trace_id, sw_trace, "the agent's trace id travels on");
    assert_eq!(ctx.parent_service, "weft-b");
    assert_eq!(ctx.parent_instance, "b-node");
    assert_eq!(ctx.parent_endpoint, "/hello");
    let trace = weft_core::trace::hex(&weft_core::trace::sw8_trace_id(&sw_trace));
    let spans = m.rx.trace(&trace, 4).await;
    let a_srv = by_service(&spans, "weft-a", SERVER);
    let a_cli = by_service(&spans, "weft-a", CLIENT);
    let b_srv = by_service(&spans, "weft-b", SERVER);
    assert_eq!(a_srv["attributes"]["skywalking.trace_id"], sw_trace.as_str());
    assert_eq!(a_srv["attributes"]["skywalking.parent.service"], "sw-client");
    assert_eq!(b_srv["parent_span_id"], a_cli["span_id"]);
    assert_eq!(b_srv["attributes"]["skywalking.parent.service"], "weft-a");
    assert_eq!(b_srv["attributes"]["skywalking.parent.service_instance"], "a-node");
}

/// `n` requests through the proxy, each timed: all succeed, and none waits for the collector (an
/// export takes up to export_timeout, 200-300 ms here, or seconds for the slow collector). On a
/// loaded test machine a few requests may be slow for other reasons, so the check is on the
/// median and on the share of slow requests, not on the single slowest.
async fn requests_unaffected(server: &weft_proxy::Server, n: usize) {
    let addr = server.listener_addr("web").unwrap();
    let mut c = H1Client::connect(addr).await;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let got = c.get("/x").await;
        assert_eq!(got.status, 200);
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[n / 2];
    let slow = times.iter().filter(|t| **t >= Duration::from_millis(150)).count();
    assert!(median < Duration::from_millis(50), "median {median:?}");
    assert!(
        slow * 50 <= n,
        "{slow} of {n} requests took 150 ms or more: {:?}",
        &times[n - slow..]
    );
}

/// A collector port that refuses connections: every request still succeeds quickly; the lost
/// spans are counted, and the queue's overflow is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_collector_costs_requests_nothing() {
    let up = upstream::fixed_upstream("ok").await;
    let dead = net::dead_addr();
    let tracing = format!("{{ endpoint: \"{dead}\", max_queue_size: 8, batch_size: 4, export_timeout: 300ms }}");
    let p = proxy::start_proxy(&proxy_yaml("d", up.addr, &tracing));
    requests_unaffected(&p, 300).await;
    let sampled = proxy::stat(&p, "weft_tracing_sampled_total{listener=\"web\"}")
        .await
        .unwrap_or(0.0);
    assert_eq!(sampled, 300.0);
    // Every span is accounted for: lost in a refused export, or dropped (two spans per request)
    // while the queue was full; none was exported.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failed = proxy::stat(&p, "weft_tracing_export_failed_spans_total{listener=\"web\"}")
            .await
            .unwrap_or(0.0);
        let dropped = proxy::stat(&p, "weft_tracing_dropped_total{listener=\"web\"}")
            .await
            .unwrap_or(0.0);
        if failed > 0.0 && failed + 2.0 * dropped == 600.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed spans {failed} + 2 x dropped {dropped} != 600"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exported = proxy::stat(&p, "weft_tracing_exported_spans_total{listener=\"web\"}")
        .await
        .unwrap_or(0.0);
    assert_eq!(exported, 0.0);
}

/// A collector that takes 3 s per export (longer than export_timeout): requests are unaffected,
/// exports time out and are counted, the queue overflows and drops are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_collector_costs_requests_nothing() {
    let Some(py) = python(".venv-otel") else { return };
    let rx = receiver(&py, 3.0);
    let up = upstream::fixed_upstream("ok").await;
    let tracing = format!(
        "{{ endpoint: \"{}\", max_queue_size: 8, batch_size: 4, export_timeout: 200ms }}",
        rx.grpc
    );
    let p = proxy::start_proxy(&proxy_yaml("s", up.addr, &tracing));
    requests_unaffected(&p, 300).await;
    proxy::wait_stat(
        &p,
        "weft_tracing_export_failed_spans_total{listener=\"web\"}",
        Duration::from_secs(10),
        |v| v > 0.0,
    )
    .await;
    let dropped = proxy::stat(&p, "weft_tracing_dropped_total{listener=\"web\"}")
        .await
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "dropped {dropped}");
}

/// Force-sample on error: at ratio 0 a successful request exports nothing, a failed one (no
/// healthy upstream: connection refused) is exported with its reason code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_are_exported_at_ratio_zero() {
    let Some(py) = python(".venv-otel") else { return };
    let rx = receiver(&py, 0.0);
    let up = upstream::fixed_upstream("ok").await;
    let tracing = format!("{{ endpoint: \"{}\", sampling_ratio: 0.0 }}", rx.grpc);
    let ok = proxy::start_proxy(&proxy_yaml("ok", up.addr, &tracing));
    let bad = proxy::start_proxy(&proxy_yaml("bad", net::dead_addr(), &tracing));
    for _ in 0..5 {
        assert_eq!(client::get(ok.listener_addr("web").unwrap(), "/fine").await.status, 200);
    }
    // Unsampled: the upstream hears the decision only (`b3: 0` for both B3 formats).
    let h = up.last().headers;
    let tp = h["traceparent"].to_str().unwrap();
    assert!(tp.len() == 55 && tp.ends_with("-00"), "{tp}");
    assert_eq!(h["b3"].as_bytes(), b"0", "{h:?}");
    assert!(
        !h.contains_key("x-b3-sampled"),
        "b3: 0 speaks for both B3 formats: {h:?}"
    );
    assert!(
        !h.contains_key("x-b3-traceid") && !h.contains_key("x-b3-spanid"),
        "{h:?}"
    );
    // A caller's unsampled traceparent passes unchanged.
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let req = http::Request::get(format!("http://{}/fine", ok.listener_addr("web").unwrap()))
        .header("traceparent", theirs)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(
        client::send_once(ok.listener_addr("web").unwrap(), req)
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(up.last().headers["traceparent"], theirs);
    let got = client::get(bad.listener_addr("web").unwrap(), "/broken").await;
    assert_eq!(got.status, 503);
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let s = rx.spans();
        if s.len() >= 2 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        spans.iter().all(|s| s["attributes"]["url.path"] == "/broken"),
        "{spans:#?}"
    );
    let srv = spans.iter().find(|s| s["kind"] == SERVER).expect("server span");
    assert_eq!(srv["attributes"]["weft.force_sampled"], true);
    assert_eq!(srv["attributes"]["weft.reason"], "UF");
    assert_eq!(srv["attributes"]["http.response.status_code"], 503);
    assert_eq!(srv["status"], 2, "error status");
    let cli = spans.iter().find(|s| s["kind"] == CLIENT).expect("client span");
    assert_eq!(cli["attributes"]["weft.reason"], "UF");
}

/// TCP proxy sessions: one span each, with the byte counts and the upstream; at ratio 0 only the
/// failed session (upstream refused) is exported, force-sampled, with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sessions_get_one_span_each() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(py) = python(".venv-otel") else { return };
    let rx = receiver(&py, 0.0);
    let echo = upstream::tcp_server(upstream::tcp_echo).await;
    let dead = net::dead_addr();
    let yaml = format!(
        r#"
node: {{ id: tcp-node }}
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: db
    address: 127.0.0.1:0
    tcp_proxy:
      cluster: echo
      tracing: {{ endpoint: "{collector}", service_name: weft-tcp }}
  - name: gone
    address: 127.0.0.1:0
    tcp_proxy:
      cluster: dead
      tracing: {{ endpoint: "{collector}", service_name: weft-tcp, sampling_ratio: 0.0 }}
clusters:
  - name: echo
    endpoints: [{{ address: "{echo}" }}]
  - name: dead
    connect_timeout: 1s
    endpoints: [{{ address: "{dead}" }}]
"#,
        collector = rx.grpc
    );
    let p = proxy::start_proxy(&yaml);
    let mut s = tokio::net::TcpStream::connect(p.listener_addr("db").unwrap())
        .await
        .unwrap();
    s.write_all(b"hello weft").await.unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello weft");
    s.write_all(b"!!").await.unwrap();
    let mut two = [0u8; 2];
    s.read_exact(&mut two).await.unwrap();
    drop(s);
    // The failed session: connect refused, the client sees the connection closed.
    let mut g = tokio::net::TcpStream::connect(p.listener_addr("gone").unwrap())
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut sink)).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let s = rx.spans();
        if s.len() >= 2 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let ok = spans
        .iter()
        .find(|s| s["name"] == "tcp echo")
        .expect("the echo session's span");
    let a = &ok["attributes"];
    assert_eq!(ok["kind"], SERVER);
    assert_eq!(ok["service"], "weft-tcp");
    assert_eq!(ok["status"], 0, "{ok:#}");
    assert_eq!(a["weft.bytes_received"], 12, "{ok:#}");
    assert_eq!(a["weft.bytes_sent"], 12, "{ok:#}");
    assert_eq!(a["weft.upstream.host"], echo.to_string());
    assert_eq!(a["network.transport"], "tcp");
    assert_eq!(a["network.peer.address"], "127.0.0.1");
    let bad = spans
        .iter()
        .find(|s| s["name"] == "tcp dead")
        .expect("the failed session's span");
    assert_eq!(bad["status"], 2, "{bad:#}");
    assert_eq!(bad["attributes"]["weft.force_sampled"], true);
    assert_eq!(bad["attributes"]["weft.reason"], "UF", "{bad:#}");
    assert_eq!(bad["attributes"]["weft.bytes_sent"], 0);
}
