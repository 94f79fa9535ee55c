//! Distributed tracing of RPC traffic with software nobody here wrote: a sofa-rpc-node consumer →
//! weft A → weft B → a sofa-rpc-node provider, for SOFARPC Bolt and for Dubbo2, each weft exporting
//! its spans over OTLP to a receiver built on the official `opentelemetry-proto` package
//! (interop/otel_trace.py). Checks one trace per call with the parent chain A server → A client →
//! B server → B client, the RPC semantic-convention attributes, a `traceparent` the consumer sent in
//! its request properties / attachments continued, the context the provider receives (Dubbo:
//! B's client span), and a local reply (no route) exported as an error span with weft's reason.
//! Peers: `interop/install` (interop/rpc-node, interop/.venv-otel).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_test_support::peers::{interop_dir, interop_peer, tool, ChildGuard};
use weft_test_support::*;

mod common;
use common::{clusters_yaml, node_consume};
use weft_test_support::peers::node_provider;

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
/// The consumer's own context, sent as a request property / attachment.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

struct Receiver {
    _proc: ChildGuard,
    grpc: SocketAddr,
    out: PathBuf,
    _dir: TempDir,
}

fn receiver(py: &Path) -> Receiver {
    let dir = TempDir::new("otlp-rpc");
    let out = dir.join("spans.jsonl");
    let mut child = Command::new(py)
        .arg(interop_dir().join("otel_trace.py"))
        .args(["receiver", "--out", out.to_str().unwrap(), "--delay", "0"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the OTLP receiver");
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let ports: Vec<u16> = line
        .trim()
        .strip_prefix("PORTS ")
        .map(|p| p.split(' ').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default();
    assert_eq!(ports.len(), 2, "receiver said {line:?}");
    Receiver {
        _proc: guard,
        grpc: SocketAddr::from(([127, 0, 0, 1], ports[0])),
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

    /// Waits until `n` spans whose `rpc.method` is `method` arrived.
    async fn of_method(&self, method: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["attributes"]["rpc.method"] == method)
                .collect();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn span<'a>(spans: &'a [Value], service: &str, kind: i64) -> &'a Value {
    spans
        .iter()
        .find(|s| s["service"] == service && s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {service} span of kind {kind} in {spans:#?}"))
}

/// A sidecar: its one RPC listener routes the Greeter to `next`, tracing to `collector`.
fn sidecar(protocol: &str, name: &str, next: SocketAddr, collector: SocketAddr) -> String {
    format!(
        r#"
node: {{ id: {name}-node }}
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: rpc
    address: 127.0.0.1:0
    rpc:
      protocol: {protocol}
      timeout: 2s
      tracing: {{ endpoint: "{collector}", service_name: {name}, sampling_ratio: 1.0, propagators: [w3c, sw8] }}
      routes:
        - name: greeter
          match: {{ interface: org.example.Greeter }}
          cluster: next
{clusters}"#,
        clusters = clusters_yaml(&[("next", next)])
    )
}

/// A's server → A's client → B's server → B's client, one trace; returns B's client span.
fn assert_chain(spans: &[Value], system: &str, method: &str, root_parent: &str) -> Value {
    let a_srv = span(spans, "weft-a", SERVER);
    let a_cli = span(spans, "weft-a", CLIENT);
    let b_srv = span(spans, "weft-b", SERVER);
    let b_cli = span(spans, "weft-b", CLIENT);
    let trace = &a_srv["trace_id"];
    for s in [a_cli, b_srv, b_cli] {
        assert_eq!(&s["trace_id"], trace, "one trace: {spans:#?}");
    }
    assert_eq!(a_srv["parent_span_id"], root_parent, "{spans:#?}");
    assert_eq!(a_cli["parent_span_id"], a_srv["span_id"]);
    assert_eq!(b_srv["parent_span_id"], a_cli["span_id"], "B continues A's client span");
    assert_eq!(b_cli["parent_span_id"], b_srv["span_id"]);
    for s in [a_srv, a_cli, b_srv, b_cli] {
        let a = &s["attributes"];
        assert_eq!(a["rpc.system"], system, "{s:#}");
        assert_eq!(a["rpc.service"], "org.example.Greeter", "{s:#}");
        assert_eq!(a["rpc.method"], method, "{s:#}");
        assert_eq!(s["name"], format!("org.example.Greeter/{method}"), "{s:#}");
        assert_eq!(s["status"], 0, "unset (ok): {s:#}");
    }
    assert_eq!(a_srv["attributes"]["network.peer.address"], "127.0.0.1");
    assert_eq!(a_srv["attributes"]["weft.route"], "greeter");
    assert_eq!(a_srv["attributes"]["weft.upstream.cluster"], "next");
    assert!(
        a_cli["attributes"]["weft.upstream.host"].as_str().is_some(),
        "{a_cli:#}"
    );
    assert!(b_cli["attributes"]["server.port"].as_i64().is_some(), "{b_cli:#}");
    b_cli.clone()
}

async fn run(protocol: &str, system: &str, script: PathBuf, py: PathBuf) {
    let rx = receiver(&py);
    let (_p, provider) = node_provider(&script, "alpha");
    let b = start_proxy(&sidecar(protocol, "weft-b", provider, rx.grpc));
    let b_addr = b.listener_addr("rpc").unwrap();
    let a = start_proxy(&sidecar(protocol, "weft-a", b_addr, rx.grpc));
    let a_addr = a.listener_addr("rpc").unwrap();

    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let cmds = vec![
        // A new trace.
        serde_json::json!({"id": 1, "method": "echo", "args": ["t1"]}),
        // The consumer's context continued; the provider tells what reached it.
        serde_json::json!({"id": 2, "method": "prop", "args": ["traceparent"], "props": {"traceparent": traceparent}}),
    ];
    let s = script.clone();
    let out = tokio::task::spawn_blocking(move || node_consume(&s, a_addr, &[], &cmds))
        .await
        .unwrap();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0]["ok"], "alpha:t1", "{out:?}");

    let spans = rx.of_method("echo", 4).await;
    assert_eq!(spans.len(), 4, "two spans from each sidecar: {spans:#?}");
    assert_chain(&spans, system, "echo", "");

    let spans = rx.of_method("prop", 4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let b_cli = assert_chain(&spans, system, "prop", PARENT);
    assert_eq!(b_cli["trace_id"], TRACE, "the consumer's trace continued");
    let got = out[1]["ok"].as_str().unwrap_or_default();
    match protocol {
        // Dubbo: weft rewrote the attachment; the provider got B's client span as its parent.
        "dubbo" => assert_eq!(
            got,
            format!("alpha:00-{TRACE}-{}-01", b_cli["span_id"].as_str().unwrap()),
            "{out:?}"
        ),
        // Bolt: weft writes the header map; the SofaRequest's requestProps (what the provider
        // reads with the hessian codec) are the consumer's own, passed through untouched.
        _ => assert_eq!(got, format!("alpha:{traceparent}"), "{out:?}"),
    }

    // A call weft answers itself (no route for another interface): an error span with the reason.
    let s = script.clone();
    let iface = ["org.example.Nobody"];
    let args: Vec<&str> = if protocol == "bolt" {
        vec!["v1", iface[0]]
    } else {
        vec![iface[0]]
    };
    let cmds = vec![serde_json::json!({"id": 3, "method": "lost", "args": []})];
    let out = tokio::task::spawn_blocking(move || node_consume(&s, a_addr, &args, &cmds))
        .await
        .unwrap();
    assert!(out[0]["err"].as_str().is_some(), "{out:?}");
    let spans = rx.of_method("lost", 1).await;
    let srv = span(&spans, "weft-a", SERVER);
    assert_eq!(srv["status"], 2, "error: {srv:#}");
    assert_eq!(srv["attributes"]["weft.reason"], "NR", "{srv:#}");
    assert_eq!(srv["attributes"]["rpc.service"], "org.example.Nobody", "{srv:#}");

    // Counted on the listener's tracing metrics: three sampled calls, none dropped.
    let sampled = stat(&a, "weft_tracing_sampled_total{listener=\"rpc\"}").await;
    assert_eq!(sampled, Some(3.0));
    let dropped = stat(&a, "weft_tracing_dropped_total{listener=\"rpc\"}").await;
    assert_eq!(dropped.unwrap_or(0.0), 0.0);
}

fn otel_python() -> Option<PathBuf> {
    interop_peer(".venv-otel").map(|v| v.join("bin/python"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bolt_spans_through_two_sidecars() {
    let (Some(_), Some(_), Some(_), Some(py)) = (
        interop_peer("rpc-node/node_modules/sofa-bolt-node/package.json"),
        interop_peer("rpc-node/node_modules/sofa-rpc-node/package.json"),
        tool("node"),
        otel_python(),
    ) else {
        return;
    };
    run("bolt", "sofarpc", interop_dir().join("rpc-node/bolt_peer.js"), py).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dubbo_spans_through_two_sidecars() {
    let (Some(_), Some(_), Some(_), Some(py)) = (
        interop_peer("rpc-node/node_modules/dubbo-remoting/package.json"),
        interop_peer("rpc-node/node_modules/sofa-rpc-node/package.json"),
        tool("node"),
        otel_python(),
    ) else {
        return;
    };
    run(
        "dubbo",
        "apache_dubbo",
        interop_dir().join("rpc-node/dubbo_peer.js"),
        py,
    )
    .await;
}

/// One-way Dubbo calls are traced too: a server and a client span each, marked `weft.one_way`,
/// with no status code and an unset (ok) status, ending once the call is sent; the provider
/// receives the client span's context in the call's attachments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_dubbo_calls_get_spans() {
    use parking_lot::Mutex;
    use std::sync::Arc;
    use tokio::net::TcpListener;
    use weft_rpc::codec::{Codec, FrameKind};
    use weft_rpc::dubbo::{self, Dubbo};

    let Some(py) = otel_python() else { return };
    let rx = receiver(&py);
    // A provider that records the `traceparent` of each one-way `note` call.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider = l.local_addr().unwrap();
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(common::serve_conn::<Dubbo>(s, move |f, _tx| {
                if f.kind == FrameKind::OneWay {
                    let info = Dubbo.request_info(&f).unwrap();
                    let tp = Dubbo
                        .attachment(&f, &info, "traceparent")
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    seen.lock().push(tp);
                }
                std::ops::ControlFlow::Continue(())
            }));
        }
    });
    let proxy = start_proxy(&sidecar("dubbo", "weft-a", provider, rx.grpc));
    let addr = proxy.listener_addr("rpc").unwrap();
    let mut c = common::Client::<Dubbo>::connect(addr).await;
    for i in 0..3 {
        let req = dubbo::encode_request(i, false, "org.example.Greeter", "1.0.0", "note", "", &[], &[]);
        c.send(&req).await;
    }
    let spans = rx.of_method("note", 6).await;
    assert_eq!(spans.len(), 6, "a server and a client span per call: {spans:#?}");
    let got = seen.lock().clone();
    assert_eq!(got.len(), 3, "the provider got every call: {got:?}");
    for srv in spans.iter().filter(|s| s["kind"] == SERVER) {
        let cli = spans
            .iter()
            .find(|s| s["kind"] == CLIENT && s["parent_span_id"] == srv["span_id"])
            .unwrap_or_else(|| panic!("the client span of {srv:#}"));
        for s in [srv, cli] {
            assert_eq!(s["trace_id"], srv["trace_id"]);
            assert_eq!(s["status"], 0, "unset (ok): {s:#}");
            assert_eq!(s["attributes"]["weft.one_way"], true, "{s:#}");
            assert!(s["attributes"]["rpc.response.status_code"].is_null(), "{s:#}");
        }
        let ctx = format!(
            "00-{}-{}-01",
            cli["trace_id"].as_str().unwrap(),
            cli["span_id"].as_str().unwrap()
        );
        assert!(got.contains(&ctx), "the provider got {got:?}, not {ctx}");
    }
}
