//! Dubbo3 Triple through weft with software nobody here wrote: apache-dubbo (Python) as two
//! Triple providers that answer with their own name, and as the consumer, calling through weft's
//! HTTP/2 path (consumer → weft → provider, and consumer → weft → weft → provider). Checks unary
//! and streaming calls, routing by `match.grpc` (service, method; and version, group and
//! attachments, which this apache-dubbo does not send, with a raw HTTP/2 Triple request), which
//! provider answered, weft's own trailers-only replies (no route, timeout, dead upstream) as the
//! real client raises them, a provider's own error passing through, and the access log's
//! `rpc_service`, `rpc_method` and `grpc_status`. Peers: `interop/install` (interop/.venv-dubbo).

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use weft_test_support::peers::{interop_dir, interop_peer, ChildGuard};
use weft_test_support::*;

const GREETER: &str = "org.apache.dubbo.samples.Greeter";

struct Peer {
    python: PathBuf,
    script: PathBuf,
}

fn peer() -> Option<Peer> {
    let python = interop_peer(".venv-dubbo/bin/python")?;
    Some(Peer {
        python,
        script: interop_dir().join("triple_peer.py"),
    })
}

/// Starts an apache-dubbo Triple provider named `name` and waits for it to listen.
fn provider(p: &Peer, name: &str) -> (ChildGuard, SocketAddr) {
    let addr = free_addr();
    let mut child = Command::new(&p.python)
        .arg(&p.script)
        .args(["provider", name, &addr.port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python starts");
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        // Keep reading so the provider never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("provider starts within 30 s");
    assert!(
        matches!(&line, Some(Ok(l)) if l == "ready"),
        "provider {name} said {line:?}"
    );
    (guard, addr)
}

/// Runs the apache-dubbo consumer against `target` with `calls`; one JSON answer per call.
async fn consume(p: &Peer, target: SocketAddr, calls: serde_json::Value) -> Vec<serde_json::Value> {
    let (python, script) = (p.python.clone(), p.script.clone());
    let n = calls.as_array().unwrap().len();
    let out = tokio::task::spawn_blocking(move || {
        let child = Command::new(python)
            .arg(script)
            .args(["consumer", &target.port().to_string(), &calls.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python starts");
        let mut guard = ChildGuard(child);
        let stdout = guard.0.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let lines: Vec<serde_json::Value> = BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("consumer said {l:?}: {e}")))
                .collect();
            let _ = tx.send(lines);
        });
        let out = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("consumer finishes within 60 s");
        drop(guard);
        out
    })
    .await
    .unwrap();
    assert_eq!(out.len(), n, "one answer per call: {out:?}");
    out
}

fn unary(method: &str, payload: &str) -> serde_json::Value {
    serde_json::json!({ "service": GREETER, "method": method, "payload": payload })
}

fn ok(v: &serde_json::Value) -> &str {
    assert_eq!(v["ok"], true, "{v}");
    v["value"].as_str().unwrap()
}

/// The failed call's gRPC code name and message, as the apache-dubbo client raised them.
fn failed(v: &serde_json::Value) -> (&str, &str) {
    assert_eq!(v["ok"], false, "{v}");
    (v["code"].as_str().unwrap_or("-"), v["message"].as_str().unwrap_or(""))
}

