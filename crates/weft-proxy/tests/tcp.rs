//! The L4 (TCP) proxy observed on the wire: half-close, large bidirectional transfers, idle timeout,
//! connect failover, byte counters and the TCP access log.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use weft_test_support::*;

/// Reads until EOF, then answers "got N bytes" and closes.
async fn count_then_reply(mut s: TcpStream) {
    let mut buf = Vec::new();
    if s.read_to_end(&mut buf).await.is_ok() {
        let _ = s.write_all(format!("got {} bytes", buf.len()).as_bytes()).await;
    }
}

fn l4_yaml(endpoints: &[SocketAddr], tcp_extra: &str) -> String {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("{{ address: \"{a}\" }}")).collect();
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
runtime: {{ concurrency: 1 }}
listeners:
  - name: l4
    address: 127.0.0.1:0
    tcp_proxy: {{ cluster: backend{tcp_extra} }}
clusters:
  - name: backend
    connect_timeout: 1s
    endpoints: [{eps}]
"#,
        eps = eps.join(", ")
    )
}

/// Checks a stream of bytes against the test pattern, chunk by chunk.
struct PatternCheck {
    offset: u64,
    ok: bool,
}

impl PatternCheck {
    fn feed(&mut self, chunk: &[u8]) {
        if self.ok && !is_pattern(self.offset, chunk) {
            self.ok = false;
        }
        self.offset += chunk.len() as u64;
    }
}

async fn read_and_check<R: AsyncReadExt + Unpin>(r: &mut R) -> (u64, bool) {
    let mut check = PatternCheck { offset: 0, ok: true };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return (check.offset, check.ok),
            Ok(n) => check.feed(&buf[..n]),
            Err(_) => return (check.offset, false),
        }
    }
}

#[tokio::test]
async fn half_close_request_then_reply() {
    let up = tcp_server(count_then_reply).await;
    let proxy = start_proxy(&l4_yaml(&[up], ""));
    let addr = proxy.listener_addr("l4").unwrap();

    let mut c = TcpStream::connect(addr).await.unwrap();
    let data = pattern(0, 1 << 20);
    timeout(Duration::from_secs(10), c.write_all(&data))
        .await
        .expect("1 MiB written in time")
        .unwrap();
    // Half-close: we are done sending but keep reading. The upstream only answers after it saw EOF.
    c.shutdown().await.unwrap();
    let mut reply = Vec::new();
    timeout(Duration::from_secs(10), c.read_to_end(&mut reply))
        .await
        .expect("reply and EOF arrive after our write shutdown")
        .expect("clean EOF");
    assert_eq!(String::from_utf8_lossy(&reply), "got 1048576 bytes");
}

#[tokio::test]
async fn bidirectional_32mib_byte_exact() {
    const N: usize = 32 << 20;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, bool)>();
    let up = tcp_server(move |s| {
        let tx = tx.clone();
        async move {
            let (mut r, mut w) = s.into_split();
            let write = async {
                let data = pattern(0, N);
                let _ = w.write_all(&data).await;
                let _ = w.shutdown().await;
            };
            let (_, got) = tokio::join!(write, read_and_check(&mut r));
            let _ = tx.send(got);
        }
    })
    .await;
    let proxy = start_proxy(&l4_yaml(&[up], ""));
    let addr = proxy.listener_addr("l4").unwrap();

    let c = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let write = async {
        let data = pattern(0, N);
        w.write_all(&data).await.expect("client write");
        w.shutdown().await.expect("client shutdown");
    };
    let (_, (client_got, client_ok)) = timeout(Duration::from_secs(120), async {
        tokio::join!(write, read_and_check(&mut r))
    })
    .await
    .expect("both directions finish within 120 s");
    assert_eq!(client_got, N as u64, "bytes the client received from the upstream");
    assert!(client_ok, "client received the exact pattern");
    let (server_got, server_ok) = timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("upstream finished")
        .unwrap();
    assert_eq!(server_got, N as u64, "bytes the upstream received from the client");
    assert!(server_ok, "upstream received the exact pattern");
}

#[tokio::test]
async fn idle_timeout_closes_silent_session_only() {
    let up = tcp_server(tcp_echo).await;
    let proxy = start_proxy(&l4_yaml(&[up], ", idle_timeout: 300ms"));
    let addr = proxy.listener_addr("l4").unwrap();

    let silent = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 16];
        let r = timeout(Duration::from_secs(3), s.read(&mut buf)).await;
        let elapsed = start.elapsed();
        match r {
            Err(_) => panic!("silent session still open after 3 s"),
            Ok(Ok(n)) => assert_eq!(n, 0, "silent session got data instead of EOF"),
            Ok(Err(_)) => {} // a reset is a close too
        }
        elapsed
    };
    let active = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        let mut i = 0u8;
        // Bytes every 100 ms for 1.2 s: each must be echoed.
        while start.elapsed() < Duration::from_millis(1200) && i < 20 {
            s.write_all(&[b'a' + i]).await.expect("active session write");
            let mut b = [0u8; 1];
            timeout(Duration::from_secs(2), s.read_exact(&mut b))
                .await
                .expect("echo in time")
                .expect("active session still open");
            assert_eq!(b[0], b'a' + i);
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(i >= 8, "active session made only {i} round trips");
        // Then it goes silent: now it is closed too.
        let quiet = Instant::now();
        let mut b = [0u8; 1];
        let r = timeout(Duration::from_secs(3), s.read(&mut b)).await;
        assert!(
            !matches!(r, Err(_) | Ok(Ok(1..))),
            "session that went silent was not closed: {r:?}"
        );
        quiet.elapsed()
    };
    let (silent_after, active_quiet_after) = tokio::join!(silent, active);
    assert!(
        silent_after >= Duration::from_millis(250) && silent_after <= Duration::from_millis(1200),
        "silent session closed after {silent_after:?}, expected ~300 ms"
    );
    assert!(
        active_quiet_after <= Duration::from_millis(1200),
        "active session closed {active_quiet_after:?} after it went silent"
    );
}

