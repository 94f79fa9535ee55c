//! Large and streaming bodies through weft, never buffered whole, and protocol translation between
//! HTTP/1.1 and HTTP/2 on either side.
//!
//! "Not buffered whole" is checked by a gate: the sending side refuses to produce the last quarter
//! of a body until the receiving side has seen a good part of it. A proxy that collects the whole
//! body before forwarding deadlocks on the gate, which the test reports as a failure.

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_proxy::Server;
use weft_test_support::*;

const MIB: u64 = 1024 * 1024;
const BIG: u64 = 64 * MIB;
const CHUNK: usize = 256 * 1024;
/// The sender holds back everything from this offset on...
const GATE_AT: u64 = 48 * MIB;
/// ...until the receiver has seen at least this much.
const GATE_NEEDS: u64 = 16 * MIB;

fn proxy(up: SocketAddr, protocol: &str) -> (Arc<Server>, SocketAddr) {
    let yaml = format!(
        r#"
runtime: {{ concurrency: 1 }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http:
      codec: auto
      route_config:
        virtual_hosts:
          - name: all
            domains: ["*"]
            routes:
              - match: {{ prefix: / }}
                route: {{ cluster: up, timeout: 120s }}
clusters:
  - name: up
    protocol: {protocol}
    endpoints: [{{ address: "{up}" }}]
"#
    );
    let server = start_proxy(&yaml);
    let addr = server.listener_addr("web").unwrap();
    (server, addr)
}

async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out after {secs}s"))
}