fn yaml(p1: SocketAddr, p2: SocketAddr, log: &str) -> String {
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: tri
    address: 127.0.0.1:0
    http:
      access_log: {{ path: "{log}" }}
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - name: whoami
                match: {{ grpc: {{ service: {GREETER}, method: whoami }} }}
                route: {{ cluster: p2 }}
              - name: v2
                match: {{ grpc: {{ service: {GREETER}, version: 2.0.0 }} }}
                route: {{ cluster: p2 }}
              - name: blue-canary
                match: {{ grpc: {{ service: {GREETER}, group: blue, attachments: {{ lane: canary }} }} }}
                route: {{ cluster: p2 }}
              - name: slow
                match: {{ grpc: {{ service: {GREETER}, method: slow }} }}
                route: {{ cluster: p1, timeout: 1s }}
              - name: greeter
                match: {{ grpc: {{ service: {GREETER} }} }}
                route: {{ cluster: p1, timeout: 0s }}
              - name: dead
                match: {{ grpc: {{ service: org.example.Dead }} }}
                route: {{ cluster: dead }}
clusters:
  - {{ name: p1, protocol: http2, connect_timeout: 1s, endpoints: [{{ address: "{p1}" }}] }}
  - {{ name: p2, protocol: http2, connect_timeout: 1s, endpoints: [{{ address: "{p2}" }}] }}
  - {{ name: dead, protocol: http2, connect_timeout: 1s, endpoints: [{{ address: "{dead}" }}] }}
"#,
        dead = dead_addr(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_dubbo_triple_consumer_and_providers_through_weft() {
    let Some(peer) = peer() else { return };
    let (_p1, a1) = provider(&peer, "p1");
    let (_p2, a2) = provider(&peer, "p2");
    let dir = TempDir::new("triple-interop");
    let log = dir.join("access.log");
    let proxy = start_proxy(&yaml(a1, a2, &log.display().to_string()));
    let addr = proxy.listener_addr("tri").unwrap();

    let mut calls = vec![
        unary("sayHello", "bob"),
        unary("whoami", ""),
        serde_json::json!({ "service": GREETER, "method": "count", "kind": "server_stream", "payload": "3" }),
        serde_json::json!({ "service": GREETER, "method": "sum", "kind": "client_stream", "payloads": ["1", "2", "39"] }),
        serde_json::json!({ "service": GREETER, "method": "chat", "kind": "bi_stream", "payloads": ["a", "b", "c"] }),
        unary("slow", "50"),
        unary("slow", "3000"),
        serde_json::json!({ "service": "org.example.Nope", "method": "x", "payload": "" }),
        serde_json::json!({ "service": "org.example.Dead", "method": "x", "payload": "" }),
        unary("boom", ""),
    ];
    // Routing by method, call after call on the consumer's one connection.
    for i in 0..10 {
        calls.push(if i % 2 == 0 {
            unary("whoami", "")
        } else {
            unary("sayHello", &format!("n{i}"))
        });
    }
    // 30 calls at once from 30 threads, multiplexed on that connection as concurrent streams:
    // unary calls alternating between the providers by method, and streams.
    let concurrent: Vec<serde_json::Value> = (0..30)
        .map(|i| match i % 3 {
            0 => unary("whoami", ""),
            1 => unary("sayHello", &format!("c{i}")),
            _ => serde_json::json!({ "service": GREETER, "method": "count", "kind": "server_stream", "payload": "4" }),
        })
        .collect();
    calls.push(serde_json::json!({ "kind": "concurrent", "calls": concurrent }));
    let out = consume(&peer, addr, serde_json::Value::Array(calls)).await;

    assert_eq!(ok(&out[0]), "p1: hello bob");
    assert_eq!(ok(&out[1]), "p2", "whoami is routed to p2 by method");
    assert_eq!(
        out[2]["values"],
        serde_json::json!(["p1 1", "p1 2", "p1 3"]),
        "{}",
        out[2]
    );
    assert_eq!(ok(&out[3]), "p1 42");
    assert_eq!(
        out[4]["values"],
        serde_json::json!(["p1 a", "p1 b", "p1 c"]),
        "{}",
        out[4]
    );
    assert_eq!(ok(&out[5]), "p1", "a slow call within the route's 1 s");
    let (code, msg) = failed(&out[6]);
    assert_eq!(code, "DEADLINE_EXCEEDED", "{}", out[6]);
    assert!(msg.contains("(UT)"), "{}", out[6]);
    let (code, msg) = failed(&out[7]);
    assert_eq!(code, "UNIMPLEMENTED", "{}", out[7]);
    assert!(msg.contains("(NR)"), "{}", out[7]);
    let (code, msg) = failed(&out[8]);
    assert_eq!(code, "UNAVAILABLE", "{}", out[8]);
    assert!(msg.contains("(UF)"), "{}", out[8]);
    let (code, msg) = failed(&out[9]);
    assert_eq!(code, "INTERNAL", "the provider's own error passes through: {}", out[9]);
    assert!(msg.contains("boom from p1"), "{}", out[9]);
    for (i, v) in out[10..20].iter().enumerate() {
        let want = if i % 2 == 0 {
            "p2".to_string()
        } else {
            format!("p1: hello n{}", 2 * (i / 2) + 1)
        };
        assert_eq!(ok(v), want, "call {i}");
    }
    let results = out[20]["results"].as_array().unwrap_or_else(|| panic!("{}", out[20]));
    assert_eq!(results.len(), 30);
    for (i, v) in results.iter().enumerate() {
        match i % 3 {
            0 => assert_eq!(ok(v), "p2", "concurrent call {i}"),
            1 => assert_eq!(ok(v), format!("p1: hello c{i}"), "concurrent call {i}"),
            _ => assert_eq!(
                v["values"],
                serde_json::json!(["p1 1", "p1 2", "p1 3", "p1 4"]),
                "concurrent call {i}: {v}"
            ),
        }
    }

    // Version, group and attachments: a Triple request as Dubbo's Java and Go clients send it
    // (this apache-dubbo does not send tri-service-version / tri-service-group), answered by the
    // Python provider that the headers route to.
    let mut h2 = h2_connect::<Full<Bytes>>(addr).await;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("tri-service-version", "2.0.0")], "p2: hello x"),
        (&[("tri-service-group", "blue"), ("lane", "canary")], "p2: hello x"),
        (&[("tri-service-group", "blue")], "p1: hello x"),
        (&[("tri-service-version", "1.0.0"), ("lane", "canary")], "p1: hello x"),
    ];
    for (headers, want) in cases {
        let (status, body) = triple_call(&mut h2, &format!("/{GREETER}/sayHello"), headers, b"x").await;
        assert_eq!(status.as_deref(), Some("0"), "{headers:?}");
        assert_eq!(body, want.as_bytes(), "{headers:?}");
    }

    // The access log: service, method and the gRPC status of each call (from the trailers, or
    // from the headers of weft's own trailers-only replies).
    let lines = json_lines(&log, 20 + 30 + 4, Duration::from_secs(5)).await;
    assert_eq!(lines.len(), 54, "one access log line per call");
    let find = |method: &str, status: &str| {
        lines
            .iter()
            .find(|l| l["rpc_method"] == method && l["grpc_status"] == status)
            .cloned()
    };
    let whoami = find("whoami", "0").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(whoami["rpc_service"], GREETER);
    assert_eq!(whoami["route"], "whoami");
    assert_eq!(whoami["upstream_host"], a2.to_string());
    let ut = find("slow", "4").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(ut["reason"], "UT");
    let nr = find("x", "12").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(nr["rpc_service"], "org.example.Nope");
    assert_eq!(nr["reason"], "NR");
    assert!(find("boom", "13").is_some(), "{lines:?}");
    assert!(find("count", "0").is_some(), "{lines:?}");

    // Per-method counts on the RPC metric families: ok = grpc-status 0, anything else an error.
    let calls = |method: &str, outcome: &str| {
        format!("weft_rpc_requests_total{{listener=\"tri\",method=\"{method}\",outcome=\"{outcome}\"}}")
    };
    let greeter = |m: &str| format!("{GREETER}/{m}");
    for (method, outcome, n) in [
        (greeter("whoami"), "ok", 16.0),
        (greeter("sayHello"), "ok", 20.0),
        (greeter("count"), "ok", 11.0),
        (greeter("sum"), "ok", 1.0),
        (greeter("chat"), "ok", 1.0),
        (greeter("slow"), "ok", 1.0),
        (greeter("slow"), "error", 1.0),
        (greeter("boom"), "error", 1.0),
        ("org.example.Nope/x".to_string(), "error", 1.0),
        ("org.example.Dead/x".to_string(), "error", 1.0),
    ] {
        wait_stat(&proxy, &calls(&method, outcome), Duration::from_secs(5), |v| v == n).await;
    }
    assert_eq!(stat(&proxy, &calls(&greeter("whoami"), "error")).await, Some(0.0));
    let s = stats(&proxy).await;
    assert!(
        s.contains(&format!(
            "weft_rpc_request_duration_seconds_count{{listener=\"tri\",method=\"{GREETER}/whoami\"}} 16"
        )),
        "{s}"
    );
}

