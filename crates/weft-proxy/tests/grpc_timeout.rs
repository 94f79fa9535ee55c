//! `grpc-timeout` against a real grpcio server (interop/grpc_backend.py, `Slow`): a gRPC request's
//! deadline shortens the route timeout and never lengthens it, unless the route sets
//! `max_grpc_timeout` (Envoy's), and weft's own deadline reply is grpc-status 4
//! (DEADLINE_EXCEEDED). The client is a raw HTTP/2 client so that it does not enforce the deadline
//! itself: what answers is weft.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_test_support::peers::{interop_dir, interop_peer, ChildGuard};
use weft_test_support::*;

fn backend() -> Option<(ChildGuard, SocketAddr)> {
    let py = interop_peer(".venv-grpc")?.join("bin/python");
    let mut child = Command::new(py)
        .arg(interop_dir().join("grpc_backend.py"))
        .args(["--name", "alpha"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the grpcio backend");
    let stdout = child.stdout.take().unwrap();
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("backend said {line:?}"));
    Some((guard, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// One listener per route timeout policy, all to the grpcio backend.
fn yaml(up: SocketAddr) -> String {
    let listener = |name: &str, route: &str| {
        format!(
            r#"
  - name: {name}
    address: 127.0.0.1:0
    http:
      codec: auto
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: grpc, {route} }}"#
        )
    };
    format!(
        r#"
runtime: {{ concurrency: 1 }}
listeners:{}{}{}{}
clusters:
  - name: grpc
    protocol: http2
    endpoints: [{{ address: "{up}" }}]
"#,
        listener("plain", "timeout: 5s"),
        listener("short", "timeout: 300ms"),
        listener("unbounded", "timeout: 300ms, max_grpc_timeout: 0s"),
        listener("capped", "timeout: 300ms, max_grpc_timeout: 1s"),
    )
}

struct Answer {
    status: String,
    message: String,
    body: String,
    took: Duration,
}

/// Calls `/weft.Echo/Slow` (the backend sleeps `sleep_ms`) with an optional `grpc-timeout`.
async fn slow(addr: SocketAddr, grpc_timeout: Option<&str>, sleep_ms: u64) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let msg = sleep_ms.to_string();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(msg.len() as u32);
    frame.put_slice(msg.as_bytes());
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/weft.Echo/Slow"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = grpc_timeout {
        req = req.header("grpc-timeout", t);
    }
    let req = req.body(Full::new(frame.freeze())).unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("an answer within 10s")
        .unwrap();
    let head = resp.headers().clone();
    let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("a body within 10s")
        .unwrap();
    let took = started.elapsed();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let mut data: Bytes = collected.to_bytes();
    let body = if data.len() >= 5 {
        data.advance(5);
        String::from_utf8_lossy(&data).to_string()
    } else {
        String::new()
    };
    let get = |k: &str| {
        trailers
            .get(k)
            .or_else(|| head.get(k))
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    Answer {
        status: get("grpc-status"),
        message: get("grpc-message"),
        body,
        took,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_shortens_the_route_timeout() {
    let Some((_backend, up)) = backend() else { return };
    let p = start_proxy(&yaml(up));
    let at = |l: &str| p.listener_addr(l).unwrap();

    // No grpc-timeout: the route's 5s applies, the backend sees no deadline.
    let a = slow(at("plain"), None, 50).await;
    assert_eq!(
        (a.status.as_str(), a.body.as_str()),
        ("0", "alpha:none"),
        "{}",
        a.message
    );

    // A deadline within the route's: forwarded as sent (the backend sees it), call succeeds.
    let a = slow(at("plain"), Some("2S"), 50).await;
    assert_eq!(a.status, "0", "{}", a.message);
    let left: u64 = a.body.strip_prefix("alpha:").and_then(|v| v.parse().ok()).unwrap();
    assert!((1500..=2000).contains(&left), "the backend's deadline: {left}ms");

    // A 300ms deadline under a 5s route: weft answers DEADLINE_EXCEEDED at ~300ms.
    let a = slow(at("plain"), Some("300m"), 3000).await;
    assert_eq!(a.status, "4", "DEADLINE_EXCEEDED: {}", a.message);
    assert!(
        a.took >= Duration::from_millis(280) && a.took < Duration::from_millis(2000),
        "{:?}",
        a.took
    );

    // A 10s deadline never lengthens the route's 300ms.
    let a = slow(at("short"), Some("10S"), 1500).await;
    assert_eq!(a.status, "4", "{}", a.message);
    assert!(a.took < Duration::from_millis(1200), "{:?}", a.took);

    // max_grpc_timeout: 0s: the request's deadline replaces the route's (here longer).
    let a = slow(at("unbounded"), Some("3S"), 800).await;
    assert_eq!(
        (a.status.as_str(), a.body.get(..6)),
        ("0", Some("alpha:")),
        "{}",
        a.message
    );
    assert!(a.took >= Duration::from_millis(800), "{:?}", a.took);
    // ... and without grpc-timeout the route's own timeout still applies.
    let a = slow(at("unbounded"), None, 1500).await;
    assert_eq!(a.status, "4", "{}", a.message);

    // max_grpc_timeout: 1s caps a 5s deadline at 1s.
    let a = slow(at("capped"), Some("5S"), 3000).await;
    assert_eq!(a.status, "4", "{}", a.message);
    assert!(
        a.took >= Duration::from_millis(900) && a.took < Duration::from_millis(2500),
        "{:?}",
        a.took
    );

    // A malformed grpc-timeout is ignored by weft and forwarded as is: grpcio refuses it itself
    // (INTERNAL, naming the header), not weft with a deadline.
    let a = slow(at("plain"), Some("1.5S"), 50).await;
    assert_eq!(a.status, "13", "{}", a.message);
    assert!(a.message.contains("grpc-timeout"), "{}", a.message);
}