/// Waits (bounded) until `counter >= needed`; returns false if it never got there.
async fn gate(counter: &AtomicU64, needed: u64) -> bool {
    for _ in 0..3000 {
        if counter.load(Ordering::SeqCst) >= needed {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A body of `total` pattern bytes in CHUNK pieces that holds back everything from GATE_AT on until
/// `peer_seen >= GATE_NEEDS`. Sets `gate_failed` if it had to give up waiting.
fn gated_pattern_body(total: u64, peer_seen: Arc<AtomicU64>, gate_failed: Arc<AtomicBool>) -> StreamBody<FrameStream> {
    let s = futures_util::stream::unfold(0u64, move |offset| {
        let (peer_seen, gate_failed) = (peer_seen.clone(), gate_failed.clone());
        async move {
            if offset >= total {
                return None;
            }
            if offset == GATE_AT && !gate(&peer_seen, GATE_NEEDS).await {
                gate_failed.store(true, Ordering::SeqCst);
            }
            let n = (total - offset).min(CHUNK as u64) as usize;
            Some((Ok(Frame::data(pattern(offset, n))), offset + n as u64))
        }
    });
    StreamBody::new(Box::pin(s))
}

type FrameStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync>>;

/// Reads a body frame by frame, checking the pattern as it goes and publishing progress.
/// Returns (bytes, all bytes matched the pattern).
async fn count_pattern<B>(mut body: B, progress: &AtomicU64) -> (u64, bool)
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let (mut n, mut ok) = (0u64, true);
    while let Some(f) = body.frame().await {
        let f = f.expect("body frame");
        if let Some(d) = f.data_ref() {
            ok &= is_pattern(n, d);
            n += d.len() as u64;
            progress.store(n, Ordering::SeqCst);
        }
    }
    (n, ok)
}

async fn h2_connect<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// An upstream that reads the request body as a stream, checks the pattern, and answers
/// "<bytes> <ok>" with the version it saw in `x-version`.
async fn counting_upstream(received: Arc<AtomicU64>) -> Upstream {
    streaming_upstream(move |req: Request<hyper::body::Incoming>| {
        let received = received.clone();
        async move {
            let version = format!("{:?}", req.version());
            let (n, ok) = count_pattern(req.into_body(), &received).await;
            Response::builder()
                .header("x-version", version)
                .body(any_body(Full::new(Bytes::from(format!("{n} {ok}")))))
                .unwrap()
        }
    })
    .await
}

async fn big_upload(down: Version, up_protocol: &str) {
    let received = Arc::new(AtomicU64::new(0));
    let up = counting_upstream(received.clone()).await;
    let (_server, addr) = proxy(up.addr, up_protocol);
    let gate_failed = Arc::new(AtomicBool::new(false));
    let body = gated_pattern_body(BIG, received.clone(), gate_failed.clone());
    let req = Request::builder()
        .method("PUT")
        .uri("http://upload.test/blob")
        .header("host", "upload.test")
        .body(body)
        .unwrap();
    let (resp, _conn) = within(120, "64 MiB upload", async {
        let mut req = req;
        if down == Version::HTTP_2 {
            req.headers_mut().remove("host");
            let mut c = h2_connect(addr).await;
            (c.send_request(req).await, Box::new(c) as Box<dyn std::any::Any + Send>)
        } else {
            *req.uri_mut() = "/blob".parse().unwrap();
            let mut c = h1_connect(addr).await;
            (c.send_request(req).await, Box::new(c) as Box<dyn std::any::Any + Send>)
        }
    })
    .await;
    let resp = resp.expect("upload response");
    assert_eq!(resp.status(), 200);
    let body = within(30, "upload answer", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        !gate_failed.load(Ordering::SeqCst),
        "the upstream had not received {GATE_NEEDS} bytes while the client held back the rest: \
         the request body is being buffered whole (upstream saw {})",
        received.load(Ordering::SeqCst)
    );
    assert_eq!(String::from_utf8_lossy(&body), format!("{BIG} true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_64mib_streams_to_upstream() {
    big_upload(Version::HTTP_11, "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_64mib_streams_h2_to_h2() {
    big_upload(Version::HTTP_2, "http2").await;
}

async fn big_download(down: Version, up_protocol: &str) {
    let client_seen = Arc::new(AtomicU64::new(0));
    let gate_failed = Arc::new(AtomicBool::new(false));
    let (cs, gf) = (client_seen.clone(), gate_failed.clone());
    let up = streaming_upstream(move |_req| {
        let (cs, gf) = (cs.clone(), gf.clone());
        async move {
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(any_body(gated_pattern_body(BIG, cs, gf)))
                .unwrap()
        }
    })
    .await;
    let (_server, addr) = proxy(up.addr, up_protocol);
    let (resp, _conn) = within(30, "download response headers", async {
        if down == Version::HTTP_2 {
            let r = Request::get("http://download.test/big")
                .body(Full::<Bytes>::default())
                .unwrap();
            let mut c = h2_connect(addr).await;
            (c.send_request(r).await, Box::new(c) as Box<dyn std::any::Any + Send>)
        } else {
            let mut c = h1_connect(addr).await;
            let r = req("GET", "/big", "download.test", &[], "");
            (c.send_request(r).await, Box::new(c) as Box<dyn std::any::Any + Send>)
        }
    })
    .await;
    let resp = resp.expect("download response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), down);
    let (n, ok) = within(120, "64 MiB download", count_pattern(resp.into_body(), &client_seen)).await;
    assert!(
        !gate_failed.load(Ordering::SeqCst),
        "the client had not received {GATE_NEEDS} bytes while the upstream held back the rest: \
         the response body is being buffered whole"
    );
    assert_eq!(n, BIG);
    assert!(ok, "the response body differs from what the upstream sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_64mib_streams_to_client() {
    big_download(Version::HTTP_11, "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_64mib_streams_h2_to_h2() {
    big_download(Version::HTTP_2, "http2").await;
}

/// The upstream answers at once, then sends a chunk every 50 ms (10 chunks); the client must see
/// each chunk as it is sent, not all at the end.
async fn slow_trickle(down: Version, up_protocol: &str) {
    let sent_at: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let s2 = sent_at.clone();
    let up = streaming_upstream(move |_req| {
        let sent_at = s2.clone();
        async move {
            let s = futures_util::stream::unfold(0u32, move |i| {
                let sent_at = sent_at.clone();
                async move {
                    if i == 10 {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    sent_at.lock().push(Instant::now());
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk {i}\n")))),
                        i + 1,
                    ))
                }
            });
            Response::builder()
                .header("content-type", "text/plain")
                .body(any_body(StreamBody::new(s)))
                .unwrap()
        }
    })
    .await;
    let (_server, addr) = proxy(up.addr, up_protocol);
    // Warm the connection so that connection setup does not count against the 300 ms.
    let start;
    let resp = if down == Version::HTTP_2 {
        let mut c = h2_connect::<Full<Bytes>>(addr).await;
        start = Instant::now();
        let r = Request::get("http://trickle.test/t").body(Full::default()).unwrap();
        within(10, "trickle headers", c.send_request(r)).await.unwrap()
    } else {
        let mut c = h1_connect::<Full<Bytes>>(addr).await;
        start = Instant::now();
        within(
            10,
            "trickle headers",
            c.send_request(req("GET", "/t", "trickle.test", &[], "")),
        )
        .await
        .unwrap()
    };
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let mut first_at = None;
    for _ in 0..100 {
        let Some(f) = within(10, "trickle chunk", body.frame()).await else {
            break;
        };
        if let Some(d) = f.expect("frame").data_ref() {
            if !d.is_empty() {
                first_at.get_or_insert_with(Instant::now);
            }
            got.extend_from_slice(d);
        }
    }
    let expected: String = (0..10).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&got), expected);
    let first_at = first_at.unwrap();
    let first = first_at - start;
    assert!(
        first < Duration::from_millis(300),
        "first chunk took {first:?} after the request"
    );
    let sent = sent_at.lock().clone();
    assert_eq!(sent.len(), 10);
    assert!(
        first_at < sent[9],
        "the first chunk arrived only after the last one was sent: the response was buffered"
    );
}

#[tokio::test]
async fn slow_trickle_h1_reaches_client_as_sent() {
    slow_trickle(Version::HTTP_11, "http1").await;
}

#[tokio::test]
async fn slow_trickle_h2_reaches_client_as_sent() {
    slow_trickle(Version::HTTP_2, "http2").await;
}

#[tokio::test]
async fn slow_trickle_h2_down_h1_up() {
    slow_trickle(Version::HTTP_2, "http1").await;
}

#[tokio::test]
async fn http1_downstream_to_http2_upstream() {
    let up = upstream(|s| async move {
        let mut r = text(200, &format!("got {} bytes", s.body.len()));
        r.headers_mut().insert("x-up", "yes".parse().unwrap());
        r
    })
    .await;
    let (_server, addr) = proxy(up.addr, "http2");
    let mut c = H1Client::connect(addr).await;
    let got = within(
        10,
        "h1 → h2",
        c.send(req(
            "POST",
            "/v1/items?q=1",
            "api.example:8080",
            &[("x-custom", "c")],
            "payload",
        )),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "got 7 bytes");
    assert_eq!(got.header("x-up"), Some("yes"));
    let seen = up.last();
    assert_eq!(
        seen.version,
        Version::HTTP_2,
        "the upstream must be spoken to in HTTP/2"
    );
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.uri.authority().map(|a| a.as_str()),
        Some("api.example:8080"),
        "{:?}",
        seen.uri
    );
    assert_eq!(seen.uri.path_and_query().map(|p| p.as_str()), Some("/v1/items?q=1"));
    assert_eq!(seen.headers["x-custom"], "c");
    assert_eq!(&seen.body[..], b"payload");
    // Connection-specific headers are not allowed in HTTP/2.
    for h in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
        assert!(!seen.headers.contains_key(h), "{h} sent upstream over h2");
    }
    // A second request reuses the one upstream HTTP/2 connection.
    let again = within(10, "h1 → h2 again", c.get("/again")).await;
    assert_eq!(again.status, 200);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http2_downstream_to_http1_upstream() {
    let up = upstream(|s| async move { text(200, &format!("got {} bytes", s.body.len())) }).await;
    let (_server, addr) = proxy(up.addr, "http1");
    let mut c = h2_connect::<Full<Bytes>>(addr).await;
    let r = Request::post("http://api.example:8080/v1/items?q=1")
        .header("x-custom", "c")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let resp = within(10, "h2 → h1", c.send_request(r)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"got 7 bytes");
    let seen = up.last();
    assert_eq!(
        seen.version,
        Version::HTTP_11,
        "the upstream must be spoken to in HTTP/1.1"
    );
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.headers["host"], "api.example:8080", ":authority becomes Host");
    assert_eq!(seen.uri, "/v1/items?q=1");
    assert_eq!(seen.headers["x-custom"], "c");
    assert_eq!(&seen.body[..], b"payload");
}

/// Response trailers from an HTTP/2 upstream reach an HTTP/2 client.
#[tokio::test]
async fn h2_response_trailers_pass_through() {
    let up = streaming_upstream(|_req| async move {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"part one, "))),
            Ok(Frame::data(Bytes::from_static(b"part two"))),
            Ok(Frame::trailers(trailers)),
        ];
        Response::new(any_body(StreamBody::new(futures_util::stream::iter(frames))))
    })
    .await;
    let (_server, addr) = proxy(up.addr, "http2");
    let mut c = h2_connect::<Full<Bytes>>(addr).await;
    let r = Request::get("http://t.test/x").body(Full::default()).unwrap();
    let resp = within(10, "trailers", c.send_request(r)).await.unwrap();
    let collected = within(10, "trailers body", resp.into_body().collect()).await.unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(&collected.to_bytes()[..], b"part one, part two");
    assert_eq!(
        trailers
            .as_ref()
            .and_then(|t| t.get("x-checksum"))
            .map(|v| v.as_bytes()),
        Some(&b"abc123"[..])
    );
}

