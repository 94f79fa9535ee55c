//! `https://` targets against an in-test hyper server over tokio-rustls on
//! 127.0.0.1, with a self-signed certificate generated at test time.
//!
//! A handshake that fails (wrong `--sni`, untrusted certificate, no common
//! ALPN protocol) fails the run early, before the clock starts: the
//! reachability probe is a full TLS handshake.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use common::args;
use weft_bench::Protocol;

/// A self-signed certificate for `localhost` and 127.0.0.1, its key, and
/// its PEM in a temporary file (removed on drop).
struct TestCert {
    der: CertificateDer<'static>,
    key: Vec<u8>,
    pem_path: PathBuf,
}

impl TestCert {
    fn new() -> TestCert {
        static N: AtomicU64 = AtomicU64::new(0);
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("generate certificate");
        let pem_path = std::env::temp_dir().join(format!(
            "weft-bench-tls-{}-{}.pem",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&pem_path, ck.cert.pem()).expect("write PEM");
        TestCert {
            der: ck.cert.der().clone(),
            key: ck.signing_key.serialize_der(),
            pem_path,
        }
    }

    fn cacert(&self) -> String {
        self.pem_path.display().to_string()
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pem_path);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// 200 "hello".
    Hello,
    /// 200 "hello", HTTP/1.1 without keep-alive: a new connection per request.
    HelloClose,
    /// gRPC: echo the request message, then grpc-status 0.
    Grpc,
}

/// TLS server on its own thread and runtime; stopped on drop.
struct TlsServer {
    addr: SocketAddr,
    /// Requests served.
    hits: Arc<AtomicU64>,
    /// TCP connections accepted.
    accepted: Arc<AtomicU64>,
    /// Completed handshakes per ALPN outcome: h2, http/1.1, none.
    h2_conns: Arc<AtomicU64>,
    h1_conns: Arc<AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tls_server(cert: &TestCert, alpn: &[&[u8]], reply: Reply) -> TlsServer {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.clone())),
        )
        .expect("server certificate");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let hits = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let h2_conns = Arc::new(AtomicU64::new(0));
    let h1_conns = Arc::new(AtomicU64::new(0));
    let (hits2, accepted2, h2c, h1c) = (hits.clone(), accepted.clone(), h2_conns.clone(), h1_conns.clone());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                    _ = &mut rx => break,
                };
                accepted2.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let hits = hits2.clone();
                let (h2c, h1c) = (h2c.clone(), h1c.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let is_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let svc = service_fn(move |req| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        async move { Ok::<_, Infallible>(respond(req, reply).await) }
                    });
                    let io = TokioIo::new(stream);
                    if is_h2 {
                        h2c.fetch_add(1, Ordering::Relaxed);
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        h1c.fetch_add(1, Ordering::Relaxed);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .keep_alive(reply != Reply::HelloClose)
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
    });
    TlsServer {
        addr: addr_rx.recv().unwrap(),
        hits,
        accepted,
        h2_conns,
        h1_conns,
        shutdown: Some(tx),
        thread: Some(thread),
    }
}