/// A unary Triple call over `h2`: (grpc-status, the one response message).
async fn triple_call(
    h2: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
    msg: &[u8],
) -> (Option<String>, Vec<u8>) {
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(msg.len() as u32);
    body.put_slice(msg);
    let mut b = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1{path}"))
        .header("content-type", "application/grpc+proto")
        .header("te", "trailers");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        h2.send_request(b.body(Full::new(body.freeze())).unwrap()),
    )
    .await
    .expect("answered within 10 s")
    .expect("response");
    assert_eq!(resp.status(), 200);
    let head_status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    let collected = resp.into_body().collect().await.expect("body");
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_string())
        .or(head_status);
    let data = collected.to_bytes();
    let msg = if data.len() >= 5 {
        data[5..].to_vec()
    } else {
        Vec::new()
    };
    (status, msg)
}

/// consumer → weft (outbound sidecar) → weft (inbound sidecar) → provider: calls, streams, and the
/// inbound sidecar's own timeout reply reaching the consumer through the outbound one unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apache_dubbo_triple_through_two_sidecars() {
    let Some(peer) = peer() else { return };
    let (_p1, a1) = provider(&peer, "p1");
    let inbound = start_proxy(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: inbound
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: local
            domains: ["*"]
            routes:
              - match: {{ grpc: {{ service: {GREETER}, method: slow }} }}
                route: {{ cluster: app, timeout: 300ms }}
              - match: {{ grpc: {{ service: {GREETER} }} }}
                route: {{ cluster: app, timeout: 0s }}
clusters:
  - {{ name: app, protocol: http2, connect_timeout: 1s, endpoints: [{{ address: "{a1}" }}] }}
"#
    ));
    let b = inbound.listener_addr("inbound").unwrap();
    let outbound = start_proxy(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: outbound
    address: 127.0.0.1:0
    http:
      route_config:
        virtual_hosts:
          - name: greeter
            domains: ["*"]
            routes:
              - match: {{ grpc: {{ service: {GREETER} }} }}
                route: {{ cluster: greeter, timeout: 5s }}
clusters:
  - {{ name: greeter, protocol: http2, connect_timeout: 1s, endpoints: [{{ address: "{b}" }}] }}
"#
    ));
    let addr = outbound.listener_addr("outbound").unwrap();
    let out = consume(
        &peer,
        addr,
        serde_json::json!([
            unary("sayHello", "two hops"),
            { "service": GREETER, "method": "count", "kind": "server_stream", "payload": "5" },
            { "service": GREETER, "method": "chat", "kind": "bi_stream", "payloads": ["x", "y"] },
            unary("slow", "2000"),
            { "service": "org.example.Other", "method": "x", "payload": "" },
        ]),
    )
    .await;
    assert_eq!(ok(&out[0]), "p1: hello two hops");
    assert_eq!(
        out[1]["values"],
        serde_json::json!(["p1 1", "p1 2", "p1 3", "p1 4", "p1 5"]),
        "{}",
        out[1]
    );
    assert_eq!(out[2]["values"], serde_json::json!(["p1 x", "p1 y"]), "{}", out[2]);
    let (code, msg) = failed(&out[3]);
    assert_eq!(code, "DEADLINE_EXCEEDED", "the inbound sidecar's timeout: {}", out[3]);
    assert!(msg.contains("(UT)"), "{}", out[3]);
    let (code, msg) = failed(&out[4]);
    assert_eq!(code, "UNIMPLEMENTED", "the outbound sidecar has no route: {}", out[4]);
    assert!(msg.contains("(NR)"), "{}", out[4]);
    // Each hop counted its own local reply: UT at the inbound sidecar, NR at the outbound one.
    assert_eq!(
        stat(
            &inbound,
            "weft_downstream_rq_local_total{listener=\"inbound\",reason=\"UT\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        stat(
            &outbound,
            "weft_downstream_rq_local_total{listener=\"outbound\",reason=\"NR\"}"
        )
        .await,
        Some(1.0)
    );
}
