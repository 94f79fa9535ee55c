//! Idle HTTP/1 connections are parked (hyper's connection dropped, the socket kept) and resumed
//! when the client speaks again: requests across pauses, pipelining, bodies, the header read
//! timeout on idle keep-alive connections, and h2c on fresh connections still work.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_test_support::*;

/// Longer than `weft_proxy::idle::PARK_AFTER`: the connection is parked after such a pause.
const PARK: Duration = Duration::from_millis(1300);

/// Echoes method, path and body length.
async fn echo() -> Upstream {
    upstream(|s| async move { text(200, &format!("{} {} {}", s.method, s.uri.path(), s.body.len())) }).await
}

/// Reads exactly `n` complete HTTP/1.1 responses (Content-Length framed); returns their bodies.
async fn read_responses(s: &mut TcpStream, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while out.len() < n {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + cl {
                assert!(head.starts_with("http/1.1 200"), "{head}");
                out.push(String::from_utf8_lossy(&buf[end + 4..end + 4 + cl]).into_owned());
                buf.drain(..end + 4 + cl);
                continue;
            }
        }
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await;
        let n = r.expect("response in time").expect("read");
        assert!(n > 0, "closed after {} responses", out.len());
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(buf.is_empty(), "unexpected bytes: {:?}", String::from_utf8_lossy(&buf));
    out
}

/// True if the server closes `s` within `wait` (EOF or reset; an error reply first is fine),
/// false if it stays open.
async fn closes_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut b = Vec::new();
    tokio::time::timeout(wait, s.read_to_end(&mut b)).await.is_ok()
}

#[tokio::test]
async fn keepalive_requests_across_idle_pauses_pipelining_and_bodies() {
    let up = echo().await;
    let proxy = start_proxy(&app_yaml(up.addr, ""));
    let addr = proxy.listener_addr("web").unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Nothing sent for a while: the fresh connection is parked before its first request.
    tokio::time::sleep(PARK).await;
    for i in 0..3 {
        s.write_all(format!("GET /a{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_responses(&mut s, 1).await, vec![format!("GET /a{i} 0")]);
        tokio::time::sleep(if i == 1 { PARK } else { Duration::from_millis(50) }).await;
    }
    // A request split across writes with a pause inside the head and inside the body (never
    // parked: not at rest).
    s.write_all(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Le").await.unwrap();
    tokio::time::sleep(PARK).await;
    s.write_all(b"ngth: 10\r\n\r\nhello").await.unwrap();
    tokio::time::sleep(PARK).await;
    s.write_all(b"world").await.unwrap();
    assert_eq!(read_responses(&mut s, 1).await, vec!["POST /b 10"]);
    // Pipelined: three requests in one write, one with a chunked body.
    s.write_all(
        b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n\
POST /p2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
GET /p3 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        read_responses(&mut s, 3).await,
        vec!["GET /p1 0", "POST /p2 3", "GET /p3 0"]
    );
    // Still the same connection, and the smuggling check still sees every head.
    tokio::time::sleep(PARK).await;
    s.write_all(b"POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut resp)).await;
    assert!(
        resp.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    assert_eq!(up.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn many_parked_connections_resume() {
    let up = echo().await;
    let proxy = start_proxy(&app_yaml(up.addr, ""));
    let addr = proxy.listener_addr("web").unwrap();
    let mut conns = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /c{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_responses(&mut s, 1).await, vec![format!("GET /c{i} 0")]);
        conns.push(s);
    }
    tokio::time::sleep(PARK).await;
    for (i, s) in conns.iter_mut().enumerate().rev() {
        s.write_all(format!("GET /d{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(read_responses(s, 1).await, vec![format!("GET /d{i} 0")]);
    }
}

#[tokio::test]
async fn header_timeout_applies_to_a_slow_head_on_a_parked_connection_not_to_idle_ones() {
    let up = echo().await;
    let proxy = start_proxy(&app_yaml(up.addr, "request_headers_timeout: 2s"));
    let addr = proxy.listener_addr("web").unwrap();
    // Idle between requests (parked meanwhile) for longer than the headers timeout: kept.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_responses(&mut s, 1).await, vec!["GET / 0"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_responses(&mut s, 1).await, vec!["GET / 0"]);
    // Parked, then half a head that never completes: closed by the headers timeout.
    tokio::time::sleep(PARK + Duration::from_millis(200)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let t = std::time::Instant::now();
    assert!(
        closes_within(&mut s, Duration::from_secs(5)).await,
        "slow head left open"
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_millis(3500),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn h2c_on_a_fresh_connection_but_not_after_http1() {
    let up = echo().await;
    let proxy = start_proxy(&app_yaml(up.addr, ""));
    let addr = proxy.listener_addr("web").unwrap();
    // A client that connects and waits before its preface (the connection is parked meanwhile).
    let stream = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(PARK).await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let resp = send.send_request(req("GET", "/h2", "x", &[], "")).await.unwrap();
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An HTTP/2 preface after an HTTP/1.1 exchange is not a protocol switch: the connection closes.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_responses(&mut s, 1).await, vec!["GET / 0"]);
    tokio::time::sleep(PARK).await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    assert!(closes_within(&mut s, Duration::from_secs(3)).await);
}
