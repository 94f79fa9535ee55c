//! In-test servers on 127.0.0.1 for exercising `weft bench`.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server running on its own thread and runtime; stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Handler = Arc<
    dyn Fn(Request<Incoming>, ConnCtx) -> futures_util::future::BoxFuture<'static, Response<BoxBody<Bytes, Infallible>>>
        + Send
        + Sync,
>;

/// Per-connection context handed to handlers.
#[derive(Clone)]
pub struct ConnCtx {
    pub server_start: Instant,
    pub stalled: Arc<AtomicBool>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    /// HTTP/1.1 with keep-alive off: the server closes after each response.
    H1Close,
    H2,
}

fn spawn_server(proto: Proto, handler: Handler) -> Server {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let hits = Arc::new(AtomicU64::new(0));
    let hits2 = hits.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let server_start = Instant::now();
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                    _ = &mut rx => break,
                };
                let _ = stream.set_nodelay(true);
                let ctx = ConnCtx {
                    server_start,
                    stalled: Arc::new(AtomicBool::new(false)),
                };
                let handler = handler.clone();
                let hits = hits2.clone();
                let svc = service_fn(move |req| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    let fut = handler(req, ctx.clone());
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let io = TokioIo::new(stream);
                match proto {
                    Proto::H1 | Proto::H1Close => {
                        tokio::spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .keep_alive(proto == Proto::H1)
                                .serve_connection(io, svc)
                                .await;
                        });
                    }
                    Proto::H2 => {
                        tokio::spawn(async move {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await;
                        });
                    }
                }
            }
        });
    });
    let addr = addr_rx.recv().unwrap();
    Server {
        addr,
        hits,
        shutdown: Some(tx),
        thread: Some(thread),
    }
}

fn full(b: &'static str) -> BoxBody<Bytes, Infallible> {
    Full::new(Bytes::from_static(b.as_bytes())).boxed()
}

/// HTTP/1.1 server answering "hello" at once, except that each connection's
/// first request arriving `stall_after` or later into the server's life
/// sleeps `stall_for` (requests behind it on that connection wait).
pub fn h1_stall_server(stall_after: Duration, stall_for: Duration) -> Server {
    spawn_server(
        Proto::H1,
        Arc::new(move |req, ctx| {
            Box::pin(async move {
                drain(req).await;
                if ctx.server_start.elapsed() >= stall_after && !ctx.stalled.swap(true, Ordering::Relaxed) {
                    tokio::time::sleep(stall_for).await;
                }
                Response::new(full("hello"))
            })
        }),
    )
}

/// Server answering with the given status and "hello".
pub fn status_server(proto: Proto, status: u16) -> Server {
    spawn_server(
        proto,
        Arc::new(move |req, _| {
            Box::pin(async move {
                drain(req).await;
                let mut r = Response::new(full("hello"));
                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                r
            })
        }),
    )
}

async fn drain(req: Request<Incoming>) -> Bytes {
    req.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default()
}

/// HTTP/2 gRPC-ish server: echoes the request message in one gRPC frame,
/// then trailers with `grpc-status: <status>`.
pub fn grpc_server(status: u32) -> Server {
    spawn_server(
        Proto::H2,
        Arc::new(move |req, _| {
            Box::pin(async move {
                let ct_ok = req
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v == "application/grpc");
                let te_ok = req.headers().get("te").is_some_and(|v| v == "trailers");
                let path_ok = req.uri().path() == "/test.Echo/Say";
                let body = drain(req).await;
                let frames = weft_bench::grpc::decode_frames(&body);
                let (code, reply) = match frames {
                    Ok(f) if ct_ok && te_ok && path_ok && f.len() == 1 => {
                        (status, weft_bench::grpc::encode_frame(f[0].payload))
                    }
                    _ => (3, Bytes::new()), // INVALID_ARGUMENT
                };
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from(code));
                let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                    vec![Ok(Frame::data(reply)), Ok(Frame::trailers(trailers))];
                let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
                let mut r = Response::new(body);
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/grpc"));
                r
            })
        }),
    )
}

/// TCP echo server; counts accepted connections in `hits`.
pub fn tcp_echo_server() -> Server {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let hits = Arc::new(AtomicU64::new(0));
    let hits2 = hits.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (mut stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                    _ = &mut rx => break,
                };
                hits2.fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    });
    let addr = addr_rx.recv().unwrap();
    Server {
        addr,
        hits,
        shutdown: Some(tx),
        thread: Some(thread),
    }
}

/// Parse bench args from a command line string split on whitespace.
pub fn args(line: &str) -> weft_bench::BenchArgs {
    let mut a = weft_bench::BenchArgs::try_parse_from(line.split_whitespace())
        .unwrap_or_else(|e| panic!("bad args {line:?}: {e}"));
    a.no_progress = true;
    a
}