async fn respond(req: Request<Incoming>, reply: Reply) -> Response<BoxBody<Bytes, Infallible>> {
    let path_ok = req.uri().path() == "/test.Echo/Say";
    let grpc_ct = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/grpc");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    match reply {
        Reply::Hello | Reply::HelloClose => Response::new(Full::new(Bytes::from_static(b"hello")).boxed()),
        Reply::Grpc => {
            let (code, msg) = match weft_bench::grpc::decode_frames(&body) {
                Ok(f) if path_ok && grpc_ct && f.len() == 1 => (0u32, weft_bench::grpc::encode_frame(f[0].payload)),
                _ => (3, Bytes::new()),
            };
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from(code));
            let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                vec![Ok(Frame::data(msg)), Ok(Frame::trailers(trailers))];
            let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            r
        }
    }
}

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_cacert_negotiates_h2() {
    let cert = TestCert::new();
    let server = tls_server(&cert, BOTH, Reply::Hello);
    let r = weft_bench::run_bench(&args(&format!(
        "https://localhost:{}/hello -c 2 --streams 3 -n 300 --cacert {}",
        server.addr.port(),
        cert.cacert()
    )))
    .await
    .unwrap();
    assert_eq!(r.protocol, Protocol::Http2);
    assert_eq!((r.connections, r.streams), (2, 3));
    assert_eq!(r.requests, 300);
    assert_eq!(r.successes, 300, "{:?}", r.errors);
    assert_eq!(r.bytes_received, 300 * 5);
    assert_eq!(server.hits.load(Ordering::Relaxed), 300);
    let tls = r.tls.as_ref().expect("tls report");
    assert_eq!(tls.alpn.as_deref(), Some("h2"));
    assert_eq!(tls.alpn_offered, ["h2", "http/1.1"]);
    assert_eq!(tls.version, "TLSv1.3");
    assert_eq!(tls.server_name, "localhost");
    assert!(tls.verified);
    // Two connections opened for the run; the probe is not counted.
    assert_eq!(tls.handshake.count, 2);
    assert!(tls.handshake.mean_us > 0.0 && tls.handshake.p99_us >= 1);
    assert_eq!(tls.handshake_failures, 0);
    assert_eq!(server.h2_conns.load(Ordering::Relaxed), 3);

    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["protocol"], "h2");
    assert_eq!(v["tls"]["alpn"], "h2");
    assert_eq!(v["tls"]["handshake"]["count"], 2);
    assert!(v["tls"]["handshake"]["mean_us"].is_f64());
    assert!(v["tls"]["handshake"]["p99_us"].is_u64());

    // An IP-literal host is verified against the certificate's IP SAN.
    let r = weft_bench::run_bench(&args(&format!(
        "https://{}/ -c 1 -n 20 --cacert {}",
        server.addr,
        cert.cacert()
    )))
    .await
    .unwrap();
    assert_eq!((r.protocol, r.successes), (Protocol::Http2, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_flag_negotiates_http1() {
    let cert = TestCert::new();
    let server = tls_server(&cert, BOTH, Reply::Hello);
    let r = weft_bench::run_bench(&args(&format!(
        "https://localhost:{}/ --http1 -c 2 -n 100 --cacert {} --rate 400",
        server.addr.port(),
        cert.cacert()
    )))
    .await
    .unwrap();
    assert_eq!(r.protocol, Protocol::Http1);
    assert_eq!(r.requests, 100);
    assert_eq!(r.successes, 100, "{:?}", r.errors);
    let tls = r.tls.as_ref().unwrap();
    assert_eq!(tls.alpn.as_deref(), Some("http/1.1"));
    assert_eq!(tls.alpn_offered, ["http/1.1"]);
    assert_eq!(tls.handshake.count, 2);
    assert_eq!(server.h1_conns.load(Ordering::Relaxed), 3);
    assert_eq!(server.h2_conns.load(Ordering::Relaxed), 0);
    assert_eq!(serde_json::to_value(&r).unwrap()["protocol"], "http/1.1");

    // --streams > 1 cannot work once HTTP/1.1 is chosen.
    let e = weft_bench::run_bench(&args(&format!(
        "https://localhost:{}/ --http1 --streams 2 -n 10 --cacert {}",
        server.addr.port(),
        cert.cacert()
    )))
    .await
    .unwrap_err();
    assert!(e.contains("--streams"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_are_new_handshakes() {
    let cert = TestCert::new();
    let server = tls_server(&cert, BOTH, Reply::HelloClose);
    let r = weft_bench::run_bench(&args(&format!(
        "https://localhost:{}/ --http1 -c 2 -n 40 --cacert {}",
        server.addr.port(),
        cert.cacert()
    )))
    .await
    .unwrap();
    assert_eq!(r.protocol, Protocol::Http1);
    assert_eq!(r.successes, 40, "{:?}", r.errors);
    let tls = r.tls.as_ref().unwrap();
    // Each connection serves one request: 40 handshakes, give or take the
    // last ones closing after the run.
    assert!((39..=42).contains(&tls.handshake.count), "{}", tls.handshake.count);
    assert_eq!(tls.handshake_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_alpn_means_http1() {
    let cert = TestCert::new();
    let server = tls_server(&cert, &[], Reply::Hello);
    let url = format!("https://localhost:{}/", server.addr.port());
    let r = weft_bench::run_bench(&args(&format!("{url} -c 1 -n 20 --cacert {}", cert.cacert())))
        .await
        .unwrap();
    assert_eq!(r.protocol, Protocol::Http1);
    assert_eq!(r.successes, 20);
    assert_eq!(r.tls.as_ref().unwrap().alpn, None);
    // --h2 insists on h2.
    let e = weft_bench::run_bench(&args(&format!("{url} --h2 -n 5 --cacert {}", cert.cacert())))
        .await
        .unwrap_err();
    assert!(e.contains("selected no ALPN protocol"), "{e}");
}

#[test]
fn no_cacert_nor_insecure_fails_early() {
    let cert = TestCert::new();
    let server = tls_server(&cert, BOTH, Reply::Hello);
    let a = args(&format!("https://localhost:{}/ -n 5", server.addr.port()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt.block_on(weft_bench::run_bench(&a)).unwrap_err();
    assert!(e.contains("--cacert FILE") && e.contains("--insecure"), "{e}");
    assert_eq!(weft_bench::run(a), 2);
    // Nothing was sent: it failed before connecting.
    assert_eq!(server.accepted.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skips_verification() {
    let cert = TestCert::new();
    let server = tls_server(&cert, BOTH, Reply::Hello);
    // The certificate is not trusted (no --cacert) and does not even match
    // the server name: --insecure accepts it anyway.
    let r = weft_bench::run_bench(&args(&format!(
        "https://{}/ -c 2 -n 100 --insecure --sni other.example",
        server.addr
    )))
    .await
    .unwrap();
    assert_eq!(r.protocol, Protocol::Http2);
    assert_eq!(r.successes, 100, "{:?}", r.errors);
    let tls = r.tls.as_ref().unwrap();
    assert!(!tls.verified);
    assert_eq!(tls.server_name, "other.example");
    assert_eq!(tls.handshake.count, 2);
}

#[test]
fn wrong_sni_fails_the_handshake_early() {
    let cert = TestCert::new();
    let server = tls_server(&cert, BOTH, Reply::Hello);
    let a = args(&format!(
        "https://{}/ -c 2 -n 10 --sni wrong.example --cacert {}",
        server.addr,
        cert.cacert()
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt.block_on(weft_bench::run_bench(&a)).unwrap_err();
    assert!(e.contains("TLS handshake") && e.contains("wrong.example"), "{e}");
    assert_eq!(weft_bench::run(a), 2);
    // Only the probes connected (one per attempt above); no request was served.
    assert_eq!(server.accepted.load(Ordering::Relaxed), 2);
    assert_eq!(server.hits.load(Ordering::Relaxed), 0);

    // A certificate that is not among the --cacert roots fails the same way.
    let other = TestCert::new();
    let e = rt
        .block_on(weft_bench::run_bench(&args(&format!(
            "https://{}/ -n 1 --cacert {}",
            server.addr,
            other.cacert()
        ))))
        .unwrap_err();
    assert!(e.contains("TLS handshake"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls() {
    let cert = TestCert::new();
    let server = tls_server(&cert, BOTH, Reply::Grpc);
    let r = weft_bench::run_bench(&args(&format!(
        "https://localhost:{} --grpc-method /test.Echo/Say --grpc-payload 32 -c 2 --streams 2 -n 200 --cacert {}",
        server.addr.port(),
        cert.cacert()
    )))
    .await
    .unwrap();
    assert_eq!(r.protocol, Protocol::Grpc);
    assert_eq!(r.requests, 200);
    assert_eq!(r.successes, 200, "{:?}", r.errors);
    assert_eq!(r.errors.grpc, 0);
    assert_eq!(r.bytes_received, 200 * 37);
    let tls = r.tls.as_ref().unwrap();
    assert_eq!(tls.alpn.as_deref(), Some("h2"));
    assert_eq!(tls.alpn_offered, ["h2"]);
    assert_eq!(serde_json::to_value(&r).unwrap()["protocol"], "grpc");
}

#[tokio::test]
async fn tls_option_misuse_is_rejected() {
    let cases = [
        ("http://127.0.0.1:1/ --insecure", "need an https://"),
        ("http://127.0.0.1:1/ --cacert x.pem", "need an https://"),
        (
            "https://127.0.0.1:1/ --insecure --cacert x.pem",
            "cannot be used together",
        ),
        ("https://127.0.0.1:1/ --insecure --h2 --http1", "--h2 and --http1"),
        (
            "https://127.0.0.1:1/ --insecure --http1 --grpc-method /a.B/C",
            "needs HTTP/2",
        ),
        (
            "https://127.0.0.1:1/ --cacert /nonexistent/weft-ca.pem",
            "cannot read --cacert",
        ),
        (
            "https://127.0.0.1:1/ --insecure --sni bad_name!",
            "invalid TLS server name",
        ),
    ];
    for (line, want) in cases {
        let e = weft_bench::run_bench(&args(line)).await.unwrap_err();
        assert!(e.contains(want), "{line}: {e}");
    }
    // A file with no PEM certificate in it.
    let path = std::env::temp_dir().join(format!("weft-bench-empty-{}.pem", std::process::id()));
    std::fs::write(&path, "not a certificate\n").unwrap();
    let e = weft_bench::run_bench(&args(&format!("https://127.0.0.1:1/ --cacert {}", path.display())))
        .await
        .unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert!(e.contains("no PEM certificate"), "{e}");
}
