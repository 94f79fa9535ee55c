//! Large content-length response bodies go from the upstream's socket to the client's through a
//! pipe (splice(2), `weft_upstream::splice`) when both sides are plain HTTP/1.1 over TCP: the
//! bytes arrive exactly, both connections carry the next request, a body cut short by the
//! upstream closes the client's connection, and a client that stops reading is still closed by
//! the stream idle timeout. `weft_proxy::h1_server::spliced_bytes` shows that the pipe was used
//! (the tests run one at a time: the counter is the process's).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_proxy::h1_server::spliced_bytes;
use weft_test_support::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: u64 = 1024 * 1024;

/// A hand-written HTTP/1.1 upstream, keep-alive: `GET /len/N` is answered with N bytes of the
/// test pattern and `content-length: N`. With `cut`, only that many body bytes are sent before
/// the connection is closed. With `urgent_at`, one byte of urgent (out-of-band) data follows the
/// body's first that many bytes (not part of the body: a read skips it). Counts the connections it
/// accepted.
async fn raw_upstream(cut: Option<u64>, urgent_at: Option<u64>) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(head) = read_head(&mut s, &mut buf).await else {
                        return;
                    };
                    let n: u64 = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|p| p.strip_prefix("/len/"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {n}\r\ncontent-type: application/octet-stream\r\n\r\n"
                    );
                    if s.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let end = cut.map_or(n, |c| c.min(n));
                    let mut off = 0;
                    while off < end {
                        let mut len = (end - off).min(100_000);
                        if let Some(at) = urgent_at.filter(|at| (off..off + len).contains(at)) {
                            if at == off {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                let _ = socket2::SockRef::from(&s).send_out_of_band(b"!");
                            } else {
                                len = at - off;
                            }
                        }
                        if s.write_all(&pattern(off, len as usize)).await.is_err() {
                            return;
                        }
                        off += len;
                    }
                    if cut.is_some() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

/// `f`, which must finish within `secs` seconds.
async fn bounded<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {secs}s"))
}

/// Reads one message head (up to the blank line) from `s`, keeping what follows it in `buf`.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            buf.drain(..i + 4);
            return Some(head);
        }
        let mut tmp = [0u8; 4096];
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn proxy(up: SocketAddr, extra: &str) -> (std::sync::Arc<weft_proxy::Server>, SocketAddr) {
    let server = start_proxy(&app_yaml(up, extra));
    let addr = server.listener_addr("web").unwrap();
    (server, addr)
}

/// GET /len/`n` on `c`: the status, and the body as read until its content-length or the end of
/// the connection.
async fn get(c: &mut TcpStream, buf: &mut Vec<u8>, n: u64) -> (u16, Vec<u8>) {
    c.write_all(format!("GET /len/{n} HTTP/1.1\r\nhost: splice.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = bounded(10, "the response head", read_head(c, buf))
        .await
        .expect("a response head");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .trim()
        .parse()
        .unwrap();
    let mut body = std::mem::take(buf);
    let mut tmp = vec![0u8; 256 * 1024];
    while body.len() < len {
        match bounded(20, "the response body", c.read(&mut tmp)).await {
            Ok(0) | Err(_) => break,
            Ok(k) => body.extend_from_slice(&tmp[..k]),
        }
    }
    if body.len() > len {
        *buf = body.split_off(len);
    }
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_spliced_exactly_and_both_connections_carry_on() {
    let _serial = SERIAL.lock().await;
    let (up, conns) = raw_upstream(None, None).await;
    let (_server, addr) = proxy(up, "");
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let before = spliced_bytes();
    // Odd sizes, a small body between the large ones (copied, not spliced), all on one client
    // connection and (keep-alive) one upstream connection.
    for n in [MIB + 7, 1000, 3 * MIB + 1, 20_000] {
        let (status, body) = get(&mut c, &mut buf, n).await;
        assert_eq!(status, 200);
        assert_eq!(body.len() as u64, n, "the whole body, nothing more");
        assert!(
            is_pattern(0, &body),
            "the body differs from what the upstream sent ({n} bytes)"
        );
    }
    assert!(buf.is_empty(), "bytes after the last body");
    let spliced = spliced_bytes() - before;
    assert!(
        spliced >= 4 * MIB - 256 * 1024,
        "the large bodies went through the pipe: {spliced} bytes spliced"
    );
    assert!(spliced <= 4 * MIB + 20_008, "{spliced} bytes spliced");
    assert_eq!(conns.load(Ordering::SeqCst), 1, "the upstream connection was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spliced_body_cut_short_by_the_upstream_closes_the_client_connection() {
    let _serial = SERIAL.lock().await;
    let (up, _) = raw_upstream(Some(300_000), None).await;
    let (_server, addr) = proxy(up, "");
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let before = spliced_bytes();
    let (status, body) = get(&mut c, &mut buf, MIB).await;
    assert_eq!(status, 200);
    assert_eq!(
        body.len(),
        300_000,
        "what the upstream sent, then the end of the connection"
    );
    assert!(is_pattern(0, &body));
    assert!(spliced_bytes() - before >= 200_000, "the body went through the pipe");
    let mut rest = [0u8; 16];
    let n = bounded(5, "the connection's end", c.read(&mut rest)).await.unwrap_or(0);
    assert_eq!(n, 0, "the client's connection is closed, not left waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_spliced_body_is_closed_by_the_stream_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let (up, _) = raw_upstream(None, None).await;
    let (server, addr) = proxy(up, "stream_idle_timeout: 1s");
    let before = spliced_bytes();
    let s = TcpStream::connect(addr).await.unwrap();
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4096);
    let mut s = s;
    s.write_all(format!("GET /len/{} HTTP/1.1\r\nhost: x\r\n\r\n", 256 * MIB).as_bytes())
        .await
        .unwrap();
    let start = Instant::now();
    let v = metric_eventually(
        &server,
        "weft_downstream_rq_idle_timeout_total{listener=\"web\"}",
        Duration::from_secs(8),
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(
        v,
        Some(1.0),
        "the stalled download was closed by the stream idle timeout"
    );
    assert!(start.elapsed() < Duration::from_secs(6), "{:?}", start.elapsed());
    assert!(spliced_bytes() > before, "the body went through the pipe");
    drop(s);
}

/// Urgent data in the middle of a body stops splice at its mark (splice would find nothing to
/// move while the socket holds the rest): the body goes on as frames, which skip the urgent byte,
/// and arrives whole instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_data_in_a_spliced_body_falls_back_to_frames() {
    let _serial = SERIAL.lock().await;
    let (up, _) = raw_upstream(None, Some(200_000)).await;
    let (_server, addr) = proxy(up, "");
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let before = spliced_bytes();
    let (status, body) = get(&mut c, &mut buf, MIB).await;
    assert_eq!(status, 200);
    assert_eq!(body.len() as u64, MIB);
    assert!(is_pattern(0, &body), "the body differs from what the upstream sent");
    assert!(
        spliced_bytes() - before >= 100_000,
        "the body's start went through the pipe"
    );
    // The next request on the same connection is served too.
    let (status, body) = get(&mut c, &mut buf, 1000).await;
    assert_eq!((status, body.len()), (200, 1000));
}