#[tokio::test]
async fn connect_failure_tries_another_host() {
    let live = tcp_server(tcp_echo).await;
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = start_proxy(&l4_yaml(&[dead, live], ""));
    let addr = proxy.listener_addr("l4").unwrap();
    for i in 0..10 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let msg = format!("ping {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("connection {i}: no answer in time"))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(String::from_utf8_lossy(&got), msg, "connection {i} went through");
    }
    // Round robin over two hosts: the dead one was picked (and failed over) at least once.
    let fails = metric_eventually(
        &proxy,
        "weft_upstream_cx_connect_fail_total{cluster=\"backend\"}",
        Duration::from_secs(2),
        |v| v >= 1.0,
    )
    .await;
    assert!(fails.unwrap_or(0.0) >= 1.0, "connect failures counted: {fails:?}");
}

#[tokio::test]
async fn all_hosts_dead_closes_client_promptly() {
    let dir = TempDir::new("tcp-dead");
    let log = dir.join("access.log");
    let dead1: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dead2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = start_proxy(&l4_yaml(
        &[dead1, dead2],
        &format!(", access_log: {{ path: \"{}\" }}", log.display()),
    ));
    let addr = proxy.listener_addr("l4").unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let r = timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "client connection not closed within 3 s");
    assert!(buf.is_empty(), "no data is sent when no upstream connection was made");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "closed after {:?}",
        start.elapsed()
    );
    let lines = json_lines(&log, 1, Duration::from_secs(3)).await;
    assert_eq!(lines.len(), 1, "one access log line: {lines:?}");
    let l = &lines[0];
    assert_eq!(l["reason"], "UF", "{l}");
    // The endpoint last tried, so that the line explains the failure.
    let tried = l["upstream_host"].as_str().unwrap_or_default();
    assert!(tried == dead1.to_string() || tried == dead2.to_string(), "{l}");
    assert_eq!(l["bytes_sent"], 0, "{l}");
    assert_eq!(l["bytes_received"], 0, "{l}");
}

#[tokio::test]
async fn byte_counters_and_access_log() {
    let dir = TempDir::new("tcp-log");
    let log = dir.join("access.log");
    let up = tcp_server(count_then_reply).await;
    let proxy = start_proxy(&l4_yaml(
        &[up],
        &format!(", access_log: {{ path: \"{}\" }}", log.display()),
    ));
    let addr = proxy.listener_addr("l4").unwrap();

    const SENT: usize = 100_000;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let client_local = c.local_addr().unwrap();
    c.write_all(&pattern(0, SENT)).await.unwrap();
    c.shutdown().await.unwrap();
    let mut reply = Vec::new();
    timeout(Duration::from_secs(10), c.read_to_end(&mut reply))
        .await
        .expect("reply in time")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&reply), format!("got {SENT} bytes"));
    let reply_len = reply.len() as f64;

    let tx = metric_eventually(
        &proxy,
        "weft_upstream_cx_tx_bytes_total{cluster=\"backend\"}",
        Duration::from_secs(3),
        |v| v == SENT as f64,
    )
    .await;
    assert_eq!(tx, Some(SENT as f64), "bytes sent upstream");
    let rx = metric(
        &admin(&proxy, "/stats/prometheus").await.text(),
        "weft_upstream_cx_rx_bytes_total{cluster=\"backend\"}",
    );
    assert_eq!(rx, Some(reply_len), "bytes received from upstream");

    let lines = json_lines(&log, 1, Duration::from_secs(3)).await;
    assert_eq!(lines.len(), 1, "one line per session: {lines:?}");
    let l = &lines[0];
    assert_eq!(l["protocol"], "tcp", "{l}");
    assert_eq!(l["listener"], "l4", "{l}");
    assert_eq!(l["upstream_cluster"], "backend", "{l}");
    assert_eq!(l["reason"], "-", "{l}");
    assert_eq!(l["upstream_host"], up.to_string(), "{l}");
    assert_eq!(l["bytes_received"], SENT as u64, "bytes from the client: {l}");
    assert_eq!(l["bytes_sent"], reply.len() as u64, "bytes to the client: {l}");
    assert_eq!(l["downstream_remote_address"], client_local.to_string(), "{l}");
}