/// An HTTP/1.1 upstream that sends response headers and part of the body, then closes the
/// connection. The response is cut short; the client must see an error, never a clean end.
async fn truncating_upstream(head: &'static str, partial: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                // Read the request head (bounded) before answering.
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = Vec::new();
                for _ in 0..64 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(partial).await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Dropping the socket closes it mid-body.
            });
        }
    });
    addr
}

async fn truncated_response_is_an_error(down: Version, head: &'static str, partial: &'static [u8]) {
    let up = truncating_upstream(head, partial).await;
    let (_server, addr) = proxy(up, "http1");
    let result: Result<Bytes, String> = if down == Version::HTTP_2 {
        let mut c = h2_connect::<Full<Bytes>>(addr).await;
        let r = Request::get("http://trunc.test/x").body(Full::default()).unwrap();
        match within(10, "truncated (h2)", c.send_request(r)).await {
            Err(e) => Err(e.to_string()),
            Ok(resp) => within(10, "truncated body (h2)", resp.into_body().collect())
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| e.to_string()),
        }
    } else {
        let mut c = h1_connect::<Full<Bytes>>(addr).await;
        match within(
            10,
            "truncated (h1)",
            c.send_request(req("GET", "/x", "trunc.test", &[], "")),
        )
        .await
        {
            Err(e) => Err(e.to_string()),
            Ok(resp) => within(10, "truncated body (h1)", resp.into_body().collect())
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| e.to_string()),
        }
    };
    if let Ok(body) = result {
        panic!(
            "a response cut short by the upstream reached the client as complete ({} bytes)",
            body.len()
        );
    }
}

const TRUNC_CL: &str = "HTTP/1.1 200 OK\r\ncontent-length: 100000\r\ncontent-type: text/plain\r\n\r\n";
const TRUNC_CHUNKED: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n";

#[tokio::test]
async fn truncated_content_length_response_fails_h1_client() {
    truncated_response_is_an_error(Version::HTTP_11, TRUNC_CL, &[b'a'; 1000]).await;
}

#[tokio::test]
async fn truncated_content_length_response_fails_h2_client() {
    truncated_response_is_an_error(Version::HTTP_2, TRUNC_CL, &[b'a'; 1000]).await;
}

#[tokio::test]
async fn truncated_chunked_response_fails_h1_client() {
    truncated_response_is_an_error(Version::HTTP_11, TRUNC_CHUNKED, b"5\r\nhello\r\n").await;
}

#[tokio::test]
async fn truncated_chunked_response_fails_h2_client() {
    truncated_response_is_an_error(Version::HTTP_2, TRUNC_CHUNKED, b"5\r\nhello\r\n").await;
}

type BodyAndTrailers = (Bytes, Option<http::HeaderMap>);

/// Request trailers from an HTTP/2 client reach an HTTP/2 upstream.
#[tokio::test]
async fn h2_request_trailers_pass_through() {
    let seen: Arc<Mutex<Option<BodyAndTrailers>>> = Arc::default();
    let s2 = seen.clone();
    let up = streaming_upstream(move |req: Request<hyper::body::Incoming>| {
        let seen = s2.clone();
        async move {
            let c = req.into_body().collect().await.unwrap();
            let t = c.trailers().cloned();
            *seen.lock() = Some((c.to_bytes(), t));
            Response::new(any_body(Full::new(Bytes::from_static(b"ok"))))
        }
    })
    .await;
    let (_server, addr) = proxy(up.addr, "http2");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", "42".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"body"))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut c = h2_connect(addr).await;
    let r = Request::post("http://t.test/up")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = within(10, "request trailers", c.send_request(r)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (body, t) = seen.lock().clone().expect("the upstream got the request");
    assert_eq!(&body[..], b"body");
    assert_eq!(
        t.as_ref().and_then(|t| t.get("x-sum")).map(|v| v.as_bytes()),
        Some(&b"42"[..])
    );
}

#[tokio::test]
async fn slow_trickle_h1_down_h2_up() {
    slow_trickle(Version::HTTP_11, "http2").await;
}
